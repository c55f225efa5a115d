//! The Missive homeserver: services (the logic) and the HTTP layer (thin
//! handlers, one module per spec area). No global state: everything a
//! handler needs comes from [`App`], so a test can run several servers in
//! one process.

pub mod access_log;
pub mod api;
pub mod config;
pub mod error;
pub mod listener;
mod router;
pub mod ruma_wrapper;
pub mod services;

use std::{ops::Deref, sync::Arc};

use missive_store::Store;
use ruma::{OwnedServerName, signatures::Ed25519KeyPair};

pub use config::{Config, Registration};
pub use error::{Error, Result};
pub use router::{BodyConsumed, federation_router, router};

use services::{media::Media, presence::Presence, rooms::RoomLocks, typing::Typing, uia::UiaSessions};

#[derive(Clone)]
pub struct App(Arc<AppInner>);

pub struct AppInner {
    pub config: Config,
    pub server_name: OwnedServerName,
    pub store: Store,
    pub key: Ed25519KeyPair,
    /// Bumped after every change a `/sync` may be waiting for.
    pub notifier: tokio::sync::watch::Sender<u64>,
    pub typing: Typing,
    pub presence: Presence,
    pub room_locks: RoomLocks,
    pub uia: UiaSessions,
    pub media: Media,
    pub push: services::push::Push,
    /// Simplified sliding sync connections and the positions they were sent.
    pub sliding_connections: services::sliding_sync::Connections,
    /// When this process last recorded each device as seen.
    pub device_activity: services::accounts::DeviceActivity,
    /// Member events each device holds, for lazy-loading `/sync`.
    pub lazy_members: services::sync::LazyMembers,
    pub rate_limiter: services::ratelimit::RateLimiter,
    pub password_hashing: services::accounts::PasswordHashing,
    /// Tells this process's messages to other processes from its own.
    pub process_id: String,
    /// URL previews already built.
    pub url_previews: services::url_preview::UrlPreviews,
    /// The federation transport: keys, signed requests, discovery.
    pub federation: services::federation::Federation,
    /// The per-destination outgoing queues.
    pub fed_sender: services::federation::sender::Sender,
}

impl Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    /// Opens the services on a store, creating the server's signing key on first start.
    pub async fn new(config: Config, store: Store) -> Result<App> {
        let server_name = OwnedServerName::try_from(config.server_name.as_str())
            .map_err(|e| Error::Internal(format!("invalid server_name {:?}: {e}", config.server_name)))?;
        store.set_state_cache_bytes(config.state_cache_bytes);
        let (version, der) = match store.signing_key().await? {
            Some(k) => k,
            None => {
                let version = format!("ed25519:{}", services::accounts::random_string(6));
                let der = missive_core::signing_key::generate();
                store.insert_signing_key(version, der).await?;
                // Another process may have stored its key first: use that one.
                store
                    .signing_key()
                    .await?
                    .ok_or_else(|| Error::Internal("the signing key was not stored".into()))?
            }
        };
        let version = version.strip_prefix("ed25519:").unwrap_or(&version).to_owned();
        let key = missive_core::signing_key::load(&der, &version).map_err(|e| Error::Internal(e.to_string()))?;
        let (notifier, _) = tokio::sync::watch::channel(0);
        let media = Media::on_disk(&config.data_dir);
        let (push, push_worker) = services::push::Push::new(&config)?;
        let federation = services::federation::Federation::new(&config)?;
        let app = App(Arc::new(AppInner {
            config,
            server_name,
            store,
            key,
            notifier,
            typing: Typing::default(),
            presence: Presence::default(),
            room_locks: RoomLocks::default(),
            uia: UiaSessions::default(),
            rate_limiter: Default::default(),
            password_hashing: Default::default(),
            url_previews: Default::default(),
            media,
            push,
            sliding_connections: Default::default(),
            lazy_members: Default::default(),
            device_activity: Default::default(),
            process_id: services::accounts::random_string(16),
            federation,
            fed_sender: Default::default(),
        }));
        app.follow_other_processes();
        push_worker.spawn(&app);
        app.spawn_sender();
        Ok(app)
    }

    /// Wakes every waiting `/sync` so it looks again.
    pub fn notify(&self) {
        self.notifier.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// The connection limits of the listeners, from the configuration.
pub fn connection_limits(config: &Config) -> listener::ConnectionLimits {
    listener::ConnectionLimits {
        max_connections: match config.max_connections {
            0 => DEFAULT_MAX_CONNECTIONS,
            n => n,
        },
        header_timeout: std::time::Duration::from_secs(config.header_timeout_secs),
        body_timeout: std::time::Duration::from_secs(config.body_timeout_secs),
    }
}

/// Connections per listener when the configuration names no number.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// Serves the client API on a bound listener until the future resolves.
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = connection_limits(&app.config);
    listener::serve("client", listener, router(app), None, limits, shutdown).await
}

/// Serves the same routes as [`serve`] over TLS, for other servers (the
/// federation listener), until the future resolves.
pub async fn serve_federation(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(services::federation::tls_server_config(&app.config.federation)?);
    let limits = connection_limits(&app.config);
    listener::serve(
        "federation",
        listener,
        federation_router(app),
        Some(acceptor),
        limits,
        shutdown,
    )
    .await
}
