//! Server-side key backup: a user's backup versions and the encrypted room
//! keys stored in them. The server sees only what decides which of two
//! copies of a session to keep (`is_verified`, `first_message_index`,
//! `forwarded_count`); the keys themselves are encrypted by the client.

use crate::db::{Connection, OptionalExtension, params};

use crate::{Result, store::Store};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupVersion {
    pub version: i64,
    /// `{"algorithm": …, "auth_data": …}` as JSON.
    pub algorithm: String,
    pub etag: i64,
    pub count: i64,
}

/// One backed-up session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupKey {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    /// The whole `KeyBackupData` object as JSON.
    pub json: String,
}

impl BackupKey {
    /// Whether this copy of a session should replace `old`, by the spec's
    /// rule: a verified key beats an unverified one, then the lower first
    /// message index wins, then the lower forwarded count.
    pub fn better_than(&self, old: &BackupKey) -> bool {
        if self.is_verified != old.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != old.first_message_index {
            return self.first_message_index < old.first_message_index;
        }
        self.forwarded_count < old.forwarded_count
    }
}

/// The outcome of writing to a backup version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupWrite {
    /// Written (or nothing to change): the version's etag and key count.
    Done {
        etag: i64,
        count: i64,
    },
    NotFound,
    /// Keys may only be added to the current version; this is it.
    NotCurrent {
        current: i64,
    },
}

fn current_version(c: &Connection<'_>, user: &str) -> crate::db::Result<Option<i64>> {
    c.query_row(
        "SELECT MAX(version) FROM backup_versions WHERE user_id = ?1 AND deleted = 0",
        [user],
        |r| r.get(0),
    )
}

fn exists(c: &Connection<'_>, user: &str, version: i64) -> crate::db::Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM backup_versions WHERE user_id = ?1 AND version = ?2 AND deleted = 0)",
        params![user, version],
        |r| r.get(0),
    )
}

fn etag_and_count(c: &Connection<'_>, user: &str, version: i64) -> crate::db::Result<(i64, i64)> {
    c.query_row(
        "SELECT v.etag, (SELECT COUNT(*) FROM backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version) \
         FROM backup_versions v WHERE v.user_id = ?1 AND v.version = ?2",
        params![user, version],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

fn key_row(r: &crate::db::Row) -> crate::db::Result<BackupKey> {
    Ok(BackupKey {
        room_id: r.get(0)?,
        session_id: r.get(1)?,
        first_message_index: r.get(2)?,
        forwarded_count: r.get(3)?,
        is_verified: r.get(4)?,
        json: r.get(5)?,
    })
}

impl Store {
    /// Creates a backup version, which becomes the current one.
    pub async fn create_backup_version(&self, user_id: String, algorithm: String) -> Result<i64> {
        self.write(move |tx, _| {
            let version: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM backup_versions WHERE user_id = ?1",
                [&user_id],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO backup_versions (user_id, version, algorithm) VALUES (?1, ?2, ?3)",
                params![user_id, version, algorithm],
            )?;
            Ok(version)
        })
        .await
    }

    /// A backup version, or the current one when `version` is `None`.
    pub async fn backup_version(&self, user_id: String, version: Option<i64>) -> Result<Option<BackupVersion>> {
        self.read(move |c| {
            let version = match version {
                Some(v) => v,
                None => match current_version(c, &user_id)? {
                    Some(v) => v,
                    None => return Ok(None),
                },
            };
            Ok(c.query_row(
                "SELECT v.version, v.algorithm, v.etag, \
                 (SELECT COUNT(*) FROM backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version) \
                 FROM backup_versions v WHERE v.user_id = ?1 AND v.version = ?2 AND v.deleted = 0",
                params![user_id, version],
                |r| {
                    Ok(BackupVersion {
                        version: r.get(0)?,
                        algorithm: r.get(1)?,
                        etag: r.get(2)?,
                        count: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Replaces a version's algorithm and auth data; false if it does not exist.
    pub async fn update_backup_version(&self, user_id: String, version: i64, algorithm: String) -> Result<bool> {
        self.write(move |tx, _| {
            Ok(tx.execute(
                "UPDATE backup_versions SET algorithm = ?3 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
                params![user_id, version, algorithm],
            )? > 0)
        })
        .await
    }

    /// Deletes a version and its keys; false if it does not exist.
    pub async fn delete_backup_version(&self, user_id: String, version: i64) -> Result<bool> {
        self.write(move |tx, _| {
            let n = tx.execute(
                "UPDATE backup_versions SET deleted = 1 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
                params![user_id, version],
            )?;
            tx.execute(
                "DELETE FROM backup_keys WHERE user_id = ?1 AND version = ?2",
                params![user_id, version],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Stores keys in the current version, each replacing the stored copy
    /// of its session only when [better](BackupKey::better_than). The etag
    /// changes when anything was written.
    pub async fn put_backup_keys(&self, user_id: String, version: i64, keys: Vec<BackupKey>) -> Result<BackupWrite> {
        self.write(move |tx, _| {
            if !exists(tx, &user_id, version)? {
                return Ok(BackupWrite::NotFound);
            }
            let current = current_version(tx, &user_id)?.unwrap_or(version);
            if current != version {
                return Ok(BackupWrite::NotCurrent { current });
            }
            let mut old_of = tx.prepare_cached(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, json FROM backup_keys \
                 WHERE user_id = ?1 AND version = ?2 AND room_id = ?3 AND session_id = ?4",
            )?;
            let mut put = tx.prepare_cached(
                "INSERT INTO backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, json) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
                 first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count, \
                 is_verified = excluded.is_verified, json = excluded.json",
            )?;
            let mut changed = false;
            for k in keys {
                let old = old_of
                    .query_row(params![user_id, version, k.room_id, k.session_id], key_row)
                    .optional()?;
                if old.as_ref().is_some_and(|o| !k.better_than(o)) {
                    continue;
                }
                put.execute(params![
                    user_id,
                    version,
                    k.room_id,
                    k.session_id,
                    k.first_message_index,
                    k.forwarded_count,
                    k.is_verified,
                    k.json
                ])?;
                changed = true;
            }
            if changed {
                tx.execute(
                    "UPDATE backup_versions SET etag = etag + 1 WHERE user_id = ?1 AND version = ?2",
                    params![user_id, version],
                )?;
            }
            let (etag, count) = etag_and_count(tx, &user_id, version)?;
            Ok(BackupWrite::Done { etag, count })
        })
        .await
    }

    /// Keys of a version, all or of one room or one session; `None` if the
    /// version does not exist.
    pub async fn backup_keys(
        &self,
        user_id: String,
        version: i64,
        room_id: Option<String>,
        session_id: Option<String>,
    ) -> Result<Option<Vec<BackupKey>>> {
        self.read(move |c| {
            if !exists(c, &user_id, version)? {
                return Ok(None);
            }
            let mut st = c.prepare_cached(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, json FROM backup_keys \
                 WHERE user_id = ?1 AND version = ?2 AND (room_id = ?3 OR ?3 IS NULL) AND (session_id = ?4 OR ?4 IS NULL) \
                 ORDER BY room_id, session_id",
            )?;
            let rows = st.query_map(params![user_id, version, room_id, session_id], key_row)?;
            Ok(Some(rows.collect::<crate::db::Result<_>>()?))
        })
        .await
    }

    /// Deletes keys of a version, all or of one room or one session.
    pub async fn delete_backup_keys(
        &self,
        user_id: String,
        version: i64,
        room_id: Option<String>,
        session_id: Option<String>,
    ) -> Result<BackupWrite> {
        self.write(move |tx, _| {
            if !exists(tx, &user_id, version)? {
                return Ok(BackupWrite::NotFound);
            }
            let n = tx.execute(
                "DELETE FROM backup_keys WHERE user_id = ?1 AND version = ?2 \
                 AND (room_id = ?3 OR ?3 IS NULL) AND (session_id = ?4 OR ?4 IS NULL)",
                params![user_id, version, room_id, session_id],
            )?;
            if n > 0 {
                tx.execute(
                    "UPDATE backup_versions SET etag = etag + 1 WHERE user_id = ?1 AND version = ?2",
                    params![user_id, version],
                )?;
            }
            let (etag, count) = etag_and_count(tx, &user_id, version)?;
            Ok(BackupWrite::Done { etag, count })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::tests::scratch;

    fn key(session: &str, verified: bool, index: i64, forwarded: i64) -> BackupKey {
        BackupKey {
            room_id: "!r:x".into(),
            session_id: session.into(),
            first_message_index: index,
            forwarded_count: forwarded,
            is_verified: verified,
            json: format!("{{\"v\":{verified},\"i\":{index},\"f\":{forwarded}}}"),
        }
    }

    #[test]
    fn the_better_copy_of_a_session_wins() {
        // Verified beats unverified whatever the index.
        assert!(key("s", true, 9, 9).better_than(&key("s", false, 0, 0)));
        assert!(!key("s", false, 0, 0).better_than(&key("s", true, 9, 9)));
        // Then the lower first message index, then the lower forwarded count.
        assert!(key("s", false, 1, 5).better_than(&key("s", false, 2, 0)));
        assert!(key("s", false, 1, 0).better_than(&key("s", false, 1, 1)));
        assert!(!key("s", false, 1, 1).better_than(&key("s", false, 1, 1)));
    }

    #[tokio::test]
    async fn backup_versions_keys_and_etags() {
        let s = scratch();
        let store = &s.store;
        let u = || "@a:x".to_string();
        assert_eq!(store.backup_version(u(), None).await.unwrap(), None);
        let v1 = store
            .create_backup_version(u(), "{\"algorithm\":\"a\"}".into())
            .await
            .unwrap();
        let put = |v, keys| store.put_backup_keys(u(), v, keys);
        assert_eq!(
            put(v1, vec![key("s1", false, 5, 0)]).await.unwrap(),
            BackupWrite::Done { etag: 1, count: 1 }
        );
        // A worse copy changes nothing, the etag included.
        assert_eq!(
            put(v1, vec![key("s1", false, 6, 0)]).await.unwrap(),
            BackupWrite::Done { etag: 1, count: 1 }
        );
        assert_eq!(
            put(v1, vec![key("s1", false, 2, 0), key("s2", true, 0, 0)])
                .await
                .unwrap(),
            BackupWrite::Done { etag: 2, count: 2 }
        );
        let all = store.backup_keys(u(), v1, None, None).await.unwrap().unwrap();
        assert_eq!(all[0].first_message_index, 2);

        // A new version becomes current; the old one takes no more keys.
        let v2 = store
            .create_backup_version(u(), "{\"algorithm\":\"a\"}".into())
            .await
            .unwrap();
        assert!(v2 > v1);
        assert_eq!(store.backup_version(u(), None).await.unwrap().unwrap().version, v2);
        assert_eq!(
            put(v1, vec![key("s3", false, 0, 0)]).await.unwrap(),
            BackupWrite::NotCurrent { current: v2 }
        );
        assert_eq!(
            store
                .delete_backup_keys(u(), v1, Some("!r:x".into()), Some("s1".into()))
                .await
                .unwrap(),
            BackupWrite::Done { etag: 3, count: 1 }
        );

        // Deleted versions are gone, and their number is not reused.
        assert!(store.delete_backup_version(u(), v2).await.unwrap());
        assert!(!store.delete_backup_version(u(), v2).await.unwrap());
        assert_eq!(store.backup_version(u(), None).await.unwrap().unwrap().version, v1);
        assert_eq!(store.backup_keys(u(), v2, None, None).await.unwrap(), None);
        assert_eq!(put(v2, vec![]).await.unwrap(), BackupWrite::NotFound);
        let v3 = store.create_backup_version(u(), "{}".into()).await.unwrap();
        assert!(v3 > v2);
        // Another user sees none of it.
        assert_eq!(store.backup_version("@b:x".into(), None).await.unwrap(), None);
    }
}
