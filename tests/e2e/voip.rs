//! TURN credentials follow coturn's shared-secret scheme (`use-auth-secret`).

use base64::Engine;
use hmac::{Hmac, Mac};

use crate::common::{Raw, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_verify_with_the_shared_secret() {
    let secret = "coturn-static-auth-secret";
    let server = TestServer::start_with(&[
        (
            "MISSIVE_TURN_URIS",
            "turn:turn.example.test:3478?transport=udp, turns:turn.example.test:5349?transport=tcp",
        ),
        ("MISSIVE_TURN_SHARED_SECRET", secret),
    ])
    .await;
    let alice = Raw::register(&server, "alice").await;
    let r = alice.ok("GET", "/_matrix/client/v3/voip/turnServer", None).await;
    assert_eq!(
        r["uris"],
        serde_json::json!([
            "turn:turn.example.test:3478?transport=udp",
            "turns:turn.example.test:5349?transport=tcp"
        ])
    );
    assert_eq!(r["ttl"], 86_400);
    let username = r["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "@alice:localhost");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > now + 86_000 && expiry <= now + 86_401, "expiry is now + ttl");
    // What coturn computes from the username and its copy of the secret.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(r["password"], expected);

    // Without a configured TURN server there is nothing to hand out: an
    // empty object, as the reference server answers (Element logs an
    // error on every start for a 404).
    let bare = TestServer::start().await;
    let bob = Raw::register(&bare, "bob").await;
    let r = bob.call("GET", "/_matrix/client/v3/voip/turnServer", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, serde_json::json!({}));
    let anonymous = reqwest::get(format!("{}/_matrix/client/v3/voip/turnServer", server.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}
