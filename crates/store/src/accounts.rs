//! Users, devices, access and refresh tokens, registration tokens, the
//! server's signing keys.

use crate::db::{OptionalExtension, params};

use crate::{
    DeviceRow, RegistrationToken, Result, StoreError, TokenOwner, UserRow,
    store::{Store, now_ms},
};

fn user_row(r: &crate::db::Row) -> crate::db::Result<UserRow> {
    Ok(UserRow {
        user_id: r.get(0)?,
        password_hash: r.get(1)?,
        is_admin: r.get(2)?,
        deactivated: r.get(3)?,
        displayname: r.get(4)?,
        avatar_url: r.get(5)?,
    })
}

/// A new device's tokens: access token hash, optional refresh token hash and expiry.
pub struct NewSession {
    pub user_id: String,
    pub device_id: String,
    pub display_name: Option<String>,
    pub access_hash: Vec<u8>,
    pub refresh_hash: Option<Vec<u8>>,
    pub expires_ts: Option<i64>,
}

impl Store {
    pub async fn signing_key(&self) -> Result<Option<(String, Vec<u8>)>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT version, der FROM server_keys ORDER BY created_ts DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }

    /// Stores the server's first signing key, unless a key exists already:
    /// processes starting together on one database must end up signing
    /// with the same key (writes are serialised, so one insert wins).
    pub async fn insert_signing_key(&self, version: String, der: Vec<u8>) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "INSERT INTO server_keys (version, der, created_ts) SELECT ?1, ?2, ?3 \
                 WHERE NOT EXISTS (SELECT 1 FROM server_keys)",
                params![version, der, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn create_user(
        &self,
        user_id: String,
        password_hash: Option<String>,
        is_admin: bool,
        displayname: Option<String>,
    ) -> Result<()> {
        self.write(move |tx, _| {
            let n = tx.execute(
                "INSERT INTO users (user_id, password_hash, is_admin, displayname, created_ts) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![user_id, password_hash, is_admin, displayname, now_ms()],
            )?;
            if n == 0 { Err(StoreError::Exists) } else { Ok(()) }
        })
        .await
    }

    /// Creates a guest account: no password, marked as a guest.
    pub async fn create_guest(&self, user_id: String) -> Result<()> {
        self.write(move |tx, _| {
            let n = tx.execute(
                "INSERT INTO users (user_id, created_ts) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![user_id, now_ms()],
            )?;
            if n == 0 {
                return Err(StoreError::Exists);
            }
            tx.execute("INSERT INTO guest_users (user_id) VALUES (?1)", [&user_id])?;
            Ok(())
        })
        .await
    }

    /// Those of `users` who are guests.
    pub async fn guests_among(&self, users: Vec<String>) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT 1 FROM guest_users WHERE user_id = ?1")?;
            let mut out = vec![];
            for u in users {
                if st.query([&u])?.next()?.is_some() {
                    out.push(u);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn user(&self, user_id: String) -> Result<Option<UserRow>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT user_id, password_hash, is_admin, deactivated, displayname, avatar_url FROM users WHERE user_id = ?1",
                [user_id],
                user_row,
            )
            .optional()?)
        })
        .await
    }

    pub async fn user_count(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?))
            .await
    }

    pub async fn set_password(&self, user_id: String, hash: String) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE user_id = ?1",
                params![user_id, hash],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks the user deactivated and removes every device and token.
    pub async fn deactivate_user(&self, user_id: String) -> Result<()> {
        self.write(move |tx, positions| {
            let devices: Vec<String> = tx
                .prepare("SELECT device_id FROM devices WHERE user_id = ?1")?
                .query_map([&user_id], |r| r.get(0))?
                .collect::<crate::db::Result<_>>()?;
            for d in &devices {
                crate::e2ee::delete_device_e2ee(tx, &user_id, d)?;
            }
            if !devices.is_empty() {
                crate::e2ee::record_device_change(tx, positions, &user_id, None)?;
            }
            tx.execute(
                "UPDATE users SET deactivated = 1, password_hash = NULL, displayname = NULL, avatar_url = NULL WHERE user_id = ?1",
                [&user_id],
            )?;
            tx.execute("DELETE FROM access_tokens WHERE user_id = ?1", [&user_id])?;
            tx.execute("DELETE FROM refresh_tokens WHERE user_id = ?1", [&user_id])?;
            tx.execute("DELETE FROM devices WHERE user_id = ?1", [&user_id])?;
            Ok(())
        })
        .await
    }

    pub async fn set_displayname(&self, user_id: String, value: Option<String>) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE users SET displayname = ?2 WHERE user_id = ?1",
                params![user_id, value],
            )?;
            Ok(())
        })
        .await
    }

    /// Sets (or with `None` removes) an extended profile field.
    pub async fn set_profile_field(
        &self,
        user_id: String,
        field: String,
        value: Option<serde_json::Value>,
    ) -> Result<()> {
        self.write(move |tx, _| {
            match value {
                Some(v) => tx.execute(
                    "INSERT INTO profile_fields (user_id, field, value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (user_id, field) DO UPDATE SET value = excluded.value",
                    params![user_id, field, v.to_string()],
                )?,
                None => tx.execute(
                    "DELETE FROM profile_fields WHERE user_id = ?1 AND field = ?2",
                    params![user_id, field],
                )?,
            };
            Ok(())
        })
        .await
    }

    /// A user's extended profile fields (everything but displayname and avatar_url).
    pub async fn profile_fields(&self, user_id: String) -> Result<Vec<(String, serde_json::Value)>> {
        self.read(move |c| {
            let mut st =
                c.prepare_cached("SELECT field, value FROM profile_fields WHERE user_id = ?1 ORDER BY field")?;
            let rows = st.query_map([user_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = vec![];
            for row in rows {
                let (k, v) = row?;
                out.push((
                    k,
                    serde_json::from_str(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                ));
            }
            Ok(out)
        })
        .await
    }

    pub async fn set_avatar_url(&self, user_id: String, value: Option<String>) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE users SET avatar_url = ?2 WHERE user_id = ?1",
                params![user_id, value],
            )?;
            Ok(())
        })
        .await
    }

    /// Creates (or re-uses, on re-login with the same device ID) a device with fresh tokens.
    /// Tokens previously issued to that device are revoked. A new device is
    /// a device-list change for everyone sharing a room with the user;
    /// returns whether the device is new.
    pub async fn create_session(&self, s: NewSession) -> Result<bool> {
        self.write(move |tx, positions| {
            let existed = tx
                .query_row(
                    "SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2",
                    params![s.user_id, s.device_id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !existed {
                crate::e2ee::record_device_change(tx, positions, &s.user_id, None)?;
            }
            tx.execute(
                "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = COALESCE(excluded.display_name, devices.display_name)",
                params![s.user_id, s.device_id, s.display_name, now_ms()],
            )?;
            tx.execute("DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2", params![s.user_id, s.device_id])?;
            tx.execute("DELETE FROM refresh_tokens WHERE user_id = ?1 AND device_id = ?2", params![s.user_id, s.device_id])?;
            tx.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, expires_ts) VALUES (?1, ?2, ?3, ?4)",
                params![s.access_hash, s.user_id, s.device_id, s.expires_ts],
            )?;
            if let Some(r) = s.refresh_hash {
                tx.execute(
                    "INSERT INTO refresh_tokens (token_hash, user_id, device_id) VALUES (?1, ?2, ?3)",
                    params![r, s.user_id, s.device_id],
                )?;
            }
            Ok(!existed)
        })
        .await
    }

    pub async fn token_owner(&self, token_hash: Vec<u8>) -> Result<Option<TokenOwner>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT t.user_id, t.device_id, t.expires_ts,                  EXISTS (SELECT 1 FROM guest_users g WHERE g.user_id = t.user_id)                  FROM access_tokens t WHERE t.token_hash = ?1",
                [token_hash],
                |r| {
                    Ok(TokenOwner {
                        user_id: r.get(0)?,
                        device_id: r.get(1)?,
                        expires_ts: r.get(2)?,
                        is_guest: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Swaps a refresh token for a new access/refresh pair; `None` if the
    /// refresh token is unknown (already used or revoked).
    pub async fn rotate_refresh_token(
        &self,
        old_refresh: Vec<u8>,
        new_access: Vec<u8>,
        new_refresh: Vec<u8>,
        expires_ts: Option<i64>,
    ) -> Result<Option<(String, String)>> {
        self.write(move |tx, _| {
            let owner: Option<(String, String)> = tx
                .query_row(
                    "SELECT user_id, device_id FROM refresh_tokens WHERE token_hash = ?1",
                    [&old_refresh],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((user, device)) = owner else { return Ok(None) };
            tx.execute(
                "DELETE FROM refresh_tokens WHERE user_id = ?1 AND device_id = ?2",
                params![user, device],
            )?;
            tx.execute(
                "DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2",
                params![user, device],
            )?;
            tx.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, expires_ts) VALUES (?1, ?2, ?3, ?4)",
                params![new_access, user, device, expires_ts],
            )?;
            tx.execute(
                "INSERT INTO refresh_tokens (token_hash, user_id, device_id) VALUES (?1, ?2, ?3)",
                params![new_refresh, user, device],
            )?;
            Ok(Some((user, device)))
        })
        .await
    }

    pub async fn devices(&self, user_id: String) -> Result<Vec<DeviceRow>> {
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices WHERE user_id = ?1 ORDER BY device_id",
            )?;
            let rows = st.query_map([user_id], |r| {
                Ok(DeviceRow { device_id: r.get(0)?, display_name: r.get(1)?, last_seen_ts: r.get(2)?, last_seen_ip: r.get(3)? })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Renames a device; whether it exists. A new name is a device-list
    /// change (clients show the names of others' devices).
    pub async fn set_device_name(&self, user_id: String, device_id: String, name: Option<String>) -> Result<bool> {
        self.write(move |tx, positions| {
            let old: Option<Option<String>> = tx
                .query_row(
                    "SELECT display_name FROM devices WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, device_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(old) = old else { return Ok(false) };
            if old != name {
                tx.execute(
                    "UPDATE devices SET display_name = ?3 WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, device_id, name],
                )?;
                crate::e2ee::record_device_change(tx, positions, &user_id, None)?;
            }
            Ok(true)
        })
        .await
    }

    pub async fn touch_device(&self, user_id: String, device_id: String, ip: Option<String>) -> Result<()> {
        self.write_unordered(move |tx| {
            tx.execute(
                "UPDATE devices SET last_seen_ts = ?3, last_seen_ip = COALESCE(?4, last_seen_ip) WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id, now_ms(), ip],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes devices, their tokens and their end-to-end encryption keys
    /// and pending to-device messages; logging out is deleting the device.
    /// Removing a device is a device-list change.
    pub async fn delete_devices(&self, user_id: String, device_ids: Vec<String>) -> Result<()> {
        self.write(move |tx, positions| {
            let mut removed = false;
            for d in &device_ids {
                crate::e2ee::delete_device_e2ee(tx, &user_id, d)?;
                tx.execute(
                    "DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, d],
                )?;
                tx.execute(
                    "DELETE FROM refresh_tokens WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, d],
                )?;
                removed |= tx.execute(
                    "DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, d],
                )? > 0;
            }
            if removed {
                crate::e2ee::record_device_change(tx, positions, &user_id, None)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn create_registration_token(&self, t: RegistrationToken) -> Result<()> {
        self.write(move |tx, _| {
            let n = tx.execute(
                "INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_ts) VALUES (?1, ?2, 0, ?3) ON CONFLICT DO NOTHING",
                params![t.token, t.uses_allowed, t.expiry_ts],
            )?;
            if n == 0 { Err(StoreError::Exists) } else { Ok(()) }
        })
        .await
    }

    pub async fn registration_token(&self, token: String) -> Result<Option<RegistrationToken>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT token, uses_allowed, completed, expiry_ts FROM registration_tokens WHERE token = ?1",
                [token],
                |r| {
                    Ok(RegistrationToken {
                        token: r.get(0)?,
                        uses_allowed: r.get(1)?,
                        completed: r.get(2)?,
                        expiry_ts: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Counts one completed registration against the token, atomically;
    /// false if it was used up or expired meanwhile.
    pub async fn use_registration_token(&self, token: String) -> Result<bool> {
        self.write(move |tx, _| {
            Ok(tx.execute(
                "UPDATE registration_tokens SET completed = completed + 1 WHERE token = ?1 \
                 AND (uses_allowed IS NULL OR completed < uses_allowed) AND (expiry_ts IS NULL OR expiry_ts > ?2)",
                params![token, now_ms()],
            )? > 0)
        })
        .await
    }

    pub async fn create_login_token(&self, token_hash: Vec<u8>, user_id: String, expires_ts: i64) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute("DELETE FROM login_tokens WHERE expires_ts <= ?1", params![now_ms()])?;
            tx.execute(
                "INSERT INTO login_tokens (token_hash, user_id, expires_ts) VALUES (?1, ?2, ?3)",
                params![token_hash, user_id, expires_ts],
            )?;
            Ok(())
        })
        .await
    }

    /// Spends a login token: its user if it was valid, and it is gone either way.
    pub async fn take_login_token(&self, token_hash: Vec<u8>) -> Result<Option<String>> {
        self.write(move |tx, _| {
            let row: Option<(String, i64)> = tx
                .query_row(
                    "SELECT user_id, expires_ts FROM login_tokens WHERE token_hash = ?1",
                    [&token_hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            tx.execute("DELETE FROM login_tokens WHERE token_hash = ?1", [&token_hash])?;
            Ok(row.filter(|(_, exp)| *exp > now_ms()).map(|(u, _)| u))
        })
        .await
    }
}
