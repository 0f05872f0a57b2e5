//! The provisioning engine: one dispatcher task per app owns that app's window, pacing, SCIM
//! client, timers and cycle, so none of them needs a lock. Besides the dispatchers, one task
//! turns ended memberships into removals, and one purges old log entries.

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
use crate::config::{Config, Secret};
use crate::crypto::Sealer;
use crate::scim::{Auth, ScimClient, ScimError};
use crate::store::{AppRecord, Assignment, Job, LogEntry, SharedStore};

pub use push::{MappedUser, PushResult, map_user};

/// The status reason of an app being deleted with `deprovision=true`.
pub const DEPROVISIONING: &str = "deprovisioning: removing what the bridge provisioned";
/// The start of the reason of a deletion whose removals keep failing.
pub const DEPROVISIONING_STALLED: &str = "deprovisioning stalled";

const RETRY_BASE_MS: Millis = 500;
const MAX_BACKOFF_MS: Millis = 60_000;
/// The longest `Retry-After` obeyed; a target asking for more is tried again after this.
const MAX_RETRY_AFTER_MS: Millis = 3_600_000;

/// When a failed attempt goes again: when the target said, else after a backoff that doubles.
pub(crate) fn retry_at(now: Millis, attempt: i64, error: &ScimError) -> Millis {
    let backoff = (RETRY_BASE_MS << (attempt - 1).clamp(0, 16)).min(MAX_BACKOFF_MS);
    now + error
        .retry_after()
        .map_or(backoff, |d| (d.as_millis() as Millis).min(MAX_RETRY_AFTER_MS))
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
            .open(&app.auth_sealed)
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

    pub fn rate_limit(&self, app: &AppRecord) -> (u32, Millis) {
        let limit = app.settings.rate_limit.unwrap_or(self.config.rate_limit);
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
        ..Default::default()
    }
}

struct DispatcherHandle {
    wake: Arc<Notify>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub struct Engine {
    pub ctx: Arc<Ctx>,
    dispatchers: Mutex<HashMap<String, DispatcherHandle>>,
    expiry_wake: Arc<Notify>,
    stop: CancellationToken,
    background: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Starts a dispatcher for every app, the expiry task and the retention task.
    pub async fn start(ctx: Arc<Ctx>) -> anyhow::Result<Arc<Self>> {
        let engine = Arc::new(Self {
            ctx,
            dispatchers: Mutex::new(HashMap::new()),
            expiry_wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            background: Mutex::new(Vec::new()),
        });
        for app in engine.ctx.store.list_apps().await? {
            engine.ensure_dispatcher(&app.id);
        }
        let expiry = tokio::spawn(expiry_loop(
            engine.ctx.clone(),
            engine.clone_weak(),
            engine.expiry_wake.clone(),
            engine.stop.clone(),
        ));
        let retention = tokio::spawn(retention_loop(engine.ctx.clone(), engine.stop.clone()));
        engine.background.lock().expect("lock").extend([expiry, retention]);
        Ok(engine)
    }

    fn clone_weak(self: &Arc<Self>) -> std::sync::Weak<Self> {
        Arc::downgrade(self)
    }

    /// Starts the app's dispatcher if it is not running.
    pub fn ensure_dispatcher(&self, app_id: &str) {
        let mut map = self.dispatchers.lock().expect("lock");
        if map.get(app_id).is_some_and(|h| !h.task.is_finished()) {
            return;
        }
        let wake = Arc::new(Notify::new());
        let stop = self.stop.child_token();
        let task = tokio::spawn(dispatcher::run(
            self.ctx.clone(),
            app_id.to_string(),
            wake.clone(),
            stop.clone(),
        ));
        map.insert(app_id.to_string(), DispatcherHandle { wake, stop, task });
    }

    /// Stops the app's dispatcher and waits until the push it is making has finished.
    pub async fn stop_dispatcher(&self, app_id: &str) {
        let handle = self.dispatchers.lock().expect("lock").remove(app_id);
        if let Some(handle) = handle {
            handle.stop.cancel();
            let _ = handle.task.await;
        }
    }

    /// Tells the app's dispatcher to look at its work again. Carries no data: a lost wake-up
    /// only delays, never loses.
    pub fn wake(&self, app_id: &str) {
        let map = self.dispatchers.lock().expect("lock");
        match map.get(app_id) {
            Some(h) if !h.task.is_finished() => h.wake.notify_one(),
            _ => {
                drop(map);
                self.ensure_dispatcher(app_id);
            }
        }
    }

    /// A membership with an end time changed: the expiry task recomputes its timer.
    pub fn wake_expiry(&self) {
        self.expiry_wake.notify_one();
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
        let background: Vec<JoinHandle<()>> = self.background.lock().expect("lock").drain(..).collect();
        for task in background {
            let _ = task.await;
        }
    }
}

/// Turns memberships whose end has come into removal jobs, at the end time.
async fn expiry_loop(ctx: Arc<Ctx>, engine: std::sync::Weak<Engine>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let now = ctx.now();
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
        let next = match ctx.store.next_expiry().await {
            Ok(Some(t)) => t.min(now + 60_000),
            _ => now + 60_000,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = ctx.clock.sleep_until(next) => {}
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
        purge_in_batches("events, finished jobs, ended memberships and cycles", || {
            ctx.store.purge_records(cutoff, PURGE_BATCH)
        })
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
