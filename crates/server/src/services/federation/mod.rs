//! Federation: talking to other homeservers over the Server-Server API.
//!
//! - `keys`, `client`, `discovery`: the transport (server keys, signed
//!   requests, finding a server's address, TLS).
//! - `incoming`, `state`, `membership`: PDUs from other servers, state
//!   resolution, joining and leaving rooms held by other servers.
//! - `sender`: the per-destination outgoing queues.
//! - `edu`, `queries`: ephemeral data and the query endpoints.

pub mod client;
pub mod discovery;
pub mod edu;
pub mod incoming;
pub mod keys;
pub mod membership;
pub mod queries;
pub mod sender;
pub mod state;

use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

use ruma::{OwnedServerName, ServerName};
use tokio_rustls::rustls;

use crate::{Error, Result, config::FederationConfig};

/// The transport's shared state (HTTP client, key cache, allow-list).
pub struct Federation {
    /// `None`: any server may federate; otherwise only these.
    allowed: Option<HashSet<OwnedServerName>>,
    /// Signed requests to other servers: TLS checked against the public
    /// roots and `ca_file`, no redirects, addresses from [`discovery`].
    pub(crate) client: reqwest::Client,
    pub(crate) discovery: discovery::Discovery,
    pub(crate) keys: keys::KeyCache,
    /// Non-public ranges other servers may be reached at.
    pub(crate) allowlist: discovery::Allowlist,
}

impl Federation {
    pub fn new(config: &crate::Config) -> Result<Self> {
        let fed = &config.federation;
        fed.check().map_err(Error::Internal)?;
        let allowed = fed.allowed_servers.as_ref().map(|list| {
            list.iter()
                .filter_map(|s| OwnedServerName::try_from(s.as_str()).ok())
                .collect::<HashSet<_>>()
        });
        let roots = root_certificates(fed.ca_file.as_deref())?;
        let srv_targets = discovery::SrvTargets::default();
        let allowlist: discovery::Allowlist = std::sync::Arc::new(fed.ip_allowlist.clone());
        let client = reqwest::Client::builder()
            .tls_certs_only(roots.clone())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            // A redirect would take a signed request somewhere it was not signed for.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(discovery::Resolver::new(srv_targets.clone(), allowlist.clone()))
            .user_agent(concat!("Missive/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("building the federation client: {e}")))?;
        Ok(Federation {
            allowed,
            client,
            discovery: discovery::Discovery::new(roots, srv_targets, allowlist.clone())?,
            allowlist,
            keys: keys::KeyCache::default(),
        })
    }

    /// Whether the allow-list lets this server in (our own name is for the caller to allow).
    pub(crate) fn allows(&self, server: &ServerName) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(server))
    }
}

/// A JSON object as raw JSON, for the API types that carry it so.
pub(crate) fn raw_json(obj: &ruma::CanonicalJsonObject) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(obj).map_err(|e| crate::Error::Internal(format!("serialising JSON: {e}")))
}

/// A mutex guard, whatever a panicking holder left behind (the caches it
/// guards stay usable).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The CAs trusted for outgoing federation: the public web PKI roots and,
/// if configured, the deployment's own.
fn root_certificates(extra: Option<&Path>) -> Result<Vec<reqwest::Certificate>> {
    let mut roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect::<Vec<_>>();
    if let Some(path) = extra {
        roots.extend(ca_file("federation.ca_file", path)?);
    }
    Ok(roots)
}

/// The certificates of a configured PEM file of certificate authorities
/// (`setting` names it in errors); at least one.
pub(crate) fn ca_file(setting: &str, path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).map_err(|e| Error::Internal(format!("reading {setting} {}: {e}", path.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::Internal(format!("parsing {setting} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Internal(format!(
            "{setting} {} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The TLS settings of the federation listener, from the configured PEM files.
pub fn tls_server_config(config: &FederationConfig) -> std::io::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Err(invalid(
            "the federation listener needs federation.tls_cert and federation.tls_key".into(),
        ));
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("reading certificates from {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!("{} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid(format!("reading the private key from {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS settings: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("the federation certificate and key: {e}")))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
