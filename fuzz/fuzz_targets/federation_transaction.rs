//! `PUT /_matrix/federation/v1/send/{txnId}` as it reaches the server: the
//! request parsed by the ruma adapter, then every PDU through the checks
//! of the PDU target and every EDU through its parser.
#![no_main]

#[path = "../common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use missive_server::{ruma_wrapper::parse_http_request, services::federation::edu};
use ruma::{CanonicalJsonObject, RoomVersionId, ServerName, api::federation::transactions::send_transaction_message};

fuzz_target!(init: common::quiet_caught_panics(), |data: &[u8]| {
    let Some(req) = common::request("PUT", "/_matrix/federation/v1/send/txn1", data) else {
        return;
    };
    let Ok(txn) = parse_http_request::<send_transaction_message::v1::Request>(req, &["txn1".to_owned()]) else {
        return;
    };
    let rules = RoomVersionId::V12.rules().unwrap();
    for pdu in &txn.pdus {
        if let Ok(obj) = serde_json::from_str::<CanonicalJsonObject>(pdu.get())
            && missive_core::limits::check(&obj).is_ok()
            && missive_core::pdu::check_event_refs(&obj, &rules).is_ok()
        {
            let _ = missive_core::pdu::event_id_for(&obj, &rules);
        }
    }
    let origin = <&ServerName>::try_from("remote.example").unwrap();
    let here = <&ServerName>::try_from("here.example").unwrap();
    for raw in &txn.edus {
        let Ok(edu) = serde_json::from_str::<serde_json::Value>(raw.json().get()) else {
            continue;
        };
        let content = &edu["content"];
        match edu["edu_type"].as_str() {
            Some("m.typing") => {
                let _ = edu::parse_typing(origin, content);
            }
            Some("m.receipt") => {
                for r in edu::parse_receipts(origin, content) {
                    assert_eq!(r.user.server_name(), origin);
                }
            }
            Some("m.direct_to_device") => {
                if let Some((sender, _, _, targets)) = edu::parse_to_device(origin, here, content) {
                    assert_eq!(sender.server_name(), origin);
                    assert!(targets.iter().all(|t| t.user_id.ends_with(":here.example")));
                }
            }
            _ => {}
        }
    }
});
