//! The fence a task carries while it works under a cluster lease (PostgreSQL, several replicas).
//!
//! Work that must run once in the cluster (an app's dispatcher, the timers) runs inside
//! [`scope`] with the lease's [`Fence`]. Two checks then hold without the work passing anything
//! around:
//! - every write the store makes for the task checks, in the same transaction, that the lease
//!   row still carries this holder and token (a replica that lost the lease records nothing);
//! - every SCIM request checks first that the lease is still valid by this process's monotonic
//!   clock (a replica paused past its lease, by a debugger, a GC or SIGSTOP, sends nothing on
//!   waking, before the database has told it anything).
//!
//! Outside a scope (the SQLite store, API handlers) there is no fence and both checks pass.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

tokio::task_local! {
    static FENCE: Fence;
}

/// One held lease: its name, its holder and the token it was granted with.
#[derive(Clone, Debug)]
pub struct Fence {
    pub name: String,
    pub holder: String,
    pub token: i64,
    /// Nanoseconds after `base` until which the holder may act without renewing.
    valid_until: Arc<AtomicU64>,
    base: Instant,
}

impl Fence {
    /// A lease granted (or last renewed) at `renewed`, valid for `ttl` from then.
    pub fn new(name: &str, holder: &str, token: i64, renewed: Instant, ttl: Duration) -> Self {
        let fence = Self {
            name: name.to_string(),
            holder: holder.to_string(),
            token,
            valid_until: Arc::new(AtomicU64::new(0)),
            base: renewed,
        };
        fence.renewed(renewed, ttl);
        fence
    }

    /// The database renewed the lease in a request sent at `sent`: valid for `ttl` from then
    /// (from the send, not the answer, so a slow answer never stretches it).
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        let until = sent.saturating_duration_since(self.base) + ttl;
        self.valid_until.fetch_max(until.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The lease is gone (not renewed, or released): act no more.
    pub fn revoke(&self) {
        self.valid_until.store(0, Ordering::Relaxed);
    }

    pub fn is_valid(&self) -> bool {
        let now = Instant::now().saturating_duration_since(self.base).as_nanos() as u64;
        now < self.valid_until.load(Ordering::Relaxed)
    }
}

/// Runs `work` under the lease: the store's writes and the SCIM requests it makes are fenced.
pub async fn scope<F: Future>(fence: Fence, work: F) -> F::Output {
    FENCE.scope(fence, work).await
}

/// The fence of the running task, if it works under a lease.
pub fn current() -> Option<Fence> {
    FENCE.try_with(Clone::clone).ok()
}

/// Whether the running task may act on a target now: it works under no lease, or its lease is
/// still valid by this process's clock.
pub fn may_act() -> bool {
    FENCE.try_with(Fence::is_valid).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_outside_a_scope_may_act_and_one_whose_lease_ran_out_may_not() {
        assert!(may_act());
        assert!(current().is_none());
        let fence = Fence::new("app:a", "r1", 7, Instant::now(), Duration::from_millis(50));
        let inside = fence.clone();
        scope(fence.clone(), async move {
            assert!(may_act());
            assert_eq!(current().map(|f| f.token), Some(7));
            tokio::time::sleep(Duration::from_millis(80)).await;
            assert!(!may_act(), "the lease ran out while the task slept");
            inside.renewed(Instant::now(), Duration::from_secs(5));
            assert!(may_act(), "renewed");
            inside.revoke();
            assert!(!may_act(), "revoked");
        })
        .await;
    }
}
