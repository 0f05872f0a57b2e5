//! The deletion guard's holds (SPEC §8): removals a cycle planned and the guard holds, until an
//! operator approves or rejects them, or their member is entitled again.

use super::dialect::{app_read, db_tx, read, sql};
use super::*;

/// Holds, on the connection `$conn` of the backend `$db`, a cycle's (`$cycle_id`) removal of the
/// member `$m` at the app `$app_id` at `$now`, once per pair: its open access ends wait on the
/// hold. Answers whether the pair was newly held (its `held` log entry is written once).
macro_rules! hold_removal {
    ($db:expr, $conn:expr, $app_id:expr, $m:expr, $cycle_id:expr, $now:expr) => {{
        let m: &$crate::store::TargetMember = $m;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "UPDATE access_ends SET status = 'held', waiting_on = 'held', updated_at = {ts $4}
             WHERE app_id = {uuid $1} AND principal_id = $2 AND target_display_name = $3
               AND status IN ('pending', 'failed')"
        ))
        .bind($app_id)
        .bind(&m.principal_id)
        .bind(&m.target_display_name)
        .bind($now)
        .execute(&mut *$conn)
        .await?;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "INSERT INTO held_removals (app_id, target_display_name, principal_id, cycle_id, held_at)
             VALUES ({uuid $1}, $2, $3, $4, {ts $5}) ON CONFLICT DO NOTHING"
        ))
        .bind($app_id)
        .bind(&m.target_display_name)
        .bind(&m.principal_id)
        .bind($cycle_id)
        .bind($now)
        .execute(&mut *$conn)
        .await
    }};
}

/// Lets a held removal go from the hold (its member is entitled again): its access ends are
/// pending again, and the cycle that ends settles them as kept.
macro_rules! release_held {
    ($db:expr, $conn:expr, $app_id:expr, $m:expr, $now:expr) => {{
        let m: &$crate::store::TargetMember = $m;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "DELETE FROM held_removals WHERE app_id = {uuid $1} AND target_display_name = $2 AND principal_id = $3"
        ))
        .bind($app_id)
        .bind(&m.target_display_name)
        .bind(&m.principal_id)
        .execute(&mut *$conn)
        .await?;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "UPDATE access_ends SET status = 'pending', waiting_on = NULL, updated_at = {ts $4}
             WHERE app_id = {uuid $1} AND principal_id = $2 AND target_display_name = $3 AND status = 'held'"
        ))
        .bind($app_id)
        .bind(&m.principal_id)
        .bind(&m.target_display_name)
        .bind($now)
        .execute(&mut *$conn)
        .await
    }};
}

pub(super) use {hold_removal, release_held};

impl Store {
    /// Object links of an app, by principal, after `after` (SPEC §8).
    /// The removals the deletion guard holds at the app, oldest first.
    pub async fn held_removals(&self, app_id: &str) -> StoreResult<Vec<HeldRemoval>> {
        Ok(app_read!(self, query_as fetch_all, else Vec::new(),
            "SELECT target_display_name, principal_id, cycle_id, {ms held_at} AS held_at FROM held_removals
             WHERE app_id = {uuid $1} ORDER BY held_at, {binary target_display_name}, {binary principal_id}",
            app_id))
    }

    /// How many removals the deletion guard holds, per app that holds any.
    pub async fn held_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(read!(self, query_as fetch_all,
            "SELECT {text app_id} AS app_id, COUNT(*) AS n FROM held_removals GROUP BY app_id"))
    }

    /// Sends the held removals: each becomes a removal job of its own, paced as a cycle's step and
    /// re-checked when it is taken (entitled again, no longer provisioned). Answers how many.
    pub async fn approve_held(&self, app_id: &str, now: Millis) -> StoreResult<u64> {
        self.end_hold(app_id, now, true).await
    }

    /// Forgets the held (member, target group) pairs: the bridge no longer counts them as its
    /// memberships, so they stay at the target, and a later entitlement is provisioned and ended
    /// as usual. Their access ends are `rejected`. Answers how many.
    pub async fn reject_held(&self, app_id: &str, now: Millis) -> StoreResult<u64> {
        self.end_hold(app_id, now, false).await
    }

    /// Ends the app's hold, its removals `approved` (sent as jobs, their access ends pending again)
    /// or rejected (forgotten, their access ends `rejected`), in one commit.
    async fn end_hold(&self, app_id: &str, now: Millis, approved: bool) -> StoreResult<u64> {
        let Some(app_id) = self.app_key(app_id) else {
            return Ok(0);
        };
        Ok(db_tx!(self, db, tx => {
            let sent = if approved {
                sqlx::query(sql!(
                    db,
                    "INSERT INTO jobs (id, app_id, event_seq, event_id, principal_id, group_id, kind, trigger, state,
                       not_before, received_at, deferred_until, attempt, flag, updated_at, target_display_name)
                     SELECT {new_id}, h.app_id, NULL, NULL, h.principal_id,
                       COALESCE((SELECT p.group_id FROM provisioned p WHERE p.app_id = h.app_id
                                   AND p.target_display_name = h.target_display_name
                                   AND p.principal_id = h.principal_id), ''),
                       'remove', 'sync', 'pending', {ts $2}, {ts $2}, NULL, 0, 'held by the deletion guard; approved',
                       {ts $2}, h.target_display_name
                     FROM held_removals h WHERE h.app_id = {uuid $1}"
                ))
                .bind(app_id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                sqlx::query(sql!(
                    db,
                    "DELETE FROM provisioned WHERE app_id = {uuid $1} AND EXISTS (SELECT 1 FROM held_removals h
                       WHERE h.app_id = provisioned.app_id AND h.target_display_name = provisioned.target_display_name
                         AND h.principal_id = provisioned.principal_id)"
                ))
                .bind(app_id)
                .execute(&mut *tx)
                .await?;
                0
            };
            sqlx::query(sql!(
                db,
                "UPDATE access_ends SET status = $3, waiting_on = NULL, updated_at = {ts $2}
                 WHERE app_id = {uuid $1} AND status = 'held'"
            ))
            .bind(app_id)
            .bind(now)
            .bind(if approved { "pending" } else { "rejected" })
            .execute(&mut *tx)
            .await?;
            let held = sqlx::query(sql!(db, "DELETE FROM held_removals WHERE app_id = {uuid $1}"))
                .bind(app_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if approved { sent } else { held }
        }))
    }
}
