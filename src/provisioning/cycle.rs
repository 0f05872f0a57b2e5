//! The synchronization cycle of one app (SPEC section 5): take the deferred work, reconcile the
//! desired membership with what the bridge provisioned, check drift, record the cycle, and
//! quarantine an app whose target refuses it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::json;

use crate::clock::Millis;
use crate::scim::{ScimClient, ScimError};
use crate::store::{AppRecord, CycleCounts, CycleRecord, DriftRepair, Job, LogEntry, OutOfScope, TargetMember};

use super::{Ctx, push};

const DAY_MS: Millis = 86_400_000;
const DEFAULT_MEMBERS_PER_PATCH: usize = 100;

/// Outcomes of the cycle's calls, for quarantine: 429 and 503 never count.
#[derive(Default)]
struct Tally {
    operations: u32,
    failures: u32,
    refusals: u32,
}

impl Tally {
    fn ok(&mut self) {
        self.operations += 1;
    }
    fn failed(&mut self, e: &ScimError) {
        if e.is_throttle() {
            return;
        }
        self.operations += 1;
        self.failures += 1;
        if e.is_auth_refusal() {
            self.refusals += 1;
        }
    }
    fn quarantine_reason(&self) -> Option<String> {
        if self.operations > 0 && self.refusals == self.operations {
            Some("every call of the last cycle was refused with 401 or 403: check the app's credentials".into())
        } else if self.operations >= 20 && self.failures * 2 >= self.operations {
            Some(format!(
                "{} of {} operations of the last cycle failed",
                self.failures, self.operations
            ))
        } else {
            None
        }
    }
}

struct CycleRun<'a> {
    ctx: &'a Ctx,
    app: &'a AppRecord,
    client: &'a ScimClient,
    cycle_id: &'a str,
    counts: CycleCounts,
    tally: Tally,
    /// The deferred job behind a pair, so the activation links to the cycle's outcome.
    origin: HashMap<TargetMember, Job>,
    upn: HashMap<String, Option<String>>,
}

impl CycleRun<'_> {
    async fn entry(&mut self, member: &TargetMember, action: &str, status: &str) -> anyhow::Result<LogEntry> {
        let now = self.ctx.now();
        if !self.upn.contains_key(&member.principal_id) {
            let upn = self
                .ctx
                .store
                .principal(&member.principal_id)
                .await?
                .map(|p| p.user_principal_name);
            self.upn.insert(member.principal_id.clone(), upn);
        }
        let origin = self.origin.get(member);
        Ok(LogEntry {
            id: uuid::Uuid::now_v7().to_string(),
            time: now,
            app_id: self.app.id.clone(),
            app_name: self.app.name.clone(),
            trigger: "sync".into(),
            cycle_id: Some(self.cycle_id.to_string()),
            event_id: origin.and_then(|j| j.event_id.clone()),
            job_id: origin.map(|j| j.id.clone()),
            principal_id: Some(member.principal_id.clone()),
            user_principal_name: self.upn[&member.principal_id].clone(),
            group_id: origin.map(|j| j.group_id.clone()),
            action: action.into(),
            status: status.into(),
            attempt: 1,
            latency_ms: origin
                .filter(|_| status == "success")
                .map(|j| (now - j.received_at).max(0)),
            ..Default::default()
        })
    }

    async fn add_all(
        &mut self,
        target: &str,
        source_group: &str,
        principals: &[String],
        reason: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut steps = Vec::new();
        let mut group_id =
            match push::ensure_group(self.ctx, self.app, self.client, target, source_group, &mut steps).await {
                Ok(id) => id,
                Err(e) => {
                    self.tally.failed(&e);
                    for p in principals {
                        let member = TargetMember {
                            target_display_name: target.into(),
                            principal_id: p.clone(),
                        };
                        let mut entry = self.entry(&member, "add_member", "failure").await?;
                        entry.reason = Some(e.to_string());
                        entry.steps = steps.clone();
                        self.ctx.store.insert_log(&entry).await?;
                        self.counts.failed += 1;
                    }
                    return Ok(());
                }
            };
        let mut ready: Vec<(TargetMember, String, push::PushResult)> = Vec::new();
        for p in principals {
            let member = TargetMember {
                target_display_name: target.into(),
                principal_id: p.clone(),
            };
            let mut user_steps = Vec::new();
            let mut result = push::PushResult::default();
            match push::ensure_user(self.ctx, self.app, self.client, p, &mut user_steps, &mut result).await {
                Ok(user_id) => {
                    self.tally.ok();
                    self.counts.users_created += result.user_created as i64;
                    self.counts.users_updated += result.user_updated as i64;
                    if result.user_created {
                        let mut entry = self.entry(&member, "create_user", "success").await?;
                        entry.target_user_id = Some(user_id.clone());
                        entry.steps = user_steps;
                        self.ctx.store.insert_log(&entry).await?;
                    }
                    ready.push((member, user_id, result));
                }
                Err(e) => {
                    self.tally.failed(&e);
                    self.counts.failed += 1;
                    let mut entry = self.entry(&member, "add_member", "failure").await?;
                    entry.reason = Some(e.to_string());
                    entry.steps = user_steps;
                    self.ctx.store.insert_log(&entry).await?;
                }
            }
        }
        let per_patch = self
            .app
            .settings
            .members_per_patch
            .map(|n| n.max(1) as usize)
            .unwrap_or(DEFAULT_MEMBERS_PER_PATCH);
        for chunk in ready.chunks(per_patch) {
            let ids: Vec<String> = chunk.iter().map(|(_, id, _)| id.clone()).collect();
            let mut patch_steps = steps.clone();
            let started = std::time::Instant::now();
            let mut outcome = self.client.add_members(&group_id, &ids, &mut patch_steps).await;
            if matches!(&outcome, Err(e) if e.status() == Some(404)) {
                // The stored group id is stale: resolve once more and send again.
                self.ctx.store.forget_target_group(&self.app.id, target).await?;
                outcome =
                    match push::ensure_group(self.ctx, self.app, self.client, target, source_group, &mut patch_steps)
                        .await
                    {
                        Ok(fresh) => {
                            group_id = fresh;
                            self.client.add_members(&group_id, &ids, &mut patch_steps).await
                        }
                        Err(e) => Err(e),
                    };
            }
            if let Err(ScimError::Network(_)) = &outcome {
                // The PATCH may have reached the target: read the group rather than send it again.
                if let Ok(present) = self.client.group_member_ids(&group_id, &mut patch_steps).await
                    && ids.iter().all(|id| present.contains(id))
                {
                    outcome = Ok(());
                }
            }
            let now = self.ctx.now();
            match &outcome {
                Ok(()) => self.tally.ok(),
                Err(e) => self.tally.failed(e),
            }
            for (member, user_id, _) in chunk {
                let status = if outcome.is_ok() { "success" } else { "failure" };
                let mut entry = self.entry(member, "add_member", status).await?;
                entry.target_user_id = Some(user_id.clone());
                entry.target_group_id = Some(group_id.clone());
                entry.duration_ms = Some(started.elapsed().as_millis() as i64);
                entry.steps = patch_steps.clone();
                match &outcome {
                    Ok(()) => {
                        self.ctx.store.mark_provisioned(&self.app.id, member, now).await?;
                        self.counts.added += 1;
                        entry.reason = reason.map(String::from);
                    }
                    Err(e) => {
                        self.counts.failed += 1;
                        entry.reason = Some(e.to_string());
                    }
                }
                self.ctx.store.insert_log(&entry).await?;
            }
        }
        Ok(())
    }

    async fn remove(&mut self, member: &TargetMember) -> anyhow::Result<()> {
        let mut steps = Vec::new();
        let started = std::time::Instant::now();
        let outcome = push::remove_member(
            self.ctx,
            self.app,
            self.client,
            &member.principal_id,
            &member.target_display_name,
            &mut steps,
        )
        .await;
        let status = if outcome.is_ok() { "success" } else { "failure" };
        let mut entry = self.entry(member, "remove_member", status).await?;
        entry.duration_ms = Some(started.elapsed().as_millis() as i64);
        entry.steps = steps;
        match outcome {
            Ok(done) => {
                self.tally.ok();
                self.ctx.store.unmark_provisioned(&self.app.id, member).await?;
                self.counts.removed += 1;
                entry.target_user_id = done.target_user_id;
                entry.target_group_id = done.target_group_id;
                entry.reason = done.note;
            }
            Err(e) => {
                self.tally.failed(&e);
                self.counts.failed += 1;
                entry.reason = Some(e.to_string());
            }
        }
        self.ctx.store.insert_log(&entry).await?;
        Ok(())
    }

    /// Reads the target groups and compares the members the bridge manages.
    async fn drift(&mut self, dry_run: bool, report: &mut Vec<serde_json::Value>) -> anyhow::Result<()> {
        let mode = self.app.settings.drift_repair;
        if mode == DriftRepair::Off {
            return Ok(());
        }
        let provisioned = self.ctx.store.provisioned_members(&self.app.id).await?;
        let mut by_target: BTreeMap<String, Vec<TargetMember>> = BTreeMap::new();
        for m in provisioned {
            by_target.entry(m.target_display_name.clone()).or_default().push(m);
        }
        let users: HashMap<String, String> = self
            .ctx
            .store
            .target_users(&self.app.id)
            .await?
            .into_iter()
            .map(|(p, u)| (p, u.target_user_id))
            .collect();
        for (target, members) in by_target {
            let Some(group_id) = self.ctx.store.target_group(&self.app.id, &target).await? else {
                continue;
            };
            let mut steps = Vec::new();
            let present = match self.client.group_member_ids(&group_id, &mut steps).await {
                Ok(p) => {
                    self.tally.ok();
                    p
                }
                Err(e) => {
                    self.tally.failed(&e);
                    continue;
                }
            };
            let missing: Vec<String> = members
                .iter()
                .filter(|m| users.get(&m.principal_id).is_none_or(|id| !present.contains(id)))
                .map(|m| m.principal_id.clone())
                .collect();
            for p in &missing {
                self.counts.drift_found += 1;
                report.push(json!({"targetGroup": target, "principalId": p, "drift": "member missing at the target"}));
                let member = TargetMember {
                    target_display_name: target.clone(),
                    principal_id: p.clone(),
                };
                if mode == DriftRepair::Report || dry_run {
                    let mut entry = self.entry(&member, "add_member", "skipped").await?;
                    entry.reason = Some(
                        "drift: the member the bridge added is missing at the target (driftRepair: report)".into(),
                    );
                    entry.target_group_id = Some(group_id.clone());
                    if !dry_run {
                        self.ctx.store.insert_log(&entry).await?;
                    }
                }
            }
            if mode == DriftRepair::Repair && !dry_run && !missing.is_empty() {
                for p in &missing {
                    let member = TargetMember {
                        target_display_name: target.clone(),
                        principal_id: p.clone(),
                    };
                    self.ctx.store.unmark_provisioned(&self.app.id, &member).await?;
                }
                let source = self.source_group_of(&target).await?;
                self.add_all(
                    &target,
                    &source,
                    &missing,
                    Some("drift repaired: the member was missing at the target"),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn source_group_of(&self, target: &str) -> anyhow::Result<String> {
        Ok(self
            .ctx
            .store
            .list_assignments(&self.app.id)
            .await?
            .into_iter()
            .find(|a| a.target_display_name == target)
            .map(|a| a.group_id)
            .unwrap_or_else(|| target.to_string()))
    }

    /// `outOfScope: disable`: accounts the bridge created that no assigned group entitles.
    async fn disable_out_of_scope(
        &mut self,
        desired: &BTreeSet<TargetMember>,
        dry_run: bool,
        report: &mut Vec<serde_json::Value>,
    ) -> anyhow::Result<()> {
        if self.app.settings.out_of_scope != OutOfScope::Disable {
            return Ok(());
        }
        let entitled: BTreeSet<&str> = desired.iter().map(|m| m.principal_id.as_str()).collect();
        for (principal, mut user) in self.ctx.store.target_users(&self.app.id).await? {
            if !user.created_by_us || user.disabled || entitled.contains(principal.as_str()) {
                continue;
            }
            report.push(json!({"principalId": principal, "disable": user.target_user_id}));
            if dry_run {
                continue;
            }
            let mut steps = Vec::new();
            let outcome = self
                .client
                .set_user_active(&user.target_user_id, false, &mut steps)
                .await;
            let member = TargetMember {
                target_display_name: String::new(),
                principal_id: principal.clone(),
            };
            let mut entry = self
                .entry(
                    &member,
                    "disable_user",
                    if outcome.is_ok() { "success" } else { "failure" },
                )
                .await?;
            entry.target_user_id = Some(user.target_user_id.clone());
            entry.steps = steps;
            match outcome {
                Ok(()) => {
                    self.tally.ok();
                    user.disabled = true;
                    self.ctx.store.put_target_user(&self.app.id, &principal, &user).await?;
                    self.counts.users_disabled += 1;
                    entry.reason =
                        Some("no assigned group entitles this account any more (outOfScope: disable)".into());
                }
                Err(e) => {
                    self.tally.failed(&e);
                    self.counts.failed += 1;
                    entry.reason = Some(e.to_string());
                }
            }
            self.ctx.store.insert_log(&entry).await?;
        }
        Ok(())
    }
}

/// Runs one cycle. A cycle that breaks off is recorded as failed and, if scheduled, tried again
/// a little later, so the app's immediate pushes are never starved by a failing cycle.
pub(super) async fn run(
    ctx: &Ctx,
    app: &AppRecord,
    client: &ScimClient,
    cycle_id: &str,
    trigger: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    let Err(e) = run_recorded(ctx, app, client, cycle_id, trigger, dry_run).await else {
        return Ok(());
    };
    tracing::error!(app_id = %app.id, cycle_id, error = %e, "cycle broke off");
    let now = ctx.now();
    if let Some(mut cycle) = ctx
        .store
        .list_cycles(&app.id, 20)
        .await?
        .into_iter()
        .find(|c| c.id == cycle_id)
    {
        cycle.status = "failed".into();
        cycle.ended_at = Some(now);
        cycle.progress = Some(format!("broke off: {e}"));
        ctx.store.update_cycle(&cycle).await?;
    }
    if trigger == "schedule" {
        ctx.store
            .set_next_sync(&app.id, now + ctx.sync_interval_ms(app).min(RETRY_BROKEN_CYCLE_MS))
            .await?;
    }
    Ok(())
}

const RETRY_BROKEN_CYCLE_MS: Millis = 5 * 60_000;

/// Settles adds whose outcome was unknown: the target says whether the member is there.
async fn settle_in_doubt(ctx: &Ctx, app: &AppRecord, client: &ScimClient) -> anyhow::Result<()> {
    let store = &ctx.store;
    let doubtful = store.in_doubt_members(&app.id).await?;
    if doubtful.is_empty() {
        return Ok(());
    }
    let users: HashMap<String, String> = store
        .target_users(&app.id)
        .await?
        .into_iter()
        .map(|(p, u)| (p, u.target_user_id))
        .collect();
    let mut by_target: BTreeMap<String, Vec<TargetMember>> = BTreeMap::new();
    for m in doubtful {
        by_target.entry(m.target_display_name.clone()).or_default().push(m);
    }
    for (target, members) in by_target {
        let mut steps = Vec::new();
        let group_id = match store.target_group(&app.id, &target).await? {
            Some(id) => Some(id),
            None => client.find_group(&target, &mut steps).await.ok().flatten(),
        };
        let present = match &group_id {
            Some(id) => match client.group_member_ids(id, &mut steps).await {
                Ok(present) => present,
                Err(_) => continue, // still unknown: try again next cycle
            },
            None => Default::default(),
        };
        let now = ctx.now();
        for m in members {
            if users.get(&m.principal_id).is_some_and(|id| present.contains(id)) {
                store.mark_provisioned(&app.id, &m, now).await?;
            } else {
                store.unmark_provisioned(&app.id, &m).await?;
            }
        }
    }
    Ok(())
}

async fn run_recorded(
    ctx: &Ctx,
    app: &AppRecord,
    client: &ScimClient,
    cycle_id: &str,
    trigger: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    let store = &ctx.store;
    let started = ctx.now();
    let mut record = CycleRecord {
        id: cycle_id.to_string(),
        app_id: app.id.clone(),
        trigger: trigger.into(),
        dry_run,
        started_at: started,
        ended_at: None,
        status: "running".into(),
        counts: CycleCounts::default(),
        progress: Some("reading desired and provisioned membership".into()),
        report: None,
    };
    store.insert_cycle(&record).await?;
    tracing::info!(app_id = %app.id, cycle_id, trigger, dry_run, "cycle started");

    let assignments = store.list_assignments(&app.id).await?;
    let target_of: HashMap<&str, &str> = assignments
        .iter()
        .map(|a| (a.group_id.as_str(), a.target_display_name.as_str()))
        .collect();
    if !dry_run {
        settle_in_doubt(ctx, app, client).await?;
    }
    let deferred = store.deferred_jobs(&app.id).await?;
    let desired: BTreeSet<TargetMember> = store.desired_members(&app.id, started).await?.into_iter().collect();
    let provisioned: BTreeSet<TargetMember> = store.provisioned_members(&app.id).await?.into_iter().collect();

    let mut run = CycleRun {
        ctx,
        app,
        client,
        cycle_id,
        counts: CycleCounts {
            deferred_taken: deferred.len() as i64,
            ..Default::default()
        },
        tally: Tally::default(),
        origin: HashMap::new(),
        upn: HashMap::new(),
    };
    // Coalesce the deferred work per (principal, group): the final desired state decides.
    for job in &deferred {
        if let Some(target) = target_of.get(job.group_id.as_str()) {
            let member = TargetMember {
                target_display_name: target.to_string(),
                principal_id: job.principal_id.clone(),
            };
            run.origin.insert(member, job.clone());
        }
    }
    let to_add: Vec<&TargetMember> = desired.difference(&provisioned).collect();
    let to_remove: Vec<&TargetMember> = provisioned.difference(&desired).collect();
    let mut report = Vec::new();
    for m in &to_add {
        report.push(json!({"targetGroup": m.target_display_name, "principalId": m.principal_id, "change": "add"}));
    }
    for m in &to_remove {
        report.push(json!({"targetGroup": m.target_display_name, "principalId": m.principal_id, "change": "remove"}));
    }
    record.progress = Some(format!("{} to add, {} to remove", to_add.len(), to_remove.len()));
    store.update_cycle(&record).await?;

    if !dry_run {
        let mut adds: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in &to_add {
            adds.entry(m.target_display_name.clone())
                .or_default()
                .push(m.principal_id.clone());
        }
        for (target, principals) in adds {
            let source = run.source_group_of(&target).await?;
            run.add_all(&target, &source, &principals, None).await?;
        }
        for m in &to_remove {
            run.remove(m).await?;
        }
    } else {
        run.counts.skipped = (to_add.len() + to_remove.len()) as i64;
    }
    record.progress = Some("checking drift".into());
    store.update_cycle(&record).await?;
    run.drift(dry_run, &mut report).await?;
    run.disable_out_of_scope(&desired, dry_run, &mut report).await?;

    let now = ctx.now();
    if !dry_run {
        for job in &deferred {
            store.set_job_state(&job.id, "done", None, now).await?;
        }
    }

    let interval = ctx.sync_interval_ms(app);
    let quarantine = if dry_run { None } else { run.tally.quarantine_reason() };
    let mut next_sync = if trigger == "schedule" {
        now + interval
    } else {
        app.next_sync_at
    };
    record.status = if run.counts.failed > 0 {
        "failed".into()
    } else {
        "success".into()
    };
    if let Some(reason) = &quarantine {
        let level = app.quarantine_level + 1;
        let backoff = (interval.saturating_mul(1 << level.min(20))).min(DAY_MS);
        next_sync = now + backoff;
        store
            .set_app_status(&app.id, "quarantined", Some(reason), level)
            .await?;
        record.status = "quarantined".into();
        tracing::warn!(app_id = %app.id, reason, "app quarantined");
    } else if app.status == "quarantined" && trigger == "schedule" {
        let backoff = (interval.saturating_mul(1 << app.quarantine_level.clamp(1, 20))).min(DAY_MS);
        next_sync = now + backoff;
    }
    if !dry_run {
        store.set_next_sync(&app.id, next_sync).await?;
    }
    record.ended_at = Some(now);
    record.progress = None;
    record.counts = run.counts;
    record.report = Some(json!({"changes": report}));
    store.update_cycle(&record).await?;
    crate::metrics::cycle_ended(&app.id, trigger, &record.status, now - started, &record.counts);
    tracing::info!(app_id = %app.id, cycle_id, status = %record.status, counts = ?record.counts, "cycle ended");
    Ok(())
}
