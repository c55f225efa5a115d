//! Other servers' signing keys and this server's retired ones.
//!
//! A remote key is kept with the time until which it may be used
//! (`valid_until_ts`, already capped by the caller as the spec requires);
//! a key the server listed under `old_verify_keys` also has `expired_ts`,
//! and is only good for what was signed before then.

use crate::db::params;

use crate::{Result, store::Store};

/// One verify key of another server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKeyRow {
    pub server_name: String,
    /// `ed25519:abc`.
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    pub valid_until_ts: i64,
    /// Set for a key the server no longer uses.
    pub expired_ts: Option<i64>,
    pub fetched_ts: i64,
}

/// One of this server's retired keys, still published so that what it
/// signed can be checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldServerKey {
    pub key_id: String,
    pub public_key: String,
    pub expired_ts: i64,
}

impl Store {
    /// Every key known for a server.
    pub async fn server_keys(&self, server_name: String) -> Result<Vec<ServerKeyRow>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts \
                 FROM remote_server_keys WHERE server_name = ?1",
            )?;
            let rows = st.query_map([&server_name], |r| {
                Ok(ServerKeyRow {
                    server_name: r.get(0)?,
                    key_id: r.get(1)?,
                    public_key: r.get(2)?,
                    valid_until_ts: r.get(3)?,
                    expired_ts: r.get(4)?,
                    fetched_ts: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }

    /// Records keys as just fetched: a key seen again takes the new
    /// validity (a server may shorten it as well as extend it).
    pub async fn store_server_keys(&self, rows: Vec<ServerKeyRow>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write(move |tx, _| {
            let mut st = tx.prepare_cached(
                "INSERT INTO remote_server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (server_name, key_id) DO UPDATE SET \
                 public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts, \
                 expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts",
            )?;
            for r in &rows {
                st.execute(params![
                    r.server_name,
                    r.key_id,
                    r.public_key,
                    r.valid_until_ts,
                    r.expired_ts,
                    r.fetched_ts
                ])?;
            }
            Ok(())
        })
        .await
    }

    /// Retires this server's signing key for a new one, in one
    /// transaction: the old key's public half goes to `old_server_keys`
    /// (other servers still verify old events with it), the new key
    /// becomes the one `signing_key` returns. Processes pick it up when
    /// they start.
    pub async fn rotate_signing_key(
        &self,
        old_key_id: String,
        old_public_key: String,
        new_version: String,
        new_der: Vec<u8>,
        now: i64,
    ) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "INSERT INTO old_server_keys (key_id, public_key, expired_ts) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key_id) DO NOTHING",
                params![old_key_id, old_public_key, now],
            )?;
            tx.execute("DELETE FROM server_keys", [])?;
            tx.execute(
                "INSERT INTO server_keys (version, der, created_ts) VALUES (?1, ?2, ?3)",
                params![new_version, new_der, now],
            )?;
            Ok(())
        })
        .await
    }

    /// This server's retired keys.
    pub async fn old_server_keys(&self) -> Result<Vec<OldServerKey>> {
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT key_id, public_key, expired_ts FROM old_server_keys ORDER BY key_id")?;
            let rows = st.query_map([], |r| {
                Ok(OldServerKey {
                    key_id: r.get(0)?,
                    public_key: r.get(1)?,
                    expired_ts: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<crate::db::Result<_>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::tests::scratch;

    fn row(key_id: &str, valid_until_ts: i64) -> ServerKeyRow {
        ServerKeyRow {
            server_name: "remote.example".into(),
            key_id: key_id.into(),
            public_key: "AAAA".into(),
            valid_until_ts,
            expired_ts: None,
            fetched_ts: 1,
        }
    }

    #[tokio::test]
    async fn a_refetched_key_takes_the_new_validity() {
        let s = scratch();
        let store = &s.store;
        store.store_server_keys(vec![row("ed25519:a", 10)]).await.unwrap();
        store
            .store_server_keys(vec![row("ed25519:a", 20), row("ed25519:b", 5)])
            .await
            .unwrap();
        let mut keys = store.server_keys("remote.example".into()).await.unwrap();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        assert_eq!(keys, vec![row("ed25519:a", 20), row("ed25519:b", 5)]);
        assert!(store.server_keys("other.example".into()).await.unwrap().is_empty());
        assert!(store.old_server_keys().await.unwrap().is_empty());
    }
}
