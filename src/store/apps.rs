//! Apps (the SCIM targets), their group assignments, and the sealed credentials' key check.

use super::dialect::{db_run, db_statement, db_tx, execute, read, sql};
use super::jobs::{job_object, runnable};
use super::*;

/// An app row as `AppRecord` reads it.
macro_rules! app_columns {
    () => {
        "{text id} AS id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status, status_reason,
         legacy_remove, {ms next_sync_at} AS next_sync_at, quarantine_level, {ms created_at} AS created_at,
         {ms deleted_at} AS deleted_at, managed"
    };
}

/// Writes the app `$a` on `$conn`; its name is its own (`name_key`, unique: SPEC §9), so a name
/// taken by another app is `StoreError::NameTaken`.
macro_rules! insert_app_row {
    ($db:expr, $conn:expr, $a:expr) => {{
        let a: &$crate::store::AppRecord = $a;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "INSERT INTO apps (id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status,
             status_reason, legacy_remove, next_sync_at, quarantine_level, created_at, managed, name_key,
             target_key)
             VALUES ({uuid $1}, $2, $3, $4, $5, {jsonb $6}, {jsonb $7}, $8, $9, $10, {ts $11}, $12, {ts $13}, $14, $2,
             $15)"
        ))
        .bind(&a.id)
        .bind(&a.name)
        .bind(&a.scim_base_url)
        .bind(&a.auth_type)
        .bind(&a.auth_sealed)
        .bind($crate::store::to_json(&a.settings))
        .bind($crate::store::to_json(&a.owners))
        .bind(&a.status)
        .bind(&a.status_reason)
        .bind(a.legacy_remove)
        .bind(a.next_sync_at)
        .bind(a.quarantine_level)
        .bind(a.created_at)
        .bind(a.managed)
        .bind($crate::store::target_key(&a.scim_base_url))
        .execute($conn)
        .await
        .map_err(|e| $crate::store::name_taken(e, &a.name))
    }};
}
pub(super) use insert_app_row;

/// Changes the app `$id` on `$conn` as `$c` says (each column keeps its stored value unless the
/// change sets it; a new name becomes the app's own, see `insert_app_row`); `$managed`: an applied
/// document now manages it.
macro_rules! change_app_row {
    ($db:expr, $conn:expr, $id:expr, $c:expr, $managed:expr) => {{
        let c: &$crate::store::AppChanges = $c;
        let managed: bool = $managed;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "UPDATE apps SET name = COALESCE($1, name), name_key = COALESCE($1, name_key),
               scim_base_url = COALESCE($2, scim_base_url), target_key = COALESCE($12, target_key),
               auth_type = COALESCE($3, auth_type), auth_sealed = COALESCE($4, auth_sealed),
               settings = COALESCE({jsonb $5}, settings), owners = COALESCE({jsonb $6}, owners),
               status = COALESCE($7, status), status_reason = CASE WHEN $8 THEN $9 ELSE status_reason END,
               managed = managed OR $11
             WHERE id = {uuid $10}"
        ))
        .bind(&c.name)
        .bind(&c.scim_base_url)
        .bind(c.auth.as_ref().map(|(kind, _)| kind))
        .bind(c.auth.as_ref().map(|(_, sealed)| sealed))
        .bind(c.settings.as_ref().map($crate::store::to_json))
        .bind(c.owners.as_ref().map($crate::store::to_json))
        .bind(c.status.as_ref().map(|(s, _)| s))
        .bind(c.status.is_some())
        .bind(c.status.as_ref().and_then(|(_, r)| r.clone()))
        .bind($id)
        .bind(managed)
        .bind(c.scim_base_url.as_deref().map($crate::store::target_key))
        .execute($conn)
        .await
        .map_err(|e| $crate::store::name_taken(e, c.name.as_deref().unwrap_or_default()))?;
        if c.status.as_ref().is_some_and(|(status, _)| status == "deleting") {
            // Deprovisioning ends every provisioned member's access at the app now (SPEC §8).
            sqlx::query($crate::store::dialect::sql!(
                $db,
                $crate::store::access_ends::DEPROVISIONED
            ))
            .bind($id)
            .bind(c.deprovision_at.unwrap_or_default())
            .execute($conn)
            .await?;
        }
    }};
}
pub(super) use change_app_row;

/// Assigns a group to an app on `$conn` (a new target display name replaces the old one).
macro_rules! put_assignment_row {
    ($db:expr, $conn:expr, $a:expr) => {{
        let a: &$crate::store::Assignment = $a;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "INSERT INTO group_assignments (app_id, group_id, target_display_name, created_at)
             VALUES ({uuid $1}, $2, $3, {ts $4})
             ON CONFLICT (app_id, group_id) DO UPDATE SET target_display_name = excluded.target_display_name"
        ))
        .bind(&a.app_id)
        .bind(&a.group_id)
        .bind(&a.target_display_name)
        .bind(a.created_at)
        .execute($conn)
        .await
    }};
}
pub(super) use put_assignment_row;

/// Unassigns a group from an app on `$conn`, in a transaction: the members provisioned through
/// the assignment lose that entitlement now (SPEC §8), so their access ends are written first,
/// while the assignment still says where they are. Answers the rows deleted.
macro_rules! delete_assignment_row {
    ($db:expr, $conn:expr, $app_id:expr, $group_id:expr, $now:expr) => {{
        let (app_id, group_id): (&str, &str) = ($app_id, $group_id);
        $crate::store::access_ends::birth_access_ends!($db, &mut *$conn, app: Some(app_id), group: group_id, principal: None, "unassigned", $now)?;
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "DELETE FROM group_assignments WHERE app_id = {uuid $1} AND group_id = $2"
        ))
        .bind(app_id)
        .bind(group_id)
        .execute(&mut *$conn)
        .await
        .map(|done| done.rows_affected())
    }};
}
pub(super) use delete_assignment_row;

/// Gives every app whose name is now its alone (another app of that name was renamed or deleted)
/// its name back as its own (`name_key`), on `$conn`.
macro_rules! reclaim_names {
    ($db:expr, $conn:expr) => {
        sqlx::query($crate::store::dialect::sql!(
            $db,
            "UPDATE apps SET name_key = name WHERE name_key IS NULL AND deleted_at IS NULL
               AND name IN (SELECT name FROM apps WHERE deleted_at IS NULL GROUP BY name HAVING COUNT(*) = 1)"
        ))
        .execute($conn)
        .await
    };
}
pub(super) use reclaim_names;

/// The sealed known value (see `Store::key_check`).
const KEY_CHECK: &str = "SELECT sealed FROM key_check WHERE id = 1";

impl Store {
    pub async fn insert_app(&self, a: &AppRecord) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            insert_app_row!(db, &mut *tx, a)?;
        });
        Ok(())
    }

    /// Writes only the fields the change sets, so it never undoes what another writer (a cycle
    /// quarantining the app, say) committed meanwhile.
    pub async fn change_app(&self, id: &str, c: &AppChanges) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            let Some(id) = db.app_key(id) else { return Ok(()) };
            change_app_row!(db, &mut *tx, id, c, false);
            if c.name.is_some() {
                reclaim_names!(db, &mut *tx)?;
            }
        });
        Ok(())
    }

    /// The app (as `get_app`), its jobs a pass takes now (at most `limit`, in arrival order; see
    /// `jobs::runnable`) and whether a cycle was asked for, in one read: what a dispatcher's pass
    /// reads first. One statement sees the app and its jobs as of one moment, so a pause (or
    /// quarantine) committed before a job arrived is always seen with that job.
    pub async fn app_and_work(&self, id: &str, now: Millis, limit: i64) -> StoreResult<Option<AppWork>> {
        let work: Option<AppWork> = db_run!(self, db => {
            let Some(id) = db.app_key(id) else { return Ok(None) };
            sqlx::query_as(sql!(
                db,
                concat!(
                    "SELECT ",
                    app_columns!(),
                    ", EXISTS (SELECT 1 FROM cycle_requests r WHERE r.app_id = apps.id) AS cycle_asked,
                       (SELECT {json_agg q.job} FROM (SELECT {object}(",
                    job_object!(),
                    ") AS job ",
                    runnable!(),
                    ") q) AS jobs
                     FROM apps WHERE id = {uuid $1} AND deleted_at IS NULL"
                )
            ))
            .bind(id)
            .bind(now)
            .bind(limit)
            .fetch_optional(&db.pool)
            .await?
        });
        Ok(work.map(|mut w| {
            // An aggregate keeps its rows' order in practice, not by definition.
            w.jobs.sort_by_key(|j| j.seq);
            w
        }))
    }

    pub async fn get_app(&self, id: &str) -> StoreResult<Option<AppRecord>> {
        Ok(db_run!(self, db => {
            let Some(id) = db.app_key(id) else { return Ok(None) };
            sqlx::query_as(sql!(
                db,
                concat!("SELECT ", app_columns!(), " FROM apps WHERE id = {uuid $1} AND deleted_at IS NULL")
            ))
            .bind(id)
            .fetch_optional(&db.pool)
            .await?
        }))
    }

    /// The ids of the apps (not deleted) that have this name.
    pub async fn app_named(&self, name: &str) -> StoreResult<Vec<String>> {
        Ok(read!(self, query_scalar fetch_all,
            "SELECT {text id} FROM apps WHERE name = $1 AND deleted_at IS NULL ORDER BY created_at, id", name))
    }

    /// The apps (not deleted) whose `scimBaseUrl` may name the same target as `url`: those with its
    /// `target_key`, and any stored before keys were (the caller compares their URLs). With
    /// `acting_only`, only (at least) those whose access end disables or deletes users.
    pub async fn apps_on_target(&self, url: &str, acting_only: bool) -> StoreResult<Vec<AppTarget>> {
        let key = target_key(url);
        // Acting on users: `onAccessEnd` disableUser or deleteUser, or no `onAccessEnd` and no
        // groups (`AppSettings::on_access_end`); a superset is fine, the caller decides.
        Ok(read!(self, query_as fetch_all,
            "SELECT {text id} AS id, name, scim_base_url, settings FROM apps
             WHERE (target_key = $1 OR target_key IS NULL) AND deleted_at IS NULL
               AND (NOT $2 OR settings ->> 'onAccessEnd' IN ('disableUser', 'deleteUser')
                    OR settings -> 'provisionGroups' = 'false')
             ORDER BY created_at, id", key, acting_only))
    }

    /// Gives every app stored before `target_key` existed its key; answers how many.
    pub async fn fill_target_keys(&self) -> StoreResult<u64> {
        let unkeyed: Vec<(String, String)> =
            read!(self, query_as fetch_all, "SELECT {text id}, scim_base_url FROM apps WHERE target_key IS NULL");
        for (id, url) in &unkeyed {
            execute!(
                self,
                "UPDATE apps SET target_key = $2 WHERE id = {uuid $1}",
                id,
                target_key(url)
            );
        }
        Ok(unkeyed.len() as u64)
    }

    pub async fn list_apps(&self) -> StoreResult<Vec<AppRecord>> {
        Ok(db_run!(self, db => {
            sqlx::query_as(sql!(
                db,
                concat!(
                    "SELECT ",
                    app_columns!(),
                    " FROM apps WHERE deleted_at IS NULL ORDER BY apps.created_at, apps.id"
                )
            ))
            .fetch_all(&db.pool)
            .await?
        }))
    }

    pub async fn set_app_status(&self, id: &str, status: &str, reason: Option<&str>, level: i64) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            let Some(id) = db.app_key(id) else { return Ok(()) };
            sqlx::query(sql!(
                db,
                "UPDATE apps SET status = $1, status_reason = $2, quarantine_level = $3 WHERE id = {uuid $4}"
            ))
            .bind(status)
            .bind(reason)
            .bind(level)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    pub async fn set_next_sync(&self, id: &str, at: Millis) -> StoreResult<()> {
        db_statement!(self, db, conn => {
            let Some(id) = db.app_key(id) else { return Ok(()) };
            sqlx::query(sql!(db, "UPDATE apps SET next_sync_at = {ts $1} WHERE id = {uuid $2}"))
                .bind(at)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    pub async fn delete_app(&self, id: &str, now: Millis) -> StoreResult<()> {
        let Some(id) = self.app_key(id) else { return Ok(()) };
        db_tx!(self, db, tx => {
            db.forget_app_lease(&mut tx, id).await?;
            // A deleted app's name is free again.
            sqlx::query(sql!(db, "UPDATE apps SET deleted_at = {ts $1}, name_key = NULL WHERE id = {uuid $2}"))
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql!(db, "DELETE FROM group_assignments WHERE app_id = {uuid $1}"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql!(
                db,
                "UPDATE jobs SET state = 'cancelled', updated_at = {ts $1}
                 WHERE app_id = {uuid $2} AND state IN ('pending', 'deferred', 'in_flight')"
            ))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            // Deleting an app forgets its links (what was last sent for each principal).
            sqlx::query(sql!(db, "DELETE FROM target_users WHERE app_id = {uuid $1}"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            reclaim_names!(db, &mut *tx)?;
        });
        Ok(())
    }

    pub async fn put_assignment(&self, a: &Assignment) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            put_assignment_row!(db, &mut *tx, a)?;
        });
        Ok(())
    }

    pub async fn delete_assignment(&self, app_id: &str, group_id: &str, now: Millis) -> StoreResult<bool> {
        let done = db_tx!(self, db, tx => {
            let Some(app_id) = db.app_key(app_id) else { return Ok(false) };
            delete_assignment_row!(db, &mut *tx, app_id, group_id, now)?
        });
        Ok(done > 0)
    }

    pub async fn list_assignments(&self, app_id: &str) -> StoreResult<Vec<Assignment>> {
        Ok(db_run!(self, db => {
            let Some(app_id) = db.app_key(app_id) else { return Ok(Vec::new()) };
            sqlx::query_as(sql!(
                db,
                "SELECT {text app_id} AS app_id, group_id, target_display_name, {ms created_at} AS created_at
                 FROM group_assignments WHERE app_id = {uuid $1} ORDER BY created_at, {binary group_id}"
            ))
            .bind(app_id)
            .fetch_all(&db.pool)
            .await?
        }))
    }

    // encryption-key rotation (`scim-bridge rekey`)
    /// Passes the stored credentials of every app, deleted ones included, through `reseal` in one
    /// transaction and stores what it answers. Answers how many were resealed, and the ids of the
    /// apps it answered `None` for (left as they were).
    pub async fn reseal_credentials(&self, reseal: &Reseal) -> StoreResult<(usize, Vec<String>)> {
        Ok(db_tx!(self, db, tx => {
            let rows: Vec<(String, Vec<u8>)> =
                sqlx::query_as(sql!(db, "SELECT {text id}, auth_sealed FROM apps ORDER BY created_at, id {for_update}"))
                    .fetch_all(&mut *tx)
                    .await?;
            let mut resealed = 0;
            let mut unopened = Vec::new();
            for (id, sealed) in &rows {
                match reseal(Some(id), sealed) {
                    Some(again) => {
                        sqlx::query(sql!(db, "UPDATE apps SET auth_sealed = $1 WHERE id = {uuid $2}"))
                            .bind(again)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        resealed += 1;
                    }
                    None => unopened.push(id.clone()),
                }
            }
            let check: Option<Vec<u8>> = sqlx::query_scalar(sql!(db, KEY_CHECK))
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(again) = check.as_deref().and_then(|sealed| reseal(None, sealed)) {
                sqlx::query(sql!(db, "UPDATE key_check SET sealed = $1 WHERE id = 1"))
                    .bind(again)
                    .execute(&mut *tx)
                    .await?;
            }
            (resealed, unopened)
        }))
    }

    /// The known value sealed with the key the stored credentials are written with (see
    /// `crate::check_encryption_keys`); `None` until a first start stored it. `reseal_credentials`
    /// passes it through `reseal` too.
    pub async fn key_check(&self) -> StoreResult<Option<Vec<u8>>> {
        Ok(db_run!(self, db => {
            sqlx::query_scalar(sql!(db, KEY_CHECK))
                .fetch_optional(&db.pool)
                .await?
        }))
    }

    /// Stores the sealed known value unless one is stored already (another replica may have got
    /// there first); answers the one stored now.
    pub async fn init_key_check(&self, sealed: &[u8], now: Millis) -> StoreResult<Vec<u8>> {
        Ok(db_run!(self, db => {
            sqlx::query(sql!(
                db,
                "INSERT INTO key_check (id, sealed, created_at) VALUES (1, $1, {ts $2}) ON CONFLICT DO NOTHING"
            ))
            .bind(sealed)
            .bind(now)
            .execute(&db.pool)
            .await?;
            sqlx::query_scalar(sql!(db, KEY_CHECK))
                .fetch_one(&db.pool)
                .await?
        }))
    }
}
