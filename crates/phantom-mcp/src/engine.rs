//! The tools' work, through the engine client: runs and commands (warm from the
//! server's own engine's pools when they serve the profile, else cold), with
//! cancellation and progress; persistent sandboxes; files through the workspace fd the
//! engine hands to the sandbox's owner. This server never forks a sandbox: its engine
//! process (started before any thread) does.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phantom_api::access::Principal;
use phantom_api::engine::{Failure, FailureKind};
use phantom_api::request::{ExecRequest, Quantity, RunRequest};
use phantom_api::RunReport;
use phantom_engine::client::{Output, RunIo, Stdin, Wake};
use phantom_engine::contexts::CodeContexts;
use phantom_engine::EngineClient;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How runs start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Warm from the engine's pools when one serves the profile, else cold.
    Zygote,
    /// Always a fresh sandbox.
    Cold,
}

/// A run or a command a tool asks for.
pub enum Job {
    Run(Box<RunRequest>),
    Exec(String, Box<ExecRequest>),
}

/// Called about once a second with the seconds elapsed since the run began.
pub type Progress = Box<dyn Fn(f64) + Send + Sync>;

/// Whom the tools act for.
#[derive(Debug, Clone)]
pub enum Acting {
    /// Always the same principal: the local user (stdio, loopback HTTP) or the API key
    /// of `--api-key-file` (`phantom-mcp`).
    As(Principal),
    /// The principal the HTTP front end authenticated for each request and put into
    /// the request's extensions (the supervisor's `/mcp/v1/`): a call without one is
    /// refused, and an MCP session stays with the key that opened it.
    PerRequest,
}

/// What the tools share: the engine client, whom they act for, the output cap and the
/// metrics.
pub struct Engine {
    pub mode: Mode,
    pub client: EngineClient,
    pub acting: Acting,
    pub max_output: u64,
    pub metrics: Metrics,
    /// Cancelled when the server stops: every run in flight is killed and cleaned up.
    shutdown: CancellationToken,
    /// Runs in flight.
    active: AtomicUsize,
    /// The code contexts this server's tools made; they end when it stops.
    pub contexts: Arc<CodeContexts>,
}

/// Counts a run in flight for as long as it lives.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Engine {
    pub fn new(mode: Mode, client: EngineClient, acting: Acting, max_output: u64) -> Engine {
        Engine {
            mode,
            client,
            acting,
            max_output,
            metrics: Metrics::default(),
            shutdown: CancellationToken::new(),
            active: AtomicUsize::new(0),
            contexts: Default::default(),
        }
    }

    /// The same, keeping its code contexts in `contexts` (shared with another front
    /// end of the same process).
    pub fn with_contexts(mut self, contexts: Arc<CodeContexts>) -> Engine {
        self.contexts = contexts;
        self
    }

    /// Whether the server is stopping (a context call in flight is interrupted).
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Runs in flight.
    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Kill every run in flight and wait (up to `limit`) until each has ended.
    pub async fn shut_down(&self, limit: Duration) {
        self.shutdown.cancel();
        self.contexts.clear();
        let deadline = Instant::now() + limit;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Run `job` to completion: `ct` cancels it (the sandbox is killed, and the report
    /// still comes back, marked cancelled); `progress` is called about once a second.
    pub async fn run(
        self: &Arc<Self>,
        principal: Principal,
        job: Job,
        ct: CancellationToken,
        progress: Progress,
    ) -> Result<(RunReport, u64), Failure> {
        let started = Instant::now();
        self.active.fetch_add(1, Ordering::SeqCst);
        let _active = Active(&self.active);
        // The output cap of this server, unless the call asks for a smaller one.
        let (job, cap) = match job {
            Job::Run(mut r) => {
                let cap = self.cap(&mut r.options.limits.max_output);
                (Job::Run(r), cap)
            }
            Job::Exec(name, mut r) => {
                let cap = self.cap(&mut r.max_output);
                (Job::Exec(name, r), cap)
            }
        };
        let (request_side, run_side) = UnixStream::pair()
            .map_err(|e| Failure::new(FailureKind::Failed, format!("socketpair: {e}")))?;
        let run_side: OwnedFd = run_side.into();
        let (client, cold) = (self.client.clone(), self.mode == Mode::Cold);
        let shown_as = principal.clone();
        let run = tokio::task::spawn_blocking(move || {
            let io = RunIo {
                stdin: Stdin::Null,
                output: Output::capture(),
                wake: Wake::Cancel(run_side.as_fd()),
                on_started: None,
            };
            match job {
                Job::Run(r) => client.run(principal, *r, cold, io),
                Job::Exec(name, r) => client.exec(principal, &name, *r, io),
            }
        });
        tokio::pin!(run);
        let mut request_side = Some(request_side);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                // Closing our end wakes the run's: it has the engine kill the sandbox,
                // which then answers with the report as usual.
                _ = ct.cancelled(), if request_side.is_some() => { request_side.take(); }
                _ = self.shutdown.cancelled(), if request_side.is_some() => { request_side.take(); }
                _ = tick.tick() => progress(started.elapsed().as_secs_f64()),
            }
        };
        let result =
            result.map_err(|e| Failure::new(FailureKind::Failed, format!("worker failed: {e}")))?;
        match &result {
            Ok(r) => self.metrics.record(
                r.start.as_str(),
                started.elapsed().as_secs_f64() * 1000.0,
                r.cancelled,
                r.timed_out,
            ),
            Err(_) => self.metrics.record_failure(),
        }
        result
            .map(|report| (report, cap))
            .map_err(|f| self.shown(&shown_as, f))
    }

    /// The output cap of a call: what it asked for, at most the server's
    /// `--max-output` (absent: the server's). Set in `asked`; returned in bytes. A
    /// value that does not parse is left for the engine to refuse, naming the field.
    fn cap(&self, asked: &mut Option<Quantity>) -> u64 {
        match asked
            .as_ref()
            .map(|q| phantom_policy::units::parse_bytes(q.as_str()))
        {
            Some(Ok(bytes)) if bytes <= self.max_output => bytes,
            Some(Err(_)) => self.max_output,
            _ => {
                *asked = Some(self.max_output.into());
                self.max_output
            }
        }
    }

    /// A failure as this server's caller may see it: over HTTP with a key (a remote
    /// caller), what went wrong on the host is logged here in full and answered
    /// without its details (host paths, pids), as the HTTP API does.
    pub fn shown(&self, principal: &Principal, f: Failure) -> Failure {
        if !matches!(principal.owner, phantom_api::access::Owner::Key(_)) {
            return f;
        }
        let id = phantom_state::ids::new_sandbox_id();
        match f.for_remote(&id) {
            Some(shown) => {
                eprintln!("phantom-mcp: error {id}: {}", f.for_api());
                shown
            }
            None => f,
        }
    }

    /// Blocking engine work (no run) off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        principal: Principal,
        f: impl FnOnce(&EngineClient, &Principal) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        let client = self.client.clone();
        let shown_as = principal.clone();
        tokio::task::spawn_blocking(move || f(&client, &principal))
            .await
            .map_err(|e| Failure::new(FailureKind::Failed, format!("worker failed: {e}")))?
            .map_err(|f| self.shown(&shown_as, f))
    }
}
