//! Apps (the SCIM targets), their group assignments, and the sealed credentials' key check.

use super::access_ends::birth_access_ends;
use super::dialect::{db_run, db_statement, db_tx, sql};
use super::*;

/// An app row as `AppRecord` reads it.
macro_rules! app_columns {
    () => {
        "{text id} AS id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status, status_reason,
         legacy_remove, {ms next_sync_at} AS next_sync_at, quarantine_level, {ms created_at} AS created_at,
         {ms deleted_at} AS deleted_at"
    };
}

/// The sealed known value (see `Store::key_check`).
const KEY_CHECK: &str = "SELECT sealed FROM key_check WHERE id = 1";

impl SqlStore {
    pub(super) async fn insert_app(&self, a: &AppRecord) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            sqlx::query(sql!(
                db,
                "INSERT INTO apps (id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status,
                 status_reason, legacy_remove, next_sync_at, quarantine_level, created_at)
                 VALUES ({uuid $1}, $2, $3, $4, $5, {jsonb $6}, {jsonb $7}, $8, $9, $10, {ts $11}, $12, {ts $13})"
            ))
            .bind(&a.id)
            .bind(&a.name)
            .bind(&a.scim_base_url)
            .bind(&a.auth_type)
            .bind(&a.auth_sealed)
            .bind(to_json(&a.settings))
            .bind(to_json(&a.owners))
            .bind(&a.status)
            .bind(&a.status_reason)
            .bind(a.legacy_remove)
            .bind(a.next_sync_at)
            .bind(a.quarantine_level)
            .bind(a.created_at)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    pub(super) async fn change_app(&self, id: &str, c: &AppChanges) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            let Some(id) = db.app_key(id) else { return Ok(()) };
            // Each column keeps its stored value unless the change sets it.
            sqlx::query(sql!(
                db,
                "UPDATE apps SET name = COALESCE($1, name), scim_base_url = COALESCE($2, scim_base_url),
                   auth_type = COALESCE($3, auth_type), auth_sealed = COALESCE($4, auth_sealed),
                   settings = COALESCE({jsonb $5}, settings), owners = COALESCE({jsonb $6}, owners),
                   status = COALESCE($7, status), status_reason = CASE WHEN $8 THEN $9 ELSE status_reason END
                 WHERE id = {uuid $10}"
            ))
            .bind(&c.name)
            .bind(&c.scim_base_url)
            .bind(c.auth.as_ref().map(|(kind, _)| kind))
            .bind(c.auth.as_ref().map(|(_, sealed)| sealed))
            .bind(c.settings.as_ref().map(to_json))
            .bind(c.owners.as_ref().map(to_json))
            .bind(c.status.as_ref().map(|(s, _)| s))
            .bind(c.status.is_some())
            .bind(c.status.as_ref().and_then(|(_, r)| r.clone()))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if c.status.as_ref().is_some_and(|(status, _)| status == "deleting") {
                // Deprovisioning ends every provisioned member's access at the app now (SPEC §8).
                sqlx::query(sql!(db, super::access_ends::DEPROVISIONED))
                    .bind(id)
                    .bind(c.deprovision_at.unwrap_or_default())
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(())
    }

    pub(super) async fn get_app(&self, id: &str) -> StoreResult<Option<AppRecord>> {
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

    pub(super) async fn list_apps(&self) -> StoreResult<Vec<AppRecord>> {
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

    pub(super) async fn set_app_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
        level: i64,
    ) -> StoreResult<()> {
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

    pub(super) async fn set_next_sync(&self, id: &str, at: Millis) -> StoreResult<()> {
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

    pub(super) async fn delete_app(&self, id: &str, now: Millis) -> StoreResult<()> {
        let Some(id) = self.app_key(id) else { return Ok(()) };
        db_tx!(self, db, tx => {
            db.forget_app_lease(&mut tx, id).await?;
            sqlx::query(sql!(db, "UPDATE apps SET deleted_at = {ts $1} WHERE id = {uuid $2}"))
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
        });
        Ok(())
    }

    pub(super) async fn put_assignment(&self, a: &Assignment) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            sqlx::query(sql!(
                db,
                "INSERT INTO group_assignments (app_id, group_id, target_display_name, created_at)
                 VALUES ({uuid $1}, $2, $3, {ts $4})
                 ON CONFLICT (app_id, group_id) DO UPDATE SET target_display_name = excluded.target_display_name"
            ))
            .bind(&a.app_id)
            .bind(&a.group_id)
            .bind(&a.target_display_name)
            .bind(a.created_at)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    pub(super) async fn delete_assignment(&self, app_id: &str, group_id: &str, now: Millis) -> StoreResult<bool> {
        let done = db_tx!(self, db, tx => {
            let Some(app_id) = db.app_key(app_id) else { return Ok(false) };
            // The members provisioned through the assignment lose that entitlement now (SPEC §8):
            // their access ends are written while the assignment still says where they are.
            birth_access_ends!(db, &mut *tx, app: Some(app_id), group: group_id, principal: None, "unassigned", now)?;
            sqlx::query(sql!(db, "DELETE FROM group_assignments WHERE app_id = {uuid $1} AND group_id = $2"))
                .bind(app_id)
                .bind(group_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(done > 0)
    }

    pub(super) async fn list_assignments(&self, app_id: &str) -> StoreResult<Vec<Assignment>> {
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
    pub(super) async fn reseal_credentials(&self, reseal: &Reseal) -> StoreResult<(usize, Vec<String>)> {
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

    pub(super) async fn key_check(&self) -> StoreResult<Option<Vec<u8>>> {
        Ok(db_run!(self, db => {
            sqlx::query_scalar(sql!(db, KEY_CHECK))
                .fetch_optional(&db.pool)
                .await?
        }))
    }

    pub(super) async fn init_key_check(&self, sealed: &[u8], now: Millis) -> StoreResult<Vec<u8>> {
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
