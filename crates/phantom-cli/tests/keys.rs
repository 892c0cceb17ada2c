//! `phantom keys` and `phantom audit` as an operator meets them, in a temporary state
//! directory.

mod common;

use common::phantom;
use serde_json::Value;

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn keys_are_shown_once_listed_without_secrets_revoked_and_audited() {
    let dir = Dir(std::env::temp_dir().join(format!("phantom-keys-it-{}", std::process::id())));
    let run = |args: &[&str]| {
        phantom(args, |cmd| {
            cmd.env("PHANTOM_STATE_DIR", &dir.0);
        })
    };
    let out = run(&["keys", "add", "grader", "--rate", "120", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let added: Value = serde_json::from_str(&out.stdout).unwrap();
    let secret = added["key"].as_str().unwrap().to_string();
    let id = added["record"]["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with(&format!("phk_{id}_")), "{added}");
    let out = run(&["keys", "list", "--json"]);
    assert!(
        !out.stdout.contains(&secret[16..]),
        "list shows the secret: {}",
        out.stdout
    );
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list[0]["rate_per_min"], 120);
    assert_eq!(list[0]["revoked"], Value::Null);
    let out = run(&["keys", "revoke", "grader"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let list: Value = serde_json::from_str(&run(&["keys", "list", "--json"]).stdout).unwrap();
    assert!(list[0]["revoked"].as_u64().is_some(), "{list}");
    let out = run(&["keys", "revoke", "nobody"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("no API key with id or name `nobody`"));
    let audit: Value =
        serde_json::from_str(&run(&["audit", "--since", "1h", "--json"]).stdout).unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["keys.add", "keys.revoke"], "{audit}");
    assert_eq!(run(&["audit", "--since", "someday"]).code, Some(2));
}
