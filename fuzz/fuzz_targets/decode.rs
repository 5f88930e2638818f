//! Mews WebSocket messages: decode must never panic, and what it accepts re-encodes to JSON.
#![no_main]

use std::sync::Arc;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(records) = mews_relay::record::decode(&Arc::from("fuzz"), text, SystemTime::UNIX_EPOCH) {
        for record in records {
            let mut line = Vec::new();
            record.encode(1, &mut line);
            // Valid JSON syntax (numbers are passed on unchanged, even past f64).
            assert!(serde_json::from_slice::<Box<serde_json::value::RawValue>>(&line).is_ok());
        }
    }
});
