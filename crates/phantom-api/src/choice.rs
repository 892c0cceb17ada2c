//! The closed sets of values the model uses instead of strings: isolation [`Mode`],
//! [`NetworkMode`], how a run started ([`StartKind`]), a persistent sandbox's
//! [`SandboxStatus`], the egress proxy's [`NetworkDecision`] and [`ProxyProtocol`],
//! [`FileKind`], and the [`Language`] of `run_code`.
//!
//! Each is written in JSON, YAML and on the command line by one canonical name
//! (`loopback-only`, `prewarmed`); parsing also takes a few aliases and any case, and a
//! wrong value is an [`UnknownChoice`] that lists the right ones.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A value that is not one of a choice's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChoice {
    /// What the value is (`mode`, `network mode`, `language`).
    pub what: &'static str,
    pub value: String,
    /// The canonical names, in order.
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = match self.expected {
            [] => String::new(),
            [one] => one.to_string(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        };
        write!(f, "unknown {} `{}`: use {list}", self.what, self.value)
    }
}

impl std::error::Error for UnknownChoice {}

/// Defines a choice enum: its variants with their canonical names and aliases, and
/// `as_str`, `ALL`, `NAMES`, `Display`, `FromStr` and a case-insensitive `Deserialize`
/// that accepts the aliases. `Serialize` and `JsonSchema` are derived from the
/// canonical names.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $canon:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $canon)] $variant ),+
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The canonical names, in the order of `ALL`.
            pub const NAMES: &'static [&'static str] = &[$($canon),+];

            /// The canonical name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $canon),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownChoice;
            fn from_str(s: &str) -> Result<Self, UnknownChoice> {
                let lower = s.trim().to_ascii_lowercase();
                $( if lower == $canon $(|| lower == $alias)* { return Ok($name::$variant); } )+
                Err(UnknownChoice { what: $what, value: s.to_string(), expected: Self::NAMES })
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

choice! {
    /// A signal a caller may send to a process in its sandbox (`KillProcess`).
    ProcessSignal, "signal" {
        /// Ask it to end (the default).
        Term = "term" | "sigterm" | "15",
        /// End it now; it cannot be caught.
        Kill = "kill" | "sigkill" | "9",
        /// As Ctrl-C does.
        Int = "int" | "sigint" | "2",
        Hup = "hup" | "sighup" | "1",
        Quit = "quit" | "sigquit" | "3",
        Usr1 = "usr1" | "sigusr1" | "10",
        Usr2 = "usr2" | "sigusr2" | "12",
        /// Pause it (SIGSTOP).
        Stop = "stop" | "sigstop" | "19",
        /// Resume a paused one (SIGCONT).
        Cont = "cont" | "sigcont" | "18",
    }
}

impl ProcessSignal {
    /// The signal's number on Linux.
    pub fn number(self) -> i32 {
        match self {
            ProcessSignal::Term => 15,
            ProcessSignal::Kill => 9,
            ProcessSignal::Int => 2,
            ProcessSignal::Hup => 1,
            ProcessSignal::Quit => 3,
            ProcessSignal::Usr1 => 10,
            ProcessSignal::Usr2 => 12,
            ProcessSignal::Stop => 19,
            ProcessSignal::Cont => 18,
        }
    }
}

choice! {
    /// What a process in a sandbox is doing (the state letter of /proc/PID/stat).
    ProcessState, "process state" {
        /// Running or runnable (R).
        Running = "running",
        /// Waiting for something (S, or I for an idle kernel wait).
        Sleeping = "sleeping",
        /// In an uninterruptible wait, mostly disk I/O (D).
        DiskSleep = "disk-sleep",
        /// Stopped by a signal or traced (T, t).
        Stopped = "stopped",
        /// Exited, not yet reaped (Z).
        Zombie = "zombie",
        /// Anything else the kernel reports.
        Other = "other",
    }
}

choice! {
    /// How much a sandbox isolates.
    Mode, "mode" {
        /// No namespaces: only resource limits and the timeout (for debugging).
        Direct = "direct",
        /// The default: every namespace, a Docker-like seccomp denylist, Landlock.
        Sandbox = "sandbox",
        /// Allowlist seccomp, no network at all, read-only everything but the workspace.
        Hardened = "hardened",
        /// WebAssembly under wasmtime.
        Wasm = "wasm",
    }
}

choice! {
    /// What network a sandbox sees.
    NetworkMode, "network mode" {
        /// A network namespace with no interface up.
        None = "none",
        /// A network namespace with only `lo`, up.
        LoopbackOnly = "loopback-only" | "loopback",
        /// Only `lo`, and phantom's egress proxy at 127.0.0.1:3128 inside, which connects
        /// only where the profile's `network.allow` says.
        Limited = "limited",
        /// The host's network (no network namespace); needs an explicit grant.
        Host = "host",
    }
}

choice! {
    /// How the sandbox of a run came to be.
    StartKind, "start kind" {
        /// A sandbox built for this run.
        Cold = "cold",
        /// A pre-built sandbox of a warm pool.
        Warm = "warm",
        /// A pooled sandbox whose interpreter was already started.
        Prewarmed = "prewarmed",
        /// Forked from a zygote of a warm pool into fresh namespaces.
        Forked = "forked",
        /// A command run in a persistent sandbox.
        Exec = "exec",
    }
}

choice! {
    /// Where a persistent sandbox is in its life.
    SandboxStatus, "sandbox status" {
        /// Being created; commands are refused until it runs.
        Starting = "starting",
        /// Its init is alive and takes commands.
        Running = "running",
        /// Its init is gone (killed, expired, idle); destroy cleans up.
        Dead = "dead",
        /// Being destroyed.
        Destroying = "destroying",
        /// Gone (only in what a destroy returns).
        Destroyed = "destroyed",
    }
}

choice! {
    /// What the egress proxy did with one connection.
    NetworkDecision, "network decision" {
        /// Connected.
        Allowed = "allowed",
        /// Refused by the policy (the rule is named).
        Refused = "refused",
        /// Allowed, but could not be made (name not found, peer unreachable).
        Failed = "failed",
    }
}

choice! {
    /// How a connection reached the egress proxy.
    ProxyProtocol, "proxy protocol" {
        /// HTTP CONNECT.
        Connect = "connect",
        /// A plain HTTP request with an absolute URI.
        Http = "http",
        /// SOCKS5.
        Socks5 = "socks5",
        /// Refused before a request was read.
        Tcp = "tcp",
    }
}

choice! {
    /// What a directory entry is.
    FileKind, "file kind" {
        File = "file",
        Dir = "dir" | "directory",
        Symlink = "symlink",
        /// A FIFO, socket or device node.
        Other = "other",
    }
}

choice! {
    /// The languages `run_code` (and a run given `language` + `code`) runs, each with
    /// one interpreter, one flag and one default profile: see [`Language::argv`] and
    /// [`Language::default_profile`]. This is the only place that rule is written.
    Language, "language" {
        /// `python3 -c CODE` on the `python-dev` profile.
        Python = "python" | "python3" | "py",
        /// `node -e CODE` on the `node-dev` profile.
        Node = "node" | "nodejs" | "javascript" | "js",
        /// `bash -c CODE` on the `default` profile.
        Bash = "bash",
        /// `sh -c CODE` on the `default` profile.
        Sh = "sh" | "shell",
    }
}

impl Language {
    /// The interpreter and the flag that makes it run its next argument as code.
    pub fn interpreter(self) -> (&'static str, &'static str) {
        match self {
            // `python3 -c CODE` is what a pre-started interpreter takes over.
            Language::Python => ("python3", "-c"),
            Language::Node => ("node", "-e"),
            Language::Bash => ("bash", "-c"),
            Language::Sh => ("sh", "-c"),
        }
    }

    /// The command line that runs `code` (passed as one argument, never through a
    /// shell of ours).
    pub fn argv(self, code: &str) -> Vec<String> {
        let (program, flag) = self.interpreter();
        vec![program.into(), flag.into(), code.into()]
    }

    /// The built-in profile a run in this language gets when it names none.
    pub fn default_profile(self) -> &'static str {
        match self {
            Language::Python => "python-dev",
            Language::Node => "node-dev",
            Language::Bash | Language::Sh => crate::DEFAULT_PROFILE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_their_aliases_in_any_case_and_print_their_canonical_name() {
        assert_eq!(
            "Loopback".parse::<NetworkMode>().unwrap(),
            NetworkMode::LoopbackOnly
        );
        assert_eq!("PY".parse::<Language>().unwrap(), Language::Python);
        assert_eq!(NetworkMode::LoopbackOnly.to_string(), "loopback-only");
        let json = serde_json::to_string(&StartKind::Prewarmed).unwrap();
        assert_eq!(json, "\"prewarmed\"");
        let back: NetworkMode = serde_json::from_str("\"loopback-only\"").unwrap();
        assert_eq!(back, NetworkMode::LoopbackOnly);
    }

    #[test]
    fn an_unknown_choice_lists_the_right_ones() {
        let e = "fast".parse::<Mode>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown mode `fast`: use direct, sandbox, hardened or wasm"
        );
        let e = serde_json::from_str::<Language>("\"cobol\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown language `cobol`: use python, node, bash or sh"),
            "{e}"
        );
    }

    #[test]
    fn each_language_has_one_interpreter_and_one_default_profile() {
        assert_eq!(
            Language::Python.argv("print(1)"),
            ["python3", "-c", "print(1)"]
        );
        assert_eq!(Language::Node.argv("1"), ["node", "-e", "1"]);
        assert_eq!(Language::Python.default_profile(), "python-dev");
        assert_eq!(Language::Node.default_profile(), "node-dev");
        assert_eq!(Language::Sh.default_profile(), "default");
    }

    #[test]
    fn the_schema_lists_canonical_names_only() {
        let schema = serde_json::to_value(schemars::schema_for!(NetworkMode)).unwrap();
        let text = schema.to_string();
        assert!(
            text.contains("loopback-only") && !text.contains("\"loopback\""),
            "{text}"
        );
    }
}
