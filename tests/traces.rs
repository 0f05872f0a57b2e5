//! Traces (SPEC §10): one trace per activation from the webhook to the SCIM requests, across
//! replicas; `traceparent` on every SCIM request whether or not anything is exported; `traceId`
//! on the log entry; an incoming `traceparent` continued only under a valid signature; no
//! personal data in what is exported. The export goes to an OTLP/HTTP receiver in the test (a
//! plain handler on `/v1/traces`, decoding the protobuf); the target is real (scim2-server)
//! behind the fault proxy, which records the trace headers each request carried.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::clocked::{FaultProxy, app_with};
use common::{Bridge, Event, Kind, Principal, Stack, TestDatabase, random_hex};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::{Value, json};

/// What the export's requests carry in `OTEL_EXPORTER_OTLP_HEADERS`: a secret.
const EXPORT_TOKEN: &str = "otlp-secret-4f1c9a";

/// One exported span, as the test reads it.
#[derive(Clone, Debug)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: BTreeMap<String, String>,
    links: Vec<String>,
    /// `service.instance.id` of the exporting process: which replica it was.
    instance: String,
    service: String,
}

#[derive(Default)]
struct Received {
    spans: Vec<Exported>,
    /// Every request body as it came, to search for what must never be exported.
    raw: Vec<u8>,
    authorizations: Vec<String>,
}

/// An OTLP/HTTP receiver on a free port.
struct Receiver {
    url: String,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

async fn take_export(State(received): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = received.lock().unwrap();
    received.raw.extend_from_slice(&body);
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        received.authorizations.push(auth.to_string());
    }
    for resource_spans in request.resource_spans {
        let resource: BTreeMap<String, String> = resource_spans
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default()
            .into_iter()
            .map(|kv| (kv.key, text(kv.value.as_ref())))
            .collect();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.spans.push(Exported {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    name: span.name,
                    attributes: span
                        .attributes
                        .into_iter()
                        .map(|kv| (kv.key, text(kv.value.as_ref())))
                        .collect(),
                    links: span.links.iter().map(|l| hex::encode(&l.trace_id)).collect(),
                    instance: resource.get("service.instance.id").cloned().unwrap_or_default(),
                    service: resource.get("service.name").cloned().unwrap_or_default(),
                });
            }
        }
    }
    StatusCode::OK
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0").await.expect("a free port")
    }

    async fn start_on(address: &str) -> Option<Receiver> {
        let listener = tokio::net::TcpListener::bind(address).await.ok()?;
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Received::default()));
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(take_export))
            .with_state(received.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Some(Receiver { url, received, task })
    }

    /// The bridge's variables to export here, as the replica `instance`.
    fn env(&self, instance: &str) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.url.clone()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS".into(),
                format!("authorization=Bearer {EXPORT_TOKEN}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                format!("service.instance.id={instance}"),
            ),
        ]
    }

    fn spans(&self) -> Vec<Exported> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Waits until the spans exported so far satisfy `done`; answers them.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Exported]) -> bool) -> Vec<Exported> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                panic!("{what}: not exported within 20 s; exported: {}", show(&spans));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Neither the principal's UPN, id or names, nor the export's secret, is anywhere in what
    /// was exported (the raw bodies are searched, attributes and everything else).
    fn assert_holds_nothing_personal(&self, principal: &Principal) {
        let received = self.received.lock().unwrap();
        assert!(!received.raw.is_empty(), "something was exported");
        for needle in [
            principal.upn(),
            principal.id.as_str(),
            principal.display_name.as_str(),
            principal.surname.as_str(),
            EXPORT_TOKEN,
        ] {
            assert!(
                !received.raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "the export holds {needle:?}"
            );
        }
    }
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn show(spans: &[Exported]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} <- {} {:?} [{}] {:?} links {:?}",
                s.trace_id, s.span_id, s.parent, s.name, s.instance, s.attributes, s.links
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The trace id and span id of a `traceparent`.
fn ids_of(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    assert_eq!(parts[1].len(), 32, "{traceparent}");
    assert_eq!(parts[2].len(), 16, "{traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

/// Posts the event signed (or not) with a `traceparent`; answers the status.
async fn post_with_traceparent(bridge: &Bridge, event: &Event, traceparent: &str, signed: bool) -> StatusCode {
    let body = event.body();
    let mut request = common::http_client()
        .post(format!("{}/v1/webhooks/pim", bridge.url))
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .body(body.clone());
    if signed {
        request = request.header(
            "x-bridge-signature",
            Bridge::sign(&bridge.secret, chrono::Utc::now().timestamp(), &body),
        );
    }
    let status = request.send().await.expect("POST webhook").status();
    StatusCode::from_u16(status.as_u16()).unwrap()
}

/// Every request the target saw carried a `traceparent` (and neither `tracestate` nor
/// `baggage`); answers them in order.
fn traceparents_seen(seen: &[Value]) -> Vec<(String, String, String)> {
    assert!(!seen.is_empty(), "the target saw requests");
    seen.iter()
        .map(|r| {
            assert!(r.get("tracestate").is_none() && r.get("baggage").is_none(), "{r}");
            let tp = r["traceparent"]
                .as_str()
                .unwrap_or_else(|| panic!("a SCIM request without traceparent: {r}"));
            let (trace, span) = ids_of(tp);
            (r["method"].as_str().unwrap_or_default().to_string(), trace, span)
        })
        .collect()
}

/// The spans of `trace`, and for each client span the target saw, that it was exported in it.
fn one_trace<'a>(spans: &'a [Exported], trace: &str) -> Vec<&'a Exported> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

/// Walks up from `span` to the root of its trace (within what was exported); answers the names.
fn ancestry(trace: &[&Exported], span: &Exported) -> Vec<String> {
    let by_id: BTreeMap<&str, &Exported> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let mut names = vec![span.name.clone()];
    let mut at = span;
    while let Some(parent) = by_id.get(at.parent.as_str()) {
        names.push(parent.name.clone());
        at = parent;
    }
    names
}

/// A bridge (with `env`) and scim2-server, and an app that reaches it through the fault proxy
/// with a group assigned; `None` when a part is missing (outside CI).
async fn proxied_stack(env: &[(&str, &str)]) -> Option<(Stack, FaultProxy, common::SourceGroup)> {
    let stack = Stack::start_with(Kind::Scim2Server, env).await?;
    let proxy = FaultProxy::start(&stack.target).await?;
    let (_, group, _) = app_with(&stack, &proxy.base_url_for(&stack.target), json!({})).await;
    Some((stack, proxy, group))
}

/// A PATCH's span and its ancestors, up to the webhook request's.
const FROM_WEBHOOK_TO_PATCH: [&str; 5] = [
    "PATCH /Groups/{id}",
    "push",
    "admission",
    "event",
    "POST /v1/webhooks/pim",
];

/// Only allow-listed attributes (SPEC §10), none of them holding a person's data.
fn assert_allow_listed(spans: &[Exported]) {
    const ALLOWED: &[&str] = &[
        "app.id",
        "event.id",
        "job.id",
        "cycle.id",
        "http.request.method",
        "http.route",
        "http.response.status_code",
    ];
    for span in spans {
        for key in span.attributes.keys() {
            assert!(ALLOWED.contains(&key.as_str()), "attribute {key} on {span:?}");
        }
        if let Some(route) = span.attributes.get("http.route") {
            assert!(!route.contains('?'), "a route template without query: {route}");
        }
    }
}

/// Sends a signed activation with a `traceparent` of the test's to `taker` and waits for its push:
/// the log entry, every request the target saw, and the export all name that one trace, the
/// PATCH's span under the webhook request's (which continues the caller's span). Answers the
/// exported spans and the trace id.
async fn activation_traced_to_the_patch(
    taker: &Bridge,
    receiver: &Receiver,
    proxy: &FaultProxy,
    event: &Event,
) -> (Vec<Exported>, String) {
    let (incoming_trace, incoming_span) = (random_hex()[..32].to_string(), random_hex()[..16].to_string());
    let traceparent = format!("00-{incoming_trace}-{incoming_span}-01");
    assert_eq!(
        post_with_traceparent(taker, event, &traceparent, true).await,
        StatusCode::ACCEPTED
    );
    let entry = taker.wait_for_event_log(event, "success", Some("add_member")).await;
    assert_eq!(entry["traceId"], json!(incoming_trace), "{entry}");

    let seen = traceparents_seen(&proxy.seen().await);
    assert!(seen.iter().any(|(method, _, _)| method == "PATCH"), "{seen:?}");
    for (method, trace, _) in &seen {
        assert_eq!(trace, &incoming_trace, "{method} carried another trace");
    }

    let spans = receiver
        .wait_for("the PATCH's client span under the webhook's", |spans| {
            let trace = one_trace(spans, &incoming_trace);
            trace
                .iter()
                .any(|s| s.name == "PATCH /Groups/{id}" && ancestry(&trace, s).len() == FROM_WEBHOOK_TO_PATCH.len())
        })
        .await;
    let trace = one_trace(&spans, &incoming_trace);
    let webhook = trace
        .iter()
        .find(|s| s.name == "POST /v1/webhooks/pim")
        .unwrap_or_else(|| panic!("the webhook's span: {}", show(&spans)));
    assert_eq!(webhook.parent, incoming_span, "the webhook continues the caller's span");
    let patch = trace.iter().find(|s| s.name == "PATCH /Groups/{id}").unwrap();
    assert_eq!(ancestry(&trace, patch), FROM_WEBHOOK_TO_PATCH, "{}", show(&spans));
    // Each request the target saw is a client span of this trace.
    for (method, _, span_id) in &seen {
        assert!(
            trace
                .iter()
                .any(|s| &s.span_id == span_id && s.name.starts_with(method.as_str())),
            "the {method} the target saw ({span_id}) was exported: {}",
            show(&spans)
        );
    }
    assert_allow_listed(&spans);
    (spans, incoming_trace)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhooks_traceparent_is_continued_down_to_the_scim_patch_and_named_by_the_log_entry() {
    let receiver = Receiver::start().await;
    let env = receiver.env("r1");
    let Some((stack, proxy, group)) = proxied_stack(&refs(&env)).await else {
        return;
    };
    let principal = Principal::new();
    let event = Event::activation(&principal, &group);
    let (spans, trace_id) = activation_traced_to_the_patch(&stack.bridge, &receiver, &proxy, &event).await;
    let trace = one_trace(&spans, &trace_id);
    let webhook = trace.iter().find(|s| s.name == "POST /v1/webhooks/pim").unwrap();
    assert_eq!(webhook.attributes["http.response.status_code"], "202");
    assert_eq!(webhook.service, "scim-bridge");
    let patch = trace.iter().find(|s| s.name == "PATCH /Groups/{id}").unwrap();
    assert_eq!(patch.attributes["http.request.method"], "PATCH");
    assert_eq!(patch.attributes["http.route"], "/Groups/{id}");
    assert!(patch.attributes.contains_key("http.response.status_code"), "{patch:?}");
    let event_span = trace.iter().find(|s| s.name == "event").unwrap();
    assert_eq!(event_span.attributes["event.id"], event.id());
    receiver.assert_holds_nothing_personal(&principal);
    let received = receiver.received.lock().unwrap();
    assert!(
        received
            .authorizations
            .iter()
            .all(|a| a == &format!("Bearer {EXPORT_TOKEN}")),
        "the export sends OTEL_EXPORTER_OTLP_HEADERS"
    );
    assert!(
        !stack.bridge.output().contains(EXPORT_TOKEN),
        "the OTLP headers are never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsigned_or_badly_signed_webhook_continues_no_trace() {
    let receiver = Receiver::start().await;
    let env = receiver.env("r1");
    let Some(stack) = Stack::start_with(Kind::Scim2Server, &refs(&env)).await else {
        return;
    };
    let (group, _) = stack.assigned_group().await;
    let principal = Principal::new();
    let event = Event::activation(&principal, &group);
    let foreign_trace = random_hex()[..32].to_string();
    let traceparent = format!("00-{foreign_trace}-{}-01", &random_hex()[..16]);
    assert_eq!(
        post_with_traceparent(&stack.bridge, &event, &traceparent, false).await,
        StatusCode::UNAUTHORIZED
    );
    let body = event.body();
    let forged = common::http_client()
        .post(format!("{}/v1/webhooks/pim", stack.bridge.url))
        .header("content-type", "application/json")
        .header("traceparent", &traceparent)
        .header(
            "x-bridge-signature",
            Bridge::sign("not-the-secret", chrono::Utc::now().timestamp(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);

    // Refused requests are traced too, each in a trace of its own.
    let spans = receiver
        .wait_for("two refused webhooks", |spans| {
            spans
                .iter()
                .filter(|s| {
                    s.name == "POST /v1/webhooks/pim"
                        && s.attributes.get("http.response.status_code").map(String::as_str) == Some("401")
                })
                .count()
                == 2
        })
        .await;
    assert!(
        spans.iter().all(|s| s.trace_id != foreign_trace),
        "an unsigned traceparent was continued: {}",
        show(&spans)
    );
    // The same event signed, without a traceparent, is a trace of its own too.
    stack.bridge.deliver(&[&event]).await;
    let entry = stack
        .bridge
        .wait_for_event_log(&event, "success", Some("add_member"))
        .await;
    let trace = entry["traceId"].as_str().expect("a traceId").to_string();
    assert_ne!(trace, foreign_trace);
    receiver
        .wait_for("the signed webhook's trace", |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == trace && s.name == "POST /v1/webhooks/pim")
        })
        .await;
    assert!(receiver.spans().iter().all(|s| s.trace_id != foreign_trace));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_otlp_variables_nothing_is_exported_and_every_scim_request_still_carries_a_traceparent() {
    // Where an exporter would go by default, if one were started: nothing may arrive there.
    let default_receiver = Receiver::start_on("127.0.0.1:4318").await;
    let Some((stack, proxy, group)) = proxied_stack(&[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await else {
        return;
    };
    let principal = Principal::new();
    let event = Event::activation(&principal, &group);
    stack.bridge.deliver(&[&event]).await;
    let entry = stack
        .bridge
        .wait_for_event_log(&event, "success", Some("add_member"))
        .await;
    let trace = entry["traceId"].as_str().expect("a traceId without export").to_string();
    assert_eq!(trace.len(), 32);
    let seen = traceparents_seen(&proxy.seen().await);
    for (method, seen_trace, _) in &seen {
        assert_eq!(
            seen_trace, &trace,
            "{method}: the log entry names the trace its requests carried"
        );
    }
    let metrics = common::http_client()
        .get(format!("{}/metrics", stack.bridge.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("scim_bridge_trace_exports_total{"),
        "no export was attempted:\n{metrics}"
    );
    if let Some(default_receiver) = default_receiver {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            default_receiver.spans().is_empty(),
            "nothing exported to the default endpoint"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_is_refused_at_start_with_a_message_and_without_the_headers() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_scim-bridge"));
    command
        .arg("serve")
        .env("SCIM_BRIDGE_LISTEN", "127.0.0.1:0")
        .env("SCIM_BRIDGE_DATA_DIR", data_dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer {EXPORT_TOKEN}"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("the bridge refuses to start instead of serving")
        .expect("run the bridge");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"),
        "{text}"
    );
    assert!(text.contains("http/protobuf"), "says what is: {text}");
    assert!(!text.contains("listening on"), "{text}");
    assert!(!text.contains(EXPORT_TOKEN), "{text}");
}

/// The app's lease holder once it has stayed the same for two seconds.
async fn settled_holder(bridge: &Bridge, app_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<(String, Instant)> = None;
    loop {
        let rows = common::psql_rows(
            &bridge.database_url(),
            &format!("SELECT holder FROM leases WHERE name = 'app:{app_id}' AND NOT released AND expires_at > now()"),
        );
        let holder = rows.first().cloned();
        match (&holder, &last) {
            (Some(h), Some((l, since))) if h == l && since.elapsed() > Duration::from_secs(2) => return h.clone(),
            (Some(h), Some((l, _))) if h == l => {}
            (Some(h), _) => last = Some((h.clone(), Instant::now())),
            (None, _) => last = None,
        }
        assert!(Instant::now() < deadline, "no replica settled on app:{app_id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activation_taken_by_one_replica_and_pushed_by_another_is_one_trace() {
    if !common::postgres_under_test() {
        return; // the PostgreSQL run of this suite has it (scripts/test.sh)
    }
    let receiver = Receiver::start().await;
    let Some(database) = TestDatabase::postgres() else {
        return;
    };
    let Some(target) = common::target(Kind::Scim2Server).await else {
        return;
    };
    let Some(proxy) = FaultProxy::start(&target).await else {
        return;
    };
    let (env_a, env_b) = (receiver.env("replica-a"), receiver.env("replica-b"));
    let a = Bridge::start_replica_on(database, "replica-a", &refs(&env_a)).await;
    let b = a.replica("replica-b", &refs(&env_b)).await;
    let app_id = a
        .register_app_with(&target, &proxy.base_url_for(&target), json!({}))
        .await;
    let group = common::SourceGroup::new();
    a.assign_group(&app_id, &group.id, &format!("Traced {}", common::short_id()))
        .await;
    let holder = settled_holder(&a, &app_id).await;
    let (taker, pusher) = if holder == "replica-a" {
        (&b, "replica-a")
    } else {
        (&a, "replica-b")
    };
    let taker_name = if pusher == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };

    let principal = Principal::new();
    let event = Event::activation(&principal, &group);
    let (spans, trace_id) = activation_traced_to_the_patch(taker, &receiver, &proxy, &event).await;
    let trace = one_trace(&spans, &trace_id);
    let patch = trace.iter().find(|s| s.name == "PATCH /Groups/{id}").unwrap();
    let instance = |name: &str| {
        trace
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.instance.clone())
            .unwrap_or_default()
    };
    assert_eq!(instance("POST /v1/webhooks/pim"), taker_name, "{}", show(&spans));
    assert_eq!(instance("event"), taker_name);
    assert_eq!(instance("admission"), pusher, "{}", show(&spans));
    assert_eq!(instance("push"), pusher);
    assert_eq!(patch.instance, pusher);
    receiver.assert_holds_nothing_personal(&principal);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cycle_is_a_trace_of_its_own_whose_steps_link_to_the_deferred_activations() {
    let receiver = Receiver::start().await;
    let env = receiver.env("r1");
    let Some(stack) = Stack::start_with(Kind::Scim2Server, &refs(&env)).await else {
        return;
    };
    // One push an hour: the second activation is deferred to the cycle.
    let (app_id, group, _) = app_with(
        &stack,
        &stack.target.base_url,
        json!({"rateLimit": {"requests": 1, "windowSeconds": 3600}}),
    )
    .await;
    let first = Event::activation(&Principal::new(), &group);
    stack.bridge.deliver(&[&first]).await;
    stack
        .bridge
        .wait_for_event_log(&first, "success", Some("add_member"))
        .await;
    let principal = Principal::new();
    let deferred = Event::activation(&principal, &group);
    stack.bridge.deliver(&[&deferred]).await;
    let entry = stack.bridge.wait_for_event_log(&deferred, "deferred", None).await;
    let event_trace = entry["traceId"].as_str().expect("traceId").to_string();

    let cycle = stack.bridge.sync_and_wait(&app_id, false).await;
    let cycle_id = cycle["id"].as_str().expect("cycle id").to_string();
    let added = stack
        .bridge
        .wait_for_log(
            &[("eventId", deferred.id()), ("status", "success")],
            |e| e["cycleId"] == json!(cycle_id),
            Duration::from_secs(10),
        )
        .await;
    let cycle_trace = added["traceId"].as_str().expect("traceId").to_string();
    assert_ne!(cycle_trace, event_trace, "a cycle is a trace of its own");

    let spans = receiver
        .wait_for("the cycle, and its step linked to the deferred activation", |spans| {
            let trace = one_trace(spans, &cycle_trace);
            trace
                .iter()
                .any(|s| s.name == "cycle.step" && s.links.contains(&event_trace))
                && trace.iter().any(|s| s.name == "cycle")
        })
        .await;
    let trace = one_trace(&spans, &cycle_trace);
    assert!(
        trace
            .iter()
            .any(|s| s.name == "cycle" && s.attributes.get("cycle.id") == Some(&cycle_id)),
        "{}",
        show(&spans)
    );
    assert!(trace.iter().any(|s| s.name == "PATCH /Groups/{id}"), "{}", show(&spans));
    assert_allow_listed(&spans);
    receiver.assert_holds_nothing_personal(&principal);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_graph_poll_takes_in_is_one_trace_with_a_span_per_event_down_to_the_scim_requests() {
    let receiver = Receiver::start().await;
    let Some(graph) = common::graph::GraphServer::start(10).await else {
        return;
    };
    let mut env = receiver.env("r1");
    env.extend(graph.bridge_env().into_iter().map(|(k, v)| (k.to_string(), v)));
    let Some(stack) = Stack::start_with(Kind::Scim2Server, &refs(&env)).await else {
        return;
    };
    let group = common::SourceGroup::new();
    graph.put_group(&group, None).await;
    let (first, second) = (Principal::new(), Principal::new());
    let now = chrono::Utc::now();
    let mut requests = Vec::new();
    for principal in [&first, &second] {
        graph.add_user(principal).await;
        let request = common::graph::pim_request("selfActivate", "Provisioned", principal, &group, now);
        graph.put_request(&request).await;
        requests.push(request["id"].as_str().expect("a request id").to_string());
    }
    // Assigned once both are there: the group's first poll reads the two together.
    stack
        .bridge
        .assign_group(&stack.app_id, &group.id, &format!("Polled {}", common::short_id()))
        .await;
    let mut traces = Vec::new();
    for id in &requests {
        let entry = stack
            .bridge
            .wait_for_log(
                &[("eventId", id), ("status", "success"), ("action", "add_member")],
                |_| true,
                Duration::from_secs(15),
            )
            .await;
        traces.push(entry["traceId"].as_str().expect("a traceId").to_string());
    }
    assert_eq!(traces[0], traces[1], "one poll, one trace: {traces:?}");
    let trace_id = traces[0].clone();
    let spans = receiver
        .wait_for("both pushes under the poll's span", |spans| {
            let trace = one_trace(spans, &trace_id);
            trace
                .iter()
                .filter(|s| s.name == "PATCH /Groups/{id}" && ancestry(&trace, s).len() == 5)
                .count()
                == 2
        })
        .await;
    let trace = one_trace(&spans, &trace_id);
    let page = trace.iter().find(|s| s.name == "graph.page").expect("the poll's span");
    assert!(page.parent.is_empty(), "the poll starts the trace");
    let events: Vec<&&Exported> = trace.iter().filter(|s| s.name == "event").collect();
    assert_eq!(events.len(), 2, "{}", show(&spans));
    for event in &events {
        assert_eq!(event.parent, page.span_id, "{}", show(&spans));
        assert!(requests.contains(&event.attributes["event.id"]), "{event:?}");
    }
    let patch = trace.iter().find(|s| s.name == "PATCH /Groups/{id}").unwrap();
    assert_eq!(
        ancestry(&trace, patch),
        ["PATCH /Groups/{id}", "push", "admission", "event", "graph.page"]
    );
    assert_allow_listed(&spans);
    receiver.assert_holds_nothing_personal(&first);
    receiver.assert_holds_nothing_personal(&second);
    let raw = receiver.received.lock().unwrap().raw.clone();
    assert!(
        !raw.windows(graph.client_secret.len())
            .any(|w| w == graph.client_secret.as_bytes()),
        "the Graph client secret is not exported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expirys_removal_joins_the_trace_of_the_activation_it_ends() {
    // The bridge runs in this process on a manual clock (the expiry comes when the test says):
    // its spans get trace ids as the binary's do (nextest runs each test in a process of its own).
    {
        use tracing_subscriber::prelude::*;
        let _ = tracing_subscriber::registry()
            .with(scim_bridge::trace::enable_spans(tracing_subscriber::EnvFilter::new(
                "warn",
            )))
            .with(scim_bridge::trace::layer())
            .try_init();
    }
    let Some(p) = common::clocked::behind_fault_proxy(Kind::Scim2Server).await else {
        return;
    };
    let bridge = &p.stack.bridge;
    let principal = Principal::new();
    let end = bridge.now() + chrono::Duration::minutes(10);
    let activation = Event::activation(&principal, &p.group).ending_at(end);
    bridge.deliver(&[&activation]).await;
    bridge
        .wait_for_event_log(&activation, "success", Some("add_member"))
        .await;
    let adds = traceparents_seen(&p.proxy.seen().await);
    let (_, activation_trace, _) = adds.last().cloned().expect("the add's requests");
    bridge.advance_to(end + chrono::Duration::seconds(1)).await;
    p.stack.target.assert_members_eventually(&p.target_name, &[]).await;
    let all = traceparents_seen(&p.proxy.seen().await);
    let removal = &all[adds.len()..];
    assert!(!removal.is_empty(), "the removal's requests: {all:?}");
    for (method, trace, _) in removal {
        assert_eq!(
            trace, &activation_trace,
            "{method} of the expiry's removal joins the activation's trace"
        );
    }
}
