//! End-to-end: webhooks in, membership on real SCIM targets out. Every scenario runs against
//! both scim2-server and the SCIMMY server.

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::{Event, Kind, PUSH_TIMEOUT, Principal, SourceGroup, Stack};

/// Runs each named scenario `async fn name(kind: Kind)` once per target.
macro_rules! against_both_targets {
    ($($scenario:ident),* $(,)?) => {
        mod scim2_server {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Kind::Scim2Server).await
                }
            )*
        }
        mod scimmy {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Kind::Scimmy).await
                }
            )*
        }
    };
}

against_both_targets!(
    activation_creates_the_user_and_makes_it_a_member,
    deactivation_removes_the_member,
    second_activation_in_another_group_reuses_the_target_user,
    removal_within_five_minutes_of_start_is_applied_and_flagged,
    ownership_activation_is_skipped_and_pushes_nothing,
    pending_approval_is_skipped_and_pushes_nothing,
    already_expired_activation_is_skipped_and_pushes_nothing,
    pending_approval_then_provisioned_with_the_same_id_provisions,
    revoked_status_ends_the_membership,
    membership_stays_while_another_source_group_still_entitles_the_user,
    older_activation_arriving_late_does_not_undo_a_newer_deactivation,
    user_already_in_the_target_is_matched_not_duplicated,
);

async fn activation_creates_the_user_and_makes_it_a_member(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group);

    let answer = stack.bridge.deliver(&[&activation]).await;
    let jobs = answer["events"][0]["jobs"].as_array().cloned().unwrap_or_default();
    assert!(
        jobs.iter()
            .any(|j| j["appId"] == stack.app_id.as_str() && j["id"].is_string()),
        "the answer links the event to a job for the app: {answer}"
    );

    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    let user = stack
        .target
        .user_by_user_name(principal.upn())
        .await
        .expect("user created in the target");
    assert_eq!(
        user["externalId"],
        principal.id.as_str(),
        "externalId is the principal id: {user}"
    );
    assert_eq!(user["active"], true, "{user}");
    assert_eq!(user["displayName"], principal.display_name.as_str(), "{user}");

    let log = stack
        .bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    assert_eq!(log["appId"], stack.app_id.as_str(), "{log}");
    assert_eq!(log["principalId"], principal.id.as_str(), "{log}");
    assert_eq!(log["groupId"], group.id.as_str(), "{log}");
    assert!(log["latencyMs"].is_number(), "latencyMs is a number: {log}");
    if let Some(target_user_id) = log["targetUserId"].as_str() {
        assert_eq!(target_user_id, user["id"].as_str().unwrap(), "{log}");
    }
}

async fn deactivation_removes_the_member(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let principal = Principal::new();
    // Started a while ago, so the removal is an ordinary one.
    let activation = Event::activation(&principal, &group).starting(Utc::now() - chrono::Duration::minutes(10));
    stack.bridge.deliver(&[&activation]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;

    let deactivation = activation.deactivation();
    stack.bridge.deliver(&[&deactivation]).await;

    stack.target.assert_members_eventually(&target_name, &[]).await;
    stack
        .bridge
        .wait_for_event_log(&deactivation, "success", Some("remove_member"))
        .await;
    assert!(
        stack.target.user_by_user_name(principal.upn()).await.is_some(),
        "the account stays in the target (outOfScope defaults to keep)"
    );
}

async fn second_activation_in_another_group_reuses_the_target_user(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (first_group, first_target) = stack.assigned_group().await;
    let (second_group, second_target) = stack.assigned_group().await;
    let principal = Principal::new();

    stack
        .bridge
        .deliver(&[&Event::activation(&principal, &first_group)])
        .await;
    stack
        .target
        .assert_members_eventually(&first_target, &[principal.upn()])
        .await;
    stack
        .bridge
        .deliver(&[&Event::activation(&principal, &second_group)])
        .await;
    stack
        .target
        .assert_members_eventually(&second_target, &[principal.upn()])
        .await;

    let users = stack.target.users_with_user_name(principal.upn()).await;
    assert_eq!(users.len(), 1, "one target user for the principal: {users:?}");
    assert_eq!(
        stack.target.group_member_ids(&first_target).await,
        stack.target.group_member_ids(&second_target).await,
        "both groups hold the same target user"
    );
}

async fn removal_within_five_minutes_of_start_is_applied_and_flagged(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
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

    let early_removal = activation.deactivation();
    stack.bridge.deliver(&[&early_removal]).await;

    stack.target.assert_members_eventually(&target_name, &[]).await;
    let log = stack
        .bridge
        .wait_for_event_log(&early_removal, "success", Some("remove_member"))
        .await;
    let reason = log["reason"].as_str().unwrap_or_default();
    assert!(
        !reason.trim().is_empty(),
        "the log entry of a removal within five minutes of the start flags it in `reason`: {log}"
    );
}

/// Sends an event that must not change membership, and checks it was logged `skipped` with a
/// reason containing one of `reason_mentions`, and that nothing reached the target.
async fn assert_skipped_without_push(stack: &Stack, event: &Event, target_name: &str, reason_mentions: &[&str]) {
    let answer = stack.bridge.deliver(&[event]).await;
    let log = stack.bridge.wait_for_event_log(event, "skipped", None).await;
    let reason = log["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        reason_mentions.iter().any(|m| reason.contains(m)),
        "reason of the skipped entry mentions one of {reason_mentions:?}: {log} (answer {answer})"
    );
    assert!(
        stack.target.user_by_user_name(event.upn()).await.is_none(),
        "no user was pushed for a skipped event"
    );
    assert_eq!(
        stack.target.group_member_user_names(target_name).await,
        Vec::<String>::new()
    );
}

/// An activation of a fresh principal in a group assigned to the stack's app.
async fn assigned_activation(stack: &Stack) -> (Event, String) {
    let (group, target_name) = stack.assigned_group().await;
    (Event::activation(&Principal::new(), &group), target_name)
}

async fn ownership_activation_is_skipped_and_pushes_nothing(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (activation, target_name) = assigned_activation(&stack).await;
    let ownership = activation.access("owner");
    assert_skipped_without_push(&stack, &ownership, &target_name, &["owner"]).await;
}

async fn pending_approval_is_skipped_and_pushes_nothing(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (activation, target_name) = assigned_activation(&stack).await;
    let pending = activation.status("PendingApproval");
    assert_skipped_without_push(&stack, &pending, &target_name, &["pending", "status"]).await;
}

async fn already_expired_activation_is_skipped_and_pushes_nothing(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (activation, target_name) = assigned_activation(&stack).await;
    let expired = activation
        .starting(Utc::now() - chrono::Duration::hours(3))
        .duration("PT1H");
    assert_skipped_without_push(&stack, &expired, &target_name, &["expired"]).await;
}

async fn pending_approval_then_provisioned_with_the_same_id_provisions(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (activation, target_name) = assigned_activation(&stack).await;
    let pending = activation.clone().status("PendingApproval");
    stack.bridge.deliver(&[&pending]).await;
    stack.bridge.wait_for_event_log(&pending, "skipped", None).await;

    let answer = stack.bridge.deliver(&[&activation]).await;
    assert_eq!(
        common::single_status(&answer),
        "accepted",
        "a new status is a new event"
    );

    stack
        .target
        .assert_members_eventually(&target_name, &[activation.upn()])
        .await;
    stack
        .bridge
        .wait_for_log(
            &[("eventId", activation.id()), ("status", "success")],
            |e| e["action"] == "add_member",
            PUSH_TIMEOUT,
        )
        .await;
}

async fn revoked_status_ends_the_membership(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (activation, target_name) = assigned_activation(&stack).await;
    let activation = activation.starting(Utc::now() - chrono::Duration::minutes(10));
    stack.bridge.deliver(&[&activation]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[activation.upn()])
        .await;

    // The same request, now revoked.
    let revoked = activation.clone().status("Revoked");
    stack.bridge.deliver(&[&revoked]).await;

    stack.target.assert_members_eventually(&target_name, &[]).await;
}

async fn membership_stays_while_another_source_group_still_entitles_the_user(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let target_name = format!("Shared {}", common::short_id());
    let (first, second) = (SourceGroup::new(), SourceGroup::new());
    for group in [&first, &second] {
        stack.bridge.assign_group(&stack.app_id, &group.id, &target_name).await;
    }
    let principal = Principal::new();
    let ten_minutes_ago = Utc::now() - chrono::Duration::minutes(10);
    let via_first = Event::activation(&principal, &first).starting(ten_minutes_ago);
    let via_second = Event::activation(&principal, &second).starting(ten_minutes_ago);

    stack.bridge.deliver(&[&via_first]).await;
    stack.bridge.deliver(&[&via_second]).await;
    // The second activation finds the user already a member: whatever it logs, it must not
    // add the user a second time.
    stack
        .bridge
        .find_log(&[("eventId", via_second.id())], |_| true, Duration::from_secs(3))
        .await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;

    let end_first = via_first.deactivation();
    stack.bridge.deliver(&[&end_first]).await;
    // Whatever the bridge records for it, give it time to act before looking.
    let logged = stack
        .bridge
        .find_log(&[("eventId", end_first.id())], |_| true, Duration::from_secs(3))
        .await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    if let Some(log) = logged {
        assert!(
            log["status"] != "success" || log["action"] != "remove_member",
            "no removal pushed while still entitled: {log}"
        );
    }

    stack.bridge.deliver(&[&via_second.deactivation()]).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
}

async fn older_activation_arriving_late_does_not_undo_a_newer_deactivation(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (activation, target_name) = assigned_activation(&stack).await;
    let activation = activation.starting(Utc::now() - chrono::Duration::minutes(10));
    let deactivation = activation.deactivation();

    stack.bridge.deliver(&[&deactivation]).await;
    stack.bridge.deliver(&[&activation]).await;
    // Give the late activation time to be (wrongly) pushed before looking.
    stack
        .bridge
        .find_log(&[("eventId", activation.id())], |_| true, Duration::from_secs(3))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(
        stack.target.group_member_user_names(&target_name).await,
        Vec::<String>::new(),
        "an older activation arriving after a newer deactivation is not applied"
    );
}

async fn user_already_in_the_target_is_matched_not_duplicated(kind: Kind) {
    let Some(stack) = Stack::start(kind).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let principal = Principal::new();
    let existing_id = stack.target.create_user(principal.upn(), None).await;

    stack.bridge.deliver(&[&Event::activation(&principal, &group)]).await;

    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    assert_eq!(
        stack.target.group_member_ids(&target_name).await,
        [existing_id],
        "the member is the user that was already there"
    );
    assert_eq!(stack.target.users_with_user_name(principal.upn()).await.len(), 1);
}
