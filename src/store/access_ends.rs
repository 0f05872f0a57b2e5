//! Access-end records (SPEC §8): one per end of an entitlement at an app, born in the commit that
//! decides the end and completed in the commit of the removal's outcome (DESIGN.md, "Where an
//! access ends"). Their writes are macros run on a transaction of either backend, so that they
//! ride the commits that decide and settle the end; their reads are the API's and the gauge's.

use super::dialect::{app_read, db_run, read, sql};
use super::logs::push_filters;
use super::memberships::entitles;
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
/// that the change `$c` (an `AccessEndChange`) names: `failed` (still open), or a final `kept` /
/// `notProvisioned`. A confirmed removal settles its records through `settle_removed`.
macro_rules! settle_access_ends {
    ($db:expr, $conn:expr, $app_id:expr, $c:expr, $now:expr) => {{
        let c: &$crate::store::AccessEndChange = $c;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "UPDATE access_ends SET status = $4, updated_at = {ts $5}
             WHERE app_id = {uuid $1} AND principal_id = $2 AND group_id = $3
               AND status IN ('pending', 'failed', 'held')"
        ))
        .bind($app_id)
        .bind(&c.principal_id)
        .bind(&c.group_id)
        .bind(c.status)
        .bind($now)
        .execute($conn)
        .await
    }};
}

/// The columns an `INSERT ... SELECT` of new records writes, after `id, app_id, principal_id,
/// group_id, target_display_name` chosen by its query: the principal's name now, no event, the
/// reason `$R` ended at `$T`, learned at `$T`.
macro_rules! born_columns {
    () => {
        "INSERT INTO access_ends (id, app_id, principal_id, group_id, target_display_name, user_principal_name,
           event_id, reason, ended_at, learned_at, removed_at, action, status, waiting_on, updated_at)"
    };
}

/// Records born with an end that the directory or an unassignment decides: one per member the
/// bridge provisioned in the target group that the group `$2` is assigned to (SPEC §8), pending
/// until the removal's outcome, unless an end of the same member at the same target group is
/// already open (the first end is the one measured). `$1` the app (or NULL: every app the group
/// is assigned to), `$3` the principal (or NULL: every member), `$4` the reason, `$5` the time.
/// An unassignment writes them before the assignment goes.
pub(super) const BIRTHS: &str = concat!(
    born_columns!(),
    " SELECT {new_id}, p.app_id, p.principal_id, ga.group_id, p.target_display_name,
       (SELECT pr.user_principal_name FROM principals pr WHERE pr.principal_id = p.principal_id),
       NULL, $4, {ts $5}, {ts $5}, NULL, NULL, 'pending', NULL, {ts $5}
     FROM provisioned p
     JOIN group_assignments ga ON ga.app_id = p.app_id AND ga.target_display_name = p.target_display_name
     WHERE ga.group_id = $2 AND ({uuid $1} IS NULL OR p.app_id = {uuid $1})
       AND ({text $3} IS NULL OR p.principal_id = $3)
       AND NOT EXISTS (SELECT 1 FROM access_ends e WHERE e.app_id = p.app_id AND e.principal_id = p.principal_id
             AND e.target_display_name = p.target_display_name AND e.status IN ('pending', 'failed', 'held'))"
);

/// Records born with a deprovisioning (`DELETE /v1/apps/{id}?deprovision=true`, SPEC §8): one per
/// member the bridge provisioned at the app `$1`, at `$2`, unless an end of it is already open.
pub(super) const DEPROVISIONED: &str = concat!(
    born_columns!(),
    " SELECT {new_id}, p.app_id, p.principal_id, COALESCE(p.group_id, ''), p.target_display_name,
       (SELECT pr.user_principal_name FROM principals pr WHERE pr.principal_id = p.principal_id),
       NULL, 'appDeprovisioned', {ts $2}, {ts $2}, NULL, NULL, 'pending', NULL, {ts $2}
     FROM provisioned p
     WHERE p.app_id = {uuid $1}
       AND NOT EXISTS (SELECT 1 FROM access_ends e WHERE e.app_id = p.app_id AND e.principal_id = p.principal_id
             AND e.target_display_name = p.target_display_name AND e.status IN ('pending', 'failed', 'held'))"
);

/// Writes, on the connection `$conn` of the backend `$db`, the records of the ends that a
/// directory removal or an unassignment decides (see `BIRTHS`).
macro_rules! birth_access_ends {
    ($db:expr, $conn:expr, app: $app_id:expr, group: $group_id:expr, principal: $principal_id:expr, $reason:expr, $now:expr) => {{
        let (app_id, group_id, principal_id): (Option<&str>, &str, Option<&str>) = ($app_id, $group_id, $principal_id);
        sqlx::query($crate::store::dialect::sql!($db, $crate::store::access_ends::BIRTHS))
            .bind(app_id)
            .bind(group_id)
            .bind(principal_id)
            .bind($reason)
            .bind($now)
            .execute($conn)
            .await
    }};
}

/// Settles as `removed`, on the connection `$conn` of the backend `$db`, the open records of the
/// members (`$members`, JSON rows `{"t": target display name, "p": principal}`) of the app
/// `$app_id` whose removal the target confirmed at `$now` (members gone from their target group,
/// whatever removed them), with the action `$action`; observes each excess. One statement.
macro_rules! settle_removed {
    ($db:expr, $conn:expr, $app_id:expr, $members:expr, $action:expr, $now:expr) => {{
        let now: $crate::clock::Millis = $now;
        let settled: Vec<(String, $crate::clock::Millis)> = sqlx::query_as($crate::store::dialect::sql!(
            $db,
            "UPDATE access_ends SET status = 'removed', removed_at = {ts $2}, action = $4, updated_at = {ts $2}
             WHERE app_id = {uuid $1} AND status IN ('pending', 'failed', 'held')
               AND (target_display_name, principal_id) IN (SELECT v.t, v.p FROM {members $3} v)
             RETURNING reason, {ms ended_at} AS ended_at"
        ))
        .bind($app_id)
        .bind(now)
        .bind($members)
        .bind($action)
        .fetch_all($conn)
        .await?;
        for (reason, ended_at) in &settled {
            let pim = $crate::store::PIM_END_REASONS.contains(&reason.as_str());
            $crate::metrics::access_excess(pim, now - ended_at);
        }
    }};
}

/// Settles as `kept`, at the end of a cycle of the app `$app_id`, the open records of ends the
/// cycle did not act on because something still entitles the member at that target group (a
/// PIM end's own removal settles its record itself).
macro_rules! settle_kept {
    ($db:expr, $conn:expr, $app_id:expr, $now:expr) => {{
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "UPDATE access_ends SET status = 'kept', updated_at = {ts $2}
             WHERE app_id = {uuid $1} AND status = 'pending'
               AND reason IN ('directory', 'unassigned', 'outOfScope')
               AND EXISTS (SELECT 1 FROM group_assignments ga
                 WHERE ga.app_id = access_ends.app_id AND ga.target_display_name = access_ends.target_display_name
                   AND (EXISTS (SELECT 1 FROM standing_members s
                                 WHERE s.group_id = ga.group_id AND s.principal_id = access_ends.principal_id)
                        OR EXISTS (SELECT 1 FROM memberships m
                                 WHERE m.group_id = ga.group_id AND m.principal_id = access_ends.principal_id
                                   AND m.access_id = 'member' AND m.active
                                   AND (m.start_at IS NULL OR m.start_at <= {ts $2})
                                   AND (m.end_at IS NULL OR m.end_at > {ts $2}))))"
        ))
        .bind($app_id)
        .bind($now)
        .execute($conn)
        .await
    }};
}

pub(super) use {birth_access_ends, insert_access_end, settle_access_ends, settle_kept, settle_removed};

impl Store {
    /// Access-end records, newest end first (SPEC §8).
    pub async fn query_access_ends(&self, f: &AccessEndFilter) -> StoreResult<Vec<AccessEnd>> {
        Ok(db_run!(self, db => {
            let mut q = sqlx::QueryBuilder::new(sql!(
                db,
                concat!("SELECT ", access_end_columns!(), " FROM access_ends WHERE 1 = 1")
            ));
            push_filters!(db, q, f, "ended_at", [("reason", &f.reason)]);
            if let Some((ended_at, id)) = &f.before {
                let (open, close) = db.dialect().wrap("ts");
                q.push(" AND (ended_at < ").push(open).push_bind(*ended_at).push(close);
                q.push(" OR (ended_at = ").push(open).push_bind(*ended_at).push(close);
                q.push(" AND id < ").push_bind(id.clone()).push("))");
            }
            let (open, close) = db.dialect().wrap("limit");
            q.push(" ORDER BY ended_at DESC, id DESC ").push(open).push_bind(f.limit).push(close);
            q.build_query_as().fetch_all(&db.pool).await?
        }))
    }

    /// Whether anything entitles the principal at the app now (any assigned group).
    pub async fn entitled_at_app(&self, app_id: &str, principal_id: &str, now: Millis) -> StoreResult<bool> {
        let found: Option<i64> = app_read!(self, query_scalar fetch_optional, else None,
            concat!("SELECT 1 FROM group_assignments ga WHERE ga.app_id = {uuid $1} AND ", entitles!("$2", "$3"), " LIMIT 1"),
            app_id, principal_id, now);
        Ok(found.is_some())
    }

    /// The open access ends (pending, failed, held) of every app, for the objective's gauge.
    pub async fn open_access_ends(&self) -> StoreResult<Vec<AccessEnd>> {
        Ok(read!(self, query_as fetch_all, concat!(
            "SELECT ", access_end_columns!(), " FROM access_ends
             WHERE status IN ('pending', 'failed', 'held') ORDER BY ended_at"
        )))
    }
}
