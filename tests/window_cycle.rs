//! The per-app rate window, revocation, the synchronization cycle, expiry and quarantine (SPEC
//! sections 1 and 5), against a real scim2-server, on a manual clock.

use crate::common;

use std::time::Duration;

use common::clocked::{FaultProxy, Proxied, app_with, behind_fault_proxy};
use common::{Event, Kind, PUSH_TIMEOUT, Principal, SourceGroup, Stack, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn principals(n: usize) -> Vec<Principal> {
    (0..n).map(|_| Principal::new()).collect()
}

fn upns(ps: &[Principal]) -> Vec<&str> {
    ps.iter().map(Principal::upn).collect()
}

/// Activations for each principal in the group, starting at the bridge's time.
fn activations(stack: &Stack, ps: &[Principal], group: &SourceGroup) -> Vec<Event> {
    ps.iter()
        .map(|p| Event::activation(p, group).starting(stack.bridge.now()))
        .collect()
}

async fn deliver_all(stack: &Stack, events: &[Event]) -> Value {
    let refs: Vec<&Event> = events.iter().collect();
    stack.bridge.deliver(&refs).await
}

fn next_sync(app: &Value) -> chrono::DateTime<chrono::Utc> {
    app["nextSyncAt"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("nextSyncAt")
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_activations_push_five_at_once_and_the_cycle_provisions_the_rest_even_after_a_restart() {
    let Some(mut stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let ps = principals(8);
    let events = activations(&stack, &ps, &group);
    deliver_all(&stack, &events).await;

    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[..5]))
        .await;
    let app = stack.bridge.app(&stack.app_id).await;
    for event in &events[5..] {
        let log = stack
            .bridge
            .wait_for_event_log(event, "deferred", Some("add_member"))
            .await;
        assert_eq!(
            log["deferredUntil"], app["nextSyncAt"],
            "deferred to the app's next cycle: {log}"
        );
    }
    for event in &events[..5] {
        let log = stack
            .bridge
            .wait_for_event_log(event, "success", Some("add_member"))
            .await;
        assert!(log["latencyMs"].as_i64().is_some(), "latency recorded: {log}");
    }

    // A restart neither resets nor skips the cycle.
    stack.bridge.restart().await;
    let after = stack.bridge.app(&stack.app_id).await;
    assert_eq!(after["nextSyncAt"], app["nextSyncAt"], "nextSyncAt survives a restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[..5]))
        .await;

    stack
        .bridge
        .advance_to(next_sync(&app) + chrono::Duration::seconds(1))
        .await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
    let cycle = stack
        .bridge
        .wait_for_cycle(&stack.app_id, |c| c["trigger"] == "schedule")
        .await;
    assert_eq!(cycle["counts"]["added"], 3, "{cycle}");
    assert_eq!(cycle["counts"]["deferredTaken"], 3, "{cycle}");
    let log = stack
        .bridge
        .wait_for_event_log(&events[7], "success", Some("add_member"))
        .await;
    assert_eq!(log["trigger"], "sync");
    assert_eq!(log["cycleId"], cycle["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sixth_push_inside_ten_seconds_is_deferred_and_five_more_go_once_the_window_passes() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let ps = principals(11);
    deliver_all(&stack, &activations(&stack, &ps[..5], &group)).await;
    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[..5]))
        .await;

    stack.bridge.advance(Duration::from_secs(3)).await;
    let sixth = activations(&stack, &ps[5..6], &group);
    deliver_all(&stack, &sixth).await;
    stack
        .bridge
        .wait_for_event_log(&sixth[0], "deferred", Some("add_member"))
        .await;

    stack.bridge.advance(Duration::from_millis(7_500)).await; // t = 10.5 s
    let more = activations(&stack, &ps[6..], &group);
    deliver_all(&stack, &more).await;
    let mut expected = upns(&ps[..5]);
    expected.extend(upns(&ps[6..]));
    stack.target.assert_members_eventually(&target_name, &expected).await;
    for event in &more {
        stack
            .bridge
            .wait_for_event_log(event, "success", Some("add_member"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_for_one_app_never_delays_another() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group_a, _) = stack.assigned_group().await;
    let app_b = stack.bridge.register_app(&stack.target).await;
    let group_b = SourceGroup::new();
    let target_b = format!("B {}", common::short_id());
    stack.bridge.assign_group(&app_b, &group_b.id, &target_b).await;

    let burst = activations(&stack, &principals(7), &group_a);
    deliver_all(&stack, &burst).await;
    let lone = principals(1);
    let for_b = activations(&stack, &lone, &group_b);
    deliver_all(&stack, &for_b).await;

    stack.target.assert_members_eventually(&target_b, &upns(&lone)).await;
    let log = stack
        .bridge
        .wait_for_event_log(&for_b[0], "success", Some("add_member"))
        .await;
    assert_eq!(log["appId"], app_b.as_str());
    stack.bridge.wait_for_event_log(&burst[6], "deferred", None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn removals_wait_only_for_the_window_and_cancel_a_still_deferred_activation() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let ps = principals(8);
    let events = activations(&stack, &ps, &group);
    deliver_all(&stack, &events).await;
    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[..5]))
        .await;
    stack.bridge.wait_for_event_log(&events[7], "deferred", None).await;

    // Three pushed members and one still-deferred activation end while the window is full.
    let ends: Vec<Event> = [0, 1, 2, 6].iter().map(|&i| events[i].deactivation()).collect();
    deliver_all(&stack, &ends).await;
    let cancelled = stack
        .bridge
        .wait_for_event_log(&ends[3], "skipped", Some("remove_member"))
        .await;
    assert!(
        cancelled["reason"].as_str().unwrap_or("").contains("deferred"),
        "{cancelled}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stack.target.group_member_user_names(&target_name).await.len(),
        5,
        "removals wait while the window is full"
    );

    // Ten seconds later the window has room: the removals go at once, long before the cycle.
    stack.bridge.advance(Duration::from_secs(10)).await;
    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[3..5]))
        .await;
    for end in &ends[..3] {
        let log = stack
            .bridge
            .wait_for_event_log(end, "success", Some("remove_member"))
            .await;
        assert_eq!(log["trigger"], "deactivation");
    }

    // The cycle provisions the deferred activations that are still wanted, not the cancelled one.
    let app = stack.bridge.app(&stack.app_id).await;
    stack
        .bridge
        .advance_to(next_sync(&app) + chrono::Duration::seconds(1))
        .await;
    let mut expected = upns(&ps[3..6]);
    expected.push(ps[7].upn());
    stack.target.assert_members_eventually(&target_name, &expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activation_ends_at_the_target_at_its_end_time_even_across_a_restart() {
    let Some(mut stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let ps = principals(1);
    let event = Event::activation(&ps[0], &group)
        .starting(stack.bridge.now())
        .duration("PT5M");
    stack.bridge.deliver(&[&event]).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;

    stack.bridge.advance(Duration::from_secs(4 * 60)).await;
    stack.bridge.restart().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;

    stack.bridge.advance(Duration::from_secs(61)).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    let log = stack
        .bridge
        .wait_for_event_log(&event, "success", Some("remove_member"))
        .await;
    assert_eq!(log["trigger"], "expiry");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_future_start_is_pushed_when_it_comes() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let ps = principals(1);
    let start = stack.bridge.now() + chrono::Duration::minutes(10);
    let event = Event::activation(&ps[0], &group)
        .starting(start)
        .set("/createdDateTime", json!(common::rfc3339(stack.bridge.now())));
    stack.bridge.deliver(&[&event]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        stack.target.group_member_user_names(&target_name).await.is_empty(),
        "not before its start"
    );
    stack.bridge.advance(Duration::from_secs(10 * 60 + 1)).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_is_reported_then_repaired_and_a_dry_run_changes_nothing() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let ps = principals(2);
    let event = Event::activation(&ps[0], &group).starting(stack.bridge.now());
    stack.bridge.deliver(&[&event]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[..1]))
        .await;

    // Someone removes the member at the target behind the bridge's back.
    let group_id = stack.target.groups_named(&target_name).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let user_id = stack.target.user_by_user_name(ps[0].upn()).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = stack
        .target
        .request(
            Method::PATCH,
            &format!("/Groups/{group_id}"),
            &[],
            Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "remove", "path": format!("members[value eq \"{user_id}\"]")}]})),
        )
        .await;
    assert!(status.is_success());
    // And a standing member arrives through the directory feed.
    let (status, body) = stack
        .bridge
        .admin(
            Method::PUT,
            &format!("/v1/groups/{}/members/{}", group.id, ps[1].id),
            Some(json!({"principal": {"userPrincipalName": ps[1].upn(), "displayName": ps[1].display_name}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let dry = stack.bridge.sync_and_wait(&stack.app_id, true).await;
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["counts"]["driftFound"], 1, "{dry}");
    let changes = dry["report"]["changes"].to_string();
    assert!(
        changes.contains(&ps[1].id),
        "the dry run reports the pending add: {changes}"
    );
    assert!(
        stack.target.group_member_user_names(&target_name).await.is_empty(),
        "a dry run writes nothing"
    );

    let reported = stack.bridge.sync_and_wait(&stack.app_id, false).await;
    assert_eq!(reported["counts"]["driftFound"], 1, "{reported}");
    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[1..]))
        .await;
    stack
        .bridge
        .wait_for_log(
            &[("principalId", ps[0].id.as_str()), ("status", "skipped")],
            |e| e["reason"].as_str().unwrap_or("").contains("drift"),
            PUSH_TIMEOUT,
        )
        .await;

    let (status, _) = stack
        .bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", stack.app_id),
            Some(json!({"driftRepair": "repair"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let repaired = stack.bridge.sync_and_wait(&stack.app_id, false).await;
    assert_eq!(repaired["counts"]["driftFound"], 1, "{repaired}");
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_refusing_the_credentials_is_quarantined_and_clears_on_request() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let mut registration = stack.target.app_registration("refused");
    registration["auth"]["token"] = json!("not-the-token");
    let (status, app) = stack.bridge.admin(Method::POST, "/v1/apps", Some(registration)).await;
    assert_eq!(status, StatusCode::CREATED);
    let app_id = common::app_id(&app);
    let group = SourceGroup::new();
    let target_name = format!("Q {}", common::short_id());
    stack.bridge.assign_group(&app_id, &group.id, &target_name).await;
    let ps = principals(2);
    let (status, _) = stack
        .bridge
        .admin(
            Method::PUT,
            &format!("/v1/groups/{}/members/{}", group.id, ps[0].id),
            Some(json!({"principal": {"userPrincipalName": ps[0].upn()}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let cycle = stack.bridge.sync_and_wait(&app_id, false).await;
    assert_eq!(cycle["status"], "quarantined", "{cycle}");
    let app = stack.bridge.app(&app_id).await;
    assert_eq!(app["status"], "quarantined");
    assert!(app["statusReason"].as_str().unwrap_or("").contains("401"), "{app}");

    let event = Event::activation(&ps[1], &group).starting(stack.bridge.now());
    stack.bridge.deliver(&[&event]).await;
    let log = stack.bridge.wait_for_event_log(&event, "deferred", None).await;
    assert_eq!(log["reason"], "app quarantined");

    let (status, _) = stack
        .bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{app_id}"),
            Some(json!({"auth": stack.target.app_auth()})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, cleared) = stack
        .bridge
        .admin(Method::POST, &format!("/v1/apps/{app_id}/quarantine/clear"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["status"], "active");
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_answering_429_is_never_quarantined() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let Some(proxy) = FaultProxy::start(&stack.target).await else {
        return;
    };
    let app_id = stack
        .bridge
        .register_app_with(&stack.target, &proxy.base_url_for(&stack.target), json!({}))
        .await;
    let group = SourceGroup::new();
    stack.bridge.assign_group(&app_id, &group.id, "Throttled").await;
    for p in principals(3) {
        let (status, _) = stack
            .bridge
            .admin(
                Method::PUT,
                &format!("/v1/groups/{}/members/{}", group.id, p.id),
                Some(json!({"principal": {"userPrincipalName": p.upn()}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    proxy
        .arm(json!({"mode": "status", "status": 429, "retryAfter": "0", "count": -1}))
        .await;

    let cycle = stack.bridge.sync_and_wait(&app_id, false).await;
    assert_ne!(cycle["status"], "quarantined", "{cycle}");
    assert_eq!(stack.bridge.app(&app_id).await["status"], "active");
    assert!(
        proxy.seen().await.iter().any(|r| r["status"] == 429),
        "the target did answer 429"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn under_overflow_drain_deferred_activations_go_as_soon_as_the_window_has_room() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (_, group, target_name) = app_with(&stack, &stack.target.base_url, json!({"overflow": "drain"})).await;
    let ps = principals(7);
    let events = activations(&stack, &ps, &group);
    deliver_all(&stack, &events).await;
    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[..5]))
        .await;
    stack.bridge.wait_for_event_log(&events[6], "deferred", None).await;
    stack.bridge.advance(Duration::from_secs(10)).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_app_rate_limit_is_honoured() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let settings = json!({"rateLimit": {"requests": 2, "windowSeconds": 30}});
    let (app_id, group, target_name) = app_with(&stack, &stack.target.base_url, settings).await;
    assert_eq!(stack.bridge.app(&app_id).await["rateLimit"]["requests"], 2);
    let ps = principals(3);
    let events = activations(&stack, &ps, &group);
    deliver_all(&stack, &events).await;
    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[..2]))
        .await;
    stack.bridge.wait_for_event_log(&events[2], "deferred", None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_app_gets_no_pushes_until_it_is_active_and_its_cycle_comes() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let path = format!("/v1/apps/{}", stack.app_id);
    let (status, app) = stack
        .bridge
        .admin(Method::PATCH, &path, Some(json!({"status": "paused"})))
        .await;
    assert_eq!((status, app["status"].as_str()), (StatusCode::OK, Some("paused")));
    let ps = principals(1);
    let events = activations(&stack, &ps, &group);
    deliver_all(&stack, &events).await;
    let log = stack.bridge.wait_for_event_log(&events[0], "deferred", None).await;
    assert_eq!(log["reason"], "app paused");
    let (status, body) = stack.bridge.admin(Method::POST, &format!("{path}/sync"), None).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a paused app refuses a writing cycle: {body}"
    );
    assert!(stack.target.group_member_user_names(&target_name).await.is_empty());

    let (status, _) = stack
        .bridge
        .admin(Method::PATCH, &path, Some(json!({"status": "active"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let app = stack.bridge.app(&stack.app_id).await;
    stack
        .bridge
        .advance_to(next_sync(&app) + chrono::Duration::seconds(1))
        .await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_moves_the_end_of_an_activation() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let ps = principals(1);
    let start = stack.bridge.now();
    let event = Event::activation(&ps[0], &group).starting(start).duration("PT5M");
    stack.bridge.deliver(&[&event]).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;

    stack.bridge.advance(Duration::from_secs(60)).await;
    let extend = event
        .clone()
        .new_id()
        .action("selfExtend")
        .duration("PT1H")
        .set("/createdDateTime", json!(common::rfc3339(stack.bridge.now())));
    stack.bridge.deliver(&[&extend]).await;
    stack.bridge.advance(Duration::from_secs(5 * 60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;

    stack.bridge.advance(Duration::from_secs(55 * 60)).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
}

/// The expiry timer learns an activation's end from the intake (without reading the store): an
/// end that comes before the timer's next look (a minute at the most) still removes the member
/// at that end, not at the look.
#[tokio::test(flavor = "multi_thread")]
async fn an_activation_ending_before_the_expirys_next_look_is_removed_at_its_end() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let ps = principals(1);
    // Five minutes from a start 4 min 50 s ago: it ends in 10 s.
    let start = stack.bridge.now() - chrono::Duration::seconds(290);
    let event = Event::activation(&ps[0], &group).starting(start).duration("PT5M");
    stack.bridge.deliver(&[&event]).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;

    stack.bridge.advance(Duration::from_secs(11)).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    let removal = stack
        .bridge
        .wait_for_log(
            &[("appId", stack.app_id.as_str()), ("trigger", "expiry")],
            |e| e["status"] == "success",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(removal["action"], "remove_member", "{removal}");
}

#[tokio::test(flavor = "multi_thread")]
async fn assigning_a_group_later_provisions_its_activations_at_the_next_cycle_and_unassigning_removes_them() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let group = SourceGroup::new();
    let ps = principals(1);
    let event = Event::activation(&ps[0], &group).starting(stack.bridge.now());
    let answer = stack.bridge.deliver(&[&event]).await;
    assert_eq!(answer["events"][0]["jobs"], json!([]), "no app has the group yet");

    let target_name = format!("Later {}", common::short_id());
    stack.bridge.assign_group(&stack.app_id, &group.id, &target_name).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        stack.target.groups_named(&target_name).await.is_empty(),
        "assignment alone pushes nothing"
    );
    stack.bridge.sync_and_wait(&stack.app_id, false).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;

    let (status, _) = stack
        .bridge
        .admin(
            Method::DELETE,
            &format!("/v1/apps/{}/groups/{}", stack.app_id, group.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let cycle = stack.bridge.sync_and_wait(&stack.app_id, false).await;
    assert_eq!(cycle["counts"]["removed"], 1, "{cycle}");
    stack.target.assert_members_eventually(&target_name, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_scope_disable_disables_accounts_the_bridge_created_and_enables_them_again() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (app_id, group, target_name) = app_with(&stack, &stack.target.base_url, json!({"outOfScope": "disable"})).await;
    let ps = principals(1);
    let event = Event::activation(&ps[0], &group).starting(stack.bridge.now());
    stack.bridge.deliver(&[&event]).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
    stack.bridge.deliver(&[&event.deactivation()]).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;

    let cycle = stack.bridge.sync_and_wait(&app_id, false).await;
    assert_eq!(cycle["counts"]["usersDisabled"], 1, "{cycle}");
    let user = stack.target.user_by_user_name(ps[0].upn()).await.expect("user kept");
    assert_eq!(user["active"], false, "{user}");

    stack.bridge.advance(Duration::from_secs(11)).await;
    let again = Event::activation(&ps[0], &group).starting(stack.bridge.now());
    stack.bridge.deliver(&[&again]).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
    let user = stack.target.user_by_user_name(ps[0].upn()).await.expect("user");
    assert_eq!(user["active"], true, "{user}");
}

/// PATCHes to groups the proxy saw (answered or not).
async fn group_patches(proxy: &FaultProxy) -> usize {
    proxy
        .seen()
        .await
        .iter()
        .filter(|r| r["method"] == "PATCH" && r["path"].as_str().unwrap_or("").contains("/Groups/"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_obeyed_on_the_bridges_clock_and_a_throttled_push_still_lands() {
    let Some(Proxied {
        stack,
        proxy,
        group,
        target_name,
        ..
    }) = behind_fault_proxy(Kind::Scim2Server).await
    else {
        return;
    };
    proxy
        .arm(json!({"mode": "status", "status": 429, "retryAfter": "30", "count": 2,
                    "match": {"method": "PATCH", "pathContains": "/Groups"}}))
        .await;
    let ps = principals(1);
    let events = activations(&stack, &ps, &group);
    deliver_all(&stack, &events).await;
    let first = stack
        .bridge
        .wait_for_log(
            &[("eventId", events[0].id())],
            |e| e["status"] == "deferred",
            Duration::from_secs(10),
        )
        .await;
    let time = |e: &Value, f: &str| chrono::DateTime::parse_from_rfc3339(e[f].as_str().unwrap()).unwrap();
    assert_eq!(
        (time(&first, "deferredUntil") - time(&first, "time")).num_seconds(),
        30,
        "retried when the target said: {first}"
    );
    // Nothing is sent again before then: the wait is on the bridge's clock, not a sleep.
    stack.bridge.advance(Duration::from_secs(29)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(group_patches(&proxy).await, 1, "no resend before Retry-After");
    stack.bridge.advance(Duration::from_secs(1)).await;
    assert!(
        wait_until(Duration::from_secs(5), || async { group_patches(&proxy).await == 2 }).await,
        "resent once Retry-After passed"
    );
    stack.bridge.advance(Duration::from_secs(30)).await;
    let log = stack
        .bridge
        .wait_for_log(
            &[("eventId", events[0].id())],
            |e| e["status"] == "success",
            Duration::from_secs(10),
        )
        .await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
    assert_eq!(log["attempt"], 3, "{log}");
    assert!(log["latencyMs"].as_i64().unwrap() >= 60_000, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_add_whose_answer_was_lost_is_checked_at_the_target_before_it_is_sent_again() {
    // SCIMMY keeps a member added twice, so a blind resend would show.
    let Some(Proxied {
        stack,
        proxy,
        group,
        target_name,
        ..
    }) = behind_fault_proxy(Kind::Scimmy).await
    else {
        return;
    };
    proxy
        .arm(json!({"mode": "drop", "when": "after", "count": 1,
                    "match": {"method": "PATCH", "pathContains": "/Groups"}}))
        .await;
    let ps = principals(1);
    let events = activations(&stack, &ps, &group);
    deliver_all(&stack, &events).await;
    // The attempt ends with the lost answer; the retry goes on the bridge's clock.
    let lost = stack
        .bridge
        .wait_for_event_log(&events[0], "deferred", Some("add_member"))
        .await;
    assert!(lost["deferredUntil"].is_string(), "{lost}");
    let mut log = None;
    for _ in 0..10 {
        stack.bridge.advance(Duration::from_secs(1)).await;
        log = stack
            .bridge
            .find_log(
                &[("eventId", events[0].id())],
                |e| e["status"] == "success" && e["action"] == "add_member",
                Duration::from_millis(300),
            )
            .await;
        if log.is_some() {
            break;
        }
    }
    let log = log.expect("the add was retried");
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;
    assert!(
        log["steps"].to_string().contains("read_group"),
        "the group was read before resending: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removal_still_goes_out_when_the_add_before_it_had_an_unknown_outcome() {
    let Some(Proxied {
        stack,
        proxy,
        group,
        target_name,
        ..
    }) = behind_fault_proxy(Kind::Scim2Server).await
    else {
        return;
    };
    let ps = principals(1);
    // Make the group exist first, then lose every answer about it: the add lands at the target
    // but the bridge never learns so.
    let warm_up = activations(&stack, &principals(1), &group);
    deliver_all(&stack, &warm_up).await;
    stack.bridge.wait_for_event_log(&warm_up[0], "success", None).await;
    proxy
        .arm(json!({"mode": "drop", "when": "after", "count": -1, "match": {"pathContains": "/Groups/"}}))
        .await;
    let events = activations(&stack, &ps, &group);
    deliver_all(&stack, &events).await;
    let log = stack
        .bridge
        .wait_for_log(
            &[("eventId", events[0].id())],
            |e| e["status"] == "deferred",
            Duration::from_secs(20),
        )
        .await;
    assert!(log["reason"].as_str().unwrap_or("").contains("retrying"), "{log}");
    proxy.clear().await;

    // The user deactivates: the removal must reach the target, where the add did land.
    let end = events[0].deactivation();
    stack.bridge.deliver(&[&end]).await;
    stack
        .bridge
        .wait_for_event_log(&end, "success", Some("remove_member"))
        .await;
    let remaining = stack.target.group_member_user_names(&target_name).await;
    assert!(
        !remaining.contains(&ps[0].upn().to_string()),
        "revoked at the target: {remaining:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_removal_is_retried_before_any_cycle() {
    let Some(Proxied {
        stack,
        proxy,
        group,
        target_name,
        ..
    }) = behind_fault_proxy(Kind::Scim2Server).await
    else {
        return;
    };
    let ps = principals(1);
    let events = activations(&stack, &ps, &group);
    deliver_all(&stack, &events).await;
    stack.target.assert_members_eventually(&target_name, &upns(&ps)).await;

    // More 429s than one attempt's quick retries absorb.
    proxy
        .arm(json!({"mode": "status", "status": 429, "retryAfter": "0", "count": 4,
                    "match": {"method": "PATCH"}}))
        .await;
    let end = events[0].deactivation();
    stack.bridge.deliver(&[&end]).await;
    stack
        .bridge
        .wait_for_event_log(&end, "deferred", Some("remove_member"))
        .await;
    stack.bridge.advance(Duration::from_secs(1)).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    let done = stack
        .bridge
        .wait_for_event_log(&end, "success", Some("remove_member"))
        .await;
    assert_eq!(done["trigger"], "deactivation");
    assert!(done["cycleId"].is_null(), "not the cycle: {done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_does_not_reset_the_window() {
    let Some(mut stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let ps = principals(6);
    deliver_all(&stack, &activations(&stack, &ps[..5], &group)).await;
    stack
        .target
        .assert_members_eventually(&target_name, &upns(&ps[..5]))
        .await;

    stack.bridge.restart().await;
    stack.bridge.advance(Duration::from_secs(1)).await;
    let sixth = activations(&stack, &ps[5..], &group);
    deliver_all(&stack, &sixth).await;
    stack
        .bridge
        .wait_for_event_log(&sixth[0], "deferred", Some("add_member"))
        .await;
    assert_eq!(stack.target.group_member_user_names(&target_name).await.len(), 5);
}
