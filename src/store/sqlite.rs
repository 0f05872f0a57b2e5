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
use super::group_commit::{GroupCommit, GroupWriter};
use super::*;

pub struct SqliteDb {
    pub(super) pool: SqlitePool,
    /// Write transactions take turns here, first come first served, before they take a pooled
    /// connection: SQLite runs one writer at a time anyway, and waiting here (not on the
    /// database's busy handler, holding a connection) keeps a flood of webhooks from taking every
    /// connection and starving the dispatchers' reads and commits.
    write_turn: Arc<tokio::sync::Mutex<()>>,
    /// The webhooks' group commit, in the write turn (see `group_commit`).
    intake: GroupCommit,
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

    /// A write of one statement ending in `RETURNING`, fenced (see `PostgresDb::fenced`): one
    /// writer at a time and no leases here, so its rows say the fence held.
    pub(super) fn fenced(&self, write: &str, _fence_at: usize) -> String {
        format!("{write}, TRUE AS held")
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

    /// See `order_commits`.
    pub(super) fn order_commits_later(&self) {}

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
        let write_turn = Arc::new(tokio::sync::Mutex::new(()));
        Ok(Self {
            pool,
            intake: GroupCommit::new(write_turn.clone()),
            write_turn,
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

    /// The webhook intake's group commit (`Store::accept_events`), in the write turn.
    pub(super) async fn accept_grouped(&self, items: &[(Event, Effect)], now: Millis) -> StoreResult<Vec<Acceptance>> {
        self.intake.accept(Arc::new(self.pool.clone()), items, now).await
    }

    /// No principal locks here: SQLite's writers take turns (see `PostgresDb::lock_principal`).
    pub(super) async fn lock_principal(&self, _tx: &mut Tx, _principal_id: &str) -> StoreResult<()> {
        Ok(())
    }
}

/// What `Store::migrate` and `Store::ping` run here.
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

/// A group of webhooks in one `BEGIN IMMEDIATE` transaction (the caller holds the write turn).
impl GroupWriter for SqlitePool {
    fn write<'a>(&'a self, batch: &'a [Item<'a>]) -> futures::future::BoxFuture<'a, StoreResult<Vec<Acceptance>>> {
        Box::pin(async move {
            let mut tx = self.begin_with("BEGIN IMMEDIATE").await?;
            let answers = write_batch(&mut *tx, batch).await?.answers;
            tx.commit().await?;
            count_commit();
            Ok(answers)
        })
    }
}
