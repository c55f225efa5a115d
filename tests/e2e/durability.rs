//! Kill -9 during a send load: every event that got a 200 is there after restart.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;

use crate::common::{Raw, TestServer, enc};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_sigkill() {
    let mut server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));

    let mut tasks = vec![];
    for w in 0..8 {
        let alice = alice.clone();
        let room = room.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0.. {
                let res = alice
                    .http
                    .put(format!(
                        "{}/_matrix/client/v3/rooms/{}/send/m.room.message/w{w}-{j}",
                        alice.base,
                        enc(&room)
                    ))
                    .bearer_auth(&alice.token)
                    .json(&json!({ "msgtype": "m.text", "body": format!("{w}-{j}") }))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        acked.lock().unwrap().push(v["event_id"].as_str().unwrap().to_owned());
                    }
                    // The connection died with the server: stop.
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9().await;
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "the load ran ({} sends acknowledged)", acked.len());

    server.restart().await;
    let page = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000", enc(&room)),
            None,
        )
        .await;
    let ids: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    for id in &acked {
        assert!(ids.contains(id), "acknowledged event {id} was lost");
    }
    // A fresh sync after the restart shows the room and its latest events.
    let sync = alice.sync(None, 0).await;
    assert!(
        sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    // And the server still accepts sends, continuing the stream.
    assert_eq!(alice.send_text(&room, "after-restart", "still here").await.status, 200);
}
