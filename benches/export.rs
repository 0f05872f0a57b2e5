//! Streams a CSV and a JSONL export of one million provisioning log entries and reports the time
//! taken and the process's resident memory before and during the export.
//!
//! `cargo bench --bench export`. Under `cargo test` it does nothing.

use std::time::{Duration, Instant};

use scim_bridge::config::{Config, Secret};
use sqlx::Connection;

const ENTRIES: usize = 1_000_000;

/// Resident memory of this process in MiB (Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

async fn seed(db: &std::path::Path) {
    let url = format!("sqlite://{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let base = chrono::Utc::now().timestamp_millis() - ENTRIES as i64;
    for i in 0..ENTRIES {
        sqlx::query(
            "INSERT INTO provisioning_logs (id, time, app_id, app_name, trigger, event_id, principal_id,
             user_principal_name, group_id, action, status, attempt, duration_ms, latency_ms, steps)
             VALUES (?, ?, 'bench-app', 'Bench, \"quoted\" app', 'activation', ?, ?, ?, 'g1', 'add_member',
             'success', 1, 12, 31, '[]')",
        )
        .bind(format!("log-{i}"))
        .bind(base + i as i64)
        .bind(format!("ev-{i}"))
        .bind(format!("p-{}", i % 5000))
        .bind(format!("user{}@contoso.test", i % 5000))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn export(http: &reqwest::Client, url: &str, admin: &str, format: &str) {
    let before = rss_mib();
    let peak = std::sync::Arc::new(std::sync::Mutex::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                {
                    let now = rss_mib();
                    let mut p = peak.lock().unwrap();
                    if now > *p {
                        *p = now;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let answer = http
        .get(format!("{url}/v1/provisioning-logs/export?format={format}"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    let mut answer = answer;
    let (mut bytes, mut lines) = (0usize, 0usize);
    while let Some(chunk) = answer.chunk().await.unwrap() {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let secs = started.elapsed().as_secs_f64();
    sampler.abort();
    let peak = *peak.lock().unwrap();
    println!(
        "export {format:<5}: {lines} lines, {:.0} MiB in {secs:.1} s ({:.0} entries/s); RSS {before:.0} MiB before, {peak:.0} MiB peak",
        bytes as f64 / 1_048_576.0,
        ENTRIES as f64 / secs
    );
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    let admin = "bench-admin".to_string();
    config.admin_token = Secret::new(&admin);
    let db = dir.path().join("scim-bridge.db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bridge = tokio::spawn(scim_bridge::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let http = scim_bridge::http_client();
    for _ in 0..200 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let started = Instant::now();
    seed(&db).await;
    println!(
        "seeded {ENTRIES} log entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    export(&http, &url, &admin, "csv").await;
    export(&http, &url, &admin, "jsonl").await;
    let _ = stop.send(());
    let _ = bridge.await;
}
