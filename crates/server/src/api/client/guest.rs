//! What a guest account may do: the spec's list for guests (reading and
//! writing in rooms that admit guests, their own devices, keys and
//! profile, the directory), and nothing else.

/// Requests a guest may make, by method and path after the version
/// (`*` stands for one path parameter).
const ALLOWED: &[(&str, &str)] = &[
    ("GET", "account/whoami"),
    ("GET", "capabilities"),
    ("GET", "pushrules"),
    ("GET", "devices"),
    ("GET", "devices/*"),
    ("PUT", "devices/*"),
    ("GET", "sync"),
    ("POST", "org.matrix.simplified_msc3575/sync"),
    ("GET", "events"),
    ("POST", "user/*/filter"),
    ("GET", "user/*/filter/*"),
    ("GET", "rooms/*/initialSync"),
    ("GET", "rooms/*/event/*"),
    ("GET", "rooms/*/context/*"),
    ("GET", "rooms/*/messages"),
    ("GET", "rooms/*/members"),
    ("GET", "rooms/*/joined_members"),
    ("GET", "rooms/*/state"),
    ("GET", "rooms/*/state/*"),
    ("GET", "rooms/*/state/*/*"),
    ("GET", "rooms/*/relations/*"),
    ("GET", "rooms/*/relations/*/*"),
    ("GET", "rooms/*/relations/*/*/*"),
    ("GET", "rooms/*/hierarchy"),
    ("PUT", "rooms/*/send/*/*"),
    ("PUT", "rooms/*/typing/*"),
    ("POST", "rooms/*/receipt/*/*"),
    ("POST", "rooms/*/read_markers"),
    ("POST", "rooms/*/join"),
    ("POST", "rooms/*/leave"),
    ("POST", "join/*"),
    ("PUT", "profile/*/displayname"),
    ("GET", "presence/*/status"),
    ("PUT", "presence/*/status"),
    ("PUT", "sendToDevice/*/*"),
    ("GET", "voip/turnServer"),
    ("GET", "directory/room/*"),
    ("GET", "publicRooms"),
    ("POST", "publicRooms"),
    ("POST", "keys/upload"),
    ("POST", "keys/query"),
    ("POST", "keys/claim"),
    ("GET", "keys/changes"),
    ("GET", "media/config"),
    ("GET", "media/download/*/*"),
    ("GET", "media/download/*/*/*"),
    ("GET", "media/thumbnail/*/*"),
];

/// Whether a guest may make a request to this route (the router's
/// template, `/_matrix/client/v3/rooms/{room_id}/messages`).
pub fn may(method: &http::Method, route: &str) -> bool {
    let Some(rest) = route.strip_prefix("/_matrix/client/") else {
        return false;
    };
    // Past the version segment (r0, v3, v1, unstable).
    let Some((_, path)) = rest.split_once('/') else {
        return false;
    };
    let segments: Vec<&str> = path
        .trim_end_matches('/')
        .split('/')
        .map(|s| if s.starts_with('{') { "*" } else { s })
        .collect();
    ALLOWED
        .iter()
        .any(|(m, pattern)| *m == method.as_str() && pattern.split('/').eq(segments.iter().copied()))
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::may;

    #[test]
    fn guests_read_and_talk_but_do_not_create() {
        assert!(may(&Method::GET, "/_matrix/client/v3/rooms/{room_id}/messages"));
        assert!(may(
            &Method::PUT,
            "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"
        ));
        assert!(may(
            &Method::GET,
            "/_matrix/client/r0/rooms/{room_id}/state/{event_type}/"
        ));
        assert!(may(&Method::GET, "/_matrix/client/v3/sync"));
        assert!(!may(&Method::POST, "/_matrix/client/v3/createRoom"));
        assert!(!may(
            &Method::PUT,
            "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}"
        ));
        assert!(!may(&Method::POST, "/_matrix/client/v3/rooms/{room_id}/invite"));
        assert!(!may(&Method::GET, "/_matrix/federation/v1/version"));
    }
}
