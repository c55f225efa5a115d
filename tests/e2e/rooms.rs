//! Two users chat through the real server with matrix-sdk: rooms, DMs,
//! invites, messages, typing, receipts, pagination, edits, redactions,
//! leaving, and history visibility for late joiners.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use matrix_sdk::{
    Client, RoomState,
    config::SyncSettings,
    room::MessagesOptions,
    ruma::{
        RoomId, UInt,
        api::client::{receipt::create_receipt::v3::ReceiptType, room::create_room::v3::Request as CreateRoom},
        events::{
            receipt::ReceiptThread,
            room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
        },
    },
};
use serde_json::{Value, json};

use crate::common::{Raw, TestServer, enc, sdk_client, sync_until};

/// Collects the bodies of the messages a client receives through sync.
fn collect_messages(client: &Client) -> Arc<Mutex<Vec<(String, String)>>> {
    let seen = Arc::new(Mutex::new(vec![]));
    let s = seen.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push((ev.event_id.to_string(), ev.content.body().to_owned()));
        }
    });
    seen
}

/// Syncs until one of the room's ephemeral events satisfies `check`.
async fn sync_until_ephemeral(client: &Client, room: &RoomId, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let resp = client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .expect("sync");
        if let Some(update) = resp.rooms.joined.get(room)
            && update
                .ephemeral
                .iter()
                .any(|e| check(&e.deserialize_as::<Value>().unwrap()))
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_in_a_room_and_a_dm() {
    let server = TestServer::start().await;
    let alice = sdk_client(&server, "alice").await;
    let bob = sdk_client(&server, "bob").await;
    let alice_id = alice.user_id().unwrap().to_owned();
    let bob_id = bob.user_id().unwrap().to_owned();
    let bob_seen = collect_messages(&bob);

    // Alice creates a room and invites Bob; Bob sees the invite and joins.
    let mut req = CreateRoom::new();
    req.name = Some("Project".into());
    req.invite = vec![bob_id.clone()];
    let room = alice.create_room(req).await.expect("create room");
    let room_id = room.room_id().to_owned();
    sync_until(&bob, "the invite", |c| {
        c.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Invited)
    })
    .await;
    bob.join_room_by_id(&room_id).await.expect("join");
    sync_until(&alice, "Bob's join", |c| {
        c.get_room(&room_id).is_some_and(|r| r.joined_members_count() == 2)
    })
    .await;

    // Messages arrive live.
    let hello = room
        .send(RoomMessageEventContent::text_plain("Hello Bob"))
        .await
        .expect("send")
        .response
        .event_id;
    sync_until(&bob, "Alice's message", |_| {
        bob_seen.lock().unwrap().iter().any(|(_, b)| b == "Hello Bob")
    })
    .await;
    let bob_room = bob.get_room(&room_id).unwrap();
    assert_eq!(bob_room.name().as_deref(), Some("Project"));
    bob_room
        .send(RoomMessageEventContent::text_plain("Hi Alice"))
        .await
        .expect("bob sends");

    // Typing and receipts reach the other user.
    bob_room.typing_notice(true).await.expect("typing");
    let bob_str = bob_id.to_string();
    sync_until_ephemeral(&alice, &room_id, "Bob typing", |e| {
        e["type"] == "m.typing"
            && e["content"]["user_ids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u == bob_str.as_str())
    })
    .await;
    bob_room
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, hello.clone())
        .await
        .expect("receipt");
    let hello_str = hello.to_string();
    sync_until_ephemeral(&alice, &room_id, "Bob's receipt", |e| {
        e["type"] == "m.receipt" && e["content"][hello_str.as_str()]["m.read"][bob_str.as_str()].is_object()
    })
    .await;

    // History pages back in order.
    for i in 0..25 {
        room.send(RoomMessageEventContent::text_plain(format!("msg {i}")))
            .await
            .expect("send");
    }
    let mut bodies = vec![];
    let mut from: Option<String> = None;
    loop {
        let mut options = MessagesOptions::backward();
        options.limit = UInt::new(7).unwrap();
        options.from = from.clone();
        let page = bob_room.messages(options).await.expect("messages");
        for ev in &page.chunk {
            let v: Value = ev.raw().deserialize_as().unwrap();
            if v["type"] == "m.room.message" {
                bodies.push(v["content"]["body"].as_str().unwrap().to_owned());
            }
        }
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
    }
    bodies.reverse();
    let expected: Vec<String> = ["Hello Bob", "Hi Alice"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..25).map(|i| format!("msg {i}")))
        .collect();
    assert_eq!(
        bodies, expected,
        "backward pagination returns the whole history in order"
    );

    // An edit relates to the original; a redaction strips the content.
    let edit = room
        .send_raw(
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": "* Hello Bob!",
                "m.new_content": { "msgtype": "m.text", "body": "Hello Bob!" },
                "m.relates_to": { "rel_type": "m.replace", "event_id": hello },
            }),
        )
        .await
        .expect("edit")
        .response
        .event_id;
    let raw_bob = Raw {
        base: server.url.clone(),
        http: reqwest::Client::new(),
        token: bob.access_token().unwrap(),
        user_id: bob_str.clone(),
    };
    let rel = raw_bob
        .ok(
            "GET",
            &format!(
                "/_matrix/client/v1/rooms/{}/relations/{}/m.replace",
                enc(room_id.as_str()),
                enc(hello.as_str())
            ),
            None,
        )
        .await;
    assert_eq!(rel["chunk"][0]["event_id"], edit.to_string());
    room.redact(&hello, Some("typo"), None).await.expect("redact");
    let redacted = bob_room.event(&hello, None).await.expect("fetch redacted");
    let v: Value = redacted.raw().deserialize_as().unwrap();
    assert_eq!(v["content"], json!({}), "redacted content is gone");
    assert!(v["unsigned"]["redacted_because"].is_object());

    // A direct chat.
    let dm = alice.create_dm(&bob_id).await.expect("dm");
    sync_until(&bob, "the DM invite", |c| {
        c.get_room(dm.room_id())
            .is_some_and(|r| r.state() == RoomState::Invited)
    })
    .await;
    let invite = bob
        .get_room(dm.room_id())
        .unwrap()
        .invite_details()
        .await
        .expect("invite details");
    assert_eq!(invite.inviter_id, alice_id);
    assert_eq!(invite.inviter.map(|m| m.user_id().to_owned()), Some(alice_id.clone()));
    bob.join_room_by_id(dm.room_id()).await.expect("join dm");
    dm.send(RoomMessageEventContent::text_plain("just us"))
        .await
        .expect("dm send");
    sync_until(&bob, "the DM message", |_| {
        bob_seen.lock().unwrap().iter().any(|(_, b)| b == "just us")
    })
    .await;

    // Bob leaves; Alice sees it.
    bob_room.leave().await.expect("leave");
    sync_until(&alice, "Bob leaving", |c| {
        c.get_room(&room_id).is_some_and(|r| r.joined_members_count() == 1)
    })
    .await;
    sync_until(&bob, "the room as left", |c| {
        c.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Left)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_does_not_see_hidden_history() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let carol = Raw::register(&server, "carol").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } }],
        }))
        .await;
    let secret = alice.send_text(&room, "t1", "before carol").await.body["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    carol
        .ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(json!({})),
        )
        .await;
    alice.send_text(&room, "t2", "after carol").await;

    // Neither /messages, /event, /context nor /sync show the earlier message.
    let msgs = carol
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            None,
        )
        .await;
    let bodies: Vec<&str> = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["after carol"]);
    let ev = carol
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&secret)),
            None,
        )
        .await;
    assert_eq!((ev.status, ev.errcode()), (404, "M_NOT_FOUND"));
    let ctx = carol
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/context/{}", enc(&room), enc(&secret)),
            None,
        )
        .await;
    assert_eq!(ctx.status, 404);
    let sync = carol.sync(None, 0).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert!(timeline.iter().all(|e| e["content"]["body"] != "before carol"));
    assert!(timeline.iter().any(|e| e["content"]["body"] == "after carol"));

    // With shared visibility, a late joiner sees it all.
    let open = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.send_text(&open, "t3", "shared history").await;
    carol
        .ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&open)),
            Some(json!({})),
        )
        .await;
    let msgs = carol
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&open)),
            None,
        )
        .await;
    assert!(
        msgs["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["body"] == "shared history")
    );
}
