//! Federation between real servers on one machine: several Missive
//! processes, Synapse, and a forged server, each named
//! `localhost:<federation port>` and trusting the test CA. Users are driven
//! with matrix-sdk (encryption on) on each server's client port; messages
//! must decrypt across servers.

use std::time::{Duration, Instant};

use matrix_sdk::{
    Client,
    ruma::{
        OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
        api::client::room::{Visibility, create_room::v3::Request as CreateRoom},
        events::{InitialStateEvent, room::encryption::RoomEncryptionEventContent},
    },
};
use serde_json::{Value, json};

use crate::{
    common::{Raw, TestServer, enc, sdk_client, sync_until_for},
    encryption::{encrypted_room, send, sync_all, wait_decrypted_for},
    fed_harness::{FakeServer, FedOpts, FedServer, SynapseServer, now_ms, raw_federation, test_ca},
};

/// How long a test waits for anything to cross servers.
const FEDERATION_WAIT: Duration = Duration::from_secs(30);

/// A raw session on the client API with an sdk client's token.
fn raw_for(server: &TestServer, client: &Client) -> Raw {
    Raw {
        base: server.url.clone(),
        http: reqwest::Client::new(),
        token: client.access_token().expect("token"),
        user_id: client.user_id().expect("user").to_string(),
    }
}

/// Syncs until `client` sees `n` joined members in `room`.
async fn wait_joined(client: &Client, room: &RoomId, n: u64) {
    let who = client.user_id().map(|u| u.to_string()).unwrap_or_default();
    sync_until_for(
        client,
        &format!("{who} to see {n} joined members in {room}"),
        FEDERATION_WAIT,
        |c| c.get_room(room).is_some_and(|r| r.joined_members_count() >= n),
    )
    .await;
}

async fn assert_decrypts(client: &Client, room: &RoomId, event: &OwnedEventId, text: &str) {
    assert_eq!(
        wait_decrypted_for(client, room, event, FEDERATION_WAIT)
            .await
            .as_deref(),
        Some(text),
        "{} did not decrypt {event} in {room}",
        client.user_id().map(|u| u.to_string()).unwrap_or_default()
    );
}

/// A public (anyone may join), encrypted room.
async fn public_encrypted_room(owner: &Client) -> OwnedRoomId {
    let mut req = CreateRoom::new();
    req.visibility = Visibility::Private;
    req.preset = Some(matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset::PublicChat);
    req.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any(),
    ];
    owner.create_room(req).await.expect("create room").room_id().to_owned()
}

async fn join_via(client: &Client, room: &RoomId, via: &str) {
    let via: OwnedServerName = via.try_into().expect("server name");
    client
        .join_room_by_id_or_alias(room.into(), &[via])
        .await
        .expect("join over federation");
}

/// Accepts an invitation that arrives over federation.
async fn accept_invite(client: &Client, room: &RoomId) {
    sync_until_for(client, "the invite", FEDERATION_WAIT, |c| c.get_room(room).is_some()).await;
    client.join_room_by_id(room).await.expect("join after invite");
}

fn user_id(s: &str) -> OwnedUserId {
    s.try_into().expect("user id")
}

/// Polls a raw /sync of `observer` until an ephemeral event of `room` passes `check`.
async fn wait_ephemeral(observer: &Raw, room: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + FEDERATION_WAIT;
    let filter = json!({ "room": { "timeline": { "limit": 1 } } }).to_string();
    let mut since: Option<String> = None;
    loop {
        let s = observer.sync_filtered(since.as_deref(), 1000, &filter).await;
        if let Some(events) = s["rooms"]["join"][room]["ephemeral"]["events"].as_array()
            && events.iter().any(&check)
        {
            return;
        }
        since = s["next_batch"].as_str().map(str::to_owned);
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

/// The IDs of the newest `limit` events of a room as `raw`'s server has them, oldest first.
async fn timeline_ids(raw: &Raw, room: &str, limit: u32) -> Vec<String> {
    let page = raw
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}", enc(room)),
            None,
        )
        .await;
    let mut ids: Vec<String> = page["chunk"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.reverse();
    ids
}

/// Waits until `raw`'s server has an `m.room.message` with `body` in `room`.
pub(crate) async fn wait_plain_text(raw: &Raw, room: &str, body: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(room));
    eventually(&format!("{} to see {body:?} in {room}", raw.user_id), || async {
        let page = raw.call("GET", &path, None).await;
        page.status == 200
            && page.body["chunk"]
                .as_array()
                .is_some_and(|c| c.iter().any(|e| e["content"]["body"] == body))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_missive_servers_e2ee() {
    let a = FedServer::start().await;
    let b = FedServer::start().await;

    // The transport itself: each server's signing keys over TLS.
    for s in [&a, &b] {
        let keys = test_ca()
            .client()
            .get(format!("{}/_matrix/key/v2/server", s.fed_url()))
            .send()
            .await
            .expect("key request over TLS");
        assert_eq!(keys.status(), 200, "keys of {}", s.server_name());
        let keys: Value = keys.json().await.expect("keys json");
        assert_eq!(keys["server_name"], s.server_name());
    }

    let alice = sdk_client(&a, "alice").await;
    let bob = sdk_client(&b, "bob").await;
    let alice_raw = raw_for(&a, &alice);
    let bob_raw = raw_for(&b, &bob);
    alice_raw
        .ok(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_raw.user_id)),
            Some(json!({ "displayname": "Alice of A" })),
        )
        .await;

    // Invited across servers, bob joins through his own server.
    let room = encrypted_room(&alice, vec![user_id(&b.user("bob"))]).await;
    accept_invite(&bob, &room).await;
    wait_joined(&alice, &room, 2).await;
    wait_joined(&bob, &room, 2).await;

    let m1 = send(&alice, &room, "hello bob, from A").await;
    assert_decrypts(&bob, &room, &m1, "hello bob, from A").await;
    let m2 = send(&bob, &room, "hello alice, from B").await;
    assert_decrypts(&alice, &room, &m2, "hello alice, from B").await;

    // Typing and read receipts (EDUs) from bob reach alice.
    let observer = Raw::login(&a, "alice").await;
    bob_raw
        .ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(room.as_str()),
                enc(&bob_raw.user_id)
            ),
            Some(json!({ "typing": true, "timeout": 30000 })),
        )
        .await;
    let bob_id = bob_raw.user_id.clone();
    wait_ephemeral(&observer, room.as_str(), "bob's typing at A", |e| {
        e["type"] == "m.typing"
            && e["content"]["user_ids"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u == bob_id.as_str()))
    })
    .await;
    bob_raw
        .ok(
            "POST",
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(room.as_str()),
                enc(m1.as_str())
            ),
            Some(json!({})),
        )
        .await;
    wait_ephemeral(&observer, room.as_str(), "bob's read receipt at A", |e| {
        e["type"] == "m.receipt" && !e["content"][m1.as_str()]["m.read"][bob_id.as_str()].is_null()
    })
    .await;

    // Media uploaded on A, downloaded by bob through B.
    let bytes = b"a file that lives on server A".to_vec();
    let up: Value = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload?filename=a.txt", a.url()))
        .bearer_auth(&alice_raw.token)
        .header("content-type", "text/plain")
        .body(bytes.clone())
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("upload json");
    let mxc = up["content_uri"].as_str().expect("content_uri");
    let (origin, media_id) = mxc
        .strip_prefix("mxc://")
        .and_then(|r| r.rsplit_once('/'))
        .expect("mxc uri");
    assert_eq!(origin, a.server_name());
    let down = reqwest::Client::new()
        .get(format!(
            "{}/_matrix/client/v1/media/download/{origin}/{media_id}",
            b.url()
        ))
        .bearer_auth(&bob_raw.token)
        .timeout(FEDERATION_WAIT)
        .send()
        .await
        .expect("download");
    assert_eq!(down.status(), 200, "remote media download through B");
    assert_eq!(down.bytes().await.expect("body").as_ref(), bytes.as_slice());

    // Alice's profile, asked of B.
    let profile = bob_raw
        .ok(
            "GET",
            &format!("/_matrix/client/v3/profile/{}", enc(&alice_raw.user_id)),
            None,
        )
        .await;
    assert_eq!(profile["displayname"], "Alice of A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_room() {
    let a = FedServer::start().await;
    let b = FedServer::start().await;
    let c = FedServer::start().await;
    let alice = sdk_client(&a, "alice").await;
    let bob = sdk_client(&b, "bob").await;
    let carol = sdk_client(&c, "carol").await;

    let room = public_encrypted_room(&alice).await;
    join_via(&bob, &room, a.server_name()).await;
    join_via(&carol, &room, a.server_name()).await;
    for client in [&alice, &bob, &carol] {
        wait_joined(client, &room, 3).await;
    }

    let clients = [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")];
    for (sender, name) in clients {
        let text = format!("{name} says hello to everyone");
        let ev = send(sender, &room, &text).await;
        for (reader, _) in clients {
            if !std::ptr::eq(reader, sender) {
                assert_decrypts(reader, &room, &ev, &text).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_after_restart() {
    let a = FedServer::start().await;
    let mut b = FedServer::start().await;
    let alice = sdk_client(&a, "alice").await;
    let bob = sdk_client(&b, "bob").await;
    let room = encrypted_room(&alice, vec![user_id(&b.user("bob"))]).await;
    accept_invite(&bob, &room).await;
    wait_joined(&alice, &room, 2).await;
    // One message first, so bob holds the room key before B goes down.
    let first = send(&alice, &room, "before the outage").await;
    assert_decrypts(&bob, &room, &first, "before the outage").await;

    b.stop().await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let text = format!("while B was down #{i}");
        sent.push((send(&alice, &room, &text).await, text));
    }
    let started = Instant::now();
    b.start_again().await;

    // A delivers the backlog at its next retry (backing off up to an hour
    // in real life); if it has not after 20 s, bob talks (a transaction
    // from B), which tells A that B is back and makes it retry at once.
    // Either way all 20 messages must arrive.
    let bob_raw = raw_for(&b, &bob);
    let arrived = |ids: &[String]| sent.iter().all(|(e, _)| ids.iter().any(|i| i == e.as_str()));
    let mut nudged = false;
    loop {
        let ids = timeline_ids(&bob_raw, room.as_str(), 100).await;
        if arrived(&ids) {
            break;
        }
        let waited = started.elapsed();
        if !nudged && waited > Duration::from_secs(20) {
            eprintln!("backlog not delivered 20 s after B restarted: bob sends a message");
            sync_all(&[&bob]).await;
            send(&bob, &room, "I'm back").await;
            nudged = true;
        }
        assert!(
            waited < Duration::from_secs(60),
            "B did not get the 20 messages within 60 s of restarting"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "backlog delivered {:?} after B restarted{}",
        started.elapsed(),
        if nudged { " (after a nudge)" } else { "" }
    );

    // In order, and all decrypt.
    let ids = timeline_ids(&bob_raw, room.as_str(), 100).await;
    let order: Vec<&String> = ids
        .iter()
        .filter(|i| sent.iter().any(|(e, _)| e.as_str() == i.as_str()))
        .collect();
    let expected: Vec<String> = sent.iter().map(|(e, _)| e.to_string()).collect();
    assert_eq!(
        order,
        expected.iter().collect::<Vec<_>>(),
        "B's timeline order differs from send order"
    );
    for (ev, text) in &sent {
        assert_decrypts(&bob, &room, ev, text).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_state_converges() {
    converge_after_a_split("12").await;
}

/// The same in a version 1 room, whose state resolution is the first
/// algorithm (and whose events carry their IDs and references' hashes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_state_converges_in_version_1() {
    converge_after_a_split("1").await;
}

async fn converge_after_a_split(version: &str) {
    let a = FedServer::start().await;
    let mut b = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let bob = Raw::register(&b, "bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": version }))
        .await;
    // Bob gets the power to rename the room too. (Set after creation: from
    // room version 12 the creator may not be listed in `users`, before it
    // must be.)
    let pl_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room));
    let mut power = alice.ok("GET", &pl_path, None).await;
    power["users"][bob.user_id.as_str()] = json!(100);
    alice.ok("PUT", &pl_path, Some(power)).await;
    join_over(&bob, &room, a.server_name()).await;
    wait_joined_raw(&alice, &room, &bob.user_id).await;

    // Split: B refuses A, and will not send to it.
    let only_itself = b.server_name().to_owned();
    b.restart_with_allowed(Some(&only_itself)).await;
    let name_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room));
    let (ra, rb) = tokio::join!(
        alice.call("PUT", &name_path, Some(json!({ "name": "A" }))),
        bob.call("PUT", &name_path, Some(json!({ "name": "B" }))),
    );
    assert_eq!(ra.status, 200, "alice sets the name: {}", ra.body);
    assert_eq!(rb.status, 200, "bob sets the name: {}", rb.body);
    // The split holds: neither name crossed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(alice.ok("GET", &name_path, None).await["name"], "A");
    assert_eq!(bob.ok("GET", &name_path, None).await["name"], "B");

    // Heal. Each server gets the other's name event as the backlog is sent
    // (B at its start, A when B reaches it), and resolves the fork at once:
    // both must agree before anything else is sent.
    b.restart_with_allowed(None).await;
    let (ea, eb) = (
        ra.body["event_id"].as_str().expect("event id").to_owned(),
        rb.body["event_id"].as_str().expect("event id").to_owned(),
    );
    let deadline = Instant::now() + FEDERATION_WAIT;
    loop {
        let a_has = alice
            .call(
                "GET",
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&eb)),
                None,
            )
            .await;
        let b_has = bob
            .call(
                "GET",
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&ea)),
                None,
            )
            .await;
        if a_has.status == 200 && b_has.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the name events did not cross");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (na, nb) = (
        alice.ok("GET", &name_path, None).await["name"].clone(),
        bob.ok("GET", &name_path, None).await["name"].clone(),
    );
    assert_eq!(na, nb, "the servers resolved the fork differently");

    // Then make both sides talk.
    assert_eq!(
        alice.send_text(&room, "a1", "after the split, from A").await.status,
        200
    );
    assert_eq!(bob.send_text(&room, "b1", "after the split, from B").await.status, 200);
    wait_plain_text(&bob, &room, "after the split, from A").await;
    wait_plain_text(&alice, &room, "after the split, from B").await;

    let deadline = Instant::now() + FEDERATION_WAIT;
    loop {
        let na = alice.call("GET", &name_path, None).await;
        let nb = bob.call("GET", &name_path, None).await;
        let (na, nb) = (na.body["name"].clone(), nb.body["name"].clone());
        if na == nb && (na == "A" || na == "B") {
            eprintln!("both servers settled on the name {na}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "room names did not converge: A has {na}, B has {nb}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `raw` joins `room` through `server` (a room held by another server).
pub(crate) async fn join_over(raw: &Raw, room: &str, server: &str) {
    raw.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}?server_name={}", enc(room), enc(server)),
        Some(json!({})),
    )
    .await;
}

/// Polls `check` every 300 ms until it holds, for at most [`FEDERATION_WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + FEDERATION_WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until `raw`'s server lists `user` as joined to `room`.
pub(crate) async fn wait_joined_raw(raw: &Raw, room: &str, user: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room));
    eventually(&format!("{user} to join {room} at {}", raw.base), || async {
        let r = raw.call("GET", &path, None).await;
        r.status == 200 && !r.body["joined"][user].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input() {
    // `trusted` is on A's allow-list, `stranger` is not; both publish keys.
    let trusted = FakeServer::start().await;
    let stranger = FakeServer::start().await;
    let mut a = FedServer::start_with(FedOpts {
        allowed: Some(trusted.name.clone()),
        ..FedOpts::default()
    })
    .await;
    let alice = Raw::register(&a, "alice").await;
    let dest = &a.server_name().to_owned();
    let profile_uri = format!("/_matrix/federation/v1/query/profile?user_id={}", enc(&alice.user_id));

    // No signature at all.
    let (status, body) = raw_federation("GET", dest, &profile_uri, None, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "{body}"
    );
    let (status, body) = raw_federation(
        "PUT",
        dest,
        "/_matrix/federation/v1/send/unsigned",
        None,
        Some(json!({ "origin": trusted.name, "origin_server_ts": now_ms(), "pdus": [] })),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "{body}"
    );

    // Signed with a key the origin never published.
    let forged = trusted.x_matrix_forged("GET", &profile_uri, dest, None);
    let (status, body) = raw_federation("GET", dest, &profile_uri, Some(forged), None).await;
    assert_eq!(status, 401, "forged signature: {body}");

    // Signed for another destination.
    let elsewhere = trusted.x_matrix("GET", &profile_uri, "localhost:1", None);
    let (status, body) = raw_federation("GET", dest, &profile_uri, Some(elsewhere), None).await;
    assert_eq!(status, 401, "signed for another destination: {body}");

    // Correctly signed, but not on the allow-list.
    let (status, body) = stranger.request("GET", dest, &profile_uri, None).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");

    // Correctly signed and allowed: A fetched the fake server's key and answers.
    let (status, body) = trusted.request("GET", dest, &profile_uri, None).await;
    assert_eq!(status, 200, "a well-signed request from an allowed server: {body}");

    // The allow-list is read at start: lifted, then put back (the network
    // split of `conflicting_state_converges` relies on this).
    a.restart_with_allowed(None).await;
    let (status, body) = stranger.request("GET", dest, &profile_uri, None).await;
    assert_eq!(status, 200, "no allow-list, anyone may talk: {body}");
    a.restart_with_allowed(Some(&trusted.name)).await;
    let (status, body) = stranger.request("GET", dest, &profile_uri, None).await;
    assert_eq!(status, 403, "allow-list back: {body}");

    // Forged events into a public room on A that the fake server is not in.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(alice.send_text(&room, "t1", "the real history").await.status, 200);
    let before = timeline_ids(&alice, &room, 50).await;
    let state = alice
        .ok("GET", &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), None)
        .await;
    let state_id = |ty: &str| -> String {
        state
            .as_array()
            .and_then(|s| s.iter().find(|e| e["type"] == ty && e["state_key"] == ""))
            .and_then(|e| e["event_id"].as_str())
            .unwrap_or_else(|| panic!("no {ty} in {state}"))
            .to_owned()
    };
    let version = state
        .as_array()
        .and_then(|s| s.iter().find(|e| e["type"] == "m.room.create"))
        .and_then(|e| e["content"]["room_version"].as_str())
        .unwrap_or("1")
        .to_owned();
    // A message's auth events: create, power levels, and the sender's
    // membership, which the fake user does not have.
    let mut auth_events = vec![state_id("m.room.power_levels")];
    // From room version 12 the create event is implied by the room ID.
    if !matches!(version.as_str(), "12") {
        auth_events.insert(0, state_id("m.room.create"));
    }
    let pdu = |body: &str| {
        json!({
            "room_id": room,
            "sender": trusted.user("mallory"),
            "origin_server_ts": now_ms(),
            "type": "m.room.message",
            "content": { "msgtype": "m.text", "body": body },
            "depth": 100,
            "prev_events": [before.last().expect("a last event")],
            "auth_events": auth_events,
        })
    };
    let (bad_sig, bad_sig_pdu) = trusted.sign_pdu_forged(pdu("bad signature"), &version);
    let (bad_hash, mut bad_hash_pdu) = trusted.sign_pdu(pdu("bad hash"), &version);
    // The content is outside the signature (redacted away) but inside the hash.
    bad_hash_pdu["content"]["body"] = json!("tampered after hashing");
    let (not_member, not_member_pdu) = trusted.sign_pdu(pdu("from a stranger to the room"), &version);

    let txn = json!({
        "origin": trusted.name,
        "origin_server_ts": now_ms(),
        "pdus": [bad_sig_pdu, bad_hash_pdu, not_member_pdu],
    });
    let (status, body) = trusted
        .request("PUT", dest, "/_matrix/federation/v1/send/hostile1", Some(txn))
        .await;
    assert_eq!(status, 200, "a transaction is accepted as a whole: {body}");
    let without_error: Vec<String> = [
        ("bad signature", &bad_sig),
        ("bad content hash from a non-member", &bad_hash),
        ("sender not in the room", &not_member),
    ]
    .into_iter()
    .filter(|(_, id)| !body["pdus"][id.as_str()]["error"].is_string())
    .map(|(what, id)| format!("{what} ({id})"))
    .collect();
    assert!(
        without_error.is_empty(),
        "PDUs that must come back with an error: {without_error:?}; response: {body}"
    );

    // Nothing reached the room.
    let after = timeline_ids(&alice, &room, 50).await;
    assert_eq!(before, after, "the room's timeline changed");
    let page = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            None,
        )
        .await;
    let text = page.to_string();
    for s in ["bad signature", "bad hash", "tampered", "stranger to the room"] {
        assert!(!text.contains(s), "forged content {s:?} visible in the room");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_interop() {
    let Some(syn) = SynapseServer::start().await else {
        return;
    };
    let a = FedServer::start().await;
    let syn_ts = syn.as_test_server();

    // Synapse and Missive fetch each other's keys.
    let keys = test_ca()
        .client()
        .get(format!("{}/_matrix/key/v2/server", syn.fed_url()))
        .send()
        .await
        .expect("synapse keys over TLS");
    assert_eq!(keys.status(), 200);
    let keys: Value = keys.json().await.expect("keys json");
    assert_eq!(keys["server_name"], syn.server_name());

    let alice = sdk_client(&syn_ts, "alice").await;
    let bob = sdk_client(&a, "bob").await;
    let alice_raw = raw_for(&syn_ts, &alice);
    let bob_raw = raw_for(&a, &bob);
    assert_eq!(alice_raw.user_id, syn.user("alice"));

    // 1. A plain room on Synapse, bob@Missive invited.
    let plain = alice_raw
        .create_room(json!({ "invite": [bob_raw.user_id.clone()] }))
        .await;
    let plain_id: OwnedRoomId = plain.as_str().try_into().expect("room id");
    accept_invite(&bob, &plain_id).await;
    wait_joined_raw(&alice_raw, &plain, &bob_raw.user_id).await;
    assert_eq!(
        alice_raw.send_text(&plain, "p1", "plain from synapse").await.status,
        200
    );
    wait_plain_text(&bob_raw, &plain, "plain from synapse").await;
    assert_eq!(bob_raw.send_text(&plain, "p2", "plain from missive").await.status, 200);
    wait_plain_text(&alice_raw, &plain, "plain from missive").await;

    // 2. An encrypted room on Synapse.
    let room = encrypted_room(&alice, vec![user_id(&bob_raw.user_id)]).await;
    accept_invite(&bob, &room).await;
    // Synapse sends the room summary (joined member count) only to clients
    // that lazy-load members: ask for the member list instead.
    wait_joined_raw(&alice_raw, room.as_str(), &bob_raw.user_id).await;
    sync_all(&[&alice]).await;
    let m1 = send(&alice, &room, "encrypted from synapse").await;
    assert_decrypts(&bob, &room, &m1, "encrypted from synapse").await;
    let m2 = send(&bob, &room, "encrypted from missive").await;
    assert_decrypts(&alice, &room, &m2, "encrypted from missive").await;

    // 3. The reverse: an encrypted room on Missive, alice@Synapse joins.
    let room = encrypted_room(&bob, vec![user_id(&alice_raw.user_id)]).await;
    accept_invite(&alice, &room).await;
    wait_joined(&bob, &room, 2).await;
    let m3 = send(&bob, &room, "missive room, from missive").await;
    assert_decrypts(&alice, &room, &m3, "missive room, from missive").await;
    let m4 = send(&alice, &room, "missive room, from synapse").await;
    assert_decrypts(&bob, &room, &m4, "missive room, from synapse").await;
}

/// A user hands a third party an OpenID token; the third party learns who
/// it stands for from the federation API, and nothing from a wrong token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_tokens() {
    let a = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let bob = Raw::register(&a, "bob").await;
    let dest = a.server_name().to_owned();
    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", enc(&alice.user_id));
    let got = alice.ok("POST", &path, Some(json!({}))).await;
    assert_eq!(got["token_type"], "Bearer");
    assert_eq!(got["matrix_server_name"], dest.as_str());
    assert!(got["expires_in"].as_u64().is_some_and(|s| s > 0));
    let token = got["access_token"].as_str().expect("token").to_owned();

    // Only for oneself.
    let r = bob.call("POST", &path, Some(json!({}))).await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));

    let (status, body) = raw_federation(
        "GET",
        &dest,
        &format!("/_matrix/federation/v1/openid/userinfo?access_token={}", enc(&token)),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body["sub"].as_str()),
        (200, Some(alice.user_id.as_str())),
        "{body}"
    );
    let (status, body) = raw_federation(
        "GET",
        &dest,
        "/_matrix/federation/v1/openid/userinfo?access_token=not-a-token",
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN")),
        "{body}"
    );
    // The access token is not an OpenID token.
    let (status, _) = raw_federation(
        "GET",
        &dest,
        &format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={}",
            enc(&alice.token)
        ),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
}

/// Another server sees a space's public children, and only learns the IDs
/// of those it may not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_space_hierarchy() {
    let fake = FakeServer::start().await;
    let a = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let dest = a.server_name().to_owned();
    let space = alice
        .create_room(json!({ "preset": "public_chat", "name": "Ministère", "creation_content": { "type": "m.space" } }))
        .await;
    let open = alice
        .create_room(json!({ "preset": "public_chat", "name": "Ouvert" }))
        .await;
    let closed = alice
        .create_room(json!({ "preset": "private_chat", "name": "Fermé" }))
        .await;
    for child in [&open, &closed] {
        alice
            .ok(
                "PUT",
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                    enc(&space),
                    enc(child)
                ),
                Some(json!({ "via": [dest.clone()] })),
            )
            .await;
    }
    let (status, body) = fake
        .request(
            "GET",
            &dest,
            &format!("/_matrix/federation/v1/hierarchy/{}", enc(&space)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"]["room_id"], space.as_str());
    assert_eq!(
        body["room"]["children_state"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    let children: Vec<&str> = body["children"]
        .as_array()
        .expect("children")
        .iter()
        .filter_map(|c| c["room_id"].as_str())
        .collect();
    assert_eq!(children, vec![open.as_str()], "{body}");
    assert_eq!(body["inaccessible_children"], json!([closed]), "{body}");

    // The private room itself is not shown to a server with nobody in it.
    let (status, body) = fake
        .request(
            "GET",
            &dest,
            &format!("/_matrix/federation/v1/hierarchy/{}", enc(&closed)),
            None,
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
}

/// The signing key is replaced with `missive admin rotate-signing-key`: the
/// new key signs, the old one stays published as expired, and another
/// server in a shared room takes the new events without a pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation() {
    let mut a = FedServer::start().await;
    let b = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let bob = Raw::register(&b, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_over(&bob, &room, a.server_name()).await;
    assert_eq!(
        alice.send_text(&room, "k1", "signed by the first key").await.status,
        200
    );
    wait_plain_text(&bob, &room, "signed by the first key").await;

    let keys_url = format!("{}/_matrix/key/v2/server", a.fed_url());
    let before: Value = test_ca()
        .client()
        .get(&keys_url)
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    let old_id = before["verify_keys"]
        .as_object()
        .expect("keys")
        .keys()
        .next()
        .expect("a key")
        .clone();

    a.stop().await;
    let out = a.admin(&["rotate-signing-key"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    a.start_again().await;

    let after: Value = test_ca()
        .client()
        .get(&keys_url)
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    let new_ids: Vec<&String> = after["verify_keys"].as_object().expect("keys").keys().collect();
    assert_eq!(new_ids.len(), 1, "{after}");
    assert_ne!(new_ids[0], &old_id, "{after}");
    assert!(
        after["old_verify_keys"][&old_id]["expired_ts"].as_u64().is_some(),
        "{after}"
    );
    assert_eq!(
        after["old_verify_keys"][&old_id]["key"],
        before["verify_keys"][&old_id]["key"]
    );

    assert_eq!(alice.send_text(&room, "k2", "signed by the new key").await.status, 200);
    wait_plain_text(&bob, &room, "signed by the new key").await;
    assert_eq!(bob.send_text(&room, "k3", "and back").await.status, 200);
    wait_plain_text(&alice, &room, "and back").await;
}

/// Malformed requests from a well-authenticated server get the spec's
/// errors, never a server error, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_federation_requests() {
    let fake = FakeServer::start().await;
    let a = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(alice.send_text(&room, "m1", "before").await.status, 200);
    let dest = a.server_name().to_owned();
    let before = timeline_ids(&alice, &room, 50).await;

    // A transaction of junk: each PDU and EDU is refused on its own.
    let (status, body) = fake
        .request(
            "PUT",
            &dest,
            "/_matrix/federation/v1/send/junk1",
            Some(json!({
                "origin": fake.name,
                "origin_server_ts": now_ms(),
                "pdus": [42, "text", {}, { "room_id": "!nowhere:elsewhere", "type": "m.room.message" },
                         { "room_id": room, "type": "m.room.message", "content": "not an object" }],
                "edus": [7, { "edu_type": "m.typing", "content": "nope" }, { "edu_type": "m.unknown" },
                         { "edu_type": "m.receipt", "content": { (room.clone()): { "m.read": 5 } } }],
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Over the spec's bounds.
    let many: Vec<Value> = (0..51).map(|_| json!({})).collect();
    let (status, body) = fake
        .request(
            "PUT",
            &dest,
            "/_matrix/federation/v1/send/junk2",
            Some(json!({ "origin": fake.name, "origin_server_ts": now_ms(), "pdus": many })),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    // Another origin in the body than the one that signed.
    let (status, _) = fake
        .request(
            "PUT",
            &dest,
            "/_matrix/federation/v1/send/junk3",
            Some(json!({ "origin": "elsewhere.example", "origin_server_ts": now_ms(), "pdus": [] })),
        )
        .await;
    assert_eq!(status, 403);
    // Wrong types.
    let (status, body) = fake
        .request(
            "PUT",
            &dest,
            "/_matrix/federation/v1/send/junk4",
            Some(json!({ "origin": fake.name, "origin_server_ts": "yesterday", "pdus": {} })),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");

    // Joins: unknown room, another server's user, garbage event.
    let fake_user = format!("@mallory:{}", fake.name);
    let (status, _) = fake
        .request(
            "GET",
            &dest,
            &format!(
                "/_matrix/federation/v1/make_join/{}/{}?ver=12",
                enc("!nowhere:elsewhere"),
                enc(&fake_user)
            ),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = fake
        .request(
            "GET",
            &dest,
            &format!(
                "/_matrix/federation/v1/make_join/{}/{}?ver=12",
                enc(&room),
                enc(&alice.user_id)
            ),
            None,
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = fake
        .request(
            "PUT",
            &dest,
            &format!("/_matrix/federation/v2/send_join/{}/{}", enc(&room), enc("$nothing")),
            Some(json!({ "type": "m.room.member", "content": 3 })),
        )
        .await;
    assert!(status == 400 || status == 403, "{status} {body}");
    let (status, _) = fake
        .request(
            "GET",
            &dest,
            &format!("/_matrix/federation/v1/event/{}", enc("$nothing")),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = fake
        .request(
            "GET",
            &dest,
            &format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={}",
                enc("!nowhere:elsewhere"),
                enc("$x")
            ),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Nothing changed, and the server still works.
    assert_eq!(timeline_ids(&alice, &room, 50).await, before);
    assert_eq!(alice.send_text(&room, "m2", "after").await.status, 200);
}

/// Two processes of one server on PostgreSQL share its federation queues:
/// every event sent on either reaches the other server exactly once, in
/// the order it was sent, and the other server's events reach both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_federation_queues() {
    if std::env::var("MISSIVE_TEST_POSTGRES").map_or(true, |v| v.is_empty()) {
        eprintln!("skipped: several processes need PostgreSQL (set MISSIVE_TEST_POSTGRES)");
        return;
    }
    let a = FedServer::start().await;
    let a2 = a.start_sibling().await;
    let b = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let carol = Raw::register(&a2, "carol").await;
    let bob = Raw::register(&b, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    carol
        .ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(json!({})),
        )
        .await;
    join_over(&bob, &room, a.server_name()).await;

    let mut sent = vec![];
    for i in 0..10 {
        let (who, name) = if i % 2 == 0 {
            (&alice, "alice")
        } else {
            (&carol, "carol")
        };
        let body = format!("{name} {i}");
        let r = who.send_text(&room, &format!("t{i}"), &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        sent.push(body);
    }
    wait_plain_text(&bob, &room, "carol 9").await;
    let seen: Vec<String> = bob
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&room)),
            None,
        )
        .await["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .rev()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(seen, sent, "bob's server got each event once, in order");

    assert_eq!(bob.send_text(&room, "b1", "from B").await.status, 200);
    wait_plain_text(&alice, &room, "from B").await;
    wait_plain_text(&carol, &room, "from B").await;
}

/// Joining a room held elsewhere brings its recent history along, shown
/// as the room's history visibility allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_comes_with_a_join() {
    let a = FedServer::start().await;
    let b = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let bob = Raw::register(&b, "bob").await;
    let shared = alice.create_room(json!({ "preset": "public_chat" })).await;
    let joined_only = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }],
        }))
        .await;
    for room in [&shared, &joined_only] {
        for i in 0..5 {
            assert_eq!(
                alice
                    .send_text(room, &format!("h{i}"), &format!("history {i}"))
                    .await
                    .status,
                200
            );
        }
        join_over(&bob, room, a.server_name()).await;
    }
    let bodies = |chunk: &Value| -> Vec<String> {
        chunk["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .rev()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };
    let path = |room: &str| format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(room));
    let got = bob.ok("GET", &path(&shared), None).await;
    let want: Vec<String> = (0..5).map(|i| format!("history {i}")).collect();
    assert_eq!(bodies(&got), want, "{got}");
    let got = bob.ok("GET", &path(&joined_only), None).await;
    assert!(bodies(&got).is_empty(), "history hidden before the join: {got}");
}
