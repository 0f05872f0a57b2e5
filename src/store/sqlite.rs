//! The embedded store: SQLite in WAL mode. Times are integer unix milliseconds.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tracing::instrument;

use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn app_from_row(row: &SqliteRow) -> StoreResult<AppRecord> {
    let settings: String = row.try_get("settings")?;
    let owners: String = row.try_get("owners")?;
    Ok(AppRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        scim_base_url: row.try_get("scim_base_url")?,
        auth_type: row.try_get("auth_type")?,
        auth_sealed: row.try_get("auth_sealed")?,
        settings: serde_json::from_str(&settings).map_err(|e| corrupt("app settings", e))?,
        owners: serde_json::from_str(&owners).map_err(|e| corrupt("app owners", e))?,
        status: row.try_get("status")?,
        status_reason: row.try_get("status_reason")?,
        legacy_remove: row.try_get::<i64, _>("legacy_remove")? != 0,
        next_sync_at: row.try_get("next_sync_at")?,
        quarantine_level: row.try_get("quarantine_level")?,
        created_at: row.try_get("created_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
}

fn job_from_row(row: &SqliteRow) -> StoreResult<Job> {
    Ok(Job {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        event_id: row.try_get("event_id")?,
        principal_id: row.try_get("principal_id")?,
        group_id: row.try_get("group_id")?,
        kind: row.try_get("kind")?,
        trigger: row.try_get("trigger")?,
        state: row.try_get("state")?,
        not_before: row.try_get("not_before")?,
        received_at: row.try_get("received_at")?,
        deferred_until: row.try_get("deferred_until")?,
        attempt: row.try_get("attempt")?,
        flag: row.try_get("flag")?,
    })
}

fn log_from_row(row: &SqliteRow) -> StoreResult<LogEntry> {
    let steps: String = row.try_get("steps")?;
    Ok(LogEntry {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        time: row.try_get("time")?,
        app_id: row.try_get("app_id")?,
        app_name: row.try_get("app_name")?,
        trigger: row.try_get("trigger")?,
        cycle_id: row.try_get("cycle_id")?,
        event_id: row.try_get("event_id")?,
        job_id: row.try_get("job_id")?,
        principal_id: row.try_get("principal_id")?,
        user_principal_name: row.try_get("user_principal_name")?,
        group_id: row.try_get("group_id")?,
        action: row.try_get("action")?,
        status: row.try_get("status")?,
        reason: row.try_get("reason")?,
        deferred_until: row.try_get("deferred_until")?,
        target_user_id: row.try_get("target_user_id")?,
        target_group_id: row.try_get("target_group_id")?,
        attempt: row.try_get("attempt")?,
        duration_ms: row.try_get("duration_ms")?,
        latency_ms: row.try_get("latency_ms")?,
        steps: serde_json::from_str(&steps).map_err(|e| corrupt("log steps", e))?,
    })
}

/// `(target_display_name, principal_id)` as the first two columns.
fn member_from_row(row: &SqliteRow) -> StoreResult<TargetMember> {
    Ok(TargetMember {
        target_display_name: row.try_get(0)?,
        principal_id: row.try_get(1)?,
    })
}

fn cycle_from_row(row: &SqliteRow) -> StoreResult<CycleRecord> {
    let counts: String = row.try_get("counts")?;
    let report: Option<String> = row.try_get("report")?;
    Ok(CycleRecord {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        trigger: row.try_get("trigger")?,
        dry_run: row.try_get::<i64, _>("dry_run")? != 0,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        status: row.try_get("status")?,
        counts: serde_json::from_str(&counts).map_err(|e| corrupt("cycle counts", e))?,
        progress: row.try_get("progress")?,
        report: report
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| corrupt("cycle report", e))?,
    })
}

const INSERT_LOG: &str =
    "INSERT INTO provisioning_logs (id, time, app_id, app_name, trigger, cycle_id, event_id, job_id,
    principal_id, user_principal_name, group_id, action, status, reason, deferred_until, target_user_id,
    target_group_id, attempt, duration_ms, latency_ms, steps)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

async fn insert_log_in<'e, E>(executor: E, e: &LogEntry) -> StoreResult<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(INSERT_LOG)
        .bind(&e.id)
        .bind(e.time)
        .bind(&e.app_id)
        .bind(&e.app_name)
        .bind(&e.trigger)
        .bind(&e.cycle_id)
        .bind(&e.event_id)
        .bind(&e.job_id)
        .bind(&e.principal_id)
        .bind(&e.user_principal_name)
        .bind(&e.group_id)
        .bind(&e.action)
        .bind(&e.status)
        .bind(&e.reason)
        .bind(e.deferred_until)
        .bind(&e.target_user_id)
        .bind(&e.target_group_id)
        .bind(e.attempt)
        .bind(e.duration_ms)
        .bind(e.latency_ms)
        .bind(serde_json::to_string(&e.steps).expect("steps serialize"))
        .execute(executor)
        .await?;
    Ok(())
}

const INSERT_JOB: &str = "INSERT INTO jobs (id, app_id, event_seq, event_id, principal_id, group_id, kind, trigger,
    state, not_before, received_at, deferred_until, attempt, flag, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)";

const ENTITLED_VIA: &str = "SELECT ga.group_id FROM group_assignments ga
    WHERE ga.app_id = ? AND ga.target_display_name = ? AND (
      EXISTS (SELECT 1 FROM standing_members s WHERE s.group_id = ga.group_id AND s.principal_id = ?3)
      OR EXISTS (SELECT 1 FROM memberships m WHERE m.group_id = ga.group_id AND m.principal_id = ?3
                 AND m.access_id = 'member' AND m.active = 1
                 AND (m.start_at IS NULL OR m.start_at <= ?4) AND (m.end_at IS NULL OR m.end_at > ?4)))
    LIMIT 1";

impl SqliteStore {
    pub async fn open(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    async fn log_skips_for_group(
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        event: &Event,
        status: &str,
        reason: &str,
        deferred: bool,
        now: Millis,
    ) -> StoreResult<()> {
        let apps = sqlx::query(
            "SELECT a.id, a.name, a.next_sync_at FROM group_assignments ga JOIN apps a ON a.id = ga.app_id
             WHERE ga.group_id = ? AND a.deleted_at IS NULL ORDER BY a.id",
        )
        .bind(&event.group_id)
        .fetch_all(&mut **tx)
        .await?;
        for app in apps {
            let entry = LogEntry {
                id: uuid::Uuid::now_v7().to_string(),
                time: now,
                app_id: app.try_get("id")?,
                app_name: app.try_get("name")?,
                trigger: "activation".into(),
                event_id: Some(event.id.clone()),
                principal_id: Some(event.principal_id.clone()),
                user_principal_name: event.principal.as_ref().map(|p| p.user_principal_name.clone()),
                group_id: Some(event.group_id.clone()),
                action: if event.access_id == "owner" {
                    "add_owner".into()
                } else {
                    "add_member".into()
                },
                status: status.into(),
                reason: Some(reason.into()),
                deferred_until: deferred.then(|| app.try_get("next_sync_at")).transpose()?,
                ..Default::default()
            };
            insert_log_in(&mut **tx, &entry).await?;
        }
        Ok(())
    }
}

impl SqliteStore {
    /// Records one event, updates its membership and queues its jobs, inside the caller's
    /// transaction.
    async fn accept_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        event: &Event,
        effect: &Effect,
        now: Millis,
    ) -> StoreResult<Acceptance> {
        let existing = sqlx::query("SELECT seq, body FROM events WHERE id = ? AND status = ?")
            .bind(&event.id)
            .bind(&event.status)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = existing {
            let body: String = row.try_get("body")?;
            let seq: i64 = row.try_get("seq")?;
            let stored: Value = serde_json::from_str(&body).map_err(|e| corrupt("event body", e))?;
            if stored != event.raw {
                return Ok(Acceptance::Conflict);
            }
            let jobs = sqlx::query("SELECT id, app_id FROM jobs WHERE event_seq = ? ORDER BY seq")
                .bind(seq)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("id")?, r.try_get("app_id")?)))
                .collect::<StoreResult<Vec<_>>>()?;
            return Ok(Acceptance::Duplicate { jobs });
        }

        if let Some(p) = &event.principal {
            sqlx::query(
                "INSERT INTO principals (principal_id, user_principal_name, display_name, given_name, surname, mail, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (principal_id) DO UPDATE SET user_principal_name = excluded.user_principal_name,
                   display_name = excluded.display_name, given_name = excluded.given_name,
                   surname = excluded.surname, mail = excluded.mail, updated_at = excluded.updated_at",
            )
            .bind(&event.principal_id)
            .bind(&p.user_principal_name)
            .bind(&p.display_name)
            .bind(&p.given_name)
            .bind(&p.surname)
            .bind(&p.mail)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }

        let state = sqlx::query(
            "SELECT active, start_at, end_at, event_created FROM memberships
             WHERE principal_id = ? AND group_id = ? AND access_id = ?",
        )
        .bind(&event.principal_id)
        .bind(&event.group_id)
        .bind(&event.access_id)
        .fetch_optional(&mut **tx)
        .await?;
        let newer_seen = match &state {
            Some(row) => row.try_get::<i64, _>("event_created")? > event.created_at,
            None => false,
        };
        let state_start: Option<Millis> = match &state {
            Some(row) => row.try_get("start_at")?,
            None => None,
        };
        let state_active = match &state {
            Some(row) => row.try_get::<i64, _>("active")? != 0,
            None => false,
        };

        let (outcome, reason): (&str, Option<String>) = match effect {
            _ if newer_seen && !matches!(effect, Effect::Skip(_)) => (
                "skipped",
                Some("superseded: a newer event for this membership was already applied".into()),
            ),
            Effect::Skip(reason) => ("skipped", Some(reason.clone())),
            Effect::Activate { .. } => ("activate", None),
            Effect::Assign { .. } => ("assign", None),
            Effect::Extend { .. } if !state_active => (
                "skipped",
                Some("nothing to extend: the membership is not active".into()),
            ),
            Effect::Extend { .. } => ("extend", None),
            Effect::Remove => ("remove", None),
        };

        let inserted = sqlx::query(
            "INSERT INTO events (id, status, body, action, access_id, principal_id, group_id, created_at, received_at,
             start_at, end_at, outcome, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&event.id)
        .bind(&event.status)
        .bind(event.raw.to_string())
        .bind(&event.action_name)
        .bind(&event.access_id)
        .bind(&event.principal_id)
        .bind(&event.group_id)
        .bind(event.created_at)
        .bind(now)
        .bind(event.start_at)
        .bind(event.end_at)
        .bind(outcome)
        .bind(&reason)
        .execute(&mut **tx)
        .await?;
        let event_seq = inserted.last_insert_rowid();

        if outcome == "skipped" {
            let reason = reason.unwrap_or_default();
            Self::log_skips_for_group(tx, event, "skipped", &reason, false, now).await?;
            return Ok(Acceptance::Accepted { jobs: vec![] });
        }

        let upsert_membership =
            "INSERT INTO memberships (principal_id, group_id, access_id, active, source, start_at, end_at,
               event_seq, event_created, expired_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)
             ON CONFLICT (principal_id, group_id, access_id) DO UPDATE SET active = excluded.active,
               source = excluded.source, start_at = excluded.start_at, end_at = excluded.end_at,
               event_seq = excluded.event_seq, event_created = excluded.event_created, expired_at = NULL";
        let (kind, trigger, not_before, flag) = match effect {
            Effect::Activate { start, end } | Effect::Assign { start, end } => {
                let source = if matches!(effect, Effect::Activate { .. }) {
                    "activation"
                } else {
                    "assignment"
                };
                sqlx::query(upsert_membership)
                    .bind(&event.principal_id)
                    .bind(&event.group_id)
                    .bind(&event.access_id)
                    .bind(1i64)
                    .bind(source)
                    .bind(start)
                    .bind(end)
                    .bind(event_seq)
                    .bind(event.created_at)
                    .execute(&mut **tx)
                    .await?;
                if source == "assignment" {
                    Self::log_skips_for_group(
                        tx,
                        event,
                        "deferred",
                        "assignments are provisioned by the next synchronization cycle",
                        true,
                        now,
                    )
                    .await?;
                    return Ok(Acceptance::Accepted { jobs: vec![] });
                }
                ("add", "activation", (*start).max(now), None)
            }
            Effect::Extend { end } => {
                sqlx::query(
                    "UPDATE memberships SET end_at = ?, event_seq = ?, event_created = ?,
                       expired_at = CASE WHEN ? IS NULL OR ? > ? THEN NULL ELSE expired_at END
                     WHERE principal_id = ? AND group_id = ? AND access_id = ?",
                )
                .bind(end)
                .bind(event_seq)
                .bind(event.created_at)
                .bind(end)
                .bind(end)
                .bind(now)
                .bind(&event.principal_id)
                .bind(&event.group_id)
                .bind(&event.access_id)
                .execute(&mut **tx)
                .await?;
                return Ok(Acceptance::Accepted { jobs: vec![] });
            }
            Effect::Remove => {
                let start = state_start.or(event.start_at);
                let flag = start.filter(|s| event.created_at - s < crate::activation::MIN_DURATION_MS).map(|_| {
                    "anomaly: removal within five minutes of the start (the source should never send this); applied anyway"
                        .to_string()
                });
                sqlx::query(upsert_membership)
                    .bind(&event.principal_id)
                    .bind(&event.group_id)
                    .bind(&event.access_id)
                    .bind(0i64)
                    .bind("activation")
                    .bind(state_start)
                    .bind(now)
                    .bind(event_seq)
                    .bind(event.created_at)
                    .execute(&mut **tx)
                    .await?;
                ("remove", "deactivation", now, flag)
            }
            Effect::Skip(_) => unreachable!("handled above"),
        };

        let apps = sqlx::query(
            "SELECT ga.app_id FROM group_assignments ga JOIN apps a ON a.id = ga.app_id
             WHERE ga.group_id = ? AND a.deleted_at IS NULL ORDER BY ga.app_id",
        )
        .bind(&event.group_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut jobs = Vec::new();
        for app in apps {
            let app_id: String = app.try_get("app_id")?;
            let job_id = uuid::Uuid::now_v7().to_string();
            sqlx::query(INSERT_JOB)
                .bind(&job_id)
                .bind(&app_id)
                .bind(event_seq)
                .bind(&event.id)
                .bind(&event.principal_id)
                .bind(&event.group_id)
                .bind(kind)
                .bind(trigger)
                .bind("pending")
                .bind(not_before)
                .bind(now)
                .bind(None::<i64>)
                .bind(&flag)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            jobs.push((job_id, app_id));
        }
        Ok(Acceptance::Accepted { jobs })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_token(&self, t: &TokenRecord, hash: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO tokens (id, name, role, hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(&t.role)
            .bind(hash)
            .bind(t.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        let row = sqlx::query("SELECT id, name, role, created_at FROM tokens WHERE hash = ? AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(TokenRecord {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let rows =
            sqlx::query("SELECT id, name, role, created_at FROM tokens WHERE revoked_at IS NULL ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRecord {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    role: r.try_get("role")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn revoke_token(&self, id: &str, now: Millis) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_app(&self, a: &AppRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO apps (id, name, scim_base_url, auth_type, auth_sealed, settings, owners, status,
             status_reason, legacy_remove, next_sync_at, quarantine_level, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&a.id)
        .bind(&a.name)
        .bind(&a.scim_base_url)
        .bind(&a.auth_type)
        .bind(&a.auth_sealed)
        .bind(serde_json::to_string(&a.settings).expect("settings serialize"))
        .bind(serde_json::to_string(&a.owners).expect("owners serialize"))
        .bind(&a.status)
        .bind(&a.status_reason)
        .bind(a.legacy_remove as i64)
        .bind(a.next_sync_at)
        .bind(a.quarantine_level)
        .bind(a.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn update_app(&self, a: &AppRecord) -> StoreResult<()> {
        sqlx::query(
            "UPDATE apps SET name = ?, scim_base_url = ?, auth_type = ?, auth_sealed = ?, settings = ?, owners = ?,
             status = ?, status_reason = ?, next_sync_at = ?, quarantine_level = ? WHERE id = ?",
        )
        .bind(&a.name)
        .bind(&a.scim_base_url)
        .bind(&a.auth_type)
        .bind(&a.auth_sealed)
        .bind(serde_json::to_string(&a.settings).expect("settings serialize"))
        .bind(serde_json::to_string(&a.owners).expect("owners serialize"))
        .bind(&a.status)
        .bind(&a.status_reason)
        .bind(a.next_sync_at)
        .bind(a.quarantine_level)
        .bind(&a.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_app(&self, id: &str) -> StoreResult<Option<AppRecord>> {
        let row = sqlx::query("SELECT * FROM apps WHERE id = ? AND deleted_at IS NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(app_from_row).transpose()
    }

    async fn list_apps(&self) -> StoreResult<Vec<AppRecord>> {
        let rows = sqlx::query("SELECT * FROM apps WHERE deleted_at IS NULL ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(app_from_row).collect()
    }

    async fn set_app_status(&self, id: &str, status: &str, reason: Option<&str>, level: i64) -> StoreResult<()> {
        sqlx::query("UPDATE apps SET status = ?, status_reason = ?, quarantine_level = ? WHERE id = ?")
            .bind(status)
            .bind(reason)
            .bind(level)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_next_sync(&self, id: &str, at: Millis) -> StoreResult<()> {
        sqlx::query("UPDATE apps SET next_sync_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_legacy_remove(&self, id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE apps SET legacy_remove = 1 WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_app(&self, id: &str, now: Millis) -> StoreResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("UPDATE apps SET deleted_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM group_assignments WHERE app_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE jobs SET state = 'cancelled', updated_at = ? WHERE app_id = ? AND state IN ('pending', 'deferred', 'in_flight')")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_assignment(&self, a: &Assignment) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO group_assignments (app_id, group_id, target_display_name, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (app_id, group_id) DO UPDATE SET target_display_name = excluded.target_display_name",
        )
        .bind(&a.app_id)
        .bind(&a.group_id)
        .bind(&a.target_display_name)
        .bind(a.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_assignment(&self, app_id: &str, group_id: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM group_assignments WHERE app_id = ? AND group_id = ?")
            .bind(app_id)
            .bind(group_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_assignments(&self, app_id: &str) -> StoreResult<Vec<Assignment>> {
        let rows = sqlx::query("SELECT * FROM group_assignments WHERE app_id = ? ORDER BY created_at, group_id")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Assignment {
                    app_id: r.try_get("app_id")?,
                    group_id: r.try_get("group_id")?,
                    target_display_name: r.try_get("target_display_name")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    #[instrument(skip_all, fields(events = items.len()))]
    async fn accept_events(&self, items: &[(Event, Effect)], now: Millis) -> StoreResult<Vec<Acceptance>> {
        // One transaction per webhook: each event is still judged alone, and 202 means all committed.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut answers = Vec::with_capacity(items.len());
        for (event, effect) in items {
            answers.push(Self::accept_in(&mut tx, event, effect, now).await?);
        }
        tx.commit().await?;
        Ok(answers)
    }

    async fn get_event(&self, id: &str) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT seq, id, status, body, received_at, outcome, reason FROM events WHERE id = ? ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get("body")?;
                Ok(StoredEvent {
                    seq: r.try_get("seq")?,
                    id: r.try_get("id")?,
                    status: r.try_get("status")?,
                    body: serde_json::from_str(&body).map_err(|e| corrupt("event body", e))?,
                    received_at: r.try_get("received_at")?,
                    outcome: r.try_get("outcome")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    async fn principal(&self, principal_id: &str) -> StoreResult<Option<Principal>> {
        let row = sqlx::query("SELECT * FROM principals WHERE principal_id = ?")
            .bind(principal_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Principal {
                user_principal_name: r.try_get("user_principal_name")?,
                display_name: r.try_get("display_name")?,
                given_name: r.try_get("given_name")?,
                surname: r.try_get("surname")?,
                mail: r.try_get("mail")?,
            })
        })
        .transpose()
    }

    async fn put_standing_member(
        &self,
        group_id: &str,
        principal: &str,
        info: Option<&Principal>,
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(p) = info {
            sqlx::query(
                "INSERT INTO principals (principal_id, user_principal_name, display_name, given_name, surname, mail, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (principal_id) DO UPDATE SET user_principal_name = excluded.user_principal_name,
                   display_name = excluded.display_name, given_name = excluded.given_name,
                   surname = excluded.surname, mail = excluded.mail, updated_at = excluded.updated_at",
            )
            .bind(principal)
            .bind(&p.user_principal_name)
            .bind(&p.display_name)
            .bind(&p.given_name)
            .bind(&p.surname)
            .bind(&p.mail)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO standing_members (group_id, principal_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(group_id)
        .bind(principal)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_standing_member(&self, group_id: &str, principal: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM standing_members WHERE group_id = ? AND principal_id = ?")
            .bind(group_id)
            .bind(principal)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn runnable_jobs(&self, app_id: &str, now: Millis, limit: i64) -> StoreResult<Vec<Job>> {
        // Removals first (revocation never waits behind activations), then arrival order.
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE app_id = ? AND state = 'pending' AND not_before <= ?
             ORDER BY CASE kind WHEN 'remove' THEN 0 ELSE 1 END, seq LIMIT ?",
        )
        .bind(app_id)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn next_job_time(&self, app_id: &str, now: Millis) -> StoreResult<Option<Millis>> {
        let row = sqlx::query(
            "SELECT MIN(not_before) AS t FROM jobs WHERE app_id = ? AND state = 'pending' AND not_before > ?",
        )
        .bind(app_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("t")?)
    }

    async fn deferred_jobs(&self, app_id: &str) -> StoreResult<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE app_id = ? AND state = 'deferred'
             ORDER BY CASE kind WHEN 'remove' THEN 0 ELSE 1 END, seq",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn set_job_state(
        &self,
        job_id: &str,
        state: &str,
        deferred_until: Option<Millis>,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET state = ?, deferred_until = COALESCE(?, deferred_until), updated_at = ? WHERE id = ?",
        )
        .bind(state)
        .bind(deferred_until)
        .bind(now)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn start_job(&self, job_id: &str, now: Millis) -> StoreResult<()> {
        sqlx::query("UPDATE jobs SET state = 'in_flight', attempt = attempt + 1, updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn recover_in_flight(&self, app_id: &str, now: Millis) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'pending', flag = COALESCE(flag, 'outcome unknown'), updated_at = ?
             WHERE app_id = ? AND state = 'in_flight' RETURNING id",
        )
        .bind(now)
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    async fn open_adds_for(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
        before_seq: i64,
    ) -> StoreResult<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE app_id = ? AND principal_id = ? AND group_id = ? AND kind = 'add'
             AND state IN ('pending', 'deferred') AND seq < ? ORDER BY seq",
        )
        .bind(app_id)
        .bind(principal_id)
        .bind(group_id)
        .bind(before_seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn insert_job(&self, job: &Job, now: Millis) -> StoreResult<()> {
        sqlx::query(INSERT_JOB)
            .bind(&job.id)
            .bind(&job.app_id)
            .bind(None::<i64>)
            .bind(&job.event_id)
            .bind(&job.principal_id)
            .bind(&job.group_id)
            .bind(&job.kind)
            .bind(&job.trigger)
            .bind(&job.state)
            .bind(job.not_before)
            .bind(job.received_at)
            .bind(job.deferred_until)
            .bind(&job.flag)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn membership_active(&self, principal_id: &str, group_id: &str, now: Millis) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM memberships WHERE principal_id = ? AND group_id = ? AND access_id = 'member' AND active = 1
             AND (end_at IS NULL OR end_at > ?)",
        )
        .bind(principal_id)
        .bind(group_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn entitled_via(
        &self,
        app_id: &str,
        target: &str,
        principal_id: &str,
        now: Millis,
    ) -> StoreResult<Option<String>> {
        let row = sqlx::query(ENTITLED_VIA)
            .bind(app_id)
            .bind(target)
            .bind(principal_id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("group_id")?)).transpose()
    }

    #[instrument(skip_all)]
    async fn expire_due(&self, now: Millis) -> StoreResult<Vec<String>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let due = sqlx::query(
            "UPDATE memberships SET active = 0, expired_at = ?1
             WHERE active = 1 AND expired_at IS NULL AND end_at IS NOT NULL AND end_at <= ?1
             RETURNING principal_id, group_id, access_id, end_at, event_seq",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut woken = Vec::new();
        for m in due {
            if m.try_get::<String, _>("access_id")? != "member" {
                continue;
            }
            let principal_id: String = m.try_get("principal_id")?;
            let group_id: String = m.try_get("group_id")?;
            let end_at: Millis = m.try_get("end_at")?;
            let event_seq: i64 = m.try_get("event_seq")?;
            let event_id: Option<String> = sqlx::query("SELECT id FROM events WHERE seq = ?")
                .bind(event_seq)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("id"))
                .transpose()?;
            let apps = sqlx::query(
                "SELECT ga.app_id FROM group_assignments ga JOIN apps a ON a.id = ga.app_id
                 WHERE ga.group_id = ? AND a.deleted_at IS NULL",
            )
            .bind(&group_id)
            .fetch_all(&mut *tx)
            .await?;
            for app in apps {
                let app_id: String = app.try_get("app_id")?;
                sqlx::query(INSERT_JOB)
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(&app_id)
                    .bind(event_seq)
                    .bind(&event_id)
                    .bind(&principal_id)
                    .bind(&group_id)
                    .bind("remove")
                    .bind("expiry")
                    .bind("pending")
                    .bind(now)
                    .bind(end_at)
                    .bind(None::<i64>)
                    .bind(None::<String>)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if !woken.contains(&app_id) {
                    woken.push(app_id);
                }
            }
        }
        tx.commit().await?;
        Ok(woken)
    }

    async fn next_expiry(&self) -> StoreResult<Option<Millis>> {
        let row = sqlx::query(
            "SELECT MIN(end_at) AS t FROM memberships WHERE active = 1 AND expired_at IS NULL AND end_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("t")?)
    }

    async fn target_user(&self, app_id: &str, principal_id: &str) -> StoreResult<Option<TargetUser>> {
        let row = sqlx::query("SELECT * FROM target_users WHERE app_id = ? AND principal_id = ?")
            .bind(app_id)
            .bind(principal_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(TargetUser {
                target_user_id: r.try_get("target_user_id")?,
                fingerprint: r.try_get("fingerprint")?,
                created_by_us: r.try_get::<i64, _>("created_by_us")? != 0,
                disabled: r.try_get::<i64, _>("disabled")? != 0,
            })
        })
        .transpose()
    }

    async fn put_target_user(&self, app_id: &str, principal_id: &str, u: &TargetUser) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO target_users (app_id, principal_id, target_user_id, fingerprint, created_by_us, disabled)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (app_id, principal_id) DO UPDATE SET target_user_id = excluded.target_user_id,
               fingerprint = excluded.fingerprint, created_by_us = MAX(created_by_us, excluded.created_by_us),
               disabled = excluded.disabled",
        )
        .bind(app_id)
        .bind(principal_id)
        .bind(&u.target_user_id)
        .bind(&u.fingerprint)
        .bind(u.created_by_us as i64)
        .bind(u.disabled as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn target_users(&self, app_id: &str) -> StoreResult<Vec<(String, TargetUser)>> {
        let rows = sqlx::query("SELECT * FROM target_users WHERE app_id = ? ORDER BY principal_id")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("principal_id")?,
                    TargetUser {
                        target_user_id: r.try_get("target_user_id")?,
                        fingerprint: r.try_get("fingerprint")?,
                        created_by_us: r.try_get::<i64, _>("created_by_us")? != 0,
                        disabled: r.try_get::<i64, _>("disabled")? != 0,
                    },
                ))
            })
            .collect()
    }

    async fn target_group(&self, app_id: &str, display_name: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT target_group_id FROM target_groups WHERE app_id = ? AND display_name = ?")
            .bind(app_id)
            .bind(display_name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("target_group_id")?)).transpose()
    }

    async fn put_target_group(&self, app_id: &str, display_name: &str, id: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO target_groups (app_id, display_name, target_group_id) VALUES (?, ?, ?)
             ON CONFLICT (app_id, display_name) DO UPDATE SET target_group_id = excluded.target_group_id",
        )
        .bind(app_id)
        .bind(display_name)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn forget_target_group(&self, app_id: &str, display_name: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM target_groups WHERE app_id = ? AND display_name = ?")
            .bind(app_id)
            .bind(display_name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_provisioned(&self, app_id: &str, m: &TargetMember, now: Millis) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO provisioned (app_id, target_display_name, principal_id, added_at, confirmed) VALUES (?, ?, ?, ?, 1)
             ON CONFLICT (app_id, target_display_name, principal_id) DO UPDATE SET confirmed = 1",
        )
        .bind(app_id)
        .bind(&m.target_display_name)
        .bind(&m.principal_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unmark_provisioned(&self, app_id: &str, m: &TargetMember) -> StoreResult<()> {
        sqlx::query("DELETE FROM provisioned WHERE app_id = ? AND target_display_name = ? AND principal_id = ?")
            .bind(app_id)
            .bind(&m.target_display_name)
            .bind(&m.principal_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn is_provisioned(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool> {
        let row =
            sqlx::query("SELECT 1 FROM provisioned WHERE app_id = ? AND target_display_name = ? AND principal_id = ?")
                .bind(app_id)
                .bind(&m.target_display_name)
                .bind(&m.principal_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    async fn is_confirmed(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM provisioned WHERE app_id = ? AND target_display_name = ? AND principal_id = ? AND confirmed = 1",
        )
        .bind(app_id)
        .bind(&m.target_display_name)
        .bind(&m.principal_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn mark_in_doubt(&self, app_id: &str, m: &TargetMember, now: Millis) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO provisioned (app_id, target_display_name, principal_id, added_at, confirmed) VALUES (?, ?, ?, ?, 0)
             ON CONFLICT DO NOTHING",
        )
        .bind(app_id)
        .bind(&m.target_display_name)
        .bind(&m.principal_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn in_doubt_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>> {
        let rows = sqlx::query(
            "SELECT target_display_name, principal_id FROM provisioned WHERE app_id = ? AND confirmed = 0
             ORDER BY target_display_name, principal_id",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    async fn retry_job_at(&self, job_id: &str, not_before: Millis, now: Millis) -> StoreResult<()> {
        sqlx::query("UPDATE jobs SET state = 'pending', not_before = ?, updated_at = ? WHERE id = ?")
            .bind(not_before)
            .bind(now)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn requeue_in_doubt(&self, job_id: &str, now: Millis) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'pending', flag = COALESCE(flag, 'outcome unknown'), updated_at = ?
             WHERE id = ? AND state = 'in_flight'",
        )
        .bind(now)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn provisioned_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>> {
        let rows = sqlx::query(
            "SELECT target_display_name, principal_id FROM provisioned WHERE app_id = ? ORDER BY target_display_name, principal_id",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    async fn desired_members(&self, app_id: &str, now: Millis) -> StoreResult<Vec<TargetMember>> {
        let rows = sqlx::query(
            "SELECT DISTINCT ga.target_display_name, s.principal_id FROM group_assignments ga
               JOIN standing_members s ON s.group_id = ga.group_id WHERE ga.app_id = ?1
             UNION
             SELECT DISTINCT ga.target_display_name, m.principal_id FROM group_assignments ga
               JOIN memberships m ON m.group_id = ga.group_id
             WHERE ga.app_id = ?1 AND m.access_id = 'member' AND m.active = 1
               AND (m.start_at IS NULL OR m.start_at <= ?2) AND (m.end_at IS NULL OR m.end_at > ?2)
             ORDER BY 1, 2",
        )
        .bind(app_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    async fn insert_log(&self, entry: &LogEntry) -> StoreResult<()> {
        insert_log_in(&self.pool, entry).await
    }

    async fn query_logs(&self, f: &LogFilter) -> StoreResult<Vec<LogEntry>> {
        // Only the filters given become conditions, so SQLite walks the primary key (or the
        // app's index) from the cursor down: a page costs the same on the millionth entry.
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT * FROM provisioning_logs WHERE 1 = 1");
        if let Some(ids) = &f.app_ids {
            q.push(" AND app_id IN (SELECT value FROM json_each(")
                .push_bind(serde_json::to_string(ids).expect("ids serialize"))
                .push("))");
        }
        let equal = [
            ("app_id", &f.app_id),
            ("principal_id", &f.principal_id),
            ("group_id", &f.group_id),
            ("event_id", &f.event_id),
            ("status", &f.status),
            ("action", &f.action),
            ("trigger", &f.trigger),
        ];
        for (column, value) in equal {
            if let Some(value) = value {
                q.push(format_args!(" AND {column} = ")).push_bind(value.clone());
            }
        }
        if let Some(since) = f.since {
            q.push(" AND time >= ").push_bind(since);
        }
        if let Some(until) = f.until {
            q.push(" AND time < ").push_bind(until);
        }
        if let Some(before) = f.before_seq {
            q.push(" AND seq < ").push_bind(before);
        }
        q.push(" ORDER BY seq DESC LIMIT ").push_bind(f.limit);
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(log_from_row).collect()
    }

    async fn get_log(&self, id: &str) -> StoreResult<Option<LogEntry>> {
        let row = sqlx::query("SELECT * FROM provisioning_logs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(log_from_row).transpose()
    }

    async fn recent_push_times(&self, app_id: &str, since: Millis) -> StoreResult<Vec<Millis>> {
        // Pushes that went out: immediate triggers, a SCIM call made (no-ops have no steps).
        let rows = sqlx::query(
            "SELECT time FROM provisioning_logs WHERE app_id = ? AND time >= ? AND cycle_id IS NULL
             AND trigger IN ('activation', 'deactivation', 'expiry') AND status IN ('success', 'failure')
             AND attempt = 1 AND steps != '[]' ORDER BY time",
        )
        .bind(app_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("time")?)).collect()
    }

    async fn purge_logs(&self, older_than: Millis, batch: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM provisioning_logs WHERE seq IN (SELECT seq FROM provisioning_logs WHERE time < ? ORDER BY seq LIMIT ?)",
        )
        .bind(older_than)
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn purge_audit(&self, older_than: Millis, batch: i64) -> StoreResult<u64> {
        let done =
            sqlx::query("DELETE FROM audit WHERE seq IN (SELECT seq FROM audit WHERE time < ? ORDER BY seq LIMIT ?)")
                .bind(older_than)
                .bind(batch)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    async fn insert_cycle(&self, c: &CycleRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sync_cycles (id, app_id, trigger, dry_run, started_at, ended_at, status, counts, progress, report)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.id)
        .bind(&c.app_id)
        .bind(&c.trigger)
        .bind(c.dry_run as i64)
        .bind(c.started_at)
        .bind(c.ended_at)
        .bind(&c.status)
        .bind(serde_json::to_string(&c.counts).expect("counts serialize"))
        .bind(&c.progress)
        .bind(c.report.as_ref().map(Value::to_string))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn update_cycle(&self, c: &CycleRecord) -> StoreResult<()> {
        sqlx::query(
            "UPDATE sync_cycles SET ended_at = ?, status = ?, counts = ?, progress = ?, report = ? WHERE id = ?",
        )
        .bind(c.ended_at)
        .bind(&c.status)
        .bind(serde_json::to_string(&c.counts).expect("counts serialize"))
        .bind(&c.progress)
        .bind(c.report.as_ref().map(Value::to_string))
        .bind(&c.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_cycles(&self, app_id: &str, limit: i64) -> StoreResult<Vec<CycleRecord>> {
        let rows =
            sqlx::query("SELECT * FROM sync_cycles WHERE app_id = ? ORDER BY started_at DESC, rowid DESC LIMIT ?")
                .bind(app_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(cycle_from_row).collect()
    }

    async fn request_cycle(&self, app_id: &str, cycle_id: &str, dry_run: bool, now: Millis) -> StoreResult<()> {
        sqlx::query("INSERT INTO cycle_requests (cycle_id, app_id, dry_run, created_at) VALUES (?, ?, ?, ?)")
            .bind(cycle_id)
            .bind(app_id)
            .bind(dry_run as i64)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn take_cycle_request(&self, app_id: &str) -> StoreResult<Option<(String, bool)>> {
        let row = sqlx::query(
            "DELETE FROM cycle_requests WHERE cycle_id = (SELECT cycle_id FROM cycle_requests WHERE app_id = ?
             ORDER BY created_at LIMIT 1) RETURNING cycle_id, dry_run",
        )
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("cycle_id")?, r.try_get::<i64, _>("dry_run")? != 0)))
            .transpose()
    }

    async fn insert_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        sqlx::query("INSERT INTO audit (time, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)")
            .bind(e.time)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(e.detail.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_audit(&self, limit: i64, before_seq: Option<i64>) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit WHERE (?1 IS NULL OR seq < ?1) ORDER BY seq DESC LIMIT ?2")
            .bind(before_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditEntry {
                    seq: r.try_get("seq")?,
                    time: r.try_get("time")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: serde_json::from_str(&detail).map_err(|e| corrupt("audit detail", e))?,
                })
            })
            .collect()
    }

    // encryption-key rotation (`scim-bridge rekey`)
    async fn reseal_credentials(&self, reseal: &Reseal) -> StoreResult<(usize, Vec<String>)> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query("SELECT id, auth_sealed FROM apps ORDER BY created_at, id")
            .fetch_all(&mut *tx)
            .await?;
        let mut resealed = 0;
        let mut unopened = Vec::new();
        for row in &rows {
            let id: String = row.try_get("id")?;
            let sealed: Vec<u8> = row.try_get("auth_sealed")?;
            match reseal(&sealed) {
                Some(again) => {
                    sqlx::query("UPDATE apps SET auth_sealed = ? WHERE id = ?")
                        .bind(again)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    resealed += 1;
                }
                None => unopened.push(id),
            }
        }
        tx.commit().await?;
        Ok((resealed, unopened))
    }
}
