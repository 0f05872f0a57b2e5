//! Principals: what the events and the directory feed told of each user (field by field, each
//! with the time of the newest event that carried it), and the standing members the feed lists.

use std::collections::{BTreeMap, HashMap};

use super::dialect::{RowsConn, app_read, db_run, db_tx, execute_chunked, read, sql};
use super::memberships::entitles;
use super::*;
use crate::rules::StoredAttributes;

/// A principal's row: the classic columns and the attributes with their times.
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(super) struct PrincipalRow {
    pub(super) principal_id: String,
    user_principal_name: String,
    display_name: Option<String>,
    given_name: Option<String>,
    surname: Option<String>,
    mail: Option<String>,
    attributes: Option<String>,
}

impl PrincipalRow {
    pub(super) fn attributes(&self) -> StoredAttributes {
        let legacy = Principal {
            user_principal_name: self.user_principal_name.clone(),
            display_name: self.display_name.clone(),
            given_name: self.given_name.clone(),
            surname: self.surname.clone(),
            mail: self.mail.clone(),
        };
        StoredAttributes::from_stored(self.attributes.as_deref(), Some(&legacy))
    }
}

macro_rules! principal_columns {
    () => {
        "SELECT principal_id, user_principal_name, display_name, given_name, surname, mail,
           {text attributes} AS attributes FROM principals"
    };
}

/// A principal's row as one JSON object's keys and values (`{object}(...)`).
macro_rules! principal_object {
    () => {
        "'principal_id', principal_id, 'user_principal_name', user_principal_name, 'display_name', display_name,
         'given_name', given_name, 'surname', surname, 'mail', mail, 'attributes', {text attributes}"
    };
}
pub(super) use principal_object;

/// Locked as they are read (PostgreSQL), until the merged attributes are written.
const READ_PRINCIPALS: &str = concat!(
    principal_columns!(),
    " WHERE principal_id IN (SELECT {field 0 text} FROM {rows $1}) {for_update}"
);

const PUT_PRINCIPALS: &str = "INSERT INTO principals (principal_id, user_principal_name, display_name, given_name,
      surname, mail, updated_at, attributes)
    SELECT {field 0 text}, {field 1 text}, {field 2 text}, {field 3 text}, {field 4 text}, {field 5 text},
      {field 6 ts}, {field 7 jsonb}
    FROM {rows $1} WHERE true ORDER BY r.key
    ON CONFLICT (principal_id) DO UPDATE SET user_principal_name = excluded.user_principal_name,
      display_name = excluded.display_name, given_name = excluded.given_name, surname = excluded.surname,
      mail = excluded.mail, updated_at = excluded.updated_at, attributes = excluded.attributes";

/// The stored attributes of the principals named (none for one without a row), inside the
/// caller's transaction.
pub(super) async fn read_principals(
    conn: &mut impl RowsConn,
    ids: impl IntoIterator<Item = &str>,
) -> StoreResult<BTreeMap<String, StoredAttributes>> {
    let ids: Vec<[&str; 1]> = ids.into_iter().map(|id| [id]).collect();
    let rows: Vec<PrincipalRow> = conn
        .fetch_rows(
            sql!(conn, READ_PRINCIPALS),
            serde_json::to_string(&ids).expect("ids serialize"),
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.principal_id.clone(), r.attributes()))
        .collect())
}

/// Writes the principals' merged attributes (`updated_at` the time given with each), in one
/// statement per chunk of them. One whose attributes hold no `userPrincipalName` yet is not
/// usable and is left out.
pub(super) async fn write_principals(
    conn: &mut impl RowsConn,
    merged: &[(&str, &StoredAttributes, Millis)],
) -> StoreResult<()> {
    let rows: Vec<_> = merged
        .iter()
        .filter_map(|(id, attributes, now)| {
            let p = attributes.principal()?;
            Some((
                id,
                p.user_principal_name,
                p.display_name,
                p.given_name,
                p.surname,
                p.mail,
                now,
                attributes.to_json(),
            ))
        })
        .collect();
    Ok(execute_chunked(conn, |d| sql!(d, PUT_PRINCIPALS), &rows).await?)
}

/// Takes what the directory feed's `principal` object carries, field by field, unless a newer
/// event already set that field. The caller holds the principal's lock (`lock_principal`).
pub(super) async fn merge_principal(
    conn: &mut impl RowsConn,
    principal_id: &str,
    given: &Value,
    created: Millis,
    now: Millis,
) -> StoreResult<()> {
    let mut attributes = read_principals(conn, [principal_id])
        .await?
        .remove(principal_id)
        .unwrap_or_default();
    attributes.merge(given, created);
    write_principals(conn, &[(principal_id, &attributes, now)]).await
}

/// What a directory listing names: the rows it leaves out go (`delete_unlisted`).
enum Listed {
    StandingMembers,
    SeenRequests,
}

/// What a cycle's user step reads (`Store::user_steps`), a row per member: the checks, the
/// stored user's columns and the principal's row, each `NULL` where there is none.
#[derive(sqlx::FromRow)]
struct UserStepRow {
    t: String,
    p: String,
    entitled: bool,
    confirmed: bool,
    changes_at: Option<Millis>,
    target_user_id: Option<String>,
    fingerprint: Option<String>,
    created_by_us: Option<bool>,
    disabled: Option<bool>,
    enabled_by_us: Option<bool>,
    principal_id: Option<String>,
    user_principal_name: Option<String>,
    display_name: Option<String>,
    given_name: Option<String>,
    surname: Option<String>,
    mail: Option<String>,
    attributes: Option<String>,
}

impl UserStepRow {
    /// The member read and what its step reads, `wanted` as of the read.
    fn into_step(self) -> (TargetMember, UserStep) {
        let member = TargetMember {
            target_display_name: self.t,
            principal_id: self.p,
        };
        let user = self.target_user_id.map(|target_user_id| TargetUser {
            target_user_id,
            fingerprint: self.fingerprint.unwrap_or_default(),
            created_by_us: self.created_by_us.unwrap_or(false),
            disabled: self.disabled.unwrap_or(false),
            enabled_by_us: self.enabled_by_us.unwrap_or(false),
        });
        let principal = self
            .principal_id
            .zip(self.user_principal_name)
            .map(|(principal_id, user_principal_name)| PrincipalRow {
                principal_id,
                user_principal_name,
                display_name: self.display_name,
                given_name: self.given_name,
                surname: self.surname,
                mail: self.mail,
                attributes: self.attributes,
            });
        let stored = principal.map(|p| p.attributes());
        let step = UserStep {
            wanted: self.entitled && !self.confirmed,
            changes_at: self.changes_at,
            user,
            user_principal_name: stored
                .as_ref()
                .and_then(|a| a.principal())
                .map(|p| p.user_principal_name),
            attributes: stored.map(|a| a.values()),
        };
        (member, step)
    }
}

impl Store {
    async fn principal_row(&self, principal_id: &str) -> StoreResult<Option<PrincipalRow>> {
        Ok(read!(self, query_as fetch_optional,
            concat!(principal_columns!(), " WHERE principal_id = $1"),
            principal_id))
    }

    /// What the cycle's user steps for these members read before they send anything, in one
    /// read: for each, whether it is still to be added (entitled now, to the target group or, for
    /// an app without groups, to the app; and not confirmed there), when a membership of the
    /// principal ends next (the answer may change then), the principal's stored user at the app,
    /// and what is known of the principal. By member.
    pub async fn user_steps(
        &self,
        app_id: &str,
        members: &[TargetMember],
        groups: bool,
        now: Millis,
    ) -> StoreResult<HashMap<TargetMember, UserStep>> {
        let given: Vec<Value> = members
            .iter()
            .map(|m| serde_json::json!({"t": m.target_display_name, "p": m.principal_id}))
            .collect();
        let rows: Vec<UserStepRow> = db_run!(self, db => {
            // An app id no stored app can have (`app_key`) is bound as NULL: nothing entitled.
            sqlx::query_as(sql!(
                db,
                concat!(
                    "SELECT v.t, v.p,
                       EXISTS (SELECT 1 FROM group_assignments ga WHERE ga.app_id = {uuid $1}
                         AND (ga.target_display_name = v.t OR NOT $4) AND ",
                    entitles!("v.p", "$3"),
                    ") AS entitled,
                       EXISTS (SELECT 1 FROM provisioned p WHERE p.app_id = {uuid $1} AND p.target_display_name = v.t
                              AND p.principal_id = v.p AND p.confirmed = TRUE) AS confirmed,
                       (SELECT {ms MIN(m.end_at)} FROM memberships m WHERE m.principal_id = v.p AND m.active = TRUE
                          AND m.end_at > {ts $3}) AS changes_at,
                       t.target_user_id, t.fingerprint, t.created_by_us, t.disabled, t.enabled_by_us,
                       pr.principal_id, pr.user_principal_name, pr.display_name, pr.given_name, pr.surname, pr.mail,
                       {text pr.attributes} AS attributes
                     FROM {members $2} v
                     LEFT JOIN target_users t ON t.app_id = {uuid $1} AND t.principal_id = v.p
                     LEFT JOIN principals pr ON pr.principal_id = v.p"
                )
            ))
            .bind(db.app_key(app_id))
            .bind(to_json(&given))
            .bind(now)
            .bind(groups)
            .fetch_all(&db.pool)
            .await?
        });
        Ok(rows.into_iter().map(UserStepRow::into_step).collect())
    }

    pub async fn principal(&self, principal_id: &str) -> StoreResult<Option<Principal>> {
        let row = self.principal_row(principal_id).await?;
        Ok(row.and_then(|r| r.attributes().principal()))
    }

    /// Every attribute a source sent for the principal (the newest value of each field), as a
    /// `principal` object: what an attribute mapping reads.
    pub async fn principal_attributes(
        &self,
        principal_id: &str,
    ) -> StoreResult<Option<serde_json::Map<String, Value>>> {
        let row = self.principal_row(principal_id).await?;
        Ok(row.map(|r| r.attributes().values()))
    }

    /// `principal_attributes` of every principal with a user at the app, in one read.
    pub async fn app_users_attributes(
        &self,
        app_id: &str,
    ) -> StoreResult<BTreeMap<String, serde_json::Map<String, Value>>> {
        let rows: Vec<PrincipalRow> = app_read!(self, query_as fetch_all, else Vec::new(),
            concat!(
                principal_columns!(),
                " WHERE principal_id IN (SELECT principal_id FROM target_users WHERE app_id = {uuid $1})"
            ),
            app_id);
        Ok(rows
            .into_iter()
            .map(|r| (r.principal_id.clone(), r.attributes().values()))
            .collect())
    }

    pub async fn put_standing_member(
        &self,
        group_id: &str,
        principal: &str,
        info: Option<&Principal>,
        now: Millis,
    ) -> StoreResult<()> {
        let given = info
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("principal: {e}")))?;
        db_tx!(self, db, tx => {
            if let Some(given) = &given {
                db.lock_principal(&mut tx, principal).await?;
                merge_principal(&mut *tx, principal, given, now, now).await?;
            }
            sqlx::query(sql!(
                db,
                "INSERT INTO standing_members (group_id, principal_id, created_at) VALUES ($1, $2, {ts $3})
                 ON CONFLICT DO NOTHING"
            ))
            .bind(group_id)
            .bind(principal)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    /// Takes a `principal` object's fields (the directory feed's), field by field, unless a newer
    /// event already set that field.
    pub async fn put_principal_attributes(
        &self,
        principal_id: &str,
        attributes: &Value,
        now: Millis,
    ) -> StoreResult<()> {
        db_tx!(self, db, tx => {
            db.lock_principal(&mut tx, principal_id).await?;
            merge_principal(&mut *tx, principal_id, attributes, now, now).await?;
        });
        Ok(())
    }

    /// Removes the group's standing members that `listed` leaves out (a fresh directory listing
    /// lists every member); answers how many went.
    pub async fn retain_standing_members(&self, group_id: &str, listed: &[String]) -> StoreResult<u64> {
        self.delete_unlisted(Listed::StandingMembers, group_id, listed).await
    }

    /// Forgets the group's pairs whose request Graph no longer lists.
    pub async fn forget_requests_except(&self, group_id: &str, listed: &[String]) -> StoreResult<u64> {
        self.delete_unlisted(Listed::SeenRequests, group_id, listed).await
    }

    /// Deletes the group's rows whose key `listed` leaves out, compared in the database in one
    /// statement however many keys it lists (one bound parameter); answers how many went.
    async fn delete_unlisted(&self, what: Listed, group_id: &str, listed: &[String]) -> StoreResult<u64> {
        let rows: Vec<[&str; 1]> = listed.iter().map(|k| [k.as_str()]).collect();
        let listed = serde_json::to_string(&rows).expect("keys serialize");
        Ok(db_tx!(self, db, tx => {
            let delete = match what {
                Listed::StandingMembers => sql!(
                    db,
                    "DELETE FROM standing_members WHERE group_id = $1
                     AND principal_id NOT IN (SELECT {field 0 text} FROM {rows $2})"
                ),
                Listed::SeenRequests => sql!(
                    db,
                    "DELETE FROM source_seen_requests WHERE group_id = $1
                     AND request_id NOT IN (SELECT {field 0 text} FROM {rows $2})"
                ),
            };
            sqlx::query(delete)
                .bind(group_id)
                .bind(&listed)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        }))
    }
}
