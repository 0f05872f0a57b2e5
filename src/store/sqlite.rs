//! The embedded store: SQLite in WAL mode. Times are integer unix milliseconds. This file holds
//! what only SQLite does (the write turn, the webhooks' group commit; see `store::dialect`) and the
//! methods not yet written once for both databases in their aggregate's file; what a transaction
//! contains is decided in `crate::rules` and by the engine.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::audit::insert_audit;
use super::dialect::{Dialect, count_commit};
use super::events::{Item, write_batch};
use super::*;

pub struct SqliteDb {
    pub(super) pool: SqlitePool,
    /// Write transactions take turns here, first come first served, before they take a pooled
    /// connection: SQLite runs one writer at a time anyway, and waiting here (not on the
    /// database's busy handler, holding a connection) keeps a flood of webhooks from taking every
    /// connection and starving the dispatchers' reads and commits.
    write_turn: Arc<tokio::sync::Mutex<()>>,
    /// Webhooks waiting for the next group commit (see `accept_events`).
    intake: std::sync::Mutex<Vec<Waiting>>,
}

/// A webhook's events waiting to be committed, and where its answer goes once they are.
struct Waiting {
    items: Vec<(Event, Effect)>,
    now: Millis,
    answer: tokio::sync::oneshot::Sender<StoreResult<Vec<Acceptance>>>,
}

type Tx = Transaction<'static, Sqlite>;

/// Narrows the database file and its `-wal` and `-shm` files to their owner (0600): they hold
/// principals' names and mail addresses and the whole log. Done once connected, so a file SQLite
/// has just created is covered, and one an earlier release left readable is narrowed; `-wal` and
/// `-shm` files SQLite makes later take the database file's mode. A file that cannot be changed
/// (another owner's) is left as it is, with a warning.
fn owner_only(database: &std::path::Path) {
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue;
        };
        if metadata.permissions().mode() & 0o077 == 0 {
            continue;
        }
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), error = %e, "could not make the database file readable by its owner only");
        }
    }
}

/// What the triggers of a moved store answer to a write (`migrate::mark_moved`), followed by
/// the destination.
pub(crate) const MOVED_MESSAGE: &str = "scim-bridge: this store was moved to ";

/// The destination, when the error is a write refused by the triggers of a moved store.
pub(crate) fn moved_to(e: &sqlx::Error) -> Option<String> {
    let message = e.as_database_error()?.message();
    message
        .find(MOVED_MESSAGE)
        .map(|at| message[at + MOVED_MESSAGE.len()..].to_string())
}

impl SqliteDb {
    pub(super) fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// Any string may be an app's id here: a made-up one finds nothing.
    pub(super) fn app_key<'a>(&self, id: &'a str) -> Option<&'a str> {
        Some(id)
    }

    /// No leases here (see `PostgresDb::forget_app_lease`).
    pub(super) async fn forget_app_lease(&self, _tx: &mut Tx, _app_id: &str) -> StoreResult<()> {
        Ok(())
    }

    /// The write turn already orders them (see `PostgresDb::lock_cycle_requests`).
    pub(super) async fn lock_cycle_requests(&self, _tx: &mut Tx, _app_id: &str) -> StoreResult<()> {
        Ok(())
    }

    /// `AND app_id IN (...)` for a query built piece by piece, the ids as one JSON array (a list
    /// can hold more ids than SQLite binds parameters).
    pub(super) fn push_app_ids(&self, q: &mut sqlx::QueryBuilder<Sqlite>, ids: &[String]) {
        q.push(" AND app_id IN (SELECT value FROM json_each(")
            .push_bind(to_json(ids))
            .push("))");
    }

    /// A list of strings as `{each $N}` takes it: one JSON array.
    pub(super) fn text_list(&self, values: &[String]) -> String {
        to_json(values)
    }

    /// Nothing to number: an entry's `seq` is its rowid, given as it is written.
    pub(super) async fn order_commits(&self) {}

    /// Where `migrate-store` moved this store, if it did (SPEC §6, "Moving stores").
    async fn moved_to(&self) -> StoreResult<Option<String>> {
        let marked: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'store_moved'")
                .fetch_optional(&self.pool)
                .await?;
        if marked.is_none() {
            return Ok(None);
        }
        Ok(sqlx::query_scalar("SELECT destination FROM store_moved")
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn open(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // An embedded database's connection cannot go stale the way a network one can: checking
        // each one before use would only add a round trip to SQLite's worker thread to every
        // statement made outside a transaction (most of the push path's reads).
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        owner_only(options.get_filename());
        Ok(Self {
            pool,
            write_turn: Arc::new(tokio::sync::Mutex::new(())),
            intake: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Commits a write, with the audit entry that records it if one is pending
    /// (`store::audited`): the change and its audit entry commit together or not at all.
    pub(super) async fn commit(&self, mut tx: Tx) -> StoreResult<()> {
        if let Some(e) = take_audit() {
            insert_audit!(self, &mut *tx, &e)?;
        }
        tx.commit().await?;
        count_commit();
        Ok(())
    }

    /// A write transaction, in turn (see `write_turn`): hold the guard until it commits.
    pub(super) async fn begin(&self) -> StoreResult<(tokio::sync::MutexGuard<'_, ()>, Tx)> {
        let turn = self.write_turn.lock().await;
        Ok((turn, self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    /// The webhook intake's group commit (`SqlStore::accept_events`).
    pub(super) async fn accept_grouped(&self, items: &[(Event, Effect)], now: Millis) -> StoreResult<Vec<Acceptance>> {
        // Group commit: a webhook queues its events and waits for its turn to write. Webhooks
        // that arrived while another commit was being made to disk are then committed together,
        // one fsync for all (if one webhook's write fails, each is written again alone, so only
        // that one is refused). Each is answered only after the commit: 202 still means committed.
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        self.intake.lock().expect("lock").push(Waiting {
            items: items.to_vec(),
            now,
            answer,
        });
        let turn = self.write_turn.clone().lock_owned().await;
        if let Ok(done) = answered.try_recv() {
            // The turn before this one committed it with its own.
            return done;
        }
        let group = std::mem::take(&mut *self.intake.lock().expect("lock"));
        // The commit runs in a task of its own, holding the turn: if this webhook's request is
        // dropped (its client went away), the others in the group are still committed and
        // answered.
        let pool = self.pool.clone();
        let commit = tokio::spawn(async move {
            Self::commit_group(&pool, group).await;
            drop(turn);
        });
        if let Err(e) = commit.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        answered
            .await
            .unwrap_or_else(|_| Err(StoreError::Corrupt("a webhook's commit was abandoned".into())))
    }

    /// Commits the queued webhooks in one transaction and answers each (the caller holds the
    /// write turn). If one webhook's write fails, the group is rolled back and each webhook is
    /// committed alone, so that only the failing one is refused.
    async fn commit_group(pool: &SqlitePool, group: Vec<Waiting>) {
        let results = match Self::write_group(pool, &group).await {
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(_) if group.len() > 1 => {
                let mut results = Vec::with_capacity(group.len());
                for w in &group {
                    results.push(
                        Self::write_group(pool, std::slice::from_ref(w))
                            .await
                            .map(|mut r| r.pop().expect("one webhook, one answer")),
                    );
                }
                results
            }
            Err(e) => vec![Err(e)],
        };
        for (w, result) in group.into_iter().zip(results) {
            let _ = w.answer.send(result);
        }
    }

    /// The webhooks' events in one transaction: every answer, or the first error (nothing
    /// written).
    async fn write_group(pool: &SqlitePool, group: &[Waiting]) -> StoreResult<Vec<Vec<Acceptance>>> {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let batch: Vec<Item> = group
            .iter()
            .flat_map(|w| {
                w.items.iter().map(|(event, effect)| Item {
                    event,
                    effect,
                    now: w.now,
                })
            })
            .collect();
        let mut answers = write_batch(&mut *tx, &batch).await?.answers.into_iter();
        tx.commit().await?;
        count_commit();
        Ok(group
            .iter()
            .map(|w| answers.by_ref().take(w.items.len()).collect())
            .collect())
    }

    /// No principal locks here: SQLite's writers take turns (see `PostgresDb::lock_principal`).
    pub(super) async fn lock_principal(&self, _tx: &mut Tx, _principal_id: &str) -> StoreResult<()> {
        Ok(())
    }
}

/// The methods of `Store` that have not moved to their aggregate's file yet (see `dialect`).
impl SqliteDb {
    pub(super) async fn migrate(&self) -> StoreResult<()> {
        // A moved store is left as it was: no bridge starts on it, no migration changes it.
        if let Some(destination) = self.moved_to().await? {
            return Err(StoreError::Moved(destination));
        }
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> StoreResult<()> {
        match self.moved_to().await? {
            Some(destination) => Err(StoreError::Moved(destination)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "tests/sqlite.rs"]
mod tests;
