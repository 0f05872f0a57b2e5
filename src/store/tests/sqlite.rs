//! The SQLite backend (`store::sqlite`): its group commit of concurrent webhooks.

use super::*;

fn event(id: &str, principal: &str, now: Millis) -> (Event, Effect) {
    let now = crate::clock::to_rfc3339(now);
    let raw = serde_json::json!({
        "id": id, "action": "selfActivate", "accessId": "member", "principalId": principal,
        "groupId": "g-1", "status": "Provisioned", "createdDateTime": now,
        "scheduleInfo": {"startDateTime": now, "expiration": {"type": "afterDuration", "duration": "PT2H"}},
        "principal": {"userPrincipalName": format!("{principal}@example.test")},
    });
    let event = crate::activation::parse(&raw).expect("a valid event");
    let effect = crate::activation::judge(&event, chrono::Utc::now().timestamp_millis()).expect("within the rules");
    (event, effect)
}

/// A migrated store in its file `t.db` of `dir`.
async fn migrated(dir: &tempfile::TempDir) -> SqliteDb {
    let store = SqliteDb::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// Concurrent webhooks are committed in groups, each answered as if alone: every event is
/// stored once, and of two copies of one event sent at once, one is accepted and one is a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_webhooks_committed_together_are_each_answered_as_if_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(migrated(&dir).await);
    let now = chrono::Utc::now().timestamp_millis();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        // Events 0..100 are sent twice, at once.
        let id = format!("event-{}", i % 100);
        let principal = format!("p-{}", i % 100);
        tasks.push(tokio::spawn(async move {
            store.accept_grouped(&[event(&id, &principal, now)], now).await
        }));
    }
    let mut accepted = 0;
    let mut duplicates = 0;
    for t in tasks {
        match t.await.unwrap().expect("committed").as_slice() {
            [Acceptance::Accepted { .. }] => accepted += 1,
            [Acceptance::Duplicate { .. }] => duplicates += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((accepted, duplicates), (100, 100));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(stored, 100);
}

/// The webhook whose turn commits a group can be dropped mid-commit (its client went away):
/// the others in the group are still committed and answered, and so is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_goes_on_when_the_webhook_that_leads_it_is_dropped() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(migrated(&dir).await);
    let now = chrono::Utc::now().timestamp_millis();

    // Both webhooks queue while the turn is taken, so that the first commits them together.
    let turn = store.write_turn.clone().lock_owned().await;
    let accept = |id: &'static str| {
        let store = store.clone();
        tokio::spawn(async move { store.accept_grouped(&[event(id, id, now)], now).await })
    };
    let leader = accept("leader");
    while store.intake.queued() == 0 {
        tokio::task::yield_now().await;
    }
    let follower = accept("follower");
    while store.intake.queued() < 2 {
        tokio::task::yield_now().await;
    }
    // Another writer holds the database, so the group's commit waits once it has begun.
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await.unwrap();
    drop(turn);
    while store.intake.queued() > 0 {
        tokio::task::yield_now().await;
    }
    // The leader took the group: its request goes away.
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    match follower.await.unwrap().expect("the follower is committed").as_slice() {
        [Acceptance::Accepted { .. }] => {}
        other => panic!("unexpected answer {other:?}"),
    }
    let mut stored: Vec<String> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    stored.sort();
    assert_eq!(stored, ["follower", "leader"]);
}

/// A dispatcher's pass reads its due jobs at every pass: SQLite must not prepare that statement
/// again each time. (A bare `LIMIT $N` made it: SQLite plans such a limit with the value bound,
/// so each new binding expired the statement; `{limit $N}` writes an expression it does not
/// read.)
#[tokio::test]
async fn the_due_jobs_read_is_prepared_once_however_its_bindings_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = migrated(&dir).await;
    let text: &'static str = Dialect::Sqlite
        .expand(concat!("SELECT j.seq ", crate::store::jobs::runnable!()))
        .leak();
    let mut conn = store.pool.acquire().await.unwrap();
    for (now, limit) in [(1_000_i64, 100_i64), (2_000, 50), (3_000, 100)] {
        let seqs: Vec<i64> = sqlx::query_scalar(text)
            .bind("app-1")
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        assert!(seqs.is_empty());
    }
    let mut handle = conn.lock_handle().await.unwrap();
    let db = handle.as_raw_handle().as_ptr();
    let mut reprepared = None;
    // SAFETY: the connection is locked for this thread; the statements walked are its own and
    // stay alive while the lock is held.
    unsafe {
        let mut stmt = libsqlite3_sys::sqlite3_next_stmt(db, std::ptr::null_mut());
        while !stmt.is_null() {
            let sql = std::ffi::CStr::from_ptr(libsqlite3_sys::sqlite3_sql(stmt)).to_string_lossy();
            if sql == text {
                reprepared = Some(libsqlite3_sys::sqlite3_stmt_status(
                    stmt,
                    libsqlite3_sys::SQLITE_STMTSTATUS_REPREPARE,
                    0,
                ));
            }
            stmt = libsqlite3_sys::sqlite3_next_stmt(db, stmt);
        }
    }
    assert_eq!(
        reprepared,
        Some(0),
        "the statement, kept by the connection, was prepared again"
    );
}
