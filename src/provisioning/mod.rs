//! The provisioning engine: one dispatcher task per app owns that app's window, pacing, SCIM
//! client, timers and cycle, so none of them needs a lock. Besides the dispatchers, one task
//! turns ended memberships into removals, and one purges old log entries.

mod cluster;
mod cycle;
mod dispatcher;
mod pacing;
mod push;
pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, SharedClock};
use crate::config::{Config, RateLimit, Secret};
use crate::crypto::Sealer;
use crate::scim::{Auth, ScimClient, ScimError};
use crate::store::{AppRecord, Assignment, Job, LogEntry, SharedStore, StoreResult};

pub(crate) use cluster::GRAPH as GRAPH_LEASE;
pub use push::{MappedUser, PushResult, map_user};

/// The status reason of an app being deleted with `deprovision=true`.
pub const DEPROVISIONING: &str = "deprovisioning: removing what the bridge provisioned";
/// The start of the reason of a deletion whose removal keeps failing (it is retried meanwhile).
pub const DEPROVISIONING_FAILING: &str = "deprovisioning: a removal keeps failing";

const RETRY_BASE_MS: Millis = 500;
/// The longest backoff between two attempts (SPEC §8: "capped at 5 minutes").
const MAX_BACKOFF_MS: Millis = 300_000;
/// The longest `Retry-After` obeyed; a target asking for more is tried again after this.
const MAX_RETRY_AFTER_MS: Millis = 3_600_000;

/// When a failed attempt goes again: when the target said, else after a backoff that doubles
/// (capped at five minutes), with jitter so that retries of many pushes do not go together.
pub(crate) fn retry_at(now: Millis, attempt: i64, error: &ScimError) -> Millis {
    if let Some(after) = error.retry_after() {
        return now + (after.as_millis() as Millis).min(MAX_RETRY_AFTER_MS);
    }
    now + jittered(backoff_ms(attempt))
}

/// The backoff after `attempt` failed attempts: 0.5 s, 1 s, 2 s, ... up to five minutes.
fn backoff_ms(attempt: i64) -> Millis {
    (RETRY_BASE_MS << (attempt - 1).clamp(0, 20)).min(MAX_BACKOFF_MS)
}

/// Somewhere between three quarters of `ms` and `ms`: never later than the backoff says.
fn jittered(ms: Millis) -> Millis {
    let mut byte = [0u8; 2];
    getrandom::fill(&mut byte).expect("the operating system's random source failed");
    let quarter = ms / 4;
    ms - quarter * Millis::from(u16::from_le_bytes(byte)) / Millis::from(u16::MAX)
}

/// What every part of the engine shares.
pub struct Ctx {
    pub store: SharedStore,
    /// One HTTP client (connection pool, TLS set-up) for every app's target.
    pub http: reqwest::Client,
    pub clock: SharedClock,
    pub config: Config,
    pub sealer: Sealer,
}

impl Ctx {
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// The app's credentials, decrypted.
    pub fn auth_of(&self, app: &AppRecord) -> anyhow::Result<Auth> {
        let plain = self
            .sealer
            .open(&app.id, &app.auth_sealed)
            .ok_or_else(|| anyhow::anyhow!("the app's credentials cannot be decrypted with this encryption key"))?;
        let value: Value = serde_json::from_slice(&plain)?;
        parse_auth(&value).map_err(|(field, detail)| anyhow::anyhow!("stored auth: {field} {detail}"))
    }

    /// The app's assignment of a source group, if the group is assigned to it.
    pub async fn assignment(&self, app_id: &str, group_id: &str) -> crate::store::StoreResult<Option<Assignment>> {
        Ok(self
            .store
            .list_assignments(app_id)
            .await?
            .into_iter()
            .find(|a| a.group_id == group_id))
    }

    pub fn client_for(&self, app: &AppRecord) -> anyhow::Result<ScimClient> {
        Ok(ScimClient::with_http(self.http.clone(), &app.scim_base_url, self.auth_of(app)?).for_app(&app.id))
    }

    pub fn sync_interval_ms(&self, app: &AppRecord) -> Millis {
        app.settings
            .sync_interval_seconds
            .map(|s| s as Millis * 1000)
            .unwrap_or(self.config.sync_interval_ms)
    }

    /// How long access may outlive its end at the app before the end is late: its own
    /// `accessEndSloSeconds`, else `SCIM_BRIDGE_ACCESS_END_SLO`.
    pub fn access_end_slo_ms(&self, app: &AppRecord) -> Millis {
        app.settings
            .access_end_slo_seconds
            .map(|s| (s as Millis).saturating_mul(1000))
            .unwrap_or(self.config.access_end_slo_ms)
    }

    /// The app's window: its own setting, else the configured one.
    pub fn window(&self, app: &AppRecord) -> RateLimit {
        app.settings.rate_limit.unwrap_or(self.config.rate_limit)
    }

    pub fn rate_limit(&self, app: &AppRecord) -> (u32, Millis) {
        let limit = self.window(app);
        (limit.requests, limit.window_seconds as Millis * 1000)
    }
}

/// Parses the `auth` object of an app registration. Errors name the field.
pub fn parse_auth(v: &Value) -> Result<Auth, (String, String)> {
    let text = |field: &str| -> Result<String, (String, String)> {
        v.get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .ok_or_else(|| (format!("auth.{field}"), "is required".to_string()))
    };
    match v.get("type").and_then(Value::as_str) {
        Some("bearer") => Ok(Auth::Bearer {
            token: Secret::new(text("token")?),
        }),
        Some("oauth2ClientCredentials") => {
            let token_url = text("tokenUrl")?;
            url::Url::parse(&token_url).map_err(|_| ("auth.tokenUrl".to_string(), "is not a URL".to_string()))?;
            Ok(Auth::OAuth2 {
                token_url,
                client_id: text("clientId")?,
                client_secret: Secret::new(text("clientSecret")?),
                scope: v.get("scope").and_then(Value::as_str).map(String::from),
            })
        }
        _ => Err((
            "auth.type".into(),
            "must be `bearer` or `oauth2ClientCredentials`".into(),
        )),
    }
}

/// A log entry for one job, filled with what the job knows.
pub(crate) fn job_log(app: &AppRecord, job: &Job, action: &str, status: &str, now: Millis) -> LogEntry {
    LogEntry {
        id: uuid::Uuid::now_v7().to_string(),
        time: now,
        app_id: app.id.clone(),
        app_name: app.name.clone(),
        trigger: job.trigger.clone(),
        event_id: job.event_id.clone(),
        job_id: Some(job.id.clone()),
        principal_id: Some(job.principal_id.clone()),
        group_id: Some(job.group_id.clone()),
        action: action.into(),
        status: status.into(),
        attempt: job.attempt,
        // The trace the job's work runs in: its event's, continued (SPEC §10).
        trace_id: crate::trace::current_trace_id()
            .or_else(|| crate::activation::trace_id_of(job.trace_context.as_deref())),
        ..Default::default()
    }
}

struct DispatcherHandle {
    wake: Arc<Notify>,
    stop: CancellationToken,
    /// Cancelled once the task has ended, however it ended (a panic included).
    done: CancellationToken,
    task: JoinHandle<()>,
}

impl DispatcherHandle {
    /// Running, and not told to stop.
    fn is_live(&self) -> bool {
        !self.task.is_finished() && !self.stop.is_cancelled()
    }
}

pub struct Engine {
    pub ctx: Arc<Ctx>,
    dispatchers: Mutex<HashMap<String, DispatcherHandle>>,
    /// Several replicas on one database (PostgreSQL): work goes by leases (`cluster`).
    cluster: Option<Arc<cluster::Cluster>>,
    /// The expiry and retention tasks, while this process runs the cluster's timers.
    timers: Mutex<Option<(CancellationToken, Vec<JoinHandle<()>>)>>,
    expiry_wake: Arc<ExpiryWake>,
    stop: CancellationToken,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// When the last signed webhook came in (this process; 0: none yet).
    last_webhook_at: std::sync::atomic::AtomicI64,
}

impl Engine {
    /// Starts a dispatcher for every app, the expiry task and the retention task; on a shared
    /// store, the lease look that starts them for the leases this replica takes.
    pub async fn start(ctx: Arc<Ctx>) -> anyhow::Result<Arc<Self>> {
        let cluster = ctx
            .store
            .shared()
            .then(|| Arc::new(cluster::Cluster::new(&ctx.config.replica_id, ctx.config.lease_ttl_ms)));
        let engine = Arc::new(Self {
            ctx,
            dispatchers: Mutex::new(HashMap::new()),
            cluster,
            timers: Mutex::new(None),
            expiry_wake: Arc::new(ExpiryWake::default()),
            stop: CancellationToken::new(),
            background: Mutex::new(Vec::new()),
            last_webhook_at: std::sync::atomic::AtomicI64::new(0),
        });
        if let Some(cluster) = &engine.cluster {
            tracing::info!(holder = %cluster.holder, ttl_ms = engine.ctx.config.lease_ttl_ms,
                "shared database: this replica dispatches for the apps whose leases it holds");
            engine.ctx.store.act_as(Some(&cluster.holder));
            let look = tokio::spawn(cluster::run(engine.clone_weak(), engine.stop.clone()));
            let listen = tokio::spawn(cluster::listen(engine.clone_weak(), engine.stop.clone()));
            engine.background.lock().expect("lock").extend([look, listen]);
            return Ok(engine);
        }
        for app in engine.ctx.store.list_apps().await? {
            engine.ensure_dispatcher(&app.id);
        }
        engine.start_timers(None);
        Ok(engine)
    }

    /// The expiry and retention tasks, under the `timers` lease on a shared store.
    fn start_timers(self: &Arc<Self>, fence: Option<crate::lease::Fence>) {
        let stop = self.stop.child_token();
        let expiry = expiry_loop(
            self.ctx.clone(),
            self.clone_weak(),
            self.expiry_wake.clone(),
            stop.clone(),
        );
        let retention = retention_loop(self.ctx.clone(), stop.clone());
        let tasks = match fence {
            Some(fence) => vec![
                tokio::spawn(crate::lease::scope(fence.clone(), expiry)),
                tokio::spawn(crate::lease::scope(fence, retention)),
            ],
            None => vec![tokio::spawn(expiry), tokio::spawn(retention)],
        };
        *self.timers.lock().expect("lock") = Some((stop, tasks));
    }

    /// Starts the work under a lease this replica was granted (`cluster`).
    fn start_lease_work(self: &Arc<Self>, name: &str, fence: crate::lease::Fence, takeover: bool) {
        if let Some(app_id) = name.strip_prefix("app:") {
            self.spawn_dispatcher(app_id, Some(fence), takeover);
        } else if name == cluster::TIMERS {
            self.start_timers(Some(fence));
        }
        // `graph`: the pollers ask `lease_turn` before every poll, and poll under its fence.
    }

    /// A lease was lost: its work is told to stop at once, without waiting for it (its writes
    /// are fenced). Work started again under the lease (re-taken in the same look) is not touched:
    /// it waits for the old work to end before it begins.
    fn cancel_lease_work(&self, name: &str) {
        if let Some(app_id) = name.strip_prefix("app:") {
            if let Some(h) = self.dispatchers.lock().expect("lock").get(app_id) {
                h.stop.cancel();
            }
        } else if name == cluster::TIMERS
            && let Some((stop, _)) = self.timers.lock().expect("lock").as_ref()
        {
            stop.cancel();
        }
    }

    /// Whether the app's dispatcher is running and not told to stop.
    fn dispatcher_live(&self, app_id: &str) -> bool {
        self.dispatchers
            .lock()
            .expect("lock")
            .get(app_id)
            .is_some_and(DispatcherHandle::is_live)
    }

    /// Stops the work under a lease and waits until what it was doing has finished.
    async fn stop_lease_work(&self, name: &str) {
        if let Some(app_id) = name.strip_prefix("app:") {
            self.stop_dispatcher(app_id).await;
        } else if name == cluster::TIMERS {
            let timers = self.timers.lock().expect("lock").take();
            if let Some((stop, tasks)) = timers {
                stop.cancel();
                for task in tasks {
                    let _ = task.await;
                }
            }
        }
    }

    /// Why this replica cannot work, if it cannot: another live process has its replica id.
    pub fn cluster_problem(&self) -> Option<&'static str> {
        self.cluster
            .as_ref()
            .filter(|c| c.duplicate.load(std::sync::atomic::Ordering::Relaxed))
            .map(|_| "another live process runs with this SCIM_BRIDGE_REPLICA_ID")
    }

    /// Whether this process may do the work named by the lease now: always on a store of its
    /// own; on a shared one, while it holds the lease.
    pub fn holds(&self, lease: &str) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.holds(lease))
    }

    /// Like `holds`, with the fence the work's writes carry: `Some(None)` on a store of its own
    /// (no lease), `Some(Some(fence))` while this replica holds the lease, `None` otherwise.
    pub fn lease_turn(&self, lease: &str) -> Option<Option<crate::lease::Fence>> {
        match &self.cluster {
            None => Some(None),
            Some(c) => c.fence(lease).map(Some),
        }
    }

    fn clone_weak(self: &Arc<Self>) -> std::sync::Weak<Self> {
        Arc::downgrade(self)
    }

    /// Starts the app's dispatcher if it is not running. On a shared store the replica whose
    /// turn the app's lease is starts it: every replica is told to look at the leases.
    pub fn ensure_dispatcher(&self, app_id: &str) {
        if let Some(cluster) = &self.cluster {
            cluster.nudge.notify_one();
            let store = self.ctx.store.clone();
            tokio::spawn(async move { store.notify_work("leases").await });
            return;
        }
        self.spawn_dispatcher(app_id, None, false);
    }

    fn spawn_dispatcher(&self, app_id: &str, fence: Option<crate::lease::Fence>, takeover: bool) {
        let mut map = self.dispatchers.lock().expect("lock");
        if map.get(app_id).is_some_and(DispatcherHandle::is_live) {
            return;
        }
        // One told to stop may still be finishing a push: the new one begins once it has ended.
        let previous = map.get(app_id).map(|h| h.done.clone());
        let wake = Arc::new(Notify::new());
        let stop = self.stop.child_token();
        let done = CancellationToken::new();
        // Boxed: awaited inside the block below, it would otherwise be held there twice (once
        // as the block's capture, once as the await's state), and every idle app pays for a task.
        let run = Box::pin(dispatcher::run(
            self.ctx.clone(),
            app_id.to_string(),
            wake.clone(),
            stop.clone(),
            takeover,
        ));
        let ended = done.clone().drop_guard();
        let run = async move {
            let _ended = ended;
            if let Some(previous) = previous {
                previous.cancelled().await;
            }
            run.await
        };
        let task = match fence {
            Some(fence) => tokio::spawn(crate::lease::scope(fence, run)),
            None => tokio::spawn(run),
        };
        map.insert(app_id.to_string(), DispatcherHandle { wake, stop, done, task });
    }

    /// Stops the app's dispatcher and waits until the push it is making has finished.
    pub async fn stop_dispatcher(&self, app_id: &str) {
        let handle = self.dispatchers.lock().expect("lock").remove(app_id);
        if let Some(handle) = handle {
            handle.stop.cancel();
            let _ = handle.task.await;
        }
    }

    /// Tells the app's dispatcher to look at its work again, wherever it runs. Carries no data:
    /// a lost wake-up only delays, never loses.
    pub fn wake(&self, app_id: &str) {
        if self.wake_running(app_id) {
            return;
        }
        if self.cluster.is_some() {
            let store = self.ctx.store.clone();
            let what = cluster::app_lease(app_id);
            tokio::spawn(async move { store.notify_work(&what).await });
        } else {
            self.ensure_dispatcher(app_id);
        }
    }

    /// Wakes the dispatchers of the apps the group is assigned to: the directory changed its
    /// members without queuing a job (a removal ends an entitlement the apps' cycles act on; a
    /// cycle's user steps read again after a wake).
    pub async fn wake_group(&self, group_id: &str) {
        match self.ctx.store.apps_of_group(group_id).await {
            Ok(apps) => apps.iter().for_each(|app_id| self.wake(app_id)),
            // A lost wake only delays: the apps' next cycle acts on the change.
            Err(e) => tracing::warn!(group_id, error = %e, "could not read the group's apps to wake them"),
        }
    }

    /// Like `wake`, for work whose transaction already told the other replicas.
    pub fn wake_local(&self, app_id: &str) {
        if !self.wake_running(app_id) && self.cluster.is_none() {
            self.ensure_dispatcher(app_id);
        }
    }

    fn wake_running(&self, app_id: &str) -> bool {
        let map = self.dispatchers.lock().expect("lock");
        match map.get(app_id) {
            Some(h) if !h.task.is_finished() => {
                h.wake.notify_one();
                true
            }
            _ => false,
        }
    }

    /// Every local dispatcher, the expiry timer and the lease look: notifications were lost.
    fn wake_everything(&self) {
        for h in self.dispatchers.lock().expect("lock").values() {
            h.wake.notify_one();
        }
        self.expiry_wake.read();
        if let Some(cluster) = &self.cluster {
            cluster.nudge.notify_one();
        }
    }

    /// Memberships' ends may have changed: the expiry task reads the next end again.
    pub fn wake_expiry(&self) {
        self.expiry_wake.read();
    }

    /// An active membership now ends at `end` (the intake wrote it): the expiry task's next look
    /// comes no later, without a read.
    pub fn expiry_due_by(&self, end: Millis) {
        self.expiry_wake.end_at(end);
    }

    /// A signed webhook came in.
    pub fn webhook_received(&self) {
        self.last_webhook_at
            .store(self.ctx.now(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn last_webhook_at(&self) -> Option<Millis> {
        Some(self.last_webhook_at.load(std::sync::atomic::Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Cancelled when the engine shuts down: background tasks beside the engine's own stop on it.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// A task that `shutdown` waits for.
    pub fn add_background(&self, task: JoinHandle<()>) {
        self.background.lock().expect("lock").push(task);
    }

    /// Drains: every dispatcher finishes the push it is making, then stops.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let tasks: Vec<JoinHandle<()>> = {
            let mut map = self.dispatchers.lock().expect("lock");
            map.drain().map(|(_, h)| h.task).collect()
        };
        for task in tasks {
            let _ = task.await;
        }
        let timers = self.timers.lock().expect("lock").take();
        let background: Vec<JoinHandle<()>> = self.background.lock().expect("lock").drain(..).collect();
        for task in background.into_iter().chain(timers.into_iter().flat_map(|(_, t)| t)) {
            let _ = task.await;
        }
        if let Some(cluster) = &self.cluster {
            cluster::leave(self, cluster).await;
        }
    }
}

/// What wakes the expiry task, and what it learns by it.
#[derive(Default)]
struct ExpiryWake {
    notify: Notify,
    news: Mutex<ExpiryNews>,
}

#[derive(Default, Clone, Copy)]
enum ExpiryNews {
    #[default]
    Nothing,
    /// Ends were written, the earliest at this time: the next look comes no later.
    EndAt(Millis),
    /// Ends may have changed anywhere (another replica's intake, lost notifications): read.
    Unknown,
}

impl ExpiryWake {
    fn read(&self) {
        *self.news.lock().expect("lock") = ExpiryNews::Unknown;
        self.notify.notify_one();
    }

    fn end_at(&self, end: Millis) {
        let mut news = self.news.lock().expect("lock");
        *news = match *news {
            ExpiryNews::Nothing => ExpiryNews::EndAt(end),
            ExpiryNews::EndAt(earlier) => ExpiryNews::EndAt(earlier.min(end)),
            ExpiryNews::Unknown => ExpiryNews::Unknown,
        };
        drop(news);
        self.notify.notify_one();
    }

    fn take(&self) -> ExpiryNews {
        std::mem::take(&mut *self.news.lock().expect("lock"))
    }
}

/// Turns memberships whose end has come into removal jobs, at the end time.
async fn expiry_loop(ctx: Arc<Ctx>, engine: std::sync::Weak<Engine>, wake: Arc<ExpiryWake>, stop: CancellationToken) {
    // The next end, when a wake told it (`None`: read it).
    let mut told: Option<StoreResult<Option<Millis>>> = None;
    loop {
        let now = ctx.now();
        // Most wakes (an event that set an end) find nothing due: no read when the intake told
        // the end, one read and no write otherwise.
        let mut next = match told.take() {
            Some(next) => next,
            None => ctx.store.next_expiry().await,
        };
        if !matches!(next, Ok(None)) && !matches!(next, Ok(Some(t)) if t > now) {
            match ctx.store.expire_due(now).await {
                Ok(apps) => {
                    if let Some(engine) = engine.upgrade() {
                        for app in apps {
                            engine.wake(&app);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "expiry scan failed"),
            }
            next = ctx.store.next_expiry().await;
        }
        let deadline = match next {
            Ok(Some(t)) => t.min(now + 60_000),
            _ => now + 60_000,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notify.notified() => {
                // A written end only brings the next look forward; anything else is read.
                told = match (wake.take(), next) {
                    (ExpiryNews::EndAt(end), Ok(next)) => Some(Ok(Some(next.map_or(end, |n| n.min(end))))),
                    _ => None,
                };
            }
            _ = ctx.clock.sleep_until(deadline) => {}
        }
    }
}

/// Purges what retention allows (log entries, audit entries, and the personal data in events,
/// finished jobs, ended memberships and cycles), in small batches that never hold the database
/// long. What is still needed (a live membership, an open job) is never purged.
async fn retention_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    loop {
        let started = ctx.now();
        let cutoff = started - ctx.config.log_retention_ms;
        purge_in_batches("provisioning log entries", || ctx.store.purge_logs(cutoff, PURGE_BATCH)).await;
        purge_in_batches("audit entries", || ctx.store.purge_audit(cutoff, PURGE_BATCH)).await;
        purge_in_batches(
            "events, finished jobs, ended memberships, cycles and principals",
            || ctx.store.purge_records(started, cutoff, PURGE_BATCH),
        )
        .await;
        // From the pass's start: if time moved on meanwhile, the next pass comes at once.
        let next = started + 3_600_000;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ctx.clock.sleep_until(next) => {}
        }
    }
}

const PURGE_BATCH: i64 = 500;

/// Deletes in small batches, yielding between them, so webhooks never wait behind a purge.
async fn purge_in_batches<F, Fut>(what: &str, mut purge: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::store::StoreResult<u64>>,
{
    let mut total = 0;
    loop {
        match purge().await {
            Ok(n) => {
                total += n;
                if n < PURGE_BATCH as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::error!(error = %e, what, "retention purge failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(purged = total, what, "purged entries past retention");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn refused(retry_after: Option<Duration>) -> ScimError {
        ScimError::Status {
            status: 401,
            detail: "no".into(),
            retry_after,
        }
    }

    #[test]
    fn retries_back_off_doubling_with_jitter_up_to_five_minutes() {
        let now = 1_000_000;
        for attempt in 1..=30 {
            let full = (500 << (attempt - 1).min(20)).min(300_000);
            for _ in 0..20 {
                let wait = retry_at(now, attempt, &refused(None)) - now;
                assert!(
                    wait <= full && wait >= full * 3 / 4,
                    "attempt {attempt}: {wait} of {full}"
                );
            }
        }
        let waits: std::collections::HashSet<Millis> = (0..20).map(|_| retry_at(now, 10, &refused(None))).collect();
        assert!(waits.len() > 1, "jitter spreads the retries: {waits:?}");
    }

    #[test]
    fn retry_after_is_obeyed_as_said() {
        let now = 1_000_000;
        let asked = refused(Some(Duration::from_secs(600)));
        assert_eq!(retry_at(now, 1, &asked), now + 600_000);
        assert_eq!(retry_at(now, 12, &asked), now + 600_000);
    }
}
