//! Targets that take only the legacy member removal form (SPEC section 4): a 400 (whatever the
//! scimType) or a 501 to the filter-path removal makes the bridge try the legacy value-array form
//! once, and remember it per app; a 501 is never retried as a server error. SCIMMY takes both
//! forms; the fault proxy in front of it refuses the filter path, so only the legacy form works.

use crate::common;

use common::clocked::{FaultProxy, Proxied, behind_fault_proxy};
use common::{Event, Kind, Principal, SourceGroup, Stack};
use serde_json::{Value, json};

/// What every filter-path removal carries, and the legacy form never does.
const FILTER_PATH: &str = "members[value eq";

/// An activation that started ten minutes ago (so its end is no anomaly), on the bridge's clock.
fn activation(stack: &Stack, principal: &Principal, group: &SourceGroup) -> Event {
    Event::activation(principal, group).starting(stack.bridge.now() - chrono::Duration::minutes(10))
}

/// Requests the proxy saw whose body holds a filter-path removal.
async fn filter_path_attempts(proxy: &FaultProxy) -> Vec<Value> {
    proxy
        .seen()
        .await
        .into_iter()
        .filter(|r| r["body"].as_str().unwrap_or("").contains(FILTER_PATH))
        .collect()
}

/// SCIMMY behind the fault proxy answering `status` (and `body`, if given) to every filter-path
/// removal: two members, one after the other, are activated and deactivated.
async fn legacy_only_target(status: u16, body: Option<Value>) {
    let Some(Proxied {
        stack,
        proxy,
        app_id,
        group,
        target_name,
    }) = behind_fault_proxy(Kind::Scimmy).await
    else {
        return;
    };
    let mut fault = json!({"mode": "status", "status": status, "count": -1,
                           "match": {"method": "PATCH", "bodyContains": FILTER_PATH}});
    if let Some(body) = body {
        fault["body"] = body;
    }
    proxy.arm(fault).await;

    // The first removal finds out that the target takes only the legacy form.
    let first = Principal::new();
    let add = activation(&stack, &first, &group);
    stack.bridge.deliver(&[&add]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[first.upn()])
        .await;
    let end = add.deactivation();
    stack.bridge.deliver(&[&end]).await;
    let log = stack
        .bridge
        .wait_for_event_log(&end, "success", Some("remove_member"))
        .await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    let steps = log["steps"].as_array().cloned().unwrap_or_default();
    assert!(
        steps.iter().any(|s| s["step"] == "detect_patch_style"),
        "the log says the legacy form was detected: {log}"
    );
    assert!(
        steps.iter().any(|s| s["http"]["status"] == status),
        "the log shows the target's {status}: {log}"
    );
    assert_eq!(
        filter_path_attempts(&proxy).await.len(),
        1,
        "the filter path was tried once"
    );

    // The second removal goes straight to the legacy form: the app remembers it.
    let second = Principal::new();
    let add = activation(&stack, &second, &group);
    stack.bridge.deliver(&[&add]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[second.upn()])
        .await;
    let end = add.deactivation();
    stack.bridge.deliver(&[&end]).await;
    let log = stack
        .bridge
        .wait_for_event_log(&end, "success", Some("remove_member"))
        .await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    assert!(
        !log["steps"].to_string().contains("detect_patch_style"),
        "nothing left to detect: {log}"
    );
    let attempts = filter_path_attempts(&proxy).await;
    assert_eq!(
        attempts.len(),
        1,
        "exactly one filter-path removal over the whole test: {attempts:#?}"
    );
    assert!(
        attempts.iter().all(|r| r["faulted"] == true),
        "the one attempt was refused: {attempts:#?}"
    );

    // A refusal of the form is not a server error: nothing was retried or deferred.
    let (_, entries) = stack
        .bridge
        .logs_as(&stack.bridge.admin_token, &[("appId", &app_id)])
        .await;
    let removals: Vec<&Value> = entries.iter().filter(|e| e["action"] == "remove_member").collect();
    assert_eq!(removals.len(), 2, "one entry per removal: {entries:#?}");
    for entry in removals {
        assert_eq!(entry["status"], "success", "{entry}");
        assert_eq!(entry["attempt"], 1, "{entry}");
        assert!(entry["deferredUntil"].is_null(), "{entry}");
        let reason = entry["reason"].as_str().unwrap_or("");
        assert!(
            !reason.contains("retrying") && !reason.contains("deferred"),
            "a removal was retried as if the target were failing: {entry}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_501_to_the_filter_path_removal_switches_the_app_to_the_legacy_form_for_good() {
    legacy_only_target(501, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_400_invalid_path_to_the_filter_path_removal_switches_the_app_to_the_legacy_form_for_good() {
    let refusal = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": "400",
        "scimType": "invalidPath",
        "detail": "filter paths in member removals are not supported",
    });
    legacy_only_target(400, Some(refusal)).await;
}
