//! Server-side key backup (`/room_keys`): versions with their algorithm and
//! auth data, and the client-encrypted room keys stored in them.

use std::collections::BTreeMap;

use http::StatusCode;
use missive_store::backup::{BackupKey, BackupVersion, BackupWrite};
use ruma::{
    OwnedRoomId, UInt, UserId,
    api::client::backup::{BackupAlgorithm, KeyBackupData},
    serde::Raw,
};
use serde_json::{Value, json, value::RawValue};

use crate::{App, Error, Result};

/// What a backup version's endpoints answer.
pub struct BackupInfo {
    pub algorithm: Raw<BackupAlgorithm>,
    pub count: UInt,
    pub etag: String,
    pub version: String,
}

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version")
}

fn parse_version(v: &str) -> Result<i64> {
    v.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(unknown_version)
}

/// `{"algorithm", "auth_data"}` from a request body, checked and compacted.
fn algorithm_json(body: &str) -> Result<(String, String)> {
    let v: Value = serde_json::from_str(body).map_err(|e| Error::not_json(e.to_string()))?;
    let algorithm = v
        .get("algorithm")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::missing_param("Missing algorithm"))?;
    let auth_data = v
        .get("auth_data")
        .filter(|a| a.is_object())
        .ok_or_else(|| Error::missing_param("Missing auth_data object"))?;
    Ok((
        algorithm.to_owned(),
        json!({ "algorithm": algorithm, "auth_data": auth_data }).to_string(),
    ))
}

fn info(v: BackupVersion) -> Result<BackupInfo> {
    Ok(BackupInfo {
        algorithm: Raw::from_json(RawValue::from_string(v.algorithm).map_err(|e| Error::Internal(e.to_string()))?),
        count: UInt::new_saturating(v.count as u64),
        etag: v.etag.to_string(),
        version: v.version.to_string(),
    })
}

fn written(w: BackupWrite) -> Result<(String, UInt)> {
    match w {
        BackupWrite::Done { etag, count } => Ok((etag.to_string(), UInt::new_saturating(count as u64))),
        BackupWrite::NotFound => Err(unknown_version()),
        BackupWrite::NotCurrent { current } => {
            let mut extra = serde_json::Map::new();
            extra.insert("current_version".into(), current.to_string().into());
            Err(Error::Matrix {
                status: StatusCode::FORBIDDEN,
                errcode: "M_WRONG_ROOM_KEYS_VERSION",
                message: "Keys may only be added to the current backup version".into(),
                extra: Some(extra),
            })
        }
    }
}

/// Reads what the replacement rule needs from one uploaded session.
fn backup_key(room_id: &str, session_id: &str, data: &Raw<KeyBackupData>) -> Result<BackupKey> {
    let v: Value = serde_json::from_str(data.json().get()).map_err(|e| Error::not_json(e.to_string()))?;
    let bad = |what: &str| Error::bad_json(format!("Session {session_id}: {what}"));
    let int = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| bad(&format!("missing or invalid {k}")))
    };
    let first_message_index = int("first_message_index")?;
    let forwarded_count = int("forwarded_count")?;
    let is_verified = v
        .get("is_verified")
        .and_then(Value::as_bool)
        .ok_or_else(|| bad("missing or invalid is_verified"))?;
    if !v.get("session_data").is_some_and(Value::is_object) {
        return Err(bad("missing session_data object"));
    }
    Ok(BackupKey {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index,
        forwarded_count,
        is_verified,
        json: v.to_string(),
    })
}

/// Room → session → key data, for the responses.
pub type RoomKeys = BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>>;

impl App {
    pub async fn create_backup_version(&self, user: &UserId, body: &str) -> Result<String> {
        let (_, algorithm) = algorithm_json(body)?;
        Ok(self
            .store
            .create_backup_version(user.to_string(), algorithm)
            .await?
            .to_string())
    }

    /// A backup version, or the current one.
    pub async fn backup_info(&self, user: &UserId, version: Option<&str>) -> Result<BackupInfo> {
        let version = version.map(parse_version).transpose()?;
        match self.store.backup_version(user.to_string(), version).await? {
            Some(v) => info(v),
            None if version.is_none() => Err(Error::not_found("No current backup version")),
            None => Err(unknown_version()),
        }
    }

    /// Updates a version's auth data; its algorithm cannot change.
    pub async fn update_backup_version(&self, user: &UserId, version: &str, body: &str) -> Result<()> {
        let n = parse_version(version)?;
        if let Some(v) = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|b| b.get("version").cloned())
            && v.as_str() != Some(version)
        {
            return Err(Error::invalid_param("The version in the body does not match the path"));
        }
        let (algorithm, json) = algorithm_json(body)?;
        let existing = self
            .store
            .backup_version(user.to_string(), Some(n))
            .await?
            .ok_or_else(unknown_version)?;
        let old: Value = serde_json::from_str(&existing.algorithm).map_err(|e| Error::Internal(e.to_string()))?;
        if old.get("algorithm").and_then(Value::as_str) != Some(algorithm.as_str()) {
            return Err(Error::invalid_param("A backup version's algorithm cannot change"));
        }
        if !self.store.update_backup_version(user.to_string(), n, json).await? {
            return Err(unknown_version());
        }
        Ok(())
    }

    pub async fn delete_backup_version(&self, user: &UserId, version: &str) -> Result<()> {
        if !self
            .store
            .delete_backup_version(user.to_string(), parse_version(version)?)
            .await?
        {
            return Err(unknown_version());
        }
        Ok(())
    }

    /// Stores sessions in the current version; returns its etag and count.
    pub async fn put_room_keys(
        &self,
        user: &UserId,
        version: &str,
        sessions: Vec<(&str, &str, &Raw<KeyBackupData>)>,
    ) -> Result<(String, UInt)> {
        let n = parse_version(version)?;
        let keys = sessions
            .into_iter()
            .map(|(room, session, data)| backup_key(room, session, data))
            .collect::<Result<Vec<_>>>()?;
        written(self.store.put_backup_keys(user.to_string(), n, keys).await?)
    }

    pub async fn room_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<RoomKeys> {
        let keys = self
            .store
            .backup_keys(
                user.to_string(),
                parse_version(version)?,
                room.map(str::to_owned),
                session.map(str::to_owned),
            )
            .await?
            .ok_or_else(unknown_version)?;
        let mut out = RoomKeys::new();
        for k in keys {
            let Ok(room) = OwnedRoomId::try_from(k.room_id) else {
                continue;
            };
            let raw = RawValue::from_string(k.json).map_err(|e| Error::Internal(e.to_string()))?;
            out.entry(room).or_default().insert(k.session_id, Raw::from_json(raw));
        }
        Ok(out)
    }

    pub async fn delete_room_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<(String, UInt)> {
        written(
            self.store
                .delete_backup_keys(
                    user.to_string(),
                    parse_version(version)?,
                    room.map(str::to_owned),
                    session.map(str::to_owned),
                )
                .await?,
        )
    }
}
