//! Ephemeral data units: typing, receipts, presence, device-list and
//! cross-signing key updates, and to-device messages, received from other
//! servers and sent to them.
//!
//! An incoming EDU speaks only for users of the server that sent it, and
//! only about rooms it has them joined to; anything else is dropped (and
//! logged), never answered with an error: EDUs are best effort.

use std::time::Duration;

use missive_core::limits::identifier_ok;
use missive_store::e2ee::ToDeviceTarget;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};
use serde_json::{Value, json};

use crate::{App, Result, services::accounts::now_ms};

/// How long a remote user shows as typing unless their server renews or
/// stops it (the spec's EDU carries no timeout).
pub const REMOTE_TYPING: Duration = Duration::from_secs(30);

/// A user ID from an EDU field, if it is a user of `origin`.
fn user_of(origin: &ServerName, v: Option<&Value>) -> Option<OwnedUserId> {
    let user = OwnedUserId::try_from(v?.as_str()?).ok()?;
    (user.server_name() == origin).then_some(user)
}

/// An `m.typing` content: (room, user of `origin`, typing).
pub fn parse_typing(origin: &ServerName, c: &Value) -> Option<(OwnedRoomId, OwnedUserId, bool)> {
    let room = OwnedRoomId::try_from(c.get("room_id")?.as_str()?).ok()?;
    let user = user_of(origin, c.get("user_id"))?;
    Some((room, user, c.get("typing")?.as_bool()?))
}

/// One read receipt from an `m.receipt` content.
#[derive(Debug, PartialEq)]
pub struct RemoteReceipt {
    pub room: OwnedRoomId,
    pub user: OwnedUserId,
    pub event_id: String,
    pub thread: String,
    pub ts: i64,
}

/// The `m.read` receipts of users of `origin` in an `m.receipt` content.
/// Private receipts never travel; other types are unknown and ignored.
pub fn parse_receipts(origin: &ServerName, c: &Value) -> Vec<RemoteReceipt> {
    let mut out = vec![];
    let Some(rooms) = c.as_object() else { return out };
    for (room, types) in rooms {
        let Ok(room) = OwnedRoomId::try_from(room.as_str()) else {
            continue;
        };
        let Some(users) = types.get("m.read").and_then(Value::as_object) else {
            continue;
        };
        for (user, r) in users {
            let Some(user) = user_of(origin, Some(&Value::from(user.as_str()))) else {
                continue;
            };
            // Several event IDs are allowed; the receipt is at the last one.
            let Some(event_id) = r
                .get("event_ids")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().rev().find_map(Value::as_str))
                .filter(|e| identifier_ok(e) && ruma::EventId::parse(e).is_ok())
            else {
                continue;
            };
            let data = r.get("data");
            let thread = data
                .and_then(|d| d.get("thread_id"))
                .and_then(Value::as_str)
                .filter(|t| *t == "main" || (identifier_ok(t) && ruma::EventId::parse(t).is_ok()))
                .unwrap_or("unthreaded");
            let ts = data
                .and_then(|d| d.get("ts"))
                .and_then(Value::as_i64)
                .unwrap_or_else(now_ms);
            out.push(RemoteReceipt {
                room: room.clone(),
                user,
                event_id: event_id.to_owned(),
                thread: thread.to_owned(),
                ts,
            });
        }
    }
    out
}

/// An `m.direct_to_device` content: sender, type, message ID and the
/// messages for users of this server (`server`).
pub fn parse_to_device(
    origin: &ServerName,
    server: &ServerName,
    c: &Value,
) -> Option<(OwnedUserId, String, String, Vec<ToDeviceTarget>)> {
    let sender = user_of(origin, c.get("sender"))?;
    // Names no store could keep (a NUL, past 255 bytes) drop the EDU.
    let kind = c.get("type")?.as_str().filter(|s| identifier_ok(s))?.to_owned();
    let message_id = c.get("message_id")?.as_str().filter(|s| identifier_ok(s))?.to_owned();
    let mut targets = vec![];
    for (user, devices) in c.get("messages")?.as_object()? {
        let Ok(user) = OwnedUserId::try_from(user.as_str()) else {
            continue;
        };
        if user.server_name() != server {
            continue;
        }
        let Some(devices) = devices.as_object() else { continue };
        for (device, content) in devices {
            if !content.is_object() || !identifier_ok(device) {
                continue;
            }
            targets.push(ToDeviceTarget {
                user_id: user.to_string(),
                device_id: (device != "*").then(|| device.clone()),
                content: content.to_string(),
            });
        }
    }
    Some((sender, kind, message_id, targets))
}

impl App {
    /// Applies one EDU from `origin`. Never fails: a bad or refused EDU is
    /// logged and dropped.
    pub async fn handle_edu(&self, origin: &ServerName, edu: Value) {
        let kind = edu
            .get("edu_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let content = edu.get("content").cloned().unwrap_or(Value::Null);
        let outcome = match kind.as_str() {
            "m.typing" => self.remote_typing(origin, &content).await,
            "m.receipt" => self.remote_receipts(origin, &content).await,
            "m.presence" => self.remote_presence(origin, &content).await,
            "m.device_list_update" | "m.signing_key_update" => self.remote_device_change(origin, &content).await,
            "m.direct_to_device" => self.remote_to_device(origin, &content).await,
            _ => {
                tracing::debug!(%origin, edu_type = %kind, "ignored an EDU of an unknown type");
                Ok(())
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(%origin, edu_type = %kind, error = %e, "could not apply an EDU");
        }
    }

    /// Whether the remote user is joined to the room and their server passes its ACL.
    async fn remote_member(&self, origin: &ServerName, room: &RoomId, user: &UserId) -> Result<bool> {
        if self.check_server_acl(room, origin).await.is_err() {
            return Ok(false);
        }
        Ok(self.membership(room, user).await?.as_deref() == Some("join"))
    }

    /// Whether a remote user is joined to some room here: only they may
    /// have presence or device changes recorded (bounding what a server
    /// can make this one keep).
    async fn known_remote_user(&self, user: &UserId) -> Result<bool> {
        Ok(self
            .store
            .memberships(user.to_string())
            .await?
            .iter()
            .any(|m| m.membership == "join"))
    }

    async fn remote_typing(&self, origin: &ServerName, c: &Value) -> Result<()> {
        let Some((room, user, typing)) = parse_typing(origin, c) else {
            tracing::debug!(%origin, "dropped a malformed or foreign m.typing");
            return Ok(());
        };
        if !self.remote_member(origin, &room, &user).await? {
            tracing::debug!(%origin, %user, %room, "dropped m.typing of a user not in the room");
            return Ok(());
        }
        self.set_typing(&room, &user, typing.then_some(REMOTE_TYPING)).await;
        Ok(())
    }

    async fn remote_receipts(&self, origin: &ServerName, c: &Value) -> Result<()> {
        let mut stored = false;
        for r in parse_receipts(origin, c) {
            if !self.remote_member(origin, &r.room, &r.user).await? {
                tracing::debug!(%origin, user = %r.user, room = %r.room, "dropped a receipt of a user not in the room");
                continue;
            }
            // One receipt the store refuses does not cost the others.
            match self
                .store
                .set_receipt(
                    r.room.to_string(),
                    "m.read".to_owned(),
                    r.user.to_string(),
                    r.thread,
                    r.event_id,
                    r.ts,
                )
                .await
            {
                Ok(_) => stored = true,
                Err(e) => tracing::info!(%origin, user = %r.user, room = %r.room, error = %e, "dropped a receipt"),
            }
        }
        if stored {
            self.notify();
        }
        Ok(())
    }

    async fn remote_presence(&self, origin: &ServerName, c: &Value) -> Result<()> {
        if !self.config.presence {
            return Ok(());
        }
        let Some(push) = c.get("push").and_then(Value::as_array) else {
            return Ok(());
        };
        for p in push {
            let Some(user) = user_of(origin, p.get("user_id")) else {
                continue;
            };
            let Some(state) = p
                .get("presence")
                .and_then(Value::as_str)
                .filter(|s| matches!(*s, "online" | "offline" | "unavailable"))
            else {
                continue;
            };
            if !self.known_remote_user(&user).await? {
                continue;
            }
            let msg = p
                .get("status_msg")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(str::to_owned);
            self.set_presence(&user, state, Some(msg)).await;
        }
        Ok(())
    }

    /// Remote device lists are not cached here (keys are always queried
    /// from the user's server): a change only tells local users sharing a
    /// room to query again.
    async fn remote_device_change(&self, origin: &ServerName, c: &Value) -> Result<()> {
        let Some(user) = user_of(origin, c.get("user_id")) else {
            tracing::debug!(%origin, "dropped a device-list update for a foreign user");
            return Ok(());
        };
        if !self.known_remote_user(&user).await? {
            return Ok(());
        }
        self.store.remote_device_list_changed(user.to_string()).await?;
        self.notify();
        Ok(())
    }

    async fn remote_to_device(&self, origin: &ServerName, c: &Value) -> Result<()> {
        let Some((sender, kind, message_id, targets)) = parse_to_device(origin, &self.server_name, c) else {
            tracing::debug!(%origin, "dropped a malformed or foreign m.direct_to_device");
            return Ok(());
        };
        if targets.is_empty() {
            return Ok(());
        }
        // The origin stands for the sending device in the transaction-ID
        // table: a message ID sent again (a retried transaction) is delivered once.
        let sent = self
            .store
            .send_to_device(sender.to_string(), origin.to_string(), message_id, kind, targets)
            .await?;
        if sent {
            self.notify();
        }
        Ok(())
    }

    /// The other servers with a user joined to a room `user` is joined to.
    pub async fn servers_sharing_room(&self, user: &UserId) -> Result<Vec<OwnedServerName>> {
        Ok(self.other_servers(self.store.users_sharing_room(user.to_string()).await?))
    }

    /// Queues `edu` for the servers `servers` finds, unless this server does
    /// not federate: then the servers are not even looked up. Ephemeral
    /// data is not worth failing a request for, so a failure is only logged.
    async fn federate(&self, servers: impl Future<Output = Result<Vec<OwnedServerName>>>, edu: Value) {
        if !self.federation_enabled() {
            return;
        }
        let servers = match servers.await {
            Ok(s) if s.is_empty() => return,
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "could not list the servers to send an EDU to"),
        };
        if let Err(e) = self.queue_edu(servers, edu).await {
            tracing::warn!(error = %e, "could not queue an EDU");
        }
    }

    /// Tells the other servers in the room that a local user started or stopped typing.
    pub async fn federate_typing(&self, room: &RoomId, user: &UserId, typing: bool) {
        let edu = json!({
            "edu_type": "m.typing",
            "content": { "room_id": room, "user_id": user, "typing": typing },
        });
        self.federate(self.servers_in_room(room), edu).await;
    }

    /// Sends a local user's public read receipt to the other servers in the room.
    pub async fn federate_receipt(&self, room: &RoomId, user: &UserId, event_id: &str, thread: &str, ts: i64) {
        let mut data = json!({ "ts": ts });
        if thread != "unthreaded" {
            data["thread_id"] = thread.into();
        }
        let edu = json!({
            "edu_type": "m.receipt",
            "content": { room.as_str(): { "m.read": { user.as_str(): { "event_ids": [event_id], "data": data } } } },
        });
        self.federate(self.servers_in_room(room), edu).await;
    }

    /// Sends a local user's presence to the servers sharing a room with them.
    pub async fn federate_presence(&self, user: &UserId) {
        if !self.config.presence || !self.is_local(user) {
            return;
        }
        let Some(p) = self.presence.get(user) else { return };
        let mut entry = json!({
            "user_id": user,
            "presence": p.state,
            "last_active_ago": (now_ms() - p.last_active_ms).max(0),
            "currently_active": p.state == "online",
        });
        if let Some(m) = p.status_msg {
            entry["status_msg"] = m.into();
        }
        let edu = json!({ "edu_type": "m.presence", "content": { "push": [entry] } });
        self.federate(self.servers_sharing_room(user), edu).await;
    }

    /// Tells the servers sharing a room with a local user that one of their
    /// devices changed (`keys` given) or was deleted (`keys` `None`).
    pub async fn federate_device_change(&self, user: &UserId, device_id: &str, keys: Option<Value>) {
        self.federate_device_changes(user, vec![(device_id.to_owned(), keys)])
            .await;
    }

    /// Announces deleted devices of a local user (to be called wherever
    /// devices are deleted).
    pub async fn federate_devices_deleted(&self, user: &UserId, devices: &[String]) {
        self.federate_device_changes(user, devices.iter().map(|d| (d.clone(), None)).collect())
            .await;
    }

    /// One `m.device_list_update` per changed device, to the servers
    /// sharing a room with the user (looked up once for all of them).
    async fn federate_device_changes(&self, user: &UserId, changes: Vec<(String, Option<Value>)>) {
        if !self.federation_enabled() || changes.is_empty() {
            return;
        }
        let servers = match self.servers_sharing_room(user).await {
            Ok(s) if s.is_empty() => return,
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "could not list the servers sharing a room"),
        };
        let stream_id = self.store.device_list_stream_id(user.to_string()).await.unwrap_or(0);
        for (device_id, keys) in changes {
            let mut content = json!({
                "user_id": user,
                "device_id": device_id,
                "stream_id": stream_id,
                "prev_id": [],
            });
            match keys {
                Some(mut k) => {
                    if let Some(name) = k.get("unsigned").and_then(|u| u.get("device_display_name")).cloned() {
                        content["device_display_name"] = name;
                    }
                    if let Some(o) = k.as_object_mut() {
                        o.remove("unsigned");
                    }
                    content["keys"] = k;
                }
                None => content["deleted"] = true.into(),
            }
            let edu = json!({ "edu_type": "m.device_list_update", "content": content });
            self.federate(std::future::ready(Ok(servers.clone())), edu).await;
        }
    }

    /// Tells the servers sharing a room with a local user that their
    /// master or self-signing key changed.
    pub async fn federate_signing_keys(&self, user: &UserId, master: Option<Value>, self_signing: Option<Value>) {
        if master.is_none() && self_signing.is_none() {
            return;
        }
        let mut content = json!({ "user_id": user });
        if let Some(m) = master {
            content["master_key"] = m;
        }
        if let Some(s) = self_signing {
            content["self_signing_key"] = s;
        }
        let edu = json!({ "edu_type": "m.signing_key_update", "content": content });
        self.federate(self.servers_sharing_room(user), edu).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static ServerName {
        <&ServerName>::try_from("remote.org").unwrap()
    }

    #[test]
    fn typing_only_for_users_of_the_origin() {
        let ok = json!({ "room_id": "!r:here.org", "user_id": "@a:remote.org", "typing": true });
        let (room, user, typing) = parse_typing(origin(), &ok).unwrap();
        assert_eq!(
            (room.as_str(), user.as_str(), typing),
            ("!r:here.org", "@a:remote.org", true)
        );
        let foreign = json!({ "room_id": "!r:here.org", "user_id": "@a:other.org", "typing": true });
        assert!(parse_typing(origin(), &foreign).is_none());
        assert!(
            parse_typing(
                origin(),
                &json!({ "room_id": "!r:here.org", "user_id": "@a:remote.org" })
            )
            .is_none()
        );
    }

    #[test]
    fn receipts_keep_public_reads_of_origin_users() {
        let c = json!({
            "!r:here.org": {
                "m.read": {
                    "@a:remote.org": { "event_ids": ["$e1", "$e2"], "data": { "ts": 5, "thread_id": "main" } },
                    "@b:other.org": { "event_ids": ["$e1"], "data": { "ts": 5 } },
                    "@c:remote.org": { "event_ids": [], "data": { "ts": 5 } },
                },
                "m.read.private": { "@a:remote.org": { "event_ids": ["$e3"], "data": { "ts": 6 } } },
            },
            "not a room": { "m.read": { "@a:remote.org": { "event_ids": ["$e1"] } } },
        });
        let got = parse_receipts(origin(), &c);
        assert_eq!(
            got,
            vec![RemoteReceipt {
                room: OwnedRoomId::try_from("!r:here.org").unwrap(),
                user: OwnedUserId::try_from("@a:remote.org").unwrap(),
                event_id: "$e2".into(),
                thread: "main".into(),
                ts: 5,
            }]
        );
        let unthreaded =
            json!({ "!r:here.org": { "m.read": { "@a:remote.org": { "event_ids": ["$e1"], "data": { "ts": 1 } } } } });
        assert_eq!(parse_receipts(origin(), &unthreaded)[0].thread, "unthreaded");
    }

    #[test]
    fn names_no_store_keeps_are_dropped() {
        let local = ServerName::parse("here.example").unwrap();
        let c = |kind: &str, device: &str| {
            json!({
                "sender": "@a:remote.org", "type": kind, "message_id": "m1",
                "messages": { "@b:here.example": { device: { "k": 1 } } },
            })
        };
        assert!(parse_to_device(origin(), &local, &c("m.x\u{0}", "D")).is_none());
        assert!(parse_to_device(origin(), &local, &c(&"t".repeat(256), "D")).is_none());
        let (_, _, _, targets) = parse_to_device(origin(), &local, &c("m.x", "D\u{0}")).unwrap();
        assert!(targets.is_empty());
        let receipts = json!({ "!r:remote.org": { "m.read": { "@a:remote.org": {
            "event_ids": ["$e\u{0}"], "data": { "ts": 1 } } } } });
        assert!(parse_receipts(origin(), &receipts).is_empty());
    }

    #[test]
    fn to_device_only_from_origin_users_to_local_users() {
        let here = <&ServerName>::try_from("here.org").unwrap();
        let c = json!({
            "sender": "@a:remote.org", "type": "m.room_key_request", "message_id": "m1",
            "messages": {
                "@x:here.org": { "DEV": { "k": 1 }, "*": { "k": 2 }, "BAD": "not an object" },
                "@y:elsewhere.org": { "DEV": { "k": 3 } },
            },
        });
        let (sender, kind, id, targets) = parse_to_device(origin(), here, &c).unwrap();
        assert_eq!(
            (sender.as_str(), kind.as_str(), id.as_str()),
            ("@a:remote.org", "m.room_key_request", "m1")
        );
        let mut t: Vec<_> = targets
            .iter()
            .map(|t| (t.user_id.as_str(), t.device_id.as_deref()))
            .collect();
        t.sort();
        assert_eq!(t, vec![("@x:here.org", None), ("@x:here.org", Some("DEV"))]);
        let spoofed = json!({ "sender": "@a:other.org", "type": "t", "message_id": "m", "messages": {} });
        assert!(parse_to_device(origin(), here, &spoofed).is_none());
    }
}
