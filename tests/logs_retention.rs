//! Retention: provisioning log entries older than `SCIM_BRIDGE_LOG_RETENTION` (30 days) are
//! purged in the background, in batches, on the bridge's (here manual) clock.

use crate::common;

use std::time::Duration;

use common::{Event, Kind, PUSH_TIMEOUT, Principal, SourceGroup, Stack, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const DAY: Duration = Duration::from_secs(86_400);

/// Ownership activations: each is logged `skipped` at once, without a SCIM call.
async fn log_ownerships(stack: &Stack, group: &SourceGroup, n: usize) {
    let events: Vec<Event> = (0..n)
        .map(|_| {
            Event::activation(&Principal::new(), group)
                .access("owner")
                .starting(stack.bridge.now())
        })
        .collect();
    for chunk in events.chunks(100) {
        stack.bridge.deliver(&chunk.iter().collect::<Vec<_>>()).await;
    }
}

/// How many entries of the group's activations are listed (every page).
async fn count(stack: &Stack, group: &SourceGroup) -> usize {
    let mut total = 0;
    let mut cursor = String::new();
    loop {
        let mut path = format!("/v1/provisioning-logs?groupId={}&limit=500", group.id);
        if !cursor.is_empty() {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, body) = stack.bridge.admin(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        total += body["items"].as_array().map_or(0, Vec::len);
        match body["nextCursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return total,
        }
    }
}

async fn audit_actions(stack: &Stack) -> Vec<String> {
    let (status, body) = stack.bridge.admin(Method::GET, "/v1/audit", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_older_than_thirty_days_are_purged_in_batches_and_newer_ones_kept() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (old_group, _) = stack.assigned_group().await;
    let (new_group, _) = stack.assigned_group().await;
    // More than two purge batches (500 each).
    log_ownerships(&stack, &old_group, 1_200).await;
    assert_eq!(count(&stack, &old_group).await, 1_200);

    stack.bridge.advance(2 * DAY).await;
    log_ownerships(&stack, &new_group, 10).await;
    assert_eq!(count(&stack, &old_group).await, 1_200, "nothing is past retention yet");

    // 29 days after the old entries: still kept.
    stack.bridge.advance(27 * DAY).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        count(&stack, &old_group).await,
        1_200,
        "29 days old is within retention"
    );

    assert!(
        audit_actions(&stack).await.contains(&"app.create".to_string()),
        "audit kept within retention"
    );

    // 31 days after the old entries, 29 after the new ones.
    stack.bridge.advance(2 * DAY).await;
    let purged = wait_until(PUSH_TIMEOUT, || async { count(&stack, &old_group).await == 0 }).await;
    assert!(purged, "{} old entries left", count(&stack, &old_group).await);
    assert_eq!(count(&stack, &new_group).await, 10);
    // The audit trail is kept as long as the logs: the app's creation 31 days ago is gone.
    assert!(
        !audit_actions(&stack).await.contains(&"app.create".to_string()),
        "audit purged with the logs"
    );

    // The export agrees, and webhooks are taken as before.
    let (status, body) = stack
        .bridge
        .admin(
            Method::GET,
            &format!("/v1/provisioning-logs/export?groupId={}", old_group.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Value::Null, "an empty export");
    log_ownerships(&stack, &old_group, 1).await;
    assert_eq!(count(&stack, &old_group).await, 1);
}

async fn activation_status(stack: &Stack, event: &Event) -> StatusCode {
    stack
        .bridge
        .admin(Method::GET, &format!("/v1/activations/{}", event.id()), None)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread")]
async fn personal_data_past_retention_is_purged_but_never_a_live_membership_or_pending_work() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    stack
        .bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;
    // A standing activation (no end), one that ended, and one that starts in 60 days.
    let live_user = Principal::new();
    let live = Event::activation(&live_user, &group)
        .set("/scheduleInfo/expiration", serde_json::json!({"type": "noExpiration"}));
    let ended = Event::activation(&Principal::new(), &group);
    let later = Event::activation(&Principal::new(), &group).starting(stack.bridge.now() + chrono::Duration::days(60));
    stack.bridge.deliver(&[&live, &ended, &later]).await;
    stack
        .bridge
        .wait_for_event_log(&live, "success", Some("add_member"))
        .await;
    stack
        .bridge
        .wait_for_event_log(&ended, "success", Some("add_member"))
        .await;
    let end = ended.deactivation();
    stack.bridge.deliver(&[&end]).await;
    stack
        .bridge
        .wait_for_event_log(&end, "success", Some("remove_member"))
        .await;
    for event in [&live, &ended, &end, &later] {
        assert_eq!(activation_status(&stack, event).await, StatusCode::OK);
    }
    let ends_of = |event: &Event| format!("/v1/access-ends?eventId={}", event.id());
    let (_, ends) = stack.bridge.admin(Method::GET, &ends_of(&end), None).await;
    assert_eq!(ends["items"][0]["status"], "removed", "{ends}");

    stack.bridge.advance(31 * DAY).await;
    let purged = wait_until(PUSH_TIMEOUT, || async {
        activation_status(&stack, &ended).await == StatusCode::NOT_FOUND
            && activation_status(&stack, &end).await == StatusCode::NOT_FOUND
    })
    .await;
    assert!(
        purged,
        "the ended activation's events (names, mail addresses) are purged"
    );
    // Its access-end record (a name too) is kept as long as the log, and no longer.
    let (_, ends) = stack.bridge.admin(Method::GET, &ends_of(&end), None).await;
    assert_eq!(ends["items"], serde_json::json!([]), "{ends}");
    // What is still needed stays: the live membership's event, the pending activation.
    assert_eq!(activation_status(&stack, &live).await, StatusCode::OK);
    let (status, pending) = stack
        .bridge
        .admin(Method::GET, &format!("/v1/activations/{}", later.id()), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{pending}");
    assert_eq!(pending["apps"][0]["state"], "pending", "{pending}");
    // The live membership still works: its revocation reaches the target.
    let revoke = live.deactivation();
    stack.bridge.deliver(&[&revoke]).await;
    stack
        .bridge
        .wait_for_event_log(&revoke, "success", Some("remove_member"))
        .await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
}

/// The `Revoked` of a request: same id and createdDateTime as its `Provisioned`.
fn revoked_of(request: &Event) -> Event {
    request.clone().status("Revoked")
}

async fn has_member(stack: &Stack, target_name: &str, user_name: &str) -> bool {
    stack
        .target
        .group_member_user_names(target_name)
        .await
        .iter()
        .any(|u| u.eq_ignore_ascii_case(user_name))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provisioned_delivered_after_its_own_revoked_never_grants_even_after_retention() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    stack
        .bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;

    // The `Revoked` overtakes its `Provisioned`: nothing reaches the target.
    let request = Event::activation(&Principal::new(), &group)
        .starting(stack.bridge.now())
        .duration("P90D");
    stack.bridge.deliver(&[&revoked_of(&request)]).await;
    let answer = stack.bridge.deliver(&[&request]).await;
    assert_eq!(common::batch_statuses(&answer), ["accepted"], "{answer}");
    let entry = stack
        .bridge
        .wait_for_event_log(&request, "skipped", Some("add_member"))
        .await;
    assert_eq!(entry["reason"], "already revoked", "{entry}");
    assert!(!has_member(&stack, &target_name, request.upn()).await);

    // The same after retention has purged the `Revoked` event itself, while the request's end
    // (90 days) is still ahead.
    let later = Event::activation(&Principal::new(), &group)
        .starting(stack.bridge.now())
        .duration("P90D");
    let revoked = revoked_of(&later);
    stack.bridge.deliver(&[&revoked]).await;
    // Its removal job has run (there was nothing to remove) before the clock moves on.
    let settled = stack
        .bridge
        .find_log(&[("eventId", revoked.id())], |_| true, PUSH_TIMEOUT)
        .await;
    assert!(settled.is_some(), "the Revoked event's removal is logged");
    stack.bridge.advance(31 * DAY).await;
    let purged = wait_until(PUSH_TIMEOUT, || async {
        activation_status(&stack, &revoked).await == StatusCode::NOT_FOUND
    })
    .await;
    assert!(purged, "the Revoked event is past retention");
    let answer = stack.bridge.deliver(&[&later]).await;
    assert_eq!(common::batch_statuses(&answer), ["accepted"], "{answer}");
    let entry = stack
        .bridge
        .wait_for_event_log(&later, "skipped", Some("add_member"))
        .await;
    assert_eq!(entry["reason"], "already revoked", "{entry}");
    assert!(!has_member(&stack, &target_name, later.upn()).await);
}

async fn principal_rows(stack: &Stack, principal_id: &str) -> (i64, i64) {
    let principals = stack
        .bridge
        .store_count(
            "SELECT COUNT(*) FROM principals WHERE principal_id = $1",
            &[principal_id],
        )
        .await;
    let links = stack
        .bridge
        .store_count(
            "SELECT COUNT(*) FROM target_users WHERE principal_id = $1",
            &[principal_id],
        )
        .await;
    (principals, links)
}

#[tokio::test(flavor = "multi_thread")]
async fn principals_and_links_nobody_refers_to_are_purged_but_never_a_live_pending_or_disabled_one() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, _) = stack.assigned_group().await;
    stack
        .bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;
    let now = stack.bridge.now();
    let gone = Principal::new();
    let disabled = Principal::new();
    let live = Principal::new();
    let pending = Principal::new();
    let gone_grant = Event::activation(&gone, &group).starting(now);
    let disabled_grant = Event::activation(&disabled, &group).starting(now);
    let live_grant = Event::activation(&live, &group)
        .starting(now)
        .set("/scheduleInfo/expiration", serde_json::json!({"type": "noExpiration"}));
    let pending_grant = Event::activation(&pending, &group).starting(now + chrono::Duration::days(60));
    stack
        .bridge
        .deliver(&[&gone_grant, &disabled_grant, &live_grant, &pending_grant])
        .await;
    for grant in [&gone_grant, &disabled_grant, &live_grant] {
        stack
            .bridge
            .wait_for_event_log(grant, "success", Some("add_member"))
            .await;
    }
    for grant in [&gone_grant, &disabled_grant] {
        let end = grant.deactivation();
        stack.bridge.deliver(&[&end]).await;
        stack
            .bridge
            .wait_for_event_log(&end, "success", Some("remove_member"))
            .await;
    }
    // A user the bridge disabled at the target (as `outOfScope: disable` does).
    stack
        .bridge
        .store_execute(
            "UPDATE target_users SET disabled = TRUE WHERE principal_id = $1",
            &[&disabled.id],
        )
        .await;
    for p in [&gone, &disabled, &live] {
        assert_eq!(principal_rows(&stack, &p.id).await, (1, 1), "{} before", p.id);
    }

    stack.bridge.advance(31 * DAY).await;
    let purged = wait_until(PUSH_TIMEOUT, || async {
        principal_rows(&stack, &gone.id).await == (0, 0)
    })
    .await;
    assert!(purged, "{:?} left", principal_rows(&stack, &gone.id).await);
    assert_eq!(
        principal_rows(&stack, &disabled.id).await,
        (1, 1),
        "a disabled user's link"
    );
    assert_eq!(principal_rows(&stack, &live.id).await, (1, 1), "a live membership");
    assert_eq!(principal_rows(&stack, &pending.id).await.0, 1, "a pending job");

    // The bridge no longer knows the purged principal: an add must describe it again.
    let bare = Event::activation(&gone, &group)
        .starting(stack.bridge.now())
        .without("/principal");
    common::Answer::read(stack.bridge.webhook(bare.body()).await)
        .await
        .assert_problem(StatusCode::BAD_REQUEST, &["principal"]);

    // Deleting an app forgets its links, the disabled user's too.
    let app = stack.app_id.clone();
    let (status, body) = stack
        .bridge
        .admin(Method::DELETE, &format!("/v1/apps/{app}"), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(
        principal_rows(&stack, &disabled.id).await.1,
        0,
        "links of a deleted app"
    );
}
