//! Server signing keys: this server's (published, self-signed), other
//! servers' (fetched from them, checked against their own signature,
//! cached in memory and in the store), and the keys that check an
//! `X-Matrix` request or a signed event.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use missive_store::server_keys::ServerKeyRow;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName, UserId,
    api::federation::{
        authentication::XMatrix,
        discovery::{ServerSigningKeys, get_server_keys},
    },
    serde::{Base64, Raw, base64::Standard},
    signatures::{PublicKeyMap, PublicKeySet},
};

use super::lock;
use crate::{App, Error, Result, services::accounts::now_ms};

/// How long another server's key is trusted at most, whatever it says
/// (the spec's cap).
const MAX_KEY_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;
/// After a fetch that did not give the wanted key, how soon the server's
/// keys may be fetched again (a flood of unknown key IDs costs one fetch).
const REFETCH_AFTER_MISSING: Duration = Duration::from_secs(60);
/// After a failed fetch: sooner, since the server may just be starting.
const REFETCH_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// The most servers whose keys are fetched for one signed object: a
/// forged list of signatures does not make this server call many others.
const MAX_SIGNING_SERVERS: usize = 8;

/// Keys known in this process, and the fetches in progress.
#[derive(Default)]
pub struct KeyCache {
    /// Each server's keys as last read from the store or fetched.
    known: Mutex<HashMap<OwnedServerName, Arc<Vec<ServerKeyRow>>>>,
    /// Each server's last verified keys response, handed on as a notary.
    responses: Mutex<HashMap<OwnedServerName, CanonicalJsonObject>>,
    /// One fetch at a time per server, and when the last one ended how.
    fetches: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<LastFetch>>>>,
}

/// When a server's keys were last fetched, and how it went.
type LastFetch = Option<(Instant, FetchOutcome)>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum FetchOutcome {
    /// The server answered with the key that was wanted: a later need for
    /// another key (the server rotated its key) may fetch again at once.
    Found,
    /// The server answered without the wanted key: not asked again soon.
    Missing,
    Failed,
}

impl App {
    /// Whether this server federates: only with a federation listener.
    pub fn federation_enabled(&self) -> bool {
        self.config.federation.listen.is_some()
    }

    /// Whether the allow-list lets this server federate with `server`
    /// (always true for our own name).
    pub fn server_allowed(&self, server: &ServerName) -> bool {
        server == self.server_name || self.federation.allows(server)
    }

    /// This server's `GET /_matrix/key/v2/server` answer, signed by its key.
    pub async fn own_server_keys(&self) -> Result<CanonicalJsonObject> {
        let old = self.store.old_server_keys().await?;
        let key_id = format!("ed25519:{}", self.key.version());
        let valid_secs = i64::try_from(self.config.federation.key_valid_secs).unwrap_or(i64::MAX / 2000);
        let json = serde_json::json!({
            "server_name": self.server_name,
            "verify_keys": { key_id: { "key": Base64::<Standard>::new(self.key.public_key().to_vec()).encode() } },
            "old_verify_keys": old
                .into_iter()
                .map(|k| (k.key_id, serde_json::json!({ "key": k.public_key, "expired_ts": k.expired_ts })))
                .collect::<serde_json::Map<_, _>>(),
            "valid_until_ts": now_ms().saturating_add(valid_secs.saturating_mul(1000)),
        });
        let mut obj = to_object(json)?;
        ruma::signatures::sign_json(self.server_name.as_str(), &self.key, &mut obj)
            .map_err(|e| Error::Internal(format!("signing our keys: {e}")))?;
        Ok(obj)
    }

    /// The keys of `server` good for what it signed at `at_ts` (ms), fetched
    /// from it when one of `key_ids` is unknown or not valid then.
    pub async fn server_verify_keys(&self, server: &ServerName, key_ids: &[&str], at_ts: i64) -> Result<PublicKeySet> {
        if server == self.server_name {
            return self.own_verify_keys(at_ts).await;
        }
        let satisfied = |rows: &[ServerKeyRow]| {
            key_ids
                .iter()
                .all(|id| rows.iter().any(|r| r.key_id == *id && r.valid_until_ts >= at_ts))
                && rows.iter().any(|r| r.valid_until_ts >= at_ts)
        };
        let cached = lock(&self.federation.keys.known).get(server).cloned();
        let rows = match cached {
            Some(rows) if satisfied(&rows) => rows,
            _ => self.refresh_server_keys(server, satisfied).await?,
        };
        Ok(usable(&rows, at_ts))
    }

    /// The verify keys of every server that signed `obj` (a PDU or any
    /// signed JSON), fetched as needed. A server whose keys cannot be had is
    /// left out: checking the signatures then says which one is missing.
    pub async fn public_keys_for(&self, obj: &CanonicalJsonObject) -> Result<PublicKeyMap> {
        let mut map = PublicKeyMap::new();
        let Some(CanonicalJsonValue::Object(signatures)) = obj.get("signatures") else {
            return Ok(map);
        };
        let at_ts = match obj.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
            _ => now_ms(),
        };
        // The sender's server signs every event: its keys come first.
        let sender_server = match obj.get("sender") {
            Some(CanonicalJsonValue::String(s)) => UserId::parse(s).ok().map(|u| u.server_name().to_owned()),
            _ => None,
        };
        let mut servers: Vec<&String> = signatures.keys().collect();
        servers.sort_by_key(|s| Some(s.as_str()) != sender_server.as_ref().map(|s| s.as_str()));
        for server in servers.into_iter().take(MAX_SIGNING_SERVERS) {
            let Ok(name) = <&ServerName>::try_from(server.as_str()) else {
                continue;
            };
            if !self.server_allowed(name) {
                continue;
            }
            let key_ids: Vec<&str> = match &signatures[server] {
                CanonicalJsonValue::Object(sigs) => sigs.keys().map(String::as_str).collect(),
                _ => continue,
            };
            match self.server_verify_keys(name, &key_ids, at_ts).await {
                Ok(keys) if !keys.is_empty() => {
                    map.insert(server.clone(), keys);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(%server, error = %e, "no keys for a signing server"),
            }
        }
        Ok(map)
    }

    /// The keys to check an `X-Matrix` request with, after the checks that
    /// need no key: the request is for us (else 401) and from an allowed
    /// server (else 403). A key that cannot be had is a 401.
    pub async fn x_matrix_keys(&self, x: &XMatrix) -> Result<PublicKeyMap> {
        if x.destination.as_deref().is_some_and(|d| d != self.server_name) {
            return Err(Error::unauthorized("The request is addressed to another server"));
        }
        if !self.server_allowed(&x.origin) {
            return Err(Error::forbidden(format!(
                "Federation with {} is not allowed by this server",
                x.origin
            )));
        }
        let keys = self
            .server_verify_keys(&x.origin, &[x.key.as_str()], now_ms())
            .await
            .map_err(|e| Error::unauthorized(format!("The keys of {} could not be checked: {e}", x.origin)))?;
        if !keys.contains_key(x.key.as_str()) {
            return Err(Error::unauthorized(format!("Unknown key {} of {}", x.key, x.origin)));
        }
        Ok(PublicKeyMap::from([(x.origin.to_string(), keys)]))
    }

    /// The notary's answer for a server: its own keys response, with our
    /// signature added, valid until at least `minimum_valid_until_ts` if it
    /// can be had; none if it cannot. Only with `may_fetch` is the server
    /// asked; otherwise the answer is what this server already knows.
    pub async fn notary_server_keys(
        &self,
        server: &ServerName,
        minimum_valid_until_ts: i64,
        may_fetch: bool,
    ) -> Result<Vec<Raw<ServerSigningKeys>>> {
        if server == self.server_name {
            return Ok(vec![to_raw(&self.own_server_keys().await?)?]);
        }
        if !self.server_allowed(server) {
            return Ok(vec![]);
        }
        let fresh_enough = |app: &App| {
            lock(&app.federation.keys.responses)
                .get(server)
                .filter(|obj| valid_until(obj) >= minimum_valid_until_ts)
                .cloned()
        };
        let mut obj = match fresh_enough(self) {
            Some(obj) => obj,
            None if !may_fetch => match lock(&self.federation.keys.responses).get(server).cloned() {
                Some(obj) => obj,
                None => return Ok(vec![]),
            },
            None => {
                // Refetched (unless it just was), whatever the store holds.
                self.refresh_server_keys(server, |_| false).await?;
                match fresh_enough(self) {
                    Some(obj) => obj,
                    None => return Ok(vec![]),
                }
            }
        };
        ruma::signatures::sign_json(self.server_name.as_str(), &self.key, &mut obj)
            .map_err(|e| Error::Internal(format!("signing as a notary: {e}")))?;
        Ok(vec![to_raw(&obj)?])
    }

    async fn own_verify_keys(&self, at_ts: i64) -> Result<PublicKeySet> {
        let mut keys = PublicKeySet::new();
        keys.insert(
            format!("ed25519:{}", self.key.version()),
            Base64::new(self.key.public_key().to_vec()),
        );
        for old in self.store.old_server_keys().await? {
            if old.expired_ts >= at_ts
                && let Ok(key) = Base64::parse(&old.public_key)
            {
                keys.insert(old.key_id, key);
            }
        }
        Ok(keys)
    }

    /// Reads the server's keys again and, if they still do not do, fetches
    /// them from it: one fetch at a time per server, and not again soon
    /// after the last.
    async fn refresh_server_keys(
        &self,
        server: &ServerName,
        satisfied: impl Fn(&[ServerKeyRow]) -> bool,
    ) -> Result<Arc<Vec<ServerKeyRow>>> {
        let fetch = lock(&self.federation.keys.fetches)
            .entry(server.to_owned())
            .or_default()
            .clone();
        let mut last = fetch.lock().await;
        // Another task, or another process, may have fetched them meanwhile.
        let rows = self.load_server_keys(server).await?;
        if satisfied(&rows) {
            return Ok(rows);
        }
        if let Some((at, outcome)) = *last {
            let wait = match outcome {
                FetchOutcome::Found => Duration::ZERO,
                FetchOutcome::Missing => REFETCH_AFTER_MISSING,
                FetchOutcome::Failed => REFETCH_AFTER_FAILURE,
            };
            if at.elapsed() < wait {
                return Ok(rows);
            }
        }
        match self.fetch_server_keys(server).await {
            Ok((obj, new_rows)) => {
                self.store.store_server_keys(new_rows).await?;
                lock(&self.federation.keys.responses).insert(server.to_owned(), obj);
                let rows = self.load_server_keys(server).await?;
                let outcome = if satisfied(&rows) {
                    FetchOutcome::Found
                } else {
                    FetchOutcome::Missing
                };
                *last = Some((Instant::now(), outcome));
                Ok(rows)
            }
            Err(e) => {
                *last = Some((Instant::now(), FetchOutcome::Failed));
                tracing::warn!(%server, error = %e, "could not fetch a server's keys");
                Ok(rows)
            }
        }
    }

    async fn load_server_keys(&self, server: &ServerName) -> Result<Arc<Vec<ServerKeyRow>>> {
        let rows = Arc::new(self.store.server_keys(server.to_string()).await?);
        lock(&self.federation.keys.known).insert(server.to_owned(), rows.clone());
        Ok(rows)
    }

    /// `GET /_matrix/key/v2/server` on the server itself, checked.
    async fn fetch_server_keys(&self, server: &ServerName) -> Result<(CanonicalJsonObject, Vec<ServerKeyRow>)> {
        let resp = self
            .federation_request_unsigned(server, get_server_keys::v2::Request::new())
            .await?;
        let obj: CanonicalJsonObject = serde_json::from_str(resp.server_key.json().get())
            .map_err(|e| Error::bad_json(format!("keys of {server}: {e}")))?;
        let rows =
            verified_key_rows(server, &obj, now_ms()).map_err(|e| Error::bad_json(format!("keys of {server}: {e}")))?;
        Ok((obj, rows))
    }
}

/// The keys of a keys response, if it is the named server's and signed by
/// a key it lists: each verify key valid until the response says (at most
/// seven days from `now`), each old key until it expired.
fn verified_key_rows(server: &ServerName, obj: &CanonicalJsonObject, now: i64) -> Result<Vec<ServerKeyRow>, String> {
    let keys: ServerSigningKeys =
        serde_json::from_value(serde_json::to_value(obj).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if keys.server_name != server {
        return Err(format!("the response is for {}", keys.server_name));
    }
    if keys.verify_keys.is_empty() {
        return Err("no verify keys".into());
    }
    let own: PublicKeySet = keys
        .verify_keys
        .iter()
        .map(|(id, k)| (id.to_string(), k.key.clone()))
        .collect();
    // Only the server's own signature is checked here: a notary's would
    // need the notary's keys.
    let mut self_signed = obj.clone();
    let Some(CanonicalJsonValue::Object(sigs)) = obj.get("signatures") else {
        return Err("not signed".into());
    };
    let Some(own_sigs) = sigs.get(server.as_str()) else {
        return Err("not signed by the server".into());
    };
    self_signed.insert(
        "signatures".into(),
        CanonicalJsonValue::Object(BTreeMap::from([(server.to_string(), own_sigs.clone())])),
    );
    ruma::signatures::verify_json(&PublicKeyMap::from([(server.to_string(), own)]), &self_signed)
        .map_err(|e| format!("bad signature: {e}"))?;
    let valid_until = i64::from(keys.valid_until_ts.get()).min(now.saturating_add(MAX_KEY_VALIDITY_MS));
    let row = |key_id: String, key: &Base64, valid_until_ts: i64, expired_ts: Option<i64>| ServerKeyRow {
        server_name: server.to_string(),
        key_id,
        public_key: key.encode(),
        valid_until_ts,
        expired_ts,
        fetched_ts: now,
    };
    let mut rows: Vec<ServerKeyRow> = keys
        .verify_keys
        .iter()
        .map(|(id, k)| row(id.to_string(), &k.key, valid_until, None))
        .collect();
    for (id, k) in &keys.old_verify_keys {
        if !keys.verify_keys.contains_key(id) {
            let expired = i64::from(k.expired_ts.get());
            rows.push(row(id.to_string(), &k.key, expired, Some(expired)));
        }
    }
    Ok(rows)
}

/// The keys good at `at_ts`.
fn usable(rows: &[ServerKeyRow], at_ts: i64) -> PublicKeySet {
    rows.iter()
        .filter(|r| r.valid_until_ts >= at_ts)
        .filter_map(|r| Some((r.key_id.clone(), Base64::parse(&r.public_key).ok()?)))
        .collect()
}

fn valid_until(obj: &CanonicalJsonObject) -> i64 {
    match obj.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
        _ => 0,
    }
}

fn to_object(json: serde_json::Value) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(json) {
        Ok(CanonicalJsonValue::Object(obj)) => Ok(obj),
        _ => Err(Error::Internal("not a canonical JSON object".into())),
    }
}

fn to_raw<T>(obj: &CanonicalJsonObject) -> Result<Raw<T>> {
    super::raw_json(obj).map(Raw::from_json)
}

#[cfg(test)]
mod tests {
    use ruma::signatures::Ed25519KeyPair;

    use super::*;

    fn key_pair(version: &str) -> Ed25519KeyPair {
        let der = Ed25519KeyPair::generate();
        Ed25519KeyPair::from_der(&der, version.to_owned()).unwrap()
    }

    fn keys_response(server: &str, key: &Ed25519KeyPair, valid_until_ts: i64) -> CanonicalJsonObject {
        let mut obj = to_object(serde_json::json!({
            "server_name": server,
            "verify_keys": { format!("ed25519:{}", key.version()): { "key": Base64::<Standard>::new(key.public_key().to_vec()).encode() } },
            "old_verify_keys": { "ed25519:old": { "key": "AAAA", "expired_ts": 5 } },
            "valid_until_ts": valid_until_ts,
        }))
        .unwrap();
        ruma::signatures::sign_json(server, key, &mut obj).unwrap();
        obj
    }

    #[test]
    fn a_self_signed_keys_response_is_accepted_and_capped() {
        let server = <&ServerName>::try_from("remote.example").unwrap();
        let key = key_pair("k1");
        let far = 100 * MAX_KEY_VALIDITY_MS;
        let mut obj = keys_response("remote.example", &key, far);
        // A notary's signature does not get in the way.
        ruma::signatures::sign_json("notary.example", &key_pair("n"), &mut obj).unwrap();
        let rows = verified_key_rows(server, &obj, 1000).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key_id, "ed25519:k1");
        assert_eq!(rows[0].valid_until_ts, 1000 + MAX_KEY_VALIDITY_MS);
        assert_eq!((rows[1].key_id.as_str(), rows[1].expired_ts), ("ed25519:old", Some(5)));
        assert_eq!(usable(&rows, 1000).len(), 1);
    }

    #[test]
    fn a_keys_response_signed_by_another_key_or_for_another_server_is_refused() {
        let server = <&ServerName>::try_from("remote.example").unwrap();
        let mut obj = keys_response("remote.example", &key_pair("k1"), 10);
        // Signed with a key of the same ID that is not the listed one.
        let forged = keys_response("remote.example", &key_pair("k1"), 10);
        obj.insert("signatures".into(), forged["signatures"].clone());
        assert!(verified_key_rows(server, &obj, 1).is_err());
        let other = keys_response("other.example", &key_pair("k1"), 10);
        assert!(verified_key_rows(server, &other, 1).is_err());
    }
}
