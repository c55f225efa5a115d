//! Simplified sliding sync (MSC4186), the only sync Element X speaks: the
//! room list of matrix-sdk-ui's sync service, live messages, to-device and
//! end-to-end encryption through it, and the wire format where a client
//! would notice a mistake.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, pin_mut};
use matrix_sdk::{
    Client, RoomState,
    event_handler::Ctx,
    ruma::{
        OwnedRoomId, RoomId,
        api::client::sync::sync_events::v5 as http,
        events::{
            StateEventType,
            room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
        },
    },
    sliding_sync::{SlidingSync, SlidingSyncList, SlidingSyncMode, VersionBuilder},
};
use matrix_sdk_ui::sync_service::SyncService;
use serde_json::{Value, json};

use crate::{
    common::{Raw, TestServer, enc, password, sdk_client, sync_until},
    encryption::encrypted_room,
};

const SLIDING_SYNC: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// Logs in a device that never calls `/sync`, and that finds sliding sync
/// the way clients do: from `/versions`.
async fn sliding_client(server: &TestServer, username: &str) -> Client {
    let client = Client::builder()
        .homeserver_url(&server.url)
        .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
        .build()
        .await
        .expect("client: the server must advertise sliding sync in /versions");
    client
        .matrix_auth()
        .login_username(username, &password(username))
        .send()
        .await
        .expect("login");
    client
}

/// Message bodies a client's event handlers saw, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(OwnedRoomId, String)>>>);

impl Seen {
    fn attach(&self, client: &Client) {
        client.add_event_handler_context(self.clone());
        client.add_event_handler(
            |ev: OriginalSyncRoomMessageEvent, room: matrix_sdk::Room, seen: Ctx<Seen>| async move {
                seen.0
                    .0
                    .lock()
                    .unwrap()
                    .push((room.room_id().to_owned(), ev.content.body().to_owned()));
            },
        );
    }

    fn has(&self, room: &RoomId, body: &str) -> bool {
        self.0.lock().unwrap().iter().any(|(r, b)| r == room && b == body)
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn id(room: &str) -> OwnedRoomId {
    OwnedRoomId::try_from(room).expect("room id")
}

/// The rooms of a client, most recent first, as a room list sorts them
/// (the server's `bump_stamp`).
fn by_recency(client: &Client) -> Vec<String> {
    let mut rooms = client.joined_rooms();
    rooms.sort_by_key(|r| std::cmp::Reverse(r.recency_stamp().map(u64::from)));
    rooms.iter().map(|r| r.name().unwrap_or_default()).collect()
}

#[tokio::test]
async fn room_list_service_lists_rooms_in_order_and_gets_live_messages() {
    let server = TestServer::start().await;
    let alice_web = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;

    // Three rooms, used in the order Bravo, Alpha, Charlie.
    let mut rooms = std::collections::HashMap::new();
    for name in ["Alpha", "Bravo", "Charlie"] {
        let room = alice_web
            .create_room(json!({ "name": name, "preset": "private_chat", "invite": [bob.user_id] }))
            .await;
        bob.ok(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            Some(json!({})),
        )
        .await;
        rooms.insert(name, room);
    }
    for (i, name) in ["Bravo", "Alpha", "Charlie"].iter().enumerate() {
        let r = bob
            .send_text(&rooms[name], &format!("t{i}"), &format!("hello {name}"))
            .await;
        assert_eq!(r.status, 200);
    }

    // Alice's phone: Element X's sync (room list + encryption connections).
    let alice = sliding_client(&server, "alice").await;
    let seen = Seen::default();
    seen.attach(&alice);
    let sync = SyncService::builder(alice.clone()).build().await.expect("sync service");
    let all_rooms = sync.room_list_service().all_rooms().await.expect("all_rooms list");
    sync.start().await;

    wait_for("three named rooms", || {
        alice.joined_rooms().len() == 3 && alice.joined_rooms().iter().all(|r| r.name().is_some())
    })
    .await;
    assert_eq!(by_recency(&alice), ["Charlie", "Alpha", "Bravo"]);
    let loaded = all_rooms.loading_state().get();
    assert!(
        matches!(
            loaded,
            matrix_sdk_ui::room_list_service::RoomListLoadingState::Loaded {
                maximum_number_of_rooms: Some(3)
            }
        ),
        "list count: {loaded:?}"
    );
    let bravo = alice.get_room(&id(&rooms["Bravo"])).expect("Bravo");
    assert_eq!(bravo.joined_members_count(), 2);
    wait_for("the latest message of each room", || {
        ["Alpha", "Bravo", "Charlie"]
            .iter()
            .all(|n| seen.has(&id(&rooms[n]), &format!("hello {n}")))
    })
    .await;

    // A new message arrives live and moves its room to the top.
    let r = bob.send_text(&rooms["Bravo"], "live", "live message").await;
    assert_eq!(r.status, 200);
    wait_for("the live message", || seen.has(&id(&rooms["Bravo"]), "live message")).await;
    wait_for("Bravo on top", || by_recency(&alice)[0] == "Bravo").await;
    assert_eq!(by_recency(&alice), ["Bravo", "Charlie", "Alpha"]);

    // An invite shows up as one, and joining it makes it a joined room.
    let delta = bob
        .create_room(json!({ "name": "Delta", "invite": [alice_web.user_id] }))
        .await;
    wait_for("the invite", || {
        alice
            .get_room(&id(&delta))
            .is_some_and(|r| r.state() == RoomState::Invited)
    })
    .await;
    alice.join_room_by_id(&id(&delta)).await.expect("join Delta");
    bob.send_text(&delta, "d1", "welcome").await;
    wait_for("Delta's message", || seen.has(&id(&delta), "welcome")).await;
    assert_eq!(alice.get_room(&id(&delta)).expect("Delta").state(), RoomState::Joined);

    sync.stop().await;
}

/// One sliding sync connection with the to-device and E2EE extensions, as
/// matrix-sdk's encryption sync uses them, and a list of all rooms.
async fn encrypted_sliding_sync(client: &Client) -> SlidingSync {
    let required_state = [
        (StateEventType::RoomEncryption, ""),
        (StateEventType::RoomMember, "$LAZY"),
        (StateEventType::RoomMember, "$ME"),
        (StateEventType::RoomName, ""),
        (StateEventType::RoomCreate, ""),
        (StateEventType::RoomHistoryVisibility, ""),
    ];
    let mut to_device = http::request::ToDevice::default();
    to_device.enabled = Some(true);
    let mut e2ee = http::request::E2EE::default();
    e2ee.enabled = Some(true);
    client
        .sliding_sync("e2ee")
        .expect("builder")
        .with_to_device_extension(to_device)
        .with_e2ee_extension(e2ee)
        .poll_timeout(Duration::from_secs(2))
        .add_list(
            SlidingSyncList::builder("all")
                .sync_mode(SlidingSyncMode::new_selective().add_range(0..=19))
                .timeline_limit(10)
                .required_state(
                    required_state
                        .iter()
                        .map(|(t, k)| (t.clone(), (*k).to_owned()))
                        .collect(),
                ),
        )
        .build()
        .await
        .expect("sliding sync")
}

#[tokio::test]
async fn encrypted_messages_decrypt_on_a_sliding_sync_only_device() {
    let server = TestServer::start().await;
    let alice_web = Raw::register(&server, "alice").await;
    let alice = sliding_client(&server, "alice").await;
    let bob = sdk_client(&server, "bob").await;
    let seen = Seen::default();
    seen.attach(&alice);

    let sliding = encrypted_sliding_sync(&alice).await;
    let driver = {
        let sliding = sliding.clone();
        tokio::spawn(async move {
            let stream = sliding.sync();
            pin_mut!(stream);
            while let Some(r) = stream.next().await {
                if let Err(e) = r {
                    panic!("sliding sync failed: {e}");
                }
            }
        })
    };

    // Alice's device keys reach the server through the sliding sync loop.
    let alice_id = alice.user_id().expect("user").to_owned();
    let device = alice.device_id().expect("device").to_string();
    let query = json!({ "device_keys": { alice_id.to_string(): [] } });
    let deadline = Instant::now() + Duration::from_secs(20);
    while alice_web
        .ok("POST", "/_matrix/client/v3/keys/query", Some(query.clone()))
        .await["device_keys"][alice_id.as_str()][&device]
        .is_null()
    {
        assert!(Instant::now() < deadline, "alice's device keys never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let room = encrypted_room(&bob, vec![alice_id.clone()]).await;
    wait_for("the invite", || {
        alice.get_room(&room).is_some_and(|r| r.state() == RoomState::Invited)
    })
    .await;
    alice.join_room_by_id(&room).await.expect("join");
    sync_until(&bob, "alice joined", |c| {
        c.get_room(&room).is_some_and(|r| r.joined_members_count() == 2)
    })
    .await;

    let bob_room = bob.get_room(&room).expect("bob's room");
    for i in 0..3 {
        bob_room
            .send(RoomMessageEventContent::text_plain(format!("secret {i}")))
            .await
            .expect("send encrypted");
    }
    for i in 0..3 {
        let body = format!("secret {i}");
        wait_for(&body, || seen.has(&room, &body)).await;
    }
    let alice_room = alice.get_room(&room).expect("alice's room");
    assert!(
        alice_room.encryption_state().is_encrypted(),
        "m.room.encryption came as required state"
    );

    driver.abort();
}

async fn post(raw: &Raw, query: &str, body: Value) -> crate::common::Reply {
    raw.call("POST", &format!("{SLIDING_SYNC}{query}"), Some(body)).await
}

async fn ok(raw: &Raw, query: &str, body: Value) -> Value {
    let r = post(raw, query, body).await;
    assert_eq!(r.status, 200, "sliding sync {query}: {}", r.body);
    r.body
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn wire_format_positions_and_bad_input() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;

    let versions = alice.ok("GET", "/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.simplified_msc3575"], true);

    // An unknown position: the client must start over.
    let r = post(&alice, "?pos=12_34", json!({ "conn_id": "main" })).await;
    assert_eq!((r.status, r.errcode()), (400, "M_UNKNOWN_POS"), "{}", r.body);
    let r = post(&alice, "", json!({ "lists": "not a map" })).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = alice.call("POST", SLIDING_SYNC, None).await;
    assert_eq!(r.status, 200, "an empty request starts a connection: {}", r.body);
    let r = reqwest::Client::new()
        .post(format!("{}{SLIDING_SYNC}", server.url))
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);

    let old = alice.create_room(json!({ "name": "Old" })).await;
    alice.send_text(&old, "o1", "old news").await;
    let shared = alice
        .create_room(json!({ "name": "Shared", "invite": [bob.user_id] }))
        .await;
    // Only members see history under "joined" visibility.
    alice
        .ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&shared)
            ),
            Some(json!({ "history_visibility": "joined" })),
        )
        .await;
    alice.send_text(&shared, "s1", "before bob").await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&shared)),
        Some(json!({})),
    )
    .await;
    alice.send_text(&shared, "s2", "after bob").await;

    let list = json!({
        "conn_id": "main",
        "lists": { "all": {
            "ranges": [[0, 0]],
            "timeline_limit": 5,
            "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"]],
        } },
        "extensions": { "to_device": { "enabled": true }, "e2ee": { "enabled": true } },
    });

    // Alice's first request: two rooms, the window holds the most recent.
    let first = ok(&alice, "", list.clone()).await;
    assert_eq!(first["lists"]["all"]["count"], 2, "{first}");
    let rooms = first["rooms"].as_object().expect("rooms");
    assert_eq!(rooms.keys().collect::<Vec<_>>(), [&shared], "{first}");
    let room = &rooms[&shared];
    assert_eq!(room["initial"], true);
    assert_eq!(room["name"], "Shared");
    assert_eq!(room["joined_count"], 2);
    assert!(room["bump_stamp"].as_u64().is_some());
    assert_eq!(bodies(room), ["before bob", "after bob"]);
    let state_keys: Vec<_> = room["required_state"]
        .as_array()
        .expect("required_state")
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or(""), e["state_key"].as_str().unwrap_or("")))
        .collect();
    assert!(state_keys.contains(&("m.room.name", "")), "{state_keys:?}");
    assert!(state_keys.contains(&("m.room.member", alice.user_id.as_str())));
    assert!(
        !state_keys.contains(&("m.room.create", "")),
        "not asked for: {state_keys:?}"
    );
    assert!(first["extensions"]["e2ee"]["device_unused_fallback_key_types"].is_array());
    let pos = first["pos"].as_str().expect("pos").to_owned();

    // Bob joined after the first message: he sees only what came after.
    let bob_view = ok(&bob, "", list.clone()).await;
    assert_eq!(bodies(&bob_view["rooms"][&shared]), ["after bob"], "{bob_view}");

    // Nothing new: a long poll waits, then answers with no rooms.
    let t = Instant::now();
    let idle = ok(&alice, &format!("?pos={pos}&timeout=300"), list.clone()).await;
    assert!(t.elapsed() >= Duration::from_millis(250), "answered at once: {idle}");
    assert!(idle.get("rooms").is_none(), "{idle}");

    // A message to the room out of the window moves it in; the long poll
    // wakes for it, and sends only what is new with an update.
    let waiting = {
        let alice = alice.clone();
        let list = list.clone();
        let pos = pos.clone();
        tokio::spawn(async move { ok(&alice, &format!("?pos={pos}&timeout=10000"), list).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send_text(&shared, "b1", "bob live").await;
    let live = waiting.await.expect("task");
    let room = &live["rooms"][&shared];
    assert_eq!(bodies(room), ["bob live"], "{live}");
    assert!(room.get("initial").is_none(), "{live}");
    assert_eq!(room["num_live"], 1);
    // The same position again (a lost response): the same news.
    let again = ok(&alice, &format!("?pos={pos}"), list.clone()).await;
    assert_eq!(bodies(&again["rooms"][&shared]), ["bob live"], "{again}");

    // The other room comes into the window: all of it, as new.
    alice.send_text(&old, "o2", "old again").await;
    let next = live["pos"].as_str().expect("pos");
    let moved = ok(&alice, &format!("?pos={next}"), list.clone()).await;
    let room = &moved["rooms"][&old];
    assert_eq!(room["initial"], true, "{moved}");
    assert_eq!(bodies(room), ["old news", "old again"]);
    assert_eq!(room["num_live"], 1);

    // To-device messages arrive once, and go once acknowledged.
    let device = alice.ok("GET", "/_matrix/client/v3/account/whoami", None).await["device_id"]
        .as_str()
        .expect("device")
        .to_owned();
    bob.ok(
        "PUT",
        "/_matrix/client/v3/sendToDevice/m.test/td1",
        Some(json!({ "messages": { alice.user_id.clone(): { device.clone(): { "n": 1 } } } })),
    )
    .await;
    let pos = moved["pos"].as_str().expect("pos");
    let got = ok(&alice, &format!("?pos={pos}"), list.clone()).await;
    let to_device = &got["extensions"]["to_device"];
    assert_eq!(to_device["events"][0]["content"]["n"], 1, "{got}");
    let mut acked = list.clone();
    acked["extensions"]["to_device"]["since"] = to_device["next_batch"].clone();
    let pos = got["pos"].as_str().expect("pos");
    let after = ok(&alice, &format!("?pos={pos}"), acked).await;
    assert!(
        after["extensions"]["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{after}"
    );

    // Leaving a room the connection has: one last update, whose state
    // tells the client it left.
    alice
        .ok(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&old)),
            Some(json!({})),
        )
        .await;
    let pos = after["pos"].as_str().expect("pos");
    let left = ok(&alice, &format!("?pos={pos}"), list.clone()).await;
    assert_eq!(left["lists"]["all"]["count"], 1, "{left}");
    let own_leave = left["rooms"][&old]["required_state"].as_array().is_some_and(|s| {
        s.iter().any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == alice.user_id.as_str()
                && e["content"]["membership"] == "leave"
        })
    });
    assert!(own_leave, "{left}");
    let pos = left["pos"].as_str().expect("pos");
    let quiet = ok(&alice, &format!("?pos={pos}"), list.clone()).await;
    assert!(quiet["rooms"].get(&old).is_none(), "sent once: {quiet}");

    // A position of another connection, or one from before a restart of
    // the connection, is unknown.
    let pos = quiet["pos"].as_str().expect("pos").to_owned();
    let mut other = list.clone();
    other["conn_id"] = json!("other");
    let r = post(&alice, &format!("?pos={pos}"), other).await;
    assert_eq!((r.status, r.errcode()), (400, "M_UNKNOWN_POS"));
    ok(&alice, "", list.clone()).await;
    let r = post(&alice, &format!("?pos={pos}"), list.clone()).await;
    assert_eq!((r.status, r.errcode()), (400, "M_UNKNOWN_POS"));
}

#[tokio::test]
async fn account_data_receipts_and_typing_extensions() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let room = alice
        .create_room(json!({ "name": "Ext", "invite": [bob.user_id] }))
        .await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        Some(json!({})),
    )
    .await;
    let sent = bob.send_text(&room, "m1", "read me").await.body["event_id"]
        .as_str()
        .expect("event")
        .to_owned();
    alice
        .ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.test.global",
                enc(&alice.user_id)
            ),
            Some(json!({ "g": 1 })),
        )
        .await;
    let request = json!({
        "conn_id": "ext",
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } },
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true },
            "typing": { "enabled": true },
        },
    });
    let first = ok(&alice, "", request.clone()).await;
    let global = first["extensions"]["account_data"]["global"]
        .as_array()
        .expect("global");
    assert!(global.iter().any(|e| e["type"] == "m.test.global"), "{first}");
    let pos = first["pos"].as_str().expect("pos");

    // Bob reads, types; alice tags the room: all of it comes on the next response.
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&sent)),
        Some(json!({})),
    )
    .await;
    bob.ok(
        "PUT",
        &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
        Some(json!({ "typing": true, "timeout": 30000 })),
    )
    .await;
    alice
        .ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.test.room",
                enc(&alice.user_id),
                enc(&room)
            ),
            Some(json!({ "r": 2 })),
        )
        .await;
    let next = ok(&alice, &format!("?pos={pos}&timeout=5000"), request.clone()).await;
    let ext = &next["extensions"];
    assert!(
        ext["account_data"]["rooms"][&room]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["type"] == "m.test.room")),
        "{next}"
    );
    assert!(
        ext["account_data"].get("global").is_none(),
        "global data is not sent twice: {next}"
    );
    assert!(
        ext["receipts"]["rooms"][&room]["content"][&sent]["m.read"][&bob.user_id]["ts"].is_u64(),
        "{next}"
    );
    assert_eq!(
        ext["typing"]["rooms"][&room]["content"]["user_ids"],
        json!([bob.user_id]),
        "{next}"
    );
}
