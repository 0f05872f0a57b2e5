//! The provisioning log: one entry per thing done (or not done) for a membership at an app,
//! paged newest first by `seq`.

use super::dialect::{RowsConn, db_run, db_statement, execute_chunked, read, sql};
use super::*;

/// The log entries, their rows as `{rows $1}` (see `insert_logs`).
const INSERT_LOGS: &str = "INSERT INTO provisioning_logs (id, time, app_id, app_name, trigger, cycle_id, event_id,
    job_id, principal_id, user_principal_name, group_id, action, status, reason, deferred_until, target_user_id,
    target_group_id, attempt, duration_ms, latency_ms, steps, trace_id)
    SELECT {field 0 text}, {field 1 ts}, {field 2 uuid}, {field 3 text}, {field 4 text}, {field 5 text},
      {field 6 text}, {field 7 text}, {field 8 text}, {field 9 text}, {field 10 text}, {field 11 text},
      {field 12 text}, {field 13 text}, {field 14 ts}, {field 15 text}, {field 16 text}, {field 17 bigint},
      {field 18 bigint}, {field 19 bigint}, {field 20 jsonb}, {field 21 text}
    FROM {rows $1} ORDER BY r.key";

/// Writes the entries in order, a statement per chunk of them (`dialect::json_rows`).
pub(super) async fn insert_logs(conn: &mut impl RowsConn, entries: &[LogEntry]) -> StoreResult<()> {
    let rows: Vec<Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!([
                e.id,
                e.time,
                e.app_id,
                e.app_name,
                e.trigger,
                e.cycle_id,
                e.event_id,
                e.job_id,
                e.principal_id,
                e.user_principal_name,
                e.group_id,
                e.action,
                e.status,
                e.reason,
                e.deferred_until,
                e.target_user_id,
                e.target_group_id,
                e.attempt,
                e.duration_ms,
                e.latency_ms,
                to_json(&e.steps),
                e.trace_id,
            ])
        })
        .collect();
    Ok(execute_chunked(conn, |d| sql!(d, INSERT_LOGS), &rows).await?)
}

/// What the retention purges (`purge_oldest`): the provisioning log, or the audit trail.
pub(super) enum Trail {
    Logs,
    Audit,
}

/// A log row as `LogEntry` reads it.
macro_rules! log_columns {
    () => {
        "{seq}, id, {ms time} AS time, {text app_id} AS app_id, app_name, trigger, cycle_id,
         event_id, job_id, principal_id, user_principal_name, group_id, action, status, reason,
         {ms deferred_until} AS deferred_until, target_user_id, target_group_id, attempt, duration_ms, latency_ms,
         steps, trace_id"
    };
}

/// Pushes onto `$q`, a listing's query on the backend `$db`, the conditions of the filters `$f`
/// gives (a `LogFilter` or an `AccessEndFilter`): its apps (an owner's), its app, its principal,
/// group, event and status and each other `(column, value)` of `$equal`, and the column `$time` at
/// or after `f.since` and before `f.until`. An app id no stored app can have answers an empty page.
macro_rules! push_filters {
    ($db:expr, $q:expr, $f:expr, $time:literal, [$($equal:expr),*]) => {{
        let f = $f;
        if let Some(ids) = &f.app_ids {
            $db.push_app_ids(&mut $q, ids);
        }
        if let Some(app_id) = &f.app_id {
            let Some(app_id) = $db.app_key(app_id) else { return Ok(Vec::new()) };
            let (open, close) = $db.dialect().wrap("uuid");
            $q.push(" AND app_id = ").push(open).push_bind(app_id.to_string()).push(close);
        }
        let common = [
            ("principal_id", &f.principal_id),
            ("group_id", &f.group_id),
            ("event_id", &f.event_id),
            ("status", &f.status),
        ];
        for (column, value) in common.into_iter().chain([$($equal),*]) {
            if let Some(value) = value {
                $q.push(format_args!(" AND {column} = ")).push_bind(value.clone());
            }
        }
        let (open, close) = $db.dialect().wrap("ts");
        if let Some(since) = f.since {
            $q.push(concat!(" AND ", $time, " >= ")).push(open).push_bind(since).push(close);
        }
        if let Some(until) = f.until {
            $q.push(concat!(" AND ", $time, " < ")).push(open).push_bind(until).push(close);
        }
    }};
}
pub(super) use push_filters;

impl Store {
    pub async fn insert_log(&self, entry: &LogEntry) -> StoreResult<()> {
        db_statement!(self, db, conn => {
            insert_logs(&mut *conn, std::slice::from_ref(entry)).await?;
            db.order_commits_later();
        });
        Ok(())
    }

    pub async fn query_logs(&self, f: &LogFilter) -> StoreResult<Vec<LogEntry>> {
        Ok(db_run!(self, db => {
            // Entries a writer committed but could not number yet (it died in between) are
            // numbered before the page is read.
            db.order_commits().await;
            // Only the filters given become conditions, so SQLite walks the primary key (or the
            // app's index) from the cursor down: a page costs the same on the millionth entry.
            let mut q = sqlx::QueryBuilder::new(sql!(
                db,
                concat!("SELECT ", log_columns!(), " FROM provisioning_logs WHERE {numbered}")
            ));
            push_filters!(db, q, f, "time", [("action", &f.action), ("trigger", &f.trigger)]);
            if let Some(cursor) = f.before_seq {
                q.push(" AND seq < ").push_bind(cursor);
            }
            let (open, close) = db.dialect().wrap("limit");
            q.push(" ORDER BY seq DESC ").push(open).push_bind(f.limit).push(close);
            q.build_query_as().fetch_all(&db.pool).await?
        }))
    }

    pub async fn get_log(&self, id: &str) -> StoreResult<Option<LogEntry>> {
        Ok(read!(self, query_as fetch_optional,
            concat!("SELECT ", log_columns!(), " FROM provisioning_logs WHERE id = $1"),
            id))
    }

    pub async fn purge_logs(&self, older_than: Millis, batch: i64) -> StoreResult<u64> {
        self.purge_oldest(Trail::Logs, older_than, batch).await
    }

    /// Deletes up to `batch` of the trail's oldest entries written before `older_than`, in the
    /// order they were written; answers how many went.
    pub(super) async fn purge_oldest(&self, trail: Trail, older_than: Millis, batch: i64) -> StoreResult<u64> {
        Ok(db_run!(self, db => {
            let delete = match trail {
                Trail::Logs => sql!(
                    db,
                    "DELETE FROM provisioning_logs WHERE {pos} IN (SELECT {pos} FROM provisioning_logs
                     WHERE time < {ts $1} ORDER BY {pos} {limit $2})"
                ),
                Trail::Audit => sql!(
                    db,
                    "DELETE FROM audit WHERE {pos} IN (SELECT {pos} FROM audit
                     WHERE time < {ts $1} ORDER BY {pos} {limit $2})"
                ),
            };
            sqlx::query(delete)
                .bind(older_than)
                .bind(batch)
                .execute(&db.pool)
                .await?
                .rows_affected()
        }))
    }
}
