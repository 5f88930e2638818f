//! Property tests over the parsers that face the outside: Mews messages, webhook bodies and
//! config files. None may panic, and what they accept they keep intact. (The cargo-fuzz targets
//! in fuzz/ drive the same functions with coverage guidance.)

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use mews_relay::config::{CredentialsDir, Settings};
use mews_relay::record::decode;
use proptest::prelude::*;

fn event() -> impl Strategy<Value = serde_json::Value> {
    let text = "[a-zA-Z0-9 .:é\"\\\\-]{0,12}";
    (
        text,
        text,
        prop::option::of(text),
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(kind, id, state, n)| {
            let mut event = serde_json::json!({ "Type": kind, "Id": id });
            if let Some(state) = state {
                event["State"] = state.into();
            }
            if let Some(n) = n {
                event["Extra"] = serde_json::json!({ "n": n, "list": [n, null, true] });
            }
            event
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Any text is either decoded or rejected with an error, never a panic.
    #[test]
    fn decode_never_panics(text in any::<String>()) {
        let _ = decode(&Arc::from("p"), &text, SystemTime::UNIX_EPOCH);
    }

    /// Any `{"Events":[…]}` gives one record per event, each event byte for byte, with its
    /// Type/Id/State copied out.
    #[test]
    fn events_are_kept_byte_for_byte(events in prop::collection::vec(event(), 0..20)) {
        let raw: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        let message = format!(r#"{{"Events":[{}]}}"#, raw.join(" , "));
        let records = decode(&Arc::from("p"), &message, SystemTime::UNIX_EPOCH).unwrap();
        prop_assert_eq!(records.len(), events.len());
        for ((record, event), raw) in records.iter().zip(&events).zip(&raw) {
            prop_assert_eq!(record.event.get(), raw.as_str());
            prop_assert_eq!(record.kind.as_deref(), event["Type"].as_str());
            prop_assert_eq!(record.id.as_deref(), event["Id"].as_str());
            prop_assert_eq!(record.state.as_deref(), event["State"].as_str());
            let mut line = Vec::new();
            record.encode(1, &mut line);
            let back: serde_json::Value = serde_json::from_slice(&line).unwrap();
            prop_assert_eq!(&back["event"], event);
        }
    }

    /// Any webhook body is parsed or refused, never a panic.
    #[test]
    fn webhook_parsing_never_panics(text in any::<String>()) {
        let _ = mews_relay::ingress::parse(&text, &Default::default(), SystemTime::UNIX_EPOCH);
    }

    /// Any text as a config file is loaded or refused with one line naming the file.
    #[test]
    fn config_loading_never_panics(text in any::<String>()) {
        if let Err(err) = Settings::from_toml(&text, Path::new("p.toml"), &CredentialsDir::default()) {
            let line = err.to_string();
            prop_assert!(line.starts_with("p.toml: "), "{}", line);
            prop_assert!(!line.contains('\n'), "{}", line);
        }
    }

    /// Configs that are valid TOML with random keys and values are refused cleanly too.
    #[test]
    fn odd_config_values_are_refused_cleanly(key in "[a-z_]{1,12}", value in "[a-z0-9\"]{0,8}") {
        let text = format!("[mews]\nwebsocket_url = \"wss://ws.mews.com/ws/connector\"\n{key} = {value}\n");
        let _ = Settings::from_toml(&text, Path::new("p.toml"), &CredentialsDir::default());
    }
}
