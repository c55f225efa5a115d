//! What `/sync` must carry for a client to stay right: device-list changes
//! of new and renamed devices, nothing from ignored users, the members of
//! a gapped timeline's senders, the room's current state whatever the
//! history visibility hid, the user's own leave, and each timeline event's
//! `unsigned.membership`.

use std::time::{Duration, Instant};

use matrix_sdk::{config::SyncSettings, ruma::OwnedUserId};
use serde_json::{Value, json};

use crate::common::{Raw, TestServer, enc, sdk_login};

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

/// A public room created by `owner` with one more state event.
async fn public_room_with(owner: &Raw, kind: &str, content: Value) -> String {
    owner
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": kind, "content": content }],
        }))
        .await
}

fn next_batch(s: &Value) -> String {
    s["next_batch"].as_str().unwrap().to_owned()
}

async fn join(user: &Raw, room: &str) {
    user.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(room)),
        Some(json!({})),
    )
    .await;
}

/// Incremental syncs until `check` holds (or 15 s pass); the last response.
async fn sync_until_raw(user: &Raw, since: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut since = since.to_owned();
    loop {
        let s = user.sync(Some(&since), 1000).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "no sync showed {what}; last: {s}");
        since = next_batch(&s);
    }
}

fn changed(s: &Value, user: &str) -> bool {
    s["device_lists"]["changed"]
        .as_array()
        .is_some_and(|c| c.iter().any(|u| u == user))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_and_renamed_devices_reach_those_who_share_a_room() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    // Encrypted: clients track the devices of those they share such a room with.
    let room = public_room_with(
        &alice,
        "m.room.encryption",
        json!({ "algorithm": "m.megolm.v1.aes-sha2" }),
    )
    .await;
    join(&bob, &room).await;
    let since = next_batch(&alice.sync(None, 0).await);

    // A new device, before it has any keys.
    let phone = Raw::login(&server, "bob").await;
    let s = sync_until_raw(&alice, &since, "bob's new device", |s| changed(s, &bob.user_id)).await;
    let since = next_batch(&s);
    let me = phone.ok("GET", "/_matrix/client/v3/account/whoami", None).await;
    let device = me["device_id"].as_str().unwrap().to_owned();

    // A new name.
    phone
        .ok(
            "PUT",
            &format!("/_matrix/client/v3/devices/{}", enc(&device)),
            Some(json!({ "display_name": "Bob's phone" })),
        )
        .await;
    let s = sync_until_raw(&alice, &since, "bob's renamed device", |s| changed(s, &bob.user_id)).await;
    // The same name again is no change.
    let since = next_batch(&s);
    phone
        .ok(
            "PUT",
            &format!("/_matrix/client/v3/devices/{}", enc(&device)),
            Some(json!({ "display_name": "Bob's phone" })),
        )
        .await;
    let s = alice.sync(Some(&since), 500).await;
    assert!(!changed(&s, &bob.user_id), "{s}");

    // Real clients: Alice's learns of Bob's new device, then of its new
    // name, which only a device-list change makes it ask for again.
    let alice_sdk = sdk_login(&server, "alice").await;
    let bob_sdk = sdk_login(&server, "bob").await;
    let bob_id = OwnedUserId::try_from(bob.user_id.as_str()).unwrap();
    let laptop = bob_sdk.device_id().unwrap().to_owned();
    let name_seen = |want: Option<&'static str>| {
        let (alice_sdk, bob_id, laptop) = (alice_sdk.clone(), bob_id.clone(), laptop.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                alice_sdk
                    .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
                    .await
                    .unwrap();
                let device = alice_sdk.encryption().get_device(&bob_id, &laptop).await.unwrap();
                if let Some(d) = device
                    && (want.is_none() || d.display_name() == want)
                {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "alice's client never saw bob's laptop as {want:?}"
                );
            }
        }
    };
    name_seen(None).await;
    let bob_laptop = Raw {
        base: server.url.clone(),
        http: reqwest::Client::new(),
        token: bob_sdk.access_token().unwrap(),
        user_id: bob.user_id.clone(),
    };
    bob_laptop
        .ok(
            "PUT",
            &format!("/_matrix/client/v3/devices/{}", enc(laptop.as_str())),
            Some(json!({ "display_name": "Bob's laptop" })),
        )
        .await;
    name_seen(Some("Bob's laptop")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_users_are_not_heard() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let mallory = Raw::register(&server, "mallory").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    join(&mallory, &room).await;
    alice.send_text(&room, "a1", "from alice").await;

    // Bob ignores Mallory, with a real client.
    let sdk = sdk_login(&server, "bob").await;
    let mallory_id = OwnedUserId::try_from(mallory.user_id.as_str()).unwrap();
    sdk.account().ignore_user(&mallory_id).await.unwrap();
    let since = next_batch(&bob.sync(None, 0).await);

    mallory.send_text(&room, "m1", "from mallory").await;
    let hidden = mallory.send_text(&room, "m2", "more from mallory").await.body["event_id"].clone();
    // Nothing of Mallory's reaches Bob: no room entry at all.
    let s = bob.sync(Some(&since), 1000).await;
    assert!(s["rooms"]["join"].get(&room).is_none(), "{s}");
    // /messages and /event hide them too; state (her membership) stays.
    let page = bob.ok("GET", &room_path(&room, "messages?dir=b&limit=50"), None).await;
    let chunk = page["chunk"].as_array().unwrap();
    assert!(
        chunk
            .iter()
            .all(|e| e["sender"] != mallory.user_id || e.get("state_key").is_some()),
        "{page}"
    );
    assert!(chunk.iter().any(|e| e["content"]["body"] == "from alice"));
    assert!(
        chunk
            .iter()
            .any(|e| e["sender"] == mallory.user_id && e["type"] == "m.room.member")
    );
    let r = bob
        .call(
            "GET",
            &room_path(&room, &format!("event/{}", enc(hidden.as_str().unwrap()))),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    // No notification from her.
    let n = bob.ok("GET", "/_matrix/client/v3/notifications", None).await;
    assert!(
        n["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["event"]["sender"] != mallory.user_id),
        "{n}"
    );
    // Alice still hears her.
    let page = alice
        .ok("GET", &room_path(&room, "messages?dir=b&limit=50"), None)
        .await;
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["body"] == "from mallory")
    );

    // Nor through what other events bundle: a thread's latest reply, or
    // the redaction that emptied a message.
    let root = alice.send_text(&room, "root", "a thread").await.body["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    mallory
        .ok(
            "PUT",
            &room_path(&room, "send/m.room.message/m-reply"),
            Some(json!({
                "msgtype": "m.text", "body": "mallory in the thread",
                "m.relates_to": { "rel_type": "m.thread", "event_id": root },
            })),
        )
        .await;
    let ev = bob
        .ok("GET", &room_path(&room, &format!("event/{}", enc(&root))), None)
        .await;
    assert!(ev["unsigned"]["m.relations"].get("m.thread").is_none(), "{ev}");
    let pl_path = room_path(&room, "state/m.room.power_levels/");
    let mut power = alice.ok("GET", &pl_path, None).await;
    power["users"][mallory.user_id.as_str()] = json!(50);
    alice.ok("PUT", &pl_path, Some(power)).await;
    let own = alice.send_text(&room, "own", "to be removed").await.body["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    mallory
        .ok(
            "PUT",
            &room_path(&room, &format!("redact/{}/m-redact", enc(&own))),
            Some(json!({ "reason": "something bob must not read" })),
        )
        .await;
    let ev = bob
        .ok("GET", &room_path(&room, &format!("event/{}", enc(&own))), None)
        .await;
    assert_eq!(ev["content"], json!({}));
    assert!(ev["unsigned"].get("redacted_because").is_none(), "{ev}");

    // Her invitations never arrive, in full and incremental syncs.
    let other = mallory.create_room(json!({})).await;
    mallory
        .ok(
            "POST",
            &room_path(&other, "invite"),
            Some(json!({ "user_id": bob.user_id })),
        )
        .await;
    let s = bob.sync(Some(&since), 500).await;
    assert!(s["rooms"]["invite"].get(&other).is_none(), "{s}");
    let s = bob.sync(None, 0).await;
    assert!(s["rooms"]["invite"].get(&other).is_none(), "{s}");
    // Alice's do.
    let third = alice.create_room(json!({})).await;
    alice
        .ok(
            "POST",
            &room_path(&third, "invite"),
            Some(json!({ "user_id": bob.user_id })),
        )
        .await;
    let s = bob.sync(None, 0).await;
    assert!(s["rooms"]["invite"][&third].is_object(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_members_of_a_gapped_timeline_are_sent() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let dave = Raw::register(&server, "dave").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    join(&dave, &room).await;
    // The first sync's timeline shows none of their joins.
    alice.send_text(&room, "a1", "one").await;
    alice.send_text(&room, "a2", "two").await;
    let filter = json!({ "room": {
        "timeline": { "limit": 2 },
        "state": { "lazy_load_members": true },
    }})
    .to_string();
    let first = alice.sync_filtered(None, 0, &filter).await;
    let since = next_batch(&first);

    // More than the limit, the last from Dave: a gapped sync carries his
    // member event although it did not change since the last sync.
    for i in 0..5 {
        bob.send_text(&room, &format!("b{i}"), "filler").await;
    }
    dave.send_text(&room, "d1", "dave speaks").await;
    let s = alice.sync_filtered(Some(&since), 0, &filter).await;
    let joined = &s["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    let members: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert!(members.contains(&dave.user_id.as_str()), "{joined}");
    assert!(members.contains(&bob.user_id.as_str()), "{joined}");

    // Then not again while they do not change.
    let since = next_batch(&s);
    dave.send_text(&room, "d2", "again").await;
    let s = alice.sync_filtered(Some(&since), 1000, &filter).await;
    let joined = &s["rooms"]["join"][&room];
    assert!(
        joined["state"]["events"].as_array().unwrap().is_empty(),
        "redundant members: {joined}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_state_own_leave_and_membership_at_each_event() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let carol = Raw::register(&server, "carol").await;
    let room = public_room_with(
        &alice,
        "m.room.history_visibility",
        json!({ "history_visibility": "joined" }),
    )
    .await;
    join(&bob, &room).await;
    let first = bob.send_text(&room, "b1", "before carol").await.body["event_id"].clone();
    // Bob leaves; he still gets his leave in his sync, though `joined`
    // visibility hides everything after it.
    let since = next_batch(&bob.sync(None, 0).await);
    bob.ok("POST", &room_path(&room, "leave"), Some(json!({}))).await;
    let s = bob.sync(Some(&since), 5000).await;
    let left = &s["rooms"]["leave"][&room];
    let events = left["timeline"]["events"].as_array().unwrap();
    let own = events.last().unwrap_or_else(|| panic!("no own leave: {left}"));
    assert_eq!(own["content"]["membership"], "leave");
    assert_eq!(own["unsigned"]["membership"], "leave");
    assert!(left["state"]["events"].is_array());

    // Carol joins while Bob is away, then many messages; Bob joins again:
    // Carol's join is current state, so his timeline shows it, though he
    // could not see it when it happened.
    join(&carol, &room).await;
    for i in 0..15 {
        alice.send_text(&room, &format!("a{i}"), "while bob was away").await;
    }
    join(&bob, &room).await;
    let s = bob.sync(Some(&next_batch(&s)), 5000).await;
    let joined = &s["rooms"]["join"][&room];
    let timeline = joined["timeline"]["events"].as_array().unwrap();
    let state = joined["state"]["events"].as_array().unwrap();
    let carol_join = |e: &&Value| e["type"] == "m.room.member" && e["state_key"] == carol.user_id;
    assert!(
        timeline.iter().any(|e| carol_join(&e)) || state.iter().any(|e| carol_join(&e)),
        "carol's join is nowhere: {joined}"
    );
    assert!(
        timeline.iter().all(|e| e["content"]["body"] != "while bob was away"),
        "{joined}"
    );

    // unsigned.membership: Bob's membership after each event.
    let page = bob.ok("GET", &room_path(&room, "messages?dir=b&limit=50"), None).await;
    for e in page["chunk"].as_array().unwrap() {
        let m = e["unsigned"]["membership"]
            .as_str()
            .unwrap_or_else(|| panic!("no membership: {e}"));
        if e["event_id"] == first {
            assert_eq!(m, "join");
        }
    }
    let ev = bob
        .ok(
            "GET",
            &room_path(&room, &format!("event/{}", enc(first.as_str().unwrap()))),
            None,
        )
        .await;
    assert_eq!(ev["unsigned"]["membership"], "join");
    let last = alice.send_text(&room, "a-last", "welcome back").await.body["event_id"].clone();
    let ev = alice
        .ok(
            "GET",
            &room_path(&room, &format!("event/{}", enc(last.as_str().unwrap()))),
            None,
        )
        .await;
    assert_eq!(ev["unsigned"]["membership"], "join");
    // A world-readable room's messages carry `leave` for a non-member.
    let open = public_room_with(
        &alice,
        "m.room.history_visibility",
        json!({ "history_visibility": "world_readable" }),
    )
    .await;
    let m = alice.send_text(&open, "o1", "for everyone").await.body["event_id"].clone();
    let ev = carol
        .ok(
            "GET",
            &room_path(&open, &format!("event/{}", enc(m.as_str().unwrap()))),
            None,
        )
        .await;
    assert_eq!(ev["unsigned"]["membership"], "leave");
    // And its members can be listed by anyone (room previews).
    let members = carol.ok("GET", &room_path(&open, "joined_members"), None).await;
    assert!(members["joined"][&alice.user_id].is_object());
    let r = carol.call("GET", &room_path(&room, "joined_members"), None).await;
    assert_eq!(r.status, 200, "carol is a member: {}", r.body);
    bob.ok("POST", &room_path(&room, "leave"), Some(json!({}))).await;
    let r = bob.call("GET", &room_path(&room, "joined_members"), None).await;
    assert_eq!(r.status, 403, "former members are refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitee_who_never_joined_reads_nothing() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    // Shared history: what came before a join is the joiner's to read.
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Cabinet" }))
        .await;
    let secret = alice.send_text(&room, "s1", "the secret").await.body["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .ok(
            "POST",
            &room_path(&room, "invite"),
            Some(json!({ "user_id": bob.user_id })),
        )
        .await;
    let invite = alice
        .ok(
            "GET",
            &room_path(
                &room,
                &format!("state/m.room.member/{}?format=event", enc(&bob.user_id)),
            ),
            None,
        )
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The invite's context would be the room's state: not before a join.
    let r = bob
        .call("GET", &room_path(&room, &format!("context/{}", enc(&invite))), None)
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let since = next_batch(&bob.sync(None, 0).await);

    // Declined: the sync says so with the leave alone, no state.
    bob.ok("POST", &room_path(&room, "leave"), Some(json!({}))).await;
    let s = bob.sync(Some(&since), 5000).await;
    let left = &s["rooms"]["leave"][&room];
    let timeline = left["timeline"]["events"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "{left}");
    assert_eq!(timeline[0]["content"]["membership"], "leave");
    assert_eq!(left["state"]["events"], json!([]), "{left}");
    // Nor the history, after.
    let page = bob.ok("GET", &room_path(&room, "messages?dir=b&limit=50"), None).await;
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["content"]["body"] != "the secret"),
        "{page}"
    );
    let r = bob
        .call("GET", &room_path(&room, &format!("context/{}", enc(&secret))), None)
        .await;
    assert_eq!(r.status, 404);

    // Joining is what opens the shared history.
    alice
        .ok(
            "POST",
            &room_path(&room, "invite"),
            Some(json!({ "user_id": bob.user_id })),
        )
        .await;
    join(&bob, &room).await;
    let page = bob.ok("GET", &room_path(&room, "messages?dir=b&limit=50"), None).await;
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["body"] == "the secret")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lazy_loading_response_is_answered_again_in_full() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let dave = Raw::register(&server, "dave").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&dave, &room).await;
    alice.send_text(&room, "a1", "one").await;
    alice.send_text(&room, "a2", "two").await;
    let filter = json!({ "room": { "timeline": { "limit": 2 }, "state": { "lazy_load_members": true } } }).to_string();
    let since = next_batch(&alice.sync_filtered(None, 0, &filter).await);
    dave.send_text(&room, "d1", "dave speaks").await;
    let dave_member = |s: &Value| {
        s["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["state_key"] == dave.user_id))
    };
    let first = alice.sync_filtered(Some(&since), 0, &filter).await;
    assert!(dave_member(&first), "{first}");
    // The client never got that answer and asks again from the same token.
    let again = alice.sync_filtered(Some(&since), 0, &filter).await;
    assert!(dave_member(&again), "a retried sync lacks the sender's member: {again}");
    // Once it moves on, the member is not repeated.
    dave.send_text(&room, "d2", "again").await;
    let next = alice.sync_filtered(Some(&next_batch(&again)), 1000, &filter).await;
    assert!(!dave_member(&next), "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_skips_nothing_behind_hidden_events() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let mallory = Raw::register(&server, "mallory").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    join(&mallory, &room).await;
    alice
        .ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&alice.user_id)
            ),
            Some(json!({ "ignored_users": { (mallory.user_id.clone()): {} } })),
        )
        .await;
    let mut from = alice.ok("GET", "/_matrix/client/v3/events?timeout=0", None).await["end"]
        .as_str()
        .unwrap()
        .to_owned();
    // More hidden events than one answer reads, then one to be seen.
    for i in 0..120 {
        mallory.send_text(&room, &format!("m{i}"), "noise").await;
    }
    bob.send_text(&room, "b1", "signal").await;
    for _ in 0..10 {
        let got = alice
            .ok(
                "GET",
                &format!("/_matrix/client/v3/events?from={}&timeout=2000", enc(&from)),
                None,
            )
            .await;
        let bodies: Vec<&str> = got["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        assert!(!bodies.contains(&"noise"), "{got}");
        if bodies.contains(&"signal") {
            return;
        }
        from = got["end"].as_str().unwrap().to_owned();
    }
    panic!("the stream never gave bob's message");
}
