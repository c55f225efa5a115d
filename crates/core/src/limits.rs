//! The spec's size limits on events, and the characters no store can keep:
//! applied alike to events built here and events received, so that what
//! one server stores, any other can.

use ruma::{CanonicalJsonObject, CanonicalJsonValue};

/// The largest PDU, in bytes of canonical JSON, signatures included.
pub const MAX_PDU_BYTES: usize = 65_536;

/// The largest event type, state key, sender, room ID or event ID, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 255;

/// The most `prev_events` an event may name, as the reference server
/// enforces: more lets one event merge (and so one server create) any
/// number of forks.
pub const MAX_PREV_EVENTS: usize = 20;

/// The most forward extremities an event built here merges: as many as
/// other servers take, so that the state an event is built on (the room's
/// current state, resolved over every extremity) is the state of its
/// `prev_events` but when a room has more forks than that, which only a
/// server forking it on purpose makes.
pub const LOCAL_PREV_EVENTS: usize = MAX_PREV_EVENTS;

/// The most `auth_events` an event may name: no rule needs more than the
/// create, power levels, join rules, sender's and target's membership and
/// a third-party invite.
pub const MAX_AUTH_EVENTS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("the event is larger than {MAX_PDU_BYTES} bytes")]
    TooLarge,
    #[error("`{0}` is longer than {MAX_IDENTIFIER_BYTES} bytes")]
    FieldTooLong(&'static str),
    #[error("`{0}` holds a NUL character")]
    Nul(&'static str),
    #[error("`{0}` names more than {1} events")]
    TooManyReferences(&'static str, usize),
}

/// Whether a string may name a type, key or identifier: at most 255 bytes,
/// and no NUL character.
pub fn identifier_ok(s: &str) -> bool {
    s.len() <= MAX_IDENTIFIER_BYTES && !s.contains('\0')
}

/// Checks a PDU's size, and its type, state key, sender, room ID and event
/// ID (where it carries one) against the limits.
pub fn check(obj: &CanonicalJsonObject) -> Result<(), LimitError> {
    for field in ["type", "state_key", "sender", "room_id", "event_id"] {
        if let Some(CanonicalJsonValue::String(s)) = obj.get(field) {
            if s.contains('\0') {
                return Err(LimitError::Nul(field));
            }
            if s.len() > MAX_IDENTIFIER_BYTES {
                return Err(LimitError::FieldTooLong(field));
            }
        }
    }
    for (field, max) in [("prev_events", MAX_PREV_EVENTS), ("auth_events", MAX_AUTH_EVENTS)] {
        if let Some(CanonicalJsonValue::Array(refs)) = obj.get(field)
            && refs.len() > max
        {
            return Err(LimitError::TooManyReferences(field, max));
        }
    }
    let len = serde_json::to_string(obj).map(|s| s.len()).unwrap_or(usize::MAX);
    if len > MAX_PDU_BYTES {
        return Err(LimitError::TooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: serde_json::Value) -> CanonicalJsonObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn identifiers_and_sizes() {
        assert!(check(&obj(serde_json::json!({ "type": "m.room.message", "content": {} }))).is_ok());
        assert!(matches!(
            check(&obj(serde_json::json!({ "type": "x".repeat(256) }))),
            Err(LimitError::FieldTooLong("type"))
        ));
        assert!(matches!(
            check(&obj(serde_json::json!({ "state_key": "a\u{0}b" }))),
            Err(LimitError::Nul("state_key"))
        ));
        assert!(check(&obj(serde_json::json!({ "state_key": "x".repeat(255) }))).is_ok());
        assert!(matches!(
            check(&obj(serde_json::json!({ "content": { "body": "x".repeat(70_000) } }))),
            Err(LimitError::TooLarge)
        ));
        let refs = |n: usize| serde_json::Value::Array((0..n).map(|i| format!("$e{i}").into()).collect());
        assert!(
            check(&obj(
                serde_json::json!({ "prev_events": refs(20), "auth_events": refs(10) })
            ))
            .is_ok()
        );
        assert!(matches!(
            check(&obj(serde_json::json!({ "prev_events": refs(21) }))),
            Err(LimitError::TooManyReferences("prev_events", 20))
        ));
        assert!(matches!(
            check(&obj(serde_json::json!({ "auth_events": refs(11) }))),
            Err(LimitError::TooManyReferences("auth_events", 10))
        ));
        // A NUL in content is only text.
        assert!(check(&obj(serde_json::json!({ "content": { "body": "a\u{0}b" } }))).is_ok());
    }
}
