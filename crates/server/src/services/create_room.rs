//! `/createRoom`: the spec's sequence of initial events, from presets,
//! overrides and initial state.

use missive_core::builder::NewEvent;
use missive_store::NewRoom;
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, UserId, events::TimelineEventType};
use serde_json::{Map, Value, json};

use crate::{
    App, Error, Result,
    services::rooms::{RoomVersion, Target},
};

/// A `/createRoom` request as the spec defines its body.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CreateRoom {
    pub visibility: Option<String>,
    pub room_alias_name: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    #[serde(default)]
    pub invite: Vec<OwnedUserId>,
    #[serde(default)]
    pub initial_state: Vec<InitialState>,
    pub preset: Option<String>,
    #[serde(default)]
    pub is_direct: bool,
    pub creation_content: Option<Map<String, Value>>,
    pub power_level_content_override: Option<Map<String, Value>>,
    pub room_version: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
pub struct InitialState {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Map<String, Value>,
}

impl App {
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let version = RoomVersion::parse(req.room_version.as_deref().unwrap_or(&self.config.default_room_version))?;
        let v12 = version.rules.authorization.explicitly_privilege_room_creators;
        let preset = match req.preset.as_deref() {
            Some(p @ ("private_chat" | "trusted_private_chat" | "public_chat")) => p.to_owned(),
            Some(other) => return Err(Error::invalid_param(format!("Unknown preset {other:?}"))),
            None if req.visibility.as_deref() == Some("public") => "public_chat".into(),
            None => "private_chat".into(),
        };
        if let Some(v) = req.visibility.as_deref()
            && v != "public"
            && v != "private"
        {
            return Err(Error::invalid_param("visibility must be public or private"));
        }
        let alias = match &req.room_alias_name {
            Some(name) => {
                let alias = OwnedRoomAliasId::try_from(format!("#{name}:{}", self.server_name))
                    .map_err(|_| Error::invalid_param("Invalid room_alias_name"))?;
                if self.store.alias(alias.to_string()).await?.is_some() {
                    return Err(Error::room_in_use("Room alias already taken"));
                }
                Some(alias)
            }
            None => None,
        };
        for u in &req.invite {
            if u == creator {
                return Err(Error::invalid_param("Cannot invite yourself"));
            }
        }

        // 1. The create event.
        let mut create = req.creation_content.clone().unwrap_or_default();
        create.insert("room_version".into(), version.id.as_str().into());
        if !version.rules.authorization.use_room_create_sender {
            create.insert("creator".into(), creator.as_str().into());
        }
        if v12 && preset == "trusted_private_chat" && !req.invite.is_empty() {
            let mut extra: Vec<Value> = create
                .get("additional_creators")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            extra.extend(req.invite.iter().map(|u| Value::from(u.as_str())));
            create.insert("additional_creators".into(), extra.into());
        }
        // A v12 room's ID is the hash of its create event, so two identical
        // creations by one user in the same millisecond would collide: the
        // second waits a millisecond and gets a later timestamp.
        let mut attempts = 0;
        let create_pdu = loop {
            let made = self
                .append_local(
                    Target::NewRoom(&version),
                    creator,
                    NewEvent::state(TimelineEventType::RoomCreate, "", Value::Object(create.clone())),
                    None,
                    Some(NewRoom {
                        room_version: version.id.to_string(),
                        creator: creator.to_string(),
                    }),
                )
                .await;
            match made {
                Err(e) if e.errcode() == "M_ROOM_IN_USE" && attempts < 10 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                other => break other?,
            }
        };
        let room_id = create_pdu.room_id.clone();
        let _guard = self.room_locks.lock(&room_id, &self.store).await?;
        let send = |kind: TimelineEventType, key: &str, content: Value| {
            self.append_local(
                Target::Room(&room_id, &version),
                creator,
                NewEvent::state(kind, key, content),
                None,
                None,
            )
        };

        // 2. The creator joins.
        let mut member = json!({ "membership": "join" });
        self.add_profile(creator, &mut member).await?;
        send(TimelineEventType::RoomMember, creator.as_str(), member).await?;

        // 3. Power levels: defaults, then the preset, then the client's override.
        let mut users = Map::new();
        if !v12 {
            users.insert(creator.to_string(), 100.into());
            if preset == "trusted_private_chat" {
                for u in &req.invite {
                    users.insert(u.to_string(), 100.into());
                }
            }
        }
        let mut pl = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "historical": 100,
            "notifications": { "room": 50 }
        });
        if let Some(over) = req.power_level_content_override {
            for (k, v) in over {
                pl[k] = v;
            }
        }
        send(TimelineEventType::RoomPowerLevels, "", pl).await?;

        // 4. The canonical alias.
        if let Some(alias) = &alias {
            self.store
                .set_alias(alias.to_string(), room_id.to_string(), creator.to_string())
                .await?;
            send(TimelineEventType::RoomCanonicalAlias, "", json!({ "alias": alias })).await?;
        }

        // 5. The preset's events, unless initial_state sets the same state.
        let (join_rule, history, guest) = match preset.as_str() {
            "public_chat" => ("public", "shared", "forbidden"),
            _ => ("invite", "shared", "can_join"),
        };
        let overridden = |kind: &str| {
            req.initial_state
                .iter()
                .any(|s| s.kind == kind && s.state_key.is_empty())
        };
        if !overridden("m.room.join_rules") {
            send(TimelineEventType::RoomJoinRules, "", json!({ "join_rule": join_rule })).await?;
        }
        if !overridden("m.room.history_visibility") {
            send(
                TimelineEventType::RoomHistoryVisibility,
                "",
                json!({ "history_visibility": history }),
            )
            .await?;
        }
        if !overridden("m.room.guest_access") {
            send(TimelineEventType::RoomGuestAccess, "", json!({ "guest_access": guest })).await?;
        }

        // 6. The client's initial state.
        for s in req.initial_state {
            if s.kind == "m.room.create" || s.kind == "m.room.member" || s.kind == "m.room.power_levels" {
                return Err(Error::invalid_param(format!("initial_state may not set {}", s.kind)));
            }
            send(s.kind.as_str().into(), &s.state_key, Value::Object(s.content)).await?;
        }

        // 7. Name and topic.
        if let Some(name) = req.name {
            send(TimelineEventType::RoomName, "", json!({ "name": name })).await?;
        }
        if let Some(topic) = req.topic {
            send(
                TimelineEventType::RoomTopic,
                "",
                json!({ "topic": topic, "m.topic": { "m.text": [{ "body": topic }] } }),
            )
            .await?;
        }

        // 8. Invites.
        for invitee in &req.invite {
            let mut content = json!({ "membership": "invite" });
            if req.is_direct {
                content["is_direct"] = true.into();
            }
            self.add_profile(invitee, &mut content).await?;
            send(TimelineEventType::RoomMember, invitee.as_str(), content).await?;
        }

        if req.visibility.as_deref() == Some("public") {
            self.store.set_room_published(room_id.to_string(), true).await?;
        }
        Ok(room_id)
    }

    /// Adds a local user's displayname and avatar to a member event's
    /// content, unless the client gave ones for this room.
    pub async fn add_profile(&self, user: &UserId, content: &mut Value) -> Result<()> {
        if !self.is_local(user) {
            return Ok(());
        }
        if let Some(row) = self.store.user(user.to_string()).await? {
            if let Some(d) = row.displayname
                && content.get("displayname").is_none()
            {
                content["displayname"] = d.into();
            }
            if let Some(a) = row.avatar_url
                && content.get("avatar_url").is_none()
            {
                content["avatar_url"] = a.into();
            }
        }
        Ok(())
    }
}
