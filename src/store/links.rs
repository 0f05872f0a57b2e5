//! Object links (SPEC §8): which target user is which principal at each app, with the target
//! groups the bridge provisioned it in, as operators see and clear them.

use super::dialect::{app_read, db_run, db_tx, sql};
use super::*;

/// The columns of a link as `LinkRecord` reads them: the target user, what was last sent, and
/// the time of the user's last successful push at the app.
macro_rules! link_columns {
    () => {
        "tu.principal_id, tu.target_user_id, tu.fingerprint, tu.created_by_us, tu.disabled,
         (SELECT {ms MAX(l.time)} FROM provisioning_logs l
            WHERE l.app_id = tu.app_id AND l.principal_id = tu.principal_id AND l.status = 'success') AS last_push_at"
    };
}

impl Store {
    pub async fn list_links(&self, app_id: &str, after: Option<&str>, limit: i64) -> StoreResult<Vec<LinkRecord>> {
        let mut links: Vec<LinkRecord> = db_run!(self, db => {
            let Some(app_id) = db.app_key(app_id) else { return Ok(Vec::new()) };
            sqlx::query_as(sql!(
                db,
                concat!(
                    "SELECT ", link_columns!(), " FROM target_users tu
                     WHERE tu.app_id = {uuid $1} AND ({text $2} IS NULL OR {binary tu.principal_id} > $2)
                     ORDER BY {binary tu.principal_id} {limit $3}"
                )
            ))
            .bind(app_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&db.pool)
            .await?
        });
        self.add_link_groups(app_id, &mut links).await?;
        Ok(links)
    }

    pub async fn get_link(&self, app_id: &str, principal_id: &str) -> StoreResult<Option<LinkRecord>> {
        let link: Option<LinkRecord> = app_read!(self, query_as fetch_optional, else None,
            concat!(
                "SELECT ", link_columns!(),
                " FROM target_users tu WHERE tu.app_id = {uuid $1} AND tu.principal_id = $2"
            ),
            app_id, principal_id);
        let mut links: Vec<LinkRecord> = link.into_iter().collect();
        self.add_link_groups(app_id, &mut links).await?;
        Ok(links.pop())
    }

    /// The target groups each link's user was provisioned in (`links` ordered by principal).
    async fn add_link_groups(&self, app_id: &str, links: &mut [LinkRecord]) -> StoreResult<()> {
        let (Some(first), Some(last)) = (links.first(), links.last()) else {
            return Ok(());
        };
        type Row = (String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = app_read!(self, query_as fetch_all, else Vec::new(),
            "SELECT p.principal_id, p.target_display_name, tg.target_group_id, p.group_id FROM provisioned p
             LEFT JOIN target_groups tg ON tg.app_id = p.app_id AND tg.display_name = p.target_display_name
             WHERE p.app_id = {uuid $1} AND {binary p.principal_id} >= $2 AND {binary p.principal_id} <= $3
             ORDER BY {binary p.target_display_name}",
            app_id, &first.principal_id, &last.principal_id);
        for (principal_id, target_display_name, target_group_id, group_id) in rows {
            if let Some(link) = links.iter_mut().find(|l| l.principal_id == principal_id) {
                link.groups.push(LinkGroup {
                    target_display_name,
                    target_group_id,
                    group_id,
                });
            }
        }
        Ok(())
    }

    /// Forgets the target user of a principal at the app and what was last sent to it; the
    /// memberships provisioned for it stay recorded, marked in doubt, so that a removal still
    /// reaches the target (matching the user first) and the next cycle settles them by reading
    /// the groups. Answers whether there was a link.
    pub async fn forget_link(&self, app_id: &str, principal_id: &str) -> StoreResult<bool> {
        let Some(app_id) = self.app_key(app_id) else {
            return Ok(false);
        };
        Ok(db_tx!(self, db, tx => {
            let gone = sqlx::query(sql!(db, "DELETE FROM target_users WHERE app_id = {uuid $1} AND principal_id = $2"))
                .bind(app_id)
                .bind(principal_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(sql!(
                db,
                "UPDATE provisioned SET confirmed = FALSE WHERE app_id = {uuid $1} AND principal_id = $2"
            ))
            .bind(app_id)
            .bind(principal_id)
            .execute(&mut *tx)
            .await?;
            gone > 0
        }))
    }
}
