//! Push: the default push rules evaluated for every event, the unread
//! counts and `/notifications` they make, push rule and pusher CRUD, and
//! delivery to a push gateway — a small HTTP server inside the test that
//! records what it is sent.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::common::{Raw, TestServer, enc};

/// A push gateway: answers `POST /_matrix/push/v1/notify`, recording each
/// request body; rejects the pushkeys in `reject`; answers 500 to the next
/// `fail` requests.
#[derive(Clone)]
struct Gateway {
    url: String,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    reject: Arc<Mutex<HashSet<String>>>,
    fail: Arc<AtomicUsize>,
}

impl Gateway {
    async fn start() -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
        let gw = Gateway {
            url: format!("http://{}/_matrix/push/v1/notify", listener.local_addr().expect("addr")),
            requests: Default::default(),
            reject: Default::default(),
            fail: Default::default(),
        };
        let g = gw.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(g.clone().handle(stream));
            }
        });
        gw
    }

    async fn handle(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
        self.requests.lock().unwrap().push((path, body.clone()));
        let failing = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let (status, reply) = if failing {
            ("500 Internal Server Error", json!({}))
        } else {
            let reject = self.reject.lock().unwrap();
            let rejected: Vec<&str> = body["notification"]["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["pushkey"].as_str())
                .filter(|k| reject.contains(*k))
                .collect();
            ("200 OK", json!({ "rejected": rejected }))
        };
        let reply = reply.to_string();
        let res = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
        let _ = stream.write_all(res.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// Every request for an event (failed attempts included), in arrival order.
    fn for_event(&self, event_id: &str) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b["notification"]["event_id"] == event_id)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Waits for a request about an event to the given pushkey.
    async fn wait_for(&self, event_id: &str, pushkey: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(r) = self
                .for_event(event_id)
                .into_iter()
                .find(|r| r["notification"]["devices"][0]["pushkey"] == pushkey)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no push for {event_id} to {pushkey}; got {:?}",
                self.requests.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn to_pushkey(&self, pushkey: &str) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b["notification"]["devices"][0]["pushkey"] == pushkey)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

async fn send(user: &Raw, room: &str, content: Value) -> String {
    let txn = format!("t{}", rand_suffix());
    user.ok(
        "PUT",
        &room_path(room, &format!("send/m.room.message/{txn}")),
        Some(content),
    )
    .await["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn text(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

/// A room created by `owner` (named, when given) that the others join.
async fn room_with(owner: &Raw, name: Option<&str>, others: &[&Raw]) -> String {
    let invite: Vec<&str> = others.iter().map(|o| o.user_id.as_str()).collect();
    let mut body = json!({ "preset": "private_chat", "invite": invite });
    if let Some(n) = name {
        body["name"] = n.into();
    }
    let room = owner.create_room(body).await;
    for o in others {
        o.ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(json!({})),
        )
        .await;
    }
    room
}

async fn set_pusher(user: &Raw, gw: &Gateway, pushkey: &str, extra: Value) {
    let mut data = json!({ "url": gw.url });
    if let Value::Object(extra) = extra {
        data.as_object_mut().unwrap().extend(extra);
    }
    user.ok(
        "POST",
        "/_matrix/client/v3/pushers/set",
        Some(json!({
            "kind": "http",
            "app_id": "org.example.app",
            "pushkey": pushkey,
            "app_display_name": "Example",
            "device_display_name": "Phone",
            "lang": "fr",
            "data": data,
        })),
    )
    .await;
}

/// The unread counts of a room in a fresh `/sync`.
async fn unread(user: &Raw, room: &str) -> (u64, u64) {
    let sync = user
        .sync_filtered(None, 0, r#"{"room":{"timeline":{"limit":1}}}"#)
        .await;
    let u = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        u["notification_count"].as_u64().unwrap_or(0),
        u["highlight_count"].as_u64().unwrap_or(0),
    )
}

/// Waits until a room's unread counts are as expected (they are recorded
/// just after the event).
async fn wait_unread(user: &Raw, room: &str, want: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = unread(user, room).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "unread counts {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn notifications(user: &Raw, query: &str) -> Vec<Value> {
    user.ok("GET", &format!("/_matrix/client/v3/notifications{query}"), None)
        .await["notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_pushes_once_with_counts_and_a_receipt_resets_them() {
    let server = TestServer::start().await;
    let gw = Gateway::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let carol = Raw::register(&server, "carol").await;
    alice
        .ok(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id)),
            Some(json!({ "displayname": "Alice A." })),
        )
        .await;
    let room = room_with(&alice, Some("Ops"), &[&bob, &carol]).await;
    set_pusher(&bob, &gw, "bob-phone", json!({ "custom": 1 })).await;

    let mut mention = text("bob: the report, please");
    mention["m.mentions"] = json!({ "user_ids": [bob.user_id] });
    let event = send(&alice, &room, mention).await;

    let req = gw.wait_for(&event, "bob-phone").await;
    let n = &req["notification"];
    assert_eq!(n["room_id"], room);
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.user_id);
    assert_eq!(n["sender_display_name"], "Alice A.");
    assert_eq!(n["room_name"], "Ops");
    assert_eq!(n["content"]["body"], "bob: the report, please");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"], json!({ "unread": 1 }));
    assert_eq!(n["id"], event, "the legacy name of event_id, for older gateways");
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.example.app");
    assert!(device["pushkey_ts"].as_u64().is_some_and(|t| t > 1_600_000_000));
    assert_eq!(device["data"], json!({ "custom": 1 }), "data minus url");
    assert_eq!(device["tweaks"]["highlight"], true);
    assert_eq!(device["tweaks"]["sound"], "default");
    assert_eq!(n["devices"].as_array().unwrap().len(), 1);

    // Exactly one request: nothing else in the room notified bob.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.for_event(&event).len(), 1);
    assert_eq!(gw.to_pushkey("bob-phone").len(), 1);

    // The same counts in /sync and /notifications.
    wait_unread(&bob, &room, (1, 1)).await;
    let list = notifications(&bob, "").await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["event"]["event_id"], event);
    assert_eq!(list[0]["room_id"], room);
    assert_eq!(list[0]["read"], false);
    assert!(list[0]["actions"].as_array().unwrap().contains(&json!("notify")));
    // Before it, the invitation notified bob (no pusher yet); joining read it.
    assert_eq!(list[1]["event"]["type"], "m.room.member");
    assert_eq!(list[1]["event"]["content"]["membership"], "invite");
    assert_eq!(list[1]["read"], true);
    // Carol was not mentioned: a plain message notification, no highlight.
    wait_unread(&carol, &room, (1, 0)).await;

    // A second message counts on, and the gateway's unread count follows.
    let second = send(&alice, &room, text("and the budget")).await;
    let req = gw.wait_for(&second, "bob-phone").await;
    assert_eq!(req["notification"]["counts"]["unread"], 2);
    assert_eq!(req["notification"]["prio"], "low", "no sound, no highlight");
    wait_unread(&bob, &room, (2, 1)).await;

    // A read receipt on the first leaves the second unread; on the second, none.
    bob.ok(
        "POST",
        &room_path(&room, &format!("receipt/m.read/{}", enc(&event))),
        Some(json!({})),
    )
    .await;
    wait_unread(&bob, &room, (1, 0)).await;
    bob.ok(
        "POST",
        &room_path(&room, &format!("receipt/m.read.private/{}", enc(&second))),
        Some(json!({})),
    )
    .await;
    wait_unread(&bob, &room, (0, 0)).await;
    let list = notifications(&bob, "").await;
    assert!(list.iter().all(|n| n["read"] == true), "{list:?}");
    // Each receipt that lowered the count told the phone its new badge,
    // in a notification without an event: 1, then 0.
    let deadline = Instant::now() + Duration::from_secs(15);
    let badges = loop {
        let badges: Vec<Value> = gw
            .to_pushkey("bob-phone")
            .into_iter()
            .filter(|r| r["notification"].get("event_id").is_none())
            .map(|r| r["notification"]["counts"]["unread"].clone())
            .collect();
        if badges.len() >= 2 || Instant::now() > deadline {
            break badges;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(badges, vec![json!(1), json!(0)]);

    // An incremental sync reports the counts changed by a new notification.
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let third = send(&alice, &room, text("thanks")).await;
    gw.wait_for(&third, "bob-phone").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut next = since;
    loop {
        let s = bob.sync(Some(&next), 1000).await;
        next = s["next_batch"].as_str().unwrap().to_owned();
        if s["rooms"]["join"][&room]["unread_notifications"]["notification_count"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "incremental sync never showed the count");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_mentions_need_the_power_level() {
    let server = TestServer::start().await;
    let gw = Gateway::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let carol = Raw::register(&server, "carol").await;
    let room = room_with(&alice, None, &[&bob, &carol]).await;
    set_pusher(&bob, &gw, "bob-phone", json!({})).await;
    let at_room = || {
        let mut c = text("@room meeting now");
        c["m.mentions"] = json!({ "room": true });
        c
    };

    // Carol (power 0) may not notify the room: a plain message for bob.
    let from_carol = send(&carol, &room, at_room()).await;
    let req = gw.wait_for(&from_carol, "bob-phone").await;
    assert!(
        req["notification"]["devices"][0]["tweaks"].get("highlight").is_none(),
        "{req}"
    );
    // Alice (the creator) may: it highlights.
    let from_alice = send(&alice, &room, at_room()).await;
    let req = gw.wait_for(&from_alice, "bob-phone").await;
    assert_eq!(req["notification"]["devices"][0]["tweaks"]["highlight"], true);
    assert_eq!(req["notification"]["prio"], "high");
    wait_unread(&bob, &room, (2, 1)).await;

    // Once carol is given notifications.room's level (50), hers highlight too.
    let mut pl = alice
        .ok("GET", &room_path(&room, "state/m.room.power_levels/"), None)
        .await;
    pl["users"][&carol.user_id] = 50.into();
    alice
        .ok("PUT", &room_path(&room, "state/m.room.power_levels/"), Some(pl))
        .await;
    let promoted = send(&carol, &room, at_room()).await;
    let req = gw.wait_for(&promoted, "bob-phone").await;
    assert_eq!(req["notification"]["devices"][0]["tweaks"]["highlight"], true);

    let highlights = notifications(&bob, "?only=highlight").await;
    let ids: Vec<&str> = highlights
        .iter()
        .filter_map(|n| n["event"]["event_id"].as_str())
        .collect();
    assert_eq!(ids, [promoted.as_str(), from_alice.as_str()], "newest first");
    // Pagination: one at a time, newest first.
    let page = bob.ok("GET", "/_matrix/client/v3/notifications?limit=1", None).await;
    assert_eq!(page["notifications"][0]["event"]["event_id"], promoted);
    let from = page["next_token"].as_str().expect("next_token").to_owned();
    let page = bob
        .ok(
            "GET",
            &format!("/_matrix/client/v3/notifications?limit=1&from={}", enc(&from)),
            None,
        )
        .await;
    assert_eq!(page["notifications"][0]["event"]["event_id"], from_alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_messages_notify_the_other_not_the_sender() {
    let server = TestServer::start().await;
    let gw = Gateway::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let room = room_with(&alice, None, &[&bob]).await;
    set_pusher(&alice, &gw, "alice-phone", json!({})).await;
    set_pusher(&bob, &gw, "bob-phone", json!({ "format": "event_id_only" })).await;

    let from_bob = send(&bob, &room, text("hello")).await;
    let req = gw.wait_for(&from_bob, "alice-phone").await;
    // The one-to-one rule: notify with a sound, no highlight.
    let tweaks = &req["notification"]["devices"][0]["tweaks"];
    assert_eq!(tweaks["sound"], "default");
    assert!(tweaks.get("highlight").is_none_or(|h| h == false));

    let from_alice = send(&alice, &room, text("hi bob")).await;
    let req = gw.wait_for(&from_alice, "bob-phone").await;
    // event_id_only: the event's ID, room and counts, not its content.
    let n = &req["notification"];
    assert_eq!(n["room_id"], room);
    assert_eq!(n["counts"]["unread"], 1);
    assert!(n.get("content").is_none() && n.get("sender").is_none() && n.get("type").is_none());
    assert_eq!(n["devices"][0]["data"], json!({ "format": "event_id_only" }));

    // Nobody is pushed their own message.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        gw.for_event(&from_bob)
            .iter()
            .all(|r| r["notification"]["devices"][0]["pushkey"] != "bob-phone")
    );
    assert!(
        gw.for_event(&from_alice)
            .iter()
            .all(|r| r["notification"]["devices"][0]["pushkey"] != "alice-phone")
    );
    // What one sends, one has read up to: alice answered after bob's message.
    wait_unread(&alice, &room, (0, 0)).await;
    wait_unread(&bob, &room, (1, 0)).await;
    assert_eq!(notifications(&alice, "").await[0]["read"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rule_crud_and_a_muted_room() {
    let server = TestServer::start().await;
    let gw = Gateway::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let carol = Raw::register(&server, "carol").await;
    let room = room_with(&alice, None, &[&bob, &carol]).await;
    set_pusher(&bob, &gw, "bob-phone", json!({})).await;

    // The spec's default rules.
    let all = bob.ok("GET", "/_matrix/client/v3/pushrules/", None).await;
    let ids = |kind: &str, v: &Value| -> Vec<String> {
        v[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let overrides = ids("override", &all["global"]);
    assert_eq!(overrides[0], ".m.rule.master");
    for id in [
        ".m.rule.suppress_notices",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
    ] {
        assert!(overrides.iter().any(|r| r == id), "{id} in {overrides:?}");
    }
    let underrides = ids("underride", &all["global"]);
    for id in [".m.rule.room_one_to_one", ".m.rule.message", ".m.rule.encrypted"] {
        assert!(underrides.iter().any(|r| r == id), "{id} in {underrides:?}");
    }
    let global = bob.ok("GET", "/_matrix/client/v3/pushrules/global/", None).await;
    assert_eq!(global, all["global"]);
    let master = bob
        .ok(
            "GET",
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master",
            None,
        )
        .await;
    assert_eq!(
        (master["enabled"].clone(), master["default"].clone()),
        (json!(false), json!(true))
    );

    // Mute the room with a room rule without actions.
    let rule_path = format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room));
    bob.ok("PUT", &rule_path, Some(json!({ "actions": [] }))).await;
    let rule = bob.ok("GET", &rule_path, None).await;
    assert_eq!(
        (rule["rule_id"].clone(), rule["actions"].clone()),
        (json!(room), json!([]))
    );
    assert_eq!(
        bob.ok("GET", &format!("{rule_path}/enabled"), None).await["enabled"],
        true
    );
    // Clients see the rules in their account data.
    let sync = bob.sync(None, 0).await;
    let pushrules = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules in sync")
        .clone();
    assert_eq!(pushrules["content"]["global"]["room"][0]["rule_id"], room);
    // … and cannot write them as plain account data.
    let r = bob
        .call(
            "PUT",
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.push_rules",
                enc(&bob.user_id)
            ),
            Some(json!({ "global": {} })),
        )
        .await;
    assert_eq!(r.status, 400);

    let muted = send(&alice, &room, text("nobody hears this")).await;
    // Disabled, the rule no longer applies.
    bob.ok(
        "PUT",
        &format!("{rule_path}/enabled"),
        Some(json!({ "enabled": false })),
    )
    .await;
    let heard = send(&alice, &room, text("now you hear")).await;
    gw.wait_for(&heard, "bob-phone").await;
    // Events are evaluated in order: had the muted one notified, it would be here.
    assert!(gw.for_event(&muted).is_empty());
    let list = notifications(&bob, "").await;
    assert!(list.iter().all(|n| n["event"]["event_id"] != muted));

    // Re-enabled with notify actions, then deleted.
    bob.ok("PUT", &format!("{rule_path}/enabled"), Some(json!({ "enabled": true })))
        .await;
    bob.ok(
        "PUT",
        &format!("{rule_path}/actions"),
        Some(json!({ "actions": ["notify", { "set_tweak": "highlight" }] })),
    )
    .await;
    let actions = bob.ok("GET", &format!("{rule_path}/actions"), None).await;
    assert_eq!(actions["actions"], json!(["notify", { "set_tweak": "highlight" }]));
    let loud = send(&alice, &room, text("loud")).await;
    let req = gw.wait_for(&loud, "bob-phone").await;
    assert_eq!(req["notification"]["devices"][0]["tweaks"]["highlight"], true);
    bob.ok("DELETE", &rule_path, None).await;
    let r = bob.call("GET", &rule_path, None).await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));

    // Ordering of user rules with before and after.
    let put = |id: &str, query: &str| {
        let path = format!("/_matrix/client/v3/pushrules/global/override/{id}{query}");
        let bob = bob.clone();
        async move {
            bob.ok(
                "PUT",
                &path,
                Some(json!({
                    "actions": [],
                    "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": "x" }],
                })),
            )
            .await
        }
    };
    put("first", "").await;
    put("last", "?after=first").await;
    put("middle", "?before=last").await;
    let overrides = ids(
        "override",
        &bob.ok("GET", "/_matrix/client/v3/pushrules/global/", None).await,
    );
    let pos = |id: &str| overrides.iter().position(|r| r == id).unwrap();
    assert!(pos(".m.rule.master") < pos("first"), "{overrides:?}");
    assert!(
        pos("first") < pos("middle") && pos("middle") < pos("last"),
        "{overrides:?}"
    );

    // A sender rule mutes one person everywhere.
    bob.ok(
        "PUT",
        &format!("/_matrix/client/v3/pushrules/global/sender/{}", enc(&carol.user_id)),
        Some(json!({ "actions": [] })),
    )
    .await;
    let from_carol = send(&carol, &room, text("hello")).await;
    let from_alice = send(&alice, &room, text("hello too")).await;
    gw.wait_for(&from_alice, "bob-phone").await;
    assert!(gw.for_event(&from_carol).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_push_rules_and_pushers_are_refused() {
    let server = TestServer::start().await;
    let gw = Gateway::start().await;
    let bob = Raw::register(&server, "bob").await;
    let base = "/_matrix/client/v3/pushrules/global";

    // Paths that name no kind, scope or attribute: 400 M_UNRECOGNIZED, as
    // the reference server answers; `/pushrules` itself is no endpoint.
    for (method, path) in [
        ("GET", format!("{base}/nonsense/x")),
        ("DELETE", format!("{base}/nonsense/x")),
        ("GET", format!("{base}/nonsense/x/enabled")),
        ("GET", format!("{base}/nonsense/")),
        ("GET", base.to_owned()),
        ("GET", format!("{base}/room")),
        ("GET", "/_matrix/client/v3/pushrules/not_a_scope/".to_owned()),
        ("GET", format!("{base}/override/.m.rule.master/colour")),
        ("PUT", format!("{base}/nonsense/x")),
    ] {
        let r = bob.call(method, &path, Some(json!({ "actions": [] }))).await;
        assert_eq!(
            (r.status, r.errcode()),
            (400, "M_UNRECOGNIZED"),
            "{method} {path}: {}",
            r.body
        );
    }
    let r = bob.call("GET", "/_matrix/client/v3/pushrules", None).await;
    assert_eq!((r.status, r.errcode()), (404, "M_UNRECOGNIZED"));
    // One kind's rules, as a list.
    let rooms = bob.ok("GET", &format!("{base}/override/"), None).await;
    let ids: Vec<&str> = rooms
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&".m.rule.master"), "{rooms}");
    assert_eq!(bob.ok("GET", &format!("{base}/room/"), None).await, json!([]));
    // Unknown rule IDs.
    for (method, path) in [
        ("GET", format!("{base}/override/nope")),
        ("DELETE", format!("{base}/override/nope")),
        ("GET", format!("{base}/override/nope/enabled")),
        ("GET", format!("{base}/override/nope/actions")),
    ] {
        let r = bob.call(method, &path, None).await;
        assert_eq!(
            (r.status, r.errcode()),
            (404, "M_NOT_FOUND"),
            "{method} {path}: {}",
            r.body
        );
    }
    for (path, body) in [
        (format!("{base}/override/nope/enabled"), json!({ "enabled": true })),
        (format!("{base}/override/nope/actions"), json!({ "actions": [] })),
    ] {
        let r = bob.call("PUT", &path, Some(body)).await;
        assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"), "PUT {path}: {}", r.body);
    }
    // Server-default rule IDs are reserved, and their rules cannot be deleted.
    let r = bob
        .call(
            "PUT",
            &format!("{base}/content/.mine"),
            Some(json!({ "actions": [], "pattern": "x" })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_PARAM"), "{}", r.body);
    let r = bob
        .call("DELETE", &format!("{base}/override/.m.rule.master"), None)
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // A relative position to a missing rule.
    let r = bob
        .call(
            "PUT",
            &format!("{base}/content/mine?before=ghost"),
            Some(json!({ "actions": [], "pattern": "x" })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"), "{}", r.body);
    // A server-default rule's actions can change.
    bob.ok(
        "PUT",
        &format!("{base}/underride/.m.rule.message/actions"),
        Some(json!({ "actions": [] })),
    )
    .await;
    assert_eq!(
        bob.ok("GET", &format!("{base}/underride/.m.rule.message/actions"), None)
            .await["actions"],
        json!([])
    );

    // Pushers: bad URLs, email pushers.
    let pusher = |kind: Value, data: Value| {
        json!({
            "kind": kind, "app_id": "org.example.app", "pushkey": "k1",
            "app_display_name": "Example", "device_display_name": "Phone", "lang": "en", "data": data,
        })
    };
    for url in [
        "https://push.example.org/notify",
        "ftp://push.example.org/_matrix/push/v1/notify",
        "/_matrix/push/v1/notify",
    ] {
        let r = bob
            .call(
                "POST",
                "/_matrix/client/v3/pushers/set",
                Some(pusher("http".into(), json!({ "url": url }))),
            )
            .await;
        assert_eq!((r.status, r.errcode()), (400, "M_INVALID_PARAM"), "{url}: {}", r.body);
    }
    let r = bob
        .call(
            "POST",
            "/_matrix/client/v3/pushers/set",
            Some(pusher("email".into(), json!({}))),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_PARAM"));
    assert!(r.body["error"].as_str().unwrap().contains("email"));
    let none = bob.ok("GET", "/_matrix/client/v3/pushers", None).await;
    assert_eq!(none["pushers"], json!([]));

    // Set, replace, append, delete.
    bob.ok(
        "POST",
        "/_matrix/client/v3/pushers/set",
        Some(pusher(
            "http".into(),
            json!({ "url": gw.url, "format": "event_id_only" }),
        )),
    )
    .await;
    let list = bob.ok("GET", "/_matrix/client/v3/pushers", None).await;
    assert_eq!(list["pushers"].as_array().unwrap().len(), 1);
    let p = &list["pushers"][0];
    assert_eq!((p["kind"].clone(), p["pushkey"].clone()), (json!("http"), json!("k1")));
    assert_eq!(p["data"], json!({ "url": gw.url, "format": "event_id_only" }));
    let mut other = pusher("http".into(), json!({ "url": gw.url }));
    other["pushkey"] = "k2".into();
    other["append"] = true.into();
    bob.ok("POST", "/_matrix/client/v3/pushers/set", Some(other)).await;
    let list = bob.ok("GET", "/_matrix/client/v3/pushers", None).await;
    assert_eq!(list["pushers"].as_array().unwrap().len(), 2);
    bob.ok(
        "POST",
        "/_matrix/client/v3/pushers/set",
        Some(json!({ "kind": null, "app_id": "org.example.app", "pushkey": "k1" })),
    )
    .await;
    let list = bob.ok("GET", "/_matrix/client/v3/pushers", None).await;
    assert_eq!(list["pushers"].as_array().unwrap().len(), 1);
    assert_eq!(list["pushers"][0]["pushkey"], "k2");

    // A format the server does not know is kept and given back (the full
    // format is sent), as the reference server does.
    let mut custom = pusher(
        "http".into(),
        json!({ "url": gw.url, "format": "id_event_only", "custom": 1 }),
    );
    custom["pushkey"] = "k3".into();
    custom["append"] = true.into();
    bob.ok("POST", "/_matrix/client/v3/pushers/set", Some(custom)).await;
    let list = bob.ok("GET", "/_matrix/client/v3/pushers", None).await;
    let k3 = list["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pushkey"] == "k3")
        .unwrap();
    assert_eq!(
        k3["data"],
        json!({ "url": gw.url, "format": "id_event_only", "custom": 1 })
    );

    let r = bob.call("GET", "/_matrix/client/v3/notifications?from=abc", None).await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pushes_are_retried_and_rejected_pushkeys_removed() {
    let server = TestServer::start().await;
    let gw = Gateway::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let room = room_with(&alice, None, &[&bob]).await;
    // Push rules are evaluated after the send returns: let the invite's
    // evaluation finish before the pusher exists, or the invite is pushed too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while bob.ok("GET", "/_matrix/client/v3/notifications", None).await["notifications"]
        .as_array()
        .is_none_or(|n| n.is_empty())
    {
        assert!(Instant::now() < deadline, "the invite was never evaluated for bob");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set_pusher(&bob, &gw, "bob-phone", json!({})).await;

    // The gateway fails twice: the notification comes on the third try
    // (after 1 s and 2 s of backoff), and only then the next one.
    gw.fail.store(2, Ordering::SeqCst);
    let first = send(&alice, &room, text("one")).await;
    let second = send(&alice, &room, text("two")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.to_pushkey("bob-phone").len() < 4 {
        assert!(
            Instant::now() < deadline,
            "retries did not come: {:?}",
            gw.to_pushkey("bob-phone")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let order: Vec<Value> = gw
        .to_pushkey("bob-phone")
        .iter()
        .map(|r| r["notification"]["event_id"].clone())
        .collect();
    assert_eq!(order, [json!(first), json!(first), json!(first), json!(second)]);

    // A pushkey the gateway rejects loses its pusher.
    gw.reject.lock().unwrap().insert("bob-phone".into());
    let third = send(&alice, &room, text("three")).await;
    gw.wait_for(&third, "bob-phone").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = bob.ok("GET", "/_matrix/client/v3/pushers", None).await;
        if list["pushers"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "rejected pusher not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fourth = send(&alice, &room, text("four")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gw.for_event(&fourth).is_empty());
    // The notification is still recorded, for the client to see.
    wait_unread(&bob, &room, (4, 0)).await;
}
