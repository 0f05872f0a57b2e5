//! Revocation never waits (SPEC §1, §4, §5, §8 "Removals are retried until they succeed"): a
//! removal goes through a quarantine, is retried on the clock until the target takes it (401 and
//! 403 included), and is made where the member was provisioned. Real scim2-server behind the
//! fault proxy, on a manual clock.

use crate::common;

use std::time::Duration;

use common::clocked::{FaultProxy, app_with};
use common::{Event, Kind, PUSH_TIMEOUT, Principal, SourceGroup, Stack};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A stack on a manual clock, and an app (with `settings`) that reaches the target through the
/// fault proxy, with a group assigned to it.
struct Proxied {
    stack: Stack,
    proxy: FaultProxy,
    app_id: String,
    group: SourceGroup,
    target_name: String,
}

async fn proxied(settings: Value) -> Option<Proxied> {
    let stack = Stack::start_clocked(Kind::Scim2Server, |_| {}).await?;
    let proxy = FaultProxy::start(&stack.target).await?;
    let (app_id, group, target_name) = app_with(&stack, &proxy.base_url_for(&stack.target), settings).await;
    stack
        .bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;
    Some(Proxied {
        stack,
        proxy,
        app_id,
        group,
        target_name,
    })
}

/// Activates a new principal in the group and waits until the target has it.
async fn provisioned_member(p: &Proxied) -> (Principal, Event) {
    let principal = Principal::new();
    let activation = Event::activation(&principal, &p.group).starting(p.stack.bridge.now());
    p.stack.bridge.deliver(&[&activation]).await;
    p.stack
        .bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    (principal, activation)
}

/// Every call refused with 401 by the proxy, and a cycle: the app is quarantined.
async fn quarantine(p: &Proxied) {
    p.proxy.arm(json!({"mode": "status", "status": 401, "count": -1})).await;
    // A sync asked for while a cycle runs (the one a cleared quarantine starts) is merged into it.
    let mut cycle = Value::Null;
    for _ in 0..3 {
        cycle = p.stack.bridge.sync_and_wait(&p.app_id, false).await;
        if cycle["status"] == "quarantined" {
            break;
        }
    }
    assert_eq!(cycle["status"], "quarantined", "{cycle}");
    assert_eq!(p.stack.bridge.app(&p.app_id).await["status"], "quarantined");
}

fn removal_entries<'a>(entries: &'a [Value], event: &Event) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| e["eventId"] == event.id() && e["action"] == "remove_member")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deactivation_on_a_quarantined_app_whose_target_works_again_is_removed_at_once() {
    let Some(p) = proxied(json!({})).await else {
        return;
    };
    let (principal, activation) = provisioned_member(&p).await;
    quarantine(&p).await;
    p.proxy.clear().await;

    // The clock does not move: the removal goes without waiting for any cycle.
    let removal = activation.deactivation();
    p.stack.bridge.deliver(&[&removal]).await;
    let removed = p
        .stack
        .bridge
        .wait_for_event_log(&removal, "success", Some("remove_member"))
        .await;
    assert_eq!(removed["trigger"], "deactivation", "{removed}");
    p.stack.target.assert_members_eventually(&p.target_name, &[]).await;
    assert!(
        !p.stack
            .target
            .group_member_user_names(&p.target_name)
            .await
            .contains(&principal.user_principal_name)
    );
    // Activations are still deferred by the quarantine.
    let next = Event::activation(&Principal::new(), &p.group).starting(p.stack.bridge.now());
    p.stack.bridge.deliver(&[&next]).await;
    let deferred = p.stack.bridge.wait_for_event_log(&next, "deferred", None).await;
    assert_eq!(deferred["reason"], "app quarantined", "{deferred}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removal_refused_with_401_ten_times_is_retried_on_the_clock_until_the_target_takes_it() {
    // No cycle comes while the clock moves: the removal alone has to get there.
    let Some(p) = proxied(json!({"syncIntervalSeconds": 86_400})).await else {
        return;
    };
    let (principal, activation) = provisioned_member(&p).await;
    p.proxy
        .arm(json!({"mode": "status", "status": 401, "count": 10,
                    "match": {"method": "PATCH", "bodyContains": "remove"}}))
        .await;
    let removal = activation.deactivation();
    p.stack.bridge.deliver(&[&removal]).await;

    let mut removed = None;
    for _ in 0..60 {
        if let Some(found) = p
            .stack
            .bridge
            .find_log(
                &[("eventId", removal.id())],
                |e| e["action"] == "remove_member" && e["status"] == "success",
                Duration::from_millis(200),
            )
            .await
        {
            removed = Some(found);
            break;
        }
        // Never more than the five-minute cap between two attempts.
        p.stack.bridge.advance(Duration::from_secs(30)).await;
    }
    let removed = removed.expect("the removal reached the target");
    assert_eq!(removed["trigger"], "deactivation", "{removed}");
    assert_eq!(removed["attempt"], 11, "{removed}");
    p.stack.target.assert_members_eventually(&p.target_name, &[]).await;
    assert!(
        !p.stack
            .target
            .group_member_user_names(&p.target_name)
            .await
            .contains(&principal.user_principal_name)
    );

    // Each refusal was logged as a retry on the clock, with a backoff that doubles; none a failure.
    let (_, entries) = p
        .stack
        .bridge
        .logs_as(&p.stack.bridge.admin_token, &[("eventId", removal.id())])
        .await;
    let entries = removal_entries(&entries, &removal);
    assert!(
        entries.iter().all(|e| e["status"] != "failure"),
        "a removal is never given up: {entries:#?}"
    );
    let waits: Vec<i64> = entries
        .iter()
        .filter(|e| e["status"] == "deferred")
        .map(|e| {
            let at = |f: &str| {
                chrono::DateTime::parse_from_rfc3339(e[f].as_str().expect("time"))
                    .expect("time")
                    .timestamp_millis()
            };
            at("deferredUntil") - at("time")
        })
        .collect();
    assert_eq!(waits.len(), 10, "{entries:#?}");
    let mut sorted = waits.clone();
    sorted.sort();
    assert!(
        sorted[0] <= 500 && sorted[9] >= 3 * 256_000 / 4 && sorted[9] <= 256_000,
        "backoff from 0.5 s doubling (with jitter): {sorted:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn new_credentials_or_a_cleared_quarantine_send_a_waiting_removal_at_once() {
    let Some(p) = proxied(json!({})).await else {
        return;
    };
    let (_, first) = provisioned_member(&p).await;
    let (_, second) = provisioned_member(&p).await;
    quarantine(&p).await;
    // The target refuses the removals and asks for ten minutes.
    p.proxy.clear().await;
    p.proxy
        .arm(
            json!({"mode": "status", "status": 401, "count": 2, "headers": {"Retry-After": "600"},
                    "match": {"method": "PATCH", "bodyContains": "remove"}}),
        )
        .await;
    let (first_removal, second_removal) = (first.deactivation(), second.deactivation());
    p.stack.bridge.deliver(&[&first_removal, &second_removal]).await;
    for removal in [&first_removal, &second_removal] {
        let waiting = p
            .stack
            .bridge
            .wait_for_event_log(removal, "deferred", Some("remove_member"))
            .await;
        assert!(waiting["reason"].as_str().unwrap_or("").contains("401"), "{waiting}");
    }

    // New credentials: the first goes now, without the clock moving.
    let (status, body) = p
        .stack
        .bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", p.app_id),
            Some(json!({"auth": p.stack.target.app_auth()})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for removal in [&first_removal, &second_removal] {
        p.stack
            .bridge
            .wait_for_event_log(removal, "success", Some("remove_member"))
            .await;
    }
    p.stack.target.assert_members_eventually(&p.target_name, &[]).await;

    // And clearing the quarantine does the same.
    let (_, third) = {
        p.proxy.clear().await;
        let (status, _) = p
            .stack
            .bridge
            .admin(Method::POST, &format!("/v1/apps/{}/quarantine/clear", p.app_id), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        provisioned_member(&p).await
    };
    quarantine(&p).await;
    p.proxy.clear().await;
    p.proxy
        .arm(
            json!({"mode": "status", "status": 403, "count": 1, "headers": {"Retry-After": "600"},
                    "match": {"method": "PATCH", "bodyContains": "remove"}}),
        )
        .await;
    // Five pushes went at one instant of the bridge's clock: the window frees ten seconds later.
    p.stack.bridge.advance(Duration::from_secs(10)).await;
    let third_removal = third.deactivation();
    p.stack.bridge.deliver(&[&third_removal]).await;
    p.stack
        .bridge
        .wait_for_event_log(&third_removal, "deferred", Some("remove_member"))
        .await;
    let (status, _) = p
        .stack
        .bridge
        .admin(Method::POST, &format!("/v1/apps/{}/quarantine/clear", p.app_id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let removed = p
        .stack
        .bridge
        .find_log(
            &[("eventId", third_removal.id())],
            |e| e["action"] == "remove_member" && e["status"] == "success",
            PUSH_TIMEOUT,
        )
        .await;
    assert!(removed.is_some(), "the removal went when the quarantine was cleared");
    p.stack.target.assert_members_eventually(&p.target_name, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_provisioned_before_a_rename_is_removed_from_the_old_target_group() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, old_name) = stack.assigned_group().await;
    let (leaving, staying) = (Principal::new(), Principal::new());
    let first = Event::activation(&leaving, &group).starting(stack.bridge.now());
    let second = Event::activation(&staying, &group).starting(stack.bridge.now());
    stack.bridge.deliver(&[&first, &second]).await;
    stack
        .target
        .assert_members_eventually(&old_name, &[leaving.upn(), staying.upn()])
        .await;

    let new_name = format!("Renamed {}", common::short_id());
    stack.bridge.assign_group(&stack.app_id, &group.id, &new_name).await;
    // Before any cycle: the removal is made where the member is.
    let removal = first.deactivation();
    stack.bridge.deliver(&[&removal]).await;
    let removed = stack
        .bridge
        .wait_for_event_log(&removal, "success", Some("remove_member"))
        .await;
    assert_eq!(removed["trigger"], "deactivation", "{removed}");
    stack
        .target
        .assert_members_eventually(&old_name, &[staying.upn()])
        .await;

    // The next cycle moves the one left: added to the new group, removed from the old.
    let cycle = stack.bridge.sync_and_wait(&stack.app_id, false).await;
    assert_eq!(cycle["status"], "success", "{cycle}");
    stack
        .target
        .assert_members_eventually(&new_name, &[staying.upn()])
        .await;
    stack.target.assert_members_eventually(&old_name, &[]).await;
    // And its removal then goes to the new group.
    let gone = second.deactivation();
    stack.bridge.deliver(&[&gone]).await;
    stack
        .bridge
        .wait_for_event_log(&gone, "success", Some("remove_member"))
        .await;
    stack.target.assert_members_eventually(&new_name, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_with_numeric_ids_has_its_users_matched_read_for_drift_and_removed() {
    let Some(stack) = Stack::start_clocked(Kind::NumericIds, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    // One user is at the target before the bridge (matched), the other is created by it.
    let (known, fresh) = (Principal::new(), Principal::new());
    let known_id = stack.target.create_user(known.upn(), None).await;
    assert!(known_id.parse::<u64>().is_ok(), "a numeric id: {known_id}");
    let first = Event::activation(&known, &group).starting(stack.bridge.now());
    let second = Event::activation(&fresh, &group).starting(stack.bridge.now());
    stack.bridge.deliver(&[&first, &second]).await;
    for event in [&first, &second] {
        stack
            .bridge
            .wait_for_event_log(event, "success", Some("add_member"))
            .await;
    }
    stack
        .target
        .assert_members_eventually(&target_name, &[known.upn(), fresh.upn()])
        .await;
    assert_eq!(stack.target.users_with_user_name(known.upn()).await.len(), 1);

    // Drift compares the numeric member ids with the bridge's record: nothing is missing.
    let cycle = stack.bridge.sync_and_wait(&stack.app_id, false).await;
    assert_eq!(cycle["counts"]["driftFound"], 0, "{cycle}");
    assert_eq!(cycle["status"], "success", "{cycle}");

    let removal = first.deactivation();
    stack.bridge.deliver(&[&removal]).await;
    stack
        .bridge
        .wait_for_event_log(&removal, "success", Some("remove_member"))
        .await;
    stack
        .target
        .assert_members_eventually(&target_name, &[fresh.upn()])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_add_with_an_unknown_outcome_at_a_target_with_numeric_ids_is_settled_by_reading_the_group() {
    let Some(stack) = Stack::start_clocked(Kind::NumericIds, |_| {}).await else {
        return;
    };
    let Some(proxy) = FaultProxy::start(&stack.target).await else {
        return;
    };
    let (_, group, target_name) = app_with(&stack, &proxy.base_url_for(&stack.target), json!({})).await;
    stack
        .bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;
    proxy
        .arm(json!({"mode": "status", "status": 502, "when": "after", "count": 1,
                    "match": {"method": "PATCH", "bodyContains": "\"add\""}}))
        .await;
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group).starting(stack.bridge.now());
    stack.bridge.deliver(&[&activation]).await;
    let mut added = None;
    for _ in 0..20 {
        added = stack
            .bridge
            .find_log(
                &[("eventId", activation.id())],
                |e| e["action"] == "add_member" && e["status"] == "success",
                Duration::from_millis(200),
            )
            .await;
        if added.is_some() {
            break;
        }
        stack.bridge.advance(Duration::from_secs(1)).await;
    }
    let added = added.expect("the add was settled");
    assert!(
        added["reason"].as_str().unwrap_or("").contains("already a member"),
        "{added}"
    );
    // Listed once: the add the target applied was not sent again.
    assert_eq!(stack.target.group_member_ids(&target_name).await.len(), 1);
    let adds = proxy
        .seen()
        .await
        .into_iter()
        .filter(|r| r["method"] == "PATCH" && r["body"].as_str().unwrap_or("").contains("\"add\""))
        .count();
    assert_eq!(adds, 1, "one add PATCH went out");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_removal_goes_while_an_add_waits_for_its_retry() {
    let Some(p) = proxied(json!({})).await else {
        return;
    };
    let (_, activation) = provisioned_member(&p).await;
    // Every add PATCH is cut off (its outcome unknown) until the faults are cleared.
    p.proxy
        .arm(json!({"mode": "drop", "count": -1, "match": {"method": "PATCH", "bodyContains": "\"add\""}}))
        .await;
    let joining = Principal::new();
    let add = Event::activation(&joining, &p.group).starting(p.stack.bridge.now());
    let removal = activation.deactivation();
    // Array order: the add first, then the other user's removal.
    p.stack.bridge.deliver(&[&add, &removal]).await;

    // Without the clock moving, the removal goes while the add waits for its retry.
    p.stack
        .bridge
        .wait_for_event_log(&removal, "success", Some("remove_member"))
        .await;
    let retrying = p
        .stack
        .bridge
        .wait_for_event_log(&add, "deferred", Some("add_member"))
        .await;
    assert!(retrying["deferredUntil"].is_string(), "{retrying}");
    let seen = p.proxy.seen().await;
    let patches: Vec<&str> = seen
        .iter()
        .filter(|r| r["method"] == "PATCH")
        .map(|r| r["body"].as_str().unwrap_or(""))
        .collect();
    let adds_before_removal = patches
        .iter()
        .skip(1) // the first member's add
        .take_while(|body| !body.contains("\"remove\""))
        .count();
    assert_eq!(
        adds_before_removal, 1,
        "the add went once, then the removal, no retry in between: {patches:#?}"
    );

    // The add is retried on the clock: its group is read first, then it goes.
    p.proxy.clear().await;
    let mut added = None;
    for _ in 0..20 {
        p.stack.bridge.advance(Duration::from_secs(1)).await;
        added = p
            .stack
            .bridge
            .find_log(
                &[("eventId", add.id())],
                |e| e["action"] == "add_member" && e["status"] == "success",
                Duration::from_millis(200),
            )
            .await;
        if added.is_some() {
            break;
        }
    }
    assert!(added.is_some(), "the add was retried");
    p.stack
        .target
        .assert_members_eventually(&p.target_name, &[joining.upn()])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_add_cut_off_by_a_crash_on_a_paused_app_is_settled_by_reading_the_group() {
    // SCIMMY keeps a member added twice: an add sent again blindly would show.
    let Some(target) = common::target(Kind::Scimmy).await else {
        return;
    };
    let Some(proxy) = FaultProxy::start(&target).await else {
        return;
    };
    let mut bridge = common::Bridge::start().await;
    let app_id = bridge
        .register_app_with(&target, &proxy.base_url_for(&target), json!({}))
        .await;
    let group = SourceGroup::new();
    let target_name = format!("Paused {}", common::short_id());
    bridge.assign_group(&app_id, &group.id, &target_name).await;

    // The add reaches the target but its answer is held; the owner pauses the app meanwhile,
    // and the bridge dies before it records the outcome.
    proxy
        .arm(json!({"mode": "delay", "when": "after", "ms": 5000, "count": 1,
                    "match": {"method": "PATCH", "pathContains": "/Groups/"}}))
        .await;
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group);
    bridge.deliver(&[&activation]).await;
    let sent = common::wait_until(Duration::from_secs(5), || async {
        proxy.seen().await.iter().any(|r| r["method"] == "PATCH")
    })
    .await;
    assert!(sent, "the add reached the proxy");
    let app_path = format!("/v1/apps/{app_id}");
    let (status, body) = bridge
        .admin(Method::PATCH, &app_path, Some(json!({"status": "paused"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    bridge.crash_and_restart().await;

    // After the restart the push is deferred by the pause; the cycle after the pause settles it.
    let deferred = bridge
        .wait_for_log(
            &[("eventId", activation.id())],
            |e| e["status"] == "deferred" && e["reason"] == "app paused",
            PUSH_TIMEOUT * 2,
        )
        .await;
    assert_eq!(deferred["action"], "add_member", "{deferred}");
    let (status, body) = bridge
        .admin(Method::PATCH, &app_path, Some(json!({"status": "active"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cycle = bridge.sync_and_wait(&app_id, false).await;
    assert_eq!(cycle["status"], "success", "{cycle}");

    let ids = target.group_member_ids(&target_name).await;
    assert_eq!(ids.len(), 1, "the member once at the target: {ids:?}");
    let adds = proxy
        .seen()
        .await
        .into_iter()
        .filter(|r| r["method"] == "PATCH" && r["body"].as_str().unwrap_or("").contains("\"add\""))
        .count();
    assert_eq!(adds, 1, "the add was not sent again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_whose_record_and_requeue_both_failed_does_not_stay_in_flight() {
    // The store faults are triggers on the PostgreSQL store under test.
    if !common::postgres_under_test() {
        return;
    }
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let url = stack
        .bridge
        ._database
        .as_ref()
        .map(|db| db.url.clone())
        .expect("a PostgreSQL bridge");
    let (group, target_name) = stack.assigned_group().await;
    // The push's record (its success entry) fails, and so does putting the job back in line.
    common::psql_rows(
        &url,
        "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'injected store fault'; END $$;
         CREATE TRIGGER fail_record BEFORE INSERT ON provisioning_logs FOR EACH ROW
           WHEN (NEW.action = 'add_member' AND NEW.status = 'success') EXECUTE FUNCTION injected_fault();
         CREATE TRIGGER fail_requeue BEFORE UPDATE ON jobs FOR EACH ROW
           WHEN (OLD.state = 'in_flight' AND NEW.state = 'pending') EXECUTE FUNCTION injected_fault();",
    );
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group).starting(stack.bridge.now());
    stack.bridge.deliver(&[&activation]).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    let state = |url: String, event: String| {
        common::psql_rows(&url, &format!("SELECT state FROM jobs WHERE event_id = '{event}'"))
    };
    let stuck = common::wait_until(PUSH_TIMEOUT, || {
        let (url, event) = (url.clone(), activation.id().to_string());
        async move { state(url, event) == ["in_flight"] }
    })
    .await;
    assert!(stuck, "the job is in flight after the failed record");

    // The store works again: the next pass puts the job back in line and it is settled by
    // reading the group (the add reached the target), without a restart.
    common::psql_rows(
        &url,
        "DROP TRIGGER fail_record ON provisioning_logs; DROP TRIGGER fail_requeue ON jobs;",
    );
    let mut settled = None;
    for _ in 0..10 {
        stack.bridge.advance(Duration::from_secs(1)).await;
        settled = stack
            .bridge
            .find_log(
                &[("eventId", activation.id())],
                |e| e["action"] == "add_member" && e["status"] == "success",
                Duration::from_millis(300),
            )
            .await;
        if settled.is_some() {
            break;
        }
    }
    let settled = settled.expect("the push was settled without a restart");
    assert!(
        settled["steps"].to_string().contains("read_group"),
        "the group was read before anything was sent again: {settled}"
    );
    assert_eq!(state(url, activation.id().to_string()), ["done"]);
    assert_eq!(stack.target.group_member_ids(&target_name).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_that_cannot_read_the_windows_admissions_holds_one_full_window() {
    // The store fault is a column of the PostgreSQL store under test, renamed for a moment.
    if !common::postgres_under_test() {
        return;
    }
    let Some(mut stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let url = stack
        .bridge
        ._database
        .as_ref()
        .map(|db| db.url.clone())
        .expect("a PostgreSQL bridge");
    let (group, target_name) = stack.assigned_group().await;
    let first: Vec<Principal> = (0..5).map(|_| Principal::new()).collect();
    let events: Vec<Event> = first
        .iter()
        .map(|p| Event::activation(p, &group).starting(stack.bridge.now()))
        .collect();
    let refs: Vec<&Event> = events.iter().collect();
    stack.bridge.deliver(&refs).await;
    let upns: Vec<&str> = first.iter().map(Principal::upn).collect();
    stack.target.assert_members_eventually(&target_name, &upns).await;

    // The restarted dispatcher cannot read when its pushes were admitted.
    common::psql_rows(&url, "ALTER TABLE jobs RENAME COLUMN admitted_at TO admitted_at_hidden");
    stack.bridge.restart().await;
    let name = format!("app:{}", stack.app_id);
    let taken = common::wait_until(PUSH_TIMEOUT, || {
        let url = url.clone();
        let name = name.clone();
        async move {
            common::psql_rows(
                &url,
                &format!("SELECT count(*) FROM leases WHERE name = '{name}' AND NOT released AND expires_at > now()"),
            ) == ["1"]
        }
    })
    .await;
    assert!(taken, "the restarted bridge took its app lease back");
    // Its dispatcher starts right after the lease is taken.
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::psql_rows(&url, "ALTER TABLE jobs RENAME COLUMN admitted_at_hidden TO admitted_at");

    // A sixth activation inside the same ten seconds is not pushed: the window is held whole.
    let sixth = Event::activation(&Principal::new(), &group).starting(stack.bridge.now());
    stack.bridge.deliver(&[&sixth]).await;
    let early = stack
        .bridge
        .find_log(
            &[("eventId", sixth.id())],
            |e| e["action"] == "add_member" && e["status"] == "success",
            Duration::from_secs(2),
        )
        .await;
    assert!(early.is_none(), "pushed inside the window it could not read: {early:?}");
    stack.bridge.advance(Duration::from_secs(10)).await;
    stack
        .bridge
        .wait_for_event_log(&sixth, "success", Some("add_member"))
        .await;
}

/// Moves the clock 30 s at a time (never more than the five-minute cap between two attempts)
/// until `done` holds; answers whether it did within half an hour of the bridge's time.
async fn advancing_until<F, Fut>(p: &Proxied, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..60 {
        if common::wait_until(Duration::from_millis(200), &mut done).await {
            return true;
        }
        p.stack.bridge.advance(Duration::from_secs(30)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deprovisioning_removal_refused_with_401_ten_times_is_retried_on_the_clock_until_the_app_goes() {
    let Some(p) = proxied(json!({"syncIntervalSeconds": 86_400})).await else {
        return;
    };
    let (principal, _) = provisioned_member(&p).await;
    p.proxy
        .arm(json!({"mode": "status", "status": 401, "count": 10,
                    "match": {"method": "PATCH", "bodyContains": "remove"}}))
        .await;
    let path = format!("/v1/apps/{}", p.app_id);
    let (status, app) = p
        .stack
        .bridge
        .admin(Method::DELETE, &format!("{path}?deprovision=true"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{app}");

    // While the target refuses, the app stays `deleting` and says why.
    let refused = common::wait_until(PUSH_TIMEOUT, || async {
        let (_, app) = p.stack.bridge.admin(Method::GET, &path, None).await;
        app["status"] == "deleting" && app["statusReason"].as_str().unwrap_or("").contains("401")
    })
    .await;
    let (_, app) = p.stack.bridge.admin(Method::GET, &path, None).await;
    assert!(refused, "the refusal is visible on the app: {app}");

    let gone = advancing_until(&p, || async {
        p.stack.bridge.admin(Method::GET, &path, None).await.0 == StatusCode::NOT_FOUND
    })
    .await;
    assert!(gone, "the app is gone once its member is removed");
    p.stack.target.assert_members_eventually(&p.target_name, &[]).await;
    assert!(
        !p.stack
            .target
            .group_member_user_names(&p.target_name)
            .await
            .contains(&principal.user_principal_name)
    );
    let (_, entries) = p
        .stack
        .bridge
        .logs_as(
            &p.stack.bridge.admin_token,
            &[("appId", &p.app_id), ("trigger", "deprovision")],
        )
        .await;
    assert!(
        entries.iter().all(|e| e["status"] != "failure"),
        "a removal is never given up: {entries:#?}"
    );
    assert_eq!(
        entries.iter().filter(|e| e["status"] == "deferred").count(),
        10,
        "{entries:#?}"
    );
    let removed: Vec<&Value> = entries.iter().filter(|e| e["status"] == "success").collect();
    assert_eq!(removed.len(), 1, "{entries:#?}");
    assert_eq!(removed[0]["attempt"], 11, "{entries:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cycle_removal_refused_with_403_ten_times_is_retried_on_the_clock_until_the_target_takes_it() {
    // No other cycle comes while the clock moves: the removal has to get there on its own.
    let Some(p) = proxied(json!({"syncIntervalSeconds": 86_400})).await else {
        return;
    };
    let (principal, _) = provisioned_member(&p).await;
    // An unassignment ends the membership at the target at the next cycle (a cycle step).
    let (status, body) = p
        .stack
        .bridge
        .admin(
            Method::DELETE,
            &format!("/v1/apps/{}/groups/{}", p.app_id, p.group.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    p.proxy
        .arm(json!({"mode": "status", "status": 403, "count": 10,
                    "match": {"method": "PATCH", "bodyContains": "remove"}}))
        .await;
    let cycle = p.stack.bridge.sync_and_wait(&p.app_id, false).await;
    assert_ne!(cycle["status"], "running", "{cycle}");

    let removed = advancing_until(&p, || async {
        p.stack
            .bridge
            .find_log(
                &[("appId", &p.app_id), ("principalId", &principal.id)],
                |e| e["action"] == "remove_member" && e["status"] == "success",
                Duration::from_millis(100),
            )
            .await
            .is_some()
    })
    .await;
    assert!(removed, "the removal reached the target without another cycle");
    p.stack.target.assert_members_eventually(&p.target_name, &[]).await;
    let (_, entries) = p
        .stack
        .bridge
        .logs_as(
            &p.stack.bridge.admin_token,
            &[("appId", &p.app_id), ("principalId", &principal.id)],
        )
        .await;
    let removals: Vec<&Value> = entries.iter().filter(|e| e["action"] == "remove_member").collect();
    assert!(
        removals.iter().all(|e| e["status"] != "failure"),
        "a removal is never given up: {removals:#?}"
    );
    assert_eq!(
        removals.iter().filter(|e| e["status"] == "deferred").count(),
        10,
        "each refusal is a retry on the clock: {removals:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removal_while_a_rename_is_moved_half_way_removes_the_member_from_both_target_groups() {
    let Some(p) = proxied(json!({"syncIntervalSeconds": 86_400})).await else {
        return;
    };
    let (principal, activation) = provisioned_member(&p).await;
    let new_name = format!("Renamed {}", common::short_id());
    p.stack.bridge.assign_group(&p.app_id, &p.group.id, &new_name).await;

    // The cycle moves the member: added to the new group, but its removal from the old one is
    // refused, and the move waits for its retry (the clock does not move).
    p.proxy
        .arm(json!({"mode": "status", "status": 503, "count": 1,
                    "match": {"method": "PATCH", "bodyContains": "remove"}}))
        .await;
    let (status, answer) = p
        .stack
        .bridge
        .admin(Method::POST, &format!("/v1/apps/{}/sync", p.app_id), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    p.stack
        .target
        .assert_members_eventually(&new_name, &[principal.upn()])
        .await;
    let refused = common::wait_until(PUSH_TIMEOUT, || async {
        p.proxy.seen().await.iter().any(|r| r["faulted"] == true)
    })
    .await;
    assert!(refused, "the move's removal from the old group was refused");
    assert_eq!(
        p.stack.target.group_member_user_names(&p.target_name).await,
        [principal.upn()],
        "half-way: still in the old group"
    );

    // The removal is made wherever the member is: both groups.
    let removal = activation.deactivation();
    p.stack.bridge.deliver(&[&removal]).await;
    p.stack
        .bridge
        .wait_for_event_log(&removal, "success", Some("remove_member"))
        .await;
    p.stack.target.assert_members_eventually(&new_name, &[]).await;
    p.stack.target.assert_members_eventually(&p.target_name, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_lease_is_lost_during_a_slow_token_fetch_is_never_sent() {
    // Leases are PostgreSQL's (several replicas on one database).
    if !common::postgres_under_test() {
        return;
    }
    let Some(target) = common::target(Kind::ScimmyOAuth).await else {
        return;
    };
    let oauth = target.oauth.clone().expect("an OAuth target");
    let (Some(scim), Some(issuer)) = (
        FaultProxy::start(&target).await,
        FaultProxy::start_before(&oauth.token_url).await,
    ) else {
        return;
    };
    // A renewal every second: the lease's loss is noticed while the token is on its way.
    let bridge = common::Bridge::start_clocked(|config| config.lease_ttl_ms = 3_000).await;
    let mut auth = target.app_auth();
    auth["tokenUrl"] = json!(format!("{}/token", issuer.url));
    let app_id = bridge
        .register_app_with(&target, &scim.base_url_for(&target), json!({"auth": auth}))
        .await;
    let group = SourceGroup::new();
    bridge.assign_group(&app_id, &group.id, "Slow token").await;
    bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;
    let url = bridge.database_url();
    let lease = format!("app:{app_id}");
    let held = common::wait_until(PUSH_TIMEOUT, || {
        let (url, lease) = (url.clone(), lease.clone());
        async move {
            common::psql_rows(
                &url,
                &format!("SELECT count(*) FROM leases WHERE name = '{lease}' AND NOT released AND expires_at > now()"),
            ) == ["1"]
        }
    })
    .await;
    assert!(held, "the bridge holds the app's lease");

    // The token endpoint takes its time; meanwhile another replica takes the app's lease.
    issuer.arm(json!({"mode": "delay", "ms": 4000, "count": 1})).await;
    let activation = Event::activation(&Principal::new(), &group).starting(bridge.now());
    bridge.deliver(&[&activation]).await;
    let fetching = common::wait_until(PUSH_TIMEOUT, || async { !issuer.seen().await.is_empty() }).await;
    assert!(fetching, "the push asked for a token");
    common::psql_rows(
        &url,
        &format!(
            "UPDATE leases SET holder = 'another-replica', token = nextval('lease_tokens'),
               acquired_at = now(), expires_at = now() + interval '1 hour', released = FALSE
             WHERE name = '{lease}'"
        ),
    );

    // The token comes back after the lease was lost: nothing reaches the target.
    let answered = common::wait_until(Duration::from_secs(10), || async {
        issuer.seen().await.iter().any(|r| !r["status"].is_null())
    })
    .await;
    assert!(answered, "the token endpoint answered: {:?}", issuer.seen().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = scim.seen().await;
    assert!(sent.is_empty(), "requests left after the lease was lost: {sent:#?}");
    let pushed = bridge
        .find_log(
            &[("eventId", activation.id())],
            |e| e["status"] == "success",
            Duration::from_millis(200),
        )
        .await;
    assert!(pushed.is_none(), "{pushed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatcher_whose_start_fails_on_a_store_fault_is_started_again_under_its_lease_and_pushes() {
    // The store fault is a row-level security policy of the PostgreSQL store under test that
    // fails the one-app look-up a dispatcher starts with (the lease look's listing still works).
    if !common::postgres_under_test() {
        return;
    }
    let Some(mut stack) = Stack::start(Kind::Scim2Server).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    let url = stack.bridge.database_url();
    common::psql_rows(
        &url,
        "CREATE FUNCTION injected_lookup_fault() RETURNS boolean LANGUAGE plpgsql AS
           $$ BEGIN
                IF current_query() LIKE '%FROM apps WHERE id = $1::uuid%' THEN
                  RAISE EXCEPTION 'injected store fault';
                END IF;
                RETURN TRUE;
              END $$;
         CREATE POLICY injected_fault ON apps USING (injected_lookup_fault());
         ALTER TABLE apps ENABLE ROW LEVEL SECURITY;
         ALTER TABLE apps FORCE ROW LEVEL SECURITY;",
    );
    // Restarted, the bridge takes its app lease back at once and starts the app's dispatcher,
    // whose start fails.
    stack.bridge.restart_process(&[]).await;
    let failed = common::wait_until(Duration::from_secs(10), || async {
        stack.bridge.output().contains("starting the app's dispatcher failed")
    })
    .await;
    assert!(failed, "the failed start is logged:\n{}", stack.bridge.output());
    let principal = Principal::new();
    let activation = Event::activation(&principal, &group);
    stack.bridge.deliver(&[&activation]).await;

    // The store works again: the app's dispatcher runs under the lease it holds, and pushes.
    common::psql_rows(
        &url,
        "ALTER TABLE apps NO FORCE ROW LEVEL SECURITY;
         ALTER TABLE apps DISABLE ROW LEVEL SECURITY;
         DROP POLICY injected_fault ON apps;",
    );
    stack
        .bridge
        .wait_for_log(
            &[("eventId", activation.id())],
            |e| e["action"] == "add_member" && e["status"] == "success",
            Duration::from_secs(20),
        )
        .await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    let output = stack.bridge.output();
    let failed_at = output.rfind("starting the app's dispatcher failed").expect("logged");
    assert!(
        output[failed_at..].contains("dispatcher started"),
        "the dispatcher is started again and says so:\n{output}"
    );
}
