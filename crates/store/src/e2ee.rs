//! End-to-end encryption: device keys, one-time and fallback keys,
//! cross-signing keys and signatures, device-list changes and to-device
//! messages.
//!
//! Every change a client learns through `/sync` (a device list that changed,
//! a to-device message) takes a stream position in the transaction that
//! makes it, like room events do, so a sync token covers it exactly.

use std::collections::{BTreeMap, BTreeSet};

use crate::db::{Connection, OptionalExtension, Transaction, params};

use crate::{
    Result, StoreError,
    store::{Positions, Store, now_ms},
};

/// A one-time or fallback key as uploaded: `key_id` is `algorithm:name`.
#[derive(Clone, Debug)]
pub struct OneTimeKeyRow {
    pub algorithm: String,
    pub key_id: String,
    pub json: String,
}

/// What one `/keys/upload` stores for one device.
#[derive(Clone, Debug, Default)]
pub struct KeyUpload {
    pub user_id: String,
    pub device_id: String,
    /// The device keys as canonical JSON, without `unsigned`.
    pub device_keys: Option<String>,
    pub one_time_keys: Vec<OneTimeKeyRow>,
    pub fallback_keys: Vec<OneTimeKeyRow>,
}

/// A key handed out by `/keys/claim`.
#[derive(Clone, Debug)]
pub struct ClaimedKey {
    pub user_id: String,
    pub device_id: String,
    pub key_id: String,
    pub json: String,
    pub fallback: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossSigningKeyRow {
    /// `master`, `self_signing` or `user_signing`.
    pub key_type: String,
    /// The unpadded base64 public key, which is also its key ID's name.
    pub public_key: String,
    pub json: String,
}

/// A signature on a device's keys (`target_key` is the device ID) or on a
/// cross-signing key (`target_key` is its public key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureRow {
    pub target_user: String,
    pub target_key: String,
    pub signer_user: String,
    pub signer_key_id: String,
    pub signature: String,
}

#[derive(Clone, Debug)]
pub struct QueriedDevice {
    pub user_id: String,
    pub device_id: String,
    pub json: String,
    pub display_name: Option<String>,
}

/// Everything `/keys/query` shows, read in one snapshot.
#[derive(Clone, Debug, Default)]
pub struct KeyQueryRows {
    pub devices: Vec<QueriedDevice>,
    /// (user, key) for each cross-signing key of the queried users.
    pub cross_signing: Vec<(String, CrossSigningKeyRow)>,
    /// Signatures uploaded separately that the requester may see.
    pub signatures: Vec<SignatureRow>,
}

/// Users whose device lists a user should refetch, and users they no
/// longer share a room with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceListUpdates {
    pub changed: Vec<String>,
    pub left: Vec<String>,
}

/// A recipient of a to-device message: one device, or all (`None`).
#[derive(Clone, Debug)]
pub struct ToDeviceTarget {
    pub user_id: String,
    pub device_id: Option<String>,
    pub content: String,
}

#[derive(Clone, Debug)]
pub struct ToDeviceMessage {
    pub stream_pos: i64,
    pub sender: String,
    pub event_type: String,
    pub content: String,
}

/// One-time key counts per algorithm and the algorithms of unused fallback keys.
#[derive(Clone, Debug, Default)]
pub struct KeyCounts {
    pub one_time: BTreeMap<String, u64>,
    pub unused_fallback: Vec<String>,
}

/// How long a to-device transaction ID is remembered for idempotent retries.
const TXN_LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// Records that `user`'s devices or keys changed, at a fresh position.
pub(crate) fn record_device_change(
    tx: &Transaction<'_>,
    positions: &mut Positions,
    user: &str,
    only_for: Option<&str>,
) -> crate::db::Result<i64> {
    let pos = positions.take();
    tx.execute(
        "INSERT INTO device_list_changes (stream_pos, user_id, only_for) VALUES (?1, ?2, ?3)",
        params![pos, user, only_for],
    )?;
    Ok(pos)
}

/// Deletes everything end-to-end encryption keeps for a device: its keys,
/// signatures on them, its pending to-device messages and the transaction
/// IDs it sent with, and its dehydrated-device record if it is one. The
/// caller records the device-list change.
pub(crate) fn delete_device_e2ee(tx: &Transaction<'_>, user: &str, device: &str) -> crate::db::Result<()> {
    for sql in [
        "DELETE FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM key_signatures WHERE target_user = ?1 AND target_key = ?2",
        "DELETE FROM to_device WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM to_device_txns WHERE sender = ?1 AND sender_device = ?2",
        "DELETE FROM dehydrated_devices WHERE user_id = ?1 AND device_id = ?2",
    ] {
        tx.execute(sql, params![user, device])?;
    }
    Ok(())
}

/// A key object without its signatures: what a signature covers.
fn signed_content(json: &str) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(json).ok()?;
    let obj = v.as_object_mut()?;
    obj.remove("signatures");
    obj.remove("unsigned");
    Some(v)
}

/// Stores a device's keys in a write transaction (see [`Store::upload_keys`]).
pub(crate) fn store_keys(tx: &Transaction<'_>, positions: &mut Positions, up: &KeyUpload) -> Result<KeyCounts> {
    let (user, device) = (up.user_id.as_str(), up.device_id.as_str());
    if let Some(json) = &up.device_keys {
        let old: Option<String> = tx
            .query_row(
                "SELECT json FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
                params![user, device],
                |r| r.get(0),
            )
            .optional()?;
        if old.as_deref() != Some(json.as_str()) {
            if old.is_some_and(|o| signed_content(&o) != signed_content(json)) {
                // Signatures made on the old keys do not cover the new ones.
                tx.execute(
                    "DELETE FROM key_signatures WHERE target_user = ?1 AND target_key = ?2",
                    params![user, device],
                )?;
            }
            tx.execute(
                "INSERT INTO device_keys (user_id, device_id, json) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET json = excluded.json",
                params![user, device, json],
            )?;
            record_device_change(tx, positions, user, None)?;
        }
    }
    for k in &up.one_time_keys {
        let old: Option<String> = tx
            .query_row(
                "SELECT json FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 AND key_id = ?4",
                params![user, device, k.algorithm, k.key_id],
                |r| r.get(0),
            )
            .optional()?;
        match old {
            Some(o) if o == k.json => {}
            Some(_) => return Err(StoreError::Exists),
            None => {
                tx.execute(
                    "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, json) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![user, device, k.algorithm, k.key_id, k.json],
                )?;
            }
        }
    }
    for k in &up.fallback_keys {
        // Re-uploading the current fallback key keeps its used flag;
        // a new one replaces it, unused.
        tx.execute(
            "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, json, used) VALUES (?1, ?2, ?3, ?4, ?5, 0) \
             ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = excluded.key_id, json = excluded.json, used = 0 \
             WHERE fallback_keys.key_id != excluded.key_id OR fallback_keys.json != excluded.json",
            params![user, device, k.algorithm, k.key_id, k.json],
        )?;
    }
    Ok(key_counts(tx, user, device)?)
}

fn key_counts(c: &Connection<'_>, user: &str, device: &str) -> crate::db::Result<KeyCounts> {
    let mut out = KeyCounts::default();
    let mut st = c.prepare_cached(
        "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 GROUP BY algorithm",
    )?;
    for row in st.query_map(params![user, device], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })? {
        let (alg, n) = row?;
        out.one_time.insert(alg, n as u64);
    }
    let mut st = c.prepare_cached(
        "SELECT algorithm FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2 AND used = 0 ORDER BY algorithm",
    )?;
    out.unused_fallback = st
        .query_map(params![user, device], |r| r.get(0))?
        .collect::<crate::db::Result<_>>()?;
    Ok(out)
}

/// Whether two users are both joined to, or invited to, a common room.
fn share_room(c: &Connection<'_>, a: &str, b: &str) -> crate::db::Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM current_state x JOIN current_state y ON x.room_id = y.room_id \
         WHERE x.type = 'm.room.member' AND x.state_key = ?1 AND x.membership IN ('join', 'invite') \
         AND y.type = 'm.room.member' AND y.state_key = ?2 AND y.membership IN ('join', 'invite'))",
    )?
    .query_row(params![a, b], |r| r.get(0))
}

fn present_members(c: &Connection<'_>, room: &str) -> crate::db::Result<Vec<String>> {
    c.prepare_cached(
        "SELECT state_key FROM current_state WHERE room_id = ?1 AND type = 'm.room.member' \
         AND membership IN ('join', 'invite')",
    )?
    .query_map([room], |r| r.get(0))?
    .collect()
}

fn device_list_updates(c: &Connection<'_>, user: &str, since: i64, upto: i64) -> crate::db::Result<DeviceListUpdates> {
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut left: BTreeSet<String> = BTreeSet::new();
    // Shown to the user whatever rooms they share: changes made for them.
    let mut private: BTreeSet<String> = BTreeSet::new();

    let mut st = c.prepare_cached(
        "SELECT DISTINCT user_id, only_for IS NOT NULL FROM device_list_changes \
         WHERE stream_pos > ?2 AND stream_pos <= ?3 AND (only_for IS NULL OR only_for = ?1)",
    )?;
    for row in st.query_map(params![user, since, upto], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
    })? {
        let (u, only) = row?;
        if only {
            private.insert(u);
        } else {
            changed.insert(u);
        }
    }

    // Memberships that changed in rooms the user is in, or just left: who
    // arrived is new to the user, who left may be gone from all shared rooms.
    let mut st = c.prepare_cached(
        "SELECT room_id, state_key, json FROM events \
         WHERE type = 'm.room.member' AND stream_pos > ?2 AND stream_pos <= ?3 AND room_id IN \
         (SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ?1 \
          AND (membership IN ('join', 'invite') OR stream_pos > ?2)) \
         ORDER BY stream_pos",
    )?;
    let rows: Vec<(String, String, String)> = st
        .query_map(params![user, since, upto], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<crate::db::Result<_>>()?;
    for (room, target, json) in rows {
        let membership = crate::event_json::content_str(&json, "membership");
        let present = matches!(membership.as_deref(), Some("join") | Some("invite"));
        if target == user {
            let members = present_members(c, &room)?;
            if present {
                changed.extend(members);
            } else {
                left.extend(members);
            }
        } else if present {
            changed.insert(target);
        } else {
            left.insert(target);
        }
    }

    let mut out = DeviceListUpdates::default();
    for u in changed {
        if u == user || private.contains(&u) || share_room(c, user, &u)? {
            out.changed.push(u);
        }
    }
    for u in private {
        if !out.changed.contains(&u) {
            out.changed.push(u);
        }
    }
    out.changed.sort();
    for u in left {
        if u != user && !out.changed.contains(&u) && !share_room(c, user, &u)? {
            out.left.push(u);
        }
    }
    Ok(out)
}

impl Store {
    /// Stores a device's keys. New or changed device keys are a device-list
    /// change. A one-time key ID already stored with other content is
    /// refused with [`StoreError::Exists`] and nothing is stored.
    /// Returns the device's key counts afterwards.
    pub async fn upload_keys(&self, up: KeyUpload) -> Result<KeyCounts> {
        self.write(move |tx, positions| store_keys(tx, positions, &up)).await
    }

    /// The device's stored keys (canonical JSON), if it uploaded any.
    pub async fn device_keys(&self, user_id: String, device_id: String) -> Result<Option<String>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT json FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    pub async fn key_counts(&self, user_id: String, device_id: String) -> Result<KeyCounts> {
        self.read(move |c| Ok(key_counts(c, &user_id, &device_id)?)).await
    }

    /// Hands out, for each (user, device, algorithm), one one-time key,
    /// deleting it in the same transaction, or else the device's fallback
    /// key of that algorithm, marking it used. Devices with neither are
    /// left out.
    pub async fn claim_keys(&self, wanted: Vec<(String, String, String)>) -> Result<Vec<ClaimedKey>> {
        self.write(move |tx, _| {
            let mut out = Vec::new();
            let mut otk = tx.prepare_cached(
                "DELETE FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 \
                 AND key_id = (SELECT key_id FROM one_time_keys \
                 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 ORDER BY key_id LIMIT 1) \
                 RETURNING key_id, json",
            )?;
            let mut fallback = tx.prepare_cached(
                "UPDATE fallback_keys SET used = 1 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 \
                 RETURNING key_id, json",
            )?;
            for (user, device, alg) in wanted {
                let p = params![user, device, alg];
                let (found, is_fallback) = match otk
                    .query_row(p, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                    .optional()?
                {
                    Some(k) => (Some(k), false),
                    None => (
                        fallback
                            .query_row(p, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                            .optional()?,
                        true,
                    ),
                };
                if let Some((key_id, json)) = found {
                    out.push(ClaimedKey {
                        user_id: user,
                        device_id: device,
                        key_id,
                        json,
                        fallback: is_fallback,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn cross_signing_keys(&self, user_id: String) -> Result<Vec<CrossSigningKeyRow>> {
        self.read(move |c| {
            let mut st =
                c.prepare_cached("SELECT key_type, public_key, json FROM cross_signing_keys WHERE user_id = ?1")?;
            let rows = st.query_map([user_id], |r| {
                Ok(CrossSigningKeyRow {
                    key_type: r.get(0)?,
                    public_key: r.get(1)?,
                    json: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Replaces some of a user's cross-signing keys; a device-list change
    /// when anything differs. A new master key also drops the stored
    /// self-signing and user-signing keys it does not come with: they were
    /// signed by the old one.
    pub async fn set_cross_signing_keys(&self, user_id: String, keys: Vec<CrossSigningKeyRow>) -> Result<()> {
        self.write(move |tx, positions| {
            let mut changed = false;
            if let Some(master) = keys.iter().find(|k| k.key_type == "master") {
                let old: Option<String> = tx
                    .query_row(
                        "SELECT public_key FROM cross_signing_keys WHERE user_id = ?1 AND key_type = 'master'",
                        [&user_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if old.is_some_and(|o| o != master.public_key) {
                    for kind in ["self_signing", "user_signing"] {
                        if !keys.iter().any(|k| k.key_type == kind) {
                            changed |= tx.execute(
                                "DELETE FROM cross_signing_keys WHERE user_id = ?1 AND key_type = ?2",
                                params![user_id, kind],
                            )? > 0;
                        }
                    }
                }
            }
            for k in &keys {
                changed |= tx.execute(
                    "INSERT INTO cross_signing_keys (user_id, key_type, public_key, json) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (user_id, key_type) DO UPDATE SET public_key = excluded.public_key, json = excluded.json \
                     WHERE cross_signing_keys.json != excluded.json",
                    params![user_id, k.key_type, k.public_key, k.json],
                )? > 0;
            }
            if changed {
                record_device_change(tx, positions, &user_id, None)?;
            }
            Ok(())
        })
        .await
    }

    /// Stores signatures made by `signer`. A signature on the signer's own
    /// keys is a device-list change for everyone who shares a room with
    /// them; one on another user's key is a change only the signer is told of.
    pub async fn add_signatures(&self, signer: String, signatures: Vec<SignatureRow>) -> Result<()> {
        self.write(move |tx, positions| {
            let mut targets = BTreeSet::new();
            for s in &signatures {
                let n = tx.execute(
                    "INSERT INTO key_signatures (target_user, target_key, signer_user, signer_key_id, signature) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (target_user, target_key, signer_user, signer_key_id) \
                     DO UPDATE SET signature = excluded.signature WHERE key_signatures.signature != excluded.signature",
                    params![s.target_user, s.target_key, s.signer_user, s.signer_key_id, s.signature],
                )?;
                if n > 0 {
                    targets.insert(s.target_user.clone());
                }
            }
            for t in targets {
                let only_for = (t != signer).then_some(signer.as_str());
                record_device_change(tx, positions, &t, only_for)?;
            }
            Ok(())
        })
        .await
    }

    /// Device keys, cross-signing keys and the signatures `requester` may
    /// see, for each user with the devices asked for (all when empty).
    pub async fn query_keys(&self, requester: String, users: Vec<(String, Vec<String>)>) -> Result<KeyQueryRows> {
        self.read(move |c| {
            let mut out = KeyQueryRows::default();
            let mut devs = c.prepare_cached(
                "SELECT k.device_id, k.json, d.display_name FROM device_keys k LEFT JOIN devices d \
                 ON d.user_id = k.user_id AND d.device_id = k.device_id WHERE k.user_id = ?1 ORDER BY k.device_id",
            )?;
            let mut cross =
                c.prepare_cached("SELECT key_type, public_key, json FROM cross_signing_keys WHERE user_id = ?1")?;
            let mut sigs = c.prepare_cached(
                "SELECT target_key, signer_user, signer_key_id, signature FROM key_signatures \
                 WHERE target_user = ?1 AND (signer_user = ?1 OR signer_user = ?2)",
            )?;
            for (user, wanted) in users {
                let rows = devs.query_map([&user], |r| {
                    Ok(QueriedDevice {
                        user_id: user.clone(),
                        device_id: r.get(0)?,
                        json: r.get(1)?,
                        display_name: r.get(2)?,
                    })
                })?;
                for d in rows {
                    let d = d?;
                    if wanted.is_empty() || wanted.contains(&d.device_id) {
                        out.devices.push(d);
                    }
                }
                let rows = cross.query_map([&user], |r| {
                    Ok(CrossSigningKeyRow {
                        key_type: r.get(0)?,
                        public_key: r.get(1)?,
                        json: r.get(2)?,
                    })
                })?;
                for k in rows {
                    out.cross_signing.push((user.clone(), k?));
                }
                let rows = sigs.query_map(params![user, requester], |r| {
                    Ok(SignatureRow {
                        target_user: user.clone(),
                        target_key: r.get(0)?,
                        signer_user: r.get(1)?,
                        signer_key_id: r.get(2)?,
                        signature: r.get(3)?,
                    })
                })?;
                for s in rows {
                    out.signatures.push(s?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Users whose device lists `user` should refetch because of changes
    /// in (since, upto] — their devices or keys changed and they share a
    /// room, or they started sharing one — and users who no longer share
    /// any room with `user`. "Sharing" counts joined and invited members.
    pub async fn device_list_updates(&self, user: String, since: i64, upto: i64) -> Result<DeviceListUpdates> {
        self.read(move |c| Ok(device_list_updates(c, &user, since, upto)?))
            .await
    }

    /// Queues a to-device message for each target (every device of the
    /// user when the target names none; unknown devices are skipped), all
    /// at one stream position. Returns false, storing nothing, when the
    /// sender's device already used this transaction ID for this event type.
    pub async fn send_to_device(
        &self,
        sender: String,
        sender_device: String,
        txn_id: String,
        event_type: String,
        targets: Vec<ToDeviceTarget>,
    ) -> Result<bool> {
        self.write(move |tx, positions| {
            let fresh = tx.execute(
                "INSERT INTO to_device_txns (sender, sender_device, type, txn_id, ts) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![sender, sender_device, event_type, txn_id, now_ms()],
            )? > 0;
            if !fresh {
                return Ok(false);
            }
            // Retries come within minutes; a day later the ID can go.
            tx.execute(
                "DELETE FROM to_device_txns WHERE sender = ?1 AND sender_device = ?2 AND ts < ?3",
                params![sender, sender_device, now_ms() - TXN_LIFETIME_MS],
            )?;
            let mut pos = None;
            let mut devices_of = tx.prepare_cached("SELECT device_id FROM devices WHERE user_id = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO to_device (user_id, device_id, stream_pos, sender, type, content) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (user_id, device_id, stream_pos) DO UPDATE SET content = excluded.content",
            )?;
            for t in &targets {
                let devices: Vec<String> = devices_of
                    .query_map([&t.user_id], |r| r.get(0))?
                    .collect::<crate::db::Result<_>>()?;
                for d in devices {
                    if t.device_id.as_ref().is_some_and(|want| *want != d) {
                        continue;
                    }
                    let p = *pos.get_or_insert_with(|| positions.take());
                    insert.execute(params![t.user_id, d, p, sender, event_type, t.content])?;
                }
            }
            Ok(true)
        })
        .await
    }

    /// The device's pending to-device messages with positions in
    /// (since, upto], oldest first, at most `limit`.
    pub async fn to_device_messages(
        &self,
        user_id: String,
        device_id: String,
        since: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<ToDeviceMessage>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT stream_pos, sender, type, content FROM to_device WHERE user_id = ?1 AND device_id = ?2 \
                 AND stream_pos > ?3 AND stream_pos <= ?4 ORDER BY stream_pos LIMIT ?5",
            )?;
            let rows = st.query_map(params![user_id, device_id, since, upto, limit as i64], |r| {
                Ok(ToDeviceMessage {
                    stream_pos: r.get(0)?,
                    sender: r.get(1)?,
                    event_type: r.get(2)?,
                    content: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// The device acknowledged every to-device message up to `upto` (it
    /// synced with a token at or past them): they are deleted.
    pub async fn ack_to_device(&self, user_id: String, device_id: String, upto: i64) -> Result<()> {
        let (u, d) = (user_id.clone(), device_id.clone());
        let pending: bool = self
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM to_device WHERE user_id = ?1 AND device_id = ?2 AND stream_pos <= ?3)",
                )?
                .query_row(params![u, d, upto], |r| r.get(0))?)
            })
            .await?;
        if !pending {
            return Ok(());
        }
        self.write(move |tx, _| {
            let max: Option<i64> = tx.query_row(
                "SELECT MAX(stream_pos) FROM to_device WHERE user_id = ?1 AND device_id = ?2 AND stream_pos <= ?3",
                params![user_id, device_id, upto],
                |r| r.get(0),
            )?;
            if let Some(max) = max {
                // The counter restarts from the highest stored position:
                // remember this one, its rows are going.
                tx.execute(
                    "INSERT INTO stream_watermark (id, pos) VALUES (0, ?1) \
                     ON CONFLICT (id) DO UPDATE SET pos = CASE WHEN excluded.pos > stream_watermark.pos \
                     THEN excluded.pos ELSE stream_watermark.pos END",
                    [max],
                )?;
                tx.execute(
                    "DELETE FROM to_device WHERE user_id = ?1 AND device_id = ?2 AND stream_pos <= ?3",
                    params![user_id, device_id, upto],
                )?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static N: AtomicU64 = AtomicU64::new(0);

    /// A fresh store in a scratch file, removed on drop.
    pub(crate) struct Scratch {
        pub store: Store,
        dir: std::path::PathBuf,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub(crate) fn scratch() -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "missive-store-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("test.db")).unwrap();
        Scratch { store, dir }
    }

    async fn device(store: &Store, user: &str, device: &str) {
        store
            .create_session(crate::accounts::NewSession {
                user_id: user.into(),
                device_id: device.into(),
                display_name: None,
                access_hash: format!("{user}{device}").into_bytes(),
                refresh_hash: None,
                expires_ts: None,
            })
            .await
            .unwrap();
    }

    fn otk(i: usize) -> OneTimeKeyRow {
        OneTimeKeyRow {
            algorithm: "signed_curve25519".into(),
            key_id: format!("signed_curve25519:K{i:03}"),
            json: format!("{{\"key\":\"k{i}\"}}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_time_keys_are_claimed_once_under_concurrency() {
        let s = scratch();
        let store = s.store.clone();
        let up = KeyUpload {
            user_id: "@bob:x".into(),
            device_id: "B".into(),
            one_time_keys: (0..50).map(otk).collect(),
            fallback_keys: vec![OneTimeKeyRow {
                algorithm: "signed_curve25519".into(),
                key_id: "signed_curve25519:FB".into(),
                json: "{\"key\":\"fb\",\"fallback\":true}".into(),
            }],
            ..Default::default()
        };
        let counts = store.upload_keys(up).await.unwrap();
        assert_eq!(counts.one_time["signed_curve25519"], 50);
        assert_eq!(counts.unused_fallback, vec!["signed_curve25519".to_string()]);

        let mut tasks = vec![];
        for _ in 0..80 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .claim_keys(vec![("@bob:x".into(), "B".into(), "signed_curve25519".into())])
                    .await
                    .unwrap()
            }));
        }
        let mut otks = BTreeSet::new();
        let mut fallbacks = 0;
        for t in tasks {
            let got = t.await.unwrap();
            assert_eq!(got.len(), 1, "every claim gets a key while a fallback exists");
            let k = &got[0];
            if k.fallback {
                assert_eq!(k.key_id, "signed_curve25519:FB");
                fallbacks += 1;
            } else {
                assert!(
                    otks.insert(k.key_id.clone()),
                    "one-time key {} handed out twice",
                    k.key_id
                );
            }
        }
        assert_eq!(otks.len(), 50);
        assert_eq!(fallbacks, 30);
        let counts = store.key_counts("@bob:x".into(), "B".into()).await.unwrap();
        assert_eq!(counts.one_time.get("signed_curve25519"), None);
        assert!(counts.unused_fallback.is_empty(), "the fallback key is marked used");

        // Re-uploading the same fallback key keeps it used; a new one is unused.
        let same = KeyUpload {
            user_id: "@bob:x".into(),
            device_id: "B".into(),
            fallback_keys: vec![OneTimeKeyRow {
                algorithm: "signed_curve25519".into(),
                key_id: "signed_curve25519:FB".into(),
                json: "{\"key\":\"fb\",\"fallback\":true}".into(),
            }],
            ..Default::default()
        };
        assert!(store.upload_keys(same).await.unwrap().unused_fallback.is_empty());
        let new = KeyUpload {
            user_id: "@bob:x".into(),
            device_id: "B".into(),
            fallback_keys: vec![OneTimeKeyRow {
                algorithm: "signed_curve25519".into(),
                key_id: "signed_curve25519:FB2".into(),
                json: "{\"key\":\"fb2\",\"fallback\":true}".into(),
            }],
            ..Default::default()
        };
        assert_eq!(store.upload_keys(new).await.unwrap().unused_fallback.len(), 1);
    }

    #[tokio::test]
    async fn one_time_key_reupload_with_other_content_is_refused() {
        let s = scratch();
        let up = |json: &str| KeyUpload {
            user_id: "@a:x".into(),
            device_id: "A".into(),
            one_time_keys: vec![OneTimeKeyRow {
                algorithm: "signed_curve25519".into(),
                key_id: "signed_curve25519:1".into(),
                json: json.into(),
            }],
            ..Default::default()
        };
        s.store.upload_keys(up("{\"key\":\"a\"}")).await.unwrap();
        // The same key again is fine, and not counted twice.
        let c = s.store.upload_keys(up("{\"key\":\"a\"}")).await.unwrap();
        assert_eq!(c.one_time["signed_curve25519"], 1);
        assert!(matches!(
            s.store.upload_keys(up("{\"key\":\"b\"}")).await,
            Err(StoreError::Exists)
        ));
    }

    #[tokio::test]
    async fn to_device_messages_are_deleted_only_once_acknowledged() {
        let s = scratch();
        let store = &s.store;
        device(store, "@bob:x", "B1").await;
        device(store, "@bob:x", "B2").await;
        let send = |txn: &str, device: Option<&str>, n: usize| {
            store.send_to_device(
                "@alice:x".into(),
                "A".into(),
                txn.into(),
                "m.room.encrypted".into(),
                vec![ToDeviceTarget {
                    user_id: "@bob:x".into(),
                    device_id: device.map(Into::into),
                    content: format!("{{\"n\":{n}}}"),
                }],
            )
        };
        let start = store.persisted_upto();
        assert!(send("t1", Some("B1"), 1).await.unwrap());
        // A retried transaction stores nothing.
        assert!(!send("t1", Some("B1"), 1).await.unwrap());
        assert!(send("t2", None, 2).await.unwrap());
        // Unknown devices get nothing, and take no position.
        assert!(send("t3", Some("NOPE"), 3).await.unwrap());
        let upto = store.persisted_upto();
        assert_eq!(upto, start + 2);

        let b1 = store
            .to_device_messages("@bob:x".into(), "B1".into(), start, upto, 100)
            .await
            .unwrap();
        assert_eq!(
            b1.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            ["{\"n\":1}", "{\"n\":2}"]
        );
        let b2 = store
            .to_device_messages("@bob:x".into(), "B2".into(), start, upto, 100)
            .await
            .unwrap();
        assert_eq!(b2.len(), 1);

        // A sync that showed messages but was not acknowledged shows them again.
        let again = store
            .to_device_messages("@bob:x".into(), "B1".into(), start, upto, 1)
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].content, "{\"n\":1}");

        // Acknowledging the first position deletes only the first message.
        store
            .ack_to_device("@bob:x".into(), "B1".into(), again[0].stream_pos)
            .await
            .unwrap();
        let rest = store
            .to_device_messages("@bob:x".into(), "B1".into(), start, upto, 100)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].content, "{\"n\":2}");
        store.ack_to_device("@bob:x".into(), "B1".into(), upto).await.unwrap();
        assert!(
            store
                .to_device_messages("@bob:x".into(), "B1".into(), start, upto, 100)
                .await
                .unwrap()
                .is_empty()
        );
        // The other device's messages are untouched.
        assert_eq!(
            store
                .to_device_messages("@bob:x".into(), "B2".into(), start, upto, 100)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn stream_counter_does_not_go_back_after_acknowledged_messages_are_deleted() {
        let s = scratch();
        device(&s.store, "@bob:x", "B").await;
        s.store
            .send_to_device(
                "@alice:x".into(),
                "A".into(),
                "t".into(),
                "m.dummy".into(),
                vec![ToDeviceTarget {
                    user_id: "@bob:x".into(),
                    device_id: Some("B".into()),
                    content: "{}".into(),
                }],
            )
            .await
            .unwrap();
        let upto = s.store.persisted_upto();
        assert!(upto > 0);
        s.store.ack_to_device("@bob:x".into(), "B".into(), upto).await.unwrap();
        let path = s.dir.join("test.db");
        let reopened = Store::open(&path).unwrap();
        assert_eq!(reopened.persisted_upto(), upto);
    }

    #[tokio::test]
    async fn device_deletion_removes_keys_and_messages_and_is_a_change() {
        let s = scratch();
        let store = &s.store;
        device(store, "@bob:x", "B").await;
        store
            .upload_keys(KeyUpload {
                user_id: "@bob:x".into(),
                device_id: "B".into(),
                device_keys: Some("{\"device_id\":\"B\"}".into()),
                one_time_keys: vec![otk(1)],
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .send_to_device(
                "@alice:x".into(),
                "A".into(),
                "t".into(),
                "m.dummy".into(),
                vec![ToDeviceTarget {
                    user_id: "@bob:x".into(),
                    device_id: None,
                    content: "{}".into(),
                }],
            )
            .await
            .unwrap();
        let before = store.persisted_upto();
        store.delete_devices("@bob:x".into(), vec!["B".into()]).await.unwrap();
        let after = store.persisted_upto();
        assert!(after > before, "deleting a device takes a position");
        assert!(store.device_keys("@bob:x".into(), "B".into()).await.unwrap().is_none());
        assert!(
            store
                .key_counts("@bob:x".into(), "B".into())
                .await
                .unwrap()
                .one_time
                .is_empty()
        );
        assert!(
            store
                .to_device_messages("@bob:x".into(), "B".into(), 0, after, 100)
                .await
                .unwrap()
                .is_empty()
        );
        let u = store.device_list_updates("@bob:x".into(), before, after).await.unwrap();
        assert_eq!(u.changed, vec!["@bob:x".to_string()]);
    }

    /// Sets a membership as the room code would: an event row at a fresh
    /// position and the current state, in one transaction.
    async fn member(store: &Store, room: &str, user: &str, membership: &str) {
        let (room, user, membership) = (room.to_owned(), user.to_owned(), membership.to_owned());
        store
            .write(move |tx, positions| {
                let pos = positions.take();
                let event_id = format!("$e{pos}");
                tx.execute(
                    "INSERT INTO events (stream_pos, event_id, room_id, type, state_key, sender, depth, origin_server_ts, json, state_group) \
                     VALUES (?1, ?2, ?3, 'm.room.member', ?4, ?4, 1, 0, ?5, 0)",
                    params![pos, event_id, room, user, format!("{{\"content\":{{\"membership\":\"{membership}\"}}}}")],
                )?;
                tx.execute(
                    "INSERT INTO current_state (room_id, type, state_key, event_id, membership, stream_pos) \
                     VALUES (?1, 'm.room.member', ?2, ?3, ?4, ?5) ON CONFLICT (room_id, type, state_key) DO UPDATE SET \
                     event_id = excluded.event_id, membership = excluded.membership, stream_pos = excluded.stream_pos",
                    params![room, user, event_id, membership, pos],
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }

    async fn new_device_keys(store: &Store, user: &str, device: &str) {
        store
            .upload_keys(KeyUpload {
                user_id: user.into(),
                device_id: device.into(),
                device_keys: Some(format!("{{\"device_id\":\"{device}\"}}")),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn device_list_changes_follow_shared_rooms() {
        let s = scratch();
        let store = &s.store;
        let updates = |user: &str, since: i64| store.device_list_updates(user.into(), since, store.persisted_upto());
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        member(store, "!r", "@alice:x", "join").await;
        member(store, "!r", "@bob:x", "join").await;
        let t0 = store.persisted_upto();

        // Bob's new device is news to Alice and to Bob; Carol shares no room.
        new_device_keys(store, "@bob:x", "B2").await;
        new_device_keys(store, "@carol:x", "C1").await;
        assert_eq!(updates("@alice:x", t0).await.unwrap().changed, strings(&["@bob:x"]));
        assert_eq!(updates("@bob:x", t0).await.unwrap().changed, strings(&["@bob:x"]));
        assert_eq!(updates("@carol:x", t0).await.unwrap().changed, strings(&["@carol:x"]));
        // Uploading the same keys again is no change.
        let t1 = store.persisted_upto();
        new_device_keys(store, "@bob:x", "B2").await;
        assert_eq!(store.persisted_upto(), t1);

        // Carol is invited, then joins: the members learn of her, she of them.
        member(store, "!r", "@carol:x", "invite").await;
        assert_eq!(updates("@alice:x", t1).await.unwrap().changed, strings(&["@carol:x"]));
        assert_eq!(
            updates("@carol:x", t1).await.unwrap().changed,
            strings(&["@alice:x", "@bob:x", "@carol:x"])
        );
        member(store, "!r", "@carol:x", "join").await;
        let t2 = store.persisted_upto();

        // Bob leaves the only room he shares: Alice and Carol are told he left,
        // and Bob that they did.
        member(store, "!r", "@bob:x", "leave").await;
        let a = updates("@alice:x", t2).await.unwrap();
        assert_eq!(a.left, strings(&["@bob:x"]));
        assert!(a.changed.is_empty());
        let b = updates("@bob:x", t2).await.unwrap();
        assert_eq!(b.left, strings(&["@alice:x", "@carol:x"]));
        // His later key changes no longer reach them.
        let t3 = store.persisted_upto();
        new_device_keys(store, "@bob:x", "B3").await;
        assert!(updates("@alice:x", t3).await.unwrap().changed.is_empty());

        // If he still shared another room with Alice, he would not have left.
        member(store, "!r2", "@alice:x", "join").await;
        member(store, "!r2", "@bob:x", "join").await;
        member(store, "!r", "@bob:x", "join").await;
        let t4 = store.persisted_upto();
        member(store, "!r", "@bob:x", "leave").await;
        let a = updates("@alice:x", t4).await.unwrap();
        assert!(a.left.is_empty() && a.changed.is_empty(), "{a:?}");
        assert_eq!(updates("@carol:x", t4).await.unwrap().left, strings(&["@bob:x"]));

        // A signature Alice makes on Carol's key is news only to Alice.
        let t5 = store.persisted_upto();
        store
            .add_signatures(
                "@alice:x".into(),
                vec![SignatureRow {
                    target_user: "@carol:x".into(),
                    target_key: "CAROLMASTER".into(),
                    signer_user: "@alice:x".into(),
                    signer_key_id: "ed25519:ALICEUSK".into(),
                    signature: "sig".into(),
                }],
            )
            .await
            .unwrap();
        assert_eq!(updates("@alice:x", t5).await.unwrap().changed, strings(&["@carol:x"]));
        assert!(updates("@bob:x", t5).await.unwrap().changed.is_empty());
        assert!(updates("@carol:x", t5).await.unwrap().changed.is_empty());
        // And only Alice and Carol's own signatures show in Alice's queries.
        let q = store
            .query_keys("@bob:x".into(), vec![("@carol:x".into(), vec![])])
            .await
            .unwrap();
        assert!(q.signatures.is_empty());
        let q = store
            .query_keys("@alice:x".into(), vec![("@carol:x".into(), vec![])])
            .await
            .unwrap();
        assert_eq!(q.signatures.len(), 1);
        assert_eq!(q.devices.len(), 1);
    }

    #[tokio::test]
    async fn new_device_keys_drop_signatures_made_on_the_old_ones() {
        let s = scratch();
        let store = &s.store;
        let upload = |json: &str| {
            store.upload_keys(KeyUpload {
                user_id: "@a:x".into(),
                device_id: "D".into(),
                device_keys: Some(json.into()),
                ..Default::default()
            })
        };
        let sig = || SignatureRow {
            target_user: "@a:x".into(),
            target_key: "D".into(),
            signer_user: "@a:x".into(),
            signer_key_id: "ed25519:SSK".into(),
            signature: "s".into(),
        };
        let sigs = || async {
            store
                .query_keys("@a:x".into(), vec![("@a:x".into(), vec![])])
                .await
                .unwrap()
                .signatures
                .len()
        };
        upload("{\"keys\":{\"k\":1},\"signatures\":{}}").await.unwrap();
        store.add_signatures("@a:x".into(), vec![sig()]).await.unwrap();
        // Only the signatures differ: the separate signature still holds.
        upload("{\"keys\":{\"k\":1},\"signatures\":{\"@a:x\":{}}}")
            .await
            .unwrap();
        assert_eq!(sigs().await, 1);
        // Other keys: it no longer does.
        upload("{\"keys\":{\"k\":2},\"signatures\":{}}").await.unwrap();
        assert_eq!(sigs().await, 0);
    }
}
