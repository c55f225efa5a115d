//! A minimal Matrix client over the standard Client-Server API, with
//! hand-written JSON so it works against any homeserver.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

/// How accounts are created.
#[derive(Clone, Debug)]
pub enum Registration {
    /// `POST /_matrix/client/v3/register` completing the `m.login.dummy` stage.
    Open,
    /// Synapse's `/_synapse/admin/v1/register` with an HMAC-SHA1 of the shared secret.
    SharedSecret(String),
}

/// A homeserver reached over HTTP, through one base URL per process.
///
/// Each simulated client keeps to one base URL (sliding-sync connections and
/// user-interactive auth sessions may live in one process only): client `i`
/// uses `bases[i % bases.len()]`, and every request made as a [`User`] goes
/// to the base URL the user's device was created at.
#[derive(Clone)]
pub struct Server {
    pub bases: Arc<Vec<String>>,
    pub http: reqwest::Client,
    pub registration: Registration,
    /// Requests answered 429 `M_LIMIT_EXCEEDED`: a throttled server makes every figure meaningless.
    pub rate_limited: Arc<AtomicU64>,
}

/// A logged-in device.
#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub localpart: String,
    pub device_id: String,
    pub token: String,
    /// The base URL this device was created at, and talks to.
    pub base: Arc<str>,
}

/// An answer that was not a 2xx.
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub body: Value,
    /// The request: method and URL without its query string.
    pub request: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} to {}: {}", self.status, self.request, self.body)
    }
}

impl std::error::Error for HttpError {}

impl HttpError {
    pub fn errcode(&self) -> &str {
        self.body.get("errcode").and_then(Value::as_str).unwrap_or("")
    }
}

pub fn password(localpart: &str) -> String {
    format!("bench-{localpart}-correct-horse-battery")
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Server {
    pub fn new(bases: &[String], registration: Registration, max_connections: usize) -> anyhow::Result<Server> {
        if bases.is_empty() {
            bail!("no base URL");
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(max_connections)
            .timeout(Duration::from_secs(180))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Server {
            bases: Arc::new(bases.iter().map(|b| b.trim_end_matches('/').to_owned()).collect()),
            http,
            registration,
            rate_limited: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The base URL of simulated client `client` (round-robin over the processes).
    pub fn base(&self, client: usize) -> &str {
        &self.bases[client % self.bases.len()]
    }

    /// Sends one request to the first base URL; returns the JSON body of a 2xx and the body length.
    pub async fn call_sized(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(Value, usize)> {
        self.call_sized_at(self.base(0), method, path, token, body).await
    }

    /// Sends one request to `base`; returns the JSON body of a 2xx and the body length.
    pub async fn call_sized_at(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(Value, usize)> {
        let request = format!("{method} {base}{}", path.split('?').next().unwrap_or(path));
        let mut req = self.http.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(b)?);
        }
        let res = req.send().await.with_context(|| request.clone())?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            if status == 429 {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            return Err(HttpError {
                status,
                body: value,
                request,
            }
            .into());
        }
        Ok((value, bytes.len()))
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        self.call_at(self.base(0), method, path, token, body).await
    }

    pub async fn call_at(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        Ok(self.call_sized_at(base, method, path, token, body).await?.0)
    }

    /// `GET /_matrix/client/versions` at one base URL, to check that a process is up.
    pub async fn versions_at(&self, base: &str) -> anyhow::Result<Value> {
        self.call_at(base, reqwest::Method::GET, "/_matrix/client/versions", None, None)
            .await
    }

    /// Creates an account as simulated client `client`, and returns its first
    /// device. Every step (both requests of the user-interactive auth, or the
    /// admin API's nonce and registration) goes to that client's base URL.
    pub async fn register(&self, client: usize, localpart: &str) -> anyhow::Result<User> {
        let base = self.base(client);
        let pw = password(localpart);
        let done = match &self.registration {
            Registration::Open => {
                let path = "/_matrix/client/v3/register";
                let body = json!({
                    "username": localpart,
                    "password": pw,
                    "initial_device_display_name": "missive-bench",
                });
                match self.call_at(base, reqwest::Method::POST, path, None, Some(&body)).await {
                    Ok(v) => v,
                    Err(e) => {
                        let Some(h) = e.downcast_ref::<HttpError>().filter(|h| h.status == 401) else {
                            return Err(e.context(format!("registering {localpart}")));
                        };
                        let session = h.body["session"].as_str().unwrap_or_default().to_owned();
                        let mut body = body.clone();
                        body["auth"] = json!({ "type": "m.login.dummy", "session": session });
                        self.call_at(base, reqwest::Method::POST, path, None, Some(&body))
                            .await
                            .with_context(|| format!("registering {localpart} (m.login.dummy stage)"))?
                    }
                }
            }
            Registration::SharedSecret(secret) => {
                let path = "/_synapse/admin/v1/register";
                let nonce = self.call_at(base, reqwest::Method::GET, path, None, None).await?["nonce"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no nonce from {path}"))?
                    .to_owned();
                let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())?;
                mac.update(nonce.as_bytes());
                mac.update(b"\0");
                mac.update(localpart.as_bytes());
                mac.update(b"\0");
                mac.update(pw.as_bytes());
                mac.update(b"\0");
                mac.update(b"notadmin");
                let body = json!({
                    "nonce": nonce,
                    "username": localpart,
                    "password": pw,
                    "admin": false,
                    "mac": hex(&mac.finalize().into_bytes()),
                });
                self.call_at(base, reqwest::Method::POST, path, None, Some(&body))
                    .await
                    .with_context(|| format!("registering {localpart} with the shared secret"))?
            }
        };
        user_from(base, localpart, &done)
    }

    /// Logs in with the password as simulated client `client`, creating a new
    /// device that talks to that client's base URL.
    pub async fn login(&self, client: usize, localpart: &str) -> anyhow::Result<User> {
        let base = self.base(client);
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": localpart },
            "password": password(localpart),
            "initial_device_display_name": "missive-bench",
        });
        let v = self
            .call(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(&body))
            .await
            .with_context(|| format!("logging in {localpart}"))?;
        user_from(base, localpart, &v)
    }
}

fn user_from(base: &str, localpart: &str, v: &Value) -> anyhow::Result<User> {
    let field = |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no {k} in {v}"));
    Ok(User {
        user_id: field("user_id")?,
        localpart: localpart.to_owned(),
        device_id: field("device_id")?,
        token: field("access_token")?,
        base: base.into(),
    })
}

/// Requests made as one user, to the base URL its device was created at.
impl User {
    pub async fn get(&self, s: &Server, path: &str) -> anyhow::Result<Value> {
        s.call_at(&self.base, reqwest::Method::GET, path, Some(&self.token), None)
            .await
    }

    pub async fn post(&self, s: &Server, path: &str, body: &Value) -> anyhow::Result<Value> {
        s.call_at(&self.base, reqwest::Method::POST, path, Some(&self.token), Some(body))
            .await
    }

    pub async fn put(&self, s: &Server, path: &str, body: &Value) -> anyhow::Result<Value> {
        s.call_at(&self.base, reqwest::Method::PUT, path, Some(&self.token), Some(body))
            .await
    }

    /// A request with a body and its size, as this user.
    pub async fn call_sized(
        &self,
        s: &Server,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(Value, usize)> {
        s.call_sized_at(&self.base, method, path, Some(&self.token), body).await
    }

    /// Creates a public room (anyone may join) and returns its ID.
    pub async fn create_room(&self, s: &Server, name: &str) -> anyhow::Result<String> {
        let v = self
            .post(
                s,
                "/_matrix/client/v3/createRoom",
                &json!({ "preset": "public_chat", "name": name }),
            )
            .await?;
        v["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no room_id in {v}"))
    }

    pub async fn join(&self, s: &Server, room_id: &str) -> anyhow::Result<()> {
        self.post(s, &format!("/_matrix/client/v3/join/{}", enc(room_id)), &json!({}))
            .await
            .with_context(|| format!("{} joining {room_id}", self.user_id))?;
        Ok(())
    }

    /// Sends an `m.room.message` and returns its event ID.
    pub async fn send_text(&self, s: &Server, room_id: &str, txn: &str, text: &str) -> anyhow::Result<String> {
        let v = self
            .put(
                s,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                    enc(room_id),
                    enc(txn)
                ),
                &json!({ "msgtype": "m.text", "body": text }),
            )
            .await?;
        v["event_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no event_id in {v}"))
    }

    /// `GET /sync` with an inline filter; returns the body and its size in bytes.
    pub async fn sync(
        &self,
        s: &Server,
        filter: &str,
        since: Option<&str>,
        timeout_ms: u64,
    ) -> anyhow::Result<(Value, usize)> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}&filter={}", enc(filter));
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(&enc(since));
        }
        self.call_sized(s, reqwest::Method::GET, &path, None).await
    }
}

/// Whether an error is the server saying it does not know the endpoint.
pub fn is_unrecognized(e: &anyhow::Error) -> bool {
    e.downcast_ref::<HttpError>()
        .is_some_and(|h| h.errcode() == "M_UNRECOGNIZED" || h.status == 404 || h.status == 405)
}

/// Runs `f` over `items` with at most `concurrency` in flight, failing on the first error.
pub async fn for_each_concurrent<T, F, Fut, R>(items: Vec<T>, concurrency: usize, f: F) -> anyhow::Result<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    use futures_util::{StreamExt, stream};
    let mut out = Vec::with_capacity(items.len());
    let mut s = stream::iter(items.into_iter().map(f)).buffered(concurrency.max(1));
    while let Some(r) = s.next().await {
        out.push(r?);
    }
    Ok(out)
}

/// Fails if `deadline` has passed: every set-up loop is bounded in time.
pub fn check_deadline(deadline: std::time::Instant, what: &str) -> anyhow::Result<()> {
    if std::time::Instant::now() > deadline {
        bail!("{what}: time limit reached");
    }
    Ok(())
}
