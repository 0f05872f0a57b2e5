//! Where access ends (SPEC §8): the app settings that say what an end does at each app, the
//! checks that keep them safe, and the access-end records' API.

use crate::common;

use common::{Bridge, Event, Kind, Principal, Stack};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn field_of(answer: &Value) -> &str {
    answer["field"].as_str().unwrap_or_default()
}

async fn app_of(bridge: &Bridge, app_id: &str) -> Value {
    let (status, app) = bridge.admin(Method::GET, &format!("/v1/apps/{app_id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{app}");
    app
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_reads_its_access_end_defaults_with_groups_and_without() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let app = app_of(&bridge, &bridge.register_app(&target).await).await;
    assert_eq!(app["provisionGroups"], true, "{app}");
    assert_eq!(app["onAccessEnd"], "removeMember", "{app}");
    assert_eq!(app["accessEndSloSeconds"], 60, "{app}");

    // An app that disables users must be alone on its target: it gets a server of its own.
    let Some(own) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let mut body = own.app_registration(&format!("no-groups-{}", common::short_id()));
    body["provisionGroups"] = json!(false);
    body["accessEndSloSeconds"] = json!(300);
    let (status, answer) = bridge.admin(Method::POST, "/v1/apps", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["provisionGroups"], false, "{answer}");
    assert_eq!(answer["onAccessEnd"], "disableUser", "{answer}");
    assert_eq!(answer["accessEndSloSeconds"], 300, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_end_settings_that_cannot_work_are_refused_naming_their_field() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let register = |settings: Value| {
        let mut body = target.app_registration(&format!("app-{}", common::short_id()));
        for (k, v) in settings.as_object().unwrap() {
            body[k] = v.clone();
        }
        bridge.admin(Method::POST, "/v1/apps", Some(body))
    };
    let (status, answer) = register(json!({"provisionGroups": false, "onAccessEnd": "removeMember"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(field_of(&answer), "onAccessEnd", "{answer}");
    let (status, answer) = register(json!({"onAccessEnd": "disableUser", "outOfScope": "disable"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(field_of(&answer), "outOfScope", "{answer}");
    let (status, answer) = register(json!({"accessEndSloSeconds": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(field_of(&answer), "accessEndSloSeconds", "{answer}");
    let (status, answer) = register(json!({"onAccessEnd": "vanish"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(field_of(&answer), "onAccessEnd", "{answer}");

    // Two apps on one scimBaseUrl: neither may disable or delete users there, and the 422 names
    // the other app.
    let (status, first) = register(json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let first_id = common::app_id(&first);
    let (status, answer) = register(json!({"onAccessEnd": "deleteUser"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(field_of(&answer), "onAccessEnd", "{answer}");
    assert!(answer.to_string().contains(&first_id), "names the other app: {answer}");
    let (status, answer) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{first_id}"),
            Some(json!({"onAccessEnd": "disableUser"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "alone on its URL it may: {answer}");
    assert_eq!(answer["onAccessEnd"], "disableUser", "{answer}");
    // Now the first one disables users there: a second app on the URL is refused.
    let (status, answer) = register(json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(field_of(&answer), "scimBaseUrl", "{answer}");
    assert!(answer.to_string().contains(&first_id), "names the other app: {answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_groups_changes_only_while_nothing_is_provisioned() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let path = format!("/v1/apps/{}", stack.app_id);
    let patch = |value: bool| {
        let on_end = if value { "removeMember" } else { "disableUser" };
        stack.bridge.admin(
            Method::PATCH,
            &path,
            Some(json!({"provisionGroups": value, "onAccessEnd": on_end})),
        )
    };
    let principal = Principal::new();
    let event = Event::activation(&principal, &group);
    stack.bridge.deliver(&[&event]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    let (status, answer) = patch(false).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(app_of(&stack.bridge, &stack.app_id).await["provisionGroups"], true);

    stack.bridge.deliver(&[&event.deactivation()]).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    let (status, answer) = patch(false).await;
    assert_eq!(status, StatusCode::OK, "nothing provisioned any more: {answer}");
    assert_eq!(answer["provisionGroups"], false, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_end_records_are_listed_exported_and_summarised_with_their_filters_checked() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &stack.bridge;
    let (status, page) = bridge.admin(Method::GET, "/v1/access-ends", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"], json!([]), "{page}");
    assert_eq!(page["nextCursor"], Value::Null, "{page}");
    for (query, field) in [
        ("status=gone", "status"),
        ("reason=whim", "reason"),
        ("limit=0", "limit"),
        ("since=yesterday", "since"),
        ("cursor=abc", "cursor"),
    ] {
        let (status, answer) = bridge
            .admin(Method::GET, &format!("/v1/access-ends?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {answer}");
        assert_eq!(field_of(&answer), field, "{answer}");
    }
    let (status, summary) = bridge.admin(Method::GET, "/v1/access-ends/summary", None).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    let app = summary["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["appId"] == stack.app_id.as_str()))
        .unwrap_or_else(|| panic!("the app is in the summary: {summary}"));
    assert_eq!(app["sloSeconds"], 60, "{summary}");
    assert_eq!(
        (app["count"].clone(), app["pending"].clone()),
        (json!(0), json!(0)),
        "{summary}"
    );
    let csv = scim_bridge::http_client()
        .get(format!("{}/v1/access-ends/export?format=csv", bridge.url))
        .bearer_auth(&bridge.admin_token)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("csv");
    assert!(csv.starts_with("id,appId,principalId,"), "{csv}");
}
