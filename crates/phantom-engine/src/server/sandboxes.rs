//! Persistent sandboxes in the engine: create (a keeper forked, its report awaited
//! among the other events), exec (a command joined into the sandbox, watched like a
//! run), destroy (the init killed, the keeper awaited with a deadline), and the quick
//! answers — list, get, metrics, a workspace fd.
//!
//! Every lookup names the principal's owner: another owner's sandbox is "not found",
//! exactly like one that does not exist.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use phantom_api::access::{Owner, Principal};
use phantom_api::choice::{ProcessSignal, SandboxStatus, StartKind};
use phantom_api::engine::{
    CreateCall, Created, ExecCall, Failure, FailureKind, Reply, Request, SandboxUsage, Started,
};
use phantom_api::request::{CreateRequest, Field, FieldError, Limits};
use phantom_api::{SandboxInfo, SandboxMetrics};
use phantom_linux::cgroup::{Layout, SandboxCgroup};
use phantom_linux::process::{self, ExitStatus};
use phantom_state::Record;
use rustix::fs::{flock, FlockOperation};

use super::run::ReportBase;
use super::{reply, Engine, Slot};
use crate::channel::{self, FromInit};
use crate::error::not_found;
use crate::init::ChildPayload;
use crate::prepare::{self, api_mode, payload_context, Ask, Policy};
use crate::sandbox::exec::{check_usable, join, namespaces_from_keeper, Joined, Joining};
use crate::sandbox::processes;
use crate::sandbox::{self, keeper, now_s, plan_hash, validate_name};
use crate::spawn::SandboxStatus as Status;
use crate::EngineError;

fn io<'a>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// A command in flight in a persistent sandbox.
pub(super) struct ExecJob {
    client: OwnedFd,
    client_open: bool,
    joined: Joined,
    chan_open: bool,
    deadline: Instant,
    timed_out: bool,
    status: Status,
    replied: bool,
    /// Held shared while the command runs: the keeper takes it exclusively to decide
    /// that the sandbox is idle.
    _lock: File,
    cgroup: Option<SandboxCgroup>,
    oom_before: u64,
    base: ReportBase,
    started: Instant,
}

/// A sandbox whose keeper is starting it.
pub(super) struct CreateJob {
    /// Who asked; none for a spare (`spare` then names its pool).
    pub client: Option<OwnedFd>,
    pub spare: Option<usize>,
    report: OwnedFd,
    pub deadline: Instant,
    id: String,
    dir: std::path::PathBuf,
    warnings: Vec<String>,
}

/// Sandboxes being destroyed, one after the other.
pub(super) struct DestroyJob {
    pub client: OwnedFd,
    queue: VecDeque<Record>,
    /// The one under way, its keeper's pidfd and how long we wait for it.
    current: Option<(Record, OwnedFd, Instant)>,
    done: Vec<SandboxInfo>,
    /// DestroyAll: answer with the names.
    all: bool,
}

/// Whose sandboxes a list or destroy-all reaches.
pub(super) enum Scope<'a> {
    /// The principal's own.
    Owner(&'a Owner),
    /// Every owner's: the local operator only.
    Everyone,
}

impl<'a> Scope<'a> {
    pub(super) fn new(
        principal: &'a Principal,
        every_owner: bool,
    ) -> Result<Scope<'a>, EngineError> {
        match (every_owner, &principal.owner) {
            (false, owner) => Ok(Scope::Owner(owner)),
            (true, Owner::Local) => Ok(Scope::Everyone),
            (true, Owner::Key(_) | Owner::Spare) => Err(EngineError::Request(Failure::new(
                FailureKind::Forbidden,
                "only the local operator reaches every owner's sandboxes",
            ))),
        }
    }

    fn owner(&self) -> Option<&'a Owner> {
        match self {
            Scope::Owner(owner) => Some(owner),
            Scope::Everyone => None,
        }
    }
}

/// The principal's record named `name`: "not found" for a name that does not exist
/// and for another owner's alike.
fn lookup(engine: &mut Engine, owner: &Owner, name: &str) -> Result<Record, EngineError> {
    validate_name(name)?;
    engine
        .state()?
        .get(owner, name)?
        .ok_or_else(|| not_found(format!("no sandbox named `{name}`")))
}

impl Engine {
    pub(super) fn start_exec(
        &mut self,
        call: ExecCall,
        fds: Vec<OwnedFd>,
        conn: &OwnedFd,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let ExecCall {
            principal,
            name,
            request,
            stdin,
            term,
        } = call;
        let background = request.background;
        let [stdin, stdout, stderr] = if background {
            // A background command's stdio is /dev/null (no fds came: see fd_names).
            let null = || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map(OwnedFd::from)
                    .map_err(io("open", std::path::Path::new("/dev/null")))
            };
            [null()?, null()?, null()?]
        } else {
            let mut fds = fds.into_iter();
            let stdin = stdin.then(|| fds.next()).flatten();
            let (Some(stdout), Some(stderr)) = (fds.next(), fds.next()) else {
                unreachable!("counted by dispatch");
            };
            super::run::payload_stdio(stdin, stdout, stderr)?
        };
        let record = lookup(self, &principal.owner, &name)?;
        check_usable(&record)?;
        let program = request.program()?;
        // The plan again, from the request the sandbox was created with: its fences
        // must be the ones the sandbox was made for.
        let create = &record.request;
        let limits = Limits {
            timeout: request.timeout.clone().or(create.limits.timeout.clone()),
            max_output: request
                .max_output
                .clone()
                .or(create.limits.max_output.clone()),
            ..create.limits.clone()
        };
        let policy = Policy::of(
            create.profile.as_deref(),
            create.policy_file.as_deref(),
            phantom_api::DEFAULT_PROFILE,
        )?;
        let prepared = prepare::prepare(
            Ask {
                principal: &principal,
                policy,
                limits: &limits,
                image: create.image.as_deref(),
                program: Some(&program),
                env: &request.env,
                cwd: request.cwd.as_deref(),
                workspace: None,
                exec: true,
            },
            &mut self.cache,
        )?;
        let plan = prepared.plan();
        if plan_hash(plan) != record.plan_hash {
            return Err(EngineError::Usage(format!(
                "the policy of sandbox `{name}` changed since it was created; its mounts were made for the old one. Destroy it and create it again"
            )));
        }
        let lock_path = record.dir.join("exec.lock");
        let lock = File::open(&lock_path).map_err(io("open", &lock_path))?;
        // Never wait here: the keeper holds it exclusively only while it retires the
        // sandbox.
        if flock(&lock, FlockOperation::NonBlockingLockShared).is_err() {
            return Err(EngineError::Usage(format!(
                "sandbox `{name}` is being retired (idle or at the end of its life)"
            )));
        }
        // Re-read: the keeper may have retired it meanwhile.
        let record = lookup(self, &principal.owner, &name)?;
        check_usable(&record)?;
        drop(crate::sandbox::exec::open_init(&record)?);
        let namespaces = namespaces_from_keeper(&record)?;
        self.state()?.touch(&record.id, now_s())?;
        let cgroup = SandboxCgroup::open(Layout::cached(), &record.id).ok();
        let oom_before = cgroup.as_ref().map_or(0, |c| c.oom_kills());
        let ctx = payload_context(
            &prepared.command,
            plan,
            &record.workspace(),
            term.as_deref(),
            [Some(stdin), Some(stdout), Some(stderr)],
            None,
            cgroup.is_none(),
        )?;
        let joined = match join(
            namespaces,
            cgroup.as_ref(),
            ChildPayload::Ready(ctx),
            background,
        )? {
            Joining::Watched(joined) => joined,
            Joining::Background(pid) => {
                // Nothing to watch: the sandbox's init reaps it.
                reply(conn, &Reply::Spawned { pid });
                return Ok(());
            }
        };
        let client = conn
            .try_clone()
            .map_err(io("dup", std::path::Path::new("client")))?;
        let started_reply = Reply::Started(Box::new(Started {
            sandbox_id: record.id.clone(),
            start: StartKind::Exec,
            output_limit: prepared.output_limit,
            timeout_ms: plan.limits.wall_timeout_ms,
            memory_bytes: plan.limits.memory_bytes,
            warnings: prepared.warnings.clone(),
            not_warm: None,
            compile_ms: prepared.compile_ms,
            load_allowance_ms: 0,
        }));
        let client_open = reply(&client, &started_reply);
        if !client_open {
            joined.kill();
        }
        self.jobs.push(super::Job::Exec(Box::new(ExecJob {
            client,
            client_open,
            joined,
            chan_open: true,
            deadline: started + Duration::from_millis(plan.limits.wall_timeout_ms),
            timed_out: false,
            status: Status::default(),
            replied: false,
            _lock: lock,
            cgroup,
            oom_before,
            base: ReportBase {
                sandbox_id: record.id.clone(),
                profile: plan.profile.clone(),
                mode: plan.mode,
                seccomp_programs: plan.seccomp.len(),
                host_uid: crate::ids::sandbox_host_ids().0,
                idmapped: process::euid() == 0,
                start: StartKind::Exec,
                warnings: prepared.warnings.clone(),
            },
            started,
        })));
        Ok(())
    }

    pub(super) fn start_create(
        &mut self,
        call: CreateCall,
        conn: &OwnedFd,
    ) -> Result<(), EngineError> {
        let CreateCall { principal, request } = call;
        validate_name(&request.name)?;
        let idle = sandbox::seconds(
            Field::TimeoutIdle,
            request.timeout_idle.as_ref(),
            sandbox::DEFAULT_IDLE_TIMEOUT,
        )?;
        let lifetime = sandbox::seconds(
            Field::MaxLifetime,
            request.max_lifetime.as_ref(),
            sandbox::DEFAULT_MAX_LIFETIME,
        )?;
        let policy = Policy::of(
            request.profile.as_deref(),
            request.policy_file.as_deref(),
            phantom_api::DEFAULT_PROFILE,
        )?;
        let prepared = prepare::prepare(
            Ask {
                principal: &principal,
                policy,
                limits: &request.limits,
                image: request.image.as_deref(),
                program: None,
                env: &Default::default(),
                cwd: None,
                workspace: None,
                exec: false,
            },
            &mut self.cache,
        )?;
        let plan = prepared.plan();
        if plan.mode == phantom_policy::Mode::Direct {
            return Err(FieldError::with_value(
                    Field::Mode,
                    "direct",
                    "a persistent sandbox needs namespaces to keep: direct mode has none; use sandbox or hardened",
                )
                .into());
        }
        // The snapshot must exist, and be the principal's, before anything is recorded.
        if let Some(tag) = &request.from_snapshot {
            let store = phantom_store::SnapshotStore::open_default()?;
            match store.info(&principal.owner, tag) {
                Ok(_) => {}
                Err(phantom_store::SnapshotError::NotFound(_)) => {
                    return Err(not_found(format!("no snapshot tagged `{tag}`")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // A spare built ahead of demand for the same plan, when there is one: the
        // create is then a change of owner (the fences are the plan's, checked above
        // for this principal).
        if let Some((record, spare_warnings)) =
            self.adopt_spare(&principal, &request, &prepared, idle, lifetime)?
        {
            let mut warnings: Vec<String> = Vec::new();
            for w in (prepared.warnings.iter().cloned())
                .chain(unbounded_workspace_warning())
                .chain(spare_warnings)
            {
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
            reply(
                conn,
                &Reply::Created(Box::new(Created {
                    info: record.info(),
                    warnings,
                })),
            );
            return Ok(());
        }
        let client = conn
            .try_clone()
            .map_err(io("dup", std::path::Path::new("client")))?;
        self.launch(
            &principal,
            request,
            &prepared,
            (idle, lifetime),
            Some(client),
            None,
        )
    }

    /// Record a new sandbox, make its workspace and fork its keeper; the create job
    /// answers `client` (or, for a spare, fills pool `spare`) when the keeper reports.
    pub(super) fn launch(
        &mut self,
        principal: &Principal,
        request: CreateRequest,
        prepared: &prepare::Prepared,
        (idle, lifetime): (u64, u64),
        client: Option<OwnedFd>,
        spare: Option<usize>,
    ) -> Result<(), EngineError> {
        let plan = prepared.plan();
        let state = self.state()?;
        let id = phantom_state::ids::new_sandbox_id();
        let dir = state.dir().join("sandboxes").join(&id);
        let state_dir = state.dir().to_path_buf();
        let now = now_s();
        let record = Record {
            owner: principal.owner.clone(),
            name: request.name.clone(),
            id: id.clone(),
            status: SandboxStatus::Starting,
            reason: None,
            request: request.clone(),
            profile: plan.profile.clone(),
            mode: api_mode(plan.mode),
            plan_hash: plan_hash(plan),
            dir: dir.clone(),
            init_pid: 0,
            init_start: 0,
            keeper_pid: 0,
            keeper_start: 0,
            socket: std::path::PathBuf::new(),
            created: now,
            last_used: now,
            idle_timeout_s: idle,
            max_lifetime_s: lifetime,
        };
        state.insert(&record)?;
        // SQLite's locks belong to a process and its bookkeeping of them does not
        // survive fork: the keeper opens the database itself, so ours is closed
        // before it is forked (and opened again on next use).
        self.state = None;
        let started = (|| {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io("create", &dir))?;
            let workspace = record.workspace();
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&workspace)
                .map_err(io("create", &workspace))?;
            mount_workspace(&workspace, crate::spawn::workspace_bytes(plan))?;
            let lock = dir.join("exec.lock");
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&lock)
                .map_err(io("create", &lock))?;
            sandbox::fork_keeper(keeper::Keeper {
                id: id.clone(),
                plan: plan.clone(),
                image: prepared.image.clone(),
                workspace: workspace.display().to_string(),
                state_dir,
                lock_path: lock,
                log_path: dir.join("keeper.log"),
                test_resolve: prepared.test_resolve.clone(),
                restore: match &request.from_snapshot {
                    Some(tag) => Some(keeper::Restore {
                        store: phantom_store::SnapshotStore::default_dir()?,
                        owner: principal.owner.clone(),
                        tag: tag.clone(),
                    }),
                    None => None,
                },
            })
        })();
        let report = match started {
            Ok(report) => report,
            Err(e) => {
                if let Ok(state) = self.state() {
                    let _ = state.delete(&id);
                }
                let _ = sandbox::force_remove(&dir);
                return Err(e);
            }
        };
        self.jobs.push(super::Job::Create(CreateJob {
            client,
            spare,
            report,
            deadline: Instant::now() + sandbox::CREATE_TIMEOUT,
            id,
            dir,
            warnings: prepared
                .warnings
                .iter()
                .cloned()
                .chain(unbounded_workspace_warning())
                .collect(),
        }));
        Ok(())
    }

    /// A keeper reported (or its deadline passed): answer the create.
    pub(super) fn finish_create(&mut self, job: CreateJob) {
        let outcome = if channel::readable(job.report.as_fd(), Duration::ZERO) {
            sandbox::keeper_report(&job.report)
        } else {
            Err(EngineError::Setup(format!(
                "the sandbox did not start within {}s",
                sandbox::CREATE_TIMEOUT.as_secs()
            )))
        };
        let answer = match outcome {
            Ok(keeper_warnings) => match self.state().and_then(|s| Ok(s.get_by_id(&job.id)?)) {
                Ok(Some(record)) => {
                    let mut warnings = job.warnings.clone();
                    warnings.extend(keeper_warnings);
                    warnings.dedup();
                    Reply::Created(Box::new(Created {
                        info: record.info(),
                        warnings,
                    }))
                }
                Ok(None) => Reply::Error(Failure::new(
                    FailureKind::Failed,
                    "the sandbox was destroyed while it started",
                )),
                Err(e) => Reply::Error(e.to_failure()),
            },
            Err(e) => {
                if let Ok(state) = self.state() {
                    let _ = state.delete(&job.id);
                }
                let _ = sandbox::force_remove(&job.dir);
                Reply::Error(e.to_failure())
            }
        };
        match (&job.client, job.spare) {
            (Some(client), _) => {
                reply(client, &answer);
            }
            (None, Some(pool)) => self.spare_started(pool, &job.id, answer),
            (None, None) => {}
        }
    }

    pub(super) fn start_destroy(
        &mut self,
        principal: &Principal,
        name: &str,
        conn: &OwnedFd,
    ) -> Result<(), EngineError> {
        let record = lookup(self, &principal.owner, name)?;
        self.queue_destroy([record].into(), false, conn)
    }

    /// Destroy every sandbox in `scope`; answer with their names.
    pub(super) fn start_destroy_all(
        &mut self,
        scope: Scope<'_>,
        conn: &OwnedFd,
    ) -> Result<(), EngineError> {
        let mut records = self.state()?.list(scope.owner())?;
        // Spares are the engine's: it destroys them when it stops.
        records.retain(|r| r.owner != Owner::Spare);
        self.queue_destroy(records.into(), true, conn)
    }

    fn queue_destroy(
        &mut self,
        queue: VecDeque<Record>,
        all: bool,
        conn: &OwnedFd,
    ) -> Result<(), EngineError> {
        let job = DestroyJob {
            client: conn
                .try_clone()
                .map_err(io("dup", std::path::Path::new("client")))?,
            queue,
            current: None,
            done: Vec::new(),
            all,
        };
        self.continue_destroy(job);
        Ok(())
    }

    /// Destroy the next sandbox of `job` (the current one's keeper exited, or its
    /// deadline passed); answer once none is left.
    pub(super) fn continue_destroy(&mut self, mut job: DestroyJob) {
        if let Some((record, keeper, _)) = job.current.take() {
            if !channel::readable(keeper.as_fd(), Duration::ZERO) {
                // The keeper did not clean up in time: it goes, and we clean up.
                let _ = process::pidfd_kill(keeper.as_fd(), libc::SIGKILL);
            }
            match self.remove_sandbox(&record) {
                Ok(info) => job.done.push(info),
                Err(e) => {
                    reply(&job.client, &Reply::Error(e.to_failure()));
                    return;
                }
            }
        }
        while let Some(record) = job.queue.pop_front() {
            match self.kill_for_destroy(&record) {
                // The keeper reaps the init and removes its cgroup and run directory;
                // we wait for it among the other events.
                Some(pidfd) => {
                    let deadline = Instant::now() + sandbox::KEEPER_EXIT_TIMEOUT;
                    job.current = Some((record, pidfd, deadline));
                    self.jobs.push(super::Job::Destroy(Box::new(job)));
                    return;
                }
                None => match self.remove_sandbox(&record) {
                    Ok(info) => job.done.push(info),
                    Err(e) => {
                        reply(&job.client, &Reply::Error(e.to_failure()));
                        return;
                    }
                },
            }
        }
        let answer = if job.all {
            Reply::Destroyed(job.done.into_iter().map(|i| i.name).collect())
        } else {
            match job.done.pop() {
                Some(info) => Reply::Sandbox(Box::new(info)),
                None => Reply::Error(Failure::new(FailureKind::Failed, "nothing was destroyed")),
            }
        };
        reply(&job.client, &answer);
    }

    /// Mark `record` as being destroyed and kill its init; its keeper's pidfd when the
    /// keeper lives (it then reaps the init and removes the cgroup and run directory).
    pub(super) fn kill_for_destroy(&mut self, record: &Record) -> Option<OwnedFd> {
        if let Ok(state) = self.state() {
            let _ = state.set_destroying(&record.id);
        }
        // Killing pid 1 of the namespace kills every process in it.
        if let Ok(init) = crate::sandbox::exec::open_init(record) {
            let _ = process::pidfd_kill(init.as_fd(), libc::SIGKILL);
        }
        record
            .keeper_alive()
            .then(|| process::pidfd_open(record.keeper_pid).ok())
            .flatten()
            .filter(|_| process::start_time(record.keeper_pid) == Some(record.keeper_start))
    }

    /// Clean up what a dead keeper could not, and forget the sandbox.
    pub(super) fn remove_sandbox(&mut self, record: &Record) -> Result<SandboxInfo, EngineError> {
        let mut info = record.info();
        let layout = Layout::cached();
        if let Ok(mut cg) = SandboxCgroup::open(layout, &record.id) {
            cg.kill_all();
            cg.remove();
        }
        if let Ok(base) = crate::workspace::state_base() {
            crate::workspace::collect_stale(&base, layout);
        }
        sandbox::force_remove(&record.dir)?;
        self.state()?.delete(&record.id)?;
        info.status = SandboxStatus::Destroyed;
        info.reason = None;
        Ok(info)
    }

    /// Every owner's sandboxes, with the memory of the running ones.
    pub(super) fn census(&mut self) -> Result<Reply, EngineError> {
        let layout = Layout::cached();
        let records = self.state()?.list(None)?;
        Ok(Reply::Census(
            records
                .iter()
                // Spares are on top of the limits (`--persistent-pool` sizes them).
                .filter(|r| r.owner != Owner::Spare)
                .map(|r| {
                    let (status, _) = r.effective_status();
                    SandboxUsage {
                        id: r.id.clone(),
                        owner: r.owner.clone(),
                        name: r.name.clone(),
                        status,
                        memory_bytes: (status == SandboxStatus::Running)
                            .then(|| SandboxCgroup::open(layout, &r.id).ok())
                            .flatten()
                            .and_then(|cg| cg.stats().memory_bytes),
                    }
                })
                .collect(),
        ))
    }

    pub(super) fn list(&mut self, scope: Scope<'_>) -> Result<Reply, EngineError> {
        let records = self.state()?.list(scope.owner())?;
        Ok(Reply::Sandboxes(
            records
                .iter()
                .filter(|r| r.owner != Owner::Spare)
                .map(Record::info)
                .collect(),
        ))
    }

    pub(super) fn get(&mut self, principal: &Principal, name: &str) -> Result<Reply, EngineError> {
        Ok(Reply::Sandbox(Box::new(
            lookup(self, &principal.owner, name)?.info(),
        )))
    }

    /// A sample of the sandbox's resource use, from its cgroup (the caller computes
    /// rates from two samples).
    pub(super) fn metrics(
        &mut self,
        principal: &Principal,
        name: &str,
    ) -> Result<Reply, EngineError> {
        let record = lookup(self, &principal.owner, name)?;
        check_usable(&record)?;
        let cgroup = SandboxCgroup::open(Layout::cached(), &record.id).map_err(|e| {
            EngineError::Unsupported {
                what: format!("metrics of {name}"),
                why: format!("the sandbox has no cgroup to read ({e})"),
                hint: "cgroups need root (or a delegated cgroup v2 subtree); create the sandbox as root".into(),
            }
        })?;
        let st = cgroup.stats();
        Ok(Reply::Metrics(Box::new(SandboxMetrics {
            name: name.to_string(),
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            cpu_usage_ms: st.cpu_usage_ns.map(|ns| ns as f64 / 1e6),
            cpu_cores: None,
            memory_bytes: st.memory_bytes,
            memory_peak_bytes: st.memory_peak_bytes,
            memory_limit_bytes: st.memory_limit_bytes,
            pids: st.pids,
            pids_limit: st.pids_limit,
            io_read_bytes: st.io_read_bytes,
            io_write_bytes: st.io_write_bytes,
            oom_kills: st.oom_kills,
        })))
    }

    /// The pid namespace of the principal's running sandbox `name`, as an id to compare
    /// /proc entries with.
    fn pid_namespace(
        &mut self,
        principal: &Principal,
        name: &str,
    ) -> Result<(u64, u64), EngineError> {
        let record = lookup(self, &principal.owner, name)?;
        check_usable(&record)?;
        let namespaces = namespaces_from_keeper(&record)?;
        let ix = process::NAMESPACE_FILES
            .iter()
            .position(|n| *n == "pid")
            .expect("pid is one of the namespaces");
        processes::namespace_id(namespaces[ix].as_fd()).ok_or_else(|| {
            EngineError::Setup(format!(
                "sandbox `{name}`: its pid namespace cannot be read"
            ))
        })
    }

    /// The processes in the principal's sandbox `name` (see [`processes`]).
    pub(super) fn list_processes(
        &mut self,
        principal: &Principal,
        name: &str,
    ) -> Result<Reply, EngineError> {
        let ns = self.pid_namespace(principal, name)?;
        Ok(Reply::Processes(
            processes::list(ns).into_iter().map(|f| f.info).collect(),
        ))
    }

    /// Signal the process the principal's sandbox `name` numbers `pid`.
    pub(super) fn kill_process(
        &mut self,
        principal: &Principal,
        name: &str,
        pid: i32,
        signal: ProcessSignal,
    ) -> Result<Reply, EngineError> {
        // The sandbox first: another owner's is "not found", whatever the pid.
        let ns = self.pid_namespace(principal, name)?;
        if pid == 1 {
            return Err(EngineError::Usage(format!(
                "pid 1 is sandbox `{name}`'s init, which keeps it alive: to end everything in it, `phantom destroy {name}`"
            )));
        }
        let pidfd = processes::open(ns, pid).ok_or_else(|| {
            not_found(format!(
                "no process {pid} in sandbox `{name}` (`phantom ps {name}` lists them)"
            ))
        })?;
        if !processes::signal(&pidfd, signal.number()) {
            return Err(not_found(format!(
                "process {pid} in sandbox `{name}` is gone"
            )));
        }
        Ok(Reply::Done)
    }

    /// Hand the read ends of an exec's output pipes to the keeper of the principal's
    /// sandbox `name` (see [`crate::sandbox::exec::adopt_output`]). A sandbox that is
    /// gone needs nothing: its processes went with it, and the pipes close here.
    pub(super) fn detach(
        &mut self,
        principal: &Principal,
        name: &str,
        pipes: Vec<OwnedFd>,
    ) -> Result<Reply, EngineError> {
        let record = lookup(self, &principal.owner, name)?;
        if check_usable(&record).is_ok() {
            crate::sandbox::exec::adopt_output(&record, pipes)?;
        }
        Ok(Reply::Done)
    }

    /// The sandbox's workspace directory, opened `O_PATH` (a dead sandbox's too: its
    /// files can still be copied out).
    pub(super) fn workspace(
        &mut self,
        principal: &Principal,
        name: &str,
    ) -> Result<OwnedFd, EngineError> {
        use rustix::fs::{Mode, OFlags};
        let record = lookup(self, &principal.owner, name)?;
        let workspace = record.workspace();
        rustix::fs::open(
            &workspace,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open", &workspace)(e.into()))
    }
}

impl ExecJob {
    pub(super) fn fds(&self) -> Vec<(BorrowedFd<'_>, Slot)> {
        let mut fds = vec![(self.joined.pidfd.as_fd(), Slot::Exited)];
        if self.chan_open {
            fds.push((self.joined.chan.as_fd(), Slot::Chan));
        }
        if self.client_open {
            fds.push((self.client.as_fd(), Slot::Client));
        }
        fds
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        (!self.timed_out).then_some(self.deadline)
    }

    /// One of its fds is ready; returns whether the command is done.
    pub(super) fn event(&mut self, slot: Slot) -> bool {
        match slot {
            Slot::Exited => return true,
            Slot::Chan => {
                match channel::recv::<FromInit>(
                    self.joined.chan.as_fd(),
                    channel::FROM_INIT_MAX,
                    0,
                    "sandbox",
                ) {
                    Ok((message, _)) => {
                        self.status.record(message);
                    }
                    Err(_) => self.chan_open = false,
                }
            }
            Slot::Client => {
                match channel::recv_message::<Request>(self.client.as_fd(), 0, "client") {
                    Ok((Request::Signal { signal }, _)) => {
                        if signal == libc::SIGKILL {
                            self.joined.kill();
                        } else {
                            self.joined.signal(signal);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.client_open = false;
                        self.joined.kill();
                    }
                }
            }
            Slot::Report | Slot::Door => {}
        }
        false
    }

    pub(super) fn on_deadline(&mut self, now: Instant) {
        if !self.timed_out && now >= self.deadline {
            self.timed_out = true;
            self.joined.kill();
        }
    }

    /// The command exited: reap it and answer. Returns the sandbox's id (its last
    /// use is recorded).
    pub(super) fn finish(mut self) -> String {
        let waited = process::wait4(self.joined.pid, false);
        // Messages sent just before the payload exec'd or exited may still be queued.
        self.status.drain(self.joined.chan.as_fd());
        if self.replied || !self.client_open {
            return self.base.sandbox_id;
        }
        let answer = match (waited, self.status.failure()) {
            (_, Some(failure)) => Reply::Error(failure),
            (Err(e), None) => Reply::Error(EngineError::from(e).to_failure()),
            (Ok(None), None) => Reply::Error(Failure::new(
                FailureKind::Failed,
                "the command was not reaped",
            )),
            (Ok(Some((_, status, usage))), None) => {
                let exit = if self.timed_out {
                    ExitStatus::Signaled(libc::SIGKILL)
                } else {
                    status
                };
                let cg = self.cgroup.as_ref();
                Reply::Finished(Box::new(self.base.report(
                    &self.status,
                    self.timed_out,
                    exit,
                    usage,
                    self.started.elapsed(),
                    cg.is_some_and(|c| c.oom_kills() > self.oom_before),
                    cg.map_or("none", |c| c.version()),
                    // A persistent sandbox's proxy belongs to its keeper, which logs
                    // each decision with the sandbox id.
                    None,
                )))
            }
        };
        self.replied = true;
        reply(&self.client, &answer);
        self.base.sandbox_id
    }

    /// Kill the command and tell the client why (the engine is going away).
    pub(super) fn abort(mut self, why: &str) {
        self.joined.kill();
        if self.client_open && !self.replied {
            reply(
                &self.client,
                &Reply::Error(Failure::new(FailureKind::Unavailable, why)),
            );
            self.replied = true;
        }
        let _ = self.finish();
    }
}

impl CreateJob {
    pub(super) fn fds(&self) -> Vec<(BorrowedFd<'_>, Slot)> {
        vec![(self.report.as_fd(), Slot::Report)]
    }

    /// Wait (until its deadline) for the keeper's report, without reading it.
    pub(super) fn wait_report(&self) {
        let left = self.deadline.saturating_duration_since(Instant::now());
        channel::readable(self.report.as_fd(), left);
    }
}

impl DestroyJob {
    pub(super) fn fds(&self) -> Vec<(BorrowedFd<'_>, Slot)> {
        self.current
            .iter()
            .map(|(_, keeper, _)| (keeper.as_fd(), Slot::Report))
            .collect()
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.current.as_ref().map(|(_, _, d)| *d)
    }
}

/// A persistent sandbox's workspace is never unbounded host disk: a root engine mounts
/// a tmpfs there, half as large as the sandbox's memory limit
/// ([`crate::spawn::workspace_bytes`]) — the pages its payload writes are charged to
/// its memory cgroup, and a full workspace is an ENOSPC. An engine without the privilege to mount on the host keeps the
/// directory on disk, bounded per file only (RLIMIT_FSIZE), and the create says so.
fn mount_workspace(workspace: &std::path::Path, bytes: u64) -> Result<(), EngineError> {
    if phantom_linux::process::euid() != 0 {
        return Ok(());
    }
    phantom_linux::mount::tmpfs(
        workspace,
        &format!("mode=0755,size={bytes}"),
        phantom_linux::mount::Attrs::default(),
    )
    .map_err(EngineError::Sys)
}

/// The warning for a persistent sandbox whose workspace stays on host disk.
pub(super) fn unbounded_workspace_warning() -> Option<String> {
    (phantom_linux::process::euid() != 0).then(|| {
        "the workspace is a directory on host disk, bounded per file only (resources.fsize): an unprivileged engine cannot mount a size-limited tmpfs for it; run phantom-supervisor as root to bound it by the memory limit".to_string()
    })
}
