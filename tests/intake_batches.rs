//! The intake in set-based statements: a batch of events is written with a few statements per
//! table whatever the number of its events, apps and jobs, and answered as if each event had
//! come alone; one event costs one commit and a fixed number of statements. On the store under
//! test (`SCIM_BRIDGE_TEST_STORE`), called as the webhook route calls it.

use crate::common;

use scim_bridge::activation::{Effect, Event};
use scim_bridge::store::{self, Acceptance, AppRecord, AppSettings, Assignment, SharedStore};

/// The store under test, fresh and migrated, with what keeps its database alive.
async fn fresh_store() -> (SharedStore, Option<common::TestDatabase>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let database = common::TestDatabase::create();
    let url = match &database {
        Some(database) => database.url.clone(),
        None => format!("sqlite://{}", dir.path().join("intake.db").display()),
    };
    let store = store::open(&url).await.expect("open the store");
    store.migrate().await.expect("migrate");
    (store, database, dir)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).expect("time").to_rfc3339()
}

/// An activation of `principal` in `group`, as the webhook route parses and judges it.
fn activation(id: &str, principal: &str, group: &str, now: i64) -> (Event, Effect) {
    let raw = serde_json::json!({
        "id": id, "action": "selfActivate", "accessId": "member", "principalId": principal,
        "groupId": group, "status": "Provisioned", "createdDateTime": rfc3339(now),
        "scheduleInfo": {"startDateTime": rfc3339(now), "expiration": {"type": "afterDuration", "duration": "PT2H"}},
        "principal": {"userPrincipalName": format!("{principal}@example.test"), "displayName": principal},
    });
    let event = scim_bridge::activation::parse(&raw).expect("a valid event");
    let effect = scim_bridge::activation::judge(&event, now).expect("within the rules");
    (event, effect)
}

/// `count` apps, each assigned `group`; answers their ids.
async fn apps_assigned(store: &SharedStore, group: &str, count: usize, now: i64) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let id = uuid::Uuid::now_v7().to_string();
        store
            .insert_app(&AppRecord::new(
                &id,
                &format!("app {i}"),
                "http://127.0.0.1:9/scim/v2",
                ("bearer".into(), vec![0]),
                AppSettings::default(),
                now,
                now + 3_600_000,
            ))
            .await
            .expect("insert an app");
        store
            .put_assignment(&Assignment {
                app_id: id.clone(),
                group_id: group.into(),
                target_display_name: format!("target {i}"),
                created_at: now,
            })
            .await
            .expect("assign the group");
        ids.push(id);
    }
    ids
}

fn jobs_of(answer: &Acceptance) -> &[(String, String)] {
    match answer {
        Acceptance::Accepted { jobs, .. } | Acceptance::Duplicate { jobs } => jobs,
        Acceptance::Conflict => panic!("a conflict where none was sent"),
    }
}

/// Whether the principal's membership of the group is active at `now`, as an add checks it.
async fn active(store: &scim_bridge::store::SharedStore, app_id: &str, principal: &str, group: &str, now: i64) -> bool {
    store
        .add_checks(app_id, principal, group, true, now)
        .await
        .expect("the checks")
        .expect("the group is assigned")
        .active
}

/// 100 events for a group assigned to 1,000 apps: 100,000 jobs, far more rows than SQLite binds
/// parameters in one statement (32,766), all queued in one commit; sent again, every event is
/// a duplicate that names the same jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_events_for_a_group_of_a_thousand_apps_queue_every_job_in_one_batch() {
    let (store, _database, _dir) = fresh_store().await;
    let now = now_ms();
    let apps = apps_assigned(&store, "g-big", 1_000, now).await;
    let batch: Vec<(Event, Effect)> = (0..100)
        .map(|i| activation(&format!("req-{i}"), &format!("p-{i}"), "g-big", now))
        .collect();

    let answers = store.accept_events(&batch, now).await.expect("the batch is accepted");
    assert_eq!(answers.len(), 100);
    let mut sorted_apps = apps.clone();
    sorted_apps.sort();
    for answer in &answers {
        assert!(matches!(answer, Acceptance::Accepted { .. }), "{answer:?}");
        let mut apps_of_event: Vec<String> = jobs_of(answer).iter().map(|(_, app)| app.clone()).collect();
        apps_of_event.sort();
        assert_eq!(apps_of_event, sorted_apps, "one job per assigned app");
    }
    // Every app has the 100 jobs waiting, in arrival order.
    for app in [&apps[0], &apps[499], &apps[999]] {
        let runnable = store.runnable_jobs(app, now, 1_000).await.expect("runnable jobs");
        let principals: Vec<&str> = runnable.iter().map(|j| j.principal_id.as_str()).collect();
        let expected: Vec<String> = (0..100).map(|i| format!("p-{i}")).collect();
        assert_eq!(principals, expected, "the app's jobs in the order of their events");
    }
    for i in [0, 57, 99] {
        let principal = store
            .principal(&format!("p-{i}"))
            .await
            .expect("principal")
            .expect("stored");
        assert_eq!(principal.user_principal_name, format!("p-{i}@example.test"));
        assert!(active(&store, &apps[0], &format!("p-{i}"), "g-big", now).await);
    }

    let again = store.accept_events(&batch, now + 1).await.expect("the batch again");
    for (first, second) in answers.iter().zip(&again) {
        assert!(matches!(second, Acceptance::Duplicate { .. }), "{second:?}");
        assert_eq!(
            jobs_of(first),
            jobs_of(second),
            "a duplicate names the jobs of the first copy"
        );
    }
}

/// Within one batch each event sees what the earlier ones did, as if they had come one by one:
/// a second copy is a duplicate naming the first one's jobs, a changed copy a conflict, and a
/// deactivation after an activation of the same membership ends it and queues its removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_batch_are_judged_in_order_against_what_the_earlier_ones_wrote() {
    let (store, _database, _dir) = fresh_store().await;
    let now = now_ms();
    let apps = apps_assigned(&store, "g-1", 2, now).await;
    let first = activation("req-1", "p-1", "g-1", now);
    let mut changed = first.clone();
    changed.0.raw["principal"]["displayName"] = "someone else".into();
    let deactivation = {
        let raw = serde_json::json!({
            "id": "req-2", "action": "selfDeactivate", "accessId": "member", "principalId": "p-1",
            "groupId": "g-1", "status": "Provisioned", "createdDateTime": rfc3339(now + 600_000),
        });
        let event = scim_bridge::activation::parse(&raw).expect("a valid event");
        let effect = scim_bridge::activation::judge(&event, now + 600_000).expect("within the rules");
        (event, effect)
    };
    let answers = store
        .accept_events(&[first.clone(), first, changed, deactivation], now + 600_000)
        .await
        .expect("accepted");
    let [activated, duplicate, conflict, removed] = answers.as_slice() else {
        panic!("four answers: {answers:?}")
    };
    assert!(
        matches!(activated, Acceptance::Accepted { jobs, .. } if jobs.len() == 2),
        "{activated:?}"
    );
    assert_eq!(
        duplicate,
        &Acceptance::Duplicate {
            jobs: jobs_of(activated).to_vec()
        }
    );
    assert_eq!(conflict, &Acceptance::Conflict);
    assert!(
        matches!(removed, Acceptance::Accepted { jobs, .. } if jobs.len() == 2),
        "{removed:?}"
    );
    assert!(!active(&store, &apps[0], "p-1", "g-1", now + 600_000).await);
    let stored = store.get_event("req-2").await.expect("event");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].outcome, "remove");
    for app in &apps {
        let kinds: Vec<String> = store
            .runnable_jobs(app, now + 600_000, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.kind)
            .collect();
        assert_eq!(kinds, ["add", "remove"], "the add, then its removal");
    }
}

/// The commits and statements one single-event webhook costs the store, each counted: a change
/// that adds a round trip to the intake fails here. Counted with `store_counts`, which counts
/// every store of the process: run under nextest (one process per test), as `scripts/test.sh`
/// does; under plain `cargo test` other tests' statements may add to it, so only the commits
/// are held there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_single_event_webhook_costs_one_commit_and_a_fixed_number_of_statements() {
    let (store, database, _dir) = fresh_store().await;
    let now = now_ms();
    apps_assigned(&store, "g-1", 3, now).await;
    let item = activation("req-1", "p-1", "g-1", now);

    let before = store::store_counts();
    let answers = store.accept_events(&[item], now).await.expect("accepted");
    let spent = store::store_counts() - before;
    assert!(matches!(answers.as_slice(), [Acceptance::Accepted { jobs, .. }] if jobs.len() == 3));

    // Both stores read what the batch needs in one statement (the stored events and their jobs,
    // the principals, the memberships, the assigned apps and the revoked request ids), then write
    // the principal, the event, the membership and the jobs of every app (4): five. PostgreSQL
    // first takes the batch's advisory locks in one statement and announces the work with
    // `pg_notify` before its commit: seven. (`BEGIN` and `COMMIT` are not counted. Before, each of
    // the five reads was a statement of its own: nine and eleven.)
    let statements = if database.is_some() { 7 } else { 5 };
    let alone = std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test");
    if alone {
        assert_eq!(spent.commits, 1, "{spent:?}");
        assert_eq!(spent.statements, statements, "{spent:?}");
    } else {
        eprintln!("not under nextest: the counts ({spent:?}) may include other tests'");
        assert!(spent.commits >= 1 && spent.statements >= statements, "{spent:?}");
    }
}
