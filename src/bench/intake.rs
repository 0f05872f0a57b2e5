//! Intake: single-event webhooks from many concurrent senders, beside the database's single-commit
//! ceiling and the store alone; then the accept latency at fixed offered rates.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{ConnectOptions, Connection};

use super::{Backend, Database, Row, Scale, event, percentile, start_in_process, webhook};
use crate::config::RateLimit;

/// The fewer senders the intake is also measured at (issue targets hold at 8 and at 64).
const FEW_SENDERS: usize = 8;

pub(super) async fn intake(scale: Scale, backend: &Backend, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(scale.seconds);
    let on = backend.name();

    // Ceiling: one row per transaction, as many as the database commits in the time.
    let db = backend.fresh("ceiling").await?;
    let single = single_row_commits(backend, &db, seconds).await;
    db.remove().await;
    let single = single?;
    println!("{on} single-row commits: {single:.0}/s");

    // The store alone: the same single-event calls, concurrently, no HTTP.
    let db = backend.fresh("store").await?;
    let store_alone = store_alone(scale, &db).await;
    db.remove().await;
    let store_alone = store_alone?;
    println!(
        "the store alone ({on}), {} concurrent single-event writes: {store_alone:.0} events/s",
        scale.senders
    );

    // The bridge over HTTP.
    let db = backend.fresh("intake").await?;
    let bridge = start_in_process(&db, RateLimit::default()).await?;
    let (url, secret) = (bridge.url.clone(), bridge.secret.clone());
    let (rate, p50, p99) = closed_loop(&url, &secret, scale.senders, seconds).await;
    println!(
        "bridge ({on}), single-event webhooks from {} senders: {rate:.0} events/s (accept p50 {p50:.1} ms, p99 {p99:.1} ms)",
        scale.senders
    );
    let few = closed_loop(&url, &secret, FEW_SENDERS, seconds).await;
    println!(
        "bridge ({on}), single-event webhooks from {FEW_SENDERS} senders: {:.0} events/s (accept p50 {:.1} ms, p99 {:.1} ms)",
        few.0, few.1, few.2
    );
    let mut offered_rows = Vec::new();
    for &per_second in scale.offered {
        // Far beyond what it answers, the backlog alone would take minutes to drain and say
        // nothing the closed loop did not.
        if per_second as f64 > 2.0 * rate {
            println!("bridge ({on}) at {per_second}/s offered: not run, over twice what it answers ({rate:.0}/s)");
            offered_rows.push(Row::alone(
                format!("accept latency at {per_second} webhooks/s offered ({on})"),
                format!("not run: over twice the {rate:.0}/s it answers from the closed loop"),
            ));
            continue;
        }
        let (offered, achieved, op50, op99) = open_loop(&url, &secret, per_second, seconds).await;
        println!(
            "bridge ({on}) at {offered}/s offered: {achieved:.0}/s answered, accept p50 {op50:.1} ms, p99 {op99:.1} ms"
        );
        offered_rows.push(Row::alone(
            format!("accept latency at {offered} webhooks/s offered ({on})"),
            format!("p50 {op50:.1} ms, p99 {op99:.1} ms ({achieved:.0}/s answered)"),
        ));
    }
    bridge.stop().await;
    db.remove().await;

    let figure = format!(
        "intake, single-event webhooks, {} concurrent senders ({on})",
        scale.senders
    );
    let bridge_figure = format!("{rate:.0} events/s, p99 {p99:.1} ms");
    if scale.intake_ceilings {
        rows.push(Row::new(
            figure,
            bridge_figure,
            format!("{on} single-row commits: {single:.0}/s"),
            format!("{:.2}", rate / single),
        ));
        rows.push(Row::new(
            format!("intake, the same, against the store without HTTP ({on})"),
            format!("{rate:.0} events/s"),
            format!("store alone, same group commit: {store_alone:.0}/s"),
            format!("{:.2}", rate / store_alone),
        ));
        rows.push(Row::new(
            format!("intake, single-event webhooks, {FEW_SENDERS} concurrent senders ({on})"),
            format!("{:.0} events/s, p99 {:.1} ms", few.0, few.2),
            format!("{on} single-row commits: {single:.0}/s"),
            format!("{:.2}", few.0 / single),
        ));
    } else {
        println!(
            "(--quick: the intake ceilings above ran {} s, too short to compare the bridge with; left out of the table)",
            scale.seconds
        );
        rows.push(Row::alone(figure, bridge_figure));
        rows.push(Row::alone(
            format!("intake, single-event webhooks, {FEW_SENDERS} concurrent senders ({on})"),
            format!("{:.0} events/s, p99 {:.1} ms", few.0, few.2),
        ));
    }
    rows.extend(offered_rows);
    Ok(())
}

/// Rows committed one per transaction in the time, per second: SQLite as the bridge opens it (WAL,
/// `synchronous=FULL`), PostgreSQL with its defaults (`synchronous_commit=on`).
async fn single_row_commits(backend: &Backend, db: &Database, time: Duration) -> anyhow::Result<f64> {
    let body = event("ceiling").to_string();
    let create = "CREATE TABLE events (id TEXT PRIMARY KEY, body TEXT NOT NULL)";
    let started;
    let mut n = 0u64;
    match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(db.dir.0.join("ceiling.db"))
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
            let mut conn = options.connect().await?;
            sqlx::query(create).execute(&mut conn).await?;
            started = Instant::now();
            while started.elapsed() < time {
                sqlx::query("INSERT INTO events (id, body) VALUES (?, ?)")
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&body)
                    .execute(&mut conn)
                    .await?;
                n += 1;
            }
        }
        Backend::Postgres(_) => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await?;
            sqlx::query(create).execute(&mut conn).await?;
            started = Instant::now();
            while started.elapsed() < time {
                sqlx::query("INSERT INTO events (id, body) VALUES ($1, $2)")
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&body)
                    .execute(&mut conn)
                    .await?;
                n += 1;
            }
        }
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn store_alone(scale: Scale, db: &Database) -> anyhow::Result<f64> {
    let store = crate::store::open(&db.url).await?;
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

async fn send(http: &reqwest::Client, url: &str, secret: &str) -> Option<f64> {
    let request = webhook(http, url, secret, "bench-group");
    let started = Instant::now();
    let answer = request.send().await.ok()?;
    (answer.status() == 202).then(|| started.elapsed().as_secs_f64() * 1000.0)
}

/// `senders` clients each sending one webhook after the other: events/s, accept p50 and p99.
async fn closed_loop(url: &str, secret: &str, senders: usize, time: Duration) -> (f64, f64, f64) {
    let http = crate::http_client_builder()
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
    let http = crate::http_client_builder()
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
