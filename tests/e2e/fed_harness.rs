//! Several homeservers federating on one machine: a test certificate
//! authority, Missive servers with a TLS federation listener, Synapse, and a
//! fake server that signs whatever a test asks it to.
//!
//! Every server is named `localhost:<federation port>`, so servers find each
//! other without DNS or `.well-known`, and all present one certificate for
//! `localhost` signed by a CA made once per test process.

use std::{
    net::TcpListener,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    signatures::{Ed25519KeyPair, KeyPair},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::{Child, Command},
};
use tokio_rustls::rustls;

use crate::common::TestServer;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The test CA and one leaf certificate for `localhost` and `127.0.0.1`
/// that every server of the process presents.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

/// Paths of the CA, certificate and key written out for one server.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Missive test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca cert");

        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf params");
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf cert");
        TestCa {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            cert_der: leaf.der().to_vec(),
            key_der: leaf_key.serialize_der(),
        }
    })
}

impl TestCa {
    /// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`.
    pub fn write_to(&self, dir: &Path) -> TlsFiles {
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.ca, &self.ca_pem).expect("write ca");
        std::fs::write(&files.cert, &self.cert_pem).expect("write cert");
        std::fs::write(&files.key, &self.key_pem).expect("write key");
        files
    }

    /// An HTTPS client that trusts the test CA only.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca pem")])
            .timeout(Duration::from_secs(30))
            .build()
            .expect("https client")
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("tls server config");
        Arc::new(config)
    }
}

/// Options for a federated Missive server.
#[derive(Default, Clone)]
pub struct FedOpts {
    /// `MISSIVE_FEDERATION_ALLOWED`: the servers it may talk to (comma-separated).
    pub allowed: Option<String>,
    /// Any further environment.
    pub env: Vec<(String, String)>,
}

/// A Missive server with a TLS federation listener, named
/// `localhost:<federation port>`. Derefs to its [`TestServer`] (client API
/// on plain HTTP at `url`), so the common helpers take it as it is.
pub struct FedServer {
    server: TestServer,
    pub fed_port: u16,
    name: String,
    // Holds the certificate files for the life of the server.
    _tls: tempfile::TempDir,
}

impl Deref for FedServer {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

impl DerefMut for FedServer {
    fn deref_mut(&mut self) -> &mut TestServer {
        &mut self.server
    }
}

pub const FEDERATION_ALLOWED: &str = "MISSIVE_FEDERATION_ALLOWED";

impl FedServer {
    pub async fn start() -> FedServer {
        Self::start_with(FedOpts::default()).await
    }

    pub async fn start_with(opts: FedOpts) -> FedServer {
        let fed_port = free_port();
        Self::start_on_port(fed_port, opts).await
    }

    /// Starts on a federation port chosen beforehand, for tests that must
    /// know a server's name before it runs (to put it in an allow-list).
    pub async fn start_on_port(fed_port: u16, opts: FedOpts) -> FedServer {
        let tls = tempfile::tempdir().expect("tempdir");
        let files = test_ca().write_to(tls.path());
        let name = format!("localhost:{fed_port}");
        let listen = format!("127.0.0.1:{fed_port}");
        let (ca, cert, key) = (
            files.ca.display().to_string(),
            files.cert.display().to_string(),
            files.key.display().to_string(),
        );
        let mut env: Vec<(&str, &str)> = vec![
            ("MISSIVE_SERVER_NAME", &name),
            ("MISSIVE_FEDERATION_LISTEN", &listen),
            ("MISSIVE_TLS_CERT", &cert),
            ("MISSIVE_TLS_KEY", &key),
            ("MISSIVE_FEDERATION_CA", &ca),
            // Every test server is on loopback, which is not public.
            ("MISSIVE_FEDERATION_IP_ALLOWLIST", "127.0.0.0/8,::1/128"),
        ];
        if let Some(a) = &opts.allowed {
            env.push((FEDERATION_ALLOWED, a));
        }
        for (k, v) in &opts.env {
            env.push((k, v));
        }
        let server = TestServer::start_with(&env).await;
        let fed = FedServer {
            server,
            fed_port,
            name,
            _tls: tls,
        };
        fed.wait_federation().await;
        fed
    }

    pub fn server_name(&self) -> &str {
        &self.name
    }

    /// A second process of this server on its PostgreSQL database, with a
    /// federation listener of its own (other servers keep reaching the
    /// first: the server name names its port) so that it sends too.
    pub async fn start_sibling(&self) -> TestServer {
        let listen = format!("127.0.0.1:{}", free_port());
        self.server
            .start_sibling_with(&[("MISSIVE_FEDERATION_LISTEN", &listen)])
            .await
    }

    /// The client API base URL (plain HTTP).
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// The federation API base URL (HTTPS, test CA).
    pub fn fed_url(&self) -> String {
        format!("https://localhost:{}", self.fed_port)
    }

    /// A user ID on this server.
    pub fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// Stops the process (SIGKILL), keeping its data.
    pub async fn stop(&mut self) {
        self.server.kill9().await;
    }

    /// Starts it again after [`stop`](Self::stop).
    pub async fn start_again(&mut self) {
        self.server.start_again().await;
        self.wait_federation().await;
    }

    /// Restarts with another allow-list (`None`: federate with anyone).
    pub async fn restart_with_allowed(&mut self, allowed: Option<&str>) {
        self.stop().await;
        self.server.set_env(FEDERATION_ALLOWED, allowed);
        self.start_again().await;
    }

    /// Waits until the federation listener answers over TLS (any HTTP status).
    async fn wait_federation(&self) {
        let http = test_ca().client();
        let url = format!("{}/_matrix/federation/v1/version", self.fed_url());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http.get(&url).send().await {
                Ok(_) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "federation listener of {} did not come up over TLS: {e}",
                    self.name
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The Python of a virtualenv with Synapse installed, if the tests have one.
pub fn synapse_python() -> Option<String> {
    std::env::var("MISSIVE_TEST_SYNAPSE").ok().filter(|s| !s.is_empty())
}

/// A Synapse homeserver on SQLite in a temporary directory, named
/// `localhost:<federation port>`, with a TLS federation listener and a plain
/// client listener at `url`. Killed on drop; its log is printed if the test
/// is failing.
pub struct SynapseServer {
    pub url: String,
    pub fed_port: u16,
    name: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SynapseServer {
    /// `None` (after printing why) when `MISSIVE_TEST_SYNAPSE` is unset.
    pub async fn start() -> Option<SynapseServer> {
        let Some(python) = synapse_python() else {
            eprintln!("skipped: MISSIVE_TEST_SYNAPSE is not set (.ci/run installs Synapse and sets it)");
            return None;
        };
        // A port picked free may be taken by another test before Synapse
        // binds it: then Synapse exits at once, and is started on others.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once(&python).await {
                Ok(s) => return Some(s),
                Err(log) => last = log,
            }
        }
        panic!("synapse exited at start, three times:\n{last}");
    }

    async fn start_once(python: &str) -> Result<SynapseServer, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = test_ca().write_to(dir.path());
        let fed_port = free_port();
        let client_port = free_port();
        let name = format!("localhost:{fed_port}");
        let d = dir.path();
        let lenient = json!({ "per_second": 1000, "burst_count": 1000 });
        // YAML is a superset of JSON: the config is written as JSON.
        let config = json!({
            "server_name": name,
            "public_baseurl": format!("http://127.0.0.1:{client_port}/"),
            "pid_file": d.join("homeserver.pid"),
            "report_stats": false,
            "listeners": [
                {
                    "port": fed_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": true,
                    "x_forwarded": false,
                    "resources": [{ "names": ["federation", "client"], "compress": false }],
                },
                {
                    "port": client_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": false,
                    "x_forwarded": false,
                    "resources": [{ "names": ["client"], "compress": false }],
                },
            ],
            "tls_certificate_path": files.cert,
            "tls_private_key_path": files.key,
            "federation_verify_certificates": true,
            "federation_custom_ca_list": [files.ca],
            // Everything runs on loopback, which Synapse refuses by default.
            "ip_range_blacklist": [],
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
            "database": { "name": "sqlite3", "args": { "database": d.join("homeserver.db") } },
            "media_store_path": d.join("media"),
            "signing_key_path": d.join("signing.key"),
            "macaroon_secret_key": "missive-test-macaroon-secret",
            "form_secret": "missive-test-form-secret",
            "registration_shared_secret": "missive-test-registration-secret",
            "enable_registration": true,
            "enable_registration_without_verification": true,
            "trusted_key_servers": [],
            "suppress_key_server_warning": true,
            "presence": { "enabled": false },
            "url_preview_enabled": false,
            "enable_metrics": false,
            "rc_message": lenient,
            "rc_registration": lenient,
            "rc_login": { "address": lenient, "account": lenient, "failed_attempts": lenient },
            "rc_joins": { "local": lenient, "remote": lenient },
            "rc_joins_per_room": lenient,
            "rc_invites": { "per_room": lenient, "per_user": lenient, "per_issuer": lenient },
            "rc_key_requests": lenient,
            "rc_3pid_validation": lenient,
            "rc_federation": {
                "window_size": 1000,
                "sleep_limit": 1000,
                "sleep_delay": 1,
                "reject_limit": 10000,
                "concurrent": 100,
            },
        });
        let cfg = d.join("homeserver.yaml");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config).expect("config")).expect("write config");

        let keys = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(&cfg)
            .current_dir(d)
            .output()
            .await
            .expect("run synapse --generate-keys");
        assert!(
            keys.status.success(),
            "synapse --generate-keys: {}{}",
            String::from_utf8_lossy(&keys.stdout),
            String::from_utf8_lossy(&keys.stderr)
        );

        let log = std::fs::File::create(d.join("synapse.log")).expect("log file");
        let child = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&cfg)
            .current_dir(d)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start synapse");
        let mut synapse = SynapseServer {
            url: format!("http://127.0.0.1:{client_port}"),
            fed_port,
            name,
            dir,
            child: Some(child),
        };
        synapse.wait_up().await?;
        Ok(synapse)
    }

    /// Waits for Synapse to answer; `Err` with its log if it exited.
    async fn wait_up(&mut self) -> Result<(), String> {
        // Synapse makes its SQLite schema on the first start: give it time.
        let deadline = Instant::now() + Duration::from_secs(90);
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/_matrix/client/versions", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("synapse exited with {status}:\n{}", self.log_tail(60)));
            }
            assert!(
                Instant::now() < deadline,
                "synapse did not start:\n{}",
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn server_name(&self) -> &str {
        &self.name
    }

    pub fn fed_url(&self) -> String {
        format!("https://localhost:{}", self.fed_port)
    }

    pub fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// A handle the common helpers (`Raw::register`, `sdk_client`) accept.
    pub fn as_test_server(&self) -> TestServer {
        TestServer::connect(&self.url)
    }

    /// The last `lines` lines of Synapse's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("synapse.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for SynapseServer {
    fn drop(&mut self) {
        // MISSIVE_TEST_SYNAPSE_LOG=path keeps the whole log for debugging.
        if let Some(path) = std::env::var_os("MISSIVE_TEST_SYNAPSE_LOG") {
            let _ = std::fs::copy(self.dir.path().join("synapse.log"), path);
        }
        if std::thread::panicking() || std::env::var_os("MISSIVE_TEST_LOG").is_some() {
            eprintln!("---- synapse {} log (tail) ----\n{}", self.name, self.log_tail(80));
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// A pretend homeserver in the test process: it has an ed25519 signing key
/// and serves it at `/_matrix/key/v2/server` over TLS on its own port, so a
/// real server can authenticate the requests and events the test forges.
pub struct FakeServer {
    pub name: String,
    key: Ed25519KeyPair,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const FAKE_KEY_ID: &str = "ed25519:fake1";

impl FakeServer {
    pub async fn start() -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let name = format!("localhost:{port}");
        let key = new_key("fake1");

        let mut keys = to_canonical(json!({
            "server_name": name,
            "valid_until_ts": now_ms() + 24 * 3600 * 1000,
            "verify_keys": { FAKE_KEY_ID: { "key": unpadded_b64(&key.public_key()) } },
            "old_verify_keys": {},
        }));
        ruma::signatures::sign_json(&name, &key, &mut keys).expect("sign keys");
        let body = serde_json::to_vec(&keys).expect("keys json");

        let acceptor = tokio_rustls::TlsAcceptor::from(test_ca().server_config());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // One request per connection: read the head, answer, close.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head);
                    let path = line.split_whitespace().nth(1).unwrap_or("");
                    let (status, body) = if path.starts_with("/_matrix/key/v2/server") {
                        ("200 OK", body)
                    } else {
                        (
                            "404 Not Found",
                            br#"{"errcode":"M_UNRECOGNIZED","error":"fake server"}"#.to_vec(),
                        )
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.write_all(&body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        FakeServer { name, key, task }
    }

    pub fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// The `Authorization` header for a request from this server, signed
    /// with its published key.
    pub fn x_matrix(&self, method: &str, uri: &str, destination: &str, content: Option<&Value>) -> String {
        x_matrix_with(&self.key, &self.name, method, uri, destination, content)
    }

    /// The same header signed with a key nobody published.
    pub fn x_matrix_forged(&self, method: &str, uri: &str, destination: &str, content: Option<&Value>) -> String {
        let other = new_key("fake1");
        x_matrix_with(&other, &self.name, method, uri, destination, content)
    }

    /// Adds the content hash and this server's signature to a PDU, and
    /// returns its event ID (room versions 4 and later) with the signed PDU.
    pub fn sign_pdu(&self, pdu: Value, room_version: &str) -> (String, Value) {
        sign_pdu_with(&self.key, &self.name, pdu, room_version)
    }

    /// As [`sign_pdu`](Self::sign_pdu), with a key nobody published.
    pub fn sign_pdu_forged(&self, pdu: Value, room_version: &str) -> (String, Value) {
        sign_pdu_with(&new_key("fake1"), &self.name, pdu, room_version)
    }

    /// A join of `user` to `room` on `dest`, made from its `make_join`
    /// template and signed: its event ID and the PDU, for `send_join`.
    pub async fn signed_join(&self, dest: &str, room: &str, user: &str) -> (String, Value) {
        let uri = format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=12",
            crate::common::enc(room),
            crate::common::enc(user)
        );
        let (status, template) = self.request("GET", dest, &uri, None).await;
        assert_eq!(status, 200, "{template}");
        let mut join = template["event"].clone();
        join["origin_server_ts"] = now_ms().into();
        let version = template["room_version"].as_str().unwrap_or("1").to_owned();
        self.sign_pdu(join, &version)
    }

    /// Sends a signed federation request to `dest` (a server name reached
    /// at `https://<dest>`).
    pub async fn request(&self, method: &str, dest: &str, uri: &str, content: Option<Value>) -> (u16, Value) {
        let auth = self.x_matrix(method, uri, dest, content.as_ref());
        raw_federation(method, dest, uri, Some(auth), content).await
    }
}

/// A federation request with whatever `Authorization` the test gives.
pub async fn raw_federation(
    method: &str,
    dest: &str,
    uri: &str,
    authorization: Option<String>,
    content: Option<Value>,
) -> (u16, Value) {
    let mut req = test_ca()
        .client()
        .request(method.parse().expect("method"), format!("https://{dest}{uri}"));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    if let Some(c) = content {
        req = req.json(&c);
    }
    let res = req.send().await.expect("federation request");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn new_key(version: &str) -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate();
    Ed25519KeyPair::from_der(&doc, version.to_owned()).expect("ed25519 key")
}

fn to_canonical(v: Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(v).expect("canonical json") {
        CanonicalJsonValue::Object(o) => o,
        _ => panic!("not an object"),
    }
}

fn unpadded_b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

fn x_matrix_with(
    key: &Ed25519KeyPair,
    origin: &str,
    method: &str,
    uri: &str,
    destination: &str,
    content: Option<&Value>,
) -> String {
    let mut obj = json!({
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    });
    if let Some(c) = content {
        obj["content"] = c.clone();
    }
    let canonical = ruma::signatures::to_canonical_json_string_for_signing(&to_canonical(obj)).expect("canonical");
    let sig = key.sign(canonical.as_bytes());
    format!(
        r#"X-Matrix origin="{origin}",destination="{destination}",key="{FAKE_KEY_ID}",sig="{}""#,
        sig.base64()
    )
}

fn sign_pdu_with(key: &Ed25519KeyPair, origin: &str, pdu: Value, room_version: &str) -> (String, Value) {
    let version: ruma::RoomVersionId = room_version.try_into().expect("room version");
    let rules = version.rules().expect("known room version");
    let mut obj = to_canonical(pdu);
    ruma::signatures::hash_and_sign_event(origin, key, &mut obj, &rules.redaction).expect("sign pdu");
    let hash = ruma::signatures::reference_hash(&obj, &rules).expect("reference hash");
    let value = serde_json::to_value(&obj).expect("pdu json");
    (format!("${hash}"), value)
}
