//! A Microsoft Graph client: client-credentials sign-in, paging, throttling answers, timeouts, and
//! the same address rules as SCIM targets. It never sleeps: a 429 or 503 comes back as
//! `GraphError::Throttled` with the wait Graph asked for, and the poller schedules its next poll
//! on the bridge's clock.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use crate::clock::Millis;
use crate::config::GraphConfig;
use crate::scim::{TargetAddressesOnly, is_refused_address};

/// When Graph throttles without saying how long to wait.
const DEFAULT_RETRY_AFTER_MS: Millis = 10_000;
/// At most this many pages per listing: a runaway `@odata.nextLink` chain cannot hold a poller.
const MAX_PAGES: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Graph answered {status} (throttled): next attempt in {}s", (retry_after_ms + 999) / 1000)]
    Throttled { status: u16, retry_after_ms: Millis },
    #[error("Graph answered {status} to {what}: {detail}")]
    Status { status: u16, what: String, detail: String },
    #[error("Graph unreachable ({what}): {detail}")]
    Network { what: String, detail: String },
    #[error("sign-in at the Graph authority failed: {0}")]
    SignIn(String),
    #[error("Graph answered something unexpected to {what}: {detail}")]
    Unexpected { what: String, detail: String },
}

impl GraphError {
    /// The `outcome` label of `scim_bridge_source_polls_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "throttled",
            _ => "failure",
        }
    }
}

pub type GraphResult<T> = Result<T, GraphError>;

/// A listing, all pages read.
#[derive(Debug, Default)]
pub struct Listing {
    pub items: Vec<Value>,
    /// The `@odata.deltaLink` of a delta query's last page.
    pub delta_link: Option<String>,
}

pub struct GraphClient {
    http: reqwest::Client,
    config: GraphConfig,
    /// Origin of SCIM_BRIDGE_GRAPH_URL: paging links elsewhere are refused (the token never
    /// follows a link off Graph).
    origin: String,
    scope: String,
    token: Mutex<Option<(String, Instant)>>,
}

/// Refuses a URL whose host is an address literal the bridge must not reach (a host name is
/// checked by the resolver at connect time).
fn check_literal_host(url: &url::Url, allow_private: bool, name: &str) -> anyhow::Result<()> {
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>()
        && is_refused_address(ip, allow_private)
    {
        anyhow::bail!(
            "{name} points to {ip}, a private or metadata address (set SCIM_BRIDGE_ALLOW_PRIVATE_TARGETS for a local test server)"
        );
    }
    Ok(())
}

impl GraphClient {
    pub fn new(config: GraphConfig, allow_private: bool) -> anyhow::Result<Self> {
        let graph = url::Url::parse(&config.url)?;
        let authority = url::Url::parse(&config.authority)?;
        check_literal_host(&graph, allow_private, "SCIM_BRIDGE_GRAPH_URL")?;
        check_literal_host(&authority, allow_private, "SCIM_BRIDGE_GRAPH_AUTHORITY")?;
        let origin = graph.origin().ascii_serialization();
        let scope = format!("{origin}/.default");
        let http = crate::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("scim-bridge/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(TargetAddressesOnly::new(allow_private))
            .build()?;
        Ok(Self {
            http,
            config,
            origin,
            scope,
            token: Mutex::new(None),
        })
    }

    /// `SCIM_BRIDGE_GRAPH_URL` joined with a path and query.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.config.url)
    }

    async fn access_token(&self, fresh: bool) -> GraphResult<String> {
        let mut cached = self.token.lock().await;
        if !fresh
            && let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let url = format!("{}/{}/oauth2/v2.0/token", self.config.authority, self.config.tenant_id);
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.config.client_id.as_str()),
            ("client_secret", self.config.client_secret.expose()),
            ("scope", self.scope.as_str()),
        ];
        let answer = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|e| GraphError::SignIn(format!("token endpoint unreachable: {}", e.without_url())))?;
        let status = answer.status();
        let body: Value = answer
            .json()
            .await
            .map_err(|_| GraphError::SignIn(format!("the token endpoint answered {status} without JSON")))?;
        if !status.is_success() {
            let reason = body
                .get("error_description")
                .or_else(|| body.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Err(GraphError::SignIn(format!(
                "the token endpoint answered {status}: {}",
                reason.chars().take(300).collect::<String>()
            )));
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::SignIn("the token endpoint answered no access_token".into()))?
            .to_string();
        let lifetime = body.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
        // Renewed a little before it ends, so a request never leaves with a token about to expire.
        let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(60).max(lifetime / 2));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// GET one URL as JSON. A 401 fetches a new token and tries once more; 429 and 503 answer
    /// `Throttled` with Graph's `Retry-After`.
    pub async fn get(&self, url: &str, what: &str) -> GraphResult<Value> {
        let mut fresh = false;
        loop {
            let token = self.access_token(fresh).await?;
            let answer = self
                .http
                .get(url)
                .bearer_auth(&token)
                .header("Accept", "application/json")
                .send()
                .await
                .map_err(|e| GraphError::Network {
                    what: what.into(),
                    detail: e.without_url().to_string(),
                })?;
            let status = answer.status().as_u16();
            if status == 401 && !fresh {
                fresh = true;
                continue;
            }
            if status == 429 || status == 503 {
                let retry_after_ms =
                    parse_retry_after(answer.headers().get("retry-after")).unwrap_or(DEFAULT_RETRY_AFTER_MS);
                return Err(GraphError::Throttled { status, retry_after_ms });
            }
            let bytes = answer.bytes().await.map_err(|e| GraphError::Network {
                what: what.into(),
                detail: e.without_url().to_string(),
            })?;
            if !(200..300).contains(&status) {
                return Err(GraphError::Status {
                    status,
                    what: what.into(),
                    detail: error_detail(&bytes),
                });
            }
            return serde_json::from_slice(&bytes).map_err(|e| GraphError::Unexpected {
                what: what.into(),
                detail: format!("not JSON: {e}"),
            });
        }
    }

    /// Reads every page of a collection, following `@odata.nextLink`; a delta query's last page
    /// gives its `@odata.deltaLink`.
    pub async fn list(&self, first: &str, what: &str) -> GraphResult<Listing> {
        let mut listing = Listing::default();
        let mut next = Some(first.to_string());
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(GraphError::Unexpected {
                    what: what.into(),
                    detail: format!("more than {MAX_PAGES} pages"),
                });
            }
            let page = self.get(&url, what).await?;
            match page.get("value") {
                Some(Value::Array(items)) => listing.items.extend(items.iter().cloned()),
                _ => {
                    return Err(GraphError::Unexpected {
                        what: what.into(),
                        detail: "a page without a `value` array".into(),
                    });
                }
            }
            if let Some(link) = page.get("@odata.nextLink").and_then(Value::as_str) {
                next = Some(self.own_link(link, what)?);
            }
            if let Some(link) = page.get("@odata.deltaLink").and_then(Value::as_str) {
                listing.delta_link = Some(self.own_link(link, what)?);
            }
        }
        Ok(listing)
    }

    /// A link Graph handed out, if it points to Graph itself: the token never goes elsewhere.
    pub fn own_link(&self, link: &str, what: &str) -> GraphResult<String> {
        let same_origin = url::Url::parse(link).is_ok_and(|u| u.origin().ascii_serialization() == self.origin);
        if same_origin {
            Ok(link.to_string())
        } else {
            Err(GraphError::Unexpected {
                what: what.into(),
                detail: "a paging link to another origin than SCIM_BRIDGE_GRAPH_URL's".into(),
            })
        }
    }
}

fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Millis> {
    let s = value?.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(secs as Millis * 1000);
    }
    let at = chrono::DateTime::parse_from_rfc2822(s).ok()?;
    Some((at.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0))
}

fn error_detail(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let code = v.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
            let message = v.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
            format!("{code} {message}").trim().to_string()
        }
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    if text.is_empty() {
        "no detail given".into()
    } else {
        text.chars().take(300).collect()
    }
}

/// An OData string literal: single quotes doubled.
pub fn odata_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes a query value (OData expressions hold spaces, quotes and `$`).
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> GraphConfig {
        GraphConfig {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: crate::config::Secret::new("s"),
            authority: "https://login.microsoftonline.com".into(),
            url: url.into(),
            poll_interval_ms: 15_000,
        }
    }

    #[test]
    fn private_graph_addresses_are_refused_unless_allowed() {
        assert!(GraphClient::new(config("http://127.0.0.1:9/v1.0"), false).is_err());
        assert!(GraphClient::new(config("http://169.254.169.254/v1.0"), true).is_err());
        assert!(GraphClient::new(config("http://127.0.0.1:9/v1.0"), true).is_ok());
    }

    #[test]
    fn paging_links_stay_on_graph() {
        let client = GraphClient::new(config("https://graph.microsoft.com/v1.0"), false).unwrap();
        assert!(
            client
                .own_link("https://graph.microsoft.com/v1.0/groups/delta?$skiptoken=x", "t")
                .is_ok()
        );
        assert!(client.own_link("https://evil.example/v1.0/x", "t").is_err());
        assert_eq!(odata_literal("o'brien"), "'o''brien'");
    }
}
