//! Several replicas on one PostgreSQL: which replica does what.
//!
//! Everything that must run once in the cluster has a lease: `app:<id>` (the app's dispatcher,
//! so its window and pacing hold cluster-wide), `timers` (expiry and retention) and `graph` (the
//! Graph source's pollers). Every `ttl / 3` each replica says it is alive, renews what it holds,
//! and looks at who should hold what: a lease is the turn of the live replica that ranks first
//! for it (rendezvous hashing), so leases spread evenly, and when a replica starts or stops only
//! its share moves. A replica gives a lease up (released) once the work under it has stopped and
//! recorded everything; the next holder starts at once. A lease that expired instead (its holder
//! died or was cut off mid-push) is taken over after at most `ttl` plus one look, and the new
//! dispatcher waits one full window before its first push.
//!
//! The work under a lease runs in `crate::lease::scope`: its writes are fenced by the lease's
//! token, and its SCIM requests by the lease's local validity (see `crate::lease`).
//!
//! Lease times are real time and the database's clock, never the bridge's injected `Clock`: they
//! are about processes dying, not about the provisioning rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Millis;
use crate::lease::Fence;

use super::Engine;

pub(super) const TIMERS: &str = "timers";
pub(crate) const GRAPH: &str = "graph";
const APP_PREFIX: &str = "app:";

pub(super) fn app_lease(app_id: &str) -> String {
    format!("{APP_PREFIX}{app_id}")
}

/// This process's part in the cluster.
pub(super) struct Cluster {
    /// This replica in the lease table (`SCIM_BRIDGE_REPLICA_ID`): a replica restarted under the
    /// same id takes its previous life's leases back at once.
    pub holder: String,
    /// This process, so that two live processes given one replica id are noticed.
    instance: String,
    beaten: AtomicBool,
    /// Another live process has this replica id: this one does nothing under leases any more.
    pub duplicate: AtomicBool,
    ttl: Millis,
    /// Look again now: a new app, a notification, a lease given up.
    pub nudge: Notify,
    /// The leases held, by name; a name being given up stays here until it is released.
    held: Mutex<HashMap<String, Held>>,
}

struct Held {
    fence: Fence,
    releasing: bool,
}

impl Cluster {
    pub fn new(replica_id: &str, ttl: Millis) -> Self {
        Self {
            holder: replica_id.to_string(),
            instance: crate::crypto::random_hex(8),
            beaten: AtomicBool::new(false),
            duplicate: AtomicBool::new(false),
            ttl,
            nudge: Notify::new(),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this process holds the lease and may act under it.
    pub fn holds(&self, name: &str) -> bool {
        self.held
            .lock()
            .expect("lock")
            .get(name)
            .is_some_and(|h| !h.releasing && h.fence.is_valid())
    }

    /// The lease's fence, while this process holds the lease and may act under it.
    pub fn fence(&self, name: &str) -> Option<Fence> {
        self.held
            .lock()
            .expect("lock")
            .get(name)
            .filter(|h| !h.releasing && h.fence.is_valid())
            .map(|h| h.fence.clone())
    }

    /// The leases held now, for shutdown.
    fn held_names(&self) -> Vec<String> {
        self.held.lock().expect("lock").keys().cloned().collect()
    }

    /// How long this process trusts a renewal: a fifth less than the database does, so that it
    /// stops acting before another replica may take the lease.
    fn local_ttl(&self) -> Duration {
        Duration::from_millis((self.ttl * 4 / 5) as u64)
    }
}

/// The live replica that ranks first for the lease: the highest hash of (name, replica).
fn turn_of<'a>(name: &str, alive: &'a [String]) -> Option<&'a str> {
    alive
        .iter()
        .max_by_key(|replica| {
            let digest = Sha256::new()
                .chain_update(name.as_bytes())
                .chain_update([0])
                .chain_update(replica.as_bytes())
                .finalize();
            u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
        })
        .map(String::as_str)
}

/// Renews, takes and gives up leases every `ttl / 3`, or at once when nudged.
pub(super) async fn run(engine: Weak<Engine>, stop: CancellationToken) {
    loop {
        let Some(strong) = engine.upgrade() else { return };
        let cluster = strong.cluster.clone().expect("the cluster loop runs in cluster mode");
        if let Err(e) = look(&strong, &cluster).await {
            tracing::warn!(error = %e, "the lease look failed; trying again shortly");
        }
        drop(strong);
        let every = Duration::from_millis((cluster.ttl / 3) as u64);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = cluster.nudge.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn look(engine: &Arc<Engine>, cluster: &Arc<Cluster>) -> anyhow::Result<()> {
    let store = &engine.ctx.store;
    if cluster.duplicate.load(Ordering::Relaxed) {
        return Ok(());
    }
    let first = !cluster.beaten.swap(true, Ordering::Relaxed);
    let Some(alive) = store
        .heartbeat(&cluster.holder, &cluster.instance, first, cluster.ttl)
        .await?
    else {
        // Two processes with one id would both think they hold its leases: this one stops.
        tracing::error!(replica = %cluster.holder,
            "another live process runs with this SCIM_BRIDGE_REPLICA_ID: this one stops dispatching; give every replica its own id");
        cluster.duplicate.store(true, Ordering::Relaxed);
        // The leases under this id are the other process's: its work is announced to it again.
        store.act_as(None);
        let names: Vec<String> = cluster
            .held
            .lock()
            .expect("lock")
            .drain()
            .map(|(name, h)| {
                h.fence.revoke();
                name
            })
            .collect();
        for name in names {
            engine.stop_lease_work(&name).await;
        }
        crate::metrics::leases_held(0);
        return Ok(());
    };
    let renewed = renew(engine, cluster).await?;
    // Leases of this replica id that this process does not work under: its previous life's
    // (a crash). Given up, so that none is renewed with no work behind it.
    let orphans: Vec<String> = {
        let held = cluster.held.lock().expect("lock");
        renewed
            .keys()
            .filter(|name| !held.contains_key(*name))
            .cloned()
            .collect()
    };
    if !orphans.is_empty() {
        store.release_leases(&cluster.holder, &orphans, false).await?;
    }

    // Lost leases (expired or taken while this process was cut off): stop acting at once, then
    // stop their work; nothing it still tries to write is accepted.
    let lost: Vec<String> = {
        let mut held = cluster.held.lock().expect("lock");
        let lost: Vec<String> = held
            .iter()
            .filter(|(name, h)| renewed.get(*name) != Some(&h.fence.token))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &lost {
            if let Some(h) = held.remove(name) {
                h.fence.revoke();
            }
        }
        lost
    };
    for name in lost {
        tracing::warn!(lease = %name, holder = %cluster.holder, "lease lost: its work stops here");
        // Told to stop now, not in a task of its own that could run after the lease is taken
        // again below and stop the new work instead.
        engine.cancel_lease_work(&name);
    }

    let mut wanted: Vec<String> = store.list_apps().await?.iter().map(|a| app_lease(&a.id)).collect();
    wanted.push(TIMERS.into());
    if engine.ctx.config.graph.is_some() {
        wanted.push(GRAPH.into());
    }
    let mut taken = 0;
    for name in &wanted {
        let mine = turn_of(name, &alive) == Some(cluster.holder.as_str());
        let holding = cluster.held.lock().expect("lock").contains_key(name);
        if holding && !mine {
            give_up(engine, cluster, name, false);
        } else if !holding && mine {
            take(engine, cluster, name).await?;
            taken += 1;
            // Taking thousands of leases (a first start) outlasts a renewal period: renew
            // what is held meanwhile, so that none runs out while the look goes on.
            if taken % RENEW_EVERY_TAKEN == 0 {
                renew(engine, cluster).await?;
            }
        }
    }
    // Every app lease held has a live dispatcher: one whose start failed, or that ended, is
    // started again (nothing would be pushed for the app, revocations included).
    let missing: Vec<(String, Fence)> = cluster
        .held
        .lock()
        .expect("lock")
        .iter()
        .filter(|(name, h)| !h.releasing && wanted.contains(*name))
        .filter_map(|(name, h)| Some((name.strip_prefix(APP_PREFIX)?.to_string(), h.fence.clone())))
        .filter(|(app_id, _)| !engine.dispatcher_live(app_id))
        .collect();
    for (app_id, fence) in missing {
        tracing::warn!(app_id, holder = %cluster.holder, "the dispatcher of an app whose lease this replica holds was not running: started again");
        engine.spawn_dispatcher(&app_id, Some(fence), false);
    }
    let gone: Vec<String> = cluster
        .held_names()
        .into_iter()
        .filter(|name| !wanted.contains(name))
        .collect();
    for name in gone {
        give_up(engine, cluster, &name, true);
    }
    let apps = cluster
        .held
        .lock()
        .expect("lock")
        .iter()
        .filter(|(name, h)| name.starts_with(APP_PREFIX) && !h.releasing)
        .count();
    crate::metrics::leases_held(apps);
    Ok(())
}

/// How many leases one look takes between two renewals of those it holds.
const RENEW_EVERY_TAKEN: usize = 200;

/// Renews every lease held, extending the fences of those the database renewed with the same
/// token; answers what it renewed.
async fn renew(engine: &Arc<Engine>, cluster: &Arc<Cluster>) -> anyhow::Result<HashMap<String, i64>> {
    let sent = Instant::now();
    let renewed: HashMap<String, i64> = engine
        .ctx
        .store
        .renew_leases(&cluster.holder, cluster.ttl)
        .await?
        .into_iter()
        .collect();
    for (name, h) in cluster.held.lock().expect("lock").iter() {
        if renewed.get(name) == Some(&h.fence.token) {
            h.fence.renewed(sent, cluster.local_ttl());
        }
    }
    Ok(renewed)
}

async fn take(engine: &Arc<Engine>, cluster: &Arc<Cluster>, name: &str) -> anyhow::Result<()> {
    let sent = Instant::now();
    let Some(grant) = engine
        .ctx
        .store
        .acquire_lease(name, &cluster.holder, cluster.ttl)
        .await?
    else {
        return Ok(());
    };
    let fence = Fence::new(name, &cluster.holder, grant.token, sent, cluster.local_ttl());
    if let Some(previous) = &grant.taken_over_from {
        tracing::warn!(lease = %name, holder = %cluster.holder, previous = %previous, token = grant.token,
            "took over a lease whose holder stopped renewing it");
        crate::metrics::lease_changed("takeover");
    } else if let Some(previous) = &grant.handed_over_by {
        tracing::info!(lease = %name, holder = %cluster.holder, previous = %previous, token = grant.token, "lease handed over");
        crate::metrics::lease_changed("handover");
    } else {
        tracing::info!(lease = %name, holder = %cluster.holder, token = grant.token, "lease taken");
    }
    cluster.held.lock().expect("lock").insert(
        name.to_string(),
        Held {
            fence: fence.clone(),
            releasing: false,
        },
    );
    engine.start_lease_work(name, fence, grant.taken_over_from.is_some());
    Ok(())
}

/// Stops the work under the lease, then releases it (or deletes it: `forget`), in the
/// background: renewals go on meanwhile, so a push that takes its time loses nothing.
fn give_up(engine: &Arc<Engine>, cluster: &Arc<Cluster>, name: &str, forget: bool) {
    {
        let mut held = cluster.held.lock().expect("lock");
        match held.get_mut(name) {
            Some(h) if !h.releasing => h.releasing = true,
            _ => return,
        }
    }
    let engine = engine.clone();
    let cluster = cluster.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        engine.stop_lease_work(&name).await;
        if let Err(e) = engine
            .ctx
            .store
            .release_leases(&cluster.holder, std::slice::from_ref(&name), forget)
            .await
        {
            tracing::warn!(lease = %name, error = %e, "releasing a lease failed: it expires instead");
        }
        if let Some(h) = cluster.held.lock().expect("lock").remove(&name) {
            h.fence.revoke();
        }
        tracing::info!(lease = %name, holder = %cluster.holder, "lease released");
        // The replica whose turn it is hears of it at once.
        let _ = engine.ctx.store.notify_work("leases").await;
    });
}

/// Shutdown: every lease's work has stopped; release them all so that the other replicas take
/// them at once, and leave.
pub(super) async fn leave(engine: &Engine, cluster: &Cluster) {
    if cluster.duplicate.load(Ordering::Relaxed) {
        return;
    }
    let names = cluster.held_names();
    let store = &engine.ctx.store;
    if let Err(e) = store.release_leases(&cluster.holder, &names, false).await {
        tracing::warn!(error = %e, "releasing the leases at shutdown failed: they expire instead");
    }
    let _ = store.leave(&cluster.holder).await;
    let _ = store.notify_work("leases").await;
    tracing::info!(holder = %cluster.holder, leases = names.len(), "leases released");
}

/// Hears of work committed by other replicas: wakes this replica's dispatcher of the app, the
/// expiry timer, or the lease look. When the connection dropped (notifications may be lost),
/// every local dispatcher looks at its work again: the polling fallback.
pub(super) async fn listen(engine: Weak<Engine>, stop: CancellationToken) {
    let mut listener = None;
    loop {
        let Some(strong) = engine.upgrade() else { return };
        if listener.is_none() {
            match strong.ctx.store.listen_work().await {
                Ok(Some(l)) => {
                    listener = Some(l);
                    // Whatever was announced before this connection listened.
                    strong.wake_everything();
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "listening for new work failed; trying again in a second");
                    drop(strong);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            }
        }
        drop(strong);
        let l = listener.as_mut().expect("listening");
        let heard = tokio::select! {
            _ = stop.cancelled() => return,
            heard = l.next() => heard,
        };
        let Some(strong) = engine.upgrade() else { return };
        match heard.as_deref() {
            Some("expiry") => strong.wake_expiry(),
            Some("leases") => {
                if let Some(cluster) = &strong.cluster {
                    cluster.nudge.notify_one();
                }
            }
            Some(app) if app.starts_with(APP_PREFIX) => strong.wake_local(&app[APP_PREFIX.len()..]),
            Some(_) => {}
            None => strong.wake_everything(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_spread_over_the_live_replicas_and_only_a_leaving_replicas_share_moves() {
        let three: Vec<String> = ["r1", "r2", "r3"].map(String::from).to_vec();
        let names: Vec<String> = (0..300).map(|i| app_lease(&format!("app-{i}"))).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for name in &names {
            *counts.entry(turn_of(name, &three).unwrap()).or_default() += 1;
        }
        for replica in ["r1", "r2", "r3"] {
            let n = counts.get(replica).copied().unwrap_or(0);
            assert!((60..=140).contains(&n), "{replica} got {n} of 300: {counts:?}");
        }
        let two: Vec<String> = ["r1", "r3"].map(String::from).to_vec();
        for name in &names {
            let before = turn_of(name, &three).unwrap();
            let after = turn_of(name, &two).unwrap();
            if before != "r2" {
                assert_eq!(before, after, "{name} moved although its replica stayed");
            }
        }
        assert_eq!(turn_of("timers", &[]), None);
    }
}
