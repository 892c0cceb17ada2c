//! `phantom config show|path`, and the settings every subcommand takes from the
//! environment and config.yaml (see `phantom_policy::config`): the default profile
//! (`AISBX_DEFAULT_PROFILE`, `default_profile:`), debug (`AISBX_DEBUG`, `debug:`) and
//! the profiles config.yaml defines, which are named like built-ins.

use std::sync::OnceLock;

use clap::Subcommand;
use phantom_policy::config::{Origin, Sourced};
use phantom_policy::{Profile, Settings};

use crate::error_line;

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// The effective configuration: the config file (or none), the profiles it defines,
    /// and each setting's value and where it came from (env var, config file:line,
    /// default). Secrets are never printed.
    Show {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The config file in effect, or `none`, on one line.
    Path,
}

pub const AFTER_HELP: &str =
    "The config file is the first of: $AISBX_CONFIG_PATH (or $PHANTOM_CONFIG_PATH),
$PHANTOM_CONFIG, $XDG_CONFIG_HOME/phantom/config.yaml, ~/.config/phantom/config.yaml.
A file named by a variable must exist; the XDG one may be missing.

Variables (AISBX_X and PHANTOM_X are the same setting; both set to different values
is an error): AISBX_DEFAULT_PROFILE (the profile without --profile), AISBX_DEBUG=1
(what --verbose does; the supervisor's debug log), AISBX_API_PORT (phantom-supervisor
serves HTTP on 127.0.0.1:PORT without --bind), AISBX_API_KEY (a key the supervisor's
HTTP API accepts, as a line of --api-keys), PHANTOM_PERFORMANCE_MODE and
PHANTOM_ZYGOTE_POOL_SIZE (phantom-mcp --mode, --pool-size). A flag wins over a
variable, a variable over the config file.

Example config.yaml:
  default_profile: my-python
  profiles:
    - name: my-python
      extends: python-dev
      memory: 512MB
      network: {enabled: false}
      mounts: [{source: ./data, target: /data, mode: ro}]
      environment: {FOO: bar}";

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Reads the environment and config.yaml once. On a mistake, prints it (one line per
/// problem) and returns the exit code.
pub(crate) fn load() -> Result<&'static Settings, i32> {
    if let Some(s) = SETTINGS.get() {
        return Ok(s);
    }
    match Settings::from_env(&phantom_policy::config::process_env) {
        Ok(s) => Ok(SETTINGS.get_or_init(|| s)),
        Err(e) => {
            e.to_string().lines().for_each(error_line);
            Err(2)
        }
    }
}

/// The settings [`load`] read; empty ones when it has not succeeded.
pub(crate) fn settings() -> Option<&'static Settings> {
    load().ok()
}

/// The profile a run or create uses when it names none: AISBX_DEFAULT_PROFILE, else
/// config.yaml's `default_profile:`, else the request's default.
pub(crate) fn default_profile() -> Option<String> {
    settings()?
        .default_profile
        .as_ref()
        .map(|d| d.value.clone())
}

/// AISBX_DEBUG (or config.yaml's `debug: true`): what --verbose does.
pub(crate) fn debug() -> bool {
    settings().is_some_and(|s| s.debug.value)
}

/// Every profile name: the built-ins, then config.yaml's.
pub(crate) fn profile_names() -> Vec<String> {
    let mut names: Vec<String> = phantom_policy::builtin_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    if let Some(config) = settings().and_then(|s| s.config.as_ref()) {
        names.extend(config.names().into_iter().map(str::to_string));
    }
    names
}

/// A profile by name: a built-in, else config.yaml's.
pub(crate) fn load_profile(name: &str) -> Result<Profile, phantom_policy::PolicyError> {
    phantom_policy::load_named(name, settings().and_then(|s| s.config.as_ref()))
}

/// config.yaml's entry for `name`, as written, when it is one of its profiles.
pub(crate) fn config_source(name: &str) -> Option<String> {
    let config = settings()?.config.as_ref()?;
    let p = config.profile(name)?;
    Some(format!(
        "# {} (config.yaml profile, line {})\n{}",
        config.file.display(),
        p.at.line,
        p.text
    ))
}

pub fn config(cmd: ConfigCommand) -> i32 {
    let settings = match load() {
        Ok(s) => s,
        Err(code) => return code,
    };
    match cmd {
        ConfigCommand::Path => {
            match &settings.config {
                Some(c) => println!("{}", c.file.display()),
                None => println!("none"),
            }
            0
        }
        ConfigCommand::Show { json } => show(settings, json),
    }
}

/// A row of `config show`: name, value, where it came from.
struct Row {
    name: &'static str,
    value: Option<String>,
    origin: String,
}

fn row<T: ToString>(name: &'static str, s: Option<&Sourced<T>>) -> Row {
    match s {
        Some(s) => Row {
            name,
            value: Some(s.value.to_string()),
            origin: s.origin.to_string(),
        },
        None => Row {
            name,
            value: None,
            origin: Origin::Default.to_string(),
        },
    }
}

/// A variable phantom-mcp reads through clap (`env = ...`): its value and origin.
fn mcp_row(name: &'static str, var: &str, default: &str) -> Row {
    match std::env::var(var).ok().filter(|v| !v.is_empty()) {
        Some(v) => Row {
            name,
            value: Some(v),
            origin: Origin::Variable(var.to_string()).to_string(),
        },
        None => Row {
            name,
            value: Some(default.to_string()),
            origin: Origin::Default.to_string(),
        },
    }
}

fn show(settings: &Settings, json: bool) -> i32 {
    let looked = phantom_policy::config::locate(&phantom_policy::config::process_env)
        .ok()
        .flatten();
    let mut rows = vec![
        row("default_profile", settings.default_profile.as_ref()),
        row("debug", Some(&settings.debug)),
        row("api_port", settings.api_port.as_ref()),
        Row {
            name: "api_key",
            // Never the key itself.
            value: settings.api_key.as_ref().map(|_| "set".to_string()),
            origin: settings
                .api_key
                .as_ref()
                .map_or(Origin::Default.to_string(), |k| k.origin.to_string()),
        },
        mcp_row("performance_mode", "PHANTOM_PERFORMANCE_MODE", "zygote"),
        mcp_row("zygote_pool_size", "PHANTOM_ZYGOTE_POOL_SIZE", "4"),
    ];
    if settings.default_profile.is_none() {
        rows[0].value = Some(format!(
            "{} (per language)",
            phantom_policy::DEFAULT_PROFILE
        ));
    }
    let profiles: Vec<_> = settings
        .config
        .iter()
        .flat_map(|c| &c.profiles)
        .map(|p| {
            let plan = phantom_policy::compile(&p.profile, &Default::default());
            (p, plan)
        })
        .collect();
    if json {
        let value = serde_json::json!({
            "config_file": settings.config.as_ref().map(|c| c.file.display().to_string()),
            "found_by": settings.config.as_ref().map(|c| c.found_by.clone()),
            "looked_at": looked.as_ref().map(|(p, v, _)| serde_json::json!({"path": p.display().to_string(), "from": v})),
            "profiles": profiles.iter().map(|(p, plan)| {
                let mut o = serde_json::json!({
                    "name": p.name,
                    "at": p.at.to_string(),
                    "extends": p.profile.extends,
                    "env": p.profile.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                    "mounts": p.profile.filesystem.binds.iter().map(|b| serde_json::json!({
                        "source": b.source, "target": b.target, "access": b.access,
                    })).collect::<Vec<_>>(),
                });
                match plan {
                    Ok(plan) => {
                        o["mode"] = plan.mode.as_str().into();
                        o["network"] = plan.network.as_str().into();
                        o["limits"] = serde_json::to_value(&plan.limits).expect("serializes");
                    }
                    Err(e) => o["error"] = e.to_string().into(),
                }
                o
            }).collect::<Vec<_>>(),
            "settings": rows.iter().map(|r| (r.name.to_string(), serde_json::json!({
                "value": r.value, "source": r.origin,
            }))).collect::<serde_json::Map<_, _>>(),
        });
        return crate::print_json(&value);
    }
    match (&settings.config, &looked) {
        (Some(c), _) => println!("config file: {} (from {})", c.file.display(), c.found_by),
        (None, Some((p, v, _))) => println!(
            "config file: none (no readable file at {}; from {v})",
            p.display()
        ),
        (None, None) => println!("config file: none (neither XDG_CONFIG_HOME nor HOME is set)"),
    }
    if !profiles.is_empty() {
        println!("profiles:");
        for (p, plan) in &profiles {
            let what = match plan {
                Ok(plan) => format!(
                    "mode {}, network {}, memory {}MB, cpus {}, {} mounts, env {}",
                    plan.mode.as_str(),
                    plan.network.as_str(),
                    plan.limits.memory_bytes >> 20,
                    f64::from(plan.limits.cpu_millis) / 1000.0,
                    p.profile.filesystem.binds.len(),
                    if p.profile.env.is_empty() {
                        "-".to_string()
                    } else {
                        p.profile
                            .env
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                ),
                Err(e) => format!("does not compile here: {e}"),
            };
            println!("  {:<16} {}  ({})", p.name, what, p.at);
        }
    }
    println!("settings:");
    for r in &rows {
        println!(
            "  {:<17} {:<22} {}",
            r.name,
            r.value.as_deref().unwrap_or("-"),
            r.origin
        );
    }
    0
}
