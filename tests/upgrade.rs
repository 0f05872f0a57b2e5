//! A database written by the previous release (migrations 0001 and 0002, rows as that release
//! wrote them) opens under this one, and the work it held goes on: a pending push reaches the
//! target, a deferred one reaches it with the cycle at the stored `nextSyncAt`, and the old log
//! entries are still there next to the new ones.

use crate::common;

use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use common::{Bridge, Event, Kind, PUSH_TIMEOUT, Principal, SourceGroup};
use reqwest::{Method, StatusCode};
use scim_bridge::config::Secret;
use scim_bridge::crypto::Sealer;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// The migrations the previous release shipped, and nothing newer.
const OLD_MIGRATIONS: [&str; 2] = ["0001_init.sql", "0002_provisioned_in_doubt.sql"];
const MINUTE_MS: i64 = 60_000;

/// Creates `<dir>/scim-bridge.db` with the previous release's schema.
async fn old_database(dir: &Path) -> SqlitePool {
    let migrations = dir.join("old-migrations");
    std::fs::create_dir_all(&migrations).expect("migrations dir");
    for name in OLD_MIGRATIONS {
        let from = common::manifest_dir().join("migrations/sqlite").join(name);
        std::fs::copy(&from, migrations.join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    let url = format!("sqlite://{}", dir.join("scim-bridge.db").display());
    let options = SqliteConnectOptions::from_str(&url)
        .expect("database URL")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open the old database");
    sqlx::migrate::Migrator::new(migrations.as_path())
        .await
        .expect("read the old migrations")
        .run(&pool)
        .await
        .expect("apply the old migrations");
    pool
}

/// An event as the previous release stored it: row and raw body.
async fn insert_event(pool: &SqlitePool, event: &Event, outcome: &str, reason: Option<&str>, now: i64) -> i64 {
    let millis = |pointer: &str| {
        event.json.pointer(pointer).and_then(Value::as_str).map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .expect("RFC 3339 time")
                .timestamp_millis()
        })
    };
    let start = millis("/scheduleInfo/startDateTime");
    sqlx::query(
        "INSERT INTO events (id, status, body, action, access_id, principal_id, group_id, created_at, received_at,
         start_at, end_at, outcome, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event.id())
    .bind(event.json["status"].as_str())
    .bind(event.json.to_string())
    .bind(event.json["action"].as_str())
    .bind(event.json["accessId"].as_str())
    .bind(event.json["principalId"].as_str())
    .bind(event.json["groupId"].as_str())
    .bind(millis("/createdDateTime"))
    .bind(now)
    .bind(start)
    .bind(start.map(|s| s + 120 * MINUTE_MS))
    .bind(outcome)
    .bind(reason)
    .execute(pool)
    .await
    .expect("insert event")
    .last_insert_rowid()
}

async fn insert_principal(pool: &SqlitePool, p: &Principal, now: i64) {
    sqlx::query(
        "INSERT INTO principals (principal_id, user_principal_name, display_name, given_name, surname, mail, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&p.id)
    .bind(p.upn())
    .bind(&p.display_name)
    .bind(&p.given_name)
    .bind(&p.surname)
    .bind(p.upn())
    .bind(now)
    .execute(pool)
    .await
    .expect("insert principal");
}

/// The activation's membership, active for two hours from its start.
async fn insert_membership(pool: &SqlitePool, event: &Event, event_seq: i64, start: i64, created: i64) {
    sqlx::query(
        "INSERT INTO memberships (principal_id, group_id, access_id, active, source, start_at, end_at,
           event_seq, event_created, expired_at) VALUES (?, ?, ?, 1, 'activation', ?, ?, ?, ?, NULL)",
    )
    .bind(event.json["principalId"].as_str())
    .bind(event.json["groupId"].as_str())
    .bind(event.json["accessId"].as_str())
    .bind(start)
    .bind(start + 120 * MINUTE_MS)
    .bind(event_seq)
    .bind(created)
    .execute(pool)
    .await
    .expect("insert membership");
}

#[allow(clippy::too_many_arguments)]
async fn insert_job(
    pool: &SqlitePool,
    id: &str,
    app_id: &str,
    event: &Event,
    event_seq: i64,
    state: &str,
    deferred_until: Option<i64>,
    received: i64,
    now: i64,
) {
    sqlx::query(
        "INSERT INTO jobs (id, app_id, event_seq, event_id, principal_id, group_id, kind, trigger,
         state, not_before, received_at, deferred_until, attempt, flag, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, 'add', 'activation', ?, ?, ?, ?, 0, NULL, ?)",
    )
    .bind(id)
    .bind(app_id)
    .bind(event_seq)
    .bind(event.id())
    .bind(event.json["principalId"].as_str())
    .bind(event.json["groupId"].as_str())
    .bind(state)
    .bind(received)
    .bind(received)
    .bind(deferred_until)
    .bind(now)
    .execute(pool)
    .await
    .expect("insert job");
}

#[allow(clippy::too_many_arguments)]
async fn insert_log(
    pool: &SqlitePool,
    id: &str,
    time: i64,
    (app_id, app_name): (&str, &str),
    event: &Event,
    job_id: Option<&str>,
    (action, status, reason): (&str, &str, &str),
    deferred_until: Option<i64>,
) {
    sqlx::query(
        "INSERT INTO provisioning_logs (id, time, app_id, app_name, trigger, cycle_id, event_id, job_id,
         principal_id, user_principal_name, group_id, action, status, reason, deferred_until, target_user_id,
         target_group_id, attempt, duration_ms, latency_ms, steps)
         VALUES (?, ?, ?, ?, 'activation', NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 0, NULL, NULL, '[]')",
    )
    .bind(id)
    .bind(time)
    .bind(app_id)
    .bind(app_name)
    .bind(event.id())
    .bind(job_id)
    .bind(event.json["principalId"].as_str())
    .bind(event.upn())
    .bind(event.json["groupId"].as_str())
    .bind(action)
    .bind(status)
    .bind(reason)
    .bind(deferred_until)
    .execute(pool)
    .await
    .expect("insert log entry");
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_of_the_previous_release_opens_and_its_pending_and_deferred_work_goes_on() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    // Declared before the bridge, so it outlives it.
    let data_dir = tempfile::tempdir().expect("temp dir");
    let key = scim_bridge::crypto::random_bytes::<32>();
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let pool = old_database(data_dir.path()).await;

    let now = chrono::Utc::now().timestamp_millis();
    let next_sync_at = now + 40 * MINUTE_MS;
    let app_id = new_id();
    let app_name = format!("legacy-app-{}", common::short_id());
    let auth = json!({"type": "bearer", "token": target.credential()});
    // Sealed as the previous release sealed it: not bound to the app.
    let sealed = Sealer::new(&[key]).seal_as_before_owners(auth.to_string().as_bytes());
    // What the previous release wrote for an app registered with default settings by the admin.
    let settings = r#"{"pacing":{"requestsPerSecond":25},"overflow":"nextCycle","patchStyle":"auto","driftRepair":"report","outOfScope":"keep"}"#;
    sqlx::query(
        "INSERT INTO apps (id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status,
         status_reason, legacy_remove, next_sync_at, quarantine_level, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&app_id)
    .bind(&app_name)
    .bind(&target.base_url)
    .bind("bearer")
    .bind(&sealed)
    .bind(settings)
    .bind(r#"["admin"]"#)
    .bind("active")
    .bind(None::<String>)
    .bind(0i64)
    .bind(next_sync_at)
    .bind(0i64)
    .bind(now - 24 * 60 * MINUTE_MS)
    .execute(&pool)
    .await
    .expect("insert app");
    // A second app of the same name: the previous release allowed it (SPEC §9).
    let twin_id = new_id();
    sqlx::query(
        "INSERT INTO apps (id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status,
         status_reason, legacy_remove, next_sync_at, quarantine_level, created_at)
         VALUES (?, ?, ?, 'bearer', ?, ?, '[\"admin\"]', 'paused', 'paused by admin', 0, ?, 0, ?)",
    )
    .bind(&twin_id)
    .bind(&app_name)
    .bind(&target.base_url)
    .bind(&sealed)
    .bind(settings)
    .bind(next_sync_at)
    .bind(now - 23 * 60 * MINUTE_MS)
    .execute(&pool)
    .await
    .expect("insert the app's twin");
    let group = SourceGroup::new();
    let target_name = format!("Upgraded {}", common::short_id());
    sqlx::query(
        "INSERT INTO group_assignments (app_id, group_id, target_display_name, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(&app_id)
    .bind(&group.id)
    .bind(&target_name)
    .bind(now - 24 * 60 * MINUTE_MS)
    .execute(&pool)
    .await
    .expect("insert assignment");

    // Two activations that started ten minutes ago: the first still waits to be pushed, the
    // second did not fit the window and waits for the cycle. The first principal's ownership
    // activation was logged as skipped.
    let start = now - 10 * MINUTE_MS;
    let start_time = chrono::DateTime::from_timestamp_millis(start).expect("time");
    let (pending, deferred) = (Principal::new(), Principal::new());
    let pending_event = Event::activation(&pending, &group).starting(start_time);
    let deferred_event = Event::activation(&deferred, &group).starting(start_time);
    let owner_event = Event::activation(&pending, &group).starting(start_time).access("owner");
    insert_principal(&pool, &pending, now).await;
    insert_principal(&pool, &deferred, now).await;
    let skipped = "ownership is recorded but never pushed: SCIM groups have no owners";
    insert_event(&pool, &owner_event, "skipped", Some(skipped), now).await;
    let seq = insert_event(&pool, &pending_event, "activate", None, now).await;
    insert_membership(&pool, &pending_event, seq, start, start).await;
    let pending_job = new_id();
    insert_job(
        &pool,
        &pending_job,
        &app_id,
        &pending_event,
        seq,
        "pending",
        None,
        now,
        now,
    )
    .await;
    let seq = insert_event(&pool, &deferred_event, "activate", None, now).await;
    insert_membership(&pool, &deferred_event, seq, start, start).await;
    let deferred_job = new_id();
    insert_job(
        &pool,
        &deferred_job,
        &app_id,
        &deferred_event,
        seq,
        "deferred",
        Some(next_sync_at),
        now,
        now,
    )
    .await;
    let (old_skip, old_defer) = (new_id(), new_id());
    insert_log(
        &pool,
        &old_skip,
        now - 1,
        (&app_id, &app_name),
        &owner_event,
        None,
        ("add_owner", "skipped", skipped),
        None,
    )
    .await;
    insert_log(
        &pool,
        &old_defer,
        now,
        (&app_id, &app_name),
        &deferred_event,
        Some(&deferred_job),
        (
            "add_member",
            "deferred",
            "rate window full: deferred to the next synchronization cycle",
        ),
        Some(next_sync_at),
    )
    .await;
    pool.close().await;

    // This release on that data dir and encryption key.
    let dir = data_dir.path().to_path_buf();
    let bridge = Bridge::start_clocked(move |config| {
        config.database_url = format!("sqlite://{}", dir.join("scim-bridge.db").display());
        config.data_dir = dir;
        config.encryption_key = Secret::new(key_b64);
    })
    .await;

    // The app is there as it was, and so is its twin of the same name, which a configuration
    // document lists as a shared name.
    let app = bridge.app(&app_id).await;
    assert_eq!(app["name"], app_name.as_str(), "{app}");
    assert_eq!(bridge.app(&twin_id).await["name"], app_name.as_str());
    let (status, plan) = bridge
        .admin(Method::PUT, "/v1/config?dryRun=true", Some(json!({"apps": []})))
        .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["sharedNames"], json!([app_name]), "{plan}");
    // Stored without a target key, the apps were keyed at start; the check for two apps on one
    // target (SPEC §8) finds them by it.
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        data_dir.path().join("scim-bridge.db").display()
    ))
    .await
    .expect("open the upgraded database");
    let unkeyed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM apps WHERE target_key IS NULL")
        .fetch_one(&mut db)
        .await
        .expect("count the apps without a target key");
    assert_eq!(unkeyed, 0);
    drop(db);
    let (status, refused) = bridge
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({
                "name": format!("{app_name}-beside"),
                "scimBaseUrl": format!("{}/", target.base_url),
                "auth": {"type": "bearer", "token": "another-token"},
                "onAccessEnd": "disableUser",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused.to_string().contains(&app_id), "{refused}");
    assert_eq!(app["scimBaseUrl"], target.base_url.as_str(), "{app}");
    assert_eq!(app["auth"]["type"], "bearer", "{app}");
    assert_eq!(app["owners"], json!(["admin"]), "{app}");
    assert_eq!(app["status"], "active", "{app}");
    assert_eq!(app["driftRepair"], "report", "{app}");
    // Stored before the access-end settings existed: it reads as SPEC §8 says.
    assert_eq!(app["provisionGroups"], true, "{app}");
    assert_eq!(app["onAccessEnd"], "removeMember", "{app}");
    assert_eq!(app["accessEndSloSeconds"], 60, "{app}");
    assert!(
        !app.to_string().contains(target.credential()),
        "secrets never shown: {app}"
    );
    let (status, groups) = bridge
        .admin(Method::GET, &format!("/v1/apps/{app_id}/groups"), None)
        .await;
    assert!(status.is_success(), "{status} {groups}");
    assert!(groups.to_string().contains(&group.id), "assignment kept: {groups}");

    // The pending push goes out with the stored credentials; the deferred one waits.
    target.assert_members_eventually(&target_name, &[pending.upn()]).await;
    let pushed = bridge
        .wait_for_event_log(&pending_event, "success", Some("add_member"))
        .await;
    assert_eq!(pushed["trigger"], "activation", "{pushed}");
    let user = target.user_by_user_name(pending.upn()).await.expect("user created");
    assert_eq!(
        user["displayName"],
        pending.display_name.as_str(),
        "attributes stored by the previous release are sent: {user}"
    );
    // The stored event still makes a redelivery a duplicate: no second push.
    let again = bridge.deliver(&[&pending_event]).await;
    assert_eq!(common::single_status(&again), "duplicate", "{again}");

    // The cycle comes at the stored nextSyncAt and provisions the deferred activation.
    bridge
        .advance_to(chrono::DateTime::from_timestamp_millis(next_sync_at + 1_000).expect("time"))
        .await;
    target
        .assert_members_eventually(&target_name, &[pending.upn(), deferred.upn()])
        .await;
    let cycle = bridge.wait_for_cycle(&app_id, |c| c["trigger"] == "schedule").await;
    assert_eq!(cycle["status"], "success", "{cycle}");
    assert_eq!(cycle["counts"]["deferredTaken"], 1, "{cycle}");
    assert_eq!(cycle["counts"]["added"], 1, "{cycle}");
    let synced = bridge
        .find_log(
            &[("eventId", deferred_event.id())],
            |e| e["status"] == "success" && e["trigger"] == "sync",
            PUSH_TIMEOUT,
        )
        .await
        .expect("the deferred activation is logged as provisioned by the cycle");
    assert_eq!(synced["cycleId"], cycle["id"], "{synced}");

    // The log holds the old entries next to the new ones.
    let (status, items) = bridge.logs_as(&bridge.admin_token, &[("appId", &app_id)]).await;
    assert!(status.is_success(), "{status}");
    let by_id = |id: &str| items.iter().find(|e| e["id"] == id).cloned();
    let skip = by_id(&old_skip).unwrap_or_else(|| panic!("old skipped entry missing: {items:#?}"));
    assert_eq!(
        (
            skip["status"].as_str(),
            skip["action"].as_str(),
            skip["reason"].as_str()
        ),
        (Some("skipped"), Some("add_owner"), Some(skipped)),
        "{skip}"
    );
    let defer = by_id(&old_defer).unwrap_or_else(|| panic!("old deferred entry missing: {items:#?}"));
    assert_eq!(defer["status"], "deferred", "{defer}");
    assert_eq!(defer["eventId"], deferred_event.id(), "{defer}");
    let until = defer["deferredUntil"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis());
    assert_eq!(until, Some(next_sync_at), "{defer}");
    assert!(by_id(pushed["id"].as_str().unwrap()).is_some(), "{items:#?}");
    assert!(by_id(synced["id"].as_str().unwrap()).is_some(), "{items:#?}");
    let (_, after) = bridge.admin(Method::GET, &format!("/v1/apps/{app_id}"), None).await;
    assert_ne!(
        after["nextSyncAt"], app["nextSyncAt"],
        "the next cycle is scheduled: {after}"
    );
}

/// The PostgreSQL migrations of the release before revoked requests were remembered (main at
/// 0004), and nothing newer.
const OLD_POSTGRES_MIGRATIONS: [&str; 4] = [
    "0001_init.sql",
    "0002_key_check.sql",
    "0003_graph_source.sql",
    "0004_leases.sql",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_database_of_the_previous_release_opens_and_its_pending_work_goes_on() {
    use sqlx::Connection;
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let Some(database) = common::TestDatabase::postgres() else {
        return;
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    let migrations = scratch.path().join("old-migrations");
    std::fs::create_dir_all(&migrations).expect("migrations dir");
    for name in OLD_POSTGRES_MIGRATIONS {
        let from = common::manifest_dir().join("migrations/postgres").join(name);
        std::fs::copy(&from, migrations.join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    let mut conn = sqlx::PgConnection::connect(&database.url).await.expect("connect");
    sqlx::migrate::Migrator::new(migrations.as_path())
        .await
        .expect("read the old migrations")
        .run(&mut conn)
        .await
        .expect("apply the old migrations");

    let key = scim_bridge::crypto::random_bytes::<32>();
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let now = chrono::Utc::now().timestamp_millis();
    let app_id = new_id();
    let app_name = format!("legacy-pg-app-{}", common::short_id());
    let auth = json!({"type": "bearer", "token": target.credential()});
    let sealed = Sealer::new(&[key]).seal_as_before_owners(auth.to_string().as_bytes());
    let settings = json!({"pacing":{"requestsPerSecond":25},"overflow":"nextCycle","patchStyle":"auto",
        "driftRepair":"report","outOfScope":"keep"});
    sqlx::query(
        "INSERT INTO apps (id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status,
         status_reason, legacy_remove, next_sync_at, quarantine_level, created_at)
         VALUES ($1::uuid, $2, $3, 'bearer', $4, $5, '[\"admin\"]'::jsonb, 'active', NULL, false,
                 from_ms($6), 0, from_ms($7))",
    )
    .bind(&app_id)
    .bind(&app_name)
    .bind(&target.base_url)
    .bind(&sealed)
    .bind(&settings)
    .bind(now + 40 * MINUTE_MS)
    .bind(now - 24 * 60 * MINUTE_MS)
    .execute(&mut conn)
    .await
    .expect("insert app");
    let group = SourceGroup::new();
    let target_name = format!("Upgraded PG {}", common::short_id());
    sqlx::query(
        "INSERT INTO group_assignments (app_id, group_id, target_display_name, created_at)
         VALUES ($1::uuid, $2, $3, from_ms($4))",
    )
    .bind(&app_id)
    .bind(&group.id)
    .bind(&target_name)
    .bind(now - 24 * 60 * MINUTE_MS)
    .execute(&mut conn)
    .await
    .expect("insert assignment");

    // An activation that started ten minutes ago and still waits to be pushed.
    let start = now - 10 * MINUTE_MS;
    let pending = Principal::new();
    let event = Event::activation(&pending, &group).starting(chrono::DateTime::from_timestamp_millis(start).unwrap());
    sqlx::query(
        "INSERT INTO principals (principal_id, user_principal_name, display_name, given_name, surname, mail, updated_at)
         VALUES ($1, $2, $3, $4, $5, $2, from_ms($6))",
    )
    .bind(&pending.id)
    .bind(pending.upn())
    .bind(&pending.display_name)
    .bind(&pending.given_name)
    .bind(&pending.surname)
    .bind(now)
    .execute(&mut conn)
    .await
    .expect("insert principal");
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, status, body, action, access_id, principal_id, group_id, created_at, received_at,
         start_at, end_at, outcome, reason)
         VALUES ($1, 'Provisioned', $2, 'selfActivate', 'member', $3, $4, from_ms($5), from_ms($6), from_ms($5),
                 from_ms($7), 'activate', NULL) RETURNING seq",
    )
    .bind(event.id())
    .bind(&event.json)
    .bind(&pending.id)
    .bind(&group.id)
    .bind(start)
    .bind(now)
    .bind(start + 120 * MINUTE_MS)
    .fetch_one(&mut conn)
    .await
    .expect("insert event");
    sqlx::query(
        "INSERT INTO memberships (principal_id, group_id, access_id, active, source, start_at, end_at,
           event_seq, event_created, expired_at, grant_request_id)
         VALUES ($1, $2, 'member', true, 'activation', from_ms($3), from_ms($4), $5, from_ms($3), NULL, $6)",
    )
    .bind(&pending.id)
    .bind(&group.id)
    .bind(start)
    .bind(start + 120 * MINUTE_MS)
    .bind(seq)
    .bind(event.id())
    .execute(&mut conn)
    .await
    .expect("insert membership");
    sqlx::query(
        "INSERT INTO jobs (id, app_id, event_seq, event_id, principal_id, group_id, kind, trigger, state,
           not_before, received_at, deferred_until, attempt, flag, updated_at)
         VALUES ($1, $2::uuid, $3, $4, $5, $6, 'add', 'activation', 'pending', from_ms($7), from_ms($7), NULL, 0,
                 NULL, from_ms($7))",
    )
    .bind(new_id())
    .bind(&app_id)
    .bind(seq)
    .bind(event.id())
    .bind(&pending.id)
    .bind(&group.id)
    .bind(now)
    .execute(&mut conn)
    .await
    .expect("insert job");
    conn.close().await.expect("close");

    // This release on that database and encryption key.
    let url = database.url.clone();
    let mut bridge = Bridge::start_clocked(move |config| {
        config.database_url = url;
        config.encryption_key = Secret::new(key_b64);
    })
    .await;
    let app = bridge.app(&app_id).await;
    assert_eq!(app["name"], app_name.as_str(), "{app}");
    assert_eq!(app["provisionGroups"], true, "{app}");
    assert_eq!(app["onAccessEnd"], "removeMember", "{app}");
    assert_eq!(app["accessEndSloSeconds"], 60, "{app}");
    target.assert_members_eventually(&target_name, &[pending.upn()]).await;
    bridge.wait_for_event_log(&event, "success", Some("add_member")).await;
    let again = bridge.deliver(&[&event]).await;
    assert_eq!(common::single_status(&again), "duplicate", "{again}");
    // What the new migrations added works on the old rows: the revocation reaches the target.
    let revoked = event.clone().status("Revoked");
    bridge.deliver(&[&revoked]).await;
    bridge
        .wait_for_event_log(&revoked, "success", Some("remove_member"))
        .await;
    target.assert_members_eventually(&target_name, &[]).await;
    bridge.restart().await;
    drop(database);
}
