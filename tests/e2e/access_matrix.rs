//! The access-control matrix: every client endpoint that takes a room, an
//! event or a media ID, asked by every kind of requester (no token, a bad
//! token, a deactivated or logged-out session, an outsider, an invitee, a
//! member who left, a banned member, a member) in rooms of each history
//! visibility. What a requester may not see must not appear anywhere in
//! the answer, not as content, not as an event ID (receipts, relations,
//! `timestamp_to_event`), not inside the bundled relations of an event they
//! may see, not as a search highlight, nor as the bytes of a file.

use serde_json::{Value, json};

use crate::common::{Raw, TestServer, enc, password};

const VISIBILITIES: [&str; 4] = ["world_readable", "shared", "invited", "joined"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Persona {
    NoToken,
    BadToken,
    Deactivated,
    LoggedOut,
    Outsider,
    Invited,
    Left,
    Banned,
    Member,
}

impl Persona {
    fn has_session(self) -> bool {
        !matches!(
            self,
            Persona::NoToken | Persona::BadToken | Persona::Deactivated | Persona::LoggedOut
        )
    }

    /// Whether the persona may read what was sent in a room of this
    /// history visibility after their membership settled (the spec's
    /// history visibility rules).
    fn may_see_later_events(self, visibility: &str) -> bool {
        match self {
            Persona::Member => true,
            // Visible to anyone, whatever their membership.
            Persona::Outsider | Persona::Left | Persona::Banned => visibility == "world_readable",
            // An invitee sees what was sent while invited, from `invited` up.
            Persona::Invited => matches!(visibility, "world_readable" | "invited"),
            _ => false,
        }
    }
}

/// One room and what was sent in it once every persona's membership was
/// settled: strings none but those allowed may meet.
struct Room {
    visibility: &'static str,
    id: String,
    /// An event the members who later left saw.
    early: String,
    /// The secret message itself.
    secret: String,
    media: String,
    /// Event IDs, texts and the media ID sent after the memberships settled.
    secrets: Vec<String>,
    /// The room's topic, set then too: secret but to those who may preview
    /// the room (its summary and hierarchy entry), as invitees may.
    topic: String,
}

async fn make_room(alice: &Raw, visibility: &'static str, members: &[&Raw], invitee: &Raw) -> Room {
    let id = alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": visibility } }],
        }))
        .await;
    let path = |rest: &str| format!("/_matrix/client/v3/rooms/{}/{rest}", enc(&id));
    for m in members {
        alice
            .ok("POST", &path("invite"), Some(json!({ "user_id": m.user_id })))
            .await;
        m.ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&id)),
            Some(json!({})),
        )
        .await;
    }
    let send = |txn: String, kind: &'static str, content: Value| {
        let path = path(&format!("send/{kind}/{txn}"));
        async move {
            alice.ok("PUT", &path, Some(content)).await["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let early = send(
        format!("early-{visibility}"),
        "m.room.message",
        json!({ "msgtype": "m.text", "body": "seen by all members" }),
    )
    .await;
    // members[0] leaves, members[1] is banned, members[2] stays.
    members[0].ok("POST", &path("leave"), Some(json!({}))).await;
    alice
        .ok(
            "POST",
            &path("ban"),
            Some(json!({ "user_id": members[1].user_id, "reason": "a ban" })),
        )
        .await;
    alice
        .ok("POST", &path("invite"), Some(json!({ "user_id": invitee.user_id })))
        .await;

    // What follows is secret to whoever may not see later events.
    let tag = format!("SECRET{}", visibility.replace('_', ""));
    let mut secrets = vec![];
    let secret = send(
        format!("s1-{visibility}"),
        "m.room.message",
        json!({ "msgtype": "m.text", "body": format!("{tag} message") }),
    )
    .await;
    secrets.push(secret.clone());
    let edit = send(
        format!("s2-{visibility}"),
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": format!("* {tag} edit"),
            "m.new_content": { "msgtype": "m.text", "body": format!("{tag} edit") },
            "m.relates_to": { "rel_type": "m.replace", "event_id": early },
        }),
    )
    .await;
    let thread = send(
        format!("s3-{visibility}"),
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": format!("{tag} thread"),
            "m.relates_to": { "rel_type": "m.thread", "event_id": early },
        }),
    )
    .await;
    let reaction = send(
        format!("s4-{visibility}"),
        "m.reaction",
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": early, "key": format!("{tag} react") } }),
    )
    .await;
    secrets.extend([edit, thread, reaction]);
    let topic = alice
        .ok(
            "PUT",
            &path("state/m.room.topic/"),
            Some(json!({ "topic": format!("{tag} topic") })),
        )
        .await;
    secrets.push(topic["event_id"].as_str().unwrap().to_owned());
    let media = alice.upload_text(&format!("{tag} file bytes")).await;
    let file = send(
        format!("s5-{visibility}"),
        "m.room.message",
        json!({ "msgtype": "m.file", "body": format!("{tag} file"), "url": media }),
    )
    .await;
    secrets.push(file);
    secrets.push(media.rsplit('/').next().unwrap().to_owned());
    alice
        .ok(
            "POST",
            &path(&format!("receipt/m.read/{}", enc(&secret))),
            Some(json!({})),
        )
        .await;
    for what in ["message", "edit", "thread", "react", "file"] {
        secrets.push(format!("{tag} {what}"));
    }
    Room {
        visibility,
        id,
        early,
        secret,
        media,
        secrets,
        topic: format!("{tag} topic"),
    }
}

/// Endpoints that describe a room to those who may preview it (members,
/// invitees, anyone if it is world-readable), with its current name and
/// topic, a token being optional.
fn previews(path: &str) -> bool {
    path.contains("/room_summary/") || path.ends_with("/hierarchy")
}

/// Every endpoint of the matrix, for one room.
fn endpoints(room: &Room) -> Vec<(&'static str, String, Option<Value>)> {
    let r = enc(&room.id);
    let (early, secret) = (enc(&room.early), enc(&room.secret));
    let v3 = "/_matrix/client/v3";
    let v1 = "/_matrix/client/v1";
    vec![
        ("GET", format!("{v3}/rooms/{r}/messages?dir=b&limit=50"), None),
        ("GET", format!("{v3}/rooms/{r}/messages?dir=f&limit=50"), None),
        ("GET", format!("{v3}/rooms/{r}/context/{early}?limit=20"), None),
        ("GET", format!("{v3}/rooms/{r}/context/{secret}?limit=20"), None),
        ("GET", format!("{v3}/rooms/{r}/event/{early}"), None),
        ("GET", format!("{v3}/rooms/{r}/event/{secret}"), None),
        ("GET", format!("{v3}/rooms/{r}/state"), None),
        ("GET", format!("{v3}/rooms/{r}/state/m.room.topic/"), None),
        ("GET", format!("{v3}/rooms/{r}/members"), None),
        ("GET", format!("{v3}/rooms/{r}/joined_members"), None),
        ("GET", format!("{v3}/rooms/{r}/initialSync"), None),
        ("GET", format!("{v3}/rooms/{r}/aliases"), None),
        ("GET", format!("{v1}/rooms/{r}/relations/{early}"), None),
        ("GET", format!("{v1}/rooms/{r}/relations/{early}/m.thread"), None),
        (
            "GET",
            format!("{v1}/rooms/{r}/relations/{early}/m.annotation/m.reaction"),
            None,
        ),
        ("GET", format!("{v1}/rooms/{r}/threads"), None),
        ("GET", format!("{v1}/rooms/{r}/hierarchy"), None),
        ("GET", format!("{v1}/room_summary/{r}"), None),
        (
            "GET",
            format!("{v1}/rooms/{r}/timestamp_to_event?ts=9999999999999&dir=b"),
            None,
        ),
        ("GET", format!("{v3}/events?room_id={r}&timeout=0"), None),
        ("GET", format!("{v3}/sync?timeout=0"), None),
        (
            "GET",
            format!(
                "{v3}/sync?timeout=0&filter={}",
                enc(r#"{"room":{"include_leave":true,"timeline":{"limit":50}}}"#)
            ),
            None,
        ),
        ("GET", format!("{v3}/notifications"), None),
        (
            "POST",
            format!("{v3}/search"),
            Some(json!({ "search_categories": { "room_events": {
                "search_term": "SECRET", "filter": { "rooms": [room.id] },
                "event_context": { "before_limit": 5, "after_limit": 5 },
            } } })),
        ),
        (
            "POST",
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync".to_owned(),
            Some(json!({
                "lists": { "all": { "ranges": [[0, 20]], "timeline_limit": 20, "required_state": [["*", "*"]] } },
                "room_subscriptions": { room.id.clone(): { "timeline_limit": 20, "required_state": [["*", "*"]] } },
                "extensions": { "receipts": { "enabled": true }, "typing": { "enabled": true } },
            })),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_requester_meets_what_they_may_not_see() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let outsider = Raw::register(&server, "olga").await;
    let invited = Raw::register(&server, "ivan").await;
    let left = Raw::register(&server, "leo").await;
    let banned = Raw::register(&server, "bert").await;
    let member = Raw::register(&server, "mia").await;
    let deactivated = Raw::register(&server, "dora").await;
    let logged_out = Raw::register(&server, "lou").await;

    let mut rooms = vec![];
    for visibility in VISIBILITIES {
        rooms.push(
            make_room(
                &alice,
                visibility,
                &[&left, &banned, &member, &deactivated, &logged_out],
                &invited,
            )
            .await,
        );
    }
    // Sessions that end after their owners were members.
    let path = "/_matrix/client/v3/account/deactivate";
    let first = deactivated.call("POST", path, Some(json!({}))).await;
    deactivated
        .ok(
            "POST",
            path,
            Some(json!({ "auth": {
                "type": "m.login.password", "session": first.body["session"],
                "identifier": { "type": "m.id.user", "user": "dora" }, "password": password("dora"),
            } })),
        )
        .await;
    logged_out
        .ok("POST", "/_matrix/client/v3/logout", Some(json!({})))
        .await;
    let with_token = |token: &str| Raw {
        token: token.to_owned(),
        ..alice.clone()
    };
    let personas: Vec<(Persona, Raw)> = vec![
        (Persona::NoToken, with_token("")),
        (Persona::BadToken, with_token("syt_bm90IGEgdG9rZW4_bogus_0000")),
        (Persona::Deactivated, deactivated.clone()),
        (Persona::LoggedOut, logged_out.clone()),
        (Persona::Outsider, outsider),
        (Persona::Invited, invited),
        (Persona::Left, left),
        (Persona::Banned, banned),
        (Persona::Member, member),
    ];

    let mut asked = 0;
    let mut failures = vec![];
    for room in &rooms {
        for (persona, who) in &personas {
            let may_see = persona.may_see_later_events(room.visibility);
            for (method, path, body) in endpoints(room) {
                let r = who.call(method, &path, body).await;
                asked += 1;
                let text = r.body.to_string();
                if r.status >= 500 {
                    failures.push(format!("{persona:?} {method} {path}: {} {text}", r.status));
                }
                let preview = previews(&path);
                let previewer = match persona {
                    Persona::NoToken => room.visibility == "world_readable",
                    Persona::Invited | Persona::Member => true,
                    p => p.has_session() && room.visibility == "world_readable",
                };
                if !(persona.has_session() || preview && *persona == Persona::NoToken) {
                    if r.status != 401 || !matches!(r.errcode(), "M_MISSING_TOKEN" | "M_UNKNOWN_TOKEN") {
                        failures.push(format!("{persona:?} {method} {path}: {} {text}", r.status));
                    }
                    continue;
                }
                if may_see {
                    continue;
                }
                let topic_allowed = preview && previewer;
                for secret in room.secrets.iter().chain((!topic_allowed).then_some(&room.topic)) {
                    if text.contains(secret.as_str()) {
                        failures.push(format!(
                            "{persona:?} in a {} room, {method} {path}: {secret} in {text}",
                            room.visibility
                        ));
                    }
                }
            }
            // The file, by its own endpoints.
            let media = room.media.trim_start_matches("mxc://");
            for url in [
                format!("{}/_matrix/client/v1/media/download/{media}", server.url),
                format!("{}/_matrix/client/v1/media/download/{media}/name.txt", server.url),
                format!(
                    "{}/_matrix/client/v1/media/thumbnail/{media}?width=32&height=32",
                    server.url
                ),
            ] {
                let mut req = who.http.get(&url);
                if !who.token.is_empty() {
                    req = req.bearer_auth(&who.token);
                }
                let res = req.send().await.unwrap();
                asked += 1;
                let status = res.status().as_u16();
                let bytes = res.text().await.unwrap_or_default();
                let shown = bytes.contains("file bytes");
                if status >= 500 || (shown && !(persona.has_session() && may_see)) {
                    failures.push(format!(
                        "{persona:?} in a {} room, {url}: {status} {bytes}",
                        room.visibility
                    ));
                }
            }
        }
    }
    eprintln!("{asked} requests, {} failures", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {asked}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
