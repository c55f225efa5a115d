//! MSC3814 dehydrated devices: one device per user that stays on the
//! server, with keys and an encrypted pickle only the user's clients can
//! open. It receives to-device messages like any device; a client that
//! comes back rehydrates it and fetches them.

use std::collections::BTreeMap;

use missive_store::{StoreError, e2ee::KeyUpload};
use ruma::{DeviceId, OwnedOneTimeKeyId, UserId, encryption::OneTimeKey, events::AnyToDeviceEvent, serde::Raw};
use serde_json::{Value, value::RawValue};

use crate::{
    App, Error, Result,
    services::{
        accounts::Session,
        e2ee::{canonical_string, check_one_time_keys, device_ed25519},
    },
};

/// A new dehydrated device as the client uploads it.
pub struct NewDehydratedDevice<'a> {
    pub device_id: &'a DeviceId,
    pub display_name: Option<String>,
    pub device_data: &'a RawValue,
    pub device_keys: &'a RawValue,
    pub one_time_keys: &'a BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
    pub fallback_keys: &'a BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
}

impl App {
    /// Replaces the user's dehydrated device with a new one and its keys.
    pub async fn put_dehydrated_device(&self, user: &UserId, d: NewDehydratedDevice<'_>) -> Result<()> {
        let data: Value = serde_json::from_str(d.device_data.get())
            .map_err(|e| Error::bad_json(format!("Invalid device_data: {e}")))?;
        if !data.is_object() {
            return Err(Error::bad_json("device_data must be an object"));
        }
        let device = d.device_id.as_str();
        let keys = self.check_device_keys(d.device_keys.get(), user, device)?;
        let ed25519 = device_ed25519(&keys, device);
        let upload = KeyUpload {
            user_id: user.to_string(),
            device_id: device.to_owned(),
            device_keys: Some(canonical_string(&keys)?),
            one_time_keys: check_one_time_keys(d.one_time_keys, user.as_str(), device, ed25519.as_deref(), false)?,
            fallback_keys: check_one_time_keys(d.fallback_keys, user.as_str(), device, ed25519.as_deref(), true)?,
        };
        match self
            .store
            .put_dehydrated_device(d.display_name, data.to_string(), upload)
            .await
        {
            Err(StoreError::Exists) => Err(Error::invalid_param("One of your devices already has this device ID")),
            r => Ok(r?),
        }?;
        self.notify();
        Ok(())
    }

    /// The user's dehydrated device: its ID and data.
    pub async fn dehydrated_device(&self, user: &UserId) -> Result<(String, Raw<Value>)> {
        let d = self
            .store
            .dehydrated_device(user.to_string())
            .await?
            .ok_or_else(|| Error::not_found("No dehydrated device"))?;
        let data = RawValue::from_string(d.device_data).map_err(|e| Error::Internal(e.to_string()))?;
        Ok((d.device_id, Raw::from_json(data)))
    }

    pub async fn delete_dehydrated_device(&self, user: &UserId) -> Result<String> {
        let id = self
            .store
            .delete_dehydrated_device(user.to_string())
            .await?
            .ok_or_else(|| Error::not_found("No dehydrated device"))?;
        self.notify();
        Ok(id)
    }

    /// To-device messages of the user's dehydrated device, a batch at a
    /// time: passing a batch's `next_batch` back deletes that batch.
    pub async fn dehydrated_device_events(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        next_batch: Option<&str>,
    ) -> Result<(Vec<Raw<AnyToDeviceEvent>>, String)> {
        let current = self.store.dehydrated_device(user.to_string()).await?;
        if current.is_none_or(|d| d.device_id != device_id.as_str()) {
            return Err(Error::forbidden("This is not your dehydrated device"));
        }
        let since = next_batch
            .map(|t| t.parse::<i64>().map_err(|_| Error::invalid_param("Invalid next_batch")))
            .transpose()?;
        let session = Session {
            user_id: user.to_owned(),
            device_id: device_id.to_owned(),
            is_guest: false,
        };
        let (events, upto) = self
            .to_device_for_sync(&session, since, self.store.persisted_upto())
            .await?;
        Ok((events, upto.to_string()))
    }
}
