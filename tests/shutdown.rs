//! SIGTERM drains in-flight pushes, then the bridge exits (SPEC section 6).

use crate::common;

use std::time::Duration;

use common::clocked::FaultProxy;
use common::{Bridge, Event, Kind, Principal, SourceGroup, target};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_push_in_flight_finish_before_exiting() {
    let Some(target) = target(Kind::Scim2Server).await else {
        return;
    };
    let Some(proxy) = FaultProxy::start(&target).await else {
        return;
    };
    let mut bridge = Bridge::start().await;
    let mut registration = target.app_registration("slow");
    registration["scimBaseUrl"] = json!(proxy.base_url_for(&target));
    let (status, app) = bridge
        .admin(reqwest::Method::POST, "/v1/apps", Some(registration))
        .await;
    assert_eq!(status, 201, "{app}");
    let group = SourceGroup::new();
    bridge.assign_group(&common::app_id(&app), &group.id, "Slow").await;
    // The target takes 1.5 s to answer the membership PATCH.
    proxy
        .arm(json!({"mode": "delay", "ms": 1500, "count": 1, "match": {"method": "PATCH"}}))
        .await;

    let principal = Principal::new();
    bridge.deliver(&[&Event::activation(&principal, &group)]).await;
    // Wait until the PATCH is being held by the proxy, then ask the bridge to stop.
    let mut held = false;
    for _ in 0..100 {
        if proxy.seen().await.iter().any(|r| r["method"] == "PATCH") {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held, "the push reached the target");
    let status = bridge.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "clean exit: {status}");
    target.assert_members_eventually("Slow", &[principal.upn()]).await;
    assert!(
        bridge.output().contains("draining in-flight pushes"),
        "{}",
        bridge.output()
    );
}
