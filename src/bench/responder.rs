//! A SCIM responder written for the benchmark: it stands in for a target as fast as the machine
//! allows, not for a target's behaviour. It keeps the users it was told about or was sent (so a
//! cycle's users are found, as they are when they already exist at the target), the one group
//! always is found, and it records each request with the instant it was handled, so a figure
//! can end at the moment the target had the request, not when the bridge read the answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub body: Bytes,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    /// Users by `externalId` and by lower-cased `userName` (the two attributes the bridge matches on).
    users: Mutex<HashMap<(bool, String), Arc<Value>>>,
    /// Every request, while `recording`; the throughput figure turns it off (it only counts).
    seen: Mutex<Vec<Seen>>,
    recording: AtomicBool,
    /// Every PATCH body with its instant: what the latency figures wait for.
    patches: Mutex<Vec<(Instant, Bytes)>>,
    patched: tokio::sync::Notify,
    requests: AtomicU64,
    members_added: AtomicU64,
}

#[derive(Clone)]
pub struct Responder(Arc<Inner>);

/// The id the responder gives the user with this `externalId` (the principal id under the default
/// mapping): known beforehand, so a figure can wait for the PATCH that names that user.
pub fn user_id(external_id: &str) -> String {
    format!("u-{external_id}")
}

/// The user the bridge would send for a principal the benchmark made (`{principal}@bench.test`,
/// "Bench User"): found with these attributes, nothing is left to update.
pub fn bench_user(principal: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": user_id(principal), "externalId": principal, "userName": format!("{principal}@bench.test"),
        "displayName": "Bench User", "name": {"formatted": "Bench User"}, "active": true
    })
}

impl Responder {
    /// Listens on a free loopback port; answers the responder and its base URL.
    pub async fn start() -> anyhow::Result<(Responder, String)> {
        let responder = Responder(Arc::new(Inner::default()));
        responder.0.recording.store(true, Ordering::Relaxed);
        let app = Router::new().fallback(handle).with_state(responder.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/scim/v2", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((responder, url))
    }

    /// Takes the requests recorded so far.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.seen.lock().expect("lock"))
    }

    pub fn record(&self, on: bool) {
        self.0.recording.store(on, Ordering::Relaxed);
        self.take();
    }

    /// Users that already exist at the target.
    pub fn know(&self, users: impl IntoIterator<Item = Value>) {
        let mut known = self.0.users.lock().expect("lock");
        for user in users {
            insert_user(&mut known, Arc::new(user));
        }
    }

    /// Requests handled and members added (summed over PATCH add operations) since the start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.0.requests.load(Ordering::Relaxed),
            self.0.members_added.load(Ordering::Relaxed),
        )
    }

    /// How many PATCHes have been handled: a starting point for `patch_naming`.
    pub fn patch_mark(&self) -> usize {
        self.0.patches.lock().expect("lock").len()
    }

    /// The instant the first PATCH since `mark` whose body contains `needle` was handled.
    pub async fn patch_naming(&self, needle: &str, mark: usize, timeout: Duration) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut from = mark;
        loop {
            let notified = self.0.patched.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let patches = self.0.patches.lock().expect("lock");
                if let Some((at, _)) = patches[from.min(patches.len())..]
                    .iter()
                    .find(|(_, body)| contains(body, needle.as_bytes()))
                {
                    return Some(*at);
                }
                from = patches.len();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn insert_user(known: &mut HashMap<(bool, String), Arc<Value>>, user: Arc<Value>) {
    if let Some(external) = user["externalId"].as_str() {
        known.insert((true, external.to_string()), user.clone());
    }
    if let Some(name) = user["userName"].as_str() {
        known.insert((false, name.to_lowercase()), user);
    }
}

/// The user a `filter=externalId eq "..."` or `userName eq "..."` names, if the responder has it.
fn find(r: &Responder, uri: &Uri) -> Option<Arc<Value>> {
    let query = uri.query()?;
    let (_, filter) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "filter")?;
    let (attribute, rest) = filter.split_once(" eq ")?;
    let value = rest
        .trim()
        .trim_matches('"')
        .replace("\\\"", "\"")
        .replace("\\\\", "\\");
    let key = match attribute.trim() {
        "externalId" => (true, value),
        "userName" => (false, value.to_lowercase()),
        _ => return None,
    };
    r.0.users.lock().expect("lock").get(&key).cloned()
}

const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// Members a PatchOp adds (the cycle's chunks and the pushes' single adds).
fn added(body: &[u8]) -> u64 {
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    patch["Operations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|op| op["op"] == "add" && op["path"] == "members")
        .map(|op| op["value"].as_array().map_or(0, |v| v.len() as u64))
        .sum()
}

async fn handle(State(r): State<Responder>, method: Method, uri: Uri, body: Bytes) -> Response {
    let at = Instant::now();
    r.0.requests.fetch_add(1, Ordering::Relaxed);
    let path = uri.path().trim_start_matches("/scim/v2").to_string();
    let answer = match (&method, path.as_str()) {
        (&Method::GET, "/Users") => {
            let found: Vec<Value> = find(&r, &uri).map(|u| (*u).clone()).into_iter().collect();
            (
                StatusCode::OK,
                axum::Json(json!({"schemas": [LIST], "totalResults": found.len(), "Resources": found})),
            )
                .into_response()
        }
        (&Method::POST, "/Users") => {
            let mut user: Value = serde_json::from_slice(&body).unwrap_or_default();
            let id = user["externalId"]
                .as_str()
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), user_id);
            user["id"] = json!(id);
            let user = Arc::new(user);
            insert_user(&mut r.0.users.lock().expect("lock"), user.clone());
            (StatusCode::CREATED, axum::Json((*user).clone())).into_response()
        }
        (&Method::GET, "/Groups") => (
            StatusCode::OK,
            axum::Json(json!({"schemas": [LIST], "totalResults": 1,
                "Resources": [{"id": "bench-group", "displayName": "Bench"}]})),
        )
            .into_response(),
        (&Method::POST, "/Groups") => (
            StatusCode::CREATED,
            axum::Json(json!({"id": "bench-group", "displayName": "Bench"})),
        )
            .into_response(),
        (&Method::PATCH, _) => StatusCode::NO_CONTENT.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    };
    if method == Method::PATCH {
        r.0.members_added.fetch_add(added(&body), Ordering::Relaxed);
        r.0.patches.lock().expect("lock").push((at, body.clone()));
        r.0.patched.notify_waiters();
    }
    if r.0.recording.load(Ordering::Relaxed) {
        r.0.seen.lock().expect("lock").push(Seen {
            method,
            uri: uri.to_string(),
            body,
            at,
        });
    }
    answer
}
