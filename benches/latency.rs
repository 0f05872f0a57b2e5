//! Webhook-to-membership latency and webhook intake rate against a real scim2-server.
//!
//! `cargo bench --bench latency` (needs `.venv/bin/scim2-server`: run `scripts/test-deps.sh`).
//! Prints the figures; under `cargo test` it does nothing.

use std::time::{Duration, Instant};

use scim_bridge::config::{Config, RateLimit, Secret};
use serde_json::{Value, json};

const ACTIVATIONS: usize = 100;
const INTAKE_EVENTS: usize = 2_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut values: Vec<f64>) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name:<44} n={:<4} p50={:>7.1} ms  p95={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        values.len(),
        percentile(&values, 0.50),
        percentile(&values, 0.95),
        percentile(&values, 0.99),
        values[values.len() - 1]
    );
}

fn event(id: &str, action: &str, principal: &str, group: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "id": id, "action": action, "accessId": "member", "principalId": principal, "groupId": group,
        "status": "Provisioned", "createdDateTime": now,
        "scheduleInfo": {"startDateTime": now, "expiration": {"type": "afterDuration", "duration": "PT2H"}},
        "principal": {"userPrincipalName": format!("{principal}@bench.test"), "displayName": "Bench User"},
        "group": {"displayName": group, "membershipRule": null, "onPremisesSyncEnabled": false}
    })
}

struct Client {
    http: reqwest::Client,
    url: String,
    secret: String,
    admin: String,
}

impl Client {
    async fn webhook(&self, body: &Value) {
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

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().json().await.unwrap_or(Value::Null)
    }

    /// Waits for the event's entry with that status; answers the bridge's `latencyMs`.
    async fn latency_of(&self, event_id: &str) -> f64 {
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

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let scim2 = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/scim2-server");
    if !scim2.exists() {
        println!("skipped: {} is missing (run scripts/test-deps.sh)", scim2.display());
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut target = tokio::process::Command::new(&scim2)
        .args(["--port", &port.to_string(), "--bearer-token", "bench"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/v2");
    for _ in 0..200 {
        if http
            .get(format!("{base}/Users"))
            .bearer_auth("bench")
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.allow_private_targets = true;
    // Latency, not the window, is measured here: one push at a time, far below any limit.
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
        http,
        url,
        secret,
        admin,
    };
    for _ in 0..200 {
        if client.http.get(format!("{}/healthz", client.url)).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let app = client
        .api(
            reqwest::Method::POST,
            "/v1/apps",
            Some(
                json!({"name": "bench", "scimBaseUrl": base, "auth": {"type": "bearer", "token": "bench"},
                        "pacing": {"requestsPerSecond": 10000}}),
            ),
        )
        .await;
    let app_id = app["id"].as_str().unwrap().to_string();
    client
        .api(
            reqwest::Method::PUT,
            &format!("/v1/apps/{app_id}/groups/bench-group"),
            Some(json!({"targetDisplayName": "Bench"})),
        )
        .await;

    println!(
        "scim-bridge latency benchmark against scim2-server on loopback ({ACTIVATIONS} activations, one at a time)"
    );
    let mut bridge_latency = Vec::new();
    let mut client_latency = Vec::new();
    for i in 0..ACTIVATIONS {
        let id = format!("act-{i}");
        let started = Instant::now();
        client
            .webhook(&event(&id, "selfActivate", &format!("p{i}"), "bench-group"))
            .await;
        bridge_latency.push(client.latency_of(&id).await);
        client_latency.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    summary("activation: webhook arrival -> target confirmed", bridge_latency);
    summary("activation: client send -> log entry visible", client_latency);

    let mut removal_latency = Vec::new();
    for i in 0..ACTIVATIONS {
        let id = format!("deact-{i}");
        client
            .webhook(&event(&id, "selfDeactivate", &format!("p{i}"), "bench-group"))
            .await;
        removal_latency.push(client.latency_of(&id).await);
    }
    summary("revocation: webhook arrival -> target confirmed", removal_latency);

    // Intake: batches of 100 events for a group assigned to no app (no pushes), committed each.
    let started = Instant::now();
    for batch in 0..INTAKE_EVENTS / 100 {
        let events: Vec<Value> = (0..100)
            .map(|i| {
                event(
                    &format!("in-{batch}-{i}"),
                    "selfActivate",
                    &format!("q{batch}-{i}"),
                    "unassigned",
                )
            })
            .collect();
        client.webhook(&json!({"value": events})).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{:<44} {:.0} events/s ({INTAKE_EVENTS} events in batches of 100, {secs:.2} s)",
        "webhook intake (committed)",
        INTAKE_EVENTS as f64 / secs
    );

    let _ = stop.send(());
    let _ = bridge.await;
    let _ = target.kill().await;
}
