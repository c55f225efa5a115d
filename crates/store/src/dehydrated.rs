//! MSC3814 dehydrated devices: a device a user's client leaves on the
//! server, with keys and an encrypted pickle, so that messages sent while
//! all their devices are offline can still be decrypted later.

use crate::db::{OptionalExtension, Transaction, params};

use crate::{
    Result, StoreError,
    e2ee::{KeyUpload, delete_device_e2ee, record_device_change, store_keys},
    store::{Positions, Store, now_ms},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DehydratedDevice {
    pub device_id: String,
    /// The client's `device_data` object as JSON.
    pub device_data: String,
}

/// Deletes the user's dehydrated device, if any; returns its ID.
fn delete_current(tx: &Transaction<'_>, positions: &mut Positions, user: &str) -> Result<Option<String>> {
    let old: Option<String> = tx
        .query_row(
            "SELECT device_id FROM dehydrated_devices WHERE user_id = ?1",
            [user],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(old) = &old {
        delete_device_e2ee(tx, user, old)?;
        tx.execute(
            "DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2",
            params![user, old],
        )?;
        tx.execute("DELETE FROM dehydrated_devices WHERE user_id = ?1", [user])?;
        record_device_change(tx, positions, user, None)?;
    }
    Ok(old)
}

impl Store {
    pub async fn dehydrated_device(&self, user_id: String) -> Result<Option<DehydratedDevice>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = ?1",
                [user_id],
                |r| {
                    Ok(DehydratedDevice {
                        device_id: r.get(0)?,
                        device_data: r.get(1)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Replaces the user's dehydrated device, in one transaction: the
    /// previous one goes with its keys and messages, the new device is
    /// created with its data and keys. [`StoreError::Exists`] if one of the
    /// user's ordinary devices has this ID.
    pub async fn put_dehydrated_device(
        &self,
        display_name: Option<String>,
        device_data: String,
        keys: KeyUpload,
    ) -> Result<()> {
        self.write(move |tx, positions| {
            let (user, device) = (keys.user_id.as_str(), keys.device_id.as_str());
            delete_current(tx, positions, user)?;
            let n = tx.execute(
                "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![user, device, display_name, now_ms()],
            )?;
            if n == 0 {
                return Err(StoreError::Exists);
            }
            tx.execute(
                "INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES (?1, ?2, ?3)",
                params![user, device, device_data],
            )?;
            store_keys(tx, positions, &keys)?;
            Ok(())
        })
        .await
    }

    /// Deletes the user's dehydrated device; returns its ID, `None` if there was none.
    pub async fn delete_dehydrated_device(&self, user_id: String) -> Result<Option<String>> {
        self.write(move |tx, positions| delete_current(tx, positions, &user_id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::{ToDeviceTarget, tests::scratch};

    fn keys(device: &str) -> KeyUpload {
        KeyUpload {
            user_id: "@a:x".into(),
            device_id: device.into(),
            device_keys: Some(format!("{{\"device_id\":\"{device}\"}}")),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_new_dehydrated_device_replaces_the_old_one() {
        let s = scratch();
        let store = &s.store;
        store
            .put_dehydrated_device(None, "{\"v\":1}".into(), keys("D1"))
            .await
            .unwrap();
        assert_eq!(
            store.dehydrated_device("@a:x".into()).await.unwrap().unwrap().device_id,
            "D1"
        );
        // It is a device: it gets messages sent to all the user's devices.
        store
            .send_to_device(
                "@b:x".into(),
                "B".into(),
                "t".into(),
                "m.room.encrypted".into(),
                vec![ToDeviceTarget {
                    user_id: "@a:x".into(),
                    device_id: None,
                    content: "{}".into(),
                }],
            )
            .await
            .unwrap();
        let upto = store.persisted_upto();
        assert_eq!(
            store
                .to_device_messages("@a:x".into(), "D1".into(), 0, upto, 10)
                .await
                .unwrap()
                .len(),
            1
        );

        store
            .put_dehydrated_device(None, "{\"v\":2}".into(), keys("D2"))
            .await
            .unwrap();
        let d = store.dehydrated_device("@a:x".into()).await.unwrap().unwrap();
        assert_eq!((d.device_id.as_str(), d.device_data.as_str()), ("D2", "{\"v\":2}"));
        let devices: Vec<_> = store
            .devices("@a:x".into())
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        assert_eq!(devices, ["D2"]);
        assert!(store.device_keys("@a:x".into(), "D1".into()).await.unwrap().is_none());
        assert!(
            store
                .to_device_messages("@a:x".into(), "D1".into(), 0, upto, 10)
                .await
                .unwrap()
                .is_empty()
        );

        // An ordinary device's ID cannot be taken.
        store
            .create_session(crate::accounts::NewSession {
                user_id: "@a:x".into(),
                device_id: "PHONE".into(),
                display_name: None,
                access_hash: b"t".to_vec(),
                refresh_hash: None,
                expires_ts: None,
            })
            .await
            .unwrap();
        assert!(matches!(
            store.put_dehydrated_device(None, "{}".into(), keys("PHONE")).await,
            Err(StoreError::Exists)
        ));
        // The failed attempt changed nothing.
        assert_eq!(
            store.dehydrated_device("@a:x".into()).await.unwrap().unwrap().device_id,
            "D2"
        );

        assert_eq!(
            store.delete_dehydrated_device("@a:x".into()).await.unwrap().as_deref(),
            Some("D2")
        );
        assert_eq!(store.delete_dehydrated_device("@a:x".into()).await.unwrap(), None);
    }
}
