//! The shared store: PostgreSQL, for several replicas on one database. Times are `timestamptz`
//! and app ids `uuid` in the tables; the store trait speaks unix milliseconds and strings, so
//! every query converts at the boundary with the SQL functions `from_ms` and `to_ms` (see
//! `migrations/postgres/0001_init.sql`) and `::uuid` / `::text` casts (the fragments of
//! `store::dialect`). This file holds what only PostgreSQL does (see `dialect`) and the methods
//! not yet written once for both databases in their aggregate's file; what a transaction contains
//! is decided in `crate::rules` and by the engine, exactly as for SQLite.
//!
//! Several replicas share it: the leases and the fencing check of every write done under one
//! are in `begin` and the lease methods at the end; new work is announced with `pg_notify` on
//! `WORK_CHANNEL`, inside the transaction that commits it.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use tracing::instrument;

use super::access_ends::{insert_access_end, settle_access_ends, settle_kept, settle_removed};
use super::audit::insert_audit;
use super::dialect::Dialect;
use super::held::{hold_removal, release_held};
use super::logs::insert_log;
use super::*;
use crate::rules::{self, AssignedApp, MembershipState, MembershipWrite, StoredAttributes};

pub struct PostgresDb {
    pub(super) pool: PgPool,
}

type Tx = Transaction<'static, Postgres>;

/// The channel on which new work is announced to the replicas (`Store::notify_work`).
const WORK_CHANNEL: &str = "scim_bridge_work";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// An app id as the `uuid` column holds it, or `None` for a string that no stored app can have
/// (not a uuid, or not in its canonical lowercase form, which is all the API hands out): the
/// query is not sent, so a made-up id finds nothing instead of failing the cast, as in SQLite.
fn app_key(id: &str) -> Option<&str> {
    uuid::Uuid::parse_str(id)
        .ok()
        .filter(|u| u.hyphenated().to_string() == id)
        .map(|_| id)
}

// Column lists that turn a row into the trait's types: milliseconds for times, text for uuids.
macro_rules! job_columns {
    () => {
        "seq, id, app_id::text AS app_id, event_id, principal_id, group_id, kind, trigger, state,
         to_ms(not_before) AS not_before, to_ms(received_at) AS received_at, to_ms(deferred_until) AS deferred_until,
         attempt, flag, to_ms(admitted_at) AS admitted_at, target_display_name, trace_context"
    };
}

const INSERT_JOB: &str = "INSERT INTO jobs (id, app_id, event_seq, event_id, principal_id, group_id, kind, trigger,
    state, not_before, received_at, deferred_until, attempt, flag, updated_at, target_display_name, trace_context)
    VALUES ($1, $2::uuid, $3, $4, $5, $6, $7, $8, $9, from_ms($10), from_ms($11), from_ms($12), 0, $13, from_ms($14), $15, $16)";

/// Inserts a job: one no event brought (on-demand provisioning, a removal a cycle step handed on;
/// `event_seq` `None`) or an expiry's removal (the membership's event).
async fn insert_job_in(
    conn: &mut sqlx::PgConnection,
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
    WHERE ga.app_id = $1::uuid AND ga.target_display_name = $2 AND (
      EXISTS (SELECT 1 FROM standing_members s WHERE s.group_id = ga.group_id AND s.principal_id = $3)
      OR EXISTS (SELECT 1 FROM memberships m WHERE m.group_id = ga.group_id AND m.principal_id = $3
                 AND m.access_id = 'member' AND m.active
                 AND (m.start_at IS NULL OR m.start_at <= from_ms($4)) AND (m.end_at IS NULL OR m.end_at > from_ms($4))))
    LIMIT 1";

/// A principal's row: the classic columns and the attributes with their times.
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

const SELECT_PRINCIPAL: &str = "SELECT user_principal_name, display_name, given_name, surname, mail,
    attributes::text AS attributes FROM principals WHERE principal_id = $1";

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
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// Begins a write. Inside work done under a lease (`crate::lease::scope`) the lease row must
    /// still carry this holder and token: it is locked (`FOR SHARE`) until the write commits, so
    /// no other replica can take the lease over between the check and the commit. A replica that
    /// lost the lease writes nothing (`StoreError::Fenced`).
    pub(super) async fn begin(&self) -> StoreResult<Tx> {
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = crate::lease::current() {
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

    /// Commits a write, with the audit entry that records it if one is pending
    /// (`store::audited`): the change and its audit entry commit together or not at all.
    pub(super) async fn commit(&self, mut tx: Tx) -> StoreResult<()> {
        let audit = take_audit();
        if let Some(e) = &audit {
            insert_audit!(self, &mut *tx, e)?;
        }
        tx.commit().await?;
        if audit.is_some() {
            self.order_commits().await;
        }
        Ok(())
    }

    /// Runs `delete` (`... WHERE group_id = $1 AND NOT (<key> = ANY($2))`: the group's rows that
    /// `listed` leaves out) as one fenced write; answers how many went.
    async fn delete_unlisted(&self, delete: &'static str, group_id: &str, listed: &[String]) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let gone = sqlx::query(delete)
            .bind(group_id)
            .bind(listed)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(gone)
    }

    /// Numbers the log and audit entries committed so far in commit order (the paging cursor);
    /// see `assign_commit_order` in the migration. Runs in a transaction of its own, so it is
    /// called after the writer's commit; a failure here loses nothing (the next call numbers
    /// them), so it is only logged.
    pub(super) async fn order_commits(&self) {
        if let Err(e) = sqlx::query("SELECT assign_commit_order()").execute(&self.pool).await {
            tracing::warn!(error = %e, "numbering committed log entries failed; the next write or read does it");
        }
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

    /// Requests of one app take turns, as SQLite's single writer makes them: the merge in
    /// `request_cycle` must see a request another replica is adding.
    pub(super) async fn lock_cycle_requests(&self, tx: &mut Tx, app_id: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('cycle request'), hashtext($1))")
            .bind(app_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Locks the principal for a write outside `accept_events` (which locks the same key with
    /// its others): two writers merging into one principal take turns, also while it has no row
    /// yet (a row lock alone locks nothing then), so the directory feed and webhooks take turns.
    async fn lock_principal(tx: &mut Tx, principal_id: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('principal' || chr(10) || $1, 0))")
            .bind(principal_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Takes what an event's (or the directory feed's) `principal` object carries, field by
    /// field, unless a newer event already set that field. The caller holds the principal's lock
    /// (`lock_principal`, or `accept_events`' keys).
    async fn merge_principal(
        tx: &mut Tx,
        principal_id: &str,
        given: &Value,
        created: Millis,
        now: Millis,
    ) -> StoreResult<()> {
        let row: Option<PrincipalRow> = sqlx::query_as(
            "SELECT user_principal_name, display_name, given_name, surname, mail, attributes::text AS attributes
             FROM principals WHERE principal_id = $1 FOR UPDATE",
        )
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
               updated_at, attributes) VALUES ($1, $2, $3, $4, $5, $6, from_ms($7), $8::jsonb)
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
        let existing: Option<(i64, Json<Value>)> =
            sqlx::query_as("SELECT seq, body FROM events WHERE id = $1 AND status = $2")
                .bind(&event.id)
                .bind(&event.status)
                .fetch_optional(&mut **tx)
                .await?;
        if let Some((seq, Json(stored))) = existing {
            if stored != event.raw {
                return Ok(Acceptance::Conflict);
            }
            let jobs: Vec<(String, String)> =
                sqlx::query_as("SELECT id, app_id::text FROM jobs WHERE event_seq = $1 ORDER BY seq")
                    .bind(seq)
                    .fetch_all(&mut **tx)
                    .await?;
            return Ok(Acceptance::Duplicate { jobs });
        }

        if let Some(given) = event.raw.get("principal").filter(|p| p.is_object()) {
            Self::merge_principal(tx, &event.principal_id, given, event.created_at, now).await?;
        }
        // The row is locked as it is read: the expiry (`expire_due`, which claims rows with row
        // locks) and this event then take turns on it, so an extension is judged against the
        // state the expiry left, never applied to a row the expiry ended meanwhile.
        let state: Option<MembershipState> = sqlx::query_as(
            "SELECT active, to_ms(start_at) AS start_at, to_ms(end_at) AS end_at, to_ms(event_created) AS event_created,
               grant_request_id FROM memberships
             WHERE principal_id = $1 AND group_id = $2 AND access_id = $3 FOR UPDATE",
        )
        .bind(&event.principal_id)
        .bind(&event.group_id)
        .bind(&event.access_id)
        .fetch_optional(&mut **tx)
        .await?;
        let apps: Vec<AssignedApp> = sqlx::query_as(
            "SELECT a.id::text AS id, a.name, to_ms(a.next_sync_at) AS next_sync_at
             FROM group_assignments ga JOIN apps a ON a.id = ga.app_id
             WHERE ga.group_id = $1 AND a.deleted_at IS NULL AND a.status != 'deleting' ORDER BY a.id",
        )
        .bind(&event.group_id)
        .fetch_all(&mut **tx)
        .await?;
        let already_revoked = rules::grants(effect)
            && sqlx::query_scalar::<_, i32>("SELECT 1 FROM revoked_requests WHERE request_id = $1")
                .bind(&event.id)
                .fetch_optional(&mut **tx)
                .await?
                .is_some();
        let plan = rules::intake(event, effect, state.as_ref(), &apps, already_revoked, now);
        if rules::remembers_revocation(event) {
            sqlx::query(
                "INSERT INTO revoked_requests (request_id, principal_id, group_id, end_at, revoked_at)
                 VALUES ($1, $2, $3, from_ms($4), from_ms($5)) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(&event.id)
            .bind(&event.principal_id)
            .bind(&event.group_id)
            .bind(rules::revocation_remembered_until(event, state.as_ref()))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }

        let event_seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (id, status, body, action, access_id, principal_id, group_id, created_at, received_at,
             start_at, end_at, outcome, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, from_ms($8), from_ms($9), from_ms($10), from_ms($11), $12, $13)
             RETURNING seq",
        )
        .bind(&event.id)
        .bind(&event.status)
        .bind(Json(&event.raw))
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
        .fetch_one(&mut **tx)
        .await?;

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
                       event_seq, event_created, expired_at, grant_request_id)
                     VALUES ($1, $2, $3, $4, $5, from_ms($6), from_ms($7), $8, from_ms($9), NULL, $10)
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
                    "UPDATE memberships SET end_at = from_ms($1), event_seq = $2, event_created = from_ms($3),
                       expired_at = CASE WHEN $4 THEN NULL ELSE expired_at END
                     WHERE principal_id = $5 AND group_id = $6 AND access_id = $7",
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
            insert_log!(Dialect::Postgres, &mut **tx, entry)?;
        }
        for end in &plan.access_ends {
            insert_access_end!(Dialect::Postgres, &mut **tx, end)?;
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
                "INSERT INTO provisioned (app_id, target_display_name, principal_id, added_at, confirmed)
                 VALUES ($1::uuid, $2, $3, from_ms($4), true)
                 ON CONFLICT (app_id, target_display_name, principal_id) DO UPDATE SET confirmed = true"
            }
            MemberChange::InDoubt => {
                "INSERT INTO provisioned (app_id, target_display_name, principal_id, added_at, confirmed)
                 VALUES ($1::uuid, $2, $3, from_ms($4), false)
                 ON CONFLICT DO NOTHING"
            }
            MemberChange::Gone => {
                "DELETE FROM provisioned WHERE app_id = $1::uuid AND target_display_name = $2 AND principal_id = $3"
            }
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
impl PostgresDb {
    pub(super) async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/postgres").run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    #[instrument(skip_all, fields(events = items.len()))]
    pub(super) async fn accept_events(&self, items: &[(Event, Effect)], now: Millis) -> StoreResult<Vec<Acceptance>> {
        // One transaction per webhook: each event is still judged alone, and 202 means all committed.
        let mut tx = self.begin().await?;
        // SQLite runs one writer at a time; here webhooks commit side by side, so what they share
        // is locked first: the event's (id, status), whose second copy must find the first
        // committed, and the membership and principal an event judges and updates, which must see
        // what an earlier event wrote. All of a webhook's locks are taken at once, in one order,
        // so two webhooks never wait on each other in a circle.
        let mut keys = Vec::with_capacity(items.len() * 3);
        for (e, _) in items {
            keys.push(format!("event\n{}\n{}", e.id, e.status));
            keys.push(format!(
                "membership\n{}\n{}\n{}",
                e.principal_id, e.group_id, e.access_id
            ));
            keys.push(format!("principal\n{}", e.principal_id));
        }
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM (
               SELECT DISTINCT hashtextextended(key, 0) AS k FROM unnest($1::text[]) AS key ORDER BY k) keys",
        )
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
        let mut answers = Vec::with_capacity(items.len());
        for (event, effect) in items {
            answers.push(Self::accept_in(&mut tx, event, effect, now).await?);
        }
        // The replicas that dispatch for these apps hear of the work when it commits; the one
        // that runs the timers hears of every accepted event, since one may have moved an end
        // closer (a shortened extension queues no job, but its expiry is due sooner).
        let any_accepted = answers.iter().any(|a| matches!(a, Acceptance::Accepted { .. }));
        let mut wakes: Vec<String> = answers
            .iter()
            .filter_map(|a| match a {
                Acceptance::Accepted { jobs } => Some(jobs),
                _ => None,
            })
            .flatten()
            .map(|(_, app_id)| format!("app:{app_id}"))
            .collect();
        if any_accepted {
            wakes.sort();
            wakes.dedup();
            wakes.push("expiry".into());
            sqlx::query("SELECT pg_notify($1, w) FROM unnest($2::text[]) AS w")
                .bind(WORK_CHANNEL)
                .bind(&wakes)
                .execute(&mut *tx)
                .await?;
        }
        self.commit(tx).await?;
        self.order_commits().await;
        Ok(answers)
    }

    pub(super) async fn get_event(&self, id: &str) -> StoreResult<Vec<StoredEvent>> {
        Ok(sqlx::query_as(
            "SELECT seq, id, status, body, to_ms(received_at) AS received_at, outcome, reason FROM events
             WHERE id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn principal(&self, principal_id: &str) -> StoreResult<Option<Principal>> {
        let row: Option<PrincipalRow> = sqlx::query_as(SELECT_PRINCIPAL)
            .bind(principal_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| r.attributes().principal()))
    }

    pub(super) async fn principal_attributes(
        &self,
        principal_id: &str,
    ) -> StoreResult<Option<serde_json::Map<String, Value>>> {
        let row: Option<PrincipalRow> = sqlx::query_as(SELECT_PRINCIPAL)
            .bind(principal_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.attributes().values()))
    }

    pub(super) async fn put_standing_member(
        &self,
        group_id: &str,
        principal: &str,
        info: Option<&Principal>,
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        if let Some(p) = info {
            let given = serde_json::to_value(p).map_err(|e| corrupt("principal", e))?;
            Self::lock_principal(&mut tx, principal).await?;
            Self::merge_principal(&mut tx, principal, &given, now, now).await?;
        }
        sqlx::query(
            "INSERT INTO standing_members (group_id, principal_id, created_at) VALUES ($1, $2, from_ms($3))
             ON CONFLICT DO NOTHING",
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
        self.delete_unlisted(
            "DELETE FROM standing_members WHERE group_id = $1 AND NOT (principal_id = ANY($2))",
            group_id,
            listed,
        )
        .await
    }

    pub(super) async fn runnable_jobs(&self, app_id: &str, now: Millis, limit: i64) -> StoreResult<Vec<Job>> {
        let Some(app_id) = app_key(app_id) else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs j WHERE j.app_id = $1::uuid AND j.state = 'pending' AND j.not_before <= from_ms($2)
               AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.app_id = j.app_id AND e.principal_id = j.principal_id
                 AND e.group_id = j.group_id AND e.seq < j.seq AND e.state = 'pending' AND e.not_before > from_ms($2)
                 AND NOT (j.kind = 'remove' AND e.kind = 'add') AND e.target_display_name IS NULL)
             ORDER BY j.seq LIMIT $3"
        ))
        .bind(app_id)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn next_job_time(&self, app_id: &str, now: Millis) -> StoreResult<Option<Millis>> {
        let Some(app_id) = app_key(app_id) else {
            return Ok(None);
        };
        Ok(sqlx::query_scalar(
            "SELECT to_ms(MIN(not_before)) FROM jobs WHERE app_id = $1::uuid AND state = 'pending'
             AND not_before > from_ms($2)",
        )
        .bind(app_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn deferred_jobs(&self, app_id: &str) -> StoreResult<Vec<Job>> {
        let Some(app_id) = app_key(app_id) else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE app_id = $1::uuid AND state = 'deferred'
             ORDER BY CASE kind WHEN 'remove' THEN 0 ELSE 1 END, seq"
        ))
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn claim_job(&self, job_id: &str, now: Millis, admitted: bool) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        // The row lock taken here is the claim: a concurrent writer of the job (an app deletion
        // cancelling it) is waited for, as SQLite's single writer would be, and a job it
        // cancelled is not claimed.
        let claimed = sqlx::query(
            "UPDATE jobs SET state = 'in_flight', attempt = attempt + 1, updated_at = from_ms($2),
               admitted_at = CASE WHEN $3 THEN from_ms($2) ELSE admitted_at END
             WHERE id = $1 AND state IN ('pending', 'deferred')",
        )
        .bind(job_id)
        .bind(now)
        .bind(admitted)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(claimed.rows_affected() > 0)
    }

    pub(super) async fn admissions_since(&self, app_id: &str, since: Millis) -> StoreResult<Vec<Millis>> {
        let Some(app_id) = app_key(app_id) else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query_scalar(
            "SELECT to_ms(admitted_at) FROM jobs WHERE app_id = $1::uuid AND admitted_at >= from_ms($2)
             ORDER BY admitted_at",
        )
        .bind(app_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn recover_in_flight(&self, app_id: &str, now: Millis) -> StoreResult<Vec<String>> {
        let mut tx = self.begin().await?;
        let Some(app_id) = app_key(app_id) else {
            return Ok(Vec::new());
        };
        let answer = sqlx::query_scalar(
            "UPDATE jobs SET state = 'pending', flag = COALESCE(flag, 'outcome unknown'), updated_at = from_ms($1)
             WHERE app_id = $2::uuid AND state = 'in_flight' RETURNING id",
        )
        .bind(now)
        .bind(app_id)
        .fetch_all(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(answer)
    }

    pub(super) async fn requeue_in_doubt(&self, job_id: &str, now: Millis) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE jobs SET state = 'pending', flag = COALESCE(flag, 'outcome unknown'), updated_at = from_ms($1)
             WHERE id = $2 AND state = 'in_flight'",
        )
        .bind(now)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub(super) async fn retry_removals_now(&self, app_id: &str, now: Millis) -> StoreResult<u64> {
        let Some(app_id) = app_key(app_id) else {
            return Ok(0);
        };
        let mut tx = self.begin().await?;
        let moved = sqlx::query(
            "UPDATE jobs SET not_before = from_ms($2), updated_at = from_ms($2)
             WHERE app_id = $1::uuid AND kind = 'remove' AND state = 'pending' AND not_before > from_ms($2)",
        )
        .bind(app_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.commit(tx).await?;
        Ok(moved)
    }

    pub(super) async fn open_adds_for(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
        before_seq: i64,
    ) -> StoreResult<Vec<Job>> {
        let Some(app_id) = app_key(app_id) else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE app_id = $1::uuid AND principal_id = $2 AND group_id = $3 AND kind = 'add'
             AND state IN ('pending', 'deferred') AND seq < $4 ORDER BY seq"
        ))
        .bind(app_id)
        .bind(principal_id)
        .bind(group_id)
        .bind(before_seq)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn insert_job(&self, job: &Job, now: Millis) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        insert_job_in(&mut tx, job, None, now).await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub(super) async fn membership_active(&self, principal_id: &str, group_id: &str, now: Millis) -> StoreResult<bool> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM memberships WHERE principal_id = $1 AND group_id = $2 AND access_id = 'member' AND active
             AND (end_at IS NULL OR end_at > from_ms($3))",
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
        let Some(app_id) = app_key(app_id) else {
            return Ok(None);
        };
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
        let mut tx = self.begin().await?;
        // A claim: memberships another replica is expiring right now, or a webhook is judging
        // (`accept_in` reads the row `FOR UPDATE` until it commits), are skipped and expire at a
        // later pass if still due; the `expired_at IS NULL` condition keeps one expiry from
        // queuing twice.
        let due: Vec<Due> = sqlx::query_as(
            "UPDATE memberships m SET active = false, expired_at = from_ms($1)
             FROM (SELECT principal_id, group_id, access_id FROM memberships
                   WHERE active AND expired_at IS NULL AND end_at IS NOT NULL AND end_at <= from_ms($1)
                   FOR UPDATE SKIP LOCKED) d
             WHERE m.principal_id = d.principal_id AND m.group_id = d.group_id AND m.access_id = d.access_id
             RETURNING m.principal_id, m.group_id, m.access_id, to_ms(m.end_at) AS end_at, m.event_seq",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut woken = Vec::new();
        for m in due.iter().filter(|m| m.access_id == "member") {
            let event_id: Option<String> = sqlx::query_scalar("SELECT id FROM events WHERE seq = $1")
                .bind(m.event_seq)
                .fetch_optional(&mut *tx)
                .await?;
            let apps: Vec<String> = sqlx::query_scalar(
                "SELECT ga.app_id::text FROM group_assignments ga JOIN apps a ON a.id = ga.app_id
                 WHERE ga.group_id = $1 AND a.deleted_at IS NULL",
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
            "SELECT to_ms(MIN(end_at)) FROM memberships WHERE active AND expired_at IS NULL AND end_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    #[instrument(skip_all, fields(app_id = %o.app_id))]
    pub(super) async fn record(&self, o: &Outcome) -> StoreResult<()> {
        let now = o.time;
        let mut tx = self.begin().await?;
        for (job_id, change) in &o.jobs {
            let (state, not_before, deferred_until) = match change {
                JobChange::Done => ("done", None, None),
                JobChange::Failed => ("failed", None, None),
                JobChange::Cancelled => ("cancelled", None, None),
                JobChange::Deferred { until } => ("deferred", None, Some(*until)),
                JobChange::Retry { at } => ("pending", Some(*at), None),
            };
            sqlx::query(
                "UPDATE jobs SET state = $1, not_before = COALESCE(from_ms($2), not_before),
                   deferred_until = COALESCE(from_ms($3), deferred_until), updated_at = from_ms($4) WHERE id = $5",
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
                "UPDATE provisioned SET group_id = $1
                 WHERE app_id = $2::uuid AND target_display_name = $3 AND principal_id = $4",
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
                "UPDATE sync_cycles SET ended_at = from_ms($1), status = $2, counts = $3, progress = $4, report = $5
                 WHERE id = $6",
            )
            .bind(c.ended_at)
            .bind(&c.status)
            .bind(Json(&c.counts))
            .bind(&c.progress)
            .bind(c.report.as_ref().map(Json))
            .bind(&c.id)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(at) = o.next_sync_at {
            sqlx::query("UPDATE apps SET next_sync_at = from_ms($1) WHERE id = $2::uuid")
                .bind(at)
                .bind(&o.app_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((status, reason, level)) = &o.status {
            sqlx::query("UPDATE apps SET status = $1, status_reason = $2, quarantine_level = $3 WHERE id = $4::uuid")
                .bind(status)
                .bind(reason)
                .bind(level)
                .bind(&o.app_id)
                .execute(&mut *tx)
                .await?;
        }
        if o.legacy_remove {
            sqlx::query("UPDATE apps SET legacy_remove = true WHERE id = $1::uuid")
                .bind(&o.app_id)
                .execute(&mut *tx)
                .await?;
        }
        self.commit(tx).await?;
        if !o.logs.is_empty() {
            self.order_commits().await;
        }
        Ok(())
    }

    pub(super) async fn purge_records(&self, now: Millis, older_than: Millis, batch: i64) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let mut purged = 0;
        // Finished jobs first: their events may then go too.
        purged += sqlx::query(
            "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE state IN ('done', 'failed', 'cancelled')
               AND updated_at < from_ms($1) ORDER BY seq LIMIT $2)",
        )
        .bind(older_than)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Ended memberships: not active, ended before the cutoff, no open job for the pair.
        purged += sqlx::query(
            "DELETE FROM memberships WHERE (principal_id, group_id, access_id) IN (
               SELECT m.principal_id, m.group_id, m.access_id FROM memberships m
               WHERE NOT m.active AND COALESCE(m.end_at, timestamptz '1970-01-01 00:00:00+00') < from_ms($1)
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.principal_id = m.principal_id
                   AND j.group_id = m.group_id AND j.state IN ('pending', 'in_flight', 'deferred'))
               LIMIT $2)",
        )
        .bind(older_than)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Events (their bodies hold names and mail addresses) that nothing points to any more.
        purged += sqlx::query(
            "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e WHERE e.received_at < from_ms($1)
               AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.event_seq = e.seq)
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_seq = e.seq)
               ORDER BY e.seq LIMIT $2)",
        )
        .bind(older_than)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        purged += sqlx::query(
            "DELETE FROM sync_cycles WHERE id IN (SELECT id FROM sync_cycles WHERE ended_at IS NOT NULL
               AND ended_at < from_ms($1) LIMIT $2)",
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
               WHERE (r.end_at IS NOT NULL AND r.end_at <= from_ms($1))
                  OR (r.end_at IS NULL AND NOT EXISTS (SELECT 1 FROM memberships m
                        WHERE m.principal_id = r.principal_id AND m.group_id = r.group_id))
               LIMIT $2)",
        )
        .bind(now)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // What was last sent to an app for a principal nothing refers to any more (a link to a
        // user the bridge disabled stays until its app is deleted; a deleted app's links go).
        purged += sqlx::query(
            "DELETE FROM target_users WHERE (app_id, principal_id) IN (SELECT t.app_id, t.principal_id
               FROM target_users t JOIN apps a ON a.id = t.app_id
               WHERE a.deleted_at IS NOT NULL
                  OR (NOT t.disabled
                      AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.principal_id = t.principal_id)
                      AND NOT EXISTS (SELECT 1 FROM standing_members s WHERE s.principal_id = t.principal_id)
                      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.principal_id = t.principal_id
                                        AND j.state IN ('pending', 'in_flight', 'deferred'))
                      AND NOT EXISTS (SELECT 1 FROM provisioned p WHERE p.app_id = t.app_id
                                        AND p.principal_id = t.principal_id)
                      AND NOT EXISTS (SELECT 1 FROM revoked_requests r WHERE r.principal_id = t.principal_id))
               LIMIT $1)",
        )
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Principals (names, mail, mapped attributes) nothing refers to any more.
        purged += sqlx::query(
            "DELETE FROM principals WHERE principal_id IN (SELECT p.principal_id FROM principals p
               WHERE p.updated_at < from_ms($1)
                 AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.principal_id = p.principal_id)
                 AND NOT EXISTS (SELECT 1 FROM standing_members s WHERE s.principal_id = p.principal_id)
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.principal_id = p.principal_id
                                   AND j.state IN ('pending', 'in_flight', 'deferred'))
                 AND NOT EXISTS (SELECT 1 FROM provisioned v JOIN apps a ON a.id = v.app_id
                                   WHERE v.principal_id = p.principal_id AND a.deleted_at IS NULL)
                 AND NOT EXISTS (SELECT 1 FROM revoked_requests r WHERE r.principal_id = p.principal_id)
                 AND NOT EXISTS (SELECT 1 FROM target_users t WHERE t.principal_id = p.principal_id)
               LIMIT $2)",
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
            sqlx::query_as("SELECT app_id::text, COUNT(*) FROM jobs WHERE state = 'deferred' GROUP BY app_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub(super) async fn heartbeat(
        &self,
        replica: &str,
        instance: &str,
        first: bool,
        ttl: Millis,
    ) -> StoreResult<Option<Vec<String>>> {
        let mut tx = self.pool.begin().await?;
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
        self.commit(tx).await?;
        Ok(Some(alive))
    }

    pub(super) async fn leave(&self, replica: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(replica)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn acquire_lease(&self, name: &str, holder: &str, ttl: Millis) -> StoreResult<Option<Grant>> {
        let mut tx = self.pool.begin().await?;
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
        self.commit(tx).await?;
        Ok(token.map(|token| Grant { token, ..grant }))
    }

    pub(super) async fn renew_leases(&self, holder: &str, ttl: Millis) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "UPDATE leases SET expires_at = now() + $2 * interval '1 millisecond'
             WHERE holder = $1 AND NOT released AND expires_at > now() RETURNING name, token",
        )
        .bind(holder)
        .bind(ttl as f64)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn release_leases(&self, holder: &str, names: &[String], forget: bool) -> StoreResult<()> {
        let sql = if forget {
            "DELETE FROM leases WHERE holder = $1 AND name = ANY($2)"
        } else {
            "UPDATE leases SET released = TRUE, expires_at = now() WHERE holder = $1 AND name = ANY($2)"
        };
        sqlx::query(sql).bind(holder).bind(names).execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn notify_work(&self, what: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WORK_CHANNEL)
            .bind(what)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn listen_work(&self) -> StoreResult<Option<Box<dyn WorkListener>>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(WORK_CHANNEL).await?;
        Ok(Some(Box::new(PgWorkListener(listener))))
    }

    // the Graph source (SPEC §7)
    pub(super) async fn put_principal_attributes(
        &self,
        principal_id: &str,
        attributes: &Value,
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        Self::lock_principal(&mut tx, principal_id).await?;
        Self::merge_principal(&mut tx, principal_id, attributes, now, now).await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub(super) async fn forget_requests_except(&self, group_id: &str, listed: &[String]) -> StoreResult<u64> {
        self.delete_unlisted(
            "DELETE FROM source_seen_requests WHERE group_id = $1 AND NOT (request_id = ANY($2))",
            group_id,
            listed,
        )
        .await
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
mod tests {
    use super::*;
    use sqlx::Connection;

    /// A fresh, migrated database on the test PostgreSQL server (`SCIM_BRIDGE_TEST_POSTGRES_URL`,
    /// default the local cluster), dropped by `drop_database`. `None` (the test skips, saying
    /// why) when there is no server, except under `CI=true`.
    async fn fresh_store() -> Option<(PostgresDb, String, String)> {
        let server = std::env::var("SCIM_BRIDGE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://scim_bridge_test:scim_bridge_test@127.0.0.1/scim_bridge_test".into());
        let mut admin = match sqlx::PgConnection::connect(&server).await {
            Ok(admin) => admin,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("CI=true needs PostgreSQL at {server}: {e}")
            }
            Err(e) => {
                eprintln!("skipped: no PostgreSQL at {server} ({e}); scripts/test-deps.sh starts one");
                return None;
            }
        };
        let name = format!("scim_bridge_unit_{}", crate::crypto::random_hex(6));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let mut url = url::Url::parse(&server).expect("URL");
        url.set_path(&format!("/{name}"));
        let store = PostgresDb::open(url.as_str()).await.expect("open");
        store.migrate().await.expect("migrate");
        Some((store, server, name))
    }

    async fn drop_database(store: PostgresDb, server: &str, name: &str) {
        store.pool.close().await;
        if let Ok(mut admin) = sqlx::PgConnection::connect(server).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }

    /// Waits (without sleeping on a guess) until some backend of the database waits for a lock.
    async fn until_someone_waits_for_a_lock(store: &PostgresDb) {
        loop {
            let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Two writers of a principal that has no row yet (a webhook and the directory feed, on two
    /// replicas): the second waits for the first and merges into what it wrote, so no attribute
    /// is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_of_a_new_principal_take_turns_and_keep_every_attribute() {
        let Some((store, server, name)) = fresh_store().await else {
            return;
        };
        let store = Arc::new(store);
        let now = 1_000_000;
        // The first writer is a webhook: `accept_events` holds the principal's key.
        let mut first = store.begin().await.unwrap();
        PostgresDb::lock_principal(&mut first, "p-1").await.unwrap();
        PostgresDb::merge_principal(
            &mut first,
            "p-1",
            &serde_json::json!({"userPrincipalName": "ada@example.test", "mail": "ada@example.test"}),
            now,
            now,
        )
        .await
        .unwrap();
        let second = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_principal_attributes(
                        "p-1",
                        &serde_json::json!({"userPrincipalName": "ada@example.test", "department": "Research"}),
                        now + 1,
                    )
                    .await
            })
        };
        until_someone_waits_for_a_lock(&store).await;
        first.commit().await.unwrap();
        second.await.unwrap().unwrap();

        let attributes = store.principal_attributes("p-1").await.unwrap().expect("stored");
        assert_eq!(attributes["mail"], "ada@example.test", "{attributes:?}");
        assert_eq!(attributes["department"], "Research", "{attributes:?}");
        let store = Arc::into_inner(store).expect("the only reference");
        drop_database(store, &server, &name).await;
    }

    fn event(raw: serde_json::Value, now: Millis) -> (Event, Effect) {
        let event = crate::activation::parse(&raw).expect("a valid event");
        let effect = crate::activation::judge(&event, now).expect("within the rules");
        (event, effect)
    }

    /// A shortened end queues no job, but the replica that runs the expiry timer must hear of it
    /// at once, not at its next poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accepted_extension_that_queues_no_job_still_wakes_the_expiry_timer() {
        let Some((store, server, name)) = fresh_store().await else {
            return;
        };
        let now = chrono::Utc::now().timestamp_millis();
        let at = crate::clock::to_rfc3339(now);
        let grant = serde_json::json!({
            "id": "req-1", "action": "selfActivate", "accessId": "member", "principalId": "p-1",
            "groupId": "g-1", "status": "Provisioned", "createdDateTime": at,
            "scheduleInfo": {"startDateTime": at, "expiration": {"type": "afterDuration", "duration": "PT8H"}},
            "principal": {"userPrincipalName": "ada@example.test"},
        });
        store.accept_events(&[event(grant, now)], now).await.unwrap();

        let mut listener = store.listen_work().await.unwrap().expect("a listener");
        let later = crate::clock::to_rfc3339(now + 1_000);
        let shorten = serde_json::json!({
            "id": "req-2", "action": "adminUpdate", "accessId": "member", "principalId": "p-1",
            "groupId": "g-1", "status": "Provisioned", "createdDateTime": later,
            "scheduleInfo": {"startDateTime": at, "expiration": {"type": "afterDuration", "duration": "PT10M"}},
        });
        let answers = store
            .accept_events(&[event(shorten, now + 1_000)], now + 1_000)
            .await
            .unwrap();
        assert_eq!(answers, [Acceptance::Accepted { jobs: Vec::new() }]);
        let heard = tokio::time::timeout(Duration::from_secs(10), listener.next())
            .await
            .expect("a notification within 10 s");
        assert_eq!(heard.as_deref(), Some("expiry"));
        drop(listener);
        drop_database(store, &server, &name).await;
    }
}
