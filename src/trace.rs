//! Traces (SPEC §10). Spans are `tracing` spans with the target [`TARGET`]; only those reach
//! OpenTelemetry (through `tracing-opentelemetry`), so what a span carries is exactly the fields
//! its call site names: ids of app, event, job and cycle, and an HTTP method, route template and
//! status. Every other span and every log event stays in the log. Trace ids are assigned whether
//! or not anything is exported: a span's context is what a SCIM request's `traceparent`, a job's
//! stored context and a log entry's `traceId` come from.
//!
//! Export is OTLP over HTTP when the standard variables ask for it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); the exporter reads its
//! variables itself (the headers among them: a secret, never logged here). Finished spans go
//! through a bounded queue: when it is full a span is dropped and counted, never waited for.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The target of every span that is traced (and only of spans: no module is named so).
pub const TARGET: &str = "scim_bridge::span";

/// The service name unless `OTEL_SERVICE_NAME` says otherwise.
const SERVICE_NAME: &str = "scim-bridge";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The export in progress, if any: where finished spans are queued, and the task sending them.
static EXPORT: RwLock<Option<Exporting>> = RwLock::new(None);

/// While set, finished spans are not queued even with an export running (the bench compares the
/// push path with and without export on one bridge).
static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Exporting {
    queue: mpsc::Sender<SpanData>,
    task: tokio::task::JoinHandle<()>,
}

/// The layer that turns the spans of [`TARGET`] into OpenTelemetry spans. Every span gets ids;
/// what is exported is decided by [`start_export_from_env`].
pub fn layer<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let provider = PROVIDER.get_or_init(|| {
        // The sampler comes from OTEL_TRACES_SAMPLER (the SDK reads it); parent-based always-on
        // by default.
        SdkTracerProvider::builder()
            .with_resource(resource())
            .with_span_processor(Queue)
            .build()
    });
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false);
    Box::new(OnlyTraced(otel))
}

/// The log's filter (`RUST_LOG`) with the traced spans always enabled: trace ids do not depend
/// on how much is logged.
pub fn enable_spans(filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    filter.add_directive(format!("{TARGET}=info").parse().expect("a valid directive"))
}

/// Hands the layer inside only the spans of [`TARGET`] (never an event, so no log line becomes a
/// span event). A wrapper rather than a per-layer filter: it makes no callsite enabled or
/// disabled (the log's filter decides), and a traced span's parent is the traced span entered
/// around it (the OpenTelemetry context each one activates), whatever other spans lie between.
struct OnlyTraced<L>(L);

fn traced<S: tracing::Subscriber + for<'a> LookupSpan<'a>>(
    id: &tracing::span::Id,
    ctx: &tracing_subscriber::layer::Context<'_, S>,
) -> bool {
    ctx.metadata(id).is_some_and(|meta| meta.target() == TARGET)
}

impl<S, L> Layer<S> for OnlyTraced<L>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(&self, _meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().target() == TARGET {
            self.0.on_new_span(attrs, id, ctx);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if traced(id, &ctx) {
            self.0.on_record(id, values, ctx);
        }
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if traced(id, &ctx) {
            self.0.on_enter(id, ctx);
        }
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if traced(id, &ctx) {
            self.0.on_exit(id, ctx);
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if traced(&id, &ctx) {
            self.0.on_close(id, ctx);
        }
    }

    fn on_id_change(
        &self,
        old: &tracing::span::Id,
        new: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_id_change(old, new, ctx);
    }

    // `Span::context()` and `set_parent` find the OpenTelemetry layer through the dispatch.
    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else {
            // SAFETY: the inner layer answers for its own types, as `Layered` relies on.
            unsafe { self.0.downcast_raw(id) }
        }
    }
}

/// The process's resource: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (read by the
/// SDK), the service name `scim-bridge` unless set.
fn resource() -> opentelemetry_sdk::Resource {
    if std::env::var_os("OTEL_SERVICE_NAME").is_some_and(|v| !v.is_empty()) {
        opentelemetry_sdk::Resource::builder().build()
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name(SERVICE_NAME)
            .build()
    }
}

/// What the standard variables ask for: `None` when nothing is to be exported, else the OTLP
/// protocol. `grpc` (or anything else unknown) is refused, naming what is supported.
pub fn requested_protocol() -> anyhow::Result<Option<Protocol>> {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() && set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    let (variable, protocol) = match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            set("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "http/protobuf".into()),
        ),
    };
    match protocol.trim() {
        "http/protobuf" => Ok(Some(Protocol::HttpBinary)),
        "http/json" => Ok(Some(Protocol::HttpJson)),
        "grpc" => anyhow::bail!(
            "{variable}=grpc is not supported: scim-bridge exports OTLP over HTTP; set it to http/protobuf \
             (the default) or http/json and point the endpoint at the collector's HTTP port (4318)"
        ),
        other => anyhow::bail!("{variable}={other} is not an OTLP protocol: use http/protobuf or http/json"),
    }
}

/// Starts the OTLP export if the standard variables ask for it (inside the Tokio runtime).
/// Answers whether it started; an unsupported protocol is an error (refused at start).
pub fn start_export_from_env() -> anyhow::Result<bool> {
    let Some(protocol) = requested_protocol()? else {
        return Ok(false);
    };
    start_export(protocol, None, None)?;
    Ok(true)
}

/// Starts exporting (replacing an export in progress) with `protocol`, to `endpoint` or where
/// the variables say. The batch settings are the standard `OTEL_BSP_*` variables; `delay`, when
/// given, replaces `OTEL_BSP_SCHEDULE_DELAY`.
pub fn start_export(protocol: Protocol, endpoint: Option<&str>, delay: Option<Duration>) -> anyhow::Result<()> {
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let queue_size = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048) as usize;
    let batch_size = (number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) as usize).min(queue_size);
    let delay = delay.unwrap_or_else(|| Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)));
    let timeout = Duration::from_millis(number("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000));
    let client = crate::http_client_builder()
        .timeout(timeout)
        .build()
        .context("building the OTLP HTTP client")?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_timeout(timeout)
        .with_http_client(client);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    // The error names the setting at fault, never a header's value.
    let mut exporter = builder
        .build()
        .map_err(|e| anyhow::anyhow!("the OTLP trace exporter: {e}"))?;
    exporter.set_resource(&resource());
    let (queue, spans) = mpsc::channel(queue_size);
    let task = tokio::spawn(send_batches(exporter, spans, batch_size, delay));
    let previous = EXPORT.write().expect("export lock").replace(Exporting { queue, task });
    if let Some(previous) = previous {
        previous.task.abort();
    }
    Ok(())
}

/// Stops the export: what is queued is sent (for at most `timeout`), then nothing more is.
pub async fn stop_export(timeout: Duration) {
    let export = EXPORT.write().expect("export lock").take();
    if let Some(Exporting { queue, task }) = export {
        drop(queue);
        if tokio::time::timeout(timeout, task).await.is_err() {
            tracing::warn!("the trace export did not finish in time: the spans still queued are lost");
        }
    }
}

/// Holds the export (spans end unqueued) or lets it go on.
pub fn pause_export(paused: bool) {
    PAUSED.store(paused, std::sync::atomic::Ordering::Relaxed);
}

/// Sends queued spans in batches: a batch goes when it is full or `delay` after its first span.
async fn send_batches(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    batch_size: usize,
    delay: Duration,
) {
    while let Some(first) = spans.recv().await {
        let mut batch = Vec::with_capacity(batch_size);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + delay;
        let mut closed = false;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let count = batch.len();
        match exporter.export(batch).await {
            Ok(()) => crate::metrics::trace_export("success"),
            Err(e) => {
                crate::metrics::trace_export("failure");
                tracing::warn!(spans = count, error = %e, "exporting spans failed: they are dropped");
            }
        }
        if closed {
            break;
        }
    }
}

/// Spans dropped by a full queue since the process started (the metric counts the same).
static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The span processor: finished spans go to the export queue when an export runs; a full queue
/// drops the span and counts it, so no traced work ever waits for the exporter.
#[derive(Debug)]
struct Queue;

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if PAUSED.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let export = EXPORT.read().expect("export lock");
        if let Some(export) = export.as_ref()
            && let Err(mpsc::error::TrySendError::Full(_)) = export.queue.try_send(span)
        {
            DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::trace_span_dropped();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The W3C `traceparent` of a span context: `00-<trace id>-<span id>-<flags>`.
pub fn format_traceparent(cx: &SpanContext) -> Option<String> {
    cx.is_valid()
        .then(|| format!("00-{}-{}-{:02x}", cx.trace_id(), cx.span_id(), cx.trace_flags().to_u8()))
}

/// The context a `traceparent` names (a remote parent), if it is well formed.
pub fn parse_traceparent(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.trim().to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The 32 hex digits of the trace id a `traceparent` names.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    parse_traceparent(traceparent).map(|cx| cx.span().span_context().trace_id().to_string())
}

/// The `traceparent` of a traced span (it is started if it was not yet).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    format_traceparent(span.context().span().span_context())
}

/// The `traceparent` of the innermost traced span entered on this task.
pub fn current_traceparent() -> Option<String> {
    format_traceparent(opentelemetry::Context::current().span().span_context())
}

/// The trace id of the innermost traced span entered on this task.
pub fn current_trace_id() -> Option<String> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// Makes `span` continue the trace a stored `traceparent` names (a no-op without one).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(parent);
    }
}

/// Links `span` to the trace a stored `traceparent` names (a no-op without one).
pub fn link(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse_traceparent) {
        span.add_link(parent.span().span_context().clone());
    }
}

/// A SCIM path as a route template: every segment after the resource type is an id
/// (`/Users/2819c223` → `/Users/{id}`), so no id or name of a person reaches an attribute.
pub fn route_template(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let mut segments = path.trim_start_matches('/').split('/');
    let mut template = String::new();
    if let Some(first) = segments.next() {
        template.push('/');
        template.push_str(first);
    }
    for _ in segments {
        template.push_str("/{id}");
    }
    if template.is_empty() { "/".into() } else { template }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector that takes nothing (its queue full) costs a traced task nothing: the spans
    /// that do not fit are dropped and counted at once.
    #[tokio::test]
    async fn a_full_export_queue_drops_and_counts_spans_instead_of_waiting() {
        use opentelemetry::trace::{Span as _, Tracer as _};
        let (queue, mut queued) = mpsc::channel(2);
        let task = tokio::spawn(std::future::pending::<()>());
        *EXPORT.write().unwrap() = Some(Exporting { queue, task });
        let provider = SdkTracerProvider::builder().with_span_processor(Queue).build();
        let tracer = provider.tracer("test");
        let dropped_before = DROPPED.load(std::sync::atomic::Ordering::Relaxed);
        for _ in 0..5 {
            tracer.start("span").end();
        }
        assert_eq!(DROPPED.load(std::sync::atomic::Ordering::Relaxed) - dropped_before, 3);
        assert!(queued.try_recv().is_ok() && queued.try_recv().is_ok());
        assert!(queued.try_recv().is_err(), "two queued, no more");
        stop_export(Duration::from_millis(10)).await;
    }

    #[test]
    fn a_scim_path_becomes_its_route_template() {
        assert_eq!(route_template("/Users/2819c223-7f76"), "/Users/{id}");
        assert_eq!(route_template("/Groups"), "/Groups");
        assert_eq!(route_template("/Users?filter=userName eq \"ada\""), "/Users");
        assert_eq!(route_template("/Groups/abc/extra"), "/Groups/{id}/{id}");
    }

    #[test]
    fn a_traceparent_round_trips_and_names_its_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse_traceparent(tp).expect("valid");
        assert_eq!(format_traceparent(cx.span().span_context()).as_deref(), Some(tp));
        assert_eq!(trace_id_of(tp).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("garbage").is_none());
    }
}
