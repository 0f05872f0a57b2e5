//! The HTTP API: one module per resource, one context, one error type.

mod access_ends;
mod apps;
mod auth;
mod config;
mod directory;
pub mod error;
mod links;
mod logs;
pub mod model;
mod openapi;
mod sources;
mod tokens;
mod ui;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::Value;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{Caller, Role};
pub use openapi::{ParamsOf, SchemaOf};
pub use tokens::issue as issue_token;

use crate::provisioning::Engine;
use crate::store::AuditEntry;

#[derive(Clone)]
pub struct ApiContext {
    pub engine: Arc<Engine>,
}

impl ApiContext {
    /// Records who changed what through the API.
    /// Makes the write with the audit entry that records it: both commit in one transaction.
    pub async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        detail: Value,
        write: impl std::future::Future<Output = crate::store::StoreResult<T>>,
    ) -> error::ApiResult<T> {
        let entry = AuditEntry {
            seq: 0,
            time: self.engine.ctx.now(),
            actor: caller.name.clone(),
            action: action.into(),
            target: target.into(),
            detail,
        };
        Ok(crate::store::audited(self.engine.ctx.store.as_ref(), entry, write).await?)
    }
}

/// Who may call a route, as the OpenAPI document tells it.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    Public,
    /// `X-Bridge-Signature` over the body.
    Signed,
    /// A bearer token; the text says which roles.
    Roles(&'static str),
}

/// What a route answers on success.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    Empty,
    /// A JSON body of that type (its schema is derived from it).
    Json(SchemaOf),
    /// Other media types (text, HTML, an export).
    Media(&'static [&'static str]),
}

/// One route: the router is built from this table and `/openapi.json` documents it, so what is
/// served and what is documented cannot differ.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub tag: &'static str,
    pub access: Access,
    pub query: ParamsOf,
    /// The request body's type.
    pub request: Option<SchemaOf>,
    /// The success status and its body.
    pub ok: u16,
    pub body: Body,
    handler: fn(MethodFilter) -> MethodRouter<ApiContext>,
}

impl Route {
    fn method_filter(&self) -> MethodFilter {
        match self.method {
            "get" => MethodFilter::GET,
            "post" => MethodFilter::POST,
            "put" => MethodFilter::PUT,
            "patch" => MethodFilter::PATCH,
            "delete" => MethodFilter::DELETE,
            other => panic!("route {} has an unknown method {other}", self.path),
        }
    }

    pub fn operation_id(&self) -> String {
        let words: Vec<&str> = self
            .path
            .split(['/', '{', '}', '-'])
            .filter(|w| !w.is_empty() && *w != "v1")
            .collect();
        if words.is_empty() {
            format!("{}_page", self.method)
        } else {
            format!("{}_{}", self.method, words.join("_"))
        }
    }

    fn ok_description(&self) -> String {
        StatusCode::from_u16(self.ok)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("OK")
            .to_string()
    }
}

const ADMIN: Access = Access::Roles("admin");
const APP_READERS: Access = Access::Roles("admin, operator, the app's owners");
const LOG_READERS: Access = Access::Roles("admin, operator, app owners (their apps' entries only)");

/// Every route the bridge serves.
pub const ROUTES: &[Route] = &[
    Route {
        method: "post",
        path: "/v1/webhooks/pim",
        summary: "Receive one PIM event or a batch of up to 100",
        tag: "webhook",
        access: Access::Signed,
        query: ParamsOf::NONE,
        request: Some(SchemaOf::of::<model::WebhookBody>()),
        ok: 202,
        body: Body::Json(SchemaOf::of::<model::WebhookAnswer>()),
        handler: |m| on(m, webhooks::receive),
    },
    Route {
        method: "post",
        path: "/v1/apps",
        summary: "Register an app (the creator becomes an owner)",
        tag: "apps",
        access: Access::Roles("admin, app_owner"),
        query: ParamsOf::NONE,
        request: Some(SchemaOf::closed::<model::AppRegistration>()),
        ok: 201,
        body: Body::Json(SchemaOf::of::<model::App>()),
        handler: |m| on(m, apps::create),
    },
    Route {
        method: "get",
        path: "/v1/apps",
        summary: "List the apps the token may see",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::AppList>()),
        handler: |m| on(m, apps::list),
    },
    Route {
        method: "get",
        path: "/v1/apps/{appId}",
        summary: "An app with its status, next sync and last cycle",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::App>()),
        handler: |m| on(m, apps::get),
    },
    Route {
        method: "patch",
        path: "/v1/apps/{appId}",
        summary: "Change an app; pause (`status: paused`) or resume it",
        tag: "apps",
        access: Access::Roles("admin, the app's owners"),
        query: ParamsOf::NONE,
        request: Some(SchemaOf::closed::<model::AppUpdate>()),
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::App>()),
        handler: |m| on(m, apps::update),
    },
    Route {
        method: "delete",
        path: "/v1/apps/{appId}",
        summary: "Stop provisioning an app; the target is left as it is unless `deprovision=true`",
        tag: "apps",
        access: Access::Roles("admin, the app's owners"),
        query: ParamsOf::of::<apps::DeleteQuery>(),
        request: None,
        ok: 204,
        body: Body::Empty,
        handler: |m| on(m, apps::delete),
    },
    Route {
        method: "post",
        path: "/v1/apps/{appId}/held-removals/approve",
        summary: "Send the removals the deletion guard holds (each re-checked, paced as a cycle's step)",
        tag: "apps",
        access: Access::Roles("admin, operator"),
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::HeldCount>()),
        handler: |m| on(m, apps::approve_held),
    },
    Route {
        method: "post",
        path: "/v1/apps/{appId}/held-removals/reject",
        summary: "Forget the removals the deletion guard holds: the members stay at the target",
        tag: "apps",
        access: Access::Roles("admin, operator"),
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::HeldCount>()),
        handler: |m| on(m, apps::reject_held),
    },
    Route {
        method: "get",
        path: "/v1/apps/{appId}/users",
        summary: "Object links: which target user is which principal at the app, by principal, paged",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::of::<links::LinkQuery>(),
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::UserLinkPage>()),
        handler: |m| on(m, links::list),
    },
    Route {
        method: "get",
        path: "/v1/apps/{appId}/users/{principalId}",
        summary: "One principal's object link at the app",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::UserLink>()),
        handler: |m| on(m, links::get),
    },
    Route {
        method: "delete",
        path: "/v1/apps/{appId}/users/{principalId}",
        summary: "Forget a stale object link (the app must be paused); its memberships stay, in doubt",
        tag: "apps",
        access: Access::Roles("admin, operator"),
        query: ParamsOf::NONE,
        request: None,
        ok: 204,
        body: Body::Empty,
        handler: |m| on(m, links::delete),
    },
    Route {
        method: "get",
        path: "/v1/apps/{appId}/groups",
        summary: "The source groups assigned to an app",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::AssignmentList>()),
        handler: |m| on(m, apps::list_groups),
    },
    Route {
        method: "get",
        path: "/v1/apps/{appId}/groups/{groupId}",
        summary: "One group assignment of an app",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::Assignment>()),
        handler: |m| on(m, apps::list_groups_one),
    },
    Route {
        method: "put",
        path: "/v1/apps/{appId}/groups/{groupId}",
        summary: "Assign a source group to an app under a target group name",
        tag: "apps",
        access: ADMIN,
        query: ParamsOf::NONE,
        request: Some(SchemaOf::of::<model::AssignmentRequest>()),
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::Assignment>()),
        handler: |m| on(m, apps::put_group),
    },
    Route {
        method: "delete",
        path: "/v1/apps/{appId}/groups/{groupId}",
        summary: "Unassign a group (the next cycle removes what the bridge provisioned for it)",
        tag: "apps",
        access: ADMIN,
        query: ParamsOf::NONE,
        request: None,
        ok: 204,
        body: Body::Empty,
        handler: |m| on(m, apps::delete_group),
    },
    Route {
        method: "post",
        path: "/v1/apps/{appId}/test-connection",
        summary: "Probe the app's endpoint and credentials",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::ConnectionTest>()),
        handler: |m| on(m, apps::test_connection),
    },
    Route {
        method: "post",
        path: "/v1/apps/{appId}/mapping/preview",
        summary: "The User the app's attribute mapping makes of a principal, and the filters that would find it, without contacting the target",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::NONE,
        request: Some(SchemaOf::closed::<model::MappingPreviewRequest>()),
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::MappingPreview>()),
        handler: |m| on(m, apps::preview_mapping),
    },
    Route {
        method: "post",
        path: "/v1/apps/{appId}/sync",
        summary: "Run a synchronization cycle now",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::of::<apps::SyncQuery>(),
        request: None,
        ok: 202,
        body: Body::Json(SchemaOf::of::<model::CycleStarted>()),
        handler: |m| on(m, apps::sync_now),
    },
    Route {
        method: "get",
        path: "/v1/apps/{appId}/sync-cycles",
        summary: "The app's cycles, newest first, with a running cycle's progress",
        tag: "apps",
        access: APP_READERS,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::CycleList>()),
        handler: |m| on(m, apps::cycles),
    },
    Route {
        method: "post",
        path: "/v1/apps/{appId}/provision-on-demand",
        summary: "Provision one membership now; answers its log entry",
        tag: "apps",
        access: Access::Roles("admin, operator"),
        query: ParamsOf::NONE,
        request: Some(SchemaOf::of::<model::OnDemandRequest>()),
        ok: 200,
        body: Body::Json(SchemaOf::of::<crate::types::LogEntryView<'static>>()),
        handler: |m| on(m, apps::provision_on_demand),
    },
    Route {
        method: "get",
        path: "/v1/sources",
        summary: "Each source of events (the webhook, a Graph poller per assigned group): last successful poll, lag, last error",
        tag: "sources",
        access: Access::Roles("admin, operator"),
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::SourceList>()),
        handler: |m| on(m, sources::list),
    },
    Route {
        method: "post",
        path: "/v1/apps/{appId}/quarantine/clear",
        summary: "End an app's quarantine",
        tag: "apps",
        access: Access::Roles("admin, operator"),
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::App>()),
        handler: |m| on(m, apps::clear_quarantine),
    },
    Route {
        method: "put",
        path: "/v1/groups/{groupId}/members/{principalId}",
        summary: "Directory feed: a standing membership, provisioned at the next cycle",
        tag: "directory",
        access: ADMIN,
        query: ParamsOf::NONE,
        request: Some(SchemaOf::of::<model::DirectoryMemberRequest>()),
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::DirectoryMember>()),
        handler: |m| on(m, directory::put_member),
    },
    Route {
        method: "delete",
        path: "/v1/groups/{groupId}/members/{principalId}",
        summary: "Directory feed: end a standing membership",
        tag: "directory",
        access: ADMIN,
        query: ParamsOf::NONE,
        request: None,
        ok: 204,
        body: Body::Empty,
        handler: |m| on(m, directory::delete_member),
    },
    Route {
        method: "get",
        path: "/v1/provisioning-logs",
        summary: "Provisioning log entries, newest first, filtered and paged",
        tag: "logs",
        access: LOG_READERS,
        query: ParamsOf::of::<logs::LogQuery>().except(&["format"]),
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::LogPage<'static>>()),
        handler: |m| on(m, logs::list),
    },
    Route {
        method: "get",
        path: "/v1/provisioning-logs/export",
        summary: "Every matching entry, streamed as CSV or JSON lines",
        tag: "logs",
        access: LOG_READERS,
        query: ParamsOf::of::<logs::LogQuery>().except(&["limit", "cursor"]),
        request: None,
        ok: 200,
        body: Body::Media(&["text/csv", "application/x-ndjson"]),
        handler: |m| on(m, logs::export),
    },
    Route {
        method: "get",
        path: "/v1/provisioning-logs/{id}",
        summary: "One log entry with its steps",
        tag: "logs",
        access: LOG_READERS,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<crate::types::LogEntryView<'static>>()),
        handler: |m| on(m, logs::get),
    },
    Route {
        method: "get",
        path: "/v1/access-ends",
        summary: "Access-end records: how long access outlived each end, newest end first, filtered and paged",
        tag: "access ends",
        access: LOG_READERS,
        query: ParamsOf::of::<access_ends::AccessEndQuery>().except(&["format"]),
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::AccessEndPage>()),
        handler: |m| on(m, access_ends::list),
    },
    Route {
        method: "get",
        path: "/v1/access-ends/export",
        summary: "Every matching access-end record, streamed as CSV or JSON lines",
        tag: "access ends",
        access: LOG_READERS,
        query: ParamsOf::of::<access_ends::AccessEndQuery>().except(&["limit", "cursor"]),
        request: None,
        ok: 200,
        body: Body::Media(&["text/csv", "application/x-ndjson"]),
        handler: |m| on(m, access_ends::export),
    },
    Route {
        method: "get",
        path: "/v1/access-ends/summary",
        summary: "Per app: how long access outlived PIM's ends (p50, p99, max), pending ends, ends over the objective",
        tag: "access ends",
        access: LOG_READERS,
        query: ParamsOf::of::<access_ends::SummaryQuery>(),
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::AccessEndSummary>()),
        handler: |m| on(m, access_ends::summary),
    },
    Route {
        method: "get",
        path: "/v1/config",
        summary: "Every app as one configuration document (secrets as `${...}` placeholders), with its `ETag`",
        tag: "config",
        access: ADMIN,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::ConfigDocument>()),
        handler: |m| on(m, config::get_config),
    },
    Route {
        method: "put",
        path: "/v1/config",
        summary: "Plan a configuration document against the apps and apply it in one transaction (`dryRun` only plans; `If-Match` applies only if nothing changed since)",
        tag: "config",
        access: ADMIN,
        query: ParamsOf::of::<config::ConfigQuery>(),
        request: Some(SchemaOf::of::<model::ConfigDocument>()),
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::ConfigPlan>()),
        // A document of every app is larger than other bodies: 1,000 apps with their mappings
        // come to about 2 MiB.
        handler: |m| on(m, config::put_config).layer(DefaultBodyLimit::max(config::MAX_DOCUMENT)),
    },
    Route {
        method: "get",
        path: "/v1/activations/{eventId}",
        summary: "An event and, per app, its outcome and latency",
        tag: "logs",
        access: Access::Roles("admin, operator"),
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::Activation<'static>>()),
        handler: |m| on(m, logs::activation),
    },
    Route {
        method: "get",
        path: "/v1/audit",
        summary: "Who changed what through the API, newest first",
        tag: "logs",
        access: ADMIN,
        query: ParamsOf::of::<logs::AuditQuery>(),
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::AuditPage>()),
        handler: |m| on(m, logs::audit),
    },
    Route {
        method: "post",
        path: "/v1/tokens",
        summary: "Create an API token (shown once)",
        tag: "tokens",
        access: ADMIN,
        query: ParamsOf::NONE,
        request: Some(SchemaOf::of::<model::TokenRequest>()),
        ok: 201,
        body: Body::Json(SchemaOf::of::<model::TokenCreated>()),
        handler: |m| on(m, tokens::create),
    },
    Route {
        method: "get",
        path: "/v1/tokens",
        summary: "The API tokens (never their values)",
        tag: "tokens",
        access: ADMIN,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Json(SchemaOf::of::<model::TokenList>()),
        handler: |m| on(m, tokens::list),
    },
    Route {
        method: "delete",
        path: "/v1/tokens/{id}",
        summary: "Revoke a token",
        tag: "tokens",
        access: ADMIN,
        query: ParamsOf::NONE,
        request: None,
        ok: 204,
        body: Body::Empty,
        handler: |m| on(m, tokens::revoke),
    },
    Route {
        method: "get",
        path: "/",
        summary: "The operator page (signs in with a token held in the browser session)",
        tag: "service",
        access: Access::Public,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Media(&["text/html"]),
        handler: |m| on(m, ui::page),
    },
    Route {
        method: "get",
        path: "/healthz",
        summary: "Liveness",
        tag: "service",
        access: Access::Public,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Media(&["text/plain"]),
        handler: |m| on(m, healthz),
    },
    Route {
        method: "get",
        path: "/readyz",
        summary: "Readiness: the database is reachable",
        tag: "service",
        access: Access::Public,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Media(&["text/plain"]),
        handler: |m| on(m, readyz),
    },
    Route {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics (text format)",
        tag: "service",
        access: Access::Public,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Media(&["text/plain; version=0.0.4"]),
        handler: |m| on(m, metrics),
    },
    Route {
        method: "get",
        path: "/openapi.json",
        summary: "This document (OpenAPI 3.1)",
        tag: "service",
        access: Access::Public,
        query: ParamsOf::NONE,
        request: None,
        ok: 200,
        body: Body::Media(&["application/json"]),
        handler: |m| on(m, openapi),
    },
];

pub fn router(ctx: ApiContext) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, (route.handler)(route.method_filter()));
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(webhooks::MAX_BODY))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(ctx)
}

/// The span of one request, with the request id the answer will carry.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id)
}

/// No route matches: a 404 that says so (a handler's 404 means "no such resource").
async fn no_route(method: Method, uri: Uri) -> Response {
    let body = error::problem_body(
        StatusCode::NOT_FOUND,
        &format!("no route for {method} {}", uri.path()),
        None,
    );
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_json_string(),
    )
        .into_response()
}

/// The path exists but not with this method: a problem like every other 4xx (the router adds
/// `Allow`).
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = error::problem_body(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not served for {}", uri.path()),
        None,
    );
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_json_string(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(ctx): State<ApiContext>) -> impl IntoResponse {
    if ctx.engine.cluster_problem().is_some() {
        return error::ApiError::Unavailable.into_response();
    }
    match ctx.engine.ctx.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(_) => error::ApiError::Unavailable.into_response(),
    }
}

async fn metrics(State(ctx): State<ApiContext>) -> error::ApiResult<Response> {
    let engine = &ctx.engine.ctx;
    let text = crate::metrics::render(&engine.store, engine.now(), |app| engine.access_end_slo_ms(app)).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

async fn openapi() -> axum::Json<Value> {
    axum::Json(openapi::document())
}
