//! `scim-bridge migrate-store`: copies the embedded SQLite store into an empty PostgreSQL
//! database, so that a bridge started on that database carries on where the SQLite one stopped.
//!
//! The copy is table-driven: `TABLES` names every SQLite table and how each of its columns
//! becomes the PostgreSQL one (both schemas use the same table and column names; see
//! `migrations/sqlite` and `migrations/postgres`). A SQLite table or column missing from that list
//! refuses the copy instead of being left behind, so a new SQLite migration cannot be forgotten
//! here. PostgreSQL tables without a SQLite counterpart (none of them hold anything a SQLite
//! bridge had) stay empty.
//!
//! The source is read inside one write transaction (`BEGIN IMMEDIATE`): a bridge still running on
//! it cannot commit anything while the copy is made. Once the destination has committed, the same
//! transaction marks the source moved (`store_moved`, and a trigger on every table that refuses
//! every write), so nothing that bridge accepts later can be lost: its writes fail, it answers
//! 503, and no bridge starts on the file again. The destination is checked empty before its
//! migrations are applied (a database that holds anything is left as it was), and written in one
//! transaction, which holds a lock on every table from a second emptiness check to the commit: on
//! any error nothing is left in the destination and the source is not marked.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Postgres, QueryBuilder, Row, SqliteConnection};

use super::{PostgresStore, SqliteStore};
use crate::config::is_shared_database;

/// How a SQLite column's values become the PostgreSQL column's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conv {
    /// text as is
    Text,
    /// integer as is (`bigint`, or `integer`)
    Int,
    /// blob as `bytea` (sealed credentials: the ciphertext as is)
    Bytes,
    /// 0/1 as `boolean`
    Bool,
    /// unix milliseconds as `timestamptz` (`from_ms`, as the PostgreSQL store writes them)
    Millis,
    /// JSON text as `jsonb`
    Json,
    /// an app id as `uuid`
    Uuid,
    /// A `GENERATED ALWAYS AS IDENTITY` column whose values other rows point to (`events.seq`,
    /// `jobs.seq`): kept as they are, and the column's sequence moves past the largest.
    Identity,
    /// The paging cursor of the log and the audit trail (`seq`): kept as it is, so entries keep
    /// their order and a cursor handed out before the move still pages from the same place; the
    /// `commit_order` sequence moves past the largest, so new entries come above every moved one.
    CommitOrder,
}

use Conv::*;

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Conv)],
}

/// Every SQLite table and column (migrations 0001-0008), in an order that inserts a row after
/// the rows it refers to (`group_assignments` refers to `apps`). Rows are copied in SQLite's
/// insertion order (`rowid`), which is also the order PostgreSQL's own identity columns (`pos`
/// of the log, the audit trail and the cycles: insertion order, tie breakers) are given in.
const TABLES: &[Table] = &[
    Table {
        name: "apps",
        columns: &[
            ("id", Uuid),
            ("name", Text),
            ("scim_base_url", Text),
            ("auth_type", Text),
            ("auth_sealed", Bytes),
            ("settings", Json),
            ("owners", Json),
            ("status", Text),
            ("status_reason", Text),
            ("legacy_remove", Bool),
            ("next_sync_at", Millis),
            ("quarantine_level", Int),
            ("created_at", Millis),
            ("deleted_at", Millis),
            ("managed", Bool),
            ("name_key", Text),
            ("target_key", Text),
        ],
    },
    Table {
        name: "group_assignments",
        columns: &[
            ("app_id", Uuid),
            ("group_id", Text),
            ("target_display_name", Text),
            ("created_at", Millis),
        ],
    },
    Table {
        name: "tokens",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("role", Text),
            ("hash", Text),
            ("created_at", Millis),
            ("revoked_at", Millis),
        ],
    },
    Table {
        name: "principals",
        columns: &[
            ("principal_id", Text),
            ("user_principal_name", Text),
            ("display_name", Text),
            ("given_name", Text),
            ("surname", Text),
            ("mail", Text),
            ("updated_at", Millis),
            ("attributes", Json),
        ],
    },
    Table {
        name: "events",
        columns: &[
            ("seq", Identity),
            ("id", Text),
            ("status", Text),
            ("body", Json),
            ("action", Text),
            ("access_id", Text),
            ("principal_id", Text),
            ("group_id", Text),
            ("created_at", Millis),
            ("received_at", Millis),
            ("start_at", Millis),
            ("end_at", Millis),
            ("outcome", Text),
            ("reason", Text),
        ],
    },
    Table {
        name: "memberships",
        columns: &[
            ("principal_id", Text),
            ("group_id", Text),
            ("access_id", Text),
            ("active", Bool),
            ("source", Text),
            ("start_at", Millis),
            ("end_at", Millis),
            ("event_seq", Int),
            ("event_created", Millis),
            ("expired_at", Millis),
            ("grant_request_id", Text),
        ],
    },
    Table {
        name: "standing_members",
        columns: &[("group_id", Text), ("principal_id", Text), ("created_at", Millis)],
    },
    Table {
        name: "jobs",
        columns: &[
            ("seq", Identity),
            ("id", Text),
            ("app_id", Uuid),
            ("event_seq", Int),
            ("event_id", Text),
            ("principal_id", Text),
            ("group_id", Text),
            ("kind", Text),
            ("trigger", Text),
            ("state", Text),
            ("not_before", Millis),
            ("received_at", Millis),
            ("deferred_until", Millis),
            ("attempt", Int),
            ("flag", Text),
            ("updated_at", Millis),
            ("admitted_at", Millis),
            ("target_display_name", Text),
            ("trace_context", Text),
        ],
    },
    Table {
        name: "target_users",
        columns: &[
            ("app_id", Uuid),
            ("principal_id", Text),
            ("target_user_id", Text),
            ("fingerprint", Text),
            ("created_by_us", Bool),
            ("disabled", Bool),
            ("enabled_by_us", Bool),
        ],
    },
    Table {
        name: "target_groups",
        columns: &[("app_id", Uuid), ("display_name", Text), ("target_group_id", Text)],
    },
    Table {
        name: "provisioned",
        columns: &[
            ("app_id", Uuid),
            ("target_display_name", Text),
            ("principal_id", Text),
            ("added_at", Millis),
            ("confirmed", Bool),
            ("group_id", Text),
        ],
    },
    Table {
        name: "provisioning_logs",
        columns: &[
            ("seq", CommitOrder),
            ("id", Text),
            ("time", Millis),
            ("app_id", Uuid),
            ("app_name", Text),
            ("trigger", Text),
            ("cycle_id", Text),
            ("event_id", Text),
            ("job_id", Text),
            ("principal_id", Text),
            ("user_principal_name", Text),
            ("group_id", Text),
            ("action", Text),
            ("status", Text),
            ("reason", Text),
            ("deferred_until", Millis),
            ("target_user_id", Text),
            ("target_group_id", Text),
            ("attempt", Int),
            ("duration_ms", Int),
            ("latency_ms", Int),
            ("steps", Json),
            ("trace_id", Text),
        ],
    },
    Table {
        name: "sync_cycles",
        columns: &[
            ("id", Text),
            ("app_id", Uuid),
            ("trigger", Text),
            ("dry_run", Bool),
            ("started_at", Millis),
            ("ended_at", Millis),
            ("status", Text),
            ("counts", Json),
            ("progress", Text),
            ("report", Json),
        ],
    },
    Table {
        name: "cycle_requests",
        columns: &[
            ("cycle_id", Text),
            ("app_id", Uuid),
            ("dry_run", Bool),
            ("created_at", Millis),
        ],
    },
    Table {
        name: "audit",
        columns: &[
            ("seq", CommitOrder),
            ("time", Millis),
            ("actor", Text),
            ("action", Text),
            ("target", Text),
            ("detail", Json),
        ],
    },
    Table {
        name: "key_check",
        columns: &[("id", Int), ("sealed", Bytes), ("created_at", Millis)],
    },
    Table {
        name: "sources",
        columns: &[
            ("id", Text),
            ("kind", Text),
            ("group_id", Text),
            ("delta_link", Text),
            ("group_info", Json),
            ("group_info_at", Millis),
            ("last_attempt_at", Millis),
            ("last_success_at", Millis),
            ("last_error", Text),
            ("next_poll_at", Millis),
        ],
    },
    Table {
        name: "source_seen_requests",
        columns: &[
            ("group_id", Text),
            ("request_id", Text),
            ("status", Text),
            ("seen_at", Millis),
        ],
    },
    Table {
        name: "revoked_requests",
        columns: &[
            ("request_id", Text),
            ("principal_id", Text),
            ("group_id", Text),
            ("end_at", Millis),
            ("revoked_at", Millis),
        ],
    },
    Table {
        name: "access_ends",
        columns: &[
            ("id", Text),
            ("app_id", Uuid),
            ("principal_id", Text),
            ("user_principal_name", Text),
            ("group_id", Text),
            ("target_display_name", Text),
            ("event_id", Text),
            ("reason", Text),
            ("ended_at", Millis),
            ("learned_at", Millis),
            ("removed_at", Millis),
            ("action", Text),
            ("status", Text),
            ("waiting_on", Text),
            ("updated_at", Millis),
        ],
    },
    Table {
        name: "held_removals",
        columns: &[
            ("app_id", Uuid),
            ("target_display_name", Text),
            ("principal_id", Text),
            ("cycle_id", Text),
            ("held_at", Millis),
        ],
    },
];

/// sqlx's record of applied migrations: each database keeps its own, written by its migrations.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// The SQLite store's moved mark: the source's own, never copied.
const MOVED_TABLE: &str = "store_moved";

/// Rows per INSERT: 500 rows of at most 22 columns stay well under PostgreSQL's 65535 parameters.
const BATCH_ROWS: usize = 500;

/// What was copied: rows per table, in copy order.
#[derive(Debug, Clone)]
pub struct Copied {
    pub from: String,
    /// The destination, its password redacted.
    pub to: String,
    pub tables: Vec<(&'static str, u64)>,
}

impl Copied {
    pub fn total(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for Copied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "copied {} into {}, in one transaction:", self.from, self.to)?;
        for (table, rows) in &self.tables {
            writeln!(f, "  {table:<22} {rows:>9}")?;
        }
        write!(f, "  {:<22} {:>9} rows", "total", self.total())
    }
}

/// Refuses a source that is PostgreSQL already: there is nothing to move.
pub fn refuse_postgres_source(source_url: &str) -> anyhow::Result<()> {
    if is_shared_database(source_url.trim()) {
        bail!(
            "SCIM_BRIDGE_DATABASE_URL names a PostgreSQL database ({}): migrate-store copies the embedded \
             SQLite store into PostgreSQL, so run it with the SQLite store as the source (unset \
             SCIM_BRIDGE_DATABASE_URL to use the data dir's, or set it to the sqlite:// URL the bridge used)",
            redacted(source_url.trim())
        );
    }
    Ok(())
}

/// Copies everything in the SQLite store at `source_url` into the empty PostgreSQL database at
/// `destination_url`, after applying each one's migrations. Errors never carry the destination's
/// password.
pub async fn sqlite_to_postgres(source_url: &str, destination_url: &str) -> anyhow::Result<Copied> {
    copy(source_url, destination_url)
        .await
        .map_err(|e| anyhow::anyhow!(scrubbed(&e, destination_url)))
}

async fn copy(source_url: &str, destination_url: &str) -> anyhow::Result<Copied> {
    refuse_postgres_source(source_url)?;
    if !source_url.starts_with("sqlite:") {
        bail!("SCIM_BRIDGE_DATABASE_URL must be the sqlite:// URL of the store to move");
    }
    if !is_shared_database(destination_url) {
        bail!(
            "--to must be a postgres:// (or postgresql://) URL, not {}",
            redacted(destination_url)
        );
    }
    let to = redacted(destination_url);

    // Opened without creating it: a wrong data dir must not look like an empty store. A running
    // bridge's write is waited for (the copy's lock needs it to end), up to its own busy timeout.
    let source_options = SqliteConnectOptions::from_str(source_url)?
        .create_if_missing(false)
        .busy_timeout(std::time::Duration::from_secs(10));
    let mut source = SqliteConnection::connect_with(&source_options).await.with_context(|| {
        format!(
            "opening the SQLite store {source_url} (set SCIM_BRIDGE_DATA_DIR, or SCIM_BRIDGE_DATABASE_URL, to the \
             stopped bridge's)"
        )
    })?;
    // What a start of the bridge would do anyway: the copy needs the current SQLite schema.
    SqliteStore::open(source_url)
        .await?
        .migrate()
        .await
        .context("applying the SQLite migrations to the source")?;
    check_source_schema(&mut source).await?;

    // A bridge that still uses the destination holds its locks: wait for them only so long.
    let destination_options = destination_url
        .parse::<PgConnectOptions>()?
        .options([("lock_timeout", "10s")]);
    let mut destination = PgConnection::connect_with(&destination_options)
        .await
        .with_context(|| format!("connecting to {to}"))?;
    // Before the migrations: a database that holds anything is left exactly as it was.
    refuse_non_empty(&mut destination, &to, false).await?;
    PostgresStore::open(destination_url)
        .await
        .with_context(|| format!("connecting to {to}"))?
        .migrate()
        .await
        .with_context(|| format!("applying the PostgreSQL migrations to {to}"))?;

    // The source's write lock, from the first row read until the mark commits.
    let mut read = source
        .begin_with("BEGIN IMMEDIATE")
        .await
        .context("locking the SQLite store for the copy")?;
    let mut write = destination.begin().await?;
    refuse_non_empty(&mut write, &to, true).await?;

    let mut tables = Vec::with_capacity(TABLES.len());
    let mut commit_order: Option<i64> = None;
    for table in TABLES {
        let copied = copy_table(&mut read, &mut write, table)
            .await
            .with_context(|| format!("copying the table {}", table.name))?;
        for (column, largest) in copied.identity {
            sqlx::query("SELECT setval(pg_get_serial_sequence($1, $2), $3)")
                .bind(table.name)
                .bind(column)
                .bind(largest)
                .execute(&mut *write)
                .await?;
        }
        commit_order = commit_order.max(copied.commit_order);
        tables.push((table.name, copied.rows));
    }
    if let Some(largest) = commit_order {
        sqlx::query("SELECT setval('commit_order', $1)")
            .bind(largest)
            .execute(&mut *write)
            .await?;
    }
    write
        .commit()
        .await
        .with_context(|| format!("committing the copy into {to}"))?;
    let marked = async {
        mark_moved(&mut read, &to).await?;
        read.commit().await?;
        anyhow::Ok(())
    };
    marked.await.with_context(|| {
        format!(
            "the copy is committed in {to}, but marking the SQLite store moved failed: start no bridge on the \
             SQLite store again"
        )
    })?;
    Ok(Copied {
        from: source_url.to_string(),
        to,
        tables,
    })
}

/// Refuses a SQLite table or column that `TABLES` does not know: it would be left behind.
async fn check_source_schema(source: &mut SqliteConnection) -> anyhow::Result<()> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )
    .fetch_all(&mut *source)
    .await?;
    let mut unknown = Vec::new();
    for name in names
        .iter()
        .filter(|n| n.as_str() != MIGRATIONS_TABLE && n.as_str() != MOVED_TABLE)
    {
        let Some(table) = TABLES.iter().find(|t| t.name == name) else {
            unknown.push(format!("table {name}"));
            continue;
        };
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
            .bind(name)
            .fetch_all(&mut *source)
            .await?;
        unknown.extend(
            columns
                .iter()
                .filter(|c| !table.columns.iter().any(|(known, _)| known == c))
                .map(|c| format!("column {name}.{c}")),
        );
        if let Some((missing, _)) = table
            .columns
            .iter()
            .find(|(known, _)| !columns.iter().any(|c| c == known))
        {
            bail!("the SQLite store has no column {name}.{missing}: it is not a scim-bridge store");
        }
    }
    if let Some(table) = TABLES.iter().find(|t| !names.iter().any(|n| n == t.name)) {
        bail!(
            "the SQLite store has no table {}: it is not a scim-bridge store",
            table.name
        );
    }
    if !unknown.is_empty() {
        bail!(
            "the SQLite store holds {} that this version of migrate-store does not know how to copy; \
             use the scim-bridge release that wrote it",
            unknown.join(", ")
        );
    }
    Ok(())
}

/// Marks the source moved, inside the transaction that read it: the mark's row, and on every
/// other table a trigger that refuses every write, naming the destination (`sqlite::moved_to`
/// reads it back from the error).
async fn mark_moved(source: &mut SqliteConnection, to: &str) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO store_moved (id, destination, moved_at) VALUES (1, ?, ?)")
        .bind(to)
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(&mut *source)
        .await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
           AND name NOT IN (?, ?) ORDER BY name",
    )
    .bind(MIGRATIONS_TABLE)
    .bind(MOVED_TABLE)
    .fetch_all(&mut *source)
    .await?;
    let refusal = format!("{}{to}", super::sqlite::MOVED_MESSAGE).replace('\'', "''");
    for table in &tables {
        for op in ["INSERT", "UPDATE", "DELETE"] {
            let trigger = quote_identifier(&format!("store_moved_{table}_{}", op.to_lowercase()));
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TRIGGER {trigger} BEFORE {op} ON {} BEGIN SELECT RAISE(ABORT, '{refusal}'); END",
                quote_identifier(table)
            )))
            .execute(&mut *source)
            .await?;
        }
    }
    Ok(())
}

/// Refuses any row in any table of the destination (sqlx's migration record aside), naming what
/// is there; with `lock`, first locks every table until the transaction ends.
async fn refuse_non_empty(write: &mut PgConnection, to: &str, lock: bool) -> anyhow::Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name <> $1
         ORDER BY table_name",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *write)
    .await?;
    let quoted: Vec<String> = tables.iter().map(|t| quote_identifier(t)).collect();
    if lock && !quoted.is_empty() {
        sqlx::query(AssertSqlSafe(format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            quoted.join(", ")
        )))
        .execute(&mut *write)
        .await
        .with_context(|| format!("locking the tables of {to} (is a bridge running on it?)"))?;
    }
    let mut held = Vec::new();
    for (table, quoted) in tables.iter().zip(&quoted) {
        let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {quoted}")))
            .fetch_one(&mut *write)
            .await?;
        if rows > 0 {
            held.push(format!("{table}: {rows} row{}", if rows == 1 { "" } else { "s" }));
        }
    }
    if !held.is_empty() {
        bail!(
            "{to} is not empty ({}): migrate-store copies only into a database that holds nothing (no bridge \
             has used it); nothing was changed. Give it a new, empty database",
            held.join(", ")
        );
    }
    Ok(())
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One SQLite value, read as its column's conversion wants it.
enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Bytes(Option<Vec<u8>>),
}

fn read_cell(row: &SqliteRow, index: usize, conv: Conv) -> Result<Cell, sqlx::Error> {
    Ok(match conv {
        Text | Json | Uuid => Cell::Text(row.try_get(index)?),
        Int | Identity | CommitOrder => Cell::Int(row.try_get(index)?),
        // A time past what `timestamptz` holds (an end accepted before such ends were refused)
        // is moved to the last end an event may have: both mean "no end in practice".
        Millis => Cell::Int(
            row.try_get::<Option<i64>, _>(index)?
                .map(|ms| ms.min(crate::activation::LAST_END)),
        ),
        Bool => Cell::Bool(row.try_get::<Option<i64>, _>(index)?.map(|v| v != 0)),
        Bytes => Cell::Bytes(row.try_get(index)?),
    })
}

struct TableCopied {
    rows: u64,
    /// The largest value of each `Identity` column.
    identity: Vec<(&'static str, i64)>,
    /// The largest `CommitOrder` value.
    commit_order: Option<i64>,
}

async fn copy_table(
    read: &mut SqliteConnection,
    write: &mut PgConnection,
    table: &Table,
) -> anyhow::Result<TableCopied> {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let select = format!("SELECT {} FROM {} ORDER BY rowid", names.join(", "), table.name);
    let mut rows = sqlx::query(AssertSqlSafe(select)).fetch(&mut *read);
    let mut largest: Vec<Option<i64>> = vec![None; table.columns.len()];
    let mut batch: Vec<Vec<Cell>> = Vec::with_capacity(BATCH_ROWS);
    let mut copied = 0u64;
    while let Some(row) = rows.try_next().await? {
        let mut cells = Vec::with_capacity(table.columns.len());
        for (index, (_, conv)) in table.columns.iter().enumerate() {
            let cell = read_cell(&row, index, *conv)?;
            if let (Identity | CommitOrder, Cell::Int(Some(v))) = (conv, &cell) {
                largest[index] = largest[index].max(Some(*v));
            }
            cells.push(cell);
        }
        batch.push(cells);
        if batch.len() == BATCH_ROWS {
            copied += insert_rows(write, table, &mut batch).await?;
        }
    }
    copied += insert_rows(write, table, &mut batch).await?;

    let mut result = TableCopied {
        rows: copied,
        identity: Vec::new(),
        commit_order: None,
    };
    for ((name, conv), largest) in table.columns.iter().zip(largest) {
        match (conv, largest) {
            (Identity, Some(v)) => result.identity.push((name, v)),
            (CommitOrder, Some(v)) => result.commit_order = result.commit_order.max(Some(v)),
            _ => {}
        }
    }
    Ok(result)
}

/// Inserts the batch's rows in one statement, converting each value in SQL as the PostgreSQL
/// store does; empties the batch.
async fn insert_rows(write: &mut PgConnection, table: &Table, batch: &mut Vec<Vec<Cell>>) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    // Identity values are kept: other rows point to them.
    let overriding = if table.columns.iter().any(|(_, conv)| *conv == Identity) {
        " OVERRIDING SYSTEM VALUE "
    } else {
        " "
    };
    let mut insert =
        QueryBuilder::<Postgres>::new(format!("INSERT INTO {} ({}){overriding}", table.name, names.join(", ")));
    insert.push_values(batch.drain(..), |mut row, cells| {
        for ((_, conv), cell) in table.columns.iter().zip(cells) {
            let (before, after) = match conv {
                Millis => ("from_ms(", ")"),
                Json => ("", "::jsonb"),
                Uuid => ("", "::uuid"),
                _ => ("", ""),
            };
            row.push(before);
            match cell {
                Cell::Text(v) => row.push_bind_unseparated(v),
                Cell::Int(v) => row.push_bind_unseparated(v),
                Cell::Bool(v) => row.push_bind_unseparated(v),
                Cell::Bytes(v) => row.push_bind_unseparated(v),
            };
            row.push_unseparated(after);
        }
    });
    let done = insert.build().persistent(false).execute(&mut *write).await?;
    Ok(done.rows_affected())
}

/// The URL with its password (in the user info or a `password` query parameter) replaced by
/// `***`, for messages.
pub fn redacted(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = url[..start].to_string();
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("password") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
        None => out.push_str(tail),
    }
    out
}

/// The passwords a URL holds, as written and percent-decoded.
fn passwords(url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let mut found: Vec<String> = parsed.password().map(str::to_string).into_iter().collect();
    found.extend(
        parsed
            .query_pairs()
            .filter(|(key, _)| key.to_ascii_lowercase().contains("password"))
            .map(|(_, value)| value.into_owned()),
    );
    let decoded: Vec<String> = found
        .iter()
        .filter_map(|p| {
            // `+` is itself in a user info or a query value taken apart already.
            url::form_urlencoded::parse(format!("p={}", p.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        })
        .collect();
    found.extend(decoded);
    found.retain(|p| !p.is_empty());
    found
}

/// The error's message, each cause after the other, once: a cause whose text the one before it
/// already quotes (the store's error over the driver's, the driver's over the server's) is left
/// out. From the first error of the database driver (or of the store over it) on, which this code
/// does not write, the text has the destination's password taken out, whatever it quotes; the
/// messages written here around it name the destination only redacted.
fn scrubbed(error: &anyhow::Error, destination_url: &str) -> String {
    let secrets = passwords(destination_url);
    let mut external = false;
    let mut said = String::new();
    error
        .chain()
        .filter(|cause| {
            let text = cause.to_string();
            let repeated = said.contains(&text);
            said = text;
            !repeated
        })
        .map(|cause| {
            external = external
                || cause.is::<sqlx::Error>()
                || cause.is::<sqlx::migrate::MigrateError>()
                || cause.is::<super::StoreError>()
                || cause.is::<std::io::Error>();
            let text = cause.to_string();
            if external {
                secrets
                    .iter()
                    .fold(text, |text, secret| text.replace(secret.as_str(), "***"))
            } else {
                text
            }
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redacted("postgres://bridge:s3cr%40t@db.example:5432/scim?sslmode=require"),
            "postgres://bridge:***@db.example:5432/scim?sslmode=require"
        );
        assert_eq!(
            redacted("postgresql://db.example/scim?user=bridge&password=s3cret&sslpassword=k"),
            "postgresql://db.example/scim?user=bridge&password=***&sslpassword=***"
        );
        assert_eq!(redacted("postgres://bridge@db/scim"), "postgres://bridge@db/scim");
        assert_eq!(
            redacted("sqlite:///data/scim-bridge.db"),
            "sqlite:///data/scim-bridge.db"
        );
    }

    #[test]
    fn a_driver_error_quoting_the_password_is_scrubbed() {
        let url = "postgres://bridge:p%40ss-w0rd@db/scim";
        let error = anyhow::Error::new(sqlx::Error::Configuration("bad password p@ss-w0rd".into()))
            .context(format!("connecting to {}", redacted(url)));
        let text = scrubbed(&error, url);
        assert!(!text.contains("p@ss-w0rd") && !text.contains("p%40ss-w0rd"), "{text}");
        assert!(
            text.starts_with("connecting to postgres://bridge:***@db/scim"),
            "{text}"
        );
    }

    #[test]
    fn a_cause_the_error_over_it_already_quotes_is_said_once() {
        let url = "postgres://bridge:wrong@db/scim";
        let driver = sqlx::Error::Configuration("password authentication failed for user \"bridge\"".into());
        let error = anyhow::Error::new(crate::store::StoreError::Database(driver))
            .context(format!("connecting to {}", redacted(url)));
        let text = scrubbed(&error, url);
        assert_eq!(text.matches("password authentication failed").count(), 1, "{text}");
        assert!(
            text.starts_with("connecting to postgres://bridge:***@db/scim: "),
            "{text}"
        );
    }

    /// Every table and column the SQLite migrations create is in `TABLES`, and nothing else is.
    #[tokio::test]
    async fn the_table_list_covers_the_sqlite_schema() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        SqliteStore::open(&url).await.unwrap().migrate().await.unwrap();
        let mut source = SqliteConnection::connect(&url).await.unwrap();
        check_source_schema(&mut source).await.unwrap();
    }
}
