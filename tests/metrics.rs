//! `/metrics` moves with what the bridge does: webhooks by outcome, pushes, deferrals, window
//! rejections, SCIM request latency, cycles and the deferred work waiting, against scim2-server.

use crate::common;

use common::{Bridge, Event, Kind, PUSH_TIMEOUT, Principal, Stack, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// The value of one sample (`name{labels}`); labels are matched as a subset, in any order.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

async fn scrape(bridge: &Bridge) -> String {
    let response = reqwest::get(format!("{}/metrics", bridge.url))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "content type {content_type}");
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_webhooks_pushes_deferrals_cycles_and_the_waiting_work() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &stack.bridge;
    let app = stack.app_id.as_str();
    let (group, target_name) = stack.assigned_group().await;

    let before = scrape(bridge).await;
    assert_eq!(value(&before, "scim_bridge_deferred_jobs", &[("app_id", app)]), 0.0);
    assert_eq!(value(&before, "scim_bridge_app_quarantined", &[("app_id", app)]), 0.0);
    assert_eq!(value(&before, "scim_bridge_apps", &[("status", "active")]), 1.0);

    // Six activations at once: five fit the default window (5 in 10 s), one is deferred.
    let principals: Vec<Principal> = (0..6).map(|_| Principal::new()).collect();
    let events: Vec<Event> = principals.iter().map(|p| Event::activation(p, &group)).collect();
    let refs: Vec<&Event> = events.iter().collect();
    bridge.deliver(&refs).await;
    for event in &events[..5] {
        bridge.wait_for_event_log(event, "success", Some("add_member")).await;
    }
    bridge
        .wait_for_event_log(&events[5], "deferred", Some("add_member"))
        .await;

    // One duplicate, one conflict, and refusals of each kind.
    bridge.deliver(&[&events[0]]).await;
    let changed = events[1].clone().set("/justification", json!("another reason"));
    assert_eq!(bridge.webhook(changed.body()).await.status(), StatusCode::CONFLICT);
    let bad_signature = bridge
        .post_webhook(events[0].body(), Some("application/json"), Some("t=1,v1=00".into()))
        .await;
    assert_eq!(bad_signature.status(), StatusCode::UNAUTHORIZED);
    let text_body = bridge.post_webhook(b"hello".to_vec(), Some("text/plain"), None).await;
    assert_eq!(text_body.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let too_short = Event::activation(&Principal::new(), &group).duration("PT2M");
    assert_eq!(
        bridge.webhook(too_short.body()).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        bridge.webhook(b"{not json".to_vec()).await.status(),
        StatusCode::BAD_REQUEST
    );
    let huge = vec![b' '; 1024 * 1024 + 10];
    // The answer is 413; the client may see the connection closed before it reads it. Either
    // way the refusal is counted below.
    let status = bridge.webhook_too_large(huge).await;
    assert!(
        matches!(status, None | Some(StatusCode::PAYLOAD_TOO_LARGE)),
        "{status:?}"
    );

    let m = scrape(bridge).await;
    let events_total = |outcome| value(&m, "scim_bridge_webhook_events_total", &[("outcome", outcome)]);
    assert_eq!(events_total("accepted"), 6.0, "{m}");
    assert_eq!(events_total("duplicate"), 1.0);
    assert_eq!(events_total("conflict"), 1.0);
    assert_eq!(events_total("rejected"), 5.0);
    for reason in ["signature", "media_type", "rule", "malformed", "too_large"] {
        assert_eq!(
            value(&m, "scim_bridge_webhook_rejections_total", &[("reason", reason)]),
            1.0,
            "rejections for {reason}"
        );
    }
    let pushes = |outcome| value(&m, "scim_bridge_pushes_total", &[("app_id", app), ("outcome", outcome)]);
    assert_eq!(pushes("success"), 5.0);
    assert_eq!(pushes("failure"), 0.0);
    assert_eq!(value(&m, "scim_bridge_deferrals_total", &[("app_id", app)]), 1.0);
    assert!(value(&m, "scim_bridge_window_rejections_total", &[("app_id", app)]) >= 1.0);
    assert_eq!(value(&m, "scim_bridge_deferred_jobs", &[("app_id", app)]), 1.0);
    assert_eq!(
        value(&m, "scim_bridge_push_latency_seconds_count", &[("app_id", app)]),
        5.0
    );
    // Each push looks the user up, creates it, finds or creates the group, and patches it.
    let requests = value(
        &m,
        "scim_bridge_scim_request_duration_seconds_count",
        &[("app_id", app)],
    );
    assert!(requests >= 15.0, "SCIM requests counted: {requests}\n{m}");
    let in_30s = value(
        &m,
        "scim_bridge_scim_request_duration_seconds_bucket",
        &[("app_id", app), ("le", "30")],
    );
    assert_eq!(in_30s, requests, "every request falls in the last finite bucket");

    // The cycle provisions the deferred one and is counted with its duration.
    let (status, started) = bridge.admin(Method::POST, &format!("/v1/apps/{app}/sync"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    stack
        .target
        .assert_members_eventually(&target_name, &principals.iter().map(Principal::upn).collect::<Vec<_>>())
        .await;
    let ended = wait_until(PUSH_TIMEOUT, || async {
        let m = scrape(bridge).await;
        value(
            &m,
            "scim_bridge_cycles_total",
            &[("app_id", app), ("trigger", "manual")],
        ) == 1.0
    })
    .await;
    let m = scrape(bridge).await;
    assert!(ended, "no cycle counted:\n{m}");
    assert_eq!(
        value(&m, "scim_bridge_cycle_duration_seconds_count", &[("app_id", app)]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "scim_bridge_cycle_changes_total",
            &[("app_id", app), ("change", "added")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "scim_bridge_cycle_changes_total",
            &[("app_id", app), ("change", "deferred_taken")]
        ),
        1.0
    );
    assert_eq!(value(&m, "scim_bridge_deferred_jobs", &[("app_id", app)]), 0.0);
    assert!(
        m.contains("# TYPE scim_bridge_scim_request_duration_seconds histogram"),
        "{m}"
    );
    assert!(m.contains("# TYPE scim_bridge_pushes_total counter"), "{m}");

    // Pausing shows in the gauges.
    let (status, _) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{app}"),
            Some(json!({"status": "paused"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let m = scrape(bridge).await;
    assert_eq!(value(&m, "scim_bridge_apps", &[("status", "paused")]), 1.0);
    assert_eq!(value(&m, "scim_bridge_apps", &[("status", "active")]), 0.0);
}
