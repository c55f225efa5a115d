//! Several `missive` processes on one PostgreSQL database, serving one
//! server name: each client talks to one process, and nothing a client is
//! owed depends on which. Skipped (with a line saying so) on SQLite.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;

use crate::{
    common::{Raw, TestServer, enc, sdk_client},
    concurrency::concurrent_load,
    encryption::{encrypted_room, join, sync_all, wait_decrypted},
};

/// Three processes on one fresh database, or `None` without PostgreSQL.
async fn three_processes() -> Option<(TestServer, TestServer, TestServer)> {
    if std::env::var("MISSIVE_TEST_POSTGRES").map_or(true, |v| v.is_empty()) {
        eprintln!("skipped: several processes need PostgreSQL (set MISSIVE_TEST_POSTGRES)");
        return None;
    }
    let a = TestServer::start().await;
    let b = a.start_sibling().await;
    let c = a.start_sibling().await;
    Some((a, b, c))
}

/// Alice on `a` makes a public room that Bob on `b` joins.
async fn alice_on_a_and_bob_on_b(a: &TestServer, b: &TestServer) -> (Raw, Raw, String) {
    let alice = Raw::register(a, "alice").await;
    let bob = Raw::register(b, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some(json!({})),
    )
    .await;
    (alice, bob, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_deliver_every_event_once_in_order() {
    let Some((a, b, c)) = three_processes().await else {
        return;
    };
    concurrent_load(&[&a, &b, &c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_messages_between_processes_decrypt() {
    let Some((a, b, c)) = three_processes().await else {
        return;
    };
    let alice = sdk_client(&a, "alice").await;
    let bob = sdk_client(&b, "bob").await;
    let carol = sdk_client(&c, "carol").await;
    let room = encrypted_room(
        &alice,
        vec![bob.user_id().unwrap().to_owned(), carol.user_id().unwrap().to_owned()],
    )
    .await;
    join(&bob, &room).await;
    join(&carol, &room).await;
    sync_all(&[&alice, &bob, &carol]).await;

    let mut sent = vec![];
    for (client, text) in [
        (&alice, "from alice on A"),
        (&bob, "from bob on B"),
        (&carol, "from carol on C"),
    ] {
        let r = client.get_room(&room).expect("room");
        let id = r
            .send(matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(text))
            .await
            .expect("send")
            .response
            .event_id;
        sent.push((id, text));
    }
    sync_all(&[&alice, &bob, &carol]).await;
    for reader in [&alice, &bob, &carol] {
        for (id, text) in &sent {
            assert_eq!(
                wait_decrypted(reader, &room, id).await.as_deref(),
                Some(*text),
                "{} could not decrypt {text:?}",
                reader.user_id().unwrap()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_on_one_process_wakes_for_a_send_on_another() {
    let Some((a, b, _c)) = three_processes().await else {
        return;
    };
    let (alice, bob, room) = alice_on_a_and_bob_on_b(&a, &b).await;
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let waiting = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let s = bob.sync(Some(&since), 20_000).await;
            (started.elapsed(), s)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alice.send_text(&room, "t1", "wake up").await.status, 200);
    let (elapsed, s) = waiting.await.unwrap();
    let bodies: Vec<&str> = s["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["wake up"]);
    assert!(
        elapsed < Duration::from_secs(10),
        "the long poll returned only after {elapsed:?}: the other process's commit did not wake it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_under_load_loses_nothing_and_the_others_serve_on() {
    let Some((mut a, b, c)) = three_processes().await else {
        return;
    };
    let alice_a = Raw::register(&a, "alice").await;
    let room = alice_a.create_room(json!({ "preset": "public_chat" })).await;
    // The same account, logged in on B too: its sends go on after A dies.
    let alice_b = Raw::login(&b, "alice").await;
    let watcher = Raw::register(&c, "watcher").await;
    watcher
        .ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(json!({})),
        )
        .await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = vec![];
    for w in 0..8 {
        let who = if w % 2 == 0 { alice_a.clone() } else { alice_b.clone() };
        let room = room.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = 0;
            for j in 0..400 {
                let res = who
                    .http
                    .put(format!(
                        "{}/_matrix/client/v3/rooms/{}/send/m.room.message/w{w}-{j}",
                        who.base,
                        enc(&room)
                    ))
                    .bearer_auth(&who.token)
                    .json(&json!({ "msgtype": "m.text", "body": format!("{w}-{j}") }))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        acked.lock().unwrap().push(v["event_id"].as_str().unwrap().to_owned());
                    }
                    Ok(r) => panic!("send answered {}", r.status()),
                    // Only the killed process's connections may die.
                    Err(_) if w % 2 == 0 => return,
                    Err(e) => {
                        failures += 1;
                        assert!(failures < 3, "a surviving process failed a send: {e}");
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.kill9().await;
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 40, "the load ran ({} sends acknowledged)", acked.len());

    // The watcher on C reads the whole room: every acknowledged event, once.
    let mut ids = vec![];
    let mut from: Option<String> = None;
    loop {
        let page = watcher
            .ok(
                "GET",
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=500{}",
                    enc(&room),
                    from.as_ref().map(|f| format!("&from={}", enc(f))).unwrap_or_default()
                ),
                None,
            )
            .await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        ids.extend(chunk.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()));
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event appears twice in the room");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged event {id} was lost");
    }
    // B still serves, and the watcher on C is woken by what it sends.
    assert_eq!(alice_b.send_text(&room, "after-kill", "still here").await.status, 200);
    let s = watcher.sync(None, 0).await;
    assert!(
        s["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["content"]["body"] == "still here"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_on_one_process_shows_on_another() {
    let Some((a, b, _c)) = three_processes().await else {
        return;
    };
    let (alice, bob, room) = alice_on_a_and_bob_on_b(&a, &b).await;
    let mut since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    alice
        .ok(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            Some(json!({ "typing": true, "timeout": 30000 })),
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = bob.sync(Some(&since), 2000).await;
        since = s["next_batch"].as_str().unwrap().to_owned();
        let typing = s["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "m.typing")
            .map(|e| e["content"]["user_ids"].clone());
        if typing == Some(json!([alice.user_id])) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob, on another process, never saw alice typing"
        );
    }
}

/// Busy loops at low priority on every core, for as long as it is held:
/// the contention under which a race between processes shows.
struct CpuLoad(Vec<std::process::Child>);

impl CpuLoad {
    fn start() -> CpuLoad {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        CpuLoad(
            (0..cores)
                .filter_map(|_| {
                    std::process::Command::new("nice")
                        .args(["-n", "10", "sh", "-c", "while :; do :; done"])
                        .spawn()
                        .ok()
                })
                .collect(),
        )
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const GAP_ROOMS: usize = 20;
const GAP_PER_SENDER: usize = 40;

/// Senders on one process, a long-polling listener per room on another,
/// on a busy machine: every acknowledged event reaches its listener
/// through `/sync` itself (never skipped, never repeated), soon after it
/// was acknowledged (a lost wake-up would leave it waiting out a 30 s
/// long poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listeners_on_another_process_miss_nothing_under_load() {
    if std::env::var("MISSIVE_TEST_POSTGRES").map_or(true, |v| v.is_empty()) {
        eprintln!("skipped: several processes need PostgreSQL (set MISSIVE_TEST_POSTGRES)");
        return;
    }
    let a = TestServer::start().await;
    let b = a.start_sibling().await;
    let mut pairs = vec![];
    for i in 0..GAP_ROOMS {
        let sender = Raw::register(&a, &format!("sender{i}")).await;
        let listener = Raw::register(&b, &format!("listener{i}")).await;
        let room = sender.create_room(json!({ "preset": "public_chat" })).await;
        listener
            .ok(
                "POST",
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                Some(json!({})),
            )
            .await;
        pairs.push((sender, listener, room));
    }
    let filter = r#"{"room":{"timeline":{"limit":100}}}"#;
    let done = Arc::new(Mutex::new(None::<std::time::Instant>));
    let mut listeners = vec![];
    for (_, listener, room) in &pairs {
        let since = listener.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
        let (listener, room, done) = (listener.clone(), room.clone(), done.clone());
        listeners.push(tokio::spawn(async move {
            let mut since = since;
            let mut seen: Vec<String> = vec![];
            loop {
                let s = listener.sync_filtered(Some(&since), 30_000, filter).await;
                since = s["next_batch"].as_str().unwrap().to_owned();
                let tl = &s["rooms"]["join"][&room]["timeline"];
                assert_ne!(
                    tl["limited"], true,
                    "a limited timeline: the listener would have to page"
                );
                for e in tl["events"].as_array().into_iter().flatten() {
                    if e["type"] == "m.room.message" {
                        seen.push(e["content"]["body"].as_str().unwrap().to_owned());
                    }
                }
                if seen.len() >= GAP_PER_SENDER {
                    return (seen, std::time::Instant::now());
                }
                // Once every send is acknowledged, what is missing must come soon.
                if let Some(t) = *done.lock().unwrap() {
                    assert!(
                        t.elapsed() < Duration::from_secs(15),
                        "{room}: {} of {GAP_PER_SENDER} events reached /sync on the other process",
                        seen.len()
                    );
                }
            }
        }));
    }

    let load = CpuLoad::start();
    let mut senders = vec![];
    for (i, (sender, _, room)) in pairs.iter().enumerate() {
        let (sender, room) = (sender.clone(), room.clone());
        senders.push(tokio::spawn(async move {
            for j in 0..GAP_PER_SENDER {
                let r = sender.send_text(&room, &format!("t{j}"), &format!("{i}-{j}")).await;
                assert_eq!(r.status, 200, "{}", r.body);
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let acked = std::time::Instant::now();
    *done.lock().unwrap() = Some(acked);
    for (i, l) in listeners.into_iter().enumerate() {
        let (seen, at) = l.await.unwrap();
        let want: Vec<String> = (0..GAP_PER_SENDER).map(|j| format!("{i}-{j}")).collect();
        assert_eq!(seen, want, "room {i}: events skipped, repeated or out of order");
        let late = at.saturating_duration_since(acked);
        assert!(
            late < Duration::from_secs(15),
            "room {i}: the last event came {late:?} after the last send"
        );
    }
    drop(load);
}
