//! One `Config`: defaults, then the environment. Secrets are generated into the data dir on first
//! start and wrapped so they never print.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;

use crate::clock::Millis;
use crate::crypto;

/// A value that must never reach a log line, an answer or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RateLimit {
    #[schema(minimum = 1)]
    pub requests: u32,
    #[serde(rename = "windowSeconds")]
    #[schema(minimum = 1)]
    pub window_seconds: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            requests: 5,
            window_seconds: 10,
        }
    }
}

impl std::str::FromStr for RateLimit {
    type Err = anyhow::Error;
    /// `5/10s`
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (n, w) = s.split_once('/').context("expected <requests>/<window>, like 5/10s")?;
        let requests: u32 = n.trim().parse().context("requests must be a whole number")?;
        let window_ms = parse_duration_ms(w)?;
        if requests == 0 || window_ms < 1000 {
            bail!("a rate limit needs at least 1 request and a window of at least 1s");
        }
        Ok(Self {
            requests,
            window_seconds: (window_ms / 1000) as u32,
        })
    }
}

/// `40m`, `10s`, `30d`, `2h`, `500ms`, or plain seconds.
pub fn parse_duration_ms(s: &str) -> anyhow::Result<Millis> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: i64 = digits
        .parse()
        .with_context(|| format!("`{s}` is not a duration like 40m"))?;
    let factor = match unit {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("`{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"),
    };
    Ok(n * factor)
}

/// Reading PIM for Groups from Microsoft Graph (SPEC §7): set when the tenant, client id and
/// client secret are.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// SCIM_BRIDGE_GRAPH_AUTHORITY, default `https://login.microsoftonline.com`.
    pub authority: String,
    /// SCIM_BRIDGE_GRAPH_URL, default `https://graph.microsoft.com/v1.0`.
    pub url: String,
    /// SCIM_BRIDGE_GRAPH_POLL_INTERVAL, default 15s.
    pub poll_interval_ms: Millis,
}

impl GraphConfig {
    /// Reads SCIM_BRIDGE_GRAPH_*: `None` when none of the three credentials is set; an error
    /// naming what is missing when only some are.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let tenant = var("SCIM_BRIDGE_GRAPH_TENANT_ID");
        let client = var("SCIM_BRIDGE_GRAPH_CLIENT_ID");
        let secret = var("SCIM_BRIDGE_GRAPH_CLIENT_SECRET");
        let (tenant_id, client_id, client_secret) = match (tenant, client, secret) {
            (None, None, None) => return Ok(None),
            (Some(t), Some(c), Some(s)) => (t, c, Secret::new(s)),
            (t, c, s) => {
                let missing: Vec<&str> = [
                    ("SCIM_BRIDGE_GRAPH_TENANT_ID", t.is_none()),
                    ("SCIM_BRIDGE_GRAPH_CLIENT_ID", c.is_none()),
                    ("SCIM_BRIDGE_GRAPH_CLIENT_SECRET", s.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, gone)| gone.then_some(name))
                .collect();
                bail!("reading PIM from Graph needs {} set too", missing.join(" and "));
            }
        };
        let authority =
            var("SCIM_BRIDGE_GRAPH_AUTHORITY").unwrap_or_else(|| "https://login.microsoftonline.com".into());
        let url = var("SCIM_BRIDGE_GRAPH_URL").unwrap_or_else(|| "https://graph.microsoft.com/v1.0".into());
        for (name, value) in [
            ("SCIM_BRIDGE_GRAPH_AUTHORITY", &authority),
            ("SCIM_BRIDGE_GRAPH_URL", &url),
        ] {
            let parsed = url::Url::parse(value).with_context(|| format!("{name} is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!("{name} must be an http(s) URL");
            }
        }
        let poll_interval_ms = match var("SCIM_BRIDGE_GRAPH_POLL_INTERVAL") {
            Some(v) => parse_duration_ms(&v).context("SCIM_BRIDGE_GRAPH_POLL_INTERVAL")?,
            None => 15_000,
        };
        if poll_interval_ms < 1_000 {
            bail!("SCIM_BRIDGE_GRAPH_POLL_INTERVAL must be at least 1s");
        }
        Ok(Some(Self {
            tenant_id,
            client_id,
            client_secret,
            authority: authority.trim_end_matches('/').to_string(),
            url: url.trim_end_matches('/').to_string(),
            poll_interval_ms,
        }))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// Current secret first, then the previous one during a rotation.
    pub webhook_secrets: Vec<Secret>,
    pub admin_token: Secret,
    /// Base64 keys: the current one, then the previous one during a rotation.
    pub encryption_key: Secret,
    pub sync_interval_ms: Millis,
    pub rate_limit: RateLimit,
    pub allow_private_targets: bool,
    pub log_retention_ms: Millis,
    pub log_json: bool,
    /// Connections served at once (SCIM_BRIDGE_MAX_CONNECTIONS).
    pub max_connections: usize,
    /// Request headers must arrive within this (SCIM_BRIDGE_HEADER_TIMEOUT, default 10s).
    pub header_timeout_ms: Millis,
    /// A request body must arrive within this (SCIM_BRIDGE_BODY_TIMEOUT, default 30s).
    pub body_timeout_ms: Millis,
    /// The Graph source (SPEC §7); `None`: webhooks only.
    pub graph: Option<GraphConfig>,
    /// This replica's name in the lease table (SCIM_BRIDGE_REPLICA_ID; default the host name
    /// and a random suffix, new at every start). A replica restarted under the same explicit id
    /// takes its leases back at once; under a new one they are taken over when they expire.
    pub replica_id: String,
    /// How long a lease lasts without renewal (SCIM_BRIDGE_LEASE_TTL, default 15s): a replica
    /// that dies loses its apps after at most this, and another takes them over.
    pub lease_ttl_ms: Millis,
    /// SCIM_BRIDGE_TRACE_URL: a URL with `{traceId}`, where the page links each log entry's
    /// trace (a Jaeger or Grafana address, say); `None`: the trace id is shown without a link.
    pub trace_url: Option<String>,
    /// How long access may outlive its end at an app before the end counts as over the app's
    /// objective (SCIM_BRIDGE_ACCESS_END_SLO, default 60s; an app's `accessEndSloSeconds`
    /// overrides it).
    pub access_end_slo_ms: Millis,
}

impl Config {
    /// Defaults for a data dir, with fixed secrets: what tests and `migrate` start from.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: default_database_url(&data_dir),
            data_dir,
            webhook_secrets: vec![Secret::new(crypto::random_hex(32))],
            admin_token: Secret::new(crypto::random_hex(32)),
            encryption_key: Secret::new(base64::engine::general_purpose::STANDARD.encode(crypto::random_bytes::<32>())),
            sync_interval_ms: 40 * 60_000,
            rate_limit: RateLimit::default(),
            allow_private_targets: false,
            log_retention_ms: 30 * 86_400_000,
            log_json: false,
            max_connections: 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            graph: None,
            replica_id: default_replica_id(),
            lease_ttl_ms: 15_000,
            trace_url: None,
            access_end_slo_ms: 60_000,
        }
    }

    /// Reads the environment; generates missing secrets into the data dir and says where.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let data_dir = PathBuf::from(var("SCIM_BRIDGE_DATA_DIR").unwrap_or_else(|| "./data".into()));
        create_owner_only_dir(&data_dir).with_context(|| format!("creating the data dir {}", data_dir.display()))?;
        let mut config = Self::with_data_dir(&data_dir);
        if let Some(v) = var("SCIM_BRIDGE_LISTEN") {
            config.listen = v;
        }
        if let Some(v) = var("SCIM_BRIDGE_DATABASE_URL") {
            config.database_url = v;
        }
        // With a shared database every replica needs the same secrets, so none is generated: a
        // replica that made its own would refuse the others' webhooks, tokens and credentials.
        let shared = is_shared_database(&config.database_url);
        let mut missing = Vec::new();
        let mut secret = |variable: &str, file: &str, make: fn() -> String| -> anyhow::Result<String> {
            if let Some(v) = var(variable) {
                return Ok(v);
            }
            if !shared {
                return secret_file(&data_dir, file, make);
            }
            Ok(read_secret_file(&data_dir, file).unwrap_or_else(|| {
                missing.push((variable.to_string(), file.to_string()));
                String::new()
            }))
        };
        let secrets = secret("SCIM_BRIDGE_WEBHOOK_SECRET", "webhook-secret", || {
            crypto::random_hex(32)
        })?;
        let admin_token = secret("SCIM_BRIDGE_ADMIN_TOKEN", "admin-token", || crypto::random_hex(32))?;
        let encryption_key = secret("SCIM_BRIDGE_ENCRYPTION_KEY", "encryption-key", || {
            base64::engine::general_purpose::STANDARD.encode(crypto::random_bytes::<32>())
        })?;
        if !missing.is_empty() {
            let variables: Vec<&str> = missing.iter().map(|(v, _)| v.as_str()).collect();
            let files: Vec<String> = missing
                .iter()
                .map(|(_, f)| data_dir.join(f).display().to_string())
                .collect();
            bail!(
                "SCIM_BRIDGE_DATABASE_URL is a PostgreSQL database, shared by every replica, so no secret is \
                 generated: set {} to the same values on every replica (or write them to {}). \
                 SCIM_BRIDGE_ENCRYPTION_KEY is 32 random bytes in base64 (`openssl rand -base64 32`); \
                 the others are any long random strings (`openssl rand -hex 32`).",
                variables.join(", "),
                files.join(", ")
            );
        }
        config.webhook_secrets = secrets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect();
        if config.webhook_secrets.is_empty() || config.webhook_secrets.len() > 2 {
            bail!("SCIM_BRIDGE_WEBHOOK_SECRET takes one secret, or `current,previous` during rotation");
        }
        config.admin_token = Secret::new(admin_token);
        config.encryption_key = Secret::new(encryption_key);
        config.encryption_key_bytes()?;
        if let Some(v) = var("SCIM_BRIDGE_SYNC_INTERVAL") {
            config.sync_interval_ms = parse_duration_ms(&v).context("SCIM_BRIDGE_SYNC_INTERVAL")?;
            if config.sync_interval_ms < 1_000 {
                bail!("SCIM_BRIDGE_SYNC_INTERVAL must be at least 1s");
            }
        }
        if let Some(v) = var("SCIM_BRIDGE_RATE_LIMIT") {
            config.rate_limit = v.parse().context("SCIM_BRIDGE_RATE_LIMIT")?;
        }
        if let Some(v) = var("SCIM_BRIDGE_ALLOW_PRIVATE_TARGETS") {
            config.allow_private_targets = matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = var("SCIM_BRIDGE_LOG_RETENTION") {
            config.log_retention_ms = parse_duration_ms(&v).context("SCIM_BRIDGE_LOG_RETENTION")?;
        }
        config.log_json = var("SCIM_BRIDGE_LOG_FORMAT").is_some_and(|v| v == "json");
        if let Some(v) = var("SCIM_BRIDGE_MAX_CONNECTIONS") {
            config.max_connections = v
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .context("SCIM_BRIDGE_MAX_CONNECTIONS must be a whole number of at least 1")?;
        }
        for (name, field) in [
            ("SCIM_BRIDGE_HEADER_TIMEOUT", &mut config.header_timeout_ms),
            ("SCIM_BRIDGE_BODY_TIMEOUT", &mut config.body_timeout_ms),
        ] {
            if let Some(v) = var(name) {
                *field = parse_duration_ms(&v).with_context(|| name.to_string())?;
                if *field < 1 {
                    bail!("{name} must be at least 1ms");
                }
            }
        }
        config.graph = GraphConfig::from_vars(var)?;
        if let Some(v) = var("SCIM_BRIDGE_REPLICA_ID") {
            config.replica_id = v.trim().to_string();
        }
        if let Some(v) = var("SCIM_BRIDGE_LEASE_TTL") {
            config.lease_ttl_ms = parse_duration_ms(&v).context("SCIM_BRIDGE_LEASE_TTL")?;
            if !(3_000..=300_000).contains(&config.lease_ttl_ms) {
                bail!("SCIM_BRIDGE_LEASE_TTL must be between 3s and 5m (a dead replica's apps wait this long)");
            }
        }
        if let Some(v) = var("SCIM_BRIDGE_TRACE_URL") {
            let v = v.trim();
            if !(v.starts_with("http://") || v.starts_with("https://")) || !v.contains("{traceId}") {
                bail!("SCIM_BRIDGE_TRACE_URL must be an http(s) URL with {{traceId}} where the trace id goes");
            }
            config.trace_url = Some(v.to_string());
        }
        if let Some(v) = var("SCIM_BRIDGE_ACCESS_END_SLO") {
            config.access_end_slo_ms = parse_duration_ms(&v).context("SCIM_BRIDGE_ACCESS_END_SLO")?;
            if config.access_end_slo_ms < 1_000 {
                bail!("SCIM_BRIDGE_ACCESS_END_SLO must be at least 1s");
            }
        }
        Ok(config)
    }

    /// The encryption keys, current first: the current one seals, either one opens.
    pub fn encryption_key_bytes(&self) -> anyhow::Result<Vec<[u8; 32]>> {
        let keys: Vec<&str> = self
            .encryption_key
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() || keys.len() > 2 {
            bail!("SCIM_BRIDGE_ENCRYPTION_KEY takes one key, or `current,previous` during rotation");
        }
        keys.iter()
            .enumerate()
            .map(|(i, key)| {
                let which = if i == 0 { "current" } else { "previous" };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .map_err(|_| anyhow::anyhow!("SCIM_BRIDGE_ENCRYPTION_KEY: the {which} key is not base64"))?;
                bytes
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("SCIM_BRIDGE_ENCRYPTION_KEY: the {which} key must decode to 32 bytes"))
            })
            .collect()
    }
}

/// The host name and a random suffix: several processes on one host never share it.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "scim-bridge".into());
    format!("{host}-{}", crypto::random_hex(3))
}

fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("scim-bridge.db").display())
}

/// A database several replicas share (PostgreSQL), as opposed to the embedded SQLite file.
pub fn is_shared_database(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

/// Reads `<data dir>/<name>` if it is there.
fn read_secret_file(data_dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(data_dir.join(name))
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Reads `<data dir>/<name>`, creating it (owner-only) with a fresh value on first start.
fn secret_file(data_dir: &Path, name: &str, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    let path = data_dir.join(name);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim().to_string());
    }
    let value = make();
    write_owner_only(&path, &value).with_context(|| format!("writing {}", path.display()))?;
    println!("generated {name} into {}", path.display());
    Ok(value)
}

/// Creates the data dir (and any missing parent) readable by its owner only (0700): it holds the
/// secrets and the embedded database. An existing directory keeps the mode it has.
fn create_owner_only_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

fn write_owner_only(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(value.as_bytes())?;
    file.write_all(b"\n")
}

/// Every `SCIM_BRIDGE_*` variable the binary reads (a unit test keeps this list in step with this
/// file), so a deployment file can be checked for a misspelt or retired name.
pub const VARIABLES: &[&str] = &[
    "SCIM_BRIDGE_LISTEN",
    "SCIM_BRIDGE_DATA_DIR",
    "SCIM_BRIDGE_DATABASE_URL",
    "SCIM_BRIDGE_WEBHOOK_SECRET",
    "SCIM_BRIDGE_ADMIN_TOKEN",
    "SCIM_BRIDGE_ENCRYPTION_KEY",
    "SCIM_BRIDGE_SYNC_INTERVAL",
    "SCIM_BRIDGE_RATE_LIMIT",
    "SCIM_BRIDGE_ALLOW_PRIVATE_TARGETS",
    "SCIM_BRIDGE_LOG_RETENTION",
    "SCIM_BRIDGE_LOG_FORMAT",
    "SCIM_BRIDGE_MAX_CONNECTIONS",
    "SCIM_BRIDGE_HEADER_TIMEOUT",
    "SCIM_BRIDGE_BODY_TIMEOUT",
    "SCIM_BRIDGE_REPLICA_ID",
    "SCIM_BRIDGE_LEASE_TTL",
    "SCIM_BRIDGE_ACCESS_END_SLO",
    "SCIM_BRIDGE_GRAPH_TENANT_ID",
    "SCIM_BRIDGE_GRAPH_CLIENT_ID",
    "SCIM_BRIDGE_GRAPH_CLIENT_SECRET",
    "SCIM_BRIDGE_GRAPH_AUTHORITY",
    "SCIM_BRIDGE_GRAPH_URL",
    "SCIM_BRIDGE_GRAPH_POLL_INTERVAL",
    "SCIM_BRIDGE_TRACE_URL",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rate_limits_parse_as_documented() {
        assert_eq!(parse_duration_ms("40m").unwrap(), 2_400_000);
        assert_eq!(parse_duration_ms("30d").unwrap(), 2_592_000_000);
        assert_eq!(parse_duration_ms("90").unwrap(), 90_000);
        assert!(parse_duration_ms("5 parsecs").is_err());
        let limit: RateLimit = "5/10s".parse().unwrap();
        assert_eq!(
            limit,
            RateLimit {
                requests: 5,
                window_seconds: 10
            }
        );
        assert!("0/10s".parse::<RateLimit>().is_err());
    }

    #[test]
    fn the_encryption_key_may_be_current_and_previous() {
        let a = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let b = base64::engine::general_purpose::STANDARD.encode([2u8; 32]);
        let mut config = Config::with_data_dir("/nonexistent");
        config.encryption_key = Secret::new(format!("{b}, {a}"));
        assert_eq!(config.encryption_key_bytes().unwrap(), vec![[2u8; 32], [1u8; 32]]);
        config.encryption_key = Secret::new(&a);
        assert_eq!(config.encryption_key_bytes().unwrap(), vec![[1u8; 32]]);
        config.encryption_key = Secret::new(format!("{a},{b},{a}"));
        assert!(config.encryption_key_bytes().is_err());
        config.encryption_key = Secret::new(format!("{a},c2hvcnQ="));
        let error = config.encryption_key_bytes().unwrap_err().to_string();
        assert!(error.contains("previous"), "{error}");
        assert!(!error.contains(&a), "a key must never be printed: {error}");
    }

    #[test]
    fn graph_settings_need_all_three_credentials() {
        let vars = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| set.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert!(GraphConfig::from_vars(vars(&[])).unwrap().is_none());
        let error = GraphConfig::from_vars(vars(&[("SCIM_BRIDGE_GRAPH_TENANT_ID", "t")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("SCIM_BRIDGE_GRAPH_CLIENT_SECRET"), "{error}");
        let graph = GraphConfig::from_vars(vars(&[
            ("SCIM_BRIDGE_GRAPH_TENANT_ID", "t"),
            ("SCIM_BRIDGE_GRAPH_CLIENT_ID", "c"),
            ("SCIM_BRIDGE_GRAPH_CLIENT_SECRET", "hunter2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(graph.poll_interval_ms, 15_000);
        assert_eq!(graph.url, "https://graph.microsoft.com/v1.0");
        assert!(!format!("{graph:?}").contains("hunter2"));
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "[redacted]");
    }

    #[test]
    fn every_variable_named_in_this_file_is_in_the_list() {
        // A name ending in `_` is a family written as `SCIM_BRIDGE_GRAPH_*`; one member is enough.
        let source = include_str!("config.rs");
        let prefix = "SCIM_BRIDGE_";
        let mut named = Vec::new();
        for (at, _) in source.match_indices(prefix) {
            let rest = &source[at + prefix.len()..];
            let len = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            if len > 0 {
                named.push(format!("{prefix}{}", &rest[..len]));
            }
        }
        assert!(named.len() > VARIABLES.len(), "the scan found too little: {named:?}");
        for name in &named {
            let listed = if name.ends_with('_') {
                VARIABLES.iter().any(|v| v.starts_with(name.as_str()))
            } else {
                VARIABLES.contains(&name.as_str())
            };
            assert!(
                listed,
                "{name} is named in config.rs but missing from config::VARIABLES"
            );
        }
        let mut unique = VARIABLES.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), VARIABLES.len(), "config::VARIABLES lists a name twice");
    }
}
