//! Retention: provisioning log entries older than `SCIM_BRIDGE_LOG_RETENTION` (30 days) are
//! purged in the background, in batches, on the bridge's (here manual) clock.

mod common;

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
