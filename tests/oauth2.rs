//! Apps authenticated with OAuth2 client credentials against a real token endpoint; the SCIMMY
//! target accepts only tokens that endpoint issued.

use crate::common;

use common::{Event, Kind, Principal, Stack, connection_test_succeeded};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_is_provisioned_with_client_credentials() {
    let Some(stack) = Stack::start(Kind::ScimmyOAuth).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group);

    stack.bridge.deliver(&[&activation]).await;

    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    stack
        .bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    assert!(
        !stack.bridge.output().contains(stack.target.credential()),
        "the client secret appears in the bridge's output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_succeeds_with_valid_client_credentials() {
    let Some(stack) = Stack::start(Kind::ScimmyOAuth).await else {
        return;
    };
    let (status, body) = stack
        .bridge
        .admin(
            Method::POST,
            &format!("/v1/apps/{}/test-connection", stack.app_id),
            None,
        )
        .await;
    assert!(
        connection_test_succeeded(status, &body),
        "test-connection answered {status}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_with_a_wrong_client_secret_says_it_failed() {
    let Some(target) = common::target(Kind::ScimmyOAuth).await else {
        return;
    };
    let bridge = common::Bridge::start().await;
    let wrong_secret = format!("wrong-secret-{}", common::random_hex());
    let mut registration = target.app_registration(&format!("app-{}", common::short_id()));
    registration["auth"]["clientSecret"] = json!(wrong_secret);
    let (status, app) = bridge.admin(Method::POST, "/v1/apps", Some(registration)).await;
    assert_eq!(status, StatusCode::CREATED, "{app}");

    let (status, body) = bridge
        .admin(
            Method::POST,
            &format!("/v1/apps/{}/test-connection", common::app_id(&app)),
            None,
        )
        .await;
    assert!(
        !connection_test_succeeded(status, &body),
        "test-connection with a wrong client secret answered {status}: {body}"
    );
    let text = body.to_string();
    assert!(!text.is_empty() && text != "null", "says what failed");
    assert!(
        !text.contains(&wrong_secret) && !text.contains(target.credential()),
        "the answer reveals a client secret: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_token_is_fetched_again() {
    let Some(target) = common::oauth_target_with_token_lifetime(2).await else {
        return;
    };
    let bridge = common::Bridge::start().await;
    let app_id = bridge.register_app(&target).await;
    let (first, second) = (common::SourceGroup::new(), common::SourceGroup::new());
    bridge.assign_group(&app_id, &first.id, "Before Expiry").await;
    bridge.assign_group(&app_id, &second.id, "After Expiry").await;
    let principal = Principal::new();

    bridge.deliver(&[&Event::activation(&principal, &first)]).await;
    target
        .assert_members_eventually("Before Expiry", &[principal.upn()])
        .await;

    // The bridge's cached token has expired by now.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let late = Event::activation(&principal, &second);
    bridge.deliver(&[&late]).await;
    target
        .assert_members_eventually("After Expiry", &[principal.upn()])
        .await;
    bridge.wait_for_event_log(&late, "success", Some("add_member")).await;
}
