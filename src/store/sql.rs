//! The store: one type for both databases. Each method's queries are written once, in the file
//! of its aggregate (`impl SqlStore` there), and run on the backend the URL chose through the
//! macros of `dialect`; the methods not moved there yet run each backend's own implementation
//! (`sqlite.rs`, `postgres.rs`).

use async_trait::async_trait;

use super::dialect::{Backend, db_run};
use super::postgres::PostgresDb;
use super::sqlite::SqliteDb;
use super::*;

pub struct SqlStore {
    pub(super) backend: Backend,
}

impl SqlStore {
    /// Opens the store named by the URL: SQLite for `sqlite:`, PostgreSQL otherwise.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite(SqliteDb::open(url).await?)
        } else {
            Backend::Postgres(PostgresDb::open(url).await?)
        };
        Ok(Self { backend })
    }

    /// The app id as the backend's queries take it; `None` for one no stored app can have (see
    /// `PostgresDb::app_key`).
    pub(super) fn app_key<'a>(&self, id: &'a str) -> Option<&'a str> {
        db_run!(self, db => db.app_key(id))
    }
}

/// The store's methods: each one runs the method of the same name that the file of its aggregate
/// gives `SqlStore` (`impl SqlStore` there), given here by its signature; then the methods written
/// here (`own`). The compiler holds each signature to the trait's.
macro_rules! store_impl {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* own: $($own:tt)*) => {
        #[async_trait]
        impl Store for SqlStore {
            $(async fn $name(&self, $($arg: $ty),*) -> StoreResult<$ret> {
                SqlStore::$name(self, $($arg),*).await
            })*
            $($own)*
        }
    };
}

store_impl! {
    fn insert_token(token: &TokenRecord, hash: &str) -> ();
    fn token_by_hash(hash: &str) -> Option<TokenRecord>;
    fn list_tokens() -> Vec<TokenRecord>;
    fn revoke_token(id: &str, now: Millis) -> bool;
    fn insert_app(app: &AppRecord) -> ();
    fn change_app(id: &str, changes: &AppChanges) -> ();
    fn get_app(id: &str) -> Option<AppRecord>;
    fn list_apps() -> Vec<AppRecord>;
    fn app_named(name: &str) -> Vec<String>;
    fn apps_on_target(url: &str, acting_only: bool) -> Vec<AppTarget>;
    fn fill_target_keys() -> u64;
    fn set_app_status(id: &str, status: &str, reason: Option<&str>, level: i64) -> ();
    fn set_next_sync(id: &str, at: Millis) -> ();
    fn delete_app(id: &str, now: Millis) -> ();
    fn put_assignment(a: &Assignment) -> ();
    fn delete_assignment(app_id: &str, group_id: &str, now: Millis) -> bool;
    fn list_assignments(app_id: &str) -> Vec<Assignment>;
    fn config_fingerprint() -> String;
    fn apply_config(write: &ConfigWrite) -> bool;
    fn accept_events(items: &[(Event, Effect)], now: Millis) -> Vec<Acceptance>;
    fn get_event(id: &str) -> Vec<StoredEvent>;
    fn principal(principal_id: &str) -> Option<Principal>;
    fn principal_attributes(principal_id: &str) -> Option<serde_json::Map<String, Value>>;
    fn put_standing_member(group_id: &str, principal: &str, info: Option<&Principal>, now: Millis) -> ();
    fn delete_standing_member(group_id: &str, principal: &str, now: Millis) -> bool;
    fn retain_standing_members(group_id: &str, listed: &[String]) -> u64;
    fn put_principal_attributes(principal_id: &str, attributes: &Value, now: Millis) -> ();
    fn assigned_group_ids() -> Vec<String>;
    fn source_state(id: &str) -> Option<SourceState>;
    fn list_sources() -> Vec<SourceState>;
    fn put_source_state(state: &SourceState) -> ();
    fn seen_requests(group_id: &str) -> Vec<(String, String)>;
    fn mark_requests_seen(group_id: &str, pairs: &[(String, String)], now: Millis) -> ();
    fn forget_requests_except(group_id: &str, listed: &[String]) -> u64;
    fn runnable_jobs(app_id: &str, now: Millis, limit: i64) -> Vec<Job>;
    fn next_job_time(app_id: &str, now: Millis) -> Option<Millis>;
    fn deferred_jobs(app_id: &str) -> Vec<Job>;
    fn claim_job(job_id: &str, now: Millis, admitted: bool, target: &str) -> Option<Claim>;
    fn admissions_since(app_id: &str, since: Millis) -> Vec<Millis>;
    fn recover_in_flight(app_id: &str, now: Millis) -> Vec<String>;
    fn requeue_in_doubt(job_id: &str, now: Millis) -> ();
    fn retry_removals_now(app_id: &str, now: Millis) -> u64;
    fn open_adds_for(app_id: &str, principal_id: &str, group_id: &str, before_seq: i64) -> Vec<Job>;
    fn insert_job(job: &Job, now: Millis) -> ();
    fn add_checks(app_id: &str, member: &TargetMember, group_id: &str, now: Millis) -> AddChecks;
    fn entitled_via(app_id: &str, target_display_name: &str, principal_id: &str, now: Millis) -> Option<String>;
    fn add_chunk_checks(app_id: &str, target: &str, principals: &[String], now: Millis) -> Vec<ChunkMember>;
    fn expire_due(now: Millis) -> Vec<String>;
    fn next_expiry() -> Option<Millis>;
    fn record(outcome: &Outcome) -> ();
    fn held_removals(app_id: &str) -> Vec<HeldRemoval>;
    fn held_counts() -> Vec<(String, i64)>;
    fn approve_held(app_id: &str, now: Millis) -> u64;
    fn reject_held(app_id: &str, now: Millis) -> u64;
    fn list_links(app_id: &str, after: Option<&str>, limit: i64) -> Vec<LinkRecord>;
    fn get_link(app_id: &str, principal_id: &str) -> Option<LinkRecord>;
    fn forget_link(app_id: &str, principal_id: &str) -> bool;
    fn forget_target_user(app_id: &str, principal_id: &str) -> ();
    fn entitled_at_app(app_id: &str, principal_id: &str, now: Millis) -> bool;
    fn target_user(app_id: &str, principal_id: &str) -> Option<TargetUser>;
    fn put_target_user(app_id: &str, principal_id: &str, user: &TargetUser) -> ();
    fn target_users(app_id: &str) -> Vec<(String, TargetUser)>;
    fn target_group(app_id: &str, display_name: &str) -> Option<String>;
    fn put_target_group(app_id: &str, display_name: &str, id: &str) -> ();
    fn forget_target_group(app_id: &str, display_name: &str) -> ();
    fn provisioned_targets_of(app_id: &str, principal_id: &str, group_id: &str) -> Vec<String>;
    fn is_provisioned(app_id: &str, m: &TargetMember) -> bool;
    fn removal_open(app_id: &str, m: &TargetMember) -> bool;
    fn provisioned_for(app_id: &str, m: &TargetMember) -> Option<String>;
    fn is_confirmed(app_id: &str, m: &TargetMember) -> bool;
    fn in_doubt_members(app_id: &str) -> Vec<TargetMember>;
    fn provisioned_members(app_id: &str) -> Vec<TargetMember>;
    fn desired_members(app_id: &str, now: Millis) -> Vec<TargetMember>;
    fn standing_members(app_id: &str) -> Vec<TargetMember>;
    fn insert_log(entry: &LogEntry) -> ();
    fn query_access_ends(filter: &AccessEndFilter) -> Vec<AccessEnd>;
    fn open_access_ends() -> Vec<AccessEnd>;
    fn query_logs(filter: &LogFilter) -> Vec<LogEntry>;
    fn get_log(id: &str) -> Option<LogEntry>;
    fn purge_logs(older_than: Millis, batch: i64) -> u64;
    fn purge_records(now: Millis, older_than: Millis, batch: i64) -> u64;
    fn deferred_counts() -> Vec<(String, i64)>;
    fn purge_audit(older_than: Millis, batch: i64) -> u64;
    fn insert_cycle(c: &CycleRecord) -> ();
    fn list_cycles(app_id: &str, limit: i64) -> Vec<CycleRecord>;
    fn running_cycles(app_id: &str) -> Vec<CycleRecord>;
    fn request_cycle(app_id: &str, cycle_id: &str, dry_run: bool, now: Millis) -> String;
    fn take_replan(app_id: &str, cycle_id: &str) -> bool;
    fn take_cycle_request(app_id: &str) -> Option<(String, bool)>;
    fn insert_audit(e: &AuditEntry) -> ();
    fn list_audit(limit: i64, before_seq: Option<i64>) -> Vec<AuditEntry>;
    fn reseal_credentials(reseal: &Reseal) -> (usize, Vec<String>);
    fn key_check() -> Option<Vec<u8>>;
    fn init_key_check(sealed: &[u8], now: Millis) -> Vec<u8>;

    own:
    async fn migrate(&self) -> StoreResult<()> {
        db_run!(self, db => db.migrate().await)
    }

    async fn ping(&self) -> StoreResult<()> {
        db_run!(self, db => db.ping().await)
    }

    // The cluster: several replicas share a PostgreSQL store; a SQLite store is one process's,
    // which holds every lease and hears of its own work.
    fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    async fn heartbeat(&self, replica: &str, instance: &str, first: bool, ttl: Millis)
        -> StoreResult<Option<Vec<String>>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Some(vec![replica.to_string()])),
            Backend::Postgres(db) => db.heartbeat(replica, instance, first, ttl).await,
        }
    }

    async fn leave(&self, replica: &str) -> StoreResult<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => db.leave(replica).await,
        }
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Millis) -> StoreResult<Option<Grant>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(db) => db.acquire_lease(name, holder, ttl).await,
        }
    }

    async fn renew_leases(&self, holder: &str, ttl: Millis) -> StoreResult<Vec<(String, i64)>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(db) => db.renew_leases(holder, ttl).await,
        }
    }

    async fn release_leases(&self, holder: &str, names: &[String], forget: bool) -> StoreResult<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => db.release_leases(holder, names, forget).await,
        }
    }

    async fn notify_work(&self, what: &str) -> StoreResult<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => db.notify_work(what).await,
        }
    }

    async fn listen_work(&self) -> StoreResult<Option<Box<dyn WorkListener>>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(db) => db.listen_work().await,
        }
    }
}
