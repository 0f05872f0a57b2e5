//! The dispatcher of one app: the only task that pushes to it. It admits jobs through the app's
//! window (removals first), defers the activations that do not fit, runs the app's cycles and
//! sleeps until the next thing it has to do.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Millis;
use crate::scim::ScimClient;
use crate::store::{AppRecord, Job, Overflow, TargetMember};

use super::window::Window;
use super::{Ctx, job_log, push};

/// How many pending jobs one pass reads.
const BATCH: i64 = 100;
/// Re-read the store at least this often, whatever the timers say.
const IDLE_POLL_MS: Millis = 30_000;
/// Attempts of one push (each with the client's own quick retries) before it is left to the cycle.
const MAX_PUSH_ATTEMPTS: i64 = 5;
const RETRY_BASE_MS: Millis = 5_000;
const MAX_RETRY_DELAY_MS: Millis = 300_000;

struct Dispatcher {
    ctx: Arc<Ctx>,
    app_id: String,
    window: Window,
    /// A removal is waiting for the window in this pass.
    removal_waiting: bool,
    client: Option<(Vec<u8>, String, u32, Arc<ScimClient>)>,
}

pub(super) async fn run(ctx: Arc<Ctx>, app_id: String, wake: Arc<Notify>, stop: CancellationToken) {
    let now = ctx.now();
    let window = match ctx.store.get_app(&app_id).await {
        Ok(Some(app)) => {
            // A restart must not reset the window: rebuild it from the pushes just made.
            let (limit, span) = ctx.rate_limit(&app);
            let recent = ctx
                .store
                .recent_push_times(&app_id, now - span)
                .await
                .unwrap_or_default();
            Window::with_history(limit, span, recent)
        }
        _ => return,
    };
    let mut d = Dispatcher {
        ctx: ctx.clone(),
        app_id: app_id.clone(),
        window,
        removal_waiting: false,
        client: None,
    };
    match ctx.store.recover_in_flight(&app_id, now).await {
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
    tracing::info!(app_id, "dispatcher started");
    loop {
        if stop.is_cancelled() {
            break;
        }
        let next = match d.pass(&stop).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(e) => {
                tracing::error!(app_id = %d.app_id, error = %e, "dispatcher pass failed; retrying shortly");
                ctx.now() + 1_000
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = ctx.clock.sleep_until(next) => {}
        }
    }
    tracing::info!(app_id, "dispatcher stopped");
}

impl Dispatcher {
    fn client(&mut self, app: &AppRecord) -> anyhow::Result<Arc<ScimClient>> {
        let rps = app.settings.pacing.requests_per_second;
        if let Some((sealed, url, r, client)) = &self.client
            && *sealed == app.auth_sealed
            && *url == app.scim_base_url
            && *r == rps
        {
            return Ok(client.clone());
        }
        let client = Arc::new(self.ctx.client_for(app)?);
        self.client = Some((app.auth_sealed.clone(), app.scim_base_url.clone(), rps, client.clone()));
        Ok(client)
    }

    /// One look at everything the app has to do. Answers when to look again (`None`: the app is gone).
    async fn pass(&mut self, stop: &CancellationToken) -> anyhow::Result<Option<Millis>> {
        let store = self.ctx.store.clone();
        let pass_started = self.ctx.now();
        let Some(mut app) = store.get_app(&self.app_id).await? else {
            return Ok(None);
        };
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

        if let Some((cycle_id, dry_run)) = store.take_cycle_request(&app.id).await? {
            // A paused app gets no pushes, not even from a cycle asked for before the pause.
            let dry_run = dry_run || app.status == "paused";
            super::cycle::run(&self.ctx, &app, &client, &cycle_id, "manual", dry_run).await?;
            return Ok(Some(self.ctx.now()));
        }
        if self.ctx.now() >= app.next_sync_at {
            if app.status == "paused" {
                let next = self.ctx.now() + self.ctx.sync_interval_ms(&app);
                store.set_next_sync(&app.id, next).await?;
            } else {
                let cycle_id = uuid::Uuid::now_v7().to_string();
                super::cycle::run(&self.ctx, &app, &client, &cycle_id, "schedule", false).await?;
            }
            return Ok(Some(self.ctx.now()));
        }

        let mut wait_for_window: Option<Millis> = None;
        'batches: loop {
            let jobs = store.runnable_jobs(&app.id, self.ctx.now(), BATCH).await?;
            if jobs.is_empty() {
                break;
            }
            // Read the app after its jobs: a pause (or quarantine) committed before a job arrived
            // is always seen by that job.
            match store.get_app(&self.app_id).await? {
                Some(fresh) => app = fresh,
                None => return Ok(None),
            }
            for job in &jobs {
                if stop.is_cancelled() {
                    return Ok(Some(self.ctx.now()));
                }
                // A removal that waits for the window stays pending; later activations of the
                // batch are still judged now (the window is full for them too).
                if let Some(free_at) = self.take(&app, job).await? {
                    wait_for_window = Some(wait_for_window.map_or(free_at, |t: Millis| t.min(free_at)));
                }
            }
            if wait_for_window.is_some() {
                break 'batches;
            }
        }

        if app.settings.overflow == Overflow::Drain && app.status == "active" && wait_for_window.is_none() {
            wait_for_window = self.drain(&app).await?;
        }

        let now = self.ctx.now();
        let mut next = (now + IDLE_POLL_MS).min(app.next_sync_at);
        // Jobs that came due while this pass ran are due now: look from the pass's start.
        if let Some(t) = store.next_job_time(&app.id, pass_started).await? {
            next = next.min(t);
        }
        if let Some(t) = wait_for_window {
            next = next.min(t);
        }
        Ok(Some(next))
    }

    /// Deferred activations go as the window frees (`overflow: drain`), removals first.
    async fn drain(&mut self, app: &AppRecord) -> anyhow::Result<Option<Millis>> {
        for job in self.ctx.store.deferred_jobs(&app.id).await? {
            let now = self.ctx.now();
            if !self.window.has_room(now) {
                return Ok(Some(self.window.next_free_at(now)));
            }
            if let Some(free_at) = self.take(app, &job).await? {
                return Ok(Some(free_at));
            }
        }
        Ok(None)
    }

    async fn target_of(&self, app: &AppRecord, group_id: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .ctx
            .assignment(&app.id, group_id)
            .await?
            .map(|a| a.target_display_name))
    }

    async fn finish(
        &self,
        app: &AppRecord,
        job: &Job,
        state: &str,
        status: &str,
        action: &str,
        reason: String,
    ) -> anyhow::Result<()> {
        let now = self.ctx.now();
        self.ctx.store.set_job_state(&job.id, state, None, now).await?;
        let mut entry = job_log(app, job, action, status, now);
        entry.user_principal_name = self
            .ctx
            .store
            .principal(&job.principal_id)
            .await?
            .map(|p| p.user_principal_name);
        // The anomaly noted at intake (R5) stays visible whatever became of the job.
        entry.reason = Some(match job.flag.as_deref().filter(|f| *f != "outcome unknown") {
            Some(flag) => format!("{flag}; {reason}"),
            None => reason,
        });
        self.ctx.store.insert_log(&entry).await?;
        crate::metrics::push(&app.id, status);
        Ok(())
    }

    async fn defer(&self, app: &AppRecord, job: &Job, reason: &str) -> anyhow::Result<()> {
        let now = self.ctx.now();
        let until = app.next_sync_at;
        self.ctx
            .store
            .set_job_state(&job.id, "deferred", Some(until), now)
            .await?;
        let action = if job.is_removal() {
            "remove_member"
        } else {
            "add_member"
        };
        let mut entry = job_log(app, job, action, "deferred", now);
        entry.user_principal_name = self
            .ctx
            .store
            .principal(&job.principal_id)
            .await?
            .map(|p| p.user_principal_name);
        entry.reason = Some(reason.to_string());
        entry.deferred_until = Some(until);
        self.ctx.store.insert_log(&entry).await?;
        crate::metrics::deferred(&app.id);
        tracing::info!(app_id = %app.id, job_id = %job.id, event_id = ?job.event_id, deferred_until = until, reason, "push deferred to the next cycle");
        Ok(())
    }

    /// Decides one job. Answers `Some(t)` when a removal has to wait for the window until `t`.
    async fn take(&mut self, app: &AppRecord, job: &Job) -> anyhow::Result<Option<Millis>> {
        let store = self.ctx.store.clone();
        let now = self.ctx.now();
        let action = if job.is_removal() {
            "remove_member"
        } else {
            "add_member"
        };

        match app.status.as_str() {
            "paused" if !job.is_removal() => {
                if job.state != "deferred" {
                    self.defer(app, job, "app paused").await?;
                }
                return Ok(None);
            }
            // A paused app keeps its removals pending: they go the moment it is active again.
            "paused" => return Ok(Some(now + IDLE_POLL_MS)),
            "quarantined" => {
                if job.state != "deferred" {
                    self.defer(app, job, "app quarantined").await?;
                }
                return Ok(None);
            }
            _ => {}
        }

        let Some(target) = self.target_of(app, &job.group_id).await? else {
            self.finish(
                app,
                job,
                "cancelled",
                "skipped",
                action,
                "the group is no longer assigned to this app".into(),
            )
            .await?;
            return Ok(None);
        };
        let member = TargetMember {
            target_display_name: target.clone(),
            principal_id: job.principal_id.clone(),
        };
        let in_doubt = job.flag.as_deref() == Some("outcome unknown");

        if job.is_removal() {
            if let Some(via) = store.entitled_via(&app.id, &target, &job.principal_id, now).await? {
                self.finish(
                    app,
                    job,
                    "done",
                    "skipped",
                    action,
                    format!("still entitled to `{target}` through group {via}: membership kept"),
                )
                .await?;
                return Ok(None);
            }
            // A removal that finds its (earlier) activation not yet pushed cancels it.
            let open_adds = store
                .open_adds_for(&app.id, &job.principal_id, &job.group_id, job.seq)
                .await?;
            for add in &open_adds {
                if add.flag.as_deref() == Some("outcome unknown") {
                    // That add may have reached the target before a stop: remove it there too.
                    store.mark_in_doubt(&app.id, &member, now).await?;
                }
                self.finish(
                    app,
                    add,
                    "cancelled",
                    "skipped",
                    "add_member",
                    "cancelled: the membership ended before it was pushed".into(),
                )
                .await?;
            }
            if !open_adds.is_empty() && !store.is_provisioned(&app.id, &member).await? {
                self.finish(
                    app,
                    job,
                    "done",
                    "skipped",
                    action,
                    "the activation was still deferred: cancelled, nothing pushed".into(),
                )
                .await?;
                return Ok(None);
            }
            if !in_doubt && !store.is_provisioned(&app.id, &member).await? {
                self.finish(
                    app,
                    job,
                    "done",
                    "skipped",
                    action,
                    "not provisioned by the bridge: nothing to remove".into(),
                )
                .await?;
                return Ok(None);
            }
        } else {
            let on_demand = job.trigger == "on_demand";
            if !on_demand && !store.membership_active(&job.principal_id, &job.group_id, now).await? {
                self.finish(
                    app,
                    job,
                    "cancelled",
                    "skipped",
                    action,
                    "the membership is no longer active".into(),
                )
                .await?;
                return Ok(None);
            }
            if !in_doubt && store.is_confirmed(&app.id, &member).await? {
                self.finish(
                    app,
                    job,
                    "done",
                    "success",
                    action,
                    "already a member: the bridge's record matches, nothing sent".into(),
                )
                .await?;
                return Ok(None);
            }
        }
        // An earlier add of this pair has an unknown outcome: read the target before adding.
        let in_doubt = in_doubt || (!job.is_removal() && store.is_provisioned(&app.id, &member).await?);

        // On-demand provisioning is paced, not windowed, and a retry of an admitted push is not
        // a new push (SPEC: what counts against the window).
        if job.trigger == "on_demand" || job.attempt > 0 {
            self.push(app, job, &member, in_doubt).await?;
            return Ok(None);
        }
        // Once a removal waits for the window, no activation may take the room before it.
        let admitted = if !job.is_removal() && self.removal_waiting {
            Err(self.window.next_free_at(now))
        } else {
            self.window.try_admit(now)
        };
        if let Err(free_at) = admitted {
            crate::metrics::window_rejected(&app.id);
            if job.is_removal() {
                // Revocation never waits for a cycle: it stays first in line for the window.
                self.removal_waiting = true;
                return Ok(Some(free_at));
            }
            if job.state != "deferred" {
                self.defer(app, job, "rate window full: deferred to the next synchronization cycle")
                    .await?;
            }
            return Ok(None);
        }
        self.push(app, job, &member, in_doubt).await?;
        Ok(None)
    }

    async fn push(&mut self, app: &AppRecord, job: &Job, member: &TargetMember, in_doubt: bool) -> anyhow::Result<()> {
        let span =
            tracing::info_span!("push", app_id = %app.id, event_id = ?job.event_id, job_id = %job.id, kind = %job.kind);
        let result = self.push_in_span(app, job, member, in_doubt).instrument(span).await;
        if result.is_err() {
            // Whatever broke after the job went in flight, it must not stay there: put it back
            // in line, its outcome unknown.
            let _ = self.ctx.store.requeue_in_doubt(&job.id, self.ctx.now()).await;
        }
        result
    }

    async fn push_in_span(
        &mut self,
        app: &AppRecord,
        job: &Job,
        member: &TargetMember,
        in_doubt: bool,
    ) -> anyhow::Result<()> {
        let store = self.ctx.store.clone();
        let started = std::time::Instant::now();
        let client = self.client(app)?;
        store.start_job(&job.id, self.ctx.now()).await?;
        let mut steps = Vec::new();
        let result = if job.is_removal() {
            push::remove_member(
                &self.ctx,
                app,
                &client,
                &job.principal_id,
                &member.target_display_name,
                &mut steps,
            )
            .await
        } else {
            push::add_member(
                &self.ctx,
                app,
                &client,
                &job.principal_id,
                &job.group_id,
                &member.target_display_name,
                in_doubt,
                &mut steps,
            )
            .await
        };
        let now = self.ctx.now();
        let action = if job.is_removal() {
            "remove_member"
        } else {
            "add_member"
        };
        let mut job_now = job.clone();
        job_now.attempt += 1;
        let mut entry = job_log(app, &job_now, action, "success", now);
        entry.user_principal_name = store.principal(&job.principal_id).await?.map(|p| p.user_principal_name);
        entry.duration_ms = Some(started.elapsed().as_millis() as i64);
        entry.steps = steps;
        match result {
            Ok(done) => {
                if job.is_removal() {
                    store.unmark_provisioned(&app.id, member).await?;
                } else {
                    store.mark_provisioned(&app.id, member, now).await?;
                }
                store.set_job_state(&job.id, "done", None, now).await?;
                entry.target_user_id = done.target_user_id;
                entry.target_group_id = done.target_group_id;
                entry.latency_ms = Some((now - job.received_at).max(0));
                crate::metrics::push_latency(&app.id, now - job.received_at);
                entry.reason = match (&job.flag, done.note) {
                    (Some(flag), Some(note)) if flag != "outcome unknown" => Some(format!("{flag}; {note}")),
                    (Some(flag), None) if flag != "outcome unknown" => Some(flag.clone()),
                    (_, note) => note,
                };
                tracing::info!(latency_ms = entry.latency_ms, "pushed");
            }
            Err(e) => {
                if !job.is_removal() && e.outcome_unknown() {
                    // The add may be at the target: a later removal must still go out.
                    store.mark_in_doubt(&app.id, member, now).await?;
                }
                let flag = job.flag.as_deref().filter(|f| *f != "outcome unknown");
                let retry_at = (e.is_transient() && job_now.attempt < MAX_PUSH_ATTEMPTS).then(|| {
                    let backoff = RETRY_BASE_MS << (job_now.attempt - 1).clamp(0, 5);
                    now + e
                        .retry_after()
                        .map_or(backoff, |d| d.as_millis() as Millis)
                        .min(MAX_RETRY_DELAY_MS)
                });
                match retry_at {
                    Some(at) => {
                        // Throttled or unreachable: the push keeps its place (no new window
                        // slot) and goes again at `at`, long before any cycle.
                        store.retry_job_at(&job.id, at, now).await?;
                        entry.status = "deferred".into();
                        entry.deferred_until = Some(at);
                        entry.reason = Some(match flag {
                            Some(flag) => format!("{flag}; {e}; retrying"),
                            None => format!("{e}; retrying"),
                        });
                        tracing::warn!(error = %e, retry_at = at, "push failed for now; retrying");
                    }
                    None => {
                        store.set_job_state(&job.id, "failed", None, now).await?;
                        entry.status = "failure".into();
                        entry.reason = Some(match flag {
                            Some(flag) => format!("{flag}; {e}"),
                            None => e.to_string(),
                        });
                        tracing::warn!(error = %e, "push failed; the next cycle reconciles it");
                    }
                }
            }
        }
        store.insert_log(&entry).await?;
        crate::metrics::push(&app.id, &entry.status);
        Ok(())
    }
}
