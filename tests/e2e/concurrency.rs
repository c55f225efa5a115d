//! Many concurrent senders in several rooms, several syncing clients: each
//! client sees every event of its rooms exactly once, in one order.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::common::{Raw, TestServer, enc};

const SENDERS: usize = 24;
const ROOMS: usize = 4;
const PER_SENDER: usize = 15;
const WATCHERS: usize = 4;
/// Watchers ask for timelines long enough never to be cut, so that each
/// event must arrive through sync itself.
const BIG_TIMELINE: &str = r#"{"room":{"timeline":{"limit":1000}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_never_make_sync_skip_or_repeat() {
    let server = TestServer::start().await;
    concurrent_load(&[&server]).await;
}

/// The load and the checks, with users spread over `servers` (processes
/// serving one server name): user `i` talks only to `servers[i % n]`.
pub async fn concurrent_load(servers: &[&TestServer]) {
    let owner = Raw::register(servers[0], "owner").await;
    let mut rooms = vec![];
    for _ in 0..ROOMS {
        rooms.push(owner.create_room(json!({ "preset": "public_chat" })).await);
    }
    let mut handles = vec![];
    for i in 0..(SENDERS + WATCHERS) {
        let url = servers[i % servers.len()].url.clone();
        let name = format!("user{i}");
        handles.push(tokio::spawn(async move {
            let s = TestServer::connect(&url);
            Raw::register(&s, &name).await
        }));
    }
    let mut users = vec![];
    for h in handles {
        users.push(h.await.unwrap());
    }
    for u in &users {
        for r in &rooms {
            u.ok("POST", &format!("/_matrix/client/v3/join/{}", enc(r)), Some(json!({})))
                .await;
        }
    }
    let (senders, watchers) = users.split_at(SENDERS);

    // Each watcher starts from a token taken before the load.
    let mut tokens = vec![];
    for w in watchers {
        tokens.push(w.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned());
    }
    let expected = SENDERS * PER_SENDER;
    let mut watch_tasks = vec![];
    for (w, token) in watchers.iter().cloned().zip(tokens) {
        let rooms = rooms.clone();
        watch_tasks.push(tokio::spawn(async move {
            let mut since = token;
            let mut seen: HashMap<String, Vec<String>> = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let s = w.sync_filtered(Some(&since), 2000, BIG_TIMELINE).await;
                since = s["next_batch"].as_str().unwrap().to_owned();
                for r in &rooms {
                    let tl = &s["rooms"]["join"][r]["timeline"];
                    assert_ne!(
                        tl["limited"], true,
                        "a watcher's timeline was limited: it would have to page"
                    );
                    for e in tl["events"].as_array().into_iter().flatten() {
                        if e["type"] == "m.room.message" {
                            seen.entry(r.clone())
                                .or_default()
                                .push(e["content"]["body"].as_str().unwrap().to_owned());
                        }
                    }
                }
                let total: usize = seen.values().map(Vec::len).sum();
                if total >= expected || Instant::now() > deadline {
                    // One more sync to catch any repeat that would follow.
                    let s = w.sync_filtered(Some(&since), 500, BIG_TIMELINE).await;
                    for r in &rooms {
                        for e in s["rooms"]["join"][r]["timeline"]["events"]
                            .as_array()
                            .into_iter()
                            .flatten()
                        {
                            if e["type"] == "m.room.message" {
                                seen.entry(r.clone())
                                    .or_default()
                                    .push(e["content"]["body"].as_str().unwrap().to_owned());
                            }
                        }
                    }
                    return seen;
                }
            }
        }));
    }

    // The load: every sender sends to rooms in turn, all at once.
    let mut send_tasks = vec![];
    for (i, s) in senders.iter().cloned().enumerate() {
        let rooms = rooms.clone();
        send_tasks.push(tokio::spawn(async move {
            for j in 0..PER_SENDER {
                let room = &rooms[(i + j) % ROOMS];
                let r = s.send_text(room, &format!("txn{j}"), &format!("s{i}-{j}")).await;
                assert_eq!(r.status, 200, "send: {}", r.body);
            }
        }));
    }
    for t in send_tasks {
        t.await.unwrap();
    }

    // The server's own order, per room, from /messages.
    let mut server_order: HashMap<String, Vec<String>> = HashMap::new();
    for r in &rooms {
        let page = owner
            .ok(
                "GET",
                &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000", enc(r)),
                None,
            )
            .await;
        server_order.insert(
            r.clone(),
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
                .collect(),
        );
    }
    assert_eq!(server_order.values().map(Vec::len).sum::<usize>(), expected);

    for t in watch_tasks {
        let seen = t.await.unwrap();
        let all: Vec<&String> = seen.values().flatten().collect();
        let unique: HashSet<&&String> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "a watcher saw an event twice");
        assert_eq!(all.len(), expected, "a watcher missed events");
        for r in &rooms {
            assert_eq!(
                seen.get(r).cloned().unwrap_or_default(),
                server_order[r],
                "a watcher saw room events out of order"
            );
        }
    }
}
