//! Warm pools: per built-in profile (on the host root or on an image), sandboxes that
//! are already through clone3, their mounts and pivot_root, waiting for a payload.
//! Each serves ONE run; the pool refills in the background, pausing while CPU or
//! memory pressure (PSI) is above its thresholds.
//!
//! A profile that runs Python (`runtime: python`, on the host root) is served by a
//! zygote instead (fork.rs): one interpreter with the profile's preloads that forks
//! every run of the pool into fresh namespaces. Without the zygote library, or for a
//! plan a zygote cannot fork, the pool keeps pre-built sandboxes and says why.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use phantom_api::engine::{PoolInfo, PoolStatus};
use phantom_linux::mount;
use phantom_linux::process;
use phantom_policy::{Overrides, Plan};

use super::log;
use crate::image_run::ImageRun;
use crate::init::{self, ChildPayload, PayloadBase};
use crate::pressure::{IdleCpu, Pressure, PressureSource, Thresholds};
use crate::spawn::{spawn_on, SandboxStatus, Spawned, Trace};
use crate::EngineError;

/// One pool to keep: a built-in profile, on the host root or on an image of the store
/// (`--pool PROFILE[:IMAGE]`), and how many sandboxes it keeps ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub profile: String,
    pub image: Option<String>,
    pub size: usize,
    /// Serve it by forks of a zygote even though its runtime is not Python (python3
    /// must be in its root): `phantom-supervisor --zygote PROFILE`.
    pub zygote: bool,
    /// The fewest sandboxes it keeps ready whatever the demand (at most `size`).
    pub floor: usize,
}

impl PoolSpec {
    /// `PROFILE` or `PROFILE:IMAGE` (the first `:` ends the profile's name; an image's
    /// name may hold more, as in `default:python:3.12-slim`), of `size` sandboxes.
    pub fn parse(spec: &str, size: usize) -> Result<PoolSpec, EngineError> {
        let (profile, image) = match spec.split_once(':') {
            Some((profile, image)) => (profile, Some(image)),
            None => (spec, None),
        };
        if profile.is_empty() || image.is_some_and(str::is_empty) {
            return Err(EngineError::Usage(format!(
                "--pool {spec}: expected PROFILE or PROFILE:IMAGE, e.g. --pool default or --pool default:alpine"
            )));
        }
        Ok(PoolSpec {
            profile: profile.to_string(),
            image: image.map(str::to_string),
            size,
            zygote: false,
            floor: POOL_FLOOR,
        })
    }
}

impl std::fmt::Display for PoolSpec {
    /// As `--pool` takes it and `phantom pool status` shows it: `default`,
    /// `default:alpine`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        pool_name(f, &self.profile, self.image.as_deref())
    }
}

fn pool_name(f: &mut impl std::fmt::Write, profile: &str, image: Option<&str>) -> std::fmt::Result {
    match image {
        Some(image) => write!(f, "{profile}:{image}"),
        None => f.write_str(profile),
    }
}

/// One pool: a profile's sandboxes on the host root, or on one image.
pub(crate) struct Pool {
    pub profile: String,
    /// The image its sandboxes are built on, as read from the store when the pool was
    /// made or last found stale; `None`: the host root.
    pub image: Option<ImageRun>,
    pub plan: Plan,
    /// What its sandboxes are built from (`prepare::build_key`): a run whose plan has
    /// the same key is served by it whatever its limits.
    pub build_key: String,
    pub base: PayloadBase,
    /// The most sandboxes it keeps ready (`--zygote-pools`, `performance.pool_size`);
    /// how many it wants now follows demand ([`Demand`]).
    pub target: usize,
    pub demand: Demand,
    /// The fewest it keeps ready (`--pool-floor`).
    pub floor: usize,
    pub ready: VecDeque<Spawned>,
    pub starting: Vec<Spawned>,
    pub hits: u64,
    pub prewarmed_hits: u64,
    /// network limited: connections its sandboxes' proxies made, refused and failed.
    pub proxy: [u64; 3],
    pub misses: u64,
    /// Sandboxes dropped unused because their image changed in the store.
    pub stale: u64,
    pub created: u64,
    pub failures: u64,
    /// Failures in a row: refills back off after a few.
    pub failing: u32,
    pub backoff_until: Option<Instant>,
    /// When sandboxes became ready (last minute), for the refill rate.
    pub readied: VecDeque<Instant>,
    /// Whether its runs are forked from a zygote, or why not (`None`: not a Python
    /// profile).
    pub fork: Option<Result<(), String>>,
    /// The ready zygote, and the id of one that is starting (in `starting`).
    pub zygote: Option<Spawned>,
    pub zygote_starting: Option<String>,
    /// The modules its zygote imported (of `performance.preload`).
    pub preloaded: Vec<String>,
    /// Runs forked from its zygotes, and when (last minute).
    pub forks: u64,
    pub forked: VecDeque<Instant>,
    /// What its next forked runs need from the host, made while the engine idles.
    pub slots: Vec<RunSlot>,
}

/// What a forked run needs from the host, made ahead of it: its id, its run directory
/// (the lock that lets a later engine collect what a killed one left), its cgroup with
/// the pool's limits, and the files its init writes itself into.
pub(crate) struct RunSlot {
    pub sandbox_id: String,
    pub run_dir: crate::workspace::RunDir,
    pub cgroup: crate::spawn::CgroupGuard,
    pub joins: Vec<OwnedFd>,
    pub warnings: Vec<String>,
}

/// Run slots a pool with a zygote keeps made.
const RUN_SLOTS: usize = 2;

impl RunSlot {
    pub(crate) fn make(plan: &Plan) -> Result<RunSlot, EngineError> {
        let sandbox_id = phantom_state::ids::new_sandbox_id();
        let run_dir = crate::workspace::RunDir::create_bare(
            &sandbox_id,
            phantom_linux::cgroup::Layout::cached(),
        )?;
        let mut warnings = Vec::new();
        let cgroup = crate::spawn::sandbox_cgroup(plan, &sandbox_id, &mut warnings);
        let joins = match &cgroup.0 {
            Some(cg) => cg
                .join_files()
                .map_err(|e| EngineError::Setup(e.to_string()))?,
            None => Vec::new(),
        };
        Ok(RunSlot {
            sandbox_id,
            run_dir,
            cgroup,
            joins,
            warnings,
        })
    }
}

/// A pool's profile by name: a built-in, else one of the config.yaml this process's
/// environment finds (as the engine's plan cache resolves a run's profile).
fn named_profile(name: &str) -> Result<phantom_policy::Profile, EngineError> {
    if phantom_policy::builtin_source(name).is_some() {
        return Ok(phantom_policy::load_builtin(name)?);
    }
    let config = phantom_policy::config::load_from_env(&phantom_policy::config::process_env)?;
    Ok(phantom_policy::load_named(name, config.as_ref())?)
}

impl Pool {
    /// The pool `spec` asks for: its profile compiled (on its image, found in the
    /// store now, as a run on the image compiles and finds it), no sandbox yet.
    pub(crate) fn new(spec: &PoolSpec) -> Result<Pool, EngineError> {
        // The caller's mistakes (a missing image, a bad profile) are said with the flag.
        let in_spec = |e: EngineError| match e {
            e if e.exit_code() == 2 => EngineError::Usage(format!("--pool {spec}: {e}")),
            e => e,
        };
        let overrides = Overrides {
            image: spec.image.clone(),
            ..Overrides::default()
        };
        let plan = phantom_policy::compile(&named_profile(&spec.profile)?, &overrides)
            .map_err(|e| in_spec(e.into()))?;
        if plan.mode == phantom_policy::Mode::Direct {
            return Err(EngineError::Usage(format!(
                "profile {}: direct mode has no sandbox to keep warm",
                spec.profile
            )));
        }
        let image = match plan.rootfs.image() {
            Some(name) => Some(ImageRun::for_pool(name).map_err(in_spec)?),
            None => None,
        };
        let mut pool = Pool::with_plan(&spec.profile, image, plan, spec.size);
        pool.floor = spec.floor.min(spec.size);
        if spec.zygote && pool.fork.is_none() {
            pool.fork = Some(Pool::can_fork(&pool.plan));
        }
        Ok(pool)
    }

    /// An empty pool of `target` sandboxes built from `plan`.
    pub(crate) fn with_plan(
        profile: &str,
        image: Option<ImageRun>,
        plan: Plan,
        target: usize,
    ) -> Pool {
        let mut base = init::payload_base(&plan);
        // A pre-started interpreter is the host root's python3, started with the plan's
        // environment; on an image each run starts the image's own (not pre-started).
        base.prewarm_python &= image.is_none();
        // A zygote runs the root's own python3: the host's, or the image's.
        let fork = plan.prewarm.is_some().then(|| Pool::can_fork(&plan));
        Pool {
            profile: profile.to_string(),
            image,
            build_key: crate::prepare::build_key(&plan),
            base,
            plan,
            target,
            demand: Demand::new(target, Instant::now()),
            floor: POOL_FLOOR,
            ready: VecDeque::new(),
            starting: Vec::new(),
            hits: 0,
            prewarmed_hits: 0,
            proxy: [0; 3],
            misses: 0,
            stale: 0,
            created: 0,
            failures: 0,
            failing: 0,
            backoff_until: None,
            readied: VecDeque::new(),
            fork,
            zygote: None,
            zygote_starting: None,
            preloaded: Vec::new(),
            forks: 0,
            forked: VecDeque::new(),
            slots: Vec::new(),
        }
    }

    /// Whether a zygote can fork the runs of `plan`, or why not (said in the log).
    fn can_fork(plan: &Plan) -> Result<(), String> {
        let can = crate::fork::library().map(drop).and_then(|()| {
            crate::spawn::prepare_steps(plan, std::path::Path::new("/"))
                .map_err(|e| e.to_string())
                .and_then(|steps| crate::fork::per_run_steps(&steps).map(drop))
        });
        if let Err(why) = &can {
            log(format_args!(
                "pool {}: no zygote ({why}); it keeps pre-built sandboxes instead",
                plan.profile
            ));
        }
        can
    }

    /// Whether its runs are forked from a zygote.
    pub(crate) fn forks_runs(&self) -> bool {
        matches!(self.fork, Some(Ok(())))
    }

    /// Start its zygote: a sandbox whose init becomes `python3 zygote.py fork
    /// PRELOAD...` (see fork.rs).
    fn start_zygote(&mut self, now: Instant) -> Result<Spawned, EngineError> {
        use crate::fork::{ForkPlan, ZygoteStart};
        use std::ffi::CString;
        let library = crate::fork::library().map_err(EngineError::Setup)?;
        let library = std::fs::File::open(&library)
            .map(OwnedFd::from)
            .map_err(|source| EngineError::Io {
                what: "open",
                path: library.display().to_string(),
                source,
            })?;
        // The zygote's own sandbox needs no network: each run gets a namespace of its
        // own (none only with the host's network).
        let mut plan = self.plan.clone();
        if plan.network != phantom_policy::NetworkMode::Host {
            plan.network = phantom_policy::NetworkMode::None;
        }
        let cstring = |s: &str| {
            CString::new(s).map_err(|_| EngineError::Usage(format!("{s:?} contains a NUL byte")))
        };
        let mut argv = vec![
            "python3".to_string(),
            "-c".into(),
            "import sys; exec(compile(sys.argv.pop(1), '<phantom-zygote>', 'exec'))".into(),
            init::ZYGOTE_PY.into(),
            "fork".into(),
        ];
        argv.extend(self.plan.preload.iter().cloned());
        // As a run on the image gets it (its Env over the plan's): the interpreter starts
        // with the environment its runs will have. Preloaded libraries must not start
        // threads: a threaded zygote is never forked.
        let mut env = match &self.image {
            Some(image) => crate::spawn::payload_env(&self.base.env, None, &image.env),
            None => self.base.env.clone(),
        };
        for var in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
            crate::spawn::set_var(&mut env, var, "1");
        }
        // Figures are files here, never windows.
        crate::spawn::set_var(&mut env, "MPLBACKEND", "Agg");
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let (name, base, fork_plan) = (self.name(), self.base.clone(), &self.plan);
        let mut warnings = Vec::new();
        let spawned = spawn_on(
            phantom_state::ids::new_sandbox_id(),
            &plan,
            self.image.as_ref(),
            None,
            &mut Trace::new(now),
            &mut warnings,
            |ws, _| {
                let steps = crate::spawn::prepare_steps(fork_plan, ws)?;
                let steps = crate::fork::per_run_steps(&steps).map_err(EngineError::Setup)?;
                let fork_plan = ForkPlan {
                    pool: name,
                    steps,
                    base,
                    hostname: fork_plan.hostname.clone(),
                    network: fork_plan.network,
                    files_dir: fork_plan.workspace_target.clone().into(),
                    workspace_bytes: crate::spawn::workspace_bytes(fork_plan),
                };
                let json = serde_json::to_vec(&fork_plan).expect("a fork plan serializes");
                Ok(ChildPayload::Zygote(ZygoteStart {
                    plan: crate::channel::memfd_with("phantom-fork-plan", &json)?,
                    library,
                    argv: argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
                    env: env
                        .iter()
                        .map(|(k, v)| cstring(&format!("{k}={v}")))
                        .collect::<Result<_, _>>()?,
                    path_var,
                }))
            },
        )?;
        for w in warnings {
            log(format_args!("pool {}: {w}", self.name()));
        }
        Ok(spawned)
    }

    /// `profile` or `profile:image`, for logs and `phantom pool status`.
    pub(crate) fn name(&self) -> String {
        let mut name = String::new();
        let _ = pool_name(&mut name, &self.profile, self.image_name());
        name
    }

    pub(crate) fn image_name(&self) -> Option<&str> {
        self.image.as_ref().map(|i| i.name.as_str())
    }

    /// Kill and reap every sandbox that is not running a request.
    pub(crate) fn drain(&mut self) -> usize {
        let sandboxes: Vec<Spawned> = self
            .ready
            .drain(..)
            .chain(self.starting.drain(..))
            .collect();
        let n = sandboxes.len();
        self.zygote_starting = None;
        self.slots.clear();
        for s in sandboxes.into_iter().chain(self.zygote.take()) {
            s.kill();
            let _ = s.finish(SandboxStatus::default(), &mut Trace::new(Instant::now()));
        }
        n
    }

    /// Sandboxes it has or is starting.
    fn have(&self) -> usize {
        self.ready.len() + self.starting.len()
    }

    /// Whether it wants a refill now, given the engine's `load`. A refill costs what a
    /// cold start costs (a clone3 and a sandbox's setup), ahead of time: it pays when
    /// a core would idle otherwise. So: idle, refill to the target; busy, only a pool
    /// running low; saturated, none — a run that finds the pool empty starts cold,
    /// which costs no more than the refill would have, and nothing is spent twice.
    fn wants(&self, load: Load, now: Instant) -> bool {
        if self.forks_runs() {
            return false;
        }
        let have = self.have();
        let target = self.demand.want(now, self.floor, self.target);
        let room = match load {
            Load::Idle => have < target,
            Load::Busy => have * 2 < target,
            Load::Saturated => false,
        };
        room && self.backoff_until.is_none_or(|t| now >= t)
    }

    /// Its zygote could not fork a run: it goes (killed and reaped), and a new one
    /// is started by the next refill.
    pub(crate) fn zygote_failed(&mut self) {
        if let Some(z) = self.zygote.take() {
            z.kill();
            let _ = z.finish(SandboxStatus::default(), &mut Trace::new(Instant::now()));
        }
        self.failed();
    }

    /// A sandbox failed to start: count it, and back off after a few in a row.
    pub(crate) fn failed(&mut self) {
        self.failures += 1;
        self.failing += 1;
        if self.failing >= 3 {
            self.backoff_until = Some(Instant::now() + Duration::from_secs(1));
        }
    }

    /// Whether the image this pool was built on is still what the store has; when it
    /// changed there (re-imported under the same name), the unused sandboxes are
    /// stale: they are dropped and the pool refills on the image as it is now.
    /// Returns why the pool cannot serve `want`, if it cannot.
    pub(crate) fn check_image(&mut self, want: &ImageRun) -> Option<String> {
        let had = self.image.as_ref()?;
        if had.root_id == want.root_id && had.working_dir == want.working_dir {
            return None;
        }
        let name = self.name();
        let (before, now) = (describe(had), describe(want));
        let dropped = self.drain();
        self.stale += dropped as u64;
        self.failing = 0;
        self.backoff_until = None;
        self.image = Some(want.clone());
        log(format_args!(
            "pool {name}: image `{}` changed in the store ({before} -> {now}): {dropped} stale sandboxes dropped, refilling",
            want.name
        ));
        Some(format!(
            "pool {name} was built on an earlier import of image `{}` ({before}, now {now}); its sandboxes were dropped and it refills",
            want.name
        ))
    }
}

/// How many sandboxes a pool keeps ready, from demand: an exponentially weighted
/// average of the runs that asked for the pool per second (one sample a second,
/// half-life [`HALF_LIFE_S`]) times the time a sandbox takes to build, doubled for
/// bursts — between [`POOL_FLOOR`] and the pool's ceiling. A new pool starts
/// at its ceiling (ready for a first burst) and shrinks while nobody asks; memory
/// pressure pauses refills altogether (`--psi-aware`, said in the log and in
/// `phantom pool status`).
#[derive(Debug, Clone)]
pub(crate) struct Demand {
    /// Runs per second as of `window`'s start.
    rate: f64,
    /// Runs that arrived since `window` began (a second not yet folded in).
    arrivals: u32,
    window: Instant,
    /// Seconds a sandbox takes from spawn to ready, averaged.
    build_s: f64,
}

/// Half-life of the arrival rate, in seconds.
pub(crate) const HALF_LIFE_S: f64 = 10.0;
/// The fewest sandboxes a pool keeps ready, idle or not.
pub const POOL_FLOOR: usize = 1;
/// What a build is assumed to take before one was seen.
const FIRST_BUILD_S: f64 = 0.01;

impl Demand {
    /// A pool's demand at start: as if it were asked for at the rate that fills it to
    /// `ceiling`.
    pub(crate) fn new(ceiling: usize, now: Instant) -> Demand {
        Demand {
            rate: ceiling as f64 / (2.0 * FIRST_BUILD_S),
            arrivals: 0,
            window: now,
            build_s: FIRST_BUILD_S,
        }
    }

    fn alpha() -> f64 {
        1.0 - 0.5f64.powf(1.0 / HALF_LIFE_S)
    }

    /// Runs per second at `now`: whole seconds since `window` folded in (the first
    /// with its arrivals, the rest empty).
    pub(crate) fn rate_at(&self, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.window).as_secs();
        if secs == 0 {
            return self.rate;
        }
        let keep = 1.0 - Demand::alpha();
        let first = Demand::alpha() * f64::from(self.arrivals) + keep * self.rate;
        first * keep.powi((secs - 1).min(i32::MAX as u64) as i32)
    }

    /// A run asked for the pool.
    pub(crate) fn arrive(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.window).as_secs();
        if secs > 0 {
            self.rate = self.rate_at(now);
            self.arrivals = 0;
            self.window += Duration::from_secs(secs);
        }
        self.arrivals += 1;
    }

    /// A sandbox of the pool took `took` from spawn to ready.
    pub(crate) fn built(&mut self, took: Duration) {
        self.build_s = 0.8 * self.build_s + 0.2 * took.as_secs_f64();
    }

    /// How many sandboxes to keep ready now: at least `floor`, at most `ceiling`.
    pub(crate) fn want(&self, now: Instant, floor: usize, ceiling: usize) -> usize {
        let need = (self.rate_at(now) * self.build_s * 2.0).ceil() as usize;
        need.clamp(floor.min(ceiling), ceiling)
    }
}

/// How busy the engine is, for refills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// Nothing in flight.
    Idle,
    /// Fewer runs in flight than the host has CPUs.
    Busy,
    /// At least one run in flight per CPU.
    Saturated,
}

impl Load {
    /// `active` runs in flight; `idle`: the host's idle CPU share lately (clients
    /// starting, other work: what the engine's own count does not see).
    pub(crate) fn of(active: usize, idle: Option<f64>) -> Load {
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cpus =
            *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        match active {
            0 => Load::Idle,
            n if n >= cpus => Load::Saturated,
            _ if idle.is_some_and(|share| share < SATURATED_BELOW) => Load::Saturated,
            _ => Load::Busy,
        }
    }
}

/// An idle CPU share below this, with runs in flight, is a saturated host.
const SATURATED_BELOW: f64 = 0.1;
/// How often the idle share is read (/proc/stat) while runs are in flight.
const IDLE_WINDOW: Duration = Duration::from_millis(50);

/// The pools and their refills.
pub(crate) struct Pools {
    pub pools: Vec<Pool>,
    pub thresholds: Option<Thresholds>,
    pub pressure_sample: Option<Pressure>,
    pub sampled_at: Option<Instant>,
    pub paused: Option<String>,
    pub pauses: u64,
    /// The host's idle CPU share, read while runs are in flight.
    idle: IdleCpu,
}

impl Pools {
    pub(crate) fn new(pools: Vec<Pool>, thresholds: Option<Thresholds>) -> Pools {
        Pools {
            pools,
            thresholds,
            pressure_sample: None,
            sampled_at: None,
            paused: None,
            pauses: 0,
            idle: IdleCpu::default(),
        }
    }

    /// Start one sandbox for the emptiest pool below its target, unless pressure
    /// pauses refills. `active`: runs, execs and creates in flight. Returns whether
    /// more refills are due right away.
    pub(crate) fn refill(&mut self, pressure: &mut dyn PressureSource, active: usize) -> bool {
        let idle = (active > 0).then(|| self.idle.share(IDLE_WINDOW)).flatten();
        let load = Load::of(active, idle);
        let now = Instant::now();
        for pool in &mut self.pools {
            while pool
                .readied
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
            {
                pool.readied.pop_front();
            }
        }
        // A zygote is started whatever the load: it is made once, and every run of its
        // pool costs a fork from then on.
        for pool in &mut self.pools {
            let due = pool.forks_runs()
                && pool.zygote.is_none()
                && pool.zygote_starting.is_none()
                && pool.backoff_until.is_none_or(|t| now >= t);
            if !due {
                continue;
            }
            pool.created += 1;
            match pool.start_zygote(now) {
                Ok(z) => {
                    pool.zygote_starting = Some(z.sandbox_id.clone());
                    pool.starting.push(z);
                }
                Err(e) => {
                    pool.failed();
                    log(format_args!(
                        "pool {}: cannot start its zygote: {e}",
                        pool.name()
                    ));
                }
            }
        }
        // The next forked runs' cgroups and run directories, while a core is free.
        let mut slots_due = false;
        for pool in &mut self.pools {
            if pool.zygote.is_some() && load != Load::Saturated && pool.slots.len() < RUN_SLOTS {
                match RunSlot::make(&pool.plan) {
                    Ok(slot) => pool.slots.push(slot),
                    Err(e) => log(format_args!(
                        "pool {}: cannot prepare a run: {e}",
                        pool.name()
                    )),
                }
                slots_due |= pool.slots.len() < RUN_SLOTS;
            }
        }
        let due = self
            .pools
            .iter()
            .enumerate()
            .filter(|(_, p)| p.wants(load, now))
            .min_by_key(|(_, p)| p.have())
            .map(|(i, _)| i);
        let Some(p) = due else { return slots_due };
        if let Some(thresholds) = self.thresholds {
            if self
                .sampled_at
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(500))
            {
                self.pressure_sample = pressure.sample();
                self.sampled_at = Some(now);
            }
            let why = self.pressure_sample.and_then(|s| thresholds.exceeded(s));
            match (&self.paused, why) {
                (None, Some(why)) => {
                    log(format_args!("refill paused: {why}"));
                    self.pauses += 1;
                    self.paused = Some(why);
                    return false;
                }
                (Some(_), Some(why)) => {
                    self.paused = Some(why);
                    return false;
                }
                (Some(_), None) => {
                    log("refill resumed: pressure back under the thresholds");
                    self.paused = None;
                }
                (None, None) => {}
            }
        }
        let pool = &mut self.pools[p];
        let mut warnings = Vec::new();
        let base = pool.base.clone();
        pool.created += 1;
        // On an image: its root, mounted as for a cold run on the image.
        match spawn_on(
            phantom_state::ids::new_sandbox_id(),
            &pool.plan,
            pool.image.as_ref(),
            None,
            &mut Trace::new(now),
            &mut warnings,
            |_, _| Ok(ChildPayload::Pooled(base)),
        ) {
            Ok(mut s) => {
                s.warnings = warnings.clone();
                pool.starting.push(s);
            }
            Err(e) => {
                pool.failed();
                log(format_args!(
                    "pool {}: cannot start a sandbox: {e}",
                    pool.name()
                ));
            }
        }
        for w in warnings {
            log(format_args!("pool {}: {w}", pool.name()));
        }
        self.pools.iter().any(|p| p.wants(load, now))
    }

    /// `phantom pool status`; `active`: runs per pool; `forked`: the pids of the runs
    /// in flight that each pool's zygote forked.
    pub(crate) fn status(
        &self,
        active: &dyn Fn(usize) -> usize,
        forked: &dyn Fn(usize) -> Vec<i32>,
        jobs: usize,
    ) -> PoolStatus {
        let now = Instant::now();
        PoolStatus {
            pid: std::process::id(),
            pools: self
                .pools
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let (pss, merged) = memory_per_ready(&p.ready);
                    let runs = forked(i);
                    let per_fork = (!runs.is_empty()).then(|| {
                        runs.iter().map(|&pid| tree_pss_kb(pid)).sum::<u64>() / runs.len() as u64
                    });
                    PoolInfo {
                        profile: p.profile.clone(),
                        image: p.image.as_ref().map(|i| i.name.clone()),
                        image_root_id: p.image.as_ref().map(|i| i.root_id.clone()),
                        target: p.demand.want(now, p.floor, p.target),
                        ceiling: p.target,
                        arrivals_per_second: p.demand.rate_at(now),
                        ready: p.ready.len(),
                        starting: p.starting.len(),
                        active: active(i),
                        hits: p.hits,
                        prewarmed_hits: p.prewarmed_hits,
                        proxy_allowed: p.proxy[0],
                        proxy_refused: p.proxy[1],
                        proxy_failed: p.proxy[2],
                        misses: p.misses,
                        stale: p.stale,
                        created: p.created,
                        failures: p.failures,
                        refill_per_second: p.readied.len() as f64 / 60.0,
                        pss_kb_per_ready: pss,
                        ksm_merging_pages: merged,
                        zygote: p.fork.as_ref().map(|f| match f {
                            Err(why) => format!("none: {why}"),
                            Ok(()) if p.zygote.is_some() => "ready".into(),
                            Ok(()) => "starting".into(),
                        }),
                        preload: if p.zygote.is_some() {
                            p.preloaded.clone()
                        } else {
                            p.plan.preload.clone()
                        },
                        forked_hits: p.forks,
                        forks_per_second: p
                            .forked
                            .iter()
                            .filter(|t| now.duration_since(**t) <= Duration::from_secs(60))
                            .count() as f64
                            / 60.0,
                        zygote_pss_kb: p
                            .zygote
                            .as_ref()
                            .map(|z| process::proc_number(z.pid, "smaps_rollup", "Pss:")),
                        pss_kb_per_fork: per_fork,
                    }
                })
                .collect(),
            cpu_pressure: self.pressure_sample.map(|s| s.cpu),
            memory_pressure: self.pressure_sample.map(|s| s.memory),
            refill_paused: self.paused.clone(),
            refill_pauses: self.pauses,
            active: jobs,
        }
    }
}

/// PSS (KiB) of process `pid` and its descendants.
fn tree_pss_kb(pid: i32) -> u64 {
    std::iter::once(pid)
        .chain(process::descendants(pid))
        .map(|p| process::proc_number(p, "smaps_rollup", "Pss:"))
        .sum()
}

/// Average PSS (KiB) of the ready sandboxes — each one's init and its descendants —
/// and the pages KSM merges among them.
fn memory_per_ready(ready: &VecDeque<Spawned>) -> (Option<u64>, u64) {
    let (mut pss, mut merged) = (0u64, 0u64);
    for s in ready {
        pss += tree_pss_kb(s.pid);
        for pid in std::iter::once(s.pid).chain(process::descendants(s.pid)) {
            merged += process::proc_number(pid, "ksm_stat", "ksm_merging_pages");
        }
    }
    (
        (!ready.is_empty()).then(|| pss / ready.len() as u64),
        merged,
    )
}

/// An idmapped copy of the caller's directory `dir` for the sandbox whose init is
/// `pid` (files its root writes belong on disk to the engine's uid, root).
pub(crate) fn idmapped_workspace(dir: &std::path::Path, pid: i32) -> Result<OwnedFd, String> {
    let userns = mount::open_userns(pid).map_err(|e| e.to_string())?;
    let tree = mount::clone_tree(dir).map_err(|e| e.to_string())?;
    mount::set_idmap(tree.as_fd(), userns.as_fd()).map_err(|e| {
        format!(
            "workspace {}: cannot make an idmapped mount ({e})",
            dir.display()
        )
    })?;
    Ok(tree)
}

/// A pooled image as messages show it: its root id, short, and its WorkingDir.
fn describe(image: &ImageRun) -> String {
    let hex = image
        .root_id
        .strip_prefix("sha256:")
        .unwrap_or(&image.root_id);
    let mut out = format!("root {}", &hex[..hex.len().min(12)]);
    if let Some(dir) = &image.working_dir {
        out.push_str(&format!(", WorkingDir {dir}"));
    }
    out
}

/// The pools for `phantom-supervisor --profiles A,B --pool PROFILE[:IMAGE]...
/// --zygote-pools N`: one per listed profile on the host root, one per `--pool`
/// (each once, in order of profile then image). A profile's own
/// `performance.pool_size` wins over `default_size`. Neither given: every built-in
/// profile with `performance.zygote: true`, on the host root. Images are not looked
/// up here (the engine does, when it starts).
pub fn pools_for(
    profiles: &[String],
    pools: &[String],
    zygotes: &[String],
    default_size: usize,
    floor: usize,
) -> Result<Vec<PoolSpec>, EngineError> {
    let mut specs: Vec<PoolSpec> = profiles
        .iter()
        .chain(zygotes)
        .map(|p| PoolSpec {
            profile: p.clone(),
            image: None,
            size: default_size,
            zygote: false,
            floor,
        })
        .collect();
    for spec in pools {
        specs.push(PoolSpec {
            floor,
            ..PoolSpec::parse(spec, default_size)?
        });
    }
    if specs.is_empty() {
        for name in phantom_policy::builtin_names() {
            if phantom_policy::load_builtin(name)?.performance.zygote {
                specs.push(PoolSpec {
                    profile: name.to_string(),
                    image: None,
                    size: default_size,
                    zygote: false,
                    floor,
                });
            }
        }
    }
    let mut out: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
    for spec in specs {
        let profile = named_profile(&spec.profile)?;
        let size = profile
            .performance
            .pool_size
            .map_or(spec.size, |n| n as usize);
        out.insert((spec.profile, spec.image), size);
    }
    Ok(out
        .into_iter()
        .map(|((profile, image), size)| PoolSpec {
            zygote: image.is_none() && zygotes.contains(&profile),
            profile,
            image,
            size,
            floor,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pressure::{FakePressure, Pressure};

    /// A pool whose sandboxes can never start (a required bind source is missing), so
    /// that refill attempts are observable without starting processes.
    fn broken_pool() -> Pool {
        let profile = phantom_policy::load_builtin("minimal").unwrap();
        let mut plan = phantom_policy::compile(&profile, &Overrides::default()).unwrap();
        plan.mounts.push(phantom_policy::Mount::Bind {
            source: "/nonexistent/phantom-refill-test".into(),
            target: "/x".into(),
            read_only: true,
            optional: false,
        });
        Pool::with_plan("minimal", None, plan, 1)
    }

    fn pools(thresholds: Option<Thresholds>) -> Pools {
        Pools::new(vec![broken_pool()], thresholds)
    }

    #[test]
    fn refill_pauses_under_pressure_and_resumes_when_it_drops() {
        let high = Pressure {
            cpu: 5.0,
            memory: 50.0,
        };
        let low = Pressure {
            cpu: 5.0,
            memory: 1.0,
        };
        let mut fake = FakePressure {
            samples: vec![high, high, low],
        };
        let mut sup = pools(Some(Thresholds {
            cpu: 80.0,
            memory: 40.0,
        }));

        assert!(!sup.refill(&mut fake, 0));
        assert_eq!(sup.paused.as_deref(), Some("memory pressure 50.0% > 40.0%"));
        assert_eq!((sup.pauses, sup.pools[0].created), (1, 0));

        sup.sampled_at = None; // the next turn samples again
        assert!(!sup.refill(&mut fake, 0));
        assert_eq!(
            (sup.pauses, sup.pools[0].created),
            (1, 0),
            "one pause, counted once"
        );
        assert!(sup
            .status(&|_| 0, &|_| Vec::new(), 0)
            .refill_paused
            .is_some());

        sup.sampled_at = None;
        sup.refill(&mut fake, 0);
        assert_eq!(sup.paused, None);
        // Refilling resumed: a sandbox was attempted (and failed on the missing bind).
        assert_eq!((sup.pools[0].created, sup.pools[0].failures), (1, 1));
        let status = sup.status(&|_| 0, &|_| Vec::new(), 0);
        assert_eq!((status.refill_paused, status.refill_pauses), (None, 1));
        assert_eq!(status.memory_pressure, Some(1.0));
    }

    #[test]
    fn without_psi_awareness_pressure_is_not_read() {
        let mut fake = FakePressure {
            samples: vec![Pressure {
                cpu: 99.0,
                memory: 99.0,
            }],
        };
        let mut sup = pools(None);
        sup.refill(&mut fake, 0);
        assert_eq!(sup.paused, None);
        assert_eq!(sup.pools[0].created, 1);
        assert_eq!(sup.status(&|_| 0, &|_| Vec::new(), 0).memory_pressure, None);
    }

    /// Under sustained load a pooled profile ran at 0.95x the runs/s of cold ones: each
    /// run took a sandbox and paid for a refill on top. Saturated, nothing refills.
    #[test]
    fn a_saturated_engine_refills_nothing_a_busy_one_only_a_pool_running_low() {
        let mut pool = broken_pool();
        pool.target = 4;
        let now = Instant::now();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Load::of(0, None), Load::Idle);
        assert_eq!(Load::of(cpus, None), Load::Saturated);
        if cpus > 1 {
            assert_eq!(Load::of(1, Some(0.5)), Load::Busy);
            assert_eq!(Load::of(1, Some(0.02)), Load::Saturated, "no core to spare");
        }
        assert!(pool.wants(Load::Idle, now));
        assert!(pool.wants(Load::Busy, now), "empty: below half");
        assert!(!pool.wants(Load::Saturated, now));
        let mut fake = FakePressure { samples: vec![] };
        let mut sup = Pools::new(vec![pool], None);
        assert!(!sup.refill(&mut fake, cpus));
        assert_eq!(sup.pools[0].created, 0, "no refill while saturated");
        sup.refill(&mut fake, 0);
        assert_eq!(sup.pools[0].created, 1, "idle again: it refills");
    }

    #[test]
    fn demand_follows_the_arrival_rate_between_the_floor_and_the_ceiling() {
        let t0 = Instant::now();
        let mut d = Demand::new(8, t0);
        assert_eq!(d.want(t0, POOL_FLOOR, 8), 8, "a new pool starts full");
        // Nobody asks for two minutes: down to the floor.
        assert_eq!(
            d.want(t0 + Duration::from_secs(120), POOL_FLOOR, 8),
            POOL_FLOOR
        );
        // 100 runs a second, each sandbox taking 20 ms to build: two in the making at
        // any time, doubled for bursts.
        for _ in 0..10 {
            d.built(Duration::from_millis(20));
        }
        let mut now = t0 + Duration::from_secs(120);
        for _ in 0..90 {
            for i in 0..100 {
                d.arrive(now + Duration::from_millis(i * 10));
            }
            now += Duration::from_secs(1);
        }
        let rate = d.rate_at(now);
        assert!((95.0..=105.0).contains(&rate), "{rate}");
        let want = d.want(now, POOL_FLOOR, 8);
        assert!((4..=6).contains(&want), "{want} at {rate}/s");
        // More demand than the ceiling allows: the ceiling.
        assert_eq!(d.want(now, POOL_FLOOR, 3), 3);
        // --pool-floor: never fewer than asked, even idle.
        assert_eq!(d.want(now + Duration::from_secs(600), 4, 8), 4);
        // And it decays again: one half-life halves the rate.
        let later = d.rate_at(now + Duration::from_secs(HALF_LIFE_S as u64 + 1));
        assert!((later - rate / 2.0).abs() < rate * 0.1, "{later} vs {rate}");
    }

    #[test]
    fn repeated_failures_back_off() {
        let mut fake = FakePressure { samples: vec![] };
        let mut sup = pools(None);
        for _ in 0..3 {
            sup.refill(&mut fake, 0);
        }
        assert_eq!(sup.pools[0].failures, 3);
        assert!(sup.pools[0].backoff_until.is_some());
        // Backing off: no attempt right away.
        assert!(!sup.refill(&mut fake, 0));
        assert_eq!(sup.pools[0].created, 3);
    }

    #[test]
    fn pools_are_profiles_on_the_host_root_or_on_an_image() {
        let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pools = pools_for(
            &strings(&["default"]),
            &strings(&["default:alpine", "default", "minimal:python:3.12-slim"]),
            &strings(&["minimal"]),
            3,
            POOL_FLOOR,
        )
        .unwrap();
        let shown: Vec<String> = pools.iter().map(|p| format!("{p} x{}", p.size)).collect();
        // Sorted, each once; the first `:` ends the profile, the image keeps the rest.
        assert_eq!(
            shown,
            [
                "default x3",
                "default:alpine x3",
                "minimal x3",
                "minimal:python:3.12-slim x3"
            ]
        );
        // --zygote PROFILE: that profile's pool on the host root forks its runs.
        let forked: Vec<String> = pools
            .iter()
            .filter(|p| p.zygote)
            .map(|p| p.to_string())
            .collect();
        assert_eq!(forked, ["minimal"]);
        assert_eq!(pools[3].image.as_deref(), Some("python:3.12-slim"));

        for bad in [":alpine", "default:", ""] {
            let e = pools_for(&[], &strings(&[bad]), &[], 1, POOL_FLOOR).unwrap_err();
            assert!(e.to_string().contains("PROFILE:IMAGE"), "{bad:?}: {e}");
        }
        assert!(pools_for(&[], &strings(&["nope:alpine"]), &[], 1, POOL_FLOOR).is_err());
        // Neither flag: the built-in profiles that ask for a pool, on the host root.
        let defaults = pools_for(&[], &[], &[], 2, POOL_FLOOR).unwrap();
        assert!(!defaults.is_empty());
        assert!(defaults.iter().all(|p| p.image.is_none()));
    }
}
