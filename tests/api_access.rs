//! Who may do what with the API, and where credentials must never show (SPEC sections 3 and 6).

use crate::common;

use common::{Bridge, Event, Kind, Principal, SourceGroup, Stack, app_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn token_of(created: &Value) -> String {
    created["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {created}"))
        .to_string()
}

/// Registration bodies for apps on unreachable local URLs (nothing is pushed to them): one with
/// a bearer token, one with client credentials; answers them with the secrets they carry.
fn registrations_with_secrets() -> Vec<(Value, String)> {
    let bearer = format!("scim-token-{}", common::random_hex());
    let client_secret = format!("client-secret-{}", common::random_hex());
    vec![
        (
            json!({
                "name": format!("bearer-{}", common::short_id()),
                "scimBaseUrl": "http://127.0.0.1:9/scim/v2",
                "auth": {"type": "bearer", "token": bearer},
            }),
            bearer,
        ),
        (
            json!({
                "name": format!("oauth-{}", common::short_id()),
                "scimBaseUrl": "http://127.0.0.1:9/scim/v2",
                "auth": {
                    "type": "oauth2ClientCredentials",
                    "tokenUrl": "http://127.0.0.1:9/token",
                    "clientId": "bridge",
                    "clientSecret": client_secret,
                    "scope": "scim",
                },
            }),
            client_secret,
        ),
    ]
}

fn assert_hides(secret: &str, where_: &str, text: &str) {
    assert!(
        !text.contains(secret),
        "{where_} contains the secret {secret:?}:\n{text}"
    );
}

#[tokio::test]
async fn admin_creates_a_token_that_is_shown_only_once() {
    let bridge = Bridge::start().await;
    let created = bridge.create_token("alice", "app_owner").await;
    assert_eq!(created["name"], "alice", "{created}");
    assert_eq!(created["role"], "app_owner", "{created}");
    assert!(created["id"].is_string(), "{created}");
    let token = token_of(&created);
    assert!(token.len() >= 16, "a token worth its name: {token:?}");

    let (status, list) = bridge.admin(Method::GET, "/v1/tokens", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(list.to_string().contains("alice"), "the list names the token: {list}");
    assert_hides(&token, "GET /v1/tokens", &list.to_string());

    let (status, _) = bridge.api(Method::GET, "/v1/apps", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "the new token works");

    let id = created["id"].as_str().unwrap();
    let (status, body) = bridge.admin(Method::DELETE, &format!("/v1/tokens/{id}"), None).await;
    assert!(status.is_success(), "DELETE /v1/tokens/{id}: {status} {body}");
    let (status, _) = bridge.api(Method::GET, "/v1/apps", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a deleted token no longer works");
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401() {
    let bridge = Bridge::start().await;
    for (method, path) in [
        (Method::GET, "/v1/apps"),
        (Method::POST, "/v1/apps"),
        (Method::GET, "/v1/provisioning-logs"),
        (Method::GET, "/v1/tokens"),
        (Method::POST, "/v1/tokens"),
    ] {
        for token in [None, Some("not-a-token")] {
            let body = (method == Method::POST).then(|| json!({}));
            let (status, answer) = bridge.api(method.clone(), path, token, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with token {token:?}: {answer}"
            );
        }
    }
}

#[tokio::test]
async fn only_admins_manage_tokens() {
    let bridge = Bridge::start().await;
    for role in ["operator", "app_owner"] {
        let token = token_of(&bridge.create_token(&format!("{role}-1"), role).await);
        let (status, body) = bridge
            .api(
                Method::POST,
                "/v1/tokens",
                Some(&token),
                Some(json!({"name": "mallory", "role": "admin"})),
            )
            .await;
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
            "{role} creating an admin token answered {status}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_owner_reaches_only_its_own_apps() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let alice = token_of(&bridge.create_token("alice", "app_owner").await);
    let bob = token_of(&bridge.create_token("bob", "app_owner").await);

    let (status, app) = bridge
        .api(
            Method::POST,
            "/v1/apps",
            Some(&alice),
            Some(target.app_registration("alice-app")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    assert!(
        app["owners"].as_array().is_some_and(|o| o.contains(&json!("alice"))),
        "the creator is an owner: {app}"
    );
    let id = app_id(&app);

    // Give alice's app a log entry.
    let group = SourceGroup::new();
    bridge.assign_group(&id, &group.id, "Alice Target").await;
    let activation = Event::activation(&Principal::new(), &group);
    bridge.deliver(&[&activation]).await;
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;

    let (status, own) = bridge
        .api(Method::GET, &format!("/v1/apps/{id}"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    let (status, own_logs) = bridge.logs_as(&alice, &[("appId", &id)]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!own_logs.is_empty(), "an owner reads its app's logs");
    let (status, groups) = bridge
        .api(Method::GET, &format!("/v1/apps/{id}/groups"), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "an owner may read the group list: {groups}");

    // Bob sees nothing of it.
    for (method, path) in [
        (Method::GET, format!("/v1/apps/{id}")),
        (Method::PATCH, format!("/v1/apps/{id}")),
        (Method::DELETE, format!("/v1/apps/{id}")),
        (Method::GET, format!("/v1/apps/{id}/groups")),
        (Method::POST, format!("/v1/apps/{id}/test-connection")),
    ] {
        let body = (method == Method::PATCH).then(|| json!({"status": "paused"}));
        let (status, answer) = bridge.api(method.clone(), &path, Some(&bob), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "bob: {method} {path}: {answer}");
    }
    let (status, list) = bridge.api(Method::GET, "/v1/apps", Some(&bob), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(
        !list.to_string().contains(&id),
        "bob's app list shows alice's app: {list}"
    );
    let (status, logs) = bridge.logs_as(&bob, &[("appId", &id)]).await;
    assert!(
        status == StatusCode::NOT_FOUND || (status == StatusCode::OK && logs.is_empty()),
        "bob reads alice's logs: {status} {logs:?}"
    );
    let (_, all_logs) = bridge.logs_as(&bob, &[]).await;
    assert!(
        all_logs.iter().all(|e| e["appId"] != id.as_str()),
        "bob's unfiltered logs show alice's app: {all_logs:?}"
    );

    // Alice may not change who activates into her app.
    let (status, answer) = bridge
        .api(
            Method::PUT,
            &format!("/v1/apps/{id}/groups/{}", SourceGroup::new().id),
            Some(&alice),
            Some(json!({"targetDisplayName": "Sneaky"})),
        )
        .await;
    assert!(
        status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
        "an owner assigning a group answered {status}: {answer}"
    );
}

#[tokio::test]
async fn operator_reads_apps_without_credentials() {
    let bridge = Bridge::start().await;
    let operator = token_of(&bridge.create_token("olga", "operator").await);
    for (registration, secret) in registrations_with_secrets() {
        let (status, app) = bridge.admin(Method::POST, "/v1/apps", Some(registration)).await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        let id = app_id(&app);

        let (status, one) = bridge
            .api(Method::GET, &format!("/v1/apps/{id}"), Some(&operator), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{one}");
        assert_hides(&secret, "operator's GET /v1/apps/{id}", &one.to_string());
        let (status, list) = bridge.api(Method::GET, "/v1/apps", Some(&operator), None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert!(list.to_string().contains(&id), "operator lists the app: {list}");
        assert_hides(&secret, "operator's GET /v1/apps", &list.to_string());

        let (status, answer) = bridge
            .api(
                Method::PUT,
                &format!("/v1/apps/{id}/groups/{}", SourceGroup::new().id),
                Some(&operator),
                Some(json!({"targetDisplayName": "Ops"})),
            )
            .await;
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
            "an operator assigning a group answered {status}: {answer}"
        );
    }
}

#[tokio::test]
async fn no_api_answer_contains_a_scim_credential() {
    let bridge = Bridge::start().await;
    for (registration, secret) in registrations_with_secrets() {
        let (status, created) = bridge.admin(Method::POST, "/v1/apps", Some(registration)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_hides(&secret, "POST /v1/apps answer", &created.to_string());
        assert!(created["auth"]["type"].is_string(), "auth.type is shown: {created}");
        let id = app_id(&created);

        let (_, one) = bridge.admin(Method::GET, &format!("/v1/apps/{id}"), None).await;
        assert_hides(&secret, "GET /v1/apps/{id}", &one.to_string());
        let (_, list) = bridge.admin(Method::GET, "/v1/apps", None).await;
        assert_hides(&secret, "GET /v1/apps", &list.to_string());
        let (_, patched) = bridge
            .admin(
                Method::PATCH,
                &format!("/v1/apps/{id}"),
                Some(json!({"status": "paused"})),
            )
            .await;
        assert_hides(&secret, "PATCH /v1/apps/{id}", &patched.to_string());
        let (_, probe) = bridge
            .admin(Method::POST, &format!("/v1/apps/{id}/test-connection"), None)
            .await;
        assert_hides(&secret, "test-connection answer", &probe.to_string());
    }
}

#[tokio::test]
async fn database_holds_no_credential_in_plain_text() {
    let bridge = Bridge::start().await;
    let mut secrets = Vec::new();
    for (registration, secret) in registrations_with_secrets() {
        let (status, app) = bridge.admin(Method::POST, "/v1/apps", Some(registration)).await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        secrets.push(secret);
    }
    secrets.push(token_of(&bridge.create_token("alice", "app_owner").await));

    if let Some((_, url)) = bridge.database_env().first() {
        // PostgreSQL: everything the database holds, as a dump.
        let dump = std::process::Command::new("pg_dump")
            .args(["--data-only", url])
            .output()
            .expect("pg_dump");
        assert!(
            dump.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        for secret in &secrets {
            assert!(
                !dump.stdout.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the database holds {secret:?} in plain text"
            );
        }
        return;
    }
    let files: Vec<_> = std::fs::read_dir(&bridge.data_dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("scim-bridge.db"))
        .collect();
    assert!(
        files.iter().any(|f| f.file_name() == "scim-bridge.db"),
        "scim-bridge.db in the data dir {}",
        bridge.data_dir.display()
    );
    for file in files {
        let bytes = std::fs::read(file.path()).expect("read database file");
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds {secret:?} in plain text",
                file.path().display()
            );
        }
    }
}

/// The mode bits of a file or directory (permissions only).
#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Principals' names and mail addresses and the whole log are in the SQLite files: a first start
/// makes the data dir 0700 and the database with its `-wal` and `-shm` files 0600, like the
/// secrets; a database an earlier release left readable by others is narrowed at start.
#[cfg(unix)]
#[tokio::test]
async fn a_first_start_makes_the_data_dir_and_the_database_files_readable_by_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    if !common::sqlite_under_test("a_first_start_makes_the_data_dir_and_the_database_files_readable_by_the_owner_only")
    {
        return;
    }
    let parent = tempfile::tempdir().expect("temp dir");
    let data_dir = parent.path().join("fresh").join("data");
    // No webhook secret given: it is generated into the data dir as well.
    let bridge = Bridge::start_with(&[
        ("SCIM_BRIDGE_DATA_DIR", data_dir.to_str().unwrap()),
        ("SCIM_BRIDGE_WEBHOOK_SECRET", ""),
    ])
    .await;
    // A write, so that the write-ahead log holds something.
    bridge.create_token("mode-check", "operator").await;
    assert_eq!(mode(&data_dir), 0o700, "the data dir {}", data_dir.display());
    for name in ["scim-bridge.db", "scim-bridge.db-wal", "scim-bridge.db-shm"] {
        assert_eq!(mode(&data_dir.join(name)), 0o600, "{name}");
    }
    for name in ["webhook-secret", "encryption-key"] {
        assert_eq!(mode(&data_dir.join(name)), 0o600, "{name}");
    }
    drop(bridge);

    // A data dir and a database an earlier release made with the umask's modes: the database is
    // narrowed, the directory the operator made is left as it is.
    let earlier = parent.path().join("earlier");
    std::fs::create_dir(&earlier).unwrap();
    std::fs::set_permissions(&earlier, std::fs::Permissions::from_mode(0o755)).unwrap();
    let database = earlier.join("scim-bridge.db");
    // An empty file is an empty SQLite database.
    std::fs::write(&database, b"").unwrap();
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bridge = Bridge::start_with(&[("SCIM_BRIDGE_DATA_DIR", earlier.to_str().unwrap())]).await;
    bridge.create_token("mode-check", "operator").await;
    assert_eq!(mode(&database), 0o600);
    assert_eq!(mode(&earlier.join("scim-bridge.db-wal")), 0o600);
    assert_eq!(mode(&earlier), 0o755);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_output_holds_no_secret() {
    let Some(stack) = Stack::start_with(Kind::Scim2Server, &[("RUST_LOG", "debug")]).await else {
        return;
    };
    let bridge = &stack.bridge;
    let api_token = token_of(&bridge.create_token("alice", "app_owner").await);
    let (_, _) = bridge.api(Method::GET, "/v1/apps", Some(&api_token), None).await;
    let (group, _) = stack.assigned_group().await;
    let activation = Event::activation(&Principal::new(), &group);
    bridge.deliver(&[&activation]).await;
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    bridge
        .admin(
            Method::POST,
            &format!("/v1/apps/{}/test-connection", stack.app_id),
            None,
        )
        .await;
    // A refused webhook must not log what it expected.
    let body = Event::activation(&Principal::new(), &group).body();
    let wrong = Bridge::sign(&common::random_hex(), chrono::Utc::now().timestamp(), &body);
    bridge.post_webhook(body, Some("application/json"), Some(wrong)).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let output = bridge.output();
    for (what, secret) in [
        ("SCIM bearer token", stack.target.credential()),
        ("webhook secret", bridge.secret.as_str()),
        ("previous webhook secret", bridge.previous_secret.as_str()),
        ("admin token", bridge.admin_token.as_str()),
        ("API token", api_token.as_str()),
    ] {
        assert!(!output.contains(secret), "the bridge's output shows the {what}");
    }
}

#[tokio::test]
async fn bad_api_bodies_are_problems_naming_the_field() {
    let bridge = Bridge::start().await;
    let malformed = scim_bridge::http_client()
        .post(format!("{}/v1/apps", bridge.url))
        .bearer_auth(&bridge.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    common::Answer::read(malformed)
        .await
        .assert_problem(StatusCode::BAD_REQUEST, &["malformed"]);

    let (status, body) = bridge
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "x", "auth": {"type": "bearer", "token": "t"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "scimBaseUrl", "{body}");

    let (status, body) = bridge
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "x", "scimBaseUrl": "http://127.0.0.1:1/v2", "auth": {"type": "basic"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "auth.type", "{body}");

    let (status, body) = bridge
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "x", "scimBaseUrl": "http://127.0.0.1:1/v2",
                        "auth": {"type": "bearer", "token": "t"}, "overflow": "sometimes"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "overflow", "{body}");
}

#[tokio::test]
async fn private_scim_urls_are_refused_unless_allowed() {
    let bridge = Bridge::start_with(&[("SCIM_BRIDGE_ALLOW_PRIVATE_TARGETS", "false")]).await;
    for url in [
        "http://127.0.0.1:9/v2",
        "http://10.0.0.8/scim",
        "http://169.254.169.254/latest",
        "http://localhost:9/v2",
    ] {
        let (status, body) = bridge
            .admin(
                Method::POST,
                "/v1/apps",
                Some(json!({"name": "x", "scimBaseUrl": url, "auth": {"type": "bearer", "token": "t"}})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["field"], "scimBaseUrl");
    }
}
