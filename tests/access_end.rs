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
    // It disables users by default, without saying `onAccessEnd`: a second app on its target (its
    // URL spelled with a trailing `/`) is refused, naming it.
    let no_groups = common::app_id(&answer);
    let mut body = own.app_registration(&format!("beside-{}", common::short_id()));
    body["scimBaseUrl"] = json!(format!("{}/", own.base_url));
    let (status, answer) = bridge.admin(Method::POST, "/v1/apps", Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(field_of(&answer), "scimBaseUrl", "{answer}");
    assert!(answer.to_string().contains(&no_groups), "names the other app: {answer}");
    // Moved to another URL (PATCH), it is found there, and its old target is free.
    let moved = format!("{}/moved", own.base_url);
    let auth = own.app_registration("auth")["auth"].clone();
    let (status, answer) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{no_groups}"),
            Some(json!({"scimBaseUrl": moved, "auth": auth})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let mut body = own.app_registration(&format!("at-moved-{}", common::short_id()));
    body["scimBaseUrl"] = json!(moved);
    let (status, answer) = bridge.admin(Method::POST, "/v1/apps", Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer.to_string().contains(&no_groups), "names the moved app: {answer}");
    let body = own.app_registration(&format!("at-old-{}", common::short_id()));
    let (status, answer) = bridge.admin(Method::POST, "/v1/apps", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "the old target is free: {answer}");
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
    // Recorded at the bridge, not only at the target.
    stack
        .bridge
        .wait_for_event_log(&event, "success", Some("add_member"))
        .await;
    let (status, answer) = patch(false).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(app_of(&stack.bridge, &stack.app_id).await["provisionGroups"], true);

    let deactivation = event.deactivation();
    stack.bridge.deliver(&[&deactivation]).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    stack
        .bridge
        .wait_for_event_log(&deactivation, "success", Some("remove_member"))
        .await;
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

/// The access-end records of an event at an app, once `pred` holds for them (on the bridge's
/// own answers, polled).
async fn ends_when(bridge: &Bridge, app_id: &str, event_id: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let path = format!("/v1/access-ends?appId={app_id}&eventId={event_id}");
    let deadline = std::time::Instant::now() + common::PUSH_TIMEOUT;
    loop {
        let (status, page) = bridge.admin(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if pred(&items) {
            return items;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "access ends never matched: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The bridge's clock moved on to its next whole second (event times are whole seconds), and
/// that time.
async fn whole_second(bridge: &Bridge) -> chrono::DateTime<chrono::Utc> {
    let now = bridge.now();
    let next = chrono::DateTime::from_timestamp(now.timestamp() + 1, 0).expect("a time");
    bridge.advance_to(next).await;
    next
}

fn millis(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn only(items: &[Value]) -> &Value {
    assert_eq!(items.len(), 1, "one record per app: {items:?}");
    &items[0]
}

fn status_is(status: &'static str) -> impl Fn(&[Value]) -> bool {
    move |items| items.len() == 1 && items[0]["status"] == status
}

/// Holds the answer to the next removal PATCH (the target applies it) long enough for the test
/// to move the bridge's clock while it waits.
async fn hold_the_removal_answer(proxied: &common::clocked::Proxied) {
    proxied
        .proxy
        .arm(json!({"mode": "delay", "ms": 2_000, "when": "after", "count": 1,
                    "match": {"method": "PATCH", "pathContains": "/Groups", "bodyContains": "remove"}}))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deactivation_and_an_expiry_give_removed_records_whose_excess_is_the_time_the_target_held_the_answer() {
    let Some(p) = common::clocked::behind_fault_proxy(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &p.stack.bridge;
    let target = &p.stack.target;
    let held = std::time::Duration::from_secs(30);

    // A deactivation: access ends at the request's time (here its arrival on the bridge's clock).
    let principal = Principal::new();
    let activation = Event::activation(&principal, &p.group);
    bridge.deliver(&[&activation]).await;
    target
        .assert_members_eventually(&p.target_name, &[principal.upn()])
        .await;
    hold_the_removal_answer(&p).await;
    let ended = whole_second(bridge).await;
    let deactivation = activation
        .deactivation()
        .set("/createdDateTime", json!(common::rfc3339(ended)));
    bridge.deliver(&[&deactivation]).await;
    // The target has applied the removal; its answer is held while the bridge's clock moves on.
    target.assert_members_eventually(&p.target_name, &[]).await;
    bridge.advance(held).await;
    let items = ends_when(bridge, &p.app_id, deactivation.id(), status_is("removed")).await;
    let end = only(&items);
    assert_eq!(end["reason"], "deactivation", "{end}");
    assert_eq!(end["endedAt"], millis(ended), "{end}");
    assert_eq!(end["excessMs"], held.as_millis() as i64, "{end}");
    assert_eq!(end["action"], "remove_member", "{end}");
    assert_eq!(end["userPrincipalName"], principal.upn(), "{end}");
    assert_eq!(end["targetDisplayName"], p.target_name.as_str(), "{end}");

    // An expiry: access ends at the scheduled end.
    let other = Principal::new();
    let scheduled_end = whole_second(bridge).await + chrono::Duration::minutes(10);
    let expiring = Event::activation(&other, &p.group).ending_at(scheduled_end);
    bridge.deliver(&[&expiring]).await;
    target.assert_members_eventually(&p.target_name, &[other.upn()]).await;
    hold_the_removal_answer(&p).await;
    bridge.advance_to(scheduled_end).await;
    target.assert_members_eventually(&p.target_name, &[]).await;
    bridge.advance(held).await;
    let items = ends_when(bridge, &p.app_id, expiring.id(), status_is("removed")).await;
    let end = only(&items);
    assert_eq!(end["reason"], "expiry", "{end}");
    assert_eq!(end["endedAt"], millis(scheduled_end), "{end}");
    assert_eq!(end["excessMs"], held.as_millis() as i64, "{end}");

    // The summary judges both against the objective (60 s): neither was late.
    let (_, summary) = bridge.admin(Method::GET, "/v1/access-ends/summary", None).await;
    let app = summary["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["appId"] == p.app_id.as_str()).cloned())
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(app["count"], 2, "{summary}");
    assert_eq!(app["maxMs"], held.as_millis() as i64, "{summary}");
    assert_eq!(app["overSlo"], 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_refusing_the_removal_leaves_a_failed_record_whose_excess_grows_until_it_is_removed() {
    let Some(p) = common::clocked::behind_fault_proxy(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &p.stack.bridge;
    let principal = Principal::new();
    let activation = Event::activation(&principal, &p.group);
    bridge.deliver(&[&activation]).await;
    p.stack
        .target
        .assert_members_eventually(&p.target_name, &[principal.upn()])
        .await;
    p.proxy
        .arm(json!({"mode": "status", "status": 503, "count": -1,
                    "match": {"method": "PATCH", "pathContains": "/Groups", "bodyContains": "remove"}}))
        .await;
    let ended = whole_second(bridge).await;
    let deactivation = activation
        .deactivation()
        .set("/createdDateTime", json!(common::rfc3339(ended)));
    bridge.deliver(&[&deactivation]).await;
    let items = ends_when(bridge, &p.app_id, deactivation.id(), status_is("failed")).await;
    let first = only(&items)["excessMs"].as_i64().expect("an excess while failed");
    bridge.advance(std::time::Duration::from_secs(90)).await;
    let items = ends_when(bridge, &p.app_id, deactivation.id(), status_is("failed")).await;
    let later = only(&items)["excessMs"].as_i64().expect("an excess while failed");
    assert!(
        later >= first + 90_000,
        "the excess grows while failed: {first} then {later}"
    );
    // Past the objective and still failing: the gauge names the app.
    let metrics = scim_bridge::http_client()
        .get(format!("{}/metrics", bridge.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let series = format!("scim_bridge_access_ends_over_slo{{app_id=\"{}\"}} 1", p.app_id);
    assert!(metrics.contains(&series), "{series} in {metrics}");

    p.proxy.clear().await;
    // The next retry (backoff capped at 5 minutes) confirms it.
    bridge.advance(std::time::Duration::from_secs(300)).await;
    let items = ends_when(bridge, &p.app_id, deactivation.id(), status_is("removed")).await;
    let end = only(&items);
    assert!(end["excessMs"].as_i64().unwrap() >= 390_000, "{end}");
    p.stack.target.assert_members_eventually(&p.target_name, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_while_a_standing_membership_entitles_is_kept_and_one_never_provisioned_is_not_provisioned() {
    let Some(p) = common::clocked::behind_fault_proxy(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &p.stack.bridge;
    // Kept: the directory lists the user in the same group; the activation's end removes nothing.
    let kept = Principal::new();
    let activation = Event::activation(&kept, &p.group);
    bridge.deliver(&[&activation]).await;
    p.stack
        .target
        .assert_members_eventually(&p.target_name, &[kept.upn()])
        .await;
    let (status, answer) = bridge
        .admin(
            Method::PUT,
            &format!("/v1/groups/{}/members/{}", p.group.id, kept.id),
            Some(json!({})),
        )
        .await;
    assert!(status.is_success(), "{answer}");
    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    let items = ends_when(bridge, &p.app_id, deactivation.id(), status_is("kept")).await;
    let end = only(&items);
    assert_eq!(end["excessMs"], Value::Null, "{end}");
    assert_eq!(end["action"], Value::Null, "{end}");
    p.stack
        .target
        .assert_members_eventually(&p.target_name, &[kept.upn()])
        .await;

    // Not provisioned: the app is paused, so the activation is deferred; it ends before any add.
    let (status, answer) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", p.app_id),
            Some(json!({"status": "paused"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let never = Principal::new();
    let activation = Event::activation(&never, &p.group);
    bridge.deliver(&[&activation]).await;
    bridge
        .wait_for_event_log(&activation, "deferred", Some("add_member"))
        .await;
    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    let items = ends_when(bridge, &p.app_id, deactivation.id(), status_is("pending")).await;
    assert_eq!(only(&items)["waitingOn"], "paused", "{items:?}");
    let (status, answer) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", p.app_id),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let items = ends_when(bridge, &p.app_id, deactivation.id(), status_is("notProvisioned")).await;
    assert_eq!(only(&items)["excessMs"], Value::Null, "{items:?}");
}

/// The access-end records of a principal at an app, once `pred` holds for them.
async fn principal_ends_when(
    bridge: &Bridge,
    app_id: &str,
    principal_id: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let path = format!("/v1/access-ends?appId={app_id}&principalId={principal_id}");
    let deadline = std::time::Instant::now() + common::PUSH_TIMEOUT;
    loop {
        let (_, page) = bridge.admin(Method::GET, &path, None).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if pred(&items) {
            return items;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "access ends never matched: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_unassignment_and_deprovisioning_ends_are_measured_apart_from_pim_ends() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let bridge = &stack.bridge;
    let app_id = stack.app_id.as_str();
    let (group, target_name) = stack.assigned_group().await;
    whole_second(bridge).await;

    // A standing member, added by a cycle, then removed from the directory: its end is the
    // removal's arrival, and the next cycle (five minutes later) confirms it.
    let standing = Principal::new();
    let member_path = format!("/v1/groups/{}/members/{}", group.id, standing.id);
    let body = json!({"principal": {"userPrincipalName": standing.upn()}});
    let (status, answer) = bridge.admin(Method::PUT, &member_path, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    bridge.sync_and_wait(app_id, false).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[standing.upn()])
        .await;
    let ended = bridge.now();
    let (status, answer) = bridge.admin(Method::DELETE, &member_path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    let items = principal_ends_when(bridge, app_id, &standing.id, status_is("pending")).await;
    assert_eq!(only(&items)["reason"], "directory", "{items:?}");
    assert_eq!(only(&items)["endedAt"], millis(ended), "{items:?}");
    bridge.advance(std::time::Duration::from_secs(300)).await;
    bridge.sync_and_wait(app_id, false).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    let items = principal_ends_when(bridge, app_id, &standing.id, status_is("removed")).await;
    assert_eq!(only(&items)["excessMs"], 300_000, "{items:?}");

    // A PIM end, removed at once.
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group);
    bridge.deliver(&[&activation]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    let ended = whole_second(bridge).await;
    let deactivation = activation
        .deactivation()
        .set("/createdDateTime", json!(common::rfc3339(ended)));
    bridge.deliver(&[&deactivation]).await;
    let items = ends_when(bridge, app_id, deactivation.id(), status_is("removed")).await;
    assert_eq!(only(&items)["excessMs"], 0, "{items:?}");

    // The summary's percentiles are the PIM end's; the directory end is apart, under `other`.
    let (_, summary) = bridge.admin(Method::GET, "/v1/access-ends/summary", None).await;
    let app = summary["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["appId"] == app_id).cloned())
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(
        (app["count"].clone(), app["maxMs"].clone()),
        (json!(1), json!(0)),
        "{summary}"
    );
    assert_eq!(app["overSlo"], 0, "a directory end is not judged: {summary}");
    assert_eq!(app["other"]["count"], 1, "{summary}");
    assert_eq!(app["other"]["maxMs"], 300_000, "{summary}");

    // An unassignment ends the access of the members provisioned through the group.
    let unassigned = Principal::new();
    let activation = Event::activation(&unassigned, &group);
    bridge.deliver(&[&activation]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[unassigned.upn()])
        .await;
    // Recorded at the bridge (not only at the target) before what follows.
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    let (status, answer) = bridge
        .admin(Method::DELETE, &format!("/v1/apps/{app_id}/groups/{}", group.id), None)
        .await;
    assert!(status.is_success(), "{answer}");
    let items = principal_ends_when(bridge, app_id, &unassigned.id, |items| {
        items.iter().any(|e| e["reason"] == "unassigned")
    })
    .await;
    assert_eq!(items[0]["targetDisplayName"], target_name.as_str(), "{items:?}");
    bridge.sync_and_wait(app_id, false).await;
    principal_ends_when(bridge, app_id, &unassigned.id, |items| {
        items
            .iter()
            .any(|e| e["reason"] == "unassigned" && e["status"] == "removed")
    })
    .await;

    // Deprovisioning ends the access of every member the bridge provisioned at the app.
    let (other_group, other_target) = stack.assigned_group().await;
    let last = Principal::new();
    let activation = Event::activation(&last, &other_group);
    bridge.deliver(&[&activation]).await;
    stack
        .target
        .assert_members_eventually(&other_target, &[last.upn()])
        .await;
    // Recorded at the bridge (not only at the target) before what follows.
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    let (status, answer) = bridge
        .admin(Method::DELETE, &format!("/v1/apps/{app_id}?deprovision=true"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let items = principal_ends_when(bridge, app_id, &last.id, |items| {
        items
            .iter()
            .any(|e| e["reason"] == "appDeprovisioned" && e["status"] == "removed")
    })
    .await;
    assert!(items.iter().all(|e| e["action"] == "remove_member"), "{items:?}");
    stack.target.assert_members_eventually(&other_target, &[]).await;
}

/// A target user's `active`, read until it is `expected` (or the wait runs out).
async fn active_eventually(target: &common::Target, user_name: &str, expected: bool) -> Value {
    let deadline = std::time::Instant::now() + common::PUSH_TIMEOUT;
    loop {
        let user = target.user_by_user_name(user_name).await;
        if let Some(user) = &user
            && user["active"] == expected
        {
            return user.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user_name} never had active {expected}: {user:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An app without groups (provisionGroups false) on its own target, with `settings`, and a
/// group assigned to it (no target group named).
async fn app_without_groups(
    bridge: &Bridge,
    target: &common::Target,
    settings: Value,
) -> (String, common::SourceGroup) {
    let mut body = target.app_registration(&format!("accounts-{}", common::short_id()));
    body["provisionGroups"] = json!(false);
    for (k, v) in settings.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, app) = bridge.admin(Method::POST, "/v1/apps", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let app_id = common::app_id(&app);
    let group = common::SourceGroup::new();
    let (status, answer) = bridge
        .admin(
            Method::PUT,
            &format!("/v1/apps/{app_id}/groups/{}", group.id),
            Some(json!({})),
        )
        .await;
    assert!(
        status.is_success(),
        "no targetDisplayName needed without groups: {answer}"
    );
    (app_id, group)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_groups_the_account_is_the_entitlement_disabled_at_the_end_and_enabled_again() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let (app_id, group) = app_without_groups(&bridge, &target, json!({})).await;
    assert_eq!(app_of(&bridge, &app_id).await["onAccessEnd"], "disableUser");

    let principal = Principal::new();
    let activation = Event::activation(&principal, &group);
    bridge.deliver(&[&activation]).await;
    let created = active_eventually(&target, principal.upn(), true).await;
    let (status, groups) = target.get("/Groups", &[]).await;
    assert_eq!(status, StatusCode::OK, "{groups}");
    assert_eq!(
        groups["totalResults"], 0,
        "no group is ever written without groups: {groups}"
    );

    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    let disabled = active_eventually(&target, principal.upn(), false).await;
    assert_eq!(disabled["id"], created["id"], "{disabled}");
    let items = ends_when(&bridge, &app_id, deactivation.id(), status_is("removed")).await;
    assert_eq!(only(&items)["action"], "disable_user", "{items:?}");
    bridge
        .wait_for_event_log(&deactivation, "success", Some("disable_user"))
        .await;

    // The next entitlement (a request after the deactivation) enables the same account: no
    // second user.
    let after: chrono::DateTime<chrono::Utc> = deactivation.json["createdDateTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("the deactivation's time");
    let again = Event::activation(&principal, &group).starting(after + chrono::Duration::seconds(1));
    bridge.deliver(&[&again]).await;
    let enabled = active_eventually(&target, principal.upn(), true).await;
    assert_eq!(enabled["id"], created["id"], "{enabled}");
    assert_eq!(target.users_with_user_name(principal.upn()).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_user_deletes_an_account_the_bridge_created_and_only_disables_one_it_matched() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let (app_id, group) = app_without_groups(&bridge, &target, json!({"onAccessEnd": "deleteUser"})).await;

    // Created by the bridge: deleted at the end.
    let created = Principal::new();
    let activation = Event::activation(&created, &group);
    bridge.deliver(&[&activation]).await;
    let user = active_eventually(&target, created.upn(), true).await;
    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    let items = ends_when(&bridge, &app_id, deactivation.id(), status_is("removed")).await;
    assert_eq!(only(&items)["action"], "delete_user", "{items:?}");
    let (status, gone) = target
        .get(&format!("/Users/{}", common::id_text(&user["id"])), &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted at the target: {gone}");

    // There before the bridge, disabled: matched, enabled by the bridge, and at the end only
    // disabled, never deleted.
    let matched = Principal::new();
    let existing = target.create_user(matched.upn(), None).await;
    let (status, answer) = target
        .request(
            Method::PATCH,
            &format!("/Users/{existing}"),
            &[],
            Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "replace", "path": "active", "value": false}]})),
        )
        .await;
    assert!(status.is_success(), "{answer}");
    let activation = Event::activation(&matched, &group);
    bridge.deliver(&[&activation]).await;
    active_eventually(&target, matched.upn(), true).await;
    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    let items = ends_when(&bridge, &app_id, deactivation.id(), status_is("removed")).await;
    assert_eq!(only(&items)["action"], "disable_user", "{items:?}");
    let user = active_eventually(&target, matched.upn(), false).await;
    assert_eq!(
        common::id_text(&user["id"]),
        existing,
        "the same account, still there: {user}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_groups_disable_user_removes_the_membership_first_then_disables_the_account_it_created() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &stack.bridge;
    let (status, answer) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", stack.app_id),
            Some(json!({"onAccessEnd": "disableUser"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (group, target_name) = stack.assigned_group().await;
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group);
    bridge.deliver(&[&activation]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    active_eventually(&stack.target, principal.upn(), false).await;
    let items = ends_when(bridge, &stack.app_id, deactivation.id(), status_is("removed")).await;
    // The membership's removal is the request that ended access.
    assert_eq!(only(&items)["action"], "remove_member", "{items:?}");
    let entry = bridge
        .wait_for_event_log(&deactivation, "success", Some("remove_member"))
        .await;
    assert!(entry.to_string().contains("account disabled"), "{entry}");
}

async fn set_active_at_target(target: &common::Target, user_id: &str, active: bool) {
    let (status, answer) = target
        .request(
            Method::PATCH,
            &format!("/Users/{user_id}"),
            &[],
            Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "replace", "path": "active", "value": active}]})),
        )
        .await;
    assert!(status.is_success(), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_groups_a_cycle_reads_each_account_and_repairs_its_active_flag() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let (app_id, group) = app_without_groups(&bridge, &target, json!({"driftRepair": "repair"})).await;
    // One account enabled by an activation, one disabled at its end.
    let (kept, ended) = (Principal::new(), Principal::new());
    let kept_activation = Event::activation(&kept, &group);
    let ended_activation = Event::activation(&ended, &group);
    bridge.deliver(&[&kept_activation, &ended_activation]).await;
    let kept_user = active_eventually(&target, kept.upn(), true).await;
    active_eventually(&target, ended.upn(), true).await;
    let deactivation = ended_activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    let ended_user = active_eventually(&target, ended.upn(), false).await;
    bridge
        .wait_for_event_log(&deactivation, "success", Some("disable_user"))
        .await;

    // Someone at the target flips both.
    set_active_at_target(&target, &common::id_text(&kept_user["id"]), false).await;
    set_active_at_target(&target, &common::id_text(&ended_user["id"]), true).await;
    let cycle = bridge.sync_and_wait(&app_id, false).await;
    assert_eq!(cycle["counts"]["driftFound"], 2, "{cycle}");
    active_eventually(&target, kept.upn(), true).await;
    active_eventually(&target, ended.upn(), false).await;
    let (status, groups) = target.get("/Groups", &[]).await;
    assert_eq!(
        (status, groups["totalResults"].clone()),
        (StatusCode::OK, json!(0)),
        "{groups}"
    );
}
