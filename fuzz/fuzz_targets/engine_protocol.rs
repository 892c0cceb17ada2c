//! The engine protocol (`phantom_api::engine`): a client's Request as the engine
//! receives it, and the engine's Reply as a client receives it — one SOCK_SEQPACKET
//! packet, or the large-message marker with the JSON in a memfd.
//!
//! Holds: no panic, no hang, bounded memory; every decoded message encodes and
//! decodes back to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_engine::fuzzing::{decode, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let message = if which % 2 == 0 {
        Message::EngineRequest
    } else {
        Message::EngineReply
    };
    if let Ok(value) = decode(message, bytes) {
        let json = serde_json::to_vec(&value).unwrap();
        let back = decode(message, &json)
            .unwrap_or_else(|e| panic!("{message:?} does not decode back: {e}: {value}"));
        assert_eq!(back, value, "{message:?} round trip");
    }
});
