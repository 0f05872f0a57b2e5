//! `GET /v1/sources`: each way events come in (the webhook, and a Graph poller per assigned group),
//! its last successful poll, lag and last error.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::ApiContext;
use super::auth::{Caller, Role};
use super::error::ApiResult;
use crate::clock::to_rfc3339;

pub async fn list(State(ctx): State<ApiContext>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(&[Role::Admin, Role::Operator])?;
    let engine = &ctx.engine.ctx;
    let now = engine.now();
    let time = |t: Option<i64>| t.map(to_rfc3339);
    let mut items = vec![json!({
        "id": "webhook",
        "kind": "webhook",
        "groupId": null,
        "lastEventAt": time(ctx.engine.last_webhook_at()),
        "lastSuccessAt": null,
        "lastAttemptAt": null,
        "lagSeconds": null,
        "lastError": null,
        "nextPollAt": null,
    })];
    let graph_on = engine.config.graph.is_some();
    let assigned: std::collections::HashSet<String> = engine.store.assigned_group_ids().await?.into_iter().collect();
    let mut known = std::collections::HashSet::new();
    for s in engine.store.list_sources().await? {
        if !assigned.contains(&s.group_id) {
            continue;
        }
        known.insert(s.group_id.clone());
        items.push(json!({
            "id": s.id,
            "kind": s.kind,
            "groupId": s.group_id,
            "displayName": s.group_info.as_ref().and_then(|g| g.get("displayName")).cloned(),
            "lastEventAt": null,
            "lastSuccessAt": time(s.last_success_at),
            "lastAttemptAt": time(s.last_attempt_at),
            "lagSeconds": s.last_success_at.map(|t| (now - t).max(0) / 1000),
            "lastError": s.last_error,
            "nextPollAt": time(s.next_poll_at),
        }));
    }
    if graph_on {
        // Assigned groups not polled yet.
        for group in assigned.iter().filter(|g| !known.contains(*g)) {
            items.push(json!({
                "id": crate::graph::source_id(group), "kind": "graph", "groupId": group,
                "lastEventAt": null, "lastSuccessAt": null, "lastAttemptAt": null, "lagSeconds": null,
                "lastError": null, "nextPollAt": null,
            }));
        }
    }
    Ok(Json(json!({"items": items, "graph": graph_on})))
}
