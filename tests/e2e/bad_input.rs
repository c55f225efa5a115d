//! Bad input gets the spec's status and errcode and changes nothing.

use serde_json::{Value, json};

use crate::common::{Raw, RawBody, TestServer, enc, request};

async fn room_state(u: &Raw, room: &str) -> Value {
    let mut v = u
        .ok("GET", &format!("/_matrix/client/v3/rooms/{}/state", enc(room)), None)
        .await;
    for e in v.as_array_mut().unwrap().iter_mut() {
        e.as_object_mut().unwrap().remove("unsigned");
    }
    v.as_array_mut()
        .unwrap()
        .sort_by(|a, b| a["event_id"].as_str().cmp(&b["event_id"].as_str()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_matrix_errors_and_change_nothing() {
    let server = TestServer::start_with(&[("MISSIVE_LOG", "error")]).await;
    let alice = Raw::register(&server, "alice").await;
    let mallory = Raw::register(&server, "mallory").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Original" }))
        .await;
    mallory
        .ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(json!({})),
        )
        .await;
    let before = room_state(&alice, &room).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{}", server.url, p);
    let send_path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/", enc(&room));

    // Malformed JSON.
    let r = request(
        &http,
        "PUT",
        &url(&format!("{send_path}a")),
        Some(&alice.token),
        Some(RawBody::Bytes(b"{\"body\": ".to_vec())),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_NOT_JSON"));
    // Wrong types.
    let r = alice
        .call("POST", "/_matrix/client/v3/createRoom", Some(json!({ "name": 5 })))
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_BAD_JSON"));
    let r = alice.call("PUT", &format!("{send_path}b"), Some(json!([1, 2]))).await;
    assert_eq!((r.status, r.errcode()), (400, "M_BAD_JSON"));
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(json!({ "room_version": "13" })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_UNSUPPORTED_ROOM_VERSION"));
    // An oversized body.
    let big = json!({ "msgtype": "m.text", "body": "x".repeat(2 * 1024 * 1024) });
    // (On its own connection: the server closes it rather than read the rest.)
    let own_conn = Raw {
        http: reqwest::Client::new(),
        ..alice.clone()
    };
    let r = own_conn.call("PUT", &format!("{send_path}c"), Some(big)).await;
    assert_eq!((r.status, r.errcode()), (413, "M_TOO_LARGE"));
    // An event over the PDU size limit, in a body the server accepts.
    let r = alice
        .call(
            "PUT",
            &format!("{send_path}d"),
            Some(json!({ "msgtype": "m.text", "body": "y".repeat(70_000) })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (413, "M_TOO_LARGE"));
    // Unknown rooms.
    let r = alice.send_text("!nosuchroom:localhost", "e", "hi").await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/join/%23nowhere%3Alocalhost",
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));
    // Forbidden actions: a plain member may not rename the room, change power levels or kick.
    let r = mallory
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(json!({ "name": "Pwned" })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    let r = mallory
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room)),
            Some(json!({ "users": { mallory.user_id.clone(): 100 } })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    let r = mallory
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            Some(json!({ "user_id": alice.user_id })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    // Another user's account data.
    let r = mallory
        .call(
            "PUT",
            &format!("/_matrix/client/v3/user/{}/account_data/m.x", enc(&alice.user_id)),
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    // No token, a bad token.
    let r = request(&http, "GET", &url("/_matrix/client/v3/account/whoami"), None, None).await;
    assert_eq!((r.status, r.errcode()), (401, "M_MISSING_TOKEN"));
    let r = request(
        &http,
        "GET",
        &url("/_matrix/client/v3/account/whoami"),
        Some("mva_nope"),
        None,
    )
    .await;
    assert_eq!((r.status, r.errcode()), (401, "M_UNKNOWN_TOKEN"));
    // Unknown endpoint, wrong method.
    let r = alice.call("GET", "/_matrix/client/v3/no/such/endpoint", None).await;
    assert_eq!((r.status, r.errcode()), (404, "M_UNRECOGNIZED"));
    let r = alice.call("DELETE", "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!((r.status, r.errcode()), (405, "M_UNRECOGNIZED"));
    // Wrong password at login.
    let r = request(
        &http,
        "POST",
        &url("/_matrix/client/v3/login"),
        None,
        Some(RawBody::Json(json!({
            "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "wrong"
        }))),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));

    // Nothing changed.
    assert_eq!(room_state(&alice, &room).await, before);
    let msgs = alice
        .ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&room)),
            None,
        )
        .await;
    assert!(
        msgs["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] != "m.room.message")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_closed_by_default_and_admin_creates_users() {
    let server = TestServer::start_with(&[("MISSIVE_REGISTRATION", "closed")]).await;
    let http = reqwest::Client::new();
    let r = request(
        &http,
        "POST",
        &format!("{}/_matrix/client/v3/register", server.url),
        None,
        Some(RawBody::Json(json!({
            "username": "eve", "password": "whatever-pass", "auth": { "type": "m.login.dummy" }
        }))),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));

    let out = server
        .admin(&["create-user", "dave", "--password", "dave-long-password"])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = request(&http, "POST", &format!("{}/_matrix/client/v3/login", server.url), None, Some(RawBody::Json(json!({
        "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "dave" }, "password": "dave-long-password"
    })))).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_tokens_are_counted() {
    let server = TestServer::start_with(&[("MISSIVE_REGISTRATION", "token")]).await;
    let out = server
        .admin(&["create-registration-token", "--token", "welcome", "--uses", "1"])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let http = reqwest::Client::new();
    let reg = |name: &'static str, token: &'static str| {
        let http = http.clone();
        let url = format!("{}/_matrix/client/v3/register", server.url);
        async move {
            let first = request(
                &http,
                "POST",
                &url,
                None,
                Some(RawBody::Json(json!({ "username": name, "password": "long-enough-pw" }))),
            )
            .await;
            assert_eq!(first.status, 401);
            assert_eq!(first.body["flows"][0]["stages"][0], "m.login.registration_token");
            let session = first.body["session"].as_str().unwrap().to_owned();
            request(
                &http,
                "POST",
                &url,
                None,
                Some(RawBody::Json(json!({
                    "username": name, "password": "long-enough-pw",
                    "auth": { "type": "m.login.registration_token", "token": token, "session": session }
                }))),
            )
            .await
        }
    };
    let bad = reg("frank", "wrong").await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.errcode(), "M_FORBIDDEN");
    assert_eq!(reg("grace", "welcome").await.status, 200);
    let used = reg("heidi", "welcome").await;
    assert_eq!(
        used.status, 401,
        "a used-up token no longer completes the stage: {}",
        used.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_login_is_bad_json_not_a_dropped_connection() {
    let server = TestServer::start_with(&[("MISSIVE_LOG", "error")]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/_matrix/client/v3/login", server.url);
    for body in [
        json!({}),
        json!({ "type": "m.login.password" }),
        json!({ "identifier": 3 }),
    ] {
        let r = request(&http, "POST", &url, None, Some(RawBody::Json(body.clone()))).await;
        assert_eq!((r.status, r.errcode()), (400, "M_BAD_JSON"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_sends_are_rate_limited() {
    let server = TestServer::start_with(&[("MISSIVE_RATE_LIMITS", "on")]).await;
    let alice = Raw::register(&server, "alice").await;
    let http = reqwest::Client::new();
    let url = format!("{}/_matrix/client/v3/login", server.url);
    let mut limited = None;
    for _ in 0..15 {
        let r = request(
            &http,
            "POST",
            &url,
            None,
            Some(RawBody::Json(json!({
                "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "guess"
            }))),
        )
        .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 403);
    }
    let r = limited.expect("password guessing is rate limited");
    assert_eq!(r.errcode(), "M_LIMIT_EXCEEDED");
    assert!(r.body["retry_after_ms"].as_u64().unwrap() > 0);

    let room = alice.create_room(json!({})).await;
    let mut statuses = vec![];
    for i in 0..80 {
        statuses.push(alice.send_text(&room, &format!("flood{i}"), "flood").await.status);
    }
    assert!(statuses.contains(&429), "a flood of sends is rate limited");
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 50,
        "the burst goes through"
    );
}
