//! End-to-end on the real binary and real time, where a few seconds suffice.

use crate::common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Event, Kind, Principal, Stack};

#[tokio::test(flavor = "multi_thread")]
async fn an_activation_that_ends_in_four_seconds_is_removed_at_the_target_when_it_ends() {
    let Some(stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let principal = Principal::new();
    let start = Utc::now() - chrono::Duration::seconds(4 * 60 + 56);
    let event = Event::activation(&principal, &group).starting(start).duration("PT5M");
    let delivered = Instant::now();
    stack.bridge.deliver(&[&event]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;

    let removal = stack
        .bridge
        .wait_for_log(
            &[("eventId", event.id())],
            |e| e["action"] == "remove_member" && e["status"] == "success",
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(removal["trigger"], "expiry");
    assert!(
        delivered.elapsed() >= Duration::from_secs(3),
        "not before the end: {:?}",
        delivered.elapsed()
    );
    stack.target.assert_members_eventually(&target_name, &[]).await;
}
