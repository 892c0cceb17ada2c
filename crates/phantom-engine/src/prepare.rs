//! From a request to a compiled plan, before any process exists: the policy is loaded
//! and compiled with the request's limits (cached per built-in profile and limits),
//! the request is checked against the principal's grants, an image is found in the
//! store and its config applied, and the payload's command, environment and working
//! directory are resolved. The spawn path only replays what this decided.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use phantom_api::access::{Capability, Grants, Principal};
use phantom_api::choice;
use phantom_api::engine::{Failure, FailureKind};
use phantom_api::request::{Field, FieldError, Limits, Program, Quantity};
use phantom_policy::{units, Mode, NetworkMode, Overrides, Plan};

use crate::channel::RunSpec;
use crate::image_run::ImageRun;
use crate::init::{self, PayloadContext};
use crate::spawn::payload_env;
use crate::EngineError;

/// Where a request's policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Policy {
    /// A profile by name: a built-in, else one of the engine's config.yaml.
    Builtin(String),
    /// A policy file on this host (absolute).
    File(PathBuf),
}

impl Policy {
    /// From a request's `profile` and `policy_file`; `default`: the profile when it
    /// names neither (the language's, or `default`).
    pub(crate) fn of(
        profile: Option<&str>,
        policy_file: Option<&str>,
        default: &str,
    ) -> Result<Policy, FieldError> {
        match (profile, policy_file) {
            (Some(_), Some(_)) => Err(FieldError::new(
                Field::PolicyFile,
                "give a profile or a policy file, not both",
            )),
            (_, Some(file)) if !file.starts_with('/') => Err(FieldError::with_value(
                Field::PolicyFile,
                file,
                "must be an absolute path on the engine's host",
            )),
            (_, Some(file)) => Ok(Policy::File(PathBuf::from(file))),
            (Some(name), None) => Ok(Policy::Builtin(name.to_string())),
            (None, None) => Ok(Policy::Builtin(default.to_string())),
        }
    }

    pub(crate) fn builtin(&self) -> Option<&str> {
        match self {
            Policy::Builtin(name) => Some(name),
            Policy::File(_) => None,
        }
    }
}

/// A compiled plan and what goes with it, as the cache keeps it.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub plan: Plan,
    /// The plan with no limits of the request (the profile's own): what grants are
    /// compared with.
    pub base_limits: phantom_policy::Limits,
    /// What a sandbox is built from: the plan without its per-run limits. A pooled
    /// sandbox serves a run whose key is its own.
    pub build_key: String,
}

/// Compiled plans of named profiles, by profile and limits (a policy file is read
/// again each time: it may change).
#[derive(Default)]
pub(crate) struct PlanCache {
    plans: HashMap<(Policy, String), Arc<Compiled>>,
    /// config.yaml (found through the engine's environment, as its front end found it):
    /// its profiles are named like built-ins (which they may not shadow). Read at the
    /// first name that is not a built-in's, then kept: a run of a built-in profile
    /// never reads it. `None` until then.
    config: Option<Option<Arc<phantom_policy::Config>>>,
}

/// Entries kept before the cache starts over.
const CACHE_MAX: usize = 256;

impl PlanCache {
    /// Compile every built-in profile with no overrides (a run's plan when it asks for
    /// no limits of its own) and keep the plans (`--profile-compilation aot`). Returns
    /// how many were compiled; a profile that does not compile on this host is left
    /// to fail at its run, as it would have.
    pub(crate) fn prefill(&mut self) -> usize {
        let mut names: Vec<String> = phantom_policy::builtin_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        if let Ok(Some(config)) = self.config() {
            names.extend(config.names().into_iter().map(str::to_string));
        }
        names
            .into_iter()
            .filter(|name| {
                self.get(&Policy::Builtin(name.clone()), &Overrides::default())
                    .is_ok()
            })
            .count()
    }

    /// A cache that knows `config`'s profiles (and reads no file for them).
    #[cfg(test)]
    pub(crate) fn with_config(config: Option<phantom_policy::Config>) -> PlanCache {
        PlanCache {
            plans: HashMap::new(),
            config: Some(config.map(Arc::new)),
        }
    }

    /// config.yaml, read once (AISBX_CONFIG_PATH, PHANTOM_CONFIG, else XDG).
    fn config(&mut self) -> Result<Option<Arc<phantom_policy::Config>>, EngineError> {
        if let Some(config) = &self.config {
            return Ok(config.clone());
        }
        let config = phantom_policy::config::load_from_env(&phantom_policy::config::process_env)?
            .map(Arc::new);
        self.config = Some(config.clone());
        Ok(config)
    }

    /// Whether `name` is a profile of the config (not a built-in).
    pub(crate) fn is_config_profile(&mut self, name: &str) -> Result<bool, EngineError> {
        if phantom_policy::builtin_source(name).is_some() {
            return Ok(false);
        }
        Ok(self.config()?.is_some_and(|c| c.profile(name).is_some()))
    }

    /// The plan for `policy` with `overrides`.
    pub(crate) fn get(
        &mut self,
        policy: &Policy,
        overrides: &Overrides,
    ) -> Result<Arc<Compiled>, EngineError> {
        let key = (policy.clone(), format!("{overrides:?}"));
        if let Some(found) = self.plans.get(&key) {
            return Ok(found.clone());
        }
        let profile = match policy {
            Policy::Builtin(name) if phantom_policy::builtin_source(name).is_some() => {
                phantom_policy::load_builtin(name)?
            }
            Policy::Builtin(name) => phantom_policy::load_named(name, self.config()?.as_deref())?,
            Policy::File(path) => phantom_policy::load_file(path)?,
        };
        let plan = phantom_policy::compile(&profile, overrides)?;
        let base = Overrides {
            mode: overrides.mode,
            network: overrides.network,
            image: overrides.image.clone(),
            ..Overrides::default()
        };
        let base_limits = if base == *overrides {
            plan.limits.clone()
        } else {
            phantom_policy::compile(&profile, &base)?.limits
        };
        let compiled = Arc::new(Compiled {
            build_key: build_key(&plan),
            base_limits,
            plan,
        });
        // A policy file's own pooling keys have no effect: said once per compile.
        if matches!(policy, Policy::Builtin(_)) {
            if self.plans.len() >= CACHE_MAX {
                self.plans.clear();
            }
            self.plans.insert(key, compiled.clone());
        }
        Ok(compiled)
    }
}

/// Fingerprint of what a sandbox is built from: the plan without the limits that are
/// set per run (memory, CPU, processes, wall time, output cap).
pub(crate) fn build_key(plan: &Plan) -> String {
    let mut plan = plan.clone();
    plan.limits.memory_bytes = 0;
    plan.limits.cpu_millis = 0;
    plan.limits.pids = 0;
    plan.limits.wall_timeout_ms = 0;
    plan.limits.output_limit_bytes = 0;
    plan.warnings.clear();
    blake3::hash(format!("{plan:?}").as_bytes()).to_hex()[..32].to_string()
}

pub(crate) fn policy_mode(m: choice::Mode) -> Mode {
    match m {
        choice::Mode::Direct => Mode::Direct,
        choice::Mode::Sandbox => Mode::Sandbox,
        choice::Mode::Hardened => Mode::Hardened,
        choice::Mode::Wasm => Mode::Wasm,
    }
}

pub(crate) fn api_mode(m: Mode) -> choice::Mode {
    match m {
        Mode::Direct => choice::Mode::Direct,
        Mode::Sandbox => choice::Mode::Sandbox,
        Mode::Hardened => choice::Mode::Hardened,
        Mode::Wasm => choice::Mode::Wasm,
    }
}

pub(crate) fn policy_network(n: choice::NetworkMode) -> NetworkMode {
    match n {
        choice::NetworkMode::None => NetworkMode::None,
        choice::NetworkMode::LoopbackOnly => NetworkMode::LoopbackOnly,
        choice::NetworkMode::Limited => NetworkMode::Limited,
        choice::NetworkMode::Host => NetworkMode::Host,
    }
}

pub(crate) fn api_network(n: NetworkMode) -> choice::NetworkMode {
    match n {
        NetworkMode::None => choice::NetworkMode::None,
        NetworkMode::LoopbackOnly => choice::NetworkMode::LoopbackOnly,
        NetworkMode::Limited => choice::NetworkMode::Limited,
        NetworkMode::Host => choice::NetworkMode::Host,
    }
}

fn quantity<T>(
    field: Field,
    q: &Option<Quantity>,
    parse: fn(&str) -> Result<T, units::UnitError>,
) -> Result<Option<T>, FieldError> {
    q.as_ref()
        .map(|q| {
            parse(q.as_str()).map_err(|e| FieldError::with_value(field, q.as_str(), e.to_string()))
        })
        .transpose()
}

/// A request's limits as the policy compiler takes them, and its output cap.
pub(crate) fn overrides(
    limits: &Limits,
    image: Option<&str>,
) -> Result<(Overrides, Option<u64>), FieldError> {
    let pids = match limits.pids {
        Some(0) => {
            return Err(FieldError::with_value(
                Field::Pids,
                "0",
                "a sandbox needs at least 1 process",
            ))
        }
        p => p,
    };
    let output = quantity(Field::MaxOutput, &limits.max_output, units::parse_bytes)?;
    if output == Some(0) {
        return Err(FieldError::with_value(
            Field::MaxOutput,
            "0",
            "must be more than 0 bytes",
        ));
    }
    let timeout = quantity(Field::Timeout, &limits.timeout, units::parse_duration_ms)?;
    if timeout == Some(0) {
        return Err(FieldError::with_value(
            Field::Timeout,
            limits.timeout.as_ref().map(|q| q.as_str()).unwrap_or("0"),
            "must be more than 0",
        ));
    }
    Ok((
        Overrides {
            mode: limits.mode.map(policy_mode),
            memory_bytes: quantity(Field::Memory, &limits.memory, units::parse_bytes)?,
            cpu_millis: quantity(Field::Cpus, &limits.cpus, units::parse_cpus)?,
            pids,
            wall_timeout_ms: timeout,
            network: limits.network.map(policy_network),
            image: image.map(str::to_string),
            egress: egress(limits)?,
        },
        output,
    ))
}

/// `allow_hosts` / `deny_hosts` as egress rules (each entry checked like a profile's
/// `network.allow`).
fn egress(limits: &Limits) -> Result<Option<phantom_policy::EgressOverride>, FieldError> {
    if limits.allow_hosts.is_empty() {
        if let Some(first) = limits.deny_hosts.first() {
            return Err(FieldError::with_value(
                Field::DenyHosts,
                first,
                "deny_hosts narrows allow_hosts: give the hosts that are allowed too",
            ));
        }
        return Ok(None);
    }
    let rules = |field: Field, entries: &[String]| {
        entries
            .iter()
            .map(|e| {
                phantom_policy::egress::EgressRule::parse(e)
                    .map_err(|m| FieldError::with_value(field, e, m))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Some(phantom_policy::EgressOverride {
        allow: rules(Field::AllowHosts, &limits.allow_hosts)?,
        deny: rules(Field::DenyHosts, &limits.deny_hosts)?,
    }))
}

/// What a payload runs, where, and with which variables over the plan's environment:
/// the request as an image's config shapes it, the way Docker composes them. A cold
/// run builds its payload from it; a pooled sandbox gets it in its run message.
#[derive(Debug, Clone)]
pub(crate) struct PayloadCommand {
    /// On an image: Entrypoint, then the command given or else Cmd.
    pub argv: Vec<String>,
    /// Laid over the plan's environment (after TERM), in order: the image's Env, then
    /// the request's.
    pub env: Vec<(String, String)>,
    /// The request's, else the image's WorkingDir; `None`: the plan's default.
    pub cwd: Option<String>,
}

/// A request, compiled and checked, ready to be started.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub compiled: Arc<Compiled>,
    /// The built-in profile, when the policy is one (pools serve only those).
    pub profile: Option<String>,
    /// The output cap (the plan's, or the request's).
    pub output_limit: u64,
    pub warnings: Vec<String>,
    pub image: Option<ImageRun>,
    pub command: PayloadCommand,
    /// The caller's directory for /workspace (absolute, existing), or a fresh one.
    pub workspace: Option<PathBuf>,
    /// network limited: the test-only resolver override.
    pub test_resolve: Vec<(String, std::net::SocketAddr)>,
    /// Milliseconds spent compiling the policy (near 0 when the plan was cached).
    pub compile_ms: f64,
    /// Mode wasm: the module the run executes.
    pub wasm: Option<crate::wasm_run::WasmCommand>,
}

impl Prepared {
    pub(crate) fn plan(&self) -> &Plan {
        &self.compiled.plan
    }
}

/// What to prepare: a run, a persistent sandbox (no command), or a command in one.
pub(crate) struct Ask<'a> {
    pub principal: &'a Principal,
    pub policy: Policy,
    pub limits: &'a Limits,
    pub image: Option<&'a str>,
    /// `None`: a persistent sandbox, whose commands come later.
    pub program: Option<&'a Program>,
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub cwd: Option<&'a str>,
    pub workspace: Option<&'a str>,
    /// An exec: the image's Entrypoint and Cmd do not apply (as `docker exec`).
    pub exec: bool,
}

/// Not granted: `field` (with the `value` asked) is what the caller must change.
fn forbidden(field: Field, value: impl Into<String>, message: String) -> EngineError {
    EngineError::Request(Failure {
        kind: FailureKind::Forbidden,
        field: Some(field),
        value: Some(value.into()),
        message,
    })
}

/// Compile and check a request.
pub(crate) fn prepare(ask: Ask<'_>, cache: &mut PlanCache) -> Result<Prepared, EngineError> {
    let grants = &ask.principal.grants;
    if let Some(cwd) = ask.cwd {
        if !cwd.starts_with('/') {
            return Err(EngineError::from(FieldError::with_value(
                Field::Cwd,
                cwd,
                "must be an absolute path inside the sandbox, e.g. /workspace/src",
            )));
        }
    }
    for (k, v) in ask.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(EngineError::from(FieldError::with_value(
                Field::Env,
                format!("{k}={v}"),
                "expected NAME=VALUE with a non-empty NAME without `=` or NUL",
            )));
        }
    }
    if let Some(program) = ask.program {
        for a in program.argv() {
            if a.contains('\0') {
                return Err(EngineError::from(FieldError::new(
                    Field::Argv,
                    "an argument contains a NUL byte, which no command-line argument can hold",
                )));
            }
        }
    }
    let config_profile = match &ask.policy {
        Policy::Builtin(name) => cache.is_config_profile(name)?,
        Policy::File(_) => false,
    };
    match &ask.policy {
        // A config.yaml profile may bind host directories: an API key reaches one only
        // when its grants name it (an empty list means the built-ins).
        Policy::Builtin(name)
            if config_profile
                && ask.principal.owner != phantom_api::access::Owner::Local
                && !grants.profiles.iter().any(|p| p == name) =>
        {
            return Err(forbidden(
                Field::Profile,
                name.as_str(),
                format!(
                    "{name} is a profile of the supervisor's config.yaml, which this caller was not granted (an operator grants it with `phantom keys add NAME --profiles {name}`)"
                ),
            ))
        }
        Policy::Builtin(name) if !grants.allows_profile(name) => {
            return Err(forbidden(
                Field::Profile,
                name.as_str(),
                format!(
                    "{name} is not granted to this caller (it may use: {})",
                    grants.profiles.join(", ")
                ),
            ))
        }
        Policy::File(path) if !grants.allows(Capability::PolicyFiles) => {
            return Err(forbidden(
                Field::PolicyFile,
                path.display().to_string(),
                not_granted("a policy file", Capability::PolicyFiles),
            ))
        }
        _ => {}
    }
    if let Some(image) = ask.image.filter(|_| !grants.allows(Capability::Images)) {
        return Err(forbidden(
            Field::Image,
            image,
            not_granted("an image", Capability::Images),
        ));
    }
    if let Some(dir) = ask
        .workspace
        .filter(|_| !grants.allows(Capability::HostWorkspace))
    {
        return Err(forbidden(
            Field::Workspace,
            dir,
            not_granted("a host workspace", Capability::HostWorkspace),
        ));
    }
    let (overrides, output) = overrides(ask.limits, ask.image).map_err(EngineError::from)?;
    let compiling = std::time::Instant::now();
    let compiled = cache.get(&ask.policy, &overrides).map_err(|e| match e {
        // A profile the caller named that does not exist is their mistake, named.
        EngineError::Policy(p) => match &ask.policy {
            // Every mistake of the file, one line each.
            Policy::Builtin(_) => {
                FieldError::lines(Field::Profile, p.errors().iter().map(ToString::to_string)).into()
            }
            Policy::File(_) => FieldError::lines(
                Field::PolicyFile,
                p.errors().iter().map(ToString::to_string),
            )
            .into(),
        },
        e => e,
    })?;
    let compile_ms = compiling.elapsed().as_secs_f64() * 1000.0;
    let plan = &compiled.plan;
    check_grants(grants, plan, &compiled.base_limits, output)?;
    let mut warnings = plan.warnings.clone();
    if let Policy::File(path) = &ask.policy {
        warnings.extend(pooling_warning(path));
    }
    let isolated = plan.mode != Mode::Direct;
    if isolated && plan.landlock.enabled {
        match phantom_linux::landlock::kernel_abi() {
            0 => warnings.push(
                "Landlock is not available on this kernel: the filesystem fence is skipped (namespaces, seccomp and the read-only mounts still apply)".into(),
            ),
            abi @ 1..=5 => warnings.push(format!(
                "Landlock ABI {abi} (< 6): abstract unix sockets and signals are not scoped to the sandbox"
            )),
            _ => {}
        }
    }
    let mut test_resolve = Vec::new();
    if plan.network == NetworkMode::Limited && isolated {
        if let Some(entries) =
            phantom_egress::test_resolve_from_env().map_err(EngineError::Usage)?
        {
            warnings.push(phantom_egress::test_resolve_warning(&entries));
            test_resolve = entries;
        }
        if phantom_linux::landlock::kernel_abi() < 4 && plan.landlock.enabled {
            warnings.push(
                "Landlock ABI < 4: TCP connects inside the sandbox are not fenced to the proxy port (the network namespace, which has only lo, still is)".into(),
            );
        }
    }
    // The image is found now, before clone: a missing one is the caller's mistake.
    let argv = ask.program.map(Program::argv).unwrap_or_default();
    let image = match plan.rootfs.image() {
        Some(name) if ask.program.is_none() || ask.exec => Some(ImageRun::for_pool(name)?),
        Some(name) => Some(ImageRun::resolve(name, &argv, &mut warnings)?),
        None => None,
    };
    if ask.program.is_some() && image.is_none() && argv.is_empty() {
        return Err(EngineError::from(FieldError::new(
            Field::Argv,
            "no command given, e.g. [\"python3\", \"-c\", \"print(1)\"]",
        )));
    }
    let workspace = ask.workspace.map(existing_workspace).transpose()?;
    // Mode wasm: the module is found and checked now; a missing file or one that is
    // not a module is the caller's mistake, said before any process exists.
    let wasm = if plan.mode == Mode::Wasm {
        if ask.exec {
            return Err(EngineError::Usage(
                "mode wasm runs one module per request: exec is not available in mode wasm".into(),
            ));
        }
        Some(crate::wasm_run::resolve(
            ask.program,
            workspace.as_deref(),
            &mut warnings,
        )?)
    } else {
        None
    };
    if let Some(dir) = workspace.as_deref().filter(|_| isolated) {
        warnings.extend(unwritable_workspace(dir));
    }
    let command = {
        let argv = match (&image, ask.exec) {
            (Some(image), false) => image.argv.clone(),
            _ => argv,
        };
        let image_ref = image.as_ref();
        PayloadCommand {
            argv,
            env: image_ref
                .iter()
                .flat_map(|i| &i.env)
                .cloned()
                .chain(ask.env.iter().map(|(k, v)| (k.clone(), v.clone())))
                .collect(),
            cwd: ask
                .cwd
                .map(str::to_string)
                .or_else(|| image_ref.and_then(|i| i.working_dir.clone())),
        }
    };
    Ok(Prepared {
        compile_ms,
        output_limit: output.unwrap_or(plan.limits.output_limit_bytes),
        profile: ask.policy.builtin().map(str::to_string),
        compiled,
        warnings,
        image,
        command,
        workspace,
        test_resolve,
        wasm,
    })
}

fn not_granted(what: &str, capability: Capability) -> String {
    format!(
        "{what} needs the `{}` capability, which this caller was not granted ({}; for an API key an operator grants it with `phantom keys add NAME --allow {}`)",
        capability.as_str(),
        capability.meaning(),
        capability.as_str()
    )
}

/// One limit against its ceiling: the field, what was asked, the most allowed, and how
/// to show a value.
type Ceiling = (Field, u64, u64, fn(u64) -> String);

/// Whether `plan` asks for no more than `grants` allow.
fn check_grants(
    grants: &Grants,
    plan: &Plan,
    base: &phantom_policy::Limits,
    output: Option<u64>,
) -> Result<(), EngineError> {
    let network = api_network(plan.network);
    if !grants.allows_network(network) {
        return Err(forbidden(
            Field::Network,
            network.to_string(),
            if network == choice::NetworkMode::Host {
                not_granted("the host's network", Capability::HostNetwork)
            } else {
                format!("network {network} is not granted to this caller")
            },
        ));
    }
    let mode = api_mode(plan.mode);
    if !grants.allows_mode(mode) {
        return Err(forbidden(
            Field::Mode,
            mode.to_string(),
            if mode == choice::Mode::Direct {
                not_granted("running without namespaces", Capability::DirectMode)
            } else {
                format!("mode {mode} is not granted to this caller")
            },
        ));
    }
    if grants.allows(Capability::AnyLimits) {
        return Ok(());
    }
    let max = &grants.max;
    let l = &plan.limits;
    let checks: [Ceiling; 5] = [
        (
            Field::Memory,
            l.memory_bytes,
            max.memory_bytes.unwrap_or(0).max(base.memory_bytes),
            units::format_bytes,
        ),
        (
            Field::Cpus,
            u64::from(l.cpu_millis),
            u64::from(max.cpu_millis.unwrap_or(0)).max(u64::from(base.cpu_millis)),
            |m| format!("{}", m as f64 / 1000.0),
        ),
        (
            Field::Pids,
            l.pids,
            max.pids.unwrap_or(0).max(base.pids),
            |n| n.to_string(),
        ),
        (
            Field::Timeout,
            l.wall_timeout_ms,
            max.timeout_ms.unwrap_or(0).max(base.wall_timeout_ms),
            units::format_duration_ms,
        ),
        (
            Field::MaxOutput,
            output.unwrap_or(l.output_limit_bytes),
            max.output_bytes.unwrap_or(0).max(base.output_limit_bytes),
            units::format_bytes,
        ),
    ];
    for (field, asked, ceiling, show) in checks {
        if asked > ceiling {
            return Err(EngineError::Request(Failure {
                kind: FailureKind::Forbidden,
                field: Some(field),
                value: Some(show(asked)),
                message: format!(
                    "{} is more than this caller may ask for (at most {}; for an API key an operator raises it with `phantom keys add NAME --max-{} ...` or `--allow any-limits`)",
                    show(asked),
                    show(ceiling),
                    match field {
                        Field::MaxOutput => "output",
                        other => other.as_str(),
                    }
                ),
            }));
        }
    }
    Ok(())
}

/// A policy file's own `performance.zygote` / `pool_size`: pools keep built-in
/// profiles only.
fn pooling_warning(path: &Path) -> Option<String> {
    let profile = phantom_policy::load_file(path).ok()?;
    let own = path.display().to_string();
    let keys: Vec<&str> = ["performance.zygote", "performance.pool_size"]
        .into_iter()
        .filter(|key| profile.position(key).is_some_and(|pos| pos.file == own))
        .collect();
    (!keys.is_empty()).then(|| {
        format!(
            "{}: phantom-supervisor keeps warm pools of built-in profiles only; a policy file always starts cold",
            keys.join(", ")
        )
    })
}

/// Why the sandbox's user cannot write the caller's workspace `dir`, if it cannot.
/// Inside, the payload's user is the caller's uid and gid (no supplementary groups,
/// no capability over host files): a directory that another user owns is silently
/// read-only there, which a run should say rather than fail with a bare EACCES.
fn unwritable_workspace(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ok()?;
    let (uid, gid) = (
        phantom_linux::process::euid(),
        rustix::process::getegid().as_raw(),
    );
    let mode = meta.mode();
    let writable = (meta.uid() == uid && mode & 0o200 != 0)
        || (meta.uid() != uid && meta.gid() == gid && mode & 0o020 != 0)
        || (meta.uid() != uid && meta.gid() != gid && mode & 0o002 != 0);
    (!writable).then(|| {
        let (whose, fix) = if meta.uid() == uid {
            ("yours but not writable".to_string(), "chmod u+w it".to_string())
        } else {
            (
                format!("owned by uid {}", meta.uid()),
                format!("chown it to uid {uid}, or use a directory of your own"),
            )
        };
        format!(
            "the workspace {} is {whose} (mode {:o}): the sandbox runs as your uid {uid} without privileges over host files, so /workspace is read-only inside; {fix}",
            dir.display(),
            mode & 0o7777
        )
    })
}

/// The caller's workspace: an existing directory, made absolute.
fn existing_workspace(dir: &str) -> Result<PathBuf, EngineError> {
    let path = PathBuf::from(dir);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(EngineError::from(FieldError::with_value(
                Field::Workspace,
                dir,
                "not a directory",
            )))
        }
        Err(e) => {
            return Err(EngineError::from(FieldError::with_value(
                Field::Workspace,
                dir,
                format!("{e} (create it first, or leave the workspace out for a temporary one)"),
            )))
        }
    }
    path.canonicalize().map_err(|source| EngineError::Io {
        what: "resolve",
        path: dir.to_string(),
        source,
    })
}

/// The payload's process context: `command` under `plan`, with its stdio and files.
/// `term`: the client's TERM. `no_cgroup`: the sandbox has no cgroup, so processes and
/// memory fall back to rlimits.
pub(crate) fn payload_context(
    command: &PayloadCommand,
    plan: &Plan,
    host_workspace: &Path,
    term: Option<&str>,
    stdio: [Option<OwnedFd>; 3],
    files: Option<OwnedFd>,
    no_cgroup: bool,
) -> Result<PayloadContext, EngineError> {
    let [stdin, stdout, stderr] = stdio;
    let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
        unreachable!("the payload always gets output pipes");
    };
    let cwd = match (&command.cwd, plan.mode != Mode::Direct) {
        (Some(c), _) => PathBuf::from(c),
        (None, true) => PathBuf::from(&plan.cwd),
        // Direct mode has no /workspace: the command runs in the host directory.
        (None, false) => host_workspace.to_path_buf(),
    };
    let spec = RunSpec {
        argv: command.argv.clone(),
        env: payload_env(&plan.env, term, &command.env),
        // Given apart (`cwd` above): a host directory in direct mode need not be UTF-8.
        cwd: String::new(),
        rlimit_nproc: no_cgroup.then_some(plan.limits.pids),
        rlimit_data: no_cgroup.then_some(plan.limits.memory_bytes),
        stdin_fd: stdin.is_some(),
        files_fd: files.is_some(),
        workspace_fd: false,
    };
    let base = init::payload_base(plan);
    PayloadContext::new(&base, &spec, cwd, stdin, stdout, stderr, files)
        .map_err(|message| FieldError::new(Field::Argv, message).into())
}

/// The egress proxy's settings for sandbox `sandbox_id` of `plan`.
pub(crate) fn proxy_config(
    plan: &Plan,
    sandbox_id: &str,
    test_resolve: &[(String, std::net::SocketAddr)],
) -> phantom_egress::ProxyConfig {
    phantom_egress::ProxyConfig {
        sandbox_id: sandbox_id.to_string(),
        profile: plan.profile.clone(),
        egress: plan.egress.clone(),
        resolve: test_resolve.to_vec(),
        log_prefix: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phantom_api::access::Grants;

    fn ask<'a>(
        principal: &'a Principal,
        limits: &'a Limits,
        program: &'a Program,
        env: &'a std::collections::BTreeMap<String, String>,
    ) -> Ask<'a> {
        Ask {
            principal,
            policy: Policy::Builtin("default".into()),
            limits,
            image: None,
            program: Some(program),
            env,
            cwd: None,
            workspace: None,
            exec: false,
        }
    }

    fn key() -> Principal {
        Principal {
            owner: phantom_api::access::Owner::Key("k1".into()),
            grants: Grants::default_key(),
        }
    }

    #[test]
    fn an_aot_cache_holds_the_plan_a_run_without_limits_asks_for() {
        // No config.yaml: the host's own must not change the count.
        let mut cache = PlanCache::with_config(None);
        let compiled = cache.prefill();
        assert_eq!(compiled, phantom_policy::builtin_names().len());
        let env = Default::default();
        let principal = Principal::local();
        let program = Program::Argv(vec!["true".into()]);
        let (overrides, _) = overrides(&Limits::default(), None).unwrap();
        let key = (Policy::Builtin("default".into()), format!("{overrides:?}"));
        let planned = cache.plans.get(&key).cloned().expect("prefilled");
        prepare(
            ask(&principal, &Limits::default(), &program, &env),
            &mut cache,
        )
        .unwrap();
        // The run took the prefilled plan: nothing new was compiled.
        assert_eq!(cache.plans.len(), compiled);
        assert!(Arc::ptr_eq(&planned, &cache.plans[&key]));
    }

    #[test]
    fn a_config_profile_reaches_a_key_only_when_its_grants_name_it() {
        let config = phantom_policy::Config::parse(
            "profiles:\n  - name: ops\n    environment: {X: y}\n",
            std::path::Path::new("/etc/phantom/config.yaml"),
            "test",
        )
        .unwrap();
        let mut cache = PlanCache::with_config(Some(config));
        let program = Program::Argv(vec!["true".into()]);
        let env = Default::default();
        let limits = Limits::default();
        let run = |principal: &Principal, cache: &mut PlanCache| {
            let mut a = ask(principal, &limits, &program, &env);
            a.policy = Policy::Builtin("ops".into());
            prepare(a, cache)
        };
        let prepared = run(&Principal::local(), &mut cache).unwrap();
        assert!(prepared.plan().env.contains(&("X".into(), "y".into())));
        let e = run(&key(), &mut cache).unwrap_err();
        let EngineError::Request(f) = e else {
            panic!("{e}")
        };
        assert_eq!(
            (f.kind, f.field),
            (FailureKind::Forbidden, Some(Field::Profile))
        );
        assert!(f.message.contains("--profiles ops"), "{}", f.message);
        let mut granted = key();
        granted.grants.profiles = vec!["ops".into()];
        run(&granted, &mut cache).unwrap();
    }

    #[test]
    fn a_default_key_gets_no_host_network_and_no_limits_above_the_profiles() {
        let program = Program::Argv(vec!["true".into()]);
        let env = Default::default();
        let mut cache = PlanCache::default();
        let principal = key();
        let host = Limits {
            network: Some(choice::NetworkMode::Host),
            ..Limits::default()
        };
        let e = prepare(ask(&principal, &host, &program, &env), &mut cache).unwrap_err();
        let EngineError::Request(f) = e else {
            panic!("{e}")
        };
        assert_eq!(f.kind, FailureKind::Forbidden);
        assert!(f.message.contains("--allow host-network"), "{}", f.message);

        let huge = Limits {
            memory: Some("900GB".into()),
            ..Limits::default()
        };
        let e = prepare(ask(&principal, &huge, &program, &env), &mut cache).unwrap_err();
        let EngineError::Request(f) = e else {
            panic!("{e}")
        };
        assert_eq!(
            (f.kind, f.field),
            (FailureKind::Forbidden, Some(Field::Memory))
        );

        // Within the profile's own limits it runs; the local user may ask for more.
        let small = Limits {
            memory: Some("64MB".into()),
            network: Some(choice::NetworkMode::Limited),
            ..Limits::default()
        };
        prepare(ask(&principal, &small, &program, &env), &mut cache).unwrap();
        let local = Principal::local();
        prepare(ask(&local, &huge, &program, &env), &mut cache).unwrap();
        prepare(ask(&local, &host, &program, &env), &mut cache).unwrap();
    }

    #[test]
    fn bad_limits_name_their_field() {
        let program = Program::Argv(vec!["true".into()]);
        let env = Default::default();
        let principal = Principal::local();
        let bad = Limits {
            memory: Some("12XB".into()),
            ..Limits::default()
        };
        let e = prepare(
            ask(&principal, &bad, &program, &env),
            &mut PlanCache::default(),
        )
        .unwrap_err();
        let EngineError::Request(f) = e else {
            panic!("{e}")
        };
        assert_eq!(
            f.for_api(),
            "memory: cannot parse \"12XB\" as a size (use e.g. 512MB, 1GiB, or 4096 for bytes)"
        );
        assert!(
            f.for_cli().starts_with("--memory 12XB: cannot parse"),
            "{}",
            f.for_cli()
        );
    }

    #[test]
    fn plans_are_cached_per_profile_and_limits_and_pools_match_by_build_key() {
        let mut cache = PlanCache::default();
        let policy = Policy::Builtin("default".into());
        let a = cache.get(&policy, &Overrides::default()).unwrap();
        let b = cache.get(&policy, &Overrides::default()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let more_memory = Overrides {
            memory_bytes: Some(1 << 30),
            ..Overrides::default()
        };
        let c = cache.get(&policy, &more_memory).unwrap();
        // Limits are set per run: the same sandbox serves both.
        assert_eq!(a.build_key, c.build_key);
        let other_network = Overrides {
            network: Some(NetworkMode::None),
            ..Overrides::default()
        };
        let d = cache.get(&policy, &other_network).unwrap();
        assert_ne!(a.build_key, d.build_key);
    }
}
