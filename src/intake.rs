//! One way in for events, whatever their source: a webhook body or a Graph poll. Each event is
//! parsed and judged (`activation`), then the acceptable ones are committed with their jobs in one
//! store transaction (`Store::accept_events`, which applies `rules`), then the dispatchers of the
//! apps that got work are woken. The webhook and the Graph poller both call `take_in`, so the
//! rules, the idempotency on (`id`, `status`) and the log are the same for both.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use crate::activation::{self, Effect, Event};
use crate::provisioning::Engine;
use crate::store::{Acceptance, StoreResult};

/// Most events one body (or one Graph batch) carries.
pub const MAX_BATCH: usize = 100;

/// Where an event came from. It decides one thing only: what a rule violation becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The caller is answered: a rule violation is refused (422).
    Webhook,
    /// Nobody to answer: a rule violation is recorded and logged `skipped` with the rule's reason.
    Graph,
}

/// The verdict on one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken in; the jobs it queued, as (job id, app id).
    Accepted(Vec<(String, String)>),
    Duplicate(Vec<(String, String)>),
    Conflict(String),
    /// A field is missing or malformed (a webhook answers 400).
    Malformed {
        field: String,
        detail: String,
    },
    /// A rule of the source system is broken (a webhook answers 422).
    Refused {
        field: String,
        detail: String,
    },
}

/// Parses and judges one event without touching the store.
fn judge(raw: &Value, now: i64, source: Source) -> Result<(Event, Effect), Verdict> {
    let event = activation::parse(raw).map_err(|e| Verdict::Malformed {
        field: e.field,
        detail: e.detail,
    })?;
    match activation::judge(&event, now) {
        Ok(effect) => Ok((event, effect)),
        Err(v) => match source {
            Source::Webhook => Err(Verdict::Refused {
                field: v.field,
                detail: format!("{} ({})", v.detail, v.rule),
            }),
            // SPEC §7: a Graph-sourced event that breaks a rule is logged `skipped` with its reason.
            Source::Graph => Ok((event, Effect::Skip(format!("{} ({})", v.detail, v.rule)))),
        },
    }
}

/// Judges every event alone, commits the acceptable ones in one transaction, and wakes the
/// dispatchers of the apps that got work. Verdicts come back in the order of `raws`.
pub async fn take_in(engine: &Arc<Engine>, raws: &[Value], source: Source) -> StoreResult<Vec<Verdict>> {
    let ctx = &engine.ctx;
    let now = ctx.now();
    let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(raws.len());
    let mut acceptable = Vec::new();
    let mut slots = Vec::new();
    // Principals whose attributes an earlier event of this batch carries.
    let mut described: HashSet<String> = HashSet::new();
    // Open until the events are committed.
    let mut spans = Vec::new();
    for raw in raws {
        let mut judged = judge(raw, now, source);
        if let Ok((event, effect)) = &judged
            && !principal_known(engine, event, effect, &described).await?
        {
            judged = Err(Verdict::Malformed {
                field: "principal".into(),
                detail: format!(
                    "the bridge has never seen principal `{}`: an add needs principal.userPrincipalName",
                    event.principal_id
                ),
            });
        }
        match judged {
            Ok(mut judged) => {
                // A span per event, under the request's (or the poll page's): its jobs store its
                // context, so the push joins this trace (SPEC §10).
                let span = tracing::info_span!(target: crate::trace::TARGET, "event", event.id = %judged.0.id);
                judged.0.traceparent = crate::trace::traceparent(&span);
                spans.push(span);
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
        let (acceptable, results) = commit_and_wake(engine, acceptable, now).await?;
        for ((slot, (event, _)), acceptance) in slots.iter().zip(&acceptable).zip(results) {
            verdicts[*slot] = Some(match acceptance {
                Acceptance::Accepted { jobs, .. } => {
                    tracing::info!(event_id = %event.id, status = %event.status, action = %event.action_name,
                        jobs = jobs.len(), source = ?source, "event accepted");
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
    let verdicts: Vec<Verdict> = verdicts
        .into_iter()
        .map(|v| v.expect("every event is judged"))
        .collect();
    drop(spans);
    Ok(verdicts)
}

/// Commits the events and wakes the dispatchers of the apps that got work, in a task of its own:
/// a request dropped meanwhile (its client went away) cancels neither, so whatever commits is
/// pushed at once, and the webhooks committed in the same group are answered as usual.
async fn commit_and_wake(
    engine: &Arc<Engine>,
    acceptable: Vec<(Event, Effect)>,
    now: i64,
) -> StoreResult<(Vec<(Event, Effect)>, Vec<Acceptance>)> {
    let engine = engine.clone();
    // The fence of the work this runs under (the Graph poller's lease) goes with it: a task of
    // its own would otherwise write unfenced.
    let fence = crate::lease::current();
    let task = tokio::spawn(async move {
        let accept = engine.ctx.store.accept_events(&acceptable, now);
        let results = match fence {
            Some(fence) => crate::lease::scope(fence, accept).await,
            None => accept.await,
        };
        if let Ok(results) = &results {
            for acceptance in results {
                if let Acceptance::Accepted { jobs, ends_at } = acceptance {
                    for (_, app_id) in jobs {
                        engine.wake_local(app_id);
                    }
                    // The timer learns the end as written: no read of the store.
                    if let Some(end) = ends_at {
                        engine.expiry_due_by(*end);
                    }
                }
            }
        }
        (acceptable, results)
    });
    match task.await {
        Ok((acceptable, results)) => Ok((acceptable, results?)),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("the intake task was cancelled: {e}"),
    }
}

/// Whether the bridge can provision the event's principal: an add (activation or assignment)
/// needs the principal's attributes, from this event, an earlier one of the same batch, or the
/// store. Removals and events that change no membership never need them.
async fn principal_known(
    engine: &Engine,
    event: &Event,
    effect: &Effect,
    described: &HashSet<String>,
) -> StoreResult<bool> {
    let adds = matches!(effect, Effect::Activate { .. } | Effect::Assign { .. });
    if !adds || event.principal.is_some() || described.contains(&event.principal_id) {
        return Ok(true);
    }
    Ok(engine.ctx.store.principal(&event.principal_id).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic_group_activation() -> Value {
        json!({
            "id": "r1", "action": "selfActivate", "accessId": "member", "principalId": "p1", "groupId": "g1",
            "status": "Provisioned", "createdDateTime": "2026-11-22T09:00:00Z",
            "scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z", "expiration": {"type": "afterDuration", "duration": "PT2H"}},
            "principal": {"userPrincipalName": "ada@contoso.com"},
            "group": {"displayName": "G", "membershipRule": "user.department -eq \"IT\"", "onPremisesSyncEnabled": false}
        })
    }

    #[test]
    fn a_rule_violation_is_refused_for_a_webhook_and_skipped_with_its_reason_for_graph() {
        let now = crate::clock::parse_rfc3339("2026-11-22T09:01:00Z").unwrap();
        let raw = dynamic_group_activation();
        match judge(&raw, now, Source::Webhook) {
            Err(Verdict::Refused { field, detail }) => {
                assert_eq!(field, "group.membershipRule");
                assert!(detail.contains("(R6)"), "{detail}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        match judge(&raw, now, Source::Graph) {
            Ok((_, Effect::Skip(reason))) => assert!(reason.contains("(R6)"), "{reason}"),
            other => panic!("expected a skip, got {other:?}"),
        }
    }
}
