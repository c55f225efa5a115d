//! The page a URL preview fetches is written by anyone: its OpenGraph and
//! HTML metadata are parsed from arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let html = String::from_utf8_lossy(data);
    let og = missive_server::services::opengraph::parse(&html).into_opengraph();
    // What is shown to users is plain text of bounded size.
    assert!(serde_json::to_string(&og).unwrap().len() <= 64 * 1024 + data.len().min(64 * 1024));
});
