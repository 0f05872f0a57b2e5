//! The store: one type for both databases. Each method's queries are written once, in the file
//! of its aggregate (`impl Store` there), and run on the backend the URL chose through the
//! macros of `dialect`; here is what is not a query: opening, migrating, the backend's kind.

use super::dialect::{Backend, db_run};
use super::postgres::PostgresDb;
use super::sqlite::SqliteDb;
use super::*;

pub struct Store {
    pub(super) backend: Backend,
}

impl Store {
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

impl Store {
    pub async fn migrate(&self) -> StoreResult<()> {
        db_run!(self, db => db.migrate().await)
    }

    pub async fn ping(&self) -> StoreResult<()> {
        db_run!(self, db => db.ping().await)
    }

    /// Whether several processes may share this store, so that work goes by leases (see the
    /// cluster's methods in `postgres.rs`).
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }
}
