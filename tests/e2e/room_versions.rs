//! Every stable room version, each with its own event IDs, event format,
//! redaction and authorisation rules: rooms of each are created, joined,
//! written to (encrypted, with real clients), renamed and redacted in.

use matrix_sdk::ruma::{
    RoomVersionId,
    api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset},
    events::{InitialStateEvent, room::encryption::RoomEncryptionEventContent},
};
use serde_json::json;

use crate::{
    common::{Raw, TestServer, enc, sdk_client},
    encryption::{join, send, sync_all, wait_decrypted},
};

const VERSIONS: [&str; 12] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stable_room_version_carries_encrypted_conversations() {
    let server = TestServer::start().await;
    let alice = sdk_client(&server, "alice").await;
    let bob = sdk_client(&server, "bob").await;
    let alice_raw = Raw::login(&server, "alice").await;
    let bob_raw = Raw::login(&server, "bob").await;
    let carol = Raw::register(&server, "carol").await;

    for version in VERSIONS {
        let mut req = CreateRoom::new();
        req.room_version = Some(RoomVersionId::try_from(version).unwrap());
        req.preset = Some(RoomPreset::PrivateChat);
        req.invite = vec![bob.user_id().unwrap().to_owned()];
        req.initial_state = vec![
            InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                .to_raw_any(),
        ];
        let room = alice.create_room(req).await.expect("create room").room_id().to_owned();
        let path = |rest: &str| format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room.as_str()));

        // The version's own event ID and room ID forms.
        let create = alice_raw
            .ok("GET", &path("state/m.room.create/?format=event"), None)
            .await;
        assert_eq!(create["content"]["room_version"], version);
        let event_id = create["event_id"].as_str().unwrap();
        match version {
            "1" | "2" => assert!(event_id.ends_with(":localhost"), "v{version}: {event_id}"),
            _ => assert!(!event_id.contains(':'), "v{version}: {event_id}"),
        }
        if version == "3" {
            // Standard base64 from v3; URL-safe from v4.
            assert_eq!(event_id.len(), 44, "{event_id}");
        }
        assert_eq!(room.server_name().is_some(), version != "12");
        assert_eq!(
            create["content"].get("creator").is_some(),
            !matches!(version, "11" | "12"),
            "v{version}: {create}"
        );

        join(&bob, &room).await;
        sync_all(&[&alice, &bob]).await;
        let text = format!("a secret in a v{version} room");
        let ev = send(&alice, &room, &text).await;
        assert_eq!(
            wait_decrypted(&bob, &room, &ev).await.as_deref(),
            Some(text.as_str()),
            "v{version}"
        );
        let reply = send(&bob, &room, "read it").await;
        assert_eq!(
            wait_decrypted(&alice, &room, &reply).await.as_deref(),
            Some("read it"),
            "v{version}"
        );

        // State and its power: the creator renames, the member may not.
        alice_raw
            .ok(
                "PUT",
                &path("state/m.room.name/"),
                Some(json!({ "name": format!("v{version}") })),
            )
            .await;
        let r = bob_raw
            .call("PUT", &path("state/m.room.power_levels/"), Some(json!({ "users": {} })))
            .await;
        assert_eq!(r.status, 403, "v{version}: {}", r.body);

        // Redaction by the version's algorithm: the content goes, the
        // event stays, `redacts` where the version puts it.
        alice_raw
            .ok(
                "PUT",
                &path(&format!("redact/{}/r{version}", enc(ev.as_str()))),
                Some(json!({ "reason": "oops" })),
            )
            .await;
        let redacted = bob_raw
            .ok("GET", &path(&format!("event/{}", enc(ev.as_str()))), None)
            .await;
        assert_eq!(redacted["content"], json!({}), "v{version}");
        assert_eq!(
            redacted["unsigned"]["redacted_because"]["redacts"],
            ev.as_str(),
            "v{version}"
        );

        // Knocking exists from v7 on: before, the join rule is refused.
        let knocks = !matches!(version, "1" | "2" | "3" | "4" | "5" | "6");
        let r = alice_raw
            .call(
                "PUT",
                &path("state/m.room.join_rules/"),
                Some(json!({ "join_rule": "knock" })),
            )
            .await;
        assert_eq!(r.status == 200, knocks, "v{version}: {}", r.body);
        let knock = carol
            .call(
                "POST",
                &format!("/_matrix/client/v3/knock/{}", enc(room.as_str())),
                Some(json!({})),
            )
            .await;
        assert_eq!(knock.status == 200, knocks, "v{version}: {}", knock.body);

        bob_raw.ok("POST", &path("leave"), Some(json!({}))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_room_version_is_configurable() {
    let server = TestServer::start_with(&[("MISSIVE_DEFAULT_ROOM_VERSION", "10")]).await;
    let alice = Raw::register(&server, "alice").await;
    let room = alice.create_room(json!({})).await;
    assert!(room.ends_with(":localhost"), "a v10 room ID names its server: {room}");
    let caps = alice.ok("GET", "/_matrix/client/v3/capabilities", None).await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "10");
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(json!({ "room_version": "13" })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_UNSUPPORTED_ROOM_VERSION"));

    // An unknown version in the configuration stops the server at start.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_missive"))
        .env("MISSIVE_DEFAULT_ROOM_VERSION", "13")
        .env("MISSIVE_DATA_DIR", server.data_dir())
        .env("MISSIVE_LISTEN", "127.0.0.1:1")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("default_room_version"));
}
