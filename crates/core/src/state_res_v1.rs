//! State resolution of room version 1 (the spec's "State resolution" of
//! room version 1; every later version uses the second algorithm, which
//! `ruma::state_res` implements).
//!
//! The unconflicted entries are kept. The conflicted ones are then settled
//! in passes that each see the state built so far: power levels first,
//! then join rules, then memberships, each by walking the candidates from
//! the oldest (ascending depth, then descending SHA-1 of the event ID) and
//! keeping the last one the auth rules allow on top of its predecessor;
//! every other conflicted entry takes the newest candidate (descending
//! depth, then ascending SHA-1) that the resolved state allows.

use std::collections::{BTreeSet, HashMap};

use ruma::{OwnedEventId, events::StateEventType, room_version_rules::RoomVersionRules, state_res};
use sha1::{Digest, Sha1};

use crate::{
    auth::{StateKey, StateMap, auth_types},
    pdu::Pdu,
};

/// Resolves `states` into one state. `events` holds the events of every
/// state (at least the conflicted ones and those the auth rules read);
/// a conflicted event missing from it is left out of the candidates.
pub fn resolve(rules: &RoomVersionRules, states: &[StateMap], events: &HashMap<OwnedEventId, Pdu>) -> StateMap {
    let (mut unconflicted, mut conflicted) = separate(states);
    if conflicted.is_empty() {
        return unconflicted;
    }

    // The auth rules of the passes start from the unconflicted entries the
    // conflicted events' own auth rules read.
    let mut auth_state = StateMap::new();
    for ev in conflicted.values().flatten().filter_map(|id| events.get(id)) {
        for key in auth_keys_of(rules, ev) {
            if let Some(id) = unconflicted.get(&key) {
                auth_state.entry(key).or_insert_with(|| id.clone());
            }
        }
    }
    // A conflict of which only one event is known here is no conflict: that
    // event stands, without joining the state the passes check against (as
    // the reference server resolves it).
    let known_alone: Vec<(StateKey, OwnedEventId)> = conflicted
        .iter()
        .filter_map(|(key, ids)| {
            let mut known = ids.iter().filter(|id| events.contains_key(*id));
            let first = known.next()?;
            known.next().is_none().then(|| (key.clone(), first.clone()))
        })
        .collect();
    for (key, id) in known_alone {
        conflicted.remove(&key);
        unconflicted.insert(key, id);
    }

    let mut resolved = StateMap::new();
    let candidates = |key: &StateKey| -> Vec<&Pdu> {
        conflicted
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| events.get(id))
            .collect()
    };
    let power_key: StateKey = (StateEventType::RoomPowerLevels, String::new());
    let join_rules_key: StateKey = (StateEventType::RoomJoinRules, String::new());
    for pass in [Pass::PowerLevels, Pass::JoinRules, Pass::Members] {
        let keys: Vec<&StateKey> = conflicted
            .keys()
            .filter(|k| match pass {
                Pass::PowerLevels => **k == power_key,
                Pass::JoinRules => **k == join_rules_key,
                Pass::Members => k.0 == StateEventType::RoomMember,
            })
            .collect();
        let mut settled = vec![];
        for key in keys {
            if let Some(ev) = resolve_auth_events(rules, candidates(key), &auth_state, events) {
                settled.push((key.clone(), ev.event_id.clone()));
            }
        }
        // Each pass sees the previous passes' results, not its own.
        for (key, id) in settled {
            auth_state.insert(key.clone(), id.clone());
            resolved.insert(key, id);
        }
    }
    let others: Vec<&StateKey> = conflicted.keys().filter(|k| !resolved.contains_key(*k)).collect();
    for key in others {
        if let Some(ev) = resolve_normal_events(rules, candidates(key), &auth_state, events) {
            resolved.insert(key.clone(), ev.event_id.clone());
        }
    }

    let mut out = unconflicted;
    out.extend(resolved);
    out
}

enum Pass {
    PowerLevels,
    JoinRules,
    Members,
}

/// Entries on which every state that has them agrees, and for the others
/// every event ID they take. An entry only some states have is not a
/// conflict in this version.
fn separate(states: &[StateMap]) -> (StateMap, HashMap<StateKey, BTreeSet<OwnedEventId>>) {
    let mut unconflicted = StateMap::new();
    let mut conflicted: HashMap<StateKey, BTreeSet<OwnedEventId>> = HashMap::new();
    for state in states {
        for (key, id) in state {
            if let Some(set) = conflicted.get_mut(key) {
                set.insert(id.clone());
                continue;
            }
            match unconflicted.get(key) {
                Some(existing) if existing != id => {
                    let existing = unconflicted.remove(key).expect("present");
                    conflicted.insert(key.clone(), [existing, id.clone()].into_iter().collect());
                }
                Some(_) => {}
                None => {
                    unconflicted.insert(key.clone(), id.clone());
                }
            }
        }
    }
    (unconflicted, conflicted)
}

fn auth_keys_of(rules: &RoomVersionRules, ev: &Pdu) -> Vec<StateKey> {
    auth_types(rules, &ev.kind, &ev.sender, ev.state_key.as_deref(), &ev.content).unwrap_or_default()
}

/// The spec's order for "other" conflicts: descending depth, then
/// ascending SHA-1 of the event ID (hexadecimal).
fn newest_first(mut evs: Vec<&Pdu>) -> Vec<&Pdu> {
    evs.sort_by_cached_key(|e| (std::cmp::Reverse(e.depth), sha1_hex(e.event_id.as_str())));
    evs
}

fn sha1_hex(s: &str) -> String {
    Sha1::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn allowed(rules: &RoomVersionRules, ev: &Pdu, state: &StateMap, events: &HashMap<OwnedEventId, Pdu>) -> bool {
    state_res::check_state_dependent_auth_rules(&rules.authorization, ev, |kind, key| {
        state.get(&(kind.clone(), key.to_owned())).and_then(|id| events.get(id))
    })
    .is_ok()
}

/// Power levels, join rules or one member: from the oldest candidate on,
/// each must be allowed with its predecessor in place; the walk stops at
/// the first that is not, and the last allowed one wins.
fn resolve_auth_events<'a>(
    rules: &RoomVersionRules,
    candidates: Vec<&'a Pdu>,
    auth_state: &StateMap,
    events: &HashMap<OwnedEventId, Pdu>,
) -> Option<&'a Pdu> {
    let mut oldest_first = newest_first(candidates);
    oldest_first.reverse();
    let mut iter = oldest_first.iter();
    let mut winner = *iter.next()?;
    let keys: BTreeSet<StateKey> = oldest_first.iter().flat_map(|e| auth_keys_of(rules, e)).collect();
    let mut state: StateMap = keys
        .into_iter()
        .filter_map(|k| auth_state.get(&k).cloned().map(|id| (k, id)))
        .collect();
    for ev in iter {
        let prev_key = (
            winner.kind.to_string().into(),
            winner.state_key.clone().unwrap_or_default(),
        );
        state.insert(prev_key, winner.event_id.clone());
        if !allowed(rules, ev, &state, events) {
            return Some(winner);
        }
        winner = ev;
    }
    Some(winner)
}

/// Any other entry: the newest candidate the resolved state allows, or the
/// oldest when none is allowed.
fn resolve_normal_events<'a>(
    rules: &RoomVersionRules,
    candidates: Vec<&'a Pdu>,
    auth_state: &StateMap,
    events: &HashMap<OwnedEventId, Pdu>,
) -> Option<&'a Pdu> {
    let ordered = newest_first(candidates);
    ordered
        .iter()
        .find(|ev| allowed(rules, ev, auth_state, events))
        .or(ordered.last())
        .copied()
}

#[cfg(test)]
mod tests {
    use ruma::{MilliSecondsSinceUnixEpoch, RoomId, UserId, events::TimelineEventType, signatures::Ed25519KeyPair};
    use serde_json::json;

    use super::*;
    use crate::builder::{NewEvent, Prev, build_pdu};

    /// A v1 room under construction: every event is built on the last one.
    struct Room {
        rules: RoomVersionRules,
        key: Ed25519KeyPair,
        id: &'static RoomId,
        events: HashMap<OwnedEventId, Pdu>,
        state: StateMap,
        last: Option<OwnedEventId>,
        depth: u64,
    }

    impl Room {
        fn new() -> Self {
            let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k".into()).unwrap();
            let mut room = Room {
                rules: RoomVersionRules::V1,
                key,
                id: <&RoomId>::try_from("!r:a.example").unwrap(),
                events: HashMap::new(),
                state: StateMap::new(),
                last: None,
                depth: 0,
            };
            room.send(
                "@alice:a.example",
                "m.room.create",
                "",
                json!({"creator": "@alice:a.example"}),
            );
            room.join("@alice:a.example");
            room.send(
                "@alice:a.example",
                "m.room.power_levels",
                "",
                json!({"users": {"@alice:a.example": 100}}),
            );
            room.send(
                "@alice:a.example",
                "m.room.join_rules",
                "",
                json!({"join_rule": "public"}),
            );
            room
        }

        fn join(&mut self, user: &str) -> OwnedEventId {
            self.send(user, "m.room.member", user, json!({"membership": "join"}))
        }

        /// Builds a state event on the room's state as it stands.
        fn send(&mut self, sender: &str, kind: &str, state_key: &str, content: serde_json::Value) -> OwnedEventId {
            let sender = <&UserId>::try_from(sender).unwrap();
            let kind = TimelineEventType::from(kind);
            let raw = serde_json::value::to_raw_value(&content).unwrap();
            let auth_events = auth_types(&self.rules, &kind, sender, Some(state_key), &raw)
                .unwrap()
                .iter()
                .filter_map(|k| self.state.get(k).cloned())
                .collect();
            self.depth += 1;
            let pdu = build_pdu(
                &self.rules,
                "a.example",
                &self.key,
                sender,
                NewEvent::state(kind.clone(), state_key, content),
                Prev {
                    room_id: Some(self.id),
                    prev_events: self.last.iter().cloned().collect(),
                    auth_events,
                    depth: self.depth,
                    ref_hashes: HashMap::new(),
                },
                MilliSecondsSinceUnixEpoch::now(),
            )
            .unwrap();
            let id = pdu.event_id.clone();
            self.state
                .insert((kind.to_string().into(), state_key.to_owned()), id.clone());
            self.events.insert(id.clone(), pdu);
            self.last = Some(id.clone());
            id
        }

        /// A fork: the same room state with another event on top.
        fn fork(&self) -> Room {
            Room {
                rules: self.rules.clone(),
                key: Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k".into()).unwrap(),
                id: self.id,
                events: self.events.clone(),
                state: self.state.clone(),
                last: self.last.clone(),
                depth: self.depth,
            }
        }
    }

    fn resolve_forks(a: &Room, b: &Room) -> StateMap {
        let mut events = a.events.clone();
        events.extend(b.events.clone());
        resolve(&RoomVersionRules::V1, &[a.state.clone(), b.state.clone()], &events)
    }

    #[test]
    fn v1_event_ids_are_chosen_and_carried_in_the_json() {
        let room = Room::new();
        let create = room
            .events
            .values()
            .find(|e| e.kind == TimelineEventType::RoomCreate)
            .unwrap();
        assert!(create.event_id.as_str().ends_with(":a.example"));
        let obj: ruma::CanonicalJsonObject = serde_json::from_str(create.json.get()).unwrap();
        assert_eq!(
            crate::pdu::event_id_for(&obj, &RoomVersionRules::V1).unwrap(),
            create.event_id
        );
        // References carry the referenced event's hashes beside its ID.
        let member = room
            .events
            .values()
            .find(|e| e.kind == TimelineEventType::RoomMember)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(member.json.get()).unwrap();
        assert!(v["prev_events"][0].is_array(), "{v}");
        assert_eq!(member.prev_events, vec![create.event_id.clone()]);
    }

    #[test]
    fn unconflicted_and_one_sided_entries_are_kept() {
        let mut a = Room::new();
        let mut b = a.fork();
        let topic = a.send("@alice:a.example", "m.room.topic", "", json!({"topic": "a"}));
        let name = b.send("@alice:a.example", "m.room.name", "", json!({"name": "b"}));
        let s = resolve_forks(&a, &b);
        assert_eq!(s[&(StateEventType::RoomTopic, String::new())], topic);
        assert_eq!(s[&(StateEventType::RoomName, String::new())], name);
        assert_eq!(s.len(), a.state.len() + 1);
    }

    #[test]
    fn other_conflicts_take_the_deepest_allowed_event() {
        let mut a = Room::new();
        let mut b = a.fork();
        a.send("@alice:a.example", "m.room.topic", "", json!({"topic": "shallow"}));
        b.send("@alice:a.example", "m.room.name", "", json!({"name": "filler"}));
        let deep = b.send("@alice:a.example", "m.room.topic", "", json!({"topic": "deep"}));
        let s = resolve_forks(&a, &b);
        assert_eq!(s[&(StateEventType::RoomTopic, String::new())], deep);
    }

    #[test]
    fn a_power_change_the_other_side_revoked_is_not_applied() {
        let mut base = Room::new();
        base.join("@bob:a.example");
        base.send(
            "@alice:a.example",
            "m.room.power_levels",
            "",
            json!({"users": {"@alice:a.example": 100, "@bob:a.example": 100}}),
        );
        // Alice demotes Bob; on the other side, later, Bob raises Carol.
        let mut a = base.fork();
        let mut b = base.fork();
        let demote = a.send(
            "@alice:a.example",
            "m.room.power_levels",
            "",
            json!({"users": {"@alice:a.example": 100}}),
        );
        b.send("@bob:a.example", "m.room.topic", "", json!({"topic": "x"}));
        b.send(
            "@bob:a.example",
            "m.room.power_levels",
            "",
            json!({"users": {"@alice:a.example": 100, "@bob:a.example": 100, "@carol:a.example": 100}}),
        );
        // The oldest (Alice's) comes first; Bob's, checked with Alice's in
        // place, is refused (Bob has no power left), so Alice's stands.
        let s = resolve_forks(&a, &b);
        assert_eq!(s[&(StateEventType::RoomPowerLevels, String::new())], demote);
    }

    #[test]
    fn a_conflict_with_one_known_event_keeps_that_one() {
        let mut a = Room::new();
        let mut b = a.fork();
        let known = a.send("@alice:a.example", "m.room.topic", "", json!({ "topic": "known" }));
        let unknown = b.send(
            "@alice:a.example",
            "m.room.topic",
            "",
            json!({ "topic": "fetched nowhere" }),
        );
        let mut events = a.events.clone();
        events.remove(&unknown);
        let s = resolve(&RoomVersionRules::V1, &[a.state.clone(), b.state.clone()], &events);
        assert_eq!(s[&(StateEventType::RoomTopic, String::new())], known);
    }

    #[test]
    fn a_membership_conflict_resolves_against_the_resolved_power_levels() {
        let mut base = Room::new();
        base.join("@bob:a.example");
        let mut a = base.fork();
        let mut b = base.fork();
        let ban = a.send(
            "@alice:a.example",
            "m.room.member",
            "@bob:a.example",
            json!({"membership": "ban"}),
        );
        // Bob leaves and joins again on the other side: deeper, but a
        // join after a ban is refused.
        b.send(
            "@bob:a.example",
            "m.room.member",
            "@bob:a.example",
            json!({"membership": "leave"}),
        );
        b.join("@bob:a.example");
        let s = resolve_forks(&a, &b);
        assert_eq!(s[&(StateEventType::RoomMember, "@bob:a.example".to_owned())], ban);
    }
}
