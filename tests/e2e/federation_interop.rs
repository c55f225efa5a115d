//! Federation as other implementations practise it: three servers (two
//! Missive and Synapse) where a server joins while others talk, rooms of
//! the older versions hosted on either side, and the older endpoints
//! (v1 send_join, send_leave and invite, key paths with a key ID).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    common::{Raw, enc},
    fed_harness::{FakeServer, FedServer, SynapseServer, now_ms},
    federation::{join_over, wait_joined_raw, wait_plain_text},
};

const WAIT: Duration = Duration::from_secs(30);

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_reaches_every_server() {
    let Some(syn) = SynapseServer::start().await else {
        return;
    };
    let a = FedServer::start().await;
    let b = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let bob = Raw::register(&b, "bob").await;
    let sam = Raw::register(&syn.as_test_server(), "sam").await;

    // Synapse joins through the room's server, then through the other
    // Missive; each time both Missive users speak the moment its join is
    // done, before the other Missive server may have heard of it.
    for (through, label) in [(a.server_name(), "via A"), (b.server_name(), "via B")] {
        let room = alice.create_room(json!({ "preset": "public_chat" })).await;
        join_over(&bob, &room, a.server_name()).await;
        wait_joined_raw(&alice, &room, &bob.user_id).await;
        join_over(&sam, &room, through).await;
        let from_bob = format!("bob, just after sam joined {label}");
        let from_alice = format!("alice, just after sam joined {label}");
        let (txn_b, txn_a) = (format!("b {label}"), format!("a {label}"));
        let (rb, ra) = tokio::join!(
            bob.send_text(&room, &txn_b, &from_bob),
            alice.send_text(&room, &txn_a, &from_alice)
        );
        assert_eq!((rb.status, ra.status), (200, 200));
        wait_plain_text(&sam, &room, &from_bob).await;
        wait_plain_text(&sam, &room, &from_alice).await;
        // And Synapse's users reach both Missive servers.
        let from_sam = format!("sam, joined {label}");
        sam.send_text(&room, &format!("s {label}"), &from_sam).await;
        wait_plain_text(&alice, &room, &from_sam).await;
        wait_plain_text(&bob, &room, &from_sam).await;
        wait_plain_text(&alice, &room, &from_bob).await;
        wait_plain_text(&bob, &room, &from_alice).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_room_versions_hosted_on_either_side() {
    let Some(syn) = SynapseServer::start().await else {
        return;
    };
    let a = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let sam = Raw::register(&syn.as_test_server(), "sam").await;

    for version in ["1", "2", "3", "5", "9"] {
        // Hosted by Synapse, joined from Missive.
        let room = sam
            .create_room(json!({ "preset": "public_chat", "room_version": version }))
            .await;
        join_over(&alice, &room, syn.server_name()).await;
        wait_joined_raw(&sam, &room, &alice.user_id).await;
        let m = sam
            .send_text(&room, &format!("s1-{version}"), &format!("v{version} from synapse"))
            .await;
        assert_eq!(m.status, 200);
        wait_plain_text(&alice, &room, &format!("v{version} from synapse")).await;
        alice
            .send_text(&room, &format!("a1-{version}"), &format!("v{version} from missive"))
            .await;
        wait_plain_text(&sam, &room, &format!("v{version} from missive")).await;
        // State and redaction cross in this version's format.
        let member_path = room_path(&room, &format!("state/m.room.member/{}", enc(&alice.user_id)));
        alice
            .ok(
                "PUT",
                &member_path,
                Some(json!({ "membership": "join", "displayname": "Alice (room)" })),
            )
            .await;
        let deadline = Instant::now() + WAIT;
        loop {
            let m = sam.ok("GET", &room_path(&room, "joined_members"), None).await;
            if m["joined"][&alice.user_id]["display_name"] == "Alice (room)" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "v{version}: the name from missive never arrived: {m}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = sam
            .call(
                "PUT",
                &room_path(&room, "state/m.room.topic/"),
                Some(json!({ "topic": "set on synapse" })),
            )
            .await;
        assert_eq!(r.status, 200, "v{version}: {}", r.body);
        let deadline = Instant::now() + WAIT;
        loop {
            let t = alice
                .call("GET", &room_path(&room, "state/m.room.topic/"), None)
                .await
                .body;
            if t["topic"] == "set on synapse" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "v{version}: the topic from synapse never arrived: {t}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ev = m.body["event_id"].as_str().unwrap().to_owned();
        sam.ok(
            "PUT",
            &room_path(&room, &format!("redact/{}/r-{version}", enc(&ev))),
            Some(json!({})),
        )
        .await;
        let deadline = Instant::now() + WAIT;
        loop {
            let e = alice
                .ok("GET", &room_path(&room, &format!("event/{}", enc(&ev))), None)
                .await;
            if e["content"] == json!({}) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "v{version}: the redaction never applied: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Hosted by Missive, joined from Synapse.
        let room = alice
            .create_room(json!({ "preset": "public_chat", "room_version": version }))
            .await;
        join_over(&sam, &room, a.server_name()).await;
        wait_joined_raw(&alice, &room, &sam.user_id).await;
        alice
            .send_text(&room, &format!("a2-{version}"), &format!("v{version} room on missive"))
            .await;
        wait_plain_text(&sam, &room, &format!("v{version} room on missive")).await;
        sam.send_text(
            &room,
            &format!("s2-{version}"),
            &format!("v{version} reply from synapse"),
        )
        .await;
        wait_plain_text(&alice, &room, &format!("v{version} reply from synapse")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_federation_endpoints() {
    let fake = FakeServer::start().await;
    let a = FedServer::start().await;
    let alice = Raw::register(&a, "alice").await;
    let bob = Raw::register(&a, "bob").await;
    let dest = a.server_name().to_owned();
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;

    // Keys by their ID, at the paths other implementations still use.
    let (status, keys) =
        crate::fed_harness::raw_federation("GET", &dest, "/_matrix/key/v2/server/ed25519:anything", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(keys["server_name"], dest);
    assert!(keys["old_verify_keys"].is_object());
    assert_eq!(keys["verify_keys"].as_object().unwrap().len(), 1);
    let key_id = keys["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    let (status, notary) = crate::fed_harness::raw_federation(
        "GET",
        &dest,
        &format!("/_matrix/key/v2/query/{}/{}", enc(&dest), enc(&key_id)),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{notary}");
    assert_eq!(notary["server_keys"][0]["server_name"], dest);

    // v1 send_join: the v2 answer behind its status code.
    let mallory = fake.user("mallory");
    let (join_id, join) = fake.signed_join(&dest, &room, &mallory).await;
    let (status, answer) = fake
        .request(
            "PUT",
            &dest,
            &format!("/_matrix/federation/v1/send_join/{}/{}", enc(&room), enc(&join_id)),
            Some(join),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer[0], 200, "{answer}");
    assert!(answer[1]["state"].as_array().is_some_and(|s| !s.is_empty()), "{answer}");
    assert!(answer[1]["auth_chain"].is_array());
    let deadline = Instant::now() + WAIT;
    while alice.ok("GET", &room_path(&room, "joined_members"), None).await["joined"][&mallory].is_null() {
        assert!(Instant::now() < deadline, "the v1 join did not take");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // v1 send_leave: `[200, {}]`; a forged one is refused.
    let (status, template) = fake
        .request(
            "GET",
            &dest,
            &format!("/_matrix/federation/v1/make_leave/{}/{}", enc(&room), enc(&mallory)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{template}");
    let mut leave = template["event"].clone();
    leave["origin_server_ts"] = now_ms().into();
    let (forged_id, forged) = fake.sign_pdu_forged(leave.clone(), "12");
    let (status, _) = fake
        .request(
            "PUT",
            &dest,
            &format!("/_matrix/federation/v1/send_leave/{}/{}", enc(&room), enc(&forged_id)),
            Some(forged),
        )
        .await;
    assert_eq!(status, 403);
    let (leave_id, leave) = fake.sign_pdu(leave, "12");
    let (status, answer) = fake
        .request(
            "PUT",
            &dest,
            &format!("/_matrix/federation/v1/send_leave/{}/{}", enc(&room), enc(&leave_id)),
            Some(leave),
        )
        .await;
    assert_eq!((status, answer.clone()), (200, json!([200, {}])), "{answer}");

    // v1 invite: the bare event, the room's state in its `unsigned`.
    let remote_room = format!("!elsewhere:{}", fake.name);
    let create = json!({
        "type": "m.room.create", "state_key": "", "sender": mallory,
        "content": { "room_version": "10", "creator": mallory },
    });
    let (invite_id, invite) = fake.sign_pdu(
        json!({
            "type": "m.room.member", "state_key": bob.user_id, "sender": mallory, "room_id": remote_room,
            "content": { "membership": "invite" }, "origin_server_ts": now_ms(), "depth": 5,
            "prev_events": [], "auth_events": [],
        }),
        "10",
    );
    let mut body = invite.clone();
    body["unsigned"] = json!({ "invite_room_state": [create] });
    let (status, answer) = fake
        .request(
            "PUT",
            &dest,
            &format!(
                "/_matrix/federation/v1/invite/{}/{}",
                enc(&remote_room),
                enc(&invite_id)
            ),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer[0], 200);
    let signed: &Value = &answer[1]["event"];
    assert!(
        signed["signatures"][&dest].is_object(),
        "the invitee's server signs: {answer}"
    );
    let s = bob.sync(None, 0).await;
    assert!(s["rooms"]["invite"][&remote_room].is_object(), "{s}");
}
