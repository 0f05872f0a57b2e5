use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scim_bridge::config::Config;
use serde_json::json;

/// mimalloc, not the system allocator: a cycle's profile put a sixth of the bridge's CPU in
/// glibc's malloc and free (many short-lived allocations across the runtime's threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the bundled mimalloc's `mimalloc.h` (v3; its Rust bindings name no
/// constant for it): freed memory goes back to the system at once, not 10 ms later, so a log
/// export's peak memory stays where it was with glibc (28.9 MiB against 39.4 MiB measured), at
/// no measurable cost to a cycle.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[derive(Parser)]
#[command(
    name = "scim-bridge",
    version,
    about = "Turns privileged-access activations into SCIM 2.0 group membership"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the bridge (SCIM_BRIDGE_* variables configure it).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Re-encrypt every stored credential with the current encryption key (the first of
    /// SCIM_BRIDGE_ENCRYPTION_KEY=current,previous); afterwards the previous key can be dropped.
    Rekey,
    /// Copy the embedded SQLite store into an empty PostgreSQL database, to move to PostgreSQL.
    ///
    /// Stop the bridge first: this command cannot tell whether one still writes to the SQLite
    /// file. The source is the store the configuration names (SCIM_BRIDGE_DATABASE_URL, default the
    /// data dir's SQLite file); pending SQLite migrations are applied to it first. The PostgreSQL
    /// migrations are applied to the destination, which must hold no row in any table. Everything
    /// is copied in one transaction (credentials still encrypted: start the bridge on PostgreSQL
    /// with the same SCIM_BRIDGE_ENCRYPTION_KEY, webhook secret and admin token); on any error
    /// nothing is written.
    MigrateStore {
        /// The PostgreSQL database to copy into: postgres://user:password@host/database.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Measure the bridge beside its ceilings on this machine (push path, revocation under load,
    /// intake, cycle throughput, memory, the log's paging and export); prints each figure with its
    /// ceiling from the same run and writes the table as JSON.
    Bench {
        /// A short run of every figure (CI), well under 2 minutes.
        #[arg(long)]
        quick: bool,
        /// Also run the push path, revocation and intake figures on PostgreSQL: a server's URL,
        /// where each figure gets a fresh database (created and dropped).
        #[arg(long, env = "SCIM_BRIDGE_BENCH_POSTGRES")]
        postgres: Option<String>,
        /// Where the table is written as JSON.
        #[arg(long, default_value = "scim-bridge-bench.json")]
        json: PathBuf,
    },
    /// Apply a configuration document (YAML or JSON, by extension) to a running bridge: plan it,
    /// print the plan, and apply it if the apps did not change meanwhile (SPEC §9).
    ///
    /// `${VARIABLE}`s in the document are replaced from the environment first (a missing one is
    /// an error, before anything is sent). Talks to SCIM_BRIDGE_URL (default
    /// http://127.0.0.1:8080) with SCIM_BRIDGE_TOKEN (an admin token). Exits 0 when it applied or
    /// nothing differs, 2 when --dry-run found changes, 1 on an error.
    Apply {
        /// The document: a .yaml, .yml or .json file.
        file: PathBuf,
        /// Only plan: print what would change, apply nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete (with deprovisioning) the apps an earlier applied document created or
        /// matched and this one no longer holds.
        #[arg(long)]
        prune: bool,
    },
    /// Print every app of a running bridge as a configuration document (GET /v1/config), secrets
    /// as ${SCIM_BRIDGE_APP_<NAME>_TOKEN} placeholders. Uses SCIM_BRIDGE_URL and SCIM_BRIDGE_TOKEN.
    Export {
        #[arg(long, default_value = "yaml", value_parser = ["yaml", "json"])]
        format: String,
    },
    /// Print the X-Bridge-Signature header for a payload file.
    Sign {
        /// The payload file, signed byte for byte.
        file: PathBuf,
        /// Unix time to sign with (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
    },
    /// Send a signed test event to a running bridge.
    Send {
        /// The bridge's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Send this payload file instead of a generated event (the other event flags are then
        /// ignored).
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value = "selfActivate")]
        action: String,
        #[arg(long, default_value = "Provisioned")]
        status: String,
        #[arg(long)]
        event_id: Option<String>,
        /// The principal's id. Default: derived from --upn (a name-based UUID of the lower-cased
        /// UPN, version 8 over SHA-256), so the same UPN is always the same principal and another
        /// UPN is another principal.
        #[arg(long)]
        principal_id: Option<String>,
        #[arg(long, default_value = "ada@contoso.com")]
        upn: String,
        #[arg(long, default_value = "Ada Lovelace")]
        display_name: String,
        /// The principal's mail. Default: the UPN.
        #[arg(long)]
        mail: Option<String>,
        /// The principal's given name. Default: the display name's first word.
        #[arg(long, alias = "givenName")]
        given_name: Option<String>,
        /// The principal's surname. Default: the rest of the display name.
        #[arg(long)]
        surname: Option<String>,
        /// The principal's department (sent only when given).
        #[arg(long)]
        department: Option<String>,
        /// The principal's employee id (sent only when given).
        #[arg(long, alias = "employeeId")]
        employee_id: Option<String>,
        /// The source group (required unless --file gives the whole event).
        #[arg(long, required_unless_present = "file")]
        group_id: Option<String>,
        #[arg(long, default_value = "PT2H")]
        duration: String,
        /// The event's createdDateTime and start (RFC 3339). Default: now; with --event-id, the
        /// time that id was first sent with from this data dir, so the same command sent again
        /// is the same event (answered `duplicate`) and a later status of it keeps its time.
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// admin, operator or app_owner
        #[arg(long)]
        role: String,
    },
}

/// The log on stderr (filtered by `RUST_LOG`) and the traces (SPEC §10), whose spans get ids
/// whatever the log's filter.
fn init_tracing(json: bool) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let log = if json { log.json().boxed() } else { log.boxed() };
    tracing_subscriber::registry()
        .with(scim_bridge::trace::enable_spans(filter))
        .with(log)
        .with(scim_bridge::trace::layer())
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

/// The time an event id was first sent with by `send` from this data dir (remembered in
/// `<data dir>/sent-events/`), or now, remembered for the next time. Without a writable data dir
/// it is now.
fn first_sent_at(data_dir: &std::path::Path, event_id: &str) -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    let name = if !event_id.is_empty()
        && event_id.len() <= 100
        && event_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !event_id.starts_with('.')
    {
        event_id.to_string()
    } else {
        hex::encode(event_id.as_bytes())
    };
    let dir = data_dir.join("sent-events");
    let file = dir.join(name);
    if let Some(at) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s.trim()).ok())
    {
        return at.with_timezone(&chrono::Utc);
    }
    let now_text = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, &now_text)) {
        eprintln!(
            "note: could not remember the time of event {event_id} in {}: {e}",
            dir.display()
        );
    }
    chrono::DateTime::parse_from_rfc3339(&now_text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or(now)
}

/// The principal id `send` uses for a UPN when none is given: a name-based UUID (version 8, the
/// first 128 bits of SHA-256 over the lower-cased UPN, as RFC 9562 B.2 shows), so one UPN is
/// always one principal, whatever its case, and another UPN another principal.
fn principal_id_from_upn(upn: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("scim-bridge send principal:{}", upn.to_lowercase()));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // SAFETY: sets one of mimalloc's documented options, a plain integer it reads when it purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    // A usage error exits 1, as every other error: `apply` keeps 2 for "a dry run found changes".
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 });
    });
    if let Command::Bench { quick, postgres, json } = cli.command {
        // Before the configuration: the bench touches no data dir but its own scratch ones.
        let scale = if quick {
            scim_bridge::bench::Scale::quick()
        } else {
            scim_bridge::bench::Scale::full()
        };
        return scim_bridge::bench::run(scim_bridge::bench::Options {
            scale,
            postgres,
            json,
            quick,
        })
        .await;
    }
    // Clients of a running bridge: no configuration, data dir or log of their own.
    match &cli.command {
        Command::Apply { file, dry_run, prune } => {
            let code = scim_bridge::config_as_code::apply(file, *dry_run, *prune).await?;
            std::process::exit(code);
        }
        Command::Export { format } => return scim_bridge::config_as_code::export(format).await,
        _ => {}
    }
    if let (Command::MigrateStore { .. }, Ok(source)) = (&cli.command, std::env::var("SCIM_BRIDGE_DATABASE_URL")) {
        // Before the configuration, which would ask a PostgreSQL source for its secrets first.
        scim_bridge::store::migrate::refuse_postgres_source(&source)?;
    }
    let config = Config::from_env()?;
    init_tracing(config.log_json);
    match cli.command {
        Command::Serve => {
            // Refused at start, before anything is served: an export that cannot work.
            if scim_bridge::trace::start_export_from_env()? {
                tracing::info!("exporting traces over OTLP");
            }
            let listener = tokio::net::TcpListener::bind(&config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            println!(
                "data dir: {} (webhook secret, admin token and encryption key are read from there unless set in the environment)",
                config.data_dir.display()
            );
            let served = scim_bridge::run(config, listener, shutdown_signal()).await;
            scim_bridge::trace::stop_export(std::time::Duration::from_secs(5)).await;
            served
        }
        Command::Migrate => {
            let store = scim_bridge::store::open(&config.database_url).await?;
            store.migrate().await?;
            // The URL may hold a password: name only the kind of store.
            let kind = config.database_url.split(':').next().unwrap_or("database");
            println!("migrations applied ({kind})");
            Ok(())
        }
        Command::Rekey => {
            let count = scim_bridge::rekey(&config).await?;
            println!("{count} stored credentials re-encrypted with the current key");
            Ok(())
        }
        Command::MigrateStore { to } => {
            let copied = scim_bridge::store::migrate::sqlite_to_postgres(&config.database_url, &to).await?;
            println!("{copied}");
            println!(
                "Start the bridge on {} with the same SCIM_BRIDGE_ENCRYPTION_KEY, SCIM_BRIDGE_WEBHOOK_SECRET and \
                 SCIM_BRIDGE_ADMIN_TOKEN (the files in {} hold them unless they were set in the environment).",
                copied.to,
                config.data_dir.display()
            );
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Create { name, role },
        } => {
            let store = scim_bridge::store::open(&config.database_url).await?;
            store.migrate().await?;
            let now = chrono::Utc::now().timestamp_millis();
            let (record, token) = scim_bridge::http::issue_token(&store, &name, &role, now, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{}",
                json!({"id": record.id, "name": record.name, "role": record.role, "token": token})
            );
            Ok(())
        }
        Command::Bench { .. } | Command::Apply { .. } | Command::Export { .. } => {
            unreachable!("handled before the configuration")
        }
        Command::Sign { file, timestamp } => {
            let body = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let t = timestamp.unwrap_or_else(|| chrono::Utc::now().timestamp());
            let secret = config.webhook_secrets[0].expose();
            println!(
                "X-Bridge-Signature: {}",
                scim_bridge::crypto::signature_header(secret, t, &body)
            );
            Ok(())
        }
        Command::Send {
            url,
            file,
            action,
            status,
            event_id,
            principal_id,
            upn,
            display_name,
            mail,
            given_name,
            surname,
            department,
            employee_id,
            group_id,
            duration,
            at,
        } => {
            let body = match file {
                Some(file) => std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
                None => {
                    let at = match (at, &event_id) {
                        (Some(at), _) => chrono::DateTime::parse_from_rfc3339(&at)
                            .with_context(|| format!("--at {at} is not an RFC 3339 date-time"))?
                            .with_timezone(&chrono::Utc),
                        (None, Some(id)) => first_sent_at(&config.data_dir, id),
                        (None, None) => chrono::Utc::now(),
                    };
                    let now = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    let (given, rest) = display_name.split_once(' ').unwrap_or((display_name.as_str(), ""));
                    let mut principal = json!({"userPrincipalName": upn, "displayName": display_name,
                        "givenName": given_name.as_deref().unwrap_or(given),
                        "surname": surname.as_deref().unwrap_or(rest),
                        "mail": mail.as_deref().unwrap_or(&upn)});
                    for (attribute, value) in [("department", department), ("employeeId", employee_id)] {
                        if let Some(value) = value {
                            principal[attribute] = json!(value);
                        }
                    }
                    let group_id = group_id.context("--group-id is required without --file")?;
                    let principal_id = principal_id.unwrap_or_else(|| {
                        let derived = principal_id_from_upn(&upn);
                        eprintln!("principalId {derived} (derived from --upn {upn})");
                        derived
                    });
                    serde_json::to_vec(&json!({
                        "id": event_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                        "action": action,
                        "accessId": "member",
                        "principalId": principal_id,
                        "groupId": group_id,
                        "status": status,
                        "createdDateTime": now,
                        "justification": "test event sent with scim-bridge send",
                        "scheduleInfo": {"startDateTime": now, "expiration": {"type": "afterDuration", "duration": duration}},
                        "principal": principal,
                        "group": {"displayName": group_id, "membershipRule": null, "onPremisesSyncEnabled": false}
                    }))?
                }
            };
            let t = chrono::Utc::now().timestamp();
            let signature = scim_bridge::crypto::signature_header(config.webhook_secrets[0].expose(), t, &body);
            let answer = scim_bridge::http_client()
                .post(format!("{}/v1/webhooks/pim", url.trim_end_matches('/')))
                .header("content-type", "application/json")
                .header("x-bridge-signature", signature)
                .body(body)
                .send()
                .await
                .context("sending the event")?;
            let status = answer.status();
            println!("{status}\n{}", answer.text().await.unwrap_or_default());
            if !status.is_success() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::principal_id_from_upn;

    /// The README's examples use Ada's derived id: it must not change.
    #[test]
    fn the_principal_id_derived_from_a_upn_is_stable_and_ignores_case() {
        assert_eq!(
            principal_id_from_upn("ada@contoso.com"),
            "8b51fed8-f0e4-8ca7-837d-b8a2bbe6181f"
        );
        assert_eq!(
            principal_id_from_upn("Ada@Contoso.COM"),
            principal_id_from_upn("ada@contoso.com")
        );
        assert_ne!(
            principal_id_from_upn("grace@contoso.com"),
            principal_id_from_upn("ada@contoso.com")
        );
    }
}
