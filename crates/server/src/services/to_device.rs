//! Send-to-device messaging: queued per device at a stream position,
//! delivered by `/sync` and deleted once the device acknowledges them by
//! syncing from a token at or past them — exactly once per device.

use missive_store::e2ee::ToDeviceTarget;
use ruma::{
    api::client::to_device::send_event_to_device::v3::Messages, events::AnyToDeviceEvent, serde::Raw,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::{Value, value::RawValue};

use crate::{App, Error, Result, services::accounts::Session};

/// Most to-device messages one sync response carries; the rest follow.
pub const SYNC_LIMIT: usize = 100;

impl App {
    /// `PUT /sendToDevice/{eventType}/{txnId}`. A repeated transaction ID
    /// (for the same device and event type) succeeds without sending again.
    /// Messages to users of other servers are dropped: there is no federation yet.
    pub async fn send_to_device(
        &self,
        session: &Session,
        event_type: &str,
        txn_id: &str,
        messages: &Messages,
    ) -> Result<()> {
        let mut targets = vec![];
        for (user, devices) in messages {
            if !self.is_local(user) {
                tracing::debug!(%user, event_type, "dropping to-device message for a remote user");
                continue;
            }
            for (device, content) in devices {
                let v: Value = serde_json::from_str(content.json().get())
                    .map_err(|e| Error::bad_json(format!("Invalid message content: {e}")))?;
                if !v.is_object() {
                    return Err(Error::bad_json("Message content must be an object"));
                }
                targets.push(ToDeviceTarget {
                    user_id: user.to_string(),
                    device_id: match device {
                        DeviceIdOrAllDevices::AllDevices => None,
                        DeviceIdOrAllDevices::DeviceId(d) => Some(d.to_string()),
                    },
                    content: v.to_string(),
                });
            }
        }
        let sent = self
            .store
            .send_to_device(
                session.user_id.to_string(),
                session.device_id.to_string(),
                txn_id.to_owned(),
                event_type.to_owned(),
                targets,
            )
            .await?;
        if sent {
            self.notify();
        }
        Ok(())
    }

    /// The to-device messages a sync from `since` up to `upto` delivers to
    /// the syncing device, after deleting those `since` acknowledges.
    /// Returns them with the position the response may cover: lower than
    /// `upto` when more messages wait than one response carries, so that
    /// the next token acknowledges only what was delivered.
    pub async fn to_device_for_sync(
        &self,
        session: &Session,
        since: Option<i64>,
        upto: i64,
    ) -> Result<(Vec<Raw<AnyToDeviceEvent>>, i64)> {
        let (user, device) = (session.user_id.to_string(), session.device_id.to_string());
        if let Some(since) = since {
            self.store.ack_to_device(user.clone(), device.clone(), since).await?;
        }
        let messages = self
            .store
            .to_device_messages(user, device, since.unwrap_or(0), upto, SYNC_LIMIT)
            .await?;
        let upto = match messages.last() {
            Some(last) if messages.len() == SYNC_LIMIT => last.stream_pos,
            _ => upto,
        };
        let mut events = Vec::with_capacity(messages.len());
        for m in messages {
            let json = format!(
                "{{\"content\":{},\"sender\":{},\"type\":{}}}",
                m.content,
                Value::from(m.sender),
                Value::from(m.event_type)
            );
            events.push(Raw::from_json(
                RawValue::from_string(json).map_err(|e| Error::Internal(e.to_string()))?,
            ));
        }
        Ok((events, upto))
    }
}
