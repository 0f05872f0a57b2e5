//! PostgreSQL store transactions that race (SPEC §6: several replicas share one database), forced
//! into one order with a second connection and explicit waits on the lock the store must take:
//! no sleeps. These tests need PostgreSQL whichever store is under test; without it they skip
//! (fail under CI=true).

use crate::common;

use std::time::{Duration, Instant};

use scim_bridge::store::PostgresStore;
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

fn event(raw: serde_json::Value, now: i64) -> (scim_bridge::activation::Event, scim_bridge::activation::Effect) {
    let event = scim_bridge::activation::parse(&raw).expect("a valid event");
    let effect = scim_bridge::activation::judge(&event, now).expect("within the rules");
    (event, effect)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).expect("time").to_rfc3339()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_judged_while_the_expiry_runs_is_not_left_on_an_expired_membership() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let store = std::sync::Arc::new(store_on(&database).await);
    let mut webhook = PgConnection::connect(&database.url).await.expect("connect");
    exec(
        &mut webhook,
        "INSERT INTO memberships (principal_id, group_id, access_id, active, source, start_at, end_at, event_seq,
           event_created)
         VALUES ('p1', 'g1', 'member', true, 'activation', now() - interval '1 hour', now() - interval '1 second',
           1, now() - interval '1 hour')",
    )
    .await;

    // A webhook extending the membership holds the row `accept_events` reads for it, from its read
    // to its commit: the expiry skips it.
    exec(&mut webhook, "BEGIN").await;
    exec(
        &mut webhook,
        "SELECT 1 FROM memberships WHERE principal_id = 'p1' AND group_id = 'g1' AND access_id = 'member' FOR UPDATE",
    )
    .await;
    let woken = store.expire_due(now_ms()).await.expect("expire_due");
    assert!(
        woken.is_empty(),
        "the expiry took a row a webhook is judging: {woken:?}"
    );
    exec(
        &mut webhook,
        "UPDATE memberships SET end_at = now() + interval '1 hour' WHERE principal_id = 'p1'",
    )
    .await;
    exec(&mut webhook, "COMMIT").await;
    let mut observer = PgConnection::connect(&database.url).await.expect("connect");
    let left = count(
        &mut observer,
        "SELECT count(*) FROM memberships WHERE principal_id = 'p1' AND active AND expired_at IS NULL
           AND end_at > now()",
    )
    .await;
    assert_eq!(left, 1, "the extended membership is still active with its future end");

    // The other order: the expiry has ended the row but not committed yet; a webhook extending it
    // waits, then is judged against what the expiry left (nothing to extend).
    exec(
        &mut webhook,
        "UPDATE memberships SET end_at = now() - interval '1 second' WHERE principal_id = 'p1'",
    )
    .await;
    exec(&mut webhook, "BEGIN").await;
    exec(
        &mut webhook,
        "UPDATE memberships SET active = false, expired_at = now() WHERE principal_id = 'p1'",
    )
    .await;
    let now = now_ms();
    let extend = serde_json::json!({
        "id": "req-2", "action": "selfExtend", "accessId": "member", "principalId": "p1",
        "groupId": "g1", "status": "Provisioned", "createdDateTime": rfc3339(now),
        "scheduleInfo": {"startDateTime": rfc3339(now - 3_600_000),
                         "expiration": {"type": "afterDuration", "duration": "PT8H"}},
    });
    let extension = {
        let store = store.clone();
        let item = event(extend, now);
        tokio::spawn(async move { store.accept_events(&[item], now).await })
    };
    let waited = someone_waits_for(&mut observer, "transactionid").await;
    exec(&mut webhook, "COMMIT").await;
    extension.await.expect("extension task").expect("accept_events");
    assert!(waited, "the extension did not wait for the expiry's row");
    let expired = count(
        &mut observer,
        "SELECT count(*) FROM memberships WHERE principal_id = 'p1' AND NOT active AND expired_at IS NOT NULL
           AND end_at < now()",
    )
    .await;
    assert_eq!(expired, 1, "no future end on the expired row");
    let skipped = count(
        &mut observer,
        "SELECT count(*) FROM events WHERE id = 'req-2' AND outcome = 'skipped'",
    )
    .await;
    assert_eq!(skipped, 1, "the extension found nothing to extend");
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
