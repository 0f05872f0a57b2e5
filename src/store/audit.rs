//! The audit trail: who changed what through the API. An entry is written in the transaction of
//! the change it records (each backend's `commit` takes it, see `store::audited`), or alone.

use super::dialect::{db_run, sql};
use super::logs::Trail;
use super::*;

pub(super) const INSERT_AUDIT: &str =
    "INSERT INTO audit (time, actor, action, target, detail) VALUES ({ts $1}, $2, $3, $4, {jsonb $5})";

/// Writes the entry `$e` on `$conn` (a pool, or the transaction a backend's `commit` commits).
macro_rules! insert_audit {
    ($db:expr, $conn:expr, $e:expr) => {{
        let e: &$crate::store::AuditEntry = $e;
        sqlx::query($crate::store::dialect::sql!($db, $crate::store::audit::INSERT_AUDIT))
            .bind(e.time)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(e.detail.to_string())
            .execute($conn)
            .await
    }};
}
pub(super) use insert_audit;

impl Store {
    pub async fn insert_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        db_run!(self, db => {
            insert_audit!(db, &db.pool, e)?;
            db.order_commits_later();
        });
        Ok(())
    }

    /// Newest first; `before_seq` continues a listing.
    pub async fn list_audit(&self, limit: i64, before_seq: Option<i64>) -> StoreResult<Vec<AuditEntry>> {
        Ok(db_run!(self, db => {
            db.order_commits().await;
            sqlx::query_as(sql!(
                db,
                "SELECT seq, {ms time} AS time, actor, action, target, detail FROM audit
                 WHERE {numbered} AND ({bigint $1} IS NULL OR seq < $1) ORDER BY seq DESC {limit $2}"
            ))
            .bind(before_seq)
            .bind(limit)
            .fetch_all(&db.pool)
            .await?
        }))
    }

    /// The audit trail is kept as long as the logs.
    pub async fn purge_audit(&self, older_than: Millis, batch: i64) -> StoreResult<u64> {
        self.purge_oldest(Trail::Audit, older_than, batch).await
    }
}
