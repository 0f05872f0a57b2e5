//! The synchronization cycle of one app (SPEC section 5), as small steps. The app's dispatcher
//! owns its cycle and sends one step at a time (one SCIM operation, or one PATCH of at most
//! `membersPerPatch` members), serving its immediate queue between steps, so a cycle of any size
//! never holds up a revocation. Each step is checked against the membership state just before it
//! is sent; an add is marked in doubt (in one commit) before it is sent, so an unknown outcome
//! is settled by reading the target group, whether the answer was lost or the bridge died. The
//! user steps before an add commit nothing of their own: the users they matched or created ride
//! their chunk's in-flight mark (or its outcome, when nothing is to be sent), so a chunk costs one
//! commit before its PATCH and one after. A step that must be retried is rescheduled on the
//! bridge's clock, never slept on. A cycle interrupted by a stop resumes under the same id,
//! planned again from the state at that moment.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::{Value, json};
use tracing::Instrument;

use crate::clock::Millis;
use crate::mapping::AppMapping;
use crate::scim::{ScimClient, ScimError};
use crate::store::{
    AppRecord, CycleCounts, CycleRecord, DriftRepair, Job, JobChange, LogEntry, MemberChange, OnAccessEnd, OutOfScope,
    Outcome, TargetMember, TargetUser, UserStep,
};
use crate::types::Step;

use super::{Ctx, push, retry_at};

const DAY_MS: Millis = 86_400_000;
const DEFAULT_MEMBERS_PER_PATCH: usize = 100;
/// Attempts of one step (5xx, 429, network) before it is counted as failed. A removal is never
/// counted so: one that fails is handed on as a job of its own, retried on the clock.
const MAX_STEP_ATTEMPTS: i64 = 5;
/// How long a chunk's user steps may go on with what they read at once (`Cycle::user_read`),
/// however quiet: what a wake lost between replicas (or a change that wakes nothing) leaves
/// unseen is seen at the latest this much later. Each time it runs out the rest of the chunk is
/// read again, so it is long against a chunk's steps: at 1,000 apps cycling at once, each app's
/// chunk of 100 took about 15 s in the benchmark (a second cost it a read of the rest per second).
const USER_READS_MAX_AGE_MS: Millis = 10_000;
/// A scheduled cycle that broke off is tried again this much later.
const RETRY_BROKEN_CYCLE_MS: Millis = 5 * 60_000;

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

/// One step of a cycle.
#[derive(Debug, Clone)]
enum CycleStep {
    /// Read a target group and settle the members whose add had an unknown outcome.
    Settle {
        target: String,
    },
    /// Match, create or update the user of a member about to be added.
    User {
        member: TargetMember,
    },
    /// Add up to `membersPerPatch` members in one PATCH.
    Add {
        target: String,
        principals: Vec<String>,
        reason: Option<&'static str>,
    },
    Remove {
        member: TargetMember,
    },
    /// Read a target group and compare the members the bridge manages (`driftRepair`).
    Drift {
        target: String,
    },
    /// Without groups: read one account the bridge enabled or disabled and compare its `active`
    /// (`driftRepair`).
    DriftUser {
        principal: String,
    },
    /// `outOfScope: disable`: an account the bridge created that nothing entitles any more.
    Disable {
        principal: String,
    },
    /// Finds the known users whose mapped attributes differ from what was last sent (a changed
    /// mapping, renamed principals) and plans an update for each. Sends nothing itself.
    CheckUsers,
    /// Replaces the changed `always` attributes of one known user.
    UpdateUser {
        principal: String,
    },
    /// The deletion guard's decision (SPEC §8): removals it holds (`newly`: logged `held`, once
    /// per pair) and held ones whose member is entitled again.
    Hold {
        hold: Vec<TargetMember>,
        newly: Vec<TargetMember>,
        release: Vec<TargetMember>,
    },
    /// Plan again if a manual cycle was merged in, else record the end.
    Finish,
}

/// What one step did, recorded in one commit with the cycle's progress.
#[derive(Default)]
struct StepResult {
    members: Vec<(TargetMember, MemberChange)>,
    logs: Vec<LogEntry>,
    legacy_remove: bool,
    /// A removal this step could not make, handed on to be retried on the clock.
    new_jobs: Vec<Job>,
    /// Removals the deletion guard holds, and held ones whose member is entitled again.
    hold: Vec<TargetMember>,
    release: Vec<TargetMember>,
    /// Users matched, created or brought up to date, by principal; target groups found or
    /// created, by display name.
    users: Vec<(String, TargetUser)>,
    groups: Vec<(String, String)>,
}

impl StepResult {
    /// Takes in what a later step did: after what this one holds, a principal's user as the
    /// later record says.
    fn absorb(&mut self, later: StepResult) {
        self.members.extend(later.members);
        self.logs.extend(later.logs);
        self.legacy_remove |= later.legacy_remove;
        self.new_jobs.extend(later.new_jobs);
        self.hold.extend(later.hold);
        self.release.extend(later.release);
        for (principal, user) in later.users {
            self.users.retain(|(p, _)| *p != principal);
            self.users.push((principal, user));
        }
        self.groups.extend(later.groups);
    }
}

/// How a step ended.
enum Done {
    /// Finished (successfully or not): go on with the next step.
    Next(StepResult),
    /// Must be sent again later.
    Retry(ScimError, StepResult),
}

pub(super) struct Cycle {
    record: CycleRecord,
    steps: VecDeque<CycleStep>,
    tally: Tally,
    /// The deferred job behind a pair, so the activation links to the cycle's outcome.
    origin: HashMap<TargetMember, Job>,
    /// Deferred jobs this cycle took; those still deferred at its end are done.
    taken: HashSet<String>,
    report: Vec<Value>,
    upn: HashMap<String, Option<String>>,
    /// The front step waits until then (a retry).
    not_before: Millis,
    attempts: i64,
    steps_done: usize,
    app_name: String,
    /// Members the directory feed entitles: their changes are logged with trigger `directory`.
    standing: HashSet<TargetMember>,
    /// The cycle's trace (SPEC §10): a trace of its own, a span per step under it.
    trace: tracing::Span,
    /// What the user steps since the last commit did (the users they matched or created, the
    /// failures they logged): written with the cycle's next commit, their chunk's.
    carried: StepResult,
    /// Once the chunk's user steps have read (`user_read`): when, and what those still to come
    /// read (for an app with groups). `None` before the chunk's first user step.
    user_reads: Option<(Millis, HashMap<TargetMember, UserStep>)>,
}

impl Cycle {
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// When the next step may be sent.
    pub fn ready_at(&self) -> Millis {
        self.not_before
    }

    /// The next step is a user step (`CycleStep::User`): it takes and queues no job.
    pub fn next_step_is_user(&self) -> bool {
        matches!(self.steps.front(), Some(CycleStep::User { .. }))
    }

    /// The next step talks to the target (and so is paced).
    pub fn next_step_sends(&self) -> bool {
        !matches!(
            self.steps.front(),
            None | Some(CycleStep::Finish | CycleStep::CheckUsers)
        )
    }

    fn new(record: CycleRecord) -> Self {
        let trace = tracing::info_span!(target: crate::trace::TARGET, parent: None, "cycle",
            cycle.id = %record.id, app.id = %record.app_id);
        Self {
            trace,
            record,
            steps: VecDeque::new(),
            tally: Tally::default(),
            origin: HashMap::new(),
            taken: HashSet::new(),
            report: Vec::new(),
            upn: HashMap::new(),
            not_before: 0,
            attempts: 0,
            steps_done: 0,
            app_name: String::new(),
            standing: HashSet::new(),
            carried: StepResult::default(),
            user_reads: None,
        }
    }

    /// Writes what the cycle carries, if anything (a stop between a chunk's user steps and its
    /// PATCH): the users matched or created, the failures logged.
    pub async fn write_carried(&mut self, ctx: &Ctx) -> anyhow::Result<()> {
        let c = &self.carried;
        if c.users.is_empty() && c.groups.is_empty() && c.logs.is_empty() && c.members.is_empty() {
            return Ok(());
        }
        let app_id = self.record.app_id.clone();
        let outcome = self.outcome(&app_id, ctx.now(), StepResult::default());
        ctx.store.record(&outcome).await?;
        Ok(())
    }

    /// The principal's user as a step of the chunk recorded it, not committed yet.
    fn carried_user(&self, principal: &str) -> Option<&TargetUser> {
        self.carried.users.iter().rfind(|(p, _)| p == principal).map(|(_, u)| u)
    }

    /// An outcome of the cycle at `now`: what it carries (`carried`), then `result`.
    fn outcome(&mut self, app_id: &str, now: Millis, result: StepResult) -> Outcome {
        let mut done = std::mem::take(&mut self.carried);
        done.absorb(result);
        Outcome {
            app_id: app_id.to_string(),
            time: now,
            members: done.members,
            logs: done.logs,
            legacy_remove: done.legacy_remove,
            new_jobs: done.new_jobs,
            hold: done.hold,
            release: done.release,
            users: done.users,
            groups: done.groups,
            ..Default::default()
        }
    }

    /// A cycle that a stop or crash interrupted: it goes on under the same id, planned again.
    pub async fn resume(ctx: &Ctx, app_id: &str) -> anyhow::Result<Option<Self>> {
        let mut running = ctx.store.running_cycles(app_id).await?;
        let Some(record) = running.pop() else {
            return Ok(None);
        };
        let Some(app) = ctx.store.get_app(app_id).await? else {
            return Ok(None);
        };
        let now = ctx.now();
        for mut stale in running {
            stale.status = "failed".into();
            stale.ended_at = Some(now);
            stale.progress = Some("interrupted, and a later cycle resumed instead".into());
            ctx.store
                .record(&Outcome {
                    app_id: app_id.into(),
                    time: now,
                    cycle: Some(stale),
                    ..Default::default()
                })
                .await?;
        }
        tracing::info!(app_id, cycle_id = %record.id, "resuming the cycle a stop interrupted");
        let mut cycle = Self::new(record);
        cycle.plan(ctx, &app).await?;
        Ok(Some(cycle))
    }

    /// Starts the cycle asked for through the API (`asked`: the pass saw a request, see
    /// `Store::app_and_work`), or the scheduled one when it is due.
    pub async fn start_if_due(ctx: &Ctx, app: &AppRecord, asked: bool) -> anyhow::Result<Option<Self>> {
        let store = &ctx.store;
        let now = ctx.now();
        let request = if asked {
            store.take_cycle_request(&app.id).await?
        } else {
            None
        };
        let (id, trigger, dry_run) = if let Some((id, dry_run)) = request {
            // A merge asked for just as its cycle ended: the work is still done, by a new cycle.
            let ended = store.list_cycles(&app.id, 20).await?.iter().any(|c| c.id == id);
            let id = if ended { uuid::Uuid::now_v7().to_string() } else { id };
            // A paused app gets no pushes, not even from a cycle asked for before the pause.
            (id, "manual", dry_run || app.status == "paused")
        } else if now >= app.next_sync_at {
            if app.status == "paused" {
                store.set_next_sync(&app.id, now + ctx.sync_interval_ms(app)).await?;
                return Ok(None);
            }
            (uuid::Uuid::now_v7().to_string(), "schedule", false)
        } else {
            return Ok(None);
        };
        let record = CycleRecord {
            id,
            app_id: app.id.clone(),
            trigger: trigger.into(),
            dry_run,
            started_at: now,
            ended_at: None,
            status: "running".into(),
            counts: CycleCounts::default(),
            progress: Some("planning".into()),
            report: None,
        };
        store.insert_cycle(&record).await?;
        tracing::info!(app_id = %app.id, cycle_id = %record.id, trigger, dry_run, "cycle started");
        let mut cycle = Self::new(record);
        if let Err(e) = cycle.plan(ctx, app).await {
            cycle.break_off(ctx, app, &e).await?;
            return Ok(None);
        }
        Ok(Some(cycle))
    }

    fn members_per_patch(app: &AppRecord) -> usize {
        app.settings
            .members_per_patch
            .map(|n| n.max(1) as usize)
            .unwrap_or(DEFAULT_MEMBERS_PER_PATCH)
    }

    /// Plans the steps from the state at this moment: (1) the deferred work, (2) desired against
    /// provisioned membership, (3) drift, and out-of-scope accounts.
    async fn plan(&mut self, ctx: &Ctx, app: &AppRecord) -> anyhow::Result<()> {
        let store = &ctx.store;
        let now = ctx.now();
        let dry_run = self.record.dry_run;
        self.app_name = app.name.clone();
        self.standing = store.standing_members(&app.id).await?.into_iter().collect();
        let assignments = store.list_assignments(&app.id).await?;
        // Without groups the account is the entitlement: one membership per user, at "".
        let groups = app.settings.provisions_groups();
        let target_of: HashMap<&str, &str> = assignments
            .iter()
            .map(|a| {
                (
                    a.group_id.as_str(),
                    if groups { a.target_display_name.as_str() } else { "" },
                )
            })
            .collect();
        let mut steps = VecDeque::new();
        if !dry_run {
            let in_doubt: BTreeSet<String> = store
                .in_doubt_members(&app.id)
                .await?
                .into_iter()
                .map(|m| m.target_display_name)
                .collect();
            steps.extend(in_doubt.into_iter().map(|target| CycleStep::Settle { target }));
        }
        // Coalesce the deferred work per (principal, group): the final desired state decides.
        for job in store.deferred_jobs(&app.id).await? {
            if let Some(target) = target_of.get(job.group_id.as_str()) {
                let member = TargetMember {
                    target_display_name: target.to_string(),
                    principal_id: job.principal_id.clone(),
                };
                if self.taken.insert(job.id.clone()) {
                    self.record.counts.deferred_taken += 1;
                }
                self.origin.insert(member, job);
            }
        }
        let desired: BTreeSet<TargetMember> = store
            .desired_members(&app.id, now)
            .await?
            .into_iter()
            .map(|mut m| {
                if !groups {
                    m.target_display_name.clear();
                }
                m
            })
            .collect();
        let provisioned: BTreeSet<TargetMember> = store.provisioned_members(&app.id).await?.into_iter().collect();
        let to_add: Vec<&TargetMember> = desired.difference(&provisioned).collect();
        let mut to_remove: Vec<&TargetMember> = provisioned.difference(&desired).collect();
        // The deletion guard (SPEC §8): a removal that settles a PIM end is never counted nor
        // held; the others (a directory removal, an unassignment, drift) count, and more than the
        // threshold, or any while a hold is open, are held all together.
        let held: BTreeSet<TargetMember> = store
            .held_removals(&app.id)
            .await?
            .into_iter()
            .map(|h| TargetMember {
                target_display_name: h.target_display_name,
                principal_id: h.principal_id,
            })
            .collect();
        let release: Vec<TargetMember> = held.iter().filter(|m| desired.contains(*m)).cloned().collect();
        let pim_ends: BTreeSet<(String, String)> = store
            .open_access_ends()
            .await?
            .into_iter()
            .filter(|e| e.app_id == app.id && e.is_pim_end() && e.status != "held")
            .map(|e| (e.principal_id, e.target_display_name.unwrap_or_default()))
            .collect();
        let counted: Vec<TargetMember> = to_remove
            .iter()
            .filter(|m| !held.contains(**m))
            .filter(|m| !pim_ends.contains(&(m.principal_id.clone(), m.target_display_name.clone())))
            .map(|m| (*m).clone())
            .collect();
        let still_held = held.len() - release.len();
        let holding = app
            .settings
            .deletion_guard()
            .is_some_and(|g| still_held > 0 || counted.len() as u64 > g.threshold);
        let hold: Vec<TargetMember> = if holding { counted } else { Vec::new() };
        to_remove.retain(|m| !held.contains(*m) && !hold.contains(*m));
        if !hold.is_empty() || !release.is_empty() {
            let newly: Vec<TargetMember> = hold.iter().filter(|m| !held.contains(*m)).cloned().collect();
            for m in &hold {
                self.report.push(
                    json!({"targetGroup": m.target_display_name, "principalId": m.principal_id, "change": "remove", "held": true}),
                );
            }
            if !dry_run {
                steps.push_back(CycleStep::Hold { hold, newly, release });
            }
        }
        for m in &to_add {
            self.report
                .push(json!({"targetGroup": m.target_display_name, "principalId": m.principal_id, "change": "add"}));
        }
        for m in &to_remove {
            self.report
                .push(json!({"targetGroup": m.target_display_name, "principalId": m.principal_id, "change": "remove"}));
        }
        if dry_run {
            self.record.counts.skipped += (to_add.len() + to_remove.len()) as i64;
        } else {
            let mut adds: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for m in &to_add {
                adds.entry(&m.target_display_name)
                    .or_default()
                    .push(m.principal_id.clone());
            }
            for (target, principals) in adds {
                // Each chunk's user steps go right before it: their users ride its commits.
                for chunk in principals.chunks(Self::members_per_patch(app)) {
                    for p in chunk {
                        steps.push_back(CycleStep::User {
                            member: TargetMember {
                                target_display_name: target.to_string(),
                                principal_id: p.clone(),
                            },
                        });
                    }
                    steps.push_back(CycleStep::Add {
                        target: target.to_string(),
                        principals: chunk.to_vec(),
                        reason: None,
                    });
                }
            }
            steps.extend(to_remove.iter().map(|m| CycleStep::Remove { member: (*m).clone() }));
        }
        if app.settings.drift_repair != DriftRepair::Off && !groups {
            // The account is the entitlement: each one the bridge enabled (or disabled) is read.
            for (principal, user) in store.target_users(&app.id).await? {
                let enabled = provisioned.iter().any(|m| m.principal_id == principal);
                if enabled || (user.disabled && (user.created_by_us || user.enabled_by_us)) {
                    steps.push_back(CycleStep::DriftUser { principal });
                }
            }
        } else if app.settings.drift_repair != DriftRepair::Off {
            let targets: BTreeSet<&str> = desired
                .iter()
                .chain(provisioned.iter())
                .map(|m| m.target_display_name.as_str())
                .collect();
            steps.extend(targets.into_iter().map(|t| CycleStep::Drift { target: t.to_string() }));
        }
        steps.push_back(CycleStep::CheckUsers);
        if app.settings.out_of_scope == OutOfScope::Disable {
            let entitled: BTreeSet<&str> = desired.iter().map(|m| m.principal_id.as_str()).collect();
            for (principal, user) in store.target_users(&app.id).await? {
                if user.created_by_us && !user.disabled && !entitled.contains(principal.as_str()) {
                    self.report
                        .push(json!({"principalId": principal, "disable": user.target_user_id}));
                    if !dry_run {
                        steps.push_back(CycleStep::Disable { principal });
                    }
                }
            }
        }
        steps.push_back(CycleStep::Finish);
        self.record.progress = Some(format!(
            "{} to add, {} to remove; {} steps planned",
            to_add.len(),
            to_remove.len(),
            steps.len()
        ));
        self.steps = steps;
        self.not_before = now;
        Ok(())
    }

    /// Sends the next step and records what it did. Answers whether the cycle has ended.
    /// `quiet`: the dispatcher kept its last read: it was not woken since (a job queued, the
    /// app changed, a cycle asked for, a standing member of an assigned group removed) and no job
    /// was taken or came due.
    pub async fn step(
        &mut self,
        ctx: &Ctx,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        quiet: bool,
    ) -> anyhow::Result<bool> {
        let Some(mut step) = self.steps.front().cloned() else {
            return Ok(true);
        };
        if app.status == "paused" && !self.record.dry_run && !matches!(step, CycleStep::Finish) {
            // Pausing stops every push, the cycle's too: what is left goes to the next cycle,
            // and this step is the cycle's end.
            self.steps.clear();
            self.steps.push_back(CycleStep::Finish);
            self.record.progress = Some("stopped: the app was paused".into());
            step = CycleStep::Finish;
        }
        let span = tracing::info_span!(target: crate::trace::TARGET, parent: &self.trace, "cycle.step",
            cycle.id = %self.record.id, app.id = %self.record.app_id);
        // A step that carries deferred jobs links to the traces their events began.
        for job in self.deferred_jobs_of(&step) {
            crate::trace::link(&span, job.trace_context.as_deref());
        }
        if matches!(step, CycleStep::Finish) {
            return self.finish(ctx, app).instrument(span).await;
        }
        let user_step = matches!(step, CycleStep::User { .. });
        if !user_step {
            // The chunk's user steps are done: the next chunk's first reads afresh.
            self.user_reads = None;
        }
        let result = async {
            match step {
                CycleStep::Finish => unreachable!("handled above"),
                CycleStep::Hold { hold, newly, release } => self.hold(ctx, hold, &newly, release).await,
                CycleStep::Settle { target } => self.settle(ctx, app, client, &target).await,
                CycleStep::User { member } => self.user(ctx, app, mapping, client, &member, quiet).await,
                CycleStep::Add {
                    target,
                    principals,
                    reason,
                } => self.add(ctx, app, client, &target, &principals, reason).await,
                CycleStep::Remove { member } => self.remove(ctx, app, mapping, client, &member).await,
                CycleStep::Drift { target } => self.drift(ctx, app, client, &target).await,
                CycleStep::DriftUser { principal } => self.drift_user(ctx, app, client, &principal).await,
                CycleStep::Disable { principal } => self.disable(ctx, app, client, &principal).await,
                CycleStep::CheckUsers => self.check_users(ctx, app, mapping).await,
                CycleStep::UpdateUser { principal } => self.update_user(ctx, app, mapping, client, &principal).await,
            }
        }
        .instrument(span)
        .await;
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                self.break_off(ctx, app, &e).await?;
                return Ok(true);
            }
        };
        let now = ctx.now();
        let result = match done {
            Done::Next(result) => {
                self.steps.pop_front();
                self.steps_done += 1;
                self.attempts = 0;
                self.not_before = now;
                result
            }
            Done::Retry(e, result) => {
                self.attempts += 1;
                if self.attempts >= MAX_STEP_ATTEMPTS {
                    // Given up for this cycle; an add stays in doubt and the next cycle settles it.
                    self.tally.failed(&e);
                    self.record.counts.failed += 1;
                    tracing::warn!(app_id = %app.id, cycle_id = %self.record.id, error = %e, "cycle step failed");
                    self.steps.pop_front();
                    self.steps_done += 1;
                    self.attempts = 0;
                    self.not_before = now;
                } else {
                    self.not_before = retry_at(now, self.attempts, &e);
                    tracing::info!(app_id = %app.id, cycle_id = %self.record.id, error = %e, retry_at = self.not_before, "cycle step rescheduled");
                }
                result
            }
        };
        self.record.progress = Some(format!("{} steps done, {} to go", self.steps_done, self.steps.len()));
        if user_step {
            // Committed with the chunk the user is added in (its in-flight mark, or its outcome).
            self.carried.absorb(result);
            return Ok(false);
        }
        let outcome = Outcome {
            cycle: Some(self.record.clone()),
            ..self.outcome(&app.id, now, result)
        };
        ctx.store.record(&outcome).await?;
        Ok(false)
    }

    /// The deferred jobs whose members `step` changes.
    fn deferred_jobs_of(&self, step: &CycleStep) -> Vec<&Job> {
        let members: Vec<TargetMember> = match step {
            CycleStep::User { member } | CycleStep::Remove { member } => vec![member.clone()],
            CycleStep::Add { target, principals, .. } => principals
                .iter()
                .map(|principal| TargetMember {
                    target_display_name: target.clone(),
                    principal_id: principal.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        members.iter().filter_map(|m| self.origin.get(m)).collect()
    }

    async fn entry(
        &mut self,
        ctx: &Ctx,
        member: &TargetMember,
        action: &str,
        status: &str,
    ) -> anyhow::Result<LogEntry> {
        let now = ctx.now();
        if !self.upn.contains_key(&member.principal_id) {
            let upn = ctx
                .store
                .principal(&member.principal_id)
                .await?
                .map(|p| p.user_principal_name);
            self.upn.insert(member.principal_id.clone(), upn);
        }
        let origin = self.origin.get(member);
        let trigger = if origin.is_none() && self.standing.contains(member) {
            "directory"
        } else {
            "sync"
        };
        Ok(LogEntry {
            id: uuid::Uuid::now_v7().to_string(),
            time: now,
            app_id: self.record.app_id.clone(),
            app_name: self.app_name.clone(),
            trigger: trigger.into(),
            cycle_id: Some(self.record.id.clone()),
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
            trace_id: crate::trace::current_trace_id(),
            ..Default::default()
        })
    }

    /// A failed step: retried if the failure may pass, else logged as a failure of `members`.
    async fn failed(
        &mut self,
        ctx: &Ctx,
        e: ScimError,
        members: &[TargetMember],
        action: &str,
        steps: Vec<Step>,
        mut result: StepResult,
    ) -> anyhow::Result<Done> {
        if e.is_transient() && self.attempts + 1 < MAX_STEP_ATTEMPTS {
            return Ok(Done::Retry(e, result));
        }
        self.tally.failed(&e);
        for member in members {
            let mut entry = self.entry(ctx, member, action, "failure").await?;
            entry.reason = Some(e.to_string());
            entry.steps = steps.clone();
            result.logs.push(entry);
            self.record.counts.failed += 1;
        }
        Ok(Done::Next(result))
    }

    async fn settle(&mut self, ctx: &Ctx, app: &AppRecord, client: &ScimClient, target: &str) -> anyhow::Result<Done> {
        let store = &ctx.store;
        let doubtful: Vec<TargetMember> = store
            .in_doubt_members(&app.id)
            .await?
            .into_iter()
            .filter(|m| m.target_display_name == target)
            .collect();
        if doubtful.is_empty() {
            return Ok(Done::Next(StepResult::default()));
        }
        if !app.settings.provisions_groups() {
            // No group to read: an account the bridge knows is provisioned, one it never
            // recorded was not created.
            let mut result = StepResult::default();
            for member in doubtful {
                let known = store.target_user(&app.id, &member.principal_id).await?;
                let change = if known.is_some_and(|u| !u.disabled) {
                    MemberChange::Confirmed
                } else {
                    MemberChange::Gone
                };
                result.members.push((member, change));
            }
            return Ok(Done::Next(result));
        }
        let mut steps = Vec::new();
        let group_id = match store.target_group(&app.id, target).await? {
            Some(id) => Some(id),
            None => match client.find_group(target, &mut steps).await {
                Ok(found) => found,
                Err(e) => return Ok(Done::Retry(e, StepResult::default())),
            },
        };
        let present = match &group_id {
            Some(id) => match client.group_member_ids(id, &mut steps).await {
                Ok(present) => present,
                Err(e) if e.is_transient() => return Ok(Done::Retry(e, StepResult::default())),
                // Still unknown: the next cycle tries again.
                Err(_) => return Ok(Done::Next(StepResult::default())),
            },
            None => Default::default(),
        };
        self.tally.ok();
        let mut result = StepResult::default();
        for m in doubtful {
            let there = match store.target_user(&app.id, &m.principal_id).await? {
                Some(user) => present.contains(&user.target_user_id),
                None => false,
            };
            let change = if there {
                MemberChange::Confirmed
            } else {
                MemberChange::Gone
            };
            result.members.push((m, change));
        }
        Ok(Done::Next(result))
    }

    /// Whether something entitles the member now: to its target group, or (an app without
    /// groups, where the account is the entitlement) to the app.
    async fn entitled(ctx: &Ctx, app: &AppRecord, member: &TargetMember) -> anyhow::Result<bool> {
        let store = &ctx.store;
        let now = ctx.now();
        Ok(if app.settings.provisions_groups() {
            store
                .entitled_via(&app.id, &member.target_display_name, &member.principal_id, now)
                .await?
                .is_some()
        } else {
            store.entitled_at_app(&app.id, &member.principal_id, now).await?
        })
    }

    async fn user(
        &mut self,
        ctx: &Ctx,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        member: &TargetMember,
        quiet: bool,
    ) -> anyhow::Result<Done> {
        let read = self.user_read(ctx, app, member, quiet).await?;
        self.upn
            .entry(member.principal_id.clone())
            .or_insert(read.user_principal_name);
        if !read.wanted {
            return Ok(Done::Next(StepResult::default()));
        }
        let mut steps = Vec::new();
        let mut pushed = push::PushResult::default();
        // A user an earlier step of the chunk recorded is not committed yet: it is given here.
        let stored = self.carried_user(&member.principal_id).cloned().or(read.user);
        match push::ensure_user(
            ctx,
            app,
            mapping,
            client,
            &member.principal_id,
            Some(stored),
            read.attributes,
            &mut steps,
            &mut pushed,
        )
        .await
        {
            Ok(_) => {
                self.tally.ok();
                self.record.counts.users_created += pushed.user_created as i64;
                self.record.counts.users_updated += pushed.user_updated as i64;
                Ok(Done::Next(StepResult {
                    users: pushed
                        .user_record
                        .map(|u| (member.principal_id.clone(), u))
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }))
            }
            Err(e) => {
                let members = [member.clone()];
                self.failed(ctx, e, &members, "add_member", steps, StepResult::default())
                    .await
            }
        }
    }

    /// What the member's user step reads before it sends anything. Without groups the account is
    /// the access and nothing checks it again: each step reads just before it acts. With groups
    /// the chunk's PATCH checks each member again just before it is sent (`add`), so the chunk's
    /// user steps are read at once, with the first, and a step takes its part only while the
    /// dispatcher was not woken (`quiet`: a change it would be woken for, and a wake lost between
    /// replicas, are bounded by `USER_READS_MAX_AGE_MS`) and no membership of the principal has
    /// ended since. A step woken in the middle of the chunk reads its member alone (under a stream
    /// of wakes a step reads no more than one member); the next quiet step reads the rest.
    async fn user_read(
        &mut self,
        ctx: &Ctx,
        app: &AppRecord,
        member: &TargetMember,
        quiet: bool,
    ) -> anyhow::Result<UserStep> {
        let now = ctx.now();
        let groups = app.settings.provisions_groups();
        let chunk_read = self.user_reads.take();
        let mid_chunk = chunk_read.is_some();
        if let Some((read_at, mut reads)) = chunk_read
            && quiet
            && now < read_at + USER_READS_MAX_AGE_MS
            && let Some(read) = reads.remove(member)
            && read.changes_at.is_none_or(|at| now < at)
        {
            self.user_reads = Some((read_at, reads));
            return Ok(read);
        }
        let members: Vec<TargetMember> = if groups && (quiet || !mid_chunk) {
            self.steps
                .iter()
                .map_while(|step| match step {
                    CycleStep::User { member } => Some(member.clone()),
                    _ => None,
                })
                .collect()
        } else {
            vec![member.clone()]
        };
        let mut reads = ctx.store.user_steps(&app.id, &members, groups, now).await?;
        let read = reads
            .remove(member)
            .ok_or_else(|| anyhow::anyhow!("the user step of {} is not the cycle's next step", member.principal_id))?;
        self.user_reads = Some((now, reads));
        Ok(read)
    }

    async fn add(
        &mut self,
        ctx: &Ctx,
        app: &AppRecord,
        client: &ScimClient,
        target: &str,
        principals: &[String],
        reason: Option<&'static str>,
    ) -> anyhow::Result<Done> {
        let store = &ctx.store;
        // Checked against the membership state just before sending: nobody revoked meanwhile
        // is added, nobody added meanwhile (by an immediate push) is added twice.
        // The whole chunk in one read.
        let mut ready: Vec<(TargetMember, String, bool)> = Vec::new();
        for c in store.add_chunk_checks(&app.id, target, principals, ctx.now()).await? {
            // Still to be added: entitled now, and not confirmed at the target.
            if !c.entitled || c.confirmed {
                continue;
            }
            // A member whose user could not be prepared was logged by its user step.
            let carried = self.carried_user(&c.principal_id).map(|u| u.target_user_id.clone());
            let Some(user_id) = carried.or(c.target_user_id) else {
                continue;
            };
            let member = TargetMember {
                target_display_name: target.to_string(),
                principal_id: c.principal_id,
            };
            ready.push((member, user_id, c.provisioned));
        }
        if ready.is_empty() {
            return Ok(Done::Next(StepResult::default()));
        }
        let members: Vec<TargetMember> = ready.iter().map(|(m, ..)| m.clone()).collect();
        if !app.settings.provisions_groups() {
            // No group to add to: the user step created or enabled the account, which is the
            // entitlement. Recorded as provisioned.
            let mut result = StepResult::default();
            for member in members {
                self.record.counts.added += 1;
                let mut entry = self.entry(ctx, &member, "add_member", "success").await?;
                entry.reason =
                    Some("no groups at this app (provisionGroups false): the account is the entitlement".into());
                result.logs.push(entry);
                result.members.push((member, MemberChange::Confirmed));
            }
            return Ok(Done::Next(result));
        }
        let mut steps = Vec::new();
        let source = self.source_group_of(ctx, app, target).await?;
        let started = std::time::Instant::now();
        let mut pushed = push::PushResult::default();
        let group_id = match push::ensure_group(ctx, app, client, target, &source, None, &mut steps, &mut pushed).await
        {
            Ok(id) => {
                // Recorded with the chunk's next commit.
                self.carried.groups.extend(pushed.group_record.take());
                id
            }
            Err(e) => {
                return self
                    .failed(ctx, e, &members, "add_member", steps, StepResult::default())
                    .await;
            }
        };
        let mut result = StepResult::default();
        // Members whose add may have reached the target already: read the group first.
        if ready.iter().any(|(_, _, in_doubt)| *in_doubt) {
            let present = match client.group_member_ids(&group_id, &mut steps).await {
                Ok(present) => present,
                Err(e) => return self.failed(ctx, e, &members, "add_member", steps, result).await,
            };
            let (there, missing): (Vec<_>, Vec<_>) = ready.into_iter().partition(|(_, id, _)| present.contains(id));
            for (member, user_id, _) in there {
                result.logs.push(
                    self.add_entry(ctx, &member, &user_id, &group_id, &steps, started, reason)
                        .await?,
                );
                result.members.push((member, MemberChange::Confirmed));
                self.record.counts.added += 1;
            }
            ready = missing;
            if ready.is_empty() {
                return Ok(Done::Next(result));
            }
        }
        // The in-flight mark: committed before the PATCH, so a crash or a lost answer leaves
        // these members in doubt, and the next attempt reads the group instead of adding twice.
        // It carries what the chunk's user steps did.
        let mark = Outcome {
            sources: ready.iter().map(|(m, ..)| (m.clone(), source.clone())).collect(),
            ..self.outcome(
                &app.id,
                ctx.now(),
                StepResult {
                    members: ready.iter().map(|(m, ..)| (m.clone(), MemberChange::InDoubt)).collect(),
                    ..Default::default()
                },
            )
        };
        ctx.store.record(&mark).await?;
        let ids: Vec<String> = ready.iter().map(|(_, id, _)| id.clone()).collect();
        match client.add_members(&group_id, &ids, &mut steps).await {
            Ok(()) => {
                self.tally.ok();
                for (member, user_id, _) in ready {
                    result.logs.push(
                        self.add_entry(ctx, &member, &user_id, &group_id, &steps, started, reason)
                            .await?,
                    );
                    result.members.push((member, MemberChange::Confirmed));
                    self.record.counts.added += 1;
                }
                Ok(Done::Next(result))
            }
            Err(e) if e.status() == Some(404) => {
                // The stored group id is stale: nothing was added; resolve again and resend.
                store.forget_target_group(&app.id, target).await?;
                result
                    .members
                    .extend(ready.into_iter().map(|(m, ..)| (m, MemberChange::Gone)));
                Ok(Done::Retry(e, result))
            }
            // Applied or not, unknown: the members stay in doubt and the retry reads the group.
            Err(e) if e.outcome_unknown() || e.is_transient() => {
                self.failed(ctx, e, &members, "add_member", steps, result).await
            }
            Err(e) => {
                result
                    .members
                    .extend(ready.into_iter().map(|(m, ..)| (m, MemberChange::Gone)));
                self.failed(ctx, e, &members, "add_member", steps, result).await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn add_entry(
        &mut self,
        ctx: &Ctx,
        member: &TargetMember,
        user_id: &str,
        group_id: &str,
        steps: &[Step],
        started: std::time::Instant,
        reason: Option<&'static str>,
    ) -> anyhow::Result<LogEntry> {
        let mut entry = self.entry(ctx, member, "add_member", "success").await?;
        entry.target_user_id = Some(user_id.to_string());
        entry.target_group_id = Some(group_id.to_string());
        entry.duration_ms = Some(started.elapsed().as_millis() as i64);
        entry.steps = steps.to_vec();
        entry.reason = reason.map(String::from);
        Ok(entry)
    }

    async fn remove(
        &mut self,
        ctx: &Ctx,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        member: &TargetMember,
    ) -> anyhow::Result<Done> {
        let store = &ctx.store;
        // Not removed if it was activated (or is entitled otherwise) meanwhile, or is gone.
        if Self::entitled(ctx, app, member).await? || !store.is_provisioned(&app.id, member).await? {
            return Ok(Done::Next(StepResult::default()));
        }
        // A removal already waiting as a job (an event's, or one an earlier cycle handed on) is
        // left to it: it is retried on the clock.
        if store.removal_open(&app.id, member).await? {
            return Ok(Done::Next(StepResult::default()));
        }
        let mut steps = Vec::new();
        let started = std::time::Instant::now();
        let removed = match push::remove_member(
            ctx,
            app,
            mapping,
            client,
            &member.principal_id,
            &member.target_display_name,
            &mut steps,
        )
        .await
        {
            // Once nothing entitles the user at the app, the account follows (`onAccessEnd`): a
            // request of its own, in this step.
            Ok(done)
                if app.settings.on_access_end() != OnAccessEnd::RemoveMember
                    && !store.entitled_at_app(&app.id, &member.principal_id, ctx.now()).await? =>
            {
                match push::end_account(ctx, app, client, &member.principal_id, &mut steps).await {
                    Ok(ended) => Ok((done, Some(ended))),
                    Err(e) => Err(e),
                }
            }
            other => other.map(|done| (done, None)),
        };
        match removed {
            Ok((done, ended)) => {
                self.tally.ok();
                self.record.counts.removed += 1;
                let groups = app.settings.provisions_groups();
                let action = match ended.as_ref().and_then(push::AccountEnd::action) {
                    Some(action) if !groups => action,
                    _ => "remove_member",
                };
                let mut entry = self.entry(ctx, member, action, "success").await?;
                if let Some(push::AccountEnd::Left(reason)) = &ended {
                    entry.reason = Some(format!("account left: {reason}"));
                }
                entry.duration_ms = Some(started.elapsed().as_millis() as i64);
                entry.steps = steps;
                entry.target_user_id = done.target_user_id;
                entry.target_group_id = done.target_group_id;
                entry.reason = entry.reason.take().or(done.note);
                Ok(Done::Next(StepResult {
                    members: vec![(member.clone(), MemberChange::Gone)],
                    logs: vec![entry],
                    legacy_remove: done.legacy_detected,
                    ..Default::default()
                }))
            }
            Err(e) => {
                // Never given up, nor left to the next cycle (SPEC §8): the removal goes on as a
                // job of its own, retried on the clock (backoff, `Retry-After`, 401 and 403
                // included) until it succeeds or the member is entitled again. The cycle goes on.
                self.tally.failed(&e);
                let now = ctx.now();
                let at = retry_at(now, 1, &e);
                let group_id = match store.provisioned_for(&app.id, member).await? {
                    Some(group_id) => group_id,
                    None => self.source_group_of(ctx, app, &member.target_display_name).await?,
                };
                let job = Job {
                    target_display_name: Some(member.target_display_name.clone()),
                    trace_context: crate::trace::current_traceparent(),
                    ..Job::pending(&app.id, &member.principal_id, &group_id, "remove", "sync", at, now)
                };
                tracing::warn!(app_id = %app.id, cycle_id = %self.record.id, error = %e, retry_at = at,
                    "a cycle's removal failed: retried on the clock as a job of its own");
                let mut entry = self.entry(ctx, member, "remove_member", "deferred").await?;
                entry.duration_ms = Some(started.elapsed().as_millis() as i64);
                entry.steps = steps;
                entry.deferred_until = Some(at);
                entry.reason = Some(format!("{e}; retrying"));
                Ok(Done::Next(StepResult {
                    logs: vec![entry],
                    new_jobs: vec![job],
                    ..Default::default()
                }))
            }
        }
    }

    async fn drift(&mut self, ctx: &Ctx, app: &AppRecord, client: &ScimClient, target: &str) -> anyhow::Result<Done> {
        let store = &ctx.store;
        let dry_run = self.record.dry_run;
        let Some(group_id) = store.target_group(&app.id, target).await? else {
            return Ok(Done::Next(StepResult::default()));
        };
        let in_doubt: HashSet<TargetMember> = store.in_doubt_members(&app.id).await?.into_iter().collect();
        let members: Vec<TargetMember> = store
            .provisioned_members(&app.id)
            .await?
            .into_iter()
            .filter(|m| m.target_display_name == target && !in_doubt.contains(m))
            .collect();
        if members.is_empty() {
            return Ok(Done::Next(StepResult::default()));
        }
        let mut steps = Vec::new();
        let present = match client.group_member_ids(&group_id, &mut steps).await {
            Ok(present) => {
                self.tally.ok();
                present
            }
            Err(e) if e.is_transient() => return Ok(Done::Retry(e, StepResult::default())),
            Err(e) => {
                self.tally.failed(&e);
                return Ok(Done::Next(StepResult::default()));
            }
        };
        let users: HashMap<String, String> = store
            .target_users(&app.id)
            .await?
            .into_iter()
            .map(|(p, u)| (p, u.target_user_id))
            .collect();
        let missing: Vec<TargetMember> = members
            .into_iter()
            .filter(|m| users.get(&m.principal_id).is_none_or(|id| !present.contains(id)))
            .collect();
        let mut result = StepResult::default();
        let repair = app.settings.drift_repair == DriftRepair::Repair && !dry_run;
        for member in &missing {
            self.record.counts.drift_found += 1;
            self.report.push(
                json!({"targetGroup": target, "principalId": member.principal_id, "drift": "member missing at the target"}),
            );
            if !repair && !dry_run {
                let mut entry = self.entry(ctx, member, "add_member", "skipped").await?;
                entry.reason =
                    Some("drift: the member the bridge added is missing at the target (driftRepair: report)".into());
                entry.target_group_id = Some(group_id.clone());
                result.logs.push(entry);
            }
        }
        if repair && !missing.is_empty() {
            result
                .members
                .extend(missing.iter().map(|m| (m.clone(), MemberChange::Gone)));
            let principals: Vec<String> = missing.iter().map(|m| m.principal_id.clone()).collect();
            // Goes right after this step: the repair is part of this cycle.
            for chunk in principals.chunks(Self::members_per_patch(app)).rev() {
                self.steps.insert(
                    1,
                    CycleStep::Add {
                        target: target.to_string(),
                        principals: chunk.to_vec(),
                        reason: Some("drift repaired: the member was missing at the target"),
                    },
                );
            }
        }
        Ok(Done::Next(result))
    }

    /// Records the deletion guard's decision: the held removals (each newly held pair logged
    /// `held` once) and those that leave the hold because their member is entitled again.
    async fn hold(
        &mut self,
        ctx: &Ctx,
        hold: Vec<TargetMember>,
        newly: &[TargetMember],
        release: Vec<TargetMember>,
    ) -> anyhow::Result<Done> {
        let mut result = StepResult::default();
        for member in newly {
            let mut entry = self.entry(ctx, member, "remove_member", "held").await?;
            entry.reason = Some(format!(
                "held by the deletion guard: this cycle planned more removals than its threshold; approve with POST \
                 /v1/apps/{}/held-removals/approve or reject with .../reject",
                self.record.app_id
            ));
            result.logs.push(entry);
        }
        for member in &release {
            let mut entry = self.entry(ctx, member, "remove_member", "skipped").await?;
            entry.reason = Some("entitled again: the held removal leaves the hold".into());
            result.logs.push(entry);
        }
        if !hold.is_empty() {
            tracing::warn!(app_id = %self.record.app_id, cycle_id = %self.record.id, held = hold.len(),
                "the deletion guard holds this cycle's removals");
        }
        result.hold = hold;
        result.release = release;
        Ok(Done::Next(result))
    }

    /// Without groups: compares one account's `active` with what the bridge last made it (enabled
    /// while provisioned, disabled after its end): a user the bridge disabled found active again
    /// is drift too. `driftRepair: report` logs it, `repair` sets it back (or, for an enabled
    /// account gone at the target, creates it again in this cycle).
    async fn drift_user(
        &mut self,
        ctx: &Ctx,
        app: &AppRecord,
        client: &ScimClient,
        principal: &str,
    ) -> anyhow::Result<Done> {
        let store = &ctx.store;
        let member = TargetMember {
            target_display_name: String::new(),
            principal_id: principal.to_string(),
        };
        let Some(user) = store.target_user(&app.id, principal).await? else {
            return Ok(Done::Next(StepResult::default()));
        };
        if store.in_doubt_members(&app.id).await?.contains(&member) {
            return Ok(Done::Next(StepResult::default()));
        }
        let expected = !user.disabled && store.is_confirmed(&app.id, &member).await?;
        let mut steps = Vec::new();
        let found = match client.get_user(&user.target_user_id, &mut steps).await {
            Ok(found) => {
                self.tally.ok();
                found
            }
            Err(e) if e.is_transient() => return Ok(Done::Retry(e, StepResult::default())),
            Err(e) => {
                self.tally.failed(&e);
                return Ok(Done::Next(StepResult::default()));
            }
        };
        let drift = match &found {
            None if expected => "the account the bridge enabled is gone at the target",
            None => return Ok(Done::Next(StepResult::default())),
            // A target that does not say is taken at its word: active.
            Some(u) if u.get("active").and_then(Value::as_bool).unwrap_or(true) == expected => {
                return Ok(Done::Next(StepResult::default()));
            }
            Some(_) if expected => "the account the bridge enabled is disabled at the target",
            Some(_) => "the account the bridge disabled is active again at the target",
        };
        self.record.counts.drift_found += 1;
        self.report.push(json!({"principalId": principal, "drift": drift}));
        let mut result = StepResult::default();
        let repair = app.settings.drift_repair == DriftRepair::Repair && !self.record.dry_run;
        let action = if expected { "enable_user" } else { "disable_user" };
        if !repair {
            if !self.record.dry_run {
                let mut entry = self.entry(ctx, &member, action, "skipped").await?;
                entry.reason = Some(format!("drift: {drift} (driftRepair: report)"));
                entry.target_user_id = Some(user.target_user_id.clone());
                result.logs.push(entry);
            }
            return Ok(Done::Next(result));
        }
        if found.is_none() {
            // Created again in this cycle: its provisioning starts over.
            result.members.push((member.clone(), MemberChange::Gone));
            store.forget_target_user(&app.id, principal).await?;
            self.steps.insert(1, CycleStep::User { member: member.clone() });
            self.steps.insert(
                2,
                CycleStep::Add {
                    target: String::new(),
                    principals: vec![principal.to_string()],
                    reason: Some("drift repaired: the account was gone at the target"),
                },
            );
            return Ok(Done::Next(result));
        }
        let mut entry = match client.set_user_active(&user.target_user_id, expected, &mut steps).await {
            Ok(()) => {
                self.tally.ok();
                let mut entry = self.entry(ctx, &member, action, "success").await?;
                entry.reason = Some(format!("drift repaired: {drift}"));
                entry
            }
            Err(e) if e.is_transient() => return Ok(Done::Retry(e, result)),
            Err(e) => {
                self.tally.failed(&e);
                let mut entry = self.entry(ctx, &member, action, "failure").await?;
                entry.reason = Some(format!("drift: {drift}; repair failed: {e}"));
                entry
            }
        };
        entry.steps = steps;
        entry.target_user_id = Some(user.target_user_id.clone());
        result.logs.push(entry);
        Ok(Done::Next(result))
    }

    async fn disable(
        &mut self,
        ctx: &Ctx,
        app: &AppRecord,
        client: &ScimClient,
        principal: &str,
    ) -> anyhow::Result<Done> {
        let store = &ctx.store;
        let entitled = store
            .desired_members(&app.id, ctx.now())
            .await?
            .iter()
            .any(|m| m.principal_id == principal);
        let Some(mut user) = store.target_user(&app.id, principal).await? else {
            return Ok(Done::Next(StepResult::default()));
        };
        if entitled || user.disabled {
            return Ok(Done::Next(StepResult::default()));
        }
        let member = TargetMember {
            target_display_name: String::new(),
            principal_id: principal.to_string(),
        };
        let mut steps = Vec::new();
        match client.set_user_active(&user.target_user_id, false, &mut steps).await {
            Ok(()) => {
                self.tally.ok();
                user.disabled = true;
                store.put_target_user(&app.id, principal, &user).await?;
                self.record.counts.users_disabled += 1;
                let mut entry = self.entry(ctx, &member, "disable_user", "success").await?;
                entry.target_user_id = Some(user.target_user_id.clone());
                entry.steps = steps;
                entry.reason = Some("no assigned group entitles this account any more (outOfScope: disable)".into());
                Ok(Done::Next(StepResult {
                    logs: vec![entry],
                    ..Default::default()
                }))
            }
            Err(e) => {
                self.failed(ctx, e, &[member], "disable_user", steps, StepResult::default())
                    .await
            }
        }
    }

    async fn check_users(&mut self, ctx: &Ctx, app: &AppRecord, mapping: &AppMapping) -> anyhow::Result<Done> {
        let store = &ctx.store;
        let mut stale = Vec::new();
        let known = store.app_users_attributes(&app.id).await?;
        for (principal, user) in store.target_users(&app.id).await? {
            let Some(attributes) = known.get(&principal) else {
                continue;
            };
            let Ok(mapped) = push::map_user(mapping, &principal, attributes) else {
                continue; // an empty userName: the push of that user says so
            };
            let print = mapped.always.to_string();
            if user.fingerprint != print {
                self.report
                    .push(json!({"principalId": principal, "change": "update", "targetUserId": user.target_user_id}));
                stale.push(principal);
            }
        }
        if !self.record.dry_run {
            // Right after this step, in order.
            for principal in stale.into_iter().rev() {
                self.steps.insert(1, CycleStep::UpdateUser { principal });
            }
        }
        Ok(Done::Next(StepResult::default()))
    }

    async fn update_user(
        &mut self,
        ctx: &Ctx,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        principal: &str,
    ) -> anyhow::Result<Done> {
        let member = TargetMember {
            target_display_name: String::new(),
            principal_id: principal.to_string(),
        };
        let mut steps = Vec::new();
        match push::update_user(ctx, app, mapping, client, principal, &mut steps).await {
            Ok(None) => Ok(Done::Next(StepResult::default())),
            Ok(Some(target_user_id)) => {
                self.tally.ok();
                self.record.counts.users_updated += 1;
                let mut entry = self.entry(ctx, &member, "update_user", "success").await?;
                entry.target_user_id = Some(target_user_id);
                entry.steps = steps;
                entry.reason = Some("the mapped attributes changed since they were last sent".into());
                Ok(Done::Next(StepResult {
                    logs: vec![entry],
                    ..Default::default()
                }))
            }
            Err(e) => {
                self.failed(ctx, e, &[member], "update_user", steps, StepResult::default())
                    .await
            }
        }
    }

    async fn source_group_of(&self, ctx: &Ctx, app: &AppRecord, target: &str) -> anyhow::Result<String> {
        Ok(ctx
            .store
            .list_assignments(&app.id)
            .await?
            .into_iter()
            .find(|a| a.target_display_name == target)
            .map(|a| a.group_id)
            .unwrap_or_else(|| target.to_string()))
    }

    /// The last step: plans again if a manual cycle was merged in; else records the end, the
    /// next schedule and a quarantine, with the deferred work it took, in one commit.
    async fn finish(&mut self, ctx: &Ctx, app: &AppRecord) -> anyhow::Result<bool> {
        let store = &ctx.store;
        if !self.record.dry_run && store.take_replan(&app.id, &self.record.id).await? {
            tracing::info!(app_id = %app.id, cycle_id = %self.record.id, "a cycle was asked for meanwhile: planning again");
            self.plan(ctx, app).await?;
            return Ok(false);
        }
        let now = ctx.now();
        let dry_run = self.record.dry_run;
        let trigger = self.record.trigger.clone();
        let interval = ctx.sync_interval_ms(app);
        let quarantine = if dry_run { None } else { self.tally.quarantine_reason() };
        let mut outcome = self.outcome(&app.id, now, StepResult::default());
        if !dry_run {
            for job in store.deferred_jobs(&app.id).await? {
                if self.taken.contains(&job.id) {
                    outcome.jobs.push((job.id, JobChange::Done));
                }
            }
        }
        let mut next_sync = (trigger == "schedule").then_some(now + interval);
        self.record.status = if self.record.counts.failed > 0 {
            "failed".into()
        } else {
            "success".into()
        };
        if let Some(reason) = &quarantine {
            let level = app.quarantine_level + 1;
            next_sync = Some(now + (interval.saturating_mul(1 << level.min(20))).min(DAY_MS));
            outcome.status = Some(("quarantined".into(), Some(reason.clone()), level));
            self.record.status = "quarantined".into();
            tracing::warn!(app_id = %app.id, reason, "app quarantined");
        } else if app.status == "quarantined" && trigger == "schedule" {
            next_sync = Some(now + (interval.saturating_mul(1 << app.quarantine_level.clamp(1, 20))).min(DAY_MS));
        }
        if !dry_run {
            outcome.next_sync_at = next_sync;
        }
        self.record.ended_at = Some(now);
        if self.record.progress.as_deref() != Some("stopped: the app was paused") {
            self.record.progress = None;
        }
        self.record.report = Some(json!({"changes": self.report}));
        outcome.cycle = Some(self.record.clone());
        store.record(&outcome).await?;
        // A dry run changes nothing: it is counted, not its changes.
        let counts = if dry_run {
            CycleCounts::default()
        } else {
            self.record.counts.clone()
        };
        crate::metrics::cycle_ended(
            &app.id,
            &trigger,
            &self.record.status,
            now - self.record.started_at,
            &counts,
        );
        tracing::info!(app_id = %app.id, cycle_id = %self.record.id, status = %self.record.status, counts = ?self.record.counts, "cycle ended");
        Ok(true)
    }

    /// Ends the cycle where it is (the app is being deleted).
    pub async fn abandon(&mut self, ctx: &Ctx, app: &AppRecord, why: &str) -> anyhow::Result<()> {
        self.record.status = "failed".into();
        self.record.ended_at = Some(ctx.now());
        self.record.progress = Some(why.into());
        let outcome = Outcome {
            cycle: Some(self.record.clone()),
            ..self.outcome(&app.id, ctx.now(), StepResult::default())
        };
        ctx.store.record(&outcome).await?;
        Ok(())
    }

    /// A cycle that cannot go on (the store failed) is recorded as failed and, if scheduled,
    /// tried again a little later, so a failing cycle never starves the app's immediate pushes.
    async fn break_off(&mut self, ctx: &Ctx, app: &AppRecord, error: &anyhow::Error) -> anyhow::Result<()> {
        tracing::error!(app_id = %app.id, cycle_id = %self.record.id, error = %error, "cycle broke off");
        let now = ctx.now();
        self.record.status = "failed".into();
        self.record.ended_at = Some(now);
        self.record.progress = Some(format!("broke off: {error}"));
        let next_sync_at =
            (self.record.trigger == "schedule").then(|| now + ctx.sync_interval_ms(app).min(RETRY_BROKEN_CYCLE_MS));
        let outcome = Outcome {
            cycle: Some(self.record.clone()),
            next_sync_at,
            ..self.outcome(&app.id, now, StepResult::default())
        };
        ctx.store.record(&outcome).await?;
        Ok(())
    }
}
