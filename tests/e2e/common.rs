//! Starting servers and clients for the tests.

use std::{
    net::TcpListener,
    process::Stdio,
    time::{Duration, Instant},
};

use matrix_sdk::{Client, config::SyncSettings};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// A running `missive` process with its own data directory, on SQLite, or
/// on a fresh PostgreSQL database of its own when `MISSIVE_TEST_POSTGRES`
/// names a server (`postgres://postgres@127.0.0.1`).
pub struct TestServer {
    pub url: String,
    pub port: u16,
    data: std::sync::Arc<tempfile::TempDir>,
    child: Option<Child>,
    env: Vec<(String, String)>,
    database: Option<std::sync::Arc<TestDatabase>>,
}

/// A PostgreSQL database made for one test, dropped after it.
pub struct TestDatabase {
    server: String,
    name: String,
}

impl TestDatabase {
    /// A fresh database on the server `MISSIVE_TEST_POSTGRES` names, if set.
    pub fn from_env() -> Option<TestDatabase> {
        let server = std::env::var("MISSIVE_TEST_POSTGRES").ok().filter(|s| !s.is_empty())?;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "missive_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let db = TestDatabase { server, name };
        db.admin(&[
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name),
            // C collation: text sorts by bytes, as in SQLite.
            &format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'",
                db.name
            ),
        ]);
        Some(db)
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server.trim_end_matches('/'), self.name)
    }

    /// Runs SQL (a dump to restore, say) on this database.
    pub fn load(&self, sql: &str) {
        let (url, sql) = (self.url(), sql.to_owned());
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect to the test database");
            c.batch_execute(&sql).expect("load SQL into the test database");
        })
        .join()
        .expect("database load thread");
    }

    fn admin(&self, statements: &[&str]) {
        let url = format!("{}/postgres", self.server.trim_end_matches('/'));
        let statements: Vec<String> = statements.iter().map(|s| (*s).to_owned()).collect();
        // The synchronous client runs its own runtime: keep it off the test's.
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect to MISSIVE_TEST_POSTGRES");
            for s in statements {
                c.batch_execute(&s).expect("database admin statement");
            }
        })
        .join()
        .expect("database admin thread");
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("MISSIVE_TEST_KEEP_DB").is_none() {
            self.admin(&[&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)]);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl TestServer {
    /// Starts a server with open registration and the given extra environment.
    pub async fn start_with(env: &[(&str, &str)]) -> TestServer {
        let data = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
        let database = TestDatabase::from_env().map(std::sync::Arc::new);
        Self::start_on(data, database, env).await
    }

    async fn start_on(
        data: std::sync::Arc<tempfile::TempDir>,
        database: Option<std::sync::Arc<TestDatabase>>,
        env: &[(&str, &str)],
    ) -> TestServer {
        let port = free_port();
        let mut server = TestServer {
            url: format!("http://127.0.0.1:{port}"),
            port,
            data,
            child: None,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            database,
        };
        server.spawn().await;
        server
    }

    /// Another process serving the same server: same database, same media
    /// directory, its own port (PostgreSQL only).
    pub async fn start_sibling(&self) -> TestServer {
        assert!(self.database.is_some(), "several processes need PostgreSQL");
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Self::start_on(self.data.clone(), self.database.clone(), &env).await
    }

    /// As [`start_sibling`](Self::start_sibling), with some variables
    /// replaced (a process's own listener addresses).
    pub async fn start_sibling_with(&self, overrides: &[(&str, &str)]) -> TestServer {
        assert!(self.database.is_some(), "several processes need PostgreSQL");
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
            .chain(overrides.iter().copied())
            .collect();
        Self::start_on(self.data.clone(), self.database.clone(), &env).await
    }

    /// Starts a server on a data directory (and database) the test prepared.
    pub async fn start_prepared(
        data: tempfile::TempDir,
        database: Option<TestDatabase>,
        env: &[(&str, &str)],
    ) -> TestServer {
        Self::start_on(std::sync::Arc::new(data), database.map(std::sync::Arc::new), env).await
    }

    /// Starts a server on SQLite, whatever `MISSIVE_TEST_POSTGRES` says.
    pub async fn start_sqlite(env: &[(&str, &str)]) -> TestServer {
        let data = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
        let url = format!("sqlite://{}", data.path().join("missive.db").display());
        let mut env = env.to_vec();
        env.push(("MISSIVE_DATABASE_URL", &url));
        Self::start_on(data, None, &env).await
    }

    /// Another server on this one's data directory (media, keys) with the
    /// given extra environment, such as another `MISSIVE_DATABASE_URL`.
    pub async fn start_on_same_data(&self, env: &[(&str, &str)]) -> TestServer {
        Self::start_on(self.data.clone(), None, env).await
    }

    /// The PostgreSQL database the server runs on, if it does.
    pub fn database_url(&self) -> Option<String> {
        self.database.as_ref().map(|d| d.url())
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.data.path().join("server.log")
    }

    /// The process ID of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// What the server has logged so far (empty when `MISSIVE_TEST_LOG`
    /// sends it to the terminal instead).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub async fn start() -> TestServer {
        Self::start_with(&[]).await
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_missive"));
        cmd.env("MISSIVE_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("MISSIVE_DATA_DIR", self.data.path())
            .env("MISSIVE_SERVER_NAME", "localhost")
            .env("MISSIVE_REGISTRATION", "open")
            // Load tests would trip the limits; the rate-limit test turns them on.
            .env("MISSIVE_RATE_LIMITS", "off")
            .env(
                "MISSIVE_LOG",
                std::env::var("MISSIVE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The server logs to stdout: shown when a log level is asked
            // for, else kept in the data directory for tests that read it.
            .stdout(if std::env::var_os("MISSIVE_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(self.log_path())
                        .expect("server log file"),
                )
            })
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(db) = &self.database {
            cmd.env("MISSIVE_DATABASE_URL", db.url());
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start missive"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/_matrix/client/versions", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().expect("kill");
            c.wait().await.expect("wait");
        }
    }

    pub async fn restart(&mut self) {
        self.kill9().await;
        self.spawn().await;
    }

    /// Starts the process again after `kill9`, same port, data and environment.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "server still running");
        self.spawn().await;
    }

    /// Sets (or with `None` removes) an environment variable for the next
    /// start, such as a changed federation allow-list.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// Runs `missive admin …` against this server's data directory.
    pub async fn admin(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_missive"));
        cmd.arg("admin")
            .args(args)
            .env("MISSIVE_DATA_DIR", self.data.path())
            .env("MISSIVE_SERVER_NAME", "localhost")
            .env("MISSIVE_LOG", "warn");
        if let Some(db) = &self.database {
            cmd.env("MISSIVE_DATABASE_URL", db.url());
        }
        cmd.output().await.expect("run admin")
    }
}

/// A raw HTTP session for one user, for exact wire-level checks.
#[derive(Clone)]
pub struct Raw {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
    pub user_id: String,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn errcode(&self) -> &str {
        self.body.get("errcode").and_then(Value::as_str).unwrap_or("")
    }
}

pub async fn request(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<RawBody>,
) -> Reply {
    let mut req = http.request(method.parse().expect("method"), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match body {
        Some(RawBody::Json(v)) => req = req.json(&v),
        Some(RawBody::Bytes(b)) => req = req.header("content-type", "application/json").body(b),
        None => {}
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

pub enum RawBody {
    Json(Value),
    Bytes(Vec<u8>),
}

impl Raw {
    /// Registers a user through the user-interactive flow (dummy stage).
    /// A new session (device) of an existing user, by password.
    pub async fn login(server: &TestServer, username: &str) -> Raw {
        let http = reqwest::Client::new();
        let r = request(
            &http,
            "POST",
            &format!("{}/_matrix/client/v3/login", server.url),
            None,
            Some(RawBody::Json(json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": username },
                "password": password(username),
            }))),
        )
        .await;
        assert_eq!(r.status, 200, "login {username}: {}", r.body);
        Raw {
            base: server.url.clone(),
            http,
            token: r.body["access_token"].as_str().expect("token").to_owned(),
            user_id: r.body["user_id"].as_str().expect("user").to_owned(),
        }
    }

    pub async fn register(server: &TestServer, username: &str) -> Raw {
        let http = reqwest::Client::new();
        let url = format!("{}/_matrix/client/v3/register", server.url);
        let first = request(
            &http,
            "POST",
            &url,
            None,
            Some(RawBody::Json(
                json!({ "username": username, "password": password(username) }),
            )),
        )
        .await;
        assert_eq!(first.status, 401, "register must start UIA: {}", first.body);
        let session = first.body["session"].as_str().expect("session").to_owned();
        let done = request(
            &http,
            "POST",
            &url,
            None,
            Some(RawBody::Json(json!({
                "username": username,
                "password": password(username),
                "auth": { "type": "m.login.dummy", "session": session },
            }))),
        )
        .await;
        assert_eq!(done.status, 200, "register: {}", done.body);
        Raw {
            base: server.url.clone(),
            http,
            token: done.body["access_token"].as_str().expect("token").to_owned(),
            user_id: done.body["user_id"].as_str().expect("user").to_owned(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        request(
            &self.http,
            method,
            &format!("{}{}", self.base, path),
            Some(&self.token),
            body.map(RawBody::Json),
        )
        .await
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        r.body
    }

    /// Uploads a text file; its `mxc://` URI.
    pub async fn upload_text(&self, text: &str) -> String {
        let r = self
            .http
            .post(format!("{}/_matrix/media/v3/upload", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "text/plain")
            .body(text.to_owned())
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        r["content_uri"].as_str().expect("content_uri").to_owned()
    }

    /// The bytes of a media file, through the authenticated endpoint.
    pub async fn download(&self, mxc: &str) -> Vec<u8> {
        let r = self
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/download/{}",
                self.base,
                mxc.trim_start_matches("mxc://")
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "download {mxc}");
        r.bytes().await.unwrap().to_vec()
    }

    pub async fn create_room(&self, body: Value) -> String {
        self.ok("POST", "/_matrix/client/v3/createRoom", Some(body)).await["room_id"]
            .as_str()
            .expect("room")
            .to_owned()
    }

    pub async fn send_text(&self, room: &str, txn: &str, text: &str) -> Reply {
        self.call(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                enc(txn)
            ),
            Some(json!({ "msgtype": "m.text", "body": text })),
        )
        .await
    }

    pub async fn sync_filtered(&self, since: Option<&str>, timeout_ms: u64, filter: &str) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}&filter={}", enc(filter));
        if let Some(s) = since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        self.ok("GET", &path, None).await
    }

    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        self.ok("GET", &path, None).await
    }
}

pub fn password(username: &str) -> String {
    format!("{username}-correct-horse")
}

pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Registers a user and logs in with the matrix-sdk client (encryption on).
pub async fn sdk_client(server: &TestServer, username: &str) -> Client {
    Raw::register(server, username).await;
    sdk_login(server, username).await
}

pub async fn sdk_login(server: &TestServer, username: &str) -> Client {
    let client = Client::builder()
        .homeserver_url(&server.url)
        .build()
        .await
        .expect("client");
    client
        .matrix_auth()
        .login_username(username, &password(username))
        .send()
        .await
        .expect("login");
    client.sync_once(SyncSettings::default()).await.expect("first sync");
    client
}

/// Syncs until `check` is satisfied or the deadline passes.
pub async fn sync_until(client: &Client, what: &str, check: impl FnMut(&Client) -> bool) {
    sync_until_for(client, what, Duration::from_secs(20), check).await
}

/// Syncs `client` until `check` holds, for at most `wait`.
pub async fn sync_until_for(client: &Client, what: &str, wait: Duration, mut check: impl FnMut(&Client) -> bool) {
    let deadline = Instant::now() + wait;
    let settings = SyncSettings::default().timeout(Duration::from_millis(500));
    loop {
        client.sync_once(settings.clone()).await.expect("sync");
        if check(client) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {wait:?} waiting for {what}");
    }
}

impl TestServer {
    /// A handle on an already running server, for registering from tasks.
    pub fn connect(url: &str) -> TestServer {
        TestServer {
            url: url.to_owned(),
            port: 0,
            data: std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            child: None,
            env: vec![],
            database: None,
        }
    }
}
