//! Key endpoints at the wire: bad keys and signatures are refused with the
//! spec's errors, oversized to-device batches too, and a dehydrated device
//! (MSC3814) keeps the to-device messages sent while its owner was away.

use base64::Engine;
use missive_core::ruma::{
    CanonicalJsonObject,
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::common::{Raw, TestServer};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// Device keys for `device`, self-signed with a fresh ed25519 key.
fn device_keys(user: &str, device: &str) -> (Value, Ed25519KeyPair) {
    let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), device.to_owned()).unwrap();
    let mut obj: CanonicalJsonObject = serde_json::from_value(json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("ed25519:{device}"): b64(&key.public_key()),
            format!("curve25519:{device}"): b64(&[7u8; 32]),
        },
    }))
    .unwrap();
    sign_json(user, &key, &mut obj).unwrap();
    (serde_json::to_value(obj).unwrap(), key)
}

fn signed_otk(user: &str, key: &Ed25519KeyPair, n: u8) -> Value {
    let mut obj: CanonicalJsonObject = serde_json::from_value(json!({ "key": b64(&[n; 32]) })).unwrap();
    sign_json(user, key, &mut obj).unwrap();
    serde_json::to_value(obj).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_signatures_are_refused() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let device = alice.ok("GET", "/_matrix/client/v3/account/whoami", None).await["device_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Keys claiming another user or device.
    let (other, _) = device_keys("@bob:localhost", &device);
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "device_keys": other })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_PARAM"));
    // A signature that does not verify.
    let (mut keys, _) = device_keys("@alice:localhost", &device);
    keys["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "device_keys": keys })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_SIGNATURE"));
    // Malformed one-time keys.
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "one_time_keys": ["not", "a", "map"] })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_BAD_JSON"));
    // Nothing of that was stored.
    let q = alice
        .ok(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { "@alice:localhost": [] } })),
        )
        .await;
    assert!(
        q["device_keys"]["@alice:localhost"]
            .as_object()
            .is_none_or(|d| d.is_empty())
    );

    // Good keys are accepted and counted; a one-time key signed by another key is not.
    let (keys, key) = device_keys("@alice:localhost", &device);
    let (_, stranger) = device_keys("@alice:localhost", "STRANGER");
    let r = alice
        .ok(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(json!({
                "device_keys": keys,
                "one_time_keys": { "signed_curve25519:AAAA": signed_otk("@alice:localhost", &key, 1) },
            })),
        )
        .await;
    assert_eq!(r["one_time_key_counts"]["signed_curve25519"], 1);
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(json!({
                "one_time_keys": { "signed_curve25519:BBBB": signed_otk("@alice:localhost", &stranger, 2) },
            })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_SIGNATURE"));

    // A cross-signing signature that does not verify is reported as a failure.
    let mut forged = keys.clone();
    forged["signatures"] = json!({ "@alice:localhost": { "ed25519:MASTER": "Zm9yZ2Vk" } });
    let r = alice
        .ok(
            "POST",
            "/_matrix/client/v3/keys/signatures/upload",
            Some(json!({ "@alice:localhost": { device.clone(): forged } })),
        )
        .await;
    assert!(
        r["failures"]["@alice:localhost"][&device]["errcode"].as_str().is_some(),
        "{r}"
    );

    // An oversized to-device batch.
    let big = "x".repeat(2 * 1024 * 1024);
    let own = Raw {
        http: reqwest::Client::new(),
        ..alice.clone()
    };
    let r = own
        .call(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.test/big",
            Some(json!({ "messages": { "@alice:localhost": { "*": { "blob": big } } } })),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (413, "M_TOO_LARGE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dehydrated_device_keeps_messages_for_an_offline_user() {
    let server = TestServer::start().await;
    let alice = Raw::register(&server, "alice").await;
    let bob = Raw::register(&server, "bob").await;
    let path = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";
    let r = bob.call("GET", path, None).await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"));

    let (keys, key) = device_keys("@bob:localhost", "DEHYDRATED1");
    bob.ok(
        "PUT",
        path,
        Some(json!({
            "device_id": "DEHYDRATED1",
            "initial_device_display_name": "Dehydrated device",
            "device_data": { "algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "opaque", "nonce": "n" },
            "device_keys": keys,
            "one_time_keys": { "signed_curve25519:AAAA": signed_otk("@bob:localhost", &key, 3) },
        })),
    )
    .await;
    let got = bob.ok("GET", path, None).await;
    assert_eq!(got["device_id"], "DEHYDRATED1");
    assert_eq!(got["device_data"]["device_pickle"], "opaque");

    // Alice sees the device, claims its key and sends to every device of Bob while he is away.
    let q = alice
        .ok(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { "@bob:localhost": [] } })),
        )
        .await;
    assert!(q["device_keys"]["@bob:localhost"]["DEHYDRATED1"].is_object());
    let c = alice
        .ok(
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(json!({ "one_time_keys": { "@bob:localhost": { "DEHYDRATED1": "signed_curve25519" } } })),
        )
        .await;
    assert!(c["one_time_keys"]["@bob:localhost"]["DEHYDRATED1"]["signed_curve25519:AAAA"].is_object());
    for i in 0..3 {
        alice
            .ok(
                "PUT",
                &format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/t{i}"),
                Some(json!({ "messages": { "@bob:localhost": { "*": { "n": i } } } })),
            )
            .await;
    }

    // Bob's new device fetches what the dehydrated device received, in pages, exactly once.
    let events = format!("{path}/DEHYDRATED1/events");
    let first = bob.ok("POST", &events, Some(json!({}))).await;
    let got: Vec<_> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["n"].clone())
        .collect();
    assert_eq!(got, vec![json!(0), json!(1), json!(2)]);
    let next = first["next_batch"].as_str().unwrap();
    let second = bob.ok("POST", &events, Some(json!({ "next_batch": next }))).await;
    assert!(
        second["events"].as_array().unwrap().is_empty(),
        "acknowledged messages are not handed out again"
    );
    let r = alice.call("POST", &events, Some(json!({}))).await;
    assert_eq!(r.status / 100, 4, "only the owner reads a dehydrated device");
    bob.ok("DELETE", path, None).await;
    assert_eq!(bob.call("GET", path, None).await.status, 404);
}
