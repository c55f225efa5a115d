//! End-to-end encryption through the real server with matrix-sdk: every
//! message a device should decrypt, it decrypts.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use matrix_sdk::{
    Client,
    config::SyncSettings,
    deserialized_responses::TimelineEventKind,
    ruma::{
        OwnedEventId, OwnedRoomId, RoomId,
        api::client::room::create_room::v3::Request as CreateRoom,
        events::{
            InitialStateEvent,
            room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
        },
    },
};
use serde_json::{Value, json};

use crate::common::{Raw, TestServer, enc, sdk_client, sdk_login, sync_until};

pub async fn sync_all(clients: &[&Client]) {
    for _ in 0..2 {
        for c in clients {
            c.sync_once(SyncSettings::default().timeout(Duration::ZERO))
                .await
                .expect("sync");
        }
    }
}

/// The decrypted body of an event as `client` sees it, or `None` if it cannot decrypt it.
pub async fn decrypted_body(client: &Client, room: &RoomId, event: &OwnedEventId) -> Option<String> {
    let room = client.get_room(room)?;
    let ev = room.event(event, None).await.ok()?;
    match &ev.kind {
        TimelineEventKind::Decrypted(d) => {
            let v: Value = d.event.deserialize_as().ok()?;
            v["content"]["body"].as_str().map(str::to_owned)
        }
        _ => None,
    }
}

/// Waits until `client` decrypts `event` (room keys may come a sync later).
pub async fn wait_decrypted(client: &Client, room: &RoomId, event: &OwnedEventId) -> Option<String> {
    wait_decrypted_for(client, room, event, Duration::from_secs(10)).await
}

/// As [`wait_decrypted`], for at most `wait`.
pub async fn wait_decrypted_for(
    client: &Client,
    room: &RoomId,
    event: &OwnedEventId,
    wait: Duration,
) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(b) = decrypted_body(client, room, event).await {
            return Some(b);
        }
        if Instant::now() > deadline {
            return None;
        }
        client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(200)))
            .await
            .expect("sync");
    }
}

pub async fn encrypted_room(owner: &Client, invite: Vec<matrix_sdk::ruma::OwnedUserId>) -> OwnedRoomId {
    let mut req = CreateRoom::new();
    req.invite = invite;
    req.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any(),
    ];
    owner
        .create_room(req)
        .await
        .expect("create encrypted room")
        .room_id()
        .to_owned()
}

pub async fn join(client: &Client, room: &RoomId) {
    sync_until(client, "the invite", |c| c.get_room(room).is_some()).await;
    client.join_room_by_id(room).await.expect("join");
}

pub async fn send(client: &Client, room: &RoomId, text: &str) -> OwnedEventId {
    let room = client.get_room(room).expect("room");
    room.send(RoomMessageEventContent::text_plain(text))
        .await
        .expect("send")
        .response
        .event_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_room_and_dm_decrypt_on_both_sides() {
    let server = TestServer::start().await;
    let alice = sdk_client(&server, "alice").await;
    let bob = sdk_client(&server, "bob").await;
    let room = encrypted_room(&alice, vec![bob.user_id().unwrap().to_owned()]).await;
    join(&bob, &room).await;
    sync_all(&[&alice, &bob]).await;

    let a = send(&alice, &room, "secret from alice").await;
    let b = send(&bob, &room, "secret from bob").await;
    sync_all(&[&alice, &bob]).await;
    assert_eq!(
        wait_decrypted(&bob, &room, &a).await.as_deref(),
        Some("secret from alice")
    );
    assert_eq!(
        wait_decrypted(&alice, &room, &b).await.as_deref(),
        Some("secret from bob")
    );

    // The server only ever saw ciphertext.
    let raw = Raw {
        base: server.url.clone(),
        http: reqwest::Client::new(),
        token: bob.access_token().unwrap(),
        user_id: String::new(),
    };
    let ev = raw
        .ok(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(room.as_str()),
                enc(a.as_str())
            ),
            None,
        )
        .await;
    assert_eq!(ev["type"], "m.room.encrypted");
    assert!(!ev.to_string().contains("secret from alice"));

    // A DM (matrix-sdk encrypts DMs by default).
    let dm = alice
        .create_dm(bob.user_id().unwrap())
        .await
        .expect("dm")
        .room_id()
        .to_owned();
    join(&bob, &dm).await;
    sync_all(&[&alice, &bob]).await;
    let d = send(&alice, &dm, "just between us").await;
    assert_eq!(wait_decrypted(&bob, &dm, &d).await.as_deref(), Some("just between us"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_decrypts_and_a_removed_device_is_forgotten() {
    let server = TestServer::start().await;
    let alice = sdk_client(&server, "alice").await;
    let bob1 = sdk_client(&server, "bob").await;
    let room = encrypted_room(&alice, vec![bob1.user_id().unwrap().to_owned()]).await;
    join(&bob1, &room).await;
    let bob2 = sdk_login(&server, "bob").await;
    sync_all(&[&alice, &bob1, &bob2]).await;

    let m = send(&alice, &room, "to both of bob's devices").await;
    sync_all(&[&alice, &bob1, &bob2]).await;
    assert_eq!(
        wait_decrypted(&bob1, &room, &m).await.as_deref(),
        Some("to both of bob's devices")
    );
    assert_eq!(
        wait_decrypted(&bob2, &room, &m).await.as_deref(),
        Some("to both of bob's devices")
    );

    // Bob removes his second device: it disappears from his key list and its token dies.
    let gone = bob2.device_id().unwrap().to_owned();
    let token2 = bob2.access_token().unwrap();
    bob2.logout().await.expect("logout");
    let raw = Raw {
        base: server.url.clone(),
        http: reqwest::Client::new(),
        token: alice.access_token().unwrap(),
        user_id: String::new(),
    };
    let keys = raw
        .ok(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { bob1.user_id().unwrap().to_string(): [] } })),
        )
        .await;
    let devices = keys["device_keys"][bob1.user_id().unwrap().as_str()]
        .as_object()
        .unwrap();
    assert!(!devices.contains_key(gone.as_str()), "removed device still listed");
    assert!(devices.contains_key(bob1.device_id().unwrap().as_str()));
    let dead = Raw {
        token: token2,
        ..raw.clone()
    };
    assert_eq!(dead.call("GET", "/_matrix/client/v3/sync", None).await.status, 401);

    sync_all(&[&alice, &bob1]).await;
    let after = send(&alice, &room, "after removal").await;
    sync_all(&[&alice, &bob1]).await;
    assert_eq!(
        wait_decrypted(&bob1, &room, &after).await.as_deref(),
        Some("after removal")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_offline_decrypt_even_after_one_time_keys_run_out() {
    let server = TestServer::start().await;
    let alice = sdk_client(&server, "alice").await;
    let bob = sdk_client(&server, "bob").await;
    let bob_id = bob.user_id().unwrap().to_owned();
    let bob_device = bob.device_id().unwrap().to_owned();

    // Exhaust Bob's one-time keys by claiming them all, as other devices could have.
    let raw = Raw {
        base: server.url.clone(),
        http: reqwest::Client::new(),
        token: alice.access_token().unwrap(),
        user_id: String::new(),
    };
    for _ in 0..200 {
        let r = raw
            .ok(
                "POST",
                "/_matrix/client/v3/keys/claim",
                Some(
                    json!({ "one_time_keys": { bob_id.to_string(): { bob_device.to_string(): "signed_curve25519" } } }),
                ),
            )
            .await;
        let got = r["one_time_keys"][bob_id.as_str()][bob_device.as_str()]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if got.keys().any(|k| k.starts_with("signed_curve25519:")) && got.values().any(|v| v["fallback"] == true) {
            break;
        }
    }

    // Bob goes offline (does not sync) while Alice creates a room, invites him and sends.
    let room = encrypted_room(&alice, vec![bob_id.clone()]).await;
    let raw_bob = Raw {
        token: bob.access_token().unwrap(),
        ..raw.clone()
    };
    raw_bob
        .ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(room.as_str())),
            Some(json!({})),
        )
        .await;
    sync_all(&[&alice]).await;
    let mut sent = vec![];
    for i in 0..5 {
        sent.push((
            send(&alice, &room, &format!("while you were away {i}")).await,
            format!("while you were away {i}"),
        ));
    }

    // Bob comes back and decrypts everything.
    sync_all(&[&bob]).await;
    for (id, body) in &sent {
        assert_eq!(
            wait_decrypted(&bob, &room, id).await.as_ref(),
            Some(body),
            "offline message undecryptable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_hand_out_a_one_time_key_twice() {
    let server = TestServer::start().await;
    let bob = sdk_client(&server, "bob").await;
    let bob_id = bob.user_id().unwrap().to_string();
    let bob_device = bob.device_id().unwrap().to_string();
    let mut claimers = vec![];
    for i in 0..6 {
        claimers.push(Raw::register(&server, &format!("claimer{i}")).await);
    }
    let mut tasks = vec![];
    for c in claimers {
        let (bob_id, bob_device) = (bob_id.clone(), bob_device.clone());
        tasks.push(tokio::spawn(async move {
            let mut keys = vec![];
            for _ in 0..15 {
                let r = c
                    .ok(
                        "POST",
                        "/_matrix/client/v3/keys/claim",
                        Some(
                            json!({ "one_time_keys": { bob_id.clone(): { bob_device.clone(): "signed_curve25519" } } }),
                        ),
                    )
                    .await;
                if let Some(obj) = r["one_time_keys"][&bob_id][&bob_device].as_object() {
                    for (id, key) in obj {
                        if key["fallback"] != true {
                            keys.push(id.clone());
                        }
                    }
                }
            }
            keys
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert!(!all.is_empty(), "some one-time keys were claimed");
    assert_eq!(unique.len(), all.len(), "a one-time key was handed out twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_image_is_sent_downloaded_and_decrypted() {
    use matrix_sdk::{
        attachment::AttachmentConfig,
        media::{MediaFormat, MediaRequestParameters},
        ruma::events::room::{MediaSource, message::MessageType},
    };

    let server = TestServer::start().await;
    let alice = sdk_client(&server, "alice").await;
    let bob = sdk_client(&server, "bob").await;
    let room = encrypted_room(&alice, vec![bob.user_id().unwrap().to_owned()]).await;
    join(&bob, &room).await;
    sync_all(&[&alice, &bob]).await;

    // Any bytes will do: the server never sees them in clear.
    let image: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = alice
        .get_room(&room)
        .unwrap()
        .send_attachment("photo.png", &mime::IMAGE_PNG, image.clone(), AttachmentConfig::new())
        .await
        .expect("send attachment")
        .event_id;
    sync_all(&[&alice, &bob]).await;

    let ev = bob.get_room(&room).unwrap().event(&sent, None).await.expect("event");
    let TimelineEventKind::Decrypted(d) = &ev.kind else {
        panic!("Bob cannot decrypt the image event")
    };
    let content: matrix_sdk::ruma::events::room::message::RoomMessageEventContent =
        serde_json::from_value(d.event.deserialize_as::<Value>().unwrap()["content"].clone()).unwrap();
    let MessageType::Image(img) = content.msgtype else {
        panic!("not an image")
    };
    let MediaSource::Encrypted(file) = img.source else {
        panic!("the image is not encrypted")
    };
    // The ciphertext on the server differs from the image.
    let raw = Raw {
        base: server.url.clone(),
        http: reqwest::Client::new(),
        token: bob.access_token().unwrap(),
        user_id: String::new(),
    };
    let (srv, id) = (
        file.url.server_name().unwrap().to_string(),
        file.url.media_id().unwrap().to_owned(),
    );
    let cipher = raw.download(&format!("mxc://{srv}/{id}")).await;
    assert_eq!(cipher.len(), image.len());
    assert_ne!(cipher.as_slice(), image.as_slice());
    let plain = bob
        .media()
        .get_media_content(
            &MediaRequestParameters {
                source: MediaSource::Encrypted(file),
                format: MediaFormat::File,
            },
            false,
        )
        .await
        .expect("download and decrypt");
    assert_eq!(plain, image);
}
