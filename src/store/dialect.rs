//! What differs between the two databases, in one place.
//!
//! A query is written once, in the file of its aggregate (`tokens.rs`, `apps.rs`, ...), with `$N`
//! placeholders (sqlx's SQLite driver binds them by number too) and the conversions between the
//! two schemas as fragments that `Dialect::expand` writes out for each database:
//!
//! | fragment | PostgreSQL | SQLite | why |
//! |---|---|---|---|
//! | `{ts X}` | `from_ms(X)` | `X` | a time given in unix milliseconds: `timestamptz` / integer |
//! | `{ms X}` | `to_ms(X)` | `X` | a time read back as unix milliseconds |
//! | `{uuid X}` | `X::uuid` | `X` | an app id given as text: `uuid` / text |
//! | `{text X}` | `X::text` | `X` | a `uuid` or `jsonb` column read as text |
//! | `{jsonb X}` | `X::jsonb` | `X` | JSON given as text: `jsonb` / text |
//! | `{bigint X}` | `X::bigint` | `X` | a parameter PostgreSQL cannot type alone (`$1 IS NULL`) |
//! | `{members X}` | `(SELECT t, p, g FROM jsonb_to_recordset(X::jsonb) AS r(t text, p text, g text))` | `(SELECT json_extract(value, '$.t') AS t, ... FROM json_each(X))` | members as rows of `t` (target group), `p` (principal), `g` (source group), given as one JSON array of objects |
//! | `{each X}` | `(SELECT unnest(X::text[]) AS value)` | `(SELECT value FROM json_each(X))` | a list of strings as rows of `value`, bound with the backend's `text_list` (a `text[]` / a JSON array: a list can hold more values than SQLite binds parameters) |
//! | `{json_agg X}` | `COALESCE(jsonb_agg(X), '[]'::jsonb)` | `json_group_array(json(X))` | JSON values (`{object}(...)` of a subquery) as one JSON array, `[]` for none |
//! | `{object}` | `jsonb_build_object` | `json_object` | a JSON object of keys and values: `{object}('k', v, ...)` |
//! | `{fenced X}` | `AND (X::text IS NULL OR EXISTS (SELECT 1 FROM fence))` | nothing | the condition of a write fenced in its own statement (`fenced`, below); `X` the lease's name, `NULL` outside a lease |
//! | `{limit X}` | `LIMIT X` | `LIMIT (X + 0)` | a bound row limit: SQLite plans a bare `LIMIT ?` with the value bound, so each new binding makes it prepare the statement again (measured: a dispatcher's pass read cost a re-prepare per run) |
//! | `{binary X}` | `X COLLATE "C"` | `X` | text ordered by its bytes (SQLite's BINARY collation) |
//! | `{pos}` | `pos` | `rowid` | insertion order |
//! | `{for_update}` | `FOR UPDATE` | nothing | a row lock (SQLite's writers take turns anyway) |
//! | `{skip_locked}` | `FOR UPDATE SKIP LOCKED` | nothing | a claim that skips rows another writer takes |
//! | `{seq}` | `COALESCE(seq, 0) AS seq` | `seq` | the paging cursor read, 0 until PostgreSQL numbers it |
//! | `{numbered}` | `seq IS NOT NULL` | `1 = 1` | an entry has its paging cursor (`order_commits`) |
//! | `{new_id}` | `gen_random_uuid()::text` | `lower(hex(randomblob(16)))` | a new random id per row written by an `INSERT ... SELECT` |
//! | `{rows $N}` | `jsonb_array_elements($N::jsonb) WITH ORDINALITY AS r(value, key)` | `json_each($N) AS r` | a set of rows given as one JSON array of arrays (`json_rows`), `r.key` their order |
//! | `{field I T}` | `(r.value ->> I)` cast to `T` | `(r.value ->> I)` | field `I` of such a row as type `T`: `text`, `bigint`, `bool`, `uuid`, `jsonb`, or `ts` (`from_ms`) |
//!
//! A set-based write (the webhook intake's) binds its rows as one JSON parameter (`{rows $1}`), so
//! a statement's bound parameters stay one however many rows it carries (SQLite takes 32,766 at
//! most); `json_rows` cuts the rows into chunks of `ROWS_PER_STATEMENT`, which bounds only the size
//! of one statement's text. Such statements run on a `RowsConn` (either backend's connection), so
//! the code that issues them is written once, as a plain generic function.
//!
//! The bodies that differ as a whole stay with their backend, each beside the SQL that differs:
//! - writes: `SqliteDb::begin` (the write turn, then `BEGIN IMMEDIATE`) and `PostgresDb::begin`
//!   (the lease fence, `FOR SHARE` on the lease row); both `commit`s write the pending audit entry
//!   (`store::audited`) in the same transaction, and PostgreSQL then has the committed log and
//!   audit entries numbered by a task of its own (`PostgresDb::order_commits_later`; a reader
//!   numbers what is left first, `order_commits`); both no-ops on SQLite, whose `seq` is the rowid;
//! - a write of one statement under a lease (the job's claim, `claim_job`): on PostgreSQL the
//!   fence is part of the statement (`PostgresDb::fenced`: `WITH fence AS (SELECT 1 FROM leases
//!   ... FOR SHARE), written AS (<the write, with {fenced $N}>) SELECT <fence held> AS held, w.* FROM
//!   (SELECT 1) one LEFT JOIN written w ON TRUE`), one round trip instead of `BEGIN`, the fence,
//!   the write and `COMMIT`; SQLite's single writer needs none (`SqliteDb::fenced` answers
//!   `TRUE AS held` with the write's own row);
//! - app ids: `PostgresDb::app_key` answers `None` for a string no `uuid` column can hold, so the
//!   query is not sent (SQLite's answers `Some` always: the query finds nothing);
//! - a filter on a list of app ids (`push_app_ids`): `= ANY($N::uuid[])` on PostgreSQL, `IN
//!   (SELECT value FROM json_each($N))` on SQLite;
//! - a list of strings bound for `{each $N}` (`text_list`): a `Vec<String>` (`text[]`) on
//!   PostgreSQL, one JSON array on SQLite (a cycle chunk's principals, `add_chunk_checks`);
//! - claims that skip what another writer holds (`{skip_locked}`): the expiry's
//!   (`expire_due`: `... WHERE (principal_id, group_id, access_id) IN (SELECT ... FOR UPDATE SKIP
//!   LOCKED)`) and the cycle request's (`take_cycle_request`), PostgreSQL only; the job's claim
//!   (`claim_job`) is its `UPDATE`'s row lock on PostgreSQL, SQLite's single writer elsewhere;
//! - advisory locks (`pg_advisory_xact_lock`), leases, `LISTEN/NOTIFY`: PostgreSQL only;
//! - the webhook intake's group commit: SQLite queues the webhooks that arrive while a commit is
//!   being made and writes them together in one `BEGIN IMMEDIATE` transaction
//!   (`SqliteDb::accept_grouped`, `write_group`); PostgreSQL writes one `accept_events` call's batch
//!   in its own transaction, after taking the advisory locks of its events, memberships and
//!   principals in one statement (`SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT
//!   hashtextextended(key, 0) ...) ORDER BY k`, `PostgresDb::lock_intake`) and announcing the work
//!   with `pg_notify` before the commit (`PostgresDb::announce_intake`; not the work whose lease
//!   the replica holds, which it wakes itself); both write the batch with
//!   the one `events::write_batch`;
//! - a principal written outside the intake (`principals.rs`): PostgreSQL takes the principal's
//!   advisory lock first (`pg_advisory_xact_lock(hashtextextended('principal' || chr(10) || $1,
//!   0))`, `PostgresDb::lock_principal`), so that it waits for a webhook merging into the same
//!   principal even while no row exists; SQLite's writers take turns anyway (a no-op);
//! - the cluster methods of `Store` (heartbeats, leases, notifications): in `postgres.rs`, each
//!   opening with SQLite's answer (one process, which holds every lease);
//! - migrations (`migrations/sqlite`, `migrations/postgres`), and SQLite's moved-store mark
//!   (`migrate` and `ping` refuse a store `migrate-store` moved).
//!
//! The macros below run a body written once on the store's backend: `db_run!` as it is,
//! `db_tx!` in a write transaction, `db_statement!` as one fenced statement; `execute!` is a
//! write of one statement, `read!` a read of one, `app_read!` the read of one app's rows that most
//! reads are.
//!
//! The store counts what it sends (`store_counts`): every query written with `sql!` and the
//! fencing and numbering statements are statements; every durable commit is a commit (a
//! transaction's, or on SQLite a write sent alone). Two relaxed atomic increments per statement
//! cost nothing next to a round trip, so they are always compiled in: a test in `tests/` (which
//! sees the library built without `cfg(test)`) asserts what one push costs, with no feature to
//! enable. Not counted: the cluster's own statements (heartbeats, leases, a notification sent
//! alone), migrations, the moved-store check and the cycle request's lock, none of them on the
//! path of a push or an event.

use super::postgres::PostgresDb;
use super::sqlite::SqliteDb;

/// The database a query text is written out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Itself, so that `sql!` takes a dialect where no backend is at hand (`execute_chunked`).
    pub(super) fn dialect(self) -> Dialect {
        self
    }

    /// The query text with its fragments (`{name argument}`, see the table above) written out.
    /// A fragment it does not know is a mistake in the code: it panics, naming it.
    pub(super) fn expand(self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 32);
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .unwrap_or_else(|| panic!("an unclosed `{{` in the query: {text}"));
            let inner = &after[..close];
            let (name, argument) = inner.split_once(' ').unwrap_or((inner, ""));
            let fragment = self
                .fragment(name, argument.trim())
                .unwrap_or_else(|| panic!("no SQL fragment `{{{inner}}}` (see store::dialect): {text}"));
            out.push_str(&fragment);
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }

    fn fragment(self, name: &str, x: &str) -> Option<String> {
        use Dialect::{Postgres, Sqlite};
        match (self, name) {
            (Sqlite, "rows") if !x.is_empty() => return Some(format!("json_each({x}) AS r")),
            (Postgres, "rows") if !x.is_empty() => {
                return Some(format!(
                    "jsonb_array_elements({x}::jsonb) WITH ORDINALITY AS r(value, key)"
                ));
            }
            (_, "field") => return self.field(x),
            (Sqlite, "fenced") => return Some(String::new()),
            (Postgres, "fenced") if !x.is_empty() => {
                return Some(format!("AND ({x}::text IS NULL OR EXISTS (SELECT 1 FROM fence))"));
            }
            _ => {}
        }
        if let Some((before, after)) = self.wrapping(name) {
            return (!x.is_empty()).then(|| format!("{before}{x}{after}"));
        }
        if !x.is_empty() {
            return None;
        }
        let fragment = match (self, name) {
            (Sqlite, "pos") => "rowid",
            (Postgres, "pos") => "pos",
            (Sqlite, "for_update" | "skip_locked") => "",
            (Postgres, "for_update") => "FOR UPDATE",
            (Postgres, "skip_locked") => "FOR UPDATE SKIP LOCKED",
            (Sqlite, "numbered") => "1 = 1",
            (Sqlite, "seq") => "seq",
            (Postgres, "seq") => "COALESCE(seq, 0) AS seq",
            (Postgres, "numbered") => "seq IS NOT NULL",
            (Sqlite, "new_id") => "lower(hex(randomblob(16)))",
            (Sqlite, "object") => "json_object",
            (Postgres, "object") => "jsonb_build_object",
            (Postgres, "new_id") => "gen_random_uuid()::text",
            _ => return None,
        };
        Some(fragment.to_string())
    }

    /// `{field I T}`: field `I` of the row `{rows ...}` gives, as type `T`.
    fn field(self, x: &str) -> Option<String> {
        let (index, kind) = x.split_once(' ')?;
        index.parse::<usize>().ok()?;
        let value = format!("(r.value ->> {index})");
        if self == Dialect::Sqlite {
            // `->>` answers SQLite's own types: text, integer (also for true and false), NULL.
            return matches!(kind, "text" | "bigint" | "bool" | "uuid" | "jsonb" | "ts").then_some(value);
        }
        Some(match kind {
            "text" => value,
            "bigint" => format!("{value}::bigint"),
            "bool" => format!("{value}::boolean"),
            "uuid" => format!("{value}::uuid"),
            "jsonb" => format!("{value}::jsonb"),
            "ts" => format!("from_ms({value}::bigint)"),
            _ => return None,
        })
    }

    /// What the fragment `{name X}` writes before and after `X`; `None` for a fragment without
    /// an argument, or none at all.
    fn wrapping(self, name: &str) -> Option<(&'static str, &'static str)> {
        use Dialect::{Postgres, Sqlite};
        Some(match (self, name) {
            (Sqlite, "ts" | "ms" | "uuid" | "text" | "jsonb" | "bigint" | "binary") => ("", ""),
            (Postgres, "ts") => ("from_ms(", ")"),
            (Postgres, "ms") => ("to_ms(", ")"),
            (Postgres, "uuid") => ("", "::uuid"),
            (Postgres, "text") => ("", "::text"),
            (Postgres, "jsonb") => ("", "::jsonb"),
            (Postgres, "bigint") => ("", "::bigint"),
            (Postgres, "binary") => ("", " COLLATE \"C\""),
            // SQLite (3.4x) plans a bare bound LIMIT with its value, so binding one expires the
            // statement and every run prepares it again; an expression it does not read.
            (Sqlite, "limit") => ("LIMIT (", " + 0)"),
            (Postgres, "limit") => ("LIMIT ", ""),
            (Sqlite, "each") => ("(SELECT value FROM json_each(", "))"),
            (Sqlite, "members") => (
                "(SELECT json_extract(value, '$.t') AS t, json_extract(value, '$.p') AS p, \
                 json_extract(value, '$.g') AS g FROM json_each(",
                "))",
            ),
            (Postgres, "members") => (
                "(SELECT t, p, g FROM jsonb_to_recordset(",
                "::jsonb) AS r(t text, p text, g text))",
            ),
            (Postgres, "each") => ("(SELECT unnest(", "::text[]) AS value)"),
            (Sqlite, "json_agg") => ("json_group_array(json(", "))"),
            (Postgres, "json_agg") => ("COALESCE(jsonb_agg(", "), '[]'::jsonb)"),
            _ => return None,
        })
    }

    /// What the fragment `{name X}` writes before and after `X`, for a query built piece by piece
    /// (`sqlx::QueryBuilder`).
    pub(super) fn wrap(self, name: &str) -> (&'static str, &'static str) {
        self.wrapping(name)
            .unwrap_or_else(|| panic!("no SQL fragment `{{{name} X}}` (see store::dialect)"))
    }
}

/// The database a `Store` runs on.
pub(super) enum Backend {
    Sqlite(SqliteDb),
    Postgres(PostgresDb),
}

/// The query text for the backend `$db` (a `SqliteDb`, a `PostgresDb`, a `RowsConn` or a
/// `Dialect`), its fragments written out once per call site and backend and kept. Each use
/// counts as one statement sent (`store_counts`): a query text is taken to be run.
macro_rules! sql {
    ($db:expr, $text:expr) => {{
        static TEXT: [::std::sync::OnceLock<String>; 2] = [::std::sync::OnceLock::new(), ::std::sync::OnceLock::new()];
        let dialect: $crate::store::dialect::Dialect = $db.dialect();
        $crate::store::dialect::count_statement();
        TEXT[dialect as usize].get_or_init(|| dialect.expand($text)).as_str()
    }};
}

static STATEMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One statement sent (besides `BEGIN` and `COMMIT`): each `sql!` counts its own; a text written
/// for one backend only counts itself with this (the fence check, the intake's locks and
/// notifications, `order_commits`; what is not counted is listed in the header).
pub(super) fn count_statement() {
    STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// One write transaction committed.
pub(super) fn count_commit() {
    COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Statements sent and transactions committed by every store of this process so far: a test
/// takes the difference around one operation to hold its round trips to a number. (Always
/// counted: two relaxed atomic additions cost nothing beside a round trip to the database.)
#[doc(hidden)]
pub fn store_counts() -> StoreCounts {
    StoreCounts {
        statements: STATEMENTS.load(std::sync::atomic::Ordering::Relaxed),
        commits: COMMITS.load(std::sync::atomic::Ordering::Relaxed),
    }
}

#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreCounts {
    pub statements: u64,
    pub commits: u64,
}

impl std::ops::Sub for StoreCounts {
    type Output = StoreCounts;
    fn sub(self, earlier: StoreCounts) -> StoreCounts {
        StoreCounts {
            statements: self.statements - earlier.statements,
            commits: self.commits - earlier.commits,
        }
    }
}

/// Rows per statement of a set-based write: its rows are one bound parameter whatever their
/// number (see the header), so this bounds only the size of one statement's JSON.
pub(super) const ROWS_PER_STATEMENT: usize = 5_000;

/// The rows as the JSON arrays `{rows $N}` reads, in chunks of at most `ROWS_PER_STATEMENT`.
pub(super) fn json_rows<T: serde::Serialize>(rows: &[T]) -> impl Iterator<Item = String> + '_ {
    rows.chunks(ROWS_PER_STATEMENT)
        .map(|chunk| serde_json::to_string(chunk).expect("rows serialize"))
}

/// Runs the statement `sql` gives for the connection's dialect (a `sql!` text) over the rows, one
/// statement per chunk of them (`json_rows`); none for no rows.
pub(super) async fn execute_chunked<T: serde::Serialize + Sync>(
    conn: &mut impl RowsConn,
    sql: impl Fn(Dialect) -> &'static str + Send,
    rows: &[T],
) -> Result<(), sqlx::Error> {
    for chunk in json_rows(rows) {
        let text = sql(conn.dialect());
        conn.execute_rows(text, chunk).await?;
    }
    Ok(())
}

/// A connection (or transaction) of either backend that runs statements taking their rows as one
/// JSON parameter (`{rows $1}`): the code that issues them is written once, generic over it.
pub(super) trait RowsConn: Send {
    fn dialect(&self) -> Dialect;

    /// Runs `sql` with `rows` as `$1`; answers the rows it changed.
    fn execute_rows(
        &mut self,
        sql: &'static str,
        rows: String,
    ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Runs `sql` with `params` as `$1`, `$2`, ...; answers its one row.
    fn fetch_one_with<R>(
        &mut self,
        sql: &'static str,
        params: Vec<String>,
    ) -> impl std::future::Future<Output = Result<R, sqlx::Error>> + Send
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + Send
            + Unpin;

    /// Runs `sql` with `rows` as `$1`; answers what it reads.
    fn fetch_rows<R>(
        &mut self,
        sql: &'static str,
        rows: String,
    ) -> impl std::future::Future<Output = Result<Vec<R>, sqlx::Error>> + Send
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + Send
            + Unpin;
}

/// `RowsConn` for a backend's connection (its `dialect` the one given).
macro_rules! rows_conn {
    ($conn:ty, $dialect:expr) => {
        impl RowsConn for $conn {
            fn dialect(&self) -> Dialect {
                $dialect
            }

            async fn execute_rows(&mut self, sql: &'static str, rows: String) -> Result<u64, sqlx::Error> {
                Ok(sqlx::query(sql).bind(rows).execute(self).await?.rows_affected())
            }

            async fn fetch_one_with<R>(&mut self, sql: &'static str, params: Vec<String>) -> Result<R, sqlx::Error>
            where
                R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
                    + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
                    + Send
                    + Unpin,
            {
                let mut query = sqlx::query_as(sql);
                for p in params {
                    query = query.bind(p);
                }
                query.fetch_one(self).await
            }

            async fn fetch_rows<R>(&mut self, sql: &'static str, rows: String) -> Result<Vec<R>, sqlx::Error>
            where
                R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
                    + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
                    + Send
                    + Unpin,
            {
                sqlx::query_as(sql).bind(rows).fetch_all(self).await
            }
        }
    };
}

rows_conn!(sqlx::SqliteConnection, Dialect::Sqlite);
rows_conn!(sqlx::PgConnection, Dialect::Postgres);

/// Runs `$body` on the store's backend, `$db` naming it (`&SqliteDb` or `&PostgresDb`): the
/// body is written once and compiled once per backend, so that sqlx's types are inferred for
/// each (`$db.pool` is a `SqlitePool` in one and a `PgPool` in the other).
macro_rules! db_run {
    ($store:expr, $db:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::dialect::Backend::Sqlite($db) => $body,
            $crate::store::dialect::Backend::Postgres($db) => $body,
        }
    };
}

/// Runs `$body` in a write transaction `$tx` on the store's backend and commits it (with the
/// pending audit entry, see `store::audited`); answers what the body answers. SQLite takes the
/// write turn and `BEGIN IMMEDIATE`, PostgreSQL checks the lease fence (`dialect` above). A `?`
/// or `return` in the body leaves without committing: the transaction rolls back.
macro_rules! db_tx {
    ($store:expr, $db:ident, $tx:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::dialect::Backend::Sqlite($db) => {
                let (_turn, mut $tx) = $db.begin().await?;
                let answer = $body;
                $db.commit($tx).await?;
                answer
            }
            $crate::store::dialect::Backend::Postgres($db) => {
                let mut $tx = $db.begin().await?;
                let answer = $body;
                $db.commit($tx).await?;
                answer
            }
        }
    };
}

/// Runs `$body`, a write of one statement on the connection `$conn`: on SQLite straight on a
/// pooled connection (the statement is its own transaction, outside the write turn, and leaves
/// a pending audit entry to `store::audited`); on PostgreSQL in a fenced transaction that commits
/// it, as every write there.
macro_rules! db_statement {
    ($store:expr, $db:ident, $conn:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::dialect::Backend::Sqlite($db) => {
                let mut $conn = $db.pool.acquire().await?;
                let answer = $body;
                $crate::store::dialect::count_commit();
                answer
            }
            $crate::store::dialect::Backend::Postgres($db) => {
                let mut $conn = $db.begin().await?;
                let answer = $body;
                $db.commit($conn).await?;
                answer
            }
        }
    };
}

/// Runs the write `$text` as one statement (`db_statement!`), the `$bind`s bound as `$1`, `$2`,
/// ...; answers how many rows it changed.
macro_rules! execute {
    ($store:expr, $text:expr $(, $bind:expr)* $(,)?) => {
        $crate::store::dialect::db_statement!($store, db, conn => sqlx::query($crate::store::dialect::sql!(db, $text))
            $(.bind($bind))*
            .execute(&mut *conn)
            .await?
            .rows_affected())
    };
}

/// Reads what the query `$text` answers, the `$bind`s bound as `$1`, `$2`, ...: `sqlx::$query`
/// (`query_as`, `query_scalar`) fetched from the pool with `$fetch` (`fetch_all`,
/// `fetch_optional`, `fetch_one`).
macro_rules! read {
    ($store:expr, $query:ident $fetch:ident, $text:expr $(, $bind:expr)* $(,)?) => {
        $crate::store::dialect::db_run!($store, db => sqlx::$query($crate::store::dialect::sql!(db, $text))
            $(.bind($bind))*
            .$fetch(&db.pool)
            .await?)
    };
}

/// Reads what the query `$text` answers of one app: `sqlx::$query` (`query_as`, `query_scalar`)
/// fetched from the pool with `$fetch` (`fetch_all`, `fetch_optional`, `fetch_one`), the app's
/// id `$app_id` bound as `$1` and the `$bind`s after it. An app id no stored app can have
/// (`app_key`) answers `$none` without a query.
macro_rules! app_read {
    ($store:expr, $query:ident $fetch:ident, else $none:expr, $text:expr, $app_id:expr $(, $bind:expr)* $(,)?) => {
        $crate::store::dialect::db_run!($store, db => match db.app_key($app_id) {
            None => $none,
            Some(app_id) => sqlx::$query($crate::store::dialect::sql!(db, $text))
                .bind(app_id)
                $(.bind($bind))*
                .$fetch(&db.pool)
                .await?,
        })
    };
}

pub(super) use {app_read, db_run, db_statement, db_tx, execute, read, sql};

#[cfg(test)]
#[path = "tests/dialect.rs"]
mod tests;
