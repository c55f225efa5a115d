//! The room version's authorization rules, applied to a PDU against a given
//! state. Thin over `ruma::state_res`, which implements the spec's rules.

use std::collections::HashMap;

use ruma::{
    OwnedEventId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    state_res,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::pdu::Pdu;

pub type StateKey = (StateEventType, String);
/// A room state: (type, state_key) to event ID.
pub type StateMap = HashMap<StateKey, OwnedEventId>;

/// Which state entries are the auth events of a new event.
pub fn auth_types(
    rules: &RoomVersionRules,
    kind: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawJsonValue,
) -> Result<Vec<StateKey>, String> {
    state_res::auth_types_for_event(kind, sender, state_key, content, &rules.authorization)
}

/// Checks `pdu` against its own auth events and against `state` (the state
/// before it). `events` must hold the PDUs named by both, and the create event.
pub fn check(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap,
    events: &HashMap<OwnedEventId, Pdu>,
) -> Result<(), String> {
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| events.get(id))?;
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind, key| {
        state.get(&(kind.clone(), key.to_owned())).and_then(|id| events.get(id))
    })
}
