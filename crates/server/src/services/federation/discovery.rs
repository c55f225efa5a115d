//! Finding where another server's federation API is: the spec's "Resolving
//! server names" (IP literal, explicit port, `/.well-known/matrix/server`
//! delegation, SRV records, port 8448).
//!
//! A request always goes to `https://<hostname>[:port]`, with `<hostname>` the
//! name the certificate must be valid for (the server name, or the name it
//! delegates to), so that reqwest checks the certificate and sends SNI for
//! it. When an SRV record says to connect elsewhere, the client's DNS
//! [`Resolver`] sends connections for that hostname to the SRV target
//! instead: that is the only place the address differs from the name.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use hickory_resolver::{TokioResolver, proto::rr::RData};
use ruma::{OwnedServerName, ServerName};

use super::lock;
use crate::{Error, Result};

/// The port of a server whose name does not say one.
const DEFAULT_PORT: u16 = 8448;
/// How long a delegation is trusted without a `Cache-Control` saying otherwise.
const WELL_KNOWN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a delegation is trusted, whatever the server says.
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// How long "no delegation" is remembered after a failed `.well-known` fetch.
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(3600);
/// The largest `.well-known/matrix/server` read.
const WELL_KNOWN_MAX_BYTES: usize = 64 * 1024;

/// Where to send a server's federation requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// `https://<hostname>[:port]`, without a trailing slash.
    pub base_url: String,
    /// The `Host` header: the server name, or the delegated one.
    pub host: String,
}

/// The SRV targets of hostnames, shared with the [`Resolver`].
pub type SrvTargets = Arc<RwLock<HashMap<String, Vec<(String, u16)>>>>;

/// The non-public address ranges other servers may be reached at
/// (`[federation] ip_allowlist`).
pub type Allowlist = Arc<Vec<crate::services::addresses::IpRange>>;

/// Whether a URL may be connected to: a host name (its addresses are
/// checked when resolved), or an address the guard allows.
pub fn url_reachable(url: &reqwest::Url, allowlist: &[crate::services::addresses::IpRange]) -> bool {
    use crate::services::addresses::allowed;
    match url.host() {
        Some(url::Host::Ipv4(ip)) => allowed(ip.into(), allowlist),
        Some(url::Host::Ipv6(ip)) => allowed(ip.into(), allowlist),
        Some(url::Host::Domain(_)) => true,
        None => false,
    }
}

pub struct Discovery {
    resolved: Mutex<HashMap<OwnedServerName, (Destination, Instant)>>,
    srv_targets: SrvTargets,
    /// For `.well-known/matrix/server`: ordinary DNS, a few redirects.
    well_known: reqwest::Client,
    /// For SRV records; `None` if the system's DNS settings could not be read.
    dns: Option<TokioResolver>,
}

impl Discovery {
    pub fn new(roots: Vec<reqwest::Certificate>, srv_targets: SrvTargets, allowlist: Allowlist) -> Result<Self> {
        let redirects = allowlist.clone();
        let well_known = reqwest::Client::builder()
            .tls_certs_only(roots)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(20))
            // Redirects are followed only to hosts the guard would let us reach.
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 || !url_reachable(attempt.url(), &redirects) {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            .dns_resolver(Resolver::new(SrvTargets::default(), allowlist))
            .user_agent(concat!("Missive/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("building the well-known client: {e}")))?;
        let dns = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS settings: SRV records of other servers will not be looked up");
                None
            }
        };
        Ok(Discovery {
            resolved: Mutex::default(),
            srv_targets,
            well_known,
            dns,
        })
    }

    /// Where the server's federation API is. Never fails: without any
    /// delegation or SRV record, it is the server name's host on port 8448.
    pub async fn resolve(&self, server: &ServerName) -> Destination {
        if let Some(d) = literal_or_port(server) {
            return d;
        }
        let now = Instant::now();
        if let Some((d, until)) = lock(&self.resolved).get(server)
            && *until > now
        {
            return d.clone();
        }
        let hostname = server.host();
        let (dest, ttl) = match self.fetch_well_known(hostname).await {
            Ok((delegated, ttl)) => {
                let dest = match literal_or_port(&delegated) {
                    Some(d) => d,
                    None => self.srv_or_default(delegated.host()).await,
                };
                tracing::debug!(%server, %delegated, ?dest, "delegated by .well-known");
                (dest, ttl)
            }
            Err(e) => {
                tracing::debug!(%server, error = %e, "no .well-known delegation");
                (self.srv_or_default(hostname).await, WELL_KNOWN_ERROR_TTL)
            }
        };
        let mut resolved = lock(&self.resolved);
        // Forget expired entries now and then, so that the map stays bounded.
        if resolved.len() > 1024 {
            resolved.retain(|_, (_, until)| *until > now);
        }
        resolved.insert(server.to_owned(), (dest.clone(), now + ttl));
        dest
    }

    /// The delegated server name and how long it may be trusted.
    async fn fetch_well_known(&self, hostname: &str) -> Result<(OwnedServerName, Duration), String> {
        let url = format!("https://{hostname}/.well-known/matrix/server");
        let mut resp = self.well_known.get(&url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let ttl = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .map_or(WELL_KNOWN_TTL, |ttl| ttl.min(WELL_KNOWN_MAX_TTL));
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > WELL_KNOWN_MAX_BYTES {
                return Err("response too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(serde::Deserialize)]
        struct WellKnown {
            #[serde(rename = "m.server")]
            server: String,
        }
        let wk: WellKnown = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let delegated = OwnedServerName::try_from(wk.server).map_err(|e| e.to_string())?;
        Ok((delegated, ttl))
    }

    /// For a hostname without a port: its SRV records (`_matrix-fed._tcp`,
    /// then the deprecated `_matrix._tcp`), or port 8448.
    async fn srv_or_default(&self, hostname: &str) -> Destination {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let targets = self.srv_lookup(&format!("{service}.{hostname}.")).await;
            if !targets.is_empty() {
                tracing::debug!(hostname, ?targets, "SRV targets");
                self.srv_targets
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(hostname.to_owned(), targets);
                return Destination {
                    base_url: format!("https://{hostname}"),
                    host: hostname.to_owned(),
                };
            }
        }
        // Records that have gone no longer route the hostname.
        self.srv_targets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hostname);
        Destination {
            base_url: format!("https://{hostname}:{DEFAULT_PORT}"),
            host: hostname.to_owned(),
        }
    }

    /// The targets of an SRV record, in the order to try them (by priority,
    /// then heavier weight first: a simplification of RFC 2782's random pick).
    async fn srv_lookup(&self, name: &str) -> Vec<(String, u16)> {
        let Some(dns) = &self.dns else { return vec![] };
        let Ok(lookup) = dns.srv_lookup(name).await else {
            return vec![];
        };
        let mut records = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                // A target of "." says the service is not offered there.
                RData::SRV(srv) if !srv.target.is_root() => Some(srv.clone()),
                _ => None,
            })
            .collect::<Vec<_>>();
        records.sort_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
        records
            .into_iter()
            .map(|s| (s.target.to_utf8().trim_end_matches('.').to_owned(), s.port))
            .collect()
    }
}

/// Steps 1 and 2 of the resolution: a server name that is an IP literal or
/// has an explicit port is reached there, with no lookup.
fn literal_or_port(server: &ServerName) -> Option<Destination> {
    let port = match (server.is_ip_literal(), server.port()) {
        (true, port) => port.unwrap_or(DEFAULT_PORT),
        (false, Some(port)) => port,
        (false, None) => return None,
    };
    Some(Destination {
        base_url: format!("https://{}:{port}", server.host()),
        host: server.as_str().to_owned(),
    })
}

/// The `max-age` of a `Cache-Control` header; `no-store`/`no-cache` count as zero.
fn max_age(header: &str) -> Option<Duration> {
    header.split(',').map(str::trim).find_map(|directive| {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        let (k, v) = directive.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| v.trim().trim_matches('"').parse().ok().map(Duration::from_secs))?
    })
}

/// The federation client's DNS: a hostname with SRV targets connects to
/// them (their ports kept, since its URLs carry no port), any other name
/// is looked up as usual.
///
/// A hostname with SRV records that is also named with an explicit port
/// (`host:1234`) would connect to the SRV target on that port: the
/// resolver only sees the name. No sane deployment names one host both ways.
pub struct Resolver {
    srv_targets: SrvTargets,
    /// Only public addresses, and these ranges, are connected to: a name
    /// in an event or a request does not make this server reach into its
    /// own network.
    allowlist: Allowlist,
}

impl Resolver {
    pub fn new(srv_targets: SrvTargets, allowlist: Allowlist) -> Self {
        Resolver { srv_targets, allowlist }
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let targets = self
            .srv_targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name.as_str())
            .cloned();
        let name = name.as_str().to_owned();
        let allowlist = self.allowlist.clone();
        Box::pin(async move {
            let mut addrs: Vec<SocketAddr> = vec![];
            match targets {
                Some(targets) => {
                    for (host, port) in targets {
                        match tokio::net::lookup_host((host.as_str(), port)).await {
                            Ok(found) => addrs.extend(found),
                            Err(e) => tracing::debug!(%host, error = %e, "SRV target not found"),
                        }
                    }
                }
                None => addrs.extend(tokio::net::lookup_host((name.as_str(), 0)).await?),
            }
            if addrs.is_empty() {
                return Err(format!("no address for {name}").into());
            }
            addrs.retain(|a| crate::services::addresses::allowed(a.ip(), &allowlist));
            if addrs.is_empty() {
                return Err(format!("{name} has no public address (see [federation] ip_allowlist)").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> OwnedServerName {
        OwnedServerName::try_from(s).unwrap()
    }

    #[test]
    fn ip_literals_and_explicit_ports_need_no_lookup() {
        let d = literal_or_port(&name("localhost:8481")).unwrap();
        assert_eq!(d.base_url, "https://localhost:8481");
        assert_eq!(d.host, "localhost:8481");
        let d = literal_or_port(&name("127.0.0.1")).unwrap();
        assert_eq!(d.base_url, "https://127.0.0.1:8448");
        assert_eq!(d.host, "127.0.0.1");
        let d = literal_or_port(&name("[::1]:9000")).unwrap();
        assert_eq!(d.base_url, "https://[::1]:9000");
        assert_eq!(d.host, "[::1]:9000");
        assert_eq!(literal_or_port(&name("example.org")), None);
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=3600"), Some(Duration::from_secs(3600)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
    }

    #[tokio::test]
    async fn a_name_with_a_port_resolves_without_any_request() {
        let d = Discovery::new(vec![], SrvTargets::default(), Allowlist::default()).unwrap();
        let dest = d.resolve(&name("localhost:1234")).await;
        assert_eq!(dest.base_url, "https://localhost:1234");
    }
}
