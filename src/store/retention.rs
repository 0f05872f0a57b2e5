//! Retention of personal data: the records nothing needs any more, purged in batches.

use super::dialect::{db_tx, sql};
use super::*;

impl Store {
    /// Purges up to `batch` rows of personal data older than `older_than` that nothing needs any
    /// more: events no live membership or open job points to, finished jobs, ended memberships,
    /// ended cycles, principals and what was last sent for them that nothing refers to, and
    /// revoked request ids whose scheduled end is before `now`. Answers how many rows went.
    pub async fn purge_records(&self, now: Millis, older_than: Millis, batch: i64) -> StoreResult<u64> {
        Ok(db_tx!(self, db, tx => {
            // Each deletes up to `$2` rows older than `$1` (revoked request ids: whose end is
            // before `$1`, now).
            let statements = [
                // Finished jobs first: their events may then go too.
                (
                    sql!(
                        db,
                        "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE state IN ('done', 'failed', 'cancelled')
                           AND updated_at < {ts $1} ORDER BY seq {limit $2})"
                    ),
                    older_than,
                ),
                // Ended memberships: not active, ended before the cutoff, no open job for the pair.
                (
                    sql!(
                        db,
                        "DELETE FROM memberships WHERE (principal_id, group_id, access_id) IN (
                           SELECT m.principal_id, m.group_id, m.access_id FROM memberships m
                           WHERE m.active = FALSE AND COALESCE(m.end_at, {ts 0}) < {ts $1}
                             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.principal_id = m.principal_id
                               AND j.group_id = m.group_id AND j.state IN ('pending', 'in_flight', 'deferred'))
                           {limit $2})"
                    ),
                    older_than,
                ),
                // Events (their bodies hold names and mail addresses) that nothing points to any more.
                (
                    sql!(
                        db,
                        "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e WHERE e.received_at < {ts $1}
                           AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.event_seq = e.seq)
                           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_seq = e.seq)
                           ORDER BY e.seq {limit $2})"
                    ),
                    older_than,
                ),
                // Access-end records are kept as long as the log (SPEC §8): the settled ones that
                // ended before the cutoff (an open one, still measured, stays).
                (
                    sql!(
                        db,
                        "DELETE FROM access_ends WHERE id IN (SELECT id FROM access_ends
                           WHERE ended_at < {ts $1} AND status NOT IN ('pending', 'failed', 'held') {limit $2})"
                    ),
                    older_than,
                ),
                (
                    sql!(
                        db,
                        "DELETE FROM sync_cycles WHERE id IN (SELECT id FROM sync_cycles WHERE ended_at IS NOT NULL
                           AND ended_at < {ts $1} {limit $2})"
                    ),
                    older_than,
                ),
                // Revoked request ids whose scheduled end has passed (no end: once the pair has no
                // membership state left), whatever the retention period.
                (
                    sql!(
                        db,
                        "DELETE FROM revoked_requests WHERE request_id IN (SELECT r.request_id FROM revoked_requests r
                           WHERE (r.end_at IS NOT NULL AND r.end_at <= {ts $1})
                              OR (r.end_at IS NULL AND NOT EXISTS (SELECT 1 FROM memberships m
                                    WHERE m.principal_id = r.principal_id AND m.group_id = r.group_id))
                           {limit $2})"
                    ),
                    now,
                ),
                // What was last sent to an app for a principal nothing refers to any more (a link to
                // a user the bridge disabled stays until its app is deleted; a deleted app's links go).
                (
                    sql!(
                        db,
                        "DELETE FROM target_users WHERE (app_id, principal_id) IN (SELECT t.app_id, t.principal_id
                           FROM target_users t JOIN apps a ON a.id = t.app_id
                           WHERE a.deleted_at IS NOT NULL
                              OR (t.disabled = FALSE
                                  AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.principal_id = t.principal_id)
                                  AND NOT EXISTS (SELECT 1 FROM standing_members s WHERE s.principal_id = t.principal_id)
                                  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.principal_id = t.principal_id
                                                    AND j.state IN ('pending', 'in_flight', 'deferred'))
                                  AND NOT EXISTS (SELECT 1 FROM provisioned p WHERE p.app_id = t.app_id
                                                    AND p.principal_id = t.principal_id)
                                  AND NOT EXISTS (SELECT 1 FROM revoked_requests r WHERE r.principal_id = t.principal_id))
                           {limit $2})"
                    ),
                    older_than,
                ),
                // Principals (names, mail, mapped attributes) nothing refers to any more.
                (
                    sql!(
                        db,
                        "DELETE FROM principals WHERE principal_id IN (SELECT p.principal_id FROM principals p
                           WHERE p.updated_at < {ts $1}
                             AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.principal_id = p.principal_id)
                             AND NOT EXISTS (SELECT 1 FROM standing_members s WHERE s.principal_id = p.principal_id)
                             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.principal_id = p.principal_id
                                               AND j.state IN ('pending', 'in_flight', 'deferred'))
                             AND NOT EXISTS (SELECT 1 FROM provisioned v JOIN apps a ON a.id = v.app_id
                                               WHERE v.principal_id = p.principal_id AND a.deleted_at IS NULL)
                             AND NOT EXISTS (SELECT 1 FROM revoked_requests r WHERE r.principal_id = p.principal_id)
                             AND NOT EXISTS (SELECT 1 FROM target_users t WHERE t.principal_id = p.principal_id)
                           {limit $2})"
                    ),
                    older_than,
                ),
            ];
            let mut purged = 0;
            for (text, time) in statements {
                purged += sqlx::query(text)
                    .bind(time)
                    .bind(batch)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            purged
        }))
    }
}
