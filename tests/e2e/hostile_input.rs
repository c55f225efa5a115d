//! What an attacker sends to break a store or a limit: NUL characters in
//! every place a client can put a string, identifiers past the spec's
//! 255 bytes, events past 65,536. Each engine answers each request with
//! the same status, never a 5xx, and the server keeps serving everyone
//! afterwards.

use serde_json::{Value, json};

use crate::common::{Raw, RawBody, TestServer, enc, request};
use crate::fed_harness::{FedOpts, FedServer, test_ca};

/// One request of the script and what came of it.
#[derive(Debug, PartialEq)]
struct Outcome {
    what: &'static str,
    status: u16,
    errcode: String,
}

struct Script<'a> {
    outcomes: Vec<Outcome>,
    alice: &'a Raw,
}

impl Script<'_> {
    async fn run(&mut self, who: &Raw, what: &'static str, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = who.call(method, path, body).await;
        assert!(r.status < 500, "{what}: {method} {path} → {} {}", r.status, r.body);
        self.outcomes.push(Outcome {
            what,
            status: r.status,
            errcode: r.errcode().to_owned(),
        });
        r.body
    }

    async fn alice(&mut self, what: &'static str, method: &str, path: &str, body: Option<Value>) -> Value {
        let alice = self.alice;
        self.run(alice, what, method, path, body).await
    }
}

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

/// Runs the whole script against one server; returns every outcome in order.
async fn hostile_script(server: &TestServer) -> Vec<Outcome> {
    let alice = Raw::register(server, "alice").await;
    let bob = Raw::register(server, "bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public", "name": "Plaza" }))
        .await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some(json!({})),
    )
    .await;
    let alice_since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let first = alice.send_text(&room, "first", "first").await.body["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut s = Script {
        outcomes: vec![],
        alice: &alice,
    };
    let me = enc(&alice.user_id);

    // NUL inside JSON strings of events: stored as given, served as given.
    s.alice(
        "message body",
        "PUT",
        &room_path(&room, "send/m.room.message/nul-body"),
        Some(json!({ "msgtype": "m.text", "body": "hello\u{0}world" })),
    )
    .await;
    s.alice(
        "topic",
        "PUT",
        &room_path(&room, "state/m.room.topic/"),
        Some(json!({ "topic": "agenda\u{0}" })),
    )
    .await;
    s.alice(
        "join rules with an extra key",
        "PUT",
        &room_path(&room, "state/m.room.join_rules/"),
        Some(json!({ "join_rule": "public", "x": "\u{0}" })),
    )
    .await;
    s.alice(
        "custom state",
        "PUT",
        &room_path(&room, "state/org.example.custom/k"),
        Some(json!({ "v": "\u{0}", "\u{0}": 1 })),
    )
    .await;
    s.alice(
        "account data",
        "PUT",
        &format!("/_matrix/client/v3/user/{me}/account_data/org.example.nul"),
        Some(json!({ "v": "\u{0}" })),
    )
    .await;
    s.alice(
        "room tag content",
        "PUT",
        &format!("/_matrix/client/v3/user/{me}/rooms/{}/tags/u.work", enc(&room)),
        Some(json!({ "order": 0.5, "x": "\u{0}" })),
    )
    .await;
    s.alice(
        "to-device content",
        "PUT",
        "/_matrix/client/v3/sendToDevice/org.example.nul/t1",
        Some(json!({ "messages": { bob.user_id.clone(): { "*": { "v": "\u{0}" } } } })),
    )
    .await;
    s.alice(
        "filter with a NUL type",
        "POST",
        &format!("/_matrix/client/v3/user/{me}/filter"),
        Some(json!({ "room": { "timeline": { "types": ["\u{0}", "m.room.message"] } } })),
    )
    .await;
    s.run(
        &bob,
        "leave reason",
        "POST",
        &room_path(&room, "leave"),
        Some(json!({ "reason": "bye\u{0}" })),
    )
    .await;

    // NUL in values the server keeps in columns of their own: refused.
    s.alice(
        "display name",
        "PUT",
        &format!("/_matrix/client/v3/profile/{me}/displayname"),
        Some(json!({ "displayname": "Al\u{0}ice" })),
    )
    .await;
    let devices = alice.ok("GET", "/_matrix/client/v3/devices", None).await;
    let device = devices["devices"][0]["device_id"].as_str().unwrap().to_owned();
    s.alice(
        "device name",
        "PUT",
        &format!("/_matrix/client/v3/devices/{}", enc(&device)),
        Some(json!({ "display_name": "phone\u{0}" })),
    )
    .await;
    s.alice(
        "report reason",
        "POST",
        &room_path(&room, &format!("report/{}", enc(&first))),
        Some(json!({ "reason": "spam\u{0}", "score": -100 })),
    )
    .await;
    s.alice(
        "public room search term",
        "POST",
        "/_matrix/client/v3/publicRooms",
        Some(json!({ "filter": { "generic_search_term": "pl\u{0}" } })),
    )
    .await;
    s.alice(
        "user directory search term",
        "POST",
        "/_matrix/client/v3/user_directory/search",
        Some(json!({ "search_term": "b\u{0}" })),
    )
    .await;
    s.alice(
        "message search term",
        "POST",
        "/_matrix/client/v3/search",
        Some(json!({ "search_categories": { "room_events": { "search_term": "hel\u{0}lo" } } })),
    )
    .await;
    // In paths and queries.
    s.alice(
        "txn id",
        "PUT",
        &room_path(&room, "send/m.room.message/a%00b"),
        Some(json!({ "body": "x" })),
    )
    .await;
    s.alice(
        "state key",
        "PUT",
        &room_path(&room, "state/org.example.custom/%00"),
        Some(json!({})),
    )
    .await;
    s.alice("event id", "GET", &room_path(&room, "event/$%00"), None).await;
    s.alice("room id", "GET", "/_matrix/client/v3/rooms/!a%00:localhost/state", None)
        .await;
    s.alice(
        "alias",
        "GET",
        "/_matrix/client/v3/directory/room/%23a%00:localhost",
        None,
    )
    .await;
    s.alice(
        "account data type",
        "PUT",
        &format!("/_matrix/client/v3/user/{me}/account_data/a%00"),
        Some(json!({})),
    )
    .await;
    s.alice(
        "tag name",
        "PUT",
        &format!("/_matrix/client/v3/user/{me}/rooms/{}/tags/a%00", enc(&room)),
        Some(json!({})),
    )
    .await;
    s.alice(
        "receipt event id",
        "POST",
        &room_path(&room, "receipt/m.read/$a%00"),
        Some(json!({})),
    )
    .await;
    s.alice(
        "pagination token",
        "GET",
        &room_path(&room, "messages?dir=b&from=s1%00"),
        None,
    )
    .await;
    s.alice(
        "sync since",
        "GET",
        "/_matrix/client/v3/sync?timeout=0&since=s%00",
        None,
    )
    .await;
    s.alice(
        "login user",
        "POST",
        "/_matrix/client/v3/login",
        Some(json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": "al\u{0}ice" },
            "password": "x"
        })),
    )
    .await;

    // The spec's size limits.
    let long = "a".repeat(300);
    s.alice(
        "300-byte state key",
        "PUT",
        &room_path(&room, &format!("state/org.example.custom/{long}")),
        Some(json!({})),
    )
    .await;
    s.alice(
        "300-byte event type",
        "PUT",
        &room_path(&room, &format!("send/{long}/t")),
        Some(json!({})),
    )
    .await;
    s.alice(
        "300-byte txn id",
        "PUT",
        &room_path(&room, &format!("send/m.room.message/{long}")),
        Some(json!({ "body": "x" })),
    )
    .await;
    s.alice(
        "70 KB event",
        "PUT",
        &room_path(&room, "send/m.room.message/big"),
        Some(json!({ "msgtype": "m.text", "body": "x".repeat(70_000) })),
    )
    .await;
    s.alice(
        "70 KB state event",
        "PUT",
        &room_path(&room, "state/org.example.custom/big"),
        Some(json!({ "v": "x".repeat(70_000) })),
    )
    .await;
    s.alice(
        "255-byte state key",
        "PUT",
        &room_path(&room, &format!("state/org.example.custom/{}", "b".repeat(255))),
        Some(json!({})),
    )
    .await;

    // Everyone is still served, and gets back what was stored.
    let sync = s
        .alice(
            "incremental sync",
            "GET",
            &format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&alice_since)),
            None,
        )
        .await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].clone();
    let leave = timeline
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id)
        .expect("bob's leave in alice's sync");
    assert_eq!(leave["content"]["reason"], "bye\u{0}");
    let body = timeline
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "hello\u{0}world");
    assert!(body.is_some(), "the message comes back as sent: {:?}", s.outcomes);
    s.alice("bob's sync", "GET", "/_matrix/client/v3/sync?timeout=0", None)
        .await;
    let public = s
        .alice("public rooms", "GET", "/_matrix/client/v3/publicRooms", None)
        .await;
    assert_eq!(public["chunk"][0]["topic"], "agenda\u{0}");
    s.alice(
        "user directory",
        "POST",
        "/_matrix/client/v3/user_directory/search",
        Some(json!({ "search_term": "bob" })),
    )
    .await;
    s.alice("messages", "GET", &room_path(&room, "messages?dir=b&limit=50"), None)
        .await;
    s.alice("room state", "GET", &room_path(&room, "state"), None).await;
    s.alice(
        "search",
        "POST",
        "/_matrix/client/v3/search",
        Some(json!({ "search_categories": { "room_events": { "search_term": "hello" } } })),
    )
    .await;
    s.alice("members", "GET", &room_path(&room, "members"), None).await;
    s.alice("initial sync", "GET", "/_matrix/client/v3/initialSync?limit=5", None)
        .await;
    let outcomes = s.outcomes;
    drop(bob);
    outcomes
}

fn status_of(outcomes: &[Outcome], what: &str) -> (u16, String) {
    let o = outcomes.iter().find(|o| o.what == what).expect(what);
    (o.status, o.errcode.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_give_hostile_input_the_same_answer() {
    let sqlite = TestServer::start_sqlite(&[("MISSIVE_LOG", "error")]).await;
    let on_sqlite = hostile_script(&sqlite).await;
    let ok = |w: &str| assert_eq!(status_of(&on_sqlite, w).0, 200, "{w}");
    for w in [
        "message body",
        "topic",
        "join rules with an extra key",
        "custom state",
        "account data",
        "room tag content",
        "to-device content",
        "filter with a NUL type",
        "leave reason",
        "255-byte state key",
    ] {
        ok(w);
    }
    for w in [
        "display name",
        "device name",
        "report reason",
        "txn id",
        "state key",
        "event id",
        "room id",
        "alias",
        "account data type",
        "tag name",
        "receipt event id",
    ] {
        assert_eq!(status_of(&on_sqlite, w).0, 400, "{w}");
    }
    for w in [
        "300-byte state key",
        "300-byte event type",
        "300-byte txn id",
        "70 KB event",
        "70 KB state event",
    ] {
        assert_eq!(status_of(&on_sqlite, w), (413, "M_TOO_LARGE".to_owned()), "{w}");
    }

    // The same script on PostgreSQL, when the run has one, answers alike.
    if std::env::var_os("MISSIVE_TEST_POSTGRES").is_some() {
        let pg = TestServer::start_with(&[("MISSIVE_LOG", "error")]).await;
        let on_pg = hostile_script(&pg).await;
        assert_eq!(on_sqlite, on_pg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_lock_the_account_not_the_address() {
    // The address's own allowance is set wide to see the account's alone.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("missive.toml");
    std::fs::write(
        &config,
        "[rate_limits]\nlogin_per_second = 10.0\nlogin_burst = 100.0\n\
         failed_login_per_second = 0.01\nfailed_login_burst = 5.0\n",
    )
    .unwrap();
    let server = TestServer::start_with(&[
        ("MISSIVE_RATE_LIMITS", "on"),
        ("MISSIVE_CONFIG", config.to_str().unwrap()),
    ])
    .await;
    Raw::register(&server, "alice").await;
    Raw::register(&server, "bob").await;
    let http = reqwest::Client::new();
    let url = format!("{}/_matrix/client/v3/login", server.url);
    let login = |user: &str, password: String| {
        json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user },
            "password": password,
        })
    };
    for _ in 0..5 {
        let r = request(
            &http,
            "POST",
            &url,
            None,
            Some(RawBody::Json(login("alice", "guess".into()))),
        )
        .await;
        assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    }
    // Past the account's allowance even the right password waits.
    let r = request(
        &http,
        "POST",
        &url,
        None,
        Some(RawBody::Json(login("alice", crate::common::password("alice")))),
    )
    .await;
    assert_eq!(r.errcode(), "M_LIMIT_EXCEEDED", "{}", r.body);
    assert!(r.body["retry_after_ms"].as_u64().unwrap() > 0);
    // Another account from the same address is not held back by it.
    let r = request(
        &http,
        "POST",
        &url,
        None,
        Some(RawBody::Json(login("bob", crate::common::password("bob")))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Unknown accounts are counted as well, so guessing names costs alike.
    for _ in 0..5 {
        let r = request(
            &http,
            "POST",
            &url,
            None,
            Some(RawBody::Json(login("nobody", "x".into()))),
        )
        .await;
        assert_eq!(r.status, 403);
    }
    let r = request(
        &http,
        "POST",
        &url,
        None,
        Some(RawBody::Json(login("nobody", "x".into()))),
    )
    .await;
    assert_eq!(r.errcode(), "M_LIMIT_EXCEEDED");
}

/// Whether anything connects to `listener` within `wait`.
async fn connected_within(listener: &tokio::net::TcpListener, wait: std::time::Duration) -> bool {
    tokio::time::timeout(wait, listener.accept()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_makes_the_server_connect_to_private_addresses() {
    let server = FedServer::start_with(FedOpts {
        // The harness allows loopback for its own servers; this one does not.
        env: vec![("MISSIVE_FEDERATION_IP_ALLOWLIST".into(), String::new())],
        ..Default::default()
    })
    .await;
    let alice = Raw::register(&server, "alice").await;
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    let http = test_ca().client();

    // The server-server API is not on the plain client port at all…
    let r = request(
        &reqwest::Client::new(),
        "GET",
        &format!("{}/_matrix/key/v2/query/127.0.0.1:{port}", server.url),
        None,
        None,
    )
    .await;
    assert_eq!((r.status, r.body["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));
    // …and on its own listener the notary, unauthenticated, one server and a batch.
    let r = request(
        &http,
        "GET",
        &format!("{}/_matrix/key/v2/query/127.0.0.1:{port}", server.fed_url()),
        None,
        None,
    )
    .await;
    assert!(r.status < 500, "{}", r.body);
    let batch: serde_json::Map<String, Value> = (0..49)
        .map(|i| (format!("127.0.0.{}:{port}", i + 1), json!({})))
        .chain([(format!("localhost:{port}"), json!({}))])
        .collect();
    let r = request(
        &http,
        "POST",
        &format!("{}/_matrix/key/v2/query", server.fed_url()),
        None,
        Some(RawBody::Json(json!({ "server_keys": batch }))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["server_keys"], json!([]));
    // A join and a profile lookup naming a server at a private address.
    alice
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&format!("!room:127.0.0.1:{port}"))),
            Some(json!({})),
        )
        .await;
    alice
        .call(
            "GET",
            &format!("/_matrix/client/v3/profile/{}", enc(&format!("@x:127.0.0.1:{port}"))),
            None,
        )
        .await;
    alice
        .call(
            "GET",
            &format!("/_matrix/client/v3/profile/{}", enc(&format!("@x:localhost:{port}"))),
            None,
        )
        .await;
    assert!(
        !connected_within(&target, std::time::Duration::from_secs(2)).await,
        "the server connected to a loopback address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notary_batch_contacts_few_servers_and_answers_the_rest_from_memory() {
    // Loopback allowed, so that the fetches the notary makes are seen.
    let server = FedServer::start().await;
    // Bound on every address: which 127.0.0.x a connection came to tells
    // which server of the batch the notary tried.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dialed = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let seen = dialed.clone();
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            seen.lock().unwrap().insert(stream.local_addr().unwrap().ip());
        }
    });
    let batch: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("127.0.0.{}:{port}", i + 2), json!({})))
        .collect();
    let r = request(
        &test_ca().client(),
        "POST",
        &format!("{}/_matrix/key/v2/query", server.fed_url()),
        None,
        Some(RawBody::Json(json!({ "server_keys": batch }))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let n = dialed.lock().unwrap().len();
    assert!((1..=3).contains(&n), "the notary contacted {n} servers");
    accept.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_critical_state_is_refused_and_a_refused_room_is_not_made() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let joined = |u: &Raw| {
        let u = u.clone();
        async move { u.ok("GET", "/_matrix/client/v3/joined_rooms", None).await["joined_rooms"].clone() }
    };
    let before = joined(&alice).await;

    // Each refused createRoom leaves no room behind.
    let refused = [
        json!({ "power_level_content_override": { "users": { alice.user_id.clone(): 100, "@x:localhost": "a" } } }),
        json!({ "room_version": "11", "power_level_content_override": { "users": { "@x:localhost": 100 } } }),
        json!({ "room_version": "11", "power_level_content_override": { "users": { alice.user_id.clone(): 0 } } }),
        // From version 12 creators are above power levels, and not in them.
        json!({ "room_version": "12", "power_level_content_override": { "users": { alice.user_id.clone(): 100 } } }),
        json!({ "creation_content": { "type": 5 } }),
        json!({ "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": 5 } }] }),
        json!({ "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": [] } }] }),
        json!({ "initial_state": [{ "type": "m.room.encryption", "content": {} }] }),
        json!({ "initial_state": [{ "type": "m.room.server_acl", "content": { "allow": ["elsewhere.example"] } }] }),
        json!({ "initial_state": [{ "type": "x".repeat(300), "content": {} }] }),
        json!({ "initial_state": [{ "type": "m.room.member", "state_key": bob.user_id.clone(), "content": { "membership": "join" } }] }),
        json!({ "name": "n".repeat(70_000) }),
        json!({ "initial_state": (0..300).map(|i| json!({ "type": "org.example.s", "state_key": i.to_string(), "content": {} })).collect::<Vec<_>>() }),
    ];
    for body in refused {
        let r = alice
            .call("POST", "/_matrix/client/v3/createRoom", Some(body.clone()))
            .await;
        assert!(
            [400, 403, 413].contains(&r.status) && r.errcode().starts_with("M_"),
            "{body:.200}: {} {}",
            r.status,
            r.body
        );
    }
    assert_eq!(joined(&alice).await, before, "a refused createRoom made a room");

    // In a room, content the server reads must have its schema's shape.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let state = |kind: &str| format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(&room));
    for (kind, content) in [
        ("m.room.join_rules", json!({ "join_rule": 5 })),
        ("m.room.join_rules", json!({ "join_rule": "public", "allow": "all" })),
        ("m.room.history_visibility", json!({ "history_visibility": "everyone" })),
        ("m.room.guest_access", json!({ "guest_access": true })),
        ("m.room.encryption", json!({ "algorithm": 5 })),
        ("m.room.server_acl", json!({ "allow": "*" })),
        (
            "m.room.power_levels",
            json!({ "users": { alice.user_id.clone(): "100" } }),
        ),
        ("m.room.name", json!({ "name": 5 })),
        ("m.room.topic", json!({})),
        ("m.room.tombstone", json!({ "replacement_room": room.clone() })),
    ] {
        let r = alice.call("PUT", &state(kind), Some(content.clone())).await;
        assert_eq!((r.status, r.errcode()), (400, "M_BAD_JSON"), "{kind} {content}");
    }
    let r = alice
        .call(
            "PUT",
            &state("m.room.server_acl"),
            Some(json!({ "allow": ["*"], "deny": ["localhost"] })),
        )
        .await;
    assert_eq!(r.status, 400, "an ACL shutting out this server: {}", r.body);
    let r = alice
        .call(
            "PUT",
            &state("m.room.canonical_alias"),
            Some(json!({ "alias": "#nowhere:localhost" })),
        )
        .await;
    assert_eq!(r.errcode(), "M_BAD_ALIAS");
    let r = alice
        .call("PUT", &state("m.room.canonical_alias"), Some(json!({ "alias": 5 })))
        .await;
    assert_eq!(r.errcode(), "M_INVALID_PARAM");
    // The room still takes joins: nothing above was stored.
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some(json!({})),
    )
    .await;
    // Valid content still passes, clearing included.
    alice
        .ok("PUT", &state("m.room.name"), Some(json!({ "name": "" })))
        .await;
    alice
        .ok(
            "PUT",
            &state("m.room.server_acl"),
            Some(json!({ "allow": ["*"], "deny": ["evil.example"] })),
        )
        .await;
}

/// A server in a room cannot graft events onto a past nobody can check,
/// nor fork the room without bound: an event whose `prev_events` are
/// unknown (and whose state its sender cannot give) is not taken, nor one
/// naming more than 20, and events built here merge at most 20 forks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_server_cannot_graft_or_fork_without_bound() {
    use crate::fed_harness::{FakeServer, now_ms};
    let fake = FakeServer::start().await;
    let a = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let dest = a.server_name().to_owned();
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mallory = fake.user("mallory");

    // Mallory joins through the usual make_join / send_join.
    let (join_id, join) = fake.signed_join(&dest, &room, &mallory).await;
    let (status, body) = fake
        .request(
            "PUT",
            &dest,
            &format!("/_matrix/federation/v2/send_join/{}/{}", enc(&room), enc(&join_id)),
            Some(join.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let auth_events: Vec<String> = body["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.power_levels")
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .chain([join_id.clone()])
        .collect();
    let message = |body: &str, prev_events: Vec<String>| {
        json!({
            "room_id": room, "sender": mallory, "origin_server_ts": now_ms(),
            "type": "m.room.message", "content": { "msgtype": "m.text", "body": body },
            "depth": 10, "prev_events": prev_events, "auth_events": auth_events,
        })
    };
    let send = |txn: &'static str, pdus: Vec<Value>| {
        let fake = &fake;
        let dest = dest.clone();
        async move {
            let (status, body) = fake
                .request(
                    "PUT",
                    &dest,
                    &format!("/_matrix/federation/v1/send/{txn}"),
                    Some(json!({ "origin": fake.name, "origin_server_ts": now_ms(), "pdus": pdus })),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };

    // An unknown past, which its sender cannot give (`/state_ids` fails).
    let (grafted, pdu) = fake.sign_pdu(message("grafted onto nothing", vec!["$nowhere".into()]), "12");
    let body = send("graft", vec![pdu]).await;
    assert!(body["pdus"][&grafted]["error"].is_string(), "{body}");
    // Twenty-one prev_events.
    let many: Vec<String> = (0..21).map(|_| join_id.clone()).collect();
    let (wide, pdu) = fake.sign_pdu(message("merging everything", many), "12");
    let body = send("wide", vec![pdu]).await;
    assert!(
        body["pdus"][&wide]["error"]
            .as_str()
            .is_some_and(|e| e.contains("prev_events")),
        "{body}"
    );
    let page = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            None,
        )
        .await
        .to_string();
    for text in ["grafted onto nothing", "merging everything"] {
        assert!(!page.contains(text), "{text} reached the room");
    }

    // Twenty-five forks off the join, all valid, then a local message: it
    // merges twenty of them (what other servers accept), not all.
    let forks: Vec<Value> = (0..25)
        .map(|i| {
            fake.sign_pdu(message(&format!("fork {i}"), vec![join_id.clone()]), "12")
                .1
        })
        .collect();
    let body = send("forks", forks).await;
    let errors: Vec<&Value> = body["pdus"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["error"].is_string())
        .collect();
    assert!(errors.is_empty(), "{body}");
    let sent = alice.send_text(&room, "merge", "after the forks").await;
    assert_eq!(sent.status, 200);
    let id = sent.body["event_id"].as_str().unwrap();
    let (status, got) = fake
        .request("GET", &dest, &format!("/_matrix/federation/v1/event/{}", enc(id)), None)
        .await;
    assert_eq!(status, 200, "{got}");
    let prev = got["pdus"][0]["prev_events"].as_array().unwrap().len();
    assert_eq!(prev, 20, "{got}");
}
