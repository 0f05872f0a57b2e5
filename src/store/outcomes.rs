//! An outcome: everything one push, one cancellation or one cycle step changes, in one commit
//! (the job's state, what the bridge knows of the target, the log entries, the cycle's record
//! and the app's schedule and status).

use super::access_ends::{settle_access_ends, settle_kept, settle_removed};
use super::dialect::{db_run, db_tx, sql};
use super::held::{hold_removal, release_held};
use super::jobs::insert_job_in;
use super::logs::insert_logs;
use super::targets::{put_target_group, put_target_users};
use super::*;

impl Store {
    /// Records one outcome in one commit.
    #[tracing::instrument(skip_all, fields(app_id = %o.app_id))]
    pub async fn record(&self, o: &Outcome) -> StoreResult<()> {
        let now = o.time;
        db_tx!(self, db, tx => {
            for (job_id, change) in &o.jobs {
                let (state, not_before, deferred_until) = match change {
                    JobChange::Done => ("done", None, None),
                    JobChange::Failed => ("failed", None, None),
                    JobChange::Cancelled => ("cancelled", None, None),
                    JobChange::Deferred { until } => ("deferred", None, Some(*until)),
                    JobChange::Retry { at } => ("pending", Some(*at), None),
                };
                sqlx::query(sql!(
                    db,
                    "UPDATE jobs SET state = $1, not_before = COALESCE({ts $2}, not_before),
                       deferred_until = COALESCE({ts $3}, deferred_until), updated_at = {ts $4} WHERE id = $5"
                ))
                .bind(state)
                .bind(not_before)
                .bind(deferred_until)
                .bind(now)
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            }
            put_target_users(&mut *tx, &o.app_id, &o.users).await?;
            for (display_name, id) in &o.groups {
                put_target_group!(db, &mut *tx, &o.app_id, display_name, id)?;
            }
            // Each run of members with the same change is written by one statement (a cycle's
            // chunk: one), in the order given; a member's source group goes in the statement
            // that writes it, and a source with no such write of its own is an update.
            let source_of = |m: &TargetMember| o.sources.iter().rfind(|(s, _)| s == m).map(|(_, g)| g.as_str());
            for (change, run) in member_runs(&o.members) {
                let rows: Vec<Value> = run
                    .iter()
                    .map(|m| serde_json::json!({"t": m.target_display_name, "p": m.principal_id, "g": source_of(m)}))
                    .collect();
                let text = match change {
                    MemberChange::Confirmed => sql!(
                        db,
                        "INSERT INTO provisioned (app_id, target_display_name, principal_id, added_at, confirmed,
                           group_id)
                         SELECT {uuid $1}, v.t, v.p, {ts $2}, TRUE, v.g FROM {members $3} v WHERE TRUE
                         ON CONFLICT (app_id, target_display_name, principal_id) DO UPDATE SET confirmed = TRUE,
                           group_id = COALESCE(excluded.group_id, provisioned.group_id)"
                    ),
                    MemberChange::InDoubt => sql!(
                        db,
                        "INSERT INTO provisioned (app_id, target_display_name, principal_id, added_at, confirmed,
                           group_id)
                         SELECT {uuid $1}, v.t, v.p, {ts $2}, FALSE, v.g FROM {members $3} v WHERE TRUE
                         ON CONFLICT (app_id, target_display_name, principal_id) DO UPDATE
                           SET group_id = excluded.group_id WHERE excluded.group_id IS NOT NULL"
                    ),
                    // `$2` is bound but not used: every run binds the same parameters.
                    MemberChange::Gone => sql!(
                        db,
                        "DELETE FROM provisioned WHERE app_id = {uuid $1}
                         AND (target_display_name, principal_id) IN (SELECT v.t, v.p FROM {members $3} v)"
                    ),
                };
                sqlx::query(text)
                    .bind(&o.app_id)
                    .bind(now)
                    .bind(to_json(&rows))
                    .execute(&mut *tx)
                    .await?;
            }
            let written = |m: &TargetMember| o.members.iter().any(|(w, c)| w == m && *c != MemberChange::Gone);
            for (m, group_id) in o.sources.iter().filter(|(m, _)| !written(m)) {
                sqlx::query(sql!(
                    db,
                    "UPDATE provisioned SET group_id = $1
                     WHERE app_id = {uuid $2} AND target_display_name = $3 AND principal_id = $4"
                ))
                .bind(group_id)
                .bind(&o.app_id)
                .bind(&m.target_display_name)
                .bind(&m.principal_id)
                .execute(&mut *tx)
                .await?;
            }
            for job in &o.new_jobs {
                insert_job_in!(db, &mut *tx, job, None, now)?;
            }
            insert_logs(&mut *tx, &o.logs).await?;
            for change in &o.access_ends {
                settle_access_ends!(db, &mut *tx, &o.app_id, change, now)?;
            }
            // Members gone from their target group end the access their open ends measure
            // (SPEC §8): one statement for them all.
            let gone: Vec<Value> = o
                .members
                .iter()
                .filter(|(_, change)| *change == MemberChange::Gone)
                .map(|(m, _)| serde_json::json!({"t": m.target_display_name, "p": m.principal_id}))
                .collect();
            if !gone.is_empty() {
                let action = o.end_action.unwrap_or("remove_member");
                settle_removed!(db, &mut *tx, &o.app_id, to_json(&gone), action, now);
            }
            if let Some(cycle) = &o.cycle {
                for member in &o.hold {
                    hold_removal!(db, &mut *tx, &o.app_id, member, &cycle.id, now)?;
                }
            }
            for member in &o.release {
                release_held!(db, &mut *tx, &o.app_id, member, now)?;
            }
            if o.cycle.as_ref().is_some_and(|c| c.ended_at.is_some()) {
                // What the cycle left in place because something still entitles it was kept.
                settle_kept!(db, &mut *tx, &o.app_id, now)?;
            }
            if let Some(c) = &o.cycle {
                sqlx::query(sql!(
                    db,
                    "UPDATE sync_cycles SET ended_at = {ts $1}, status = $2, counts = {jsonb $3}, progress = $4,
                       report = {jsonb $5}
                     WHERE id = $6"
                ))
                .bind(c.ended_at)
                .bind(&c.status)
                .bind(to_json(&c.counts))
                .bind(&c.progress)
                .bind(c.report.as_ref().map(Value::to_string))
                .bind(&c.id)
                .execute(&mut *tx)
                .await?;
            }
            // What the outcome changes of the app: one statement.
            if o.next_sync_at.is_some() || o.status.is_some() || o.legacy_remove {
                let (status, reason, level) = match &o.status {
                    Some((status, reason, level)) => (Some(status.as_str()), reason.as_deref(), Some(*level)),
                    None => (None, None, None),
                };
                sqlx::query(sql!(
                    db,
                    "UPDATE apps SET next_sync_at = COALESCE({ts $1}, next_sync_at), status = COALESCE($2, status),
                       status_reason = CASE WHEN $2 IS NULL THEN status_reason ELSE $3 END,
                       quarantine_level = COALESCE($4, quarantine_level), legacy_remove = (legacy_remove OR $5)
                     WHERE id = {uuid $6}"
                ))
                .bind(o.next_sync_at)
                .bind(status)
                .bind(reason)
                .bind(level)
                .bind(o.legacy_remove)
                .bind(&o.app_id)
                .execute(&mut *tx)
                .await?;
            }
        });
        if !o.logs.is_empty() {
            db_run!(self, db => db.order_commits_later());
        }
        Ok(())
    }
}

/// The members in runs of the same change, in order, each member once in its run (one statement
/// may not write a row twice).
fn member_runs(members: &[(TargetMember, MemberChange)]) -> Vec<(MemberChange, Vec<&TargetMember>)> {
    let mut runs: Vec<(MemberChange, Vec<&TargetMember>)> = Vec::new();
    for (m, change) in members {
        match runs.last_mut() {
            Some((kind, run)) if kind == change => {
                if !run.contains(&m) {
                    run.push(m);
                }
            }
            _ => runs.push((*change, vec![m])),
        }
    }
    runs
}
