//! A sync filter, as uploaded or given inline, then applied to an event:
//! the first line is the filter, the rest the event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use missive_core::pdu::Pdu;
use missive_store::StoredEvent;
use ruma::{CanonicalJsonObject, RoomVersionId, api::client::filter::FilterDefinition};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let Ok(filter) = serde_json::from_slice::<FilterDefinition>(&data[..split]) else {
        return;
    };
    // What a filter upload stores is read back as the same filter.
    let stored = serde_json::to_string(&filter).unwrap();
    assert!(serde_json::from_str::<FilterDefinition>(&stored).is_ok());
    let Some(event) = data.get(split + 1..) else { return };
    let Ok(obj) = serde_json::from_slice::<CanonicalJsonObject>(event) else {
        return;
    };
    let rules = RoomVersionId::V12.rules().unwrap();
    let Ok(id) = missive_core::pdu::event_id_for(&obj, &rules) else {
        return;
    };
    let Ok(pdu) = Pdu::from_canonical(id, None, &obj) else {
        return;
    };
    let ev = StoredEvent {
        pdu,
        stream_pos: 1,
        state_group: 1,
        unsigned: None,
        redacted_by: None,
        txn_device: None,
        txn_id: None,
    };
    let _ = missive_server::services::timeline::filter_allows(&filter.room.timeline, &ev);
    let _ = missive_server::services::timeline::filter_allows(&filter.room.state, &ev);
});
