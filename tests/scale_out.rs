//! Running on a shared PostgreSQL: one set of secrets for every replica, a key check kept in the
//! database, and a log cursor that holds while several writers commit at once.

use crate::common;

use std::time::Duration;

use common::{Bridge, Kind, TestDatabase};
use scim_bridge::store::{LogEntry, LogFilter};
use sqlx::Connection;

#[tokio::test]
async fn a_postgres_url_without_secrets_refuses_to_start_and_names_what_to_set() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
        .arg("serve")
        .current_dir(data_dir.path())
        .env("SCIM_BRIDGE_DATA_DIR", data_dir.path())
        .env("SCIM_BRIDGE_LISTEN", "127.0.0.1:0")
        // Nothing listens there: the refusal comes before any connection.
        .env(
            "SCIM_BRIDGE_DATABASE_URL",
            "postgres://bridge:secret@127.0.0.1:1/bridge",
        )
        .env("SCIM_BRIDGE_WEBHOOK_SECRET", "a-shared-webhook-secret")
        .env_remove("SCIM_BRIDGE_ADMIN_TOKEN")
        .env_remove("SCIM_BRIDGE_ENCRYPTION_KEY")
        .output()
        .await
        .expect("scim-bridge serve");
    assert!(!output.status.success(), "the bridge started without its secrets");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("SCIM_BRIDGE_ADMIN_TOKEN"), "{said}");
    assert!(said.contains("SCIM_BRIDGE_ENCRYPTION_KEY"), "{said}");
    assert!(
        !said.contains("SCIM_BRIDGE_WEBHOOK_SECRET,"),
        "the webhook secret was set: {said}"
    );
    assert!(
        !said.contains("a-shared-webhook-secret"),
        "a secret was printed: {said}"
    );
    // Nothing was generated: every replica must be given the same values.
    let files: Vec<_> = std::fs::read_dir(data_dir.path()).expect("data dir").collect();
    assert!(files.is_empty(), "the data dir got {files:?}");
}

#[tokio::test]
async fn a_postgres_url_takes_its_secrets_from_the_data_dir() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let data_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(data_dir.path().join("webhook-secret"), "shared-webhook-secret\n").unwrap();
    std::fs::write(data_dir.path().join("admin-token"), "shared-admin-token\n").unwrap();
    std::fs::write(data_dir.path().join("encryption-key"), &database.encryption_key).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
        .arg("serve")
        .current_dir(data_dir.path())
        .env("SCIM_BRIDGE_DATA_DIR", data_dir.path())
        .env("SCIM_BRIDGE_LISTEN", "127.0.0.1:0")
        .env("SCIM_BRIDGE_DATABASE_URL", &database.url)
        .env_remove("SCIM_BRIDGE_WEBHOOK_SECRET")
        .env_remove("SCIM_BRIDGE_ADMIN_TOKEN")
        .env_remove("SCIM_BRIDGE_ENCRYPTION_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("scim-bridge serve");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening on") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    child.kill().await.ok();
    assert!(listening, "the bridge did not start with its secrets in the data dir");
}

#[tokio::test]
async fn a_key_that_opens_none_of_the_stored_credentials_is_refused_and_the_right_one_starts() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let mut bridge = Bridge::start().await;
    bridge.register_app(&target).await;

    use base64::Engine;
    let other = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let said = bridge.restart_refused(&[("SCIM_BRIDGE_ENCRYPTION_KEY", &other)]).await;
    assert!(said.contains("SCIM_BRIDGE_ENCRYPTION_KEY"), "{said}");
    assert!(said.contains("opens"), "{said}");
    assert!(!said.contains(&other), "a key was printed: {said}");

    // The key the credentials were written with, as `previous` during a rotation, still opens.
    let current = bridge
        .store_key()
        .unwrap_or_else(|| std::fs::read_to_string(bridge.data_dir.join("encryption-key")).expect("generated key"));
    let rotation = format!("{other},{}", current.trim());
    bridge
        .restart_process(&[("SCIM_BRIDGE_ENCRYPTION_KEY", &rotation)])
        .await;
}

fn log_entry(app_id: &str, id: &str) -> LogEntry {
    LogEntry {
        id: id.into(),
        time: chrono::Utc::now().timestamp_millis(),
        app_id: app_id.into(),
        app_name: "cursor".into(),
        trigger: "activation".into(),
        action: "add_member".into(),
        status: "success".into(),
        attempt: 1,
        ..LogEntry::default()
    }
}

/// SPEC §6: the cursor is on commit order. A writer that inserted its entry first but commits
/// last must not land behind a page a reader already has.
#[tokio::test]
async fn a_log_entry_committed_late_is_neither_skipped_nor_repeated_by_paging() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let store = scim_bridge::store::open(&database.url).await.expect("store");
    store.migrate().await.expect("migrations");
    let app = uuid::Uuid::now_v7().to_string();
    store.insert_log(&log_entry(&app, "first-page-0")).await.unwrap();

    // A slow writer: its entry is inserted now and committed after the next writer's.
    let mut slow = sqlx::PgConnection::connect(&database.url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
    sqlx::query(
        "INSERT INTO provisioning_logs (id, time, app_id, app_name, trigger, action, status, attempt, steps)
         VALUES ('slow', now(), $1::uuid, 'cursor', 'activation', 'add_member', 'success', 1, '[]')",
    )
    .bind(&app)
    .execute(&mut slow)
    .await
    .unwrap();
    store.insert_log(&log_entry(&app, "fast")).await.unwrap();

    let page = |before: Option<i64>| LogFilter {
        app_id: Some(app.clone()),
        before_seq: before,
        limit: 1,
        ..LogFilter::default()
    };
    // The reader's first page is the newest committed entry.
    let first = store.query_logs(&page(None)).await.unwrap();
    assert_eq!(first.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["fast"]);
    let newest_seen = first[0].seq;

    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();

    // Paging on from the cursor: the older entry, once, and the end.
    let second = store.query_logs(&page(Some(newest_seen))).await.unwrap();
    assert_eq!(
        second.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["first-page-0"]
    );
    let third = store.query_logs(&page(Some(second[0].seq))).await.unwrap();
    assert!(third.is_empty(), "{third:?}");

    // The late entry is newer than everything the reader saw: a reader looking for what is new
    // above its first page finds it; nothing went behind the cursor.
    let all = store
        .query_logs(&LogFilter {
            app_id: Some(app.clone()),
            limit: 10,
            ..LogFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["slow", "fast", "first-page-0"]);
    assert!(all[0].seq > newest_seen);
}

/// Many writers at once: every entry gets a distinct place, and a reader paging through while
/// they write never sees one entry twice, and sees every entry that was committed before it
/// started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_while_writers_commit_at_once_skips_and_repeats_nothing() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let store = scim_bridge::store::open(&database.url).await.expect("store");
    store.migrate().await.expect("migrations");
    let app = uuid::Uuid::now_v7().to_string();
    for i in 0..50 {
        store
            .insert_log(&log_entry(&app, &format!("before-{i}")))
            .await
            .unwrap();
    }
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            let app = app.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    store
                        .insert_log(&log_entry(&app, &format!("during-{w}-{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut cursor = None;
    loop {
        let page = store
            .query_logs(&LogFilter {
                app_id: Some(app.clone()),
                before_seq: cursor,
                limit: 7,
                ..LogFilter::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(last.seq);
        for entry in &page {
            assert!(seen.insert(entry.id.clone()), "{} twice", entry.id);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    for i in 0..50 {
        assert!(seen.contains(&format!("before-{i}")), "before-{i} skipped");
    }
}

/// A managed PostgreSQL takes TLS: `?sslmode=require` connects over it (the local cluster has
/// `ssl = on`), and the bridge works as without.
#[tokio::test]
async fn a_database_url_with_sslmode_require_connects_over_tls() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let url = format!("{}?sslmode=require&application_name=tls-check", database.url);
    let tls = common::psql_rows(&database.url, "SHOW ssl");
    if tls.first().map(String::as_str) != Some("on") {
        eprintln!("skipping test: the PostgreSQL under test has ssl off");
        return;
    }
    let store = scim_bridge::store::open(&url).await.expect("open over TLS");
    store.migrate().await.expect("migrations over TLS");
    store.ping().await.expect("ping over TLS");
    let over_tls = common::psql_rows(
        &database.url,
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE application_name = 'tls-check' AND ssl",
    );
    assert_ne!(
        over_tls.first().map(String::as_str),
        Some("0"),
        "no connection used TLS"
    );
}

/// An audit entry commits in the transaction of the change it records: when the entry cannot be
/// written (PostgreSQL refuses a NUL character in `jsonb`), the change is not committed either; a
/// change that is refused leaves no entry.
#[tokio::test]
async fn an_audit_entry_is_written_in_the_transaction_of_its_change() {
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let store = scim_bridge::store::open(&database.url).await.expect("open");
    store.migrate().await.expect("migrate");
    let now = chrono::Utc::now().timestamp_millis();
    let record = scim_bridge::store::TokenRecord {
        id: uuid::Uuid::now_v7().to_string(),
        name: "ops".into(),
        role: "operator".into(),
        created_at: now,
    };
    let entry = |detail: serde_json::Value| scim_bridge::store::AuditEntry {
        seq: 0,
        time: now,
        actor: "admin".into(),
        action: "token.create".into(),
        target: record.id.clone(),
        detail,
    };
    let failed = scim_bridge::store::audited(
        store.as_ref(),
        entry(serde_json::json!({"name": "o\u{0}ps"})),
        store.insert_token(&record, "hash-1"),
    )
    .await;
    assert!(failed.is_err(), "the audit entry with a NUL was written");
    let count = |sql: &str| common::psql_rows(&database.url, sql);
    assert_eq!(
        count("SELECT count(*) FROM tokens"),
        vec!["0"],
        "the token outlived its failed audit entry"
    );

    scim_bridge::store::audited(
        store.as_ref(),
        entry(serde_json::json!({"name": "ops"})),
        store.insert_token(&record, "hash-1"),
    )
    .await
    .expect("token and entry");
    assert_eq!(count("SELECT count(*) FROM tokens"), vec!["1"]);
    assert_eq!(
        count("SELECT count(*) FROM audit WHERE action = 'token.create'"),
        vec!["1"]
    );

    // The same name again is refused: no entry for it.
    let again = scim_bridge::http::issue_token(&store, "ops", "operator", now, Some("admin")).await;
    assert!(again.is_err());
    assert_eq!(
        count("SELECT count(*) FROM audit WHERE action = 'token.create'"),
        vec!["1"]
    );
}
