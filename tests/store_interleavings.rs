//! PostgreSQL store transactions that race (SPEC §6: several replicas share one database), forced
//! into one order with a second connection and explicit waits on the lock the store must take:
//! no sleeps. These tests need PostgreSQL whichever store is under test; without it they skip
//! (fail under CI=true).

mod common;

use std::time::{Duration, Instant};

use scim_bridge::store::{PostgresStore, Store};
use sqlx::{Connection, PgConnection};

use common::TestDatabase;

async fn store_on(database: &TestDatabase) -> PostgresStore {
    let store = PostgresStore::open(&database.url).await.expect("open the store");
    store.migrate().await.expect("migrate");
    store
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until another backend waits for a lock (of `locktype`); answers whether one did.
async fn someone_waits_for(conn: &mut PgConnection, locktype: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let waiting = count(
            conn,
            &format!("SELECT count(*) FROM pg_locks WHERE locktype = '{locktype}' AND NOT granted"),
        )
        .await;
        if waiting > 0 {
            return true;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_judged_while_the_expiry_runs_is_not_left_on_an_expired_membership() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let store = store_on(&database).await;
    let mut webhook = PgConnection::connect(&database.url).await.expect("connect");
    exec(
        &mut webhook,
        "INSERT INTO memberships (principal_id, group_id, access_id, active, source, start_at, end_at, event_seq,
           event_created)
         VALUES ('p1', 'g1', 'member', true, 'activation', now() - interval '1 hour', now() - interval '1 second',
           1, now())",
    )
    .await;

    // A webhook extending the membership holds the lock `accept_events` takes for it, from its
    // read of the membership to its commit.
    exec(&mut webhook, "BEGIN").await;
    exec(
        &mut webhook,
        "SELECT pg_advisory_xact_lock(hashtextextended('membership' || chr(10) || 'p1' || chr(10) || 'g1'
           || chr(10) || 'member', 0))",
    )
    .await;
    let expiring = tokio::spawn(async move { store.expire_due(now_ms()).await });
    let mut observer = PgConnection::connect(&database.url).await.expect("connect");
    let waited = someone_waits_for(&mut observer, "advisory").await;
    exec(
        &mut webhook,
        "UPDATE memberships SET end_at = now() + interval '1 hour' WHERE principal_id = 'p1'",
    )
    .await;
    exec(&mut webhook, "COMMIT").await;
    let woken = expiring.await.expect("expiry task").expect("expire_due");
    assert!(waited, "the expiry did not wait for the webhook judging the membership");

    assert!(woken.is_empty(), "nothing expired: {woken:?}");
    let left = count(
        &mut observer,
        "SELECT count(*) FROM memberships WHERE principal_id = 'p1' AND active AND expired_at IS NULL
           AND end_at > now()",
    )
    .await;
    assert_eq!(left, 1, "the extended membership is still active with its future end");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_app_while_its_dispatcher_records_an_outcome_does_not_deadlock() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let store = store_on(&database).await;
    let app_id = uuid::Uuid::now_v7().to_string();
    let mut dispatcher = PgConnection::connect(&database.url).await.expect("connect");
    for insert in [
        format!(
            "INSERT INTO apps (id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status, next_sync_at,
               created_at)
             VALUES ('{app_id}', 'a', 'http://127.0.0.1:1/scim', 'bearer', '\\x00', '{{}}', '[]', 'active', now(), now())"
        ),
        format!(
            "INSERT INTO jobs (id, app_id, principal_id, group_id, kind, trigger, state, not_before, received_at,
               updated_at)
             VALUES ('job-1', '{app_id}', 'p1', 'g1', 'add', 'activation', 'in_flight', now(), now(), now())"
        ),
        format!(
            "INSERT INTO leases (name, holder, token, acquired_at, expires_at)
             VALUES ('app:{app_id}', 'r1', 1, now(), now() + interval '1 minute')"
        ),
    ] {
        exec(&mut dispatcher, &insert).await;
    }

    // The dispatcher's record: the lease row (the fence) first, then its job rows.
    exec(&mut dispatcher, "BEGIN").await;
    exec(
        &mut dispatcher,
        &format!("SELECT 1 FROM leases WHERE name = 'app:{app_id}' AND token = 1 FOR SHARE"),
    )
    .await;
    let deleted_id = app_id.clone();
    let deleting = tokio::spawn(async move { store.delete_app(&deleted_id, now_ms()).await });
    let mut observer = PgConnection::connect(&database.url).await.expect("connect");
    assert!(
        someone_waits_for(&mut observer, "transactionid").await || someone_waits_for(&mut observer, "tuple").await,
        "the deletion waits for the dispatcher's transaction"
    );
    let recorded = sqlx::query("UPDATE jobs SET state = 'done', updated_at = now() WHERE id = 'job-1'")
        .execute(&mut dispatcher)
        .await;
    let committed = sqlx::query("COMMIT").execute(&mut dispatcher).await;
    let deleted = deleting.await.expect("deletion task");
    assert!(recorded.is_ok(), "the dispatcher's record: {recorded:?}");
    assert!(committed.is_ok(), "{committed:?}");
    assert!(deleted.is_ok(), "the deletion: {deleted:?}");
    let apps = count(
        &mut observer,
        &format!("SELECT count(*) FROM apps WHERE id = '{app_id}' AND deleted_at IS NOT NULL"),
    )
    .await;
    assert_eq!(apps, 1, "the app is deleted");
}
