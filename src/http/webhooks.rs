//! `POST /v1/webhooks/pim`: verify the signature over the raw body, judge each event, commit it
//! with its jobs, answer 202, then wake the dispatchers.

use std::collections::HashSet;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiContext;
use super::error::{ApiError, ApiResult, problem_body};
use crate::activation;
use crate::crypto::verify_signature;
use crate::metrics;
use crate::store::Acceptance;

pub const MAX_BODY: usize = 1024 * 1024;
pub const MAX_BATCH: usize = 100;

/// The verdict on one event of a body.
enum Verdict {
    Accepted(Vec<(String, String)>),
    Duplicate(Vec<(String, String)>),
    Conflict(String),
    Rejected {
        status: StatusCode,
        field: String,
        detail: String,
    },
}

impl Verdict {
    /// Counts the verdict in the webhook metrics.
    fn record_metric(&self) {
        match self {
            Self::Accepted(_) => metrics::webhook_event("accepted"),
            Self::Duplicate(_) => metrics::webhook_event("duplicate"),
            Self::Conflict(_) => metrics::webhook_event("conflict"),
            Self::Rejected { status, .. } if *status == StatusCode::BAD_REQUEST => {
                metrics::webhook_rejected("malformed")
            }
            Self::Rejected { .. } => metrics::webhook_rejected("rule"),
        }
    }

    fn to_json(&self, id: Option<&str>) -> Value {
        let jobs = |jobs: &[(String, String)]| -> Value {
            jobs.iter().map(|(id, app)| json!({"id": id, "appId": app})).collect()
        };
        match self {
            Self::Accepted(j) => json!({"id": id, "status": "accepted", "jobs": jobs(j)}),
            Self::Duplicate(j) => json!({"id": id, "status": "duplicate", "jobs": jobs(j)}),
            Self::Conflict(detail) => json!({"id": id, "status": "conflict", "jobs": [],
                "problem": problem_body(StatusCode::CONFLICT, detail, Some("id"))}),
            Self::Rejected { status, field, detail } => json!({"id": id, "status": "rejected", "jobs": [],
                "problem": problem_body(*status, &format!("{field}: {detail}"), Some(field))}),
        }
    }
}

/// Parses and judges one event without touching the store.
fn judge(raw: &Value, now: i64) -> Result<(activation::Event, activation::Effect), Verdict> {
    let event = activation::parse(raw).map_err(|e| Verdict::Rejected {
        status: StatusCode::BAD_REQUEST,
        field: e.field,
        detail: e.detail,
    })?;
    let effect = activation::judge(&event, now).map_err(|v| Verdict::Rejected {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        field: v.field,
        detail: format!("{} ({})", v.detail, v.rule),
    })?;
    Ok((event, effect))
}

/// Judges every event of a body alone, then commits the acceptable ones in one transaction.
async fn judge_all(ctx: &ApiContext, raws: &[Value]) -> ApiResult<Vec<Verdict>> {
    let now = ctx.engine.ctx.now();
    let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(raws.len());
    let mut acceptable = Vec::new();
    let mut slots = Vec::new();
    // Principals whose attributes an earlier event of this body carries.
    let mut described: HashSet<String> = HashSet::new();
    for raw in raws {
        let mut judged = judge(raw, now);
        if let Ok((event, effect)) = &judged
            && !principal_known(ctx, event, effect, &described).await?
        {
            judged = Err(Verdict::Rejected {
                status: StatusCode::BAD_REQUEST,
                field: "principal".into(),
                detail: format!(
                    "the bridge has never seen principal `{}`: an add needs principal.userPrincipalName",
                    event.principal_id
                ),
            });
        }
        match judged {
            Ok(judged) => {
                if judged.0.principal.is_some() {
                    described.insert(judged.0.principal_id.clone());
                }
                slots.push(verdicts.len());
                verdicts.push(None);
                acceptable.push(judged);
            }
            Err(rejected) => verdicts.push(Some(rejected)),
        }
    }
    if !acceptable.is_empty() {
        let results = ctx.engine.ctx.store.accept_events(&acceptable, now).await?;
        for ((slot, (event, _)), acceptance) in slots.iter().zip(&acceptable).zip(results) {
            verdicts[*slot] = Some(match acceptance {
                Acceptance::Accepted { jobs } => {
                    tracing::info!(event_id = %event.id, status = %event.status, action = %event.action_name, jobs = jobs.len(), "event accepted");
                    Verdict::Accepted(jobs)
                }
                Acceptance::Duplicate { jobs } => Verdict::Duplicate(jobs),
                Acceptance::Conflict => Verdict::Conflict(format!(
                    "an event with id `{}` and status `{}` was already received with different content",
                    event.id, event.status
                )),
            });
        }
    }
    Ok(verdicts
        .into_iter()
        .map(|v| v.expect("every event is judged"))
        .collect())
}

/// Whether the bridge can provision the event's principal: an add (activation or assignment)
/// needs the principal's attributes, from this event, an earlier one of the same body, or the
/// store. Removals and events that change no membership never need them.
async fn principal_known(
    ctx: &ApiContext,
    event: &activation::Event,
    effect: &activation::Effect,
    described: &HashSet<String>,
) -> ApiResult<bool> {
    let adds = matches!(
        effect,
        activation::Effect::Activate { .. } | activation::Effect::Assign { .. }
    );
    if !adds || event.principal.is_some() || described.contains(&event.principal_id) {
        return Ok(true);
    }
    Ok(ctx.engine.ctx.store.principal(&event.principal_id).await?.is_some())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || (v.starts_with("application/") && v.ends_with("+json")))
}

/// One span per webhook request; `event_ids` is filled once the body is parsed.
#[tracing::instrument(name = "webhook", skip_all, fields(event_ids = tracing::field::Empty, events = tracing::field::Empty))]
pub async fn receive(State(ctx): State<ApiContext>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        metrics::webhook_rejected("too_large");
        return Err(ApiError::PayloadTooLarge);
    }
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let error = ApiError::body_unreadable(&e);
            metrics::webhook_rejected(match error {
                ApiError::RequestTimeout => "timeout",
                _ => "too_large",
            });
            return Err(error);
        }
    };
    if !is_json(&headers) {
        metrics::webhook_rejected("media_type");
        return Err(ApiError::UnsupportedMediaType(
            "the body must be application/json".into(),
        ));
    }
    let signature = headers.get("x-bridge-signature").and_then(|v| v.to_str().ok());
    let secrets: Vec<String> = ctx
        .engine
        .ctx
        .config
        .webhook_secrets
        .iter()
        .map(|s| s.expose().to_string())
        .collect();
    let now_secs = ctx.engine.ctx.now() / 1000;
    verify_signature(signature, &bytes, &secrets, now_secs).map_err(|e| {
        metrics::webhook_rejected("signature");
        ApiError::Unauthorized(e.to_string())
    })?;

    let parsed: Value = serde_json::from_slice(&bytes).map_err(|e| {
        metrics::webhook_rejected("malformed");
        ApiError::bad("(body)", format!("malformed JSON: {e}"))
    })?;
    let batch = match parsed.get("value") {
        Some(Value::Array(items)) if parsed.get("id").is_none() => Some(items.clone()),
        Some(_) if parsed.get("id").is_none() => {
            metrics::webhook_rejected("malformed");
            return Err(ApiError::bad("value", "must be an array of events"));
        }
        _ => None,
    };
    let ids: Vec<&str> = match &batch {
        Some(items) => items
            .iter()
            .filter_map(|e| e.get("id").and_then(Value::as_str))
            .collect(),
        None => parsed.get("id").and_then(Value::as_str).into_iter().collect(),
    };
    let span = tracing::Span::current();
    span.record("event_ids", ids.join(",").as_str());
    span.record("events", batch.as_ref().map_or(1, Vec::len));

    let answer = match batch {
        Some(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                metrics::webhook_rejected("malformed");
                return Err(ApiError::bad("value", format!("a batch holds 1 to {MAX_BATCH} events")));
            }
            let verdicts = judge_all(&ctx, &items).await?;
            let mut answers = Vec::with_capacity(items.len());
            for (raw, verdict) in items.iter().zip(verdicts) {
                verdict.record_metric();
                wake_for(&ctx, &verdict);
                answers.push(verdict.to_json(raw.get("id").and_then(Value::as_str)));
            }
            (StatusCode::ACCEPTED, Json(json!({"events": answers}))).into_response()
        }
        None => {
            let verdict = judge_all(&ctx, std::slice::from_ref(&parsed))
                .await?
                .pop()
                .expect("one verdict for one event");
            verdict.record_metric();
            wake_for(&ctx, &verdict);
            match verdict {
                Verdict::Rejected { status, field, detail } if status == StatusCode::BAD_REQUEST => {
                    return Err(ApiError::BadRequest { field, detail });
                }
                Verdict::Rejected { field, detail, .. } => return Err(ApiError::Unprocessable { field, detail }),
                Verdict::Conflict(detail) => return Err(ApiError::Conflict(detail)),
                ok => {
                    let id = parsed.get("id").and_then(Value::as_str);
                    (StatusCode::ACCEPTED, Json(json!({"events": [ok.to_json(id)]}))).into_response()
                }
            }
        }
    };
    Ok(answer)
}

fn wake_for(ctx: &ApiContext, verdict: &Verdict) {
    if let Verdict::Accepted(jobs) = verdict {
        for (_, app_id) in jobs {
            ctx.engine.wake(app_id);
        }
        ctx.engine.wake_expiry();
    }
}
