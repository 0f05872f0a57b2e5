//! The deletion guard (SPEC §8): a cycle that plans more removals than the app's threshold holds
//! them all until an operator approves or rejects them; a removal PIM ordered is never counted nor
//! held.

use crate::common;

use common::{Bridge, Event, Kind, Principal, SourceGroup, Stack};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Puts `n` new standing members into the group (directory feed): the principals.
async fn standing_members(bridge: &Bridge, group: &SourceGroup, n: usize) -> Vec<Principal> {
    let mut members = Vec::new();
    for _ in 0..n {
        let p = Principal::new();
        let (status, answer) = bridge
            .admin(
                Method::PUT,
                &format!("/v1/groups/{}/members/{}", group.id, p.id),
                Some(json!({"principal": {"userPrincipalName": p.upn()}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        members.push(p);
    }
    members
}

async fn remove_standing(bridge: &Bridge, group: &SourceGroup, members: &[Principal]) {
    for p in members {
        let (status, answer) = bridge
            .admin(
                Method::DELETE,
                &format!("/v1/groups/{}/members/{}", group.id, p.id),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    }
}

fn upns(members: &[Principal]) -> Vec<&str> {
    members.iter().map(|p| p.upn()).collect()
}

async fn app_json(bridge: &Bridge, app_id: &str) -> Value {
    let (status, app) = bridge.admin(Method::GET, &format!("/v1/apps/{app_id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{app}");
    app
}

async fn guarded(stack: &Stack, threshold: u64) {
    let (status, app) = stack
        .bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", stack.app_id),
            Some(json!({"deletionGuard": {"threshold": threshold}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{app}");
    assert_eq!(app["deletionGuard"], json!({"threshold": threshold}), "{app}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mass_removal_is_held_while_a_pim_end_goes_at_once_and_approving_sends_it() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &stack.bridge;
    let app_id = stack.app_id.as_str();
    assert_eq!(
        app_json(bridge, app_id).await["deletionGuard"],
        json!({"threshold": 500}),
        "the default"
    );
    guarded(&stack, 5).await;
    let (group, target_name) = stack.assigned_group().await;
    let members = standing_members(bridge, &group, 8).await;
    let pim = Principal::new();
    let activation = Event::activation(&pim, &group);
    bridge.deliver(&[&activation]).await;
    bridge.sync_and_wait(app_id, false).await;
    let mut everyone = upns(&members);
    everyone.push(pim.upn());
    everyone.sort();
    stack.target.assert_members_eventually(&target_name, &everyone).await;

    // The directory suddenly lists none of the eight, and PIM ends the ninth's activation.
    remove_standing(bridge, &group, &members).await;
    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    bridge
        .wait_for_event_log(&deactivation, "success", Some("remove_member"))
        .await;
    let cycle = bridge.sync_and_wait(app_id, false).await;
    assert_eq!(cycle["counts"]["removed"], 0, "{cycle}");
    let mut eight = upns(&members);
    eight.sort();
    stack.target.assert_members_eventually(&target_name, &eight).await;
    let app = app_json(bridge, app_id).await;
    assert_eq!(app["heldRemovals"]["count"], 8, "{app}");
    assert_eq!(app["heldRemovals"]["cycleId"], cycle["id"], "{app}");
    let (_, held) = bridge
        .admin(
            Method::GET,
            &format!("/v1/provisioning-logs?appId={app_id}&status=held"),
            None,
        )
        .await;
    assert_eq!(held["items"].as_array().map(Vec::len), Some(8), "{held}");
    let (_, ends) = bridge
        .admin(
            Method::GET,
            &format!("/v1/access-ends?appId={app_id}&status=held"),
            None,
        )
        .await;
    assert_eq!(ends["items"].as_array().map(Vec::len), Some(8), "{ends}");
    // A later cycle neither removes them nor logs them again.
    bridge.sync_and_wait(app_id, false).await;
    let (_, held) = bridge
        .admin(
            Method::GET,
            &format!("/v1/provisioning-logs?appId={app_id}&status=held"),
            None,
        )
        .await;
    assert_eq!(
        held["items"].as_array().map(Vec::len),
        Some(8),
        "logged once per pair: {held}"
    );

    let approve = format!("/v1/apps/{app_id}/held-removals/approve");
    let (status, answer) = bridge.admin(Method::POST, &approve, None).await;
    assert_eq!(
        (status, answer["count"].clone()),
        (StatusCode::OK, json!(8)),
        "{answer}"
    );
    stack.target.assert_members_eventually(&target_name, &[]).await;
    assert_eq!(app_json(bridge, app_id).await["heldRemovals"], Value::Null);
    let (status, answer) = bridge.admin(Method::POST, &approve, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing held: {answer}");
    let (_, audit) = bridge.admin(Method::GET, "/v1/audit?limit=5", None).await;
    assert!(audit.to_string().contains("app.approve_held_removals"), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejecting_leaves_the_members_and_one_entitled_again_leaves_the_hold() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &stack.bridge;
    let app_id = stack.app_id.as_str();
    guarded(&stack, 5).await;
    let (group, target_name) = stack.assigned_group().await;
    let members = standing_members(bridge, &group, 8).await;
    bridge.sync_and_wait(app_id, false).await;
    let mut eight = upns(&members);
    eight.sort();
    stack.target.assert_members_eventually(&target_name, &eight).await;
    remove_standing(bridge, &group, &members).await;
    bridge.sync_and_wait(app_id, false).await;
    assert_eq!(app_json(bridge, app_id).await["heldRemovals"]["count"], 8);

    // One is listed again: it leaves the hold at the next cycle.
    let back = &members[0];
    let (status, answer) = bridge
        .admin(
            Method::PUT,
            &format!("/v1/groups/{}/members/{}", group.id, back.id),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    bridge.sync_and_wait(app_id, false).await;
    assert_eq!(app_json(bridge, app_id).await["heldRemovals"]["count"], 7);
    let entry = bridge
        .wait_for_log(
            &[
                ("appId", app_id),
                ("principalId", back.id.as_str()),
                ("status", "skipped"),
            ],
            |e| e["reason"].as_str().is_some_and(|r| r.contains("entitled again")),
            common::PUSH_TIMEOUT,
        )
        .await;
    assert_eq!(entry["action"], "remove_member", "{entry}");

    let (status, answer) = bridge
        .admin(Method::POST, &format!("/v1/apps/{app_id}/held-removals/reject"), None)
        .await;
    assert_eq!(
        (status, answer["count"].clone()),
        (StatusCode::OK, json!(7)),
        "{answer}"
    );
    assert_eq!(app_json(bridge, app_id).await["heldRemovals"], Value::Null);
    // The rejected stay at the target, and no later cycle removes them.
    bridge.sync_and_wait(app_id, false).await;
    stack.target.assert_members_eventually(&target_name, &eight).await;
    let (_, ends) = bridge
        .admin(
            Method::GET,
            &format!("/v1/access-ends?appId={app_id}&status=rejected"),
            None,
        )
        .await;
    assert_eq!(ends["items"].as_array().map(Vec::len), Some(7), "{ends}");

    // A later activation and end of a rejected member is provisioned and removed as usual.
    let again = &members[1];
    let activation = Event::activation(again, &group);
    bridge.deliver(&[&activation]).await;
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    bridge
        .wait_for_event_log(&deactivation, "success", Some("remove_member"))
        .await;
    let mut left: Vec<&str> = eight.iter().copied().filter(|u| *u != again.upn()).collect();
    left.sort();
    stack.target.assert_members_eventually(&target_name, &left).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pim_end_still_retried_when_the_cycle_plans_is_neither_counted_nor_held() {
    let Some(p) = common::clocked::behind_fault_proxy(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &p.stack.bridge;
    let app_id = p.app_id.as_str();
    let (status, answer) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{app_id}"),
            Some(json!({"deletionGuard": {"threshold": 5}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let members = standing_members(bridge, &p.group, 6).await;
    let pim = Principal::new();
    let activation = Event::activation(&pim, &p.group);
    bridge.deliver(&[&activation]).await;
    bridge.sync_and_wait(app_id, false).await;
    let mut everyone = upns(&members);
    everyone.push(pim.upn());
    everyone.sort();
    p.stack
        .target
        .assert_members_eventually(&p.target_name, &everyone)
        .await;

    // The target refuses removals for a while: the deactivation is being retried when the cycle
    // that would remove the six directory members plans.
    p.proxy
        .arm(json!({"mode": "status", "status": 503, "count": -1,
                    "match": {"method": "PATCH", "pathContains": "/Groups", "bodyContains": "remove"}}))
        .await;
    let deactivation = activation.deactivation();
    bridge.deliver(&[&deactivation]).await;
    bridge
        .wait_for_event_log(&deactivation, "deferred", Some("remove_member"))
        .await;
    remove_standing(bridge, &p.group, &members).await;
    bridge.sync_and_wait(app_id, false).await;
    // Six counted, over the threshold of five: held. The PIM end is not among them.
    let app = app_json(bridge, app_id).await;
    assert_eq!(app["heldRemovals"]["count"], 6, "{app}");
    let (_, ends) = bridge
        .admin(
            Method::GET,
            &format!("/v1/access-ends?appId={app_id}&eventId={}", deactivation.id()),
            None,
        )
        .await;
    assert_eq!(ends["items"][0]["status"], "failed", "still retried, not held: {ends}");

    // As soon as the target takes it, it goes.
    p.proxy.clear().await;
    bridge.advance(std::time::Duration::from_secs(300)).await;
    bridge
        .wait_for_event_log(&deactivation, "success", Some("remove_member"))
        .await;
    let mut six = upns(&members);
    six.sort();
    p.stack.target.assert_members_eventually(&p.target_name, &six).await;
}
