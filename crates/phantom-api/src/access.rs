//! Who a request acts for and what it may ask for.
//!
//! Every persistent sandbox and snapshot has an [`Owner`]; a front end acts for
//! exactly one: the CLI and a keyless MCP server for the local user
//! ([`Owner::Local`]), the HTTP API and an MCP server started with a key for that API
//! key ([`Owner::Key`]). Nothing of another owner can be listed, read, exec'd into or
//! destroyed, and "not yours" looks exactly like "not found". Images belong to the
//! local user, the only one who can import them (`phantom image import`); a key runs on
//! them only with the [`Capability::Images`] grant, and cannot change them.
//!
//! [`Grants`] say what a principal may ask for: profiles, network modes, modes, the
//! largest limits, and the capabilities that reach the host (its network, a host
//! directory as workspace, policy files with host binds, direct mode, images). The
//! engine checks a request against them after compiling its policy, so a limit is
//! compared with the profile's own.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::choice::{Mode, NetworkMode};

/// Who owns a persistent thing, and whom a request acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// The user the engine runs as, through the CLI or MCP over stdio.
    Local,
    /// An API key, by its id (`phantom keys list`).
    Key(String),
    /// Nobody yet: a persistent sandbox the engine built ahead of demand
    /// (`phantom-supervisor --persistent-pool`), which a create of the same plan
    /// adopts; then it is the creator's. No request ever acts for this owner.
    Spare,
}

impl Owner {
    /// `local` or `key:<id>`, as stored and shown to operators.
    pub fn as_string(&self) -> String {
        match self {
            Owner::Local => "local".into(),
            Owner::Key(id) => format!("key:{id}"),
            Owner::Spare => "spare".into(),
        }
    }

    /// The inverse of [`Owner::as_string`].
    pub fn parse(text: &str) -> Option<Owner> {
        match text {
            "local" => Some(Owner::Local),
            "spare" => Some(Owner::Spare),
            _ => text
                .strip_prefix("key:")
                .filter(|id| !id.is_empty())
                .map(|id| Owner::Key(id.to_string())),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_string())
    }
}

impl Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_string())
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Owner::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "owner `{text}`: expected `local`, `key:<id>` or `spare`"
            ))
        })
    }
}

impl JsonSchema for Owner {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Owner".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(local|key:.+|spare)$",
            "description": "`local` (the engine's own user), `key:<id>` (an API key) or `spare` (a sandbox built ahead of demand, nobody's yet)."
        })
    }
}

/// The largest limits a principal may ask for. An absent one: no larger than the
/// profile's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MaxLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
}

/// A capability that reaches outside the sandbox's own fences; each needs an explicit
/// grant (`phantom keys add NAME --allow CAPABILITY`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `network: host` — the host's network, no namespace.
    HostNetwork,
    /// `mode: direct` — no namespaces at all (limits and the timeout only).
    DirectMode,
    /// `workspace`: a host directory bound read-write at /workspace.
    HostWorkspace,
    /// `policy_file`: a policy file on the engine's host, which may bind host paths.
    PolicyFiles,
    /// `image`: run on the images of the store.
    Images,
    /// No ceiling on limits: larger than the profile's own.
    AnyLimits,
}

impl Capability {
    pub const ALL: [Capability; 6] = [
        Capability::HostNetwork,
        Capability::DirectMode,
        Capability::HostWorkspace,
        Capability::PolicyFiles,
        Capability::Images,
        Capability::AnyLimits,
    ];

    /// The name `--allow` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::HostNetwork => "host-network",
            Capability::DirectMode => "direct-mode",
            Capability::HostWorkspace => "host-workspace",
            Capability::PolicyFiles => "policy-files",
            Capability::Images => "images",
            Capability::AnyLimits => "any-limits",
        }
    }

    /// What granting it means, for `--help` and refusals.
    pub fn meaning(self) -> &'static str {
        match self {
            Capability::HostNetwork => "network host: the host's network, no namespace",
            Capability::DirectMode => "mode direct: no namespaces, only limits and the timeout",
            Capability::HostWorkspace => "a host directory as the workspace",
            Capability::PolicyFiles => "policy files on the host, which may bind host paths",
            Capability::Images => "runs and sandboxes on the images of the store",
            Capability::AnyLimits => "limits larger than the profile's own",
        }
    }
}

impl std::str::FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Capability, String> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
                format!("unknown capability `{s}`: use {}", names.join(", "))
            })
    }
}

/// What a principal may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Grants {
    /// Built-in profiles it may name; empty: every built-in profile.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Network modes it may ask for (`host` also needs [`Capability::HostNetwork`]).
    pub networks: Vec<NetworkMode>,
    /// Modes it may ask for (`direct` also needs [`Capability::DirectMode`]).
    pub modes: Vec<Mode>,
    /// Ceilings above the profile's own limits.
    #[serde(default)]
    pub max: MaxLimits,
    /// Capabilities granted explicitly.
    #[serde(default)]
    pub allow: Vec<Capability>,
}

impl Grants {
    /// What a key made without options gets: the built-in profiles, networks none,
    /// loopback-only and limited, modes sandbox and hardened, limits no larger than the
    /// profile's, no capability that reaches the host.
    pub fn default_key() -> Grants {
        Grants {
            profiles: Vec::new(),
            networks: vec![
                NetworkMode::None,
                NetworkMode::LoopbackOnly,
                NetworkMode::Limited,
            ],
            modes: vec![Mode::Sandbox, Mode::Hardened],
            max: MaxLimits::default(),
            allow: Vec::new(),
        }
    }

    /// The local user's: everything (it could run the same programs without phantom).
    pub fn local() -> Grants {
        Grants {
            profiles: Vec::new(),
            networks: NetworkMode::ALL.to_vec(),
            modes: Mode::ALL.to_vec(),
            max: MaxLimits::default(),
            allow: Capability::ALL.to_vec(),
        }
    }

    pub fn allows(&self, capability: Capability) -> bool {
        self.allow.contains(&capability)
    }

    /// Whether it may name built-in profile `name`.
    pub fn allows_profile(&self, name: &str) -> bool {
        self.profiles.is_empty() || self.profiles.iter().any(|p| p == name)
    }

    /// Whether it may ask for network `mode`.
    pub fn allows_network(&self, mode: NetworkMode) -> bool {
        self.networks.contains(&mode)
            && (mode != NetworkMode::Host || self.allows(Capability::HostNetwork))
    }

    /// Whether it may ask for isolation `mode`.
    pub fn allows_mode(&self, mode: Mode) -> bool {
        self.modes.contains(&mode) && (mode != Mode::Direct || self.allows(Capability::DirectMode))
    }

    /// One line for `phantom keys list` and refusals.
    pub fn summary(&self) -> String {
        let list = |v: Vec<String>| v.join(",");
        let mut parts = vec![
            format!(
                "profiles {}",
                if self.profiles.is_empty() {
                    "all".into()
                } else {
                    list(self.profiles.clone())
                }
            ),
            format!(
                "networks {}",
                list(self.networks.iter().map(|n| n.to_string()).collect())
            ),
            format!(
                "modes {}",
                list(self.modes.iter().map(|m| m.to_string()).collect())
            ),
        ];
        if !self.allow.is_empty() {
            parts.push(format!(
                "allow {}",
                list(self.allow.iter().map(|c| c.as_str().to_string()).collect())
            ));
        }
        parts.join("; ")
    }
}

/// Whom a request acts for and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Principal {
    pub owner: Owner,
    pub grants: Grants,
}

impl Principal {
    /// The local user with every grant (the CLI).
    pub fn local() -> Principal {
        Principal {
            owner: Owner::Local,
            grants: Grants::local(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_as_text() {
        for owner in [Owner::Local, Owner::Key("k1a2".into())] {
            let json = serde_json::to_string(&owner).unwrap();
            assert_eq!(serde_json::from_str::<Owner>(&json).unwrap(), owner);
        }
        assert!(serde_json::from_str::<Owner>("\"key:\"").is_err());
        assert!(serde_json::from_str::<Owner>("\"root\"").is_err());
    }

    #[test]
    fn a_default_key_reaches_nothing_of_the_host() {
        let g = Grants::default_key();
        assert!(!g.allows_network(NetworkMode::Host));
        assert!(!g.allows_mode(Mode::Direct));
        assert!(g.allows_network(NetworkMode::Limited));
        assert!(g.allows_profile("python-dev"));
        // Listing host alone is not enough: the capability is the explicit grant.
        let g = Grants {
            networks: NetworkMode::ALL.to_vec(),
            ..Grants::default_key()
        };
        assert!(!g.allows_network(NetworkMode::Host));
        assert!(Grants::local().allows_network(NetworkMode::Host));
    }
}
