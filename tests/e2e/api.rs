//! The rest of the foundation's client API, checked at the wire: accounts,
//! devices, refresh tokens, profiles, aliases, knocking, restricted rooms,
//! upgrades, account data and tags, filters, private and threaded receipts,
//! threads, presence, timestamp lookup, and membership edge cases.

use serde_json::{Value, json};

use crate::common::{Raw, RawBody, TestServer, enc, password, request};

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

fn events_of<'a>(sync: &'a Value, section: &str, room: &str, part: &str) -> Vec<&'a Value> {
    sync["rooms"][section][room][part]["events"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_devices_tokens_and_profiles() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{}", server.url, p);

    let me = alice.ok("GET", "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(me["user_id"], "@alice:localhost");
    let r = request(
        &http,
        "GET",
        &url("/_matrix/client/v3/register/available?username=alice"),
        None,
        None,
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_USER_IN_USE"));
    let r = request(
        &http,
        "GET",
        &url("/_matrix/client/v3/register/available?username=Not%20Valid"),
        None,
        None,
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_USERNAME"));
    assert_eq!(
        request(
            &http,
            "GET",
            &url("/_matrix/client/v3/register/available?username=newbie"),
            None,
            None
        )
        .await
        .body["available"],
        true
    );

    // A second device, with a refresh token; the refresh rotates both tokens.
    let login = request(
        &http,
        "POST",
        &url("/_matrix/client/v3/login"),
        None,
        Some(RawBody::Json(json!({
            "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
            "password": password("alice"), "refresh_token": true, "initial_device_display_name": "laptop"
        }))),
    )
    .await;
    assert_eq!(login.status, 200);
    assert!(login.body["expires_in_ms"].as_u64().unwrap() > 0);
    let laptop = login.body["device_id"].as_str().unwrap().to_owned();
    let refresh = login.body["refresh_token"].as_str().unwrap().to_owned();
    let refreshed = request(
        &http,
        "POST",
        &url("/_matrix/client/v3/refresh"),
        None,
        Some(RawBody::Json(json!({ "refresh_token": refresh }))),
    )
    .await;
    assert_eq!(refreshed.status, 200);
    let old = request(
        &http,
        "GET",
        &url("/_matrix/client/v3/account/whoami"),
        Some(login.body["access_token"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(
        (old.status, old.errcode()),
        (401, "M_UNKNOWN_TOKEN"),
        "the old access token died with the refresh"
    );
    let again = request(
        &http,
        "POST",
        &url("/_matrix/client/v3/refresh"),
        None,
        Some(RawBody::Json(json!({ "refresh_token": refresh }))),
    )
    .await;
    assert_eq!(
        (again.status, again.errcode()),
        (401, "M_UNKNOWN_TOKEN"),
        "a refresh token is single-use"
    );
    let laptop_token = refreshed.body["access_token"].as_str().unwrap().to_owned();

    // Devices: list, rename, delete with user-interactive auth.
    let devices = alice.ok("GET", "/_matrix/client/v3/devices", None).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);
    alice
        .ok(
            "PUT",
            &format!("/_matrix/client/v3/devices/{laptop}"),
            Some(json!({ "display_name": "work laptop" })),
        )
        .await;
    assert_eq!(
        alice
            .ok("GET", &format!("/_matrix/client/v3/devices/{laptop}"), None)
            .await["display_name"],
        "work laptop"
    );
    let r = alice.call("GET", "/_matrix/client/v3/devices/NOPE", None).await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
    let first = alice
        .call(
            "DELETE",
            &format!("/_matrix/client/v3/devices/{laptop}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(first.status, 401);
    assert_eq!(first.body["flows"][0]["stages"][0], "m.login.password");
    let session = first.body["session"].as_str().unwrap();
    let wrong = alice.call("DELETE", &format!("/_matrix/client/v3/devices/{laptop}"), Some(json!({
        "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "nope", "session": session }
    }))).await;
    assert_eq!((wrong.status, wrong.errcode()), (401, "M_FORBIDDEN"));
    alice.ok("DELETE", &format!("/_matrix/client/v3/devices/{laptop}"), Some(json!({
        "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": password("alice"), "session": session }
    }))).await;
    let gone = request(
        &http,
        "GET",
        &url("/_matrix/client/v3/account/whoami"),
        Some(&laptop_token),
        None,
    )
    .await;
    assert_eq!(gone.status, 401);

    // Profile: set, read, and the change reaches the member events of joined rooms.
    let room = alice.create_room(json!({})).await;
    alice
        .ok(
            "PUT",
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            Some(json!({ "displayname": "Alice A." })),
        )
        .await;
    alice
        .ok(
            "PUT",
            "/_matrix/client/v3/profile/@alice:localhost/avatar_url",
            Some(json!({ "avatar_url": "mxc://localhost/abc" })),
        )
        .await;
    let p = request(
        &http,
        "GET",
        &url("/_matrix/client/v3/profile/@alice:localhost"),
        None,
        None,
    )
    .await;
    assert_eq!(
        p.body,
        json!({ "displayname": "Alice A.", "avatar_url": "mxc://localhost/abc" })
    );
    let member = alice
        .ok("GET", &room_path(&room, "state/m.room.member/@alice:localhost"), None)
        .await;
    assert_eq!(member["displayname"], "Alice A.");
    let r = alice
        .call(
            "PUT",
            "/_matrix/client/v3/profile/@someone:localhost/displayname",
            Some(json!({ "displayname": "x" })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));

    // Password change logs out other devices when asked; the new password works.
    let other = request(&http, "POST", &url("/_matrix/client/v3/login"), None, Some(RawBody::Json(json!({
        "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": password("alice")
    })))).await;
    let first = alice
        .call(
            "POST",
            "/_matrix/client/v3/account/password",
            Some(json!({ "new_password": "brand-new-password" })),
        )
        .await;
    alice.ok("POST", "/_matrix/client/v3/account/password", Some(json!({
        "new_password": "brand-new-password", "logout_devices": true,
        "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": password("alice"), "session": first.body["session"] }
    }))).await;
    assert_eq!(
        request(
            &http,
            "GET",
            &url("/_matrix/client/v3/account/whoami"),
            Some(other.body["access_token"].as_str().unwrap()),
            None
        )
        .await
        .status,
        401
    );
    alice.ok("GET", "/_matrix/client/v3/account/whoami", None).await;

    // Deactivation: the account can no longer log in, and leaves its rooms.
    let first = alice
        .call("POST", "/_matrix/client/v3/account/deactivate", Some(json!({})))
        .await;
    alice.ok("POST", "/_matrix/client/v3/account/deactivate", Some(json!({
        "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "brand-new-password", "session": first.body["session"] }
    }))).await;
    let r = request(&http, "POST", &url("/_matrix/client/v3/login"), None, Some(RawBody::Json(json!({
        "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "brand-new-password"
    })))).await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_knocks_restricted_rooms_and_upgrades() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;

    // Aliases.
    let room = alice
        .create_room(json!({ "room_alias_name": "general", "preset": "public_chat" }))
        .await;
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(json!({ "room_alias_name": "general" })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_ROOM_IN_USE"));
    assert_eq!(
        bob.ok("GET", "/_matrix/client/v3/directory/room/%23general%3Alocalhost", None)
            .await["room_id"],
        room
    );
    alice
        .ok(
            "PUT",
            "/_matrix/client/v3/directory/room/%23other%3Alocalhost",
            Some(json!({ "room_id": room })),
        )
        .await;
    let aliases = alice.ok("GET", &room_path(&room, "aliases"), None).await;
    assert_eq!(aliases["aliases"], json!(["#general:localhost", "#other:localhost"]));
    let r = bob
        .call("DELETE", "/_matrix/client/v3/directory/room/%23other%3Alocalhost", None)
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    alice
        .ok("DELETE", "/_matrix/client/v3/directory/room/%23other%3Alocalhost", None)
        .await;
    bob.ok(
        "POST",
        "/_matrix/client/v3/join/%23general%3Alocalhost",
        Some(json!({})),
    )
    .await;
    let joined = alice.ok("GET", &room_path(&room, "joined_members"), None).await;
    assert!(joined["joined"]["@bob:localhost"].is_object());
    let members = alice
        .ok("GET", &room_path(&room, "members?membership=join"), None)
        .await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 2);

    // Knocking: Bob knocks on a knock room, Alice sees it and invites him in.
    let knock_room = alice
        .create_room(json!({ "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }] }))
        .await;
    let r = bob
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&knock_room)),
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/knock/{}", enc(&knock_room)),
        Some(json!({ "reason": "let me in" })),
    )
    .await;
    let bob_sync = bob.sync(None, 0).await;
    assert!(
        bob_sync["rooms"]["knock"][&knock_room]["knock_state"]["events"]
            .as_array()
            .is_some()
    );
    let m = alice
        .ok(
            "GET",
            &room_path(&knock_room, "state/m.room.member/@bob:localhost"),
            None,
        )
        .await;
    assert_eq!(
        (m["membership"].as_str(), m["reason"].as_str()),
        (Some("knock"), Some("let me in"))
    );
    alice
        .ok(
            "POST",
            &room_path(&knock_room, "invite"),
            Some(json!({ "user_id": "@bob:localhost" })),
        )
        .await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&knock_room)),
        Some(json!({})),
    )
    .await;

    // Restricted: members of the general room may join without an invite, others may not.
    let restricted = alice
        .create_room(json!({ "initial_state": [{ "type": "m.room.join_rules", "content": {
            "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": room }]
        } }] }))
        .await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&restricted)),
        Some(json!({})),
    )
    .await;
    let carol = Raw::register(&server, "carol").await;
    let r = carol
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&restricted)),
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));

    // Kick, ban and unban.
    alice
        .ok(
            "POST",
            &room_path(&room, "kick"),
            Some(json!({ "user_id": "@bob:localhost", "reason": "cool off" })),
        )
        .await;
    bob.ok(
        "POST",
        "/_matrix/client/v3/join/%23general%3Alocalhost",
        Some(json!({})),
    )
    .await;
    alice
        .ok(
            "POST",
            &room_path(&room, "ban"),
            Some(json!({ "user_id": "@bob:localhost" })),
        )
        .await;
    let r = bob
        .call(
            "POST",
            "/_matrix/client/v3/join/%23general%3Alocalhost",
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    alice
        .ok(
            "POST",
            &room_path(&room, "unban"),
            Some(json!({ "user_id": "@bob:localhost" })),
        )
        .await;
    bob.ok(
        "POST",
        "/_matrix/client/v3/join/%23general%3Alocalhost",
        Some(json!({})),
    )
    .await;
    bob.ok("POST", &room_path(&room, "leave"), Some(json!({}))).await;
    bob.ok("POST", &room_path(&room, "forget"), Some(json!({}))).await;
    let joined = bob.ok("GET", "/_matrix/client/v3/joined_rooms", None).await;
    assert!(
        !joined["joined_rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == room.as_str())
    );

    // Upgrade: a tombstone points to a new room of the new version, which points back.
    let old = alice
        .create_room(json!({ "room_version": "10", "name": "Old", "room_alias_name": "legacy" }))
        .await;
    let up = alice
        .ok(
            "POST",
            &room_path(&old, "upgrade"),
            Some(json!({ "new_version": "12" })),
        )
        .await;
    let new = up["replacement_room"].as_str().unwrap();
    let tomb = alice.ok("GET", &room_path(&old, "state/m.room.tombstone/"), None).await;
    assert_eq!(tomb["replacement_room"], new);
    let create = alice.ok("GET", &room_path(new, "state/m.room.create/"), None).await;
    assert_eq!(
        (
            create["room_version"].as_str(),
            create["predecessor"]["room_id"].as_str()
        ),
        (Some("12"), Some(old.as_str()))
    );
    assert_eq!(
        alice.ok("GET", &room_path(new, "state/m.room.name/"), None).await["name"],
        "Old"
    );
    assert_eq!(
        bob.ok("GET", "/_matrix/client/v3/directory/room/%23legacy%3Alocalhost", None)
            .await["room_id"],
        new
    );
    let r = bob
        .call("POST", &room_path(new, "upgrade"), Some(json!({ "new_version": "11" })))
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    for v in ["10", "11", "12"] {
        let r = alice.create_room(json!({ "room_version": v })).await;
        let c = alice.ok("GET", &room_path(&r, "state/m.room.create/"), None).await;
        assert_eq!(c["room_version"], v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_data_filters_receipts_threads_and_presence() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some(json!({})),
    )
    .await;
    let since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // Account data and tags arrive in sync.
    alice
        .ok(
            "PUT",
            "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.settings",
            Some(json!({ "theme": "dark" })),
        )
        .await;
    alice
        .ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/user/@alice:localhost/rooms/{}/account_data/org.example.room",
                enc(&room)
            ),
            Some(json!({ "pinned": true })),
        )
        .await;
    alice
        .ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/user/@alice:localhost/rooms/{}/tags/m.favourite",
                enc(&room)
            ),
            Some(json!({ "order": 0.5 })),
        )
        .await;
    let tags = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{}/tags", enc(&room)),
            None,
        )
        .await;
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.5);
    let s = alice.sync(Some(&since), 0).await;
    assert!(
        s["account_data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "org.example.settings" && e["content"]["theme"] == "dark")
    );
    let room_ad = events_of(&s, "join", &room, "account_data");
    assert!(room_ad.iter().any(|e| e["type"] == "org.example.room"));
    assert!(
        room_ad
            .iter()
            .any(|e| e["type"] == "m.tag" && e["content"]["tags"]["m.favourite"].is_object())
    );
    assert_eq!(
        alice
            .ok(
                "GET",
                "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.settings",
                None
            )
            .await["theme"],
        "dark"
    );
    let r = alice
        .call(
            "GET",
            "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.none",
            None,
        )
        .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
    alice
        .ok(
            "DELETE",
            &format!(
                "/_matrix/client/v3/user/@alice:localhost/rooms/{}/tags/m.favourite",
                enc(&room)
            ),
            None,
        )
        .await;

    // Filters: stored, read back, and applied to sync.
    let f = alice
        .ok(
            "POST",
            "/_matrix/client/v3/user/@alice:localhost/filter",
            Some(json!({ "room": { "timeline": { "limit": 2, "types": ["m.room.message"] } } })),
        )
        .await;
    let fid = f["filter_id"].as_str().unwrap().to_owned();
    assert_eq!(
        alice
            .ok(
                "GET",
                &format!("/_matrix/client/v3/user/@alice:localhost/filter/{fid}"),
                None
            )
            .await["room"]["timeline"]["limit"],
        2
    );
    for i in 0..4 {
        alice.send_text(&room, &format!("f{i}"), &format!("m{i}")).await;
    }
    let s = alice
        .ok("GET", &format!("/_matrix/client/v3/sync?filter={fid}"), None)
        .await;
    let tl = &s["rooms"]["join"][&room]["timeline"];
    let bodies: Vec<_> = tl["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["m2", "m3"]);
    assert_eq!(tl["limited"], true);
    let prev = tl["prev_batch"].as_str().unwrap();
    let older = alice
        .ok(
            "GET",
            &room_path(&room, &format!("messages?dir=b&limit=2&from={}", enc(prev))),
            None,
        )
        .await;
    let older: Vec<_> = older["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        older,
        vec!["m1", "m0"],
        "prev_batch continues exactly where the timeline starts"
    );

    // Receipts: a private receipt is seen only by its owner; threaded receipts keep their thread.
    let target = alice.send_text(&room, "r1", "read me").await.body["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    alice
        .ok(
            "POST",
            &room_path(&room, &format!("receipt/m.read.private/{}", enc(&target))),
            Some(json!({})),
        )
        .await;
    alice
        .ok(
            "POST",
            &room_path(&room, &format!("receipt/m.read/{}", enc(&target))),
            Some(json!({ "thread_id": "main" })),
        )
        .await;
    let s = bob.sync(Some(&since), 0).await;
    let eph = events_of(&s, "join", &room, "ephemeral");
    let receipt = eph.iter().find(|e| e["type"] == "m.receipt").expect("receipt");
    assert!(
        receipt["content"][&target]["m.read.private"].is_null(),
        "Bob must not see Alice's private receipt"
    );
    assert_eq!(
        receipt["content"][&target]["m.read"]["@alice:localhost"]["thread_id"],
        "main"
    );
    let mine = alice.sync(None, 0).await;
    let eph = events_of(&mine, "join", &room, "ephemeral");
    assert!(
        eph.iter()
            .any(|e| e["content"][&target]["m.read.private"]["@alice:localhost"].is_object())
    );
    alice
        .ok(
            "POST",
            &room_path(&room, "read_markers"),
            Some(json!({ "m.fully_read": target })),
        )
        .await;
    let fr = alice
        .ok(
            "GET",
            &format!(
                "/_matrix/client/v3/user/@alice:localhost/rooms/{}/account_data/m.fully_read",
                enc(&room)
            ),
            None,
        )
        .await;
    assert_eq!(fr["event_id"], target);
    let r = alice
        .call("POST", &room_path(&room, "receipt/m.read/$nope"), Some(json!({})))
        .await;
    assert_eq!(r.status, 404);

    // Threads: a reply in a thread lists the root and bundles its summary.
    let root = alice.send_text(&room, "t-root", "thread root").await.body["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.ok(
        "PUT",
        &room_path(&room, "send/m.room.message/t-reply"),
        Some(json!({
            "msgtype": "m.text", "body": "in thread", "m.relates_to": { "rel_type": "m.thread", "event_id": root }
        })),
    )
    .await;
    let threads = alice
        .ok("GET", &format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)), None)
        .await;
    assert_eq!(threads["chunk"][0]["event_id"], root);
    let summary = &threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(
        (
            summary["count"].as_u64(),
            summary["latest_event"]["content"]["body"].as_str()
        ),
        (Some(1), Some("in thread"))
    );
    let rel = alice
        .ok(
            "GET",
            &format!(
                "/_matrix/client/v1/rooms/{}/relations/{}/m.thread",
                enc(&room),
                enc(&root)
            ),
            None,
        )
        .await;
    assert_eq!(rel["chunk"].as_array().unwrap().len(), 1);

    // Timestamp lookup.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let t = alice
        .ok(
            "GET",
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={}&dir=b",
                enc(&room),
                now + 60_000
            ),
            None,
        )
        .await;
    assert!(t["event_id"].as_str().is_some());
    let r = alice
        .call(
            "GET",
            &format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?ts=1&dir=b", enc(&room)),
            None,
        )
        .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));

    // Presence: set, read by a room peer, delivered in sync.
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    alice
        .ok(
            "PUT",
            "/_matrix/client/v3/presence/@alice:localhost/status",
            Some(json!({ "presence": "unavailable", "status_msg": "lunch" })),
        )
        .await;
    let p = bob
        .ok("GET", "/_matrix/client/v3/presence/@alice:localhost/status", None)
        .await;
    assert_eq!(
        (p["presence"].as_str(), p["status_msg"].as_str()),
        (Some("unavailable"), Some("lunch"))
    );
    let s = bob.sync(Some(&since), 0).await;
    assert!(
        s["presence"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["sender"] == "@alice:localhost" && e["content"]["presence"] == "unavailable")
    );
    let stranger = Raw::register(&server, "stranger").await;
    let r = stranger
        .call("GET", "/_matrix/client/v3/presence/@alice:localhost/status", None)
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_can_be_disabled_and_discovery_answers() {
    let server = TestServer::start_with(&[("MISSIVE_PRESENCE", "false")]).await;
    let alice = Raw::register(&server, "alice").await;
    let r = alice
        .call(
            "PUT",
            "/_matrix/client/v3/presence/@alice:localhost/status",
            Some(json!({ "presence": "online" })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    let caps = alice.ok("GET", "/_matrix/client/v3/capabilities", None).await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");
    let http = reqwest::Client::new();
    let wk = request(
        &http,
        "GET",
        &format!("{}/.well-known/matrix/client", server.url),
        None,
        None,
    )
    .await;
    assert!(wk.body["m.homeserver"]["base_url"].as_str().is_some());
    let v = request(
        &http,
        "GET",
        &format!("{}/_matrix/client/versions", server.url),
        None,
        None,
    )
    .await;
    assert!(v.body["versions"].as_array().unwrap().iter().any(|x| x == "v1.12"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_profile_fields() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let base = "/_matrix/client/v3/profile/@alice:localhost";
    alice
        .ok("PUT", &format!("{base}/m.tz"), Some(json!({ "m.tz": "Europe/Paris" })))
        .await;
    alice
        .ok(
            "PUT",
            &format!("{base}/org.example.pronouns"),
            Some(json!({ "org.example.pronouns": ["she", "her"] })),
        )
        .await;
    alice
        .ok(
            "PUT",
            &format!("{base}/displayname"),
            Some(json!({ "displayname": "Alice" })),
        )
        .await;
    assert_eq!(
        bob.ok("GET", &format!("{base}/m.tz"), None).await,
        json!({ "m.tz": "Europe/Paris" })
    );
    let full = bob.ok("GET", base, None).await;
    assert_eq!(
        full,
        json!({ "displayname": "Alice", "m.tz": "Europe/Paris", "org.example.pronouns": ["she", "her"] })
    );
    let r = bob
        .call("PUT", &format!("{base}/m.tz"), Some(json!({ "m.tz": "UTC" })))
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    let big = "x".repeat(70 * 1024);
    let r = alice
        .call(
            "PUT",
            &format!("{base}/org.example.big"),
            Some(json!({ "org.example.big": big })),
        )
        .await;
    assert_eq!(r.status / 100, 4, "an oversized profile is refused: {}", r.body);
    alice.ok("DELETE", &format!("{base}/m.tz"), None).await;
    let r = bob.call("GET", &format!("{base}/m.tz"), None).await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
    assert_eq!(
        bob.ok("GET", &format!("{base}/displayname"), None).await["displayname"],
        "Alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_summaries_show_what_may_be_previewed() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let public = alice
        .create_room(json!({ "preset": "public_chat", "name": "Town hall", "topic": "All welcome", "room_alias_name": "townhall" }))
        .await;
    let private = alice
        .create_room(json!({ "preset": "private_chat", "name": "Cabinet" }))
        .await;

    let s = bob
        .ok("GET", "/_matrix/client/v1/room_summary/%23townhall%3Alocalhost", None)
        .await;
    assert_eq!(s["room_id"], public);
    assert_eq!(
        (s["name"].as_str(), s["topic"].as_str()),
        (Some("Town hall"), Some("All welcome"))
    );
    // `public` is the spec's default join rule, which may be left out.
    assert_eq!(
        (
            s["num_joined_members"].as_u64(),
            s["join_rule"].as_str().unwrap_or("public")
        ),
        (Some(1), "public")
    );
    assert!(s.get("membership").is_none_or(|m| m.is_null()));
    let anon = request(
        &reqwest::Client::new(),
        "GET",
        &format!("{}/_matrix/client/v1/room_summary/{}", server.url, enc(&public)),
        None,
        None,
    )
    .await;
    assert_eq!(anon.status, 200);

    // A private room is unknown to outsiders, and visible once invited.
    let r = bob
        .call(
            "GET",
            &format!("/_matrix/client/v1/room_summary/{}", enc(&private)),
            None,
        )
        .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
    alice
        .ok(
            "POST",
            &room_path(&private, "invite"),
            Some(json!({ "user_id": bob.user_id })),
        )
        .await;
    let s = bob
        .ok(
            "GET",
            &format!("/_matrix/client/v1/room_summary/{}", enc(&private)),
            None,
        )
        .await;
    assert_eq!(
        (s["name"].as_str(), s["membership"].as_str()),
        (Some("Cabinet"), Some("invite"))
    );
    let r = bob
        .call("GET", "/_matrix/client/v1/room_summary/%23nowhere%3Alocalhost", None)
        .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_rooms_created_at_once_get_distinct_ids() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let mut tasks = vec![];
    for _ in 0..12 {
        let a = alice.clone();
        tasks.push(tokio::spawn(async move {
            a.call("POST", "/_matrix/client/v3/createRoom", Some(json!({}))).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        ids.insert(r.body["room_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 12);
}
