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

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> StoreResult<()> {
        db_run!(self, db => db.migrate().await)
    }

    async fn ping(&self) -> StoreResult<()> {
        db_run!(self, db => db.ping().await)
    }

    async fn insert_token(&self, token: &TokenRecord, hash: &str) -> StoreResult<()> {
        SqlStore::insert_token(self, token, hash).await
    }

    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        SqlStore::token_by_hash(self, hash).await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        SqlStore::list_tokens(self).await
    }

    async fn revoke_token(&self, id: &str, now: Millis) -> StoreResult<bool> {
        SqlStore::revoke_token(self, id, now).await
    }

    async fn config_fingerprint(&self) -> StoreResult<String> {
        SqlStore::config_fingerprint(self).await
    }

    async fn apply_config(&self, write: &ConfigWrite) -> StoreResult<bool> {
        SqlStore::apply_config(self, write).await
    }

    async fn insert_app(&self, app: &AppRecord) -> StoreResult<()> {
        SqlStore::insert_app(self, app).await
    }

    async fn change_app(&self, id: &str, changes: &AppChanges) -> StoreResult<()> {
        SqlStore::change_app(self, id, changes).await
    }

    async fn get_app(&self, id: &str) -> StoreResult<Option<AppRecord>> {
        SqlStore::get_app(self, id).await
    }

    async fn list_apps(&self) -> StoreResult<Vec<AppRecord>> {
        SqlStore::list_apps(self).await
    }

    async fn set_app_status(&self, id: &str, status: &str, reason: Option<&str>, level: i64) -> StoreResult<()> {
        SqlStore::set_app_status(self, id, status, reason, level).await
    }

    async fn set_next_sync(&self, id: &str, at: Millis) -> StoreResult<()> {
        SqlStore::set_next_sync(self, id, at).await
    }

    async fn delete_app(&self, id: &str, now: Millis) -> StoreResult<()> {
        SqlStore::delete_app(self, id, now).await
    }

    async fn put_assignment(&self, a: &Assignment) -> StoreResult<()> {
        SqlStore::put_assignment(self, a).await
    }

    async fn delete_assignment(&self, app_id: &str, group_id: &str, now: Millis) -> StoreResult<bool> {
        SqlStore::delete_assignment(self, app_id, group_id, now).await
    }

    async fn list_assignments(&self, app_id: &str) -> StoreResult<Vec<Assignment>> {
        SqlStore::list_assignments(self, app_id).await
    }

    async fn accept_events(&self, items: &[(Event, Effect)], now: Millis) -> StoreResult<Vec<Acceptance>> {
        SqlStore::accept_events(self, items, now).await
    }

    async fn get_event(&self, id: &str) -> StoreResult<Vec<StoredEvent>> {
        SqlStore::get_event(self, id).await
    }

    async fn principal(&self, principal_id: &str) -> StoreResult<Option<Principal>> {
        SqlStore::principal(self, principal_id).await
    }

    async fn principal_attributes(&self, principal_id: &str) -> StoreResult<Option<serde_json::Map<String, Value>>> {
        SqlStore::principal_attributes(self, principal_id).await
    }

    async fn put_standing_member(
        &self,
        group_id: &str,
        principal: &str,
        info: Option<&Principal>,
        now: Millis,
    ) -> StoreResult<()> {
        SqlStore::put_standing_member(self, group_id, principal, info, now).await
    }

    async fn delete_standing_member(&self, group_id: &str, principal: &str, now: Millis) -> StoreResult<bool> {
        SqlStore::delete_standing_member(self, group_id, principal, now).await
    }

    async fn retain_standing_members(&self, group_id: &str, listed: &[String]) -> StoreResult<u64> {
        SqlStore::retain_standing_members(self, group_id, listed).await
    }

    async fn put_principal_attributes(&self, principal_id: &str, attributes: &Value, now: Millis) -> StoreResult<()> {
        SqlStore::put_principal_attributes(self, principal_id, attributes, now).await
    }

    async fn assigned_group_ids(&self) -> StoreResult<Vec<String>> {
        SqlStore::assigned_group_ids(self).await
    }

    async fn source_state(&self, id: &str) -> StoreResult<Option<SourceState>> {
        SqlStore::source_state(self, id).await
    }

    async fn list_sources(&self) -> StoreResult<Vec<SourceState>> {
        SqlStore::list_sources(self).await
    }

    async fn put_source_state(&self, state: &SourceState) -> StoreResult<()> {
        SqlStore::put_source_state(self, state).await
    }

    async fn seen_requests(&self, group_id: &str) -> StoreResult<Vec<(String, String)>> {
        SqlStore::seen_requests(self, group_id).await
    }

    async fn mark_requests_seen(&self, group_id: &str, pairs: &[(String, String)], now: Millis) -> StoreResult<()> {
        SqlStore::mark_requests_seen(self, group_id, pairs, now).await
    }

    async fn forget_requests_except(&self, group_id: &str, listed: &[String]) -> StoreResult<u64> {
        SqlStore::forget_requests_except(self, group_id, listed).await
    }

    async fn runnable_jobs(&self, app_id: &str, now: Millis, limit: i64) -> StoreResult<Vec<Job>> {
        SqlStore::runnable_jobs(self, app_id, now, limit).await
    }

    async fn next_job_time(&self, app_id: &str, now: Millis) -> StoreResult<Option<Millis>> {
        SqlStore::next_job_time(self, app_id, now).await
    }

    async fn deferred_jobs(&self, app_id: &str) -> StoreResult<Vec<Job>> {
        SqlStore::deferred_jobs(self, app_id).await
    }

    async fn claim_job(&self, job_id: &str, now: Millis, admitted: bool, target: &str) -> StoreResult<Option<Claim>> {
        SqlStore::claim_job(self, job_id, now, admitted, target).await
    }

    async fn admissions_since(&self, app_id: &str, since: Millis) -> StoreResult<Vec<Millis>> {
        SqlStore::admissions_since(self, app_id, since).await
    }

    async fn recover_in_flight(&self, app_id: &str, now: Millis) -> StoreResult<Vec<String>> {
        SqlStore::recover_in_flight(self, app_id, now).await
    }

    async fn requeue_in_doubt(&self, job_id: &str, now: Millis) -> StoreResult<()> {
        SqlStore::requeue_in_doubt(self, job_id, now).await
    }

    async fn retry_removals_now(&self, app_id: &str, now: Millis) -> StoreResult<u64> {
        SqlStore::retry_removals_now(self, app_id, now).await
    }

    async fn open_adds_for(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
        before_seq: i64,
    ) -> StoreResult<Vec<Job>> {
        SqlStore::open_adds_for(self, app_id, principal_id, group_id, before_seq).await
    }

    async fn insert_job(&self, job: &Job, now: Millis) -> StoreResult<()> {
        SqlStore::insert_job(self, job, now).await
    }

    async fn add_checks(
        &self,
        app_id: &str,
        member: &TargetMember,
        group_id: &str,
        now: Millis,
    ) -> StoreResult<AddChecks> {
        SqlStore::add_checks(self, app_id, member, group_id, now).await
    }

    async fn entitled_via(
        &self,
        app_id: &str,
        target_display_name: &str,
        principal_id: &str,
        now: Millis,
    ) -> StoreResult<Option<String>> {
        SqlStore::entitled_via(self, app_id, target_display_name, principal_id, now).await
    }

    async fn add_chunk_checks(
        &self,
        app_id: &str,
        target: &str,
        principals: &[String],
        now: Millis,
    ) -> StoreResult<Vec<ChunkMember>> {
        SqlStore::add_chunk_checks(self, app_id, target, principals, now).await
    }

    async fn expire_due(&self, now: Millis) -> StoreResult<Vec<String>> {
        SqlStore::expire_due(self, now).await
    }

    async fn next_expiry(&self) -> StoreResult<Option<Millis>> {
        SqlStore::next_expiry(self).await
    }

    async fn record(&self, outcome: &Outcome) -> StoreResult<()> {
        SqlStore::record(self, outcome).await
    }

    async fn held_removals(&self, app_id: &str) -> StoreResult<Vec<HeldRemoval>> {
        SqlStore::held_removals(self, app_id).await
    }

    async fn held_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        SqlStore::held_counts(self).await
    }

    async fn approve_held(&self, app_id: &str, now: Millis) -> StoreResult<u64> {
        SqlStore::approve_held(self, app_id, now).await
    }

    async fn reject_held(&self, app_id: &str, now: Millis) -> StoreResult<u64> {
        SqlStore::reject_held(self, app_id, now).await
    }

    async fn list_links(&self, app_id: &str, after: Option<&str>, limit: i64) -> StoreResult<Vec<LinkRecord>> {
        SqlStore::list_links(self, app_id, after, limit).await
    }

    async fn get_link(&self, app_id: &str, principal_id: &str) -> StoreResult<Option<LinkRecord>> {
        SqlStore::get_link(self, app_id, principal_id).await
    }

    async fn forget_link(&self, app_id: &str, principal_id: &str) -> StoreResult<bool> {
        SqlStore::forget_link(self, app_id, principal_id).await
    }

    async fn forget_target_user(&self, app_id: &str, principal_id: &str) -> StoreResult<()> {
        SqlStore::forget_target_user(self, app_id, principal_id).await
    }

    async fn entitled_at_app(&self, app_id: &str, principal_id: &str, now: Millis) -> StoreResult<bool> {
        SqlStore::entitled_at_app(self, app_id, principal_id, now).await
    }

    async fn target_user(&self, app_id: &str, principal_id: &str) -> StoreResult<Option<TargetUser>> {
        SqlStore::target_user(self, app_id, principal_id).await
    }

    async fn put_target_user(&self, app_id: &str, principal_id: &str, user: &TargetUser) -> StoreResult<()> {
        SqlStore::put_target_user(self, app_id, principal_id, user).await
    }

    async fn target_users(&self, app_id: &str) -> StoreResult<Vec<(String, TargetUser)>> {
        SqlStore::target_users(self, app_id).await
    }

    async fn target_group(&self, app_id: &str, display_name: &str) -> StoreResult<Option<String>> {
        SqlStore::target_group(self, app_id, display_name).await
    }

    async fn put_target_group(&self, app_id: &str, display_name: &str, id: &str) -> StoreResult<()> {
        SqlStore::put_target_group(self, app_id, display_name, id).await
    }

    async fn forget_target_group(&self, app_id: &str, display_name: &str) -> StoreResult<()> {
        SqlStore::forget_target_group(self, app_id, display_name).await
    }

    async fn provisioned_targets_of(
        &self,
        app_id: &str,
        principal_id: &str,
        group_id: &str,
    ) -> StoreResult<Vec<String>> {
        SqlStore::provisioned_targets_of(self, app_id, principal_id, group_id).await
    }

    async fn is_provisioned(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool> {
        SqlStore::is_provisioned(self, app_id, m).await
    }

    async fn removal_open(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool> {
        SqlStore::removal_open(self, app_id, m).await
    }

    async fn provisioned_for(&self, app_id: &str, m: &TargetMember) -> StoreResult<Option<String>> {
        SqlStore::provisioned_for(self, app_id, m).await
    }

    async fn is_confirmed(&self, app_id: &str, m: &TargetMember) -> StoreResult<bool> {
        SqlStore::is_confirmed(self, app_id, m).await
    }

    async fn in_doubt_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>> {
        SqlStore::in_doubt_members(self, app_id).await
    }

    async fn provisioned_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>> {
        SqlStore::provisioned_members(self, app_id).await
    }

    async fn desired_members(&self, app_id: &str, now: Millis) -> StoreResult<Vec<TargetMember>> {
        SqlStore::desired_members(self, app_id, now).await
    }

    async fn standing_members(&self, app_id: &str) -> StoreResult<Vec<TargetMember>> {
        SqlStore::standing_members(self, app_id).await
    }

    async fn insert_log(&self, entry: &LogEntry) -> StoreResult<()> {
        SqlStore::insert_log(self, entry).await
    }

    async fn query_access_ends(&self, filter: &AccessEndFilter) -> StoreResult<Vec<AccessEnd>> {
        SqlStore::query_access_ends(self, filter).await
    }

    async fn open_access_ends(&self) -> StoreResult<Vec<AccessEnd>> {
        SqlStore::open_access_ends(self).await
    }

    async fn query_logs(&self, filter: &LogFilter) -> StoreResult<Vec<LogEntry>> {
        SqlStore::query_logs(self, filter).await
    }

    async fn get_log(&self, id: &str) -> StoreResult<Option<LogEntry>> {
        SqlStore::get_log(self, id).await
    }

    async fn purge_logs(&self, older_than: Millis, batch: i64) -> StoreResult<u64> {
        SqlStore::purge_logs(self, older_than, batch).await
    }

    async fn purge_records(&self, now: Millis, older_than: Millis, batch: i64) -> StoreResult<u64> {
        SqlStore::purge_records(self, now, older_than, batch).await
    }

    async fn deferred_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        SqlStore::deferred_counts(self).await
    }

    async fn purge_audit(&self, older_than: Millis, batch: i64) -> StoreResult<u64> {
        SqlStore::purge_audit(self, older_than, batch).await
    }

    async fn insert_cycle(&self, c: &CycleRecord) -> StoreResult<()> {
        SqlStore::insert_cycle(self, c).await
    }

    async fn list_cycles(&self, app_id: &str, limit: i64) -> StoreResult<Vec<CycleRecord>> {
        SqlStore::list_cycles(self, app_id, limit).await
    }

    async fn running_cycles(&self, app_id: &str) -> StoreResult<Vec<CycleRecord>> {
        SqlStore::running_cycles(self, app_id).await
    }

    async fn request_cycle(&self, app_id: &str, cycle_id: &str, dry_run: bool, now: Millis) -> StoreResult<String> {
        SqlStore::request_cycle(self, app_id, cycle_id, dry_run, now).await
    }

    async fn take_replan(&self, app_id: &str, cycle_id: &str) -> StoreResult<bool> {
        SqlStore::take_replan(self, app_id, cycle_id).await
    }

    async fn take_cycle_request(&self, app_id: &str) -> StoreResult<Option<(String, bool)>> {
        SqlStore::take_cycle_request(self, app_id).await
    }

    async fn insert_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        SqlStore::insert_audit(self, e).await
    }

    async fn list_audit(&self, limit: i64, before_seq: Option<i64>) -> StoreResult<Vec<AuditEntry>> {
        SqlStore::list_audit(self, limit, before_seq).await
    }

    async fn reseal_credentials(&self, reseal: &Reseal) -> StoreResult<(usize, Vec<String>)> {
        SqlStore::reseal_credentials(self, reseal).await
    }

    async fn key_check(&self) -> StoreResult<Option<Vec<u8>>> {
        SqlStore::key_check(self).await
    }

    async fn init_key_check(&self, sealed: &[u8], now: Millis) -> StoreResult<Vec<u8>> {
        SqlStore::init_key_check(self, sealed, now).await
    }

    // The cluster: several replicas share a PostgreSQL store; a SQLite store is one process's,
    // which holds every lease and hears of its own work.
    fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    async fn heartbeat(
        &self,
        replica: &str,
        instance: &str,
        first: bool,
        ttl: Millis,
    ) -> StoreResult<Option<Vec<String>>> {
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
