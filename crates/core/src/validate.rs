//! The content of the state events a server interprets, checked when one of
//! this server's users sends them. A `join_rule` of `5` or a power level of
//! `"a"` passes the auth rules of old room versions and then breaks every
//! join or every permission check of the room, so such content is refused
//! at the door, as the reference server does for power levels, membership,
//! names, topics and tombstones, and as the spec's event schemas say for the
//! rest.
//!
//! Events received over federation are not held to these rules: refusing
//! there what another server accepted would split the room's state between
//! servers. Their content is read defensively instead (an unknown
//! `history_visibility` counts as `shared`, a broken ACL list as empty).

use ruma::{RoomAliasId, RoomId, UserId, events::TimelineEventType, room_version_rules::RoomVersionRules};
use serde_json::{Map, Value};

/// Why a local event's content is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// Valid JSON of the wrong shape (`M_BAD_JSON`).
    #[error("{0}")]
    BadJson(String),
    /// A value that is not an identifier of its kind (`M_INVALID_PARAM`).
    #[error("{0}")]
    InvalidParam(String),
}

type Checked = Result<(), Invalid>;

fn bad(msg: impl Into<String>) -> Invalid {
    Invalid::BadJson(msg.into())
}

/// Checks the content of a state event this server's user sends to `room`
/// (none yet for the create event of a new room).
pub fn local_state(
    rules: &RoomVersionRules,
    kind: &TimelineEventType,
    content: &Value,
    room: Option<&RoomId>,
) -> Checked {
    let Some(c) = content.as_object() else {
        return Err(bad("Content must be a JSON object"));
    };
    match kind {
        TimelineEventType::RoomCreate => create(c),
        TimelineEventType::RoomJoinRules => join_rules(rules, c),
        TimelineEventType::RoomHistoryVisibility => one_of(
            c,
            "history_visibility",
            &["invited", "joined", "shared", "world_readable"],
        ),
        TimelineEventType::RoomGuestAccess => one_of(c, "guest_access", &["can_join", "forbidden"]),
        TimelineEventType::RoomMember => member(c),
        TimelineEventType::RoomPowerLevels => power_levels(c),
        TimelineEventType::RoomServerAcl => server_acl(c),
        TimelineEventType::RoomEncryption => encryption(c),
        TimelineEventType::RoomName => required_string(c, "name"),
        TimelineEventType::RoomTopic => required_string(c, "topic"),
        TimelineEventType::RoomTombstone => tombstone(c, room),
        TimelineEventType::RoomCanonicalAlias => canonical_alias(c),
        // The pre-v6 `m.room.aliases`, which ruma no longer names.
        k if k.to_string() == "m.room.aliases" => aliases(c),
        _ => Ok(()),
    }
}

fn required_string(c: &Map<String, Value>, key: &str) -> Checked {
    match c.get(key) {
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err(bad(format!("'{key}' must be a string"))),
        None => Err(bad(format!("'{key}' is required"))),
    }
}

fn optional(c: &Map<String, Value>, key: &str, ok: fn(&Value) -> bool, what: &str) -> Checked {
    match c.get(key) {
        Some(v) if !ok(v) => Err(bad(format!("'{key}' must be {what}"))),
        _ => Ok(()),
    }
}

fn one_of(c: &Map<String, Value>, key: &str, allowed: &[&str]) -> Checked {
    match c.get(key).and_then(Value::as_str) {
        Some(v) if allowed.contains(&v) => Ok(()),
        _ => Err(bad(format!("'{key}' must be one of {}", allowed.join(", ")))),
    }
}

fn create(c: &Map<String, Value>) -> Checked {
    optional(c, "type", Value::is_string, "a string")?;
    optional(c, "m.federate", Value::is_boolean, "a boolean")?;
    if let Some(p) = c.get("predecessor") {
        let ok = p
            .get("room_id")
            .and_then(Value::as_str)
            .is_some_and(|r| RoomId::parse(r).is_ok());
        if !ok {
            return Err(bad("'predecessor' must hold the 'room_id' of the old room"));
        }
    }
    if let Some(extra) = c.get("additional_creators") {
        let ok = extra
            .as_array()
            .is_some_and(|a| a.iter().all(|u| u.as_str().is_some_and(|u| UserId::parse(u).is_ok())));
        if !ok {
            return Err(bad("'additional_creators' must be a list of user IDs"));
        }
    }
    Ok(())
}

fn join_rules(rules: &RoomVersionRules, c: &Map<String, Value>) -> Checked {
    let a = &rules.authorization;
    let rule = c.get("join_rule").and_then(Value::as_str).unwrap_or_default();
    let known = match rule {
        "public" | "invite" | "private" => true,
        "knock" => a.knocking,
        "restricted" => a.restricted_join_rule,
        "knock_restricted" => a.knock_restricted_join_rule,
        _ => false,
    };
    if !known {
        return Err(bad(format!(
            "'join_rule' {} is not a join rule of this room version",
            c.get("join_rule")
                .map(Value::to_string)
                .unwrap_or_else(|| "(missing)".into())
        )));
    }
    if let Some(allow) = c.get("allow") {
        let Some(allow) = allow.as_array() else {
            return Err(bad("'allow' must be a list"));
        };
        for entry in allow {
            let ok = match entry.get("type").and_then(Value::as_str) {
                Some("m.room_membership") => entry
                    .get("room_id")
                    .and_then(Value::as_str)
                    .is_some_and(|r| RoomId::parse(r).is_ok()),
                Some(_) => true,
                None => false,
            };
            if !ok {
                return Err(bad(
                    "Each 'allow' entry needs a 'type' (and a 'room_id' for m.room_membership)",
                ));
            }
        }
    }
    Ok(())
}

fn member(c: &Map<String, Value>) -> Checked {
    one_of(c, "membership", &["invite", "join", "knock", "leave", "ban"])?;
    let string_or_null = |v: &Value| v.is_string() || v.is_null();
    optional(c, "displayname", string_or_null, "a string or null")?;
    optional(c, "avatar_url", string_or_null, "a string or null")?;
    optional(c, "is_direct", Value::is_boolean, "a boolean")?;
    optional(c, "reason", Value::is_string, "a string")
}

/// Power levels are integers in every room version (older versions' auth
/// rules read `"50"` as 50; the reference server refuses it from clients).
fn power_levels(c: &Map<String, Value>) -> Checked {
    for key in [
        "ban",
        "events_default",
        "invite",
        "kick",
        "redact",
        "state_default",
        "users_default",
    ] {
        optional(c, key, is_level, "an integer")?;
    }
    for key in ["events", "notifications", "users"] {
        if let Some(map) = c.get(key) {
            let ok = map.as_object().is_some_and(|m| m.values().all(is_level));
            if !ok {
                return Err(bad(format!("'{key}' must map names to integers")));
            }
        }
    }
    if let Some(Value::Object(users)) = c.get("users")
        && let Some(u) = users.keys().find(|u| UserId::parse(u.as_str()).is_err())
    {
        return Err(bad(format!("'users' holds {u:?}, which is not a user ID")));
    }
    Ok(())
}

fn is_level(v: &Value) -> bool {
    v.as_i64().is_some()
}

fn server_acl(c: &Map<String, Value>) -> Checked {
    let strings = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    optional(c, "allow", strings, "a list of strings")?;
    optional(c, "deny", strings, "a list of strings")?;
    optional(c, "allow_ip_literals", Value::is_boolean, "a boolean")
}

fn encryption(c: &Map<String, Value>) -> Checked {
    // Any algorithm name, so that a new one needs no server change.
    match c.get("algorithm").and_then(Value::as_str) {
        Some(a) if !a.is_empty() => {}
        _ => return Err(bad("'algorithm' is required")),
    }
    optional(c, "rotation_period_ms", is_level, "an integer")?;
    optional(c, "rotation_period_msgs", is_level, "an integer")
}

fn tombstone(c: &Map<String, Value>, room: Option<&RoomId>) -> Checked {
    let replacement = c.get("replacement_room").and_then(Value::as_str);
    match replacement.map(RoomId::parse) {
        Some(Ok(r)) if Some(&*r) == room => Err(bad("A room cannot be replaced by itself")),
        Some(Ok(_)) => optional(c, "body", Value::is_string, "a string"),
        _ => Err(bad("'replacement_room' must be a room ID")),
    }
}

/// The shape only: that each alias points to the room is the server's check.
fn canonical_alias(c: &Map<String, Value>) -> Checked {
    let alias_ok = |v: &Value| v.as_str().is_some_and(|a| RoomAliasId::parse(a).is_ok());
    match c.get("alias") {
        None | Some(Value::Null) => {}
        Some(v) if alias_ok(v) => {}
        Some(_) => return Err(Invalid::InvalidParam("'alias' must be a room alias".into())),
    }
    match c.get("alt_aliases") {
        None => Ok(()),
        Some(Value::Array(a)) if a.iter().all(alias_ok) => Ok(()),
        Some(_) => Err(Invalid::InvalidParam(
            "'alt_aliases' must be a list of room aliases".into(),
        )),
    }
}

fn aliases(c: &Map<String, Value>) -> Checked {
    let ok = c.get("aliases").and_then(Value::as_array).is_some_and(|a| {
        a.iter().all(|x| {
            x.as_str()
                .is_some_and(|s| s.len() <= crate::limits::MAX_IDENTIFIER_BYTES)
        })
    });
    if ok {
        Ok(())
    } else {
        Err(Invalid::InvalidParam(
            "'aliases' must be a list of aliases of at most 255 bytes".into(),
        ))
    }
}

/// The aliases a canonical alias event names, for the server's check that
/// each points to the room.
pub fn canonical_aliases(content: &Value) -> Vec<&str> {
    let mut all: Vec<&str> = content.get("alias").and_then(Value::as_str).into_iter().collect();
    if let Some(alt) = content.get("alt_aliases").and_then(Value::as_array) {
        all.extend(alt.iter().filter_map(Value::as_str));
    }
    all
}

#[cfg(test)]
mod tests {
    use ruma::RoomVersionId;
    use serde_json::json;

    use super::*;

    fn check(version: &str, kind: &str, content: Value) -> Checked {
        let rules = RoomVersionId::try_from(version).unwrap().rules().unwrap();
        let room = RoomId::parse("!room:example.org").unwrap();
        local_state(&rules, &kind.into(), &content, Some(&room))
    }

    fn refused(version: &str, kind: &str, content: Value) -> bool {
        matches!(check(version, kind, content), Err(Invalid::BadJson(_)))
    }

    #[test]
    fn join_rules_are_known_values_of_the_room_version() {
        assert!(refused("11", "m.room.join_rules", json!({ "join_rule": 5 })));
        assert!(refused("11", "m.room.join_rules", json!({})));
        assert!(refused("11", "m.room.join_rules", json!({ "join_rule": "everyone" })));
        assert!(refused("6", "m.room.join_rules", json!({ "join_rule": "knock" })));
        assert!(check("7", "m.room.join_rules", json!({ "join_rule": "knock" })).is_ok());
        assert!(refused(
            "9",
            "m.room.join_rules",
            json!({ "join_rule": "knock_restricted" })
        ));
        assert!(
            check(
                "10",
                "m.room.join_rules",
                json!({ "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": "!a:b.c" }] })
            )
            .is_ok()
        );
        assert!(refused(
            "10",
            "m.room.join_rules",
            json!({ "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": 1 }] })
        ));
        assert!(refused(
            "10",
            "m.room.join_rules",
            json!({ "join_rule": "public", "allow": {} })
        ));
    }

    #[test]
    fn visibility_guest_access_and_encryption_take_their_schemas_values() {
        assert!(refused(
            "11",
            "m.room.history_visibility",
            json!({ "history_visibility": true })
        ));
        assert!(
            check(
                "11",
                "m.room.history_visibility",
                json!({ "history_visibility": "joined" })
            )
            .is_ok()
        );
        assert!(refused("11", "m.room.guest_access", json!({ "guest_access": "maybe" })));
        assert!(refused("11", "m.room.encryption", json!({ "algorithm": 1 })));
        assert!(refused(
            "11",
            "m.room.encryption",
            json!({ "algorithm": "m.megolm.v1.aes-sha2", "rotation_period_ms": "1" })
        ));
        assert!(check("11", "m.room.encryption", json!({ "algorithm": "org.example.future" })).is_ok());
    }

    #[test]
    fn power_levels_are_integers_even_in_old_versions() {
        assert!(refused("1", "m.room.power_levels", json!({ "ban": "50" })));
        assert!(refused(
            "11",
            "m.room.power_levels",
            json!({ "users": { "@x:localhost": "a" } })
        ));
        assert!(refused("11", "m.room.power_levels", json!({ "users": { "x": 50 } })));
        assert!(refused("11", "m.room.power_levels", json!({ "events": [] })));
        assert!(refused("11", "m.room.power_levels", json!({ "kick": 1.5 })));
        assert!(
            check(
                "11",
                "m.room.power_levels",
                json!({ "users": { "@x:localhost": 100 }, "events": { "m.room.name": 50 }, "ban": -1 })
            )
            .is_ok()
        );
    }

    #[test]
    fn membership_acl_create_and_tombstone() {
        assert!(refused("11", "m.room.member", json!({ "membership": "joined" })));
        assert!(refused(
            "11",
            "m.room.member",
            json!({ "membership": "join", "displayname": 3 })
        ));
        assert!(
            check(
                "11",
                "m.room.member",
                json!({ "membership": "join", "displayname": null })
            )
            .is_ok()
        );
        assert!(refused("11", "m.room.server_acl", json!({ "allow": "*" })));
        assert!(refused(
            "11",
            "m.room.server_acl",
            json!({ "allow": ["*"], "allow_ip_literals": "no" })
        ));
        assert!(check("11", "m.room.server_acl", json!({ "allow": ["*"], "deny": [] })).is_ok());
        assert!(refused("11", "m.room.create", json!({ "type": 5 })));
        assert!(refused("11", "m.room.create", json!({ "m.federate": "yes" })));
        assert!(refused(
            "12",
            "m.room.create",
            json!({ "additional_creators": ["nobody"] })
        ));
        assert!(refused(
            "11",
            "m.room.tombstone",
            json!({ "replacement_room": "!room:example.org" })
        ));
        assert!(refused("11", "m.room.tombstone", json!({ "replacement_room": "room" })));
        assert!(
            check(
                "11",
                "m.room.tombstone",
                json!({ "body": "moved", "replacement_room": "!new:example.org" })
            )
            .is_ok()
        );
    }

    #[test]
    fn names_topics_and_aliases() {
        assert!(refused("11", "m.room.name", json!({})));
        assert!(refused("11", "m.room.topic", json!({ "topic": ["a"] })));
        assert!(check("11", "m.room.name", json!({ "name": "" })).is_ok());
        assert_eq!(
            check("11", "m.room.canonical_alias", json!({ "alias": 5 })),
            Err(Invalid::InvalidParam("'alias' must be a room alias".into()))
        );
        assert!(check("11", "m.room.canonical_alias", json!({ "alt_aliases": "#a:b" })).is_err());
        assert!(check("11", "m.room.canonical_alias", json!({})).is_ok());
        assert!(check("11", "m.room.aliases", json!({ "aliases": ["#".repeat(300)] })).is_err());
        assert!(check("11", "org.example.anything", json!({ "x": 5 })).is_ok());
        assert!(refused("11", "org.example.anything", json!([1])));
    }
}
