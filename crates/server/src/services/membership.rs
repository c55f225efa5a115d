//! Joining, inviting, leaving, kicking, banning and knocking: each is a new
//! `m.room.member` event that the room's auth rules accept or refuse.

use missive_core::builder::NewEvent;
use ruma::{OwnedRoomId, RoomId, RoomOrAliasId, UserId, events::TimelineEventType};
use serde_json::{Value, json};

use crate::{App, Error, Result, services::rooms::Target};

impl App {
    /// Resolves a room ID or a local alias.
    pub async fn resolve_room(&self, room: &RoomOrAliasId) -> Result<OwnedRoomId> {
        match <&RoomId>::try_from(room) {
            Ok(id) => Ok(id.to_owned()),
            Err(alias) => {
                let (room_id, _) = self
                    .store
                    .alias(alias.to_string())
                    .await?
                    .ok_or_else(|| Error::not_found("Room alias not found"))?;
                OwnedRoomId::try_from(room_id).map_err(|e| Error::Internal(e.to_string()))
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
        let mut content = json!({ "membership": membership });
        if let Some(r) = reason {
            content["reason"] = r.into();
        }
        if let Some(extra) = extra {
            for (k, v) in extra {
                content[k] = v;
            }
        }
        if matches!(membership, "join" | "invite" | "knock") {
            self.add_profile(target, &mut content).await?;
        }
        if membership == "join" {
            self.authorise_restricted_join(room_id, target, &mut content).await?;
        }
        let pdu = self
            .append_local(
                Target::Room(room_id, &version),
                sender,
                NewEvent::state(TimelineEventType::RoomMember, target.as_str(), content),
                None,
                None,
            )
            .await?;
        Ok(pdu.event_id)
    }

    pub async fn join(&self, room_id: &RoomId, user: &UserId, reason: Option<String>) -> Result<()> {
        if self.store.room(room_id.to_string()).await?.is_none() {
            return Err(Error::not_found(
                "Unknown room; joining rooms on other servers needs federation",
            ));
        }
        if self.membership(room_id, user).await?.as_deref() == Some("ban") {
            return Err(Error::forbidden("You are banned from this room"));
        }
        self.set_membership(room_id, user, user, "join", reason, None).await?;
        Ok(())
    }

    /// For a restricted room the user was not invited to, finds a local
    /// member who may invite and whose server vouches for the join.
    async fn authorise_restricted_join(&self, room_id: &RoomId, user: &UserId, content: &mut Value) -> Result<()> {
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
