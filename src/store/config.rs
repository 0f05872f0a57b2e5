//! Configuration as code (SPEC §9): the state a configuration document reads, as one fingerprint,
//! and the write of a planned document, all or nothing, in one transaction.

use sha2::Digest;

use super::apps::{change_app_row, delete_assignment_row, insert_app_row, put_assignment_row, reclaim_names};
use super::audit::insert_audit;
use super::dialect::{db_run, db_tx, sql};
use super::*;

/// What `PUT /v1/config` writes (the plan, with its credentials sealed), in one transaction.
#[derive(Debug, Clone, Default)]
pub struct ConfigWrite {
    /// The fingerprint the plan was made from: nothing is written when it changed since.
    pub expected: String,
    /// New apps (managed) with their assignments.
    pub creates: Vec<(AppRecord, Vec<Assignment>)>,
    /// Apps the document matched: each becomes managed, changed or not.
    pub updates: Vec<ConfigUpdate>,
    /// Apps a prune removes.
    pub deletes: Vec<ConfigDelete>,
    /// One entry per app the plan touches.
    pub audit: Vec<AuditEntry>,
    pub now: Millis,
}

#[derive(Debug, Clone, Default)]
pub struct ConfigUpdate {
    pub id: String,
    pub changes: AppChanges,
    /// Assignments added, or whose target group is renamed.
    pub put_groups: Vec<Assignment>,
    /// Groups unassigned (their provisioned members' access ends, reason `unassigned`).
    pub remove_groups: Vec<String>,
}

/// An app a prune removes, as `DELETE ?deprovision=true` does: it turns `deleting`, its
/// dispatcher removes what the bridge provisioned (nothing: at once) and then deletes it.
#[derive(Debug, Clone)]
pub struct ConfigDelete {
    pub id: String,
}

/// The apps a fingerprint reads.
macro_rules! fingerprinted_apps {
    () => {
        "SELECT {text id} AS id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status,
         status_reason, legacy_remove, {ms next_sync_at} AS next_sync_at, quarantine_level,
         {ms created_at} AS created_at, {ms deleted_at} AS deleted_at, managed
         FROM apps WHERE deleted_at IS NULL ORDER BY {text id}"
    };
}

/// The fingerprint, on `$conn`, of every app's configuration (what `GET /v1/config` reads,
/// secrets included as sealed, and whether the app is being deleted) and every assignment, the
/// apps read with `$apps` (`fingerprinted_apps!`, locked or not).
macro_rules! fingerprint {
    ($db:expr, $conn:expr, $apps:expr) => {{
        let apps: Vec<AppRecord> = sqlx::query_as(sql!($db, $apps)).fetch_all(&mut *$conn).await?;
        let assignments: Vec<Assignment> = sqlx::query_as(sql!(
            $db,
            "SELECT {text app_id} AS app_id, group_id, target_display_name, {ms created_at} AS created_at
             FROM group_assignments ORDER BY {text app_id}, {binary group_id}"
        ))
        .fetch_all(&mut *$conn)
        .await?;
        fingerprint_of(&apps, &assignments)
    }};
}

fn fingerprint_of(apps: &[AppRecord], assignments: &[Assignment]) -> String {
    let mut hash = sha2::Sha256::new();
    for a in apps {
        let row = serde_json::json!([
            a.id,
            a.name,
            a.scim_base_url,
            a.auth_type,
            hex::encode(&a.auth_sealed),
            a.settings,
            a.owners,
            a.managed,
            a.status == "deleting",
        ]);
        hash.update(row.to_string().as_bytes());
        hash.update(b"\n");
    }
    for g in assignments {
        let row = serde_json::json!([g.app_id, g.group_id, g.target_display_name]);
        hash.update(row.to_string().as_bytes());
        hash.update(b"\n");
    }
    hex::encode(&hash.finalize()[..16])
}

impl Store {
    /// What the configuration document reads, as one value that changes whenever it does (the
    /// `ETag` of `GET /v1/config`).
    pub async fn config_fingerprint(&self) -> StoreResult<String> {
        Ok(db_run!(self, db => {
            let mut conn = db.pool.acquire().await?;
            fingerprint!(db, conn, fingerprinted_apps!())
        }))
    }

    /// Applies a planned document in one transaction, only if the configuration is still the one
    /// the plan was made from (`write.expected`); `false` when it changed meanwhile, and nothing
    /// is written.
    pub async fn apply_config(&self, w: &ConfigWrite) -> StoreResult<bool> {
        Ok(db_tx!(self, db, tx => {
            // The apps' rows stay locked until the commit (PostgreSQL; SQLite's write turn already
            // excludes every other writer).
            if fingerprint!(db, tx, concat!(fingerprinted_apps!(), " {for_update}")) != w.expected {
                // Dropped without a commit: nothing is written.
                return Ok(false);
            }
            // A rename's old name is free before any new name is taken: renames may chain or swap.
            for u in w.updates.iter().filter(|u| u.changes.name.is_some()) {
                sqlx::query(sql!(db, "UPDATE apps SET name_key = NULL WHERE id = {uuid $1}"))
                    .bind(&u.id)
                    .execute(&mut *tx)
                    .await?;
            }
            for (app, groups) in &w.creates {
                insert_app_row!(db, &mut *tx, app)?;
                for g in groups {
                    put_assignment_row!(db, &mut *tx, g)?;
                }
            }
            for u in &w.updates {
                let Some(id) = db.app_key(&u.id) else { continue };
                change_app_row!(db, &mut *tx, id, &u.changes, true);
                for g in &u.remove_groups {
                    delete_assignment_row!(db, &mut *tx, id, g, w.now)?;
                }
                for g in &u.put_groups {
                    put_assignment_row!(db, &mut *tx, g)?;
                }
            }
            for d in &w.deletes {
                let Some(id) = db.app_key(&d.id) else { continue };
                let changes = AppChanges {
                    status: Some(("deleting".into(), Some(crate::provisioning::DEPROVISIONING.into()))),
                    deprovision_at: Some(w.now),
                    ..Default::default()
                };
                change_app_row!(db, &mut *tx, id, &changes, false);
            }
            reclaim_names!(db, &mut *tx)?;
            for entry in &w.audit {
                insert_audit!(db, &mut *tx, entry)?;
            }
            true
        }))
    }
}
