//! Config files: loading must never panic; a refusal is one line naming the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mews_relay::config::{CredentialsDir, Settings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(err) = Settings::from_toml(text, Path::new("fuzz.toml"), &CredentialsDir::default()) {
        assert!(!err.to_string().contains('\n'));
    }
});
