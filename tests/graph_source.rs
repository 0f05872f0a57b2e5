//! The Graph source (SPEC §7) end to end: the real binary polls the Graph-shaped server of
//! `scim-fixtures/graph-server.mjs` every second and provisions scim2-server.

use crate::common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::graph::{GraphServer, activated_instance, pim_request};
use common::{Bridge, Event, Kind, PUSH_TIMEOUT, Principal, SourceGroup, Stack, TestDatabase, psql_rows, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

/// A Graph-shaped server, scim2-server, and a bridge reading the one and provisioning the other.
async fn graph_stack(page_size: u32) -> Option<(GraphServer, Stack)> {
    let graph = GraphServer::start(page_size).await?;
    let env = graph.bridge_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stack = Stack::start_with(Kind::Scim2Server, &env).await?;
    Some((graph, stack))
}

/// A group known to Graph and assigned to the app; answers it and its target display name.
async fn graph_group(graph: &GraphServer, stack: &Stack, membership_rule: Option<&str>) -> (SourceGroup, String) {
    let group = SourceGroup::new();
    graph.put_group(&group, membership_rule).await;
    let target_name = format!("Target {}", common::short_id());
    stack.bridge.assign_group(&stack.app_id, &group.id, &target_name).await;
    (group, target_name)
}

async fn source(stack: &Stack, group: &SourceGroup) -> Value {
    let (status, body) = stack.bridge.admin(Method::GET, "/v1/sources", None).await;
    assert!(status.is_success(), "GET /v1/sources: {status} {body}");
    body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|s| s["groupId"] == group.id.as_str()).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until a poll of the group has succeeded after `after`.
async fn wait_for_poll(stack: &Stack, group: &SourceGroup, after: &str, timeout: Duration) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    let polled = wait_until(timeout, || {
        let last = &last;
        async move {
            let state = source(stack, group).await;
            let done = state["lastSuccessAt"].as_str().and_then(parse_time) > parse_time(after);
            *last.borrow_mut() = state;
            done
        }
    })
    .await;
    let last = last.into_inner();
    assert!(polled, "no successful poll of group {} after {after}: {last}", group.id);
    last
}

fn parse_time(t: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(t).ok()
}

fn now_text() -> String {
    common::rfc3339(Utc::now())
}

async fn successful_adds(stack: &Stack, event_id: &str) -> usize {
    let (_, entries) = stack
        .bridge
        .logs_as(
            &stack.bridge.admin_token,
            &[("eventId", event_id), ("action", "add_member"), ("status", "success")],
        )
        .await;
    entries.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activation_in_graph_is_at_the_target_within_the_poll_interval_and_self_deactivate_removes_it() {
    let Some((graph, stack)) = graph_stack(2).await else {
        return;
    };
    let (group, target_name) = graph_group(&graph, &stack, None).await;
    // Requests that change nothing fill more than one page, so the poller follows @odata.nextLink.
    for _ in 0..3 {
        let pending = Principal::new();
        graph.add_user(&pending).await;
        let request = pim_request("selfActivate", "PendingApproval", &pending, &group, Utc::now());
        graph.put_request(&request).await;
    }
    wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(10)).await;

    // A 429 with Retry-After and an expired token: both are got over without help.
    graph
        .control(
            Method::POST,
            "/faults",
            Some(json!({"status": 429, "retryAfter": "1", "count": 1, "pathContains": "assignmentScheduleRequests"})),
        )
        .await;
    graph.control(Method::POST, "/expire-tokens", None).await;
    // Got over: a 429, a 401, then the requests read again with a new token.
    let recovered = wait_until(Duration::from_secs(10), || async {
        let log = graph.log().await;
        let after_401 = log.iter().position(|(_, _, s)| *s == Some(401));
        after_401.is_some_and(|i| {
            log[i..]
                .iter()
                .any(|(_, p, s)| p.contains("assignmentScheduleRequests") && *s == Some(200))
        })
    })
    .await;
    let log = graph.log().await;
    assert!(
        recovered,
        "the poller did not get over the 429 and the expired token: {log:?}"
    );
    let last_error = wait_until(Duration::from_secs(5), || async {
        source(&stack, &group).await["lastError"].is_null()
    })
    .await;
    assert!(last_error, "{}", source(&stack, &group).await);
    assert!(
        log.iter().any(|(_, _, s)| *s == Some(429)),
        "no 429 was answered: {log:?}"
    );
    assert!(
        log.iter().any(|(_, _, s)| *s == Some(401)),
        "no 401 was answered: {log:?}"
    );
    assert!(
        log.iter()
            .filter(|(m, p, _)| m == "POST" && p.contains("/oauth2/v2.0/token"))
            .count()
            >= 2,
        "the token was not fetched again after the 401: {log:?}"
    );
    assert!(
        log.iter().any(|(_, p, _)| p.contains("$skiptoken")),
        "no second page was read: {log:?}"
    );

    let principal = Principal::new();
    graph.add_user(&principal).await;
    let activation = pim_request("selfActivate", "Provisioned", &principal, &group, Utc::now());
    let appeared = Instant::now();
    graph.put_request(&activation).await;
    let pushed = wait_until(Duration::from_secs(2), || async {
        stack.target.group_member_user_names(&target_name).await == vec![principal.upn().to_string()]
    })
    .await;
    assert!(
        pushed,
        "the activation was not at the target within the poll interval plus one second ({:?})",
        appeared.elapsed()
    );

    let deactivation = pim_request("selfDeactivate", "Provisioned", &principal, &group, Utc::now());
    graph.put_request(&deactivation).await;
    stack.target.assert_members_eventually(&target_name, &[]).await;
    let entry = stack
        .bridge
        .wait_for_log(
            &[("eventId", deactivation["id"].as_str().unwrap())],
            |e| e["status"] == "success",
            PUSH_TIMEOUT,
        )
        .await;
    assert_eq!(entry["trigger"], "deactivation", "{entry}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_neither_pushes_again_nor_misses_a_graph_request() {
    let Some((graph, mut stack)) = graph_stack(2).await else {
        return;
    };
    let (group, target_name) = graph_group(&graph, &stack, None).await;
    let (ada, bob, standing) = (Principal::new(), Principal::new(), Principal::new());
    for p in [&ada, &bob, &standing] {
        graph.add_user(p).await;
    }
    graph.add_member(&group, &standing).await;
    let activation = pim_request("selfActivate", "Provisioned", &ada, &group, Utc::now());
    graph.put_request(&activation).await;
    stack.target.assert_members_eventually(&target_name, &[ada.upn()]).await;
    wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(10)).await;

    stack.bridge.crash().await;
    // While the bridge is down: Ada's request is revoked (same id, new status), Bob activates.
    let mut revoked = activation.clone();
    revoked["status"] = json!("Revoked");
    graph.put_request(&revoked).await;
    graph
        .put_request(&pim_request("selfActivate", "Provisioned", &bob, &group, Utc::now()))
        .await;
    graph.control(Method::DELETE, "/log", None).await;
    stack.bridge.start_after_crash().await;

    stack.target.assert_members_eventually(&target_name, &[bob.upn()]).await;
    wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        successful_adds(&stack, activation["id"].as_str().unwrap()).await,
        1,
        "Ada's activation was pushed again"
    );
    let log = graph.log().await;
    let deltas: Vec<&String> = log
        .iter()
        .map(|(_, p, _)| p)
        .filter(|p| p.contains("/groups/delta"))
        .collect();
    assert!(!deltas.is_empty(), "no group delta read after the restart: {log:?}");
    assert!(
        deltas.iter().all(|p| p.contains("$deltatoken")),
        "the restart read group delta from the start instead of its stored delta link: {deltas:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_answering_503_for_20_seconds_stops_nothing_else_and_polling_resumes_by_itself() {
    let Some((graph, stack)) = graph_stack(2).await else {
        return;
    };
    let (group, target_name) = graph_group(&graph, &stack, None).await;
    wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(10)).await;
    graph
        .control(
            Method::POST,
            "/faults",
            Some(json!({"status": 503, "retryAfter": "1", "count": -1, "forMs": 20_000})),
        )
        .await;
    let outage = Instant::now();
    let during = Principal::new();
    graph.add_user(&during).await;
    graph
        .put_request(&pim_request("selfActivate", "Provisioned", &during, &group, Utc::now()))
        .await;

    // Webhooks and pushes go on meanwhile.
    let (webhook_group, webhook_target) = stack.assigned_group().await;
    let by_webhook = Principal::new();
    let event = Event::activation(&by_webhook, &webhook_group);
    let delivered = Instant::now();
    stack.bridge.deliver(&[&event]).await;
    stack
        .target
        .assert_members_eventually(&webhook_target, &[by_webhook.upn()])
        .await;
    assert!(
        delivered.elapsed() < Duration::from_secs(3),
        "a webhook push took {:?} during the Graph outage",
        delivered.elapsed()
    );
    let failing = wait_until(Duration::from_secs(5), || async {
        source(&stack, &group).await["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("503"))
    })
    .await;
    assert!(
        failing,
        "GET /v1/sources does not show the 503: {}",
        source(&stack, &group).await
    );
    assert!(stack.target.group_member_user_names(&target_name).await.is_empty());

    // Polling resumes by itself once Graph answers again.
    let resumed = wait_until(Duration::from_secs(30), || async {
        stack.target.group_member_user_names(&target_name).await == vec![during.upn().to_string()]
    })
    .await;
    assert!(
        resumed,
        "polling did not resume after the outage ({:?})",
        outage.elapsed()
    );
    assert!(outage.elapsed() >= Duration::from_secs(19), "pushed during the outage?");
    let (_, metrics) = stack.bridge.api(Method::GET, "/metrics", None, None).await;
    let text = metrics.as_str().unwrap_or_default().to_string();
    assert!(text.contains("scim_bridge_source_polls_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standing_member_from_group_delta_is_provisioned_at_the_next_cycle_and_an_activated_member_is_not_standing() {
    let Some((graph, stack)) = graph_stack(2).await else {
        return;
    };
    let (group, target_name) = graph_group(&graph, &stack, None).await;
    let (standing, activated) = (Principal::new(), Principal::new());
    for p in [&standing, &activated] {
        graph.add_user(p).await;
        graph.add_member(&group, p).await; // Entra lists activated users as members too
    }
    graph.add_activated_instance(&group, &activated).await;
    let activation = pim_request("selfActivate", "Provisioned", &activated, &group, Utc::now());
    graph.put_request(&activation).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[activated.upn()])
        .await;
    wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(10)).await;

    let (status, body) = stack
        .bridge
        .admin(Method::POST, &format!("/v1/apps/{}/sync", stack.app_id), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    stack
        .target
        .assert_members_eventually(&target_name, &[activated.upn(), standing.upn()])
        .await;

    // The activation ends while group delta still lists the member: the next cycle keeps it out.
    graph
        .put_request(&pim_request(
            "selfDeactivate",
            "Provisioned",
            &activated,
            &group,
            Utc::now(),
        ))
        .await;
    stack
        .target
        .assert_members_eventually(&target_name, &[standing.upn()])
        .await;
    run_cycle(&stack).await;
    assert_eq!(
        stack.target.group_member_user_names(&target_name).await,
        vec![standing.upn().to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graph_activation_of_a_dynamic_group_is_logged_skipped_with_the_r6_reason() {
    let Some((graph, stack)) = graph_stack(2).await else {
        return;
    };
    let (group, target_name) = graph_group(&graph, &stack, Some("user.department -eq \"IT\"")).await;
    let principal = Principal::new();
    graph.add_user(&principal).await;
    let activation = pim_request("selfActivate", "Provisioned", &principal, &group, Utc::now());
    graph.put_request(&activation).await;
    let entry = stack
        .bridge
        .wait_for_log(
            &[("eventId", activation["id"].as_str().unwrap())],
            |_| true,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(entry["status"], "skipped", "{entry}");
    assert!(entry["reason"].as_str().is_some_and(|r| r.contains("R6")), "{entry}");
    assert!(stack.target.group_member_user_names(&target_name).await.is_empty());

    // An operator sees the sources; an app owner does not.
    let operator = stack.bridge.create_token("graph-operator", "operator").await;
    let (status, sources) = stack
        .bridge
        .api(Method::GET, "/v1/sources", operator["token"].as_str(), None)
        .await;
    assert!(status.is_success(), "{status} {sources}");
    let ids: Vec<&str> = sources["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"webhook") && ids.contains(&format!("graph:{}", group.id).as_str()),
        "{sources}"
    );
    let owner = stack.bridge.create_token("graph-owner", "app_owner").await;
    let (status, _) = stack
        .bridge
        .api(Method::GET, "/v1/sources", owner["token"].as_str(), None)
        .await;
    assert!(status.is_client_error(), "an app owner read the sources: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_expanded_principal_lacks_its_upn_is_provisioned_after_reading_the_user() {
    let Some((graph, stack)) = graph_stack(2).await else {
        return;
    };
    let (group, target_name) = graph_group(&graph, &stack, None).await;
    // Graph expands the principal without userPrincipalName (a bare directoryObject), and the
    // first read of the user fails: the request waits for the next poll instead of being dropped.
    graph
        .control(Method::PUT, "/expand", Some(json!({"omit": ["userPrincipalName"]})))
        .await;
    graph
        .control(
            Method::POST,
            "/faults",
            Some(json!({"status": 500, "count": 1, "pathContains": "/users/"})),
        )
        .await;
    let principal = Principal::new();
    graph.add_user(&principal).await;
    let activation = pim_request("selfActivate", "Provisioned", &principal, &group, Utc::now());
    graph.put_request(&activation).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    let log = graph.log().await;
    let user_path = format!("/v1.0/users/{}?", principal.id);
    let reads: Vec<&(String, String, Option<u64>)> = log
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.starts_with(&user_path))
        .collect();
    assert!(
        reads.iter().any(|(_, _, s)| *s == Some(500)),
        "the failed read of the user is not in Graph's log: {log:?}"
    );
    assert!(
        reads
            .iter()
            .any(|(_, p, s)| *s == Some(200) && p.contains("$select=") && p.contains("userPrincipalName")),
        "the user was not read with $select of the mapped attributes: {log:?}"
    );
    assert_eq!(successful_adds(&stack, activation["id"].as_str().unwrap()).await, 1);
}

/// Runs a cycle of the app now and waits until it has ended.
async fn run_cycle(stack: &Stack) {
    let (status, body) = stack
        .bridge
        .admin(Method::POST, &format!("/v1/apps/{}/sync", stack.app_id), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    let cycle_id = body["cycleId"].as_str().unwrap_or_default().to_string();
    let ended = wait_until(PUSH_TIMEOUT, || async {
        let (_, cycles) = stack
            .bridge
            .admin(Method::GET, &format!("/v1/apps/{}/sync-cycles", stack.app_id), None)
            .await;
        cycles["items"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["id"] == cycle_id.as_str() && c["status"] != "running")
        })
    })
    .await;
    assert!(ended, "the cycle {cycle_id} did not end");
}

/// The principals the bridge removed from a target group, per its log.
async fn removed_principals(stack: &Stack) -> Vec<String> {
    let (_, entries) = stack
        .bridge
        .logs_as(&stack.bridge.admin_token, &[("action", "remove_member")])
        .await;
    entries
        .iter()
        .filter_map(|e| e["principalId"].as_str().map(String::from))
        .collect()
}

/// Where in Graph's log a delta read was answered 410.
fn expired_delta_read(log: &[(String, String, Option<u64>)]) -> Option<usize> {
    log.iter()
        .position(|(_, p, s)| p.contains("/groups/delta") && *s == Some(410))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_link_answering_410_restarts_the_delta_and_keeps_the_members_it_still_lists() {
    let Some((graph, stack)) = graph_stack(2).await else {
        return;
    };
    let (group, target_name) = graph_group(&graph, &stack, None).await;
    let (kept, left, joined) = (Principal::new(), Principal::new(), Principal::new());
    for p in [&kept, &left, &joined] {
        graph.add_user(p).await;
    }
    for p in [&kept, &left] {
        graph.add_member(&group, p).await;
    }
    // A poll that began before the members were added may end after; the one after it did not.
    let polled = wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(10)).await;
    let after = polled["lastSuccessAt"].as_str().unwrap_or_default().to_string();
    wait_for_poll(&stack, &group, &after, Duration::from_secs(10)).await;
    run_cycle(&stack).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[kept.upn(), left.upn()])
        .await;

    // The stored delta link expires; meanwhile one member leaves and another joins, changes
    // the bridge can only learn from a fresh delta.
    graph.control(Method::POST, "/expire-delta", None).await;
    graph
        .control(
            Method::DELETE,
            &format!("/groups/{}/members/{}", group.id, left.id),
            None,
        )
        .await;
    graph.add_member(&group, &joined).await;
    let answered_410 = wait_until(Duration::from_secs(10), || async {
        expired_delta_read(&graph.log().await).is_some()
    })
    .await;
    assert!(
        answered_410,
        "the delta link never answered 410: {:?}",
        graph.log().await
    );
    let state = wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(10)).await;
    let log = graph.log().await;
    let expired = expired_delta_read(&log);
    assert!(
        log[expired.unwrap()..]
            .iter()
            .any(|(_, p, s)| p.contains("/groups/delta") && !p.contains("$deltatoken") && *s == Some(200)),
        "no fresh delta after the 410: {log:?}"
    );
    assert!(state["lastError"].is_null(), "{state}");

    run_cycle(&stack).await;
    stack
        .target
        .assert_members_eventually(&target_name, &[kept.upn(), joined.upn()])
        .await;
    assert_eq!(
        removed_principals(&stack).await,
        vec![left.id.clone()],
        "only the member the fresh delta no longer lists is removed"
    );
    // The next polls read the fresh delta's link.
    let resumed = wait_until(Duration::from_secs(10), || async {
        let log = graph.log().await;
        let fresh = log
            .iter()
            .rposition(|(_, p, s)| p.contains("/groups/delta") && !p.contains("$deltatoken") && *s == Some(200));
        fresh.is_some_and(|fresh| {
            log[fresh..]
                .iter()
                .any(|(_, p, s)| p.contains("$deltatoken") && *s == Some(200))
        })
    })
    .await;
    let log = graph.log().await;
    assert!(resumed, "the fresh delta's link is not read after it: {log:?}");
    assert_eq!(
        log.iter()
            .filter(|(_, p, s)| p.contains("/groups/delta") && *s == Some(410))
            .count(),
        1,
        "the expired link was read again: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_activated_between_the_instance_read_and_the_delta_is_not_taken_for_standing() {
    let Some((graph, stack)) = graph_stack(2).await else {
        return;
    };
    let (group, target_name) = graph_group(&graph, &stack, None).await;
    let principal = Principal::new();
    graph.add_user(&principal).await;
    wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(10)).await;

    // The activation lands right after the bridge has read the PIM instances of a poll: its
    // request, its instance and the group membership Entra gives it.
    let activation = pim_request("selfActivate", "Provisioned", &principal, &group, Utc::now());
    let instance = activated_instance(&group, &principal);
    graph
        .after_read(
            "assignmentScheduleInstances",
            json!({"requests": [activation], "instances": [instance],
                   "members": [[group.id, principal.id]]}),
        )
        .await;
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(10)).await;

    // The activation ends (Entra still lists the member for a while): nothing else entitles the
    // member, so the removal goes out.
    graph
        .control(
            Method::DELETE,
            &format!("/instances/{}", instance["id"].as_str().unwrap()),
            None,
        )
        .await;
    let deactivation = pim_request("selfDeactivate", "Provisioned", &principal, &group, Utc::now());
    graph.put_request(&deactivation).await;
    let entry = stack
        .bridge
        .wait_for_log(
            &[("eventId", deactivation["id"].as_str().unwrap())],
            |e| e["action"] == "remove_member",
            PUSH_TIMEOUT,
        )
        .await;
    assert_eq!(entry["status"], "success", "the member was taken for standing: {entry}");
    stack.target.assert_members_eventually(&target_name, &[]).await;
    run_cycle(&stack).await;
    assert!(stack.target.group_member_user_names(&target_name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poll_under_way_when_the_graph_lease_is_lost_writes_nothing_of_it() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let Some(graph) = GraphServer::start(2).await else {
        return;
    };
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let database_url = database.url.clone();
    let env = graph.bridge_env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("SCIM_BRIDGE_LEASE_TTL", "3s"));
    let bridge = Bridge::start_replica_on(database, "r1", &env).await;
    let app_id = bridge.register_app(&target).await;
    let stack = Stack { bridge, target, app_id };
    let (group, target_name) = graph_group(&graph, &stack, None).await;
    wait_for_poll(&stack, &group, &now_text(), Duration::from_secs(15)).await;

    // The next read of the group's requests takes four seconds; meanwhile the graph lease goes
    // to another holder.
    graph
        .control(
            Method::POST,
            "/faults",
            Some(json!({"delayMs": 4000, "count": 1, "pathContains": "assignmentScheduleRequests"})),
        )
        .await;
    let principal = Principal::new();
    graph.add_user(&principal).await;
    let activation = pim_request("selfActivate", "Provisioned", &principal, &group, Utc::now());
    let request_id = activation["id"].as_str().unwrap().to_string();
    graph.put_request(&activation).await;
    let under_way = wait_until(Duration::from_secs(10), || async {
        graph
            .log()
            .await
            .iter()
            .any(|(_, p, s)| p.contains("assignmentScheduleRequests") && s.is_none())
    })
    .await;
    assert!(
        under_way,
        "no read of the requests was under way: {:?}",
        graph.log().await
    );
    psql_rows(
        &database_url,
        "UPDATE leases SET holder = 'elsewhere', token = nextval('lease_tokens'),
           expires_at = now() + interval '1 hour' WHERE name = 'graph'",
    );

    // The read answers with the request: the fence refuses what the poll would write.
    let refused = wait_until(Duration::from_secs(15), || async {
        stack.bridge.output().contains("no longer holds the lease `graph`")
    })
    .await;
    assert!(refused, "the poll's writes were not refused: {}", stack.bridge.output());
    let stored = psql_rows(
        &database_url,
        &format!("SELECT count(*) FROM events WHERE id = '{request_id}'"),
    );
    assert_eq!(
        stored,
        vec!["0".to_string()],
        "a replica without the graph lease took the request in"
    );
    assert!(stack.target.group_member_user_names(&target_name).await.is_empty());

    // The lease comes back: the request is taken in, and pushed once.
    psql_rows(&database_url, "DELETE FROM leases WHERE name = 'graph'");
    stack
        .target
        .assert_members_eventually(&target_name, &[principal.upn()])
        .await;
    stack
        .bridge
        .wait_for_log(
            &[("eventId", request_id.as_str())],
            |e| e["action"] == "add_member" && e["status"] == "success",
            PUSH_TIMEOUT,
        )
        .await;
    assert_eq!(successful_adds(&stack, &request_id).await, 1);
}
