//! Spare persistent sandboxes (`phantom-supervisor --persistent-pool PROFILE`): per
//! pool, a few sandboxes of a built-in profile that are already created — recorded,
//! their workspace mounted, their keeper and init running — and belong to nobody
//! ([`Owner::Spare`]). A create whose plan is the pool's (same profile, limits and
//! fences, no image, policy file or snapshot) adopts one: the record changes owner and
//! name and its clocks start over, which is a write to state.db instead of a
//! keeper's clone3, mounts and pivot_root. The pool then starts another.
//!
//! A spare never ran anything: no request acts for [`Owner::Spare`], so nothing could
//! have been exec'd into it, and it is listed, counted and destroyed with nobody's
//! sandboxes. The engine that made spares destroys them when it stops; one that
//! starts destroys those of an engine that died without doing so.
//!
//! One spare starts at a time, and none while the engine is busy with requests: a
//! spare's keeper is a fork of the engine, and requests come first.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use phantom_api::access::{Grants, Owner, Principal};
use phantom_api::choice::SandboxStatus;
use phantom_api::engine::Reply;
use phantom_api::request::{CreateRequest, Quantity};
use phantom_state::Record;

use super::sandboxes::CreateJob;
use super::{debug, log, Engine};
use crate::channel;
use crate::prepare::{self, Ask, Policy, Prepared};
use crate::sandbox::{self, now_s, plan_hash};
use crate::EngineError;

/// A pool of spare persistent sandboxes: a built-in profile, and how many it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareSpec {
    pub profile: String,
    pub size: usize,
}

/// How long a spare may wait for its owner (its idle timeout and lifetime until it is
/// adopted; an adopted one has the creator's).
const SPARE_LIFETIME: &str = sandbox::DEFAULT_MAX_LIFETIME;

/// Above this many requests in flight the engine starts no spare.
const BUSY: usize = 2;

/// A spare ready to be adopted.
struct Spare {
    id: String,
    /// What its keeper said when it started.
    warnings: Vec<String>,
}

struct SparePool {
    spec: SpareSpec,
    ready: Vec<Spare>,
    /// The fingerprint of the plan its spares are made with (a create of another
    /// plan cannot take one).
    plan_hash: Option<String>,
    failures: u32,
    retry_at: Option<Instant>,
    adopted: u64,
}

#[derive(Default)]
pub(super) struct Spares {
    pools: Vec<SparePool>,
    /// The pool whose spare is starting (one at a time).
    starting: Option<usize>,
    /// Spares named so far: a spare is `spare-<engine pid>-<n>`.
    made: u64,
}

impl Spares {
    pub(super) fn new(specs: &[SpareSpec]) -> Spares {
        Spares {
            pools: specs
                .iter()
                .filter(|s| s.size > 0)
                .map(|spec| SparePool {
                    spec: spec.clone(),
                    ready: Vec::new(),
                    plan_hash: None,
                    failures: 0,
                    retry_at: None,
                    adopted: 0,
                })
                .collect(),
            starting: None,
            made: 0,
        }
    }

    /// `e2b x2` for the start-up line.
    pub(super) fn describe(&self) -> Vec<String> {
        self.pools
            .iter()
            .map(|p| format!("{} x{}", p.spec.profile, p.spec.size))
            .collect()
    }
}

/// The engine pid in a spare's name, `spare-<pid>-<n>`.
fn maker_pid(name: &str) -> Option<u32> {
    name.strip_prefix("spare-")?.split_once('-')?.0.parse().ok()
}

impl Engine {
    /// Start a spare for the first pool below its size, unless one is starting, the
    /// engine is busy, or the pool's last failure asks to wait.
    pub(super) fn refill_spares(&mut self) {
        if self.spares.starting.is_some() || self.jobs.len() > BUSY {
            return;
        }
        let now = Instant::now();
        let Some(p) = self.spares.pools.iter().position(|pool| {
            pool.ready.len() < pool.spec.size && !matches!(pool.retry_at, Some(t) if now < t)
        }) else {
            return;
        };
        if let Err(e) = self.start_spare(p) {
            self.spare_failed(p, &e.to_string());
        }
    }

    fn start_spare(&mut self, p: usize) -> Result<(), EngineError> {
        self.spares.made += 1;
        let request = CreateRequest {
            name: format!("spare-{}-{}", std::process::id(), self.spares.made),
            profile: Some(self.spares.pools[p].spec.profile.clone()),
            timeout_idle: Some(Quantity(SPARE_LIFETIME.into())),
            max_lifetime: Some(Quantity(SPARE_LIFETIME.into())),
            ..CreateRequest::default()
        };
        let principal = Principal {
            owner: Owner::Spare,
            grants: Grants::local(),
        };
        let prepared = spare_plan(self, &principal, &request)?;
        let lifetime = sandbox::seconds(
            phantom_api::request::Field::MaxLifetime,
            request.max_lifetime.as_ref(),
            SPARE_LIFETIME,
        )?;
        self.spares.pools[p].plan_hash = Some(plan_hash(prepared.plan()));
        self.launch(
            &principal,
            request,
            &prepared,
            (lifetime, lifetime),
            None,
            Some(p),
        )?;
        self.spares.starting = Some(p);
        Ok(())
    }

    fn spare_failed(&mut self, p: usize, why: &str) {
        let pool = &mut self.spares.pools[p];
        pool.failures += 1;
        let wait = Duration::from_secs(1 << pool.failures.min(6));
        pool.retry_at = Some(Instant::now() + wait);
        log(format_args!(
            "warning: --persistent-pool {}: a spare sandbox did not start ({why}); trying again in {}s",
            pool.spec.profile,
            wait.as_secs()
        ));
    }

    /// The keeper of pool `p`'s spare `id` reported: it is ready, or it failed.
    pub(super) fn spare_started(&mut self, p: usize, id: &str, answer: Reply) {
        self.spares.starting = None;
        match answer {
            Reply::Created(created) => {
                let pool = &mut self.spares.pools[p];
                pool.failures = 0;
                pool.retry_at = None;
                pool.ready.push(Spare {
                    id: id.to_string(),
                    warnings: created.warnings,
                });
            }
            Reply::Error(f) => self.spare_failed(p, &f.message),
            _ => self.spare_failed(p, "unexpected answer"),
        }
    }

    /// Give `principal` a spare for `request` when one of the same plan is ready: its
    /// record, renamed and owned, and the warnings its keeper gave. None: there is no
    /// such spare (the create starts a sandbox of its own).
    pub(super) fn adopt_spare(
        &mut self,
        principal: &Principal,
        request: &CreateRequest,
        prepared: &Prepared,
        idle: u64,
        lifetime: u64,
    ) -> Result<Option<(Record, Vec<String>)>, EngineError> {
        if request.image.is_some()
            || request.policy_file.is_some()
            || request.from_snapshot.is_some()
        {
            return Ok(None);
        }
        let hash = plan_hash(prepared.plan());
        let Some(p) = self
            .spares
            .pools
            .iter()
            .position(|pool| pool.plan_hash.as_deref() == Some(hash.as_str()))
        else {
            return Ok(None);
        };
        // Oldest first; one that died meanwhile is cleaned up and the next one tried.
        while !self.spares.pools[p].ready.is_empty() {
            let spare = self.spares.pools[p].ready.remove(0);
            let record = self.state()?.get_by_id(&spare.id)?;
            match record {
                Some(r)
                    if r.owner == Owner::Spare
                        && r.effective_status().0 == SandboxStatus::Running => {}
                Some(r) => {
                    self.destroy_now(&r);
                    continue;
                }
                None => continue,
            }
            let adopted = self.state()?.adopt(
                &spare.id,
                &principal.owner,
                &request.name,
                request,
                now_s(),
                idle,
                lifetime,
            );
            match adopted {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    // A name the principal has already: the spare stays a spare.
                    self.spares.pools[p].ready.insert(0, spare);
                    return Err(e.into());
                }
            }
            let Some(record) = self.state()?.get_by_id(&spare.id)? else {
                continue;
            };
            self.spares.pools[p].adopted += 1;
            debug(format_args!(
                "{} adopted spare sandbox {} as `{}`",
                principal.owner, record.id, record.name
            ));
            return Ok(Some((record, spare.warnings)));
        }
        Ok(None)
    }

    /// Destroy `record` now, waiting for its keeper (the engine is starting or
    /// stopping, or the sandbox is a dead spare).
    pub(super) fn destroy_now(&mut self, record: &Record) {
        if let Some(keeper) = self.kill_for_destroy(record) {
            if !channel::readable(keeper.as_fd(), sandbox::KEEPER_EXIT_TIMEOUT) {
                let _ = phantom_linux::process::pidfd_kill(keeper.as_fd(), libc::SIGKILL);
            }
        }
        if let Err(e) = self.remove_sandbox(record) {
            log(format_args!(
                "warning: spare sandbox {}: could not remove it: {e}",
                record.id
            ));
        }
    }

    /// Destroy this engine's spares (it stops), once those still starting reported.
    pub(super) fn destroy_spares(&mut self, starting: Vec<CreateJob>) {
        for job in &starting {
            job.wait_report();
        }
        let ours = std::process::id();
        self.destroy_spares_where(|maker| maker == Some(ours));
    }

    /// Destroy the spares of engines that are gone (this one is starting).
    pub(super) fn destroy_orphan_spares(&mut self) {
        let ours = std::process::id();
        self.destroy_spares_where(|maker| {
            maker.is_none_or(|pid| {
                pid == ours || !std::path::Path::new(&format!("/proc/{pid}")).exists()
            })
        });
    }

    fn destroy_spares_where(&mut self, pick: impl Fn(Option<u32>) -> bool) {
        let Ok(records) = self.state().and_then(|s| Ok(s.list(Some(&Owner::Spare))?)) else {
            return;
        };
        for record in records.iter().filter(|r| pick(maker_pid(&r.name))) {
            self.destroy_now(record);
        }
        for pool in &mut self.spares.pools {
            pool.ready.clear();
        }
    }
}

/// The plan of a spare of `request`'s profile, as any create would prepare it.
fn spare_plan(
    engine: &mut Engine,
    principal: &Principal,
    request: &CreateRequest,
) -> Result<Prepared, EngineError> {
    let policy = Policy::of(
        request.profile.as_deref(),
        None,
        phantom_api::DEFAULT_PROFILE,
    )?;
    let prepared = prepare::prepare(
        Ask {
            principal,
            policy,
            limits: &request.limits,
            image: None,
            program: None,
            env: &Default::default(),
            cwd: None,
            workspace: None,
            exec: false,
        },
        &mut engine.cache,
    )?;
    if prepared.plan().mode == phantom_policy::Mode::Direct {
        return Err(EngineError::Usage(
            "a persistent pool needs namespaces to keep: direct mode has none".into(),
        ));
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::maker_pid;

    #[test]
    fn a_spares_name_says_which_engine_made_it() {
        assert_eq!(maker_pid("spare-4242-7"), Some(4242));
        assert_eq!(maker_pid("spare-x-7"), None);
        assert_eq!(maker_pid("agent-1"), None);
    }
}
