//! A simplified sliding sync request (MSC4186) through the ruma adapter:
//! the query string (`pos`, `timeout`) and the body.
#![no_main]

#[path = "../common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use missive_server::ruma_wrapper::{check_path_and_query, parse_http_request};
use ruma::api::client::sync::sync_events::v5;

fuzz_target!(init: common::quiet_caught_panics(), |data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(0);
    let query = String::from_utf8_lossy(&data[..split]);
    let uri = format!("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?{query}");
    if check_path_and_query(&[], &[], Some(&query)).is_err() {
        return;
    }
    let Some(req) = common::request("POST", &uri, data.get(split + 1..).unwrap_or_default()) else {
        return;
    };
    if let Ok(req) = parse_http_request::<v5::Request>(req, &[]) {
        for list in req.lists.values() {
            let _ = list.ranges.len();
        }
    }
});
