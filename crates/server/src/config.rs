//! Server configuration: defaults that run with no file at all, a TOML file
//! (`missive.example.toml` documents every key) and `MISSIVE_*` environment
//! overrides for scripts.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// Who may create an account through `/register`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Only `missive admin create-user` creates accounts.
    #[default]
    Closed,
    /// Anyone holding a registration token (`missive admin create-registration-token`).
    Token,
    /// Anyone. Only for test deployments.
    Open,
}

impl std::str::FromStr for Registration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "closed" => Ok(Self::Closed),
            "token" => Ok(Self::Token),
            "open" => Ok(Self::Open),
            other => Err(format!("registration must be closed, token or open, not {other:?}")),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The domain in user IDs and room aliases (`@alice:server_name`). Fixed for the life of the server.
    pub server_name: String,
    /// Address the client API listens on.
    pub listen: SocketAddr,
    /// Where the database, signing key and media live.
    pub data_dir: PathBuf,
    /// `sqlite://path` (default: `missive.db` under `data_dir`) or
    /// `postgres://user@host/database` (any libpq-style URL without TLS).
    pub database_url: Option<String>,
    /// `closed`, `token` or `open`.
    pub registration: Registration,
    /// Whether presence is tracked and shared. Off saves work and metadata.
    pub presence: bool,
    /// Largest request body accepted by the client API, in bytes.
    pub max_request_bytes: usize,
    /// Connections each listener keeps open at once; past it new ones are
    /// closed at once (and a line is logged). 0: 16,384, or less when the
    /// process may not open that many files.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers; also the longest
    /// a connection may stay idle between requests.
    pub header_timeout_secs: u64,
    /// Seconds a request body may pause before the request is dropped.
    pub body_timeout_secs: u64,
    /// Bytes of memory the cache of full room states may hold.
    pub state_cache_bytes: usize,
    /// Lifetime of an access token for clients that support refresh tokens, in seconds.
    pub access_token_lifetime_secs: u64,
    /// The base URL clients should use, advertised in `/.well-known/matrix/client`.
    pub public_baseurl: Option<String>,
    /// Longest `/sync` long-poll, in milliseconds, whatever the client asks.
    pub max_sync_timeout_ms: u64,
    /// TURN server URIs handed to calling clients (`turn:turn.example.gouv:3478?transport=udp`, …).
    pub turn_uris: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`);
    /// without it `/voip/turnServer` answers `{}` (no relay).
    pub turn_shared_secret: Option<String>,
    /// How long TURN credentials stay valid, in seconds.
    pub turn_ttl_secs: u64,
    /// Rate limits on login, registration and sends (`[rate_limits]` table).
    pub rate_limits: crate::services::ratelimit::RateLimits,
    /// Largest media upload, in bytes (reported to clients by `/media/config`).
    /// Uploads are bounded by this instead of `max_request_bytes`.
    pub max_upload_bytes: usize,
    /// Whether the deprecated unauthenticated `/_matrix/media/v3/download` and
    /// `/thumbnail` endpoints serve local media. Off by default: anyone who
    /// learns an `mxc://` URI could otherwise fetch the file without an
    /// account. Clients since Matrix 1.11 use authenticated media.
    pub unauthenticated_media: bool,
    /// Whether `/user_directory/search` finds every active local user. Off
    /// by default: a user finds only those who share a room with them or are
    /// joined to a public room, so an account alone does not reveal who
    /// else has one.
    pub user_directory_search_all_users: bool,
    /// Whether `/media/preview_url` fetches the pages users paste to build a
    /// preview. Off by default: the server would otherwise visit, on a user's
    /// behalf, any address that user names. When on, it never connects to a
    /// private, loopback, link-local or otherwise non-public address.
    pub url_previews: bool,
    /// Address ranges (CIDR, `10.1.0.0/16`, `fd00::/8`, `127.0.0.1/32`) URL
    /// previews may reach although they are not public: for test deployments
    /// or an intranet whose pages should be previewed.
    pub url_preview_ip_allowlist: Vec<crate::services::addresses::IpRange>,
    /// Whom users and other administrators contact about this server
    /// (`[support]` table), served as `/.well-known/matrix/support`.
    pub support: SupportConfig,
    /// PEM file of extra certificate authorities the push client trusts,
    /// beside the system's store: for a push gateway behind the ministry's
    /// own CA.
    pub push_ca_file: Option<PathBuf>,
    /// Whether anyone may get a guest account (`/register?kind=guest`)
    /// without credentials: it reads world-readable rooms and joins those
    /// whose `m.room.guest_access` is `can_join`, and nothing else.
    pub allow_guest_access: bool,
    /// Whether a signed-in user may get a single-use login token for a new
    /// device (`/login/get_token`, used for QR-code login), after proving
    /// their password again. The token lasts two minutes.
    pub login_token_enabled: bool,
    /// The room version `/createRoom` uses when the client names none
    /// (any stable version, `1` to `12`). Version 12 rooms have IDs without
    /// a server part, which some older clients and servers cannot parse:
    /// `10` or `11` keeps them working.
    pub default_room_version: String,
    /// Talking to other Matrix servers (`[federation]` table); off unless `listen` is set.
    pub federation: FederationConfig,
}

/// The `[support]` table: contacts published for clients and other servers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupportConfig {
    /// `[[support.contacts]]`: each with a `role` (`m.role.admin` or
    /// `m.role.security`) and a `matrix_id`, an `email_address` or both.
    pub contacts: Vec<SupportContact>,
    /// A web page about getting help with this server.
    pub page: Option<String>,
}

/// One support contact.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SupportContact {
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix_id: Option<ruma::OwnedUserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
}

/// The `[federation]` table: the Server-Server API.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Address of the TLS listener other servers connect to (usually port
    /// 8448). Federation is on exactly when this is set: without it the
    /// server neither answers nor sends federation requests.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain of the federation listener, for the server
    /// name (or the name `.well-known/matrix/server` delegates to).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub tls_key: Option<PathBuf>,
    /// PEM file of extra certificate authorities trusted for outgoing
    /// federation requests, beside the usual public ones (a ministry's own
    /// CA, a test CA).
    pub ca_file: Option<PathBuf>,
    /// The only servers this one federates with (`["a.gouv.example",
    /// "b.gouv.example:8448"]`). When set, no request is sent to or accepted
    /// from any other server; unset, any server may federate.
    pub allowed_servers: Option<Vec<String>>,
    /// How long other servers may cache this server's signing key, in seconds.
    pub key_valid_secs: u64,
    /// Address ranges (CIDR) other servers may be reached at although they
    /// are not public: a closed federation on a ministry network, tests.
    /// Other non-public addresses are never connected to, whatever server
    /// name an event, a request or a delegation gives.
    pub ip_allowlist: Vec<crate::services::addresses::IpRange>,
    /// `host[:port]` other servers should connect to for this server name,
    /// served as `/.well-known/matrix/server` (delegation: user IDs stay
    /// `@a:gouv.example` while federation runs on `matrix.gouv.example:443`).
    /// Unset, that document is not served.
    pub well_known_server: Option<String>,
    /// Also answer the server-server API on the client listener (plain
    /// HTTP), for a reverse proxy that terminates TLS on port 443 or 8448
    /// and forwards everything there. Off, other servers reach it only
    /// through the TLS listener, and nobody on the client port can make
    /// this server act as a notary or take a federation request.
    pub on_client_listener: bool,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            listen: None,
            tls_cert: None,
            tls_key: None,
            ca_file: None,
            allowed_servers: None,
            key_valid_secs: 7 * 24 * 3600,
            ip_allowlist: vec![],
            well_known_server: None,
            on_client_listener: false,
        }
    }
}

impl FederationConfig {
    /// Whether the settings fit together: a listener needs its certificate and key.
    pub fn check(&self) -> Result<(), String> {
        if self.listen.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("federation.listen needs federation.tls_cert and federation.tls_key".into());
        }
        if let Some(w) = &self.well_known_server
            && ruma::ServerName::parse(w).is_err()
        {
            return Err(format!("federation.well_known_server {w:?} is not a host[:port]"));
        }
        if let Some(servers) = &self.allowed_servers {
            for s in servers {
                ruma::ServerName::parse(s).map_err(|e| format!("federation.allowed_servers: {s:?}: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost".into(),
            listen: "127.0.0.1:8008".parse().expect("valid address"),
            data_dir: PathBuf::from("missive-data"),
            database_url: None,
            registration: Registration::Closed,
            presence: true,
            max_request_bytes: 1024 * 1024,
            max_connections: 0,
            header_timeout_secs: 30,
            body_timeout_secs: 60,
            state_cache_bytes: missive_store::state_cache::DEFAULT_STATE_CACHE_BYTES,
            access_token_lifetime_secs: 24 * 3600,
            public_baseurl: None,
            max_sync_timeout_ms: 60_000,
            turn_uris: vec![],
            turn_shared_secret: None,
            turn_ttl_secs: 86_400,
            rate_limits: Default::default(),
            max_upload_bytes: 100 * 1024 * 1024,
            unauthenticated_media: false,
            user_directory_search_all_users: false,
            url_previews: false,
            url_preview_ip_allowlist: vec![],
            default_room_version: missive_core::DEFAULT_ROOM_VERSION.to_owned(),
            login_token_enabled: true,
            allow_guest_access: false,
            push_ca_file: None,
            support: SupportConfig::default(),
            federation: FederationConfig::default(),
        }
    }
}

/// Where the store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// Any other URL (`postgres://…`), checked when the store opens it.
    Url(String),
}

/// A comma-separated list of CIDR ranges, as the `*_IP_ALLOWLIST`
/// variables give them.
fn ip_ranges(v: &str) -> Result<Vec<crate::services::addresses::IpRange>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::parse)
        .collect()
}

impl Config {
    /// Whether the settings fit together (the `[federation]` table's own
    /// checks, and a room version this server supports).
    pub fn check(&self) -> Result<(), String> {
        if !missive_core::SUPPORTED_ROOM_VERSIONS.contains(&self.default_room_version.as_str()) {
            return Err(format!(
                "default_room_version {:?} is not a supported room version ({})",
                self.default_room_version,
                missive_core::SUPPORTED_ROOM_VERSIONS.join(", ")
            ));
        }
        if self.header_timeout_secs == 0 || self.body_timeout_secs == 0 {
            return Err("header_timeout_secs and body_timeout_secs must be at least 1".into());
        }
        for c in &self.support.contacts {
            if c.matrix_id.is_none() && c.email_address.is_none() {
                return Err("each [[support.contacts]] needs a matrix_id or an email_address".into());
            }
        }
        self.federation.check()
    }

    /// The database to open: the configured URL, or SQLite under `data_dir`.
    pub fn database(&self) -> Database {
        match &self.database_url {
            None => Database::Sqlite(self.data_dir.join("missive.db")),
            Some(url) => match url.strip_prefix("sqlite://") {
                Some(path) => Database::Sqlite(PathBuf::from(path)),
                None => Database::Url(url.clone()),
            },
        }
    }

    /// Applies `MISSIVE_*` environment variables over the file's values.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("MISSIVE_SERVER_NAME") {
            self.server_name = v;
        }
        if let Some(v) = get("MISSIVE_LISTEN") {
            self.listen = v.parse().map_err(|e| format!("MISSIVE_LISTEN: {e}"))?;
        }
        if let Some(v) = get("MISSIVE_MAX_CONNECTIONS") {
            self.max_connections = v.parse().map_err(|e| format!("MISSIVE_MAX_CONNECTIONS: {e}"))?;
        }
        if let Some(v) = get("MISSIVE_HEADER_TIMEOUT_SECS") {
            self.header_timeout_secs = v.parse().map_err(|e| format!("MISSIVE_HEADER_TIMEOUT_SECS: {e}"))?;
        }
        if let Some(v) = get("MISSIVE_BODY_TIMEOUT_SECS") {
            self.body_timeout_secs = v.parse().map_err(|e| format!("MISSIVE_BODY_TIMEOUT_SECS: {e}"))?;
        }
        if let Some(v) = get("MISSIVE_STATE_CACHE_BYTES") {
            self.state_cache_bytes = v.parse().map_err(|e| format!("MISSIVE_STATE_CACHE_BYTES: {e}"))?;
        }
        if let Some(v) = get("MISSIVE_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("MISSIVE_DATABASE_URL") {
            self.database_url = Some(v);
        }
        if let Some(v) = get("MISSIVE_REGISTRATION") {
            self.registration = v.parse()?;
        }
        if let Some(v) = get("MISSIVE_TURN_URIS") {
            self.turn_uris = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get("MISSIVE_TURN_SHARED_SECRET") {
            self.turn_shared_secret = Some(v);
        }
        if let Some(v) = get("MISSIVE_RATE_LIMITS") {
            self.rate_limits.enabled = !matches!(v.as_str(), "0" | "false" | "off" | "no");
        }
        if let Some(v) = get("MISSIVE_PRESENCE") {
            self.presence = matches!(v.as_str(), "1" | "true" | "on" | "yes");
        }
        if let Some(v) = get("MISSIVE_MAX_UPLOAD_BYTES") {
            self.max_upload_bytes = v.parse().map_err(|e| format!("MISSIVE_MAX_UPLOAD_BYTES: {e}"))?;
        }
        if let Some(v) = get("MISSIVE_UNAUTHENTICATED_MEDIA") {
            self.unauthenticated_media = matches!(v.as_str(), "1" | "true" | "on" | "yes");
        }
        if let Some(v) = get("MISSIVE_USER_DIRECTORY_SEARCH_ALL_USERS") {
            self.user_directory_search_all_users = matches!(v.as_str(), "1" | "true" | "on" | "yes");
        }
        if let Some(v) = get("MISSIVE_URL_PREVIEWS") {
            self.url_previews = matches!(v.as_str(), "1" | "true" | "on" | "yes");
        }
        if let Some(v) = get("MISSIVE_URL_PREVIEW_IP_ALLOWLIST") {
            self.url_preview_ip_allowlist =
                ip_ranges(&v).map_err(|e| format!("MISSIVE_URL_PREVIEW_IP_ALLOWLIST: {e}"))?;
        }
        if let Some(v) = get("MISSIVE_GUEST_ACCESS") {
            self.allow_guest_access = matches!(v.as_str(), "1" | "true" | "on" | "yes");
        }
        if let Some(v) = get("MISSIVE_PUSH_CA") {
            self.push_ca_file = Some(v.into());
        }
        if let Some(v) = get("MISSIVE_DEFAULT_ROOM_VERSION") {
            self.default_room_version = v;
        }
        let fed = &mut self.federation;
        if let Some(v) = get("MISSIVE_FEDERATION_LISTEN") {
            fed.listen = Some(v.parse().map_err(|e| format!("MISSIVE_FEDERATION_LISTEN: {e}"))?);
        }
        if let Some(v) = get("MISSIVE_TLS_CERT") {
            fed.tls_cert = Some(v.into());
        }
        if let Some(v) = get("MISSIVE_TLS_KEY") {
            fed.tls_key = Some(v.into());
        }
        if let Some(v) = get("MISSIVE_FEDERATION_CA") {
            fed.ca_file = Some(v.into());
        }
        if let Some(v) = get("MISSIVE_FEDERATION_ON_CLIENT_LISTENER") {
            fed.on_client_listener = matches!(v.as_str(), "1" | "true" | "on" | "yes");
        }
        if let Some(v) = get("MISSIVE_FEDERATION_IP_ALLOWLIST") {
            fed.ip_allowlist = ip_ranges(&v).map_err(|e| format!("MISSIVE_FEDERATION_IP_ALLOWLIST: {e}"))?;
        }
        if let Some(v) = get("MISSIVE_FEDERATION_ALLOWED") {
            // An empty list is a list: federate with nobody.
            fed.allowed_servers = Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_settings_come_from_the_environment() {
        let env = |k: &str| match k {
            "MISSIVE_FEDERATION_LISTEN" => Some("127.0.0.1:8448".to_owned()),
            "MISSIVE_TLS_CERT" => Some("/etc/missive/cert.pem".to_owned()),
            "MISSIVE_TLS_KEY" => Some("/etc/missive/key.pem".to_owned()),
            "MISSIVE_FEDERATION_CA" => Some("/etc/missive/ca.pem".to_owned()),
            "MISSIVE_FEDERATION_ALLOWED" => Some(" a.example , localhost:8448,".to_owned()),
            _ => None,
        };
        let mut config = Config::default();
        assert!(config.federation.listen.is_none());
        config.apply_env(env).unwrap();
        let fed = &config.federation;
        assert_eq!(fed.listen, Some("127.0.0.1:8448".parse().unwrap()));
        assert_eq!(
            fed.tls_cert.as_deref(),
            Some(std::path::Path::new("/etc/missive/cert.pem"))
        );
        assert_eq!(
            fed.tls_key.as_deref(),
            Some(std::path::Path::new("/etc/missive/key.pem"))
        );
        assert_eq!(
            fed.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/missive/ca.pem"))
        );
        assert_eq!(
            fed.allowed_servers,
            Some(vec!["a.example".to_owned(), "localhost:8448".to_owned()])
        );
        assert_eq!(fed.check(), Ok(()));
    }

    #[test]
    fn a_federation_listener_needs_its_certificate() {
        let mut fed = FederationConfig {
            listen: Some("127.0.0.1:8448".parse().unwrap()),
            ..Default::default()
        };
        assert!(fed.check().is_err());
        fed.tls_cert = Some("c.pem".into());
        fed.tls_key = Some("k.pem".into());
        assert_eq!(fed.check(), Ok(()));
        fed.allowed_servers = Some(vec!["not a server name".into()]);
        assert!(fed.check().is_err());
        let bad = Config::default().apply_env(|k| (k == "MISSIVE_FEDERATION_LISTEN").then(|| "nope".to_owned()));
        assert!(bad.is_err());
    }
}
