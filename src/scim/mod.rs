//! The SCIM 2.0 client: users, groups, PatchOp, filter escaping, retries and target quirks. It
//! never sees the database: callers pass ids in and get ids and a trace of every call back.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use crate::config::Secret;
use crate::types::{HttpTrace, Step};

const SCHEMA_GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const SCHEMA_PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

#[derive(Debug, Clone)]
pub enum Auth {
    Bearer {
        token: Secret,
    },
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        scope: Option<String>,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ScimError {
    #[error("target answered {status}: {detail}")]
    Status {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("network error: {0}")]
    Network(String),
    /// The token endpoint failed; `status` is its HTTP answer, `None` when it was unreachable.
    #[error("could not get an access token: {detail}")]
    Token { status: Option<u16>, detail: String },
    #[error("unexpected answer from the target: {0}")]
    Protocol(String),
    /// Nothing was sent: this replica's lease on the app ran out (see `crate::lease`).
    #[error("not sent: this replica no longer holds the app's lease")]
    LeaseLost,
}

impl ScimError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
    /// 401 and 403, from the target or its token endpoint (which also says 400 for a bad
    /// client): the credentials are wrong.
    pub fn is_auth_refusal(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
            || matches!(
                self,
                Self::Token {
                    status: Some(400 | 401 | 403),
                    ..
                }
            )
    }
    /// 429 and 503, from the target or its token endpoint, never count as a failure of the app.
    pub fn is_throttle(&self) -> bool {
        matches!(self.status(), Some(429 | 503))
            || matches!(
                self,
                Self::Token {
                    status: Some(429 | 503),
                    ..
                }
            )
    }
    /// The request may have been applied although no answer says so: a network error or a
    /// gateway/server error. Such a write is checked at the target before it is sent again.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Network(_)) || matches!(self.status(), Some(500 | 502 | 504))
    }
    /// Worth trying again later: throttling, server errors, an unreachable target.
    pub fn is_transient(&self) -> bool {
        self.is_retryable()
            || matches!(
                self,
                Self::Token {
                    status: None | Some(429 | 500..),
                    ..
                }
            )
    }
    /// How long the target asked to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
    fn is_retryable(&self) -> bool {
        match self {
            Self::Network(_) | Self::LeaseLost => true,
            // 501 Not Implemented says what the target can't do, not that it is busy.
            Self::Status { status, .. } => *status == 429 || (*status >= 500 && *status != 501),
            _ => false,
        }
    }
}

pub type ScimResult<T> = Result<T, ScimError>;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Connect to private addresses too (SCIM_BRIDGE_ALLOW_PRIVATE_TARGETS).
    pub allow_private: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            allow_private: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

pub struct ScimClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    access_token: Mutex<Option<(String, Instant)>>,
    /// The app this client talks to, as a metrics label (empty: not counted).
    metrics_app: String,
    /// Requests sent so far (the dispatcher paces each one).
    sent: AtomicU64,
}

/// Special-purpose addresses (also in their IPv6 forms): loopback, RFC 1918, link-local, CGNAT,
/// multicast, reserved, IETF protocol assignments, benchmarking, ULA, 6to4. SCIM targets and
/// token endpoints there are refused unless private targets are allowed.
pub fn is_private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast() // 224.0.0.0/4
                || a >= 240 // reserved 240.0.0.0/4, broadcast included
                || a == 0
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // 6to4 carries any IPv4 address, private ones included: refused whole.
                || s[0] == 0x2002
                || embedded_ipv4(v6).is_some_and(|v4| is_private_address(IpAddr::V4(v4)))
        }
    }
}

/// Cloud instance metadata services: they hand out the host's credentials, so they are refused
/// even when private targets are allowed.
pub fn is_metadata_address(ip: IpAddr) -> bool {
    const AWS_IPV6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::new(169, 254, 169, 254),
        IpAddr::V6(v6) => v6 == AWS_IPV6 || embedded_ipv4(v6).is_some_and(|v4| is_metadata_address(IpAddr::V4(v4))),
    }
}

/// Whether the bridge may connect to `ip` as a SCIM target or token endpoint.
pub fn is_refused_address(ip: IpAddr, allow_private: bool) -> bool {
    is_metadata_address(ip) || (!allow_private && is_private_address(ip))
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible or NAT64 (64:ff9b::/96) address.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let tail = || std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(tail())
    } else {
        None
    }
}

/// Resolves host names like the system does, but never to a refused address: a name that was
/// public when the app was registered cannot later be pointed inside (DNS rebinding), and no
/// name ever reaches a cloud metadata service.
pub(crate) struct TargetAddressesOnly {
    allow_private: bool,
}

impl TargetAddressesOnly {
    pub(crate) fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }
}

impl reqwest::dns::Resolve for TargetAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| UnusableName(format!("the name {host} did not resolve ({e})")))?
                .filter(|a| !is_refused_address(a.ip(), allow_private))
                .collect();
            if addrs.is_empty() {
                return Err(UnusableName(format!(
                    "{host} resolves only to refused (private or metadata) addresses"
                ))
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why the resolver gave no address for a target's name; a network error says this rather than
/// reqwest's bare "error sending request".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UnusableName(String);

/// A request that got no answer, as a `ScimError`: its cause when the name gave no address,
/// otherwise reqwest's message (never the URL, which may carry a secret in its query).
fn network_error(e: reqwest::Error) -> ScimError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(name) = c.downcast_ref::<UnusableName>() {
            return ScimError::Network(name.0.clone());
        }
        cause = c.source();
    }
    ScimError::Network(e.without_url().to_string())
}

/// Escapes a value for a SCIM filter string literal.
pub fn filter_literal(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn resources(body: &Value) -> Vec<&Value> {
    body.get("Resources")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// A resource's `id` as text: targets may answer strings or numbers (SPEC §4).
pub fn id_of(v: &Value) -> Option<String> {
    v.get("id").and_then(id_text)
}

/// An id (a resource's, a member's `value`) as text; ids are compared as strings.
fn id_text(id: &Value) -> Option<String> {
    match id {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn error_detail(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let detail = v.get("detail").and_then(Value::as_str).unwrap_or("");
            let scim_type = v.get("scimType").and_then(Value::as_str).unwrap_or("");
            let text = format!("{scim_type} {detail}").trim().to_string();
            if text.is_empty() {
                "no detail given".into()
            } else {
                text.chars().take(300).collect()
            }
        }
        Err(_) => String::from_utf8_lossy(body)
            .chars()
            .take(200)
            .collect::<String>()
            .trim()
            .to_string(),
    }
}

fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let s = value?.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(s).ok()?;
    let left = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(left.max(0) as u64))
}

fn patch(operations: Value) -> Value {
    json!({"schemas": [SCHEMA_PATCH], "Operations": operations})
}

/// The HTTP client every app's SCIM client shares: one connection pool and one TLS set-up for
/// all apps, instead of one per app. No redirects (a target must not steer the bridge, and its
/// credentials, elsewhere); the timeouts and the address check apply to every request.
pub fn http_client(options: &ClientOptions) -> anyhow::Result<reqwest::Client> {
    Ok(crate::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .user_agent(concat!("scim-bridge/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(TargetAddressesOnly {
            allow_private: options.allow_private,
        })
        .build()?)
}

impl ScimClient {
    /// A client with an HTTP client of its own.
    pub fn new(base_url: &str, auth: Auth, options: ClientOptions) -> anyhow::Result<Self> {
        Ok(Self::with_http(http_client(&options)?, base_url, auth))
    }

    /// A client for one target on a shared HTTP client (see `http_client`).
    pub fn with_http(http: reqwest::Client, base_url: &str, auth: Auth) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            auth,
            access_token: Mutex::new(None),
            metrics_app: String::new(),
            sent: AtomicU64::new(0),
        }
    }

    /// How many requests this client has sent to the target.
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Labels this client's request metrics with the app it serves.
    pub fn for_app(mut self, app_id: &str) -> Self {
        self.metrics_app = app_id.to_string();
        self
    }

    async fn bearer(&self, refresh: bool) -> ScimResult<String> {
        match &self.auth {
            Auth::Bearer { token } => Ok(token.expose().to_string()),
            Auth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let mut cached = self.access_token.lock().await;
                if !refresh
                    && let Some((token, until)) = cached.as_ref()
                    && Instant::now() < *until
                {
                    return Ok(token.clone());
                }
                let mut form = vec![("grant_type", "client_credentials")];
                if let Some(scope) = scope.as_deref().filter(|s| !s.is_empty()) {
                    form.push(("scope", scope));
                }
                let answer = self
                    .http
                    .post(token_url)
                    .basic_auth(client_id, Some(client_secret.expose()))
                    .form(&form)
                    .send()
                    .await
                    .map_err(|e| ScimError::Token {
                        status: None,
                        detail: format!("token endpoint unreachable: {}", e.without_url()),
                    })?;
                let status = answer.status();
                let body: Value = answer.json().await.map_err(|_| ScimError::Token {
                    status: Some(status.as_u16()),
                    detail: format!("token endpoint answered {status} without JSON"),
                })?;
                if !status.is_success() {
                    let error = body.get("error").and_then(Value::as_str).unwrap_or("unknown error");
                    return Err(ScimError::Token {
                        status: Some(status.as_u16()),
                        detail: format!("token endpoint answered {status}: {error}"),
                    });
                }
                let token = body
                    .get("access_token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ScimError::Token {
                        status: Some(status.as_u16()),
                        detail: "token endpoint answered without access_token".into(),
                    })?
                    .to_string();
                let lifetime = body.get("expires_in").and_then(Value::as_u64).unwrap_or(300);
                // Refresh a little early so a token never expires in flight.
                let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(30).max(1));
                *cached = Some((token.clone(), until));
                Ok(token)
            }
        }
    }

    /// One SCIM call: one HTTP attempt (and, with OAuth, one more after a 401 with a fresh access
    /// token), traced as a step. It never sleeps: a request that must be retried (network error,
    /// 5xx, 429, `Retry-After`) comes back as an error, and the caller reschedules its work on the
    /// bridge's clock instead of holding up the app's other work.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        step: &str,
        steps: &mut Vec<Step>,
    ) -> ScimResult<(u16, Option<Value>)> {
        let url = format!("{}{}", self.base, path);
        let shown_path = if query.is_empty() {
            path.to_string()
        } else {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{path}?{}", q.join("&"))
        };
        let mut refreshed = false;
        loop {
            let token = match self.bearer(refreshed).await {
                Ok(t) => t,
                Err(e) => {
                    steps.push(Step::note(step, "failure", e.to_string()));
                    return Err(e);
                }
            };
            // Checked immediately before the request leaves, after the token fetch (which can
            // take its time): a replica whose lease ran out meanwhile sends nothing.
            if !crate::lease::may_act() {
                steps.push(Step::note(step, "skipped", ScimError::LeaseLost.to_string()));
                return Err(ScimError::LeaseLost);
            }
            // A client span per request (SPEC §10): the method, the route template and the status,
            // never the path's ids, the query or the body. The target gets `traceparent` only.
            let route = crate::trace::route_template(path);
            let span = tracing::info_span!(target: crate::trace::TARGET, "scim",
                otel.name = format!("{method} {route}"), otel.kind = "client",
                http.request.method = %method, http.route = %route,
                http.response.status_code = tracing::field::Empty);
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .header("accept", "application/scim+json, application/json");
            if let Some(traceparent) = crate::trace::traceparent(&span) {
                request = request.header("traceparent", traceparent);
            }
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/scim+json")
                    .body(serde_json::to_vec(body).expect("JSON body"));
            }
            let started = Instant::now();
            self.sent.fetch_add(1, Ordering::Relaxed);
            let result = request.send().instrument(span.clone()).await;
            if let Ok(answer) = &result {
                span.record("http.response.status_code", answer.status().as_u16());
            }
            drop(span);
            let mut trace = HttpTrace {
                method: method.to_string(),
                path: shown_path.clone(),
                status: None,
                duration_ms: 0,
            };
            let outcome = match result {
                Err(e) => Err(network_error(e)),
                Ok(answer) => {
                    let status = answer.status();
                    let retry_after = parse_retry_after(answer.headers().get("retry-after"));
                    trace.status = Some(status.as_u16());
                    match answer.bytes().await {
                        Err(e) => Err(network_error(e)),
                        Ok(bytes) if status.is_success() => {
                            let json = if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                                None
                            } else {
                                serde_json::from_slice(&bytes).ok()
                            };
                            Ok((status.as_u16(), json))
                        }
                        Ok(bytes) => Err(ScimError::Status {
                            status: status.as_u16(),
                            detail: error_detail(&bytes),
                            retry_after,
                        }),
                    }
                }
            };
            trace.duration_ms = started.elapsed().as_millis() as i64;
            crate::metrics::scim_request(&self.metrics_app, started.elapsed());
            match outcome {
                Ok(ok) => {
                    steps.push(Step {
                        step: step.into(),
                        status: "success".into(),
                        detail: None,
                        http: Some(trace),
                    });
                    return Ok(ok);
                }
                Err(e) if e.status() == Some(401) && matches!(self.auth, Auth::OAuth2 { .. }) && !refreshed => {
                    refreshed = true;
                    steps.push(Step {
                        step: step.into(),
                        status: "retry".into(),
                        detail: Some("401: fetching a new access token".into()),
                        http: Some(trace),
                    });
                }
                Err(e) => {
                    steps.push(Step {
                        step: step.into(),
                        status: "failure".into(),
                        detail: Some(e.to_string()),
                        http: Some(trace),
                    });
                    return Err(e);
                }
            }
        }
    }

    async fn find_one(
        &self,
        path: &str,
        filter: String,
        extra: &[(&str, &str)],
        step: &str,
        steps: &mut Vec<Step>,
    ) -> ScimResult<Option<Value>> {
        let mut query = vec![("filter", filter.as_str())];
        query.extend_from_slice(extra);
        match self.call(Method::GET, path, &query, None, step, steps).await {
            Ok((_, Some(body))) => Ok(resources(&body).first().map(|v| (*v).clone())),
            Ok((_, None)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds a user with each filter in turn (the app's `matching` order). A target that cannot
    /// filter on an attribute answers nothing or 400: go on with the next.
    pub async fn find_user(&self, filters: &[String], steps: &mut Vec<Step>) -> ScimResult<Option<Value>> {
        for filter in filters {
            match self.find_one("/Users", filter.clone(), &[], "match_user", steps).await {
                Ok(Some(user)) => return Ok(Some(user)),
                Ok(None) => {}
                Err(e) if e.status() == Some(400) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Creates a user; a 409 means it appeared meanwhile, so look it up again with `filters`.
    /// Answers its id and whether this call created it.
    pub async fn create_user(
        &self,
        user: &Value,
        filters: &[String],
        steps: &mut Vec<Step>,
    ) -> ScimResult<(String, bool)> {
        match self
            .call(Method::POST, "/Users", &[], Some(user), "create_user", steps)
            .await
        {
            Ok((_, Some(user))) => id_of(&user)
                .map(|id| (id, true))
                .ok_or_else(|| ScimError::Protocol("created user has no id".into())),
            Ok((_, None)) => Err(ScimError::Protocol("user created without a body".into())),
            Err(e) if e.status() == Some(409) => {
                let user = self
                    .find_user(filters, steps)
                    .await?
                    .ok_or_else(|| ScimError::Protocol("409 on create, yet no such user".into()))?;
                id_of(&user)
                    .map(|id| (id, false))
                    .ok_or_else(|| ScimError::Protocol("user without id".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the given attributes (an object of top-level User attributes; sub-attributes not
    /// given are left as they are).
    pub async fn update_user(
        &self,
        user_id: &str,
        changes: &Map<String, Value>,
        steps: &mut Vec<Step>,
    ) -> ScimResult<()> {
        let body = patch(json!([{"op": "replace", "value": changes}]));
        self.call(
            Method::PATCH,
            &format!("/Users/{user_id}"),
            &[],
            Some(&body),
            "update_user",
            steps,
        )
        .await?;
        Ok(())
    }

    pub async fn set_user_active(&self, user_id: &str, active: bool, steps: &mut Vec<Step>) -> ScimResult<()> {
        let body = patch(json!([{"op": "replace", "path": "active", "value": active}]));
        let step = if active { "enable_user" } else { "disable_user" };
        self.call(
            Method::PATCH,
            &format!("/Users/{user_id}"),
            &[],
            Some(&body),
            step,
            steps,
        )
        .await?;
        Ok(())
    }

    /// Reads one user; `None` when the target no longer has it (404).
    pub async fn get_user(&self, user_id: &str, steps: &mut Vec<Step>) -> ScimResult<Option<Value>> {
        match self
            .call(Method::GET, &format!("/Users/{user_id}"), &[], None, "read_user", steps)
            .await
        {
            Ok((_, user)) => Ok(user),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes one user; one the target no longer has (404) is gone already: a success.
    pub async fn delete_user(&self, user_id: &str, steps: &mut Vec<Step>) -> ScimResult<()> {
        match self
            .call(
                Method::DELETE,
                &format!("/Users/{user_id}"),
                &[],
                None,
                "delete_user",
                steps,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn find_group(&self, display_name: &str, steps: &mut Vec<Step>) -> ScimResult<Option<String>> {
        let filter = format!("displayName eq {}", filter_literal(display_name));
        let found = self
            .find_one(
                "/Groups",
                filter,
                &[("excludedAttributes", "members")],
                "resolve_group",
                steps,
            )
            .await?;
        Ok(found.as_ref().and_then(id_of))
    }

    pub async fn create_group(
        &self,
        display_name: &str,
        external_id: &str,
        steps: &mut Vec<Step>,
    ) -> ScimResult<String> {
        let body = json!({"schemas": [SCHEMA_GROUP], "displayName": display_name, "externalId": external_id});
        match self
            .call(Method::POST, "/Groups", &[], Some(&body), "create_group", steps)
            .await
        {
            Ok((_, Some(group))) => id_of(&group).ok_or_else(|| ScimError::Protocol("created group has no id".into())),
            Ok((_, None)) => Err(ScimError::Protocol("group created without a body".into())),
            Err(e) if e.status() == Some(409) => self
                .find_group(display_name, steps)
                .await?
                .ok_or_else(|| ScimError::Protocol("409 on group create, yet no such group".into())),
            Err(e) => Err(e),
        }
    }

    pub async fn add_members(&self, group_id: &str, user_ids: &[String], steps: &mut Vec<Step>) -> ScimResult<()> {
        let value: Vec<Value> = user_ids.iter().map(|id| json!({"value": id})).collect();
        let body = patch(json!([{"op": "add", "path": "members", "value": value}]));
        // Some servers keep a member twice: an add whose outcome is unknown is never resent blindly
        // (the caller reads the group first).
        let path = format!("/Groups/{group_id}");
        self.call(Method::PATCH, &path, &[], Some(&body), "add_member", steps)
            .await?;
        Ok(())
    }

    /// Removes one member: the RFC 7644 filter path, or the legacy value-array form.
    pub async fn remove_member(
        &self,
        group_id: &str,
        user_id: &str,
        legacy: bool,
        steps: &mut Vec<Step>,
    ) -> ScimResult<()> {
        let op = if legacy {
            json!({"op": "remove", "path": "members", "value": [{"value": user_id}]})
        } else {
            json!({"op": "remove", "path": format!("members[value eq {}]", filter_literal(user_id))})
        };
        let body = patch(json!([op]));
        self.call(
            Method::PATCH,
            &format!("/Groups/{group_id}"),
            &[],
            Some(&body),
            "remove_member",
            steps,
        )
        .await?;
        Ok(())
    }

    /// The member ids of a group, read from the target.
    pub async fn group_member_ids(&self, group_id: &str, steps: &mut Vec<Step>) -> ScimResult<HashSet<String>> {
        let (_, body) = self
            .call(
                Method::GET,
                &format!("/Groups/{group_id}"),
                &[("attributes", "members")],
                None,
                "read_group",
                steps,
            )
            .await?;
        let body = body.ok_or_else(|| ScimError::Protocol("group read without a body".into()))?;
        Ok(body
            .get("members")
            .and_then(Value::as_array)
            .map(|members| {
                members
                    .iter()
                    .filter_map(|m| m.get("value").and_then(id_text))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Probes the endpoint and the credentials.
    pub async fn test_connection(&self, steps: &mut Vec<Step>) -> ScimResult<()> {
        self.call(Method::GET, "/Users", &[("count", "1")], None, "test_connection", steps)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_at_connect_time() {
        use reqwest::dns::Resolve;
        let refused = TargetAddressesOnly { allow_private: false }
            .resolve("localhost".parse().unwrap())
            .await;
        assert!(refused.is_err());
        let allowed = TargetAddressesOnly { allow_private: true }
            .resolve("localhost".parse().unwrap())
            .await;
        assert!(allowed.is_ok());
        assert!(is_private_address("100.64.1.1".parse().unwrap()));
        assert!(is_private_address("::ffff:10.0.0.1".parse().unwrap()));
        assert!(is_private_address("64:ff9b::a9fe:a9fe".parse().unwrap()));
        assert!(!is_private_address("93.184.216.34".parse().unwrap()));
    }

    #[test]
    fn special_purpose_ranges_are_private() {
        for refused in [
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "192.0.0.170",
            "2002:c0a8:0101::1",
            "2002:5db8:d822::1",
            "ff02::1",
            "::ffff:224.0.0.1",
            "64:ff9b::f000:1",
            "fd00:ec2::254",
            "169.254.169.254",
        ] {
            assert!(is_private_address(refused.parse().unwrap()), "{refused}");
        }
        for public in [
            "192.0.2.1",
            "192.1.0.1",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "8.8.8.8",
        ] {
            assert!(!is_private_address(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn metadata_addresses_are_refused_even_when_private_targets_are_allowed() {
        for metadata in [
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip = metadata.parse().unwrap();
            assert!(is_metadata_address(ip), "{metadata}");
            assert!(is_refused_address(ip, true), "{metadata}");
        }
        assert!(!is_refused_address("127.0.0.1".parse().unwrap(), true));
        assert!(!is_refused_address("169.254.169.253".parse().unwrap(), true));
        assert!(is_refused_address("10.0.0.1".parse().unwrap(), false));
        assert!(!is_refused_address("8.8.8.8".parse().unwrap(), false));
    }

    #[test]
    fn ids_are_read_as_text_whether_strings_or_numbers() {
        assert_eq!(id_of(&json!({"id": 17})).as_deref(), Some("17"));
        assert_eq!(id_of(&json!({"id": "a-17"})).as_deref(), Some("a-17"));
        assert_eq!(id_of(&json!({"id": null})), None);
        assert_eq!(id_text(&json!(4_000_000_000_u64)).as_deref(), Some("4000000000"));
    }

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(filter_literal(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn error_details_come_from_scim_or_plain_bodies() {
        assert_eq!(
            error_detail(br#"{"status":"409","scimType":"uniqueness","detail":"taken"}"#),
            "uniqueness taken"
        );
        assert_eq!(error_detail(br#"{"status":400}"#), "no detail given");
        assert_eq!(error_detail(b"Bad Gateway"), "Bad Gateway");
    }
}
