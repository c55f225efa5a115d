//! Joining, inviting, leaving, kicking, banning and knocking: each is a new
//! `m.room.member` event that the room's auth rules accept or refuse.

use missive_core::builder::NewEvent;
use ruma::{OwnedRoomId, RoomId, RoomOrAliasId, UserId, events::TimelineEventType};
use serde_json::{Value, json};

use crate::{App, Error, Result, services::rooms::Target};

impl App {
    /// Resolves a room ID or an alias (asking the alias's server when it is
    /// another's).
    pub async fn resolve_room(&self, room: &RoomOrAliasId) -> Result<OwnedRoomId> {
        Ok(self.resolve_room_and_servers(room).await?.0)
    }

    /// A room ID or alias, with the servers an alias's owner says are in the room.
    pub async fn resolve_room_and_servers(
        &self,
        room: &RoomOrAliasId,
    ) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
        match <&RoomId>::try_from(room) {
            Ok(id) => Ok((id.to_owned(), vec![])),
            Err(alias) if alias.server_name() != self.server_name && self.federation_enabled() => {
                self.resolve_alias(alias).await
            }
            Err(alias) => {
                let (room_id, _) = self
                    .store
                    .alias(alias.to_string())
                    .await?
                    .ok_or_else(|| Error::not_found("Room alias not found"))?;
                Ok((
                    OwnedRoomId::try_from(room_id).map_err(|e| Error::Internal(e.to_string()))?,
                    vec![],
                ))
            }
        }
    }

    /// Sends a membership event for `target` by `sender`, under the room lock.
    pub async fn set_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<String>,
        extra: Option<serde_json::Map<String, Value>>,
    ) -> Result<ruma::OwnedEventId> {
        let _guard = self.room_locks.lock(room_id, &self.store).await?;
        let version = self.room_version(room_id).await?;
        let mut content = json!({});
        // The client's own keys first: the ones the server sets win.
        if let Some(extra) = extra {
            for (k, v) in extra {
                content[k] = v;
            }
        }
        // Only the server vouches for a restricted join.
        if let Some(o) = content.as_object_mut() {
            o.remove("join_authorised_via_users_server");
        }
        content["membership"] = membership.into();
        if let Some(r) = reason {
            content["reason"] = r.into();
        }
        if matches!(membership, "join" | "invite" | "knock") {
            self.add_profile(target, &mut content).await?;
        }
        if membership == "join" {
            self.authorise_restricted_join(room_id, target, &mut content).await?;
        }
        let new = NewEvent::state(TimelineEventType::RoomMember, target.as_str(), content);
        if let Some(same) = self.identical_state(room_id, &version, sender, &new).await? {
            return Ok(same);
        }
        let pdu = self
            .append_local(Target::Room(room_id, &version), sender, new, None, None)
            .await?;
        Ok(pdu.event_id)
    }

    pub async fn join(&self, room_id: &RoomId, user: &UserId, reason: Option<String>) -> Result<()> {
        self.join_via(room_id, user, reason, &[], None).await
    }

    /// Joins a room; one this server is not in is joined through `via`,
    /// the server of whoever invited the user, or the room ID's server.
    /// `content` is what the client put in its join besides the reason
    /// (kept in the member event, as the reference server does).
    pub async fn join_via(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<String>,
        via: &[ruma::OwnedServerName],
        content: Option<serde_json::Map<String, Value>>,
    ) -> Result<()> {
        let known = self.store.room(room_id.to_string()).await?.is_some();
        if self.federation_enabled() && !(known && self.has_local_member(room_id).await?) {
            let mut servers = via.to_vec();
            if let Some(ev) = self
                .store
                .current_state_event(room_id.to_string(), "m.room.member".into(), user.to_string())
                .await?
                && ev.pdu.membership().as_deref() == Some("invite")
            {
                servers.insert(0, ev.pdu.sender.server_name().to_owned());
            }
            if let Some(s) = room_id.server_name() {
                servers.push(s.to_owned());
            }
            let mut seen = std::collections::HashSet::new();
            servers.retain(|s| seen.insert(s.clone()));
            if !servers.is_empty() {
                return self.join_remote(room_id, user, &servers).await;
            }
        }
        if !known {
            return Err(Error::not_found("Unknown room"));
        }
        if self.membership(room_id, user).await?.as_deref() == Some("ban") {
            return Err(Error::forbidden("You are banned from this room"));
        }
        self.set_membership(room_id, user, user, "join", reason, content)
            .await?;
        Ok(())
    }

    /// For a restricted room the user was not invited to, finds a local
    /// member who may invite and whose server vouches for the join.
    pub(crate) async fn authorise_restricted_join(
        &self,
        room_id: &RoomId,
        user: &UserId,
        content: &mut Value,
    ) -> Result<()> {
        let Some(rules) = self.state_content(room_id, "m.room.join_rules", "").await? else {
            return Ok(());
        };
        let rule = rules.get("join_rule").and_then(Value::as_str).unwrap_or_default();
        if rule != "restricted" && rule != "knock_restricted" {
            return Ok(());
        }
        if matches!(
            self.membership(room_id, user).await?.as_deref(),
            Some("join") | Some("invite")
        ) {
            return Ok(());
        }
        let allowed = rules
            .get("allow")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut in_allowed_room = false;
        for a in allowed {
            if a.get("type").and_then(Value::as_str) != Some("m.room_membership") {
                continue;
            }
            let Some(r) = a
                .get("room_id")
                .and_then(Value::as_str)
                .and_then(|r| <&RoomId>::try_from(r).ok())
            else {
                continue;
            };
            if self.store.room(r.to_string()).await?.is_some()
                && self.membership(r, user).await?.as_deref() == Some("join")
            {
                in_allowed_room = true;
                break;
            }
        }
        if !in_allowed_room {
            return Err(Error::forbidden("You are not a member of a room this room admits"));
        }
        let pl = self.power_levels(room_id).await?;
        let invite = pl.action("invite");
        for (member, m) in self.store.room_members(room_id.to_string()).await? {
            let Ok(member) = ruma::OwnedUserId::try_from(member) else {
                continue;
            };
            if m == "join" && self.is_local(&member) && pl.user(&member) >= invite {
                content["join_authorised_via_users_server"] = member.to_string().into();
                return Ok(());
            }
        }
        Err(Error::forbidden("No member of this server can authorise the join"))
    }
}
