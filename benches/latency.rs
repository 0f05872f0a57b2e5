//! Webhook-to-membership latency and webhook intake rate against a real scim2-server.
//!
//! `cargo bench --bench latency` (needs `.venv/bin/scim2-server`: run `scripts/test-deps.sh`).
//! Prints the figures; under `cargo test` it does nothing.

mod support;

use std::time::Instant;

use serde_json::{Value, json};
use support::{Client, event, summary};

const ACTIVATIONS: usize = 100;
const INTAKE_EVENTS: usize = 2_000;

#[tokio::main]
async fn main() {
    if !support::asked_for() {
        return;
    }
    let Some((mut target, base)) = support::scim2_server().await else {
        return;
    };
    let client = Client::start_bridge().await;
    client
        .app(&base, json!({"pacing": {"requestsPerSecond": 10000}}), "bench-group")
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

    // The same activations for an app whose attribute mapping has ten entries, functions
    // nested, beside the default mapping's figure above.
    client
        .app(
            &base,
            json!({"pacing": {"requestsPerSecond": 10000}, "attributeMapping": [
                {"target": "userName", "source": "ToLower(NormalizeDiacritics([userPrincipalName]))"},
                {"target": "externalId", "source": "[objectId]"},
                {"target": "displayName", "source": "Join(\" \", [givenName], [surname], [displayName])"},
                {"target": "nickName", "source": "Left(StripSpaces([displayName]), 8)"},
                {"target": "title", "source": "Switch([department], \"Staff\", \"IT\", \"Engineer\", \"HR\", \"People\")"},
                {"target": "name.formatted", "source": "Coalesce([displayName], [userPrincipalName])"},
                {"target": "name.givenName", "source": "IIF(IsPresent([givenName]), [givenName], Word([displayName], 1, \" \"))"},
                {"target": "name.familyName", "source": "Replace([displayName], \"Bench \", , , \"\", , )"},
                {"target": "emails[type eq \"work\"].value", "source": "ToLower([userPrincipalName])"},
                {"target": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "source": "Append(\"E-\", [objectId])"}
            ]}),
            "bench-mapped",
        )
        .await;
    let mut mapped_latency = Vec::new();
    for i in 0..ACTIVATIONS {
        let id = format!("mapped-{i}");
        client
            .webhook(&event(&id, "selfActivate", &format!("m{i}"), "bench-mapped"))
            .await;
        mapped_latency.push(client.latency_of(&id).await);
    }
    summary(
        "activation, ten-attribute mapping: arrival -> confirmed",
        mapped_latency,
    );

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

    client.stop().await;
    let _ = target.kill().await;
}
