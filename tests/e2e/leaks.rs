//! What a user who may not read something must not learn of it by a side
//! door: edits and thread replies summed up with an event they may see,
//! a file reached by naming its URI in another room, the time of events
//! after they left, profiles changed after they left.

use serde_json::{Value, json};

use crate::common::{Raw, TestServer, enc};

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

async fn join(user: &Raw, room: &str) {
    user.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(room)),
        Some(json!({})),
    )
    .await;
}

async fn send(user: &Raw, room: &str, txn: &str, content: Value) -> String {
    user.ok(
        "PUT",
        &room_path(room, &format!("send/m.room.message/{txn}")),
        Some(content),
    )
    .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every string anywhere in a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn mentions(v: &Value, needle: &str) -> bool {
    let mut all = vec![];
    strings(v, &mut all);
    all.iter().any(|s| s.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_came_after_a_departure_stays_out_of_reach() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let leo = Raw::register(&server, "leo").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Plans" }))
        .await;
    join(&leo, &room).await;
    let root = send(&alice, &room, "r", json!({ "msgtype": "m.text", "body": "the plan" })).await;
    leo.ok("POST", &room_path(&room, "leave"), Some(json!({}))).await;
    let since = leo.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // After Leo left: an edit, a thread reply, a reference, a profile change.
    send(
        &alice,
        &room,
        "e",
        json!({
            "msgtype": "m.text", "body": "* SECRET-EDIT",
            "m.new_content": { "msgtype": "m.text", "body": "SECRET-EDIT" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": root },
        }),
    )
    .await;
    send(
        &alice,
        &room,
        "t",
        json!({
            "msgtype": "m.text", "body": "SECRET-REPLY",
            "m.relates_to": { "rel_type": "m.thread", "event_id": root },
        }),
    )
    .await;
    alice
        .ok(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id)),
            Some(json!({ "displayname": "SECRET-NAME" })),
        )
        .await;
    let later = send(
        &alice,
        &room,
        "l",
        json!({ "msgtype": "m.text", "body": "SECRET-LATER" }),
    )
    .await;

    // Every way Leo reads the root, or the room, shows none of it.
    let filter = enc(&json!({ "lazy_load_members": true }).to_string());
    for (what, path) in [
        ("event", room_path(&room, &format!("event/{}", enc(&root)))),
        ("messages", room_path(&room, "messages?dir=b&limit=50")),
        (
            "lazy messages",
            room_path(&room, &format!("messages?dir=b&limit=50&filter={filter}")),
        ),
        ("context", room_path(&room, &format!("context/{}", enc(&root)))),
        ("threads", format!("/_matrix/client/v1/rooms/{}/threads", enc(&room))),
        (
            "relations",
            format!("/_matrix/client/v1/rooms/{}/relations/{}", enc(&room), enc(&root)),
        ),
        ("initialSync", room_path(&room, "initialSync")),
        ("notifications", "/_matrix/client/v3/notifications".to_owned()),
    ] {
        let r = leo.call("GET", &path, None).await;
        for secret in ["SECRET-EDIT", "SECRET-REPLY", "SECRET-NAME", "SECRET-LATER"] {
            assert!(!mentions(&r.body, secret), "{what} shows {secret}: {}", r.body);
        }
    }
    let s = leo.sync(None, 0).await;
    assert!(!mentions(&s, "SECRET"), "{s}");
    let s = leo.sync(Some(&since), 0).await;
    assert!(!mentions(&s, "SECRET"), "{s}");
    let found = leo
        .call(
            "POST",
            "/_matrix/client/v3/search",
            Some(json!({ "search_categories": { "room_events": { "search_term": "plan" } } })),
        )
        .await;
    assert!(!mentions(&found.body, "SECRET"), "{}", found.body);
    // Not even the time of what came after.
    let r = leo
        .call(
            "GET",
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts=99999999999999&dir=b",
                enc(&room)
            ),
            None,
        )
        .await;
    assert_ne!(r.body["event_id"].as_str(), Some(later.as_str()), "{}", r.body);
    // While Alice, who is there, sees all of it.
    let ev = alice
        .ok("GET", &room_path(&room, &format!("event/{}", enc(&root))), None)
        .await;
    assert!(mentions(&ev, "SECRET-EDIT") && mentions(&ev, "SECRET-REPLY"), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_a_file_in_another_room_does_not_open_it() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let mallory = Raw::register(&server, "mallory").await;
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    let mxc = alice.upload_text("the minister's notes").await;
    send(
        &alice,
        &private,
        "f",
        json!({ "msgtype": "m.file", "body": "notes.txt", "url": mxc }),
    )
    .await;
    let download = format!(
        "/_matrix/client/v1/media/download/{}",
        mxc.strip_prefix("mxc://").unwrap()
    );
    assert_eq!(mallory.call("GET", &download, None).await.status, 404);

    // Mallory names the URI in a room of her own: still nothing.
    let hers = mallory.create_room(json!({})).await;
    send(
        &mallory,
        &hers,
        "m",
        json!({ "msgtype": "m.file", "body": "stolen", "url": mxc }),
    )
    .await;
    assert_eq!(mallory.call("GET", &download, None).await.status, 404);
    // Alice's own forward does open it to the room she forwards it to.
    let bob = Raw::register(&server, "bob").await;
    let shared = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &shared).await;
    assert_eq!(bob.call("GET", &download, None).await.status, 404);
    send(
        &alice,
        &shared,
        "fw",
        json!({ "msgtype": "m.file", "body": "notes.txt", "url": mxc }),
    )
    .await;
    let got = bob
        .http
        .get(format!("{}{download}", bob.base))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
}

/// The access log names every request, and no credential: not a password
/// from a body, not a token from a header, a query string or a response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_shows_requests_and_never_a_credential() {
    use crate::common::{RawBody, password, request};
    let server = TestServer::start_with(&[("MISSIVE_LOG", "info")]).await;
    let alice = Raw::register(&server, "alice").await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.url);
    let post = |path: &str, body: Value| {
        let (http, url) = (http.clone(), url(path));
        async move { request(&http, "POST", &url, None, Some(RawBody::Json(body))).await }
    };
    let mut secrets = vec![password("alice"), alice.token.clone()];

    let login = post(
        "/_matrix/client/v3/login",
        json!({
            "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
            "password": password("alice"), "refresh_token": true
        }),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let token = login.body["access_token"].as_str().unwrap().to_owned();
    let refresh = login.body["refresh_token"].as_str().unwrap().to_owned();
    secrets.extend([token.clone(), refresh.clone()]);
    // A token in the query string, the old way some clients still use.
    let r = request(
        &http,
        "GET",
        &url(&format!(
            "/_matrix/client/v3/account/whoami?access_token={}",
            enc(&token)
        )),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post("/_matrix/client/v3/refresh", json!({ "refresh_token": refresh })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    secrets.push(r.body["access_token"].as_str().unwrap().to_owned());
    // A wrong password, and a login token handed out after typing it again.
    let r = post(
        "/_matrix/client/v3/login",
        json!({
            "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
            "password": "a-wrong-guess-xyzzy"
        }),
    )
    .await;
    assert_eq!(r.status, 403);
    secrets.push("a-wrong-guess-xyzzy".into());
    let first = alice
        .call("POST", "/_matrix/client/v1/login/get_token", Some(json!({})))
        .await;
    let session = first.body["session"].as_str().unwrap_or_default().to_owned();
    let got = alice
        .ok(
            "POST",
            "/_matrix/client/v1/login/get_token",
            Some(json!({ "auth": {
                "type": "m.login.password", "session": session,
                "identifier": { "type": "m.id.user", "user": "alice" }, "password": password("alice")
            } })),
        )
        .await;
    secrets.push(got["login_token"].as_str().unwrap().to_owned());
    let room = alice.create_room(json!({})).await;
    alice.ok("GET", &room_path(&room, "messages?dir=b&limit=5"), None).await;

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = server.log();
    let access: Vec<&str> = log.lines().filter(|l| l.contains("missive::access")).collect();
    // Each request is there, with its outcome and who made it.
    assert!(
        access
            .iter()
            .any(|l| l.contains("/account/whoami?access_token=<redacted>") && l.contains("status=200")),
        "{log}"
    );
    assert!(
        access
            .iter()
            .any(|l| l.contains("/messages?dir=b&limit=5") && l.contains(&alice.user_id) && l.contains("ms=")),
        "{log}"
    );
    assert!(
        access
            .iter()
            .any(|l| l.contains("POST") && l.contains("/login") && l.contains("status=403")),
        "{log}"
    );
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret} is in the log:\n{log}");
    }
}

/// An invitee sees the room as it was when invited: a rename or a new
/// topic afterwards is for members, which they are not yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_state_is_the_room_at_the_invite() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let leo = Raw::register(&server, "leo").await;
    let room = alice.create_room(json!({ "name": "Budget review" })).await;
    alice
        .ok(
            "POST",
            &room_path(&room, "invite"),
            Some(json!({ "user_id": leo.user_id })),
        )
        .await;
    for (kind, content) in [
        ("m.room.name", json!({ "name": "Layoffs 2027" })),
        ("m.room.topic", json!({ "topic": "names inside" })),
    ] {
        alice
            .ok("PUT", &room_path(&room, &format!("state/{kind}/")), Some(content))
            .await;
    }
    let sync = leo.sync(None, 0).await;
    let invite = &sync["rooms"]["invite"][&room];
    assert!(mentions(invite, "Budget review"), "{invite}");
    assert!(mentions(invite, &alice.user_id), "the inviter is named: {invite}");
    for later in ["Layoffs 2027", "names inside"] {
        assert!(!mentions(&sync, later), "{later} reached the invitee: {sync}");
    }
    // Sliding sync shows the same invite.
    let sliding = leo
        .ok(
            "POST",
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Some(json!({ "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 1 } } })),
        )
        .await;
    assert!(mentions(&sliding, "Budget review"), "{sliding}");
    assert!(!mentions(&sliding, "Layoffs 2027"), "{sliding}");
}
