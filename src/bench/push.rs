//! The push path and revocation under load, against the benchmark's SCIM responder.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::responder::{self, Responder};
use super::{ADMIN, Backend, InProcess, Row, Scale, p50_p99, register_app, signed, start_in_process};
use crate::config::RateLimit;

/// No app window: the figures here are about the bridge's own time, not R2's deferrals.
const UNLIMITED: RateLimit = RateLimit {
    requests: 1_000_000,
    window_seconds: 1,
};

/// The target name of the bench's group (the responder finds any name).
const TARGET_NAME: &str = "Bench";

/// The push path, then the same with trace export (SPEC §10: export on costs at most 300 µs at
/// the p50 over export off).
pub(super) async fn push_path(scale: Scale, backend: &Backend, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    push_path_once(scale, backend, rows).await?;
    export_overhead(scale, backend, rows).await
}

/// What the push path runs against: the responder, a fresh database, a bridge on it with no
/// window, and an app on the responder with the bench's group assigned.
struct PushSetup {
    responder: Responder,
    target: String,
    db: super::Database,
    bridge: InProcess,
    http: reqwest::Client,
    group: String,
}

impl PushSetup {
    async fn start(backend: &Backend, what: &str) -> anyhow::Result<Self> {
        let (responder, target) = Responder::start().await?;
        let db = backend.fresh(what).await?;
        let bridge = start_in_process(&db, UNLIMITED).await?;
        let http = crate::http_client();
        let group = uuid::Uuid::new_v4().to_string();
        register_app(&http, &bridge.url, ADMIN, &target, json!({}), &group, TARGET_NAME).await?;
        Ok(Self {
            responder,
            target,
            db,
            bridge,
            http,
            group,
        })
    }
}

/// Activations one at a time on one bridge, export on and off in turn (so warm-up, the machine's
/// other load and the store's growth fall on both alike): every span of the "on" ones goes over
/// OTLP/HTTP to a local receiver, through the same bounded queue as in `serve`.
async fn export_overhead(scale: Scale, backend: &Backend, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = PushSetup::start(backend, "push-export").await?;
    let sink = super::otlp_sink().await?;
    // Batches go every 100 ms (not the default 5 s): their encoding and sending fall inside the
    // measured pushes rather than after them.
    crate::trace::start_export(
        opentelemetry_otlp::Protocol::HttpBinary,
        Some(&sink.url),
        Some(Duration::from_millis(100)),
    )?;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut measured = Ok(());
    // The first few set up connections and the group: not counted.
    for i in 0..2 * scale.activations + 6 {
        let exporting = i % 2 == 1;
        crate::trace::pause_export(!exporting);
        let principal = uuid::Uuid::new_v4().to_string();
        let pushed = activate(&setup.http, &setup.bridge, &setup.responder, &principal, &setup.group).await;
        // The push's own spans end once its outcome is recorded, just after the PATCH: they are
        // let end (and be queued) before the next turn, outside what is measured.
        tokio::time::sleep(Duration::from_millis(30)).await;
        match pushed {
            Ok((sent, reached)) if i >= 6 => {
                let ms = reached.duration_since(sent).as_secs_f64() * 1000.0;
                if exporting { on.push(ms) } else { off.push(ms) }
            }
            Ok(_) => {}
            Err(e) => {
                measured = Err(e);
                break;
            }
        }
    }
    crate::trace::pause_export(false);
    crate::trace::stop_export(Duration::from_secs(10)).await;
    setup.bridge.stop().await;
    setup.db.remove().await;
    measured?;
    let exported = sink.batches();
    let name = backend.name();
    let n = on.len();
    let (on50, on99) = p50_p99(&mut on);
    let (off50, off99) = p50_p99(&mut off);
    println!(
        "push path ({name}), trace export on and off in turn, {n} each: on p50 {on50:.2} ms, p99 {on99:.2} ms; \
         off p50 {off50:.2} ms, p99 {off99:.2} ms ({exported} exported)"
    );
    rows.push(Row::new(
        format!("activation, webhook → target PATCH, traces exported over OTLP, {n} ({name})"),
        format!("p50 {on50:.2} ms, p99 {on99:.2} ms ({exported})"),
        format!(
            "the same with export off, in turn, + 0.30 ms: p50 {:.2} ms (off {off50:.2} ms)",
            off50 + 0.3
        ),
        format!("{:+.0} µs p50", (on50 - off50) * 1000.0),
    ));
    Ok(())
}

/// Activations pushed one at a time to the benchmark's responder: webhook sent → group PATCH
/// handled at the target, beside the same SCIM requests replayed by a plain client. The
/// difference is the bridge's own time (intake, commit, wake-up, mapping, records).
async fn push_path_once(scale: Scale, backend: &Backend, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let PushSetup {
        responder,
        target,
        db,
        bridge,
        http,
        group,
    } = PushSetup::start(backend, "push").await?;

    let mut through = Vec::new();
    let mut direct = Vec::new();
    let mut own = Vec::new();
    let replay = crate::http_client();
    // The first few set up connections and the group: not counted.
    for i in 0..scale.activations + 5 {
        responder.take();
        let principal = uuid::Uuid::new_v4().to_string();
        let (sent, reached) = activate(&http, &bridge, &responder, &principal, &group).await?;
        let requests = responder.take();
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
            through.push(through_bridge);
            direct.push(straight);
            own.push(through_bridge - straight);
        }
    }
    bridge.stop().await;
    db.remove().await;
    let n = through.len();
    let (b50, b99) = p50_p99(&mut through);
    let (d50, d99) = p50_p99(&mut direct);
    let (o50, o99) = p50_p99(&mut own);
    let on = backend.name();
    println!(
        "push path ({on}), {n} activations one at a time: webhook → target p50 {b50:.2} ms, p99 {b99:.2} ms; \
         the same requests straight p50 {d50:.2} ms, p99 {d99:.2} ms; the bridge's own time p50 {o50:.2} ms, p99 {o99:.2} ms"
    );
    rows.push(Row::new(
        format!("activation, webhook sent → target PATCH handled, {n} one at a time ({on})"),
        format!("p50 {b50:.2} ms, p99 {b99:.2} ms"),
        format!("the same SCIM requests from a plain client: p50 {d50:.2} ms, p99 {d99:.2} ms"),
        format!("+{:.2} ms p50, +{:.2} ms p99", b50 - d50, b99 - d99),
    ));
    rows.push(Row::alone(
        format!("the bridge's own time per push (the above minus the same requests) ({on})"),
        format!("p50 {:.0} µs, p99 {:.0} µs", o50 * 1000.0, o99 * 1000.0),
    ));
    Ok(())
}

/// Sends the event and waits until the target handled a PATCH whose body holds `needle`: the
/// instants the webhook was sent and the PATCH handled.
async fn push_and_wait(
    http: &reqwest::Client,
    bridge: &InProcess,
    responder: &Responder,
    event: &serde_json::Value,
    needle: &str,
    within: Duration,
) -> anyhow::Result<(Instant, Instant)> {
    let mark = responder.patch_mark();
    let request = signed(http, &bridge.url, &bridge.secret, event);
    let sent = Instant::now();
    let answer = request.send().await?;
    anyhow::ensure!(answer.status() == 202, "the webhook was answered {}", answer.status());
    let handled = responder
        .patch_naming(needle, mark, within)
        .await
        .with_context(|| format!("{} did not reach the responder within {within:?}", event["action"]))?;
    Ok((sent, handled))
}

/// Activates a principal and waits until the target handled the PATCH that adds it.
async fn activate(
    http: &reqwest::Client,
    bridge: &InProcess,
    responder: &Responder,
    principal: &str,
    group: &str,
) -> anyhow::Result<(Instant, Instant)> {
    let event = super::event_for("selfActivate", principal, group);
    push_and_wait(
        http,
        bridge,
        responder,
        &event,
        &responder::user_id(principal),
        Duration::from_secs(10),
    )
    .await
}

/// Revokes the principals one at a time: for each, webhook sent → the target handled the PATCH that
/// removes it, in milliseconds.
async fn revoke_each(
    http: &reqwest::Client,
    bridge: &InProcess,
    responder: &Responder,
    principals: &[String],
    group: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::with_capacity(principals.len());
    for principal in principals {
        let event = super::event_for("selfDeactivate", principal, group);
        // Only the removal's filter path ends with the id and a closing bracket.
        let needle = format!("{}\\\"]", responder::user_id(principal));
        let (sent, handled) = push_and_wait(http, bridge, responder, &event, &needle, Duration::from_secs(30)).await?;
        latencies.push(handled.duration_since(sent).as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

/// Pacing of the app whose cycle runs during the revocations: slow enough that its 2,000-member
/// cycle (about one request per member) outlasts the revocations, fast enough to keep the run short.
const CYCLE_PACING: u32 = 200;

/// Revocation latency at the target while a large cycle runs for the same app, beside the same
/// with no cycle running (SPEC section 5: a cycle never holds up an immediate push).
pub(super) async fn revocation_under_load(scale: Scale, backend: &Backend, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let (responder, target) = Responder::start().await?;
    responder.record(false);
    let db = backend.fresh("revoke").await?;
    let bridge = start_in_process(&db, UNLIMITED).await?;
    let http = crate::http_client();
    let group = uuid::Uuid::new_v4().to_string();
    let settings = json!({"pacing": {"requestsPerSecond": CYCLE_PACING}, "driftRepair": "off"});
    let app_id = register_app(&http, &bridge.url, ADMIN, &target, settings, &group, TARGET_NAME).await?;
    let on = backend.name();

    let principals = |tag: &str| -> Vec<String> {
        (0..scale.revocations)
            .map(|i| format!("{tag}-{i}-{}", crate::crypto::random_hex(4)))
            .collect()
    };
    let idle_set = principals("idle");
    for p in &idle_set {
        activate(&http, &bridge, &responder, p, &group).await?;
    }
    let mut idle = revoke_each(&http, &bridge, &responder, &idle_set, &group).await?;

    // The cycle's members already exist at the target (found, not created) and are members of the
    // source group through the directory feed, so the cycle adds each of them.
    let standing: Vec<String> = (0..scale.cycle_members)
        .map(|i| format!("standing-{i}-{}", crate::crypto::random_hex(4)))
        .collect();
    responder.know(standing.iter().map(|p| responder::bench_user(p)));
    put_standing_members(&http, &bridge.url, &group, &standing).await?;
    let busy_set = principals("busy");
    for p in &busy_set {
        activate(&http, &bridge, &responder, p, &group).await?;
    }
    let (before, _) = responder.counts();
    let cycle_id = super::start_cycle(&http, &bridge.url, ADMIN, &app_id).await?;
    // Measured once the cycle is sending.
    let going = Instant::now();
    while responder.counts().0 < before + 20 {
        anyhow::ensure!(
            going.elapsed() < Duration::from_secs(30),
            "the cycle sent nothing within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut busy = revoke_each(&http, &bridge, &responder, &busy_set, &group).await?;
    let cycle = super::cycle(&http, &bridge.url, ADMIN, &app_id, &cycle_id)
        .await?
        .context("the cycle is not listed")?;
    let running = cycle["endedAt"].is_null();
    let progress = cycle["progress"].as_str().unwrap_or_default().to_string();
    // How long access outlived each deactivation, as the bridge's own access-end records say
    // (SPEC §8): the request's time to the target's confirmation. The target handled the last
    // removal a moment before its outcome was recorded: read until every revocation's record is
    // confirmed (or 10 s pass).
    let asked = Instant::now();
    let (mut idle_excess, mut busy_excess) = loop {
        let found = access_excess(&http, &bridge.url, &app_id, &idle_set, &busy_set).await?;
        if (found.0.len() == idle_set.len() && found.1.len() == busy_set.len())
            || asked.elapsed() > Duration::from_secs(10)
        {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    anyhow::ensure!(
        idle_excess.len() == idle_set.len() && busy_excess.len() == busy_set.len(),
        "access-end records: {} of {} idle and {} of {} busy revocations confirmed",
        idle_excess.len(),
        idle_set.len(),
        busy_excess.len(),
        busy_set.len()
    );
    bridge.stop().await;
    db.remove().await;

    let (i50, i99) = p50_p99(&mut idle);
    let (b50, b99) = p50_p99(&mut busy);
    let n = busy.len();
    let state = if running {
        format!("the cycle still running when the last landed ({progress})")
    } else {
        "the cycle had ended before the last landed: fewer overlapped".to_string()
    };
    println!(
        "revocation ({on}), {n} one at a time: no cycle p50 {i50:.2} ms, p99 {i99:.2} ms; while a {}-member cycle runs \
         p50 {b50:.2} ms, p99 {b99:.2} ms; {state}",
        scale.cycle_members
    );
    rows.push(Row::alone(
        format!("revocation, webhook sent → target's remove PATCH handled, {n} one at a time, no cycle ({on})"),
        format!("p50 {i50:.2} ms, p99 {i99:.2} ms"),
    ));
    rows.push(Row::new(
        format!(
            "revocation, the same while a {}-member cycle of the same app runs (pacing {CYCLE_PACING} requests/s; {state}) ({on})",
            scale.cycle_members
        ),
        format!("p50 {b50:.2} ms, p99 {b99:.2} ms"),
        format!("no cycle running: p50 {i50:.2} ms, p99 {i99:.2} ms"),
        format!("{:.2}× p50, {:.2}× p99", b50 / i50, b99 / i99),
    ));
    let (ie50, ie99) = p50_p99(&mut idle_excess);
    let (be50, be99) = p50_p99(&mut busy_excess);
    println!(
        "access end ({on}): excess (deactivation's request time → the target's confirmation) p50 {ie50:.0} ms, p99 \
         {ie99:.0} ms; while the cycle runs p50 {be50:.0} ms, p99 {be99:.0} ms"
    );
    rows.push(Row::new(
        format!("access end: excess of the same revocations, from the access-end records (endedAt → removedAt) ({on})"),
        format!("while the cycle runs: p50 {be50:.0} ms, p99 {be99:.0} ms"),
        format!("no cycle running: p50 {ie50:.0} ms, p99 {ie99:.0} ms"),
        format!("{:.2}× p50", if ie50 > 0.0 { be50 / ie50 } else { 1.0 }),
    ));
    Ok(())
}

/// The excess (ms) of each confirmed access end at the app, from the bridge's records: the idle
/// revocations' and the busy ones'.
async fn access_excess(
    http: &reqwest::Client,
    url: &str,
    app_id: &str,
    idle_set: &[String],
    busy_set: &[String],
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    loop {
        let mut page_url = format!("{url}/v1/access-ends?appId={app_id}&status=removed&limit=500");
        if let Some(c) = &cursor {
            page_url.push_str(&format!("&cursor={c}"));
        }
        let page = super::admin_call(http, reqwest::Method::GET, page_url, ADMIN, None).await?;
        for end in page["items"].as_array().into_iter().flatten() {
            let (Some(principal), Some(excess)) = (end["principalId"].as_str(), end["excessMs"].as_f64()) else {
                continue;
            };
            if idle_set.iter().any(|p| p == principal) {
                idle.push(excess);
            } else if busy_set.iter().any(|p| p == principal) {
                busy.push(excess);
            }
        }
        cursor = page["nextCursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            return Ok((idle, busy));
        }
    }
}

/// Puts the principals into the source group through the directory API, a few at a time.
pub(super) async fn put_standing_members(
    http: &reqwest::Client,
    url: &str,
    group: &str,
    principals: &[String],
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let results: Vec<anyhow::Result<serde_json::Value>> = futures::stream::iter(principals)
        .map(|p| {
            super::admin_call(
                http,
                reqwest::Method::PUT,
                format!("{url}/v1/groups/{group}/members/{p}"),
                ADMIN,
                Some(
                    json!({"principal": {"userPrincipalName": format!("{p}@bench.test"), "displayName": "Bench User"}}),
                ),
            )
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(())
}

/// Unauthenticated webhooks that each carry a 1 MiB body and a header of 20,000 empty `v1=`
/// candidates, sent back to back by this many senders while the activations are measured.
const FLOODS: usize = 4;

/// Activation latency with and without `FLOODS` signature floods in flight: a header that no
/// secret can match is refused before the body is hashed (SPEC §2), so the floods cost the
/// bridge a body read each, not a core.
pub(super) async fn activation_under_signature_floods(scale: Scale, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let (responder, target) = Responder::start().await?;
    responder.record(false);
    let db = Backend::Sqlite.fresh("flood").await?;
    let bridge = start_in_process(&db, UNLIMITED).await?;
    let http = crate::http_client();
    let group = uuid::Uuid::new_v4().to_string();
    register_app(&http, &bridge.url, ADMIN, &target, json!({}), &group, TARGET_NAME).await?;
    let n = scale.activations / 2;
    let measure = async || -> anyhow::Result<Vec<f64>> {
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            let principal = uuid::Uuid::new_v4().to_string();
            let (sent, reached) = activate(&http, &bridge, &responder, &principal, &group).await?;
            latencies.push(reached.duration_since(sent).as_secs_f64() * 1000.0);
        }
        Ok(latencies)
    };
    // Connections and the target group set up first.
    measure().await?;
    let mut quiet = measure().await?;

    let stop = tokio_util::sync::CancellationToken::new();
    let header = format!("t={}{}", chrono::Utc::now().timestamp(), ",v1=".repeat(20_000));
    let body = axum::body::Bytes::from(vec![b' '; 1024 * 1024 - 2]);
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut floods = Vec::new();
    for _ in 0..FLOODS {
        let (stop, header, body, refused) = (stop.clone(), header.clone(), body.clone(), refused.clone());
        let url = format!("{}/v1/webhooks/pim", bridge.url);
        let client = crate::http_client();
        floods.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-bridge-signature", &header)
                    .body(body.clone())
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status() == 401) {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    let flooded = measure().await;
    stop.cancel();
    for f in floods {
        let _ = f.await;
    }
    let mut flooded = flooded?;
    bridge.stop().await;
    db.remove().await;

    let (q50, q99) = p50_p99(&mut quiet);
    let (f50, f99) = p50_p99(&mut flooded);
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "activation under {FLOODS} signature floods (SQLite), {n} one at a time: p50 {f50:.2} ms, p99 {f99:.2} ms \
         ({refused} floods refused meanwhile); without floods p50 {q50:.2} ms, p99 {q99:.2} ms"
    );
    rows.push(Row::new(
        format!(
            "activation, webhook sent → target PATCH handled, {n} one at a time while {FLOODS} senders post 1 MiB \
             bodies with 20,000 signature candidates each ({refused} refused with 401 meanwhile) (SQLite)"
        ),
        format!("p50 {f50:.2} ms, p99 {f99:.2} ms"),
        format!("no floods: p50 {q50:.2} ms, p99 {q99:.2} ms"),
        format!("{:.2}× p50, {:.2}× p99", f50 / q50, f99 / q99),
    ));
    Ok(())
}
