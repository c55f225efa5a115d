//! End-to-end encryption key distribution: device keys, one-time and
//! fallback keys, cross-signing keys and their signatures. The server
//! checks shapes and signatures and hands keys out; it never sees a
//! private key.

use std::collections::{BTreeMap, BTreeSet};

use http::StatusCode;
use missive_store::{
    StoreError,
    e2ee::{CrossSigningKeyRow, KeyCounts, KeyUpload, OneTimeKeyRow, SignatureRow},
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedServerName,
    OwnedUserId, ServerName, UInt, UserId,
    api::client::keys::{claim_keys, get_keys, upload_signatures::v3::Failure},
    encryption::OneTimeKey,
    serde::{Base64, Raw},
};
use serde_json::{Value, json, value::RawValue};

use crate::{App, Error, Result, services::accounts::Session, services::sync::SyncToken};

/// `400 M_INVALID_SIGNATURE`: a signature that does not verify.
pub fn invalid_signature(message: impl Into<String>) -> Error {
    Error::Matrix {
        status: StatusCode::BAD_REQUEST,
        errcode: "M_INVALID_SIGNATURE",
        message: message.into(),
        extra: None,
    }
}

/// How long a `/keys/query` or `/keys/claim` waits for other servers.
const REMOTE_KEYS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

fn object(json: &str) -> Result<CanonicalJsonObject> {
    serde_json::from_str(json).map_err(|e| Error::bad_json(format!("Invalid key object: {e}")))
}

pub(crate) fn canonical_string(obj: &CanonicalJsonObject) -> Result<String> {
    serde_json::to_string(obj).map_err(|e| Error::Internal(e.to_string()))
}

fn get_str<'a>(obj: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match obj.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

fn get_obj<'a>(obj: &'a CanonicalJsonObject, key: &str) -> Option<&'a CanonicalJsonObject> {
    match obj.get(key) {
        Some(CanonicalJsonValue::Object(o)) => Some(o),
        _ => None,
    }
}

/// The signatures on an object: (signer, key ID, signature).
fn signatures_of(obj: &CanonicalJsonObject) -> Vec<(String, String, String)> {
    let mut out = vec![];
    if let Some(sigs) = get_obj(obj, "signatures") {
        for (signer, by) in sigs {
            if let CanonicalJsonValue::Object(by) = by {
                for (key_id, sig) in by {
                    if let CanonicalJsonValue::String(sig) = sig {
                        out.push((signer.clone(), key_id.clone(), sig.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Whether `object` carries a valid signature by `signer` with the ed25519
/// key `key_id` whose public key (unpadded base64) is `public_key`. Only
/// that one signature is checked; the others are ignored.
pub fn verify_signature(object: &CanonicalJsonObject, signer: &str, key_id: &str, public_key: &str) -> bool {
    let Some(sig) = get_obj(object, "signatures")
        .and_then(|s| get_obj(s, signer))
        .and_then(|s| s.get(key_id))
        .cloned()
    else {
        return false;
    };
    let Ok(public_key) = Base64::parse(public_key) else {
        return false;
    };
    let mut one = CanonicalJsonObject::new();
    one.insert(key_id.to_owned(), sig);
    let mut sigs = CanonicalJsonObject::new();
    sigs.insert(signer.to_owned(), CanonicalJsonValue::Object(one));
    let mut obj = object.clone();
    obj.insert("signatures".to_owned(), CanonicalJsonValue::Object(sigs));
    let keys = BTreeMap::from([(signer.to_owned(), BTreeMap::from([(key_id.to_owned(), public_key)]))]);
    ruma::signatures::verify_json(&keys, &obj).is_ok()
}

/// The ed25519 key a device signs with, from its keys object.
pub(crate) fn device_ed25519(device_keys: &CanonicalJsonObject, device_id: &str) -> Option<String> {
    get_obj(device_keys, "keys")
        .and_then(|k| get_str(k, &format!("ed25519:{device_id}")))
        .map(str::to_owned)
}

/// A checked cross-signing key.
struct CrossKey {
    obj: CanonicalJsonObject,
    public_key: String,
}

impl CrossKey {
    fn row(&self, key_type: &str) -> Result<CrossSigningKeyRow> {
        Ok(CrossSigningKeyRow {
            key_type: key_type.to_owned(),
            public_key: self.public_key.clone(),
            json: canonical_string(&self.obj)?,
        })
    }
}

/// Parses and checks a cross-signing key of `user` for `usage`.
fn parse_cross_key(json: &str, user: &UserId, usage: &str) -> Result<CrossKey> {
    let mut obj = object(json)?;
    obj.remove("unsigned");
    if get_str(&obj, "user_id") != Some(user.as_str()) {
        return Err(Error::invalid_param(format!(
            "The {usage} key's user_id must be your user ID"
        )));
    }
    let usages = match obj.get("usage") {
        Some(CanonicalJsonValue::Array(a)) => a.clone(),
        _ => return Err(Error::bad_json(format!("The {usage} key has no usage"))),
    };
    if !usages
        .iter()
        .any(|u| matches!(u, CanonicalJsonValue::String(s) if s == usage))
    {
        return Err(Error::invalid_param(format!(
            "The {usage} key's usage must include {usage}"
        )));
    }
    let keys = get_obj(&obj, "keys").ok_or_else(|| Error::bad_json(format!("The {usage} key has no keys")))?;
    let mut entries = keys.iter();
    let (Some((id, CanonicalJsonValue::String(value))), None) = (entries.next(), entries.next()) else {
        return Err(Error::invalid_param(format!(
            "The {usage} key must have exactly one public key"
        )));
    };
    if id.strip_prefix("ed25519:") != Some(value.as_str())
        || Base64::<ruma::serde::base64::Standard>::parse(value).is_err()
    {
        return Err(Error::invalid_param(format!(
            "The {usage} key's ID must be ed25519:<its base64 public key>"
        )));
    }
    Ok(CrossKey {
        public_key: value.clone(),
        obj,
    })
}

/// Adds separately uploaded signatures to a key object.
fn merge_signatures<'a>(obj: &mut Value, sigs: impl Iterator<Item = &'a SignatureRow>) {
    for s in sigs {
        if !obj.get("signatures").is_some_and(Value::is_object) {
            obj["signatures"] = json!({});
        }
        let by = &mut obj["signatures"][&s.signer_user];
        if !by.is_object() {
            *by = json!({});
        }
        by[&s.signer_key_id] = s.signature.clone().into();
    }
}

fn counts_response(c: &KeyCounts) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    let mut out: BTreeMap<OneTimeKeyAlgorithm, UInt> = c
        .one_time
        .iter()
        .map(|(alg, n)| (OneTimeKeyAlgorithm::from(alg.as_str()), UInt::new_saturating(*n)))
        .collect();
    // Clients replenish their keys only when told the count, zero included.
    out.entry(OneTimeKeyAlgorithm::SignedCurve25519).or_insert(UInt::MIN);
    out
}

/// One-time key counts and unused fallback key types for `/sync`.
pub fn sync_key_counts(c: &KeyCounts) -> (BTreeMap<OneTimeKeyAlgorithm, UInt>, Vec<OneTimeKeyAlgorithm>) {
    (
        counts_response(c),
        c.unused_fallback
            .iter()
            .map(|a| OneTimeKeyAlgorithm::from(a.as_str()))
            .collect(),
    )
}

fn failure(errcode: &str, error: &str) -> Result<Failure> {
    serde_json::from_value(json!({ "errcode": errcode, "error": error })).map_err(|e| Error::Internal(e.to_string()))
}

impl App {
    /// `/keys/upload`: checks and stores the device's keys; returns its
    /// one-time key counts.
    pub async fn upload_keys(
        &self,
        session: &Session,
        device_keys: Option<&RawValue>,
        one_time_keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
        fallback_keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let (user, device) = (session.user_id.as_str(), session.device_id.as_str());
        let mut upload = KeyUpload {
            user_id: user.to_owned(),
            device_id: device.to_owned(),
            ..Default::default()
        };
        let ed25519 = match device_keys {
            Some(raw) => {
                let obj = self.check_device_keys(raw.get(), &session.user_id, device)?;
                upload.device_keys = Some(canonical_string(&obj)?);
                device_ed25519(&obj, device)
            }
            None => match self.store.device_keys(user.to_owned(), device.to_owned()).await? {
                Some(json) => device_ed25519(&object(&json)?, device),
                None => None,
            },
        };
        upload.one_time_keys = check_one_time_keys(one_time_keys, user, device, ed25519.as_deref(), false)?;
        upload.fallback_keys = check_one_time_keys(fallback_keys, user, device, ed25519.as_deref(), true)?;
        let changes_device_list = upload.device_keys.is_some();
        let counts = match self.store.upload_keys(upload).await {
            Err(StoreError::Exists) => {
                return Err(Error::invalid_param(
                    "A one-time key with this ID is already stored with other content",
                ));
            }
            r => r?,
        };
        if changes_device_list {
            self.notify();
            self.announce_device(&session.user_id, device).await;
        }
        Ok(counts_response(&counts))
    }

    /// Checks uploaded device keys: owner, shape and self-signature.
    /// Returns them without `unsigned`.
    pub(crate) fn check_device_keys(&self, json: &str, user: &UserId, device: &str) -> Result<CanonicalJsonObject> {
        serde_json::from_str::<ruma::encryption::DeviceKeys>(json)
            .map_err(|e| Error::bad_json(format!("Invalid device_keys: {e}")))?;
        let mut obj = object(json)?;
        if get_str(&obj, "user_id") != Some(user.as_str()) {
            return Err(Error::invalid_param("device_keys.user_id does not match your user ID"));
        }
        if get_str(&obj, "device_id") != Some(device) {
            return Err(Error::invalid_param(
                "device_keys.device_id does not match your device ID",
            ));
        }
        let ed25519 = device_ed25519(&obj, device)
            .ok_or_else(|| Error::invalid_param(format!("device_keys.keys has no ed25519:{device} key")))?;
        if !verify_signature(&obj, user.as_str(), &format!("ed25519:{device}"), &ed25519) {
            return Err(invalid_signature("device_keys are not signed by their own ed25519 key"));
        }
        obj.remove("unsigned");
        Ok(obj)
    }

    /// `/keys/query`: local users' keys from the store, remote users' from
    /// their servers (asked in parallel; a server that fails or is slow is
    /// listed in `failures`).
    pub async fn query_keys(
        &self,
        requester: &UserId,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<get_keys::v3::Response> {
        let mut resp = self.local_keys(Some(requester), wanted).await?;
        let remote = self.remote_users_by_server(wanted);
        if remote.is_empty() {
            return Ok(resp);
        }
        let asks = remote.into_iter().map(|(server, users)| async move {
            let req = ruma::api::federation::keys::get_keys::v1::Request::new(users);
            let r = self.remote_call(&server, req).await;
            (server, r)
        });
        for (server, r) in futures_util::future::join_all(asks).await {
            let remote = match r {
                Ok(r) => r,
                Err(failure) => {
                    resp.failures.insert(server.to_string(), failure);
                    continue;
                }
            };
            // A server speaks only for its own users.
            let own = |u: &OwnedUserId| u.server_name() == server;
            resp.device_keys
                .extend(remote.device_keys.into_iter().filter(|(u, _)| own(u)));
            resp.master_keys
                .extend(remote.master_keys.into_iter().filter(|(u, _)| own(u)));
            resp.self_signing_keys
                .extend(remote.self_signing_keys.into_iter().filter(|(u, _)| own(u)));
        }
        Ok(resp)
    }

    /// Asks another server, within [`REMOTE_KEYS_TIMEOUT`]; a failure comes
    /// back as the `failures` entry clients are shown.
    async fn remote_call<R>(&self, server: &ServerName, req: R) -> std::result::Result<R::IncomingResponse, Value>
    where
        R: ruma::api::OutgoingRequest<
                Authentication = ruma::api::federation::authentication::ServerSignatures,
                PathBuilder = ruma::api::path_builder::SinglePath,
            >,
    {
        if !self.federation_enabled() {
            return Err(json!({ "status": 503, "message": "Federation is disabled on this server" }));
        }
        match tokio::time::timeout(REMOTE_KEYS_TIMEOUT, self.federation_request(server, req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::debug!(%server, error = %e, "key request to another server failed");
                let status = match &e {
                    Error::Matrix { status, .. } => status.as_u16(),
                    _ => 503,
                };
                Err(json!({ "status": status, "message": e.to_string() }))
            }
            Err(_) => Err(json!({ "status": 504, "message": "The server did not answer in time" })),
        }
    }

    /// The keys of the local users among `wanted` (others are left out),
    /// with the signatures `requester` may see: a user's own, and the
    /// requester's on them (none for another server asking).
    pub(crate) async fn local_keys(
        &self,
        requester: Option<&UserId>,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<get_keys::v3::Response> {
        let mut resp = get_keys::v3::Response::new();
        let mut local = vec![];
        for (user, devices) in wanted {
            if self.is_local(user) {
                local.push((user.to_string(), devices.iter().map(|d| d.to_string()).collect()));
            }
        }
        if local.is_empty() {
            return Ok(resp);
        }
        let requester_id = requester.map(|r| r.to_string()).unwrap_or_default();
        let rows = self.store.query_keys(requester_id, local).await?;
        for user in wanted.keys().filter(|u| self.is_local(u)) {
            // Every local user asked for gets an entry, empty if they have no keys.
            resp.device_keys.entry(user.clone()).or_default();
        }
        for d in rows.devices {
            let mut v: Value = serde_json::from_str(&d.json).map_err(|e| Error::Internal(e.to_string()))?;
            merge_signatures(
                &mut v,
                rows.signatures
                    .iter()
                    .filter(|s| s.target_user == d.user_id && s.target_key == d.device_id),
            );
            if let Some(name) = &d.display_name {
                v["unsigned"] = json!({ "device_display_name": name });
            }
            let (Ok(user), device) = (
                OwnedUserId::try_from(d.user_id.as_str()),
                OwnedDeviceId::from(d.device_id),
            ) else {
                continue;
            };
            resp.device_keys.entry(user).or_default().insert(device, raw(&v)?);
        }
        for (user_id, k) in &rows.cross_signing {
            let Ok(user) = OwnedUserId::try_from(user_id.as_str()) else {
                continue;
            };
            let mut v: Value = serde_json::from_str(&k.json).map_err(|e| Error::Internal(e.to_string()))?;
            merge_signatures(
                &mut v,
                rows.signatures
                    .iter()
                    .filter(|s| &s.target_user == user_id && s.target_key == k.public_key),
            );
            match k.key_type.as_str() {
                "master" => {
                    resp.master_keys.insert(user, raw(&v)?);
                }
                "self_signing" => {
                    resp.self_signing_keys.insert(user, raw(&v)?);
                }
                "user_signing" if requester == Some(&*user) => {
                    resp.user_signing_keys.insert(user, raw(&v)?);
                }
                _ => {}
            }
        }
        Ok(resp)
    }

    /// The other servers' users of a request, grouped by their server.
    fn remote_users_by_server<V: Clone>(
        &self,
        wanted: &BTreeMap<OwnedUserId, V>,
    ) -> BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, V>> {
        let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, V>> = BTreeMap::new();
        for (user, v) in wanted.iter().filter(|(u, _)| !self.is_local(u)) {
            remote
                .entry(user.server_name().to_owned())
                .or_default()
                .insert(user.clone(), v.clone());
        }
        remote
    }

    /// `/keys/claim`: a one-time key per device, else its fallback key;
    /// remote users' keys are claimed from their servers.
    pub async fn claim_keys(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    ) -> Result<claim_keys::v3::Response> {
        let mut failures = BTreeMap::new();
        let mut keys = self.claim_local_keys(wanted).await?;
        let remote = self.remote_users_by_server(wanted);
        let asks = remote.into_iter().map(|(server, users)| async move {
            let req = ruma::api::federation::keys::claim_keys::v1::Request::new(users);
            let r = self.remote_call(&server, req).await;
            (server, r)
        });
        for (server, r) in futures_util::future::join_all(asks).await {
            match r {
                Ok(r) => keys.extend(r.one_time_keys.into_iter().filter(|(u, _)| u.server_name() == server)),
                Err(failure) => {
                    failures.insert(server.to_string(), failure);
                }
            }
        }
        let mut resp = claim_keys::v3::Response::new(keys);
        resp.failures = failures;
        Ok(resp)
    }

    /// Claims keys of the local users among `wanted` (others are left out).
    pub(crate) async fn claim_local_keys(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    ) -> Result<BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys>> {
        let mut asks = vec![];
        for (user, devices) in wanted {
            if !self.is_local(user) {
                continue;
            }
            for (device, alg) in devices {
                asks.push((user.to_string(), device.to_string(), alg.to_string()));
            }
        }
        let mut keys: BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys> = BTreeMap::new();
        if asks.is_empty() {
            return Ok(keys);
        }
        let claimed = self.store.claim_keys(asks).await?;
        for k in claimed {
            let (Ok(user), Ok(key_id)) = (
                OwnedUserId::try_from(k.user_id.as_str()),
                OwnedOneTimeKeyId::try_from(k.key_id.as_str()),
            ) else {
                continue;
            };
            let json = RawValue::from_string(k.json).map_err(|e| Error::Internal(e.to_string()))?;
            keys.entry(user)
                .or_default()
                .entry(OwnedDeviceId::from(k.device_id))
                .or_default()
                .insert(key_id, Raw::from_json(json));
        }
        Ok(keys)
    }

    /// `GET /user/devices/{userId}` over federation: a local user's devices
    /// with their keys, master and self-signing keys, and the position of
    /// their latest device-list change.
    pub async fn federation_user_devices(
        &self,
        user: &UserId,
    ) -> Result<ruma::api::federation::device::get_devices::v1::Response> {
        use ruma::api::federation::device::get_devices::v1::{Response, UserDevice};
        if !self.is_local(user) {
            return Err(Error::not_found("User is not on this server"));
        }
        if self.store.user(user.to_string()).await?.is_none() {
            return Err(Error::not_found("Unknown user"));
        }
        let wanted = BTreeMap::from([(user.to_owned(), vec![])]);
        let mut keys = self.local_keys(None, &wanted).await?;
        let stream_id = self.store.device_list_stream_id(user.to_string()).await?;
        let mut resp = Response::new(user.to_owned(), UInt::try_from(stream_id.max(0)).unwrap_or_default());
        for (device_id, k) in keys.device_keys.remove(user).unwrap_or_default() {
            let name = serde_json::from_str::<Value>(k.json().get()).ok().and_then(|v| {
                v.get("unsigned")?
                    .get("device_display_name")?
                    .as_str()
                    .map(str::to_owned)
            });
            let mut d = UserDevice::new(device_id, k);
            d.device_display_name = name;
            resp.devices.push(d);
        }
        resp.master_key = keys.master_keys.remove(user);
        resp.self_signing_key = keys.self_signing_keys.remove(user);
        Ok(resp)
    }

    /// Tells the servers sharing a room with `user` about one of their
    /// devices as other servers would query it now.
    async fn announce_device(&self, user: &UserId, device: &str) {
        let wanted = BTreeMap::from([(user.to_owned(), vec![OwnedDeviceId::from(device)])]);
        let keys = match self.local_keys(None, &wanted).await {
            Ok(k) => k,
            Err(e) => return tracing::warn!(error = %e, "could not read keys to announce a device change"),
        };
        let json = keys
            .device_keys
            .get(user)
            .and_then(|d| d.get(device))
            .and_then(|k| serde_json::from_str::<Value>(k.json().get()).ok());
        if let Some(json) = json {
            self.federate_device_change(user, device, Some(json)).await;
        }
    }

    /// `/keys/changes`: users whose device lists changed between two sync
    /// tokens and who share a room with `user`, and users who stopped sharing one.
    pub async fn key_changes(
        &self,
        user: &UserId,
        from: &str,
        to: &str,
    ) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        let parse = |t: &str| {
            SyncToken::parse(t)
                .map(|t| t.pos)
                .ok_or_else(|| Error::invalid_param(format!("Invalid token {t:?}")))
        };
        let from = parse(from)?;
        let to = parse(to)?.min(self.store.persisted_upto());
        if to <= from {
            return Ok((vec![], vec![]));
        }
        let u = self.store.device_list_updates(user.to_string(), from, to).await?;
        let ids = |v: Vec<String>| v.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()).collect();
        Ok((ids(u.changed), ids(u.left)))
    }

    /// Whether `user` must pass user-interactive auth to upload these
    /// cross-signing keys: only when replacing keys they already have.
    pub async fn cross_signing_upload_needs_auth(&self, user: &UserId, uploads: &[(&str, &str)]) -> Result<bool> {
        let stored = self.store.cross_signing_keys(user.to_string()).await?;
        if !stored.iter().any(|k| k.key_type == "master") {
            return Ok(false);
        }
        for (usage, json) in uploads {
            let Ok(k) = parse_cross_key(json, user, usage) else {
                return Ok(true);
            };
            let same = stored
                .iter()
                .any(|s| s.key_type == *usage && Some(&s.json) == canonical_string(&k.obj).ok().as_ref());
            if !same {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `/keys/device_signing/upload` after authentication: checks that the
    /// self-signing and user-signing keys are signed by the master key and
    /// stores them.
    pub async fn upload_cross_signing_keys(
        &self,
        user: &UserId,
        master: Option<&str>,
        self_signing: Option<&str>,
        user_signing: Option<&str>,
    ) -> Result<()> {
        let master = master.map(|j| parse_cross_key(j, user, "master")).transpose()?;
        let self_signing = self_signing
            .map(|j| parse_cross_key(j, user, "self_signing"))
            .transpose()?;
        let user_signing = user_signing
            .map(|j| parse_cross_key(j, user, "user_signing"))
            .transpose()?;
        let stored = self.store.cross_signing_keys(user.to_string()).await?;
        let master_key = match &master {
            Some(m) => Some(m.public_key.clone()),
            None => stored
                .iter()
                .find(|k| k.key_type == "master")
                .map(|k| k.public_key.clone()),
        };
        let devices: BTreeSet<String> = self
            .store
            .devices(user.to_string())
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        let mut rows = vec![];
        if let Some(m) = &master {
            if devices.contains(&m.public_key) {
                return Err(Error::forbidden("Key ID in use by a device"));
            }
            rows.push(m.row("master")?);
        }
        for (usage, key) in [("self_signing", &self_signing), ("user_signing", &user_signing)] {
            let Some(k) = key else { continue };
            let Some(master_key) = &master_key else {
                return Err(Error::missing_param("No master signing key is available"));
            };
            if devices.contains(&k.public_key) {
                return Err(Error::forbidden("Key ID in use by a device"));
            }
            if !verify_signature(&k.obj, user.as_str(), &format!("ed25519:{master_key}"), master_key) {
                return Err(invalid_signature(format!(
                    "The {usage} key is not signed by the master key"
                )));
            }
            rows.push(k.row(usage)?);
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.store.set_cross_signing_keys(user.to_string(), rows).await?;
        self.notify();
        // The user-signing key stays private to the user's own server.
        let public = |k: &Option<CrossKey>| k.as_ref().and_then(|k| serde_json::to_value(&k.obj).ok());
        self.federate_signing_keys(user, public(&master), public(&self_signing))
            .await;
        Ok(())
    }

    /// `/keys/signatures/upload`: stores each signature `signer` made that
    /// verifies against a known key; the others are failures.
    pub async fn upload_signatures(
        &self,
        signer: &UserId,
        signed: Vec<(OwnedUserId, String, String)>,
    ) -> Result<BTreeMap<OwnedUserId, BTreeMap<String, Failure>>> {
        let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, Failure>> = BTreeMap::new();
        let mut rows = vec![];
        let own_cross = self.store.cross_signing_keys(signer.to_string()).await?;
        let own_key = |t: &str| own_cross.iter().find(|k| k.key_type == t).map(|k| k.public_key.clone());
        let (own_master, own_ssk, own_usk) = (own_key("master"), own_key("self_signing"), own_key("user_signing"));
        for (target, key_id, json) in signed {
            match self
                .check_signatures(signer, &target, &key_id, &json, &own_master, &own_ssk, &own_usk)
                .await
            {
                Ok(mut found) => rows.append(&mut found),
                Err((code, msg)) => {
                    failures.entry(target).or_default().insert(key_id, failure(code, &msg)?);
                }
            }
        }
        if !rows.is_empty() {
            // Signatures on the signer's own devices and master key change
            // what other servers hold of them.
            let own: BTreeSet<String> = rows
                .iter()
                .filter(|r| r.target_user == signer.as_str())
                .map(|r| r.target_key.clone())
                .collect();
            self.store.add_signatures(signer.to_string(), rows).await?;
            self.notify();
            for key in own {
                if Some(&key) == own_master.as_ref() {
                    let wanted = BTreeMap::from([(signer.to_owned(), vec![])]);
                    let master = self
                        .local_keys(None, &wanted)
                        .await?
                        .master_keys
                        .remove(signer)
                        .and_then(|k| serde_json::from_str(k.json().get()).ok());
                    self.federate_signing_keys(signer, master, None).await;
                } else {
                    self.announce_device(signer, &key).await;
                }
            }
        }
        Ok(failures)
    }

    /// The new, valid signatures by `signer` on one uploaded object, or
    /// why they are refused.
    #[allow(clippy::too_many_arguments)]
    async fn check_signatures(
        &self,
        signer: &UserId,
        target: &UserId,
        key_id: &str,
        json: &str,
        own_master: &Option<String>,
        own_ssk: &Option<String>,
        own_usk: &Option<String>,
    ) -> std::result::Result<Vec<SignatureRow>, (&'static str, String)> {
        let internal = |e: Error| ("M_UNKNOWN", e.to_string());
        let uploaded: CanonicalJsonObject =
            serde_json::from_str(json).map_err(|e| ("M_BAD_JSON", format!("Invalid signed object: {e}")))?;
        if !self.is_local(target) {
            return Err((
                "M_UNKNOWN",
                "Signing the keys of users on other servers is not supported yet".into(),
            ));
        }
        // The stored object the signature must cover, and the keys of
        // `signer` allowed to sign it.
        let (stored_json, signing_keys): (String, Vec<(String, String)>) = if target == signer {
            if Some(key_id) == own_master.as_deref() {
                // The user's own devices sign their master key.
                let master = self
                    .store
                    .cross_signing_keys(target.to_string())
                    .await
                    .map_err(|e| internal(e.into()))?
                    .into_iter()
                    .find(|k| k.key_type == "master")
                    .ok_or(("M_NOT_FOUND", "Unknown key".to_owned()))?;
                let mut keys = vec![];
                for (_, sig_key_id, _) in signatures_of(&uploaded)
                    .into_iter()
                    .filter(|(s, _, _)| s == signer.as_str())
                {
                    let Some(device) = sig_key_id.strip_prefix("ed25519:") else {
                        continue;
                    };
                    let stored = self
                        .store
                        .device_keys(signer.to_string(), device.to_owned())
                        .await
                        .map_err(|e| internal(e.into()))?;
                    if let Some(dk) = stored
                        && let Some(k) = device_ed25519(&object(&dk).map_err(internal)?, device)
                    {
                        keys.push((sig_key_id.clone(), k));
                    }
                }
                (master.json, keys)
            } else {
                // One of the user's devices, signed by their self-signing key.
                let dk = self
                    .store
                    .device_keys(signer.to_string(), key_id.to_owned())
                    .await
                    .map_err(|e| internal(e.into()))?
                    .ok_or(("M_NOT_FOUND", "Unknown device or key".to_owned()))?;
                let keys = own_ssk.iter().map(|k| (format!("ed25519:{k}"), k.clone())).collect();
                (dk, keys)
            }
        } else {
            // Another user's master key, signed by the signer's user-signing key.
            let master = self
                .store
                .cross_signing_keys(target.to_string())
                .await
                .map_err(|e| internal(e.into()))?
                .into_iter()
                .find(|k| k.key_type == "master" && k.public_key == key_id)
                .ok_or(("M_NOT_FOUND", "Unknown key".to_owned()))?;
            let keys = own_usk.iter().map(|k| (format!("ed25519:{k}"), k.clone())).collect();
            (master.json, keys)
        };
        let mut stored = object(&stored_json).map_err(internal)?;
        let already: BTreeSet<(String, String, String)> = signatures_of(&stored).into_iter().collect();
        let mut out = vec![];
        let mut invalid = false;
        for (by, sig_key_id, sig) in signatures_of(&uploaded) {
            if by != signer.as_str() || already.contains(&(by.clone(), sig_key_id.clone(), sig.clone())) {
                continue;
            }
            let Some((_, public_key)) = signing_keys.iter().find(|(id, _)| *id == sig_key_id) else {
                continue;
            };
            let mut sigs = CanonicalJsonObject::new();
            let mut one = CanonicalJsonObject::new();
            one.insert(sig_key_id.clone(), CanonicalJsonValue::String(sig.clone()));
            sigs.insert(by.clone(), CanonicalJsonValue::Object(one));
            stored.insert("signatures".into(), CanonicalJsonValue::Object(sigs));
            if verify_signature(&stored, &by, &sig_key_id, public_key) {
                out.push(SignatureRow {
                    target_user: target.to_string(),
                    target_key: key_id.to_owned(),
                    signer_user: by,
                    signer_key_id: sig_key_id,
                    signature: sig,
                });
            } else {
                invalid = true;
            }
        }
        if invalid {
            return Err(("M_INVALID_SIGNATURE", "Invalid signature".into()));
        }
        if out.is_empty() && !signatures_of(&uploaded).iter().any(|s| already.contains(s)) {
            return Err((
                "M_INVALID_SIGNATURE",
                "No signature by a key of yours that may sign this key".into(),
            ));
        }
        Ok(out)
    }
}

/// Checks uploaded one-time or fallback keys; signed ones must carry the
/// device's signature when its ed25519 key is known.
pub(crate) fn check_one_time_keys(
    keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
    user: &str,
    device: &str,
    ed25519: Option<&str>,
    fallback: bool,
) -> Result<Vec<OneTimeKeyRow>> {
    let what = if fallback { "fallback key" } else { "one-time key" };
    let mut out = vec![];
    for (id, raw) in keys {
        let algorithm = id.algorithm().to_string();
        let json = raw.json().get();
        let v: CanonicalJsonValue =
            serde_json::from_str(json).map_err(|e| Error::bad_json(format!("Invalid {what} {id}: {e}")))?;
        let stored = match &v {
            CanonicalJsonValue::String(_) if algorithm == "curve25519" => serde_json::to_string(&v),
            CanonicalJsonValue::Object(obj) => {
                if get_str(obj, "key").is_none() {
                    return Err(Error::bad_json(format!("The {what} {id} has no key")));
                }
                if algorithm.starts_with("signed_")
                    && let Some(ed) = ed25519
                    && !verify_signature(obj, user, &format!("ed25519:{device}"), ed)
                {
                    return Err(invalid_signature(format!(
                        "The {what} {id} is not signed by the device"
                    )));
                }
                let mut obj = obj.clone();
                obj.remove("unsigned");
                serde_json::to_string(&obj)
            }
            _ => return Err(Error::bad_json(format!("Invalid {what} {id}"))),
        }
        .map_err(|e| Error::Internal(e.to_string()))?;
        out.push(OneTimeKeyRow {
            algorithm,
            key_id: id.to_string(),
            json: stored,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_key() {
        let pair =
            ruma::signatures::Ed25519KeyPair::from_der(&ruma::signatures::Ed25519KeyPair::generate(), "DEV".into())
                .unwrap();
        let public = Base64::<ruma::serde::base64::Standard>::new(pair.public_key().to_vec()).encode();
        let mut obj: CanonicalJsonObject = serde_json::from_value(json!({
            "user_id": "@a:x", "device_id": "DEV",
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": { "ed25519:DEV": public, "curve25519:DEV": "abc" },
        }))
        .unwrap();
        ruma::signatures::sign_json("@a:x", &pair, &mut obj).unwrap();
        assert!(verify_signature(&obj, "@a:x", "ed25519:DEV", &public));
        assert_eq!(device_ed25519(&obj, "DEV").as_deref(), Some(public.as_str()));
        // Another key, another signer, or altered content: no.
        let other =
            ruma::signatures::Ed25519KeyPair::from_der(&ruma::signatures::Ed25519KeyPair::generate(), "DEV".into())
                .unwrap();
        let other_public = Base64::<ruma::serde::base64::Standard>::new(other.public_key().to_vec()).encode();
        assert!(!verify_signature(&obj, "@a:x", "ed25519:DEV", &other_public));
        assert!(!verify_signature(&obj, "@b:x", "ed25519:DEV", &public));
        obj.insert("device_id".into(), CanonicalJsonValue::String("OTHER".into()));
        assert!(!verify_signature(&obj, "@a:x", "ed25519:DEV", &public));
        // `unsigned` is not covered.
        obj.insert("device_id".into(), CanonicalJsonValue::String("DEV".into()));
        obj.insert("unsigned".into(), CanonicalJsonValue::Object(Default::default()));
        assert!(verify_signature(&obj, "@a:x", "ed25519:DEV", &public));
    }
}
