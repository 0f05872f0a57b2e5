//! `scim-bridge bench`: the bridge's figures, each beside its ceiling measured in the same run on
//! the same machine (absolute times drift between machines; the ratios hold).
//!
//! - **Push path** (`push`): activations one at a time against a SCIM responder in this process,
//!   beside the very same requests from a plain client; then **revocation under load**: members
//!   revoked one at a time while a 2,000-member cycle runs for the same app, beside the same with
//!   no cycle running; and activations while four senders flood the webhook with unauthenticated
//!   1 MiB bodies carrying 20,000 signature candidates each, beside the same without them.
//! - **Intake** (`intake`): single-event webhooks from many concurrent senders, beside what the
//!   database allows with one commit per row, and beside the same events handed to the store
//!   directly (no HTTP, the same group commit). Then the accept latency at fixed offered rates.
//! - **Cycle throughput** (`cycles`): many apps' cycles against the responder, from a
//!   `scim-bridge serve` child (so its CPU time is its own), beside the responder's ceiling with the
//!   benchmark's client alone; and one app's cycle against scim2-server beside a sequential client.
//! - **Memory and the log** (`serve`): the resident memory of a `serve` child with many apps
//!   registered, and while a large log is paged through and exported.
//!
//! Push path, revocation and intake run on SQLite and, when a PostgreSQL URL is given, again on a
//! fresh PostgreSQL database.

mod cycles;
mod intake;
mod push;
mod responder;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::Connection;

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
    /// Revocations one at a time, idle and while the cycle runs.
    pub revocations: usize,
    /// Standing members of the app whose cycle runs during the revocations.
    pub cycle_members: usize,
    /// Apps and memberships (spread evenly) of the cycle-throughput figure.
    pub cycle_apps: usize,
    pub memberships: usize,
    /// Memberships of one app's cycle against scim2-server.
    pub real_target_members: usize,
    /// Log entries paged through and exported.
    pub log_entries: usize,
    /// Whether the intake rows set the bridge beside its ceilings (single-row commits, the store
    /// alone). Not at `--quick`: over 2 s the ceilings are still warming up (the store alone once
    /// came out below the bridge over it), so a ratio would say nothing; they are still measured
    /// there, so CI runs their code, and printed, but left out of the table.
    pub intake_ceilings: bool,
}

impl Scale {
    pub fn full() -> Self {
        Self {
            seconds: 10,
            senders: 64,
            offered: &[1_000, 2_000, 5_000],
            apps: 10_000,
            activations: 200,
            revocations: 100,
            cycle_members: 2_000,
            cycle_apps: 1_000,
            memberships: 100_000,
            real_target_members: 2_000,
            log_entries: 1_000_000,
            intake_ceilings: true,
        }
    }

    pub fn quick() -> Self {
        Self {
            seconds: 2,
            senders: 32,
            offered: &[1_000],
            apps: 500,
            activations: 40,
            revocations: 20,
            cycle_members: 2_000,
            cycle_apps: 50,
            memberships: 2_000,
            real_target_members: 200,
            log_entries: 50_000,
            intake_ceilings: false,
        }
    }
}

/// What to run beside the scale, and where the table goes.
#[derive(Debug, Clone)]
pub struct Options {
    pub scale: Scale,
    /// A PostgreSQL server's URL: each PostgreSQL row runs on a fresh database created there.
    pub postgres: Option<String>,
    /// Where the table is written as JSON.
    pub json: PathBuf,
    pub quick: bool,
}

/// One line of the report.
#[derive(serde::Serialize)]
struct Row {
    figure: String,
    bridge: String,
    ceiling: String,
    ratio: String,
}

impl Row {
    fn new(
        figure: impl Into<String>,
        bridge: impl Into<String>,
        ceiling: impl Into<String>,
        ratio: impl Into<String>,
    ) -> Self {
        Self {
            figure: figure.into(),
            bridge: bridge.into(),
            ceiling: ceiling.into(),
            ratio: ratio.into(),
        }
    }

    /// A figure with no ceiling beside it.
    fn alone(figure: impl Into<String>, bridge: impl Into<String>) -> Self {
        Self::new(figure, bridge, "—", "—")
    }
}

/// A local OTLP/HTTP receiver that takes every export and counts the requests (for the push
/// path with export on).
struct OtlpSink {
    url: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpSink {
    /// Export requests taken so far (a batch of spans each).
    fn batches(&self) -> String {
        format!("{} batches", self.requests.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn otlp_sink() -> anyhow::Result<OtlpSink> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/traces", listener.local_addr()?);
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |_body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(OtlpSink { url, requests, task })
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    // Spans get ids as they do in `serve` (no log output: the bench prints its own lines).
    {
        use tracing_subscriber::prelude::*;
        let spans_only =
            tracing_subscriber::filter::Targets::new().with_target(crate::trace::TARGET, tracing::Level::INFO);
        let _ = tracing_subscriber::registry()
            .with(spans_only)
            .with(crate::trace::layer())
            .try_init();
    }
    let scale = options.scale;
    let started = std::time::Instant::now();
    println!(
        "scim-bridge bench{}: {} s per intake figure, {} senders, {} apps; {} cores (scratch data under {})",
        if options.quick { " --quick" } else { "" },
        scale.seconds,
        scale.senders,
        scale.apps,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::temp_dir().display()
    );
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    // `--postgres` also reads SCIM_BRIDGE_BENCH_POSTGRES (an empty one means none).
    let postgres = options.postgres.clone().filter(|u| !u.is_empty());
    let mut backends = vec![Backend::Sqlite];
    match postgres {
        Some(url) => backends.push(Backend::Postgres(url)),
        None => skipped.push(
            "PostgreSQL rows (push path, revocation under load, intake): no --postgres URL nor SCIM_BRIDGE_BENCH_POSTGRES given"
                .to_string(),
        ),
    }
    for backend in &backends {
        push::push_path(scale, backend, &mut rows).await?;
        push::revocation_under_load(scale, backend, &mut rows).await?;
        intake::intake(scale, backend, &mut rows).await?;
    }
    push::activation_under_signature_floods(scale, &mut rows).await?;
    cycles::throughput(scale, &mut rows).await?;
    if let Some(why) = cycles::real_target(scale, &mut rows).await? {
        skipped.push(why);
    }
    serve::memory(scale, &mut rows).await?;
    serve::log_pages_and_export(scale, &mut rows).await?;

    println!();
    println!("| figure | bridge | ceiling in the same run | ratio |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} |", r.figure, r.bridge, r.ceiling, r.ratio);
    }
    for s in &skipped {
        println!("skipped: {s}");
    }
    let report = json!({
        "command": if options.quick { "scim-bridge bench --quick" } else { "scim-bridge bench" },
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memoryMiB": total_memory_mib(),
        "seconds": started.elapsed().as_secs_f64(),
        "rows": rows,
        "skipped": skipped,
    });
    std::fs::write(&options.json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", options.json.display()))?;
    println!(
        "written as JSON to {} ({:.0} s in all)",
        options.json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn total_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?;
    kb.parse::<u64>().ok().map(|kb| kb / 1024)
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

/// The store a figure runs on.
#[derive(Debug, Clone)]
enum Backend {
    /// A scratch SQLite file (WAL, `synchronous=FULL`, as the bridge opens it).
    Sqlite,
    /// A fresh database on this PostgreSQL server, dropped afterwards.
    Postgres(String),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    /// A fresh, empty database of this kind.
    async fn fresh(&self, what: &str) -> anyhow::Result<Database> {
        let dir = Scratch::new(what)?;
        match self {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.0.join("scim-bridge.db").display());
                Ok(Database { dir, url, drop: None })
            }
            Backend::Postgres(server) => {
                let name = format!("scim_bridge_bench_{}", crate::crypto::random_hex(6));
                let mut admin = sqlx::PgConnection::connect(server)
                    .await
                    .context("connecting to the PostgreSQL server given to the bench")?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await?;
                let mut url = url::Url::parse(server).context("the PostgreSQL URL")?;
                url.set_path(&format!("/{name}"));
                Ok(Database {
                    dir,
                    url: url.to_string(),
                    drop: Some((server.clone(), name)),
                })
            }
        }
    }
}

/// A fresh database and a scratch directory for the bridge's files.
struct Database {
    dir: Scratch,
    url: String,
    /// The server and the name of a PostgreSQL database to drop when done.
    drop: Option<(String, String)>,
}

impl Database {
    async fn remove(self) {
        if let Some((server, name)) = &self.drop
            && let Ok(mut admin) = sqlx::PgConnection::connect(server).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sorted, then p50 and p99.
fn p50_p99(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (percentile(values, 0.5), percentile(values, 0.99))
}

/// An event for a new principal.
fn event(group: &str) -> Value {
    event_for("selfActivate", &uuid::Uuid::new_v4().to_string(), group)
}

/// A `Provisioned` event of this action for this principal (`{principal}@bench.test`).
fn event_for(action: &str, principal: &str, group: &str) -> Value {
    pim_event(&uuid::Uuid::new_v4().to_string(), action, principal, group, "Bench")
}

/// scim2-server (`.venv/bin/scim2-server`, as `scripts/test-deps.sh` installs it) on a free loopback
/// port with bearer token `bench`, once it answers: the process (killed when dropped) and its base
/// URL. `None` when it is not installed. For this benchmark and `cargo bench`'s.
pub async fn start_scim2_server() -> anyhow::Result<Option<(tokio::process::Child, String)>> {
    let Some(exe) = [
        PathBuf::from(".venv/bin/scim2-server"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/scim2-server"),
    ]
    .into_iter()
    .find(|p| p.exists()) else {
        return Ok(None);
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let server = tokio::process::Command::new(&exe)
        .args(["--port", &port.to_string(), "--bearer-token", "bench"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let base = format!("http://127.0.0.1:{port}/v2");
    let http = crate::http_client();
    let up = std::time::Instant::now();
    while http.get(format!("{base}/ServiceProviderConfig")).send().await.is_err() {
        anyhow::ensure!(up.elapsed() < Duration::from_secs(30), "scim2-server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Some((server, base)))
}

/// A PIM request as the webhook carries it, for the benchmarks (this one and `cargo bench`'s):
/// a `Provisioned` membership of two hours for `{principal}@bench.test`.
pub fn pim_event(id: &str, action: &str, principal: &str, group: &str, group_name: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "id": id, "action": action, "accessId": "member", "principalId": principal, "groupId": group,
        "status": "Provisioned", "createdDateTime": now,
        "scheduleInfo": {"startDateTime": now, "expiration": {"type": "afterDuration", "duration": "PT2H"}},
        "principal": {"userPrincipalName": format!("{principal}@bench.test"), "displayName": "Bench User"},
        "group": {"displayName": group_name, "membershipRule": null, "onPremisesSyncEnabled": false}
    })
}

/// A bridge running in this process: its URL and webhook secret, and how to stop it.
struct InProcess {
    url: String,
    secret: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The admin token of the bridges the bench starts in its process.
const ADMIN: &str = "bench-admin-token";

/// A bridge in this process on the database, with this default window for its apps.
async fn start_in_process(db: &Database, rate_limit: RateLimit) -> anyhow::Result<InProcess> {
    let mut config = Config::with_data_dir(&db.dir.0);
    config.database_url = db.url.clone();
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
    wait_healthy(&url).await;
    Ok(InProcess {
        url,
        secret,
        stop,
        task,
    })
}

async fn wait_healthy(url: &str) {
    let http = crate::http_client();
    for _ in 0..400 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A signed webhook carrying this event.
fn signed(http: &reqwest::Client, url: &str, secret: &str, event: &Value) -> reqwest::RequestBuilder {
    let body = serde_json::to_vec(event).expect("JSON");
    let header = crate::crypto::signature_header(secret, chrono::Utc::now().timestamp(), &body);
    http.post(format!("{url}/v1/webhooks/pim"))
        .header("content-type", "application/json")
        .header("x-bridge-signature", header)
        .body(body)
}

/// A signed single-event webhook for the group, for a new principal.
fn webhook(http: &reqwest::Client, url: &str, secret: &str, group: &str) -> reqwest::RequestBuilder {
    signed(http, url, secret, &event(group))
}

/// An admin API call that must succeed; answers its JSON body (`Null` when empty).
async fn admin_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    admin: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = http.request(method.clone(), &url).bearer_auth(admin);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await?;
    let status = answer.status();
    let text = answer.text().await?;
    anyhow::ensure!(status.is_success(), "{method} {url} was answered {status}: {text}");
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Registers an app at the bridge with these settings (merged over a bearer-auth app) and
/// assigns the group to it under the target name: the app's id.
async fn register_app(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    target: &str,
    settings: Value,
    group: &str,
    target_name: &str,
) -> anyhow::Result<String> {
    let mut body = json!({"name": format!("bench-{}", crate::crypto::random_hex(4)), "scimBaseUrl": target,
        "auth": {"type": "bearer", "token": "bench"}});
    if let (Some(body), Some(settings)) = (body.as_object_mut(), settings.as_object()) {
        body.extend(settings.clone());
    }
    let app = admin_call(http, reqwest::Method::POST, format!("{url}/v1/apps"), admin, Some(body)).await?;
    let app_id = app["id"].as_str().context("the app was not registered")?.to_string();
    admin_call(
        http,
        reqwest::Method::PUT,
        format!("{url}/v1/apps/{app_id}/groups/{group}"),
        admin,
        Some(json!({"targetDisplayName": target_name})),
    )
    .await?;
    Ok(app_id)
}

/// Starts a cycle of the app now and answers its id.
async fn start_cycle(http: &reqwest::Client, url: &str, admin: &str, app_id: &str) -> anyhow::Result<String> {
    let answer = admin_call(
        http,
        reqwest::Method::POST,
        format!("{url}/v1/apps/{app_id}/sync"),
        admin,
        None,
    )
    .await?;
    Ok(answer["cycleId"].as_str().context("no cycleId")?.to_string())
}

/// The app's cycle with this id, as the API shows it; `None` until the dispatcher has begun it.
async fn cycle(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    app_id: &str,
    cycle_id: &str,
) -> anyhow::Result<Option<Value>> {
    let cycles = admin_call(
        http,
        reqwest::Method::GET,
        format!("{url}/v1/apps/{app_id}/sync-cycles"),
        admin,
        None,
    )
    .await?;
    Ok(cycles["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["id"] == cycle_id)
        .cloned())
}

/// Waits for the app's cycle to end; answers it.
async fn cycle_ended(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    app_id: &str,
    cycle_id: &str,
    within: Duration,
) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let c = cycle(http, url, admin, app_id, cycle_id).await?;
        if let Some(c) = c.as_ref().filter(|c| !c["endedAt"].is_null()) {
            return Ok(c.clone());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the cycle did not end within {within:?}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// The CPU time (user + system) a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc (Linux only)")?;
    // The command name may hold spaces: the fields are counted from after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line (the state, field 3, comes first here), in
    // clock ticks, which Linux exports to user space as 100 per second on every architecture.
    Ok((ticks(11) + ticks(12)) as f64 / 100.0)
}
