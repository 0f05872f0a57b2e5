//! Access-end records (SPEC §8): how long access outlived its end at each app, listed, exported
//! and summarised per app against the app's objective.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiContext;
use super::auth::{Caller, Role};
use super::error::{ApiError, ApiResult, Query};
use super::logs::{async_stream, csv_field, one_of, time_param};
use super::model::{AccessEndPage, AccessEndSummary, AccessEndView, AppAccessEnds, ExcessFigures};
use crate::clock::{Millis, to_rfc3339};
use crate::store::{AccessEnd, AccessEndFilter};

const STATUSES: &[&str] = &[
    "pending",
    "failed",
    "removed",
    "kept",
    "notProvisioned",
    "held",
    "rejected",
];
const REASONS: &[&str] = &[
    "expiry",
    "deactivation",
    "revoked",
    "adminRemove",
    "directory",
    "unassigned",
    "appDeprovisioned",
    "outOfScope",
];

/// The filters of `GET /v1/access-ends` and its export.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AccessEndQuery {
    /// Only ends at this app.
    app_id: Option<String>,
    /// Only ends of this principal.
    principal_id: Option<String>,
    /// Only ends of an entitlement through this group.
    group_id: Option<String>,
    /// Only ends caused by this event.
    event_id: Option<String>,
    #[param(pattern = "^(pending|failed|removed|kept|notProvisioned|held|rejected)$")]
    status: Option<String>,
    #[param(pattern = "^(expiry|deactivation|revoked|adminRemove|directory|unassigned|appDeprovisioned|outOfScope)$")]
    reason: Option<String>,
    /// Ends at or after this time (on `endedAt`).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Ends before this time (on `endedAt`).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Export format.
    #[param(pattern = "^(csv|jsonl)$", default = "jsonl")]
    format: Option<String>,
}

/// The period of `GET /v1/access-ends/summary` (default: the last 24 hours).
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// Ends at or after this time (default 24 hours before `until`).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Ends before this time (default now).
    #[param(format = DateTime)]
    until: Option<String>,
}

fn encode_cursor(r: &AccessEnd) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("e{}:{}", r.ended_at, r.id))
}

/// Only the exact text `encode_cursor` gives out is a cursor.
fn decode_cursor(c: &str) -> ApiResult<(Millis, String)> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (at, id) = s.strip_prefix('e')?.split_once(':')?;
            let at: Millis = at.parse().ok()?;
            (format!("e{at}:{id}") == s && !id.is_empty()).then(|| (at, id.to_string()))
        })
        .filter(|(at, id)| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("e{at}:{id}")) == c)
        .ok_or_else(|| ApiError::bad("cursor", "is not a cursor this API gave out"))
}

/// The apps an owner sees (`None` for the roles that see every app).
async fn owned_apps(ctx: &ApiContext, caller: &Caller) -> ApiResult<Option<Vec<String>>> {
    if caller.role != Role::AppOwner {
        return Ok(None);
    }
    let apps = ctx.engine.ctx.store.list_apps().await?;
    Ok(Some(
        apps.into_iter().filter(|a| caller.sees(a)).map(|a| a.id).collect(),
    ))
}

async fn filter_for(ctx: &ApiContext, caller: &Caller, q: &AccessEndQuery) -> ApiResult<AccessEndFilter> {
    one_of("status", &q.status, STATUSES)?;
    one_of("reason", &q.reason, REASONS)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad("limit", "must be between 1 and 500"));
    }
    Ok(AccessEndFilter {
        app_ids: owned_apps(ctx, caller).await?,
        app_id: q.app_id.clone(),
        principal_id: q.principal_id.clone(),
        group_id: q.group_id.clone(),
        event_id: q.event_id.clone(),
        status: q.status.clone(),
        reason: q.reason.clone(),
        since: time_param("since", &q.since)?,
        until: time_param("until", &q.until)?,
        before: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit,
    })
}

/// The apps whose removals wait because they are paused: their pending ends wait on `paused`.
async fn paused_apps(ctx: &ApiContext) -> ApiResult<HashSet<String>> {
    let apps = ctx.engine.ctx.store.list_apps().await?;
    Ok(apps
        .into_iter()
        .filter(|a| a.status == "paused")
        .map(|a| a.id)
        .collect())
}

pub(super) fn view(r: &AccessEnd, now: Millis, paused: &HashSet<String>) -> AccessEndView {
    // A pending end waits for its app (paused) or for its removal's turn in the window.
    let waiting_on = r.waiting_on.clone().or_else(|| {
        (r.status == "pending").then(|| if paused.contains(&r.app_id) { "paused" } else { "window" }.to_string())
    });
    AccessEndView {
        id: r.id.clone(),
        app_id: r.app_id.clone(),
        principal_id: r.principal_id.clone(),
        user_principal_name: r.user_principal_name.clone(),
        group_id: r.group_id.clone(),
        target_display_name: r.target_display_name.clone(),
        event_id: r.event_id.clone(),
        reason: r.reason.clone(),
        ended_at: to_rfc3339(r.ended_at),
        learned_at: to_rfc3339(r.learned_at),
        removed_at: r.removed_at.map(to_rfc3339),
        excess_ms: r.excess_ms(now),
        action: r.action.clone(),
        status: r.status.clone(),
        waiting_on,
    }
}

pub async fn list(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Query(q): Query<AccessEndQuery>,
) -> ApiResult<Json<AccessEndPage>> {
    let filter = filter_for(&ctx, &caller, &q).await?;
    // One more than asked tells whether an older page exists, so the last page has no cursor.
    let probe = AccessEndFilter {
        limit: filter.limit + 1,
        ..filter.clone()
    };
    let mut items = ctx.engine.ctx.store.query_access_ends(&probe).await?;
    let more = items.len() as i64 > filter.limit;
    items.truncate(filter.limit as usize);
    let now = ctx.engine.ctx.now();
    let paused = paused_apps(&ctx).await?;
    Ok(Json(AccessEndPage {
        next_cursor: more.then(|| items.last().map(encode_cursor)).flatten(),
        items: items.iter().map(|r| view(r, now, &paused)).collect(),
    }))
}

const CSV_COLUMNS: &[&str] = &[
    "id",
    "appId",
    "principalId",
    "userPrincipalName",
    "groupId",
    "targetDisplayName",
    "eventId",
    "reason",
    "endedAt",
    "learnedAt",
    "removedAt",
    "excessMs",
    "action",
    "status",
    "waitingOn",
];

/// Streams every matching record, page by page, as CSV (cells a spreadsheet would read as a
/// formula neutralised) or JSON lines.
pub async fn export(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Query(q): Query<AccessEndQuery>,
) -> ApiResult<Response> {
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("jsonl") | None => false,
        Some(_) => return Err(ApiError::bad("format", "must be csv or jsonl")),
    };
    let mut filter = filter_for(&ctx, &caller, &AccessEndQuery { limit: Some(500), ..q }).await?;
    let store = ctx.engine.ctx.store.clone();
    let now = ctx.engine.ctx.now();
    let paused = paused_apps(&ctx).await?;
    let stream = async_stream(
        move |tx: tokio::sync::mpsc::Sender<Result<String, std::io::Error>>| async move {
            if csv && tx.send(Ok(format!("{}\n", CSV_COLUMNS.join(",")))).await.is_err() {
                return;
            }
            loop {
                let page = match store.query_access_ends(&filter).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                let mut chunk = String::new();
                for r in &page {
                    let v = serde_json::to_value(view(r, now, &paused)).expect("a record serializes");
                    if csv {
                        let row: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_field(&v[*c])).collect();
                        chunk.push_str(&row.join(","));
                    } else {
                        chunk.push_str(&v.to_string());
                    }
                    chunk.push('\n');
                }
                if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                if (page.len() as i64) < filter.limit {
                    return;
                }
                filter.before = page.last().map(|r| (r.ended_at, r.id.clone()));
            }
        },
    );
    let (content_type, name) = if csv {
        ("text/csv; charset=utf-8", "access-ends.csv")
    } else {
        ("application/x-ndjson", "access-ends.jsonl")
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

/// The value at quantile `q` of sorted `values` (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn figures(mut excess: Vec<i64>) -> ExcessFigures {
    excess.sort_unstable();
    ExcessFigures {
        count: excess.len(),
        p50_ms: quantile(&excess, 0.50),
        p99_ms: quantile(&excess, 0.99),
        max_ms: excess.last().copied(),
    }
}

/// Per app, over the PIM ends of the period: the confirmed ends' excess (p50, p99, max), those
/// still pending and the oldest of them, and how many missed the app's objective; the other
/// reasons apart. `rejected` ends and ends with nothing to remove count in no percentile.
pub async fn summary(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Query(q): Query<SummaryQuery>,
) -> ApiResult<Json<AccessEndSummary>> {
    let engine = &ctx.engine.ctx;
    let now = engine.now();
    let until = time_param("until", &q.until)?.unwrap_or(now + 1);
    let since = time_param("since", &q.since)?.unwrap_or(until - 86_400_000);
    if since >= until {
        return Err(ApiError::bad("since", "must be before until"));
    }
    let apps = engine.store.list_apps().await?;
    let mut per_app: BTreeMap<String, Vec<AccessEnd>> = BTreeMap::new();
    let mut filter = AccessEndFilter {
        app_ids: owned_apps(&ctx, &caller).await?,
        since: Some(since),
        until: Some(until),
        limit: 5_000,
        ..Default::default()
    };
    loop {
        let page = engine.store.query_access_ends(&filter).await?;
        let full = page.len() as i64 == filter.limit;
        filter.before = page.last().map(|r| (r.ended_at, r.id.clone()));
        for r in page {
            per_app.entry(r.app_id.clone()).or_default().push(r);
        }
        if !full {
            break;
        }
    }
    let mut items = Vec::new();
    for app in apps.iter().filter(|a| caller.sees(a)) {
        let records = per_app.remove(&app.id).unwrap_or_default();
        if records.is_empty() && app.deleted_at.is_some() {
            continue;
        }
        items.push(app_summary(
            &app.id,
            &app.name,
            engine.access_end_slo_ms(app),
            &records,
            now,
        ));
    }
    Ok(Json(AccessEndSummary {
        since: to_rfc3339(since),
        until: to_rfc3339(until),
        items,
    }))
}

pub(super) fn app_summary(
    app_id: &str,
    name: &str,
    slo_ms: Millis,
    records: &[AccessEnd],
    now: Millis,
) -> AppAccessEnds {
    let (pim, other): (Vec<&AccessEnd>, Vec<&AccessEnd>) = records.iter().partition(|r| r.is_pim_end());
    let confirmed = |rs: &[&AccessEnd]| -> Vec<i64> {
        rs.iter()
            .filter(|r| r.status == "removed")
            .filter_map(|r| r.excess_ms(now))
            .collect()
    };
    let pim_figures = figures(confirmed(&pim));
    let pending: Vec<i64> = pim
        .iter()
        .filter(|r| matches!(r.status.as_str(), "pending" | "failed"))
        .filter_map(|r| r.excess_ms(now))
        .collect();
    let over_slo = pim
        .iter()
        .filter(|r| r.status != "rejected")
        .filter_map(|r| r.excess_ms(now))
        .filter(|excess| *excess > slo_ms)
        .count();
    AppAccessEnds {
        app_id: app_id.to_string(),
        app_name: name.to_string(),
        slo_seconds: slo_ms / 1000,
        count: pim_figures.count,
        p50_ms: pim_figures.p50_ms,
        p99_ms: pim_figures.p99_ms,
        max_ms: pim_figures.max_ms,
        pending: pending.len(),
        oldest_pending_ms: pending.iter().max().copied(),
        over_slo,
        other: figures(confirmed(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(reason: &str, status: &str, ended_at: Millis, removed_at: Option<Millis>) -> AccessEnd {
        AccessEnd {
            id: format!("{reason}-{ended_at}"),
            app_id: "a".into(),
            principal_id: "p".into(),
            user_principal_name: None,
            group_id: "g".into(),
            target_display_name: None,
            event_id: None,
            reason: reason.into(),
            ended_at,
            learned_at: ended_at,
            removed_at,
            action: Some("remove_member".into()),
            status: status.into(),
            waiting_on: None,
            updated_at: ended_at,
        }
    }

    #[test]
    fn the_summary_judges_pim_ends_and_keeps_the_others_apart() {
        let records = vec![
            end("expiry", "removed", 1_000, Some(1_400)),
            end("deactivation", "removed", 2_000, Some(2_100)),
            end("revoked", "removed", 3_000, Some(73_000)),
            end("deactivation", "failed", 10_000, None),
            end("expiry", "kept", 5_000, None),
            end("directory", "removed", 1_000, Some(901_000)),
        ];
        let s = app_summary("a", "A", 60_000, &records, 100_000);
        assert_eq!(s.count, 3);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (Some(400), Some(70_000), Some(70_000)));
        assert_eq!((s.pending, s.oldest_pending_ms), (1, Some(90_000)));
        // The revoked end confirmed after 70 s and the failed one pending for 90 s.
        assert_eq!(s.over_slo, 2);
        assert_eq!(s.other.count, 1);
        assert_eq!(s.other.max_ms, Some(900_000));
    }

    #[test]
    fn a_cursor_is_only_what_the_api_gave_out() {
        let r = end("expiry", "removed", 1_234, Some(2_000));
        let c = encode_cursor(&r);
        assert_eq!(decode_cursor(&c).unwrap(), (1_234, r.id.clone()));
        assert!(decode_cursor("nope").is_err());
    }
}
