//! Startup-phase packets (src/protocol/startup.rs) as a client sends them: a length prefix and a body; plus the
//! `options` parameter's parser (src/router/session_effects.rs), since its input arrives in the same packet.
//! Invariants: no panic; a length is accepted only inside Postgres' limits; a decoded StartupMessage or
//! CancelRequest re-encodes to a packet that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpool::protocol::startup::*;
use shardpool::router::session_effects::{startup_options, Setting};

fuzz_target!(|data: &[u8]| {
    let Some(prefix) = data.get(..4) else {
        return;
    };
    let prefix: [u8; 4] = prefix.try_into().expect("4 bytes");
    if let Ok(len) = check_length(prefix) {
        assert!((8..=MAX_STARTUP_PACKET_LEN).contains(&len));
    }
    // Decode the body whatever the prefix says: the handshake reads exactly `len` bytes, which the fuzzer can match.
    let body = &data[4..];
    match decode(body) {
        Ok(StartupPacket::Startup(params)) => {
            assert!(!params.user().is_empty());
            let _ = (params.database(), params.protocol_options());
            let pairs: Vec<(&str, &str)> = params
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            // Names are NUL-free and non-empty by construction; values too.
            let packet = encode_startup(&pairs);
            match decode(&packet[4..]) {
                Ok(StartupPacket::Startup(again)) => assert_eq!(again.params, params.params),
                other => panic!("re-encoded startup packet decodes as {other:?}"),
            }
            if let Some(options) = params.params.get("options") {
                for (name, value) in startup_options(options) {
                    let s = Setting::from_startup(&name, &value);
                    assert!(s.apply.starts_with("SET "));
                    let _ = Setting::reset_sql(&s.name);
                }
            }
        }
        Ok(StartupPacket::Cancel(key)) => {
            assert_eq!(&encode_cancel(key)[4..], body);
        }
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => assert_eq!(body.len(), 4),
        Err(_) => {}
    }
    if let Ok(options) = std::str::from_utf8(body) {
        let _ = startup_options(options);
    }
});
