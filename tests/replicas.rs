//! Several bridge processes on one PostgreSQL (SPEC §6 "Scale-out"): one window per app across
//! the cluster, takeover when a replica dies, fencing of a replica that was cut off, and work
//! that runs once in the cluster. Real processes, a real scim2-server behind the fault proxy.
//! These tests need PostgreSQL whichever store is under test; without it they skip (fail under
//! CI=true).

use crate::common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::clocked::FaultProxy;
use common::{Bridge, Event, Kind, Principal, SourceGroup, TestDatabase, psql_rows, short_id, target, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Short leases, so that a dead replica's apps move in seconds.
const LEASE_TTL: (&str, &str) = ("SCIM_BRIDGE_LEASE_TTL", "3s");

fn database_url(bridge: &Bridge) -> String {
    bridge
        .database_env()
        .into_iter()
        .find(|(k, _)| k == "SCIM_BRIDGE_DATABASE_URL")
        .map(|(_, v)| v)
        .expect("a PostgreSQL bridge")
}

/// The lease table: name → (holder, token, live).
fn leases(bridge: &Bridge) -> HashMap<String, (String, i64, bool)> {
    psql_rows(
        &database_url(bridge),
        "SELECT name, holder, token, NOT released AND expires_at > now() FROM leases ORDER BY name",
    )
    .into_iter()
    .map(|row| {
        let f: Vec<&str> = row.split('|').collect();
        (f[0].to_string(), (f[1].to_string(), f[2].parse().unwrap(), f[3] == "t"))
    })
    .collect()
}

fn show(leases: &HashMap<String, (String, i64, bool)>) -> String {
    let mut rows: Vec<String> = leases
        .iter()
        .map(|(name, (holder, token, live))| format!("{name:<45} {holder:<4} token {token:<4} live {live}"))
        .collect();
    rows.sort();
    rows.join("\n")
}

/// The live holder of the app's lease, once there is one.
async fn holder_of(bridge: &Bridge, app_id: &str) -> String {
    let name = format!("app:{app_id}");
    let mut found = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while found.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = leases(bridge)
            .get(&name)
            .filter(|(_, _, live)| *live)
            .map(|(h, _, _)| h.clone());
    }
    found.unwrap_or_else(|| panic!("no replica took {name}:\n{}", show(&leases(bridge))))
}

/// Waits until the lease table has not changed for two seconds: the replicas agree.
async fn settled(bridge: &Bridge) -> HashMap<String, (String, i64, bool)> {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = leases(bridge);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = leases(bridge);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_secs(2) && last.values().all(|(_, _, live)| *live) {
            return last;
        }
    }
    panic!("the leases did not settle:\n{}", show(&last));
}

/// The adds of group members the proxy saw, with when.
async fn adds_seen(proxy: &FaultProxy) -> Vec<(chrono::DateTime<chrono::FixedOffset>, String)> {
    proxy
        .seen()
        .await
        .iter()
        .filter(|r| r["method"] == "PATCH" && r["body"].as_str().unwrap_or("").contains("\"add\""))
        .map(|r| {
            let time = chrono::DateTime::parse_from_rfc3339(r["time"].as_str().expect("time")).unwrap();
            (time, r["body"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// The activation's push outcome once there is one: `success` or `deferred`.
async fn outcome(bridge: &Bridge, event: &Event) -> String {
    let entry = bridge
        .find_log(
            &[("eventId", event.id())],
            |e| e["action"] == "add_member" && (e["status"] == "success" || e["status"] == "deferred"),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|| panic!("no outcome for event {}", event.id()));
    entry["status"].as_str().unwrap_or("").to_string()
}

/// The target user ids a PATCH body adds or removes (`value` of the operations' members).
fn member_values(body: &str) -> Vec<String> {
    let Ok(patch) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let mut values = Vec::new();
    for op in patch["Operations"].as_array().into_iter().flatten() {
        for member in op["value"].as_array().into_iter().flatten() {
            if let Some(v) = member["value"].as_str() {
                values.push(v.to_string());
            }
        }
    }
    values
}

fn at_most_five_in_any_ten_seconds(times: &[chrono::DateTime<chrono::FixedOffset>]) {
    let mut times = times.to_vec();
    times.sort();
    for (i, t) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .filter(|u| **u - *t < chrono::Duration::seconds(10))
            .count();
        assert!(within <= 5, "{within} pushes within 10 s of {t}: {times:?}");
    }
}

struct Cluster {
    replicas: Vec<Bridge>,
    target: common::Target,
    proxy: FaultProxy,
    app_id: String,
    group: SourceGroup,
    target_name: String,
}

/// `n` replicas on a fresh database, and one app whose target is behind the fault proxy.
async fn cluster(n: usize) -> Option<Cluster> {
    let database = TestDatabase::postgres()?;
    let target = target(Kind::Scim2Server).await?;
    let proxy = FaultProxy::start(&target).await?;
    let first = Bridge::start_replica_on(database, "r1", &[LEASE_TTL]).await;
    let mut replicas = vec![first];
    for i in 2..=n {
        let next = replicas[0].replica(&format!("r{i}"), &[LEASE_TTL]).await;
        replicas.push(next);
    }
    let app_id = replicas[0]
        .register_app_with(&target, &proxy.base_url_for(&target), json!({}))
        .await;
    let group = SourceGroup::new();
    let target_name = format!("Replicated {}", short_id());
    replicas[0].assign_group(&app_id, &group.id, &target_name).await;
    Some(Cluster {
        replicas,
        target,
        proxy,
        app_id,
        group,
        target_name,
    })
}

/// Another app straight to the target, the group assigned to it.
async fn more_app(bridge: &Bridge, target: &common::Target, group: &SourceGroup) {
    let app = bridge.register_app(target).await;
    bridge
        .assign_group(&app, &group.id, &format!("More {}", short_id()))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_keep_one_window_per_app_and_spread_the_apps() {
    let Some(Cluster {
        replicas,
        target,
        proxy,
        group,
        target_name,
        ..
    }) = cluster(3).await
    else {
        return;
    };
    // More apps, straight to the target: they spread over the replicas.
    for _ in 0..8 {
        more_app(&replicas[0], &target, &SourceGroup::new()).await;
    }
    let table = settled(&replicas[0]).await;
    println!("the lease table:\n{}", show(&table));
    let apps: Vec<_> = table.iter().filter(|(name, _)| name.starts_with("app:")).collect();
    assert_eq!(apps.len(), 9, "{}", show(&table));
    let holders: HashSet<&String> = apps.iter().map(|(_, (holder, _, _))| holder).collect();
    assert!(holders.len() >= 2, "the apps did not spread:\n{}", show(&table));
    assert!(table.contains_key("timers"), "{}", show(&table));

    // Ten activations at once, round-robin to the three replicas. They take about a second on a
    // busy machine; what the test needs is that all ten fall inside one window (10 s) of the first
    // push, so that five are pushed and five deferred.
    let events: Vec<Event> = (0..10).map(|_| Event::activation(&Principal::new(), &group)).collect();
    let sent = Instant::now();
    for (i, event) in events.iter().enumerate() {
        let answer = replicas[i % 3].deliver(&[event]).await;
        assert!(answer.to_string().contains("accepted"), "{answer}");
    }
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "the ten took {:?}: too slow to fall inside one window",
        sent.elapsed()
    );
    let mut pushed = 0;
    let mut deferred = 0;
    for event in &events {
        match outcome(&replicas[0], event).await.as_str() {
            "success" => pushed += 1,
            _ => deferred += 1,
        }
    }
    assert_eq!((pushed, deferred), (5, 5), "five pushed at once, five deferred");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let adds = adds_seen(&proxy).await;
    assert_eq!(adds.len(), 5, "exactly five adds reached the target: {adds:?}");
    assert_eq!(target.group_member_ids(&target_name).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_burst_loses_its_apps_to_another_and_nothing_is_lost_or_doubled() {
    let Some(Cluster {
        mut replicas,
        target,
        proxy,
        app_id,
        group,
        target_name,
    }) = cluster(3).await
    else {
        return;
    };
    settled(&replicas[0]).await;
    let holder = holder_of(&replicas[0], &app_id).await;
    let dead: usize = holder[1..].parse::<usize>().expect("replica ids are r1, r2, r3") - 1;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != dead).collect();

    let events: Vec<Event> = (0..10).map(|_| Event::activation(&Principal::new(), &group)).collect();
    for event in &events[..3] {
        replicas[dead].deliver(&[event]).await;
    }
    replicas[dead].crash().await;
    let killed_at = chrono::Utc::now();
    let killed = Instant::now();
    for (i, event) in events[3..].iter().enumerate() {
        replicas[survivors[i % 2]].deliver(&[event]).await;
    }
    let observer = &replicas[survivors[0]];
    let name = format!("app:{app_id}");
    let taken = wait_until(Duration::from_secs(30), || async {
        leases(observer)
            .get(&name)
            .is_some_and(|(h, _, live)| *live && *h != holder)
    })
    .await;
    let took = killed.elapsed();
    let taken_at = chrono::Utc::now();
    assert!(
        taken,
        "nobody took the app over within 30 s:\n{}",
        show(&leases(observer))
    );
    println!("taken over {took:?} after the kill:\n{}", show(&leases(observer)));

    // Every accepted event is provisioned: at once through the window, the rest by a cycle.
    let mut statuses = Vec::new();
    for event in &events {
        statuses.push(outcome(observer, event).await);
    }
    let before_cycle = adds_seen(&proxy).await;
    let (status, cycle) = observer
        .admin(Method::POST, &format!("/v1/apps/{app_id}/sync"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cycle}");
    let upns: Vec<&str> = events.iter().map(|e| e.upn()).collect();
    target.assert_members_eventually(&target_name, &upns).await;
    let ids = target.group_member_ids(&target_name).await;
    assert_eq!(ids.len(), 10, "each member once: {ids:?}");

    // The window held across the handover, and an add went twice only if the crash fell
    // between its sending and its record.
    let times: Vec<_> = before_cycle.iter().map(|(t, _)| *t).collect();
    at_most_five_in_any_ten_seconds(&times);
    // The new holder waited one full window (10 s) from the takeover before its first push
    // (the takeover is seen here up to one poll after it happened).
    let first_after_kill = times
        .iter()
        .filter(|t| **t > killed_at)
        .min()
        .expect("adds after the kill");
    let waited = *first_after_kill - taken_at.fixed_offset();
    assert!(
        waited >= chrono::Duration::milliseconds(9_500),
        "the first push came {waited:?} after the takeover was seen"
    );
    let mut per_member: HashMap<String, Vec<chrono::DateTime<chrono::FixedOffset>>> = HashMap::new();
    for (time, body) in &adds_seen(&proxy).await {
        for member in member_values(body) {
            per_member.entry(member).or_default().push(*time);
        }
    }
    for (member, times) in &per_member {
        if times.len() > 1 {
            assert_eq!(times.len(), 2, "{member} added {} times", times.len());
            assert!(
                times[0] < killed_at,
                "{member} was sent twice, the first after the crash: {times:?}"
            );
        }
    }
    println!("statuses: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_stopped_past_its_lease_writes_and_sends_nothing_when_it_continues() {
    let Some(Cluster {
        replicas,
        target,
        proxy,
        app_id,
        group,
        target_name,
    }) = cluster(2).await
    else {
        return;
    };
    settled(&replicas[0]).await;
    let holder = holder_of(&replicas[0], &app_id).await;
    let (paused, other) = if holder == "r1" { (0, 1) } else { (1, 0) };
    let pid = replicas[paused].pid().to_string();
    signal("-STOP", &pid);
    let name = format!("app:{app_id}");
    let taken = wait_until(Duration::from_secs(30), || async {
        leases(&replicas[other])
            .get(&name)
            .is_some_and(|(h, _, live)| *live && *h != holder)
    })
    .await;
    assert!(
        taken,
        "the app was not taken over:\n{}",
        show(&leases(&replicas[other]))
    );
    // Work arrives while the new holder waits out its first window; the paused replica, which
    // still has the app's dispatcher, is woken by it when it continues.
    let p = Principal::new();
    let activation = Event::activation(&p, &group);
    replicas[other].deliver(&[&activation]).await;
    signal("-CONT", &pid);
    let noticed = wait_until(Duration::from_secs(10), || async {
        let said = replicas[paused].output();
        said.contains("lease lost") || said.contains("lost the app's lease")
    })
    .await;
    assert!(
        noticed,
        "the continued replica did not notice: {}",
        replicas[paused].output()
    );
    let entry = replicas[other]
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    target.assert_members_eventually(&target_name, &[p.upn()]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let adds = adds_seen(&proxy).await;
    assert_eq!(adds.len(), 1, "one add, from the new holder: {adds:?}");
    let (_, entries) = replicas[other]
        .logs_as(&replicas[other].admin_token, &[("eventId", activation.id())])
        .await;
    assert_eq!(
        entries.len(),
        1,
        "one log entry for the activation: {entries:?} ({entry})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_started_together_run_each_cycle_once_and_push_an_expiry_once() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let Some(target) = target(Kind::Scim2Server).await else {
        return;
    };
    let Some(proxy) = FaultProxy::start(&target).await else {
        return;
    };
    let mut first = Bridge::start_replica_on(database, "r1", &[LEASE_TTL]).await;
    let app_id = first
        .register_app_with(&target, &proxy.base_url_for(&target), json!({}))
        .await;
    let group = SourceGroup::new();
    let target_name = format!("Together {}", short_id());
    first.assign_group(&app_id, &group.id, &target_name).await;
    let standing: Vec<Principal> = (0..4).map(|_| Principal::new()).collect();
    for p in &standing {
        let (status, body) = first
            .admin(
                Method::PUT,
                &format!("/v1/groups/{}/members/{}", group.id, p.id),
                Some(json!({"principal": {"userPrincipalName": p.user_principal_name, "displayName": p.display_name}})),
            )
            .await;
        assert!(status.is_success(), "{status} {body}");
    }
    // Two replicas start at the same moment on a database whose leases nobody holds (the first,
    // which registered the app, has stopped and released them).
    first.terminate(Duration::from_secs(30)).await;
    let (second, third) = tokio::join!(first.replica("r2", &[LEASE_TTL]), first.replica("r3", &[LEASE_TTL]));
    let replicas = [second, third];

    let leaving = Principal::new();
    // Five minutes (R5) that started 4 min 54 s ago: it ends six seconds from now.
    let activation = Event::activation(&leaving, &group)
        .starting(chrono::Utc::now() - chrono::Duration::seconds(4 * 60 + 54))
        .duration("PT5M");
    replicas[1].deliver(&[&activation]).await;
    let sync = format!("/v1/apps/{app_id}/sync");
    let (a, b) = tokio::join!(
        replicas[0].admin(Method::POST, &sync, None),
        replicas[1].admin(Method::POST, &sync, None),
    );
    assert_eq!(a.0, StatusCode::ACCEPTED, "{}", a.1);
    assert_eq!(b.0, StatusCode::ACCEPTED, "{}", b.1);
    replicas[0]
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    // The expiry removes the activated member, once; the cycle added the standing ones.
    replicas[1]
        .wait_for_log(
            &[("eventId", activation.id())],
            |e| e["action"] == "remove_member" && e["status"] == "success",
            Duration::from_secs(30),
        )
        .await;
    let upns: Vec<&str> = standing.iter().map(Principal::upn).collect();
    target.assert_members_eventually(&target_name, &upns).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Only the expiry removes anything here.
    let removes = proxy
        .seen()
        .await
        .iter()
        .filter(|r| r["method"] == "PATCH" && r["body"].as_str().unwrap_or("").contains("\"remove\""))
        .count();
    assert_eq!(removes, 1, "the expiry was pushed once");
    // No two cycles of the app overlapped.
    let (status, cycles) = replicas[0]
        .admin(Method::GET, &format!("/v1/apps/{app_id}/sync-cycles"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{cycles}");
    let items: Vec<Value> = cycles["items"].as_array().cloned().unwrap_or_default();
    let mut spans: Vec<(String, String)> = items
        .iter()
        .map(|c| {
            (
                c["startedAt"].as_str().unwrap_or("").to_string(),
                c["endedAt"].as_str().unwrap_or("9999").to_string(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two cycles overlapped: {spans:?}");
    }
    let mut added: Vec<String> = adds_seen(&proxy)
        .await
        .iter()
        .flat_map(|(_, body)| member_values(body))
        .collect();
    let total = added.len();
    added.sort();
    added.dedup();
    assert_eq!(total, added.len(), "a member was added twice");
    assert_eq!(
        total,
        standing.len() + 1,
        "each standing member and the activation, once"
    );
}

fn signal(which: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([which, pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// Paging the log through one replica while three replicas write entries at once: every entry
/// that was there when paging began is seen once, none twice.
#[tokio::test(flavor = "multi_thread")]
async fn paging_the_log_while_three_replicas_write_skips_and_repeats_nothing() {
    let Some(Cluster {
        replicas,
        target,
        group,
        ..
    }) = cluster(3).await
    else {
        return;
    };
    // Two more apps on the same group: three dispatchers, spread over the replicas, write.
    for _ in 0..2 {
        more_app(&replicas[0], &target, &group).await;
    }
    settled(&replicas[0]).await;
    let deliver = |range: std::ops::Range<usize>| {
        let replicas = &replicas;
        let group = &group;
        async move {
            for i in range {
                let event = Event::activation(&Principal::new(), group);
                replicas[i % 3].deliver(&[&event]).await;
            }
        }
    };
    deliver(0..30).await;
    let before = wait_until(Duration::from_secs(30), || async {
        replicas[0]
            .logs_as(&replicas[0].admin_token, &[("limit", "500")])
            .await
            .1
            .len()
            >= 90
    })
    .await;
    assert!(
        before,
        "the first 30 activations were not all logged for the three apps"
    );
    let (_, existing) = replicas[0].logs_as(&replicas[0].admin_token, &[("limit", "500")]).await;
    let existing: HashSet<String> = existing.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();

    // More activations while paging, seven entries a page.
    let paging = async {
        let mut seen: HashSet<String> = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/provisioning-logs?limit=7&cursor={c}"),
                None => "/v1/provisioning-logs?limit=7".to_string(),
            };
            let (status, page) = replicas[0].admin(Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            for entry in page["items"].as_array().expect("items") {
                let id = entry["id"].as_str().unwrap().to_string();
                assert!(seen.insert(id.clone()), "{id} on two pages");
            }
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return seen,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (seen, ()) = tokio::join!(paging, deliver(30..60));
    let missed: Vec<&String> = existing.difference(&seen).collect();
    assert!(missed.is_empty(), "entries skipped by paging: {missed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_lease_lost_and_taken_back_in_one_look_keeps_its_dispatcher_running() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let Some(target) = target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start_replica_on(database, "r1", &[LEASE_TTL]).await;
    let app_id = bridge.register_app(&target).await;
    let group = SourceGroup::new();
    let target_name = format!("Retaken {}", short_id());
    bridge.assign_group(&app_id, &group.id, &target_name).await;
    let name = format!("app:{app_id}");
    holder_of(&bridge, &app_id).await;
    let first = Event::activation(&Principal::new(), &group);
    bridge.deliver(&[&first]).await;
    bridge.wait_for_event_log(&first, "success", Some("add_member")).await;

    // The lease row gets another token behind the replica's back: its next look finds the lease
    // lost (the renewal answers another token) and, being its turn, takes it back at once (with a
    // new token from the sequence).
    let granted = leases(&bridge)
        .get(&name)
        .map(|(_, token, _)| *token)
        .expect("the lease");
    let bumped: i64 = psql_rows(
        &database_url(&bridge),
        &format!("UPDATE leases SET token = token + 1000 WHERE name = '{name}' RETURNING token"),
    )[0]
    .parse()
    .expect("token");
    let retaken = wait_until(Duration::from_secs(10), || async {
        leases(&bridge)
            .get(&name)
            .is_some_and(|(holder, token, live)| holder == "r1" && ![granted, bumped].contains(token) && *live)
    })
    .await;
    assert!(retaken, "the lease was not taken back:\n{}", show(&leases(&bridge)));

    // The app has a dispatcher under the new token: a push goes, and a removal too.
    let second = Event::activation(&Principal::new(), &group);
    bridge.deliver(&[&second]).await;
    bridge.wait_for_event_log(&second, "success", Some("add_member")).await;
    let removal = first.deactivation();
    bridge.deliver(&[&removal]).await;
    bridge
        .wait_for_event_log(&removal, "success", Some("remove_member"))
        .await;
    target.assert_members_eventually(&target_name, &[second.upn()]).await;
    assert!(bridge.output().contains("lease lost"), "{}", bridge.output());
}
