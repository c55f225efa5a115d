//! A PDU as another server sends it: canonical JSON, the size and reference
//! checks, the event ID, hashes, redaction and the client formats, in every
//! room version's rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use missive_core::pdu::Pdu;
use ruma::{CanonicalJsonObject, RoomVersionId, canonical_json::redact};

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = serde_json::from_slice::<CanonicalJsonObject>(data) else {
        return;
    };
    for version in [
        RoomVersionId::V1,
        RoomVersionId::V3,
        RoomVersionId::V11,
        RoomVersionId::V12,
    ] {
        let rules = version.rules().expect("a supported version");
        if missive_core::limits::check(&obj).is_err() || missive_core::pdu::check_event_refs(&obj, &rules).is_err() {
            continue;
        }
        let _ = ruma::signatures::content_hash(&obj);
        let _ = ruma::signatures::reference_hash(&obj, &rules);
        let redacted = redact(obj.clone(), &rules.redaction, None);
        let Ok(id) = missive_core::pdu::event_id_for(&obj, &rules) else {
            continue;
        };
        if let Ok(pdu) = Pdu::from_canonical(id, None, &obj) {
            let _ = pdu.to_client_event(None);
            let _ = pdu.to_stripped();
            let _ = pdu.membership();
            let _ = pdu.reference_hash(&rules);
            if let Some(_state_key) = &pdu.state_key {
                let _ =
                    missive_core::validate::local_state(&rules, &pdu.kind, &pdu.content_value(), Some(&pdu.room_id));
            }
            // A redacted event is still an event.
            if let Ok(redacted) = redacted {
                let id = missive_core::pdu::event_id_for(&redacted, &rules);
                assert!(id.is_ok(), "the redacted form of a valid PDU has no event ID");
            }
        }
    }
});
