//! Access-end records (SPEC §8): one per end of an entitlement at an app, born in the commit that
//! decides the end and completed in the commit of the removal's outcome (DESIGN.md, "Where an
//! access ends"). Their writes are macros run on a transaction of either backend, so that they
//! ride the commits that decide and settle the end; their reads are the API's and the gauge's.

use super::dialect::{db_run, sql};
use super::*;

/// The columns of a record as `AccessEnd` reads them.
macro_rules! access_end_columns {
    () => {
        "id, {text app_id} AS app_id, principal_id, user_principal_name, group_id, target_display_name,
         event_id, reason, {ms ended_at} AS ended_at, {ms learned_at} AS learned_at,
         {ms removed_at} AS removed_at, action, status, waiting_on, {ms updated_at} AS updated_at"
    };
}

/// Writes a new record on the connection `$conn` of the backend `$db` (in the transaction that
/// decides the end). A `userPrincipalName` or `targetDisplayName` the record does not carry is
/// copied from the principal and the group's assignment as they are now.
macro_rules! insert_access_end {
    ($db:expr, $conn:expr, $r:expr) => {{
        let r: &$crate::store::AccessEnd = $r;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "INSERT INTO access_ends (id, app_id, principal_id, user_principal_name, group_id,
               target_display_name, event_id, reason, ended_at, learned_at, removed_at, action, status,
               waiting_on, updated_at)
             VALUES ($1, {uuid $2}, $3,
               COALESCE($4, (SELECT user_principal_name FROM principals WHERE principal_id = $3)), $5,
               COALESCE($6, (SELECT target_display_name FROM group_assignments
                               WHERE app_id = {uuid $2} AND group_id = $5)),
               $7, $8, {ts $9}, {ts $10}, {ts $11}, $12, $13, $14, {ts $15})"
        ))
        .bind(&r.id)
        .bind(&r.app_id)
        .bind(&r.principal_id)
        .bind(&r.user_principal_name)
        .bind(&r.group_id)
        .bind(&r.target_display_name)
        .bind(&r.event_id)
        .bind(&r.reason)
        .bind(r.ended_at)
        .bind(r.learned_at)
        .bind(r.removed_at)
        .bind(&r.action)
        .bind(&r.status)
        .bind(&r.waiting_on)
        .bind(r.updated_at)
        .execute($conn)
        .await
    }};
}

/// Settles, on the connection `$conn` of the backend `$db`, the open records of app `$app_id`
/// that the change `$c` (an `AccessEndChange`) names: `removed` with the target's confirmation,
/// `failed` (still open), or a final `kept` / `notProvisioned`. A removal confirmed observes
/// how long access outlived the end (`metrics::access_excess`).
macro_rules! settle_access_ends {
    ($db:expr, $conn:expr, $app_id:expr, $c:expr, $now:expr) => {{
        let c: &$crate::store::AccessEndChange = $c;
        let settled: Vec<(String, $crate::clock::Millis)> = sqlx::query_as($crate::store::dialect::sql!(
            $db,
            "UPDATE access_ends SET status = $4, removed_at = {ts $5}, action = $6, updated_at = {ts $7}
             WHERE app_id = {uuid $1} AND principal_id = $2 AND group_id = $3
               AND status IN ('pending', 'failed', 'held')
             RETURNING reason, {ms ended_at} AS ended_at"
        ))
        .bind($app_id)
        .bind(&c.principal_id)
        .bind(&c.group_id)
        .bind(c.status)
        .bind(c.removed_at)
        .bind(c.action)
        .bind($now)
        .fetch_all($conn)
        .await?;
        if let Some(removed_at) = c.removed_at {
            for (reason, ended_at) in &settled {
                let pim = $crate::store::PIM_END_REASONS.contains(&reason.as_str());
                $crate::metrics::access_excess(pim, removed_at - ended_at);
            }
        }
    }};
}

pub(super) use {insert_access_end, settle_access_ends};

impl SqlStore {
    pub(super) async fn query_access_ends(&self, f: &AccessEndFilter) -> StoreResult<Vec<AccessEnd>> {
        Ok(db_run!(self, db => {
            let mut q = sqlx::QueryBuilder::new(sql!(
                db,
                concat!("SELECT ", access_end_columns!(), " FROM access_ends WHERE 1 = 1")
            ));
            if let Some(ids) = &f.app_ids {
                db.push_app_ids(&mut q, ids);
            }
            if let Some(app_id) = &f.app_id {
                let Some(app_id) = db.app_key(app_id) else { return Ok(Vec::new()) };
                let (open, close) = db.dialect().wrap("uuid");
                q.push(" AND app_id = ").push(open).push_bind(app_id.to_string()).push(close);
            }
            let equal = [
                ("principal_id", &f.principal_id),
                ("group_id", &f.group_id),
                ("event_id", &f.event_id),
                ("status", &f.status),
                ("reason", &f.reason),
            ];
            for (column, value) in equal {
                if let Some(value) = value {
                    q.push(format_args!(" AND {column} = ")).push_bind(value.clone());
                }
            }
            let (open, close) = db.dialect().wrap("ts");
            if let Some(since) = f.since {
                q.push(" AND ended_at >= ").push(open).push_bind(since).push(close);
            }
            if let Some(until) = f.until {
                q.push(" AND ended_at < ").push(open).push_bind(until).push(close);
            }
            if let Some((ended_at, id)) = &f.before {
                q.push(" AND (ended_at < ").push(open).push_bind(*ended_at).push(close);
                q.push(" OR (ended_at = ").push(open).push_bind(*ended_at).push(close);
                q.push(" AND id < ").push_bind(id.clone()).push("))");
            }
            q.push(" ORDER BY ended_at DESC, id DESC LIMIT ").push_bind(f.limit);
            q.build_query_as().fetch_all(&db.pool).await?
        }))
    }

    pub(super) async fn open_access_ends(&self) -> StoreResult<Vec<AccessEnd>> {
        Ok(db_run!(self, db => {
            sqlx::query_as(sql!(
                db,
                concat!(
                    "SELECT ", access_end_columns!(), " FROM access_ends
                     WHERE status IN ('pending', 'failed', 'held') ORDER BY ended_at"
                )
            ))
            .fetch_all(&db.pool)
            .await?
        }))
    }
}
