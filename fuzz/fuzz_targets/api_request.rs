//! The HTTP API's request bodies (`POST /api/v2/run`, `/sandboxes`,
//! `/sandboxes/{name}/exec`, `/snapshots`) and the MCP tools' arguments, parsed the
//! way the front ends parse them (`phantom_api::strict`), then checked the way the
//! engine checks them: the program, the files, the limits (`prepare.rs`), and the
//! limits compiled over the default profile.
//!
//! Holds: no panic, no hang; every accepted body serializes and parses back to the
//! same value; every refusal is one line naming what to change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_api::request::{CodeRun, CommandRun, CreateRequest, ExecBody, Limits, RunRequest};
use phantom_api::strict;
use phantom_api::ApiSnapshotRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + schemars::JsonSchema + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_vec(value).expect("requests serialize");
    let back: T = strict::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "{} does not parse back: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(
        &back,
        value,
        "round trip of {}",
        String::from_utf8_lossy(&json)
    );
}

fn one_line(message: &str) {
    assert!(
        !message.contains('\n'),
        "a refusal spans lines: {message:?}"
    );
}

fn limits(limits: &Limits, image: Option<&str>) {
    match phantom_engine::fuzzing::overrides(limits, image) {
        Ok((overrides, _output)) => {
            let profile = phantom_policy::load_builtin(phantom_policy::DEFAULT_PROFILE)
                .expect("the default profile loads");
            if let Err(e) = phantom_policy::compile(&profile, &overrides) {
                one_line(&e.to_string());
            }
        }
        Err(e) => one_line(&e.for_cli()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => match strict::from_slice::<RunRequest>(body) {
            Ok(req) => {
                round_trip(&req);
                if let Ok(program) = req.program() {
                    let _ = (program.argv(), program.default_profile());
                }
                if let Err(e) = req.options.check_files() {
                    one_line(&e.for_cli());
                }
                limits(&req.options.limits, req.options.image.as_deref());
            }
            Err(e) => one_line(&e.message),
        },
        1 => match strict::from_slice::<CreateRequest>(body) {
            Ok(req) => {
                round_trip(&req);
                limits(&req.limits, req.image.as_deref());
            }
            Err(e) => one_line(&e.message),
        },
        2 => match strict::from_slice::<ExecBody>(body) {
            Ok(req) => {
                round_trip(&req);
                let _ = req.request.program();
            }
            Err(e) => one_line(&e.message),
        },
        3 => match strict::from_slice::<ApiSnapshotRequest>(body) {
            Ok(req) => round_trip(&req),
            Err(e) => one_line(&e.message),
        },
        4 => match strict::from_slice::<CodeRun>(body) {
            Ok(req) => {
                round_trip(&req);
                let run = RunRequest::from(req);
                assert!(run.program().is_ok(), "run_code always has a program");
            }
            Err(e) => one_line(&e.message),
        },
        _ => match strict::from_slice::<CommandRun>(body) {
            Ok(req) => {
                round_trip(&req);
                let _ = RunRequest::from(req).program();
            }
            Err(e) => one_line(&e.message),
        },
    }
});
