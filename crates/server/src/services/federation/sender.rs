//! Outgoing federation: one queue per destination server, kept in the
//! store (`federation_outbox`) so that nothing is lost across restarts and
//! a server that was down gets everything it missed, in order.
//!
//! A destination's queue is sent by one task at a time, in transactions of
//! at most 50 PDUs and 100 EDUs; a failure backs off exponentially. With
//! several processes on PostgreSQL, a destination is sent by whichever
//! process holds its lease (a session advisory lock), so once.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, RoomId, ServerName,
    api::federation::transactions::send_transaction_message, serde::Raw,
};

use crate::{App, Result, services::accounts::now_ms};

/// How often queues are looked at without a wake-up (retries, other
/// processes' entries).
const TICK: Duration = Duration::from_secs(2);

/// Wakes the destination queues and tracks which are being sent.
#[derive(Default)]
pub struct Sender {
    wake: tokio::sync::Notify,
    busy: Mutex<HashSet<String>>,
    /// Destinations backing off after a failure.
    failing: Mutex<HashSet<String>>,
}

impl App {
    /// Queues an EDU (`{"edu_type": …, "content": …}`) for each destination.
    /// Typing and presence go stale: they are dropped after a minute unsent.
    pub async fn queue_edu(&self, destinations: Vec<OwnedServerName>, edu: serde_json::Value) -> Result<()> {
        let destinations: Vec<String> = destinations
            .into_iter()
            .filter(|d| *d != self.server_name && self.server_allowed(d))
            .map(|d| d.to_string())
            .collect();
        if destinations.is_empty() || !self.federation_enabled() {
            return Ok(());
        }
        let expires = match edu.get("edu_type").and_then(|t| t.as_str()) {
            Some("m.typing" | "m.presence") => Some(now_ms() + 60_000),
            _ => None,
        };
        self.store.queue_edu(destinations, edu.to_string(), expires).await?;
        self.fed_sender.wake.notify_one();
        Ok(())
    }

    /// The other servers with a member joined to the room.
    pub async fn servers_in_room(&self, room_id: &RoomId) -> Result<Vec<OwnedServerName>> {
        Ok(self.other_servers(self.store.joined_members(room_id.to_string()).await?))
    }

    /// The servers of these users, this one left out, each once.
    pub fn other_servers(&self, users: Vec<String>) -> Vec<OwnedServerName> {
        let mut out: Vec<OwnedServerName> = users
            .iter()
            .filter_map(|u| <&ruma::UserId>::try_from(u.as_str()).ok())
            .map(|u| u.server_name().to_owned())
            .filter(|s| *s != self.server_name)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Something was queued: look at the queues now.
    pub fn wake_sender(&self) {
        self.fed_sender.wake.notify_one();
    }

    /// A server reached us: if it was backing off, it is back, and what
    /// waits for it goes now instead of at the next retry.
    pub async fn destination_seen(&self, server: &ServerName) {
        if !self
            .fed_sender
            .failing
            .lock()
            .expect("sender lock")
            .remove(server.as_str())
        {
            return;
        }
        if self.store.outbox_retry_now(Some(server.to_string())).await.is_ok() {
            self.fed_sender.wake.notify_one();
        }
    }

    /// Starts the sender loop (when federation is on).
    pub fn spawn_sender(&self) {
        if !self.federation_enabled() {
            return;
        }
        let app = self.clone();
        tokio::spawn(async move {
            // Destinations that failed before a restart are tried at once.
            let _ = app.store.outbox_retry_now(None).await;
            loop {
                app.start_due_destinations().await;
                let _ = tokio::time::timeout(TICK, app.fed_sender.wake.notified()).await;
            }
        });
    }

    async fn start_due_destinations(&self) {
        let due = match self.store.outbox_due(now_ms()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("federation queue unreadable: {e}");
                return;
            }
        };
        for dest in due {
            if !self.fed_sender.busy.lock().expect("sender lock").insert(dest.clone()) {
                continue;
            }
            let app = self.clone();
            tokio::spawn(async move {
                app.send_queue(&dest).await;
                app.fed_sender.busy.lock().expect("sender lock").remove(&dest);
            });
        }
    }

    /// Sends a destination's queue until it is empty or the destination fails.
    async fn send_queue(&self, dest: &str) {
        let Ok(server) = OwnedServerName::try_from(dest) else {
            return;
        };
        // One sender per destination across processes: one that another
        // process is sending is left to it (it is tried again at the next tick).
        let lease = match self.store.try_lease(&format!("federation:{dest}")).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("no lease on {dest}: {e}");
                return;
            }
        };
        loop {
            let batch = match self.store.outbox_batch(dest.to_owned(), now_ms()).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("federation queue for {dest} unreadable: {e}");
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
            let mut pdus = vec![];
            let mut edus = vec![];
            for e in batch {
                if let Some(p) = e.pdu.and_then(|p| serde_json::value::RawValue::from_string(p).ok()) {
                    pdus.push(p);
                } else if let Some(e) = e.edu.and_then(|e| serde_json::value::RawValue::from_string(e).ok()) {
                    edus.push(Raw::from_json(e));
                }
            }
            if pdus.is_empty() && edus.is_empty() {
                let _ = self.store.outbox_sent(dest.to_owned(), ids).await;
                continue;
            }
            match self.send_transaction(&server, pdus, edus).await {
                Ok(()) => {
                    self.fed_sender.failing.lock().expect("sender lock").remove(dest);
                    if let Err(e) = self.store.outbox_sent(dest.to_owned(), ids).await {
                        tracing::warn!("federation queue for {dest} not updated: {e}");
                        break;
                    }
                }
                Err(e) => {
                    self.fed_sender
                        .failing
                        .lock()
                        .expect("sender lock")
                        .insert(dest.to_owned());
                    let failures = self.store.outbox_failed(dest.to_owned(), now_ms()).await.unwrap_or(0);
                    tracing::info!(failures, "transaction to {dest} failed: {e}");
                    break;
                }
            }
        }
        drop(lease);
    }

    async fn send_transaction(
        &self,
        dest: &ServerName,
        pdus: Vec<Box<serde_json::value::RawValue>>,
        edus: Vec<Raw<ruma::api::federation::transactions::edu::Edu>>,
    ) -> Result<()> {
        let txn_id = OwnedTransactionId::from(format!("{}-{}", now_ms(), crate::services::accounts::random_string(8)));
        let mut req = send_transaction_message::v1::Request::new(
            txn_id,
            self.server_name.clone(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        req.pdus = pdus;
        req.edus = edus;
        let res = self.federation_request(dest, req).await?;
        for (id, r) in res.pdus {
            if let Err(e) = r {
                // The destination refused one of our events: nothing to
                // retry, but worth knowing.
                tracing::info!(event = %id, "{dest} refused our event: {e}");
            }
        }
        Ok(())
    }
}
