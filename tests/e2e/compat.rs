//! What clients and suites written elsewhere rely on, at the wire: bodies
//! they leave out, the response shapes the reference server sends, repeated
//! requests, the errors of refused actions, the endpoints every client
//! calls, and connections kept alive across refusals.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Raw, RawBody, TestServer, enc, password, request};

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

/// A request with no body at all (not even `{}`), as matrix-nio sends some.
async fn bodiless(user: &Raw, method: &str, path: &str) -> (u16, Value) {
    let res = user
        .http
        .request(method.parse().unwrap(), format!("{}{path}", user.base))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn state_event(user: &Raw, room: &str, kind: &str, key: &str) -> Value {
    let path = room_path(room, &format!("state/{kind}/{}?format=event", enc(key)));
    user.ok("GET", &path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_bodies_join_content_and_typing_defaults() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let carol = Raw::register(&server, "carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;

    // No body on the joins and the leave: read as `{}`.
    let (status, body) = bodiless(&bob, "POST", &format!("/_matrix/client/v3/join/{}", enc(&room))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room);
    let (status, body) = bodiless(&bob, "POST", &room_path(&room, "leave")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bodiless(&bob, "POST", &room_path(&room, "join")).await;
    assert_eq!(status, 200, "{body}");
    // A field the endpoint requires is still required.
    let (status, body) = bodiless(&bob, "POST", &room_path(&room, "invite")).await;
    assert_eq!(status, 400, "{body}");

    // The join's other keys stay in the member event; the server's own
    // (membership, display name unless given) are set by the server.
    carol
        .ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(json!({ "foo": "bar", "membership": "ban", "displayname": "Caroline here" })),
        )
        .await;
    let member = state_event(&alice, &room, "m.room.member", &carol.user_id).await;
    assert_eq!(member["content"]["foo"], "bar");
    assert_eq!(member["content"]["membership"], "join");
    assert_eq!(member["content"]["displayname"], "Caroline here");

    // Typing: `true` without a timeout gets the default; `false` alone stops.
    let typing = format!("typing/{}", enc(&bob.user_id));
    bob.ok("PUT", &room_path(&room, &typing), Some(json!({ "typing": true })))
        .await;
    let s = alice.sync(None, 0).await;
    let ephemeral = &s["rooms"]["join"][&room]["ephemeral"]["events"];
    let typers = ephemeral
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.typing")
        .map(|e| e["content"]["user_ids"].clone());
    assert_eq!(typers, Some(json!([bob.user_id])));
    bob.ok("PUT", &room_path(&room, &typing), Some(json!({ "typing": false })))
        .await;
    let r = bob
        .call("PUT", &room_path(&room, &typing), Some(json!({ "typing": "yes" })))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_shapes_clients_read_without_checking() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;

    // A display name from the start: the localpart.
    let profile = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)),
            None,
        )
        .await;
    assert_eq!(profile["displayname"], "alice");

    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "10" }))
        .await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some(json!({})),
    )
    .await;
    // Before v11 the create event names its creator.
    let create = state_event(&alice, &room, "m.room.create", "").await;
    assert_eq!(create["content"]["creator"], alice.user_id);
    let v12 = alice.create_room(json!({})).await;
    let create = state_event(&alice, &v12, "m.room.create", "").await;
    assert!(create["content"].get("creator").is_none());

    // /sync: every section present, empty or not, and `limited` false.
    let first = alice.sync(None, 0).await;
    for key in ["account_data", "presence", "to_device"] {
        assert!(first[key]["events"].is_array(), "{key}: {first}");
    }
    assert!(first["device_one_time_keys_count"].is_object());
    let since = first["next_batch"].as_str().unwrap().to_owned();
    bob.send_text(&room, "t1", "hello").await;
    let next = alice.sync(Some(&since), 5000).await;
    let joined = &next["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], false, "{joined}");
    assert!(joined["timeline"]["prev_batch"].is_string());
    for key in ["state", "ephemeral", "account_data"] {
        assert!(joined[key]["events"].is_array(), "{key}: {joined}");
    }
    assert_eq!(joined["unread_notifications"]["highlight_count"], 0);

    // joined_members: both keys, null when unset.
    let members = alice.ok("GET", &room_path(&room, "joined_members"), None).await;
    assert_eq!(
        members["joined"][&bob.user_id],
        json!({ "display_name": "bob", "avatar_url": null })
    );

    // /messages: `end` whenever the page held events; none past the start.
    let page = alice
        .ok("GET", &room_path(&room, "messages?dir=b&limit=100"), None)
        .await;
    let end = page["end"]
        .as_str()
        .expect("an end after a page with events")
        .to_owned();
    assert!(page["chunk"].as_array().unwrap().len() < 100);
    let past = alice
        .ok(
            "GET",
            &room_path(&room, &format!("messages?dir=b&limit=100&from={end}")),
            None,
        )
        .await;
    assert_eq!(past["chunk"], json!([]));
    assert!(past.get("end").is_none(), "{past}");

    // Every standard capability, defaults included.
    let caps = alice.ok("GET", "/_matrix/client/v3/capabilities", None).await["capabilities"].clone();
    assert_eq!(caps["m.change_password"]["enabled"], true);
    assert_eq!(caps["m.set_displayname"]["enabled"], true);
    assert_eq!(caps["m.3pid_changes"]["enabled"], false);
    assert_eq!(caps["m.get_login_token"]["enabled"], true);
    assert_eq!(caps["m.room_versions"]["default"], "12");
    for v in 1..=12 {
        assert_eq!(caps["m.room_versions"]["available"][v.to_string()], "stable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_state_and_joins_change_nothing() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let room = alice.create_room(json!({})).await;
    let path = room_path(&room, "state/a.test.state/");
    let first = alice.ok("PUT", &path, Some(json!({ "a_key": "a_value" }))).await["event_id"].clone();
    let again = alice.ok("PUT", &path, Some(json!({ "a_key": "a_value" }))).await["event_id"].clone();
    assert_eq!(first, again, "the same state twice is one event");
    let other = alice.ok("PUT", &path, Some(json!({ "a_key": "b" }))).await["event_id"].clone();
    assert_ne!(other, first);

    let member = state_event(&alice, &room, "m.room.member", &alice.user_id).await["event_id"].clone();
    alice
        .ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(json!({})),
        )
        .await;
    let after = state_event(&alice, &room, "m.room.member", &alice.user_id).await["event_id"].clone();
    assert_eq!(member, after, "joining a room one is in is no new event");
    let msgs = alice
        .ok("GET", &room_path(&room, "messages?dir=b&limit=50"), None)
        .await;
    let states = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "a.test.state")
        .count();
    assert_eq!(states, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_actions_get_the_spec_errors() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let other_room = alice.create_room(json!({})).await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some(json!({})),
    )
    .await;
    let msg = alice.send_text(&room, "m1", "mine").await.body["event_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob, without power, cannot redact Alice's message: 403, and it stays.
    let r = bob
        .call(
            "PUT",
            &room_path(&room, &format!("redact/{}/r1", enc(&msg))),
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"), "{}", r.body);
    let ev = alice
        .ok("GET", &room_path(&room, &format!("event/{}", enc(&msg))), None)
        .await;
    assert_eq!(ev["content"]["body"], "mine");
    // An event of another room: 400.
    let r = alice
        .call(
            "PUT",
            &room_path(&other_room, &format!("redact/{}/r2", enc(&msg))),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Alice redacts her own: applied.
    alice
        .ok(
            "PUT",
            &room_path(&room, &format!("redact/{}/r3", enc(&msg))),
            Some(json!({})),
        )
        .await;
    let ev = alice
        .ok("GET", &room_path(&room, &format!("event/{}", enc(&msg))), None)
        .await;
    assert_eq!(ev["content"], json!({}));

    // A body that is not JSON: M_NOT_JSON.
    let r = request(
        &alice.http,
        "PUT",
        &format!("{}{}", alice.base, room_path(&room, "send/m.room.message/nj")),
        Some(&alice.token),
        Some(RawBody::Bytes(b"{not json".to_vec())),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_NOT_JSON"));

    // An invite to a room nobody here is in any more is declined here.
    let empty = alice.create_room(json!({})).await;
    alice
        .ok(
            "POST",
            &room_path(&empty, "invite"),
            Some(json!({ "user_id": bob.user_id })),
        )
        .await;
    alice.ok("POST", &room_path(&empty, "leave"), Some(json!({}))).await;
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    bob.ok("POST", &room_path(&empty, "leave"), Some(json!({}))).await;
    let s = bob.sync(Some(&since), 5000).await;
    assert!(s["rooms"]["leave"][&empty].is_object(), "{s}");
    assert!(s["rooms"]["invite"].get(&empty).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_every_client_calls() {
    let server = TestServer::start_with(&[]).await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;

    // No bridges: no protocols, unknown protocol.
    assert_eq!(
        alice.ok("GET", "/_matrix/client/v3/thirdparty/protocols", None).await,
        json!({})
    );
    let r = alice
        .call("GET", "/_matrix/client/v3/thirdparty/protocol/irc", None)
        .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
    // No e-mail addresses yet: an empty list (Element's settings page needs it).
    assert_eq!(
        alice.ok("GET", "/_matrix/client/v3/account/3pid", None).await,
        json!({ "threepids": [] })
    );
    // No support contacts configured: not found.
    let r = request(
        &alice.http,
        "GET",
        &format!("{}/.well-known/matrix/support", server.url),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 404);

    // Whois: oneself, not others.
    let me = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/admin/whois/{}", enc(&alice.user_id)),
            None,
        )
        .await;
    assert_eq!(me["user_id"], alice.user_id);
    assert!(me["devices"].as_object().unwrap().len() == 1, "{me}");
    let r = alice
        .call(
            "GET",
            &format!("/_matrix/client/v1/admin/whois/{}", enc(&bob.user_id)),
            None,
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));

    // Mutual rooms, at both paths.
    let shared = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.create_room(json!({})).await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&shared)),
        Some(json!({})),
    )
    .await;
    for path in [
        format!("/_matrix/client/v1/mutual_rooms?user_id={}", enc(&bob.user_id)),
        format!(
            "/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms?user_id={}",
            enc(&bob.user_id)
        ),
    ] {
        let r = alice.ok("GET", &path, None).await;
        assert_eq!(r["joined"], json!([shared]), "{path}");
    }

    // A login token for a new device: after the password, once, soon.
    let url = "/_matrix/client/v1/login/get_token";
    let r = alice.call("POST", url, Some(json!({}))).await;
    assert_eq!(r.status, 401, "user-interactive auth first: {}", r.body);
    let session = r.body["session"].as_str().unwrap().to_owned();
    let token = alice
        .ok(
            "POST",
            url,
            Some(json!({ "auth": {
                "type": "m.login.password", "session": session, "password": password("alice"),
                "identifier": { "type": "m.id.user", "user": "alice" },
            }})),
        )
        .await;
    assert!(token["expires_in_ms"].as_u64().unwrap() > 0);
    let login_token = token["login_token"].as_str().unwrap().to_owned();
    let login = |t: String| {
        let http = alice.http.clone();
        let url = format!("{}/_matrix/client/v3/login", server.url);
        async move {
            request(
                &http,
                "POST",
                &url,
                None,
                Some(RawBody::Json(json!({ "type": "m.login.token", "token": t }))),
            )
            .await
        }
    };
    let r = login(login_token.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user_id"], alice.user_id);
    let r = login(login_token).await;
    assert_eq!(
        (r.status, r.errcode()),
        (403, "M_FORBIDDEN"),
        "a login token works once"
    );
    let types = request(
        &alice.http,
        "GET",
        &format!("{}/_matrix/client/v3/login", server.url),
        None,
        None,
    )
    .await;
    assert!(
        types.body["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.token" && f["get_login_token"] == true),
        "{}",
        types.body
    );

    // A logged-out token is refused even where no token is needed.
    let gone = Raw::login(&server, "bob").await;
    gone.ok("POST", "/_matrix/client/v3/logout", Some(json!({}))).await;
    let r = gone
        .call(
            "GET",
            &format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)),
            None,
        )
        .await;
    assert_eq!((r.status, r.errcode()), (401, "M_UNKNOWN_TOKEN"));
    // Without a token, the profile is public.
    let r = request(
        &alice.http,
        "GET",
        &format!("{}/_matrix/client/v3/profile/{}", server.url, enc(&alice.user_id)),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_contacts_and_an_administrators_whois() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        r#"
[support]
page = "https://intranet.example.gouv/messagerie"
[[support.contacts]]
role = "m.role.admin"
matrix_id = "@admin:localhost"
email_address = "admin@example.gouv"
"#,
    )
    .unwrap();
    let server = TestServer::start_with(&[("MISSIVE_CONFIG", config.path().to_str().unwrap())]).await;
    let out = server
        .admin(&["create-user", "admin", "--password", &password("admin"), "--admin"])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let admin = Raw::login(&server, "admin").await;
    let bob = Raw::register(&server, "bob").await;
    let r = request(
        &bob.http,
        "GET",
        &format!("{}/.well-known/matrix/support", server.url),
        None,
        None,
    )
    .await;
    assert_eq!(
        r.body,
        json!({
            "contacts": [{ "role": "m.role.admin", "matrix_id": "@admin:localhost", "email_address": "admin@example.gouv" }],
            "support_page": "https://intranet.example.gouv/messagerie",
        })
    );
    bob.sync(None, 0).await;
    // An administrator sees where another user's sessions come from.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let w = admin
            .ok(
                "GET",
                &format!("/_matrix/client/v3/admin/whois/{}", enc(&bob.user_id)),
                None,
            )
            .await;
        let connections: Vec<Value> = w["devices"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|d| d["sessions"][0]["connections"].as_array().cloned().unwrap_or_default())
            .collect();
        if let Some(c) = connections.first() {
            assert_eq!(c["ip"], "127.0.0.1");
            assert!(c["last_seen"].as_i64().unwrap() > 0);
            assert!(c.get("user_agent").is_some());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no connection recorded: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 exchange on an open connection; the response's head and body.
async fn exchange(conn: &mut tokio::net::TcpStream, request: &str) -> (String, String) {
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "the connection closed while a request waited: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return (head.to_owned(), body[..len].to_owned());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_survives_refusals() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let body = json!({ "msgtype": "m.text", "body": "x".repeat(2000) }).to_string();
    // Refused before the body is needed (a bad token, an unknown endpoint),
    // each on the same connection as the next request.
    for (path, token) in [
        (
            "/_matrix/client/v3/rooms/!r:localhost/send/m.room.message/t1",
            "not-a-token",
        ),
        ("/_matrix/client/v3/no/such/endpoint", alice.token.as_str()),
    ] {
        let req = format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (head, _) = exchange(&mut conn, &req).await;
        assert!(head.starts_with("HTTP/1.1 4"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    }
    let (head, body) = exchange(
        &mut conn,
        &format!(
            "GET /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
            alice.token
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains(&alice.user_id));
}
