//! Room upgrades: a tombstone in the old room and a new room that carries
//! over its important state and points back to it.

use missive_core::{builder::NewEvent, validate};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::TimelineEventType};
use serde_json::{Map, Value, json};

use crate::{
    App, Error, Result,
    services::{
        create_room::{CreateRoom, InitialState},
        rooms::{RoomVersion, Target},
    },
};

/// State copied into the replacement room.
const CARRIED: &[&str] = &[
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
];

impl App {
    pub async fn upgrade_room(
        &self,
        user: &UserId,
        old: &RoomId,
        new_version: &str,
        additional_creators: Vec<OwnedUserId>,
    ) -> Result<OwnedRoomId> {
        RoomVersion::parse(new_version)?;
        let old_version = self.room_version(old).await?;
        let pl = self.power_levels(old).await?;
        if self.membership(old, user).await?.as_deref() != Some("join")
            || pl.user(user) < pl.event("m.room.tombstone", true)
        {
            return Err(Error::forbidden("Not allowed to upgrade this room"));
        }
        let new_rules = RoomVersion::parse(new_version)?;
        let mut initial_state = vec![];
        for kind in CARRIED {
            if let Some(content) = self.state_content(old, kind, "").await?
                && let Value::Object(content) = content
            {
                // State the new version cannot hold (a join rule it lacks,
                // a value another server let through) stays behind.
                let value = Value::Object(content.clone());
                if let Err(e) = validate::local_state(&new_rules.rules, &(*kind).into(), &value, None) {
                    tracing::info!(%old, kind, error = %e, "state not carried into the upgraded room");
                    continue;
                }
                initial_state.push(InitialState {
                    kind: (*kind).to_owned(),
                    state_key: String::new(),
                    content,
                });
            }
        }
        let mut creation = Map::new();
        let (last, _) = self.store.forward_extremities(old.to_string()).await?;
        creation.insert(
            "predecessor".into(),
            json!({ "room_id": old, "event_id": last.first() }),
        );
        if !additional_creators.is_empty() {
            creation.insert("additional_creators".into(), json!(additional_creators));
        }
        // Power levels carry over; creators of a v12 room hold power implicitly.
        let mut pl_content = self
            .state_content(old, "m.room.power_levels", "")
            .await?
            .and_then(|v| v.as_object().cloned());
        if let Some(pl) = pl_content.as_mut()
            && new_rules.rules.authorization.explicitly_privilege_room_creators
            && let Some(users) = pl.get_mut("users").and_then(Value::as_object_mut)
        {
            users.remove(user.as_str());
            for c in &additional_creators {
                users.remove(c.as_str());
            }
        }
        let new_room = self
            .create_room(
                user,
                CreateRoom {
                    initial_state,
                    creation_content: Some(creation),
                    power_level_content_override: pl_content,
                    room_version: Some(new_version.to_owned()),
                    preset: Some("private_chat".into()),
                    ..Default::default()
                },
            )
            .await?;
        {
            let _guard = self.room_locks.lock(old, &self.store).await?;
            self.append_local(
                Target::Room(old, &old_version),
                user,
                NewEvent::state(
                    TimelineEventType::RoomTombstone,
                    "",
                    json!({ "body": "This room has been replaced", "replacement_room": new_room }),
                ),
                None,
                None,
            )
            .await?;
        }
        // Aliases move to the new room, then the canonical alias follows
        // them: it may only name aliases that point to its room.
        for alias in self.store.room_aliases(old.to_string()).await? {
            if let Some((_, creator)) = self.store.alias(alias.clone()).await? {
                self.store.delete_alias(alias.clone()).await?;
                self.store.set_alias(alias, new_room.to_string(), creator).await?;
            }
        }
        if let Some(content) = self.state_content(old, "m.room.canonical_alias", "").await?
            && content.as_object().is_some_and(|c| !c.is_empty())
        {
            let new = NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", content);
            if let Err(e) = self.send_event(&new_room, user, new, None).await {
                tracing::info!(%new_room, error = %e, "canonical alias not carried into the upgraded room");
            }
        }
        Ok(new_room)
    }
}
