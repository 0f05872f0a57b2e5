//! `GET /v1/audit`: who (the token's name) changed what through the API, and when.

use crate::common;

use chrono::{DateTime, Utc};
use common::{Event, Kind, Principal, SourceGroup, Stack, short_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn a_scripted_admin_session_is_in_the_audit_trail_with_actor_action_target_and_time() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &stack.bridge;
    let started = Utc::now() - chrono::Duration::seconds(1);
    let grace = bridge.create_token("grace.hopper", "admin").await;
    let token = grace["token"].as_str().unwrap().to_string();
    let as_grace = |method: Method, path: String, body: Option<Value>| {
        let token = token.clone();
        async move { bridge.api(method, &path, Some(&token), body).await }
    };

    // Create an app and assign a group.
    let name = format!("payroll-{}", short_id());
    let (status, app) = as_grace(
        Method::POST,
        "/v1/apps".into(),
        Some(stack.target.app_registration(&name)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let app_id = app["id"].as_str().unwrap().to_string();
    let group = SourceGroup::new();
    let target_name = format!("Payroll admins {}", short_id());
    let (status, _) = as_grace(
        Method::PUT,
        format!("/v1/apps/{app_id}/groups/{}", group.id),
        Some(json!({"targetDisplayName": target_name})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Pause and resume it.
    for state in ["paused", "active"] {
        let (status, body) = as_grace(
            Method::PATCH,
            format!("/v1/apps/{app_id}"),
            Some(json!({"status": state})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Create a token.
    let (status, created) = as_grace(
        Method::POST,
        "/v1/tokens".into(),
        Some(json!({"name": "ci-robot", "role": "operator"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // Run a cycle, clear quarantine, provision on demand.
    let (status, cycle) = as_grace(Method::POST, format!("/v1/apps/{app_id}/sync"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = as_grace(Method::POST, format!("/v1/apps/{app_id}/quarantine/clear"), None).await;
    assert_eq!(status, StatusCode::OK);
    let ada = Principal::new();
    let activation = Event::activation(&ada, &group);
    bridge.deliver(&[&activation]).await;
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    let (status, entry) = as_grace(
        Method::POST,
        format!("/v1/apps/{app_id}/provision-on-demand"),
        Some(json!({"principalId": ada.id, "groupId": group.id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{entry}");
    assert_eq!(entry["trigger"], "on_demand");
    let finished = Utc::now() + chrono::Duration::seconds(1);

    let (status, audit) = bridge.admin(Method::GET, "/v1/audit", None).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let items = audit["items"].as_array().expect("items");
    let grace_items: Vec<&Value> = items.iter().filter(|i| i["actor"] == "grace.hopper").collect();
    let actions: Vec<&str> = grace_items
        .iter()
        .rev() // oldest first
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "app.create",
            "group.assign",
            "app.update",
            "app.update",
            "token.create",
            "app.sync",
            "app.quarantine_clear",
            "app.provision_on_demand",
        ],
        "{audit}"
    );
    for item in &grace_items {
        let time: DateTime<Utc> = item["time"].as_str().unwrap().parse().expect("RFC 3339 time");
        assert!(started <= time && time <= finished, "{item}");
        let target = item["target"].as_str().unwrap();
        if item["action"] == "token.create" {
            assert_eq!(target, created["id"].as_str().unwrap());
            assert_eq!(item["detail"]["name"], "ci-robot");
            assert_eq!(item["detail"]["role"], "operator");
        } else {
            assert_eq!(target, app_id, "{item}");
        }
    }
    let find = |action: &str| grace_items.iter().rev().find(|i| i["action"] == action).unwrap();
    assert_eq!(find("app.create")["detail"]["name"], name.as_str());
    assert_eq!(find("group.assign")["detail"]["groupId"], group.id.as_str());
    assert_eq!(
        find("group.assign")["detail"]["targetDisplayName"],
        target_name.as_str()
    );
    let updates: Vec<&&Value> = grace_items
        .iter()
        .rev()
        .filter(|i| i["action"] == "app.update")
        .collect();
    assert_eq!(updates[0]["detail"]["status"], "paused");
    assert_eq!(updates[1]["detail"]["status"], "active");
    assert_eq!(find("app.sync")["detail"]["cycleId"], cycle["cycleId"]);
    assert_eq!(
        find("app.provision_on_demand")["detail"]["principalId"],
        ada.id.as_str()
    );
    // The token that created the bridge's own app is the harness' admin token.
    assert!(
        items
            .iter()
            .any(|i| i["action"] == "token.create" && i["detail"]["name"] == "grace.hopper")
    );

    // No credential is in the trail: not the target's, not a token's value.
    let text = audit.to_string();
    assert!(!text.contains(stack.target.credential()));
    assert!(!text.contains(created["token"].as_str().unwrap()));
    assert!(!text.contains(&token));

    // `limit` caps the page; only admins read the trail.
    let (_, two) = bridge.admin(Method::GET, "/v1/audit?limit=2", None).await;
    assert_eq!(two["items"].as_array().unwrap().len(), 2);
    assert_eq!(two["items"][0], items[0]);
    // The cursor continues where the page ended, with nothing skipped or repeated.
    let cursor = two["nextCursor"].as_str().expect("a next page");
    let (_, next) = bridge
        .admin(Method::GET, &format!("/v1/audit?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(next["items"][0], items[2]);
    assert_eq!(next["items"][1], items[3]);
    let (status, _) = bridge.admin(Method::GET, "/v1/audit?limit=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = bridge
        .api(Method::GET, "/v1/audit", created["token"].as_str(), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
