//! Send-to-device messaging: queued per device at a stream position,
//! delivered by `/sync` and deleted once the device acknowledges them by
//! syncing from a token at or past them — exactly once per device.

use std::collections::BTreeMap;

use missive_store::e2ee::ToDeviceTarget;
use ruma::{
    OwnedServerName, api::client::to_device::send_event_to_device::v3::Messages, events::AnyToDeviceEvent, serde::Raw,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::{Value, json, value::RawValue};
use sha2::{Digest, Sha256};

use crate::{App, Error, Result, services::accounts::Session};

/// Most to-device messages one sync response carries; the rest follow.
pub const SYNC_LIMIT: usize = 100;

impl App {
    /// `PUT /sendToDevice/{eventType}/{txnId}`. A repeated transaction ID
    /// (for the same device and event type) succeeds without sending again.
    /// Messages to users of other servers go as one `m.direct_to_device`
    /// EDU per server.
    pub async fn send_to_device(
        &self,
        session: &Session,
        event_type: &str,
        txn_id: &str,
        messages: &Messages,
    ) -> Result<()> {
        let mut targets = vec![];
        let mut remote: BTreeMap<OwnedServerName, BTreeMap<String, BTreeMap<String, Value>>> = BTreeMap::new();
        for (user, devices) in messages {
            for (device, content) in devices {
                let v: Value = serde_json::from_str(content.json().get())
                    .map_err(|e| Error::bad_json(format!("Invalid message content: {e}")))?;
                if !v.is_object() {
                    return Err(Error::bad_json("Message content must be an object"));
                }
                let device = match device {
                    DeviceIdOrAllDevices::AllDevices => None,
                    DeviceIdOrAllDevices::DeviceId(d) => Some(d.to_string()),
                };
                if !self.is_local(user) {
                    remote
                        .entry(user.server_name().to_owned())
                        .or_default()
                        .entry(user.to_string())
                        .or_default()
                        .insert(device.unwrap_or_else(|| "*".to_owned()), v);
                    continue;
                }
                targets.push(ToDeviceTarget {
                    user_id: user.to_string(),
                    device_id: device,
                    content: v.to_string(),
                });
            }
        }
        if !remote.is_empty() && !self.federation_enabled() {
            tracing::debug!(
                event_type,
                "dropping to-device messages for remote users: federation is disabled"
            );
            remote.clear();
        }
        if !remote.is_empty() {
            // Queued before the local messages are stored, so that an
            // acknowledged send is never missing its remote part. The message
            // ID follows from the transaction: a retried request queues the
            // same ID again and the receiving server delivers it once.
            let message_id = message_id(session, event_type, txn_id);
            for (server, messages) in remote {
                let edu = json!({
                    "edu_type": "m.direct_to_device",
                    "content": {
                        "sender": session.user_id,
                        "type": event_type,
                        "message_id": message_id,
                        "messages": messages,
                    },
                });
                self.queue_edu(vec![server], edu).await?;
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

/// The `message_id` of the EDUs carrying one to-device transaction: the
/// same for a retry of the same request, unguessable otherwise.
fn message_id(session: &Session, event_type: &str, txn_id: &str) -> String {
    let mut h = Sha256::new();
    for part in [session.user_id.as_str(), session.device_id.as_str(), event_type, txn_id] {
        h.update(part.len().to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}
