//! The API edge against hostile owners, slow clients and crafted data (SPEC §2, §3 and §6, issue
//! 9): pause never lifts a quarantine, credentials never follow a changed URL, slow clients are
//! cut off, every 4xx is a problem naming its field, token names are unique, an add needs the
//! principal's attributes, CSV cells never run as formulas, metadata addresses are refused, and
//! the encryption key can be rotated.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Answer, Bridge, Event, Kind, Principal, SourceGroup, app_id, batch_statuses};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn token_of(created: &Value) -> String {
    created["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {created}"))
        .to_string()
}

fn client() -> reqwest::Client {
    scim_bridge::http_client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A call answered whole (status, content type, body).
async fn call(bridge: &Bridge, method: Method, path: &str, token: &str, body: Option<Value>) -> Answer {
    let mut request = client()
        .request(method, format!("{}{path}", bridge.url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    Answer::read(request.send().await.expect("request")).await
}

// ---------------------------------------------------------------------------------------------
// Pause and quarantine

#[tokio::test]
async fn an_owner_pausing_and_resuming_a_quarantined_app_leaves_it_quarantined() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let owner = token_of(&bridge.create_token("team-q", "app_owner").await);
    let operator = token_of(&bridge.create_token("night-shift", "operator").await);

    // The owner registers the app with a token the target refuses: the cycle quarantines it.
    let mut registration = target.app_registration("refused");
    registration["auth"]["token"] = json!("not-the-token");
    let (status, app) = bridge
        .api(Method::POST, "/v1/apps", Some(&owner), Some(registration))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let id = app_id(&app);
    let group = SourceGroup::new();
    bridge
        .assign_group(&id, &group.id, &format!("Q {}", common::short_id()))
        .await;
    let member = Principal::new();
    let (status, body) = bridge
        .admin(
            Method::PUT,
            &format!("/v1/groups/{}/members/{}", group.id, member.id),
            Some(json!({"principal": {"userPrincipalName": member.upn()}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cycle = bridge.sync_and_wait(&id, false).await;
    assert_eq!(cycle["status"], "quarantined", "{cycle}");

    let app_path = format!("/v1/apps/{id}");
    let patch = |state: &'static str| {
        let bridge = &bridge;
        let owner = owner.clone();
        let app_path = app_path.clone();
        async move {
            let (status, app) = bridge
                .api(Method::PATCH, &app_path, Some(&owner), Some(json!({"status": state})))
                .await;
            assert_eq!(status, StatusCode::OK, "PATCH status {state}: {app}");
            app
        }
    };

    let paused = patch("paused").await;
    assert_eq!(paused["status"], "paused", "{paused}");
    assert_eq!(paused["quarantined"], true, "pausing keeps the quarantine: {paused}");
    assert!(
        paused["statusReason"].as_str().unwrap_or("").contains("401"),
        "the quarantine's reason stays: {paused}"
    );
    let metrics = client()
        .get(format!("{}/metrics", bridge.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(&format!("scim_bridge_app_quarantined{{app_id=\"{id}\"}} 1")),
        "a paused quarantined app is still quarantined in the metrics"
    );
    let resumed = patch("active").await;
    assert_eq!(
        resumed["status"], "quarantined",
        "resuming returns to the quarantine: {resumed}"
    );
    assert!(
        resumed["statusReason"].as_str().unwrap_or("").contains("401"),
        "{resumed}"
    );
    let (_, stored) = bridge.admin(Method::GET, &app_path, None).await;
    assert_eq!(stored["status"], "quarantined", "{stored}");

    // The owner cannot clear it; an operator can, and an owner's pause outlives the clearing.
    let (status, _) = bridge
        .api(
            Method::POST,
            &format!("{app_path}/quarantine/clear"),
            Some(&owner),
            None,
        )
        .await;
    assert!(status.is_client_error(), "an owner cleared a quarantine: {status}");
    patch("paused").await;
    let (status, cleared) = bridge
        .api(
            Method::POST,
            &format!("{app_path}/quarantine/clear"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["status"], "paused", "{cleared}");
    assert_eq!(cleared["quarantined"], false, "{cleared}");
    let active = patch("active").await;
    assert_eq!(active["status"], "active", "{active}");
}

// ---------------------------------------------------------------------------------------------
// Credentials and a changed URL

/// A listener that answers every request 401 and keeps each request head it received.
struct Recorder {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn recorder() -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/scim/v2", listener.local_addr().expect("addr"));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let kept = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                kept.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                let _ = stream
                    .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    Recorder { url, heads }
}

#[tokio::test]
async fn a_changed_url_needs_new_credentials_and_the_old_ones_are_never_sent_there() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let owner = token_of(&bridge.create_token("co-owner", "app_owner").await);
    let (status, app) = bridge
        .api(
            Method::POST,
            "/v1/apps",
            Some(&owner),
            Some(target.app_registration("moving")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let id = app_id(&app);
    let app_path = format!("/v1/apps/{id}");
    let probe_path = format!("{app_path}/test-connection");
    let (status, probe) = bridge.api(Method::POST, &probe_path, Some(&owner), None).await;
    assert!(common::connection_test_succeeded(status, &probe), "{probe}");

    let listener = recorder().await;
    let moved = call(
        &bridge,
        Method::PATCH,
        &app_path,
        &owner,
        Some(json!({"scimBaseUrl": listener.url})),
    )
    .await;
    moved.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, &["auth"]);
    assert_eq!(moved.body["field"], "auth", "{}", moved.body);
    let (_, unchanged) = bridge.api(Method::GET, &app_path, Some(&owner), None).await;
    assert_eq!(unchanged["scimBaseUrl"], target.base_url.as_str(), "{unchanged}");
    // The same URL again is no change: no auth needed.
    let (status, same) = bridge
        .api(
            Method::PATCH,
            &app_path,
            Some(&owner),
            Some(json!({"scimBaseUrl": target.base_url, "name": "still here"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    let (status, probe) = bridge.api(Method::POST, &probe_path, Some(&owner), None).await;
    assert!(common::connection_test_succeeded(status, &probe), "{probe}");
    assert!(
        listener.heads.lock().unwrap().is_empty(),
        "nothing goes to the new URL yet"
    );

    let new_token = format!("new-token-{}", common::random_hex());
    let (status, moved) = bridge
        .api(
            Method::PATCH,
            &app_path,
            Some(&owner),
            Some(json!({"scimBaseUrl": listener.url, "auth": {"type": "bearer", "token": new_token}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    let (status, probe) = bridge.api(Method::POST, &probe_path, Some(&owner), None).await;
    assert!(!common::connection_test_succeeded(status, &probe), "{probe}");

    let heads = listener.heads.lock().unwrap().clone();
    assert!(!heads.is_empty(), "the probe reached the new URL");
    for head in &heads {
        let lower = head.to_lowercase();
        assert!(
            lower.contains(&format!("authorization: bearer {}", new_token.to_lowercase())),
            "the new credential is used: {head}"
        );
        assert!(
            !head.contains(target.credential()),
            "the old credential was sent: {head}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Slow clients

fn socket_of(bridge: &Bridge) -> SocketAddr {
    bridge
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("bridge address")
}

/// Reads until the peer closes the connection; answers what came and when it closed. Fails if it
/// is still open after `limit`.
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    started: Instant,
    limit: Duration,
) -> (String, Duration) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection is still open after {limit:?}; received: {}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into_owned(), started.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

const SHORT_TIMEOUTS: &[(&str, &str)] = &[("SCIM_BRIDGE_HEADER_TIMEOUT", "1s"), ("SCIM_BRIDGE_BODY_TIMEOUT", "2s")];
/// What the machine may add to a bound before the connection is seen closed.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_connection_that_sends_half_its_headers_is_closed_within_the_header_timeout() {
    let bridge = Bridge::start_with(SHORT_TIMEOUTS).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(socket_of(&bridge)).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .expect("write");
    let (received, closed_after) = read_until_closed(&mut stream, started, Duration::from_secs(1) + SLACK).await;
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed before the timeout: {closed_after:?}"
    );
    assert!(!received.contains("200"), "half a request was served: {received}");

    // A kept-alive connection that goes quiet after an answer is closed as well.
    let mut stream = TcpStream::connect(socket_of(&bridge)).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let (received, _) = read_until_closed(&mut stream, Instant::now(), Duration::from_secs(1) + SLACK).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_within_the_body_timeout_is_cut_off_even_if_it_trickles() {
    let bridge = Bridge::start_with(SHORT_TIMEOUTS).await;
    let stream = TcpStream::connect(socket_of(&bridge)).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // A well-formed, fresh signature header: the body is read (a header that can never match is
    // refused before the body is read).
    let signature = Bridge::sign(&bridge.secret, chrono::Utc::now().timestamp(), b"{");
    writer
        .write_all(
            format!(
                "POST /v1/webhooks/pim HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                 X-Bridge-Signature: {signature}\r\nContent-Length: 1000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let started = Instant::now();
    // One more byte every 300 ms until just before the deadline: each arrives well within it, so
    // a timeout per read would still wait 2 s after the last one; the body's deadline does not.
    let trickle = tokio::spawn(async move {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
        // Keep the write side open: the client never finishes.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(writer);
    });
    let (received, closed_after) = read_until_closed(&mut reader, started, Duration::from_millis(3300)).await;
    trickle.abort();
    assert!(
        closed_after >= Duration::from_millis(1800),
        "cut off before the timeout: {closed_after:?}"
    );
    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    assert!(received.contains("application/problem+json"), "{received}");
}

#[tokio::test]
async fn no_more_connections_than_the_limit_are_served_at_once() {
    let bridge = Bridge::start_with(&[
        ("SCIM_BRIDGE_MAX_CONNECTIONS", "2"),
        ("SCIM_BRIDGE_HEADER_TIMEOUT", "2s"),
    ])
    .await;
    let opened = Instant::now();
    let _silent: Vec<TcpStream> = vec![
        TcpStream::connect(socket_of(&bridge)).await.expect("connect"),
        TcpStream::connect(socket_of(&bridge)).await.expect("connect"),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = client()
        .get(format!("{}/healthz", bridge.url))
        .send()
        .await
        .expect("served once a connection ends");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(
        opened.elapsed() >= Duration::from_millis(1800),
        "a third connection was served while two were open: {:?}",
        opened.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Problems

#[tokio::test]
async fn query_path_and_method_errors_are_problems_naming_the_field() {
    let bridge = Bridge::start().await;
    let admin = bridge.admin_token.clone();
    for (method, path, field) in [
        (Method::GET, "/v1/provisioning-logs?limit=abc", "limit"),
        (Method::GET, "/v1/provisioning-logs/export?format=csv&limit=x", "limit"),
        (Method::GET, "/v1/audit?limit=many", "limit"),
        (Method::DELETE, "/v1/apps/some-app?deprovision=maybe", "deprovision"),
        (Method::POST, "/v1/apps/some-app/sync?dryRun=perhaps", "dryRun"),
        (Method::GET, "/v1/apps/%FF%FE", "appId"),
        // Values no entry can have (found by schemathesis: they answered an empty page).
        (Method::GET, "/v1/provisioning-logs/export?trigger=null", "trigger"),
        (Method::GET, "/v1/provisioning-logs?status=pending", "status"),
        (Method::GET, "/v1/provisioning-logs?cursor=", "cursor"),
    ] {
        let answer = call(&bridge, method.clone(), path, &admin, None).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, &[field]);
        assert_eq!(answer.body["field"], field, "{method} {path}: {}", answer.body);
    }
    // A standing member without a userName would fail at every cycle (found by schemathesis).
    let answer = call(
        &bridge,
        Method::PUT,
        "/v1/groups/g-1/members/p-1",
        &admin,
        Some(json!({"principal": {"userPrincipalName": "  ", "surname": null}})),
    )
    .await;
    answer.assert_problem(StatusCode::BAD_REQUEST, &["userPrincipalName"]);
    assert_eq!(answer.body["field"], "principal.userPrincipalName", "{}", answer.body);
    let response = client()
        .put(format!("{}/v1/tokens", bridge.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("request");
    assert!(response.headers().contains_key("allow"), "405 keeps Allow");
    Answer::read(response)
        .await
        .assert_problem(StatusCode::METHOD_NOT_ALLOWED, &["PUT"]);
}

// ---------------------------------------------------------------------------------------------
// Token names

#[tokio::test]
async fn token_names_are_unique_and_admin_is_the_bootstrap_tokens_name() {
    let bridge = Bridge::start().await;
    let admin = bridge.admin_token.clone();
    let alice = bridge.create_token("alice", "app_owner").await;
    for (name, role) in [
        ("alice", "operator"),
        ("admin", "app_owner"),
        ("Admin", "admin"),
        (" alice ", "app_owner"),
    ] {
        let answer = call(
            &bridge,
            Method::POST,
            "/v1/tokens",
            &admin,
            Some(json!({"name": name, "role": role})),
        )
        .await;
        answer.assert_problem(StatusCode::CONFLICT, &["name"]);
        assert_eq!(answer.body["field"], "name", "{name}: {}", answer.body);
    }
    // A revoked token's name can be given to its holder's new token.
    let id = alice["id"].as_str().expect("id");
    let (status, _) = bridge.admin(Method::DELETE, &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    bridge.create_token("alice", "app_owner").await;
    let (_, list) = bridge.admin(Method::GET, "/v1/tokens", None).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["alice"], "{list}");
}

#[tokio::test]
async fn the_migration_renames_live_tokens_that_share_a_name_or_are_named_admin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let before = dir.path().join("migrations");
    std::fs::create_dir(&before).expect("mkdir");
    for entry in std::fs::read_dir(common::manifest_dir().join("migrations/sqlite")).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("0001") || name.starts_with("0002") {
            std::fs::copy(&path, before.join(&name)).expect("copy");
        }
    }
    let url = format!("sqlite://{}", dir.path().join("bridge.db").display());
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("url");
    let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
        .await
        .expect("open");
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .expect("migrations")
        .run(&pool)
        .await
        .expect("migrate to 0002");
    for (id, name, created, revoked) in [
        ("t0", "alice", 0, Some(1)),
        ("t1", "alice", 10, None),
        ("t2", "alice", 20, None),
        ("t3", "admin", 30, None),
        ("t4", "bob", 40, None),
    ] {
        sqlx::query(
            "INSERT INTO tokens (id, name, role, hash, created_at, revoked_at) VALUES (?, ?, 'app_owner', ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(format!("hash-{id}"))
        .bind(created)
        .bind(revoked)
        .execute(&pool)
        .await
        .expect("insert");
    }
    pool.close().await;

    let store = scim_bridge::store::open(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    let names: Vec<(String, String)> = store
        .list_tokens()
        .await
        .expect("tokens")
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    let expected: Vec<(String, String)> = [("t1", "alice"), ("t2", "alice#t2"), ("t3", "admin#t3"), ("t4", "bob")]
        .iter()
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect();
    assert_eq!(names, expected);
}

// ---------------------------------------------------------------------------------------------
// A principal the bridge has never seen

#[tokio::test]
async fn an_add_for_a_never_seen_principal_needs_its_attributes_and_a_removal_does_not() {
    let bridge = Bridge::start().await;
    let group = SourceGroup::new();
    let stranger = Principal::new();

    let bare = Event::activation(&stranger, &group).without("/principal");
    let answer = Answer::read(bridge.webhook(bare.body()).await).await;
    answer.assert_problem(StatusCode::BAD_REQUEST, &["principal"]);
    assert_eq!(answer.body["field"], "principal", "{}", answer.body);

    let removal = bare.deactivation();
    let answer = bridge.deliver(&[&removal]).await;
    assert_eq!(common::single_status(&answer), "accepted", "{answer}");

    // In a batch: judged alone; an earlier event of the same batch may introduce the principal.
    let newcomer = Principal::new();
    let unknown = Event::activation(&Principal::new(), &group).without("/principal");
    let introduced = Event::activation(&newcomer, &group);
    let again = Event::activation(&newcomer, &group).without("/principal");
    let answer = bridge.deliver(&[&unknown, &introduced, &again]).await;
    assert_eq!(
        batch_statuses(&answer),
        ["rejected", "accepted", "accepted"],
        "{answer}"
    );
    assert_eq!(answer["events"][0]["problem"]["field"], "principal", "{answer}");
    assert_eq!(answer["events"][0]["problem"]["status"], 400, "{answer}");

    // Once seen, the principal needs no attributes.
    let later = Event::activation(&newcomer, &group).without("/principal");
    let answer = bridge.deliver(&[&later]).await;
    assert_eq!(common::single_status(&answer), "accepted", "{answer}");
}

// ---------------------------------------------------------------------------------------------
// CSV export

#[tokio::test]
async fn csv_exports_neutralise_cells_a_spreadsheet_would_run() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let mut registration = target.app_registration(r#"=HYPERLINK("http://evil.example","click")"#);
    registration["name"] = json!(r#"=HYPERLINK("http://evil.example","click")"#);
    let (status, app) = bridge.admin(Method::POST, "/v1/apps", Some(registration)).await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let id = app_id(&app);
    let group = SourceGroup::new();
    bridge
        .assign_group(&id, &group.id, &format!("CSV {}", common::short_id()))
        .await;
    let crafted = format!("@SUM(1+1)*cmd|{}@contoso.test", common::short_id());
    let event = Event::activation(&Principal::new(), &group)
        .set("/principal/userPrincipalName", json!(crafted))
        .set("/principal/displayName", json!("-2+3"));
    bridge.deliver(&[&event]).await;
    bridge
        .wait_for_log(&[("eventId", event.id())], |_| true, common::PUSH_TIMEOUT)
        .await;

    let response = client()
        .get(format!(
            "{}/v1/provisioning-logs/export?format=csv&eventId={}",
            bridge.url,
            event.id()
        ))
        .bearer_auth(&bridge.admin_token)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), StatusCode::OK);
    let csv = response.text().await.expect("csv");
    let row = csv
        .lines()
        .find(|l| l.contains(event.id()))
        .unwrap_or_else(|| panic!("no row for the event: {csv}"));
    assert!(
        row.contains(r#""'=HYPERLINK(""http://evil.example"",""click"")""#),
        "app name not neutralised: {row}"
    );
    assert!(row.contains(&format!(",'{crafted},")), "UPN not neutralised: {row}");
    for cell in row.split(',') {
        let cell = cell.trim_start_matches('"');
        assert!(
            !cell.starts_with(['=', '+', '@']),
            "a cell starts with a formula character: {cell} in {row}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Cloud metadata addresses

#[tokio::test]
async fn cloud_metadata_addresses_are_refused_even_when_private_targets_are_allowed() {
    // The harness allows private targets.
    let bridge = Bridge::start().await;
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/scim",
        "http://[::ffff:169.254.169.254]/scim",
    ] {
        let answer = call(
            &bridge,
            Method::POST,
            "/v1/apps",
            &bridge.admin_token,
            Some(json!({"name": "meta", "scimBaseUrl": url, "auth": {"type": "bearer", "token": "t"}})),
        )
        .await;
        answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, &["metadata"]);
        assert_eq!(answer.body["field"], "scimBaseUrl", "{url}: {}", answer.body);
    }
    let answer = call(
        &bridge,
        Method::POST,
        "/v1/apps",
        &bridge.admin_token,
        Some(
            json!({"name": "meta", "scimBaseUrl": "http://127.0.0.1:9/scim", "auth": {
            "type": "oauth2ClientCredentials", "tokenUrl": "http://169.254.169.254/token",
            "clientId": "c", "clientSecret": "s"}}),
        ),
    )
    .await;
    answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, &["metadata"]);
    assert_eq!(answer.body["field"], "auth.tokenUrl", "{}", answer.body);
}

/// A name that does not resolve (a typo, or DNS not there yet) is accepted where private targets
/// are allowed, but the answer says so; test-connection then names the cause, not only "error
/// sending request". (`.invalid` never resolves: RFC 2606.)
#[tokio::test]
async fn an_unresolvable_scim_name_is_registered_with_a_warning_and_test_connection_says_it_did_not_resolve() {
    // The harness allows private targets.
    let bridge = Bridge::start().await;
    let host = format!("scim-{}.example.invalid", common::short_id());
    let (status, app) = bridge
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": format!("unresolvable-{}", common::short_id()),
                "scimBaseUrl": format!("https://{host}/scim/v2"), "auth": {"type": "bearer", "token": "t"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let warnings = app["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.len() == 1
            && warnings[0]
                .as_str()
                .is_some_and(|w| w.starts_with("scimBaseUrl: ") && w.contains(&format!("{host} did not resolve"))),
        "{app}"
    );
    let id = app_id(&app);
    let (status, read) = bridge.admin(Method::GET, &format!("/v1/apps/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        read.get("warnings").is_none(),
        "a warning belongs to the answer that accepted it: {read}"
    );

    let (status, probe) = bridge
        .admin(Method::POST, &format!("/v1/apps/{id}/test-connection"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{probe}");
    assert_eq!(probe["ok"], false, "{probe}");
    let error = probe["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("the name {host} did not resolve")), "{probe}");
}

// ---------------------------------------------------------------------------------------------
// Encryption-key rotation

fn new_key() -> String {
    use base64::Engine;
    let bytes = hex::decode(format!("{}{}", common::random_hex(), common::random_hex())).expect("hex");
    assert_eq!(bytes.len(), 32);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn connection_works(bridge: &Bridge, app: &str) -> bool {
    let (status, probe) = bridge
        .admin(Method::POST, &format!("/v1/apps/{app}/test-connection"), None)
        .await;
    common::connection_test_succeeded(status, &probe)
}

async fn rekey(bridge: &Bridge, keys: &str) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_scim-bridge"))
        .arg("rekey")
        .current_dir(&bridge.data_dir)
        .env("SCIM_BRIDGE_DATA_DIR", &bridge.data_dir)
        .env("SCIM_BRIDGE_ENCRYPTION_KEY", keys)
        .env("SCIM_BRIDGE_ADMIN_TOKEN", &bridge.admin_token)
        .env("SCIM_BRIDGE_WEBHOOK_SECRET", &bridge.secret)
        .env_remove("SCIM_BRIDGE_DATABASE_URL")
        .envs(bridge.database_env())
        .output()
        .await
        .expect("scim-bridge rekey")
}

#[tokio::test]
async fn the_encryption_key_rotates_and_every_app_still_authenticates_with_only_the_new_key() {
    let Some(bearer) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let Some(oauth) = common::target(Kind::ScimmyOAuth).await else {
        return;
    };
    let (a, b) = (new_key(), new_key());
    let mut bridge = Bridge::start_with(&[("SCIM_BRIDGE_ENCRYPTION_KEY", &a)]).await;
    let apps = [bridge.register_app(&bearer).await, bridge.register_app(&oauth).await];
    for app in &apps {
        assert!(connection_works(&bridge, app).await, "before the rotation");
    }

    // Both keys: the old credentials still open; an app registered now is sealed with B.
    bridge
        .restart_process(&[("SCIM_BRIDGE_ENCRYPTION_KEY", &format!("{b},{a}"))])
        .await;
    let during = bridge.register_app(&bearer).await;
    for app in apps.iter().chain([&during]) {
        assert!(connection_works(&bridge, app).await, "with `B,A`");
    }

    // With B alone before the rekey, neither key of the running config opens the old ones:
    // `rekey` says so and fails.
    let refused = rekey(&bridge, &b).await;
    assert!(!refused.status.success(), "rekey with only the new key succeeded");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("no configured key"), "{said}");
    assert!(!said.contains(&a) && !said.contains(&b), "a key was printed: {said}");

    let rekeyed = rekey(&bridge, &format!("{b},{a}")).await;
    assert!(
        rekeyed.status.success(),
        "rekey failed: {}{}",
        String::from_utf8_lossy(&rekeyed.stdout),
        String::from_utf8_lossy(&rekeyed.stderr)
    );
    assert!(String::from_utf8_lossy(&rekeyed.stdout).contains("3 stored credentials"));

    bridge.restart_process(&[("SCIM_BRIDGE_ENCRYPTION_KEY", &b)]).await;
    for app in apps.iter().chain([&during]) {
        assert!(connection_works(&bridge, app).await, "with only `B` after the rekey");
    }
}

/// Runs one statement on the bridge's own database with byte arguments (`Bridge::store_execute`
/// binds text): `sqlite` or `postgres`, whichever store the bridge runs on.
async fn on_store(bridge: &Bridge, sqlite: &str, postgres: &str, binds: &[Vec<u8>]) {
    use sqlx::Connection;
    let url = bridge.database_url();
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open the database");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sqlite.to_string()));
        for b in binds {
            query = query.bind(b.clone());
        }
        query.execute(&mut conn).await.expect("statement");
    } else {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("open the database");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(postgres.to_string()));
        for b in binds {
            query = query.bind(b.clone());
        }
        query.execute(&mut conn).await.expect("statement");
    }
}

async fn stored_credential(bridge: &Bridge, app: &str) -> Vec<u8> {
    use sqlx::Connection;
    let url = bridge.database_url();
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open the database");
        sqlx::query_scalar("SELECT auth_sealed FROM apps WHERE id = ?")
            .bind(app)
            .fetch_one(&mut conn)
            .await
            .expect("the app's row")
    } else {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("open the database");
        sqlx::query_scalar("SELECT auth_sealed FROM apps WHERE id = $1::uuid")
            .bind(app)
            .fetch_one(&mut conn)
            .await
            .expect("the app's row")
    }
}

const SET_CREDENTIAL_SQLITE: &str = "UPDATE apps SET auth_sealed = $1 WHERE id = CAST($2 AS TEXT)";
const SET_CREDENTIAL_POSTGRES: &str = "UPDATE apps SET auth_sealed = $1 WHERE id = convert_from($2, 'UTF8')::uuid";

#[tokio::test]
async fn a_sealed_credential_moved_to_another_app_does_not_open_there() {
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let bridge = Bridge::start().await;
    let first = bridge.register_app(&target).await;
    let second = bridge.register_app(&target).await;
    assert!(connection_works(&bridge, &second).await, "before the move");

    // Someone who can write the database copies the first app's sealed secret into the second.
    let sealed = stored_credential(&bridge, &first).await;
    on_store(
        &bridge,
        SET_CREDENTIAL_SQLITE,
        SET_CREDENTIAL_POSTGRES,
        &[sealed, second.as_bytes().to_vec()],
    )
    .await;

    let (status, probe) = bridge
        .admin(Method::POST, &format!("/v1/apps/{second}/test-connection"), None)
        .await;
    assert!(!common::connection_test_succeeded(status, &probe), "{probe}");
    assert!(probe.to_string().contains("decrypted"), "{probe}");
    assert!(connection_works(&bridge, &first).await, "the first app still works");
}

#[tokio::test]
async fn a_credential_sealed_by_an_earlier_release_opens_and_is_sealed_again_bound_to_its_app() {
    use base64::Engine;
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let key = new_key();
    let mut bridge = Bridge::start_with(&[("SCIM_BRIDGE_ENCRYPTION_KEY", &key)]).await;
    let key_bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .unwrap()
        .try_into()
        .unwrap();
    let sealer = scim_bridge::crypto::Sealer::new(&[key_bytes]);
    let auth = target.app_auth().to_string();
    let patched = bridge.register_app(&target).await;
    let rekeyed = bridge.register_app(&target).await;
    for app in [&patched, &rekeyed] {
        on_store(
            &bridge,
            SET_CREDENTIAL_SQLITE,
            SET_CREDENTIAL_POSTGRES,
            &[sealer.seal_as_before_owners(auth.as_bytes()), app.as_bytes().to_vec()],
        )
        .await;
        assert!(
            connection_works(&bridge, app).await,
            "an earlier release's credential opens"
        );
        assert!(sealer.is_unbound(app, &stored_credential(&bridge, app).await));
    }

    // The app's next write seals it again, bound to the app.
    let (status, body) = bridge
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{patched}"),
            Some(json!({"name": format!("renamed-{}", common::short_id())})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sealed = stored_credential(&bridge, &patched).await;
    assert!(!sealer.is_unbound(&patched, &sealed));
    assert_eq!(sealer.open(&patched, &sealed).unwrap(), auth.as_bytes());
    assert!(connection_works(&bridge, &patched).await, "after the write");

    // `rekey` seals every stored credential again, bound.
    bridge.terminate(Duration::from_secs(10)).await;
    let out = rekey(&bridge, &key).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sealed = stored_credential(&bridge, &rekeyed).await;
    assert!(!sealer.is_unbound(&rekeyed, &sealed));
    assert_eq!(sealer.open(&rekeyed, &sealed).unwrap(), auth.as_bytes());
    assert!(sealer.open(&patched, &sealed).is_none());
    bridge.restart_process(&[("SCIM_BRIDGE_ENCRYPTION_KEY", &key)]).await;
    assert!(connection_works(&bridge, &rekeyed).await, "after the rekey");
}
