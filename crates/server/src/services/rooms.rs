//! Appending local events to rooms: the one path every local event takes
//! (build, authorise against current state, persist, wake syncs).

use std::{collections::HashMap, sync::Arc};

use missive_core::{
    auth::{self, StateMap},
    builder::{BuildError, NewEvent, Prev, build_pdu},
    pdu::Pdu,
    validate,
};
use missive_store::{NewRoom, NewRoomEvent, StoreError};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventsReferenceFormatVersion, RoomVersionRules},
};
use serde_json::{Value, json};

use crate::{App, Error, Result};

/// One async lock per room: local events of a room are appended one at a
/// time, so each extends the single forward extremity.
#[derive(Default)]
pub struct RoomLocks(std::sync::Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>);

/// A room held by this task: against the other tasks of this process,
/// then against other processes on the same database.
pub struct RoomGuard {
    _lease: Option<missive_store::RoomLease>,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl RoomLocks {
    pub async fn lock(&self, room: &RoomId, store: &missive_store::Store) -> Result<RoomGuard> {
        let m = self
            .0
            .lock()
            .expect("room locks")
            .entry(room.to_owned())
            .or_default()
            .clone();
        let local = m.lock_owned().await;
        let lease = store.lease_room(room.as_str()).await?;
        Ok(RoomGuard {
            _lease: lease,
            _local: local,
        })
    }
}

/// A room's version and the rules that come with it.
#[derive(Clone)]
pub struct RoomVersion {
    pub id: RoomVersionId,
    pub rules: RoomVersionRules,
}

impl RoomVersion {
    pub fn parse(v: &str) -> Result<Self> {
        let id = RoomVersionId::try_from(v).map_err(|_| Error::unsupported_room_version("Invalid room version"))?;
        let rules = missive_core::rules_for(&id)
            .ok_or_else(|| Error::unsupported_room_version(format!("Room version {v} is not supported")))?;
        Ok(RoomVersion { id, rules })
    }
}

/// Where a new event goes: an existing room, or a room its create event starts.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Room(&'a RoomId, &'a RoomVersion),
    NewRoom(&'a RoomVersion),
}

/// The parsed `m.room.power_levels` of a room, with the room's creators.
pub struct PowerLevels {
    content: Value,
    creators: Vec<String>,
}

impl PowerLevels {
    fn int(v: Option<&Value>, default: i64) -> i64 {
        match v {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
            Some(Value::String(s)) => s.parse().unwrap_or(default),
            _ => default,
        }
    }
    pub fn user(&self, user: &UserId) -> i64 {
        if self.creators.iter().any(|c| c == user.as_str()) {
            return i64::MAX;
        }
        if self.content.is_null() {
            return 0;
        }
        let default = Self::int(self.content.get("users_default"), 0);
        Self::int(self.content.get("users").and_then(|u| u.get(user.as_str())), default)
    }
    pub fn action(&self, name: &str) -> i64 {
        let default = match name {
            "invite" => 0,
            _ => 50,
        };
        Self::int(self.content.get(name), default)
    }
    pub fn event(&self, kind: &str, state: bool) -> i64 {
        let default = if state {
            Self::int(
                self.content.get("state_default"),
                if self.content.is_null() { 0 } else { 50 },
            )
        } else {
            Self::int(self.content.get("events_default"), 0)
        };
        Self::int(self.content.get("events").and_then(|e| e.get(kind)), default)
    }
    pub fn notification(&self, key: &str) -> i64 {
        Self::int(self.content.get("notifications").and_then(|n| n.get(key)), 50)
    }
}

impl App {
    pub async fn room_version(&self, room_id: &RoomId) -> Result<RoomVersion> {
        let row = self
            .store
            .room(room_id.to_string())
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        RoomVersion::parse(&row.room_version)
    }

    /// The content of a current state event, if set.
    pub async fn state_content(&self, room_id: &RoomId, kind: &str, state_key: &str) -> Result<Option<Value>> {
        Ok(self
            .store
            .current_state_event(room_id.to_string(), kind.to_owned(), state_key.to_owned())
            .await?
            .map(|e| e.pdu.content_value()))
    }

    pub async fn membership(&self, room_id: &RoomId, user: &UserId) -> Result<Option<String>> {
        Ok(self
            .store
            .current_state_event(room_id.to_string(), "m.room.member".into(), user.to_string())
            .await?
            .and_then(|e| e.pdu.membership()))
    }

    pub async fn power_levels(&self, room_id: &RoomId) -> Result<PowerLevels> {
        let version = self.room_version(room_id).await?;
        let content = self
            .state_content(room_id, "m.room.power_levels", "")
            .await?
            .unwrap_or(Value::Null);
        let mut creators = vec![];
        if version.rules.authorization.explicitly_privilege_room_creators {
            if let Some(create) = self
                .store
                .current_state_event(room_id.to_string(), "m.room.create".into(), String::new())
                .await?
            {
                creators.push(create.pdu.sender.to_string());
                if let Some(extra) = create
                    .pdu
                    .content_value()
                    .get("additional_creators")
                    .and_then(Value::as_array)
                {
                    creators.extend(extra.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                }
            }
        } else if content.is_null() {
            // Without power levels, the creator holds power 100 (spec's default).
            if let Some(create) = self
                .store
                .current_state_event(room_id.to_string(), "m.room.create".into(), String::new())
                .await?
            {
                creators.push(create.pdu.sender.to_string());
            }
        }
        Ok(PowerLevels { content, creators })
    }

    /// The current state event a new state event would repeat: same
    /// sender, same content. Setting it again changes nothing, so the
    /// existing event answers (as the reference server does), instead of a
    /// new event in every member's timeline.
    pub(crate) async fn identical_state(
        &self,
        room_id: &RoomId,
        version: &RoomVersion,
        sender: &UserId,
        new: &NewEvent,
    ) -> Result<Option<OwnedEventId>> {
        let Some(sk) = &new.state_key else { return Ok(None) };
        let Some(current) = self
            .store
            .current_state_event(room_id.to_string(), new.kind.to_string(), sk.clone())
            .await?
        else {
            return Ok(None);
        };
        let same = current.pdu.sender == sender
            && current.redacted_by.is_none()
            && serde_json::from_str::<Value>(current.pdu.content.get()).ok().as_ref() == Some(&new.content);
        if !same {
            return Ok(None);
        }
        // Only for a sender who may set it now: the same refusal as a new
        // event, not a way to learn the room's state after leaving it.
        self.build_local(Target::Room(room_id, version), sender, new.clone())
            .await?;
        Ok(Some(current.pdu.event_id))
    }

    /// Sends an event as `sender`: the entry point for client sends. Takes
    /// the room lock; a repeated transaction ID returns the first event.
    pub async fn send_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        new: NewEvent,
        txn: Option<(String, String)>,
    ) -> Result<OwnedEventId> {
        let _guard = self.room_locks.lock(room_id, &self.store).await?;
        if let Some((device, txn_id)) = &txn
            && let Some(id) = self
                .store
                .event_by_txn(sender.to_string(), device.clone(), txn_id.clone())
                .await?
        {
            return OwnedEventId::try_from(id).map_err(|e| Error::Internal(e.to_string()));
        }
        let version = self.room_version(room_id).await?;
        if let Some(same) = self.identical_state(room_id, &version, sender, &new).await? {
            return Ok(same);
        }
        let redacts = new.redacts.clone();
        let guest_access = new.kind == TimelineEventType::RoomGuestAccess;
        let pdu = self
            .append_local(Target::Room(room_id, &version), sender, new, txn, None)
            .await?;
        if guest_access {
            self.remove_guests_if_barred(room_id);
        }
        if let Some(target) = redacts {
            self.apply_redaction(&version, &pdu, &target).await?;
        }
        Ok(pdu.event_id)
    }

    /// Builds, authorises and persists one local event. The caller holds
    /// the room's lock (or is creating the room). That lock is this
    /// process's; another process on the same database may have extended
    /// the room in the meantime, in which case the store refuses the event
    /// as built on stale extremities and it is built again on the new ones.
    pub async fn append_local(
        &self,
        target: Target<'_>,
        sender: &UserId,
        new: NewEvent,
        txn: Option<(String, String)>,
        new_room: Option<NewRoom>,
    ) -> Result<Pdu> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self
                .append_local_once(target, sender, new.clone(), txn.clone(), new_room.clone())
                .await?
            {
                Some(pdu) => return Ok(pdu),
                None if attempts < 20 => {
                    tracing::debug!(attempts, "room moved on in another process; building the event again")
                }
                None => return Err(Error::Internal("the room kept changing under a send".into())),
            }
        }
    }

    async fn append_local_once(
        &self,
        target: Target<'_>,
        sender: &UserId,
        new: NewEvent,
        txn: Option<(String, String)>,
        new_room: Option<NewRoom>,
    ) -> Result<Option<Pdu>> {
        let (mut pdu, unsigned) = self.build_local(target, sender, new).await?;
        let mut federate_to = vec![];
        if let Target::Room(room_id, version) = target
            && self.federation_enabled()
        {
            // An invite of another server's user is first signed by that server.
            if pdu.membership().as_deref() == Some("invite")
                && let Some(invitee) = pdu.state_key.as_deref().and_then(|s| <&UserId>::try_from(s).ok())
                && !self.is_local(invitee)
            {
                pdu = self.invite_remote(version, pdu).await?;
            }
            let mut servers = self.servers_in_room(room_id).await?;
            // The target of a kick or ban hears of it, joined or not.
            if pdu.kind == TimelineEventType::RoomMember
                && let Some(target) = pdu.state_key.as_deref().and_then(|s| <&UserId>::try_from(s).ok())
                && !self.is_local(target)
                && pdu.membership().as_deref() != Some("invite")
            {
                servers.push(target.server_name().to_owned());
            }
            servers.sort();
            servers.dedup();
            federate_to = servers.into_iter().map(|s| s.to_string()).collect();
        }
        let (rel_type, relates_to) = relation_of(&pdu);
        let media_refs = if pdu.is_state() {
            vec![]
        } else {
            self.attachable_media(sender, self.local_media_in(&pdu.content_value()))
                .await?
        };
        let queued = !federate_to.is_empty();
        match self
            .store
            .append_event(NewRoomEvent {
                pdu: pdu.clone(),
                unsigned,
                txn,
                rel_type,
                relates_to,
                new_room,
                media_refs,
                federate_to,
            })
            .await
        {
            Ok(_) => {}
            Err(StoreError::Exists) => return Err(Error::room_in_use("Event already exists")),
            Err(StoreError::Stale) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        self.notify();
        self.queue_push(&pdu);
        if queued {
            self.wake_sender();
        }
        Ok(Some(pdu))
    }

    /// Builds a local event on the room's current state and checks it
    /// against the auth rules, without storing it; with its `unsigned`.
    pub(crate) async fn build_local(
        &self,
        target: Target<'_>,
        sender: &UserId,
        new: NewEvent,
    ) -> Result<(Pdu, Option<Value>)> {
        let (room_id, version) = match target {
            Target::Room(r, v) => (Some(r), v),
            Target::NewRoom(v) => (None, v),
        };
        let rules = &version.rules;
        if new.state_key.is_some() {
            self.check_local_state(rules, &new, room_id).await?;
        }
        let content_raw = serde_json::value::to_raw_value(&new.content).map_err(|e| Error::bad_json(e.to_string()))?;
        let auth_keys = auth::auth_types(rules, &new.kind, sender, new.state_key.as_deref(), &content_raw)
            .map_err(Error::bad_json)?;
        let mut check_keys = auth_keys.clone();
        check_keys.push((StateEventType::RoomCreate, String::new()));
        // Only the state entries the auth rules and `unsigned` look at are
        // read, not the room's whole state: a send costs the same in a room
        // of three members and in one of thousands.
        let mut wanted_keys = check_keys.clone();
        if let Some(sk) = &new.state_key {
            wanted_keys.push((new.kind.to_string().into(), sk.clone()));
        }
        let (prev_events, depth, state) = match room_id {
            Some(r) => {
                // The deepest extremities, a bounded number: the rest are
                // merged by the next events, and no event built here names
                // more prev_events than other servers take.
                let (mut prev, depth) = self.store.forward_extremities(r.to_string()).await?;
                prev.truncate(missive_core::limits::LOCAL_PREV_EVENTS);
                let keys = wanted_keys.iter().map(|(t, k)| (t.to_string(), k.clone())).collect();
                (
                    prev,
                    depth + 1,
                    self.store.current_state_ids_for(r.to_string(), keys).await?,
                )
            }
            None => (vec![], 1, StateMap::new()),
        };
        let auth_events: Vec<OwnedEventId> = auth_keys.iter().filter_map(|k| state.get(k).cloned()).collect();
        // Versions 1 and 2 name each referenced event with its content hash.
        let ref_hashes = self
            .reference_hashes(rules, prev_events.iter().chain(&auth_events))
            .await?;
        let replaced = new
            .state_key
            .as_ref()
            .and_then(|sk| state.get(&(new.kind.to_string().into(), sk.clone())).cloned());

        // Before v12 a new room's ID is chosen by its server; from v12 it is
        // the hash of the create event.
        let generated;
        let pdu_room_id = match room_id {
            Some(r) => Some(r),
            None if rules.authorization.room_create_event_id_as_room_id => None,
            None => {
                generated = OwnedRoomId::try_from(format!(
                    "!{}:{}",
                    crate::services::accounts::random_string(18),
                    self.server_name
                ))
                .map_err(|e| Error::Internal(e.to_string()))?;
                Some(&*generated)
            }
        };
        if pdu_room_id.is_none() && new.kind != TimelineEventType::RoomCreate {
            return Err(Error::Internal("event without a room".into()));
        }
        let pdu = build_pdu(
            rules,
            self.server_name.as_str(),
            &self.key,
            sender,
            new,
            Prev {
                room_id: pdu_room_id,
                prev_events,
                auth_events,
                depth,
                ref_hashes,
            },
            MilliSecondsSinceUnixEpoch::now(),
        )
        .map_err(|e| match e {
            BuildError::TooLarge => Error::too_large("Event too large"),
            BuildError::Limit(e @ missive_core::limits::LimitError::FieldTooLong(_)) => Error::too_large(e.to_string()),
            BuildError::Limit(e) => Error::invalid_param(e.to_string()),
            e => Error::bad_json(e.to_string()),
        })?;

        let mut wanted: Vec<String> = check_keys
            .iter()
            .filter_map(|k| state.get(k))
            .map(|e| e.to_string())
            .collect();
        wanted.extend(pdu.auth_events.iter().map(|e| e.to_string()));
        if let Some(r) = &replaced {
            wanted.push(r.to_string());
        }
        wanted.sort();
        wanted.dedup();
        let loaded: HashMap<OwnedEventId, Pdu> = self
            .store
            .events(wanted)
            .await?
            .into_iter()
            .map(|e| (e.pdu.event_id.clone(), e.pdu))
            .collect();
        let check_state: StateMap = check_keys
            .into_iter()
            .filter_map(|k| state.get(&k).cloned().map(|e| (k, e)))
            .collect();
        auth::check(rules, &pdu, &check_state, &loaded).map_err(|reason| {
            tracing::debug!(%reason, event_type = %pdu.kind, "local event refused by auth rules");
            Error::forbidden(format!("Not allowed: {reason}"))
        })?;

        let unsigned = replaced.as_ref().and_then(|r| loaded.get(r)).map(|prev| {
            json!({
                "prev_content": prev.content_value(),
                "prev_sender": prev.sender,
                "replaces_state": prev.event_id,
            })
        });
        Ok((pdu, unsigned))
    }

    /// The content rules of the state events the server interprets
    /// ([`missive_core::validate`]), and those that need the server: an ACL
    /// that shuts this server out of the room, a canonical alias that does
    /// not point to the room.
    async fn check_local_state(&self, rules: &RoomVersionRules, new: &NewEvent, room: Option<&RoomId>) -> Result<()> {
        validate::local_state(rules, &new.kind, &new.content, room).map_err(|e| match e {
            validate::Invalid::BadJson(m) => Error::bad_json(m),
            validate::Invalid::InvalidParam(m) => Error::invalid_param(m),
        })?;
        match new.kind {
            TimelineEventType::RoomServerAcl
                if !crate::services::federation::queries::acl_allows(&new.content, &self.server_name) =>
            {
                Err(Error::bad_json(format!(
                    "This ACL would shut {} out of the room",
                    self.server_name
                )))
            }
            TimelineEventType::RoomCanonicalAlias => match room {
                Some(room) => self.check_canonical_alias(room, &new.content).await,
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Every alias a canonical alias event adds must point to the room
    /// (`M_BAD_ALIAS`); those it already named may have gone since.
    async fn check_canonical_alias(&self, room: &RoomId, content: &Value) -> Result<()> {
        let current = self
            .store
            .current_state_event(room.to_string(), "m.room.canonical_alias".into(), String::new())
            .await?
            .map(|e| e.pdu.content_value())
            .unwrap_or_default();
        let before = validate::canonical_aliases(&current);
        for alias in validate::canonical_aliases(content) {
            if before.contains(&alias) {
                continue;
            }
            let here = self
                .store
                .alias(alias.to_owned())
                .await?
                .is_some_and(|(r, _)| r == room.as_str());
            if !here {
                return Err(Error::Matrix {
                    status: http::StatusCode::BAD_REQUEST,
                    errcode: "M_BAD_ALIAS",
                    message: format!("{alias} does not point to this room"),
                    extra: None,
                });
            }
        }
        Ok(())
    }

    /// The reference hashes of the stored events among `ids`, which rooms
    /// of versions 1 and 2 write beside each reference (empty in later
    /// versions, which name events by hash alone).
    pub(crate) async fn reference_hashes(
        &self,
        rules: &RoomVersionRules,
        ids: impl Iterator<Item = &OwnedEventId>,
    ) -> Result<HashMap<OwnedEventId, String>> {
        if !matches!(rules.events_reference_format, EventsReferenceFormatVersion::V1) {
            return Ok(HashMap::new());
        }
        Ok(self
            .store
            .events(ids.map(|e| e.to_string()).collect())
            .await?
            .into_iter()
            .filter_map(|e| Some((e.pdu.event_id.clone(), e.pdu.reference_hash(rules)?)))
            .collect())
    }

    /// Replaces the redacted event by its redacted form, if the redaction's
    /// sender may redact it (their own event, or enough power).
    pub(crate) async fn apply_redaction(
        &self,
        version: &RoomVersion,
        redaction: &Pdu,
        target: &ruma::EventId,
    ) -> Result<()> {
        let Some(ev) = self.store.event(target.to_string()).await? else {
            return Ok(());
        };
        if ev.pdu.room_id != redaction.room_id || ev.redacted_by.is_some() {
            return Ok(());
        }
        if ev.pdu.sender != redaction.sender {
            let pl = self.power_levels(&redaction.room_id).await?;
            if pl.user(&redaction.sender) < pl.action("redact") {
                return Ok(());
            }
        }
        let obj: ruma::CanonicalJsonObject =
            serde_json::from_str(ev.pdu.json.get()).map_err(|e| Error::Internal(e.to_string()))?;
        let redacted = ruma::canonical_json::redact(obj, &version.rules.redaction, None)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let json = serde_json::to_string(&redacted).map_err(|e| Error::Internal(e.to_string()))?;
        self.store
            .redact_event(target.to_string(), json, redaction.event_id.to_string())
            .await?;
        self.notify();
        Ok(())
    }
}

impl App {
    /// Local media an event attaches (`url`, `thumbnail_url` and the `file`
    /// forms, at any depth), by media ID.
    fn local_media_in(&self, content: &Value) -> Vec<String> {
        let prefix = format!("mxc://{}/", self.server_name);
        let mut out = vec![];
        let mut stack = vec![content];
        while let Some(v) = stack.pop() {
            match v {
                Value::Object(o) => {
                    for (k, v) in o {
                        match v {
                            Value::String(s) if k == "url" || k == "thumbnail_url" => {
                                // Only what can be a media ID: anything else names no file.
                                if let Some(id) = s.strip_prefix(&prefix)
                                    && !id.is_empty()
                                    && id.len() <= 255
                                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                                {
                                    out.push(id.to_owned());
                                }
                            }
                            _ => stack.push(v),
                        }
                    }
                }
                Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The `m.relates_to` of an event: relation type and parent event ID.
pub(crate) fn relation_of(pdu: &Pdu) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct C {
        #[serde(rename = "m.relates_to")]
        rel: Option<R>,
    }
    #[derive(serde::Deserialize)]
    struct R {
        rel_type: Option<String>,
        event_id: Option<String>,
    }
    match serde_json::from_str::<C>(pdu.content.get()) {
        // Kept only when it can name an event: the content is the sender's
        // to fill, the columns these go to are not.
        Ok(C {
            rel: Some(R {
                rel_type: Some(t),
                event_id: Some(e),
            }),
        }) if missive_core::limits::identifier_ok(&t)
            && ruma::EventId::parse(&e).is_ok()
            && missive_core::limits::identifier_ok(&e) =>
        {
            (Some(t), Some(e))
        }
        _ => (None, None),
    }
}

/// The content of an event a client asked for: must be a JSON object.
pub fn content_object(raw: &serde_json::value::RawValue) -> Result<Value> {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Error::bad_json("Event content must be a JSON object")),
        Err(e) => Err(Error::not_json(e.to_string())),
    }
}
