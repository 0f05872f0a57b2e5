//! Load (issue 9): 20 s of webhooks at 500 per second against an optimised binary on the SQLite
//! default, while one app's target answers every request 2 s late (the fault proxy holds it).
//!
//! Checked: no 5xx; every event answered 202 is stored with its job (a sample through
//! `GET /v1/activations/{eventId}`, every one through the log and the metrics); each app's window
//! holds at its proxy (at most 5 pushes start in any 10 s); the other apps' pushes go on while the
//! slow one crawls. Deferred work (the next cycle) is not awaited. Latency figures belong to
//! `cargo bench --bench latency`, not here.
//!
//! The binary is an optimised one: `SCIM_BRIDGE_FAST_BIN` when set (`scripts/test.sh` sets it to
//! `target/fast/scim-bridge`, the crate built at opt-level 2 on the dev profile's dependencies, so
//! it is never older than the sources there), else `target/release/scim-bridge` (by hand, build it
//! yourself); without it the test says so and passes, except under `CI=true` (or
//! `SCIM_BRIDGE_TEST_DEPS=1`), where it fails. The debug build cannot take 500/s on two cores
//! (about 220/s measured); the fast one answers 495 to 498/s here, the release one more.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::clocked::FaultProxy;
use common::{Bridge, Event, Kind, Principal, SourceGroup, require};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const RATE_PER_SECOND: usize = 500;
const SECONDS: usize = 20;
const EVENTS: usize = RATE_PER_SECOND * SECONDS;
/// Webhooks are sent in ticks of this many milliseconds, `RATE_PER_SECOND / (1000 / TICK_MS)` per tick.
const TICK_MS: u64 = 10;
const FAST_APPS: usize = 3;
const SLOW_TARGET_DELAY_MS: u64 = 2_000;
/// The default window: 5 pushes in any 10 s.
const WINDOW_PUSHES: usize = 5;
const WINDOW_MS: i64 = 10_000;
/// A push shows at the proxy with its first request, a moment after the bridge admitted it: under
/// this load up to about a second. Two starts may come this much closer than their admissions.
const START_JITTER_MS: i64 = 1_500;
/// Kept-alive connections the webhooks go out on (a bridge keeping up needs a few).
const CONNECTIONS: usize = 64;
/// The longest a webhook answer may take before the sender counts it as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// `SCIM_BRIDGE_FAST_BIN`, else `target/release/scim-bridge` next to the debug build cargo made
/// for the tests.
fn optimised_binary() -> Option<PathBuf> {
    let bin = match std::env::var_os("SCIM_BRIDGE_FAST_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let debug = PathBuf::from(env!("CARGO_BIN_EXE_scim-bridge"));
            let target_dir = debug.parent()?.parent()?;
            target_dir.join("release").join(debug.file_name()?)
        }
    };
    require(&[(
        "an optimised binary (scripts/test.sh builds one; or cargo build --release --bin scim-bridge)",
        bin.clone(),
    )])
    .then_some(bin)
}

struct Sent {
    event_id: String,
    app: usize,
    status: StatusCode,
    answer: Value,
}

/// Earliest proxy request per principal id: when that push started at the target.
fn push_starts(seen: &[Value], principals: &HashMap<String, usize>) -> HashMap<usize, Vec<i64>> {
    let mut first: HashMap<&str, i64> = HashMap::new();
    for request in seen {
        let path = request["path"].as_str().unwrap_or_default();
        let Some(time) = request["time"]
            .as_str()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
            .map(|t| t.timestamp_millis())
        else {
            continue;
        };
        // Each push begins by looking its user up by externalId (the principal id) or userName.
        for principal in principals.keys() {
            if path.contains(principal.as_str()) {
                let at = first.entry(principal.as_str()).or_insert(time);
                *at = (*at).min(time);
            }
        }
    }
    let mut by_app: HashMap<usize, Vec<i64>> = HashMap::new();
    for (principal, at) in first {
        by_app.entry(principals[principal]).or_default().push(at);
    }
    for starts in by_app.values_mut() {
        starts.sort();
    }
    by_app
}

/// The most push starts in any window of `WINDOW_MS` (less the start jitter).
fn most_in_any_window(starts: &[i64]) -> usize {
    let span = WINDOW_MS - START_JITTER_MS;
    (0..starts.len())
        .map(|i| starts[i..].iter().take_while(|t| **t - starts[i] < span).count())
        .max()
        .unwrap_or(0)
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Sends one prepared HTTP/1.1 request on the connection (opened if there is none) and reads the
/// answer: status and JSON body.
async fn send_on(
    connection: &mut Option<BufReader<TcpStream>>,
    address: &str,
    request: &[u8],
) -> std::io::Result<(StatusCode, Value)> {
    if connection.is_none() {
        *connection = Some(BufReader::new(TcpStream::connect(address).await?));
    }
    let stream = connection.as_mut().expect("connected");
    let exchange = async {
        stream.get_mut().write_all(request).await?;
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line: {status_line:?}")))?;
        let mut length = 0;
        let mut close = false;
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::other("connection closed in the headers"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        let body = serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
        Ok::<_, std::io::Error>((status, body, close))
    };
    let (status, body, close) = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer within 30 s"))??;
    if close {
        *connection = None;
    }
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_webhooks_a_second_for_twenty_seconds_with_one_slow_target() {
    let Some(bin) = optimised_binary() else {
        return;
    };
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let Some(slow_proxy) = FaultProxy::start(&target).await else {
        return;
    };
    let Some(fast_proxy) = FaultProxy::start(&target).await else {
        return;
    };
    // Warn level: ten thousand "event accepted" lines would only cost the bridge time.
    let bridge = Bridge::start_binary(&bin, &[("RUST_LOG", "warn")]).await;

    // App 0 reaches the target through the slow proxy, apps 1..=3 through the other one; each has
    // one source group of its own.
    let mut apps = Vec::new();
    let mut groups = Vec::new();
    for i in 0..=FAST_APPS {
        let proxy = if i == 0 { &slow_proxy } else { &fast_proxy };
        let app_id = bridge
            .register_app_with(&target, &proxy.base_url_for(&target), json!({}))
            .await;
        let group = SourceGroup::new();
        bridge
            .assign_group(&app_id, &group.id, &format!("Load {i} {}", common::short_id()))
            .await;
        apps.push(app_id);
        groups.push(group);
    }
    slow_proxy
        .arm(json!({"mode": "delay", "ms": SLOW_TARGET_DELAY_MS, "count": -1}))
        .await;

    // Every event a new principal, the apps in turn.
    let mut principals: HashMap<String, usize> = HashMap::new();
    let events: Vec<(usize, Event)> = (0..EVENTS)
        .map(|i| {
            let app = i % apps.len();
            let principal = Principal::new();
            principals.insert(principal.id.clone(), app);
            (app, Event::activation(&principal, &groups[app]))
        })
        .collect();

    // The requests are built and signed before the clock starts, and go out over a fixed set of
    // kept-alive connections: the sender must cost this 2-core machine as little as it can, or it
    // measures itself. A webhook source with a bounded number of connections is what a relay is.
    let address = bridge.url.trim_start_matches("http://").to_string();
    let now = Utc::now().timestamp();
    let requests: Vec<Vec<u8>> = events
        .iter()
        .map(|(_, event)| {
            let body = event.body();
            let signature = Bridge::sign(&bridge.secret, now, &body);
            let mut request = format!(
                "POST /v1/webhooks/pim HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
                 X-Bridge-Signature: {signature}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(&body);
            request
        })
        .collect();
    let requests = Arc::new(requests);
    let (queue, taken) = tokio::sync::mpsc::channel::<usize>(EVENTS);
    let taken = Arc::new(tokio::sync::Mutex::new(taken));
    let mut senders = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (taken, requests, address) = (taken.clone(), requests.clone(), address.clone());
        senders.spawn(async move {
            let mut answers = Vec::new();
            let mut connection: Option<BufReader<TcpStream>> = None;
            loop {
                let next = taken.lock().await.recv().await;
                let Some(i) = next else { break };
                let answer = match send_on(&mut connection, &address, &requests[i]).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        connection = None;
                        (StatusCode::INTERNAL_SERVER_ERROR, json!(format!("request failed: {e}")))
                    }
                };
                answers.push((i, answer));
            }
            answers
        });
    }
    let per_tick = RATE_PER_SECOND * TICK_MS as usize / 1000;
    let mut ticks = tokio::time::interval(Duration::from_millis(TICK_MS));
    let mut most_waiting = 0;
    let started = Instant::now();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(per_tick) {
        ticks.tick().await;
        for i in chunk {
            queue.send(*i).await.expect("queue");
        }
        most_waiting = most_waiting.max(queue.max_capacity() - queue.capacity());
    }
    drop(queue);
    let offered = started.elapsed();
    let mut sent: Vec<Sent> = Vec::with_capacity(EVENTS);
    while let Some(done) = senders.join_next().await {
        for (i, (status, answer)) in done.expect("sender task") {
            let (app, event) = &events[i];
            sent.push(Sent {
                event_id: event.id().to_string(),
                app: *app,
                status,
                answer,
            });
        }
    }
    sent.sort_by_key(|s| s.event_id.clone());
    let answered = started.elapsed();
    eprintln!(
        "load: {EVENTS} webhooks released in {offered:.1?} ({:.0}/s), all answered after {answered:.1?} \
         ({:.0}/s); at most {most_waiting} waited for one of the {CONNECTIONS} connections",
        EVENTS as f64 / offered.as_secs_f64(),
        EVENTS as f64 / answered.as_secs_f64()
    );
    let http = scim_bridge::http_client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    // No 5xx (nor a lost request); every event accepted with one job for its app.
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for s in &sent {
        *by_status.entry(s.status.as_u16()).or_default() += 1;
    }
    let odd: Vec<String> = sent
        .iter()
        .filter(|s| s.status != StatusCode::ACCEPTED)
        .take(5)
        .map(|s| format!("{} {}", s.status, s.answer))
        .collect();
    assert_eq!(
        by_status.get(&202).copied().unwrap_or(0),
        EVENTS,
        "answers by status {by_status:?}; for example {odd:?}"
    );
    for s in &sent {
        let answer = &s.answer["events"][0];
        assert_eq!(answer["status"], "accepted", "{}", s.answer);
        let jobs = answer["jobs"].as_array().expect("jobs");
        assert_eq!(jobs.len(), 1, "one job for the one app of the group: {}", s.answer);
        assert_eq!(jobs[0]["appId"], apps[s.app].as_str(), "{}", s.answer);
    }

    // Each app's window holds at its proxy: at most 5 pushes start there in any 10 s. A push shows
    // at the proxy when its first request arrives, which under this load can be a second after the
    // bridge admitted it (the window is exact at admission: tests/window_cycle.rs checks that on a
    // manual clock); two starts may therefore come up to `START_JITTER_MS` closer together than
    // their admissions did. A bridge ignoring the window would start dozens within a second.
    let slow = push_starts(&slow_proxy.seen().await, &principals)
        .remove(&0)
        .unwrap_or_default();
    assert!(!slow.is_empty(), "the slow app never started a push");
    assert!(
        most_in_any_window(&slow) <= WINDOW_PUSHES,
        "slow app: more than {WINDOW_PUSHES} pushes started within 10 s at its proxy: {slow:?}"
    );
    // The other apps' pushes went on while the slow one crawled: each a full window at least twice.
    let fast = push_starts(&fast_proxy.seen().await, &principals);
    for app in 1..=FAST_APPS {
        let starts = fast.get(&app).cloned().unwrap_or_default();
        assert!(
            starts.len() >= 2 * WINDOW_PUSHES,
            "app {app}: only {} pushes reached its proxy while the slow app crawled",
            starts.len()
        );
        let most = most_in_any_window(&starts);
        assert!(
            most <= WINDOW_PUSHES,
            "app {app}: {most} pushes started within 10 s at its proxy: {starts:?}"
        );
    }

    // Stored with its job: a sample through the activation view (the slow app's jobs may still be
    // pending behind its crawling pushes).
    for s in sent.iter().step_by(EVENTS / 100) {
        let (status, view) = bridge
            .admin(Method::GET, &format!("/v1/activations/{}", s.event_id), None)
            .await;
        assert_eq!(status, StatusCode::OK, "GET /v1/activations/{}: {view}", s.event_id);
        assert_eq!(view["events"][0]["outcome"], "activate", "{view}");
        let outcome = view["apps"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["appId"] == apps[s.app].as_str()))
            .unwrap_or_else(|| panic!("no outcome for app {} in {view}", s.app));
        assert!(
            ["pushed", "deferred", "pending"].contains(&outcome["state"].as_str().unwrap_or("")),
            "{outcome}"
        );
    }

    // Every one through the metrics and the log: let the slow target answer at once again, so its
    // dispatcher reaches the rest of its queue (deferred: its window is full), then every event
    // has its entry in its app's log.
    slow_proxy.clear().await;
    let metrics_text = || async {
        http.get(format!("{}/metrics", bridge.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    };
    let text = metrics_text().await;
    assert_eq!(
        metric(&text, "scim_bridge_webhook_events_total{outcome=\"accepted\"}"),
        EVENTS as f64,
        "accepted events in the metrics"
    );
    let per_app = EVENTS / apps.len();
    let settled = common::wait_until(Duration::from_secs(60), || async {
        let text = metrics_text().await;
        apps.iter().all(|app| {
            let handled = metric(
                &text,
                &format!("scim_bridge_pushes_total{{app_id=\"{app}\",outcome=\"success\"}}"),
            ) + metric(&text, &format!("scim_bridge_deferrals_total{{app_id=\"{app}\"}}"));
            handled >= per_app as f64
        })
    })
    .await;
    assert!(
        settled,
        "not every job was pushed or deferred; metrics:\n{}",
        metrics_text().await
    );
    for (i, app) in apps.iter().enumerate() {
        let response = http
            .get(format!(
                "{}/v1/provisioning-logs/export?format=jsonl&appId={app}&trigger=activation",
                bridge.url
            ))
            .bearer_auth(&bridge.admin_token)
            .send()
            .await
            .expect("export");
        assert_eq!(response.status(), StatusCode::OK);
        let logged: HashSet<String> = response
            .text()
            .await
            .expect("export text")
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|e| e["eventId"].as_str().map(String::from))
            .collect();
        let expected: HashSet<String> = sent.iter().filter(|s| s.app == i).map(|s| s.event_id.clone()).collect();
        let missing: Vec<&String> = expected.difference(&logged).take(5).collect();
        assert!(
            missing.is_empty(),
            "app {i}: {} of {} events have no log entry, e.g. {missing:?}",
            expected.difference(&logged).count(),
            expected.len()
        );
    }

    // The bridge kept up with 500/s, give or take a short backlog: webhooks waiting longer than
    // that for a connection would have tested a lower rate than asked.
    assert!(
        answered <= Duration::from_secs(SECONDS as u64 + 10),
        "{EVENTS} webhooks released at 500/s were answered only after {answered:?}"
    );
}
