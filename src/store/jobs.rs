//! The job queue: each app's pushes waiting, in flight and deferred, their claim before sending
//! and the window's admissions they record.

use super::dialect::{app_read, count_commit, db_run, db_statement, db_tx, execute, read, sql};
use super::*;

/// A job row as `Job` reads it (the table is named `j`).
macro_rules! job_columns {
    () => {
        "j.seq, j.id, {text j.app_id} AS app_id, j.event_id, j.principal_id, j.group_id, j.kind, j.trigger, j.state,
         {ms j.not_before} AS not_before, {ms j.received_at} AS received_at,
         {ms j.deferred_until} AS deferred_until, j.attempt, j.flag, {ms j.admitted_at} AS admitted_at,
         j.target_display_name, j.trace_context"
    };
}

pub(super) const INSERT_JOB: &str = "INSERT INTO jobs (id, app_id, event_seq, event_id, principal_id, group_id, kind,
    trigger, state, not_before, received_at, deferred_until, attempt, flag, updated_at, target_display_name,
    trace_context)
    VALUES ($1, {uuid $2}, $3, $4, $5, $6, $7, $8, $9, {ts $10}, {ts $11}, {ts $12}, 0, $13, {ts $14}, $15, $16)";

/// Inserts the job `$job` on `$conn` (a backend's connection or transaction; `$db` the backend or
/// its `Dialect`): one no event brought (on-demand provisioning, a removal a cycle step handed on;
/// `$event_seq` `None`), or one of an event (its `seq`: an intake's, an expiry's removal).
macro_rules! insert_job_in {
    ($db:expr, $conn:expr, $job:expr, $event_seq:expr, $now:expr) => {{
        let job: &$crate::store::Job = $job;
        let event_seq: Option<i64> = $event_seq;
        let now: $crate::clock::Millis = $now;
        sqlx::query($crate::store::dialect::sql!($db, $crate::store::jobs::INSERT_JOB))
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
            .execute($conn)
            .await
    }};
}
pub(super) use insert_job_in;

/// `Job`'s fields as one JSON object's keys and values (`{object}(...)`; the table is named `j`).
macro_rules! job_object {
    () => {
        "'seq', j.seq, 'id', j.id, 'app_id', {text j.app_id}, 'event_id', j.event_id, 'principal_id', j.principal_id,
         'group_id', j.group_id, 'kind', j.kind, 'trigger', j.trigger, 'state', j.state,
         'not_before', {ms j.not_before}, 'received_at', {ms j.received_at},
         'deferred_until', {ms j.deferred_until}, 'attempt', j.attempt, 'flag', j.flag,
         'admitted_at', {ms j.admitted_at}, 'target_display_name', j.target_display_name,
         'trace_context', j.trace_context"
    };
}
pub(super) use job_object;

/// Pending jobs of the app `$1` due at `$2`, in arrival order, at most `$3`. A job waits behind an
/// earlier job of the same (principal, group) that is still pending (a scheduled retry), so their
/// order holds; a removal never waits behind an add (it cancels it), and nothing waits behind a
/// removal a cycle handed on (it names its target group and is judged again when it is sent).
macro_rules! runnable {
    () => {
        "FROM jobs j WHERE j.app_id = {uuid $1} AND j.state = 'pending' AND j.not_before <= {ts $2}
           AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.app_id = j.app_id
             AND e.principal_id = j.principal_id AND e.group_id = j.group_id AND e.seq < j.seq
             AND e.state = 'pending' AND e.not_before > {ts $2}
             AND NOT (j.kind = 'remove' AND e.kind = 'add') AND e.target_display_name IS NULL)
         ORDER BY j.seq {limit $3}"
    };
}
pub(super) use runnable;

/// The claim (`claim_job`): the job's fence is bound as `$5` to `$7` (`fenced`).
const CLAIM: &str = "UPDATE jobs SET state = 'in_flight', attempt = attempt + 1, updated_at = {ts $2},
      admitted_at = CASE WHEN $3 THEN {ts $2} ELSE admitted_at END
    WHERE id = $1 AND state IN ('pending', 'deferred') {fenced $5}
    RETURNING TRUE AS claimed,
      (SELECT t.target_user_id FROM target_users t
         WHERE t.app_id = jobs.app_id AND t.principal_id = jobs.principal_id) AS target_user_id,
      (SELECT t.fingerprint FROM target_users t
         WHERE t.app_id = jobs.app_id AND t.principal_id = jobs.principal_id) AS fingerprint,
      (SELECT t.created_by_us FROM target_users t
         WHERE t.app_id = jobs.app_id AND t.principal_id = jobs.principal_id) AS created_by_us,
      (SELECT t.disabled FROM target_users t
         WHERE t.app_id = jobs.app_id AND t.principal_id = jobs.principal_id) AS disabled,
      (SELECT t.enabled_by_us FROM target_users t
         WHERE t.app_id = jobs.app_id AND t.principal_id = jobs.principal_id) AS enabled_by_us,
      (SELECT g.target_group_id FROM target_groups g
         WHERE g.app_id = jobs.app_id AND g.display_name = $4) AS target_group_id";

impl Store {
    /// The jobs a dispatcher's pass takes now (`app_and_work`, which reads them with the app).
    pub async fn runnable_jobs(&self, app_id: &str, now: Millis, limit: i64) -> StoreResult<Vec<Job>> {
        Ok(self
            .app_and_work(app_id, now, limit)
            .await?
            .map(|w| w.jobs)
            .unwrap_or_default())
    }

    pub async fn next_job_time(&self, app_id: &str, now: Millis) -> StoreResult<Option<Millis>> {
        Ok(app_read!(self, query_scalar fetch_one, else None,
            "SELECT {ms MIN(not_before)} FROM jobs WHERE app_id = {uuid $1} AND state = 'pending'
             AND not_before > {ts $2}",
            app_id, now))
    }

    pub async fn deferred_jobs(&self, app_id: &str) -> StoreResult<Vec<Job>> {
        Ok(app_read!(self, query_as fetch_all, else Vec::new(),
            concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs j WHERE j.app_id = {uuid $1} AND j.state = 'deferred'
                 ORDER BY CASE j.kind WHEN 'remove' THEN 0 ELSE 1 END, j.seq"
            ),
            app_id))
    }

    /// Claims a job for sending: in flight, one more attempt, and (when the window admitted it)
    /// its admission time, in one commit before anything is sent; answers, read in the same
    /// statement, what the bridge knows of the job's principal's user at the app and of the
    /// target group `target` (see `Claim`). `None`: the job is no longer waiting (an app deletion
    /// cancelled it meanwhile): nothing is to be sent.
    pub async fn claim_job(
        &self,
        job_id: &str,
        now: Millis,
        admitted: bool,
        target: &str,
    ) -> StoreResult<Option<Claim>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            /// The lease fence held (always on SQLite, and outside a lease).
            held: bool,
            /// The job was claimed: `None` when it was not (PostgreSQL answers a row anyway).
            claimed: Option<bool>,
            target_user_id: Option<String>,
            fingerprint: Option<String>,
            created_by_us: Option<bool>,
            disabled: Option<bool>,
            enabled_by_us: Option<bool>,
            target_group_id: Option<String>,
        }
        // On PostgreSQL the row lock taken here is the claim: a concurrent writer of the job (an
        // app deletion cancelling it) is waited for, as SQLite's single writer would be, and a
        // job it cancelled is not claimed. What the push reads next comes back with it. It is
        // one statement, committed alone; on PostgreSQL its lease fence is part of it
        // (`PostgresDb::fenced`): one round trip, not a transaction of four.
        let fence = crate::lease::current();
        let row: Option<Row> = db_run!(self, db => {
            let row = sqlx::query_as(sql!(db, &db.fenced(CLAIM, 5)))
                .bind(job_id)
                .bind(now)
                .bind(admitted)
                .bind(target)
                .bind(fence.as_ref().map(|f| &f.name))
                .bind(fence.as_ref().map(|f| &f.holder))
                .bind(fence.as_ref().map(|f| f.token))
                .fetch_optional(&db.pool)
                .await?;
            count_commit();
            row
        });
        if let (Some(fence), Some(false)) = (fence, row.as_ref().map(|r| r.held)) {
            return Err(StoreError::Fenced(fence.name));
        }
        let claimed = row.filter(|r| r.claimed.is_some());
        Ok(claimed.map(|r| Claim {
            user: match (r.target_user_id, r.fingerprint) {
                (Some(target_user_id), Some(fingerprint)) => Some(TargetUser {
                    target_user_id,
                    fingerprint,
                    created_by_us: r.created_by_us.unwrap_or(false),
                    disabled: r.disabled.unwrap_or(false),
                    enabled_by_us: r.enabled_by_us.unwrap_or(false),
                }),
                _ => None,
            },
            group_id: r.target_group_id,
        }))
    }

    /// When the window admitted the app's pushes since `since`, sent or not: a restart rebuilds
    /// the window from them.
    pub async fn admissions_since(&self, app_id: &str, since: Millis) -> StoreResult<Vec<Millis>> {
        Ok(app_read!(self, query_scalar fetch_all, else Vec::new(),
            "SELECT {ms admitted_at} FROM jobs WHERE app_id = {uuid $1} AND admitted_at >= {ts $2}
             ORDER BY admitted_at",
            app_id, since))
    }

    /// Jobs a stop left in flight go back in line, their outcome unknown.
    pub async fn recover_in_flight(&self, app_id: &str, now: Millis) -> StoreResult<Vec<String>> {
        Ok(db_statement!(self, db, conn => {
            let Some(app_id) = db.app_key(app_id) else { return Ok(Vec::new()) };
            sqlx::query_scalar(sql!(
                db,
                "UPDATE jobs SET state = 'pending', flag = COALESCE(flag, 'outcome unknown'), updated_at = {ts $1}
                 WHERE app_id = {uuid $2} AND state = 'in_flight' RETURNING id"
            ))
            .bind(now)
            .bind(app_id)
            .fetch_all(&mut *conn)
            .await?
        }))
    }

    /// A job whose push broke off after it went in flight: pending again, its outcome unknown.
    pub async fn requeue_in_doubt(&self, job_id: &str, now: Millis) -> StoreResult<()> {
        execute!(
            self,
            "UPDATE jobs SET state = 'pending', flag = COALESCE(flag, 'outcome unknown'), updated_at = {ts $1}
             WHERE id = $2 AND state = 'in_flight'",
            now,
            job_id
        );
        Ok(())
    }

    /// The app's removals waiting for a retry go now (its credentials changed, or its quarantine
    /// was cleared); answers how many.
    pub async fn retry_removals_now(&self, app_id: &str, now: Millis) -> StoreResult<u64> {
        let Some(app_id) = self.app_key(app_id) else {
            return Ok(0);
        };
        Ok(execute!(
            self,
            "UPDATE jobs SET not_before = {ts $2}, updated_at = {ts $2}
             WHERE app_id = {uuid $1} AND kind = 'remove' AND state = 'pending' AND not_before > {ts $2}",
            app_id,
            now
        ))
    }

    /// Adds for the pair that are not pushed yet and were queued before job `before_seq`.
    pub async fn open_adds_for(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
        before_seq: i64,
    ) -> StoreResult<Vec<Job>> {
        Ok(app_read!(self, query_as fetch_all, else Vec::new(),
            concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs j WHERE j.app_id = {uuid $1} AND j.principal_id = $2 AND j.group_id = $3
                   AND j.kind = 'add' AND j.state IN ('pending', 'deferred') AND j.seq < $4 ORDER BY j.seq"
            ),
            app_id, principal_id, group_id, before_seq))
    }

    pub async fn insert_job(&self, job: &Job, now: Millis) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            insert_job_in!(db, &mut *tx, job, None, now)?;
        });
        Ok(())
    }

    /// Deferred jobs per app, counted (for the metrics scrape).
    pub async fn deferred_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(read!(self, query_as fetch_all,
            "SELECT {text app_id}, COUNT(*) FROM jobs WHERE state = 'deferred' GROUP BY app_id"))
    }
}
