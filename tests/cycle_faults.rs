//! A cycle step whose outcome is unknown (SPEC section 5): the target applied the cycle's PATCH
//! but answered 502. The step is settled by reading the target group before anything is sent
//! again, so the target ends with each member exactly once.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::clocked::FaultProxy;
use common::{Kind, Principal, SourceGroup, Stack};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Asks for a cycle and moves the bridge's clock a second at a time (retries are scheduled on
/// it) until that cycle has ended; answers the cycle.
async fn sync_advancing(stack: &Stack, app_id: &str) -> Value {
    let (status, answer) = stack
        .bridge
        .admin(Method::POST, &format!("/v1/apps/{app_id}/sync"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "POST sync: {answer}");
    let cycle_id = answer["cycleId"].as_str().expect("cycleId").to_string();
    let mut last = Value::Null;
    for _ in 0..60 {
        let (_, cycles) = stack
            .bridge
            .admin(Method::GET, &format!("/v1/apps/{app_id}/sync-cycles"), None)
            .await;
        if let Some(cycle) = cycles["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["id"] == cycle_id.as_str() && !c["endedAt"].is_null())
        {
            return cycle.clone();
        }
        last = cycles;
        stack.bridge.advance(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cycle {cycle_id} did not end; cycles: {last}");
}

/// Three standing members reach the target in one cycle whose member PATCH is applied by the
/// target and answered 502.
async fn a_cycle_patch_answered_502_after_it_was_applied_is_settled_by_reading_the_group(kind: Kind) {
    let Some(stack) = Stack::start_clocked(kind, |_| {}).await else {
        return;
    };
    let Some(proxy) = FaultProxy::start(&stack.target).await else {
        return;
    };
    let app_id = stack
        .bridge
        .register_app_with(
            &stack.target,
            &proxy.base_url_for(&stack.target),
            json!({"driftRepair": "off"}),
        )
        .await;
    let group = SourceGroup::new();
    let target_name = format!("Standing {}", common::short_id());
    stack.bridge.assign_group(&app_id, &group.id, &target_name).await;
    let members: Vec<Principal> = (0..3).map(|_| Principal::new()).collect();
    for p in &members {
        let principal = json!({"userPrincipalName": p.upn(), "displayName": p.display_name});
        let (status, body) = stack
            .bridge
            .admin(
                Method::PUT,
                &format!("/v1/groups/{}/members/{}", group.id, p.id),
                Some(json!({"principal": principal})),
            )
            .await;
        assert!(status.is_success(), "PUT standing member: {status} {body}");
    }
    proxy
        .arm(json!({"mode": "status", "status": 502, "when": "after", "count": 1,
                    "match": {"method": "PATCH", "pathContains": "/Groups/"}}))
        .await;

    let cycle = sync_advancing(&stack, &app_id).await;

    // The target holds each member exactly once (a blind resend would show twice at SCIMMY).
    let ids = stack.target.group_member_ids(&target_name).await;
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "a member is listed twice at the target: {ids:?}"
    );
    let mut expected: Vec<String> = members.iter().map(|p| p.upn().to_string()).collect();
    expected.sort();
    assert_eq!(stack.target.group_member_user_names(&target_name).await, expected);
    assert_eq!(cycle["status"], "success", "{cycle}");
    assert_eq!(cycle["counts"]["added"], 3, "{cycle}");

    // What went over the wire: the PATCH answered 502, then a read of that group, and no
    // second add of members the target already had.
    let seen = proxy.seen().await;
    let faulted = seen
        .iter()
        .position(|r| r["faulted"] == true && r["status"] == 502)
        .unwrap_or_else(|| panic!("the proxy never answered 502: {seen:#?}"));
    let patched = seen[faulted]["path"].as_str().expect("path").to_string();
    let group_path = patched.split('?').next().expect("path").to_string();
    assert!(
        seen[faulted + 1..]
            .iter()
            .any(|r| r["method"] == "GET" && r["path"].as_str().unwrap_or("").starts_with(&group_path)),
        "the group {group_path} was read after the 502: {seen:#?}"
    );
    let adds: Vec<&Value> = seen
        .iter()
        .filter(|r| r["method"] == "PATCH" && r["body"].as_str().unwrap_or("").contains("\"add\""))
        .collect();
    assert_eq!(adds.len(), 1, "the applied add was not sent again: {adds:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cycle_patch_answered_502_after_scim2_server_applied_it_is_not_sent_again() {
    a_cycle_patch_answered_502_after_it_was_applied_is_settled_by_reading_the_group(Kind::Scim2Server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cycle_patch_answered_502_after_scimmy_applied_it_leaves_no_duplicate() {
    // SCIMMY keeps a member added twice, even in an identical PATCH: a blind resend would show.
    a_cycle_patch_answered_502_after_it_was_applied_is_settled_by_reading_the_group(Kind::Scimmy).await;
}
