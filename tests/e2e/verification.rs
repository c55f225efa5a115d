//! Cross-signing with SAS emoji verification between two clients, and key
//! backup restored on a fresh device with the recovery key.

use std::time::{Duration, Instant};

use matrix_sdk::{
    Client,
    config::SyncSettings,
    encryption::{BackupDownloadStrategy, EncryptionSettings, verification::Verification},
    ruma::{OwnedEventId, api::client::uiaa},
};

use crate::{
    common::{TestServer, password, sdk_client},
    encryption::{decrypted_body, encrypted_room, join, sync_all},
};

async fn bootstrap(client: &Client, username: &str) {
    if let Err(e) = client.encryption().bootstrap_cross_signing(None).await {
        // The server may ask for the password (user-interactive auth).
        let Some(uiaa) = e.as_uiaa_response() else {
            panic!("bootstrap cross-signing: {e}")
        };
        let mut pw = uiaa::Password::new(
            uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(username.to_owned())),
            password(username),
        );
        pw.session = uiaa.session.clone();
        client
            .encryption()
            .bootstrap_cross_signing(Some(uiaa::AuthData::Password(pw)))
            .await
            .expect("bootstrap with auth");
    }
}

async fn until(clients: &[&Client], what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        for c in clients {
            c.sync_once(SyncSettings::default().timeout(Duration::from_millis(100)))
                .await
                .expect("sync");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_signing_and_sas_verification() {
    let server = TestServer::start().await;
    let alice = sdk_client(&server, "alice").await;
    let bob = sdk_client(&server, "bob").await;
    bootstrap(&alice, "alice").await;
    bootstrap(&bob, "bob").await;
    // Sharing a room makes each track the other's devices.
    let room = encrypted_room(&alice, vec![bob.user_id().unwrap().to_owned()]).await;
    join(&bob, &room).await;
    sync_all(&[&alice, &bob]).await;

    let bob_id = bob.user_id().unwrap().to_owned();
    let alice_id = alice.user_id().unwrap().to_owned();
    let bob_device = alice
        .encryption()
        .get_device(&bob_id, bob.device_id().unwrap())
        .await
        .expect("device")
        .expect("Alice knows Bob's device");
    let request = bob_device.request_verification().await.expect("request verification");
    let flow = request.flow_id().to_owned();

    let mut bob_request = None;
    until(&[&alice, &bob], "Bob's verification request", async || {
        bob_request = bob.encryption().get_verification_request(&alice_id, &flow).await;
        bob_request.is_some()
    })
    .await;
    bob_request.unwrap().accept().await.expect("accept");
    until(&[&alice, &bob], "the request to be ready", async || request.is_ready()).await;
    let alice_sas = request.start_sas().await.expect("start sas").expect("sas");

    let mut bob_sas = None;
    until(&[&alice, &bob], "Bob's SAS", async || {
        if let Some(Verification::SasV1(s)) = bob.encryption().get_verification(&alice_id, &flow).await {
            bob_sas = Some(s);
        }
        bob_sas.is_some()
    })
    .await;
    let bob_sas = bob_sas.unwrap();
    bob_sas.accept().await.expect("bob accepts");
    until(&[&alice, &bob], "emojis on both sides", async || {
        alice_sas.emoji().is_some() && bob_sas.emoji().is_some()
    })
    .await;
    let a: Vec<_> = alice_sas.emoji().unwrap().iter().map(|e| e.symbol).collect();
    let b: Vec<_> = bob_sas.emoji().unwrap().iter().map(|e| e.symbol).collect();
    assert_eq!(a, b, "both sides show the same emojis");
    alice_sas.confirm().await.expect("alice confirms");
    bob_sas.confirm().await.expect("bob confirms");
    until(&[&alice, &bob], "verification done", async || {
        alice_sas.is_done() && bob_sas.is_done()
    })
    .await;

    // Each sees the other as verified.
    until(&[&alice, &bob], "verified identities", async || {
        let a_sees = alice
            .encryption()
            .get_user_identity(&bob_id)
            .await
            .ok()
            .flatten()
            .is_some_and(|i| i.is_verified());
        let b_sees = bob
            .encryption()
            .get_user_identity(&alice_id)
            .await
            .ok()
            .flatten()
            .is_some_and(|i| i.is_verified());
        a_sees && b_sees
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_backup_restores_history_on_a_new_device() {
    let server = TestServer::start().await;
    let alice = sdk_client(&server, "alice").await;
    let recovery_key = alice
        .encryption()
        .recovery()
        .enable()
        .await
        .expect("enable recovery and backup");
    let room = encrypted_room(&alice, vec![]).await;
    sync_all(&[&alice]).await;
    let mut sent: Vec<(OwnedEventId, String)> = vec![];
    for i in 0..5 {
        let body = format!("old history {i}");
        let r = alice.get_room(&room).unwrap();
        let id = r
            .send(matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(body.clone()))
            .await
            .expect("send")
            .response
            .event_id;
        sent.push((id, body));
    }
    alice
        .encryption()
        .backups()
        .wait_for_steady_state()
        .await
        .expect("backup uploaded");

    // A fresh device, with no keys of its own for that history.
    let fresh = Client::builder()
        .homeserver_url(&server.url)
        .with_encryption_settings(EncryptionSettings {
            backup_download_strategy: BackupDownloadStrategy::OneShot,
            ..Default::default()
        })
        .build()
        .await
        .expect("client");
    fresh
        .matrix_auth()
        .login_username("alice", &password("alice"))
        .send()
        .await
        .expect("login");
    fresh.sync_once(SyncSettings::default()).await.expect("sync");
    for (id, _) in &sent {
        assert_eq!(
            decrypted_body(&fresh, &room, id).await,
            None,
            "a fresh device cannot decrypt before recovery"
        );
    }
    fresh
        .encryption()
        .recovery()
        .recover(&recovery_key)
        .await
        .expect("recover");
    fresh
        .encryption()
        .backups()
        .download_room_keys_for_room(&room)
        .await
        .expect("download keys");
    for (id, body) in &sent {
        let mut got = None;
        until(&[&fresh], "a restored key", async || {
            got = decrypted_body(&fresh, &room, id).await;
            got.is_some()
        })
        .await;
        assert_eq!(got.as_ref(), Some(body));
    }
}
