//! Provisioning logs, their export, the per-activation view and the audit trail.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use super::ApiContext;
use super::auth::{Caller, Role};
use super::error::{ApiError, ApiResult, Path, Query};
use super::model::{Activation, ActivationApp, ActivationEvent, AuditEntry, AuditPage, LogPage};
use crate::clock::{parse_rfc3339, to_rfc3339};
use crate::store::{LogEntry, LogFilter};

/// The filters of `GET /v1/provisioning-logs` and its export.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only entries of this app.
    app_id: Option<String>,
    /// Only entries of this principal.
    principal_id: Option<String>,
    /// Only entries of this PIM group.
    group_id: Option<String>,
    /// Only entries of this event (activation).
    event_id: Option<String>,
    /// Only entries with this outcome.
    #[param(pattern = "^(success|failure|skipped|deferred|held)$")]
    status: Option<String>,
    /// Only entries of this action (`add_member`, `remove_member`, `create_user`, `update_user`,
    /// `disable_user`).
    action: Option<String>,
    /// Only entries with this trigger.
    #[param(pattern = "^(activation|deactivation|expiry|sync|on_demand|directory|deprovision)$")]
    trigger: Option<String>,
    /// Entries at or after this time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Entries before this time.
    #[param(format = DateTime)]
    until: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<i64>,
    /// `nextCursor` of the previous page; pages never skip or repeat entries while new ones arrive.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Export format.
    #[param(pattern = "^(csv|jsonl)$", default = "jsonl")]
    format: Option<String>,
}

fn encode_cursor(seq: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("s{seq}"))
}

/// Only the exact text `encode_cursor` gives out is a cursor: signs, leading zeros, padding and
/// other spellings of a number are refused rather than guessed at.
fn decode_cursor(c: &str) -> ApiResult<i64> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix('s').and_then(|n| n.parse::<i64>().ok()))
        .filter(|seq| *seq >= 0 && encode_cursor(*seq) == c)
        .ok_or_else(|| ApiError::bad("cursor", "is not a cursor this API gave out"))
}

pub(super) fn time_param(field: &str, v: &Option<String>) -> ApiResult<Option<i64>> {
    v.as_deref()
        .map(|s| parse_rfc3339(s).ok_or_else(|| ApiError::bad(field, "must be an RFC 3339 date-time")))
        .transpose()
}

pub(super) fn one_of(field: &str, value: &Option<String>, allowed: &[&str]) -> ApiResult<()> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => {
            Err(ApiError::bad(field, format!("must be one of {}", allowed.join(", "))))
        }
        _ => Ok(()),
    }
}

async fn filter_for(ctx: &ApiContext, caller: &Caller, q: &LogQuery) -> ApiResult<LogFilter> {
    let app_ids = if caller.role == Role::AppOwner {
        let apps = ctx.engine.ctx.store.list_apps().await?;
        Some(apps.into_iter().filter(|a| caller.sees(a)).map(|a| a.id).collect())
    } else {
        None
    };
    // A value no entry can have is a mistake to point out, not an empty page.
    one_of(
        "status",
        &q.status,
        &["success", "failure", "skipped", "deferred", "held"],
    )?;
    one_of(
        "trigger",
        &q.trigger,
        &[
            "activation",
            "deactivation",
            "expiry",
            "sync",
            "on_demand",
            "directory",
            "deprovision",
        ],
    )?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad("limit", "must be between 1 and 500"));
    }
    Ok(LogFilter {
        app_ids,
        app_id: q.app_id.clone(),
        principal_id: q.principal_id.clone(),
        group_id: q.group_id.clone(),
        event_id: q.event_id.clone(),
        status: q.status.clone(),
        action: q.action.clone(),
        trigger: q.trigger.clone(),
        since: time_param("since", &q.since)?,
        until: time_param("until", &q.until)?,
        before_seq: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit,
    })
}

pub async fn list(State(ctx): State<ApiContext>, caller: Caller, Query(q): Query<LogQuery>) -> ApiResult<Response> {
    let filter = filter_for(&ctx, &caller, &q).await?;
    // One more than asked tells whether an older page exists, so the last page has no cursor.
    let probe = LogFilter {
        limit: filter.limit + 1,
        ..filter.clone()
    };
    let mut items = ctx.engine.ctx.store.query_logs(&probe).await?;
    let more = items.len() as i64 > filter.limit;
    items.truncate(filter.limit as usize);
    let next = more.then(|| items.last().map(|e| encode_cursor(e.seq))).flatten();
    let page = LogPage {
        items: items.iter().map(LogEntry::view).collect(),
        next_cursor: next,
    };
    Ok(Json(page).into_response())
}

pub async fn get(State(ctx): State<ApiContext>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let entry = ctx.engine.ctx.store.get_log(&id).await?.ok_or(ApiError::NotFound)?;
    if caller.role == Role::AppOwner {
        super::apps::visible_app(&ctx, &caller, &entry.app_id).await?;
    }
    Ok(Json(entry.view()).into_response())
}

const CSV_COLUMNS: &[&str] = &[
    "id",
    "time",
    "appId",
    "appName",
    "trigger",
    "cycleId",
    "eventId",
    "principalId",
    "userPrincipalName",
    "groupId",
    "action",
    "status",
    "reason",
    "deferredUntil",
    "targetUserId",
    "targetGroupId",
    "attempt",
    "durationMs",
    "latencyMs",
    "traceId",
];

/// One CSV cell. Text that a spreadsheet would read as a formula (it starts with `=`, `+`, `-`,
/// `@`, tab or carriage return) gets a leading `'`: names and reasons come from outside.
pub(super) fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{s}"),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Streams every matching entry, page by page, so memory stays flat however many there are.
pub async fn export(State(ctx): State<ApiContext>, caller: Caller, Query(q): Query<LogQuery>) -> ApiResult<Response> {
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("jsonl") | None => false,
        Some(_) => return Err(ApiError::bad("format", "must be csv or jsonl")),
    };
    let mut filter = filter_for(&ctx, &caller, &LogQuery { limit: Some(500), ..q }).await?;
    let store = ctx.engine.ctx.store.clone();
    let stream = async_stream(
        move |tx: tokio::sync::mpsc::Sender<Result<String, std::io::Error>>| async move {
            if csv && tx.send(Ok(format!("{}\n", CSV_COLUMNS.join(",")))).await.is_err() {
                return;
            }
            loop {
                let page = match store.query_logs(&filter).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                let mut chunk = String::new();
                for entry in &page {
                    if csv {
                        let v = entry.to_json();
                        let row: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_field(&v[*c])).collect();
                        chunk.push_str(&row.join(","));
                    } else {
                        // Straight from the view: no JSON tree built only to be printed.
                        chunk.push_str(&serde_json::to_string(&entry.view()).expect("a log entry serializes"));
                    }
                    chunk.push('\n');
                }
                if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                if (page.len() as i64) < filter.limit {
                    return;
                }
                filter.before_seq = page.last().map(|e| e.seq);
            }
        },
    );
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    let name = if csv {
        "provisioning-logs.csv"
    } else {
        "provisioning-logs.jsonl"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A channel-backed stream fed by a producer task.
pub(super) fn async_stream<F, Fut>(produce: F) -> impl futures::Stream<Item = Result<String, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<String, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// What an app's latest entry for an event says about it now.
fn state_of(status: &str) -> &'static str {
    match status {
        "success" => "pushed",
        "deferred" => "deferred",
        "failure" => "failed",
        "skipped" => "skipped",
        _ => "pending",
    }
}

/// The event (each status received for its id) and, per app it concerns, where it stands now:
/// pushed (with the latency from arrival to confirmation), deferred until, failed with reason,
/// skipped, or still pending.
pub async fn activation(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(event_id): Path<String>,
) -> ApiResult<Response> {
    caller.require(&[Role::Admin, Role::Operator])?;
    let store = &ctx.engine.ctx.store;
    let events = store.get_event(&event_id).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound);
    }
    let filter = LogFilter {
        event_id: Some(event_id.clone()),
        limit: 500,
        ..Default::default()
    };
    let mut entries = store.query_logs(&filter).await?;
    entries.reverse();
    let mut apps: Vec<(String, Vec<&LogEntry>)> = Vec::new();
    for e in &entries {
        match apps.iter_mut().find(|(id, _)| *id == e.app_id) {
            Some((_, list)) => list.push(e),
            None => apps.push((e.app_id.clone(), vec![e])),
        }
    }
    let mut outcomes: Vec<ActivationApp> = apps
        .iter()
        .map(|(app_id, list)| {
            let last = list.last().expect("non-empty");
            ActivationApp {
                app_id: app_id.clone(),
                app_name: last.app_name.clone(),
                state: state_of(&last.status),
                status: Some(last.status.clone()),
                action: Some(last.action.clone()),
                reason: last.reason.clone(),
                deferred_until: last.deferred_until.map(to_rfc3339),
                latency_ms: list.iter().rev().find_map(|e| e.latency_ms),
                time: Some(to_rfc3339(last.time)),
                entries: list.iter().map(|e| e.view()).collect(),
            }
        })
        .collect();
    // Apps the event concerns that have not logged anything for it yet.
    let latest = events.last().expect("non-empty");
    let waits = matches!(latest.outcome.as_str(), "activate" | "assign" | "remove");
    if let Some(group_id) = latest.body.get("groupId").and_then(Value::as_str).filter(|_| waits) {
        for app in store.list_apps().await? {
            if apps.iter().any(|(id, _)| *id == app.id) {
                continue;
            }
            if store
                .list_assignments(&app.id)
                .await?
                .iter()
                .any(|a| a.group_id == group_id)
            {
                let reason =
                    (latest.outcome == "assign").then(|| "provisioned by the next synchronization cycle".into());
                outcomes.push(ActivationApp {
                    app_id: app.id,
                    app_name: app.name,
                    state: "pending",
                    status: None,
                    action: None,
                    reason,
                    deferred_until: None,
                    latency_ms: None,
                    time: None,
                    entries: Vec::new(),
                });
            }
        }
    }
    let answer = Activation {
        event_id,
        events: events
            .into_iter()
            .map(|e| ActivationEvent {
                id: e.id,
                status: e.status,
                received_at: to_rfc3339(e.received_at),
                outcome: e.outcome,
                reason: e.reason,
                body: e.body,
            })
            .collect(),
        apps: outcomes,
    };
    Ok(Json(answer).into_response())
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 500, default = 500)]
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

pub async fn audit(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    caller.require(&[Role::Admin])?;
    let limit = q.limit.unwrap_or(500);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad("limit", "must be between 1 and 500"));
    }
    let before = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let entries = ctx.engine.ctx.store.list_audit(limit, before).await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| encode_cursor(e.seq)))
        .flatten();
    let items = entries
        .into_iter()
        .map(|a| AuditEntry {
            time: to_rfc3339(a.time),
            actor: a.actor,
            action: a.action,
            target: a.target,
            detail: a.detail,
        })
        .collect();
    Ok(Json(AuditPage {
        items,
        next_cursor: next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_neutralised() {
        assert_eq!(
            csv_field(&json!("=HYPERLINK(\"http://x\")")),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_field(&json!("=1+2")), "'=1+2");
        assert_eq!(csv_field(&json!("+1")), "'+1");
        assert_eq!(csv_field(&json!("-2+3")), "'-2+3");
        assert_eq!(csv_field(&json!("@SUM(A1)")), "'@SUM(A1)");
        assert_eq!(csv_field(&json!("\tx")), "'\tx");
        assert_eq!(csv_field(&json!("\rx")), "\"'\rx\"");
        assert_eq!(csv_field(&json!("=a,b")), "\"'=a,b\"");
        assert_eq!(csv_field(&json!("ada@contoso.com")), "ada@contoso.com");
        assert_eq!(csv_field(&json!(-5)), "-5");
        assert_eq!(csv_field(&Value::Null), "");
    }
}
