//! The embedded store: SQLite in WAL mode. Times are integer unix milliseconds. This file holds
//! what only SQLite does (the write turn, the webhooks' group commit; see `store::dialect`) and the
//! methods not yet written once for both databases in their aggregate's file; what a transaction
//! contains is decided in `crate::rules` and by the engine.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tracing::instrument;

use super::access_ends::{insert_access_end, settle_access_ends, settle_kept, settle_removed};
use super::audit::insert_audit;
use super::dialect::Dialect;
use super::held::{hold_removal, release_held};
use super::logs::insert_log;
use super::*;
use crate::rules::{self, AssignedApp, MembershipState, MembershipWrite, StoredAttributes};

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

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

const INSERT_JOB: &str = "INSERT INTO jobs (id, app_id, event_seq, event_id, principal_id, group_id, kind, trigger,
    state, not_before, received_at, deferred_until, attempt, flag, updated_at, target_display_name, trace_context)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)";

/// Inserts a job: one no event brought (on-demand provisioning, a removal a cycle step handed on;
/// `event_seq` `None`) or an expiry's removal (the membership's event).
async fn insert_job_in(
    conn: &mut sqlx::SqliteConnection,
    job: &Job,
    event_seq: Option<i64>,
    now: Millis,
) -> StoreResult<()> {
    sqlx::query(INSERT_JOB)
        .bind(&job.id)
        .bind(&job.app_id)
        .bind(event_seq)
        .bind(&job.event_id)
        .bind(&job.principal_id)
        .bind(&job.group_id)
        .bind(&job.kind)
        .bind(&job.trigger)
        .bind(&job.state)
        .bind(job.not_before)
        .bind(job.received_at)
        .bind(job.deferred_until)
        .bind(&job.flag)
        .bind(now)
        .bind(&job.target_display_name)
        .bind(&job.trace_context)
        .execute(conn)
        .await?;
    Ok(())
}

const ENTITLED_VIA: &str = "SELECT ga.group_id FROM group_assignments ga
    WHERE ga.app_id = ? AND ga.target_display_name = ? AND (
      EXISTS (SELECT 1 FROM standing_members s WHERE s.group_id = ga.group_id AND s.principal_id = ?3)
      OR EXISTS (SELECT 1 FROM memberships m WHERE m.group_id = ga.group_id AND m.principal_id = ?3
                 AND m.access_id = 'member' AND m.active = 1
                 AND (m.start_at IS NULL OR m.start_at <= ?4) AND (m.end_at IS NULL OR m.end_at > ?4)))
    LIMIT 1";

const SELECT_PRINCIPAL: &str = "SELECT user_principal_name, display_name, given_name, surname, mail, attributes FROM principals WHERE principal_id = ?";

/// A principal's row: the classic columns and, since 0003, the attributes with their times.
#[derive(sqlx::FromRow)]
struct PrincipalRow {
    user_principal_name: String,
    display_name: Option<String>,
    given_name: Option<String>,
    surname: Option<String>,
    mail: Option<String>,
    attributes: Option<String>,
}

impl PrincipalRow {
    fn attributes(&self) -> StoredAttributes {
        let legacy = Principal {
            user_principal_name: self.user_principal_name.clone(),
            display_name: self.display_name.clone(),
            given_name: self.given_name.clone(),
            surname: self.surname.clone(),
            mail: self.mail.clone(),
        };
        StoredAttributes::from_stored(self.attributes.as_deref(), Some(&legacy))
    }
}

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

/// Deletes the group's rows whose key `listed` leaves out: `select` reads the group's keys,
/// `delete` removes one (group, key). Compared here, not in one statement: a listing can hold more
/// keys than SQLite takes parameters. Answers how many went.
async fn delete_unlisted(
    tx: &mut Tx,
    select: &'static str,
    delete: &'static str,
    group_id: &str,
    listed: &[String],
) -> StoreResult<u64> {
    let listed: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
    let stored: Vec<(String,)> = sqlx::query_as(select).bind(group_id).fetch_all(&mut **tx).await?;
    let mut gone = 0;
    for (key,) in stored.into_iter().filter(|(key,)| !listed.contains(key.as_str())) {
        gone += sqlx::query(delete)
            .bind(group_id)
            .bind(&key)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    }
    Ok(gone)
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

    /// A write transaction, in turn (see `write_turn`): hold the guard until it commits.
    async fn principal_row(&self, principal_id: &str) -> StoreResult<Option<PrincipalRow>> {
        Ok(sqlx::query_as(SELECT_PRINCIPAL)
            .bind(principal_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Commits a write, with the audit entry that records it if one is pending
    /// (`store::audited`): the change and its audit entry commit together or not at all.
    pub(super) async fn commit(&self, mut tx: Tx) -> StoreResult<()> {
        if let Some(e) = take_audit() {
            insert_audit!(self, &mut *tx, &e)?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn begin(&self) -> StoreResult<(tokio::sync::MutexGuard<'_, ()>, Tx)> {
        let turn = self.write_turn.lock().await;
        Ok((turn, self.pool.begin_with("BEGIN IMMEDIATE").await?))
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
        let mut results = Vec::with_capacity(group.len());
        for w in group {
            let mut answers = Vec::with_capacity(w.items.len());
            for (event, effect) in &w.items {
                answers.push(Self::accept_in(&mut tx, event, effect, w.now).await?);
            }
            results.push(answers);
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Takes what an event's (or the directory feed's) `principal` object carries, field by
    /// field, unless a newer event already set that field.
    async fn merge_principal(
        tx: &mut Tx,
        principal_id: &str,
        given: &Value,
        created: Millis,
        now: Millis,
    ) -> StoreResult<()> {
        let row: Option<PrincipalRow> = sqlx::query_as(SELECT_PRINCIPAL)
            .bind(principal_id)
            .fetch_optional(&mut **tx)
            .await?;
        let mut attributes = row.as_ref().map(PrincipalRow::attributes).unwrap_or_default();
        attributes.merge(given, created);
        let Some(p) = attributes.principal() else {
            return Ok(()); // nothing usable yet (no userPrincipalName ever seen)
        };
        sqlx::query(
            "INSERT INTO principals (principal_id, user_principal_name, display_name, given_name, surname, mail,
               updated_at, attributes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (principal_id) DO UPDATE SET user_principal_name = excluded.user_principal_name,
               display_name = excluded.display_name, given_name = excluded.given_name, surname = excluded.surname,
               mail = excluded.mail, updated_at = excluded.updated_at, attributes = excluded.attributes",
        )
        .bind(principal_id)
        .bind(&p.user_principal_name)
        .bind(&p.display_name)
        .bind(&p.given_name)
        .bind(&p.surname)
        .bind(&p.mail)
        .bind(now)
        .bind(attributes.to_json())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records one event, updates its membership and queues its jobs, inside the caller's
    /// transaction.
    async fn accept_in(tx: &mut Tx, event: &Event, effect: &Effect, now: Millis) -> StoreResult<Acceptance> {
        let existing: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, body FROM events WHERE id = ? AND status = ?")
                .bind(&event.id)
                .bind(&event.status)
                .fetch_optional(&mut **tx)
                .await?;
        if let Some((seq, body)) = existing {
            let stored: Value = serde_json::from_str(&body).map_err(|e| corrupt("event body", e))?;
            if stored != event.raw {
                return Ok(Acceptance::Conflict);
            }
            let jobs: Vec<(String, String)> =
                sqlx::query_as("SELECT id, app_id FROM jobs WHERE event_seq = ? ORDER BY seq")
                    .bind(seq)
                    .fetch_all(&mut **tx)
                    .await?;
            return Ok(Acceptance::Duplicate { jobs });
        }

        if let Some(given) = event.raw.get("principal").filter(|p| p.is_object()) {
            Self::merge_principal(tx, &event.principal_id, given, event.created_at, now).await?;
        }
        let state: Option<MembershipState> = sqlx::query_as(
            "SELECT active, start_at, end_at, event_created, grant_request_id FROM memberships
             WHERE principal_id = ? AND group_id = ? AND access_id = ?",
        )
        .bind(&event.principal_id)
        .bind(&event.group_id)
        .bind(&event.access_id)
        .fetch_optional(&mut **tx)
        .await?;
        let apps: Vec<AssignedApp> = sqlx::query_as(
            "SELECT a.id, a.name, a.next_sync_at FROM group_assignments ga JOIN apps a ON a.id = ga.app_id
             WHERE ga.group_id = ? AND a.deleted_at IS NULL AND a.status != 'deleting' ORDER BY a.id",
        )
        .bind(&event.group_id)
        .fetch_all(&mut **tx)
        .await?;
        let already_revoked = rules::grants(effect)
            && sqlx::query_scalar::<_, i64>("SELECT 1 FROM revoked_requests WHERE request_id = ?")
                .bind(&event.id)
                .fetch_optional(&mut **tx)
                .await?
                .is_some();
        let plan = rules::intake(event, effect, state.as_ref(), &apps, already_revoked, now);
        if rules::remembers_revocation(event) {
            sqlx::query(
                "INSERT INTO revoked_requests (request_id, principal_id, group_id, end_at, revoked_at)
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(&event.id)
            .bind(&event.principal_id)
            .bind(&event.group_id)
            .bind(rules::revocation_remembered_until(event, state.as_ref()))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }

        let event_seq = sqlx::query(
            "INSERT INTO events (id, status, body, action, access_id, principal_id, group_id, created_at, received_at,
             start_at, end_at, outcome, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&event.id)
        .bind(&event.status)
        .bind(event.raw.to_string())
        .bind(&event.action_name)
        .bind(&event.access_id)
        .bind(&event.principal_id)
        .bind(&event.group_id)
        .bind(event.created_at)
        .bind(now)
        .bind(event.start_at)
        .bind(event.end_at)
        .bind(plan.outcome)
        .bind(&plan.reason)
        .execute(&mut **tx)
        .await?
        .last_insert_rowid();

        match &plan.membership {
            None => {}
            Some(MembershipWrite::Set {
                active,
                source,
                start_at,
                end_at,
                grant_request_id,
            }) => {
                sqlx::query(
                    "INSERT INTO memberships (principal_id, group_id, access_id, active, source, start_at, end_at,
                       event_seq, event_created, expired_at, grant_request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)
                     ON CONFLICT (principal_id, group_id, access_id) DO UPDATE SET active = excluded.active,
                       source = excluded.source, start_at = excluded.start_at, end_at = excluded.end_at,
                       event_seq = excluded.event_seq, event_created = excluded.event_created, expired_at = NULL,
                       grant_request_id = excluded.grant_request_id",
                )
                .bind(&event.principal_id)
                .bind(&event.group_id)
                .bind(&event.access_id)
                .bind(active)
                .bind(source)
                .bind(start_at)
                .bind(end_at)
                .bind(event_seq)
                .bind(event.created_at)
                .bind(grant_request_id)
                .execute(&mut **tx)
                .await?;
            }
            Some(MembershipWrite::Extend { end_at, clear_expiry }) => {
                sqlx::query(
                    "UPDATE memberships SET end_at = ?, event_seq = ?, event_created = ?,
                       expired_at = CASE WHEN ? THEN NULL ELSE expired_at END
                     WHERE principal_id = ? AND group_id = ? AND access_id = ?",
                )
                .bind(end_at)
                .bind(event_seq)
                .bind(event.created_at)
                .bind(clear_expiry)
                .bind(&event.principal_id)
                .bind(&event.group_id)
                .bind(&event.access_id)
                .execute(&mut **tx)
                .await?;
            }
        }
        let mut jobs = Vec::with_capacity(plan.jobs.len());
        for job in &plan.jobs {
            let job_id = uuid::Uuid::now_v7().to_string();
            sqlx::query(INSERT_JOB)
                .bind(&job_id)
                .bind(&job.app_id)
                .bind(event_seq)
                .bind(&event.id)
                .bind(&event.principal_id)
                .bind(&event.group_id)
                .bind(job.kind)
                .bind(job.trigger)
                .bind("pending")
                .bind(job.not_before)
                .bind(now)
                .bind(None::<i64>)
                .bind(&job.flag)
                .bind(now)
                .bind(None::<String>)
                .bind(&event.traceparent)
                .execute(&mut **tx)
                .await?;
            jobs.push((job_id, job.app_id.clone()));
        }
        for entry in &plan.logs {
            insert_log!(Dialect::Sqlite, &mut **tx, entry)?;
        }
        for end in &plan.access_ends {
            insert_access_end!(Dialect::Sqlite, &mut **tx, end)?;
        }
        Ok(Acceptance::Accepted { jobs })
    }

    async fn set_member_in(
        tx: &mut Tx,
        app_id: &str,
        m: &TargetMember,
        change: MemberChange,
        now: Millis,
    ) -> StoreResult<()> {
        let sql = match change {
            MemberChange::Confirmed => {
                "INSERT INTO provisioned (app_id, target_display_name, principal_id, added_at, confirmed) VALUES (?, ?, ?, ?, 1)
                 ON CONFLICT (app_id, target_display_name, principal_id) DO UPDATE SET confirmed = 1"
            }
            MemberChange::InDoubt => {
                "INSERT INTO provisioned (app_id, target_display_name, principal_id, added_at, confirmed) VALUES (?, ?, ?, ?, 0)
                 ON CONFLICT DO NOTHING"
            }
            MemberChange::Gone => "DELETE FROM provisioned WHERE app_id = ? AND target_display_name = ? AND principal_id = ?",
        };
        let query = sqlx::query(sql)
            .bind(app_id)
            .bind(&m.target_display_name)
            .bind(&m.principal_id);
        let query = if change == MemberChange::Gone {
            query
        } else {
            query.bind(now)
        };
        query.execute(&mut **tx).await?;
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

    #[instrument(skip_all, fields(events = items.len()))]
    pub(super) async fn accept_events(&self, items: &[(Event, Effect)], now: Millis) -> StoreResult<Vec<Acceptance>> {
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

    pub(super) async fn get_event(&self, id: &str) -> StoreResult<Vec<StoredEvent>> {
        Ok(sqlx::query_as(
            "SELECT seq, id, status, body, received_at, outcome, reason FROM events WHERE id = ? ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn principal(&self, principal_id: &str) -> StoreResult<Option<Principal>> {
        let row = self.principal_row(principal_id).await?;
        Ok(row.and_then(|r| r.attributes().principal()))
    }

    pub(super) async fn principal_attributes(
        &self,
        principal_id: &str,
    ) -> StoreResult<Option<serde_json::Map<String, Value>>> {
        let row = self.principal_row(principal_id).await?;
        Ok(row.map(|r| r.attributes().values()))
    }

    pub(super) async fn put_standing_member(
        &self,
        group_id: &str,
        principal: &str,
        info: Option<&Principal>,
        now: Millis,
    ) -> StoreResult<()> {
        let (_turn, mut tx) = self.begin().await?;
        if let Some(p) = info {
            let given = serde_json::to_value(p).map_err(|e| corrupt("principal", e))?;
            Self::merge_principal(&mut tx, principal, &given, now, now).await?;
        }
        sqlx::query(
            "INSERT INTO standing_members (group_id, principal_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(group_id)
        .bind(principal)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub(super) async fn retain_standing_members(&self, group_id: &str, listed: &[String]) -> StoreResult<u64> {
        let (_turn, mut tx) = self.begin().await?;
        let gone = delete_unlisted(
            &mut tx,
            "SELECT principal_id FROM standing_members WHERE group_id = ?",
            "DELETE FROM standing_members WHERE group_id = ? AND principal_id = ?",
            group_id,
            listed,
        )
        .await?;
        self.commit(tx).await?;
        Ok(gone)
    }

    pub(super) async fn put_principal_attributes(
        &self,
        principal_id: &str,
        attributes: &Value,
        now: Millis,
    ) -> StoreResult<()> {
        let (_turn, mut tx) = self.begin().await?;
        Self::merge_principal(&mut tx, principal_id, attributes, now, now).await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub(super) async fn forget_requests_except(&self, group_id: &str, listed: &[String]) -> StoreResult<u64> {
        let (_turn, mut tx) = self.begin().await?;
        let gone = delete_unlisted(
            &mut tx,
            "SELECT DISTINCT request_id FROM source_seen_requests WHERE group_id = ?",
            "DELETE FROM source_seen_requests WHERE group_id = ? AND request_id = ?",
            group_id,
            listed,
        )
        .await?;
        self.commit(tx).await?;
        Ok(gone)
    }

    pub(super) async fn runnable_jobs(&self, app_id: &str, now: Millis, limit: i64) -> StoreResult<Vec<Job>> {
        Ok(sqlx::query_as(
            "SELECT j.* FROM jobs j WHERE j.app_id = ?1 AND j.state = 'pending' AND j.not_before <= ?2
               AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.app_id = j.app_id AND e.principal_id = j.principal_id
                 AND e.group_id = j.group_id AND e.seq < j.seq AND e.state = 'pending' AND e.not_before > ?2
                 AND NOT (j.kind = 'remove' AND e.kind = 'add') AND e.target_display_name IS NULL)
             ORDER BY j.seq LIMIT ?3",
        )
        .bind(app_id)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn next_job_time(&self, app_id: &str, now: Millis) -> StoreResult<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(not_before) FROM jobs WHERE app_id = ? AND state = 'pending' AND not_before > ?",
        )
        .bind(app_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn deferred_jobs(&self, app_id: &str) -> StoreResult<Vec<Job>> {
        Ok(sqlx::query_as(
            "SELECT * FROM jobs WHERE app_id = ? AND state = 'deferred'
             ORDER BY CASE kind WHEN 'remove' THEN 0 ELSE 1 END, seq",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn claim_job(&self, job_id: &str, now: Millis, admitted: bool) -> StoreResult<bool> {
        let claimed = sqlx::query(
            "UPDATE jobs SET state = 'in_flight', attempt = attempt + 1, updated_at = ?2,
               admitted_at = CASE WHEN ?3 THEN ?2 ELSE admitted_at END
             WHERE id = ?1 AND state IN ('pending', 'deferred')",
        )
        .bind(job_id)
        .bind(now)
        .bind(admitted)
        .execute(&self.pool)
        .await?;
        Ok(claimed.rows_affected() > 0)
    }

    pub(super) async fn admissions_since(&self, app_id: &str, since: Millis) -> StoreResult<Vec<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT admitted_at FROM jobs WHERE app_id = ? AND admitted_at >= ? ORDER BY admitted_at",
        )
        .bind(app_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn recover_in_flight(&self, app_id: &str, now: Millis) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "UPDATE jobs SET state = 'pending', flag = COALESCE(flag, 'outcome unknown'), updated_at = ?
             WHERE app_id = ? AND state = 'in_flight' RETURNING id",
        )
        .bind(now)
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn requeue_in_doubt(&self, job_id: &str, now: Millis) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'pending', flag = COALESCE(flag, 'outcome unknown'), updated_at = ?
             WHERE id = ? AND state = 'in_flight'",
        )
        .bind(now)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn retry_removals_now(&self, app_id: &str, now: Millis) -> StoreResult<u64> {
        Ok(sqlx::query(
            "UPDATE jobs SET not_before = ?2, updated_at = ?2
             WHERE app_id = ?1 AND kind = 'remove' AND state = 'pending' AND not_before > ?2",
        )
        .bind(app_id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub(super) async fn open_adds_for(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
        before_seq: i64,
    ) -> StoreResult<Vec<Job>> {
        Ok(sqlx::query_as(
            "SELECT * FROM jobs WHERE app_id = ? AND principal_id = ? AND group_id = ? AND kind = 'add'
             AND state IN ('pending', 'deferred') AND seq < ? ORDER BY seq",
        )
        .bind(app_id)
        .bind(principal_id)
        .bind(group_id)
        .bind(before_seq)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn insert_job(&self, job: &Job, now: Millis) -> StoreResult<()> {
        let (_turn, mut tx) = self.begin().await?;
        insert_job_in(&mut tx, job, None, now).await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub(super) async fn membership_active(&self, principal_id: &str, group_id: &str, now: Millis) -> StoreResult<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM memberships WHERE principal_id = ? AND group_id = ? AND access_id = 'member' AND active = 1
             AND (end_at IS NULL OR end_at > ?)",
        )
        .bind(principal_id)
        .bind(group_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    pub(super) async fn entitled_via(
        &self,
        app_id: &str,
        target: &str,
        principal_id: &str,
        now: Millis,
    ) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(ENTITLED_VIA)
            .bind(app_id)
            .bind(target)
            .bind(principal_id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?)
    }

    #[instrument(skip_all)]
    pub(super) async fn expire_due(&self, now: Millis) -> StoreResult<Vec<String>> {
        #[derive(sqlx::FromRow)]
        struct Due {
            principal_id: String,
            group_id: String,
            access_id: String,
            end_at: Millis,
            event_seq: i64,
        }
        let (_turn, mut tx) = self.begin().await?;
        let due: Vec<Due> = sqlx::query_as(
            "UPDATE memberships SET active = 0, expired_at = ?1
             WHERE active = 1 AND expired_at IS NULL AND end_at IS NOT NULL AND end_at <= ?1
             RETURNING principal_id, group_id, access_id, end_at, event_seq",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut woken = Vec::new();
        for m in due.iter().filter(|m| m.access_id == "member") {
            let event_id: Option<String> = sqlx::query_scalar("SELECT id FROM events WHERE seq = ?")
                .bind(m.event_seq)
                .fetch_optional(&mut *tx)
                .await?;
            let apps: Vec<String> = sqlx::query_scalar(
                "SELECT ga.app_id FROM group_assignments ga JOIN apps a ON a.id = ga.app_id
                 WHERE ga.group_id = ? AND a.deleted_at IS NULL",
            )
            .bind(&m.group_id)
            .fetch_all(&mut *tx)
            .await?;
            for app_id in apps {
                let job = Job {
                    seq: 0,
                    id: uuid::Uuid::now_v7().to_string(),
                    app_id: app_id.clone(),
                    event_id: event_id.clone(),
                    principal_id: m.principal_id.clone(),
                    group_id: m.group_id.clone(),
                    kind: "remove".into(),
                    trigger: "expiry".into(),
                    state: "pending".into(),
                    not_before: now,
                    received_at: m.end_at,
                    deferred_until: None,
                    attempt: 0,
                    flag: None,
                    admitted_at: None,
                    // No target group of its own: it removes where the event's group put the member.
                    target_display_name: None,
                    trace_context: None,
                };
                insert_job_in(&mut tx, &job, Some(m.event_seq), now).await?;
                let end = rules::access_end(
                    &app_id,
                    &m.principal_id,
                    None,
                    &m.group_id,
                    event_id.clone(),
                    "expiry",
                    m.end_at,
                    now,
                );
                insert_access_end!(self, &mut *tx, &end)?;
                if !woken.contains(&app_id) {
                    woken.push(app_id);
                }
            }
        }
        self.commit(tx).await?;
        Ok(woken)
    }

    pub(super) async fn next_expiry(&self) -> StoreResult<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(end_at) FROM memberships WHERE active = 1 AND expired_at IS NULL AND end_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    #[instrument(skip_all, fields(app_id = %o.app_id))]
    pub(super) async fn record(&self, o: &Outcome) -> StoreResult<()> {
        let now = o.time;
        let (_turn, mut tx) = self.begin().await?;
        for (job_id, change) in &o.jobs {
            let (state, not_before, deferred_until) = match change {
                JobChange::Done => ("done", None, None),
                JobChange::Failed => ("failed", None, None),
                JobChange::Cancelled => ("cancelled", None, None),
                JobChange::Deferred { until } => ("deferred", None, Some(*until)),
                JobChange::Retry { at } => ("pending", Some(*at), None),
            };
            sqlx::query(
                "UPDATE jobs SET state = ?, not_before = COALESCE(?, not_before),
                   deferred_until = COALESCE(?, deferred_until), updated_at = ? WHERE id = ?",
            )
            .bind(state)
            .bind(not_before)
            .bind(deferred_until)
            .bind(now)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        }
        for (member, change) in &o.members {
            Self::set_member_in(&mut tx, &o.app_id, member, *change, now).await?;
        }
        for (member, group_id) in &o.sources {
            sqlx::query(
                "UPDATE provisioned SET group_id = ? WHERE app_id = ? AND target_display_name = ? AND principal_id = ?",
            )
            .bind(group_id)
            .bind(&o.app_id)
            .bind(&member.target_display_name)
            .bind(&member.principal_id)
            .execute(&mut *tx)
            .await?;
        }
        for job in &o.new_jobs {
            insert_job_in(&mut tx, job, None, now).await?;
        }
        for entry in &o.logs {
            insert_log!(self, &mut *tx, entry)?;
        }
        for change in &o.access_ends {
            settle_access_ends!(self, &mut *tx, &o.app_id, change, now);
        }
        // A member gone from its target group ends the access its open ends measure (SPEC §8).
        for (member, _) in o.members.iter().filter(|(_, change)| *change == MemberChange::Gone) {
            settle_removed!(
                self,
                &mut *tx,
                &o.app_id,
                member,
                o.end_action.unwrap_or("remove_member"),
                now
            );
        }
        if let Some(cycle) = &o.cycle {
            for member in &o.hold {
                hold_removal!(self, &mut *tx, &o.app_id, member, &cycle.id, now)?;
            }
        }
        for member in &o.release {
            release_held!(self, &mut *tx, &o.app_id, member, now)?;
        }
        if o.cycle.as_ref().is_some_and(|c| c.ended_at.is_some()) {
            // What the cycle left in place because something still entitles it was kept.
            settle_kept!(self, &mut *tx, &o.app_id, now)?;
        }
        if let Some(c) = &o.cycle {
            sqlx::query(
                "UPDATE sync_cycles SET ended_at = ?, status = ?, counts = ?, progress = ?, report = ? WHERE id = ?",
            )
            .bind(c.ended_at)
            .bind(&c.status)
            .bind(to_json(&c.counts))
            .bind(&c.progress)
            .bind(c.report.as_ref().map(Value::to_string))
            .bind(&c.id)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(at) = o.next_sync_at {
            sqlx::query("UPDATE apps SET next_sync_at = ? WHERE id = ?")
                .bind(at)
                .bind(&o.app_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((status, reason, level)) = &o.status {
            sqlx::query("UPDATE apps SET status = ?, status_reason = ?, quarantine_level = ? WHERE id = ?")
                .bind(status)
                .bind(reason)
                .bind(level)
                .bind(&o.app_id)
                .execute(&mut *tx)
                .await?;
        }
        if o.legacy_remove {
            sqlx::query("UPDATE apps SET legacy_remove = 1 WHERE id = ?")
                .bind(&o.app_id)
                .execute(&mut *tx)
                .await?;
        }
        self.commit(tx).await?;
        Ok(())
    }

    pub(super) async fn purge_records(&self, now: Millis, older_than: Millis, batch: i64) -> StoreResult<u64> {
        let (_turn, mut tx) = self.begin().await?;
        let mut purged = 0;
        // Finished jobs first: their events may then go too.
        purged += sqlx::query(
            "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE state IN ('done', 'failed', 'cancelled')
               AND updated_at < ? ORDER BY seq LIMIT ?)",
        )
        .bind(older_than)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Ended memberships: not active, ended before the cutoff, no open job for the pair.
        purged += sqlx::query(
            "DELETE FROM memberships WHERE rowid IN (SELECT m.rowid FROM memberships m
               WHERE m.active = 0 AND COALESCE(m.end_at, 0) < ?1
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.principal_id = m.principal_id
                   AND j.group_id = m.group_id AND j.state IN ('pending', 'in_flight', 'deferred'))
               LIMIT ?2)",
        )
        .bind(older_than)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Events (their bodies hold names and mail addresses) that nothing points to any more.
        purged += sqlx::query(
            "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e WHERE e.received_at < ?1
               AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.event_seq = e.seq)
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_seq = e.seq)
               ORDER BY e.seq LIMIT ?2)",
        )
        .bind(older_than)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        purged += sqlx::query(
            "DELETE FROM sync_cycles WHERE id IN (SELECT id FROM sync_cycles WHERE ended_at IS NOT NULL
               AND ended_at < ? LIMIT ?)",
        )
        .bind(older_than)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Revoked request ids whose scheduled end has passed (no end: once the pair has no
        // membership state left), whatever the retention period.
        purged += sqlx::query(
            "DELETE FROM revoked_requests WHERE request_id IN (SELECT r.request_id FROM revoked_requests r
               WHERE (r.end_at IS NOT NULL AND r.end_at <= ?1)
                  OR (r.end_at IS NULL AND NOT EXISTS (SELECT 1 FROM memberships m
                        WHERE m.principal_id = r.principal_id AND m.group_id = r.group_id))
               LIMIT ?2)",
        )
        .bind(now)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // What was last sent to an app for a principal nothing refers to any more (a link to a
        // user the bridge disabled stays until its app is deleted; a deleted app's links go).
        purged += sqlx::query(
            "DELETE FROM target_users WHERE rowid IN (SELECT t.rowid FROM target_users t
               JOIN apps a ON a.id = t.app_id
               WHERE a.deleted_at IS NOT NULL
                  OR (t.disabled = 0
                      AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.principal_id = t.principal_id)
                      AND NOT EXISTS (SELECT 1 FROM standing_members s WHERE s.principal_id = t.principal_id)
                      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.principal_id = t.principal_id
                                        AND j.state IN ('pending', 'in_flight', 'deferred'))
                      AND NOT EXISTS (SELECT 1 FROM provisioned p WHERE p.app_id = t.app_id
                                        AND p.principal_id = t.principal_id)
                      AND NOT EXISTS (SELECT 1 FROM revoked_requests r WHERE r.principal_id = t.principal_id))
               LIMIT ?1)",
        )
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Principals (names, mail, mapped attributes) nothing refers to any more.
        purged += sqlx::query(
            "DELETE FROM principals WHERE principal_id IN (SELECT p.principal_id FROM principals p
               WHERE p.updated_at < ?1
                 AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.principal_id = p.principal_id)
                 AND NOT EXISTS (SELECT 1 FROM standing_members s WHERE s.principal_id = p.principal_id)
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.principal_id = p.principal_id
                                   AND j.state IN ('pending', 'in_flight', 'deferred'))
                 AND NOT EXISTS (SELECT 1 FROM provisioned v JOIN apps a ON a.id = v.app_id
                                   WHERE v.principal_id = p.principal_id AND a.deleted_at IS NULL)
                 AND NOT EXISTS (SELECT 1 FROM revoked_requests r WHERE r.principal_id = p.principal_id)
                 AND NOT EXISTS (SELECT 1 FROM target_users t WHERE t.principal_id = p.principal_id)
               LIMIT ?2)",
        )
        .bind(older_than)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.commit(tx).await?;
        Ok(purged)
    }

    pub(super) async fn deferred_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(
            sqlx::query_as("SELECT app_id, COUNT(*) FROM jobs WHERE state = 'deferred' GROUP BY app_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, principal: &str, now: Millis) -> (Event, Effect) {
        let now = crate::clock::to_rfc3339(now);
        let raw = serde_json::json!({
            "id": id, "action": "selfActivate", "accessId": "member", "principalId": principal,
            "groupId": "g-1", "status": "Provisioned", "createdDateTime": now,
            "scheduleInfo": {"startDateTime": now, "expiration": {"type": "afterDuration", "duration": "PT2H"}},
            "principal": {"userPrincipalName": format!("{principal}@example.test")},
        });
        let event = crate::activation::parse(&raw).expect("a valid event");
        let effect = crate::activation::judge(&event, chrono::Utc::now().timestamp_millis()).expect("within the rules");
        (event, effect)
    }

    /// Concurrent webhooks are committed in groups, each answered as if alone: every event is
    /// stored once, and of two copies of one event sent at once, one is accepted and one is a
    /// duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_webhooks_committed_together_are_each_answered_as_if_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteDb::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            // Events 0..100 are sent twice, at once.
            let id = format!("event-{}", i % 100);
            let principal = format!("p-{}", i % 100);
            tasks.push(tokio::spawn(async move {
                store.accept_events(&[event(&id, &principal, now)], now).await
            }));
        }
        let mut accepted = 0;
        let mut duplicates = 0;
        for t in tasks {
            match t.await.unwrap().expect("committed").as_slice() {
                [Acceptance::Accepted { .. }] => accepted += 1,
                [Acceptance::Duplicate { .. }] => duplicates += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert_eq!((accepted, duplicates), (100, 100));
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(stored, 100);
    }

    /// The webhook whose turn commits a group can be dropped mid-commit (its client went away):
    /// the others in the group are still committed and answered, and so is its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_commit_goes_on_when_the_webhook_that_leads_it_is_dropped() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Arc::new(SqliteDb::open(&format!("sqlite://{}", path.display())).await.unwrap());
        store.migrate().await.unwrap();
        let now = chrono::Utc::now().timestamp_millis();

        // Both webhooks queue while the turn is taken, so that the first commits them together.
        let turn = store.write_turn.clone().lock_owned().await;
        let accept = |id: &'static str| {
            let store = store.clone();
            tokio::spawn(async move { store.accept_events(&[event(id, id, now)], now).await })
        };
        let leader = accept("leader");
        while store.intake.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let follower = accept("follower");
        while store.intake.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        // Another writer holds the database, so the group's commit waits once it has begun.
        let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await.unwrap();
        drop(turn);
        while !store.intake.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // The leader took the group: its request goes away.
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

        match follower.await.unwrap().expect("the follower is committed").as_slice() {
            [Acceptance::Accepted { .. }] => {}
            other => panic!("unexpected answer {other:?}"),
        }
        let mut stored: Vec<String> = sqlx::query_scalar("SELECT id FROM events")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        stored.sort();
        assert_eq!(stored, ["follower", "leader"]);
    }
}
