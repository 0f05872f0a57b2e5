//! Figures of a `scim-bridge serve` child process, so its memory and CPU time are its own: memory
//! with many idle apps, and while a large log is paged through and exported.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::Connection;

use super::{Row, Scale, Scratch, mib, rss};

/// `scim-bridge serve` on a scratch SQLite, listening on a free loopback port; killed when dropped.
pub(super) struct ServeChild {
    _child: tokio::process::Child,
    pub url: String,
    pub admin: String,
    pub pid: u32,
    dir: Scratch,
}

impl ServeChild {
    pub async fn start(what: &str) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let dir = Scratch::new(what)?;
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
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut url = None;
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.trim().to_string());
                break;
            }
        }
        // Whatever it prints later is read, so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = url.context("the bridge did not say where it listens")?;
        let pid = child.id().context("child pid")?;
        Ok(Self {
            _child: child,
            url,
            admin,
            pid,
            dir,
        })
    }

    /// The child's SQLite file (the default under its data dir).
    pub fn database(&self) -> PathBuf {
        self.dir.0.join("scim-bridge.db")
    }

    /// A connection of the bench's own to the child's database, for seeding it in bulk.
    pub async fn connect(&self) -> anyhow::Result<sqlx::SqliteConnection> {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.database())
            .busy_timeout(Duration::from_secs(30));
        Ok(sqlx::SqliteConnection::connect_with(&options).await?)
    }
}

/// `scim-bridge serve` in a child process, `apps` apps registered through the API, idle: its
/// resident memory now and at its peak.
pub(super) async fn memory(scale: Scale, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let serve = ServeChild::start("memory").await?;
    let (idle_rss, _) = rss(serve.pid)?;
    let http = crate::http_client();
    let registered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (http, url, admin, registered) = (http.clone(), serve.url.clone(), serve.admin.clone(), registered.clone());
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
    let (rss_now, peak) = rss(serve.pid)?;
    let n = registered.load(Ordering::Relaxed);
    println!(
        "serve with {n} apps registered, idle: resident {:.1} MiB (peak {:.1} MiB; {:.1} MiB with none)",
        mib(rss_now),
        mib(peak),
        mib(idle_rss)
    );
    rows.push(Row::new(
        format!("resident memory, {n} apps registered (idle)"),
        format!("{:.1} MiB (peak {:.1} MiB)", mib(rss_now), mib(peak)),
        format!("{:.1} MiB with no app", mib(idle_rss)),
        format!(
            "{:.1} KiB per app",
            (rss_now.saturating_sub(idle_rss)) as f64 / 1024.0 / n.max(1) as f64
        ),
    ));
    Ok(())
}

/// Fills the child's log with `entries` entries in one statement (the bridge's own writes would
/// take minutes for a million; what is read back is the same shape).
async fn seed_log(serve: &ServeChild, entries: usize) -> anyhow::Result<()> {
    let mut conn = serve.connect().await?;
    let base = chrono::Utc::now().timestamp_millis() - entries as i64;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
         INSERT INTO provisioning_logs (id, time, app_id, app_name, trigger, event_id, principal_id,
           user_principal_name, group_id, action, status, attempt, duration_ms, latency_ms, steps)
         SELECT 'log-' || i, ?2 + i, 'bench-app', 'Bench, \"quoted\" app', 'activation', 'ev-' || i,
           'p-' || (i % 5000), 'user' || (i % 5000) || '@contoso.test', 'g1', 'add_member', 'success', 1, 12, 31, '[]'
         FROM n",
    )
    .bind(entries as i64)
    .bind(base)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Forgets the child's peak resident memory so far (Linux: `5` to `clear_refs` resets VmHWM), so the
/// next peak is that of what follows.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// A log of `log_entries` entries in a `serve` child: paged through `GET /v1/provisioning-logs`
/// (500 a page, the most it gives), then exported as CSV and JSONL; the child's peak resident
/// memory meanwhile.
pub(super) async fn log_pages_and_export(scale: Scale, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let serve = ServeChild::start("log").await?;
    let n = scale.log_entries;
    let seeding = Instant::now();
    seed_log(&serve, n).await?;
    println!("seeded {n} log entries in {:.1} s", seeding.elapsed().as_secs_f64());
    let http = crate::http_client();
    let (before, _) = rss(serve.pid)?;
    reset_peak(serve.pid);

    let started = Instant::now();
    let mut seen = 0usize;
    let mut cursor: Option<String> = None;
    loop {
        let mut request = http
            .get(format!("{}/v1/provisioning-logs", serve.url))
            .bearer_auth(&serve.admin)
            .query(&[("limit", "500")]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let answer = request.send().await?;
        let status = answer.status();
        anyhow::ensure!(
            status.is_success(),
            "a log page was answered {status}: {}",
            answer.text().await?
        );
        let page: Value = answer.json().await?;
        seen += page["items"].as_array().map_or(0, Vec::len);
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let paging = started.elapsed().as_secs_f64();
    anyhow::ensure!(seen == n, "paged through {seen} entries of {n}");
    let (_, paging_peak) = rss(serve.pid)?;
    println!(
        "paged through {seen} log entries in {paging:.1} s ({:.0} entries/s); peak resident {:.1} MiB",
        seen as f64 / paging,
        mib(paging_peak)
    );
    rows.push(Row::new(
        format!("the log paged through, {seen} entries, 500 a page"),
        format!("{paging:.1} s ({:.0} entries/s)", seen as f64 / paging),
        "—",
        "—",
    ));

    for format in ["csv", "jsonl"] {
        let started = Instant::now();
        let mut answer = http
            .get(format!("{}/v1/provisioning-logs/export?format={format}", serve.url))
            .bearer_auth(&serve.admin)
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "the export was answered {}",
            answer.status()
        );
        let (mut bytes, mut lines) = (0usize, 0usize);
        while let Some(chunk) = answer.chunk().await? {
            bytes += chunk.len();
            lines += chunk.iter().filter(|b| **b == b'\n').count();
        }
        let secs = started.elapsed().as_secs_f64();
        let (_, peak) = rss(serve.pid)?;
        println!(
            "export {format}: {lines} lines, {:.0} MiB in {secs:.1} s ({:.0} entries/s); peak resident so far {:.1} MiB",
            bytes as f64 / 1_048_576.0,
            n as f64 / secs,
            mib(peak)
        );
        rows.push(Row::alone(
            format!(
                "export, {n} entries as {format} ({:.0} MiB)",
                bytes as f64 / 1_048_576.0
            ),
            format!("{secs:.1} s ({:.0} entries/s)", n as f64 / secs),
        ));
    }
    let (_, peak) = rss(serve.pid)?;
    println!(
        "peak resident memory while {n} entries were paged through and exported: {:.1} MiB ({:.1} MiB before)",
        mib(peak),
        mib(before)
    );
    rows.push(Row::new(
        format!("peak resident memory while {n} log entries are paged through and exported (target < 100 MB)"),
        format!("{:.1} MiB", mib(peak)),
        format!("{:.1} MiB before", mib(before)),
        format!("+{:.1} MiB", mib(peak.saturating_sub(before))),
    ));
    Ok(())
}
