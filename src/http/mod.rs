//! The HTTP API: one module per resource, one context, one error type.

mod apps;
mod auth;
mod directory;
pub mod error;
mod logs;
mod tokens;
mod ui;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{Caller, Role};
pub use tokens::issue as issue_token;

use crate::provisioning::Engine;
use crate::store::AuditEntry;

#[derive(Clone)]
pub struct ApiContext {
    pub engine: Arc<Engine>,
}

impl ApiContext {
    /// Records who changed what through the API.
    pub async fn audit(&self, caller: &Caller, action: &str, target: &str, detail: Value) -> error::ApiResult<()> {
        let entry = AuditEntry {
            seq: 0,
            time: self.engine.ctx.now(),
            actor: caller.name.clone(),
            action: action.into(),
            target: target.into(),
            detail,
        };
        self.engine.ctx.store.insert_audit(&entry).await?;
        Ok(())
    }
}

/// Every route the bridge serves, with its method.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/webhooks/pim"),
    ("post", "/v1/apps"),
    ("get", "/v1/apps"),
    ("get", "/v1/apps/{appId}"),
    ("patch", "/v1/apps/{appId}"),
    ("delete", "/v1/apps/{appId}"),
    ("get", "/v1/apps/{appId}/groups"),
    ("put", "/v1/apps/{appId}/groups/{groupId}"),
    ("delete", "/v1/apps/{appId}/groups/{groupId}"),
    ("post", "/v1/apps/{appId}/test-connection"),
    ("post", "/v1/apps/{appId}/sync"),
    ("get", "/v1/apps/{appId}/sync-cycles"),
    ("post", "/v1/apps/{appId}/provision-on-demand"),
    ("post", "/v1/apps/{appId}/quarantine/clear"),
    ("put", "/v1/groups/{groupId}/members/{principalId}"),
    ("delete", "/v1/groups/{groupId}/members/{principalId}"),
    ("get", "/v1/provisioning-logs"),
    ("get", "/v1/provisioning-logs/export"),
    ("get", "/v1/provisioning-logs/{id}"),
    ("get", "/v1/activations/{eventId}"),
    ("get", "/v1/audit"),
    ("post", "/v1/tokens"),
    ("get", "/v1/tokens"),
    ("delete", "/v1/tokens/{id}"),
    ("get", "/"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

pub fn router(ctx: ApiContext) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/v1/webhooks/pim", post(webhooks::receive))
        .route("/v1/apps", post(apps::create).get(apps::list))
        .route(
            "/v1/apps/{appId}",
            get(apps::get).patch(apps::update).delete(apps::delete),
        )
        .route("/v1/apps/{appId}/groups", get(apps::list_groups))
        .route(
            "/v1/apps/{appId}/groups/{groupId}",
            put(apps::put_group)
                .delete(apps::delete_group)
                .get(apps::list_groups_one),
        )
        .route("/v1/apps/{appId}/test-connection", post(apps::test_connection))
        .route("/v1/apps/{appId}/sync", post(apps::sync_now))
        .route("/v1/apps/{appId}/sync-cycles", get(apps::cycles))
        .route("/v1/apps/{appId}/provision-on-demand", post(apps::provision_on_demand))
        .route("/v1/apps/{appId}/quarantine/clear", post(apps::clear_quarantine))
        .route(
            "/v1/groups/{groupId}/members/{principalId}",
            put(directory::put_member).delete(directory::delete_member),
        )
        .route("/v1/provisioning-logs", get(logs::list))
        .route("/v1/provisioning-logs/export", get(logs::export))
        .route("/v1/provisioning-logs/{id}", get(logs::get))
        .route("/v1/activations/{eventId}", get(logs::activation))
        .route("/v1/audit", get(logs::audit))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/", get(ui::page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { error::ApiError::NotFound })
        .layer(DefaultBodyLimit::max(webhooks::MAX_BODY))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(ctx)
}

async fn readyz(State(ctx): State<ApiContext>) -> impl IntoResponse {
    match ctx.engine.ctx.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(_) => error::ApiError::Unavailable.into_response(),
    }
}

async fn metrics(State(ctx): State<ApiContext>) -> error::ApiResult<String> {
    let apps = ctx.engine.ctx.store.list_apps().await?;
    let mut out = String::new();
    out.push_str("# HELP scim_bridge_apps Registered apps by status.\n# TYPE scim_bridge_apps gauge\n");
    for status in ["active", "paused", "quarantined"] {
        let n = apps.iter().filter(|a| a.status == status).count();
        out.push_str(&format!("scim_bridge_apps{{status=\"{status}\"}} {n}\n"));
    }
    out.push_str("# HELP scim_bridge_app_quarantined 1 while the app is quarantined.\n# TYPE scim_bridge_app_quarantined gauge\n");
    for app in &apps {
        out.push_str(&format!(
            "scim_bridge_app_quarantined{{app_id=\"{}\"}} {}\n",
            app.id,
            (app.status == "quarantined") as u8
        ));
    }
    Ok(out)
}

async fn openapi() -> axum::Json<Value> {
    let mut paths = serde_json::Map::new();
    for (method, path) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        entry[*method] = json!({
            "operationId": format!("{method}{}", path.replace(['/', '{', '}', '-'], "_")),
            "parameters": params,
            "responses": {"default": {"description": "see the contract"}},
        });
    }
    axum::Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "scim-bridge", "version": env!("CARGO_PKG_VERSION")},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }))
}
