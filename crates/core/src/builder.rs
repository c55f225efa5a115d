//! Building a new local event: fill in the PDU fields, hash, sign, and derive
//! its event ID (and, for a v12 create event, the room ID) from the reference hash.

use std::collections::HashMap;

use rand::Rng;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId, UserId,
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion, RoomIdFormatVersion, RoomVersionRules},
    signatures::{Ed25519KeyPair, hash_and_sign_event, reference_hash},
};

use crate::pdu::{Pdu, PduError};

/// What a client asks for: everything else comes from the room.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: serde_json::Value,
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    pub fn state(kind: TimelineEventType, state_key: &str, content: serde_json::Value) -> Self {
        NewEvent {
            kind,
            state_key: Some(state_key.to_owned()),
            content,
            redacts: None,
        }
    }
    pub fn message(kind: TimelineEventType, content: serde_json::Value) -> Self {
        NewEvent {
            kind,
            state_key: None,
            content,
            redacts: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("event content is not a JSON object")]
    ContentNotObject,
    #[error("event is too large")]
    TooLarge,
    /// A type or state key too long, or holding NUL.
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
    #[error("{0}")]
    Json(String),
    #[error(transparent)]
    Pdu(#[from] PduError),
}

pub struct Prev<'a> {
    /// `None` only for a v12 create event (the room ID comes from its hash).
    pub room_id: Option<&'a RoomId>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
    /// The SHA-256 content hashes of the events named above, which rooms of
    /// versions 1 and 2 carry beside each reference; unused later.
    pub ref_hashes: HashMap<OwnedEventId, String>,
}

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub use crate::limits::MAX_PDU_BYTES;

#[allow(clippy::too_many_arguments)]
pub fn build_pdu(
    rules: &RoomVersionRules,
    server_name: &str,
    key: &Ed25519KeyPair,
    sender: &UserId,
    new: NewEvent,
    prev: Prev<'_>,
    now: MilliSecondsSinceUnixEpoch,
) -> Result<Pdu, BuildError> {
    let content = match serde_json::from_value::<CanonicalJsonValue>(new.content) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        Ok(_) => return Err(BuildError::ContentNotObject),
        Err(e) => return Err(BuildError::Json(e.to_string())),
    };
    let with_hashes = matches!(rules.events_reference_format, EventsReferenceFormatVersion::V1);
    let ids = |v: Vec<OwnedEventId>| {
        CanonicalJsonValue::Array(
            v.into_iter()
                .map(|e| {
                    if !with_hashes {
                        return CanonicalJsonValue::String(e.into());
                    }
                    let mut hashes = CanonicalJsonObject::new();
                    if let Some(h) = prev.ref_hashes.get(&e) {
                        hashes.insert("sha256".into(), CanonicalJsonValue::String(h.clone()));
                    }
                    CanonicalJsonValue::Array(vec![
                        CanonicalJsonValue::String(e.into()),
                        CanonicalJsonValue::Object(hashes),
                    ])
                })
                .collect(),
        )
    };
    let mut obj = CanonicalJsonObject::new();
    // Versions 1 and 2: the ID is chosen by the sending server and signed
    // with the event; later versions derive it from the event's hash.
    let chosen_id = match rules.event_id_format {
        EventIdFormatVersion::V1 => {
            let id = OwnedEventId::try_from(format!("${}:{server_name}", opaque_id()))
                .map_err(|e| BuildError::Json(e.to_string()))?;
            obj.insert("event_id".into(), CanonicalJsonValue::String(id.to_string()));
            Some(id)
        }
        _ => None,
    };
    obj.insert("auth_events".into(), ids(prev.auth_events));
    obj.insert("prev_events".into(), ids(prev.prev_events));
    obj.insert("content".into(), CanonicalJsonValue::Object(content));
    obj.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(ruma::Int::try_from(prev.depth).map_err(|_| BuildError::TooLarge)?),
    );
    obj.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(now.0.into()));
    if let Some(room_id) = prev.room_id {
        obj.insert("room_id".into(), CanonicalJsonValue::String(room_id.to_string()));
    }
    obj.insert("sender".into(), CanonicalJsonValue::String(sender.to_string()));
    obj.insert("type".into(), CanonicalJsonValue::String(new.kind.to_string()));
    if let Some(sk) = new.state_key {
        obj.insert("state_key".into(), CanonicalJsonValue::String(sk));
    }
    // Before v11 the redacted event's ID is a top-level key; from v11 it
    // lives in the content (which the client already put there).
    if let Some(r) = new.redacts
        && !rules.redaction.content_field_redacts
    {
        obj.insert("redacts".into(), CanonicalJsonValue::String(r.to_string()));
    }

    // The spec bounds the whole PDU; hashes and signatures add well under
    // a kilobyte, so an event already over the limit is refused up front.
    if serde_json::to_string(&obj)
        .map_err(|e| BuildError::Json(e.to_string()))?
        .len()
        > MAX_PDU_BYTES
    {
        return Err(BuildError::TooLarge);
    }
    hash_and_sign_event(server_name, key, &mut obj, &rules.redaction).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => BuildError::TooLarge,
        e => BuildError::Json(e.to_string()),
    })?;
    let hash = reference_hash(&obj, rules).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => BuildError::TooLarge,
        e => BuildError::Json(e.to_string()),
    })?;
    let event_id = match chosen_id {
        Some(id) => id,
        None => OwnedEventId::try_from(format!("${hash}")).map_err(|e| BuildError::Json(e.to_string()))?,
    };
    crate::limits::check(&obj).map_err(|e| match e {
        crate::limits::LimitError::TooLarge => BuildError::TooLarge,
        e => BuildError::Limit(e),
    })?;
    let room_id: Option<OwnedRoomId> = match prev.room_id {
        Some(r) => Some(r.to_owned()),
        None if matches!(rules.room_id_format, RoomIdFormatVersion::V2) => {
            Some(OwnedRoomId::try_from(format!("!{hash}")).map_err(|e| BuildError::Json(e.to_string()))?)
        }
        None => None,
    };
    Ok(Pdu::from_canonical(event_id, room_id.as_deref(), &obj)?)
}

/// The locally unique part of a version 1 or 2 event ID: 18 random
/// letters and digits (107 bits).
fn opaque_id() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(18)
        .map(char::from)
        .collect()
}
