//! scim-bridge: turns privileged-access activations into SCIM 2.0 group membership.

pub mod activation;
pub mod bench;
pub mod clock;
pub mod config;
pub mod config_as_code;
pub mod crypto;
pub mod graph;
pub mod http;
pub mod intake;
pub mod lease;
pub mod mapping;
pub mod metrics;
pub mod provisioning;
pub mod rules;
pub mod scim;
pub mod server;
pub mod store;
pub mod trace;
pub mod types;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::crypto::{KEY_CHECK_OWNER, Sealer};
use crate::provisioning::{Ctx, Engine};

/// A builder for every HTTP client of the process (the SCIM and Graph clients, `send`, the bench,
/// the tests). The one TLS stack is rustls with ring, shared with sqlx; reqwest is built without a
/// provider of its own, so ring is installed as the process's default before the first client.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Err only when a default is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// A client with reqwest's defaults, on the one TLS stack ([`http_client_builder`]).
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .expect("an HTTP client with the default settings")
}

/// Opens the store, applies migrations and starts the provisioning engine.
pub async fn start_engine(config: Config, clock: SharedClock) -> anyhow::Result<Arc<Engine>> {
    metrics::install();
    let store = store::open(&config.database_url).await?;
    store.migrate().await.context("applying migrations")?;
    let sealer = Sealer::new(&config.encryption_key_bytes()?);
    check_encryption_keys(store.as_ref(), &sealer, clock.now()).await?;
    let keyed = store.fill_target_keys().await.context("keying the apps' targets")?;
    if keyed > 0 {
        tracing::info!(apps = keyed, "keyed the targets of apps stored by an earlier version");
    }
    let http = scim::http_client(&scim::ClientOptions {
        allow_private: config.allow_private_targets,
        ..scim::ClientOptions::default()
    })?;
    let ctx = Arc::new(Ctx {
        store,
        http,
        clock,
        config,
        sealer,
    });
    let graph = ctx.config.graph.clone();
    let engine = Engine::start(ctx).await?;
    if let Some(graph) = graph {
        let poller = graph::start(
            engine.clone(),
            graph,
            Arc::new(graph::EngineLease(Arc::downgrade(&engine))),
        )?;
        engine.add_background(poller);
    }
    Ok(engine)
}

/// What the key check seals: any fixed value does, it is only ever opened and compared.
const KEY_CHECK: &[u8] = b"scim-bridge encryption key check";

/// Refuses to start with encryption keys none of which opens the credentials already stored.
/// Replicas share one database, so one started with another key would fail every push of every
/// app (and seal new credentials that the others cannot open). The database keeps a known value
/// sealed with the key the credentials are written with; a store from before the check (no
/// value yet) is judged by its credentials, then gets the value.
pub async fn check_encryption_keys(store: &store::Store, sealer: &Sealer, now: clock::Millis) -> anyhow::Result<()> {
    let refuse = || {
        anyhow::anyhow!(
            "none of the keys in SCIM_BRIDGE_ENCRYPTION_KEY opens the credentials stored in this database: \
             set it to the key they were written with (the one the other replicas use), or to `current,previous` \
             during a rotation; `scim-bridge rekey` then re-encrypts them with the current key"
        )
    };
    let opens = |sealed: &[u8]| {
        sealer
            .open(KEY_CHECK_OWNER, sealed)
            .is_some_and(|plain| plain == KEY_CHECK)
    };
    if let Some(sealed) = store.key_check().await? {
        return if opens(&sealed) { Ok(()) } else { Err(refuse()) };
    }
    let apps = store.list_apps().await?;
    if !apps.is_empty() && apps.iter().all(|app| sealer.open(&app.id, &app.auth_sealed).is_none()) {
        return Err(refuse());
    }
    // Two replicas starting at once store one value between them; the other is judged by it.
    let stored = store
        .init_key_check(&sealer.seal(KEY_CHECK_OWNER, KEY_CHECK), now)
        .await?;
    if opens(&stored) { Ok(()) } else { Err(refuse()) }
}

/// Serves the bridge on `listener` until `shutdown` resolves, then drains in-flight pushes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_clock(config, Arc::new(SystemClock), listener, shutdown).await
}

pub async fn run_with_clock(
    config: Config,
    clock: SharedClock,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = server::Limits::from_config(&config);
    let engine = start_engine(config, clock).await?;
    let router = http::router(http::ApiContext { engine: engine.clone() });
    let addr = listener.local_addr()?;
    println!("scim-bridge listening on http://{addr}");
    tracing::info!(%addr, "serving");
    server::serve(listener, router, limits, shutdown).await?;
    tracing::info!("draining in-flight pushes");
    engine.shutdown().await;
    Ok(())
}

/// `scim-bridge rekey`: re-encrypts every stored credential with the current encryption key
/// (opened with the current or the previous one). Answers how many were re-encrypted; fails,
/// naming the apps, if some could be opened with neither key.
pub async fn rekey(config: &Config) -> anyhow::Result<usize> {
    let store = store::open(&config.database_url).await?;
    store.migrate().await.context("applying migrations")?;
    let sealer = Sealer::new(&config.encryption_key_bytes()?);
    let (resealed, unopened) = store
        .reseal_credentials(&move |app_id: Option<&str>, sealed: &[u8]| {
            sealer.reseal(app_id.unwrap_or(KEY_CHECK_OWNER), sealed)
        })
        .await?;
    if !unopened.is_empty() {
        anyhow::bail!(
            "{resealed} credentials re-encrypted, but no configured key opens those of {} app(s): {} \
             (set SCIM_BRIDGE_ENCRYPTION_KEY to `current,previous` with the key they were written with)",
            unopened.len(),
            unopened.join(", ")
        );
    }
    Ok(resealed)
}
