//! What the benchmarks share: a scim2-server target, an in-process bridge, a small API client.

#![allow(dead_code)] // each benchmark uses a different part

use std::time::Duration;

use scim_bridge::config::{Config, RateLimit, Secret};
use serde_json::{Value, json};

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn summary(name: &str, mut values: Vec<f64>) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name:<56} n={:<4} p50={:>7.1} ms  p95={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        values.len(),
        percentile(&values, 0.50),
        percentile(&values, 0.95),
        percentile(&values, 0.99),
        values[values.len() - 1]
    );
}

/// A PIM request as the webhook carries it (the group's display name is its id).
pub fn event(id: &str, action: &str, principal: &str, group: &str) -> Value {
    scim_bridge::bench::pim_event(id, action, principal, group, group)
}

/// Whether the benchmark was asked for (`cargo bench`), not merely built by `cargo test`.
pub fn asked_for() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A scim2-server on a free port with bearer token `bench`; `None` (said why) when not installed.
pub async fn scim2_server() -> Option<(tokio::process::Child, String)> {
    let started = scim_bridge::bench::start_scim2_server()
        .await
        .expect("scim2-server starts");
    if started.is_none() {
        println!("skipped: .venv/bin/scim2-server is missing (run scripts/test-deps.sh)");
    }
    started
}

pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    secret: String,
    admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    bridge: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Client {
    /// A bridge in this process on the system clock. Latency, not the window, is measured: the
    /// window is opened wide.
    pub async fn start_bridge() -> Client {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::with_data_dir(dir.path());
        config.allow_private_targets = true;
        config.rate_limit = RateLimit {
            requests: 10_000,
            window_seconds: 1,
        };
        let secret = config.webhook_secrets[0].expose().to_string();
        let admin = "bench-admin".to_string();
        config.admin_token = Secret::new(&admin);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let bridge = tokio::spawn(scim_bridge::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let client = Client {
            http: scim_bridge::http_client(),
            url,
            secret,
            admin,
            stop: Some(stop),
            bridge: Some(bridge),
            _dir: dir,
        };
        for _ in 0..200 {
            if client.http.get(format!("{}/healthz", client.url)).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        client
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(bridge) = self.bridge.take() {
            let _ = bridge.await;
        }
    }

    pub async fn webhook(&self, body: &Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let header = scim_bridge::crypto::signature_header(&self.secret, chrono::Utc::now().timestamp(), &bytes);
        let answer = self
            .http
            .post(format!("{}/v1/webhooks/pim", self.url))
            .header("content-type", "application/json")
            .header("x-bridge-signature", header)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());
    }

    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().json().await.unwrap_or(Value::Null)
    }

    /// Registers an app for the scim2-server at `base` with these settings, and assigns
    /// `group` to it; answers the app's id.
    pub async fn app(&self, base: &str, settings: Value, group: &str) -> String {
        let mut registration =
            json!({"name": "bench", "scimBaseUrl": base, "auth": {"type": "bearer", "token": "bench"}});
        for (k, v) in settings.as_object().unwrap() {
            registration[k] = v.clone();
        }
        let app = self.api(reqwest::Method::POST, "/v1/apps", Some(registration)).await;
        let app_id = app["id"].as_str().unwrap_or_else(|| panic!("{app}")).to_string();
        self.api(
            reqwest::Method::PUT,
            &format!("/v1/apps/{app_id}/groups/{group}"),
            Some(json!({"targetDisplayName": group})),
        )
        .await;
        app_id
    }

    /// Waits for the event's entry with status `success`; answers the bridge's `latencyMs`.
    pub async fn latency_of(&self, event_id: &str) -> f64 {
        loop {
            let logs = self
                .api(
                    reqwest::Method::GET,
                    &format!("/v1/provisioning-logs?eventId={event_id}"),
                    None,
                )
                .await;
            if let Some(e) = logs["items"]
                .as_array()
                .and_then(|i| i.iter().find(|e| e["status"] == "success"))
            {
                return e["latencyMs"].as_f64().unwrap_or(f64::NAN);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
