//! `missive admin migrate-db`: a server's SQLite database moved to
//! PostgreSQL serves the same users, history, media and account data, and
//! its stream positions continue; a target that already holds data is
//! refused and left as it was.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Raw, TestDatabase, TestServer, enc, request};

const MESSAGES: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_moves_to_postgres() {
    let Some(target) = TestDatabase::from_env() else {
        eprintln!("skipping sqlite_database_moves_to_postgres: MISSIVE_TEST_POSTGRES is not set");
        return;
    };

    // A server on SQLite with some history.
    let mut old = TestServer::start_sqlite(&[]).await;
    let alice = Raw::register(&old, "alice").await;
    let bob = Raw::register(&old, "bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Moving day" }))
        .await;
    bob.ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        Some(json!({})),
    )
    .await;
    let sent: Vec<String> = (0..MESSAGES).map(|i| format!("message {i} zebra")).collect();
    for (i, text) in sent.iter().enumerate() {
        let who = if i % 2 == 0 { &alice } else { &bob };
        let r = who.send_text(&room, &format!("t{i}"), text).await;
        assert_eq!(r.status, 200, "send: {}", r.body);
    }
    let file = b"the minutes of the meeting, as a file".to_vec();
    let up = alice
        .http
        .post(format!("{}/_matrix/media/v3/upload?filename=minutes.txt", alice.base))
        .bearer_auth(&alice.token)
        .header("content-type", "text/plain")
        .body(file.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(up.status(), 200);
    let up: Value = up.json().await.expect("upload answer");
    let media_id = up["content_uri"]
        .as_str()
        .and_then(|u| u.strip_prefix("mxc://localhost/"))
        .expect("local mxc URI")
        .to_owned();
    let settings = json!({ "theme": "dark", "answer": 42 });
    alice
        .ok(
            "PUT",
            "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.settings",
            Some(settings.clone()),
        )
        .await;
    let before_move = alice.sync(None, 0).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    old.kill9().await;

    // The move.
    let db_path = old.data_dir().join("missive.db");
    let from = format!("sqlite://{}", db_path.display());
    let to = target.url();
    let started = Instant::now();
    let out = old.admin(&["migrate-db", "--from", &from, "--to", &to]).await;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "migrate-db failed:\n{stdout}\n{stderr}");
    eprintln!("migrate-db took {took:?}:\n{stdout}");
    let rows = |table: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(table)).then(|| parts.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no count for {table} in:\n{stdout}"))
    };
    assert_eq!(rows("users"), 2);
    assert_eq!(rows("media"), 1);
    assert!(rows("events") >= MESSAGES as u64, "events: {}", rows("events"));
    assert!(rows("total") > rows("events"));

    // The same server on PostgreSQL, with the same media directory.
    let mut new = old.start_on_same_data(&[("MISSIVE_DATABASE_URL", to.as_str())]).await;

    // Both log in with their passwords, and the tokens they had still work.
    let alice_new = Raw::login(&new, "alice").await;
    let bob_new = Raw::login(&new, "bob").await;
    for (who, token) in [(&alice, &alice.token), (&bob, &bob.token)] {
        let r = request(
            &alice_new.http,
            "GET",
            &format!("{}/_matrix/client/v3/account/whoami", new.url),
            Some(token),
            None,
        )
        .await;
        assert_eq!(
            (r.status, r.body["user_id"].as_str()),
            (200, Some(who.user_id.as_str()))
        );
    }

    // The whole history, in order.
    let page = alice_new
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&room)),
            None,
        )
        .await;
    let mut got: Vec<String> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    got.reverse();
    assert_eq!(got, sent);

    // The media, the account data, and the search index rebuilt for PostgreSQL.
    let download = alice_new
        .http
        .get(format!(
            "{}/_matrix/client/v1/media/download/localhost/{media_id}",
            new.url
        ))
        .bearer_auth(&alice_new.token)
        .send()
        .await
        .expect("download");
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.expect("body").to_vec(), file);
    let data = alice_new
        .ok(
            "GET",
            "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.settings",
            None,
        )
        .await;
    assert_eq!(data, settings);
    let found = alice_new
        .ok(
            "POST",
            "/_matrix/client/v3/search",
            Some(json!({ "search_categories": { "room_events": { "search_term": "zebra" } } })),
        )
        .await;
    assert_eq!(found["search_categories"]["room_events"]["count"], MESSAGES);

    // Stream positions continue after the copied ones: a sync from a token of
    // the SQLite server brings the new message and nothing older.
    let r = bob_new.send_text(&room, "after", "first words on PostgreSQL").await;
    assert_eq!(r.status, 200, "send: {}", r.body);
    let new_event = r.body["event_id"].as_str().expect("event_id").to_owned();
    let mut since = before_move;
    let mut timeline = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !timeline.iter().any(|e: &Value| e["event_id"] == new_event.as_str()) {
        assert!(Instant::now() < deadline, "the new message never came through sync");
        let s = alice_new.sync(Some(&since), 2000).await;
        if let Some(events) = s["rooms"]["join"][&room]["timeline"]["events"].as_array() {
            timeline.extend(events.iter().cloned());
        }
        since = s["next_batch"].as_str().expect("next_batch").to_owned();
    }
    let bodies: Vec<&str> = timeline
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["first words on PostgreSQL"]);
    let latest = alice_new
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1", enc(&room)),
            None,
        )
        .await;
    assert_eq!(latest["chunk"][0]["event_id"], new_event.as_str());

    // Tables whose ids PostgreSQL generates take new rows after the copied
    // ones: a state change (state_groups), a notification (push_notifications).
    alice_new
        .ok(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
            Some(json!({ "topic": "settled in" })),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = alice_new.ok("GET", "/_matrix/client/v3/notifications", None).await;
        let ids: Vec<&str> = n["notifications"]
            .as_array()
            .expect("notifications")
            .iter()
            .filter_map(|n| n["event"]["event_id"].as_str())
            .collect();
        if ids.contains(&new_event.as_str()) {
            assert_eq!(ids.len(), MESSAGES / 2 + 1, "bob's messages notify alice: {n}");
            break;
        }
        assert!(Instant::now() < deadline, "no notification of the new message: {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    new.kill9().await;

    // Again, into the database that now holds the server: refused, untouched.
    let before = fingerprint(&to);
    let out = old.admin(&["migrate-db", "--from", &from, "--to", &to]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second migration into the same database must fail"
    );
    assert!(
        stderr.contains("not empty") && stderr.contains("wrote nothing"),
        "unclear refusal: {stderr}"
    );
    assert!(!stderr.contains(&to), "the error repeats the database URL: {stderr}");
    assert_eq!(fingerprint(&to), before);
}

/// The stream position and the rows of the tables a migration would fill.
fn fingerprint(url: &str) -> Vec<String> {
    let url = url.to_owned();
    // The synchronous client runs its own runtime: keep it off the test's.
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        let mut out = vec![];
        let pos: i64 = c
            .query_one("SELECT pos FROM stream_counter WHERE id = 0", &[])
            .expect("counter")
            .get(0);
        out.push(format!("pos {pos}"));
        for table in [
            "users",
            "devices",
            "access_tokens",
            "events",
            "media",
            "account_data",
            "event_search",
        ] {
            let n: i64 = c
                .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
                .expect("count")
                .get(0);
            out.push(format!("{table} {n}"));
        }
        let ids: Option<String> = c
            .query_one(
                "SELECT md5(string_agg(event_id, ',' ORDER BY stream_pos)) FROM events",
                &[],
            )
            .expect("events digest")
            .get(0);
        out.push(format!("events {ids:?}"));
        out
    })
    .join()
    .expect("fingerprint thread")
}
