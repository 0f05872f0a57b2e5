//! Microsoft Graph as a source (SPEC §7): for every source group assigned to an app, a poller reads
//! PIM for Groups' assignment schedule requests and hands each new (`id`, `status`) to
//! `intake::take_in`, exactly as a webhook event; it reads the group's standing members from group
//! delta (the directory feed) and the group's R6 properties.
//!
//! With several replicas one polls: `EngineLease` asks the engine whether this process holds the
//! cluster's `graph` lease (always, on a store of its own), and a poll runs under that lease's
//! fence, so a replica that lost the lease while a poll was under way writes nothing of it
//! (SPEC §7). Tests grant every group with `SingleProcessLease`.

mod client;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tracing::Instrument;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use client::{GraphClient, GraphError, GraphResult, Listing, encode, odata_literal};

use crate::clock::Millis;
use crate::config::GraphConfig;
use crate::intake::{self, Source, Verdict};
use crate::lease::Fence;
use crate::metrics;
use crate::provisioning::{Ctx, Engine};
use crate::store::SourceState;

/// Whether this process polls a group now.
pub enum Turn {
    /// Another replica does.
    Elsewhere,
    /// This process does; with several replicas its writes carry the lease's fence.
    Here(Option<Fence>),
}

/// Decides which replica polls a group.
#[async_trait]
pub trait PollerLease: Send + Sync + 'static {
    /// Whether this process may poll the group now (asked before every poll).
    async fn turn(&self, group_id: &str) -> Turn;
}

/// One process, every group: what a single replica (the SQLite store) runs.
#[derive(Debug, Default)]
pub struct SingleProcessLease;

#[async_trait]
impl PollerLease for SingleProcessLease {
    async fn turn(&self, _group_id: &str) -> Turn {
        Turn::Here(None)
    }
}

/// The engine's leases: on a store of its own the process polls every group; with several
/// replicas on PostgreSQL, the one holding the cluster's `graph` lease does, under its fence.
pub struct EngineLease(pub std::sync::Weak<Engine>);

#[async_trait]
impl PollerLease for EngineLease {
    async fn turn(&self, _group_id: &str) -> Turn {
        match self
            .0
            .upgrade()
            .and_then(|engine| engine.lease_turn(crate::provisioning::GRAPH_LEASE))
        {
            Some(fence) => Turn::Here(fence),
            None => Turn::Elsewhere,
        }
    }
}

/// The id a Graph-polled group has as a source.
pub fn source_id(group_id: &str) -> String {
    format!("graph:{group_id}")
}

const REQUEST_FIELDS: &str = "id,action,accessId,principalId,groupId,status,createdDateTime,scheduleInfo,justification";
/// What a principal always needs (SPEC §2), besides what the apps' mappings name.
const BASE_ATTRIBUTES: [&str; 5] = ["userPrincipalName", "displayName", "givenName", "surname", "mail"];

/// Starts the Graph source: a supervisor that keeps one poller task per assigned group.
pub fn start(engine: Arc<Engine>, config: GraphConfig, lease: Arc<dyn PollerLease>) -> anyhow::Result<JoinHandle<()>> {
    let client = Arc::new(GraphClient::new(
        config.clone(),
        engine.ctx.config.allow_private_targets,
    )?);
    let stop = engine.stop_token();
    tracing::info!(url = %config.url, poll_interval_ms = config.poll_interval_ms, "reading PIM from Microsoft Graph");
    Ok(tokio::spawn(supervise(engine, client, config, lease, stop)))
}

async fn supervise(
    engine: Arc<Engine>,
    client: Arc<GraphClient>,
    config: GraphConfig,
    lease: Arc<dyn PollerLease>,
    stop: CancellationToken,
) {
    let mut pollers: HashMap<String, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    loop {
        match engine.ctx.store.assigned_group_ids().await {
            Ok(groups) => {
                let wanted: HashSet<String> = groups.into_iter().collect();
                pollers.retain(|group, (token, task)| {
                    let keep = wanted.contains(group) && !task.is_finished();
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                for group in wanted {
                    if pollers.contains_key(&group) {
                        continue;
                    }
                    let token = stop.child_token();
                    let poller = Poller {
                        engine: engine.clone(),
                        client: client.clone(),
                        interval_ms: config.poll_interval_ms,
                        group_id: group.clone(),
                    };
                    let task = tokio::spawn(poller.run(lease.clone(), token.clone()));
                    pollers.insert(group, (token, task));
                }
            }
            Err(e) => tracing::error!(error = %e, "listing the assigned groups for the Graph source failed"),
        }
        let next = engine.ctx.now() + config.poll_interval_ms.min(5_000);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = engine.ctx.clock.sleep_until(next) => {}
        }
    }
    for (_, (token, task)) in pollers {
        token.cancel();
        let _ = task.await;
    }
}

struct Poller {
    engine: Arc<Engine>,
    client: Arc<GraphClient>,
    interval_ms: Millis,
    group_id: String,
}

impl Poller {
    fn ctx(&self) -> &Ctx {
        &self.engine.ctx
    }

    async fn run(self, lease: Arc<dyn PollerLease>, stop: CancellationToken) {
        // A wait Graph asked for before a restart still holds.
        if let Ok(Some(state)) = self.ctx().store.source_state(&source_id(&self.group_id)).await
            && let Some(at) = state.next_poll_at.filter(|at| *at > self.ctx().now())
        {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.ctx().clock.sleep_until(at) => {}
            }
        }
        loop {
            let started = self.ctx().now();
            let mut next = started + self.interval_ms;
            // A stop never waits for Graph: a poll cut short is taken up again after the restart
            // (what it committed is idempotent: seen pairs, standing members, the delta link).
            if let Turn::Here(fence) = lease.turn(&self.group_id).await {
                let poll = async {
                    match fence {
                        Some(fence) => crate::lease::scope(fence, self.poll_once(started)).await,
                        None => self.poll_once(started).await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    at = poll => next = at,
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.ctx().clock.sleep_until(next) => {}
            }
        }
    }

    /// One poll; records its outcome and answers when the next one is due.
    async fn poll_once(&self, started: Millis) -> Millis {
        let id = source_id(&self.group_id);
        let mut state = match self.ctx().store.source_state(&id).await {
            Ok(state) => state.unwrap_or_else(|| SourceState {
                id: id.clone(),
                kind: "graph".into(),
                group_id: self.group_id.clone(),
                ..Default::default()
            }),
            Err(e) => {
                tracing::error!(error = %e, source = %id, "reading the source's state failed");
                return started + self.interval_ms;
            }
        };
        state.last_attempt_at = Some(started);
        let outcome = self.poll(&mut state).await;
        let now = self.ctx().now();
        let mut next = started + self.interval_ms;
        match &outcome {
            Ok(()) => {
                state.last_success_at = Some(now);
                state.last_error = None;
                metrics::source_poll(&id, "success");
            }
            Err(e) => {
                if let GraphError::Throttled { retry_after_ms, .. } = e {
                    next = next.max(now + retry_after_ms);
                }
                tracing::warn!(source = %id, error = %e, "Graph poll failed");
                state.last_error = Some(e.to_string());
                metrics::source_poll(&id, e.outcome());
            }
        }
        state.next_poll_at = Some(next);
        if let Err(e) = self.ctx().store.put_source_state(&state).await {
            tracing::error!(error = %e, source = %id, "recording the poll failed");
        }
        next
    }

    async fn poll(&self, state: &mut SourceState) -> GraphResult<()> {
        let now = self.ctx().now();
        // R6: read when the group is assigned (the first poll) and at each cycle after.
        let stale = state
            .group_info_at
            .is_none_or(|at| now - at >= self.ctx().config.sync_interval_ms);
        if state.group_info.is_none() || stale {
            match self.group_info().await {
                Ok(info) => {
                    state.group_info = Some(info);
                    state.group_info_at = Some(now);
                }
                // A refresh that fails keeps what was read: requests (a `Revoked` among them) are
                // still taken in. A throttled one stops the poll like any other throttled call.
                Err(e) if state.group_info.is_some() && !matches!(e, GraphError::Throttled { .. }) => {
                    tracing::warn!(group_id = %self.group_id, error = %e, "re-reading the group's R6 properties failed; keeping the last read");
                }
                Err(e) => return Err(e),
            }
        }
        let group = state.group_info.clone().unwrap_or(Value::Null);
        self.take_in_requests(&group).await?;
        // Entra lists an activated member as a member. The PIM instances are read on both sides
        // of the delta, so a member whose activation began (or ended) between two reads is in
        // one of them: it is the activation's, never taken for standing.
        let mut activated = self.activated_members().await?;
        let delta = self.read_delta(state).await?;
        activated.extend(self.activated_members().await?);
        self.apply_delta(state, delta, &activated).await
    }

    async fn group_info(&self) -> GraphResult<Value> {
        let url = self.client.url(&format!(
            "/groups/{}?$select=displayName,membershipRule,onPremisesSyncEnabled",
            encode(&self.group_id)
        ));
        let g = self.client.get(&url, "GET /groups/{id}").await?;
        Ok(json!({
            "displayName": g.get("displayName").cloned().unwrap_or(Value::Null),
            "membershipRule": g.get("membershipRule").cloned().unwrap_or(Value::Null),
            "onPremisesSyncEnabled": g.get("onPremisesSyncEnabled").cloned().unwrap_or(Value::Null),
        }))
    }

    /// Every attribute a principal needs: the base ones and whatever an app's mapping names
    /// (`objectId` is the principal's id, not an attribute Graph has).
    async fn principal_attributes(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> = BASE_ATTRIBUTES.iter().map(|s| s.to_string()).collect();
        if let Ok(apps) = self.ctx().store.list_apps().await {
            for app in apps {
                if let Ok(mapping) = app.settings.compiled_mapping() {
                    names.extend(mapping.mapping.attributes().into_iter().map(String::from));
                }
            }
        }
        names.remove("objectId");
        names.into_iter().filter(|n| is_graph_property(n)).collect()
    }

    /// The user's attributes, `GET /users/{id}` with `$select` of `attributes`.
    async fn read_user(&self, principal_id: &str, attributes: &str) -> GraphResult<Map<String, Value>> {
        let url = self.client.url(&format!(
            "/users/{}?$select={}",
            encode(principal_id),
            encode(attributes)
        ));
        Ok(principal_fields(&self.client.get(&url, "GET /users/{id}").await?))
    }

    /// Completes events whose expanded principal lacked `userPrincipalName`, for principals the
    /// store does not know, with `GET /users/{id}` (SPEC §7). Answers the request ids that could
    /// not be completed now: those are taken in only if they need no principal (a removal), and
    /// otherwise left for the next poll. A throttled read stops the poll.
    async fn complete_principals(
        &self,
        fresh: &mut [(String, String, Value)],
        attributes: &str,
    ) -> GraphResult<HashSet<String>> {
        let mut read: HashMap<String, Option<Map<String, Value>>> = HashMap::new();
        let mut incomplete = HashSet::new();
        for (id, _, event) in fresh.iter_mut() {
            if event.get("principal").is_some() {
                continue;
            }
            let Some(principal_id) = event.get("principalId").and_then(Value::as_str).map(String::from) else {
                continue;
            };
            if !read.contains_key(&principal_id) {
                if self
                    .ctx()
                    .store
                    .principal(&principal_id)
                    .await
                    .map_err(store_error)?
                    .is_some()
                {
                    continue;
                }
                let user = match self.read_user(&principal_id, attributes).await {
                    Ok(user) => Some(user).filter(|u| {
                        u.get("userPrincipalName")
                            .and_then(Value::as_str)
                            .is_some_and(|upn| !upn.trim().is_empty())
                    }),
                    Err(e @ GraphError::Throttled { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(principal_id = %principal_id, group_id = %self.group_id, error = %e,
                            "reading a principal's attributes failed; its requests wait for the next poll");
                        None
                    }
                };
                read.insert(principal_id.clone(), user);
            }
            match read.get(&principal_id).cloned().flatten() {
                Some(user) => {
                    event["principal"] = Value::Object(user);
                }
                None => {
                    incomplete.insert(id.clone());
                }
            }
        }
        Ok(incomplete)
    }

    /// The group's assignment schedule requests: each (`id`, `status`) not taken in yet goes
    /// through the webhook's intake. Pairs Graph no longer lists are forgotten.
    async fn take_in_requests(&self, group: &Value) -> GraphResult<()> {
        let attributes = self.principal_attributes().await.join(",");
        let url = self.client.url(&format!(
            "/identityGovernance/privilegedAccess/group/assignmentScheduleRequests?$filter={}&$select={}&$expand={}",
            encode(&format!("groupId eq {}", odata_literal(&self.group_id))),
            encode(REQUEST_FIELDS),
            encode(&format!("principal($select={attributes})")),
        ));
        let listing = self.client.list(&url, "GET assignmentScheduleRequests").await?;
        let store = &self.ctx().store;
        let seen: HashSet<(String, String)> = store
            .seen_requests(&self.group_id)
            .await
            .map_err(store_error)?
            .into_iter()
            .collect();
        let mut listed = Vec::new();
        let mut fresh: Vec<(String, String, Value)> = Vec::new();
        for item in &listing.items {
            let (Some(id), Some(status)) = (
                item.get("id").and_then(Value::as_str),
                item.get("status").and_then(Value::as_str),
            ) else {
                continue;
            };
            listed.push(id.to_string());
            if item
                .get("groupId")
                .and_then(Value::as_str)
                .is_some_and(|g| g != self.group_id)
            {
                continue;
            }
            if !seen.contains(&(id.to_string(), status.to_string())) {
                fresh.push((id.to_string(), status.to_string(), as_event(item, group)));
            }
        }
        // Older first, so a batch applies in createdDateTime order like a webhook's.
        fresh.sort_by(|a, b| {
            let at = |v: &Value| v.get("createdDateTime").and_then(Value::as_str).map(String::from);
            at(&a.2).cmp(&at(&b.2))
        });
        let incomplete = self.complete_principals(&mut fresh, &attributes).await?;
        for chunk in fresh.chunks(intake::MAX_BATCH) {
            let raws: Vec<Value> = chunk.iter().map(|(_, _, raw)| raw.clone()).collect();
            // What one poll takes in is one trace, a span per event under it (SPEC §10).
            let page = tracing::info_span!(target: crate::trace::TARGET, parent: None, "graph.page");
            let verdicts = intake::take_in(&self.engine, &raws, Source::Graph)
                .instrument(page)
                .await
                .map_err(store_error)?;
            let mut taken = Vec::new();
            for ((id, status, _), verdict) in chunk.iter().zip(&verdicts) {
                match verdict {
                    Verdict::Accepted(_) | Verdict::Duplicate(_) => {}
                    // Not marked seen: the next poll completes it and tries again.
                    _ if incomplete.contains(id) => continue,
                    Verdict::Conflict(detail) | Verdict::Malformed { detail, .. } | Verdict::Refused { detail, .. } => {
                        tracing::warn!(request_id = %id, status = %status, group_id = %self.group_id, %detail,
                            "Graph request not taken in");
                    }
                }
                taken.push((id.clone(), status.clone()));
            }
            store
                .mark_requests_seen(&self.group_id, &taken, self.ctx().now())
                .await
                .map_err(store_error)?;
        }
        store
            .forget_requests_except(&self.group_id, &listed)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Principals whose membership an activation governs now (active instances with
    /// `assignmentType: activated`): Entra lists them as members, but they are not standing ones.
    async fn activated_members(&self) -> GraphResult<HashSet<String>> {
        let url = self.client.url(&format!(
            "/identityGovernance/privilegedAccess/group/assignmentScheduleInstances?$filter={}&$select={}",
            encode(&format!("groupId eq {}", odata_literal(&self.group_id))),
            encode("principalId,accessId,assignmentType,startDateTime,endDateTime"),
        ));
        let listing = self.client.list(&url, "GET assignmentScheduleInstances").await?;
        let now = self.ctx().now();
        Ok(listing
            .items
            .iter()
            .filter(|i| i.get("accessId").and_then(Value::as_str) == Some("member"))
            .filter(|i| i.get("assignmentType").and_then(Value::as_str) == Some("activated"))
            .filter(|i| {
                i.get("endDateTime")
                    .and_then(Value::as_str)
                    .and_then(crate::clock::parse_rfc3339)
                    .is_none_or(|end| end > now)
            })
            .filter_map(|i| i.get("principalId").and_then(Value::as_str).map(String::from))
            .collect())
    }

    /// The directory feed's read: group delta from the stored delta link. An expired link (410:
    /// `syncStateNotFound`, `resyncRequired`) starts the group's delta afresh.
    async fn read_delta(&self, state: &SourceState) -> GraphResult<Delta> {
        const WHAT: &str = "GET /groups/delta";
        let from_start = self.client.url(&format!(
            "/groups/delta?$filter={}&$select=members",
            encode(&format!("id eq {}", odata_literal(&self.group_id)))
        ));
        let Some(link) = &state.delta_link else {
            let listing = self.client.list(&from_start, WHAT).await?;
            return Ok(Delta { listing, fresh: false });
        };
        match self.client.list(&self.client.own_link(link, WHAT)?, WHAT).await {
            Err(GraphError::Status {
                status: 410, detail, ..
            }) => {
                tracing::warn!(group_id = %self.group_id, %detail, "the group's delta link expired: reading its delta afresh");
                let listing = self.client.list(&from_start, WHAT).await?;
                Ok(Delta { listing, fresh: true })
            }
            read => Ok(Delta {
                listing: read?,
                fresh: false,
            }),
        }
    }

    /// The directory feed: standing members from group delta. After a fresh start the listing
    /// holds every member: a standing member it still lists is kept as it is (never removed and
    /// added again), one it no longer lists is removed.
    async fn apply_delta(&self, state: &mut SourceState, delta: Delta, activated: &HashSet<String>) -> GraphResult<()> {
        let Delta { listing, fresh } = delta;
        let store = &self.ctx().store;
        let now = self.ctx().now();
        let attributes = self.principal_attributes().await.join(",");
        // Every member the listing names, when it is a fresh one that names the group.
        let mut listed: Option<Vec<String>> = None;
        // Whether a standing member was removed: the apps' dispatchers are woken once, at the end.
        let mut removed = false;
        for group in listing
            .items
            .iter()
            .filter(|g| g.get("id").and_then(Value::as_str) == Some(&self.group_id))
        {
            let listed = listed.get_or_insert_with(Vec::new);
            if group.get("@removed").is_some() {
                continue;
            }
            let members = group
                .get("members@delta")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for member in members {
                let Some(principal_id) = member.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let is_user = member
                    .get("@odata.type")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t == "#microsoft.graph.user");
                if member.get("@removed").is_some() {
                    removed |= store
                        .delete_standing_member(&self.group_id, principal_id, self.ctx().now())
                        .await
                        .map_err(store_error)?;
                    continue;
                }
                listed.push(principal_id.to_string());
                // R7: a nested group's members are never provisioned through it.
                if !is_user || activated.contains(principal_id) {
                    continue;
                }
                if store.principal(principal_id).await.map_err(store_error)?.is_none() {
                    let user = self.read_user(principal_id, &attributes).await?;
                    store
                        .put_principal_attributes(principal_id, &Value::Object(user), now)
                        .await
                        .map_err(store_error)?;
                }
                store
                    .put_standing_member(&self.group_id, principal_id, None, now)
                    .await
                    .map_err(store_error)?;
            }
        }
        if fresh && let Some(listed) = listed {
            let gone = store
                .retain_standing_members(&self.group_id, &listed)
                .await
                .map_err(store_error)?;
            tracing::info!(group_id = %self.group_id, listed = listed.len(), gone, "group delta read afresh");
            removed |= gone > 0;
        }
        if removed {
            self.engine.wake_group(&self.group_id).await;
        }
        if let Some(link) = listing.delta_link {
            state.delta_link = Some(link);
        }
        Ok(())
    }
}

/// One read of group delta; `fresh` when it started over after the stored link expired.
struct Delta {
    listing: Listing,
    fresh: bool,
}

/// A Graph property name (a mapping may name anything; only plain names are asked for).
fn is_graph_property(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The user's attributes as a `principal` object: Graph's annotations and its `id` left out.
fn principal_fields(user: &Value) -> Map<String, Value> {
    user.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| !k.starts_with('@') && !k.contains("@odata") && *k != "id" && !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// A Graph request object as the webhook's event body: its fields, the expanded principal's
/// attributes, and the group's R6 properties as read.
fn as_event(item: &Value, group: &Value) -> Value {
    let mut event: Map<String, Value> = item
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !k.starts_with('@') && !k.contains("@odata") && *k != "principal")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(principal) = item.get("principal").filter(|p| p.is_object()) {
        let fields = principal_fields(principal);
        if fields.get("userPrincipalName").and_then(Value::as_str).is_some() {
            event.insert("principal".into(), Value::Object(fields));
        }
    }
    event.insert("group".into(), group.clone());
    Value::Object(event)
}

fn store_error(e: crate::store::StoreError) -> GraphError {
    GraphError::Unexpected {
        what: "the store".into(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_request_becomes_a_webhook_shaped_event() {
        let item = json!({
            "@odata.etag": "x", "id": "r1", "action": "selfActivate", "accessId": "member",
            "principalId": "p1", "groupId": "g1", "status": "Provisioned",
            "createdDateTime": "2026-11-22T09:00:00.1234567Z",
            "scheduleInfo": {"startDateTime": "2026-11-22T09:00:00Z", "expiration": {"type": "afterDuration", "duration": "PT2H"}},
            "principal": {"@odata.type": "#microsoft.graph.user", "id": "p1", "userPrincipalName": "ada@contoso.com", "employeeId": "42", "mail": null}
        });
        let group = json!({"displayName": "G", "membershipRule": null, "onPremisesSyncEnabled": false});
        let event = as_event(&item, &group);
        assert_eq!(
            event["principal"],
            json!({"userPrincipalName": "ada@contoso.com", "employeeId": "42"})
        );
        assert_eq!(event["group"], group);
        assert!(event.get("@odata.etag").is_none());
        let parsed = crate::activation::parse(&event).unwrap();
        assert_eq!(parsed.id, "r1");
    }
}
