//! API tokens: stored by the hash of their secret, revoked by a time.

use super::dialect::{db_tx, read, sql};
use super::*;

impl Store {
    pub async fn insert_token(&self, t: &TokenRecord, hash: &str) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            sqlx::query(sql!(
                db,
                "INSERT INTO tokens (id, name, role, hash, created_at) VALUES ($1, $2, $3, $4, {ts $5})"
            ))
            .bind(&t.id)
            .bind(&t.name)
            .bind(&t.role)
            .bind(hash)
            .bind(t.created_at)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    pub async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        Ok(read!(self, query_as fetch_optional,
            "SELECT id, name, role, {ms created_at} AS created_at FROM tokens
             WHERE hash = $1 AND revoked_at IS NULL",
            hash))
    }

    pub async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        Ok(read!(self, query_as fetch_all,
            "SELECT id, name, role, {ms created_at} AS created_at FROM tokens WHERE revoked_at IS NULL
             ORDER BY created_at"))
    }

    pub async fn revoke_token(&self, id: &str, now: Millis) -> StoreResult<bool> {
        let done = db_tx!(self, db, tx => {
            sqlx::query(sql!(db, "UPDATE tokens SET revoked_at = {ts $1} WHERE id = $2 AND revoked_at IS NULL"))
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(done > 0)
    }
}
