//! Persistence. One trait, one implementation (`SqlStore`) on either database (embedded SQLite,
//! shared PostgreSQL), chosen from the URL. A query is written once, in the file of its aggregate;
//! what differs between the databases is listed in `dialect`.

mod apps;
mod audit;
mod cycles;
mod dialect;
mod logs;
pub mod migrate;
mod postgres;
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

pub use sql::SqlStore;

/// The names `migrate` and the tests open one database by: the one `SqlStore`, its backend chosen
/// from the URL.
pub type SqliteStore = SqlStore;
pub type PostgresStore = SqlStore;

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
            Self::Migrate(_) | Self::Corrupt(_) => false,
        }
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
}

impl AppSettings {
    /// The app's mapping, compiled. A stored mapping was validated when it was saved.
    pub fn compiled_mapping(&self) -> Result<AppMapping, AppMappingError> {
        AppMapping::compile(self.attribute_mapping.as_deref(), self.matching.as_deref())
    }
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

#[derive(Debug, Clone, sqlx::FromRow)]
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
    Accepted { jobs: Vec<(String, String)> },
    Duplicate { jobs: Vec<(String, String)> },
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
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn migrate(&self) -> StoreResult<()>;
    async fn ping(&self) -> StoreResult<()>;

    // tokens
    async fn insert_token(&self, token: &TokenRecord, hash: &str) -> StoreResult<()>;
    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>>;
    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    async fn revoke_token(&self, id: &str, now: Millis) -> StoreResult<bool>;

    // apps and assignments
    async fn insert_app(&self, app: &AppRecord) -> StoreResult<()>;
    /// Writes only the fields the change sets, so it never undoes what another writer (a cycle
    /// quarantining the app, say) committed meanwhile.
    async fn change_app(&self, id: &str, changes: &AppChanges) -> StoreResult<()>;
    async fn get_app(&self, id: &str) -> StoreResult<Option<AppRecord>>;
    async fn list_apps(&self) -> StoreResult<Vec<AppRecord>>;
    async fn set_app_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
        quarantine_level: i64,
    ) -> StoreResult<()>;
    async fn set_next_sync(&self, id: &str, at: Millis) -> StoreResult<()>;
    async fn delete_app(&self, id: &str, now: Millis) -> StoreResult<()>;
    async fn put_assignment(&self, a: &Assignment) -> StoreResult<()>;
    async fn delete_assignment(&self, app_id: &str, group_id: &str) -> StoreResult<bool>;
    async fn list_assignments(&self, app_id: &str) -> StoreResult<Vec<Assignment>>;

    // webhook intake
    /// Records the events of one webhook in one transaction (events, principals, membership
    /// state, jobs, log entries, as `crate::rules` decides); answers each one's verdict.
    async fn accept_events(&self, items: &[(Event, Effect)], now: Millis) -> StoreResult<Vec<Acceptance>>;
    async fn get_event(&self, id: &str) -> StoreResult<Vec<StoredEvent>>;
    async fn principal(&self, principal_id: &str) -> StoreResult<Option<Principal>>;
    /// Every attribute a source sent for the principal (the newest value of each field), as a
    /// `principal` object: what an attribute mapping reads.
    async fn principal_attributes(&self, principal_id: &str) -> StoreResult<Option<serde_json::Map<String, Value>>>;
    async fn put_standing_member(
        &self,
        group_id: &str,
        principal: &str,
        info: Option<&Principal>,
        now: Millis,
    ) -> StoreResult<()>;
    async fn delete_standing_member(&self, group_id: &str, principal: &str) -> StoreResult<bool>;
    /// Removes the group's standing members that `listed` leaves out (a fresh directory listing
    /// lists every member); answers how many went.
    async fn retain_standing_members(&self, group_id: &str, listed: &[String]) -> StoreResult<u64>;

    /// Takes a `principal` object's fields (the directory feed's), field by field, unless a newer
    /// event already set that field.
    async fn put_principal_attributes(&self, principal_id: &str, attributes: &Value, now: Millis) -> StoreResult<()>;

    // sources besides the webhook (SPEC §7)
    /// Every source group assigned to an app that is not deleted.
    async fn assigned_group_ids(&self) -> StoreResult<Vec<String>>;
    async fn source_state(&self, id: &str) -> StoreResult<Option<SourceState>>;
    async fn list_sources(&self) -> StoreResult<Vec<SourceState>>;
    async fn put_source_state(&self, state: &SourceState) -> StoreResult<()>;
    /// The (request id, status) pairs already taken in for the group.
    async fn seen_requests(&self, group_id: &str) -> StoreResult<Vec<(String, String)>>;
    async fn mark_requests_seen(&self, group_id: &str, pairs: &[(String, String)], now: Millis) -> StoreResult<()>;
    /// Forgets the group's pairs whose request Graph no longer lists.
    async fn forget_requests_except(&self, group_id: &str, listed: &[String]) -> StoreResult<u64>;

    // the dispatcher's work
    /// Pending jobs due at `now`, in arrival order. A job waits behind an earlier job of the same
    /// (principal, group) that is still pending (a scheduled retry), so their order holds; a
    /// removal never waits behind an add (it cancels it), and nothing waits behind a removal a
    /// cycle handed on (it names its target group and is judged again when it is sent).
    async fn runnable_jobs(&self, app_id: &str, now: Millis, limit: i64) -> StoreResult<Vec<Job>>;
    async fn next_job_time(&self, app_id: &str, now: Millis) -> StoreResult<Option<Millis>>;
    async fn deferred_jobs(&self, app_id: &str) -> StoreResult<Vec<Job>>;
    /// Claims a job for sending: in flight, one more attempt, and (when the window admitted it)
    /// its admission time, in one commit before anything is sent. `false`: the job is no longer
    /// waiting (an app deletion cancelled it meanwhile): nothing is to be sent.
    async fn claim_job(&self, job_id: &str, now: Millis, admitted: bool) -> StoreResult<bool>;
    /// When the window admitted the app's pushes since `since`, sent or not: a restart rebuilds
    /// the window from them.
    async fn admissions_since(&self, app_id: &str, since: Millis) -> StoreResult<Vec<Millis>>;
    /// Jobs a stop left in flight go back in line, their outcome unknown.
    async fn recover_in_flight(&self, app_id: &str, now: Millis) -> StoreResult<Vec<String>>;
    /// A job whose push broke off after it went in flight: pending again, its outcome unknown.
    async fn requeue_in_doubt(&self, job_id: &str, now: Millis) -> StoreResult<()>;
    /// The app's removals waiting for a retry go now (its credentials changed, or its quarantine
    /// was cleared); answers how many.
    async fn retry_removals_now(&self, app_id: &str, now: Millis) -> StoreResult<u64>;
    /// Adds for the pair that are not pushed yet and were queued before job `before_seq`.
    async fn open_adds_for(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
        before_seq: i64,
    ) -> StoreResult<Vec<Job>>;
    async fn insert_job(&self, job: &Job, now: Millis) -> StoreResult<()>;
    async fn membership_active(&self, principal_id: &str, group_id: &str, now: Millis) -> StoreResult<bool>;
    /// A source group assigned to the app that still entitles the principal to the target group.
    async fn entitled_via(
        &self,
        app_id: &str,
        target_display_name: &str,
        principal_id: &str,
        now: Millis,
    ) -> StoreResult<Option<String>>;
    async fn expire_due(&self, now: Millis) -> StoreResult<Vec<String>>;
    async fn next_expiry(&self) -> StoreResult<Option<Millis>>;
    /// Records one outcome in one commit.
    async fn record(&self, outcome: &Outcome) -> StoreResult<()>;

    // what the bridge knows of targets
    async fn target_user(&self, app_id: &str, principal_id: &str) -> StoreResult<Option<TargetUser>>;
    async fn put_target_user(&self, app_id: &str, principal_id: &str, user: &TargetUser) -> StoreResult<()>;
    async fn target_users(&self, app_id: &str) -> StoreResult<Vec<(String, TargetUser)>>;
    async fn target_group(&self, app_id: &str, display_name: &str) -> StoreResult<Option<String>>;
    async fn put_target_group(&self, app_id: &str, display_name: &str, id: &str) -> StoreResult<()>;
    async fn forget_target_group(&self, app_id: &str, display_name: &str) -> StoreResult<()>;
    /// The target groups where the bridge provisioned the principal for the source group (one,
    /// or the old one too after a rename of the group's `targetDisplayName`).
    async fn provisioned_targets_of(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
    ) -> StoreResult<Vec<String>>;
    /// The bridge has, or may have, put the member there (confirmed or in doubt).
    async fn is_provisioned(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool>;
    /// A removal of the member from that target group waits to be sent or retried as a job (of
    /// an event, or handed on by a cycle): a cycle leaves the removal to it.
    async fn removal_open(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool>;
    /// The source group the member was provisioned there for (`None`: not provisioned, or
    /// provisioned before that was recorded).
    async fn provisioned_for(&self, app_id: &str, m: &TargetMember) -> StoreResult<Option<String>>;
    /// The target confirmed the member.
    async fn is_confirmed(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool>;
    async fn in_doubt_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>>;
    async fn provisioned_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>>;
    async fn desired_members(&self, app_id: &str, now: Millis) -> StoreResult<Vec<TargetMember>>;
    /// The members the directory feed (standing membership) entitles.
    async fn standing_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>>;

    // logs, cycles, audit
    async fn insert_log(&self, entry: &LogEntry) -> StoreResult<()>;
    async fn query_logs(&self, filter: &LogFilter) -> StoreResult<Vec<LogEntry>>;
    async fn get_log(&self, id: &str) -> StoreResult<Option<LogEntry>>;
    async fn purge_logs(&self, older_than: Millis, batch: i64) -> StoreResult<u64>;
    /// Purges up to `batch` rows of personal data older than `older_than` that nothing needs any
    /// more: events no live membership or open job points to, finished jobs, ended memberships,
    /// ended cycles, principals and what was last sent for them that nothing refers to, and
    /// revoked request ids whose scheduled end is before `now`. Answers how many rows went.
    async fn purge_records(&self, now: Millis, older_than: Millis, batch: i64) -> StoreResult<u64>;
    /// Deferred jobs per app, counted (for the metrics scrape).
    async fn deferred_counts(&self) -> StoreResult<Vec<(String, i64)>>;
    /// The audit trail is kept as long as the logs.
    async fn purge_audit(&self, older_than: Millis, batch: i64) -> StoreResult<u64>;
    async fn insert_cycle(&self, c: &CycleRecord) -> StoreResult<()>;
    async fn list_cycles(&self, app_id: &str, limit: i64) -> StoreResult<Vec<CycleRecord>>;
    /// Cycles of the app still marked running (a stop or crash interrupted them).
    async fn running_cycles(&self, app_id: &str) -> StoreResult<Vec<CycleRecord>>;
    /// Asks for a cycle. A writing cycle asked for while one runs (or one is already queued) is
    /// merged into it: answers the id of the cycle that will do the work.
    async fn request_cycle(&self, app_id: &str, cycle_id: &str, dry_run: bool, now: Millis) -> StoreResult<String>;
    /// Takes a request to plan the running cycle `cycle_id` again (a merged manual cycle).
    async fn take_replan(&self, app_id: &str, cycle_id: &str) -> StoreResult<bool>;
    /// The oldest cycle request of the app, taken off the queue.
    async fn take_cycle_request(&self, app_id: &str) -> StoreResult<Option<(String, bool)>>;
    async fn insert_audit(&self, e: &AuditEntry) -> StoreResult<()>;
    /// Newest first; `before_seq` continues a listing.
    async fn list_audit(&self, limit: i64, before_seq: Option<i64>) -> StoreResult<Vec<AuditEntry>>;

    // encryption-key rotation (`scim-bridge rekey`)
    /// Passes the stored credentials of every app, deleted ones included, through `reseal` in one
    /// transaction and stores what it answers. Answers how many were resealed, and the ids of the
    /// apps it answered `None` for (left as they were).
    async fn reseal_credentials(&self, reseal: &Reseal) -> StoreResult<(usize, Vec<String>)>;
    /// The known value sealed with the key the stored credentials are written with (see
    /// `crate::check_encryption_keys`); `None` until a first start stored it. `reseal_credentials`
    /// passes it through `reseal` too.
    async fn key_check(&self) -> StoreResult<Option<Vec<u8>>>;
    /// Stores the sealed known value unless one is stored already (another replica may have got
    /// there first); answers the one stored now.
    async fn init_key_check(&self, sealed: &[u8], now: Millis) -> StoreResult<Vec<u8>>;

    // the cluster (several replicas on one PostgreSQL; see `crate::provisioning::cluster`)
    /// Whether several processes may share this store, so that work goes by leases. The SQLite
    /// store is one process's: it answers `false` and none of the methods below is called.
    fn shared(&self) -> bool;
    /// Says `replica` (this process: `instance`) is alive for `ttl` more; answers the replicas
    /// alive now, this one included. `None`: another live process has written the same replica
    /// id since this one's last heartbeat (`first`: there was none, the row is this process's).
    async fn heartbeat(
        &self,
        replica: &str,
        instance: &str,
        first: bool,
        ttl: Millis,
    ) -> StoreResult<Option<Vec<String>>>;
    /// The replica stops: its row goes (its leases are released before).
    async fn leave(&self, replica: &str) -> StoreResult<()>;
    /// Grants the lease to `holder` for `ttl` if it is free, expired, released or its own
    /// (with a new token each time); `None` while another holder's lease runs.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Millis) -> StoreResult<Option<Grant>>;
    /// Extends every lease `holder` still holds (not expired, not released) by `ttl`; answers
    /// their names and tokens. A lease it held that is not in the answer is lost.
    async fn renew_leases(&self, holder: &str, ttl: Millis) -> StoreResult<Vec<(String, i64)>>;
    /// Gives leases up once the work under them has stopped; `forget` deletes the rows (the
    /// work no longer exists: a deleted app).
    async fn release_leases(&self, holder: &str, names: &[String], forget: bool) -> StoreResult<()>;
    /// Tells every replica listening that there is work (`app:<id>`, `expiry`, `leases`).
    async fn notify_work(&self, what: &str) -> StoreResult<()>;
    /// Listens for `notify_work` (and the notifications writes send in their transactions).
    async fn listen_work(&self) -> StoreResult<Option<Box<dyn WorkListener>>>;
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
pub async fn audited<F, T>(store: &dyn Store, entry: AuditEntry, write: F) -> StoreResult<T>
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

pub type SharedStore = Arc<dyn Store>;

/// Opens the store named by the URL.
pub async fn open(url: &str) -> anyhow::Result<SharedStore> {
    if url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(SqlStore::open(url).await?))
    } else {
        anyhow::bail!("SCIM_BRIDGE_DATABASE_URL must start with sqlite:// or postgres://")
    }
}
