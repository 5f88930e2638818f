//! Webhook bodies: parse must never panic.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = mews_relay::ingress::parse(&text, &Default::default(), SystemTime::UNIX_EPOCH);
});
