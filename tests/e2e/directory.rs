//! Finding people and rooms, and what the server tells about rooms: the user
//! directory, the public room directory, server-side search, reports,
//! `/initialSync` and the space hierarchy, over raw HTTP (and matrix-sdk
//! for the room directory, to check its wire format parses).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::common::{Raw, TestServer, enc, password, sdk_login};

const V3: &str = "/_matrix/client/v3";

async fn set_name(u: &Raw, name: &str) {
    u.ok(
        "PUT",
        &format!("{V3}/profile/{}/displayname", enc(&u.user_id)),
        Some(json!({ "displayname": name })),
    )
    .await;
}

async fn join(u: &Raw, room: &str) {
    u.ok("POST", &format!("{V3}/join/{}", enc(room)), Some(json!({}))).await;
}

async fn invite(u: &Raw, room: &str, who: &Raw) {
    u.ok(
        "POST",
        &format!("{V3}/rooms/{}/invite", enc(room)),
        Some(json!({ "user_id": who.user_id })),
    )
    .await;
}

async fn send(u: &Raw, room: &str, txn: &str, body: &str) -> String {
    let r = u.send_text(room, txn, body).await;
    assert_eq!(r.status, 200, "send: {}", r.body);
    r.body["event_id"].as_str().expect("event_id").to_owned()
}

async fn deactivate(u: &Raw, username: &str) {
    let path = format!("{V3}/account/deactivate");
    let first = u.call("POST", &path, Some(json!({}))).await;
    assert_eq!(
        first.status, 401,
        "deactivation must ask for the password: {}",
        first.body
    );
    u.ok(
        "POST",
        &path,
        Some(json!({ "auth": {
            "type": "m.login.password",
            "session": first.body["session"],
            "identifier": { "type": "m.id.user", "user": username },
            "password": password(username),
        }})),
    )
    .await;
}

async fn search_users(u: &Raw, term: &str, limit: Option<u64>) -> Value {
    let mut body = json!({ "search_term": term });
    if let Some(l) = limit {
        body["limit"] = l.into();
    }
    u.ok("POST", &format!("{V3}/user_directory/search"), Some(body)).await
}

fn user_ids(res: &Value) -> BTreeSet<String> {
    res["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|u| u["user_id"].as_str().expect("user_id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_directory_finds_room_peers_and_not_strangers() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let bea = Raw::register(&server, "bea").await;
    let carol = Raw::register(&server, "carol").await;
    let dave = Raw::register(&server, "dave").await;
    let erin = Raw::register(&server, "erin").await;
    set_name(&bob, "Bob Martin").await;
    set_name(&bea, "Béatrice Martin").await;
    set_name(&carol, "Carol Martin").await;

    // Alice shares a private room with Bob, Bea and Erin; Dave is alone in a
    // public room; Carol is in nothing.
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    for u in [&bob, &bea, &erin] {
        invite(&alice, &room, u).await;
        join(u, &room).await;
    }
    dave.create_room(json!({ "preset": "public_chat", "name": "Open" }))
        .await;

    let res = search_users(&alice, "BOB", None).await;
    assert_eq!(user_ids(&res), BTreeSet::from(["@bob:localhost".to_owned()]));
    assert_eq!(res["results"][0]["display_name"], "Bob Martin");
    assert_eq!(res["limited"], false);
    // Display names match too, in any case; Carol shares nothing with Alice.
    let res = search_users(&alice, "martin", None).await;
    assert_eq!(
        user_ids(&res),
        BTreeSet::from(["@bob:localhost".to_owned(), "@bea:localhost".to_owned()])
    );
    assert!(user_ids(&search_users(&alice, "BÉATRICE", None).await).contains("@bea:localhost"));
    assert!(user_ids(&search_users(&alice, "carol", None).await).is_empty());
    // Dave is findable: he is joined to a public room.
    assert_eq!(
        user_ids(&search_users(&alice, "dave", None).await),
        BTreeSet::from(["@dave:localhost".to_owned()])
    );
    // The limit, and `limited`.
    let res = search_users(&alice, "martin", Some(1)).await;
    assert_eq!(res["results"].as_array().unwrap().len(), 1);
    assert_eq!(res["limited"], true);
    // Carol finds nobody but the public room's member.
    assert!(user_ids(&search_users(&carol, "bob", None).await).is_empty());
    // Erin shares the room until she deactivates; then she is gone.
    assert!(user_ids(&search_users(&alice, "erin", None).await).contains("@erin:localhost"));
    deactivate(&erin, "erin").await;
    assert!(user_ids(&search_users(&alice, "erin", None).await).is_empty());
    // An empty term finds nobody; a missing one is bad JSON.
    assert!(user_ids(&search_users(&alice, "  ", None).await).is_empty());
    let r = alice
        .call("POST", &format!("{V3}/user_directory/search"), Some(json!({})))
        .await;
    assert_eq!(r.status, 400);

    // With the option on, strangers are found too, but never the deactivated.
    let open = TestServer::start_with(&[("MISSIVE_USER_DIRECTORY_SEARCH_ALL_USERS", "true")]).await;
    let a = Raw::register(&open, "alice").await;
    let c = Raw::register(&open, "carol").await;
    let e = Raw::register(&open, "erin").await;
    set_name(&c, "Carol Martin").await;
    assert_eq!(
        user_ids(&search_users(&a, "martin", None).await),
        BTreeSet::from(["@carol:localhost".to_owned()])
    );
    assert!(user_ids(&search_users(&a, "erin", None).await).contains("@erin:localhost"));
    deactivate(&e, "erin").await;
    assert!(user_ids(&search_users(&a, "erin", None).await).is_empty());
}

fn room_ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("chunk")
        .iter()
        .map(|r| r["room_id"].as_str().expect("room_id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_rooms_are_listed_paginated_and_filtered() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let budget = alice
        .create_room(json!({
            "visibility": "public",
            "preset": "public_chat",
            "name": "Budget",
            "topic": "Finances de l'année",
            "room_alias_name": "budget",
            "initial_state": [
                { "type": "m.room.history_visibility", "content": { "history_visibility": "world_readable" } },
                { "type": "m.room.avatar", "content": { "url": "mxc://localhost/avatar" } },
            ],
        }))
        .await;
    join(&bob, &budget).await;
    let cafe = alice
        .create_room(json!({ "visibility": "public", "preset": "public_chat", "name": "Café" }))
        .await;
    let space = alice
        .create_room(json!({
            "visibility": "public",
            "preset": "public_chat",
            "name": "Ministère",
            "creation_content": { "type": "m.space" },
        }))
        .await;
    let secret = alice
        .create_room(json!({ "preset": "private_chat", "name": "Secret budget" }))
        .await;

    // GET needs no token (ruma's metadata for the endpoint).
    let http = reqwest::Client::new();
    let anon: Value = http
        .get(format!("{}{V3}/publicRooms", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = room_ids(&anon["chunk"]);
    assert_eq!(listed.len(), 3, "{anon}");
    assert!(!listed.contains(&secret));
    assert_eq!(anon["total_room_count_estimate"], 3);
    // Most members first: Budget has two.
    let b = &anon["chunk"][0];
    assert_eq!(b["room_id"], budget.as_str());
    assert_eq!(b["name"], "Budget");
    assert_eq!(b["topic"], "Finances de l'année");
    assert_eq!(b["canonical_alias"], "#budget:localhost");
    assert_eq!(b["avatar_url"], "mxc://localhost/avatar");
    assert_eq!(b["num_joined_members"], 2);
    assert_eq!(b["world_readable"], true);
    assert_eq!(b["guest_can_join"], false);
    // `public` is the field's default, which ruma leaves out.
    assert!(b.get("join_rule").is_none_or(|j| j == "public"), "{b}");
    assert!(b.get("room_type").is_none());
    let s = anon["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == space.as_str())
        .expect("the space is listed");
    assert_eq!(s["room_type"], "m.space");

    // One at a time, forwards then back.
    let mut seen = vec![];
    let mut since: Option<String> = None;
    let mut last: Value;
    loop {
        let path = match &since {
            Some(t) => format!("{V3}/publicRooms?limit=1&since={}", enc(t)),
            None => format!("{V3}/publicRooms?limit=1"),
        };
        last = alice.ok("GET", &path, None).await;
        let ids = room_ids(&last["chunk"]);
        assert_eq!(ids.len(), 1);
        assert_eq!(last["prev_batch"].is_string(), since.is_some());
        seen.extend(ids);
        match last["next_batch"].as_str() {
            Some(t) => since = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, listed);
    let back = alice
        .ok(
            "GET",
            &format!(
                "{V3}/publicRooms?limit=1&since={}",
                enc(last["prev_batch"].as_str().unwrap())
            ),
            None,
        )
        .await;
    assert_eq!(room_ids(&back["chunk"]), [listed[1].clone()]);
    let bad = alice
        .call("GET", &format!("{V3}/publicRooms?since=nonsense"), None)
        .await;
    assert_eq!((bad.status, bad.errcode()), (400, "M_INVALID_PARAM"));

    // Filters: a term over name, topic and alias; room types.
    let post = |body: Value| {
        let alice = alice.clone();
        async move { alice.ok("POST", &format!("{V3}/publicRooms"), Some(body)).await }
    };
    for term in ["FINANCES", "budg", "#budget:localhost"] {
        let r = post(json!({ "filter": { "generic_search_term": term } })).await;
        assert_eq!(room_ids(&r["chunk"]), [budget.as_str()], "term {term}");
    }
    assert_eq!(
        room_ids(&post(json!({ "filter": { "generic_search_term": "café" } })).await["chunk"]),
        [cafe.as_str()]
    );
    let spaces = post(json!({ "filter": { "room_types": ["m.space"] } })).await;
    assert_eq!(room_ids(&spaces["chunk"]), [space.as_str()]);
    let plain = post(json!({ "filter": { "room_types": [null] } })).await;
    assert_eq!(room_ids(&plain["chunk"]).len(), 2);
    assert!(!room_ids(&plain["chunk"]).contains(&space));
    let none = post(json!({ "filter": { "generic_search_term": "nothing like it" } })).await;
    assert!(room_ids(&none["chunk"]).is_empty());
    // POST needs a token.
    let r = crate::common::request(&http, "POST", &format!("{}{V3}/publicRooms", server.url), None, None).await;
    assert_eq!((r.status, r.errcode()), (401, "M_MISSING_TOKEN"));

    // Publishing and unpublishing through /directory/list/room.
    let list = format!("{V3}/directory/list/room/{}", enc(&secret));
    alice.ok("PUT", &list, Some(json!({ "visibility": "public" }))).await;
    let now = alice.ok("GET", &format!("{V3}/publicRooms"), None).await;
    assert!(room_ids(&now["chunk"]).contains(&secret));
    alice.ok("PUT", &list, Some(json!({ "visibility": "private" }))).await;
    let now = alice.ok("GET", &format!("{V3}/publicRooms"), None).await;
    assert!(!room_ids(&now["chunk"]).contains(&secret));

    // Another server's directory needs federation, off here; this one by name is fine.
    let r = alice
        .call("GET", &format!("{V3}/publicRooms?server=example.org"), None)
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    let r = alice
        .call("GET", &format!("{V3}/publicRooms?server=localhost"), None)
        .await;
    assert_eq!(r.status, 200);

    // matrix-sdk reads the same list.
    let sdk = sdk_login(&server, "bob").await;
    let resp = sdk.public_rooms(None, None, None).await.expect("sdk public rooms");
    assert_eq!(resp.chunk.len(), 3);
    assert_eq!(resp.chunk[0].room_id.as_str(), budget);
    assert_eq!(resp.chunk[0].name.as_deref(), Some("Budget"));
}

async fn search(u: &Raw, criteria: Value, next_batch: Option<&str>) -> Value {
    let path = match next_batch {
        Some(t) => format!("{V3}/search?next_batch={}", enc(t)),
        None => format!("{V3}/search"),
    };
    let res = u
        .ok(
            "POST",
            &path,
            Some(json!({ "search_categories": { "room_events": criteria } })),
        )
        .await;
    res["search_categories"]["room_events"].clone()
}

fn bodies(res: &Value) -> Vec<String> {
    res["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| {
                    let c = &r["result"]["content"];
                    c["body"].as_str().or(c["name"].as_str()).unwrap_or_default().to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_ranks_paginates_and_respects_visibility() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    set_name(&alice, "Alice Durand").await;

    // A room whose history members see only from their join.
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "name": "Budget committee",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } }],
        }))
        .await;
    send(&alice, &room, "pre", "secret budget draft, before Bob").await;
    invite(&alice, &room, &bob).await;
    join(&bob, &room).await;
    send(&alice, &room, "t1", "The budget review is tomorrow").await;
    send(&alice, &room, "t2", "budget budget budget summary").await;
    for i in 0..12 {
        send(&alice, &room, &format!("item{i}"), &format!("budget line {i} approved")).await;
    }
    send(&alice, &room, "lunch", "lunch at noon?").await;
    let doomed = send(&alice, &room, "doomed", "budget figure sent by mistake").await;
    alice
        .ok(
            "PUT",
            &format!("{V3}/rooms/{}/redact/{}/r1", enc(&room), enc(&doomed)),
            Some(json!({})),
        )
        .await;
    // What the server cannot read is not indexed.
    alice
        .ok(
            "PUT",
            &format!("{V3}/rooms/{}/send/m.room.encrypted/enc1", enc(&room)),
            Some(json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "xyz", "body": "budget" })),
        )
        .await;
    // A room Bob was never in.
    let other = alice.create_room(json!({ "preset": "private_chat" })).await;
    send(&alice, &other, "c1", "budget: confidential annex").await;

    // Newest first, five at a time, through every page.
    let mut all = vec![];
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let res = search(
            &bob,
            json!({ "search_term": "budget", "order_by": "recent", "filter": { "limit": 5 } }),
            next.as_deref(),
        )
        .await;
        assert_eq!(res["count"], 14, "every visible match is counted: {res}");
        assert!(res["highlights"].as_array().unwrap().contains(&json!("budget")));
        all.extend(bodies(&res));
        pages += 1;
        match res["next_batch"].as_str() {
            Some(t) => next = Some(t.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(all.len(), 14, "{all:?}");
    assert_eq!(all.first().unwrap(), "budget line 11 approved");
    // The room was named before Bob joined: the name event is hidden too.
    assert_eq!(all.last().unwrap(), "The budget review is tomorrow");
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "no result twice");
    for hidden in ["secret budget draft", "confidential", "by mistake", "Budget committee"] {
        assert!(!all.iter().any(|b| b.contains(hidden)), "{hidden} leaked: {all:?}");
    }
    assert!(!all.iter().any(|b| b == "budget"), "encrypted events are not indexed");

    // By rank: the message that says it three times comes first.
    let res = search(&bob, json!({ "search_term": "budget", "keys": ["content.body"] }), None).await;
    assert_eq!(bodies(&res)[0], "budget budget budget summary");
    let ranks: Vec<f64> = res["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_f64().unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");
    assert_eq!(ranks.len(), 10, "the default limit");
    assert!(res["next_batch"].is_string());
    let page2 = search(
        &bob,
        json!({ "search_term": "budget", "keys": ["content.body"] }),
        res["next_batch"].as_str(),
    )
    .await;
    assert_eq!(bodies(&page2).len(), 4);
    // Several words must all occur; a word's beginning is enough.
    assert_eq!(
        bodies(&search(&bob, json!({ "search_term": "review TOMORR" }), None).await),
        ["The budget review is tomorrow"]
    );

    // Context, profiles, groups and state on request.
    let res = search(
        &bob,
        json!({
            "search_term": "review",
            "event_context": { "before_limit": 2, "after_limit": 1, "include_profile": true },
            "groupings": { "group_by": [{ "key": "room_id" }, { "key": "sender" }] },
            "include_state": true,
        }),
        None,
    )
    .await;
    let hit = &res["results"][0];
    let ctx = &hit["context"];
    assert_eq!(
        ctx["events_after"][0]["content"]["body"],
        "budget budget budget summary"
    );
    // Before the result: Bob's join, then nothing from before it.
    let before = ctx["events_before"].as_array().unwrap();
    assert_eq!(before.len(), 1, "the draft before Bob joined stays hidden: {before:?}");
    assert_eq!(before[0]["type"], "m.room.member");
    assert!(ctx["start"].is_string() && ctx["end"].is_string());
    assert_eq!(ctx["profile_info"]["@alice:localhost"]["displayname"], "Alice Durand");
    assert_eq!(res["groups"]["room_id"][&room]["results"][0], hit["result"]["event_id"]);
    assert!(res["groups"]["sender"]["@alice:localhost"].is_object());
    let state = res["state"][&room].as_array().expect("room state");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
    // Without event_context, no context.
    let res = search(&bob, json!({ "search_term": "review" }), None).await;
    assert!(res["results"][0].get("context").is_none());

    // Alice sees her other room and her own early message; filters narrow.
    let mine = search(
        &alice,
        json!({ "search_term": "budget", "filter": { "limit": 50 } }),
        None,
    )
    .await;
    assert_eq!(mine["count"], 17);
    assert_eq!(bodies(&mine).len(), 17);
    // Keys: only the room name.
    assert_eq!(
        bodies(
            &search(
                &alice,
                json!({ "search_term": "committee", "keys": ["content.name"] }),
                None
            )
            .await
        ),
        ["Budget committee"]
    );
    assert!(
        bodies(
            &search(
                &alice,
                json!({ "search_term": "committee", "keys": ["content.body"] }),
                None
            )
            .await
        )
        .is_empty()
    );
    let only_other = search(
        &alice,
        json!({ "search_term": "budget", "filter": { "not_rooms": [room] } }),
        None,
    )
    .await;
    assert_eq!(bodies(&only_other), ["budget: confidential annex"]);
    let only_room = search(
        &alice,
        json!({ "search_term": "budget", "filter": { "rooms": [other], "senders": ["@bob:localhost"] } }),
        None,
    )
    .await;
    assert!(bodies(&only_room).is_empty());
    let names = search(
        &alice,
        json!({ "search_term": "budget", "filter": { "types": ["m.room.n*"] } }),
        None,
    )
    .await;
    assert_eq!(bodies(&names), ["Budget committee"]);

    // Bad input.
    let r = bob
        .call(
            "POST",
            &format!("{V3}/search?next_batch=garbage"),
            Some(json!({ "search_categories": { "room_events": { "search_term": "budget" } } })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_PARAM"));
    let r = bob
        .call(
            "POST",
            &format!("{V3}/search"),
            Some(json!({ "search_categories": { "room_events": { "search_term": "x", "keys": ["content.nope"] } } })),
        )
        .await;
    assert_eq!(r.status, 400);
    // No category, no results.
    let r = bob
        .ok(
            "POST",
            &format!("{V3}/search"),
            Some(json!({ "search_categories": {} })),
        )
        .await;
    assert!(
        r["search_categories"]
            .get("room_events")
            .is_none_or(|e| e["results"].is_null())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_initial_sync_and_access() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let carol = Raw::register(&server, "carol").await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Équipe" }))
        .await;
    invite(&alice, &room, &bob).await;
    join(&bob, &room).await;
    let ev = send(&alice, &room, "m1", "an offensive message").await;
    let elsewhere = alice.create_room(json!({ "preset": "private_chat" })).await;
    let hidden = send(&alice, &elsewhere, "m2", "not for Bob").await;

    // Reporting.
    let report = |u: &Raw, path: String, body: Value| {
        let u = u.clone();
        async move { u.call("POST", &path, Some(body)).await }
    };
    let r = report(
        &bob,
        format!("{V3}/rooms/{}/report/{}", enc(&room), enc(&ev)),
        json!({ "reason": "rude", "score": -100 }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({}));
    let r = report(
        &bob,
        format!("{V3}/rooms/{}/report/{}", enc(&room), enc(&ev)),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "the reason is optional for events");
    for (who, room_id, event_id, why) in [
        (&bob, &room, "$unknown", "unknown event"),
        (&bob, &elsewhere, hidden.as_str(), "an event in a room Bob is not in"),
        (&bob, &room, hidden.as_str(), "an event of another room"),
        (&carol, &room, ev.as_str(), "a non-member"),
    ] {
        let r = report(
            who,
            format!("{V3}/rooms/{}/report/{}", enc(room_id), enc(event_id)),
            json!({ "reason": "x" }),
        )
        .await;
        assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"), "{why}");
    }
    let r = report(
        &carol,
        format!("{V3}/rooms/{}/report", enc(&room)),
        json!({ "reason": "spam room" }),
    )
    .await;
    assert_eq!(r.status, 200, "anyone may report a room: {}", r.body);
    let r = report(
        &carol,
        format!("{V3}/rooms/{}/report", enc("!nowhere:localhost")),
        json!({ "reason": "" }),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
    let r = report(
        &carol,
        format!("{V3}/users/{}/report", enc(&alice.user_id)),
        json!({ "reason": "harassment" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = report(
        &carol,
        format!("{V3}/users/{}/report", enc("@nobody:localhost")),
        json!({ "reason": "" }),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
    // The administrators read them from the command line, newest first.
    let out = server.admin(&["reports"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].contains("by @carol:localhost: user @alice:localhost, reason \"harassment\""),
        "{out}"
    );
    assert!(lines[1].contains(&format!("room {room}")), "{out}");
    assert!(
        lines[3].contains(&format!("event {ev} in {room} score -100, reason \"rude\"")),
        "{out}"
    );

    // initialSync: a member gets messages and state, a stranger 403.
    let snap = bob
        .ok("GET", &format!("{V3}/rooms/{}/initialSync", enc(&room)), None)
        .await;
    assert_eq!(snap["room_id"], room.as_str());
    assert_eq!(snap["membership"], "join");
    assert_eq!(snap["visibility"], "private");
    let chunk = snap["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk.last().unwrap()["content"]["body"], "an offensive message");
    assert!(
        snap["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Équipe")
    );
    // The tokens work with /messages.
    let end = snap["messages"]["end"].as_str().unwrap();
    let back = bob
        .ok(
            "GET",
            &format!("{V3}/rooms/{}/messages?dir=b&limit=1&from={}", enc(&room), enc(end)),
            None,
        )
        .await;
    assert_eq!(back["chunk"][0]["event_id"], ev.as_str());
    let r = carol
        .call("GET", &format!("{V3}/rooms/{}/initialSync", enc(&room)), None)
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    // A former member sees the room up to their departure.
    bob.ok("POST", &format!("{V3}/rooms/{}/leave", enc(&room)), Some(json!({})))
        .await;
    send(&alice, &room, "m3", "after Bob left").await;
    let snap = bob
        .ok("GET", &format!("{V3}/rooms/{}/initialSync", enc(&room)), None)
        .await;
    assert_eq!(snap["membership"], "leave");
    let chunk = snap["messages"]["chunk"].as_array().unwrap();
    assert!(!chunk.iter().any(|e| e["content"]["body"] == "after Bob left"));
    assert!(chunk.iter().any(|e| e["content"]["body"] == "an offensive message"));
}

async fn add_child(u: &Raw, space: &str, child: &str, extra: Value) {
    let mut content = json!({ "via": ["localhost"] });
    for (k, v) in extra.as_object().into_iter().flatten() {
        content[k] = v.clone();
    }
    u.ok(
        "PUT",
        &format!("{V3}/rooms/{}/state/m.space.child/{}", enc(space), enc(child)),
        Some(content),
    )
    .await;
}

async fn hierarchy(u: &Raw, space: &str, query: &str) -> crate::common::Reply {
    u.call(
        "GET",
        &format!("/_matrix/client/v1/rooms/{}/hierarchy?{query}", enc(space)),
        None,
    )
    .await
}

fn names(res: &Value) -> Vec<String> {
    res["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_hierarchy_walks_children_with_depth_and_access() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let space =
        |name: &str, preset: &str| json!({ "name": name, "preset": preset, "creation_content": { "type": "m.space" } });
    let root = alice.create_room(space("Ministry", "public_chat")).await;
    let a = alice.create_room(json!({ "name": "A", "preset": "public_chat" })).await;
    let sub = alice.create_room(space("Directorate", "public_chat")).await;
    let b = alice.create_room(json!({ "name": "B", "preset": "public_chat" })).await;
    let c = alice
        .create_room(json!({ "name": "C", "preset": "private_chat" }))
        .await;
    let gone = alice
        .create_room(json!({ "name": "Gone", "preset": "public_chat" }))
        .await;
    add_child(&alice, &root, &a, json!({ "order": "1", "suggested": true })).await;
    add_child(&alice, &root, &sub, json!({ "order": "2" })).await;
    add_child(&alice, &root, &c, json!({ "order": "3" })).await;
    add_child(&alice, &sub, &b, json!({})).await;
    // A removed child (empty content) and one on an unknown room are skipped.
    alice
        .ok(
            "PUT",
            &format!("{V3}/rooms/{}/state/m.space.child/{}", enc(&root), enc(&gone)),
            Some(json!({})),
        )
        .await;
    add_child(&alice, &root, "!elsewhere:example.org", json!({})).await;

    let res = hierarchy(&alice, &root, "").await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(names(&res.body), ["Ministry", "A", "Directorate", "B", "C"]);
    let top = &res.body["rooms"][0];
    assert_eq!(top["room_type"], "m.space");
    assert_eq!(top["num_joined_members"], 1);
    let children: BTreeSet<&str> = top["children_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        children,
        BTreeSet::from([a.as_str(), sub.as_str(), c.as_str(), "!elsewhere:example.org"])
    );
    assert!(top["children_state"][0]["origin_server_ts"].is_u64());
    assert!(res.body["rooms"][1]["children_state"].as_array().unwrap().is_empty());

    // Depth.
    assert_eq!(
        names(&hierarchy(&alice, &root, "max_depth=1").await.body),
        ["Ministry", "A", "Directorate", "C"]
    );
    assert_eq!(names(&hierarchy(&alice, &root, "max_depth=0").await.body), ["Ministry"]);
    // Suggested only.
    assert_eq!(
        names(&hierarchy(&alice, &root, "suggested_only=true").await.body),
        ["Ministry", "A"]
    );
    // Pages of two.
    let p1 = hierarchy(&alice, &root, "limit=2").await.body;
    assert_eq!(names(&p1), ["Ministry", "A"]);
    let from = p1["next_batch"].as_str().expect("next_batch").to_owned();
    let p2 = hierarchy(&alice, &root, &format!("limit=2&from={}", enc(&from)))
        .await
        .body;
    assert_eq!(names(&p2), ["Directorate", "B"]);
    let p3 = hierarchy(
        &alice,
        &root,
        &format!("limit=2&from={}", enc(p2["next_batch"].as_str().unwrap())),
    )
    .await
    .body;
    assert_eq!(names(&p3), ["C"]);
    assert!(p3.get("next_batch").is_none());
    let r = hierarchy(&alice, &root, &format!("limit=2&max_depth=1&from={}", enc(&from))).await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_PARAM"));
    let r = hierarchy(&alice, &root, "limit=0").await;
    assert_eq!(r.status, 400);

    // Bob is in none of them: he sees the public rooms, not the private one.
    let res = hierarchy(&bob, &root, "").await;
    assert_eq!(names(&res.body), ["Ministry", "A", "Directorate", "B"]);
    // A private space or an unknown room is refused.
    let private = alice.create_room(space("Cabinet", "private_chat")).await;
    let r = hierarchy(&bob, &private, "").await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    let r = hierarchy(&bob, "!unknown:localhost", "").await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
}
