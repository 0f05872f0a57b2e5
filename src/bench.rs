//! `scim-bridge bench`: the bridge's figures, each beside its ceiling measured in the same run on
//! the same machine (absolute times drift between machines; the ratios hold).
//!
//! - **Intake**: single-event webhooks from many concurrent senders against a bridge in this
//!   process (SQLite, `synchronous=FULL`), beside what SQLite allows with one commit per row, and
//!   beside the same events handed to the store directly (no HTTP, the same group commit). Then
//!   the accept latency at a fixed offered rate.
//! - **Memory**: the resident memory of a `scim-bridge serve` process with many apps registered
//!   (each with its dispatcher, window and pacer, idle), read from `/proc`.
//!
//! The push latency, revocation during a cycle and export figures need a real SCIM server and
//! come from `cargo bench` (see the README).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::ConnectOptions;

use crate::config::{Config, RateLimit, Secret};

/// How long and how big: `--quick` is for CI (a smoke run of every figure), the default for the
/// README.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub seconds: u64,
    pub senders: usize,
    /// Offered rates for the accept-latency figure (webhooks per second, sent whatever the answers).
    pub offered: &'static [u64],
    pub apps: usize,
    /// Activations pushed one at a time for the push-path figure.
    pub activations: usize,
}

impl Scale {
    pub fn full() -> Self {
        Self {
            seconds: 10,
            senders: 64,
            offered: &[1_000, 2_000, 5_000],
            apps: 10_000,
            activations: 200,
        }
    }

    pub fn quick() -> Self {
        Self {
            seconds: 2,
            senders: 32,
            offered: &[1_000],
            apps: 500,
            activations: 40,
        }
    }
}

/// One line of the report.
struct Row {
    figure: String,
    bridge: String,
    ceiling: String,
    ratio: String,
}

pub async fn run(scale: Scale) -> anyhow::Result<()> {
    println!(
        "scim-bridge bench: {} s per intake figure, {} senders, {} apps; {} cores (SQLite in a scratch directory under {})",
        scale.seconds,
        scale.senders,
        scale.apps,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::temp_dir().display()
    );
    let mut rows = Vec::new();
    push_path(scale, &mut rows).await?;
    intake(scale, &mut rows).await?;
    memory(scale, &mut rows).await?;
    println!();
    println!("| figure | bridge | ceiling in the same run | ratio |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.figure, r.bridge, r.ceiling, r.ratio);
    }
    Ok(())
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("scim-bridge-bench-{what}-{}", crate::crypto::random_hex(6)));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn event(group: &str) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    let principal = uuid::Uuid::new_v4().to_string();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "id": id, "action": "selfActivate", "accessId": "member", "principalId": principal, "groupId": group,
        "status": "Provisioned", "createdDateTime": now,
        "scheduleInfo": {"startDateTime": now, "expiration": {"type": "afterDuration", "duration": "PT2H"}},
        "principal": {"userPrincipalName": format!("{principal}@bench.test"), "displayName": "Bench User"},
        "group": {"displayName": "Bench", "membershipRule": null, "onPremisesSyncEnabled": false}
    })
}

async fn intake(scale: Scale, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(scale.seconds);

    // Ceiling: one row per transaction, as many as SQLite commits in the time.
    let single = single_row_commits(seconds).await?;
    println!("SQLite single-row commits (WAL, synchronous=FULL): {single:.0}/s");

    // The store alone: the same single-event calls, concurrently, no HTTP.
    let store_alone = store_alone(scale).await?;
    println!(
        "the store alone, {} concurrent single-event writes: {store_alone:.0} events/s",
        scale.senders
    );

    // The bridge over HTTP.
    let dir = Scratch::new("intake")?;
    let (url, secret, stop, task) = start_in_process(&dir.0).await?;
    let (rate, p50, p99) = closed_loop(&url, &secret, scale.senders, seconds).await;
    println!(
        "bridge, single-event webhooks from {} senders: {rate:.0} events/s (accept p50 {p50:.1} ms, p99 {p99:.1} ms)",
        scale.senders
    );
    let mut offered_rows = Vec::new();
    for &per_second in scale.offered {
        let (offered, achieved, op50, op99) = open_loop(&url, &secret, per_second, seconds).await;
        println!("bridge at {offered}/s offered: {achieved:.0}/s answered, accept p50 {op50:.1} ms, p99 {op99:.1} ms");
        offered_rows.push(Row {
            figure: format!("accept latency at {offered} webhooks/s offered"),
            bridge: format!("p50 {op50:.1} ms, p99 {op99:.1} ms ({achieved:.0}/s answered)"),
            ceiling: "—".into(),
            ratio: "—".into(),
        });
    }
    let _ = stop.send(());
    let _ = task.await;

    rows.push(Row {
        figure: format!("intake, single-event webhooks, {} concurrent senders", scale.senders),
        bridge: format!("{rate:.0} events/s, p99 {p99:.1} ms"),
        ceiling: format!("SQLite single-row commits: {single:.0}/s"),
        ratio: format!("{:.2}", rate / single),
    });
    rows.push(Row {
        figure: "intake, the same, against the store without HTTP".into(),
        bridge: format!("{rate:.0} events/s"),
        ceiling: format!("store alone, same group commit: {store_alone:.0}/s"),
        ratio: format!("{:.2}", rate / store_alone),
    });
    rows.extend(offered_rows);
    Ok(())
}

async fn single_row_commits(time: Duration) -> anyhow::Result<f64> {
    let dir = Scratch::new("ceiling")?;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.0.join("ceiling.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let mut conn = options.connect().await?;
    sqlx::query("CREATE TABLE events (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut conn)
        .await?;
    let body = event("ceiling").to_string();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < time {
        sqlx::query("INSERT INTO events (id, body) VALUES (?, ?)")
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(&body)
            .execute(&mut conn)
            .await?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn store_alone(scale: Scale) -> anyhow::Result<f64> {
    let dir = Scratch::new("store")?;
    let url = format!("sqlite://{}", dir.0.join("store.db").display());
    let store = crate::store::open(&url).await?;
    store.migrate().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..scale.senders {
        let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Parsed and judged as the webhook route does, then committed.
                let raw: Value =
                    serde_json::from_slice(&serde_json::to_vec(&event("store-alone")).expect("JSON")).expect("JSON");
                let now = chrono::Utc::now().timestamp_millis();
                let Ok(event) = crate::activation::parse(&raw) else {
                    continue;
                };
                let Ok(effect) = crate::activation::judge(&event, now) else {
                    continue;
                };
                if store.accept_events(&[(event, effect)], now).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(scale.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

type Running = (
    String,
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

/// The admin token of the bridges the bench starts in its process.
const ADMIN: &str = "bench-admin-token";

/// A bridge in this process on a scratch SQLite, no apps: intake only.
async fn start_in_process(dir: &Path) -> anyhow::Result<Running> {
    start_with(dir, RateLimit::default()).await
}

async fn start_with(dir: &Path, rate_limit: RateLimit) -> anyhow::Result<Running> {
    let mut config = Config::with_data_dir(dir);
    config.allow_private_targets = true;
    config.admin_token = Secret::new(ADMIN);
    config.rate_limit = rate_limit;
    config.max_connections = 4096;
    let secret = crate::crypto::random_hex(32);
    config.webhook_secrets = vec![Secret::new(&secret)];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok((url, secret, stop, task))
}

/// A signed single-event webhook for the group.
fn webhook(http: &reqwest::Client, url: &str, secret: &str, group: &str) -> reqwest::RequestBuilder {
    let body = serde_json::to_vec(&event(group)).expect("JSON");
    let header = crate::crypto::signature_header(secret, chrono::Utc::now().timestamp(), &body);
    http.post(format!("{url}/v1/webhooks/pim"))
        .header("content-type", "application/json")
        .header("x-bridge-signature", header)
        .body(body)
}

async fn send(http: &reqwest::Client, url: &str, secret: &str) -> Option<f64> {
    let request = webhook(http, url, secret, "bench-group");
    let started = Instant::now();
    let answer = request.send().await.ok()?;
    (answer.status() == 202).then(|| started.elapsed().as_secs_f64() * 1000.0)
}

/// `senders` clients each sending one webhook after the other: events/s, accept p50 and p99.
async fn closed_loop(url: &str, secret: &str, senders: usize, time: Duration) -> (f64, f64, f64) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(senders)
        .build()
        .expect("client");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (http, url, secret) = (http.clone(), url.to_string(), secret.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < time {
                if let Some(ms) = send(&http, &url, &secret).await {
                    latencies.push(ms);
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

/// Webhooks sent at a fixed rate, whatever the answers: the rate answered and accept p50, p99.
async fn open_loop(url: &str, secret: &str, per_second: u64, time: Duration) -> (u64, f64, f64, f64) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client");
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_second.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    while started.elapsed() < time {
        ticker.tick().await;
        let (http, url, secret) = (http.clone(), url.to_string(), secret.to_string());
        tasks.push(tokio::spawn(async move { send(&http, &url, &secret).await }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(Some(ms)) = t.await {
            all.push(ms);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (
        per_second,
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

/// A SCIM responder written for the benchmark: it stands in for a target as fast as the machine
/// allows, not for a target's behaviour. Users are never found (each activation creates one), the
/// one group always is, and every request is recorded with the instant it was handled.
mod responder {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use serde_json::json;

    #[derive(Clone, Debug)]
    pub struct Seen {
        pub method: Method,
        pub uri: String,
        pub body: Bytes,
        pub at: Instant,
    }

    #[derive(Clone, Default)]
    pub struct Responder {
        pub seen: Arc<Mutex<Vec<Seen>>>,
        pub patched: Arc<tokio::sync::Notify>,
    }

    impl Responder {
        pub async fn start() -> anyhow::Result<(Responder, String)> {
            let responder = Responder::default();
            let app = Router::new().fallback(handle).with_state(responder.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}/scim/v2", listener.local_addr()?);
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Ok((responder, url))
        }

        pub fn take(&self) -> Vec<Seen> {
            std::mem::take(&mut *self.seen.lock().expect("lock"))
        }
    }

    const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

    async fn handle(State(r): State<Responder>, method: Method, uri: Uri, body: Bytes) -> Response {
        let at = Instant::now();
        let path = uri.path().trim_start_matches("/scim/v2").to_string();
        let answer = match (&method, path.as_str()) {
            (&Method::GET, "/Users") => (
                StatusCode::OK,
                axum::Json(json!({"schemas": [LIST], "totalResults": 0, "Resources": []})),
            )
                .into_response(),
            (&Method::POST, "/Users") => {
                let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                (
                    StatusCode::CREATED,
                    axum::Json(json!({"id": uuid::Uuid::new_v4().to_string(), "userName": sent["userName"]})),
                )
                    .into_response()
            }
            (&Method::GET, "/Groups") => (
                StatusCode::OK,
                axum::Json(json!({"schemas": [LIST], "totalResults": 1,
                    "Resources": [{"id": "bench-group", "displayName": "Bench"}]})),
            )
                .into_response(),
            (&Method::POST, "/Groups") => (
                StatusCode::CREATED,
                axum::Json(json!({"id": "bench-group", "displayName": "Bench"})),
            )
                .into_response(),
            (&Method::PATCH, _) => StatusCode::NO_CONTENT.into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        };
        let patch = method == Method::PATCH;
        r.seen.lock().expect("lock").push(Seen {
            method,
            uri: uri.to_string(),
            body,
            at,
        });
        if patch {
            r.patched.notify_waiters();
        }
        answer
    }
}

/// Activations pushed one at a time to the benchmark's responder: webhook sent → group PATCH
/// handled at the target, beside the same SCIM requests replayed by a plain client. The
/// difference is the bridge's own time (intake, commit, wake-up, mapping, records).
async fn push_path(scale: Scale, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let (responder, target) = responder::Responder::start().await?;
    let dir = Scratch::new("push")?;
    let unlimited = RateLimit {
        requests: 1_000_000,
        window_seconds: 1,
    };
    let (url, secret, stop, task) = start_with(&dir.0, unlimited).await?;
    let http = reqwest::Client::new();
    let app: Value = http
        .post(format!("{url}/v1/apps"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "bench", "scimBaseUrl": target, "auth": {"type": "bearer", "token": "bench"}}))
        .send()
        .await?
        .json()
        .await?;
    let app_id = app["id"].as_str().context("the app was not registered")?.to_string();
    let group = uuid::Uuid::new_v4().to_string();
    http.put(format!("{url}/v1/apps/{app_id}/groups/{group}"))
        .bearer_auth(ADMIN)
        .json(&json!({"targetDisplayName": "Bench"}))
        .send()
        .await?
        .error_for_status()?;

    let mut bridge = Vec::new();
    let mut direct = Vec::new();
    let mut own = Vec::new();
    let replay = reqwest::Client::new();
    // The first few set up connections and the group: not counted.
    for i in 0..scale.activations + 5 {
        responder.take();
        let request = webhook(&http, &url, &secret, &group);
        let patched = responder.patched.notified();
        tokio::pin!(patched);
        patched.as_mut().enable();
        let sent = Instant::now();
        let answer = request.send().await?;
        anyhow::ensure!(answer.status() == 202, "the webhook was answered {}", answer.status());
        tokio::time::timeout(Duration::from_secs(10), patched)
            .await
            .context("the push did not reach the responder within 10 s")?;
        let requests = responder.take();
        let reached = requests
            .iter()
            .rev()
            .find(|r| r.method == "PATCH")
            .map(|r| r.at)
            .context("a PATCH")?;
        let through_bridge = reached.duration_since(sent).as_secs_f64() * 1000.0;

        // The same requests from a plain client, one after the other.
        let started = Instant::now();
        for r in &requests {
            let method = reqwest::Method::from_bytes(r.method.as_str().as_bytes()).expect("method");
            let uri = format!("{}{}", target.trim_end_matches("/scim/v2"), r.uri);
            replay
                .request(method, uri)
                .bearer_auth("bench")
                .header("content-type", "application/scim+json")
                .body(r.body.clone())
                .send()
                .await?;
        }
        let replayed = responder.take();
        let done = replayed.last().map(|r| r.at).context("replayed")?;
        let straight = done.duration_since(started).as_secs_f64() * 1000.0;
        if i >= 5 {
            bridge.push(through_bridge);
            direct.push(straight);
            own.push(through_bridge - straight);
        }
    }
    let _ = stop.send(());
    let _ = task.await;
    for v in [&mut bridge, &mut direct, &mut own] {
        v.sort_by(f64::total_cmp);
    }
    let (b50, b99) = (percentile(&bridge, 0.5), percentile(&bridge, 0.99));
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (o50, o99) = (percentile(&own, 0.5), percentile(&own, 0.99));
    println!(
        "push path, {} activations one at a time: webhook → target p50 {b50:.2} ms, p99 {b99:.2} ms; \
         the same requests straight p50 {d50:.2} ms, p99 {d99:.2} ms; the bridge's own time p50 {o50:.2} ms, p99 {o99:.2} ms",
        bridge.len()
    );
    rows.push(Row {
        figure: format!(
            "activation, webhook sent → target PATCH handled, {} one at a time",
            bridge.len()
        ),
        bridge: format!("p50 {b50:.2} ms, p99 {b99:.2} ms"),
        ceiling: format!("the same SCIM requests from a plain client: p50 {d50:.2} ms, p99 {d99:.2} ms"),
        ratio: format!("+{:.2} ms p50, +{:.2} ms p99", b50 - d50, b99 - d99),
    });
    rows.push(Row {
        figure: "the bridge's own time per push (the above minus the same requests)".into(),
        bridge: format!("p50 {:.0} µs, p99 {:.0} µs", o50 * 1000.0, o99 * 1000.0),
        ceiling: "—".into(),
        ratio: "—".into(),
    });
    Ok(())
}

/// `scim-bridge serve` in a child process, `apps` apps registered through the API, idle: its
/// resident memory now and at its peak.
async fn memory(scale: Scale, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let dir = Scratch::new("memory")?;
    let admin = crate::crypto::random_hex(16);
    let exe = std::env::current_exe().context("the bench runs the scim-bridge binary itself")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .env("SCIM_BRIDGE_DATA_DIR", &dir.0)
        .env("SCIM_BRIDGE_LISTEN", "127.0.0.1:0")
        .env("SCIM_BRIDGE_ADMIN_TOKEN", &admin)
        .env("SCIM_BRIDGE_ALLOW_PRIVATE_TARGETS", "true")
        .env_remove("SCIM_BRIDGE_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut url = None;
    while let Some(line) = lines.next_line().await? {
        if let Some(rest) = line.split("listening on ").nth(1) {
            url = Some(rest.trim().to_string());
            break;
        }
    }
    let url = url.context("the bridge did not say where it listens")?;
    let pid = child.id().context("child pid")?;
    let (idle_rss, _) = rss(pid)?;
    let http = reqwest::Client::new();
    let registered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (http, url, admin, registered) = (http.clone(), url.clone(), admin.clone(), registered.clone());
        let count = scale.apps / 8 + usize::from(worker < scale.apps % 8);
        tasks.push(tokio::spawn(async move {
            for i in 0..count {
                let body = json!({
                    "name": format!("bench-{worker}-{i}"),
                    "scimBaseUrl": "http://127.0.0.1:9/scim/v2",
                    "auth": {"type": "bearer", "token": "bench-token"},
                });
                let answer = http
                    .post(format!("{url}/v1/apps"))
                    .bearer_auth(&admin)
                    .json(&body)
                    .send()
                    .await;
                if answer.is_ok_and(|a| a.status() == 201) {
                    registered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    // Let every dispatcher start and settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_now, peak) = rss(pid)?;
    let n = registered.load(Ordering::Relaxed);
    println!(
        "serve with {n} apps registered, idle: resident {:.1} MiB (peak {:.1} MiB; {:.1} MiB with none)",
        mib(rss_now),
        mib(peak),
        mib(idle_rss)
    );
    let _ = child.kill().await;
    rows.push(Row {
        figure: format!("resident memory, {n} apps registered (idle)"),
        bridge: format!("{:.1} MiB (peak {:.1} MiB)", mib(rss_now), mib(peak)),
        ceiling: format!("{:.1} MiB with no app", mib(idle_rss)),
        ratio: format!(
            "{:.1} KiB per app",
            (rss_now.saturating_sub(idle_rss)) as f64 / 1024.0 / n.max(1) as f64
        ),
    });
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// VmRSS and VmHWM of a process, in bytes.
fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc (Linux only)")?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}
