//! Object links (SPEC §8): which target user is which principal at an app, seen through the API
//! and forgotten while the app is paused, without losing a removal or duplicating a user.

use crate::common;

use common::{Event, Kind, Principal, Stack};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_link_names_the_target_user_and_forgetting_it_loses_no_removal_and_makes_no_duplicate() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &stack.bridge;
    let app = &stack.app_id;
    let (group, target_name) = stack.assigned_group().await;
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group);
    bridge.deliver(&[&activation]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    let user = stack
        .target
        .user_by_user_name(principal.upn())
        .await
        .expect("the user at the target");
    let user_id = common::id_text(&user["id"]);

    let link_path = format!("/v1/apps/{app}/users/{}", principal.id);
    let (status, link) = bridge.admin(Method::GET, &link_path, None).await;
    assert_eq!(status, StatusCode::OK, "{link}");
    assert_eq!(link["targetId"], user_id.as_str(), "{link}");
    assert_eq!(link["userName"], principal.upn(), "{link}");
    assert_eq!(link["createdByBridge"], true, "{link}");
    assert_eq!(link["active"], true, "{link}");
    assert!(link["lastPushAt"].is_string(), "{link}");
    assert_eq!(link["groups"][0]["targetDisplayName"], target_name.as_str(), "{link}");
    assert_eq!(link["groups"][0]["sourceGroupIds"], json!([group.id]), "{link}");
    let (status, page) = bridge
        .admin(Method::GET, &format!("/v1/apps/{app}/users?limit=1"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"][0]["principalId"], principal.id.as_str(), "{page}");
    assert_eq!(
        page["nextCursor"],
        serde_json::Value::Null,
        "one link, one page: {page}"
    );
    let (status, answer) = bridge
        .admin(Method::GET, &format!("/v1/apps/{app}/users/nobody"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    // Forgotten only while paused.
    let (status, answer) = bridge.admin(Method::DELETE, &link_path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let app_path = format!("/v1/apps/{app}");
    let (status, answer) = bridge
        .admin(Method::PATCH, &app_path, Some(json!({"status": "paused"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = bridge.admin(Method::DELETE, &link_path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    let (status, answer) = bridge.admin(Method::GET, &link_path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (_, audit) = bridge.admin(Method::GET, "/v1/audit?limit=5", None).await;
    assert!(audit.to_string().contains("app.forget_link"), "audited: {audit}");
    let (status, answer) = bridge
        .admin(Method::PATCH, &app_path, Some(json!({"status": "active"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // The membership stayed recorded: the deactivation still removes the member (matching the
    // user again), and a new activation finds the same user.
    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    let after: chrono::DateTime<chrono::Utc> = deactivation.json["createdDateTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("the deactivation's time");
    let again = Event::activation(&principal, &group).starting(after + chrono::Duration::seconds(1));
    bridge.deliver(&[&again]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    let users = stack.target.users_with_user_name(principal.upn()).await;
    assert_eq!(users.len(), 1, "no duplicate: {users:?}");
    assert_eq!(common::id_text(&users[0]["id"]), user_id);
    let (status, link) = bridge.admin(Method::GET, &link_path, None).await;
    assert_eq!(status, StatusCode::OK, "{link}");
    assert_eq!(link["targetId"], user_id.as_str(), "matched again: {link}");
    assert_eq!(link["createdByBridge"], false, "found, not created, this time: {link}");
}
