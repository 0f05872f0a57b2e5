//! `POST /v1/webhooks/pim`: verify the signature over the raw body, judge each event, commit it
//! with its jobs, answer 202, then wake the dispatchers.

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::Instrument;

use super::ApiContext;
use super::error::{ApiError, ApiResult, problem_body};
use super::model::{EventAnswer, JobRef, WebhookAnswer};
use crate::crypto::parse_signature_header;
use crate::intake::{self, Source, Verdict};
use crate::metrics;

pub const MAX_BODY: usize = 1024 * 1024;
pub const MAX_BATCH: usize = intake::MAX_BATCH;

/// What a body refused for its declared size is still read of, and for how long (`linger`).
const LINGER_BYTES: usize = 16 * MAX_BODY;
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Counts the verdict in the webhook metrics.
fn record_metric(verdict: &Verdict) {
    match verdict {
        Verdict::Accepted(_) => metrics::webhook_event("accepted"),
        Verdict::Duplicate(_) => metrics::webhook_event("duplicate"),
        Verdict::Conflict(_) => metrics::webhook_event("conflict"),
        Verdict::Malformed { .. } => metrics::webhook_rejected("malformed"),
        Verdict::Refused { .. } => metrics::webhook_rejected("rule"),
    }
}

fn event_answer(verdict: &Verdict, id: Option<&str>) -> EventAnswer {
    let jobs = |jobs: &[(String, String)]| -> Vec<JobRef> {
        jobs.iter()
            .map(|(id, app)| JobRef {
                id: id.clone(),
                app_id: app.clone(),
            })
            .collect()
    };
    let (status, jobs, problem) = match verdict {
        Verdict::Accepted(j) => ("accepted", jobs(j), None),
        Verdict::Duplicate(j) => ("duplicate", jobs(j), None),
        Verdict::Conflict(detail) => (
            "conflict",
            Vec::new(),
            Some(problem_body(StatusCode::CONFLICT, detail, Some("id"))),
        ),
        Verdict::Malformed { field, detail } => (
            "rejected",
            Vec::new(),
            Some(problem_body(
                StatusCode::BAD_REQUEST,
                &format!("{field}: {detail}"),
                Some(field),
            )),
        ),
        Verdict::Refused { field, detail } => (
            "rejected",
            Vec::new(),
            Some(problem_body(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("{field}: {detail}"),
                Some(field),
            )),
        ),
    };
    EventAnswer {
        id: id.map(Into::into),
        status,
        jobs,
        problem,
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || (v.starts_with("application/") && v.ends_with("+json")))
}

/// One log span per webhook request (`event_ids` is filled once the body is parsed), and one
/// trace (SPEC §10): the request's server span, a span per event under it. An incoming
/// `traceparent` is continued only once the signature has verified: an unsigned caller cannot
/// graft its requests onto someone else's trace.
#[tracing::instrument(name = "webhook", skip_all, fields(event_ids = tracing::field::Empty, events = tracing::field::Empty))]
pub async fn receive(State(ctx): State<ApiContext>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let span = tracing::info_span!(target: crate::trace::TARGET, parent: None, "webhook",
        otel.name = "POST /v1/webhooks/pim", otel.kind = "server", http.request.method = "POST",
        http.route = "/v1/webhooks/pim", http.response.status_code = tracing::field::Empty);
    let answer = match verified_body(&ctx, &headers, body).await {
        Ok(bytes) => {
            let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok());
            crate::trace::continue_trace(&span, incoming);
            let log_span = tracing::Span::current();
            take_events(&ctx, &bytes, &log_span).instrument(span.clone()).await
        }
        Err(e) => Err(e),
    }
    .into_response();
    span.record("http.response.status_code", answer.status().as_u16());
    Ok(answer)
}

/// Reads and drops what the client of a refused request is still sending (at most
/// `LINGER_BYTES`, for at most `LINGER`), in a task of its own, while the refusal goes out: a
/// connection closed with its body unread is reset, and a client still sending would see the
/// reset, not the 413. Beyond those bounds the connection is closed as before.
fn linger(body: Body) {
    use futures::StreamExt;
    tokio::spawn(async move {
        let mut data = body.into_data_stream();
        let mut read = 0;
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(chunk)) = data.next().await {
                read += chunk.len();
                if read > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// The body, once its size, media type and signature are acceptable.
async fn verified_body(ctx: &ApiContext, headers: &HeaderMap, body: Body) -> ApiResult<axum::body::Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        metrics::webhook_rejected("too_large");
        linger(body);
        return Err(ApiError::PayloadTooLarge);
    }
    if !is_json(headers) {
        metrics::webhook_rejected("media_type");
        return Err(ApiError::UnsupportedMediaType(
            "the body must be application/json".into(),
        ));
    }
    // The header is judged before the body is read: one that can never match (too many
    // candidates, too long, stale, malformed) is refused without reading or hashing anything.
    let signature = headers.get("x-bridge-signature").and_then(|v| v.to_str().ok());
    let now_secs = ctx.engine.ctx.now() / 1000;
    let signature = parse_signature_header(signature, now_secs).map_err(|e| {
        metrics::webhook_rejected("signature");
        ApiError::unauthorized("X-Bridge-Signature", e.to_string())
    })?;
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
    let secrets: Vec<String> = ctx
        .engine
        .ctx
        .config
        .webhook_secrets
        .iter()
        .map(|s| s.expose().to_string())
        .collect();
    signature.verify(&bytes, &secrets).map_err(|e| {
        metrics::webhook_rejected("signature");
        ApiError::unauthorized("X-Bridge-Signature", e.to_string())
    })?;
    Ok(bytes)
}

/// Judges and takes in the events of a verified body, and answers.
async fn take_events(ctx: &ApiContext, bytes: &[u8], log_span: &tracing::Span) -> ApiResult<Response> {
    ctx.engine.webhook_received();

    let parsed: Value = serde_json::from_slice(bytes).map_err(|e| {
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
    log_span.record("event_ids", ids.join(",").as_str());
    log_span.record("events", batch.as_ref().map_or(1, Vec::len));

    let answer = match batch {
        Some(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                metrics::webhook_rejected("malformed");
                return Err(ApiError::bad("value", format!("a batch holds 1 to {MAX_BATCH} events")));
            }
            let verdicts = intake::take_in(&ctx.engine, &items, Source::Webhook).await?;
            let mut answers = Vec::with_capacity(items.len());
            for (raw, verdict) in items.iter().zip(verdicts) {
                record_metric(&verdict);
                answers.push(event_answer(&verdict, raw.get("id").and_then(Value::as_str)));
            }
            (StatusCode::ACCEPTED, Json(WebhookAnswer { events: answers })).into_response()
        }
        None => {
            let verdict = intake::take_in(&ctx.engine, std::slice::from_ref(&parsed), Source::Webhook)
                .await?
                .pop()
                .expect("one verdict for one event");
            record_metric(&verdict);
            match verdict {
                Verdict::Malformed { field, detail } => return Err(ApiError::BadRequest { field, detail }),
                Verdict::Refused { field, detail } => return Err(ApiError::Unprocessable { field, detail }),
                Verdict::Conflict(detail) => return Err(ApiError::Conflict(detail)),
                ok => {
                    let id = parsed.get("id").and_then(Value::as_str);
                    let events = vec![event_answer(&ok, id)];
                    (StatusCode::ACCEPTED, Json(WebhookAnswer { events })).into_response()
                }
            }
        }
    };
    Ok(answer)
}
