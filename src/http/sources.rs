//! `GET /v1/sources`: each way events come in (the webhook, and a Graph poller per assigned group),
//! its last successful poll, lag and last error.

use super::ApiContext;
use super::auth::{Caller, Role};
use super::error::ApiResult;
use super::model::{Source, SourceList};
use crate::clock::to_rfc3339;
use axum::Json;
use axum::extract::State;

pub async fn list(State(ctx): State<ApiContext>, caller: Caller) -> ApiResult<Json<SourceList>> {
    caller.require(&[Role::Admin, Role::Operator])?;
    let engine = &ctx.engine.ctx;
    let now = engine.now();
    let time = |t: Option<i64>| t.map(to_rfc3339);
    let never_polled = |id: String, kind: &str, group_id: Option<String>| Source {
        id,
        kind: kind.into(),
        group_id,
        display_name: None,
        last_event_at: None,
        last_success_at: None,
        last_attempt_at: None,
        lag_seconds: None,
        last_error: None,
        next_poll_at: None,
    };
    let mut items = vec![Source {
        last_event_at: time(ctx.engine.last_webhook_at()),
        ..never_polled("webhook".into(), "webhook", None)
    }];
    let graph_on = engine.config.graph.is_some();
    let assigned: std::collections::HashSet<String> = engine.store.assigned_group_ids().await?.into_iter().collect();
    let mut known = std::collections::HashSet::new();
    for s in engine.store.list_sources().await? {
        if !assigned.contains(&s.group_id) {
            continue;
        }
        known.insert(s.group_id.clone());
        items.push(Source {
            id: s.id,
            kind: s.kind,
            display_name: s
                .group_info
                .as_ref()
                .and_then(|g| g.get("displayName"))
                .and_then(|v| v.as_str())
                .map(Into::into),
            last_event_at: None,
            last_success_at: time(s.last_success_at),
            last_attempt_at: time(s.last_attempt_at),
            lag_seconds: s.last_success_at.map(|t| (now - t).max(0) / 1000),
            last_error: s.last_error,
            next_poll_at: time(s.next_poll_at),
            group_id: Some(s.group_id),
        });
    }
    if graph_on {
        // Assigned groups not polled yet.
        for group in assigned.iter().filter(|g| !known.contains(*g)) {
            items.push(never_polled(
                crate::graph::source_id(group),
                "graph",
                Some(group.clone()),
            ));
        }
    }
    Ok(Json(SourceList { items, graph: graph_on }))
}
