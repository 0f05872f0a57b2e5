//! The integration tests, one module per suite, in one test binary: the harness (`common`) is
//! compiled once and the suites link once. Run one suite with `cargo test --test suite engine::`
//! (or `cargo nextest run -E 'test(/^engine::/)'`).

#[path = "common/mod.rs"]
mod common;

#[path = "access_end.rs"]
mod access_end;
#[path = "api_access.rs"]
mod api_access;
#[path = "api_edge.rs"]
mod api_edge;
#[path = "app_lifecycle.rs"]
mod app_lifecycle;
#[path = "compose.rs"]
mod compose;
#[path = "config_as_code.rs"]
mod config_as_code;
#[path = "cycle_faults.rs"]
mod cycle_faults;
#[path = "deletion_guard.rs"]
mod deletion_guard;
#[path = "engine.rs"]
mod engine;
#[path = "graph_source.rs"]
mod graph_source;
#[path = "intake_batches.rs"]
mod intake_batches;
#[path = "legacy_removal.rs"]
mod legacy_removal;
#[path = "links.rs"]
mod links;
#[path = "load.rs"]
mod load;
#[path = "logs_activation.rs"]
mod logs_activation;
#[path = "logs_audit.rs"]
mod logs_audit;
#[path = "logs_query.rs"]
mod logs_query;
#[path = "logs_retention.rs"]
mod logs_retention;
#[path = "mapping.rs"]
mod mapping;
#[path = "metrics.rs"]
mod metrics;
#[path = "migrate_store.rs"]
mod migrate_store;
#[path = "oauth2.rs"]
mod oauth2;
#[path = "openapi.rs"]
mod openapi;
#[path = "page.rs"]
mod page;
#[path = "properties.rs"]
mod properties;
#[path = "provisioning.rs"]
mod provisioning;
#[path = "push_cost.rs"]
mod push_cost;
#[path = "realtime.rs"]
mod realtime;
#[path = "replicas.rs"]
mod replicas;
#[path = "revocation.rs"]
mod revocation;
#[path = "scale_out.rs"]
mod scale_out;
#[path = "shutdown.rs"]
mod shutdown;
#[path = "store_interleavings.rs"]
mod store_interleavings;
#[path = "traces.rs"]
mod traces;
#[path = "upgrade.rs"]
mod upgrade;
#[path = "webhook_answers.rs"]
mod webhook_answers;
#[path = "window_cycle.rs"]
mod window_cycle;
