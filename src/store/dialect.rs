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
//! | `{binary X}` | `X COLLATE "C"` | `X` | text ordered by its bytes (SQLite's BINARY collation) |
//! | `{pos}` | `pos` | `rowid` | insertion order |
//! | `{for_update}` | `FOR UPDATE` | nothing | a row lock (SQLite's writers take turns anyway) |
//! | `{skip_locked}` | `FOR UPDATE SKIP LOCKED` | nothing | a claim that skips rows another writer takes |
//! | `{seq}` | `COALESCE(seq, 0) AS seq` | `seq` | the paging cursor read, 0 until PostgreSQL numbers it |
//! | `{numbered}` | `seq IS NOT NULL` | `1 = 1` | an entry has its paging cursor (`order_commits`) |
//! | `{new_id}` | `gen_random_uuid()::text` | `lower(hex(randomblob(16)))` | a new random id per row written by an `INSERT ... SELECT` |
//!
//! The bodies that differ as a whole stay with their backend, each beside the SQL that differs:
//! - writes: `SqliteDb::begin` (the write turn, then `BEGIN IMMEDIATE`) and `PostgresDb::begin`
//!   (the lease fence, `FOR SHARE` on the lease row); both `commit`s write the pending audit entry
//!   (`store::audited`) in the same transaction, and PostgreSQL then numbers the committed log and
//!   audit entries (`PostgresDb::order_commits`, a no-op on SQLite, whose `seq` is the rowid);
//! - app ids: `PostgresDb::app_key` answers `None` for a string no `uuid` column can hold, so the
//!   query is not sent (SQLite's answers `Some` always: the query finds nothing);
//! - a directory listing's leftovers (`delete_unlisted`): `NOT (key = ANY($2))` in one statement on
//!   PostgreSQL, compared key by key on SQLite (a listing can hold more keys than it binds);
//! - a filter on a list of app ids (`push_app_ids`): `= ANY($N::uuid[])` on PostgreSQL, `IN
//!   (SELECT value FROM json_each($N))` on SQLite;
//! - advisory locks (`pg_advisory_xact_lock`), leases, `LISTEN/NOTIFY`: PostgreSQL only;
//! - the webhook intake's group commit: SQLite only (`SqliteDb::accept_events`);
//! - the cluster methods of `Store` (heartbeats, leases, notifications): PostgreSQL's in
//!   `postgres.rs`, SQLite's answers (one process, no leases) in `sql.rs`.
//!
//! The macros below run a body written once on the store's backend: `db_run!` as it is,
//! `db_tx!` in a write transaction, `db_statement!` as one fenced statement.

use super::postgres::PostgresDb;
use super::sqlite::SqliteDb;

/// The database a query text is written out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Itself, so that `sql!` takes a dialect where no backend is at hand (as `db.dialect()`).
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
            (Postgres, "new_id") => "gen_random_uuid()::text",
            _ => return None,
        };
        Some(fragment.to_string())
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

/// The database a `SqlStore` runs on.
pub(super) enum Backend {
    Sqlite(SqliteDb),
    Postgres(PostgresDb),
}

/// The query text for the backend `$db` (a `SqliteDb` or a `PostgresDb`), its fragments written
/// out once per call site and backend and kept: each expansion of the macro has its own cache,
/// and `db_run!` expands its body once per backend.
macro_rules! sql {
    ($db:expr, $text:expr) => {{
        static TEXT: ::std::sync::OnceLock<($crate::store::dialect::Dialect, String)> = ::std::sync::OnceLock::new();
        let dialect = $db.dialect();
        let (written_for, text) = TEXT.get_or_init(|| (dialect, dialect.expand($text)));
        debug_assert_eq!(*written_for, dialect, "one call site of sql! ran on both backends");
        text.as_str()
    }};
}

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
                $body
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

pub(super) use {db_run, db_statement, db_tx, sql};

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn fragments_are_written_out_for_each_database() {
        let text = "SELECT {ms created_at} AS created_at FROM t WHERE id = {uuid $1} AND at < {ts $2}
             ORDER BY {binary name}, {pos} {for_update}";
        assert_eq!(
            Dialect::Postgres.expand(text),
            "SELECT to_ms(created_at) AS created_at FROM t WHERE id = $1::uuid AND at < from_ms($2)
             ORDER BY name COLLATE \"C\", pos FOR UPDATE"
        );
        assert_eq!(
            Dialect::Sqlite.expand(text),
            "SELECT created_at AS created_at FROM t WHERE id = $1 AND at < $2
             ORDER BY name, rowid "
        );
    }

    #[test]
    #[should_panic(expected = "no SQL fragment `{time $1}`")]
    fn an_unknown_fragment_is_a_mistake() {
        Dialect::Sqlite.expand("SELECT {time $1}");
    }

    #[test]
    #[should_panic(expected = "no SQL fragment `{ts}`")]
    fn a_fragment_without_its_argument_is_a_mistake() {
        Dialect::Postgres.expand("SELECT {ts}");
    }
}
