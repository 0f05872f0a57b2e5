//! Persistence. One type (`Store`) on either database (embedded SQLite,
//! shared PostgreSQL), chosen from the URL. A query is written once, in the file of its aggregate;
//! what differs between the databases is listed in `dialect`.

mod access_ends;
mod apps;
mod audit;
mod config;
mod cycles;
mod dialect;
mod events;
mod group_commit;
mod held;
mod jobs;
mod links;
mod logs;
mod memberships;
pub mod migrate;
mod outcomes;
mod postgres;
mod principals;
mod retention;
mod sources;
mod sql;
mod sqlite;
mod targets;
mod tokens;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::activation::{Effect, Event, Principal};
use crate::clock::Millis;
use crate::config::RateLimit;
use crate::mapping::{AppMapping, AppMappingError, MappingEntry};

pub use dialect::{StoreCounts, store_counts};
pub use sql::Store;

/// The names `migrate` and the tests open one database by: the one `Store`, its backend chosen
/// from the URL.
pub type SqliteStore = Store;
pub type PostgresStore = Store;

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write of work done under a lease that this replica no longer holds (`crate::lease`).
    #[error("this replica no longer holds the lease `{0}`: the write was refused")]
    Fenced(String),
    /// An app's name that another app already has (SPEC §9: names are unique).
    #[error("the name {0:?} is taken by another app")]
    NameTaken(String),
    /// The SQLite store was copied into PostgreSQL by `migrate-store`: it takes no more writes.
    #[error(
        "this SQLite store was moved to {0} by `scim-bridge migrate-store` and takes no more writes: run the \
         bridge with SCIM_BRIDGE_DATABASE_URL set to that database (and the same secrets)"
    )]
    Moved(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match sqlite::moved_to(&e) {
            Some(destination) => Self::Moved(destination),
            None => Self::Database(e),
        }
    }
}

impl StoreError {
    /// Whether trying again later can succeed: the database was busy, locked, unreachable or
    /// gave up a transaction to keep others consistent, or the lease moved to another replica.
    /// Anything else (a schema that does not match, corrupt data, a value the database refuses)
    /// fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => database_error_is_transient(e),
            Self::Fenced(_) | Self::Moved(_) => true,
            Self::Migrate(_) | Self::Corrupt(_) | Self::NameTaken(_) => false,
        }
    }
}

/// The target an app's `scimBaseUrl` names, as stored in `apps.target_key`: the URL normalized
/// (scheme and host lower-cased, default port dropped, path resolved), without a trailing `/`. Two
/// apps with the same key provision the same target.
pub fn target_key(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(url) => url.as_str().trim_end_matches('/').to_string(),
        Err(_) => url.trim_end_matches('/').to_string(),
    }
}

/// A write refused because the app's name is another app's (the unique `name_key`) is
/// `NameTaken`; any other error is the database's.
pub(crate) fn name_taken(e: sqlx::Error, name: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::NameTaken(name.to_string()),
        _ => e.into(),
    }
}

fn database_error_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            if let Ok(extended) = code.parse::<i64>() {
                // SQLite result codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL.
                return matches!(extended & 0xff, 5 | 6 | 10 | 13 | 14 | 15);
            }
            // PostgreSQL SQLSTATEs: connection exceptions, serialization failure, deadlock,
            // insufficient resources, lock not available, query cancelled (a lock or statement
            // timeout), shutdown and start-up, a read-only transaction (a failover in progress).
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    code,
                    "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "25006"
                )
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Overflow {
    #[default]
    NextCycle,
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatchStyle {
    #[default]
    Auto,
    Rfc7644,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftRepair {
    #[default]
    Report,
    Repair,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutOfScope {
    #[default]
    Keep,
    Disable,
}

/// What the end of a user's last entitlement to an app does there (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnAccessEnd {
    /// The membership is removed; the account stays (the default with groups).
    RemoveMember,
    /// `active: false` on a user the bridge created or enabled (the default without groups).
    DisableUser,
    /// `DELETE /Users/{id}` of a user the bridge created (one it only enabled is disabled).
    DeleteUser,
}

impl OnAccessEnd {
    /// The name the access-end records and the log give the action.
    pub fn action(self) -> &'static str {
        match self {
            Self::RemoveMember => "remove_member",
            Self::DisableUser => "disable_user",
            Self::DeleteUser => "delete_user",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pacing {
    #[schema(minimum = 1, default = 25)]
    pub requests_per_second: u32,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            requests_per_second: 25,
        }
    }
}

/// Per-app settings as an app's owner gives them. `None` means "the global default". The API
/// refuses keys that are not settings before these are read (`http::apps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppSettings {
    /// Seconds between synchronization cycles (default 2400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub sync_interval_seconds: Option<u64>,
    /// Immediate pushes allowed per window (default 5 in 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub pacing: Pacing,
    #[serde(default)]
    pub overflow: Overflow,
    #[serde(default)]
    pub patch_style: PatchStyle,
    #[serde(default)]
    pub drift_repair: DriftRepair,
    #[serde(default)]
    pub out_of_scope: OutOfScope,
    /// Members per group PATCH in a cycle (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub members_per_patch: Option<u32>,
    /// What a target receives as a User (SPEC §4), replaced whole; must map `userName`. `None`:
    /// the default mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_mapping: Option<Vec<MappingEntry>>,
    /// The mapped targets that find an existing user, in order; `None`: externalId, userName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<Vec<String>>,
    /// `false`: the app has no groups, the user account is the entitlement (SPEC §8). `None`
    /// (apps stored before the setting existed too): `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_groups: Option<bool>,
    /// What the end of the last entitlement does at the app; `None`: `removeMember` with groups,
    /// `disableUser` without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_access_end: Option<OnAccessEnd>,
    /// How long access may outlive its end here before it counts as late; `None`: the bridge's
    /// `SCIM_BRIDGE_ACCESS_END_SLO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub access_end_slo_seconds: Option<u64>,
    /// The deletion guard (SPEC §8): missing, `{"threshold": 500}`; `null`, off.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<DeletionGuard>)]
    pub deletion_guard: Option<Option<DeletionGuard>>,
}

/// A cycle that plans more than `threshold` counted removals holds them all (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeletionGuard {
    pub threshold: u64,
}

/// The default deletion guard of an app that does not set one.
pub const DEFAULT_DELETION_GUARD: DeletionGuard = DeletionGuard { threshold: 500 };

/// A setting given (`null` included) as `Some`, so that a missing key and `null` differ.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl AppSettings {
    /// Whether the bridge reads and writes `/Groups` for the app.
    pub fn provisions_groups(&self) -> bool {
        self.provision_groups.unwrap_or(true)
    }

    /// The deletion guard in effect: the app's own, the default, or `None` when turned off.
    pub fn deletion_guard(&self) -> Option<DeletionGuard> {
        self.deletion_guard.unwrap_or(Some(DEFAULT_DELETION_GUARD))
    }

    /// What the end of the last entitlement does at the app, its default applied.
    pub fn on_access_end(&self) -> OnAccessEnd {
        self.on_access_end.unwrap_or(if self.provisions_groups() {
            OnAccessEnd::RemoveMember
        } else {
            OnAccessEnd::DisableUser
        })
    }

    /// The app's mapping, compiled. A stored mapping was validated when it was saved.
    pub fn compiled_mapping(&self) -> Result<AppMapping, AppMappingError> {
        AppMapping::compile(self.attribute_mapping.as_deref(), self.matching.as_deref())
    }
}

/// An app's target and settings: what a check across apps reads of each (not its credentials,
/// mapping or owners).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppTarget {
    pub id: String,
    pub name: String,
    pub scim_base_url: String,
    #[sqlx(json)]
    pub settings: AppSettings,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppRecord {
    pub id: String,
    pub name: String,
    pub scim_base_url: String,
    pub auth_type: String,
    pub auth_sealed: Vec<u8>,
    #[sqlx(json)]
    pub settings: AppSettings,
    #[sqlx(json)]
    pub owners: Vec<String>,
    pub status: String,
    pub status_reason: Option<String>,
    pub legacy_remove: bool,
    pub next_sync_at: Millis,
    pub quarantine_level: i64,
    pub created_at: Millis,
    pub deleted_at: Option<Millis>,
    /// An applied configuration document created or matched the app (SPEC §9): a prune may
    /// remove it.
    pub managed: bool,
}

impl AppRecord {
    /// A new app: active, owned by nobody, not managed by a document, not quarantined, its first
    /// cycle at `next_sync_at`.
    pub fn new(
        id: &str,
        name: &str,
        scim_base_url: &str,
        (auth_type, auth_sealed): (String, Vec<u8>),
        settings: AppSettings,
        now: Millis,
        next_sync_at: Millis,
    ) -> Self {
        Self {
            id: id.to_string(),
            name: name.to_string(),
            scim_base_url: scim_base_url.to_string(),
            auth_type,
            auth_sealed,
            settings,
            owners: Vec::new(),
            status: "active".into(),
            status_reason: None,
            legacy_remove: false,
            next_sync_at,
            quarantine_level: 0,
            created_at: now,
            deleted_at: None,
            managed: false,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Assignment {
    pub app_id: String,
    pub group_id: String,
    pub target_display_name: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct Job {
    pub seq: i64,
    pub id: String,
    pub app_id: String,
    pub event_id: Option<String>,
    pub principal_id: String,
    pub group_id: String,
    pub kind: String,
    pub trigger: String,
    pub state: String,
    pub not_before: Millis,
    pub received_at: Millis,
    pub deferred_until: Option<Millis>,
    pub attempt: i64,
    pub flag: Option<String>,
    /// When the window admitted it (R2); `None` for work that does not count against the window.
    #[sqlx(default)]
    pub admitted_at: Option<Millis>,
    /// A removal a cycle step could not make, retried on the clock as a job of its own: the
    /// target group it removes the member from (no assignment may name it any more). `None` for
    /// the jobs of an event, whose group's assignment says where.
    #[sqlx(default)]
    pub target_display_name: Option<String>,
    /// The `traceparent` of the work that queued the job (its event's span, a cycle's step):
    /// the push joins that trace, whichever replica makes it (SPEC §10).
    #[sqlx(default)]
    pub trace_context: Option<String>,
}

impl Job {
    /// A new job waiting to be sent, never tried, with an id of its own: no event, no target
    /// group of its own, no trace context (the caller sets what it has).
    pub fn pending(
        app_id: &str,
        principal_id: &str,
        group_id: &str,
        kind: &str,
        trigger: &str,
        not_before: Millis,
        received_at: Millis,
    ) -> Self {
        Self {
            seq: 0,
            id: uuid::Uuid::now_v7().to_string(),
            app_id: app_id.to_string(),
            event_id: None,
            principal_id: principal_id.to_string(),
            group_id: group_id.to_string(),
            kind: kind.to_string(),
            trigger: trigger.to_string(),
            state: "pending".into(),
            not_before,
            received_at,
            deferred_until: None,
            attempt: 0,
            flag: None,
            admitted_at: None,
            target_display_name: None,
            trace_context: None,
        }
    }

    pub fn is_removal(&self) -> bool {
        self.kind == "remove"
    }
}

pub use crate::types::{HttpTrace, LogEntry, Step};

#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub app_ids: Option<Vec<String>>,
    pub app_id: Option<String>,
    pub principal_id: Option<String>,
    pub group_id: Option<String>,
    pub event_id: Option<String>,
    pub status: Option<String>,
    pub action: Option<String>,
    pub trigger: Option<String>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Entries with a smaller sequence number than this (the cursor).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// One end of an entitlement at an app and what became of it (SPEC §8, "Access-end records").
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AccessEnd {
    pub id: String,
    pub app_id: String,
    pub principal_id: String,
    pub user_principal_name: Option<String>,
    pub group_id: String,
    pub target_display_name: Option<String>,
    pub event_id: Option<String>,
    /// A PIM end (`expiry`, `deactivation`, `revoked`, `adminRemove`) or `directory`,
    /// `unassigned`, `appDeprovisioned`, `outOfScope`.
    pub reason: String,
    pub ended_at: Millis,
    pub learned_at: Millis,
    pub removed_at: Option<Millis>,
    pub action: Option<String>,
    pub status: String,
    pub waiting_on: Option<String>,
    pub updated_at: Millis,
}

/// The reasons that are PIM's own ends: the ones the objective judges.
pub const PIM_END_REASONS: &[&str] = &["expiry", "deactivation", "revoked", "adminRemove"];

impl AccessEnd {
    /// Whether PIM ended it (the objective judges these only).
    pub fn is_pim_end(&self) -> bool {
        PIM_END_REASONS.contains(&self.reason.as_str())
    }

    /// Still waiting for the target: pending, or failed and to be tried again.
    pub fn is_open(&self) -> bool {
        matches!(self.status.as_str(), "pending" | "failed" | "held")
    }

    /// How long access outlived its end: to the target's confirmation, or to `now` while open;
    /// `None` for an end with nothing to remove (`kept`, `notProvisioned`, `rejected`).
    pub fn excess_ms(&self, now: Millis) -> Option<Millis> {
        match (self.removed_at, self.is_open()) {
            (Some(removed), _) => Some((removed - self.ended_at).max(0)),
            (None, true) => Some((now - self.ended_at).max(0)),
            (None, false) => None,
        }
    }
}

/// The filters of `GET /v1/access-ends`; pages go newest end first.
#[derive(Debug, Clone, Default)]
pub struct AccessEndFilter {
    /// Only these apps (an app owner's).
    pub app_ids: Option<Vec<String>>,
    pub app_id: Option<String>,
    pub principal_id: Option<String>,
    pub group_id: Option<String>,
    pub event_id: Option<String>,
    pub status: Option<String>,
    pub reason: Option<String>,
    /// On `ended_at`: at or after.
    pub since: Option<Millis>,
    /// On `ended_at`: before.
    pub until: Option<Millis>,
    /// The last record of the previous page (`ended_at`, `id`): the page goes on below it.
    pub before: Option<(Millis, String)>,
    pub limit: i64,
}

/// A source besides the webhook (a Graph-polled group), as stored.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct SourceState {
    /// `graph:<groupId>`
    pub id: String,
    pub kind: String,
    pub group_id: String,
    pub delta_link: Option<String>,
    #[sqlx(json(nullable))]
    pub group_info: Option<Value>,
    pub group_info_at: Option<Millis>,
    pub last_attempt_at: Option<Millis>,
    pub last_success_at: Option<Millis>,
    pub last_error: Option<String>,
    pub next_poll_at: Option<Millis>,
}

/// What the store made of one webhook event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// Taken in: the jobs it queued (id, app), and the end its membership now has, if the
    /// membership is active and ends (the expiry timer's next look may have to come sooner).
    Accepted {
        jobs: Vec<(String, String)>,
        ends_at: Option<Millis>,
    },
    Duplicate {
        jobs: Vec<(String, String)>,
    },
    Conflict,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: String,
    pub status: String,
    #[sqlx(json)]
    pub body: Value,
    pub received_at: Millis,
    pub outcome: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TargetUser {
    pub target_user_id: String,
    pub fingerprint: String,
    pub created_by_us: bool,
    pub disabled: bool,
    /// The bridge set `active: true` on it (a matched account it found disabled).
    #[sqlx(default)]
    pub enabled_by_us: bool,
}

/// A removal the deletion guard holds (SPEC §8).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HeldRemoval {
    pub target_display_name: String,
    pub principal_id: String,
    /// The cycle that held it.
    pub cycle_id: String,
    pub held_at: Millis,
}

/// An object link (SPEC §8): the target user the bridge knows for a principal at an app.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LinkRecord {
    pub principal_id: String,
    pub target_user_id: String,
    /// What was last sent (the mapped `always` attributes, as JSON).
    pub fingerprint: String,
    pub created_by_us: bool,
    pub disabled: bool,
    pub last_push_at: Option<Millis>,
    #[sqlx(skip)]
    pub groups: Vec<LinkGroup>,
}

/// A target group a linked user was provisioned in.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkGroup {
    pub target_display_name: String,
    pub target_group_id: Option<String>,
    /// The source group it was provisioned for (unknown for rows of early releases).
    pub group_id: Option<String>,
}

/// A membership the bridge wants at a target: one principal in one target group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::FromRow)]
pub struct TargetMember {
    pub target_display_name: String,
    pub principal_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CycleCounts {
    pub added: i64,
    pub removed: i64,
    pub users_created: i64,
    pub users_updated: i64,
    pub users_disabled: i64,
    pub failed: i64,
    pub skipped: i64,
    pub drift_found: i64,
    pub deferred_taken: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CycleRecord {
    pub id: String,
    pub app_id: String,
    pub trigger: String,
    pub dry_run: bool,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub status: String,
    #[sqlx(json)]
    pub counts: CycleCounts,
    pub progress: Option<String>,
    #[sqlx(json(nullable))]
    pub report: Option<Value>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditEntry {
    pub seq: i64,
    pub time: Millis,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[sqlx(json)]
    pub detail: Value,
}

/// What becomes of a job in an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobChange {
    Done,
    Failed,
    Cancelled,
    /// Left to the app's next cycle.
    Deferred {
        until: Millis,
    },
    /// Sent again at `at` (an admitted push keeps its place: no new window slot).
    Retry {
        at: Millis,
    },
}

/// One principal of a cycle's chunk to add, as checked before it is sent
/// (`Store::add_chunk_checks`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChunkMember {
    pub principal_id: String,
    /// A source group assigned to the app entitles the principal to the target group now
    /// (`Store::entitled_via`).
    pub entitled: bool,
    /// The bridge has, or may have, put the member there (`Store::is_provisioned`).
    pub provisioned: bool,
    /// The target confirmed the member (`Store::is_confirmed`).
    pub confirmed: bool,
    /// The principal's user at the app (`Store::target_user`).
    pub target_user_id: Option<String>,
}

/// What a dispatcher's pass reads first (`Store::app_and_work`), in one read.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppWork {
    #[sqlx(flatten)]
    pub app: AppRecord,
    /// The jobs a pass takes now, in arrival order.
    #[sqlx(json)]
    pub jobs: Vec<Job>,
    /// A cycle was asked for (`request_cycle`) and not taken yet.
    pub cycle_asked: bool,
}

/// What a cycle's user step reads before it sends anything (`Store::user_steps`).
#[derive(Debug, Clone, Default)]
pub struct UserStep {
    /// Still to be added: entitled at the read, and not confirmed at the target.
    pub wanted: bool,
    /// When a membership of the principal ends next: from then on `wanted` may no longer hold.
    pub changes_at: Option<Millis>,
    /// The principal's user at the app, as last recorded (`Store::target_user`).
    pub user: Option<TargetUser>,
    pub user_principal_name: Option<String>,
    /// What an attribute mapping reads (`Store::principal_attributes`); `None`: nothing known.
    pub attributes: Option<serde_json::Map<String, Value>>,
}

/// What a claim answers (`Store::claim_job`), read in the claim's own statement: what a push
/// would otherwise read before it sends.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// The principal's user at the app, as last recorded (`Store::target_user`).
    pub user: Option<TargetUser>,
    /// The target's id of the target group named (`Store::target_group`).
    pub group_id: Option<String>,
}

/// What an add checks before it is sent (`Store::add_checks`), read in one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct AddChecks {
    /// The target group the source group's assignment names (`""` at an app without groups).
    pub target: String,
    /// The principal's membership of the source group is active now.
    pub active: bool,
    /// The bridge has, or may have, put the member in the target group (`is_provisioned`).
    pub provisioned: bool,
    /// The target confirmed the member (`is_confirmed`).
    pub confirmed: bool,
}

/// What the bridge now knows of one membership at a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// The target confirmed the member.
    Confirmed,
    /// An add was (or is about to be) sent and its outcome is not known yet: the member may be
    /// at the target, so it is read there before an add is sent again.
    InDoubt,
    /// The member is not at the target (removed, or never got there).
    Gone,
}

/// Everything one outcome changes, written in one commit: the job's state, what the bridge
/// knows of the target, the log entries, and for a cycle its record and schedule.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub app_id: String,
    /// When it was recorded.
    pub time: Millis,
    pub jobs: Vec<(String, JobChange)>,
    pub members: Vec<(TargetMember, MemberChange)>,
    /// The source group a member (confirmed or in doubt) was provisioned for: a removal finds
    /// the target group it is in after a rename of that group's assignment.
    pub sources: Vec<(TargetMember, String)>,
    pub logs: Vec<LogEntry>,
    pub cycle: Option<CycleRecord>,
    pub next_sync_at: Option<Millis>,
    /// Status, reason and quarantine level.
    pub status: Option<(String, Option<String>, i64)>,
    /// The target takes only the legacy removal form.
    pub legacy_remove: bool,
    /// Jobs this outcome starts: a removal a cycle step could not make goes on as a job of its
    /// own, retried on the clock until it succeeds (SPEC §8).
    pub new_jobs: Vec<Job>,
    /// What became of the app's open access ends (SPEC §8): settled in the outcome's commit.
    pub access_ends: Vec<AccessEndChange>,
    /// The action that ended access for the members gone (`disable_user`, `delete_user` at an app
    /// without groups); `None`: `remove_member`.
    pub end_action: Option<&'static str>,
    /// Removals the deletion guard holds, by the outcome's cycle (SPEC §8).
    pub hold: Vec<TargetMember>,
    /// Held removals whose member is entitled again: they leave the hold.
    pub release: Vec<TargetMember>,
    /// What the push learned of principals' users at the target (matched, created, brought up
    /// to date), by principal id: written in the outcome's commit, not one of their own. A user
    /// created at the target whose outcome was never recorded (a crash in between) is matched
    /// there again at the next attempt.
    pub users: Vec<(String, TargetUser)>,
    /// The target's ids of the target groups the push found or created, by display name.
    pub groups: Vec<(String, String)>,
}

/// What an outcome settles of the open access-end records of one principal's entitlement
/// through one group at the outcome's app.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessEndChange {
    pub principal_id: String,
    pub group_id: String,
    /// `failed` (still open), `kept` or `notProvisioned`: a confirmed removal is settled by the
    /// member it takes out of its target group (`Outcome::members`).
    pub status: &'static str,
}

/// The fields of an app that a change sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AppChanges {
    pub name: Option<String>,
    pub scim_base_url: Option<String>,
    /// Auth type and sealed credentials.
    pub auth: Option<(String, Vec<u8>)>,
    pub settings: Option<AppSettings>,
    pub owners: Option<Vec<String>>,
    /// Status and its reason.
    pub status: Option<(String, Option<String>)>,
    /// When a change to `deleting` was asked for: the access ends of the deprovisioned members.
    pub deprovision_at: Option<Millis>,
}

/// A lease granted by `acquire_lease`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub token: i64,
    /// Another holder whose lease expired without being released: its work may have been cut
    /// off mid-push, so the new holder waits one full window before its first push.
    pub taken_over_from: Option<String>,
    /// Another holder had released it (its work had stopped and recorded everything).
    pub handed_over_by: Option<String>,
}

/// Notifications of new work, from other replicas' transactions.
#[async_trait]
pub trait WorkListener: Send {
    /// The next notification's payload; `None` when the connection dropped and came back, so
    /// that notifications may have been lost meanwhile (the caller then looks at everything).
    async fn next(&mut self) -> Option<String>;
}

tokio::task_local! {
    static AUDIT: std::cell::RefCell<Option<AuditEntry>>;
}

/// Runs `write` with the audit entry that records it: the first write transaction it commits
/// writes the entry too, so the change and its record commit together. An entry no transaction
/// took (a write that changed nothing) is written alone afterwards.
pub use config::{ConfigDelete, ConfigUpdate, ConfigWrite};

pub async fn audited<F, T>(store: &Store, entry: AuditEntry, write: F) -> StoreResult<T>
where
    F: std::future::Future<Output = StoreResult<T>>,
{
    let pending = std::cell::RefCell::new(Some(entry));
    let (result, pending) = AUDIT
        .scope(pending, async move {
            let result = write.await;
            (result, AUDIT.with(|a| a.borrow_mut().take()))
        })
        .await;
    let answer = result?;
    if let Some(entry) = pending {
        store.insert_audit(&entry).await?;
    }
    Ok(answer)
}

/// A cycle request's audit entry names the cycle that does the work (a merged request names the
/// running one).
pub(crate) fn name_cycle_in_audit(cycle_id: &str) {
    let _ = AUDIT.try_with(|a| {
        if let Some(entry) = a.borrow_mut().as_mut() {
            entry.detail["cycleId"] = Value::String(cycle_id.to_string());
        }
    });
}

/// The audit entry waiting for the running write's commit (see `audited`).
pub(crate) fn take_audit() -> Option<AuditEntry> {
    AUDIT.try_with(|a| a.borrow_mut().take()).ok().flatten()
}

/// JSON as the text a query binds (`{jsonb $N}` makes it `jsonb` on PostgreSQL).
fn to_json(v: &(impl Serialize + ?Sized)) -> String {
    serde_json::to_string(v).expect("serializes")
}

/// Re-encrypts one sealed credential of the app named (`None`: the key check): `None` if no
/// accepted key opens it.
pub type Reseal = dyn Fn(Option<&str>, &[u8]) -> Option<Vec<u8>> + Send + Sync;

pub type SharedStore = Arc<Store>;

/// Opens the store named by the URL.
pub async fn open(url: &str) -> anyhow::Result<SharedStore> {
    if url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(Store::open(url).await?))
    } else {
        anyhow::bail!("SCIM_BRIDGE_DATABASE_URL must start with sqlite:// or postgres://")
    }
}
