//! Revocation latency at the target while a large cycle runs, beside the same figure with no
//! cycle running: a cycle never holds up an immediate push (SPEC section 5).
//!
//! `cargo bench --bench cycle_revocation` (needs `.venv/bin/scim2-server`: run
//! `scripts/test-deps.sh`). One app at the default pacing (25 requests/s); 2,000 standing members
//! are put in its group and a cycle is started; while it runs, activated members are revoked one
//! at a time and each revocation's `latencyMs` (webhook arrival -> target confirmed) is read from
//! its log entry. Prints the figures; under `cargo test` it does nothing.

mod support;

use serde_json::{Value, json};
use support::{Client, event, summary};

const STANDING: usize = 2_000;
const REVOCATIONS: usize = 60;
const GROUP: &str = "cycle-group";

async fn activate_all(client: &Client, tag: &str) {
    for i in 0..REVOCATIONS {
        let id = format!("{tag}-act-{i}");
        client
            .webhook(&event(&id, "selfActivate", &format!("{tag}-{i}"), GROUP))
            .await;
        client.latency_of(&id).await;
    }
}

async fn revoke_all(client: &Client, tag: &str) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(REVOCATIONS);
    for i in 0..REVOCATIONS {
        let id = format!("{tag}-deact-{i}");
        client
            .webhook(&event(&id, "selfDeactivate", &format!("{tag}-{i}"), GROUP))
            .await;
        latencies.push(client.latency_of(&id).await);
    }
    latencies
}

async fn running_cycle(client: &Client, app_id: &str) -> Option<Value> {
    let cycles = client
        .api(reqwest::Method::GET, &format!("/v1/apps/{app_id}/sync-cycles"), None)
        .await;
    cycles["items"]
        .as_array()?
        .iter()
        .find(|c| c["endedAt"].is_null())
        .cloned()
}

#[tokio::main]
async fn main() {
    if !support::asked_for() {
        return;
    }
    let Some((mut target, base)) = support::scim2_server().await else {
        return;
    };
    let client = Client::start_bridge().await;
    let app_id = client.app(&base, json!({"driftRepair": "off"}), GROUP).await;
    println!(
        "scim-bridge revocation latency while a {STANDING}-member cycle runs (scim2-server on loopback, \
         default pacing 25 requests/s, {REVOCATIONS} revocations one at a time)"
    );

    activate_all(&client, "idle").await;
    let idle = revoke_all(&client, "idle").await;
    summary("revocation, no cycle running", idle);

    for i in 0..STANDING {
        client
            .api(
                reqwest::Method::PUT,
                &format!("/v1/groups/{GROUP}/members/standing-{i}"),
                Some(json!({"principal": {"userPrincipalName": format!("standing-{i}@bench.test")}})),
            )
            .await;
    }
    activate_all(&client, "busy").await;
    let answer = client
        .api(reqwest::Method::POST, &format!("/v1/apps/{app_id}/sync"), None)
        .await;
    let cycle_id = answer["cycleId"].as_str().unwrap().to_string();
    // Let the cycle get going before measuring.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let busy = revoke_all(&client, "busy").await;
    let still = running_cycle(&client, &app_id).await;
    assert!(
        still.as_ref().is_some_and(|c| c["id"] == cycle_id.as_str()),
        "the cycle ran during every revocation"
    );
    summary(&format!("revocation, while the {STANDING}-member cycle runs"), busy);
    println!(
        "{:<56} {}",
        "cycle progress when the last revocation landed",
        still
            .and_then(|c| c["progress"].as_str().map(String::from))
            .unwrap_or_default()
    );

    client.stop().await;
    let _ = target.kill().await;
}
