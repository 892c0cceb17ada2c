//! The sandbox channel and its neighbours: ToInit as an init or a zygote reads it
//! (from a packet, or a pooled init's possibly in a memfd), FromInit as the spawner
//! reads it, a keeper's Report, a zygote's ForkPlan and its children's RunSpec (from
//! memfds), and a request's files as an init reads them.
//!
//! Holds: no panic, no hang, bounded memory; every decoded message encodes and
//! decodes back to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_engine::fuzzing::{decode, Message};

const KINDS: [Message; 7] = [
    Message::ToInitPooled,
    Message::ToInit,
    Message::FromInit,
    Message::Report,
    Message::RunSpec,
    Message::ForkPlan,
    Message::Files,
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let message = KINDS[usize::from(which) % KINDS.len()];
    if let Ok(value) = decode(message, bytes) {
        let json = serde_json::to_vec(&value).unwrap();
        let back = decode(message, &json)
            .unwrap_or_else(|e| panic!("{message:?} does not decode back: {e}: {value}"));
        assert_eq!(back, value, "{message:?} round trip");
    }
});
