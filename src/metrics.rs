//! Prometheus metrics. Every metric the bridge records goes through one of the helpers below, so a
//! call site stays one line and the names live in one place (the README lists them). Gauges that
//! describe stored state (apps by status, quarantine, deferred work) are computed from the store
//! at scrape time instead of being kept in step with every write.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::{AppRecord, CycleCounts, SharedStore, StoreResult};

pub const WEBHOOK_EVENTS: &str = "scim_bridge_webhook_events_total";
pub const WEBHOOK_REJECTIONS: &str = "scim_bridge_webhook_rejections_total";
pub const PUSHES: &str = "scim_bridge_pushes_total";
pub const PUSH_LATENCY: &str = "scim_bridge_push_latency_seconds";
pub const DEFERRALS: &str = "scim_bridge_deferrals_total";
pub const WINDOW_REJECTIONS: &str = "scim_bridge_window_rejections_total";
pub const SCIM_REQUEST_DURATION: &str = "scim_bridge_scim_request_duration_seconds";
pub const CYCLES: &str = "scim_bridge_cycles_total";
pub const CYCLE_DURATION: &str = "scim_bridge_cycle_duration_seconds";
pub const CYCLE_CHANGES: &str = "scim_bridge_cycle_changes_total";
pub const APPS: &str = "scim_bridge_apps";
pub const APP_QUARANTINED: &str = "scim_bridge_app_quarantined";
pub const DEFERRED_JOBS: &str = "scim_bridge_deferred_jobs";
pub const SOURCE_POLLS: &str = "scim_bridge_source_polls_total";
pub const SOURCE_LAG: &str = "scim_bridge_source_lag_seconds";
pub const LEASES_HELD: &str = "scim_bridge_leases_held";
pub const LEASE_CHANGES: &str = "scim_bridge_lease_changes_total";
pub const TRACE_SPANS_DROPPED: &str = "scim_bridge_trace_spans_dropped_total";
pub const TRACE_EXPORTS: &str = "scim_bridge_trace_exports_total";
pub const ACCESS_EXCESS: &str = "scim_bridge_access_excess_seconds";
pub const ACCESS_ENDS_OVER_SLO: &str = "scim_bridge_access_ends_over_slo";
pub const HELD_REMOVALS: &str = "scim_bridge_held_removals";

/// SCIM calls take milliseconds to a request timeout of 30 s.
const REQUEST_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Arrival to confirmation: immediate pushes take well under a second, deferred ones up to a cycle.
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 2400.0, 3600.0, 86400.0,
];
/// How long access outlived its end: a second or less when all goes well, up to hours when a
/// target refuses removals for long.
const EXCESS_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 2400.0, 3600.0, 14400.0, 86400.0,
];
const CYCLE_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for the process (once; later calls return the same handle).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(SCIM_REQUEST_DURATION.into()), REQUEST_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(PUSH_LATENCY.into()), LATENCY_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CYCLE_DURATION.into()), CYCLE_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ACCESS_EXCESS.into()), EXCESS_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics shows only the stored state");
        }
        describe();
        // Histograms keep their samples until upkeep drains them into buckets.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("spawn the metrics upkeep thread");
        handle
    })
}

fn describe() {
    describe_counter!(
        WEBHOOK_EVENTS,
        "Webhook events by outcome: accepted, duplicate, conflict, rejected (a refused request counts one)."
    );
    describe_counter!(
        WEBHOOK_REJECTIONS,
        "Rejected webhook events by reason: signature, malformed, rule, too_large, media_type."
    );
    describe_counter!(
        PUSHES,
        "Immediate pushes (activations, removals, on-demand) by app and outcome: success, failure, skipped."
    );
    describe_histogram!(
        PUSH_LATENCY,
        Unit::Seconds,
        "From the webhook's arrival to the target's confirmation, per app."
    );
    describe_counter!(
        DEFERRALS,
        "Pushes deferred to the app's next synchronization cycle, by app."
    );
    describe_counter!(
        WINDOW_REJECTIONS,
        "Pushes the app's rate window had no room for, by app."
    );
    describe_histogram!(
        SCIM_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of each SCIM request sent to a target (each attempt), by app."
    );
    describe_counter!(
        SOURCE_POLLS,
        "Polls of a source besides the webhook (source graph:<groupId>), by outcome: success, throttled, failure."
    );
    describe_counter!(CYCLES, "Synchronization cycles ended, by app, trigger and status.");
    describe_gauge!(
        LEASES_HELD,
        "Apps this replica dispatches for (several replicas on PostgreSQL; absent on SQLite)."
    );
    describe_counter!(
        LEASE_CHANGES,
        "Leases this replica took from another one, by reason: takeover (the other's had expired), handover (released)."
    );
    describe_histogram!(
        ACCESS_EXCESS,
        Unit::Seconds,
        "How long access outlived its end at an app (end to the target's confirmation), by reason_class: pim (expiry, deactivation, revoked, adminRemove), other."
    );
    describe_histogram!(
        CYCLE_DURATION,
        Unit::Seconds,
        "Duration of synchronization cycles, by app."
    );
    describe_counter!(
        CYCLE_CHANGES,
        "What synchronization cycles did, by app and change (added, removed, users_created, ...)."
    );
    describe_counter!(
        TRACE_SPANS_DROPPED,
        "Finished spans not exported because the export queue was full (OTLP export on; SPEC §10)."
    );
    describe_counter!(
        TRACE_EXPORTS,
        "OTLP export requests (a batch of spans each), by outcome: success, failure."
    );
}

/// A finished span dropped: the export queue was full.
pub fn trace_span_dropped() {
    counter!(TRACE_SPANS_DROPPED).increment(1);
}

/// One OTLP export request: `success` or `failure`.
pub fn trace_export(outcome: &'static str) {
    counter!(TRACE_EXPORTS, "outcome" => outcome).increment(1);
}

/// One poll of a source (`graph:<groupId>`): `success`, `throttled` or `failure`.
pub fn source_poll(source: &str, outcome: &'static str) {
    counter!(SOURCE_POLLS, "source" => source.to_string(), "outcome" => outcome).increment(1);
}

/// How many apps' leases this replica holds now.
pub fn leases_held(n: usize) {
    gauge!(LEASES_HELD).set(n as f64);
}

/// A lease taken from another replica: `takeover` (its lease had expired) or `handover`.
pub fn lease_changed(reason: &'static str) {
    counter!(LEASE_CHANGES, "reason" => reason).increment(1);
}

/// A webhook event the store took or judged: `accepted`, `duplicate` or `conflict`.
pub fn webhook_event(outcome: &'static str) {
    counter!(WEBHOOK_EVENTS, "outcome" => outcome).increment(1);
}

/// A webhook event or request refused: `signature`, `malformed`, `rule`, `too_large`, `media_type`.
pub fn webhook_rejected(reason: &'static str) {
    counter!(WEBHOOK_EVENTS, "outcome" => "rejected").increment(1);
    counter!(WEBHOOK_REJECTIONS, "reason" => reason).increment(1);
}

/// A push the dispatcher decided: `success`, `failure` or `skipped`.
pub fn push(app_id: &str, outcome: &str) {
    counter!(PUSHES, "app_id" => app_id.to_string(), "outcome" => outcome.to_string()).increment(1);
}

/// A push confirmed by the target, `latency_ms` after its webhook arrived.
pub fn push_latency(app_id: &str, latency_ms: i64) {
    histogram!(PUSH_LATENCY, "app_id" => app_id.to_string()).record(latency_ms.max(0) as f64 / 1000.0);
}

pub fn deferred(app_id: &str) {
    counter!(DEFERRALS, "app_id" => app_id.to_string()).increment(1);
}

pub fn window_rejected(app_id: &str) {
    counter!(WINDOW_REJECTIONS, "app_id" => app_id.to_string()).increment(1);
}

/// One SCIM request (one attempt) to an app's target. Clients not bound to an app are not counted.
pub fn scim_request(app_id: &str, elapsed: Duration) {
    if !app_id.is_empty() {
        histogram!(SCIM_REQUEST_DURATION, "app_id" => app_id.to_string()).record(elapsed.as_secs_f64());
    }
}

/// A synchronization cycle that ended, with its duration and what it did.
pub fn cycle_ended(app_id: &str, trigger: &str, status: &str, duration_ms: i64, counts: &CycleCounts) {
    let app = app_id.to_string();
    counter!(CYCLES, "app_id" => app.clone(), "trigger" => trigger.to_string(), "status" => status.to_string())
        .increment(1);
    histogram!(CYCLE_DURATION, "app_id" => app.clone()).record(duration_ms.max(0) as f64 / 1000.0);
    let changes = [
        ("added", counts.added),
        ("removed", counts.removed),
        ("users_created", counts.users_created),
        ("users_updated", counts.users_updated),
        ("users_disabled", counts.users_disabled),
        ("failed", counts.failed),
        ("skipped", counts.skipped),
        ("drift_found", counts.drift_found),
        ("deferred_taken", counts.deferred_taken),
    ];
    for (change, n) in changes {
        counter!(CYCLE_CHANGES, "app_id" => app.clone(), "change" => change).increment(n.max(0) as u64);
    }
}

/// An access end confirmed by the target: how long access outlived it.
pub fn access_excess(pim_end: bool, excess_ms: i64) {
    let class = if pim_end { "pim" } else { "other" };
    histogram!(ACCESS_EXCESS, "reason_class" => class).record(excess_ms.max(0) as f64 / 1000.0);
}

/// The exposition text: what was recorded, then the gauges read from the store now (`now` on
/// the bridge's clock; `slo_ms` gives each app's access-end objective).
pub async fn render(store: &SharedStore, now: i64, slo_ms: impl Fn(&AppRecord) -> i64) -> StoreResult<String> {
    let mut out = install().render();
    let apps = store.list_apps().await?;
    gauge_header(&mut out, APPS, "Registered apps by status.");
    for status in ["active", "paused", "quarantined"] {
        let n = apps.iter().filter(|a| a.status == status).count();
        out.push_str(&format!("{APPS}{{status=\"{status}\"}} {n}\n"));
    }
    gauge_header(
        &mut out,
        APP_QUARANTINED,
        "1 while the app is quarantined (paused or not).",
    );
    for app in &apps {
        let quarantined = u8::from(app.quarantine_level > 0);
        out.push_str(&format!(
            "{APP_QUARANTINED}{{app_id=\"{}\"}} {quarantined}\n",
            label(&app.id)
        ));
    }
    gauge_header(
        &mut out,
        DEFERRED_JOBS,
        "Work deferred to the app's next synchronization cycle, waiting now.",
    );
    // Counted in the database: a scrape never reads the jobs themselves.
    let deferred: std::collections::HashMap<String, i64> = store.deferred_counts().await?.into_iter().collect();
    for app in &apps {
        let n = deferred.get(&app.id).copied().unwrap_or(0);
        out.push_str(&format!("{DEFERRED_JOBS}{{app_id=\"{}\"}} {n}\n", label(&app.id)));
    }
    gauge_header(
        &mut out,
        ACCESS_ENDS_OVER_SLO,
        "PIM ends still waiting for the target longer than the app's access-end objective (a series only while above 0).",
    );
    let mut over: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    let open = store.open_access_ends().await?;
    for end in open.iter().filter(|e| e.is_pim_end() && e.status != "held") {
        if let Some(app) = apps.iter().find(|a| a.id == end.app_id)
            && now - end.ended_at > slo_ms(app)
        {
            *over.entry(app.id.as_str()).or_default() += 1;
        }
    }
    for (app_id, n) in over {
        out.push_str(&format!("{ACCESS_ENDS_OVER_SLO}{{app_id=\"{}\"}} {n}\n", label(app_id)));
    }
    gauge_header(
        &mut out,
        HELD_REMOVALS,
        "Removals the app's deletion guard holds until approved or rejected (a series only while above 0).",
    );
    for (app_id, n) in store.held_counts().await? {
        out.push_str(&format!("{HELD_REMOVALS}{{app_id=\"{}\"}} {n}\n", label(&app_id)));
    }
    gauge_header(
        &mut out,
        SOURCE_LAG,
        "Seconds since the source's last successful poll (since its first attempt if none succeeded).",
    );
    let now = chrono::Utc::now().timestamp_millis();
    for source in store.list_sources().await? {
        if let Some(since) = source.last_success_at.or(source.last_attempt_at) {
            let lag = (now - since).max(0) as f64 / 1000.0;
            out.push_str(&format!("{SOURCE_LAG}{{source=\"{}\"}} {lag}\n", label(&source.id)));
        }
    }
    Ok(out)
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
}

/// Escapes a label value of the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
