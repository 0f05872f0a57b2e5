//! The sources besides the webhook (SPEC §7): their polling state, the request ids already
//! taken in, and the standing members a directory listing gives.

use super::access_ends::birth_access_ends;
use super::dialect::{db_tx, execute, read, sql};
use super::*;

/// A source row as `SourceState` reads it.
macro_rules! source_columns {
    () => {
        "id, kind, group_id, delta_link, group_info, {ms group_info_at} AS group_info_at,
         {ms last_attempt_at} AS last_attempt_at, {ms last_success_at} AS last_success_at, last_error,
         {ms next_poll_at} AS next_poll_at"
    };
}

/// The apps (not deleted) source group `$1` is assigned to (an app holds a group once).
pub(super) const APPS_OF_GROUP: &str =
    "SELECT {text ga.app_id} FROM group_assignments ga JOIN apps a ON a.id = ga.app_id
     WHERE ga.group_id = $1 AND a.deleted_at IS NULL";

impl Store {
    pub async fn delete_standing_member(&self, group_id: &str, principal: &str, now: Millis) -> StoreResult<bool> {
        let done = db_tx!(self, db, tx => {
            let gone = sqlx::query(sql!(db, "DELETE FROM standing_members WHERE group_id = $1 AND principal_id = $2"))
                .bind(group_id)
                .bind(principal)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if gone > 0 {
                // The directory ended the member's entitlement through the group: at each app the
                // group is assigned to, an access end from now (SPEC §8).
                birth_access_ends!(db, &mut *tx, app: None, group: group_id, principal: Some(principal), "directory", now)?;
            }
            gone
        });
        Ok(done > 0)
    }

    /// The apps (not deleted) the source group is assigned to.
    pub async fn apps_of_group(&self, group_id: &str) -> StoreResult<Vec<String>> {
        Ok(read!(self, query_scalar fetch_all, APPS_OF_GROUP, group_id))
    }

    /// Every source group assigned to an app that is not deleted.
    pub async fn assigned_group_ids(&self) -> StoreResult<Vec<String>> {
        Ok(read!(self, query_scalar fetch_all,
            "SELECT DISTINCT g.group_id FROM group_assignments g JOIN apps a ON a.id = g.app_id
             WHERE a.deleted_at IS NULL ORDER BY g.group_id"))
    }

    pub async fn source_state(&self, id: &str) -> StoreResult<Option<SourceState>> {
        Ok(read!(self, query_as fetch_optional,
            concat!("SELECT ", source_columns!(), " FROM sources WHERE id = $1"),
            id))
    }

    pub async fn list_sources(&self) -> StoreResult<Vec<SourceState>> {
        Ok(read!(self, query_as fetch_all, concat!("SELECT ", source_columns!(), " FROM sources ORDER BY id")))
    }

    pub async fn put_source_state(&self, s: &SourceState) -> StoreResult<()> {
        execute!(
            self,
            "INSERT INTO sources (id, kind, group_id, delta_link, group_info, group_info_at, last_attempt_at,
               last_success_at, last_error, next_poll_at)
             VALUES ($1, $2, $3, $4, {jsonb $5}, {ts $6}, {ts $7}, {ts $8}, $9, {ts $10})
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, group_id = excluded.group_id,
               delta_link = excluded.delta_link, group_info = excluded.group_info,
               group_info_at = excluded.group_info_at, last_attempt_at = excluded.last_attempt_at,
               last_success_at = excluded.last_success_at, last_error = excluded.last_error,
               next_poll_at = excluded.next_poll_at",
            &s.id,
            &s.kind,
            &s.group_id,
            &s.delta_link,
            s.group_info.as_ref().map(Value::to_string),
            s.group_info_at,
            s.last_attempt_at,
            s.last_success_at,
            &s.last_error,
            s.next_poll_at
        );
        Ok(())
    }

    /// The (request id, status) pairs already taken in for the group.
    pub async fn seen_requests(&self, group_id: &str) -> StoreResult<Vec<(String, String)>> {
        Ok(read!(self, query_as fetch_all,
            "SELECT request_id, status FROM source_seen_requests WHERE group_id = $1",
            group_id))
    }

    pub async fn mark_requests_seen(&self, group_id: &str, pairs: &[(String, String)], now: Millis) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            for (id, status) in pairs {
                sqlx::query(sql!(
                    db,
                    "INSERT INTO source_seen_requests (group_id, request_id, status, seen_at)
                     VALUES ($1, $2, $3, {ts $4}) ON CONFLICT DO NOTHING"
                ))
                .bind(group_id)
                .bind(id)
                .bind(status)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        });
        Ok(())
    }
}
