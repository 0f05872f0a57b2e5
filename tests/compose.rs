//! `deploy/compose.yaml` read as a file, without a container engine: the shape of the stack (one
//! PostgreSQL, three replicas, one load balancer as the only published port), the variables it
//! sets against the ones the binary reads, the shared secrets, and the load balancer's backends.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_norway::Value;

const REQUIRED_SECRETS: &[&str] = &[
    "SCIM_BRIDGE_DATABASE_URL",
    "SCIM_BRIDGE_ENCRYPTION_KEY",
    "SCIM_BRIDGE_WEBHOOK_SECRET",
    "SCIM_BRIDGE_ADMIN_TOKEN",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn compose_text() -> String {
    std::fs::read_to_string(deploy_dir().join("compose.yaml")).expect("read deploy/compose.yaml")
}

/// The compose file with its `<<` merge keys applied, as compose itself reads it.
fn compose() -> Value {
    let mut value: Value = serde_norway::from_str(&compose_text()).expect("deploy/compose.yaml is YAML");
    value.apply_merge().expect("merge keys apply");
    value
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("a services mapping")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service names are strings").to_string(), v.clone()))
        .collect()
}

/// Replicas are the services built from the repository's Dockerfile.
fn bridges(compose: &Value) -> BTreeMap<String, Value> {
    services(compose)
        .into_iter()
        .filter(|(_, s)| s.get("build").is_some())
        .collect()
}

/// A service's environment, in either of compose's two forms (a mapping or `KEY=value` lines).
fn environment(service: &Value) -> BTreeMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("an environment value that is not a scalar: {other:?}"),
    };
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| (k.as_str().expect("variable names are strings").to_string(), scalar(v)))
            .collect(),
        Some(Value::Sequence(lines)) => lines
            .iter()
            .map(|line| {
                let line = line.as_str().expect("environment lines are strings");
                let (k, v) = line.split_once('=').unwrap_or((line, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Some(other) => panic!("an environment that is neither a mapping nor a list: {other:?}"),
    }
}

/// Every `${...}` of a value (compose interpolation), outermost only, with what it contains.
fn interpolations(value: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let body = &rest[start + 2..];
        let mut depth = 1;
        let end = body
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i)
            })
            .unwrap_or_else(|| panic!("an unclosed ${{ in {value}"));
        found.push(body[..end].to_string());
        rest = &body[end + 1..];
    }
    found
}

/// A value with each `${...}` replaced by `VAR`, so its shape (a URL's host, say) can be read.
fn without_interpolations(value: &str) -> String {
    let mut out = value.to_string();
    for inner in interpolations(value) {
        out = out.replacen(&format!("${{{inner}}}"), "VAR", 1);
    }
    out
}

/// The port in `host:port`.
fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

/// Where the replicas listen: their `SCIM_BRIDGE_LISTEN`, else the image's default.
fn replica_listen_port(compose: &Value) -> u16 {
    let ports: BTreeSet<u16> = bridges(compose)
        .values()
        .map(|bridge| match environment(bridge).get("SCIM_BRIDGE_LISTEN") {
            Some(listen) => port_of(listen),
            None => {
                let dockerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
                    .expect("read the Dockerfile");
                let at = dockerfile
                    .find("SCIM_BRIDGE_LISTEN=")
                    .expect("the Dockerfile sets SCIM_BRIDGE_LISTEN");
                let listen = dockerfile[at + "SCIM_BRIDGE_LISTEN=".len()..]
                    .split_whitespace()
                    .next()
                    .expect("a value");
                port_of(listen)
            }
        })
        .collect();
    assert_eq!(ports.len(), 1, "the replicas listen on different ports: {ports:?}");
    ports.into_iter().next().unwrap()
}

#[test]
fn the_stack_is_postgres_three_replicas_and_one_load_balancer_publishing_the_only_port() {
    let compose = compose();
    let services = services(&compose);
    let bridges = bridges(&compose);
    assert_eq!(bridges.len(), 3, "three replicas: {:?}", bridges.keys());
    for (name, bridge) in &bridges {
        assert_eq!(
            bridge["build"]["context"].as_str(),
            Some(".."),
            "{name} builds the repository"
        );
        assert_eq!(
            bridge["build"]["dockerfile"].as_str(),
            Some("Dockerfile"),
            "{name} builds from the repository's Dockerfile"
        );
    }

    let postgres = services.get("postgres").expect("a service named postgres");
    let image = postgres["image"].as_str().expect("postgres runs an image");
    assert!(image.starts_with("postgres:15"), "PostgreSQL 15: {image}");
    let check = serde_norway::to_string(&postgres["healthcheck"]["test"]).unwrap();
    assert!(
        check.contains("pg_isready"),
        "postgres is checked with pg_isready: {check}"
    );

    for (name, bridge) in &bridges {
        assert_eq!(
            bridge["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy"),
            "{name} waits for a healthy postgres"
        );
        let check = serde_norway::to_string(&bridge["healthcheck"]["test"]).unwrap();
        assert!(
            check.contains("/readyz") || check.contains("/healthz"),
            "{name} is checked on /readyz or /healthz: {check}"
        );
    }

    let publishing: Vec<&String> = services
        .iter()
        .filter(|(name, _)| *name != TRACES)
        .filter(|(_, s)| {
            s.get("ports")
                .and_then(Value::as_sequence)
                .is_some_and(|p| !p.is_empty())
        })
        .map(|(name, _)| name)
        .collect();
    assert_eq!(publishing.len(), 1, "one service publishes a port: {publishing:?}");
    let balancer = publishing[0];
    assert!(
        !bridges.contains_key(balancer) && balancer != "postgres",
        "the port is the load balancer's, not {balancer}'s"
    );
    assert_eq!(services[balancer]["ports"].as_sequence().unwrap().len(), 1, "one port");
    let others: Vec<&String> = services
        .keys()
        .filter(|n| !bridges.contains_key(*n) && *n != "postgres" && *n != balancer && *n != TRACES)
        .collect();
    assert!(others.is_empty(), "no other services: {others:?}");
}

/// The trace backend of the stack (SPEC §10): Jaeger all-in-one, its UI published on loopback only.
const TRACES: &str = "jaeger";

#[test]
fn every_replica_exports_its_traces_to_the_stacks_jaeger_whose_ui_only_loopback_reaches() {
    let compose = compose();
    let services = services(&compose);
    let jaeger = services.get(TRACES).expect("a jaeger service");
    let image = jaeger["image"].as_str().expect("jaeger runs an image");
    assert!(image.starts_with("jaegertracing/all-in-one:"), "{image}");
    let ports: Vec<String> = jaeger["ports"]
        .as_sequence()
        .expect("the UI port is published")
        .iter()
        .map(|p| p.as_str().expect("a port string").to_string())
        .collect();
    assert_eq!(ports.len(), 1, "only the UI: {ports:?}");
    assert!(
        ports[0].starts_with("127.0.0.1:") && ports[0].ends_with(":16686"),
        "{ports:?}"
    );
    for (name, bridge) in bridges(&compose) {
        let env = environment(&bridge);
        assert_eq!(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str),
            Some("http://jaeger:4318"),
            "{name} exports OTLP/HTTP to jaeger"
        );
        let trace_url = env.get("SCIM_BRIDGE_TRACE_URL").expect("the page links traces");
        assert!(trace_url.contains("{traceId}"), "{trace_url}");
    }
}

#[test]
fn every_bridge_variable_named_in_the_compose_file_is_one_the_binary_reads() {
    let text = compose_text();
    let prefix = "SCIM_BRIDGE_";
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let rest = &text[at + prefix.len()..];
        let len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        named.insert(format!("{prefix}{}", &rest[..len]));
    }
    for variable in REQUIRED_SECRETS {
        assert!(named.contains(*variable), "{variable} is set");
    }
    let unknown: Vec<&String> = named
        .iter()
        .filter(|v| !scim_bridge::config::VARIABLES.contains(&v.as_str()))
        .collect();
    assert!(unknown.is_empty(), "variables the binary does not read: {unknown:?}");
}

#[test]
fn every_replica_requires_the_same_shared_secrets_from_the_environment() {
    let compose = compose();
    let bridges = bridges(&compose);
    let first = environment(bridges.values().next().unwrap());
    for variable in REQUIRED_SECRETS {
        let value = first.get(*variable).unwrap_or_else(|| panic!("{variable} is set"));
        let inner = interpolations(value);
        assert!(
            !inner.is_empty(),
            "{variable} comes from the environment, not the file: {value}"
        );
        for i in &inner {
            let (name, rest) = i.split_at(
                i.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(i.len()),
            );
            assert!(
                rest.starts_with(":?") && rest.len() > 2,
                "{variable}: ${{{name}}} is required with a message (${{{name}:?message}}): {value}"
            );
        }
    }
    for variable in [
        "SCIM_BRIDGE_ENCRYPTION_KEY",
        "SCIM_BRIDGE_WEBHOOK_SECRET",
        "SCIM_BRIDGE_ADMIN_TOKEN",
    ] {
        let value = &first[variable];
        assert!(
            value.starts_with(&format!("${{{variable}:?")) && value.ends_with('}'),
            "{variable} is exactly its own required variable: {value}"
        );
    }
    for (name, bridge) in &bridges {
        let env = environment(bridge);
        for variable in REQUIRED_SECRETS {
            assert_eq!(
                env.get(*variable),
                first.get(*variable),
                "{name} has the same {variable} as the other replicas"
            );
        }
    }
}

#[test]
fn the_database_url_is_postgres_on_the_postgres_service_with_its_user_password_and_database() {
    let compose = compose();
    let postgres = environment(&services(&compose)["postgres"]);
    for (name, bridge) in bridges(&compose) {
        let url = environment(&bridge)["SCIM_BRIDGE_DATABASE_URL"].clone();
        let rest = url
            .strip_prefix("postgres://")
            .unwrap_or_else(|| panic!("{name}: a postgres:// URL: {url}"));
        let (authority, database) = rest.split_once('/').expect("a database in the URL");
        let (userinfo, host_port) = authority.rsplit_once('@').expect("a user in the URL");
        let host = without_interpolations(host_port);
        let host = host.split(':').next().unwrap();
        assert_eq!(
            host, "postgres",
            "{name}: the URL points at the postgres service: {url}"
        );
        let (user, password) = userinfo.split_once(':').expect("a password in the URL");
        assert_eq!(
            Some(user),
            postgres.get("POSTGRES_USER").map(String::as_str),
            "{name}: user"
        );
        assert_eq!(
            Some(password),
            postgres.get("POSTGRES_PASSWORD").map(String::as_str),
            "{name}: the password postgres is started with"
        );
        assert_eq!(
            Some(database.split('?').next().unwrap()),
            postgres.get("POSTGRES_DB").map(String::as_str),
            "{name}: the database postgres creates"
        );
    }
}

#[test]
fn replica_ids_are_distinct() {
    let compose = compose();
    let ids: Vec<String> = bridges(&compose)
        .iter()
        .map(|(name, bridge)| {
            environment(bridge)
                .remove("SCIM_BRIDGE_REPLICA_ID")
                .unwrap_or_else(|| panic!("{name} sets SCIM_BRIDGE_REPLICA_ID"))
        })
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "replica ids repeat: {ids:?}");
    assert!(
        ids.iter().all(|id| !id.is_empty() && !id.contains("${")),
        "fixed ids: {ids:?}"
    );
}

#[test]
fn the_load_balancer_sends_round_robin_to_every_replica_on_the_port_they_listen_on() {
    let compose = compose();
    let services = services(&compose);
    let bridges = bridges(&compose);
    let (_, balancer) = services
        .iter()
        .find(|(name, s)| *name != TRACES && s.get("ports").is_some())
        .expect("a service publishing a port");

    // Its configuration is a file beside compose.yaml, mounted into the container.
    let mounted: Vec<PathBuf> = balancer["volumes"]
        .as_sequence()
        .expect("the load balancer mounts its configuration")
        .iter()
        .filter_map(|v| v.as_str())
        .filter_map(|v| v.split(':').next())
        .filter(|source| source.starts_with("./"))
        .map(|source| deploy_dir().join(source))
        .collect();
    assert_eq!(mounted.len(), 1, "one configuration file: {mounted:?}");
    let config = std::fs::read_to_string(&mounted[0]).expect("read the load balancer's configuration");
    let lines: Vec<Vec<&str>> = config
        .lines()
        .map(|l| l.split('#').next().unwrap().split_whitespace().collect::<Vec<_>>())
        .filter(|words| !words.is_empty())
        .collect();

    let port = replica_listen_port(&compose);
    let servers: BTreeSet<(String, u16)> = lines
        .iter()
        .filter(|words| words[0] == "server" && words.len() >= 3)
        .map(|words| {
            let (host, p) = words[2].rsplit_once(':').expect("server NAME HOST:PORT");
            (host.to_string(), p.parse().expect("a port"))
        })
        .collect();
    let expected: BTreeSet<(String, u16)> = bridges.keys().map(|name| (name.clone(), port)).collect();
    assert_eq!(servers, expected, "every replica, on port {port}, and nothing else");
    assert!(
        lines.iter().any(|words| words == &["balance", "roundrobin"]),
        "round robin"
    );

    // The published port reaches what the load balancer binds.
    let published = balancer["ports"][0].as_str().expect("a short port mapping");
    let target = port_of(published);
    let binds: Vec<u16> = lines
        .iter()
        .filter(|words| words[0] == "bind")
        .map(|words| port_of(words[1]))
        .collect();
    assert_eq!(
        binds,
        vec![target],
        "the load balancer binds the published container port"
    );
}
