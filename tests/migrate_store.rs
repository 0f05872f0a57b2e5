//! Moving from SQLite to PostgreSQL with `scim-bridge migrate-store`: a bridge stopped on SQLite
//! carries on, started on the PostgreSQL copy, with its credentials, its window, its deferred work
//! and its history; a destination that holds anything is refused and left as it was.
//!
//! These run in the SQLite run of the suite and need a PostgreSQL server of their own
//! (`TestDatabase::postgres`): without one they say so and pass, except under `CI=true`.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Bridge, Event, Kind, Principal, SourceGroup, TestDatabase, short_id, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::{Connection, Row};

/// `scim-bridge migrate-store --to <to>` on the (stopped) bridge's data dir, with its secrets.
async fn migrate_store(bridge: &Bridge, to: &str) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
        .args(["migrate-store", "--to", to])
        .current_dir(&bridge.data_dir)
        .env("SCIM_BRIDGE_DATA_DIR", &bridge.data_dir)
        .env(
            "SCIM_BRIDGE_WEBHOOK_SECRET",
            format!("{},{}", bridge.secret, bridge.previous_secret),
        )
        .env("SCIM_BRIDGE_ADMIN_TOKEN", &bridge.admin_token)
        .env_remove("SCIM_BRIDGE_DATABASE_URL")
        .env_remove("SCIM_BRIDGE_ENCRYPTION_KEY")
        .output()
        .await
        .expect("scim-bridge migrate-store")
}

fn printed(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The rows per table that migrate-store printed.
fn copied_rows(output: &std::process::Output) -> BTreeMap<String, u64> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("  "))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect()
}

async fn stop(bridge: &mut Bridge) {
    let status = bridge.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "the bridge exited with {status} on SIGTERM");
}

/// Every item of a paged list (`GET <path>`, following `nextCursor`), newest first.
async fn every_page(bridge: &Bridge, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_path = match &cursor {
            Some(c) => format!("{path}?limit=500&cursor={c}"),
            None => format!("{path}?limit=500"),
        };
        let (status, page) = bridge.admin(Method::GET, &page_path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {page_path}: {page}");
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return items,
        }
    }
}

async fn cycles_of(bridge: &Bridge, app_id: &str) -> Vec<Value> {
    let (status, body) = bridge
        .admin(Method::GET, &format!("/v1/apps/{app_id}/sync-cycles"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// Per table of the PostgreSQL database: its row count and a digest of its rows.
async fn snapshot(url: &str) -> BTreeMap<String, (i64, String)> {
    let mut db = sqlx::PgConnection::connect(url).await.expect("connect");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .expect("tables");
    let mut held = BTreeMap::new();
    for table in tables {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM \"{table}\" t"
        )))
        .fetch_one(&mut db)
        .await
        .expect("digest");
        held.insert(table, (row.get(0), row.get(1)));
    }
    held
}

fn rows_in(snapshot: &BTreeMap<String, (i64, String)>) -> i64 {
    snapshot
        .iter()
        .filter(|(table, _)| table.as_str() != "_sqlx_migrations")
        .map(|(_, (rows, _))| rows)
        .sum()
}

fn upns(ps: &[Principal]) -> Vec<&str> {
    ps.iter().map(Principal::upn).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_moved_to_postgresql_revokes_pushes_its_deferred_work_and_keeps_its_history() {
    if !common::sqlite_under_test("a_bridge_moved_to_postgresql_...") {
        return;
    }
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    // The target takes only access tokens its OAuth2 issuer signed for the app's client
    // credentials: a moved bridge reaches it only if the sealed client secret moved intact.
    let Some(target) = common::target(Kind::ScimmyOAuth).await else {
        return;
    };
    let mut bridge = Bridge::start().await;
    let app_id = bridge.register_app(&target).await;
    let group = SourceGroup::new();
    let target_name = format!("Moved {}", short_id());
    bridge.assign_group(&app_id, &group.id, &target_name).await;
    let operator = bridge
        .create_token(&format!("operator-{}", short_id()), "operator")
        .await;

    // Six activations at once: five fill the window (5 pushes in 10 s), the sixth is deferred to
    // the app's next cycle, 40 minutes away.
    let ps: Vec<Principal> = (0..6).map(|_| Principal::new()).collect();
    let events: Vec<Event> = ps.iter().map(|p| Event::activation(p, &group)).collect();
    bridge.deliver(&events.iter().collect::<Vec<_>>()).await;
    target.assert_members_eventually(&target_name, &upns(&ps[..5])).await;
    for event in &events[..5] {
        bridge.wait_for_event_log(event, "success", Some("add_member")).await;
    }
    bridge
        .wait_for_event_log(&events[5], "deferred", Some("add_member"))
        .await;
    // A dry run leaves a cycle record and writes nothing at the target.
    let dry_run = bridge.sync_and_wait(&app_id, true).await;

    let logs = every_page(&bridge, "/v1/provisioning-logs").await;
    let audit = every_page(&bridge, "/v1/audit").await;
    let cycles = cycles_of(&bridge, &app_id).await;
    let app = bridge.app(&app_id).await;
    assert!(cycles.iter().any(|c| c["id"] == dry_run["id"]), "{cycles:?}");

    stop(&mut bridge).await;
    let moved = migrate_store(&bridge, &database.url).await;
    assert!(moved.status.success(), "migrate-store failed:\n{}", printed(&moved));
    let rows = copied_rows(&moved);
    for (table, expected) in [
        ("apps", 1),
        ("group_assignments", 1),
        ("events", 6),
        ("provisioned", 5),
        ("key_check", 1),
        ("provisioning_logs", logs.len() as u64),
        ("audit", audit.len() as u64),
        ("sync_cycles", cycles.len() as u64),
    ] {
        assert_eq!(rows.get(table), Some(&expected), "{table}:\n{}", printed(&moved));
    }

    // Started on PostgreSQL with the same secrets: the encryption key from the data dir file the
    // SQLite bridge generated, the webhook secret and the admin token as before.
    bridge
        .restart_process(&[("SCIM_BRIDGE_DATABASE_URL", &database.url)])
        .await;
    assert_eq!(
        every_page(&bridge, "/v1/provisioning-logs").await,
        logs,
        "the log reads as before, in the same order, with the same cursors"
    );
    assert_eq!(
        every_page(&bridge, "/v1/audit").await,
        audit,
        "the audit trail reads as before"
    );
    assert_eq!(cycles_of(&bridge, &app_id).await, cycles);
    let moved_app = bridge.app(&app_id).await;
    assert_eq!(moved_app["nextSyncAt"], app["nextSyncAt"], "the cycle's schedule moved");
    let token = operator["token"].as_str().expect("token");
    let (status, body) = bridge.api(Method::GET, "/v1/apps", Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "the operator token moved: {body}");

    // A revocation goes out as soon as the moved window (its admissions moved too) allows.
    let revocation = events[0].deactivation();
    bridge.deliver(&[&revocation]).await;
    let mut expected: Vec<String> = upns(&ps[1..5]).iter().map(|s| s.to_string()).collect();
    expected.sort();
    let revoked = wait_until(Duration::from_secs(20), || {
        let (target, target_name, expected) = (&target, &target_name, &expected);
        async move { target.group_member_user_names(target_name).await == *expected }
    })
    .await;
    assert!(
        revoked,
        "the revoked member left the target group: {:?}",
        target.group_member_user_names(&target_name).await
    );
    bridge
        .wait_for_event_log(&revocation, "success", Some("remove_member"))
        .await;

    // A cycle asked for now takes the deferred activation.
    let cycle = bridge.sync_and_wait(&app_id, false).await;
    assert_eq!(cycle["status"], "success", "{cycle}");
    target.assert_members_eventually(&target_name, &upns(&ps[1..])).await;
    let pushed = bridge
        .wait_for_event_log(&events[5], "success", Some("add_member"))
        .await;
    assert_eq!(pushed["trigger"], "sync", "{pushed}");
    assert_eq!(pushed["cycleId"], cycle["id"], "{pushed}");

    // New entries come above the moved ones, which keep their order below them.
    let after = every_page(&bridge, "/v1/provisioning-logs").await;
    assert!(after.len() > logs.len());
    assert_eq!(
        after[after.len() - logs.len()..],
        logs[..],
        "the moved entries, in order"
    );
    let in_postgres = snapshot(&database.url).await["provisioning_logs"].0;
    assert_eq!(
        in_postgres as usize,
        after.len(),
        "the moved bridge writes to PostgreSQL"
    );
    assert!(
        !bridge.output().contains(target.credential()),
        "the client secret appears in the bridge's output"
    );
    assert!(!printed(&moved).contains(target.credential()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_a_bridge_has_used_is_refused_and_left_as_it_was() {
    if !common::sqlite_under_test("a_destination_a_bridge_has_used_is_refused_and_left_as_it_was") {
        return;
    }
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let mut bridge = Bridge::start().await;
    bridge.create_token(&format!("before-{}", short_id()), "operator").await;
    stop(&mut bridge).await;
    let first = migrate_store(&bridge, &database.url).await;
    assert!(first.status.success(), "{}", printed(&first));

    // The PostgreSQL bridge writes to it; then someone runs the move again.
    bridge
        .restart_process(&[("SCIM_BRIDGE_DATABASE_URL", &database.url)])
        .await;
    bridge.create_token(&format!("after-{}", short_id()), "operator").await;
    stop(&mut bridge).await;
    let before = snapshot(&database.url).await;

    // The same source again: it is marked moved, and says where it went.
    let again = migrate_store(&bridge, &database.url).await;
    let said = printed(&again);
    assert!(!again.status.success(), "a moved store was copied again:\n{said}");
    // (The database's name is matched by its random part: the password, scrubbed from every
    // message, may be a part of the name, as with the tests' own role.)
    let name_tail = database.name.rsplit('_').next().expect("a name");
    assert!(said.contains("was moved to") && said.contains(name_tail), "{said}");
    assert_eq!(snapshot(&database.url).await, before, "the destination changed");

    // Another SQLite store into the used destination.
    let mut other = Bridge::start().await;
    stop(&mut other).await;
    let again = migrate_store(&other, &database.url).await;
    let said = printed(&again);
    assert!(!again.status.success(), "a used destination was accepted:\n{said}");
    assert!(said.contains("not empty"), "{said}");
    assert!(said.contains("tokens: 2 rows"), "names what is there: {said}");
    assert!(said.contains("key_check: 1 row"), "names what is there: {said}");
    assert_eq!(snapshot(&database.url).await, before, "the destination changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_in_any_table_of_the_destination_is_refused() {
    if !common::sqlite_under_test("one_row_in_any_table_of_the_destination_is_refused") {
        return;
    }
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let mut bridge = Bridge::start().await;
    stop(&mut bridge).await;
    // The right schema, and one row where a Graph poll would have left it.
    let store = scim_bridge::store::open(&database.url).await.expect("store");
    store.migrate().await.expect("migrations");
    store
        .mark_requests_seen("group", &[("request".into(), "Provisioned".into())], 0)
        .await
        .expect("a row");
    let before = snapshot(&database.url).await;

    let refused = migrate_store(&bridge, &database.url).await;
    let said = printed(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("source_seen_requests: 1 row"), "{said}");
    assert_eq!(snapshot(&database.url).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_fails_part_way_leaves_nothing_and_can_be_run_again() {
    if !common::sqlite_under_test("a_copy_that_fails_part_way_leaves_nothing_and_can_be_run_again") {
        return;
    }
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let mut bridge = Bridge::start().await;
    for i in 0..3 {
        bridge
            .create_token(&format!("token-{i}-{}", short_id()), "operator")
            .await;
    }
    stop(&mut bridge).await;

    // The audit trail is copied after the tokens: a row PostgreSQL refuses there fails the copy
    // when the tokens are written already.
    let sqlite_url = format!("sqlite://{}", bridge.data_dir.join("scim-bridge.db").display());
    let mut sqlite = sqlx::SqliteConnection::connect(&sqlite_url).await.expect("sqlite");
    let detail: String = sqlx::query_scalar("SELECT detail FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_one(&mut sqlite)
        .await
        .expect("an audit entry");
    sqlx::query("UPDATE audit SET detail = 'not JSON' WHERE seq = (SELECT max(seq) FROM audit)")
        .execute(&mut sqlite)
        .await
        .unwrap();

    let failed = migrate_store(&bridge, &database.url).await;
    let said = printed(&failed);
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("audit"), "names the table: {said}");
    assert_eq!(rows_in(&snapshot(&database.url).await), 0, "something was committed");

    sqlx::query("UPDATE audit SET detail = ? WHERE seq = (SELECT max(seq) FROM audit)")
        .bind(&detail)
        .execute(&mut sqlite)
        .await
        .unwrap();
    sqlite.close().await.ok();
    let moved = migrate_store(&bridge, &database.url).await;
    assert!(moved.status.success(), "{}", printed(&moved));
    assert_eq!(copied_rows(&moved).get("tokens"), Some(&3));
}

#[tokio::test]
async fn a_postgresql_source_is_refused_and_passwords_are_never_printed() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let run = |source: Option<&str>, to: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_scim-bridge"));
        command
            .args(["migrate-store", "--to", to])
            .current_dir(data_dir.path())
            .env("SCIM_BRIDGE_DATA_DIR", data_dir.path())
            .env_remove("SCIM_BRIDGE_ENCRYPTION_KEY")
            .env_remove("SCIM_BRIDGE_DATABASE_URL");
        if let Some(source) = source {
            command.env("SCIM_BRIDGE_DATABASE_URL", source);
        }
        command.output()
    };
    let source_password = format!("source-pw-{}", short_id());
    let to_password = format!("to-pw-{}", short_id());
    // Nothing listens on port 1: neither database is reached.
    let to = format!("postgres://bridge:{to_password}@127.0.0.1:1/scim");

    let refused = run(
        Some(&format!("postgres://bridge:{source_password}@127.0.0.1:1/old")),
        &to,
    )
    .await
    .expect("migrate-store");
    let said = printed(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("PostgreSQL"), "{said}");
    assert!(said.contains("postgres://bridge:***@127.0.0.1:1/old"), "{said}");
    assert!(
        !said.contains(&source_password) && !said.contains(&to_password),
        "{said}"
    );

    // A SQLite source that is not there is not created, and the destination is not reached.
    let missing = run(None, &to).await.expect("migrate-store");
    let said = printed(&missing);
    assert!(!missing.status.success(), "{said}");
    assert!(
        said.contains("scim-bridge.db"),
        "names the source it looked for: {said}"
    );
    assert!(
        !data_dir.path().join("scim-bridge.db").exists(),
        "an empty store was created"
    );

    // An unreachable destination: the message names it without its password.
    let bridge_dir = data_dir.path().join("with-store");
    std::fs::create_dir_all(&bridge_dir).unwrap();
    let store = scim_bridge::store::open(&format!("sqlite://{}/scim-bridge.db", bridge_dir.display()))
        .await
        .expect("store");
    store.migrate().await.expect("migrations");
    drop(store);
    let unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
        .args(["migrate-store", "--to", &to])
        .current_dir(&bridge_dir)
        .env("SCIM_BRIDGE_DATA_DIR", &bridge_dir)
        .env_remove("SCIM_BRIDGE_ENCRYPTION_KEY")
        .env_remove("SCIM_BRIDGE_DATABASE_URL")
        .output()
        .await
        .expect("migrate-store");
    let said = printed(&unreachable);
    assert!(!unreachable.status.success(), "{said}");
    assert!(said.contains("postgres://bridge:***@127.0.0.1:1/scim"), "{said}");
    assert!(!said.contains(&to_password), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_holding_anything_is_refused_before_any_migration_touches_it() {
    if !common::sqlite_under_test("a_destination_holding_anything_is_refused_before_any_migration_touches_it") {
        return;
    }
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let mut bridge = Bridge::start().await;
    stop(&mut bridge).await;
    // Someone else's table, with one row: no scim-bridge migration ever ran here.
    let mut db = sqlx::PgConnection::connect(&database.url).await.expect("connect");
    sqlx::query("CREATE TABLE inventory (item text)")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO inventory VALUES ('chair')")
        .execute(&mut db)
        .await
        .unwrap();
    let before = snapshot(&database.url).await;

    let refused = migrate_store(&bridge, &database.url).await;
    let said = printed(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("inventory: 1 row"), "{said}");
    assert_eq!(
        snapshot(&database.url).await,
        before,
        "the destination was migrated before it was found not empty"
    );
    // The source is not marked: a bridge starts on it again.
    bridge.restart_process(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_still_running_on_the_moved_store_refuses_writes_and_loses_nothing_it_accepted() {
    if !common::sqlite_under_test("a_bridge_still_running_on_the_moved_store_...") {
        return;
    }
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let mut bridge = Bridge::start().await;
    let app_id = bridge.register_app(&target).await;
    let group = SourceGroup::new();
    bridge
        .assign_group(&app_id, &group.id, &format!("Moving {}", short_id()))
        .await;

    // Webhooks keep coming, one after the other, while the store is moved under the bridge.
    let sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let (bridge, group, sending) = (&bridge, &group, sending.clone());
        async move {
            let mut answered: Vec<(String, StatusCode)> = Vec::new();
            while sending.load(std::sync::atomic::Ordering::Relaxed) {
                let event = Event::activation(&Principal::new(), group);
                let status = bridge.webhook(event.body()).await.status();
                answered.push((event.id().to_string(), status));
            }
            answered
        }
    };
    let mover = async {
        // Some accepted before the move.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let moved = migrate_store(&bridge, &database.url).await;
        // And some answered after it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        sending.store(false, std::sync::atomic::Ordering::Relaxed);
        moved
    };
    let (answered, moved) = tokio::join!(sender, mover);
    assert!(moved.status.success(), "migrate-store failed:\n{}", printed(&moved));
    let accepted: Vec<&String> = answered
        .iter()
        .filter(|(_, s)| *s == StatusCode::ACCEPTED)
        .map(|(id, _)| id)
        .collect();
    let refused = answered
        .iter()
        .filter(|(_, s)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(
        !accepted.is_empty(),
        "nothing was accepted before the move: {answered:?}"
    );
    assert!(refused > 0, "nothing was refused after the move: {answered:?}");
    assert_eq!(
        accepted.len() + refused,
        answered.len(),
        "every webhook is answered 202 or 503: {answered:?}"
    );
    assert!(
        answered
            .iter()
            .skip_while(|(_, s)| *s == StatusCode::ACCEPTED)
            .all(|(_, s)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "a webhook was accepted after one was refused: {answered:?}"
    );

    // Nothing it answered 202 is missing in PostgreSQL.
    let mut db = sqlx::PgConnection::connect(&database.url).await.expect("connect");
    let in_postgres: std::collections::HashSet<String> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(&mut db)
        .await
        .expect("events")
        .into_iter()
        .collect();
    let missing: Vec<&&String> = accepted.iter().filter(|id| !in_postgres.contains(**id)).collect();
    assert!(missing.is_empty(), "accepted, yet not in PostgreSQL: {missing:?}");

    // The bridge still running on the moved store: 503 to a webhook, /readyz fails.
    let late = Event::activation(&Principal::new(), &group);
    let answer = bridge.webhook(late.body()).await;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers().contains_key("retry-after"));
    let (status, _) = bridge.api(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "/readyz of the moved store");

    // A bridge started on the moved store refuses, and says where it went.
    let said = bridge.restart_refused(&[]).await;
    let expected = scim_bridge::store::migrate::redacted(&database.url);
    assert!(
        said.contains(&expected),
        "does not say where the store went ({expected}): {said}"
    );
    assert!(!said.contains("postgres:postgres@"), "the password is printed: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_past_what_postgresql_holds_is_moved_as_the_last_representable_end() {
    if !common::sqlite_under_test("an_end_past_what_postgresql_holds_is_moved_as_the_last_representable_end") {
        return;
    }
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let mut bridge = Bridge::start().await;
    let event = Event::activation(&Principal::new(), &SourceGroup::new());
    bridge.deliver(&[&event]).await;
    stop(&mut bridge).await;
    // An end an earlier release accepted (`P1000000Y`), now refused at intake.
    let sqlite_url = format!("sqlite://{}", bridge.data_dir.join("scim-bridge.db").display());
    let mut sqlite = sqlx::SqliteConnection::connect(&sqlite_url).await.expect("sqlite");
    for table in ["events", "memberships"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET end_at = 31556952000000000"
        )))
        .execute(&mut sqlite)
        .await
        .unwrap();
    }
    sqlite.close().await.ok();

    let moved = migrate_store(&bridge, &database.url).await;
    assert!(moved.status.success(), "{}", printed(&moved));
    let mut pg = sqlx::PgConnection::connect(&database.url).await.expect("postgres");
    let end: String =
        sqlx::query_scalar("SELECT to_char(end_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM memberships")
            .fetch_one(&mut pg)
            .await
            .unwrap();
    assert_eq!(end, "9999-12-31 23:59:59");
}
