//! The engine (SPEC sections 1 and 5): a running cycle never holds up an immediate push, arrival
//! order through the window, the window rebuilt from admissions after a crash, retries on the
//! bridge's clock, and cycles that resume under their id. Against a real scim2-server.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::clocked::{FaultProxy, Proxied, behind_fault_proxy};
use common::{Bridge, Event, Kind, Principal, SourceGroup, Stack, short_id, target, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn time_of(entry: &Value, field: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(entry[field].as_str().unwrap_or_else(|| panic!("{field} in {entry}"))).unwrap()
}

/// A standing member of the group through the directory feed (provisioned by the next cycle).
async fn put_standing(bridge: &Bridge, group: &SourceGroup, p: &Principal) {
    let (status, body) = bridge
        .admin(
            Method::PUT,
            &format!("/v1/groups/{}/members/{}", group.id, p.id),
            Some(json!({"principal": {"userPrincipalName": p.user_principal_name, "displayName": p.display_name}})),
        )
        .await;
    assert!(status.is_success(), "directory PUT: {status} {body}");
}

async fn cycles(bridge: &Bridge, app_id: &str) -> Vec<Value> {
    let (status, body) = bridge
        .admin(Method::GET, &format!("/v1/apps/{app_id}/sync-cycles"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// An app registered with `registration`, a group assigned to it, one member pushed by an
/// activation (to be revoked during the cycle) and `standing` standing members for its next cycle.
struct CycleAhead {
    app_id: String,
    group: SourceGroup,
    target_name: String,
    leaving: Principal,
    activation: Event,
    standing: Vec<Principal>,
}

async fn cycle_ahead(bridge: &Bridge, registration: Value, standing: usize) -> CycleAhead {
    let (status, app) = bridge.admin(Method::POST, "/v1/apps", Some(registration)).await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let app_id = common::app_id(&app);
    let group = SourceGroup::new();
    let target_name = format!("Cycle {}", short_id());
    bridge.assign_group(&app_id, &group.id, &target_name).await;

    let leaving = Principal::new();
    let activation = Event::activation(&leaving, &group);
    bridge.deliver(&[&activation]).await;
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    let standing: Vec<Principal> = (0..standing).map(|_| Principal::new()).collect();
    for p in &standing {
        put_standing(bridge, &group, p).await;
    }
    CycleAhead {
        app_id,
        group,
        target_name,
        leaving,
        activation,
        standing,
    }
}

/// The cycle once it has ended, polled in real time; `None` if it is still running after `timeout`.
async fn cycle_ended(bridge: &Bridge, app_id: &str, cycle_id: &str, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = cycles(bridge, app_id)
            .await
            .into_iter()
            .find(|c| c["id"] == cycle_id && !c["endedAt"].is_null());
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The real binary with an app whose target is reached through the fault proxy, and a group
/// assigned to it.
struct ProxiedBinary {
    target: common::Target,
    proxy: FaultProxy,
    bridge: Bridge,
    app_id: String,
    group: SourceGroup,
    target_name: String,
}

async fn proxied_binary(kind: Kind, settings: Value) -> Option<ProxiedBinary> {
    let target = target(kind).await?;
    let proxy = FaultProxy::start(&target).await?;
    let bridge = Bridge::start().await;
    let app_id = bridge
        .register_app_with(&target, &proxy.base_url_for(&target), settings)
        .await;
    let group = SourceGroup::new();
    let target_name = format!("Proxied {}", short_id());
    bridge.assign_group(&app_id, &group.id, &target_name).await;
    Some(ProxiedBinary {
        target,
        proxy,
        bridge,
        app_id,
        group,
        target_name,
    })
}

/// A target group's member ids are each listed once (SCIMMY keeps a member added twice; on
/// scim2-server, which does not, the tests also count the adds the proxy saw).
fn assert_each_once(ids: &[String], context: &str) {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a member is listed twice at the target ({context}): {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_and_an_activation_reach_the_target_within_seconds_while_a_long_cycle_runs() {
    let Some(target) = target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    // Two requests a second: 60 standing members take the cycle well over 30 s.
    let mut registration = target.app_registration(&format!("slow-{}", short_id()));
    registration["pacing"] = json!({"requestsPerSecond": 2});
    let CycleAhead {
        app_id,
        group,
        target_name,
        leaving,
        activation,
        standing,
    } = cycle_ahead(&bridge, registration, 60).await;

    let (status, answer) = bridge
        .admin(Method::POST, &format!("/v1/apps/{app_id}/sync"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let cycle_id = answer["cycleId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let running = cycles(&bridge, &app_id).await;
    assert!(
        running
            .iter()
            .any(|c| c["id"] == cycle_id.as_str() && c["endedAt"].is_null()),
        "the cycle is still running: {running:?}"
    );
    // A second manual cycle is merged into the running one.
    let (_, merged) = bridge
        .admin(Method::POST, &format!("/v1/apps/{app_id}/sync"), None)
        .await;
    assert_eq!(merged["cycleId"], cycle_id.as_str(), "merged: {merged}");

    let arriving = Principal::new();
    let revocation = activation.deactivation();
    let new_activation = Event::activation(&arriving, &group);
    let sent = Instant::now();
    bridge.deliver(&[&revocation, &new_activation]).await;
    let both_at_target = wait_until(Duration::from_secs(2), || async {
        let names = target.group_member_user_names(&target_name).await;
        !names.contains(&leaving.user_principal_name) && names.contains(&arriving.user_principal_name)
    })
    .await;
    let took = sent.elapsed();
    assert!(
        both_at_target,
        "revocation and activation at the target within 2 s of delivery"
    );
    let removed = bridge
        .wait_for_event_log(&revocation, "success", Some("remove_member"))
        .await;
    assert!(
        removed["cycleId"].is_null(),
        "pushed at once, not by the cycle: {removed}"
    );
    assert!(removed["latencyMs"].as_i64().unwrap() < 2_000, "{removed}");
    eprintln!("revocation and activation at the target {took:?} after delivery, during the cycle");

    // The cycle still ends with every standing member, each once.
    let ended = cycle_ended(&bridge, &app_id, &cycle_id, Duration::from_secs(120))
        .await
        .expect("the cycle ended within two minutes");
    assert_eq!(ended["status"], "success", "{ended}");
    let took_cycle = time_of(&ended, "endedAt") - time_of(&ended, "startedAt");
    assert!(took_cycle.num_seconds() >= 25, "the cycle was long: {ended}");
    let ids = target.group_member_ids(&target_name).await;
    assert_each_once(&ids, "after the cycle");
    let mut expected: Vec<String> = standing.iter().map(|p| p.user_principal_name.clone()).collect();
    expected.push(arriving.user_principal_name.clone());
    expected.sort();
    assert_eq!(target.group_member_user_names(&target_name).await, expected);
}

/// An unpaced app behind the fault proxy, which holds each user request 100 ms, with its cycle
/// ahead (`cycle_ahead`: `standing` standing members, and `late` too if given), asked for and
/// under way: three user requests seen.
struct CycleUnderWay {
    target: common::Target,
    proxy: FaultProxy,
    bridge: Bridge,
    ahead: CycleAhead,
    cycle_id: String,
    /// The proxy's log before the cycle was asked for.
    seen_before: usize,
}

async fn cycle_under_way(name: &str, standing: usize, late: Option<&Principal>) -> Option<CycleUnderWay> {
    let target = target(Kind::Scim2Server).await?;
    let proxy = FaultProxy::start(&target).await?;
    let bridge = Bridge::start().await;
    let mut registration = target.app_registration(&format!("{name}-{}", short_id()));
    registration["scimBaseUrl"] = json!(proxy.base_url_for(&target));
    registration["pacing"] = json!({"requestsPerSecond": 1_000_000});
    let ahead = cycle_ahead(&bridge, registration, standing).await;
    if let Some(late) = late {
        put_standing(&bridge, &ahead.group, late).await;
    }
    proxy
        .arm(json!({"mode": "delay", "ms": 100, "count": -1, "match": {"pathContains": "/Users"}}))
        .await;
    let seen_before = proxy.seen().await.len();
    let (status, answer) = bridge
        .admin(Method::POST, &format!("/v1/apps/{}/sync", ahead.app_id), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            user_requests(&proxy.seen().await[seen_before..]) >= 3
        })
        .await,
        "the cycle's user steps began"
    );
    Some(CycleUnderWay {
        target,
        proxy,
        bridge,
        ahead,
        cycle_id: answer["cycleId"].as_str().expect("cycleId").to_string(),
        seen_before,
    })
}

/// The user requests in a part of the proxy's log.
fn user_requests(seen: &[Value]) -> usize {
    seen.iter()
        .filter(|r| r["path"].as_str().unwrap_or("").contains("/Users"))
        .count()
}

/// Between a cycle's user steps the dispatcher keeps its last read of the app and its queue (a
/// user step changes neither), but a revocation's wake makes it read before the next step: the
/// removal goes out while the user steps go on, not once they are done. Unpaced, so the steps run
/// back to back; the proxy holds each user request 100 ms, so the 40 user steps take 4 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_during_a_cycles_unpaced_user_steps_goes_out_before_the_next_step() {
    let Some(CycleUnderWay {
        target,
        proxy,
        bridge,
        ahead:
            CycleAhead {
                app_id,
                target_name,
                leaving,
                activation,
                ..
            },
        cycle_id,
        seen_before,
    }) = cycle_under_way("kept", 40, None).await
    else {
        return;
    };

    let revocation = activation.deactivation();
    bridge.deliver(&[&revocation]).await;
    bridge
        .wait_for_event_log(&revocation, "success", Some("remove_member"))
        .await;
    let ended = cycle_ended(&bridge, &app_id, &cycle_id, Duration::from_secs(60))
        .await
        .expect("the cycle ended within a minute");
    assert_eq!(ended["counts"]["added"], 40, "{ended}");

    // In the order the target got them: the removal (the first group PATCH of the cycle's time;
    // the chunk's add comes after every user step), then user steps still to go.
    let seen = proxy.seen().await;
    let cycle_seen = &seen[seen_before..];
    let removal = cycle_seen
        .iter()
        .position(|r| r["method"] == "PATCH" && r["path"].as_str().unwrap_or("").contains("/Groups"))
        .expect("the removal's PATCH went through the proxy");
    let users_after = user_requests(&cycle_seen[removal..]);
    assert!(
        users_after >= 10,
        "the removal went out while the user steps went on ({users_after} user requests after it): {cycle_seen:?}"
    );
    let names = target.group_member_user_names(&target_name).await;
    assert!(!names.contains(&leaving.user_principal_name), "{names:?}");
}

/// An app with groups has its chunk's user steps read at once, with the first; a later step
/// takes its part only while the dispatcher was not woken. A member the directory removes while
/// the chunk's earlier steps run (no job is queued: the removal wakes the dispatchers of the
/// group's apps) is read again before its step, and gets no account. The member sorts last in the
/// chunk; each user request is held 100 ms, so its step comes seconds after the removal.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_the_directory_removes_during_a_cycles_user_steps_gets_no_account() {
    // Last in the chunk: the cycle adds members in the order of their ids.
    let late = Principal {
        id: format!("ffffffff{}", &uuid::Uuid::new_v4().to_string()[8..]),
        ..Principal::new()
    };
    let Some(CycleUnderWay {
        target,
        // Kept to the end: the app's requests go through it.
        proxy: _proxy,
        bridge,
        ahead: CycleAhead {
            app_id,
            group,
            target_name,
            ..
        },
        cycle_id,
        ..
    }) = cycle_under_way("late", 20, Some(&late)).await
    else {
        return;
    };
    let (status, body) = bridge
        .admin(
            Method::DELETE,
            &format!("/v1/groups/{}/members/{}", group.id, late.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "directory DELETE: {body}");
    let ended = cycle_ended(&bridge, &app_id, &cycle_id, Duration::from_secs(60))
        .await
        .expect("the cycle ended within a minute");
    assert_eq!(ended["counts"]["added"], 20, "{ended}");
    assert!(
        target.user_by_user_name(late.upn()).await.is_none(),
        "no account for the member the directory removed before its step"
    );
    assert!(
        !target
            .group_member_user_names(&target_name)
            .await
            .contains(&late.user_principal_name)
    );
}

/// Pausing an app in the middle of its cycle's user steps ends the cycle at its next step: no
/// further step is sent, and the cycle is recorded as ended (what is left goes to the next cycle).
#[tokio::test(flavor = "multi_thread")]
async fn pausing_an_app_during_its_cycles_user_steps_ends_the_cycle_at_the_next_step() {
    let Some(CycleUnderWay {
        proxy,
        bridge,
        ahead: CycleAhead { app_id, .. },
        cycle_id,
        ..
    }) = cycle_under_way("pause", 20, None).await
    else {
        return;
    };
    let (status, app) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{app_id}"),
            Some(json!({"status": "paused"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{app}");
    let ended = cycle_ended(&bridge, &app_id, &cycle_id, Duration::from_secs(30))
        .await
        .expect("the paused app's cycle was recorded as ended");
    assert!(ended["counts"]["added"].as_i64().unwrap_or(0) < 20, "{ended}");
    // Nothing more goes to the target once the cycle has ended.
    let seen_at_end = proxy.seen().await.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.seen().await.len(), seen_at_end, "no step after the cycle's end");
}

#[tokio::test(flavor = "multi_thread")]
async fn five_activations_then_a_removal_on_an_idle_app_keep_arrival_order_and_nothing_is_deferred() {
    let Some(stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let (group, target_name) = stack.assigned_group().await;
    stack
        .bridge
        .advance_to(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await;
    let earlier = Principal::new();
    let first = Event::activation(&earlier, &group);
    stack.bridge.deliver(&[&first]).await;
    stack
        .bridge
        .wait_for_event_log(&first, "success", Some("add_member"))
        .await;
    // The app is idle: its window is empty again.
    stack.bridge.advance(Duration::from_secs(11)).await;

    let ps: Vec<Principal> = (0..5).map(|_| Principal::new()).collect();
    let activations: Vec<Event> = ps.iter().map(|p| Event::activation(p, &group)).collect();
    let removal = first.deactivation();
    let mut batch: Vec<&Event> = activations.iter().collect();
    batch.push(&removal);
    stack.bridge.deliver(&batch).await;
    for event in &activations {
        stack
            .bridge
            .wait_for_event_log(event, "success", Some("add_member"))
            .await;
    }
    let mut expected: Vec<&str> = ps.iter().map(|p| p.upn()).collect();
    expected.push(earlier.upn());
    stack.target.assert_members_eventually(&target_name, &expected).await;
    // The removal waits for the window, first in line; nothing of the batch is deferred.
    stack.bridge.advance(Duration::from_secs(10)).await;
    let removed = stack
        .bridge
        .wait_for_event_log(&removal, "success", Some("remove_member"))
        .await;
    assert!(removed["cycleId"].is_null(), "{removed}");
    stack
        .target
        .assert_members_eventually(&target_name, &ps.iter().map(|p| p.upn()).collect::<Vec<_>>())
        .await;
    let (_, deferred) = stack
        .bridge
        .logs_as(
            &stack.bridge.admin_token,
            &[("appId", &stack.app_id), ("status", "deferred")],
        )
        .await;
    assert!(deferred.is_empty(), "nothing deferred: {deferred:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_a_push_and_its_record_does_not_reset_the_window() {
    let Some(ProxiedBinary {
        target,
        proxy,
        mut bridge,
        group,
        target_name,
        ..
    }) = proxied_binary(Kind::Scim2Server, json!({})).await
    else {
        return;
    };

    let ps: Vec<Principal> = (0..10).map(|_| Principal::new()).collect();
    let events: Vec<Event> = ps.iter().map(|p| Event::activation(p, &group)).collect();
    for event in &events[..4] {
        bridge.deliver(&[event]).await;
        bridge.wait_for_event_log(event, "success", Some("add_member")).await;
    }
    // The fifth push reaches the target, but its answer is held: the bridge dies before it
    // can record the outcome.
    proxy
        .arm(json!({"mode": "delay", "when": "after", "ms": 5000, "count": 1,
                    "match": {"method": "PATCH", "pathContains": "/Groups/"}}))
        .await;
    bridge.deliver(&[&events[4]]).await;
    let held = wait_until(Duration::from_secs(5), || async {
        proxy.seen().await.iter().filter(|r| r["method"] == "PATCH").count() == 5
    })
    .await;
    assert!(held, "the fifth PATCH reached the proxy");
    bridge.crash_and_restart().await;

    // Five more at once, right after the restart: the window still holds the five admitted.
    let rest: Vec<&Event> = events[5..].iter().collect();
    bridge.deliver(&rest).await;
    for event in &events[5..] {
        let entry = bridge.wait_for_event_log(event, "deferred", Some("add_member")).await;
        assert!(entry["reason"].as_str().unwrap_or("").contains("window"), "{entry}");
    }
    // The push whose outcome was lost is settled by reading the target, not sent again.
    bridge
        .wait_for_event_log(&events[4], "success", Some("add_member"))
        .await;
    let adds: Vec<chrono::DateTime<chrono::FixedOffset>> = proxy
        .seen()
        .await
        .iter()
        .filter(|r| r["method"] == "PATCH" && r["body"].as_str().unwrap_or("").contains("\"add\""))
        .map(|r| time_of(r, "time"))
        .collect();
    assert_eq!(adds.len(), 5, "five adds reached the target, none twice");
    for (i, t) in adds.iter().enumerate() {
        let within = adds[i..]
            .iter()
            .filter(|u| **u - *t < chrono::Duration::seconds(10))
            .count();
        assert!(within <= 5, "{within} pushes within 10 s of {t}");
    }
    let ids = target.group_member_ids(&target_name).await;
    assert_each_once(&ids, "after the crash");
    assert_eq!(ids.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removal_told_to_retry_after_two_minutes_holds_up_nothing_else() {
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
    // Another app, straight to the target.
    let (other_group, other_name) = stack.assigned_group().await;
    let leaving = Principal::new();
    let activation = Event::activation(&leaving, &group);
    stack.bridge.deliver(&[&activation]).await;
    stack
        .bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    proxy
        .arm(json!({"mode": "status", "status": 429, "retryAfter": "120", "count": 1,
                    "match": {"method": "PATCH", "bodyContains": "remove"}}))
        .await;
    let removal = activation.deactivation();
    stack.bridge.deliver(&[&removal]).await;
    let throttled = stack
        .bridge
        .wait_for_event_log(&removal, "deferred", Some("remove_member"))
        .await;
    assert_eq!(
        (time_of(&throttled, "deferredUntil") - time_of(&throttled, "time")).num_seconds(),
        120,
        "{throttled}"
    );

    // Meanwhile, without moving the clock: the same app's next activation and another app's.
    let next = Event::activation(&Principal::new(), &group);
    let elsewhere = Event::activation(&Principal::new(), &other_group);
    stack.bridge.deliver(&[&next]).await;
    stack.bridge.deliver(&[&elsewhere]).await;
    stack
        .bridge
        .wait_for_event_log(&next, "success", Some("add_member"))
        .await;
    stack
        .bridge
        .wait_for_event_log(&elsewhere, "success", Some("add_member"))
        .await;
    stack
        .target
        .assert_members_eventually(&other_name, &[elsewhere.upn()])
        .await;
    assert!(
        stack
            .target
            .group_member_user_names(&target_name)
            .await
            .contains(&leaving.user_principal_name),
        "the removal waits for Retry-After"
    );
    stack.bridge.advance(Duration::from_secs(120)).await;
    stack
        .bridge
        .wait_for_event_log(&removal, "success", Some("remove_member"))
        .await;
    stack
        .target
        .assert_members_eventually(&target_name, &[next.upn()])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_two_minute_retry_after_exits_at_once() {
    // The target must outlive the test: dropping it stops its server.
    let Some(ProxiedBinary {
        target: _target,
        proxy,
        mut bridge,
        group,
        ..
    }) = proxied_binary(Kind::Scim2Server, json!({})).await
    else {
        return;
    };
    let activation = Event::activation(&Principal::new(), &group);
    bridge.deliver(&[&activation]).await;
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    proxy
        .arm(
            json!({"mode": "status", "status": 429, "retryAfter": "120", "count": -1,
                    "match": {"method": "PATCH", "bodyContains": "remove"}}),
        )
        .await;
    let removal = activation.deactivation();
    bridge.deliver(&[&removal]).await;
    bridge
        .wait_for_event_log(&removal, "deferred", Some("remove_member"))
        .await;
    let asked = Instant::now();
    let status = bridge.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "clean exit: {status}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "exited in {:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cycle_stopped_between_steps_resumes_under_its_id_after_a_restart() {
    let Some(mut stack) = Stack::start_clocked(Kind::Scim2Server, |_| {}).await else {
        return;
    };
    let app_id = stack
        .bridge
        .register_app_with(
            &stack.target,
            &stack.target.base_url,
            json!({"pacing": {"requestsPerSecond": 1}}),
        )
        .await;
    let group = SourceGroup::new();
    let target_name = format!("Resume {}", short_id());
    stack.bridge.assign_group(&app_id, &group.id, &target_name).await;
    let standing: Vec<Principal> = (0..8).map(|_| Principal::new()).collect();
    for p in &standing {
        put_standing(&stack.bridge, &group, p).await;
    }
    let (_, answer) = stack
        .bridge
        .admin(Method::POST, &format!("/v1/apps/{app_id}/sync"), None)
        .await;
    let cycle_id = answer["cycleId"].as_str().unwrap().to_string();
    // A few steps (one a second), then a stop in the middle of the cycle.
    for _ in 0..3 {
        stack.bridge.advance(Duration::from_secs(1)).await;
    }
    // The cycle's record is written by its dispatcher, a moment after the answer: read until
    // it is listed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = cycles(&stack.bridge, &app_id).await;
    while before.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        before = cycles(&stack.bridge, &app_id).await;
    }
    assert!(
        before[0]["endedAt"].is_null(),
        "still running before the stop: {before:?}"
    );
    stack.bridge.restart().await;
    // Each request takes a pacing cell (a user step is a look-up or two and a create): a
    // minute of the bridge's clock is enough for the rest.
    for _ in 0..60 {
        stack.bridge.advance(Duration::from_secs(1)).await;
    }
    let ended = stack
        .bridge
        .wait_for_cycle(&app_id, |c| c["id"] == cycle_id.as_str())
        .await;
    assert_eq!(ended["status"], "success", "{ended}");
    let all = cycles(&stack.bridge, &app_id).await;
    assert_eq!(all.len(), 1, "one cycle, resumed under its id: {all:?}");
    let ids = stack.target.group_member_ids(&target_name).await;
    assert_each_once(&ids, "after the resumed cycle");
    let mut expected: Vec<&str> = standing.iter().map(|p| p.upn()).collect();
    expected.sort();
    stack.target.assert_members_eventually(&target_name, &expected).await;
    // Standing members come from the directory feed: their entries say so.
    let entry = stack
        .bridge
        .wait_for_log(
            &[
                ("appId", &app_id),
                ("principalId", &standing[0].id),
                ("action", "add_member"),
            ],
            |e| e["status"] == "success",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(entry["trigger"], "directory", "{entry}");
    assert_eq!(entry["cycleId"], cycle_id.as_str(), "{entry}");
    // The users created before the stop, whose chunk had not committed yet, are known as the
    // bridge's own: the stop wrote them, and the resumed cycle did not match them as strangers.
    for p in &standing {
        let (status, link) = stack
            .bridge
            .admin(Method::GET, &format!("/v1/apps/{app_id}/users/{}", p.id), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{link}");
        assert_eq!(link["createdByBridge"], true, "{link}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deprovisioning_survives_a_failing_target_and_the_app_goes_only_when_every_member_is_removed() {
    let Some(Proxied {
        stack,
        proxy,
        app_id,
        group,
        target_name,
    }) = behind_fault_proxy(Kind::Scim2Server).await
    else {
        return;
    };
    let ps: Vec<Principal> = (0..2).map(|_| Principal::new()).collect();
    for p in &ps {
        let event = Event::activation(p, &group);
        stack.bridge.deliver(&[&event]).await;
        stack
            .bridge
            .wait_for_event_log(&event, "success", Some("add_member"))
            .await;
    }

    // The target refuses the removals: the deletion keeps the app, says why, and retries on the
    // clock (never given up).
    proxy
        .arm(json!({"mode": "status", "status": 403, "count": -1, "match": {"method": "PATCH"}}))
        .await;
    let path = format!("/v1/apps/{app_id}");
    let (status, app) = stack
        .bridge
        .admin(Method::DELETE, &format!("{path}?deprovision=true"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{app}");
    assert_eq!(app["status"], "deleting");
    assert_eq!(app["membersLeftToRemove"], 2, "{app}");
    let failing = wait_until(Duration::from_secs(5), || async {
        let (_, app) = stack.bridge.admin(Method::GET, &path, None).await;
        app["statusReason"].as_str().unwrap_or("").contains("keeps failing")
    })
    .await;
    let (_, app) = stack.bridge.admin(Method::GET, &path, None).await;
    assert!(failing, "the failing removal and its reason are visible: {app}");
    assert!(app["statusReason"].as_str().unwrap_or("").contains("403"), "{app}");
    assert_eq!(app["status"], "deleting", "{app}");
    stack.bridge.advance(Duration::from_secs(1)).await;
    let retrying = stack
        .bridge
        .wait_for_log(
            &[("appId", &app_id), ("trigger", "deprovision")],
            |e| e["status"] == "deferred" && e["attempt"] == 2,
            Duration::from_secs(5),
        )
        .await;
    assert!(retrying["reason"].as_str().unwrap_or("").contains("403"), "{retrying}");
    assert_eq!(stack.target.group_member_ids(&target_name).await.len(), 2);

    // The target recovers, but throttles at first: asked again, the removal goes at once, and
    // the rest go through with retries on the bridge's clock; the app disappears once the group
    // is empty.
    proxy.clear().await;
    proxy
        .arm(json!({"mode": "status", "status": 503, "retryAfter": "5", "count": 2, "match": {"method": "PATCH"}}))
        .await;
    let (status, _) = stack
        .bridge
        .admin(Method::DELETE, &format!("{path}?deprovision=true"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for _ in 0..10 {
        stack.bridge.advance(Duration::from_secs(5)).await;
    }
    let gone = wait_until(Duration::from_secs(5), || async {
        stack.bridge.admin(Method::GET, &path, None).await.0 == StatusCode::NOT_FOUND
    })
    .await;
    assert!(gone, "the app is gone once every member is removed");
    stack.target.assert_members_eventually(&target_name, &[]).await;
    let (_, removals) = stack
        .bridge
        .logs_as(
            &stack.bridge.admin_token,
            &[("appId", &app_id), ("trigger", "deprovision"), ("status", "success")],
        )
        .await;
    assert_eq!(removals.len(), 2, "one logged removal per member: {removals:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_a_cycle_patch_and_its_record_leaves_no_member_twice() {
    // SCIMMY keeps a member added twice, so a blind resend after the restart would show.
    let Some(ProxiedBinary {
        target,
        proxy,
        mut bridge,
        app_id,
        group,
        target_name,
    }) = proxied_binary(Kind::Scimmy, json!({"driftRepair": "off"})).await
    else {
        return;
    };
    let standing: Vec<Principal> = (0..3).map(|_| Principal::new()).collect();
    for p in &standing {
        put_standing(&bridge, &group, p).await;
    }
    // The cycle's PATCH reaches the target, but its answer is held: the bridge dies meanwhile.
    proxy
        .arm(json!({"mode": "delay", "when": "after", "ms": 5000, "count": 1,
                    "match": {"method": "PATCH", "pathContains": "/Groups/"}}))
        .await;
    let (status, answer) = bridge
        .admin(Method::POST, &format!("/v1/apps/{app_id}/sync"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let cycle_id = answer["cycleId"].as_str().unwrap().to_string();
    let sent = wait_until(Duration::from_secs(10), || async {
        proxy.seen().await.iter().any(|r| r["method"] == "PATCH")
    })
    .await;
    assert!(sent, "the cycle's PATCH reached the proxy");
    bridge.crash_and_restart().await;

    // The cycle resumes under its id and settles the PATCH by reading the group.
    let ended = cycle_ended(&bridge, &app_id, &cycle_id, Duration::from_secs(20))
        .await
        .expect("the interrupted cycle ended after the restart");
    assert_eq!(ended["status"], "success", "{ended}");
    let ids = target.group_member_ids(&target_name).await;
    assert_each_once(&ids, "after a crash during the cycle's PATCH");
    assert_eq!(ids.len(), 3, "{ids:?}");
    let adds = proxy
        .seen()
        .await
        .iter()
        .filter(|r| r["method"] == "PATCH" && r["body"].as_str().unwrap_or("").contains("\"add\""))
        .count();
    assert_eq!(adds, 1, "the PATCH was not sent again");
}
