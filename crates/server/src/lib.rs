//! The Missive homeserver: services (the logic) and the HTTP layer (thin
//! handlers, one module per spec area). No global state: everything a
//! handler needs comes from [`App`], so a test can run several servers in
//! one process.

pub mod api;
pub mod config;
pub mod error;
mod router;
pub mod ruma_wrapper;
pub mod services;

use std::{ops::Deref, sync::Arc};

use missive_store::Store;
use ruma::{OwnedServerName, signatures::Ed25519KeyPair};

pub use config::{Config, Registration};
pub use error::{Error, Result};
pub use router::{BodyConsumed, router};

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

/// Serves the client API on a bound listener until the future resolves.
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(app).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Serves the same routes as [`serve`] over TLS, for other servers (the
/// federation listener), until the future resolves; open connections then
/// get ten seconds to finish.
pub async fn serve_federation(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::{conn::auto, graceful::GracefulShutdown},
    };
    use tower::Service;

    let acceptor = tokio_rustls::TlsAcceptor::from(services::federation::tls_server_config(&app.config.federation)?);
    let router = router(app);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "federation listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "federation TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "federation TLS handshake timed out");
                    return;
                }
            };
            // The handlers read the peer's address as behind `serve`.
            let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                router.clone().call(req)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "federation connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("federation connections still open at shutdown were closed");
    }
    Ok(())
}
