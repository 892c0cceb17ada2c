//! `phantom keys add|list|revoke` and `phantom audit`: the HTTP API's keys and audit
//! log, in the state database.

use clap::{Args, Subcommand};
use phantom_api::access::{Capability, Grants, MaxLimits};
use phantom_api::choice::{Mode, NetworkMode};
use phantom_state::audit::Audit;
use phantom_state::keys::{KeyLimits, Keys};

use crate::{age, error_line, print_json};

/// Shown by `phantom keys --help`.
pub const EXAMPLES: &str = "Examples:
  phantom keys add grader-prod --rate 120 --burst 20 --max-concurrent 8
  phantom keys add agents --profiles python-dev,default --networks none,loopback-only
  phantom keys add ci --max-memory 2GiB --max-timeout 10m --allow images
  phantom keys add ops --allow host-network --allow host-workspace
  phantom keys list
  phantom keys revoke grader-prod

What a key may ask for (its grants): a key made without options gets every built-in
profile, networks none, loopback-only and limited, modes sandbox and hardened, and
limits no larger than the profile's own. Anything that reaches the host needs an
explicit --allow: host-network (network host), direct-mode (no namespaces),
host-workspace (a host directory as /workspace), policy-files (policy files on the
host, which may bind host paths), images (the store's images), any-limits (limits
above the profile's). A request beyond its key's grants is answered 403 with why.

Each key owns its sandboxes and snapshots: no other key (and not MCP over stdio)
lists, reads, runs in or destroys them.

The key is printed once, by `add`; only its hash is stored. Clients send it as
`X-API-Key: phk_...` or `Authorization: Bearer phk_...`. Keys live in the state
database (/var/lib/phantom/state.db for root; PHANTOM_STATE_DIR overrides).";

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key; prints it once.
    Add {
        /// A name to tell keys apart (e.g. who uses it).
        name: String,
        /// Requests per minute.
        #[arg(long, default_value_t = KeyLimits::default().rate_per_min)]
        rate: u32,
        /// Requests allowed at once above the rate.
        #[arg(long, default_value_t = KeyLimits::default().burst)]
        burst: u32,
        /// Sandboxes (runs and persistent ones) at once.
        #[arg(long, default_value_t = KeyLimits::default().max_concurrent)]
        max_concurrent: u32,
        #[command(flatten)]
        grants: Box<GrantArgs>,
        /// Make the key in E2B's shape (`e2b_` + 40 hex digits), for E2B's SDKs as
        /// `E2B_API_KEY` against `phantom-supervisor --e2b-bind`; the same kind of key
        /// otherwise (it works on /api/v2 and /mcp/v1/ too).
        #[arg(long)]
        e2b: bool,
        /// Print the record and the key as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id or name; it is refused from then on.
    Revoke {
        /// The key's id or name.
        key: String,
    },
}

/// What a key may ask for.
#[derive(Args, Debug)]
pub struct GrantArgs {
    /// Built-in profiles it may use (comma-separated; default: all).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    profiles: Vec<String>,
    /// Network modes it may ask for (default: none,loopback-only,limited; `host` also
    /// needs --allow host-network).
    #[arg(long, value_delimiter = ',', value_name = "MODES")]
    networks: Vec<NetworkMode>,
    /// Isolation modes it may ask for (default: sandbox,hardened; `direct` also needs
    /// --allow direct-mode).
    #[arg(long, value_delimiter = ',', value_name = "MODES")]
    modes: Vec<Mode>,
    /// The largest memory limit it may ask for (default: the profile's own).
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<String>,
    /// The most CPUs it may ask for (default: the profile's own).
    #[arg(long, value_name = "CPUS")]
    max_cpus: Option<String>,
    /// The most processes it may ask for (default: the profile's own).
    #[arg(long, value_name = "N")]
    max_pids: Option<u64>,
    /// The longest wall-clock limit it may ask for (default: the profile's own).
    #[arg(long, value_name = "DURATION")]
    max_timeout: Option<String>,
    /// The largest output cap it may ask for (default: the profile's own).
    #[arg(long, value_name = "SIZE")]
    max_output: Option<String>,
    /// A capability that reaches the host (repeatable): host-network, direct-mode,
    /// host-workspace, policy-files, images, any-limits.
    #[arg(long = "allow", value_name = "CAPABILITY")]
    allow: Vec<Capability>,
}

impl GrantArgs {
    fn grants(&self) -> Result<Grants, String> {
        use phantom_policy::units;
        let defaults = Grants::default_key();
        for p in &self.profiles {
            // config.yaml's profiles too: the supervisor reads the same file.
            if !crate::config_cmd::profile_names().contains(p) {
                return Err(format!(
                    "--profiles {p}: not a profile; use {}",
                    crate::config_cmd::profile_names().join(", ")
                ));
            }
        }
        if self.networks.contains(&NetworkMode::Host)
            && !self.allow.contains(&Capability::HostNetwork)
        {
            return Err("--networks host: also give --allow host-network (the host's network is an explicit grant)".into());
        }
        if self.modes.contains(&Mode::Direct) && !self.allow.contains(&Capability::DirectMode) {
            return Err("--modes direct: also give --allow direct-mode (no namespaces is an explicit grant)".into());
        }
        let mut networks = if self.networks.is_empty() {
            defaults.networks
        } else {
            self.networks.clone()
        };
        if self.allow.contains(&Capability::HostNetwork) && !networks.contains(&NetworkMode::Host) {
            networks.push(NetworkMode::Host);
        }
        let mut modes = if self.modes.is_empty() {
            defaults.modes
        } else {
            self.modes.clone()
        };
        if self.allow.contains(&Capability::DirectMode) && !modes.contains(&Mode::Direct) {
            modes.push(Mode::Direct);
        }
        let bytes = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|t| units::parse_bytes(t).map_err(|e| format!("{flag} {t}: {e}")))
                .transpose()
        };
        let mut allow = self.allow.clone();
        allow.sort();
        allow.dedup();
        Ok(Grants {
            profiles: self.profiles.clone(),
            networks,
            modes,
            max: MaxLimits {
                memory_bytes: bytes("--max-memory", &self.max_memory)?,
                cpu_millis: self
                    .max_cpus
                    .as_deref()
                    .map(|t| units::parse_cpus(t).map_err(|e| format!("--max-cpus {t}: {e}")))
                    .transpose()?,
                pids: self.max_pids,
                timeout_ms: self
                    .max_timeout
                    .as_deref()
                    .map(|t| {
                        units::parse_duration_ms(t).map_err(|e| format!("--max-timeout {t}: {e}"))
                    })
                    .transpose()?,
                output_bytes: bytes("--max-output", &self.max_output)?,
            },
            allow,
        })
    }
}

fn fail(e: phantom_state::StateError) -> i32 {
    error_line(&e);
    if e.exit_code() == 2 {
        2
    } else {
        1
    }
}

pub fn keys(cmd: KeysCommand) -> i32 {
    let keys = match Keys::open_default() {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    match cmd {
        KeysCommand::Add {
            name,
            rate,
            burst,
            max_concurrent,
            grants,
            e2b,
            json,
        } => {
            let limits = KeyLimits {
                rate_per_min: rate,
                burst,
                max_concurrent,
            };
            let grants = match grants.grants() {
                Ok(g) => g,
                Err(msg) => {
                    error_line(msg);
                    return 2;
                }
            };
            let shape = if e2b {
                phantom_state::keys::KeyShape::E2b
            } else {
                phantom_state::keys::KeyShape::Phantom
            };
            match keys.add_shaped(&name, limits, grants, shape) {
                Ok((record, secret)) => {
                    let _ = Audit::open_default().and_then(|a| {
                        a.record(None, "keys.add", Some(&record.id), "ok", Some(&name))
                    });
                    if json {
                        return print_json(&serde_json::json!({ "key": secret, "record": record }));
                    }
                    println!("{secret}");
                    eprintln!(
                        "key {} ({name}): {rate}/min, burst {burst}, {max_concurrent} at once; {}. It is shown only now: store it.",
                        record.id,
                        record.grants.summary()
                    );
                    0
                }
                Err(e) => fail(e),
            }
        }
        KeysCommand::List { json } => match keys.list() {
            Ok(list) if json => print_json(&list),
            Ok(list) => {
                if list.is_empty() {
                    println!("no API keys (make one with `phantom keys add NAME`)");
                    return 0;
                }
                println!(
                    "{:<12}  {:<20}  {:<8}  {:>8}  {:>5}  {:>5}  {:<16}  GRANTS",
                    "ID", "NAME", "STATUS", "RATE/MIN", "BURST", "CONC", "CREATED"
                );
                for k in list {
                    println!(
                        "{:<12}  {:<20}  {:<8}  {:>8}  {:>5}  {:>5}  {:<16}  {}",
                        k.id,
                        k.name,
                        if k.revoked.is_some() {
                            "revoked"
                        } else {
                            "active"
                        },
                        k.rate_per_min,
                        k.burst,
                        k.max_concurrent,
                        age(k.created),
                        k.grants.summary()
                    );
                }
                0
            }
            Err(e) => fail(e),
        },
        KeysCommand::Revoke { key } => match keys.revoke(&key) {
            Ok(record) => {
                let _ = Audit::open_default().and_then(|a| {
                    a.record(
                        None,
                        "keys.revoke",
                        Some(&record.id),
                        "ok",
                        Some(&record.name),
                    )
                });
                println!("revoked {} ({})", record.id, record.name);
                0
            }
            Err(e) => fail(e),
        },
    }
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  phantom audit                  # the last 100 records
  phantom audit --since 1h
  phantom audit --since 2026-11-21T18:00:00Z --json")]
pub struct AuditArgs {
    /// Only records this recent (e.g. 1h, 30m) or after this UTC time
    /// (YYYY-MM-DDTHH:MM:SSZ).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

/// Unix milliseconds for `--since`: a duration back from now, or an RFC 3339 UTC time.
fn since_ms(text: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(ms) = phantom_policy::units::parse_duration_ms(text) {
        return Ok(now_ms.saturating_sub(ms));
    }
    let bad = || {
        format!(
            "--since {text}: expected a duration (1h, 30m) or a UTC time like 2026-11-21T18:00:00Z"
        )
    };
    let t = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let h: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), h.as_slice()) else {
        return Err(bad());
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || *ss > 60 {
        return Err(bad());
    }
    // Days from civil date (H. Hinnant), the inverse of the stamp in sandbox snapshots.
    let (y, m) = if *m <= 2 { (y - 1, m + 9) } else { (*y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).map(|s| s * 1000).map_err(|_| bad())
}

pub fn audit(args: AuditArgs) -> i32 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let since = match args
        .since
        .as_deref()
        .map(|s| since_ms(s, now_ms))
        .transpose()
    {
        Ok(s) => s.unwrap_or(0),
        Err(e) => {
            error_line(e);
            return 2;
        }
    };
    let entries = match Audit::open_default().and_then(|a| a.since(since, args.limit)) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    // Records hold what remote callers sent (names, paths): printed escaped, so that
    // they can neither drive the terminal nor forge a line.
    if args.json {
        let json = serde_json::to_string_pretty(&entries).expect("audit records serialize");
        println!("{}", json_safe(&json));
        return 0;
    }
    if entries.is_empty() {
        println!("no audit records");
    }
    for e in entries {
        fn shown(s: Option<&str>) -> std::borrow::Cow<'_, str> {
            s.map_or("-".into(), escaped)
        }
        println!(
            "{:>6}  {}  key={}  {}  {}  {}{}",
            e.seq,
            age(e.at_ms / 1000),
            shown(e.key_id.as_deref()),
            escaped(&e.action),
            shown(e.target.as_deref()),
            escaped(&e.result),
            e.detail
                .map(|d| format!("  ({})", escaped(&d)))
                .unwrap_or_default()
        );
    }
    0
}

/// Characters a terminal acts on or draws invisibly, beyond the C0/C1 controls: line
/// and paragraph separators, zero-width and bidirectional controls, BOM, annotations.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// `text` for a terminal: `\` doubled, `\n` `\r` `\t` as such, other control
/// characters (C0, DEL, C1: ESC, CSI...) and [`invisible`] ones as `\u{..}`.
fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c == '\\' || c.is_control() || invisible(c))
    {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || invisible(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

/// JSON text with what serde_json leaves raw inside strings — DEL, C1 controls and
/// [`invisible`] characters — written as `\uXXXX` (the same strings to a parser;
/// outside strings JSON has only ASCII, so every such character is in one).
fn json_safe(json: &str) -> std::borrow::Cow<'_, str> {
    if !json
        .chars()
        .any(|c| c.is_control() && c != '\n' || invisible(c))
    {
        return json.into();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if (c.is_control() && c != '\n') || invisible(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_text_is_escaped_for_the_terminal_and_json_stays_the_same_strings() {
        let forged = "box\u{1b}[2J\n     7  1s ago  key=-  run  -  ok\u{9b}31m\u{202e}\\x";
        let shown = escaped(forged);
        assert_eq!(
            shown,
            "box\\u{1b}[2J\\n     7  1s ago  key=-  run  -  ok\\u{9b}31m\\u{202e}\\\\x"
        );
        assert!(!shown.chars().any(|c| c.is_control() || invisible(c)));
        assert_eq!(escaped("plain name"), "plain name");
        let json = serde_json::to_string_pretty(&serde_json::json!({ "target": forged })).unwrap();
        let safe = json_safe(&json);
        assert!(
            !safe
                .chars()
                .any(|c| (c.is_control() && c != '\n') || invisible(c)),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["target"], forged);
    }

    #[test]
    fn since_takes_durations_and_utc_times() {
        assert_eq!(since_ms("1h", 10_000_000).unwrap(), 10_000_000 - 3_600_000);
        // `date -u -d 2026-11-21T18:00:00Z +%s` = 1795284000
        assert_eq!(
            since_ms("2026-11-21T18:00:00Z", 0).unwrap(),
            1_795_284_000_000
        );
        assert_eq!(
            since_ms("2000-02-29T00:00:00Z", 0).unwrap(),
            951_782_400_000
        );
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-21 18:00",
            "2026-11-21T18:00:00",
        ] {
            assert!(since_ms(bad, 0).is_err(), "{bad}");
        }
    }
}
