//! The PostgreSQL backend (`store::postgres`): its locks and notifications, against a real server.

use super::*;
use crate::store::dialect::Backend;
use sqlx::Connection;

fn pg(store: &Store) -> &PostgresDb {
    match &store.backend {
        Backend::Postgres(db) => db,
        Backend::Sqlite(_) => unreachable!("a PostgreSQL store"),
    }
}

/// A fresh, migrated database on the test PostgreSQL server (`SCIM_BRIDGE_TEST_POSTGRES_URL`,
/// default the local cluster), dropped by `drop_database`. `None` (the test skips, saying
/// why) when there is no server, except under `CI=true`.
async fn fresh_store() -> Option<(Store, String, String)> {
    let server = std::env::var("SCIM_BRIDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://scim_bridge_test:scim_bridge_test@127.0.0.1/scim_bridge_test".into());
    let mut admin = match sqlx::PgConnection::connect(&server).await {
        Ok(admin) => admin,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true needs PostgreSQL at {server}: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no PostgreSQL at {server} ({e}); scripts/test-deps.sh starts one");
            return None;
        }
    };
    let name = format!("scim_bridge_unit_{}", crate::crypto::random_hex(6));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let mut url = url::Url::parse(&server).expect("URL");
    url.set_path(&format!("/{name}"));
    let store = Store::open(url.as_str()).await.expect("open");
    store.migrate().await.expect("migrate");
    Some((store, server, name))
}

async fn drop_database(store: Store, server: &str, name: &str) {
    pg(&store).pool.close().await;
    if let Ok(mut admin) = sqlx::PgConnection::connect(server).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

/// Waits (without sleeping on a guess) until some backend of the database waits for a lock.
async fn until_someone_waits_for_a_lock(store: &PostgresDb) {
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Two writers of a principal that has no row yet (a webhook and the directory feed, on two
/// replicas): the second waits for the first and merges into what it wrote, so no attribute
/// is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_of_a_new_principal_take_turns_and_keep_every_attribute() {
    let Some((store, server, name)) = fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    let now = 1_000_000;
    // The first writer is a webhook: `accept_events` holds the principal's key.
    let mut first = pg(&store).begin().await.unwrap();
    pg(&store).lock_principal(&mut first, "p-1").await.unwrap();
    crate::store::principals::merge_principal(
        &mut *first,
        "p-1",
        &serde_json::json!({"userPrincipalName": "ada@example.test", "mail": "ada@example.test"}),
        now,
        now,
    )
    .await
    .unwrap();
    let second = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_principal_attributes(
                    "p-1",
                    &serde_json::json!({"userPrincipalName": "ada@example.test", "department": "Research"}),
                    now + 1,
                )
                .await
        })
    };
    until_someone_waits_for_a_lock(pg(&store)).await;
    first.commit().await.unwrap();
    second.await.unwrap().unwrap();

    let attributes = store.principal_attributes("p-1").await.unwrap().expect("stored");
    assert_eq!(attributes["mail"], "ada@example.test", "{attributes:?}");
    assert_eq!(attributes["department"], "Research", "{attributes:?}");
    let store = Arc::into_inner(store).expect("the only reference");
    drop_database(store, &server, &name).await;
}

fn event(raw: serde_json::Value, now: Millis) -> (Event, Effect) {
    let event = crate::activation::parse(&raw).expect("a valid event");
    let effect = crate::activation::judge(&event, now).expect("within the rules");
    (event, effect)
}

/// A shortened end queues no job, but the replica that runs the expiry timer must hear of it
/// at once, not at its next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_extension_that_queues_no_job_still_wakes_the_expiry_timer() {
    let Some((store, server, name)) = fresh_store().await else {
        return;
    };
    let now = chrono::Utc::now().timestamp_millis();
    let at = crate::clock::to_rfc3339(now);
    let grant = serde_json::json!({
        "id": "req-1", "action": "selfActivate", "accessId": "member", "principalId": "p-1",
        "groupId": "g-1", "status": "Provisioned", "createdDateTime": at,
        "scheduleInfo": {"startDateTime": at, "expiration": {"type": "afterDuration", "duration": "PT8H"}},
        "principal": {"userPrincipalName": "ada@example.test"},
    });
    store.accept_events(&[event(grant, now)], now).await.unwrap();

    let mut listener = store.listen_work().await.unwrap().expect("a listener");
    let later = crate::clock::to_rfc3339(now + 1_000);
    let shorten = serde_json::json!({
        "id": "req-2", "action": "adminUpdate", "accessId": "member", "principalId": "p-1",
        "groupId": "g-1", "status": "Provisioned", "createdDateTime": later,
        "scheduleInfo": {"startDateTime": at, "expiration": {"type": "afterDuration", "duration": "PT10M"}},
    });
    let answers = store
        .accept_events(&[event(shorten, now + 1_000)], now + 1_000)
        .await
        .unwrap();
    // The end as written: the accepting replica's own timer learns it from the answer.
    let ends_at = Some(now + 10 * 60_000);
    assert_eq!(
        answers,
        [Acceptance::Accepted {
            jobs: Vec::new(),
            ends_at
        }]
    );
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("a notification within 10 s");
    assert_eq!(heard.as_deref(), Some("expiry"));
    drop(listener);
    drop_database(store, &server, &name).await;
}

/// The store's connections send each statement at once (`TCP_NODELAY`, see `no_delay`): without
/// it a message that does not end on a full segment waits 40 ms for the server's delayed ACK.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_stores_connections_have_nagles_algorithm_off() {
    let Some((store, server, name)) = fresh_store().await else {
        return;
    };
    let db = pg(&store);
    let held = futures::future::join_all((0..3).map(|_| db.pool.acquire())).await;
    assert!(held.iter().all(Result::is_ok));
    let port = url::Url::parse(&server).unwrap().port().unwrap_or(5432);
    let mut no_delay = 0;
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: as in `no_delay`: only socket options are read.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        if socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == port)
            && socket.tcp_nodelay().unwrap_or(false)
        {
            no_delay += 1;
        }
    }
    let connections = db.pool.size() as usize;
    assert!(connections >= 3, "{connections}");
    assert!(
        no_delay >= connections,
        "{no_delay} of the pool's {connections} connections have TCP_NODELAY"
    );
    drop(held);
    drop_database(store, &server, &name).await;
}

/// An app named by its id, on a target nothing listens on.
async fn insert_app(store: &Store, app_id: &str, now: Millis) {
    let app = AppRecord::new(
        app_id,
        app_id,
        "http://127.0.0.1:9/scim/v2",
        ("bearer".into(), vec![0]),
        AppSettings::default(),
        now,
        now,
    );
    store.insert_app(&app).await.unwrap();
}

/// The claim takes its lease fence in its own statement (`PostgresDb::fenced`, one round trip):
/// under the lease it holds, a replica claims the job, once; with a token another grant replaced,
/// it claims nothing and is told `Fenced`; outside a lease the claim goes as on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_under_a_lease_no_longer_held_is_refused_and_claims_nothing() {
    use std::time::{Duration, Instant};
    let Some((store, server, name)) = fresh_store().await else {
        return;
    };
    let now = chrono::Utc::now().timestamp_millis();
    let app_id = uuid::Uuid::now_v7().to_string();
    insert_app(&store, &app_id, now).await;
    let job = || Job::pending(&app_id, "p-1", "g-1", "add", "on_demand", now, now);
    let (first, second) = (job(), job());
    store.insert_job(&first, now).await.unwrap();
    store.insert_job(&second, now).await.unwrap();
    let lease = format!("app:{app_id}");
    let grant = store
        .acquire_lease(&lease, "r-1", 30_000)
        .await
        .unwrap()
        .expect("granted");
    let fence = |token| crate::lease::Fence::new(&lease, "r-1", token, Instant::now(), Duration::from_secs(30));

    let stale = crate::lease::scope(fence(grant.token + 1), store.claim_job(&first.id, now, true, "T")).await;
    assert!(matches!(&stale, Err(StoreError::Fenced(n)) if *n == lease), "{stale:?}");
    let waiting = store.runnable_jobs(&app_id, now, 10).await.unwrap();
    assert_eq!(waiting.len(), 2, "the refused claim claimed nothing");

    let held = crate::lease::scope(fence(grant.token), store.claim_job(&first.id, now, true, "T")).await;
    assert!(matches!(held, Ok(Some(_))), "{held:?}");
    let again = crate::lease::scope(fence(grant.token), store.claim_job(&first.id, now, true, "T")).await;
    assert!(matches!(again, Ok(None)), "claimed once: {again:?}");
    let outside = store.claim_job(&second.id, now, false, "T").await;
    assert!(matches!(outside, Ok(Some(_))), "{outside:?}");
    let waiting = store.runnable_jobs(&app_id, now, 10).await.unwrap();
    assert!(waiting.is_empty(), "both in flight: {waiting:?}");

    drop_database(store, &server, &name).await;
}

/// The intake does not announce work whose lease this replica holds (`Store::act_as`): it wakes
/// that itself. What another replica holds is announced, and everything once this process no
/// longer acts under its leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_announces_only_the_work_another_replica_holds() {
    let Some((store, server, name)) = fresh_store().await else {
        return;
    };
    let now = chrono::Utc::now().timestamp_millis();
    let (mine, theirs) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());
    for (app_id, holder) in [(&mine, "r-1"), (&theirs, "r-2")] {
        insert_app(&store, app_id, now).await;
        let assignment = Assignment {
            app_id: app_id.clone(),
            group_id: "g-1".into(),
            target_display_name: "T".into(),
            created_at: now,
        };
        store.put_assignment(&assignment).await.unwrap();
        let lease = format!("app:{app_id}");
        store
            .acquire_lease(&lease, holder, 30_000)
            .await
            .unwrap()
            .expect("granted");
    }
    let at = crate::clock::to_rfc3339(now);
    let activation = |id: &str, principal: &str| {
        event(
            serde_json::json!({
                "id": id, "action": "selfActivate", "accessId": "member", "principalId": principal,
                "groupId": "g-1", "status": "Provisioned", "createdDateTime": at,
                "scheduleInfo": {"startDateTime": at, "expiration": {"type": "afterDuration", "duration": "PT8H"}},
                "principal": {"userPrincipalName": format!("{principal}@example.test")},
            }),
            now,
        )
    };
    let mut listener = store.listen_work().await.unwrap().expect("a listener");
    // Everything one commit announced: the apps' notifications come before the expiry's.
    let mut heard_until_expiry = async || {
        let mut heard = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), listener.next())
                .await
                .expect("a notification within 10 s")
                .expect("the connection held");
            if next == "expiry" {
                return heard;
            }
            heard.push(next);
        }
    };

    store.act_as(Some("r-1"));
    store.accept_events(&[activation("req-1", "p-1")], now).await.unwrap();
    assert_eq!(heard_until_expiry().await, [format!("app:{theirs}")]);

    store.act_as(None);
    store.accept_events(&[activation("req-2", "p-2")], now).await.unwrap();
    let mut both = vec![format!("app:{mine}"), format!("app:{theirs}")];
    both.sort();
    assert_eq!(heard_until_expiry().await, both);
    drop(listener);
    drop_database(store, &server, &name).await;
}

/// Lease rows are locked in name order wherever several are. A renewal of a replica's leases,
/// while a transaction holds one of them and then takes another in name order (as the intake's
/// announcement does), waits for that transaction and renews both; taken in the table's order
/// (`timers` is written first here), the two deadlocked and PostgreSQL aborted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_beside_an_announcement_holding_two_leases_waits_and_does_not_deadlock() {
    let Some((store, server, name)) = fresh_store().await else {
        return;
    };
    for lease in ["timers", "app:a"] {
        store
            .acquire_lease(lease, "r-1", 30_000)
            .await
            .unwrap()
            .expect("granted");
    }
    let store = Arc::new(store);
    let share = "SELECT 1 FROM leases WHERE name = $1 FOR SHARE";
    let mut tx = pg(&store).pool.begin().await.unwrap();
    sqlx::query(share).bind("app:a").execute(&mut *tx).await.unwrap();
    let renewal = tokio::spawn({
        let store = store.clone();
        async move { store.renew_leases("r-1", 30_000).await }
    });
    until_someone_waits_for_a_lock(pg(&store)).await;
    let second = sqlx::query(share).bind("timers").execute(&mut *tx).await;
    assert!(second.is_ok(), "the announcement's second lease: {second:?}");
    tx.commit().await.unwrap();
    let mut renewed: Vec<String> = renewal
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    renewed.sort();
    assert_eq!(renewed, ["app:a", "timers"]);

    let store = Arc::into_inner(store).expect("the renewal is done");
    drop_database(store, &server, &name).await;
}
