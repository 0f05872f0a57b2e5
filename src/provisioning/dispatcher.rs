//! The dispatcher of one app: the only task that pushes to it. It takes pending jobs in arrival
//! order through the app's window (a removal goes ahead only while the window is full), defers
//! the activations that do not fit, and runs the app's cycle one step at a time, serving its
//! immediate queue between steps. It never sleeps on a target: retries are rescheduled on the
//! bridge's clock, and the loop waits only for a wake-up, a due job, a free window slot, the
//! next cycle step or the next cycle.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Millis;
use crate::mapping::AppMapping;
use crate::scim::{ScimClient, ScimResult};
use crate::store::{
    AccessEndChange, AppRecord, AppWork, Job, JobChange, LogEntry, MemberChange, OnAccessEnd, Outcome, Overflow, Step,
    TargetMember,
};

use super::cycle::Cycle;
use super::pacing::Pacer;
use super::push::PushResult;
use super::window::Window;
use super::{Ctx, DEPROVISIONING, DEPROVISIONING_FAILING, job_log, push, retry_at};

/// How many pending jobs one look reads.
const BATCH: i64 = 100;
/// Re-read the store at least this often, whatever the timers say.
const IDLE_POLL_MS: Millis = 30_000;
/// Attempts of one activation's push before it is left to the cycle (a removal has no limit).
const MAX_PUSH_ATTEMPTS: i64 = 8;
struct Dispatcher {
    ctx: Arc<Ctx>,
    app_id: String,
    window: Window,
    pacer: Option<Pacer>,
    /// A removal is waiting for the window: no activation may take the room before it.
    removal_waiting: bool,
    client: Option<(Vec<u8>, String, Arc<ScimClient>)>,
    /// The app's attribute mapping, compiled once per change of the app's settings.
    mapping: Option<(String, Arc<AppMapping>)>,
    cycle: Option<Cycle>,
    /// While the app is deleted with `deprovision=true`: attempts per member, when the next
    /// removal may go, and the credentials the last one failed with (new ones retry at once).
    removal_attempts: HashMap<TargetMember, i64>,
    removal_not_before: Millis,
    removal_failed_with: Option<Vec<u8>>,
    /// Nothing is sent before this (a takeover waits one full window).
    hold_until: Millis,
    /// A push broke off in flight and could not be put back in line: the next pass does it.
    in_flight_left: bool,
    /// What the last pass read, while nothing can have changed it (`Unchanged`).
    unchanged: Option<Box<Unchanged>>,
    /// Jobs taken so far (`take`): a pass that took one, from its queue or the deferred ones it
    /// drains, keeps no read (its outcome may have queued a retry the read does not know).
    taken: u64,
}

/// The app as a pass read it, kept for the cycle's next user step when that pass took no job. Between a
/// chunk's user steps (one per member, each checked in its own read) nothing the pass reads can
/// change unseen: a user step takes and queues no job; every change of the app, every job queued
/// and every cycle asked for wakes the dispatcher (a woken pass reads again); and the only job
/// that comes due on the clock is the first one not due at the read (`due_at`, read once, when
/// the read is first kept).
struct Unchanged {
    app: AppRecord,
    due_at: Option<Millis>,
}

impl Unchanged {
    /// Whether a pass at `now` may take this read instead of reading: it was not woken since,
    /// no job has come due, and its step is a user step.
    fn holds(&self, woken: bool, now: Millis, user_step_next: bool) -> bool {
        !woken && user_step_next && self.due_at.is_none_or(|at| now < at)
    }
}

/// Runs the app's dispatcher until `stop`. `takeover`: another replica held the app and
/// stopped renewing its lease, maybe in the middle of a push; the first push waits one full
/// window, so that at most the window's limit goes out in any window across the handover.
pub(super) async fn run(ctx: Arc<Ctx>, app_id: String, wake: Arc<Notify>, stop: CancellationToken, takeover: bool) {
    // Boxed, like each pass and the stop's write below: an idle dispatcher (most of them, most of
    // the time) keeps only the loop's small state in its task, not the largest state of a step.
    let Some(mut d) = Box::pin(start(&ctx, &app_id, &stop, takeover)).await else {
        return;
    };
    tracing::info!(app_id, "dispatcher started");
    // Whether the dispatcher was woken since its last pass (a pass not woken may keep its read).
    let mut woken = true;
    loop {
        if stop.is_cancelled() {
            break;
        }
        let next = match Box::pin(d.pass(&stop, woken)).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(e) if is_fenced(&e) => {
                tracing::warn!(app_id = %d.app_id, error = %e, "this replica lost the app's lease: its dispatcher stops");
                break;
            }
            Err(e) if is_moved(&e) => {
                tracing::error!(app_id = %d.app_id, error = %e, "the store was moved: its dispatcher stops");
                break;
            }
            Err(e) => {
                tracing::error!(app_id = %d.app_id, error = %e, "dispatcher pass failed; retrying shortly");
                ctx.now() + 1_000
            }
        };
        if next <= ctx.now() {
            // More to do at once (the next cycle step): let other tasks run, then go on.
            tokio::task::yield_now().await;
            woken = wake.notified().now_or_never().is_some();
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => woken = true,
            _ = ctx.clock.sleep_until(next) => woken = false,
        }
    }
    if let Some(cycle) = &mut d.cycle {
        // A stop (not a lost lease, whose writes are refused) writes what the cycle's user steps
        // learned since its last commit, so that the resumed cycle knows the users they created.
        if stop.is_cancelled()
            && let Err(e) = Box::pin(cycle.write_carried(&ctx)).await
        {
            tracing::warn!(app_id, error = %e, "could not write what the stopped cycle's user steps learned");
        }
        tracing::info!(app_id, cycle_id = %cycle.id(), "cycle stopped between steps; it resumes after the restart");
    }
    tracing::info!(app_id, "dispatcher stopped");
}

/// The dispatcher of `app_id`, once the app, its recent admissions and any interrupted cycle are
/// read; `None` when the app is gone or the dispatcher was stopped meanwhile.
async fn start(ctx: &Arc<Ctx>, app_id: &str, stop: &CancellationToken, takeover: bool) -> Option<Dispatcher> {
    // A store that fails now (a pool timeout while a replica takes thousands of leases) must not
    // leave the app without a dispatcher: the start is tried again, on the clock, until it works.
    let mut wait: Millis = 500;
    let app = loop {
        match ctx.store.get_app(app_id).await {
            Ok(Some(app)) => break app,
            Ok(None) => {
                tracing::info!(app_id, "the app is gone: no dispatcher");
                return None;
            }
            Err(e) => {
                tracing::error!(app_id, error = %e, retry_in_ms = wait, "starting the app's dispatcher failed: trying again");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = ctx.clock.sleep_until(ctx.now() + wait) => {}
                }
                wait = (wait * 2).min(IDLE_POLL_MS);
            }
        }
    };
    let now = ctx.now();
    // A restart must not reset the window: rebuild it from the admissions recorded before
    // sending, whether or not the push got out. A takeover also waits one full window (the
    // previous holder may have been cut off mid-push, SPEC §6); so does a start that cannot read
    // the admissions: it never starts with an empty window.
    let (limit, span) = ctx.rate_limit(&app);
    let (window, hold_until) = match ctx.store.admissions_since(app_id, now - span).await {
        Ok(admitted) => (
            Window::with_history(limit, span, admitted),
            if takeover { now + span } else { 0 },
        ),
        Err(e) => {
            tracing::error!(app_id, error = %e, "reading the app's recent admissions failed: the first push waits one full window");
            (Window::new(limit, span), now + span)
        }
    };
    let mut d = Dispatcher {
        ctx: ctx.clone(),
        app_id: app_id.to_string(),
        window,
        pacer: None,
        removal_waiting: false,
        client: None,
        mapping: None,
        cycle: None,
        removal_attempts: HashMap::new(),
        removal_not_before: 0,
        removal_failed_with: None,
        hold_until,
        in_flight_left: false,
        unchanged: None,
        taken: 0,
    };
    match ctx.store.recover_in_flight(app_id, now).await {
        Ok(ids) if !ids.is_empty() => {
            tracing::warn!(
                app_id,
                jobs = ids.len(),
                "pushes left in flight by a stop: their outcome is unknown, reading the target before sending again"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::error!(app_id, error = %e, "recovering in-flight pushes failed"),
    }
    match Box::pin(Cycle::resume(ctx, app_id)).await {
        Ok(cycle) => d.cycle = cycle,
        Err(e) => tracing::error!(app_id, error = %e, "resuming an interrupted cycle failed"),
    }
    if takeover {
        tracing::info!(
            app_id,
            hold_until,
            "took the app over: the first push waits one full window"
        );
    }
    Some(d)
}

fn is_fenced(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::store::StoreError>(),
        Some(crate::store::StoreError::Fenced(_))
    )
}

fn is_moved(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::store::StoreError>(),
        Some(crate::store::StoreError::Moved(_))
    )
}

fn earliest(a: Option<Millis>, b: Millis) -> Option<Millis> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Dispatcher {
    fn client(&mut self, app: &AppRecord) -> anyhow::Result<Arc<ScimClient>> {
        if let Some((sealed, url, client)) = &self.client
            && *sealed == app.auth_sealed
            && *url == app.scim_base_url
        {
            return Ok(client.clone());
        }
        let client = Arc::new(self.ctx.client_for(app)?);
        self.client = Some((app.auth_sealed.clone(), app.scim_base_url.clone(), client.clone()));
        Ok(client)
    }

    fn mapping(&mut self, app: &AppRecord) -> Arc<AppMapping> {
        let key = format!("{:?}{:?}", app.settings.attribute_mapping, app.settings.matching);
        if let Some((k, mapping)) = &self.mapping
            && *k == key
        {
            return mapping.clone();
        }
        // Most apps take the default: one compiled copy for all of them.
        static DEFAULT: std::sync::OnceLock<Arc<AppMapping>> = std::sync::OnceLock::new();
        let default = || {
            DEFAULT
                .get_or_init(|| Arc::new(AppMapping::compile(None, None).expect("the default mapping compiles")))
                .clone()
        };
        let mapping = if app.settings.attribute_mapping.is_none() && app.settings.matching.is_none() {
            default()
        } else {
            app.settings.compiled_mapping().map(Arc::new).unwrap_or_else(|e| {
                // Validated when saved; a mapping stored by hand that does not compile falls back.
                tracing::error!(app_id = %app.id, field = %e.field, error = %e.message, "the app's attribute mapping does not compile: using the default");
                default()
            })
        };
        self.mapping = Some((key, mapping.clone()));
        mapping
    }

    fn pacer(&mut self, app: &AppRecord) -> &mut Pacer {
        let rps = app.settings.pacing.requests_per_second;
        if self.pacer.as_ref().is_none_or(|p| p.requests_per_second() != rps) {
            self.pacer = Some(Pacer::new(rps, self.ctx.clock.clone()));
        }
        self.pacer.as_mut().expect("just set")
    }

    /// A paced piece of work took one cell before it went: each further request it sent takes
    /// one more (SPEC §1: every request to the app is paced).
    fn charge_requests(&mut self, app: &AppRecord, client: &ScimClient, sent_before: u64) {
        let extra = client.requests_sent().saturating_sub(sent_before).saturating_sub(1);
        if extra > 0 {
            self.pacer(app).charge(extra);
        }
    }

    /// One look at everything the app has to do: its immediate queue first, then one step of
    /// its cycle. Answers when to look again (`None`: the app is gone).
    async fn pass(&mut self, stop: &CancellationToken, woken: bool) -> anyhow::Result<Option<Millis>> {
        let store = self.ctx.store.clone();
        let pass_started = self.ctx.now();
        let user_step_next = self.cycle.as_ref().is_some_and(Cycle::next_step_is_user);
        let unchanged = self
            .unchanged
            .take()
            .filter(|u| u.holds(woken, pass_started, user_step_next));
        if pass_started < self.hold_until {
            return Ok(Some(self.hold_until));
        }
        if self.in_flight_left {
            // Nothing of this app is in flight between passes: what is marked so goes back in
            // line, its outcome unknown (read at the target before it is sent again).
            store.recover_in_flight(&self.app_id, pass_started).await?;
            self.in_flight_left = false;
        }
        // The app, its jobs due and whether a cycle was asked for, in one read: a pass with
        // nothing queued (most of them: each step of a cycle is one) reads no more. Before a
        // user step of a cycle, what the last pass read still holds (`Unchanged`): no read.
        // A kept read goes on with the due time read when it was first kept.
        let kept_due_at = unchanged.as_ref().map(|u| u.due_at);
        let work = match unchanged {
            Some(u) => Some(AppWork {
                app: u.app,
                jobs: Vec::new(),
                cycle_asked: false,
            }),
            None => store.app_and_work(&self.app_id, pass_started, BATCH).await?,
        };
        let Some(AppWork {
            mut app,
            mut jobs,
            cycle_asked,
        }) = work
        else {
            return Ok(None);
        };
        let taken_before = self.taken;
        let (limit, span) = self.ctx.rate_limit(&app);
        self.window.reconfigure(limit, span);
        self.removal_waiting = false;
        let client = match self.client(&app) {
            Ok(client) => client,
            Err(e) => {
                // Nothing can be pushed; the work stays queued and is retried, never lost.
                tracing::error!(app_id = %app.id, error = %e, "cannot talk to the app: its work waits");
                return Ok(Some(self.ctx.now() + IDLE_POLL_MS));
            }
        };

        let mapping = self.mapping(&app);
        if app.status == "deleting" {
            let span = tracing::info_span!(target: crate::trace::TARGET, parent: None, "deprovision", app.id = %app.id);
            return self.deprovision(&app, &mapping, &client).instrument(span).await;
        }

        let mut next: Option<Millis> = None;
        while !jobs.is_empty() {
            let mut waiting = false;
            for job in &jobs {
                if stop.is_cancelled() {
                    return Ok(Some(self.ctx.now()));
                }
                if let Some(at) = self.take(&app, &mapping, &client, job).await? {
                    next = earliest(next, at);
                    waiting = true;
                }
            }
            if waiting || (jobs.len() as i64) < BATCH {
                break;
            }
            // A full batch: the next one, with the app as it stands now.
            match store.app_and_work(&self.app_id, self.ctx.now(), BATCH).await? {
                Some(work) => (app, jobs) = (work.app, work.jobs),
                None => return Ok(None),
            }
        }

        if app.settings.overflow == Overflow::Drain
            && app.status == "active"
            && !self.removal_waiting
            && let Some(at) = self.drain(&app, &mapping, &client).await?
        {
            next = earliest(next, at);
        }

        // The cycle: start one if asked for or due, then send at most one step.
        if self.cycle.is_none() && !stop.is_cancelled() {
            self.cycle = Cycle::start_if_due(&self.ctx, &app, cycle_asked).await?;
        }
        let now = self.ctx.now();
        match self.cycle.as_ref().map(|c| (c.ready_at(), c.next_step_sends())) {
            None => next = earliest(next, app.next_sync_at),
            Some((at, _)) if at > now => next = earliest(next, at),
            Some((_, sends)) => {
                // Steps are paced; the wait is a timer like any other, never a sleep.
                let paced = if sends { self.pacer(&app).take() } else { Ok(()) };
                match paced {
                    Err(at) => next = earliest(next, at),
                    Ok(()) => {
                        let cycle = self.cycle.as_mut().expect("a cycle");
                        let sent_before = client.requests_sent();
                        let user_step = cycle.next_step_is_user();
                        let quiet = kept_due_at.is_some() && self.taken == taken_before;
                        let ended = cycle.step(&self.ctx, &app, &mapping, &client, quiet).await?;
                        self.charge_requests(&app, &client, sent_before);
                        if ended {
                            self.cycle = None;
                        } else if user_step && self.taken == taken_before {
                            // A user step changes nothing the read holds: the next user step
                            // keeps it, unless a wake or a job's time says otherwise.
                            let due_at = match kept_due_at {
                                Some(due_at) => due_at,
                                None => store.next_job_time(&app.id, pass_started).await?,
                            };
                            self.unchanged = Some(Box::new(Unchanged { app, due_at }));
                        }
                        // Serve the immediate queue before the next step.
                        return Ok(Some(self.ctx.now()));
                    }
                }
            }
        }

        let now = self.ctx.now();
        let mut next = next.unwrap_or(now + IDLE_POLL_MS).min(now + IDLE_POLL_MS);
        // Jobs that came due while this pass ran are due now: look from the pass's start.
        if let Some(t) = store.next_job_time(&app.id, pass_started).await? {
            next = next.min(t);
        }
        Ok(Some(next))
    }

    /// `DELETE ?deprovision=true`: removes every member the bridge provisioned, one at a time,
    /// paced, each with its log entry; the app is deleted once none is left. A removal that
    /// fails is retried on the clock until it succeeds (SPEC §8: backoff doubling up to five
    /// minutes, `Retry-After` obeyed, 401 and 403 included); meanwhile the app's reason says
    /// which and why. Asking again (`DELETE` with deprovision=true) or new credentials retry it
    /// at once.
    async fn deprovision(
        &mut self,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
    ) -> anyhow::Result<Option<Millis>> {
        let store = self.ctx.store.clone();
        let now = self.ctx.now();
        if let Some(mut cycle) = self.cycle.take() {
            cycle
                .abandon(&self.ctx, app, "stopped: the app is being deleted")
                .await?;
        }
        if self.removal_not_before > now {
            // Asking again puts the plain reason back; a failure wrote its own.
            let asked_again = app.status_reason.as_deref() == Some(DEPROVISIONING);
            let new_credentials = self
                .removal_failed_with
                .as_ref()
                .is_some_and(|sealed| *sealed != app.auth_sealed);
            if !asked_again && !new_credentials {
                return Ok(Some(self.removal_not_before));
            }
            self.removal_not_before = 0;
        }
        let provisioned = store.provisioned_members(&app.id).await?;
        // The member's last membership at the app: once it is removed, the account follows
        // (`onAccessEnd`: deprovisioning applies it to each user).
        let last_of_user =
            |m: &TargetMember| provisioned.iter().filter(|p| p.principal_id == m.principal_id).count() == 1;
        let Some(member) = provisioned.first().cloned() else {
            store.delete_app(&app.id, now).await?;
            tracing::info!(app_id = %app.id, "every member the bridge provisioned is removed: app deleted");
            return Ok(None);
        };
        if let Err(at) = self.pacer(app).take() {
            return Ok(Some(at));
        }
        let attempt = self.removal_attempts.get(&member).copied().unwrap_or(0) + 1;
        let started = std::time::Instant::now();
        let mut steps = Vec::new();
        let sent_before = client.requests_sent();
        let mut ended = None;
        let result = match push::remove_member(
            &self.ctx,
            app,
            mapping,
            client,
            &member.principal_id,
            &member.target_display_name,
            &mut steps,
        )
        .await
        {
            Ok(done) if app.settings.on_access_end() != OnAccessEnd::RemoveMember && last_of_user(&member) => {
                match push::end_account(&self.ctx, app, client, &member.principal_id, &mut steps).await {
                    Ok(end) => {
                        ended = end.action();
                        Ok(done)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        self.charge_requests(app, client, sent_before);
        let now = self.ctx.now();
        let mut entry = LogEntry {
            id: uuid::Uuid::now_v7().to_string(),
            time: now,
            app_id: app.id.clone(),
            app_name: app.name.clone(),
            trigger: "deprovision".into(),
            principal_id: Some(member.principal_id.clone()),
            user_principal_name: self.upn(&member.principal_id).await?,
            action: "remove_member".into(),
            status: "success".into(),
            attempt,
            duration_ms: Some(started.elapsed().as_millis() as i64),
            steps,
            reason: Some("the app is being deleted with deprovision=true".into()),
            trace_id: crate::trace::current_trace_id(),
            ..Default::default()
        };
        let mut outcome = Outcome {
            app_id: app.id.clone(),
            time: now,
            ..Default::default()
        };
        let mut next = now;
        match result {
            Ok(done) => {
                self.removal_attempts.remove(&member);
                self.removal_failed_with = None;
                outcome.members.push((member.clone(), MemberChange::Gone));
                if !app.settings.provisions_groups()
                    && let Some(action) = ended
                {
                    entry.action = action.into();
                    outcome.end_action = Some(action);
                }
                outcome.legacy_remove = done.legacy_detected;
                entry.target_user_id = done.target_user_id;
                entry.target_group_id = done.target_group_id;
                if app.status_reason.as_deref() != Some(DEPROVISIONING) {
                    outcome.status = Some(("deleting".into(), Some(DEPROVISIONING.into()), app.quarantine_level));
                }
            }
            Err(e) => {
                // Never given up (SPEC §8): retried on the clock, whatever the answer.
                self.removal_attempts.insert(member.clone(), attempt);
                self.removal_failed_with = Some(app.auth_sealed.clone());
                next = retry_at(now, attempt, &e);
                self.removal_not_before = next;
                let reason = format!(
                    "{DEPROVISIONING_FAILING}: removing {} from `{}` failed {attempt} time(s), last: {e}. It is \
                     retried until it succeeds; DELETE again with deprovision=true to retry now, or without it to \
                     leave the target as it is",
                    entry.user_principal_name.as_deref().unwrap_or(&member.principal_id),
                    member.target_display_name
                );
                tracing::warn!(app_id = %app.id, reason, retry_at = next, "a deprovisioning removal failed; retrying");
                outcome.status = Some(("deleting".into(), Some(reason), app.quarantine_level));
                entry.status = "deferred".into();
                entry.deferred_until = Some(next);
                entry.reason = Some(format!("{e}; retrying"));
            }
        }
        outcome.logs.push(entry);
        store.record(&outcome).await?;
        Ok(Some(next))
    }

    /// Deferred activations go as the window frees (`overflow: drain`), behind immediate work.
    async fn drain(
        &mut self,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
    ) -> anyhow::Result<Option<Millis>> {
        for job in self.ctx.store.deferred_jobs(&app.id).await? {
            let now = self.ctx.now();
            if !self.window.has_room(now) {
                return Ok(Some(self.window.next_free_at(now)));
            }
            if let Some(at) = self.take(app, mapping, client, &job).await? {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    async fn upn(&self, principal_id: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .ctx
            .store
            .principal(principal_id)
            .await?
            .map(|p| p.user_principal_name))
    }

    /// A log entry for the job, with the anomaly noted at intake (R5) kept visible.
    async fn entry(
        &self,
        app: &AppRecord,
        job: &Job,
        status: &str,
        reason: Option<String>,
    ) -> anyhow::Result<LogEntry> {
        let mut entry = job_log(app, job, action_of(job), status, self.ctx.now());
        entry.user_principal_name = self.upn(&job.principal_id).await?;
        let flag = job.flag.as_deref().filter(|f| *f != "outcome unknown");
        entry.reason = match (flag, reason) {
            (Some(flag), Some(reason)) => Some(format!("{flag}; {reason}")),
            (Some(flag), None) => Some(flag.to_string()),
            (None, reason) => reason,
        };
        Ok(entry)
    }

    /// Ends a job without pushing, with its log entry, in one commit.
    async fn finish(
        &self,
        app: &AppRecord,
        job: &Job,
        change: JobChange,
        status: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.finish_with(app, job, change, status, reason, Vec::new()).await
    }

    /// Ends a removal that sends nothing, settling the access ends it was for as `end`
    /// (`kept`: something else still entitles the user; `notProvisioned`: nothing had reached
    /// the target), with its log entry, in one commit.
    async fn finish_removal(&self, app: &AppRecord, job: &Job, end: &'static str, reason: &str) -> anyhow::Result<()> {
        let settled = vec![access_end_change(job, end)];
        self.finish_with(app, job, JobChange::Done, "skipped", reason, settled)
            .await
    }

    async fn finish_with(
        &self,
        app: &AppRecord,
        job: &Job,
        change: JobChange,
        status: &str,
        reason: &str,
        access_ends: Vec<AccessEndChange>,
    ) -> anyhow::Result<()> {
        let entry = self.entry(app, job, status, Some(reason.to_string())).await?;
        self.ctx
            .store
            .record(&Outcome {
                app_id: app.id.clone(),
                time: self.ctx.now(),
                jobs: vec![(job.id.clone(), change)],
                logs: vec![entry],
                access_ends,
                ..Default::default()
            })
            .await?;
        crate::metrics::push(&app.id, status);
        Ok(())
    }

    async fn defer(&self, app: &AppRecord, job: &Job, reason: &str) -> anyhow::Result<()> {
        let until = app.next_sync_at;
        let mut entry = self.entry(app, job, "deferred", Some(reason.to_string())).await?;
        entry.deferred_until = Some(until);
        let mut outcome = Outcome {
            app_id: app.id.clone(),
            time: self.ctx.now(),
            jobs: vec![(job.id.clone(), JobChange::Deferred { until })],
            logs: vec![entry],
            ..Default::default()
        };
        // An add a stop left with an unknown outcome may be at the target: the cycle that takes
        // it over reads the group before adding (some servers keep a member twice).
        if !job.is_removal()
            && job.flag.as_deref() == Some("outcome unknown")
            && let Some(assignment) = self.ctx.assignment(&app.id, &job.group_id).await?
        {
            let member = TargetMember {
                target_display_name: assignment.target_display_name,
                principal_id: job.principal_id.clone(),
            };
            outcome.members.push((member.clone(), MemberChange::InDoubt));
            outcome.sources.push((member, job.group_id.clone()));
        }
        self.ctx.store.record(&outcome).await?;
        crate::metrics::deferred(&app.id);
        tracing::info!(app_id = %app.id, job_id = %job.id, event_id = ?job.event_id, deferred_until = until, reason, "push deferred to the next cycle");
        Ok(())
    }

    /// Decides one job, in its admission span: a span of the trace the job's event began (its
    /// stored context), whichever replica takes it, or of a trace of its own (SPEC §10).
    async fn take(
        &mut self,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        job: &Job,
    ) -> anyhow::Result<Option<Millis>> {
        self.taken += 1;
        let span = tracing::info_span!(target: crate::trace::TARGET, parent: None, "admission",
            app.id = %app.id, job.id = %job.id, event.id = tracing::field::Empty);
        if let Some(event_id) = &job.event_id {
            span.record("event.id", event_id.as_str());
        }
        crate::trace::continue_trace(&span, job.trace_context.as_deref());
        self.admit(app, mapping, client, job).instrument(span).await
    }

    /// Decides one job. Answers `Some(t)` when the app must be looked at again at `t`: a removal
    /// waits for the window until then, or the push is to be retried then.
    async fn admit(
        &mut self,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        job: &Job,
    ) -> anyhow::Result<Option<Millis>> {
        let store = self.ctx.store.clone();
        let now = self.ctx.now();

        match app.status.as_str() {
            "paused" if !job.is_removal() => {
                if job.state != "deferred" {
                    self.defer(app, job, "app paused").await?;
                }
                return Ok(None);
            }
            // A paused app keeps its removals pending: they go the moment it is active again.
            "paused" => return Ok(Some(now + IDLE_POLL_MS)),
            // A quarantine defers activations only: a removal goes as on an active app, and is
            // retried until it succeeds (SPEC §5, §8).
            "quarantined" if !job.is_removal() => {
                if job.state != "deferred" {
                    self.defer(app, job, "app quarantined").await?;
                }
                return Ok(None);
            }
            _ => {}
        }
        if let Some(target) = &job.target_display_name {
            return self.take_handed_on_removal(app, mapping, client, job, target).await;
        }

        let groups = app.settings.provisions_groups();
        // An add reads its target group with its checks (the membership, and what the bridge
        // knows of the member there), in one read.
        let (target, checks) = if job.is_removal() {
            // Without groups the account is the entitlement: one membership per user, at "".
            let assigned = self.ctx.assignment(&app.id, &job.group_id).await?;
            (
                assigned.map(|a| if groups { a.target_display_name } else { String::new() }),
                None,
            )
        } else {
            let checks = store
                .add_checks(&app.id, &job.principal_id, &job.group_id, groups, now)
                .await?;
            (checks.as_ref().map(|c| c.target.clone()), checks)
        };
        let Some(target) = target else {
            let reason = "the group is no longer assigned to this app";
            self.finish(app, job, JobChange::Cancelled, "skipped", reason).await?;
            return Ok(None);
        };
        let member = TargetMember {
            target_display_name: target.clone(),
            principal_id: job.principal_id.clone(),
        };
        let in_doubt = job.flag.as_deref() == Some("outcome unknown");

        // What a removal removes: the member where this group's assignment puts it now, and
        // where it was provisioned under an earlier `targetDisplayName` (a rename the cycle has
        // not moved yet): a removal is made where the member is.
        let mut removals = Vec::new();
        if job.is_removal() {
            let moved = if groups {
                self.moved_members(app, job, &target, now).await?
            } else {
                Vec::new()
            };
            let still = if groups {
                store.entitled_via(&app.id, &target, &job.principal_id, now).await?
            } else {
                store
                    .entitled_at_app(&app.id, &job.principal_id, now)
                    .await?
                    .then(|| "another group assigned to the app".to_string())
            };
            if let Some(via) = still {
                if moved.is_empty() {
                    let reason = format!("still entitled to `{target}` through group {via}: membership kept");
                    self.finish_removal(app, job, "kept", &reason).await?;
                    return Ok(None);
                }
                removals = moved;
            } else {
                // A removal that finds its (earlier) activation not yet pushed cancels it.
                let open_adds = store
                    .open_adds_for(&app.id, &job.principal_id, &job.group_id, job.seq)
                    .await?;
                if !open_adds.is_empty() {
                    let mut cancel = Outcome {
                        app_id: app.id.clone(),
                        time: now,
                        ..Default::default()
                    };
                    for add in &open_adds {
                        if add.flag.as_deref() == Some("outcome unknown") {
                            // That add may have reached the target before a stop: remove it there too.
                            cancel.members.push((member.clone(), MemberChange::InDoubt));
                        }
                        cancel.jobs.push((add.id.clone(), JobChange::Cancelled));
                        let reason = "cancelled: the membership ended before it was pushed".to_string();
                        cancel.logs.push(self.entry(app, add, "skipped", Some(reason)).await?);
                    }
                    store.record(&cancel).await?;
                    if !store.is_provisioned(&app.id, &member).await? && moved.is_empty() {
                        let reason = "the activation was still deferred: cancelled, nothing pushed";
                        self.finish_removal(app, job, "notProvisioned", reason).await?;
                        return Ok(None);
                    }
                }
                if in_doubt || store.is_provisioned(&app.id, &member).await? {
                    removals.push(member.clone());
                }
                removals.extend(moved);
                // Nothing left in a group, but the account is still to be ended (its disable or
                // deletion failed before, or the app has no groups): the push goes on for it.
                let account_left = removals.is_empty()
                    && push::account_to_end(&self.ctx, app, &job.principal_id).await?
                    && !store.entitled_at_app(&app.id, &job.principal_id, now).await?;
                if removals.is_empty() && !account_left {
                    let reason = "not provisioned by the bridge: nothing to remove";
                    self.finish_removal(app, job, "notProvisioned", reason).await?;
                    return Ok(None);
                }
            }
        }
        let mut provisioned = false;
        if let Some(checks) = checks {
            if job.trigger != "on_demand" && !checks.active {
                let reason = "the membership is no longer active";
                self.finish(app, job, JobChange::Cancelled, "skipped", reason).await?;
                return Ok(None);
            }
            if !in_doubt && checks.confirmed {
                let reason = "already a member: the bridge's record matches, nothing sent";
                self.finish(app, job, JobChange::Done, "success", reason).await?;
                return Ok(None);
            }
            provisioned = checks.provisioned;
        }
        // An earlier add of this pair has an unknown outcome: read the target before adding.
        let in_doubt = in_doubt || provisioned;
        let members = if job.is_removal() { removals } else { vec![member] };

        // On-demand provisioning is not windowed, and a retry of an admitted push is not a new
        // push (SPEC: what counts against the window). A push whose outcome a crash or a
        // takeover left unknown may not have gone out at all: sent again, it takes a free slot
        // if there is one (so that the window holds at the target across a handover), and goes
        // without one otherwise (it is settled by reading the target first).
        if job.trigger == "on_demand" || job.attempt > 0 {
            // On-demand work is paced like a cycle's: it waits for a request slot, on the clock.
            if job.trigger == "on_demand"
                && job.attempt == 0
                && let Err(at) = self.pacer(app).take()
            {
                return Ok(Some(at));
            }
            let unknown = job.attempt > 0 && job.flag.as_deref() == Some("outcome unknown");
            let admitted = unknown && self.window.try_admit(now).is_ok();
            return self.push(app, mapping, client, job, &members, in_doubt, admitted).await;
        }
        // Arrival order while the window has room; once it is full, a removal waits for the
        // next free slot and no later activation may take it.
        let admitted = if !job.is_removal() && self.removal_waiting {
            Err(self.window.next_free_at(now))
        } else {
            self.window.try_admit(now)
        };
        if let Err(free_at) = admitted {
            crate::metrics::window_rejected(&app.id);
            if job.is_removal() {
                // Revocation never waits for a cycle: it is first in line for the window.
                self.removal_waiting = true;
                return Ok(Some(free_at));
            }
            if job.state != "deferred" {
                self.defer(app, job, "rate window full: deferred to the next synchronization cycle")
                    .await?;
            }
            return Ok(None);
        }
        self.push(app, mapping, client, job, &members, in_doubt, true).await
    }

    /// A removal a cycle step could not make, retried on the clock until it succeeds or the
    /// member is entitled again (SPEC §8): made in the target group it names, whatever the
    /// assignments say now. A cycle's work: paced, never windowed.
    async fn take_handed_on_removal(
        &mut self,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        job: &Job,
        target: &str,
    ) -> anyhow::Result<Option<Millis>> {
        let store = self.ctx.store.clone();
        let member = TargetMember {
            target_display_name: target.to_string(),
            principal_id: job.principal_id.clone(),
        };
        if let Some(via) = store
            .entitled_via(&app.id, target, &job.principal_id, self.ctx.now())
            .await?
        {
            let reason = format!("entitled to `{target}` again through group {via}: membership kept");
            self.finish_removal(app, job, "kept", &reason).await?;
            return Ok(None);
        }
        if !store.is_provisioned(&app.id, &member).await? {
            let reason = "no longer provisioned by the bridge: nothing to remove";
            self.finish_removal(app, job, "notProvisioned", reason).await?;
            return Ok(None);
        }
        if let Err(at) = self.pacer(app).take() {
            return Ok(Some(at));
        }
        self.push(app, mapping, client, job, &[member], false, false).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn push(
        &mut self,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        job: &Job,
        members: &[TargetMember],
        in_doubt: bool,
        admitted: bool,
    ) -> anyhow::Result<Option<Millis>> {
        let span =
            tracing::info_span!("push", app_id = %app.id, event_id = ?job.event_id, job_id = %job.id, kind = %job.kind);
        let traced = tracing::info_span!(target: crate::trace::TARGET, "push", app.id = %app.id, job.id = %job.id);
        let result = self
            .push_in_span(app, mapping, client, job, members, in_doubt, admitted)
            .instrument(span)
            .instrument(traced)
            .await;
        if result.is_err() {
            // Whatever broke after the job went in flight, it must not stay there: put it back
            // in line, its outcome unknown. If the store fails that too, the next pass does it.
            if let Err(e) = self.ctx.store.requeue_in_doubt(&job.id, self.ctx.now()).await {
                tracing::error!(app_id = %app.id, job_id = %job.id, error = %e,
                    "putting a push whose record failed back in line failed too: the next pass does it");
                self.in_flight_left = true;
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_in_span(
        &mut self,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        job: &Job,
        members: &[TargetMember],
        in_doubt: bool,
        admitted: bool,
    ) -> anyhow::Result<Option<Millis>> {
        let store = self.ctx.store.clone();
        let started = std::time::Instant::now();
        // The claim (and the admission time the window is rebuilt from) is committed before
        // anything is sent.
        // What the push reads before it sends comes back with the claim.
        let target = members.first().map_or("", |m| m.target_display_name.as_str());
        let Some(claim) = store.claim_job(&job.id, self.ctx.now(), admitted, target).await? else {
            return Ok(None);
        };
        let mut steps = Vec::new();
        let mut outcome = Outcome {
            app_id: app.id.clone(),
            ..Default::default()
        };
        let mut done = PushResult::default();
        let mut account_end = None;
        let result = if job.is_removal() {
            let removed = self
                .remove_everywhere(app, mapping, client, job, members, &mut steps, &mut outcome)
                .await
                .map(|removed| done = removed);
            match removed {
                // Once nothing entitles the user at the app (judged now, before the request),
                // the account follows (`onAccessEnd`): part of this push, its own request.
                Ok(())
                    if app.settings.on_access_end() != OnAccessEnd::RemoveMember
                        && !store
                            .entitled_at_app(&app.id, &job.principal_id, self.ctx.now())
                            .await? =>
                {
                    push::end_account(&self.ctx, app, client, &job.principal_id, &mut steps)
                        .await
                        .map(|ended| account_end = Some(ended))
                }
                other => other,
            }
        } else {
            push::add_member(
                &self.ctx,
                app,
                mapping,
                client,
                &job.principal_id,
                &job.group_id,
                &members[0].target_display_name,
                in_doubt,
                Some(claim),
                &mut steps,
                &mut done,
            )
            .await
        };
        // The user and the group the push found or created are recorded with its outcome, in
        // one commit, whatever became of the push.
        outcome
            .users
            .extend(done.user_record.take().map(|u| (job.principal_id.clone(), u)));
        outcome.groups.extend(done.group_record.take());
        let now = self.ctx.now();
        let mut attempted = job.clone();
        attempted.attempt += 1;
        let mut entry = self.entry(app, &attempted, "success", None).await?;
        entry.duration_ms = Some(started.elapsed().as_millis() as i64);
        if let Some(ended) = &account_end {
            let groups = app.settings.provisions_groups();
            match ended.action() {
                // Without groups the account's end is the request that ended access.
                Some(action) if !groups => {
                    entry.action = action.into();
                    outcome.end_action = Some(action);
                }
                Some(_) => {}
                None if !groups => {
                    if let push::AccountEnd::Left(reason) = ended {
                        entry.status = "skipped".into();
                        entry.reason = Some(reason.clone());
                    }
                    // Nothing the bridge sent gave this access: there was nothing to end.
                    outcome.access_ends.push(access_end_change(job, "notProvisioned"));
                }
                None => {}
            }
        }
        entry.steps = steps;
        outcome.time = now;
        match result {
            Ok(()) => {
                if !job.is_removal() {
                    outcome.members.push((members[0].clone(), MemberChange::Confirmed));
                    outcome.sources.push((members[0].clone(), job.group_id.clone()));
                }
                outcome.jobs.push((job.id.clone(), JobChange::Done));
                outcome.legacy_remove = done.legacy_detected;
                entry.target_user_id = done.target_user_id;
                entry.target_group_id = done.target_group_id;
                entry.latency_ms = Some((now - job.received_at).max(0));
                crate::metrics::push_latency(&app.id, now - job.received_at);
                let flag = job.flag.as_deref().filter(|f| *f != "outcome unknown");
                let done_note = match (&account_end, done.note) {
                    (Some(push::AccountEnd::Disabled), note) if app.settings.provisions_groups() => {
                        Some(note.map_or(String::new(), |n| format!("{n}; ")) + "account disabled (onAccessEnd)")
                    }
                    (Some(push::AccountEnd::Deleted), note) if app.settings.provisions_groups() => {
                        Some(note.map_or(String::new(), |n| format!("{n}; ")) + "account deleted (onAccessEnd)")
                    }
                    (Some(push::AccountEnd::Left(reason)), note) => {
                        Some(note.map_or(String::new(), |n| format!("{n}; ")) + &format!("account left: {reason}"))
                    }
                    (_, note) => note,
                };
                entry.reason = match (flag, done_note) {
                    (Some(flag), Some(note)) => Some(format!("{flag}; {note}")),
                    (Some(flag), None) => Some(flag.to_string()),
                    (None, note) => note,
                };
                tracing::info!(latency_ms = entry.latency_ms, "pushed");
            }
            Err(e) => {
                if !job.is_removal() && e.outcome_unknown() {
                    // The add may be at the target: a later removal must still go out, and a
                    // later add reads the group first.
                    outcome.members.push((members[0].clone(), MemberChange::InDoubt));
                    outcome.sources.push((members[0].clone(), job.group_id.clone()));
                }
                let with_flag = |text: String| match job.flag.as_deref().filter(|f| *f != "outcome unknown") {
                    Some(flag) => format!("{flag}; {text}"),
                    None => text,
                };
                if job.is_removal() || (e.is_transient() && attempted.attempt < MAX_PUSH_ATTEMPTS) {
                    // Throttled or unreachable: the push keeps its place (no new window slot)
                    // and goes again at `at`, long before any cycle. Nothing sleeps meanwhile.
                    // A removal is retried so whatever the answer (401 and 403 included), until
                    // it succeeds or the member is entitled again: never left to the cycle.
                    let at = retry_at(now, attempted.attempt, &e);
                    outcome.jobs.push((job.id.clone(), JobChange::Retry { at }));
                    if job.is_removal() {
                        // Not final: the excess keeps growing until a later attempt confirms.
                        outcome.access_ends.push(access_end_change(job, "failed"));
                    }
                    entry.status = "deferred".into();
                    entry.deferred_until = Some(at);
                    entry.reason = Some(with_flag(format!("{e}; retrying")));
                    tracing::warn!(error = %e, retry_at = at, "push failed for now; retrying");
                } else {
                    outcome.jobs.push((job.id.clone(), JobChange::Failed));
                    entry.status = "failure".into();
                    entry.reason = Some(with_flag(e.to_string()));
                    tracing::warn!(error = %e, "push failed; the next cycle reconciles it");
                }
            }
        }
        let status = entry.status.clone();
        let retry = entry.deferred_until;
        outcome.logs.push(entry);
        // Membership record, job state and log entry: one commit.
        store.record(&outcome).await?;
        crate::metrics::push(&app.id, &status);
        Ok(retry)
    }
}

impl Dispatcher {
    /// Where the job's principal was provisioned for the job's group under another target group
    /// than `target` (the assignment was renamed since) and nothing entitles it there now.
    async fn moved_members(
        &self,
        app: &AppRecord,
        job: &Job,
        target: &str,
        now: Millis,
    ) -> anyhow::Result<Vec<TargetMember>> {
        let store = &self.ctx.store;
        let mut moved = Vec::new();
        for name in store
            .provisioned_targets_of(&app.id, &job.principal_id, &job.group_id)
            .await?
        {
            if name == target
                || store
                    .entitled_via(&app.id, &name, &job.principal_id, now)
                    .await?
                    .is_some()
            {
                continue;
            }
            moved.push(TargetMember {
                target_display_name: name,
                principal_id: job.principal_id.clone(),
            });
        }
        Ok(moved)
    }

    /// Removes the principal from each target group in turn; each removal done goes into
    /// `outcome`. The first that fails ends the attempt (the rest go at the retry).
    #[allow(clippy::too_many_arguments)]
    async fn remove_everywhere(
        &self,
        app: &AppRecord,
        mapping: &AppMapping,
        client: &ScimClient,
        job: &Job,
        members: &[TargetMember],
        steps: &mut Vec<Step>,
        outcome: &mut Outcome,
    ) -> ScimResult<PushResult> {
        let mut done = PushResult::default();
        for member in members {
            let removed = push::remove_member(
                &self.ctx,
                app,
                mapping,
                client,
                &job.principal_id,
                &member.target_display_name,
                steps,
            )
            .await?;
            outcome.members.push((member.clone(), MemberChange::Gone));
            outcome.legacy_remove |= removed.legacy_detected;
            done.target_user_id = removed.target_user_id.or(done.target_user_id);
            done.target_group_id = done.target_group_id.or(removed.target_group_id);
            done.note = done.note.or(removed.note);
            done.legacy_detected |= removed.legacy_detected;
        }
        Ok(done)
    }
}

/// What an outcome settles of the access ends a removal job was for.
fn access_end_change(job: &Job, status: &'static str) -> AccessEndChange {
    AccessEndChange {
        principal_id: job.principal_id.clone(),
        group_id: job.group_id.clone(),
        status,
    }
}

fn action_of(job: &Job) -> &'static str {
    if job.is_removal() {
        "remove_member"
    } else {
        "add_member"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(due_at: Option<Millis>) -> Unchanged {
        let app = AppRecord::new(
            "app",
            "App",
            "http://target.test/scim/v2",
            ("bearer".into(), Vec::new()),
            Default::default(),
            0,
            0,
        );
        Unchanged { app, due_at }
    }

    #[test]
    fn a_kept_read_serves_only_an_unwoken_user_step_before_the_next_job_is_due() {
        // No job waiting on the clock: any later user step not woken keeps the read.
        assert!(kept(None).holds(false, 1_000, true));
        // A wake (a job queued, the app changed, a cycle asked for) reads again.
        assert!(!kept(None).holds(true, 1_000, true));
        // Any other step may take or queue jobs: it reads.
        assert!(!kept(None).holds(false, 1_000, false));
        // A job due on the clock: kept before its time, read again from it on.
        assert!(kept(Some(2_000)).holds(false, 1_999, true));
        assert!(!kept(Some(2_000)).holds(false, 2_000, true));
        assert!(!kept(Some(2_000)).holds(false, 5_000, true));
    }
}
