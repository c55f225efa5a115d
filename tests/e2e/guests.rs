//! Guest accounts (off unless configured) and room previews: the event
//! stream of a world-readable room for whoever is not in it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Raw, RawBody, TestServer, enc, request};

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

async fn register_guest(server: &TestServer) -> (u16, Value) {
    let r = request(
        &reqwest::Client::new(),
        "POST",
        &format!("{}/_matrix/client/v3/register?kind=guest", server.url),
        None,
        Some(RawBody::Json(json!({}))),
    )
    .await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_only_where_the_server_and_the_room_allow_them() {
    // Off by default.
    let closed = TestServer::start().await;
    let (status, body) = register_guest(&closed).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_GUEST_ACCESS_FORBIDDEN"))
    );

    let server = TestServer::start_with(&[("MISSIVE_GUEST_ACCESS", "on")]).await;
    let alice = Raw::register(&server, "alice").await;
    let (status, body) = register_guest(&server).await;
    assert_eq!(status, 200, "{body}");
    let guest = Raw {
        base: server.url.clone(),
        http: reqwest::Client::new(),
        token: body["access_token"].as_str().unwrap().to_owned(),
        user_id: body["user_id"].as_str().unwrap().to_owned(),
    };
    let localpart = guest.user_id.trim_start_matches('@').split(':').next().unwrap();
    assert!(localpart.bytes().all(|b| b.is_ascii_digit()), "{}", guest.user_id);
    let me = guest.ok("GET", "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(me["is_guest"], true);
    // Numbered user IDs are the guests' only.
    let r = request(
        &guest.http,
        "POST",
        &format!("{}/_matrix/client/v3/register", server.url),
        None,
        Some(RawBody::Json(
            json!({ "username": "12345", "password": "a long password" }),
        )),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_USERNAME"));

    // A room that admits guests, and one that does not.
    let open = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.guest_access", "content": { "guest_access": "can_join" } }],
        }))
        .await;
    let closed_room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let r = guest
        .call("POST", &room_path(&closed_room, "join"), Some(json!({})))
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"), "{}", r.body);
    guest.ok("POST", &room_path(&open, "join"), Some(json!({}))).await;
    let member = alice
        .ok(
            "GET",
            &room_path(&open, &format!("state/m.room.member/{}", enc(&guest.user_id))),
            None,
        )
        .await;
    assert_eq!(member["kind"], "guest");
    assert_eq!(member["membership"], "join");
    // A guest reads and writes there, and syncs.
    assert_eq!(guest.send_text(&open, "g1", "hello from a guest").await.status, 200);
    let s = guest.sync(None, 0).await;
    assert!(s["rooms"]["join"][&open].is_object());

    // What is not for guests: 403 M_GUEST_ACCESS_FORBIDDEN.
    for (method, path, body) in [
        ("POST", "/_matrix/client/v3/createRoom".to_owned(), json!({})),
        ("POST", room_path(&open, "invite"), json!({ "user_id": alice.user_id })),
        ("PUT", room_path(&open, "state/m.room.topic/"), json!({ "topic": "x" })),
        ("POST", "/_matrix/client/v3/pushers/set".to_owned(), json!({})),
    ] {
        let r = guest.call(method, &path, Some(body)).await;
        assert_eq!(
            (r.status, r.errcode()),
            (403, "M_GUEST_ACCESS_FORBIDDEN"),
            "{method} {path}"
        );
    }
    let r = guest.call("GET", "/_matrix/client/v3/events?timeout=0", None).await;
    assert_eq!(r.status, 400, "a guest's stream names its room");
    let r = guest
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&guest.user_id)),
            Some(json!({ "avatar_url": "mxc://localhost/x" })),
        )
        .await;
    assert_eq!(r.errcode(), "M_GUEST_ACCESS_FORBIDDEN", "a guest names itself, no more");
    guest.ok("GET", "/_matrix/client/v3/pushrules/", None).await;

    // The room stops admitting guests: this server's guests leave it.
    alice
        .ok(
            "PUT",
            &room_path(&open, "state/m.room.guest_access/"),
            Some(json!({ "guest_access": "forbidden" })),
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let path = room_path(&open, &format!("state/m.room.member/{}", enc(&guest.user_id)));
    while alice.ok("GET", &path, None).await["membership"] != "leave" {
        assert!(std::time::Instant::now() < deadline, "the guest is still in the room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(guest.send_text(&open, "g2", "still here?").await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_readable_room_can_be_previewed_without_joining() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let visitor = Raw::register(&server, "visitor").await;
    let open = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "world_readable" } }],
        }))
        .await;
    let shut = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice.send_text(&open, "o1", "before the visitor looked").await;

    // The room's snapshot, then its stream from there.
    let snapshot = visitor.ok("GET", &room_path(&open, "initialSync"), None).await;
    let bodies: Vec<&str> = snapshot["messages"]["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["before the visitor looked"]);
    let from = snapshot["messages"]["end"].as_str().unwrap().to_owned();
    let path = format!(
        "/_matrix/client/v3/events?room_id={}&from={}&timeout=10000",
        enc(&open),
        enc(&from)
    );
    let waiting = {
        let visitor = visitor.clone();
        tokio::spawn(async move { visitor.ok("GET", &path, None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send_text(&open, "o2", "while the visitor watched").await;
    let got = waiting.await.unwrap();
    let bodies: Vec<&str> = got["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["while the visitor watched"], "{got}");
    assert!(got["end"].is_string() && got["start"].is_string());

    // Not a room that is not world-readable.
    let r = visitor
        .call(
            "GET",
            &format!("/_matrix/client/v3/events?room_id={}&timeout=0", enc(&shut)),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    // Without a room: the stream of the user's own rooms.
    let since = alice.ok("GET", "/_matrix/client/v3/events?timeout=0", None).await["end"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.send_text(&shut, "s1", "in my own room").await;
    let got = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/events?from={}&timeout=5000", enc(&since)),
            None,
        )
        .await;
    assert_eq!(got["chunk"][0]["content"]["body"], "in my own room", "{got}");
}
