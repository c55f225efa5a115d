//! Thumbnails of whatever a user uploads: image bombs (huge declared sides,
//! deep compression), truncated and malformed files, every format decoded.
//! The first four bytes are the requested box, the rest the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use missive_server::services::thumbnail::{Method, Size, generate};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    // Small boxes: decoding is what hostile files attack; large outputs
    // only make each run slower (the box is bounded by `Size` anyway).
    let width = u64::from(u16::from_le_bytes([data[0], data[1]]) % 320);
    let height = u64::from(u16::from_le_bytes([data[2], data[3]]) % 320);
    let method = if data[0] & 1 == 0 { Method::Crop } else { Method::Scale };
    let Some(size) = Size::new(width, height, method) else {
        return;
    };
    if let Ok(thumb) = generate(&data[4..], size) {
        assert!(!thumb.bytes.is_empty(), "an empty thumbnail");
    }
});
