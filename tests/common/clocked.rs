//! A bridge run in-process on a manual clock, so tests drive the window, expiry and the cycle by
//! moving time instead of sleeping; and a fault-injecting proxy in front of a real target.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use scim_bridge::clock::{Clock, ManualClock, SharedClock};
use scim_bridge::config::{Config, Secret};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{
    Bridge, Kind, Proc, SourceGroup, Stack, Target, free_port, http_client, random_hex, read_answer, require, target,
};

pub struct InProcess {
    pub clock: Arc<ManualClock>,
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

async fn serve(config: Config, clock: Arc<ManualClock>) -> (String, oneshot::Sender<()>, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let shared: SharedClock = clock;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        scim_bridge::run_with_clock(config, shared, listener, shutdown)
            .await
            .expect("bridge runs");
    });
    let http = http_client();
    for _ in 0..200 {
        if http
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (url, stop, task);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the in-process bridge did not answer /healthz");
}

impl Bridge {
    /// A bridge in this process on a manual clock that starts at the real time; `tweak` changes
    /// its configuration (rate limit, sync interval, ...).
    pub async fn start_clocked(tweak: impl FnOnce(&mut Config)) -> Bridge {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let secret = random_hex();
        let previous_secret = random_hex();
        let admin_token = format!("admin-{}", random_hex());
        let mut config = Config::with_data_dir(data_dir.path());
        let database = super::TestDatabase::create();
        if let Some(db) = &database {
            config.database_url = db.url.clone();
            config.encryption_key = Secret::new(&db.encryption_key);
        }
        config.webhook_secrets = vec![Secret::new(&secret), Secret::new(&previous_secret)];
        config.admin_token = Secret::new(&admin_token);
        config.allow_private_targets = true;
        tweak(&mut config);
        let clock = ManualClock::new(Utc::now().timestamp_millis());
        let (url, stop, task) = serve(config.clone(), clock.clone()).await;
        Bridge {
            url,
            admin_token,
            secret,
            previous_secret,
            data_dir: data_dir.path().to_path_buf(),
            http: http_client(),
            proc: None,
            clocked: Some(InProcess {
                clock,
                config,
                stop: Some(stop),
                task: Some(task),
            }),
            extra_env: Vec::new(),
            store_env: Vec::new(),
            bin: std::path::PathBuf::from(env!("CARGO_BIN_EXE_scim-bridge")),
            _database: database,
            _data_dir: data_dir,
        }
    }

    fn in_process(&self) -> &InProcess {
        self.clocked
            .as_ref()
            .expect("an in-process bridge (Bridge::start_clocked)")
    }

    /// The bridge's (manual) time.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.in_process().clock.now()).expect("time")
    }

    /// Moves the bridge's clock; its timers fire as if that much time had passed.
    pub async fn advance(&self, by: Duration) {
        self.in_process().clock.advance(by);
        // Let woken tasks run before the test looks.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Moves the clock to `at` (if it is later).
    pub async fn advance_to(&self, at: DateTime<Utc>) {
        let now = self.in_process().clock.now();
        let to = at.timestamp_millis();
        if to > now {
            self.advance(Duration::from_millis((to - now) as u64)).await;
        }
    }

    /// Stops the bridge (draining in-flight pushes) and starts it again on the same data dir and
    /// clock, as a restarted process would.
    pub async fn restart(&mut self) {
        let inner = self.clocked.as_mut().expect("an in-process bridge");
        if let Some(stop) = inner.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = inner.task.take() {
            task.await.expect("bridge stopped cleanly");
        }
        let (url, stop, task) = serve(inner.config.clone(), inner.clock.clone()).await;
        inner.stop = Some(stop);
        inner.task = Some(task);
        self.url = url;
    }

    /// `GET /v1/apps/{id}` as admin.
    pub async fn app(&self, app_id: &str) -> Value {
        let (status, app) = self.admin(Method::GET, &format!("/v1/apps/{app_id}"), None).await;
        assert_eq!(status, StatusCode::OK, "GET app: {app}");
        app
    }

    /// Registers an app with extra settings (merged into the registration); answers its id.
    pub async fn register_app_with(&self, target: &Target, base_url: &str, settings: Value) -> String {
        let mut body = target.app_registration(&format!("app-{}", super::short_id()));
        body["scimBaseUrl"] = json!(base_url);
        for (k, v) in settings.as_object().expect("settings object") {
            body[k] = v.clone();
        }
        let (status, app) = self.admin(Method::POST, "/v1/apps", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "POST /v1/apps: {app}");
        super::app_id(&app)
    }

    /// Runs a cycle now (`POST .../sync`) and waits until it has ended; answers the cycle.
    pub async fn sync_and_wait(&self, app_id: &str, dry_run: bool) -> Value {
        let path = format!("/v1/apps/{app_id}/sync{}", if dry_run { "?dryRun=true" } else { "" });
        let (status, answer) = self.admin(Method::POST, &path, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "POST sync: {answer}");
        let cycle_id = answer["cycleId"].as_str().expect("cycleId").to_string();
        self.wait_for_cycle(app_id, |c| c["id"] == cycle_id.as_str()).await
    }

    /// Waits until a cycle matching `pred` has ended; answers it.
    pub async fn wait_for_cycle(&self, app_id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..100 {
            let (_, cycles) = self
                .admin(Method::GET, &format!("/v1/apps/{app_id}/sync-cycles"), None)
                .await;
            last = cycles.clone();
            if let Some(c) = cycles["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| pred(c) && !c["endedAt"].is_null())
            {
                return c.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no such cycle ended; cycles: {last}");
    }
}

impl Stack {
    /// A target, an in-process bridge on a manual clock, and an app registered for the target.
    pub async fn start_clocked(kind: Kind, tweak: impl FnOnce(&mut Config)) -> Option<Stack> {
        let target = target(kind).await?;
        let bridge = Bridge::start_clocked(tweak).await;
        let app_id = bridge.register_app(&target).await;
        Some(Stack { bridge, target, app_id })
    }
}

/// `scim-fixtures/fault-proxy.mjs` in front of a real target: answers, delays or drops requests
/// on command, and forwards the rest untouched.
pub struct FaultProxy {
    pub url: String,
    http: reqwest::Client,
    _proc: Proc,
}

impl FaultProxy {
    /// A proxy in front of the target's origin; `None` (after saying why) when node is missing.
    pub async fn start(target: &Target) -> Option<FaultProxy> {
        FaultProxy::start_before(&target.base_url).await
    }

    /// A proxy in front of the origin of `url` (a target's token endpoint, say).
    pub async fn start_before(url: &str) -> Option<FaultProxy> {
        if !require(&[
            ("fault proxy", super::fixtures_dir().join("fault-proxy.mjs")),
            ("node", super::node_bin()),
        ]) {
            return None;
        }
        let origin = {
            let url = reqwest::Url::parse(url).expect("URL");
            format!("{}://{}", url.scheme(), url.host_str().expect("host")) + &format!(":{}", url.port().expect("port"))
        };
        let port = free_port();
        let mut command = Command::new(super::node_bin());
        command.current_dir(super::fixtures_dir()).args([
            "fault-proxy.mjs",
            "--port",
            &port.to_string(),
            "--target",
            &origin,
        ]);
        let mut proc = Proc::spawn("fault-proxy", command);
        proc.wait_for_line("listening on", Duration::from_secs(15)).await;
        Some(FaultProxy {
            url: format!("http://127.0.0.1:{port}"),
            http: http_client(),
            _proc: proc,
        })
    }

    /// The target's base URL as seen through the proxy.
    pub fn base_url_for(&self, target: &Target) -> String {
        let path = reqwest::Url::parse(&target.base_url)
            .expect("target URL")
            .path()
            .to_string();
        format!("{}{}", self.url, path)
    }

    /// Arms a fault (see scim-fixtures/README.md for the fields).
    pub async fn arm(&self, fault: Value) {
        let (status, body) = read_answer(
            self.http
                .post(format!("{}/__faults", self.url))
                .json(&fault)
                .send()
                .await
                .expect("arm"),
        )
        .await;
        assert!(status.is_success(), "arming {fault}: {status} {body}");
    }

    /// Disarms every fault: requests pass through untouched again.
    pub async fn clear(&self) {
        let answer = self
            .http
            .delete(format!("{}/__faults", self.url))
            .send()
            .await
            .expect("clear faults");
        assert!(answer.status().is_success(), "clearing faults: {}", answer.status());
    }

    /// The requests the proxy saw: `[{method, path, status, faulted}]`.
    pub async fn seen(&self) -> Vec<Value> {
        let (_, body) = read_answer(
            self.http
                .get(format!("{}/__faults/log", self.url))
                .send()
                .await
                .expect("log"),
        )
        .await;
        body.as_array().cloned().unwrap_or_default()
    }
}

/// A second app on the stack's target (at `base_url`) with these settings, and a new group
/// assigned to it: answers the app id, the group and the target group's display name.
pub async fn app_with(stack: &Stack, base_url: &str, settings: Value) -> (String, SourceGroup, String) {
    let app_id = stack.bridge.register_app_with(&stack.target, base_url, settings).await;
    let group = SourceGroup::new();
    let target_name = format!("T {}", super::short_id());
    stack.bridge.assign_group(&app_id, &group.id, &target_name).await;
    (app_id, group, target_name)
}

/// A stack on a manual clock with an app that reaches its target through the fault proxy.
pub struct Proxied {
    pub stack: Stack,
    pub proxy: FaultProxy,
    pub app_id: String,
    pub group: SourceGroup,
    pub target_name: String,
}

/// A stack on a manual clock whose second app reaches the target through the fault proxy, with a
/// group assigned to it. Events start at the real time (whole seconds), so the clock is moved up
/// to it: starting the proxy takes a moment.
pub async fn behind_fault_proxy(kind: Kind) -> Option<Proxied> {
    let stack = Stack::start_clocked(kind, |_| {}).await?;
    let proxy = FaultProxy::start(&stack.target).await?;
    let (app_id, group, target_name) = app_with(&stack, &proxy.base_url_for(&stack.target), json!({})).await;
    stack.bridge.advance_to(Utc::now() + chrono::Duration::seconds(1)).await;
    Some(Proxied {
        stack,
        proxy,
        app_id,
        group,
        target_name,
    })
}
