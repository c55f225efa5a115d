//! A persistent data unit: the signed, federated form of a room event.

use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("invalid PDU JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid PDU: {0}")]
    Invalid(String),
}

/// A PDU with the fields the server reads often parsed out; `json` keeps
/// the exact signed form, which is what federation and redaction work on.
#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    /// Whether `room_id` is part of the signed JSON (not for a v12 create event,
    /// whose room ID is derived from its own hash).
    pub room_id_in_json: bool,
    pub json: Box<RawJsonValue>,
}

#[derive(Deserialize)]
struct PduFields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawJsonValue>,
    state_key: Option<String>,
    #[serde(default, deserialize_with = "event_refs")]
    prev_events: Vec<OwnedEventId>,
    #[serde(default, deserialize_with = "event_refs")]
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: u64,
}

/// An event named in `prev_events` or `auth_events`: its ID alone (room
/// versions 3 and later), or its ID and hashes (versions 1 and 2).
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    WithHashes(OwnedEventId, RefHashes),
}

#[derive(Deserialize)]
struct RefHashes {
    sha256: Option<String>,
}

impl EventRef {
    fn into_parts(self) -> (OwnedEventId, Option<String>) {
        match self {
            EventRef::Id(id) => (id, None),
            EventRef::WithHashes(id, h) => (id, h.sha256),
        }
    }
}

/// Reads the event IDs of `prev_events` or `auth_events` in either format.
pub fn event_refs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<OwnedEventId>, D::Error> {
    Ok(Vec::<EventRef>::deserialize(d)?
        .into_iter()
        .map(|r| r.into_parts().0)
        .collect())
}

/// Reads `prev_events` or `auth_events` with the hashes that versions 1
/// and 2 carry beside each ID (`None` in later versions).
pub fn event_refs_with_hashes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(OwnedEventId, Option<String>)>, D::Error> {
    Ok(Vec::<EventRef>::deserialize(d)?
        .into_iter()
        .map(EventRef::into_parts)
        .collect())
}

/// Checks that `prev_events` and `auth_events` name events in the room
/// version's format: `[id, hashes]` pairs in versions 1 and 2, bare IDs
/// later. Another format is another room's event, or a forged one.
pub fn check_event_refs(obj: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<(), PduError> {
    let pairs = matches!(
        rules.events_reference_format,
        ruma::room_version_rules::EventsReferenceFormatVersion::V1
    );
    for field in ["prev_events", "auth_events"] {
        let Some(ruma::CanonicalJsonValue::Array(refs)) = obj.get(field) else {
            continue;
        };
        for r in refs {
            let ok = match r {
                ruma::CanonicalJsonValue::String(_) => !pairs,
                ruma::CanonicalJsonValue::Array(pair) => {
                    pairs && pair.len() == 2 && matches!(pair[0], ruma::CanonicalJsonValue::String(_))
                }
                _ => false,
            };
            if !ok {
                return Err(PduError::Invalid(format!("{field} not in this room version's format")));
            }
        }
    }
    Ok(())
}

/// The ID of an event of a room with these rules: the `event_id` its JSON
/// carries in versions 1 and 2, its reference hash from version 3 on.
pub fn event_id_for(obj: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, PduError> {
    if matches!(rules.event_id_format, EventIdFormatVersion::V1) {
        return match obj.get("event_id") {
            Some(ruma::CanonicalJsonValue::String(s)) => {
                OwnedEventId::try_from(s.as_str()).map_err(|e| PduError::Invalid(format!("invalid event_id: {e}")))
            }
            _ => Err(PduError::Invalid("missing event_id".into())),
        };
    }
    let hash = ruma::signatures::reference_hash(obj, rules).map_err(|e| PduError::Invalid(e.to_string()))?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| PduError::Invalid(e.to_string()))
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a stored or received PDU. `room_id` is required for events whose
    /// JSON has none (v12 create events).
    pub fn from_json(
        event_id: OwnedEventId,
        room_id: Option<&RoomId>,
        json: Box<RawJsonValue>,
    ) -> Result<Self, PduError> {
        let f: PduFields = serde_json::from_str(json.get())?;
        let room_id_in_json = f.room_id.is_some();
        let room_id = match (f.room_id, room_id) {
            (Some(r), _) => r,
            (None, Some(r)) => r.to_owned(),
            (None, None) => return Err(PduError::Invalid("missing room_id".into())),
        };
        let redacts = match f.redacts {
            Some(r) => Some(r),
            None if f.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsInContent>(f.content.get())
                    .ok()
                    .and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Pdu {
            event_id,
            room_id,
            sender: f.sender,
            origin_server_ts: f.origin_server_ts,
            kind: f.kind,
            content: f.content,
            state_key: f.state_key,
            prev_events: f.prev_events,
            auth_events: f.auth_events,
            redacts,
            depth: f.depth,
            room_id_in_json,
            json,
        })
    }

    pub fn from_canonical(
        event_id: OwnedEventId,
        room_id: Option<&RoomId>,
        obj: &CanonicalJsonObject,
    ) -> Result<Self, PduError> {
        let json = serde_json::value::to_raw_value(obj)?;
        Self::from_json(event_id, room_id, json)
    }

    /// The event's reference hash (of its redacted form, without
    /// signatures), which rooms of versions 1 and 2 write beside each
    /// reference to it.
    pub fn reference_hash(&self, rules: &RoomVersionRules) -> Option<String> {
        let mut obj: CanonicalJsonObject = serde_json::from_str(self.json.get()).ok()?;
        obj.remove("unsigned");
        ruma::signatures::reference_hash(&obj, rules).ok()
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or(serde_json::Value::Null)
    }

    /// The `membership` of an `m.room.member` event, if it is one.
    pub fn membership(&self) -> Option<String> {
        if self.kind != TimelineEventType::RoomMember {
            return None;
        }
        #[derive(Deserialize)]
        struct M {
            membership: String,
        }
        serde_json::from_str::<M>(self.content.get()).ok().map(|m| m.membership)
    }

    /// The event as the client-server API shows it (`ClientEvent`), with the
    /// given `unsigned` object.
    pub fn to_client_event(&self, unsigned: Option<serde_json::Value>) -> serde_json::Value {
        let mut ev = serde_json::json!({
            "type": self.kind.to_string(),
            "content": serde_json::from_str::<serde_json::Value>(self.content.get()).unwrap_or_default(),
            "event_id": self.event_id,
            "sender": self.sender,
            "origin_server_ts": self.origin_server_ts,
            "room_id": self.room_id,
        });
        let obj = ev.as_object_mut().expect("object literal");
        if let Some(sk) = &self.state_key {
            obj.insert("state_key".into(), sk.clone().into());
        }
        // Clients of every room version read `redacts` at the top level.
        if let Some(r) = &self.redacts {
            obj.insert("redacts".into(), r.to_string().into());
        }
        if let Some(u) = unsigned.filter(|u| u.as_object().is_some_and(|o| !o.is_empty())) {
            obj.insert("unsigned".into(), u);
        }
        ev
    }

    /// The stripped form used for invite and knock room state.
    pub fn to_stripped(&self) -> serde_json::Value {
        serde_json::json!({
            "type": self.kind.to_string(),
            "state_key": self.state_key.clone().unwrap_or_default(),
            "sender": self.sender,
            "content": serde_json::from_str::<serde_json::Value>(self.content.get()).unwrap_or_default(),
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_in_json.then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        false
    }
}

/// Borrowed view used where an event ID is all that is needed.
pub fn event_id_of(p: &Pdu) -> &EventId {
    &p.event_id
}
