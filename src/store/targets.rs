//! What the bridge knows of each app's target: the users it linked or created there, the target
//! groups it found, and the memberships it provisioned (`provisioned`), against the memberships
//! the sources entitle.

use super::dialect::{RowsConn, app_read, db_statement, execute, execute_chunked, sql};
use super::*;

/// A removal job of the member (principal `$3`) from target group `$2` is pending or in flight:
/// handed on by a cycle with that target group, or an event's, whose group is assigned to it or
/// was the one the member was provisioned there for.
const REMOVAL_OPEN: &str = "SELECT 1 FROM jobs j
    WHERE j.app_id = {uuid $1} AND j.principal_id = $3 AND j.kind = 'remove' AND j.state IN ('pending', 'in_flight')
      AND (j.target_display_name = $2
           OR (j.target_display_name IS NULL AND j.group_id IN (
                 SELECT ga.group_id FROM group_assignments ga
                   WHERE ga.app_id = {uuid $1} AND ga.target_display_name = $2
                 UNION SELECT p.group_id FROM provisioned p
                   WHERE p.app_id = {uuid $1} AND p.target_display_name = $2 AND p.principal_id = $3)))
    LIMIT 1";

/// What the bridge knows of principals' users at an app, their rows as `{rows $1}` (see
/// `put_target_users`).
const PUT_TARGET_USERS: &str =
    "INSERT INTO target_users (app_id, principal_id, target_user_id, fingerprint, created_by_us, disabled,
       enabled_by_us)
     SELECT {field 0 uuid}, {field 1 text}, {field 2 text}, {field 3 text}, {field 4 bool}, {field 5 bool},
       {field 6 bool}
     FROM {rows $1} WHERE true
     ON CONFLICT (app_id, principal_id) DO UPDATE SET target_user_id = excluded.target_user_id,
       fingerprint = excluded.fingerprint,
       created_by_us = target_users.created_by_us OR excluded.created_by_us,
       disabled = excluded.disabled, enabled_by_us = excluded.enabled_by_us";

/// Writes what the bridge knows of the principals' users at the app, one statement per chunk of
/// them (`dialect::json_rows`): alone, or in an outcome's commit. A principal given twice is
/// written once, as its last record says (the bridge created the user if either says so), since
/// one statement may not write a row twice.
pub(super) async fn put_target_users(
    conn: &mut impl RowsConn,
    app_id: &str,
    users: &[(String, TargetUser)],
) -> StoreResult<()> {
    let mut rows: Vec<Value> = Vec::with_capacity(users.len());
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (principal_id, u) in users {
        let mut row = serde_json::json!([
            app_id,
            principal_id,
            u.target_user_id,
            u.fingerprint,
            u.created_by_us,
            u.disabled,
            u.enabled_by_us
        ]);
        match at.get(principal_id.as_str()) {
            Some(&i) => {
                row[4] = (u.created_by_us || rows[i][4] == true).into();
                rows[i] = row;
            }
            None => {
                at.insert(principal_id, rows.len());
                rows.push(row);
            }
        }
    }
    Ok(execute_chunked(conn, |d| sql!(d, PUT_TARGET_USERS), &rows).await?)
}

pub(super) const PUT_TARGET_GROUP: &str =
    "INSERT INTO target_groups (app_id, display_name, target_group_id) VALUES ({uuid $1}, $2, $3)
     ON CONFLICT (app_id, display_name) DO UPDATE SET target_group_id = excluded.target_group_id";

/// Writes the target's id of a target group on `$conn`: alone, or in an outcome's commit.
macro_rules! put_target_group {
    ($db:expr, $conn:expr, $app_id:expr, $display_name:expr, $id:expr) => {{
        sqlx::query($crate::store::dialect::sql!(
            $db,
            $crate::store::targets::PUT_TARGET_GROUP
        ))
        .bind($app_id)
        .bind($display_name)
        .bind($id)
        .execute($conn)
        .await
    }};
}
pub(super) use put_target_group;

impl Store {
    pub async fn target_user(&self, app_id: &str, principal_id: &str) -> StoreResult<Option<TargetUser>> {
        Ok(app_read!(self, query_as fetch_optional, else None,
            "SELECT target_user_id, fingerprint, created_by_us, disabled, enabled_by_us FROM target_users
             WHERE app_id = {uuid $1} AND principal_id = $2",
            app_id, principal_id))
    }

    pub async fn put_target_user(&self, app_id: &str, principal_id: &str, u: &TargetUser) -> StoreResult<()> {
        db_statement!(self, db, conn => {
            put_target_users(&mut *conn, app_id, &[(principal_id.to_string(), u.clone())]).await?;
        });
        Ok(())
    }

    /// Forgets the link to a deleted account: the next entitlement matches or creates one.
    pub async fn forget_target_user(&self, app_id: &str, principal_id: &str) -> StoreResult<()> {
        if let Some(app_id) = self.app_key(app_id) {
            execute!(
                self,
                "DELETE FROM target_users WHERE app_id = {uuid $1} AND principal_id = $2",
                app_id,
                principal_id
            );
        }
        Ok(())
    }

    pub async fn target_users(&self, app_id: &str) -> StoreResult<Vec<(String, TargetUser)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            principal_id: String,
            #[sqlx(flatten)]
            user: TargetUser,
        }
        let rows: Vec<Row> = app_read!(self, query_as fetch_all, else Vec::new(),
            "SELECT principal_id, target_user_id, fingerprint, created_by_us, disabled, enabled_by_us FROM target_users
             WHERE app_id = {uuid $1} ORDER BY {binary principal_id}",
            app_id);
        Ok(rows.into_iter().map(|r| (r.principal_id, r.user)).collect())
    }

    pub async fn target_group(&self, app_id: &str, display_name: &str) -> StoreResult<Option<String>> {
        Ok(app_read!(self, query_scalar fetch_optional, else None,
            "SELECT target_group_id FROM target_groups WHERE app_id = {uuid $1} AND display_name = $2",
            app_id, display_name))
    }

    pub async fn put_target_group(&self, app_id: &str, display_name: &str, id: &str) -> StoreResult<()> {
        db_statement!(self, db, conn => {
            put_target_group!(db, &mut *conn, app_id, display_name, id)?;
        });
        Ok(())
    }

    pub async fn forget_target_group(&self, app_id: &str, display_name: &str) -> StoreResult<()> {
        if let Some(app_id) = self.app_key(app_id) {
            execute!(
                self,
                "DELETE FROM target_groups WHERE app_id = {uuid $1} AND display_name = $2",
                app_id,
                display_name
            );
        }
        Ok(())
    }

    /// The target groups where the bridge provisioned the principal for the source group (one,
    /// or the old one too after a rename of the group's `targetDisplayName`).
    pub async fn provisioned_targets_of(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
    ) -> StoreResult<Vec<String>> {
        Ok(app_read!(self, query_scalar fetch_all, else Vec::new(),
            "SELECT target_display_name FROM provisioned WHERE app_id = {uuid $1} AND principal_id = $2
             AND group_id = $3 ORDER BY {binary target_display_name}",
            app_id, principal_id, group_id))
    }

    /// The source group the member was provisioned there for (`None`: not provisioned, or
    /// provisioned before that was recorded).
    pub async fn provisioned_for(&self, app_id: &str, m: &TargetMember) -> StoreResult<Option<String>> {
        let found: Option<Option<String>> = app_read!(self, query_scalar fetch_optional, else None,
            "SELECT group_id FROM provisioned WHERE app_id = {uuid $1} AND target_display_name = $2
             AND principal_id = $3",
            app_id, &m.target_display_name, &m.principal_id);
        Ok(found.flatten())
    }

    /// A removal of the member from that target group waits to be sent or retried as a job (of
    /// an event, or handed on by a cycle): a cycle leaves the removal to it.
    pub async fn removal_open(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool> {
        let found: Option<i32> = app_read!(self, query_scalar fetch_optional, else None,
            REMOVAL_OPEN,
            app_id, &m.target_display_name, &m.principal_id);
        Ok(found.is_some())
    }

    /// The bridge has, or may have, put the member there (confirmed or in doubt).
    pub async fn is_provisioned(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool> {
        let found: Option<i32> = app_read!(self, query_scalar fetch_optional, else None,
            "SELECT 1 FROM provisioned WHERE app_id = {uuid $1} AND target_display_name = $2 AND principal_id = $3",
            app_id, &m.target_display_name, &m.principal_id);
        Ok(found.is_some())
    }

    /// The target confirmed the member.
    pub async fn is_confirmed(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool> {
        let found: Option<i32> = app_read!(self, query_scalar fetch_optional, else None,
            "SELECT 1 FROM provisioned WHERE app_id = {uuid $1} AND target_display_name = $2 AND principal_id = $3
             AND confirmed = TRUE",
            app_id, &m.target_display_name, &m.principal_id);
        Ok(found.is_some())
    }

    pub async fn in_doubt_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>> {
        Ok(app_read!(self, query_as fetch_all, else Vec::new(),
            "SELECT target_display_name, principal_id FROM provisioned
             WHERE app_id = {uuid $1} AND confirmed = FALSE
             ORDER BY {binary target_display_name}, {binary principal_id}",
            app_id))
    }

    pub async fn provisioned_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>> {
        Ok(app_read!(self, query_as fetch_all, else Vec::new(),
            "SELECT target_display_name, principal_id FROM provisioned WHERE app_id = {uuid $1}
             ORDER BY {binary target_display_name}, {binary principal_id}",
            app_id))
    }

    pub async fn desired_members(&self, app_id: &str, now: Millis) -> StoreResult<Vec<TargetMember>> {
        Ok(app_read!(self, query_as fetch_all, else Vec::new(),
            "SELECT target_display_name, principal_id FROM (
               SELECT ga.target_display_name, s.principal_id FROM group_assignments ga
                 JOIN standing_members s ON s.group_id = ga.group_id WHERE ga.app_id = {uuid $1}
               UNION
               SELECT ga.target_display_name, m.principal_id FROM group_assignments ga
                 JOIN memberships m ON m.group_id = ga.group_id
               WHERE ga.app_id = {uuid $1} AND m.access_id = 'member' AND m.active = TRUE
                 AND (m.start_at IS NULL OR m.start_at <= {ts $2}) AND (m.end_at IS NULL OR m.end_at > {ts $2})
             ) d ORDER BY {binary target_display_name}, {binary principal_id}",
            app_id, now))
    }

    /// The members the directory feed (standing membership) entitles.
    pub async fn standing_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>> {
        Ok(app_read!(self, query_as fetch_all, else Vec::new(),
            "SELECT target_display_name, principal_id FROM (
               SELECT DISTINCT ga.target_display_name, s.principal_id FROM group_assignments ga
                 JOIN standing_members s ON s.group_id = ga.group_id WHERE ga.app_id = {uuid $1}
             ) d ORDER BY {binary target_display_name}, {binary principal_id}",
            app_id))
    }
}

#[cfg(test)]
#[path = "tests/targets.rs"]
mod tests;
