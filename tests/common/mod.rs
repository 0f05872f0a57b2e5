//! Black-box harness: spawns the real `scim-bridge` binary and real SCIM targets on free ports.
//!
//! A target whose runtime is not installed (see `scripts/test-deps.sh`) makes the test print what
//! is missing and pass, except under `CI=true` (or `SCIM_BRIDGE_TEST_DEPS=1`, which
//! `scripts/test.sh` sets after installing them), where a missing part is a failure.

#![allow(dead_code)] // every test binary uses a different part of the harness

pub mod clocked;
pub mod graph;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use sha2::Sha256;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How long a push may take to show on the target after the webhook was answered.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
const TARGET_START_TIMEOUT: Duration = Duration::from_secs(15);
const BRIDGE_START_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A random lowercase hex string of 32 characters.
pub fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Eight random hex characters, to keep names unique between tests sharing nothing.
pub fn short_id() -> String {
    random_hex()[..8].to_string()
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Polls `check` until it holds or `timeout` passes; answers whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

pub(crate) fn http_client() -> reqwest::Client {
    scim_bridge::http_client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Turns an HTTP answer into (status, JSON); a body that is not JSON becomes a JSON string, an
/// empty body `null`.
pub(crate) async fn read_answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// An HTTP answer kept whole: status, content type and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Answer {
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (status, body) = read_answer(response).await;
        Answer {
            status,
            content_type,
            body,
        }
    }

    /// Asserts an RFC 9457 problem with that status whose text mentions one of `mentions`
    /// (case-insensitive; the field it is about, or why).
    #[track_caller]
    pub fn assert_problem(&self, status: StatusCode, mentions: &[&str]) {
        assert_eq!(self.status, status, "answer: {}", self.body);
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "content type of a {status} answer is {:?}, not application/problem+json; body: {}",
            self.content_type,
            self.body
        );
        assert!(
            self.body.is_object(),
            "problem body is not a JSON object: {}",
            self.body
        );
        let text = self.body.to_string().to_lowercase();
        assert!(
            mentions.is_empty() || mentions.iter().any(|m| text.contains(&m.to_lowercase())),
            "problem does not mention any of {mentions:?}: {}",
            self.body
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A spawned child whose stdout and stderr are drained into one buffer, so the pipes never fill
/// and a test can read what it printed. Killed on drop; its output is shown if the test failed.
pub struct Proc {
    name: String,
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(name: &str, mut command: Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        drain(child.stdout.take().expect("stdout"), output.clone());
        drain(child.stderr.take().expect("stderr"), output.clone());
        Proc {
            name: name.to_string(),
            child,
            output,
        }
    }

    /// Everything the process printed so far, stdout and stderr interleaved by line.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until a printed line contains `needle`, and answers that line.
    async fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Some(status) = self.exited() {
                // Give the drain tasks a moment to collect the last words.
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "{} exited ({status}) before printing {needle:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not print {needle:?} within {timeout:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited ({status}); output:\n{}", self.name, self.output());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let output = self.output();
            let lines: Vec<&str> = output.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!("----- output of {} -----\n{}", self.name, tail.join("\n"));
        }
    }
}

fn drain(pipe: impl AsyncRead + Unpin + Send + 'static, into: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = into.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Skip rule

/// Answers whether every part exists; otherwise says what is missing and how to install it, and
/// fails under `CI=true`.
pub(crate) fn require(parts: &[(&str, PathBuf)]) -> bool {
    let missing: Vec<String> = parts
        .iter()
        .filter(|(_, path)| !path.exists())
        .map(|(what, path)| format!("{what} ({})", path.display()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "missing: {}; install the test dependencies with `scripts/test-deps.sh`",
        missing.join(", ")
    );
    // Under CI, and when `scripts/test.sh` installed the parts, a missing one is a failure.
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("SCIM_BRIDGE_TEST_DEPS").is_ok_and(|v| v == "1");
    if required {
        panic!("{message}");
    }
    eprintln!("skipping test: {message}");
    false
}

fn scim2_server_bin() -> PathBuf {
    manifest_dir().join(".venv/bin/scim2-server")
}

pub(crate) fn fixtures_dir() -> PathBuf {
    manifest_dir().join("scim-fixtures")
}

pub(crate) fn node_bin() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("node"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("$PATH"))
}

// ---------------------------------------------------------------------------------------------
// SCIM targets

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `scim2-server` from PyPI, bearer token.
    Scim2Server,
    /// The SCIMMY server in `scim-fixtures/server.mjs`, bearer token.
    Scimmy,
    /// The SCIMMY server accepting only JWTs issued by `scim-fixtures/oauth-server.mjs`.
    ScimmyOAuth,
    /// `scim-fixtures/numeric-server.mjs`: ids are JSON numbers, bearer token.
    NumericIds,
}

/// A SCIM id as text: targets may answer strings or numbers (SPEC §4).
pub fn id_text(id: &Value) -> String {
    match id {
        Value::Number(n) => n.to_string(),
        other => other.as_str().unwrap_or_default().to_string(),
    }
}

/// OAuth2 client credentials the bridge is given for a target.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    pub token_url: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scope: String,
}

/// A running SCIM target, read directly over SCIM by the tests.
pub struct Target {
    pub kind: Kind,
    pub base_url: String,
    /// The static bearer token (bearer targets) handed to the bridge.
    pub bearer_token: Option<String>,
    pub oauth: Option<OAuthClient>,
    /// What the harness itself sends as `Authorization: Bearer` to read the target (for OAuth
    /// targets, the token fetched at start; see `harness_token`).
    access_token: String,
    http: reqwest::Client,
    procs: Vec<Proc>,
}

/// Starts a target of that kind, or answers `None` (after saying why) when its runtime is not
/// installed: `let Some(target) = common::target(Kind::Scimmy).await else { return };`
pub async fn target(kind: Kind) -> Option<Target> {
    start_target(kind, None).await
}

/// An OAuth2-protected SCIMMY target whose issuer hands out tokens living that many seconds.
pub async fn oauth_target_with_token_lifetime(seconds: u32) -> Option<Target> {
    start_target(Kind::ScimmyOAuth, Some(seconds)).await
}

async fn start_target(kind: Kind, token_lifetime: Option<u32>) -> Option<Target> {
    let ready = match kind {
        Kind::Scim2Server => require(&[("scim2-server", scim2_server_bin())]),
        Kind::Scimmy => require(&[
            ("node", node_bin()),
            ("SCIMMY server", fixtures_dir().join("server.mjs")),
            ("npm packages", fixtures_dir().join("node_modules")),
        ]),
        Kind::ScimmyOAuth => require(&[
            ("node", node_bin()),
            ("SCIMMY server", fixtures_dir().join("server.mjs")),
            ("OAuth2 server", fixtures_dir().join("oauth-server.mjs")),
            ("npm packages", fixtures_dir().join("node_modules")),
        ]),
        Kind::NumericIds => require(&[
            ("node", node_bin()),
            ("numeric-id server", fixtures_dir().join("numeric-server.mjs")),
        ]),
    };
    if !ready {
        return None;
    }
    Some(Target::start(kind, token_lifetime).await)
}

impl Target {
    async fn start(kind: Kind, token_lifetime: Option<u32>) -> Target {
        let http = http_client();
        match kind {
            Kind::Scim2Server => {
                let token = format!("scim-token-{}", random_hex());
                let mut attempt = 1;
                loop {
                    let port = free_port();
                    let base_url = format!("http://127.0.0.1:{port}/v2");
                    let mut command = Command::new(scim2_server_bin());
                    command.args(["--port", &port.to_string(), "--bearer-token", &token]);
                    let mut proc = Proc::spawn("scim2-server", command);
                    // Another test's server can take the free port between its probe and this
                    // server's bind: then start again on another port.
                    if attempt < 5 && lost_its_port(&mut proc, &http, &base_url, &token).await {
                        attempt += 1;
                        continue;
                    }
                    return Target::with_bearer(kind, base_url, token, http, proc)
                        .wait_until_ready()
                        .await;
                }
            }
            Kind::Scimmy => {
                let token = format!("scim-token-{}", random_hex());
                let (proc, port) = spawn_scimmy(&["--bearer-token", &token]).await;
                Target::with_bearer(kind, format!("http://127.0.0.1:{port}/scim/v2"), token, http, proc)
                    .wait_until_ready()
                    .await
            }
            Kind::NumericIds => {
                let token = format!("scim-token-{}", random_hex());
                let port = free_port();
                let mut command = Command::new("node");
                command.current_dir(fixtures_dir()).args([
                    "numeric-server.mjs",
                    "--port",
                    &port.to_string(),
                    "--bearer-token",
                    &token,
                ]);
                let mut proc = Proc::spawn("numeric-server", command);
                proc.wait_for_line("listening on", TARGET_START_TIMEOUT).await;
                Target::with_bearer(kind, format!("http://127.0.0.1:{port}/scim/v2"), token, http, proc)
                    .wait_until_ready()
                    .await
            }
            Kind::ScimmyOAuth => {
                let oauth_port = free_port();
                let issuer = format!("http://127.0.0.1:{oauth_port}");
                let client = OAuthClient {
                    token_url: format!("{issuer}/token"),
                    issuer: issuer.clone(),
                    client_id: format!("bridge-{}", short_id()),
                    client_secret: format!("client-secret-{}", random_hex()),
                    scope: "scim".to_string(),
                };
                let mut command = Command::new("node");
                command.current_dir(fixtures_dir()).args([
                    "oauth-server.mjs",
                    "--port",
                    &oauth_port.to_string(),
                    "--client-id",
                    &client.client_id,
                    "--client-secret",
                    &client.client_secret,
                ]);
                if let Some(seconds) = token_lifetime {
                    command.args(["--expires-in", &seconds.to_string()]);
                }
                let mut oauth_proc = Proc::spawn("oauth-server", command);
                oauth_proc.wait_for_line("listening on", TARGET_START_TIMEOUT).await;
                let access_token = fetch_client_credentials_token(&http, &client)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "OAuth2 server refused the harness' client credentials: {e}\n{}",
                            oauth_proc.output()
                        )
                    });
                let (proc, port) = spawn_scimmy(&["--oauth-issuer", &issuer]).await;
                let target = Target {
                    kind,
                    base_url: format!("http://127.0.0.1:{port}/scim/v2"),
                    bearer_token: None,
                    oauth: Some(client),
                    access_token,
                    http,
                    procs: vec![proc, oauth_proc],
                };
                target.wait_until_ready().await
            }
        }
    }

    /// Polls an authenticated `GET /Users` until it answers 200.
    async fn wait_until_ready(mut self) -> Target {
        let deadline = Instant::now() + TARGET_START_TIMEOUT;
        loop {
            for proc in &mut self.procs {
                proc.assert_running();
            }
            let answer = self
                .http
                .get(format!("{}/Users", self.base_url))
                // A fresh token each time: a short-lived one may expire while the target starts.
                .bearer_auth(self.harness_token().await)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == StatusCode::OK => return self,
                Ok(r) if Instant::now() >= deadline => {
                    panic!("{:?} target answers {} to GET /Users", self.kind, r.status())
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!("{:?} target not reachable: {e}", self.kind)
                }
                _ => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// The harness' own token: OAuth tokens may be short-lived, so those are fetched anew.
    async fn harness_token(&self) -> String {
        match &self.oauth {
            Some(client) => fetch_client_credentials_token(&self.http, client)
                .await
                .unwrap_or_else(|e| panic!("OAuth2 token for the harness: {e}")),
            None => self.access_token.clone(),
        }
    }

    /// A target that takes one static bearer token, the harness's and the bridge's alike.
    fn with_bearer(kind: Kind, base_url: String, token: String, http: reqwest::Client, proc: Proc) -> Target {
        Target {
            kind,
            base_url,
            bearer_token: Some(token.clone()),
            oauth: None,
            access_token: token,
            http,
            procs: vec![proc],
        }
    }

    /// The credential the bridge must never reveal: the bearer token or the client secret.
    pub fn credential(&self) -> &str {
        match (&self.bearer_token, &self.oauth) {
            (Some(token), _) => token,
            (None, Some(oauth)) => &oauth.client_secret,
            (None, None) => unreachable!("a target has a credential"),
        }
    }

    /// The `auth` object of an app registration for this target.
    pub fn app_auth(&self) -> Value {
        match (&self.bearer_token, &self.oauth) {
            (Some(token), _) => json!({"type": "bearer", "token": token}),
            (None, Some(o)) => json!({
                "type": "oauth2ClientCredentials",
                "tokenUrl": o.token_url,
                "clientId": o.client_id,
                "clientSecret": o.client_secret,
                "scope": o.scope,
            }),
            (None, None) => unreachable!("a target has a credential"),
        }
    }

    /// A `POST /v1/apps` body for this target.
    pub fn app_registration(&self, name: &str) -> Value {
        json!({"name": name, "scimBaseUrl": self.base_url, "auth": self.app_auth()})
    }

    /// `GET <base>/<path>` on the target, as (status, JSON).
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        self.request(Method::GET, path, query, None).await
    }

    /// Any SCIM request on the target, as the harness (not the bridge), as (status, JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url))
            .query(query)
            .bearer_auth(self.harness_token().await)
            .header("Accept", "application/scim+json");
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/scim+json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on the {:?} target: {e}", self.kind));
        read_answer(response).await
    }

    /// Creates a user directly in the target (as if it had been there before the bridge); answers
    /// its target id.
    pub async fn create_user(&self, user_name: &str, external_id: Option<&str>) -> String {
        let mut user = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user_name,
            "active": true,
        });
        if let Some(external_id) = external_id {
            user["externalId"] = json!(external_id);
        }
        let (status, created) = self.request(Method::POST, "/Users", &[], Some(user)).await;
        assert_eq!(status, StatusCode::CREATED, "POST /Users on the target: {created}");
        let id = id_text(&created["id"]);
        assert!(!id.is_empty(), "created user without id: {created}");
        id
    }

    async fn list(&self, resource: &str, filter: &str) -> Vec<Value> {
        let (status, body) = self.get(resource, &[("filter", filter)]).await;
        assert_eq!(status, StatusCode::OK, "GET {resource}?filter={filter}: {body}");
        body["Resources"].as_array().cloned().unwrap_or_default()
    }

    /// Every target group with that display name (more than one would be a duplicate).
    pub async fn groups_named(&self, display_name: &str) -> Vec<Value> {
        self.list("/Groups", &format!("displayName eq \"{display_name}\""))
            .await
    }

    /// The target user ids that are members of the group(s) with that display name, as often as
    /// they are listed.
    pub async fn group_member_ids(&self, display_name: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for group in self.groups_named(display_name).await {
            // Some servers leave members out of list answers: read the group itself.
            let (status, group) = self.get(&format!("/Groups/{}", id_text(&group["id"])), &[]).await;
            assert_eq!(status, StatusCode::OK, "GET group: {group}");
            for member in group["members"].as_array().into_iter().flatten() {
                ids.push(id_text(&member["value"]));
            }
        }
        ids
    }

    /// The `userName`s of the members of the target group(s) with that display name, sorted.
    pub async fn group_member_user_names(&self, display_name: &str) -> Vec<String> {
        let mut names = Vec::new();
        for id in self.group_member_ids(display_name).await {
            let (status, user) = self.get(&format!("/Users/{id}"), &[]).await;
            names.push(match user["userName"].as_str() {
                Some(name) if status.is_success() => name.to_string(),
                _ => format!("<member {id} not a user: {status}>"),
            });
        }
        names.sort();
        names
    }

    pub async fn users_with_user_name(&self, user_name: &str) -> Vec<Value> {
        self.list("/Users", &format!("userName eq \"{user_name}\"")).await
    }

    pub async fn user_by_user_name(&self, user_name: &str) -> Option<Value> {
        self.users_with_user_name(user_name).await.into_iter().next()
    }

    /// Waits (pushes follow the 202) until the group's members are exactly `expected`
    /// (userNames, each once); panics with what the target holds otherwise.
    pub async fn assert_members_eventually(&self, display_name: &str, expected: &[&str]) {
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        let last = std::cell::RefCell::new(Vec::new());
        let held = wait_until(PUSH_TIMEOUT, || {
            let (expected, last) = (&expected, &last);
            async move {
                let names = self.group_member_user_names(display_name).await;
                let matches = names == *expected;
                *last.borrow_mut() = names;
                matches
            }
        })
        .await;
        assert!(
            held,
            "target group {display_name:?} on {:?}: expected members {expected:?}, found {:?}",
            self.kind,
            last.borrow()
        );
    }
}

/// Whether a starting scim2-server exited because its port was taken; `false` once it answers
/// with this token (or when it fails otherwise: `wait_until_ready` then says why).
async fn lost_its_port(proc: &mut Proc, http: &reqwest::Client, base_url: &str, token: &str) -> bool {
    let deadline = Instant::now() + TARGET_START_TIMEOUT;
    while Instant::now() < deadline {
        if proc.exited().is_some() {
            return proc.output().contains("Address already in use");
        }
        let answer = http
            .get(format!("{base_url}/Users"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status() == StatusCode::OK) {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    false
}

async fn spawn_scimmy(auth_args: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let mut command = Command::new("node");
    command
        .current_dir(fixtures_dir())
        .args(["server.mjs", "--port", &port.to_string()])
        .args(auth_args);
    let mut proc = Proc::spawn("scimmy", command);
    proc.wait_for_line("listening on", TARGET_START_TIMEOUT).await;
    (proc, port)
}

/// Fetches an access token with the client-credentials grant, trying HTTP Basic client
/// authentication first and credentials in the form body second.
async fn fetch_client_credentials_token(http: &reqwest::Client, client: &OAuthClient) -> Result<String, String> {
    let secret = &client.client_secret;
    let grant = [("grant_type", "client_credentials"), ("scope", &client.scope)];
    let basic = http
        .post(&client.token_url)
        .basic_auth(&client.client_id, Some(secret))
        .form(&grant);
    let in_body = http.post(&client.token_url).form(&[
        ("grant_type", "client_credentials"),
        ("scope", &client.scope),
        ("client_id", &client.client_id),
        ("client_secret", secret),
    ]);
    let mut failures = Vec::new();
    for request in [basic, in_body] {
        match request.send().await {
            Ok(response) => {
                let (status, body) = read_answer(response).await;
                match body["access_token"].as_str() {
                    Some(token) if status.is_success() => return Ok(token.to_string()),
                    _ => failures.push(format!("{status} {body}")),
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(failures.join("; "))
}

// ---------------------------------------------------------------------------------------------
// The store under test

/// Which store the bridges of this run keep their state in: SQLite in the data dir (the
/// default), or with `SCIM_BRIDGE_TEST_STORE=postgres` a database of its own on the PostgreSQL
/// server at `SCIM_BRIDGE_TEST_POSTGRES_URL` (default: the local cluster that
/// `scripts/test-deps.sh` starts). The same tests run on either.
pub fn postgres_under_test() -> bool {
    match std::env::var("SCIM_BRIDGE_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("SCIM_BRIDGE_TEST_STORE={other}: use sqlite or postgres"),
    }
}

/// Answers whether the test may run on the store under test; a test about the SQLite file
/// itself says it is skipped on PostgreSQL.
pub fn sqlite_under_test(test: &str) -> bool {
    if postgres_under_test() {
        eprintln!("skipping {test}: it is about the embedded SQLite store (SCIM_BRIDGE_TEST_STORE=postgres)");
        return false;
    }
    true
}

fn postgres_admin_url() -> String {
    std::env::var("SCIM_BRIDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://scim_bridge_test:scim_bridge_test@127.0.0.1/scim_bridge_test".into())
}

/// A database created for one bridge on the PostgreSQL server under test, dropped with it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    /// The encryption key every process of this bridge gets: with PostgreSQL none is generated.
    pub encryption_key: String,
}

impl TestDatabase {
    /// A fresh database when PostgreSQL is under test; `None` for SQLite.
    pub fn create() -> Option<TestDatabase> {
        if !postgres_under_test() {
            return None;
        }
        Some(Self::create_on_server())
    }

    /// A fresh database for a test about PostgreSQL itself, whichever store is under test; `None`
    /// (after saying so) when no server answers, a failure under `CI=true`.
    pub fn postgres() -> Option<TestDatabase> {
        if let Err(e) = psql(&postgres_admin_url(), "SELECT 1") {
            let message =
                format!("no PostgreSQL at SCIM_BRIDGE_TEST_POSTGRES_URL ({e}); start it with `scripts/test-deps.sh`");
            if std::env::var("CI").is_ok_and(|v| v == "true") || postgres_under_test() {
                panic!("{message}");
            }
            eprintln!("skipping test: {message}");
            return None;
        }
        Some(Self::create_on_server())
    }

    fn create_on_server() -> TestDatabase {
        let name = format!("scim_bridge_test_{}", random_hex());
        psql(&postgres_admin_url(), &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating the test database {name} (SCIM_BRIDGE_TEST_STORE=postgres): {e}"));
        let mut url = Url::parse(&postgres_admin_url()).expect("SCIM_BRIDGE_TEST_POSTGRES_URL is a URL");
        url.set_path(&format!("/{name}"));
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .encode(hex::decode(format!("{}{}", random_hex(), random_hex())).unwrap());
        TestDatabase {
            name,
            url: url.to_string(),
            encryption_key: key,
        }
    }

    fn bridge_env(&self) -> Vec<(String, String)> {
        vec![
            ("SCIM_BRIDGE_DATABASE_URL".into(), self.url.clone()),
            ("SCIM_BRIDGE_ENCRYPTION_KEY".into(), self.encryption_key.clone()),
            // One bridge per test database: restarted, it takes its leases back at once.
            ("SCIM_BRIDGE_REPLICA_ID".into(), "test-bridge".into()),
        ]
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // FORCE ends the connections of a bridge that is still shutting down.
        if let Err(e) = psql(
            &postgres_admin_url(),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// Runs one SQL command with `psql` (synchronous, so it also works in `Drop`).
/// Runs one query with psql; answers its rows, one line each, fields separated by `|`.
pub fn psql_rows(url: &str, sql: &str) -> Vec<String> {
    let out = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .stdin(Stdio::null())
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

fn psql(url: &str, sql: &str) -> Result<(), String> {
    let out = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// The bridge

pub struct Bridge {
    pub url: String,
    pub admin_token: String,
    pub secret: String,
    pub previous_secret: String,
    pub data_dir: PathBuf,
    http: reqwest::Client,
    /// The spawned binary; `None` for a bridge run in-process (see `clocked.rs`).
    proc: Option<Proc>,
    /// In-process bridges run on a manual clock: webhooks are signed with its time.
    pub(crate) clocked: Option<clocked::InProcess>,
    /// The extra environment the process was started with, to start it again the same way.
    extra_env: Vec<(String, String)>,
    /// The store's settings (database URL, encryption key) when it is not the data dir's SQLite.
    pub(crate) store_env: Vec<(String, String)>,
    /// The `scim-bridge` binary the process runs (restarts run the same one).
    pub(crate) bin: PathBuf,
    // Dropped after `proc` (fields drop in order), so the bridge dies before its files go.
    pub(crate) _database: Option<TestDatabase>,
    _data_dir: TempDir,
}

impl Bridge {
    pub async fn start() -> Bridge {
        Bridge::start_with(&[]).await
    }

    /// Starts the bridge with extra (or overriding) environment variables.
    pub async fn start_with(extra_env: &[(&str, &str)]) -> Bridge {
        Bridge::start_binary(Path::new(env!("CARGO_BIN_EXE_scim-bridge")), extra_env).await
    }

    /// Starts that `scim-bridge` binary (the release build, say) instead of the one cargo built
    /// for the tests.
    pub async fn start_binary(bin: &Path, extra_env: &[(&str, &str)]) -> Bridge {
        let secrets = [random_hex(), random_hex(), format!("admin-{}", random_hex())];
        let database = TestDatabase::create();
        let store_env = database.as_ref().map(TestDatabase::bridge_env).unwrap_or_default();
        Bridge::spawn(bin, secrets, store_env, database, extra_env).await
    }

    /// The first replica of a cluster on that PostgreSQL database, whichever store is under test
    /// (it owns the database); `replica` starts the others.
    pub async fn start_replica_on(database: TestDatabase, replica_id: &str, extra_env: &[(&str, &str)]) -> Bridge {
        let secrets = [random_hex(), random_hex(), format!("admin-{}", random_hex())];
        let mut store_env = database.bridge_env();
        store_env.retain(|(k, _)| k != "SCIM_BRIDGE_REPLICA_ID");
        store_env.push(("SCIM_BRIDGE_REPLICA_ID".into(), replica_id.into()));
        let bin = Path::new(env!("CARGO_BIN_EXE_scim-bridge"));
        Bridge::spawn(bin, secrets, store_env, Some(database), extra_env).await
    }

    /// Another replica of this bridge: its own process and data dir, the same database and
    /// secrets, under its own replica id.
    pub async fn replica(&self, replica_id: &str, extra_env: &[(&str, &str)]) -> Bridge {
        let secrets = [
            self.secret.clone(),
            self.previous_secret.clone(),
            self.admin_token.clone(),
        ];
        let mut store_env = self.store_env.clone();
        store_env.retain(|(k, _)| k != "SCIM_BRIDGE_REPLICA_ID");
        store_env.push(("SCIM_BRIDGE_REPLICA_ID".into(), replica_id.into()));
        Bridge::spawn(&self.bin, secrets, store_env, None, extra_env).await
    }

    async fn spawn(
        bin: &Path,
        [secret, previous_secret, admin_token]: [String; 3],
        store_env: Vec<(String, String)>,
        database: Option<TestDatabase>,
        extra_env: &[(&str, &str)],
    ) -> Bridge {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let command = serve_command(
            bin,
            data_dir.path(),
            &secret,
            &previous_secret,
            &admin_token,
            &store_env,
            extra_env,
        );
        let (proc, url) = spawn_listening(command).await;
        let extra_env = extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Bridge {
            url,
            admin_token,
            secret,
            previous_secret,
            data_dir: data_dir.path().to_path_buf(),
            http: http_client(),
            proc: Some(proc),
            clocked: None,
            extra_env,
            store_env,
            bin: bin.to_path_buf(),
            _database: database,
            _data_dir: data_dir,
        }
    }

    /// The process id of the bridge's binary.
    pub fn pid(&self) -> u32 {
        self.proc
            .as_ref()
            .and_then(|p| p.child.id())
            .expect("a running bridge process")
    }

    /// The encryption key the harness gives the bridge (PostgreSQL); `None` when the bridge
    /// generated its own into the data dir.
    pub fn store_key(&self) -> Option<String> {
        self.store_env
            .iter()
            .find(|(k, _)| k == "SCIM_BRIDGE_ENCRYPTION_KEY")
            .map(|(_, v)| v.clone())
    }

    /// The URL of the bridge's own database: its PostgreSQL test database, or the SQLite file in
    /// its data dir.
    pub fn database_url(&self) -> String {
        if let Some(db) = &self._database {
            return db.url.clone();
        }
        match self.database_env().into_iter().next() {
            Some((_, url)) => url,
            None => format!("sqlite://{}", self.data_dir.join("scim-bridge.db").display()),
        }
    }

    /// Runs one query answering one integer on the bridge's own database. `sql` is written once
    /// for both stores: `$1`, `$2`, ... take the text arguments.
    pub async fn store_count(&self, sql: &str, args: &[&str]) -> i64 {
        use sqlx::Connection;
        let url = self.database_url();
        if url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open the database");
            let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()));
            for a in args {
                query = query.bind(a.to_string());
            }
            query.fetch_one(&mut conn).await.expect("query")
        } else {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("open the database");
            let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()));
            for a in args {
                query = query.bind(a.to_string());
            }
            query.fetch_one(&mut conn).await.expect("query")
        }
    }

    /// Runs one statement on the bridge's own database (written once for both stores).
    pub async fn store_execute(&self, sql: &str, args: &[&str]) {
        use sqlx::Connection;
        let url = self.database_url();
        if url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open the database");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
            for a in args {
                query = query.bind(a.to_string());
            }
            query.execute(&mut conn).await.expect("statement");
        } else {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("open the database");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
            for a in args {
                query = query.bind(a.to_string());
            }
            query.execute(&mut conn).await.expect("statement");
        }
    }

    /// `SCIM_BRIDGE_DATABASE_URL` of the bridge's store, for a command run on it (`rekey`); the
    /// data dir's SQLite when it is not set.
    pub fn database_env(&self) -> Vec<(String, String)> {
        self.store_env
            .iter()
            .filter(|(k, _)| k == "SCIM_BRIDGE_DATABASE_URL")
            .cloned()
            .collect()
    }

    /// The command that starts this bridge's binary again on its data dir, with its secrets and
    /// store, and these extra (or overriding) environment variables.
    fn serve_command(&self, extra_env: &[(&str, &str)]) -> Command {
        serve_command(
            &self.bin,
            &self.data_dir,
            &self.secret,
            &self.previous_secret,
            &self.admin_token,
            &self.store_env,
            extra_env,
        )
    }

    /// Kills the bridge process with SIGKILL (a crash: nothing is drained or recorded) and
    /// starts it again on the same data dir with the same settings.
    pub async fn crash_and_restart(&mut self) {
        self.crash().await;
        self.start_after_crash().await;
    }

    /// Kills the bridge process with SIGKILL (a crash) and leaves it down.
    pub async fn crash(&mut self) {
        let proc = self.proc.as_mut().expect("a bridge process");
        proc.child.kill().await.expect("SIGKILL the bridge");
    }

    /// Starts the binary again after `crash`, on the same data dir with the same settings.
    pub async fn start_after_crash(&mut self) {
        let extra_env: Vec<(&str, &str)> = self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let command = self.serve_command(&extra_env);
        let (proc, url) = spawn_listening(command).await;
        self.proc = Some(proc);
        self.url = url;
    }

    /// Stops the bridge process (SIGTERM) and starts the binary again on the same data dir with
    /// the same secrets, and these extra (or overriding) environment variables.
    pub async fn restart_process(&mut self, extra_env: &[(&str, &str)]) {
        // After `restart_refused` there is no process left to stop.
        if self.proc.as_mut().is_some_and(|p| p.exited().is_none()) {
            let status = self.terminate(Duration::from_secs(30)).await;
            assert!(status.success(), "the bridge exited with {status} on SIGTERM");
        }
        let command = self.serve_command(extra_env);
        let (proc, url) = spawn_listening(command).await;
        self.proc = Some(proc);
        self.url = url;
    }

    /// Stops the bridge process (SIGTERM) and starts it again with these extra (or overriding)
    /// environment variables, expecting it to refuse: answers what it printed before it exited.
    pub async fn restart_refused(&mut self, extra_env: &[(&str, &str)]) -> String {
        let status = self.terminate(Duration::from_secs(30)).await;
        assert!(status.success(), "the bridge exited with {status} on SIGTERM");
        let command = self.serve_command(extra_env);
        let mut proc = Proc::spawn("scim-bridge", command);
        let status = tokio::time::timeout(BRIDGE_START_TIMEOUT, proc.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the bridge did not exit; output:\n{}", proc.output()))
            .expect("wait");
        // Give the drain tasks a moment to collect the last words.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let output = proc.output();
        assert!(!status.success(), "the bridge started; output:\n{output}");
        assert!(
            !output.contains("listening on"),
            "the bridge listened; output:\n{output}"
        );
        output
    }

    /// Everything the bridge printed on stdout and stderr so far (nothing for an in-process one).
    pub fn output(&self) -> String {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }

    /// Sends SIGTERM to the bridge process and waits (up to `timeout`) for it to exit; answers
    /// its exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let proc = self.proc.as_mut().expect("a bridge process");
        let pid = proc.child.id().expect("the bridge is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -TERM {pid}");
        tokio::time::timeout(timeout, proc.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the bridge did not exit within {timeout:?} of SIGTERM"))
            .expect("wait")
    }

    /// The time webhooks are signed with: the manual clock's for an in-process bridge.
    fn signing_time(&self) -> i64 {
        match &self.clocked {
            Some(c) => scim_bridge::clock::Clock::now(c.clock.as_ref()) / 1000,
            None => Utc::now().timestamp(),
        }
    }

    /// `X-Bridge-Signature` value: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
    pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key size");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Posts a webhook body with the given headers, none added.
    pub async fn post_webhook(
        &self,
        body: Vec<u8>,
        content_type: Option<&str>,
        signature: Option<String>,
    ) -> reqwest::Response {
        let mut request = self.http.post(format!("{}/v1/webhooks/pim", self.url)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        if let Some(signature) = signature {
            request = request.header("X-Bridge-Signature", signature);
        }
        request.send().await.expect("POST /v1/webhooks/pim")
    }

    /// Posts a body as JSON, signed now with the current secret.
    pub async fn webhook(&self, body: Vec<u8>) -> reqwest::Response {
        let signature = Bridge::sign(&self.secret, self.signing_time(), &body);
        self.post_webhook(body, Some("application/json"), Some(signature)).await
    }

    /// Posts a signed webhook body too large to be taken: answers the status, or `None` when the
    /// bridge answered and closed the connection before the client had written the whole body
    /// (the client then sees a broken pipe, not the answer).
    pub async fn webhook_too_large(&self, body: Vec<u8>) -> Option<StatusCode> {
        let signature = Bridge::sign(&self.secret, self.signing_time(), &body);
        let sent = self
            .http
            .post(format!("{}/v1/webhooks/pim", self.url))
            .header("Content-Type", "application/json")
            .header("X-Bridge-Signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(answer) => Some(answer.status()),
            Err(e) if e.is_request() => None,
            Err(e) => panic!("POST /v1/webhooks/pim: {e}"),
        }
    }

    /// Delivers events (one object, or a batch for several) and insists on 202; answers the body.
    pub async fn deliver(&self, events: &[&Event]) -> Value {
        let body = match events {
            [one] => one.body(),
            many => serde_json::to_vec(&batch(many)).unwrap(),
        };
        let (status, answer) = read_answer(self.webhook(body).await).await;
        assert_eq!(status, StatusCode::ACCEPTED, "webhook answer: {answer}");
        answer
    }

    /// Any API call; a `None` token sends no `Authorization` header.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        read_answer(response).await
    }

    /// An API call with the admin token.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.api(method, path, Some(&self.admin_token), body).await
    }

    /// Creates an API token (admin); answers the whole 201 body (`id`, `name`, `role`, `token`).
    pub async fn create_token(&self, name: &str, role: &str) -> Value {
        let (status, body) = self
            .admin(Method::POST, "/v1/tokens", Some(json!({"name": name, "role": role})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "POST /v1/tokens: {body}");
        body
    }

    /// Registers an app for the target with the admin token; answers its id.
    pub async fn register_app(&self, target: &Target) -> String {
        let name = format!("app-{}", short_id());
        let (status, app) = self
            .admin(Method::POST, "/v1/apps", Some(target.app_registration(&name)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "POST /v1/apps: {app}");
        app_id(&app)
    }

    /// Assigns a source group to an app under a target display name (admin).
    pub async fn assign_group(&self, app_id: &str, group_id: &str, target_display_name: &str) {
        let (status, body) = self
            .admin(
                Method::PUT,
                &format!("/v1/apps/{app_id}/groups/{group_id}"),
                Some(json!({"targetDisplayName": target_display_name})),
            )
            .await;
        assert!(
            status.is_success(),
            "PUT /v1/apps/{app_id}/groups/{group_id}: {status} {body}"
        );
    }

    /// Makes the principal a standing member of the group, as the directory feed does (admin).
    pub async fn put_standing_member(&self, group: &SourceGroup, principal: &Principal) {
        let (status, body) = self
            .admin(
                Method::PUT,
                &format!("/v1/groups/{}/members/{}", group.id, principal.id),
                Some(json!({"principal": {"userPrincipalName": principal.upn()}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "PUT a standing member: {body}");
    }

    /// `GET /v1/provisioning-logs` with the filters, as the token sees it; answers its `items`.
    pub async fn logs_as(&self, token: &str, filters: &[(&str, &str)]) -> (StatusCode, Vec<Value>) {
        let url = Url::parse_with_params(&format!("{}/v1/provisioning-logs", self.url), filters).expect("log query");
        let path = &url.as_str()[self.url.len()..];
        let (status, body) = self.api(Method::GET, path, Some(token), None).await;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        (status, items)
    }

    /// Polls the provisioning logs (admin) until an entry matching the filters satisfies `pred`.
    pub async fn find_log(
        &self,
        filters: &[(&str, &str)],
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, items) = self.logs_as(&self.admin_token, filters).await;
            assert_eq!(status, StatusCode::OK, "GET /v1/provisioning-logs {filters:?}");
            if let Some(found) = items.into_iter().find(|item| pred(item)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Like `find_log`, but a missing entry fails the test, showing what the log holds.
    pub async fn wait_for_log(
        &self,
        filters: &[(&str, &str)],
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        if let Some(found) = self.find_log(filters, pred, timeout).await {
            return found;
        }
        let (_, items) = self.logs_as(&self.admin_token, filters).await;
        panic!(
            "no provisioning log entry as expected for {filters:?} within {timeout:?}; entries: {}",
            serde_json::to_string_pretty(&items).unwrap()
        );
    }

    /// Waits for the entry of an event with that status (and action, if given).
    pub async fn wait_for_event_log(&self, event: &Event, status: &str, action: Option<&str>) -> Value {
        self.wait_for_log(
            &[("eventId", event.id())],
            |e| e["status"] == status && action.is_none_or(|a| e["action"] == a),
            PUSH_TIMEOUT,
        )
        .await
    }
}

/// `scim-bridge serve` on a data dir, listening on a free port, with private targets allowed.
fn serve_command(
    bin: &Path,
    data_dir: &Path,
    secret: &str,
    previous_secret: &str,
    admin_token: &str,
    store_env: &[(String, String)],
    extra_env: &[(&str, &str)],
) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .current_dir(data_dir)
        .env("SCIM_BRIDGE_LISTEN", "127.0.0.1:0")
        .env("SCIM_BRIDGE_DATA_DIR", data_dir)
        .env("SCIM_BRIDGE_WEBHOOK_SECRET", format!("{secret},{previous_secret}"))
        .env("SCIM_BRIDGE_ADMIN_TOKEN", admin_token)
        .env("SCIM_BRIDGE_ALLOW_PRIVATE_TARGETS", "true")
        .env("RUST_LOG", "info")
        .env_remove("SCIM_BRIDGE_DATABASE_URL")
        .env_remove("SCIM_BRIDGE_ENCRYPTION_KEY");
    for (key, value) in store_env {
        command.env(key, value);
    }
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command
}

/// Spawns the bridge and waits until it says where it listens; answers the process and its URL.
async fn spawn_listening(command: Command) -> (Proc, String) {
    let mut proc = Proc::spawn("scim-bridge", command);
    const READY: &str = "scim-bridge listening on ";
    let line = proc.wait_for_line(READY, BRIDGE_START_TIMEOUT).await;
    let url = line[line.find(READY).unwrap() + READY.len()..]
        .split_whitespace()
        .next()
        .expect("listening URL")
        // Whatever follows the port (a slash, a colour code) is not part of it.
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .to_string();
    (proc, url)
}

pub fn app_id(app: &Value) -> String {
    app["id"]
        .as_str()
        .unwrap_or_else(|| panic!("app without id: {app}"))
        .to_string()
}

/// Whether a `test-connection` answer says the probe succeeded.
pub fn connection_test_succeeded(status: StatusCode, body: &Value) -> bool {
    if !status.is_success() {
        return false;
    }
    for key in ["ok", "success", "succeeded", "connected"] {
        if let Some(ok) = body[key].as_bool() {
            return ok;
        }
    }
    if let Some(s) = body["status"].as_str().or(body["result"].as_str()) {
        return matches!(
            s.to_ascii_lowercase().as_str(),
            "ok" | "success" | "succeeded" | "passed" | "connected"
        );
    }
    true
}

// ---------------------------------------------------------------------------------------------
// A bridge with one app for one target

/// A bridge, a target, and an app registered for that target.
pub struct Stack {
    pub bridge: Bridge,
    pub target: Target,
    pub app_id: String,
}

impl Stack {
    pub async fn start(kind: Kind) -> Option<Stack> {
        Stack::start_with(kind, &[]).await
    }

    /// With extra environment for the bridge (see `Bridge::start_with`).
    pub async fn start_with(kind: Kind, bridge_env: &[(&str, &str)]) -> Option<Stack> {
        let target = target(kind).await?;
        let bridge = Bridge::start_with(bridge_env).await;
        let app_id = bridge.register_app(&target).await;
        Some(Stack { bridge, target, app_id })
    }

    /// A new source group assigned to the app under a new target display name.
    pub async fn assigned_group(&self) -> (SourceGroup, String) {
        let group = SourceGroup::new();
        let target_name = format!("Target {}", short_id());
        self.bridge.assign_group(&self.app_id, &group.id, &target_name).await;
        (group, target_name)
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook events (SPEC section 2)

#[derive(Clone, Debug)]
pub struct Principal {
    pub id: String,
    pub user_principal_name: String,
    pub display_name: String,
    pub given_name: String,
    pub surname: String,
}

impl Principal {
    pub fn new() -> Principal {
        let tag = short_id();
        Principal {
            id: uuid::Uuid::new_v4().to_string(),
            user_principal_name: format!("ada.{tag}@contoso.test"),
            display_name: format!("Ada Lovelace {tag}"),
            given_name: "Ada".to_string(),
            surname: format!("Lovelace {tag}"),
        }
    }

    pub fn upn(&self) -> &str {
        &self.user_principal_name
    }
}

#[derive(Clone, Debug)]
pub struct SourceGroup {
    pub id: String,
    pub display_name: String,
}

impl SourceGroup {
    pub fn new() -> SourceGroup {
        SourceGroup {
            id: uuid::Uuid::new_v4().to_string(),
            display_name: format!("Exchange L3 {}", short_id()),
        }
    }
}

/// One `privilegedAccessGroupAssignmentScheduleRequest`, built from defaults and changed with
/// the methods below.
#[derive(Clone, Debug)]
pub struct Event {
    pub json: Value,
}

pub fn batch(events: &[&Event]) -> Value {
    json!({"value": events.iter().map(|e| e.json.clone()).collect::<Vec<_>>()})
}

impl Event {
    /// A self-activation of membership, provisioned, starting now, for two hours.
    pub fn activation(principal: &Principal, group: &SourceGroup) -> Event {
        let now = rfc3339(Utc::now());
        Event {
            json: json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "action": "selfActivate",
                "accessId": "member",
                "principalId": principal.id,
                "groupId": group.id,
                "status": "Provisioned",
                "createdDateTime": now,
                "justification": "incident 4711",
                "scheduleInfo": {
                    "startDateTime": now,
                    "expiration": {"type": "afterDuration", "duration": "PT2H"}
                },
                "principal": {
                    "userPrincipalName": principal.user_principal_name,
                    "displayName": principal.display_name,
                    "givenName": principal.given_name,
                    "surname": principal.surname,
                    "mail": principal.user_principal_name,
                },
                "group": {
                    "displayName": group.display_name,
                    "membershipRule": null,
                    "onPremisesSyncEnabled": false
                }
            }),
        }
    }

    /// The deactivation of this activation: a new request, created after it.
    pub fn deactivation(&self) -> Event {
        let created: DateTime<Utc> = self.json["createdDateTime"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(Utc::now);
        let later = Utc::now().max(created + chrono::Duration::seconds(1));
        self.clone()
            .new_id()
            .action("selfDeactivate")
            .set("/createdDateTime", json!(rfc3339(later)))
            .set("/justification", json!("done"))
    }

    pub fn id(&self) -> &str {
        self.json["id"].as_str().expect("event id")
    }

    pub fn upn(&self) -> &str {
        self.json["principal"]["userPrincipalName"]
            .as_str()
            .expect("principal.userPrincipalName")
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).unwrap()
    }

    /// Sets the value at a JSON pointer, creating objects on the way.
    pub fn set(mut self, pointer: &str, value: Value) -> Event {
        let mut node = &mut self.json;
        for key in pointer.trim_start_matches('/').split('/') {
            if !node.is_object() {
                *node = json!({});
            }
            node = node
                .as_object_mut()
                .unwrap()
                .entry(key.to_string())
                .or_insert(Value::Null);
        }
        *node = value;
        self
    }

    /// Removes the field at a JSON pointer.
    pub fn without(mut self, pointer: &str) -> Event {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        if let Some(object) = self.json.pointer_mut(parent).and_then(Value::as_object_mut) {
            object.remove(key);
        }
        self
    }

    pub fn new_id(self) -> Event {
        self.set("/id", json!(uuid::Uuid::new_v4().to_string()))
    }

    pub fn action(self, action: &str) -> Event {
        self.set("/action", json!(action))
    }

    pub fn access(self, access_id: &str) -> Event {
        self.set("/accessId", json!(access_id))
    }

    pub fn status(self, status: &str) -> Event {
        self.set("/status", json!(status))
    }

    /// Starts (and was created) at that time.
    pub fn starting(self, start: DateTime<Utc>) -> Event {
        self.set("/createdDateTime", json!(rfc3339(start)))
            .set("/scheduleInfo/startDateTime", json!(rfc3339(start)))
    }

    /// Ends after an ISO 8601 duration.
    pub fn duration(self, duration: &str) -> Event {
        self.set(
            "/scheduleInfo/expiration",
            json!({"type": "afterDuration", "duration": duration}),
        )
    }

    pub fn ending_at(self, end: DateTime<Utc>) -> Event {
        self.set(
            "/scheduleInfo/expiration",
            json!({"type": "afterDateTime", "endDateTime": rfc3339(end)}),
        )
    }
}

/// The per-event `status`es of a batch answer.
pub fn batch_statuses(answer: &Value) -> Vec<String> {
    answer["events"]
        .as_array()
        .unwrap_or_else(|| panic!("answer without events: {answer}"))
        .iter()
        .map(|e| e["status"].as_str().unwrap_or("<none>").to_string())
        .collect()
}

/// The status of a single-event answer: `events[0].status`, or a top-level `status`.
pub fn single_status(answer: &Value) -> String {
    answer["events"][0]["status"]
        .as_str()
        .or(answer["status"].as_str())
        .unwrap_or_else(|| panic!("answer without an event status: {answer}"))
        .to_string()
}
