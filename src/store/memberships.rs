//! Memberships as the sources give them: whether one still entitles its principal, and their
//! expiry, which queues the removals of the memberships whose end has come.

use super::access_ends::insert_access_end;
use super::dialect::{app_read, db_run, db_tx, read, sql};
use super::jobs::insert_job_in;
use super::sources::APPS_OF_GROUP;
use super::*;

/// Whether the source group of the assignment `ga` entitles the principal (the SQL expression
/// given) at the time given: a standing member, or an active membership within its schedule.
macro_rules! entitles {
    ($principal:literal, $now:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM standing_members s WHERE s.group_id = ga.group_id AND s.principal_id = ",
            $principal,
            ")
              OR EXISTS (SELECT 1 FROM memberships m WHERE m.group_id = ga.group_id AND m.principal_id = ",
            $principal,
            "
                 AND m.access_id = 'member' AND m.active = TRUE
                 AND (m.start_at IS NULL OR m.start_at <= {ts ",
            $now,
            "}) AND (m.end_at IS NULL OR m.end_at > {ts ",
            $now,
            "})))"
        )
    };
}
pub(super) use entitles;

/// The assignments `ga` of app `$1` with target group `$2` whose source group entitles the
/// principal (the SQL expression given) at `$4`.
macro_rules! entitling_assignments {
    ($principal:literal) => {
        concat!(
            "FROM group_assignments ga WHERE ga.app_id = {uuid $1} AND ga.target_display_name = $2 AND ",
            entitles!($principal, "$4")
        )
    };
}

/// A source group assigned to app `$1` with target group `$2` that entitles principal `$3` at `$4`.
pub(super) const ENTITLED_VIA: &str = concat!("SELECT ga.group_id ", entitling_assignments!("$3"), " LIMIT 1");

impl Store {
    /// What an add of the principal through the source group checks before it is sent, in one
    /// read: the target group the group's assignment names (`""` at an app without groups,
    /// `groups` false), and the membership and what the bridge knows of the member there. `None`:
    /// the group is not assigned to the app.
    pub async fn add_checks(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
        groups: bool,
        now: Millis,
    ) -> StoreResult<Option<AddChecks>> {
        Ok(app_read!(self, query_as fetch_optional, else None,
            "SELECT t.target,
               EXISTS (SELECT 1 FROM memberships WHERE principal_id = $2 AND group_id = $3
                  AND access_id = 'member' AND active = TRUE AND (end_at IS NULL OR end_at > {ts $5})) AS active,
               EXISTS (SELECT 1 FROM provisioned p WHERE p.app_id = {uuid $1} AND p.target_display_name = t.target
                  AND p.principal_id = $2) AS provisioned,
               EXISTS (SELECT 1 FROM provisioned p WHERE p.app_id = {uuid $1} AND p.target_display_name = t.target
                  AND p.principal_id = $2 AND p.confirmed = TRUE) AS confirmed
             FROM (SELECT CASE WHEN $4 THEN ga.target_display_name ELSE '' END AS target FROM group_assignments ga
               WHERE ga.app_id = {uuid $1} AND ga.group_id = $3) t",
            app_id, principal_id, group_id, groups, now))
    }

    /// What a cycle's add of `principals` to the target group checks before it is sent, for the
    /// whole chunk in one read, in the order given (a principal given twice is answered once).
    pub async fn add_chunk_checks(
        &self,
        app_id: &str,
        target: &str,
        principals: &[String],
        now: Millis,
    ) -> StoreResult<Vec<ChunkMember>> {
        let rows: Vec<ChunkMember> = db_run!(self, db => {
            // An app id no stored app can have (`app_key`) is bound as NULL: nothing entitled.
            sqlx::query_as(sql!(
                db,
                concat!(
                    "SELECT v.value AS principal_id,
                       EXISTS (SELECT 1 ",
                    entitling_assignments!("v.value"),
                    ") AS entitled,
                       EXISTS (SELECT 1 FROM provisioned p WHERE p.app_id = {uuid $1} AND p.target_display_name = $2
                              AND p.principal_id = v.value) AS provisioned,
                       EXISTS (SELECT 1 FROM provisioned p WHERE p.app_id = {uuid $1} AND p.target_display_name = $2
                              AND p.principal_id = v.value AND p.confirmed = TRUE) AS confirmed,
                       (SELECT t.target_user_id FROM target_users t WHERE t.app_id = {uuid $1}
                          AND t.principal_id = v.value) AS target_user_id
                     FROM {each $3} v"
                )
            ))
            .bind(db.app_key(app_id))
            .bind(target)
            .bind(db.text_list(principals))
            .bind(now)
            .fetch_all(&db.pool)
            .await?
        });
        // In the order given.
        let mut rows: std::collections::HashMap<String, ChunkMember> =
            rows.into_iter().map(|r| (r.principal_id.clone(), r)).collect();
        Ok(principals.iter().filter_map(|p| rows.remove(p)).collect())
    }

    /// A source group assigned to the app that still entitles the principal to the target group.
    pub async fn entitled_via(
        &self,
        app_id: &str,
        target: &str,
        principal_id: &str,
        now: Millis,
    ) -> StoreResult<Option<String>> {
        Ok(app_read!(self, query_scalar fetch_optional, else None, ENTITLED_VIA, app_id, target, principal_id, now))
    }

    /// Ends the memberships whose end has come and queues their removals; answers the apps
    /// that have new work.
    #[tracing::instrument(skip_all)]
    pub async fn expire_due(&self, now: Millis) -> StoreResult<Vec<String>> {
        #[derive(sqlx::FromRow)]
        struct Due {
            principal_id: String,
            group_id: String,
            access_id: String,
            end_at: Millis,
            event_seq: i64,
        }
        Ok(db_tx!(self, db, tx => {
            // A claim on PostgreSQL: memberships another replica is expiring right now, or a
            // webhook is judging (the intake reads the row `FOR UPDATE` until it commits), are
            // skipped and expire at a later pass if still due; the `expired_at IS NULL`
            // condition keeps one expiry from queuing twice.
            let due: Vec<Due> = sqlx::query_as(sql!(
                db,
                "UPDATE memberships SET active = FALSE, expired_at = {ts $1}
                 WHERE (principal_id, group_id, access_id) IN (
                   SELECT principal_id, group_id, access_id FROM memberships
                   WHERE active = TRUE AND expired_at IS NULL AND end_at IS NOT NULL AND end_at <= {ts $1}
                   {skip_locked})
                 RETURNING principal_id, group_id, access_id, {ms end_at} AS end_at, event_seq"
            ))
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            let mut woken = Vec::new();
            for m in due.iter().filter(|m| m.access_id == "member") {
                // The activation's id, and the trace context its jobs stored: the expiry's removal
                // joins the activation's trace (SPEC §10).
                let found: Option<(String, Option<String>)> = sqlx::query_as(sql!(
                    db,
                    "SELECT e.id, (SELECT j.trace_context FROM jobs j
                                     WHERE j.event_seq = e.seq AND j.trace_context IS NOT NULL LIMIT 1)
                     FROM events e WHERE e.seq = $1"
                ))
                .bind(m.event_seq)
                .fetch_optional(&mut *tx)
                .await?;
                let (event_id, trace_context) = match found {
                    Some((id, context)) => (Some(id), context),
                    None => (None, None),
                };
                let apps: Vec<String> = sqlx::query_scalar(sql!(db, APPS_OF_GROUP))
                .bind(&m.group_id)
                .fetch_all(&mut *tx)
                .await?;
                for app_id in apps {
                    // No target group of its own: it removes where the event's group put the member.
                    let job = Job {
                        event_id: event_id.clone(),
                        trace_context: trace_context.clone(),
                        ..Job::pending(&app_id, &m.principal_id, &m.group_id, "remove", "expiry", now, m.end_at)
                    };
                    insert_job_in!(db, &mut *tx, &job, Some(m.event_seq), now)?;
                    // Access ended at the scheduled end (SPEC §8): its record is born here.
                    let end = crate::rules::access_end(
                        &app_id,
                        &m.principal_id,
                        None,
                        &m.group_id,
                        event_id.clone(),
                        "expiry",
                        m.end_at,
                        now,
                    );
                    insert_access_end!(db, &mut *tx, &end)?;
                    if !woken.contains(&app_id) {
                        woken.push(app_id);
                    }
                }
            }
            woken
        }))
    }

    pub async fn next_expiry(&self) -> StoreResult<Option<Millis>> {
        Ok(read!(self, query_scalar fetch_one,
            "SELECT {ms MIN(end_at)} FROM memberships
             WHERE active = TRUE AND expired_at IS NULL AND end_at IS NOT NULL"))
    }
}
