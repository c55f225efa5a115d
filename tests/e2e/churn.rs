//! The churn test: users with several devices, devices added and removed,
//! users leaving and coming back, over a thousand encrypted messages; it
//! counts every message a device that should decrypt it could not.

use std::{collections::HashMap, time::Duration};

use matrix_sdk::{
    Client,
    config::SyncSettings,
    ruma::{OwnedEventId, OwnedRoomId},
};

use crate::{
    common::{Raw, TestServer, sdk_login},
    encryption::{decrypted_body, encrypted_room, sync_all},
};

struct Device {
    user: usize,
    client: Client,
}

/// Per round: a change, then messages from random devices.
const ROUNDS: usize = 6;
const PER_ROUND: usize = 175;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_leaves_no_message_undecryptable() {
    let server = TestServer::start_with(&[("MISSIVE_LOG", "error")]).await;
    let names = ["ana", "ben", "cai"];
    for n in names {
        Raw::register(&server, n).await;
    }
    let mut devices: Vec<Device> = vec![];
    for (u, n) in names.iter().enumerate() {
        for _ in 0..2 {
            devices.push(Device {
                user: u,
                client: sdk_login(&server, n).await,
            });
        }
    }
    let user_ids: Vec<_> = devices
        .iter()
        .filter(|d| d.client.device_id().is_some())
        .map(|d| d.client.user_id().unwrap().to_owned())
        .collect();
    let room: OwnedRoomId = encrypted_room(&devices[0].client, vec![user_ids[2].clone(), user_ids[4].clone()]).await;
    for d in &devices[1..] {
        let _ = d
            .client
            .sync_once(SyncSettings::default().timeout(Duration::ZERO))
            .await;
    }
    for u in [1usize, 2] {
        let dev = devices.iter().find(|d| d.user == u).unwrap();
        dev.client.join_room_by_id(&room).await.expect("join");
    }
    let mut joined = [true, true, true];

    // Which messages each device must decrypt: those sent after it existed
    // and while its user was in the room.
    let mut expected: HashMap<String, Vec<(OwnedEventId, String)>> = HashMap::new();
    let mut removed: Vec<Device> = vec![];
    let mut sent = 0usize;
    let mut seed = 0x5eed_u64;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };

    for round in 0..ROUNDS {
        // The change of this round.
        match round {
            1 => devices.push(Device {
                user: 1,
                client: sdk_login(&server, names[1]).await,
            }),
            2 => {
                // Ben's first device is removed.
                let i = devices.iter().position(|d| d.user == 1).unwrap();
                let d = devices.remove(i);
                d.client.logout().await.expect("logout");
                removed.push(d);
            }
            3 => {
                // Cai leaves.
                let d = devices.iter().find(|d| d.user == 2).unwrap();
                d.client.get_room(&room).unwrap().leave().await.expect("leave");
                joined[2] = false;
            }
            4 => {
                // Cai is invited back and rejoins, with a new device too.
                let inviter = devices.iter().find(|d| d.user == 0).unwrap();
                inviter
                    .client
                    .get_room(&room)
                    .unwrap()
                    .invite_user_by_id(&user_ids[4])
                    .await
                    .expect("invite");
                devices.push(Device {
                    user: 2,
                    client: sdk_login(&server, names[2]).await,
                });
                let d = devices.iter().find(|d| d.user == 2).unwrap();
                let _ = d
                    .client
                    .sync_once(SyncSettings::default().timeout(Duration::ZERO))
                    .await;
                d.client.join_room_by_id(&room).await.expect("rejoin");
                joined[2] = true;
            }
            5 => devices.push(Device {
                user: 0,
                client: sdk_login(&server, names[0]).await,
            }),
            _ => {}
        }
        let clients: Vec<&Client> = devices.iter().map(|d| &d.client).collect();
        sync_all(&clients).await;

        for _ in 0..PER_ROUND {
            let senders: Vec<&Device> = devices.iter().filter(|d| joined[d.user]).collect();
            let s = senders[rand(senders.len())];
            let body = format!("r{round}-m{sent}");
            let room_handle = s.client.get_room(&room).expect("room");
            let id = room_handle
                .send(matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(body.clone()))
                .await
                .expect("send")
                .response
                .event_id;
            for d in devices.iter().filter(|d| joined[d.user]) {
                expected
                    .entry(d.client.device_id().unwrap().to_string())
                    .or_default()
                    .push((id.clone(), body.clone()));
            }
            sent += 1;
            if sent.is_multiple_of(25) {
                // Keep everyone roughly current, as live clients are.
                sync_all(&clients).await;
            }
        }
        sync_all(&clients).await;
    }

    // Every device that should decrypt a message, decrypts it.
    let mut undecryptable = 0usize;
    let mut checked = 0usize;
    for d in &devices {
        for _ in 0..3 {
            d.client
                .sync_once(SyncSettings::default().timeout(Duration::from_millis(100)))
                .await
                .expect("sync");
        }
        for (id, body) in expected
            .get(&d.client.device_id().unwrap().to_string())
            .into_iter()
            .flatten()
        {
            checked += 1;
            match decrypted_body(&d.client, &room, id).await {
                Some(b) if &b == body => {}
                other => {
                    undecryptable += 1;
                    eprintln!(
                        "device {} of {} could not decrypt {body}: {other:?}",
                        d.client.device_id().unwrap(),
                        names[d.user]
                    );
                }
            }
        }
    }
    eprintln!(
        "churn: {sent} messages, {} devices at the end ({} removed), {checked} (message, device) pairs checked, {undecryptable} undecryptable",
        devices.len(),
        removed.len()
    );
    assert!(sent >= 1000);
    assert_eq!(undecryptable, 0, "messages that a device should decrypt but could not");
}
