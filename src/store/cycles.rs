//! Synchronization cycles: their records, and the queue of cycles asked for.

use super::dialect::{app_read, db_statement, db_tx, execute, sql};
use super::*;

/// A cycle row as `CycleRecord` reads it.
macro_rules! cycle_columns {
    () => {
        "id, {text app_id} AS app_id, trigger, dry_run, {ms started_at} AS started_at, {ms ended_at} AS ended_at,
         status, counts, progress, report"
    };
}

impl Store {
    pub async fn insert_cycle(&self, c: &CycleRecord) -> StoreResult<()> {
        execute!(
            self,
            "INSERT INTO sync_cycles (id, app_id, trigger, dry_run, started_at, ended_at, status, counts, progress,
               report)
             VALUES ($1, {uuid $2}, $3, $4, {ts $5}, {ts $6}, $7, {jsonb $8}, $9, {jsonb $10})",
            &c.id,
            &c.app_id,
            &c.trigger,
            c.dry_run,
            c.started_at,
            c.ended_at,
            &c.status,
            to_json(&c.counts),
            &c.progress,
            c.report.as_ref().map(Value::to_string)
        );
        Ok(())
    }

    pub async fn list_cycles(&self, app_id: &str, limit: i64) -> StoreResult<Vec<CycleRecord>> {
        Ok(app_read!(self, query_as fetch_all, else Vec::new(),
            concat!(
                "SELECT ",
                cycle_columns!(),
                " FROM sync_cycles WHERE app_id = {uuid $1}
                 ORDER BY sync_cycles.started_at DESC, {pos} DESC {limit $2}"
            ),
            app_id, limit))
    }

    /// Cycles of the app still marked running (a stop or crash interrupted them).
    pub async fn running_cycles(&self, app_id: &str) -> StoreResult<Vec<CycleRecord>> {
        Ok(app_read!(self, query_as fetch_all, else Vec::new(),
            concat!(
                "SELECT ",
                cycle_columns!(),
                " FROM sync_cycles WHERE app_id = {uuid $1} AND sync_cycles.ended_at IS NULL
                 ORDER BY sync_cycles.started_at, {pos}"
            ),
            app_id))
    }

    /// Asks for a cycle. A writing cycle asked for while one runs (or one is already queued) is
    /// merged into it: answers the id of the cycle that will do the work.
    pub async fn request_cycle(&self, app_id: &str, cycle_id: &str, dry_run: bool, now: Millis) -> StoreResult<String> {
        Ok(db_tx!(self, db, tx => {
            db.lock_cycle_requests(&mut tx, app_id).await?;
            // A writing cycle that runs, or is already asked for, takes this request in.
            let merged: Option<String> = if dry_run {
                None
            } else {
                sqlx::query_scalar(sql!(
                    db,
                    "SELECT id FROM (
                       SELECT id, 0 AS rank, started_at AS t FROM sync_cycles
                         WHERE app_id = {uuid $1} AND ended_at IS NULL AND dry_run = FALSE
                       UNION ALL
                       SELECT cycle_id, 1, created_at FROM cycle_requests
                         WHERE app_id = {uuid $1} AND dry_run = FALSE) c
                     ORDER BY rank, t LIMIT 1"
                ))
                .bind(app_id)
                .fetch_optional(&mut *tx)
                .await?
            };
            match merged {
                Some(id) => {
                    // Tells the running cycle to plan again before it ends.
                    sqlx::query(sql!(
                        db,
                        "INSERT INTO cycle_requests (cycle_id, app_id, dry_run, created_at)
                         VALUES ($1, {uuid $2}, FALSE, {ts $3}) ON CONFLICT DO NOTHING"
                    ))
                    .bind(&id)
                    .bind(app_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    name_cycle_in_audit(&id);
                    id
                }
                None => {
                    sqlx::query(sql!(
                        db,
                        "INSERT INTO cycle_requests (cycle_id, app_id, dry_run, created_at)
                         VALUES ($1, {uuid $2}, $3, {ts $4})"
                    ))
                    .bind(cycle_id)
                    .bind(app_id)
                    .bind(dry_run)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    name_cycle_in_audit(cycle_id);
                    cycle_id.to_string()
                }
            }
        }))
    }

    /// Takes a request to plan the running cycle `cycle_id` again (a merged manual cycle).
    pub async fn take_replan(&self, app_id: &str, cycle_id: &str) -> StoreResult<bool> {
        let Some(app_id) = self.app_key(app_id) else {
            return Ok(false);
        };
        Ok(execute!(
            self,
            "DELETE FROM cycle_requests WHERE app_id = {uuid $1} AND cycle_id = $2",
            app_id,
            cycle_id
        ) > 0)
    }

    /// The oldest cycle request of the app, taken off the queue.
    pub async fn take_cycle_request(&self, app_id: &str) -> StoreResult<Option<(String, bool)>> {
        // Asked only by a pass that saw a request (`app_and_work`): no read before the claim.
        Ok(db_statement!(self, db, conn => {
            let Some(app_id) = db.app_key(app_id) else { return Ok(None) };
            // A claim: a request another transaction is taking is skipped, never taken twice.
            sqlx::query_as(sql!(
                db,
                "DELETE FROM cycle_requests WHERE cycle_id = (SELECT cycle_id FROM cycle_requests
                 WHERE app_id = {uuid $1} ORDER BY created_at LIMIT 1 {skip_locked}) RETURNING cycle_id, dry_run"
            ))
            .bind(app_id)
            .fetch_optional(&mut *conn)
            .await?
        }))
    }
}
