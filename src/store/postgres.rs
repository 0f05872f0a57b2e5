//! The shared store: PostgreSQL, for several replicas on one database. Times are `timestamptz`
//! and app ids `uuid` in the tables; `Store` speaks unix milliseconds and strings, so every query
//! converts at the boundary with the SQL functions `from_ms` and `to_ms` (see
//! `migrations/postgres/0001_init.sql`) and `::uuid` / `::text` casts (the fragments of
//! `store::dialect`). This file holds what only PostgreSQL does (see `dialect`); what a
//! transaction contains is decided in `crate::rules` and by the engine, exactly as for SQLite.
//!
//! Several replicas share it: the leases and the fencing check of every write done under one
//! are in `begin` and the lease methods at the end; new work is announced with `pg_notify` on
//! `WORK_CHANNEL`, inside the transaction that commits it.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use super::audit::insert_audit;
use super::dialect::{Backend, Dialect, count_commit, count_statement};
use super::events::{Item, write_batch};
use super::group_commit::{GroupCommit, GroupWriter};
use super::*;

#[derive(Clone)]
pub struct PostgresDb {
    pub(super) pool: PgPool,
    /// The webhooks' group commit of this process (see `group_commit`); processes commit side by
    /// side, their events' advisory locks taken first (`lock_intake`).
    intake: Arc<GroupCommit>,
    /// Asks this process's numberer to number what a writer committed (`order_commits_later`).
    numbering: tokio::sync::mpsc::Sender<()>,
    /// The replica this process acts as under its leases (`Store::act_as`): the intake announces
    /// no work whose lease it holds, since it wakes that work itself.
    acting_as: Arc<std::sync::RwLock<Option<String>>>,
}

type Tx = Transaction<'static, Postgres>;

/// The channel on which new work is announced to the replicas (`Store::notify_work`).
const WORK_CHANNEL: &str = "scim_bridge_work";

/// An app id as the `uuid` column holds it, or `None` for a string that no stored app can have
/// (not a uuid, or not in its canonical lowercase form, which is all the API hands out): the
/// query is not sent, so a made-up id finds nothing instead of failing the cast, as in SQLite.
fn app_key(id: &str) -> Option<&str> {
    uuid::Uuid::parse_str(id)
        .ok()
        .filter(|u| u.hyphenated().to_string() == id)
        .map(|_| id)
}

impl PostgresDb {
    pub(super) fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    /// See `app_key` (the function).
    pub(super) fn app_key<'a>(&self, id: &'a str) -> Option<&'a str> {
        app_key(id)
    }

    pub async fn open(url: &str) -> StoreResult<Self> {
        // A lock held longer than this fails the statement, as SQLite's busy timeout does: the
        // webhook answers 503 and its sender retries, instead of hanging.
        let options: PgConnectOptions = url.parse::<PgConnectOptions>()?.options([("lock_timeout", "10s")]);
        let port = options.get_port();
        // No ping before each acquire: sqlx's default test costs a round trip per statement on
        // the push path. A connection is tested when it goes back to the pool (sqlx pings it
        // there and drops a broken one); one broken meanwhile fails its statement, as any
        // transient database error does (503 to the webhook, the dispatcher's pass retried).
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |_, _| {
                no_delay(port);
                Box::pin(async { Ok(()) })
            })
            .connect_with(options)
            .await?;
        // The numberer: one task that numbers committed log and audit entries whenever a writer
        // asks, so that no writer waits for it; asks that arrive while one is queued are one run.
        // It ends with the last of the store's handles (its channel closes).
        let (numbering, mut asked) = tokio::sync::mpsc::channel::<()>(1);
        let numberer = pool.clone();
        tokio::spawn(async move {
            while asked.recv().await.is_some() {
                order(&numberer).await;
            }
        });
        Ok(Self {
            pool,
            intake: Arc::new(GroupCommit::new(Arc::new(tokio::sync::Mutex::new(())))),
            numbering,
            acting_as: Arc::new(std::sync::RwLock::new(None)),
        })
    }

    /// Begins a write. Inside work done under a lease (`crate::lease::scope`) the lease row must
    /// still carry this holder and token: it is locked (`FOR SHARE`) until the write commits, so
    /// no other replica can take the lease over between the check and the commit. A replica that
    /// lost the lease writes nothing (`StoreError::Fenced`).
    pub(super) async fn begin(&self) -> StoreResult<Tx> {
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = crate::lease::current() {
            count_statement();
            let held: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND token = $3 AND NOT released
                   AND expires_at > now() FOR SHARE",
            )
            .bind(&fence.name)
            .bind(&fence.holder)
            .bind(fence.token)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                return Err(StoreError::Fenced(fence.name));
            }
        }
        Ok(tx)
    }

    /// A write of one statement ending in `RETURNING` (its condition holding `{fenced $N}`), as
    /// one statement committed alone that takes its own lease fence: the lease named by `$N`
    /// (holder `$N+1`, token `$N+2`; all NULL outside a lease) is locked `FOR SHARE` by the same
    /// statement, until it commits, as `begin` does in a transaction. Answers one row always: `held`
    /// (the fence held, or no lease), and the write's own columns, all NULL when it wrote nothing.
    pub(super) fn fenced(&self, write: &str, fence_at: usize) -> String {
        let (name, holder, token) = (fence_at, fence_at + 1, fence_at + 2);
        format!(
            "WITH fence AS (SELECT 1 FROM leases WHERE name = ${name} AND holder = ${holder} AND token = ${token}
               AND NOT released AND expires_at > now() FOR SHARE),
             written AS ({write})
             SELECT (${name}::text IS NULL OR EXISTS (SELECT 1 FROM fence)) AS held, w.*
             FROM (SELECT 1) AS one LEFT JOIN written w ON TRUE"
        )
    }

    /// Commits a write, with the audit entry that records it if one is pending
    /// (`store::audited`): the change and its audit entry commit together or not at all.
    pub(super) async fn commit(&self, mut tx: Tx) -> StoreResult<()> {
        let audit = take_audit();
        if let Some(e) = &audit {
            insert_audit!(self, &mut *tx, e)?;
        }
        tx.commit().await?;
        count_commit();
        if audit.is_some() {
            self.order_commits_later();
        }
        Ok(())
    }

    /// Numbers the log and audit entries committed so far in commit order (the paging cursor),
    /// before a reader pages through them: see `assign_commit_order` in the migration.
    pub(super) async fn order_commits(&self) {
        count_statement();
        order(&self.pool).await;
    }

    /// Has the numberer (`open`) number what the writer just committed, without waiting for it:
    /// entries are numbered in a transaction of their own after their writer's commit, and every
    /// reader numbers what is left before it reads (`order_commits`), so a writer need not wait.
    /// Counted as the statement it causes (an ask that joins a queued run is counted too).
    pub(super) fn order_commits_later(&self) {
        count_statement();
        let _ = self.numbering.try_send(());
    }

    /// Deleting an app takes its lease row first, then the job rows: the order a dispatcher's
    /// write takes them in (`begin` locks the lease row, then it writes its jobs), so the two never
    /// deadlock. A replica dispatching for the app loses its lease: it writes nothing more for it.
    pub(super) async fn forget_app_lease(&self, tx: &mut Tx, app_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM leases WHERE name = 'app:' || $1")
            .bind(app_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// `AND app_id IN (...)` for a query built piece by piece, the ids as one `uuid[]` (those no
    /// app can have left out).
    pub(super) fn push_app_ids(&self, q: &mut sqlx::QueryBuilder<Postgres>, ids: &[String]) {
        let ids: Vec<String> = ids.iter().filter_map(|id| app_key(id)).map(str::to_string).collect();
        q.push(" AND app_id = ANY(").push_bind(ids).push("::uuid[])");
    }

    /// A list of strings as `{each $N}` takes it: a `text[]`.
    pub(super) fn text_list(&self, values: &[String]) -> Vec<String> {
        values.to_vec()
    }

    /// Requests of one app take turns, as SQLite's single writer makes them: the merge in
    /// `request_cycle` must see a request another replica is adding.
    pub(super) async fn lock_cycle_requests(&self, tx: &mut Tx, app_id: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('cycle request'), hashtext($1))")
            .bind(app_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Locks the principal for a write outside the intake (which locks the same key with its
    /// others, `lock_intake`): two writers merging into one principal take turns, also while it
    /// has no row yet (a row lock alone locks nothing then), so the directory feed and webhooks
    /// take turns.
    pub(super) async fn lock_principal(&self, tx: &mut Tx, principal_id: &str) -> StoreResult<()> {
        count_statement();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('principal' || chr(10) || $1, 0))")
            .bind(principal_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Locks what a batch of events shares with concurrent writers before it reads anything.
    /// SQLite runs one writer at a time; here webhooks commit side by side, so what they share is
    /// locked first: the event's (id, status), whose second copy must find the first committed,
    /// and the membership and principal an event judges and updates, which must see what an
    /// earlier event wrote. All of a batch's locks are taken at once, in one order, so two
    /// batches never wait on each other in a circle.
    pub(super) async fn lock_intake(&self, tx: &mut Tx, items: &[Item<'_>]) -> StoreResult<()> {
        let mut keys = Vec::with_capacity(items.len() * 3);
        for e in items.iter().map(|item| item.event) {
            keys.push(format!("event\n{}\n{}", e.id, e.status));
            keys.push(format!(
                "membership\n{}\n{}\n{}",
                e.principal_id, e.group_id, e.access_id
            ));
            keys.push(format!("principal\n{}", e.principal_id));
        }
        count_statement();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM (
               SELECT DISTINCT hashtextextended(key, 0) AS k FROM unnest($1::text[]) AS key ORDER BY k) keys",
        )
        .bind(&keys)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The replicas that dispatch for the apps of the accepted jobs hear of them when the batch
    /// commits; the one that runs the timers hears of every accepted event that left an active
    /// membership with an end, since one may have moved an end closer (a shortened extension
    /// queues no job, but its expiry is due sooner).
    /// This replica is not told what it holds the lease of (`act_as`).
    pub(super) async fn announce_intake(&self, tx: &mut Tx, answers: &[Acceptance]) -> StoreResult<()> {
        let mut wakes: Vec<String> = Vec::new();
        let mut ends = false;
        for answer in answers {
            if let Acceptance::Accepted { jobs, ends_at } = answer {
                wakes.extend(jobs.iter().map(|(_, app_id)| format!("app:{app_id}")));
                ends |= ends_at.is_some();
            }
        }
        wakes.sort();
        wakes.dedup();
        // Last, as its lease (`timers`) sorts after every `app:` one: the lease rows are locked
        // in name order, as everywhere several are (`renew_leases`).
        if ends {
            wakes.push("expiry".into());
        }
        if wakes.is_empty() {
            return Ok(());
        }
        // What this replica holds the lease of (`app:<id>`, and `timers` for the expiry), it
        // wakes itself after the commit (`intake::commit_and_wake`): announced, it would run a
        // second, empty pass. The lease row is locked until the commit, so a replica taking the
        // lease over meanwhile starts after it, and its first pass sees the jobs.
        let acting_as = self.acting_as.read().expect("lock").clone();
        count_statement();
        sqlx::query(
            "SELECT pg_notify($1, w) FROM unnest($2::text[]) AS w
             WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = CASE w WHEN 'expiry' THEN 'timers' ELSE w END
               AND l.holder = $3 AND NOT l.released AND l.expires_at > now() FOR SHARE)",
        )
        .bind(WORK_CHANNEL)
        .bind(&wakes)
        .bind(acting_as)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// What `Store::migrate` and `Store::ping` run here.
impl PostgresDb {
    pub(super) async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/postgres").run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// The cluster (several replicas on one PostgreSQL; see `crate::provisioning::cluster`). A SQLite
/// store is one process's: it holds every lease and hears of its own work, so each method answers
/// it at once (its first lines).
impl Store {
    /// Says `replica` (this process: `instance`) is alive for `ttl` more; answers the replicas
    /// alive now, this one included. `None`: another live process has written the same replica
    /// id since this one's last heartbeat (`first`: there was none, the row is this process's).
    pub async fn heartbeat(
        &self,
        replica: &str,
        instance: &str,
        first: bool,
        ttl: Millis,
    ) -> StoreResult<Option<Vec<String>>> {
        let Backend::Postgres(db) = &self.backend else {
            return Ok(Some(vec![replica.to_string()]));
        };
        let mut tx = db.pool.begin().await?;
        let written: Option<String> = sqlx::query_scalar("SELECT instance FROM replicas WHERE id = $1 FOR UPDATE")
            .bind(replica)
            .fetch_optional(&mut *tx)
            .await?;
        if !first && written.is_some_and(|w| w != instance) {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO replicas (id, instance, started_at, expires_at)
             VALUES ($1, $2, now(), now() + $3 * interval '1 millisecond')
             ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, expires_at = excluded.expires_at,
               started_at = CASE WHEN replicas.instance = excluded.instance THEN replicas.started_at
                            ELSE excluded.started_at END",
        )
        .bind(replica)
        .bind(instance)
        .bind(ttl as f64)
        .execute(&mut *tx)
        .await?;
        // Replicas gone for a day leave no trace.
        sqlx::query("DELETE FROM replicas WHERE expires_at < now() - interval '1 day'")
            .execute(&mut *tx)
            .await?;
        let alive = sqlx::query_scalar("SELECT id FROM replicas WHERE expires_at > now() ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        db.commit(tx).await?;
        Ok(Some(alive))
    }

    /// The replica stops: its row goes (its leases are released before).
    pub async fn leave(&self, replica: &str) -> StoreResult<()> {
        let Backend::Postgres(db) = &self.backend else {
            return Ok(());
        };
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(replica)
            .execute(&db.pool)
            .await?;
        Ok(())
    }

    /// Grants the lease to `holder` for `ttl` if it is free, expired, released or its own (with a
    /// new token each time); `None` while another holder's lease runs.
    pub async fn acquire_lease(&self, name: &str, holder: &str, ttl: Millis) -> StoreResult<Option<Grant>> {
        let Backend::Postgres(db) = &self.backend else {
            return Ok(None);
        };
        let mut tx = db.pool.begin().await?;
        let current: Option<(String, bool, bool)> =
            sqlx::query_as("SELECT holder, expires_at > now(), released FROM leases WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let mut grant = Grant {
            token: 0,
            taken_over_from: None,
            handed_over_by: None,
        };
        match current {
            // Another holder's lease still runs.
            Some((other, true, false)) if other != holder => return Ok(None),
            Some((other, _, released)) if other != holder => {
                if released {
                    grant.handed_over_by = Some(other);
                } else {
                    grant.taken_over_from = Some(other);
                }
            }
            _ => {}
        }
        // Two replicas creating the row at once: one insert wins, the other grants nothing.
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, token, acquired_at, expires_at)
             VALUES ($1, $2, nextval('lease_tokens'), now(), now() + $3 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = excluded.token,
               acquired_at = excluded.acquired_at, expires_at = excluded.expires_at, released = FALSE
             WHERE leases.holder = excluded.holder OR leases.released OR leases.expires_at <= now()
             RETURNING token",
        )
        .bind(name)
        .bind(holder)
        .bind(ttl as f64)
        .fetch_optional(&mut *tx)
        .await?;
        db.commit(tx).await?;
        Ok(token.map(|token| Grant { token, ..grant }))
    }

    /// Extends every lease `holder` still holds (not expired, not released) by `ttl`; answers
    /// their names and tokens. A lease it held that is not in the answer is lost.
    pub async fn renew_leases(&self, holder: &str, ttl: Millis) -> StoreResult<Vec<(String, i64)>> {
        let Backend::Postgres(db) = &self.backend else {
            return Ok(Vec::new());
        };
        // Row locks on leases are taken in name order, here and wherever several are (the
        // intake's announcement, `release_leases`): in the table's order, a renewal and an
        // intake announcing two of its leases deadlocked.
        Ok(sqlx::query_as(
            "UPDATE leases SET expires_at = now() + $2 * interval '1 millisecond'
             WHERE name IN (SELECT name FROM leases WHERE holder = $1 AND NOT released AND expires_at > now()
                            ORDER BY name FOR UPDATE)
             RETURNING name, token",
        )
        .bind(holder)
        .bind(ttl as f64)
        .fetch_all(&db.pool)
        .await?)
    }

    /// Gives leases up once the work under them has stopped; `forget` deletes the rows (the work
    /// no longer exists: a deleted app).
    pub async fn release_leases(&self, holder: &str, names: &[String], forget: bool) -> StoreResult<()> {
        let Backend::Postgres(db) = &self.backend else {
            return Ok(());
        };
        // Locked in name order (see `renew_leases`).
        let sql = if forget {
            "DELETE FROM leases WHERE name IN (SELECT name FROM leases WHERE holder = $1 AND name = ANY($2)
               ORDER BY name FOR UPDATE)"
        } else {
            "UPDATE leases SET released = TRUE, expires_at = now()
             WHERE name IN (SELECT name FROM leases WHERE holder = $1 AND name = ANY($2) ORDER BY name FOR UPDATE)"
        };
        sqlx::query(sql).bind(holder).bind(names).execute(&db.pool).await?;
        Ok(())
    }

    /// The replica this process now acts as under its leases, `None` when it does not (it
    /// stopped, or another live process has its id): the intake then announces all its work.
    pub fn act_as(&self, holder: Option<&str>) {
        if let Backend::Postgres(db) = &self.backend {
            *db.acting_as.write().expect("lock") = holder.map(str::to_string);
        }
    }

    /// Tells every replica listening that there is work (`app:<id>`, `expiry`, `leases`).
    pub async fn notify_work(&self, what: &str) -> StoreResult<()> {
        let Backend::Postgres(db) = &self.backend else {
            return Ok(());
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WORK_CHANNEL)
            .bind(what)
            .execute(&db.pool)
            .await?;
        Ok(())
    }

    /// Listens for `notify_work` (and the notifications writes send in their transactions).
    pub async fn listen_work(&self) -> StoreResult<Option<Box<dyn WorkListener>>> {
        let Backend::Postgres(db) = &self.backend else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool).await?;
        listener.listen(WORK_CHANNEL).await?;
        Ok(Some(Box::new(PgWorkListener(listener))))
    }
}

/// `LISTEN` on its own connection. `PgListener` reconnects by itself but drops what was sent
/// meanwhile; `try_recv` says when that happened.
struct PgWorkListener(sqlx::postgres::PgListener);

#[async_trait]
impl WorkListener for PgWorkListener {
    async fn next(&mut self) -> Option<String> {
        match self.0.try_recv().await {
            Ok(Some(notification)) => Some(notification.payload().to_string()),
            Ok(None) => {
                tracing::warn!("the notification connection dropped: looking at every app's work");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for new work failed; trying again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                None
            }
        }
    }
}

#[cfg(test)]
#[path = "tests/postgres.rs"]
mod tests;

impl PostgresDb {
    /// The webhook intake's group commit (`Store::accept_events`).
    pub(super) async fn accept_grouped(&self, items: &[(Event, Effect)], now: Millis) -> StoreResult<Vec<Acceptance>> {
        self.intake.accept(Arc::new(self.clone()), items, now).await
    }
}

/// A group of webhooks in one transaction: their events' locks first, then the batch, then the
/// replicas told of the work, all before the commit.
impl GroupWriter for PostgresDb {
    fn write<'a>(&'a self, batch: &'a [Item<'a>]) -> futures::future::BoxFuture<'a, StoreResult<Vec<Acceptance>>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            self.lock_intake(&mut tx, batch).await?;
            let written = write_batch(&mut *tx, batch).await?;
            self.announce_intake(&mut tx, &written.answers).await?;
            self.commit(tx).await?;
            if written.logged {
                self.order_commits_later();
            }
            Ok(written.answers)
        })
    }
}

/// Runs `assign_commit_order`. A failure loses nothing (the next run numbers the entries), so it
/// is only logged.
async fn order(pool: &PgPool) {
    if let Err(e) = sqlx::query("SELECT assign_commit_order()").execute(pool).await {
        tracing::warn!(error = %e, "numbering committed log entries failed; the next write or read does it");
    }
}

/// Turns Nagle's algorithm off on this process's TCP connections to the server's `port`, as
/// libpq does on each of its own. sqlx 0.9.0 no longer does it (transact-rs/sqlx#4335, fixed after
/// that release): a statement whose message does not end on a full TCP segment then waits for the
/// server's delayed ACK, 40 ms. The intake's multi-row statements hit it: a group of 41 webhooks
/// took 93 ms, 89 of them two such waits, and the database idle meanwhile. Each new connection
/// sets it on every such socket (again on those set before, which changes nothing).
fn no_delay(port: u16) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::BorrowedFd;
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for fd in fds.flatten() {
            let Some(fd) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: the descriptor was open when listed and is only borrowed for two socket
            // options; one closed and reused meanwhile answers an error, or is another socket of
            // this process that gets `TCP_NODELAY` too: harmless either way.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let to_server = (socket.peer_addr().ok().and_then(|a| a.as_socket())).is_some_and(|a| a.port() == port);
            if to_server && socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM) {
                let _ = socket.set_tcp_nodelay(true);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = port;
}
