//! `/createRoom`: the spec's sequence of initial events, from presets,
//! overrides and initial state.

use missive_core::{builder::NewEvent, limits, validate};
use missive_store::NewRoom;
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, UserId, events::TimelineEventType};
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

/// The most `initial_state` entries one request may give: each is an event
/// and a state entry every later read of the room carries.
pub const MAX_INITIAL_STATE: usize = 256;

/// Room for what the server adds to a content to make an event (IDs,
/// hashes, signatures, references), when checking a planned event's size
/// before it is built.
const EVENT_OVERHEAD_BYTES: usize = 2048;

/// Every event a `/createRoom` request implies, checked before the first
/// is written.
struct Plan {
    version: RoomVersion,
    create: Value,
    member: Value,
    alias: Option<OwnedRoomAliasId>,
    /// After the creator's join: power levels, alias, presets, initial
    /// state, name, topic.
    state: Vec<NewEvent>,
    invites: Vec<(OwnedUserId, Value)>,
    publish: bool,
}

impl App {
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let plan = self.plan_room(creator, req).await?;
        let version = &plan.version;
        // A v12 room's ID is the hash of its create event, so two identical
        // creations by one user in the same millisecond would collide: the
        // second waits a millisecond and gets a later timestamp.
        let mut attempts = 0;
        let create_pdu = loop {
            let made = self
                .append_local(
                    Target::NewRoom(version),
                    creator,
                    NewEvent::state(TimelineEventType::RoomCreate, "", plan.create.clone()),
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
        match self.fill_room(&room_id, creator, &plan).await {
            Ok(()) => Ok(room_id),
            Err(e) => {
                // Checked as it was, the request can still fail on the way
                // (a store error): nobody is left in a half-made room.
                tracing::warn!(%room_id, error = %e, "room creation failed part-way; the creator leaves it");
                self.abandon_room(&room_id, creator, plan.alias.as_ref()).await;
                Err(e)
            }
        }
    }

    /// Everything after the create event, under the room's lock.
    async fn fill_room(&self, room_id: &RoomId, creator: &UserId, plan: &Plan) -> Result<()> {
        let _guard = self.room_locks.lock(room_id, &self.store).await?;
        let send = |new: NewEvent| self.append_local(Target::Room(room_id, &plan.version), creator, new, None, None);
        send(NewEvent::state(
            TimelineEventType::RoomMember,
            creator.as_str(),
            plan.member.clone(),
        ))
        .await?;
        if let Some(alias) = &plan.alias {
            self.store
                .set_alias(alias.to_string(), room_id.to_string(), creator.to_string())
                .await?;
        }
        for new in &plan.state {
            send(new.clone()).await?;
        }
        for (invitee, content) in &plan.invites {
            send(NewEvent::state(
                TimelineEventType::RoomMember,
                invitee.as_str(),
                content.clone(),
            ))
            .await?;
        }
        if plan.publish {
            self.store.set_room_published(room_id.to_string(), true).await?;
        }
        Ok(())
    }

    async fn abandon_room(&self, room_id: &RoomId, creator: &UserId, alias: Option<&OwnedRoomAliasId>) {
        if let Some(alias) = alias
            && let Err(e) = self.store.delete_alias(alias.to_string()).await
        {
            tracing::warn!(%alias, error = %e, "could not remove the alias of an abandoned room");
        }
        if let Err(e) = self
            .set_membership(room_id, creator, creator, "leave", None, None)
            .await
        {
            tracing::warn!(%room_id, error = %e, "could not leave an abandoned room");
        }
    }

    /// Reads and checks the whole request, writing nothing: what would be
    /// refused half-way is refused before the room exists.
    async fn plan_room(&self, creator: &UserId, req: CreateRoom) -> Result<Plan> {
        let version = RoomVersion::parse(req.room_version.as_deref().unwrap_or(&self.config.default_room_version))?;
        let rules = &version.rules;
        let v12 = rules.authorization.explicitly_privilege_room_creators;
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
        if req.invite.iter().any(|u| u == creator) {
            return Err(Error::invalid_param("Cannot invite yourself"));
        }
        if req.initial_state.len() > MAX_INITIAL_STATE {
            return Err(Error::invalid_param(format!(
                "At most {MAX_INITIAL_STATE} initial_state entries may be given"
            )));
        }
        for s in &req.initial_state {
            if matches!(
                s.kind.as_str(),
                "m.room.create" | "m.room.member" | "m.room.power_levels"
            ) {
                return Err(Error::invalid_param(format!("initial_state may not set {}", s.kind)));
            }
        }

        // The create event.
        let mut create = req.creation_content.clone().unwrap_or_default();
        create.insert("room_version".into(), version.id.as_str().into());
        if !rules.authorization.use_room_create_sender {
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
        let create = Value::Object(create);

        // The creator joins.
        let mut member = json!({ "membership": "join" });
        self.add_profile(creator, &mut member).await?;

        // Power levels: defaults, then the preset, then the client's override.
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
            // As the reference server: an override that names users names
            // the creator too, who would otherwise lose the room at once.
            if !v12
                && let Some(Value::Object(u)) = over.get("users")
                && !u.contains_key(creator.as_str())
            {
                return Err(Error::bad_json(format!(
                    "power_level_content_override.users must contain {creator}"
                )));
            }
            for (k, v) in over {
                pl[k] = v;
            }
        }

        let mut state = vec![NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl.clone())];
        if let Some(alias) = &alias {
            state.push(NewEvent::state(
                TimelineEventType::RoomCanonicalAlias,
                "",
                json!({ "alias": alias }),
            ));
        }
        // The preset's events, unless initial_state sets the same state.
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
            state.push(NewEvent::state(
                TimelineEventType::RoomJoinRules,
                "",
                json!({ "join_rule": join_rule }),
            ));
        }
        if !overridden("m.room.history_visibility") {
            state.push(NewEvent::state(
                TimelineEventType::RoomHistoryVisibility,
                "",
                json!({ "history_visibility": history }),
            ));
        }
        if !overridden("m.room.guest_access") {
            state.push(NewEvent::state(
                TimelineEventType::RoomGuestAccess,
                "",
                json!({ "guest_access": guest }),
            ));
        }
        for s in req.initial_state {
            state.push(NewEvent::state(
                s.kind.as_str().into(),
                &s.state_key,
                Value::Object(s.content),
            ));
        }
        if let Some(name) = req.name {
            state.push(NewEvent::state(
                TimelineEventType::RoomName,
                "",
                json!({ "name": name }),
            ));
        }
        if let Some(topic) = req.topic {
            state.push(NewEvent::state(
                TimelineEventType::RoomTopic,
                "",
                json!({ "topic": topic, "m.topic": { "m.text": [{ "body": topic }] } }),
            ));
        }
        let mut invites = vec![];
        for invitee in req.invite {
            let mut content = json!({ "membership": "invite" });
            if req.is_direct {
                content["is_direct"] = true.into();
            }
            self.add_profile(&invitee, &mut content).await?;
            invites.push((invitee, content));
        }

        // Every event passes the checks it would meet when built.
        let planned = [
            NewEvent::state(TimelineEventType::RoomCreate, "", create.clone()),
            NewEvent::state(TimelineEventType::RoomMember, creator.as_str(), member.clone()),
        ];
        for new in planned.iter().chain(&state) {
            check_planned(&version, new)?;
        }
        // The creator may send each of them under the power levels planned.
        if v12 {
            let creators: Vec<&str> = std::iter::once(creator.as_str())
                .chain(
                    create["additional_creators"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str),
                )
                .collect();
            if let Some(Value::Object(u)) = pl.get("users")
                && let Some(c) = creators.iter().find(|c| u.contains_key(**c))
            {
                return Err(Error::bad_json(format!(
                    "{c} creates the room: from room version 12 a creator has no power level to set"
                )));
            }
        } else {
            let level = |key: &str, default: i64| pl.get(key).and_then(Value::as_i64).unwrap_or(default);
            let mine = pl["users"]
                .get(creator.as_str())
                .and_then(Value::as_i64)
                .unwrap_or_else(|| level("users_default", 0));
            for new in &state[1..] {
                let needed = pl["events"]
                    .get(new.kind.to_string())
                    .and_then(Value::as_i64)
                    .unwrap_or_else(|| level("state_default", 50));
                if mine < needed {
                    return Err(Error::forbidden(format!(
                        "The power levels asked for leave the creator unable to send {}",
                        new.kind
                    )));
                }
            }
            if !invites.is_empty() && mine < level("invite", 0) {
                return Err(Error::forbidden(
                    "The power levels asked for leave the creator unable to invite",
                ));
            }
        }
        Ok(Plan {
            version,
            create,
            member,
            alias,
            state,
            invites,
            publish: req.visibility.as_deref() == Some("public"),
        })
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

/// The checks a planned event meets when it is built: its content's rules,
/// the spec's limits on type, state key and size.
fn check_planned(version: &RoomVersion, new: &NewEvent) -> Result<()> {
    validate::local_state(&version.rules, &new.kind, &new.content, None).map_err(|e| match e {
        validate::Invalid::BadJson(m) => Error::bad_json(format!("{}: {m}", new.kind)),
        validate::Invalid::InvalidParam(m) => Error::invalid_param(format!("{}: {m}", new.kind)),
    })?;
    let kind = new.kind.to_string();
    for field in [Some(kind.as_str()), new.state_key.as_deref()].into_iter().flatten() {
        if field.contains('\0') {
            return Err(Error::invalid_param("An event type or state key holds a NUL character"));
        }
        if field.len() > limits::MAX_IDENTIFIER_BYTES {
            return Err(Error::too_large(format!(
                "An event type or state key is longer than {} bytes",
                limits::MAX_IDENTIFIER_BYTES
            )));
        }
    }
    let size = serde_json::to_vec(&new.content).map(|v| v.len()).unwrap_or(usize::MAX);
    if size.saturating_add(EVENT_OVERHEAD_BYTES) > limits::MAX_PDU_BYTES {
        return Err(Error::too_large(format!("The {} event would be too large", new.kind)));
    }
    Ok(())
}
