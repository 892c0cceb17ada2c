//! Per-run host state: a locked run directory, and the workspace bound at /workspace
//! (the caller's directory, or a fresh one inside the run directory).
//!
//! Every run holds `<state base>/run-<sandbox id>` (see [`state_base`]) locked (flock)
//! for as long as it lives; a temporary workspace is its `workspace` subdirectory. If an engine
//! is killed before it can clean up, its sandbox dies with it (parent-death signal) but
//! the run directory and the sandbox's cgroup stay behind: the next run finds the
//! directory unlocked and removes both ([`collect_stale`]). No timing guess is involved:
//! an unlocked run directory belongs to no living run.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use phantom_linux::cgroup::{self, Layout};
use rustix::fs::{flock, FlockOperation};

use crate::EngineError;

/// Name prefix of run directories inside [`state_base`].
pub const RUN_PREFIX: &str = "run-";

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The per-user directory holding run directories (and an unprivileged user's
/// supervisor socket), created 0700 on first use: `$XDG_RUNTIME_DIR/phantom` when set,
/// else `/dev/shm/phantom-<uid>` (a tmpfs: run directories are created and removed on
/// every run, and on a disk filesystem that costs a journal commit's worth of latency),
/// else `$TMPDIR/phantom-<uid>`.
///
/// Those names are predictable, and the parent of the last two is writable by everyone:
/// another user can create the directory first (a squat), to receive this user's runs
/// or to stop them. A directory that another user owns, that others can write, or that
/// is a symlink is therefore never used. phantom then says so once, loudly, and uses a
/// private directory of its own beside it, `phantom-<uid>.<random>` — the first such
/// directory that this user owns, so that every phantom process of the user (a
/// supervisor and its clients, a run and the collection of what it left) agrees on it.
pub fn state_base() -> Result<PathBuf, EngineError> {
    let uid = phantom_linux::process::euid();
    let base = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() && dir.is_dir() => dir.join("phantom"),
        _ if Path::new("/dev/shm").is_dir() => PathBuf::from(format!("/dev/shm/phantom-{uid}")),
        _ => std::env::temp_dir().join(format!("phantom-{uid}")),
    };
    match private_dir(&base, uid)? {
        Private::Ours => Ok(base),
        Private::Squatted(why) => {
            let alternate = private_alternate(&base, uid)?;
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "phantom: warning: {} {why}: someone may be trying to intercept or stop your runs; \
                     using {} instead (have root remove the squatted directory)",
                    base.display(),
                    alternate.display()
                )
            });
            Ok(alternate)
        }
    }
}

enum Private {
    Ours,
    /// Why the directory is not ours.
    Squatted(String),
}

/// Create `dir` 0700 if missing, and say whether it is a private directory of `uid`.
fn private_dir(dir: &Path, uid: u32) -> Result<Private, EngineError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create", dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io("inspect", dir))?;
    Ok(if !meta.is_dir() {
        Private::Squatted("is not a directory".into())
    } else if meta.uid() != uid {
        Private::Squatted(format!("belongs to uid {}, not to you", meta.uid()))
    } else if meta.mode() & 0o077 != 0 {
        Private::Squatted(format!(
            "is open to other users (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        Private::Ours
    })
}

/// The first `<base>.<suffix>` directory that is private to `uid`, else a new one with
/// a random suffix.
fn private_alternate(base: &Path, uid: u32) -> Result<PathBuf, EngineError> {
    let parent = base.parent().unwrap_or(Path::new("/"));
    let prefix = format!(
        "{}.",
        base.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut ours: Vec<PathBuf> = std::fs::read_dir(parent)
        .map_err(io("list", parent))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .filter(|p| {
            std::fs::symlink_metadata(p)
                .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
        })
        .collect();
    ours.sort();
    if let Some(first) = ours.into_iter().next() {
        return Ok(first);
    }
    loop {
        let candidate = parent.join(format!("{prefix}{}", phantom_state::ids::new_sandbox_id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
            Ok(()) => return Ok(candidate),
            // Taken (by a squatter guessing, or a concurrent phantom of ours): another.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Ok(Private::Ours) = private_dir(&candidate, uid) {
                    return Ok(candidate);
                }
            }
            Err(e) => return Err(io("create", &candidate)(e)),
        }
    }
}

/// The host side of one run: its locked run directory and its workspace.
#[derive(Debug)]
pub struct RunDir {
    dir: PathBuf,
    workspace: PathBuf,
    /// Held (flock) while the run lives.
    lock: Option<File>,
}

impl RunDir {
    /// Create and lock the run directory for `sandbox_id`, first collecting what runs
    /// killed earlier left behind. `workspace`: the caller's directory (must exist), or
    /// None for a fresh one that is removed with the run directory.
    pub fn create(
        sandbox_id: &str,
        workspace: Option<&str>,
        layout: &Layout,
    ) -> Result<RunDir, EngineError> {
        let workspace = workspace.map(existing_workspace).transpose()?;
        let mut run = RunDir::create_inner(sandbox_id, layout)?;
        match workspace {
            Some(path) => run.workspace = path,
            None => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&run.workspace)
                .map_err(io("create", &run.workspace))?,
        }
        Ok(run)
    }

    /// The locked run directory, its workspace path not created yet.
    fn create_inner(sandbox_id: &str, layout: &Layout) -> Result<RunDir, EngineError> {
        let base = state_base()?;
        collect_stale(&base, layout);
        // Created under a name collect_stale() ignores and renamed once locked: a
        // concurrent run must never find it unlocked.
        let creating = base.join(format!(".new-{sandbox_id}"));
        let dir = base.join(format!("{RUN_PREFIX}{sandbox_id}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&creating)
            .map_err(io("create", &creating))?;
        let lock = File::open(&creating).map_err(io("open", &creating))?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| io("lock", &creating)(e.into()))?;
        std::fs::rename(&creating, &dir).map_err(io("rename", &creating))?;
        Ok(RunDir {
            workspace: dir.join("workspace"),
            dir,
            lock: Some(lock),
        })
    }

    /// A run directory without a host workspace (a zygote's child mounts its own):
    /// only the lock that tells a later engine whether the run still lives.
    pub fn create_bare(sandbox_id: &str, layout: &Layout) -> Result<RunDir, EngineError> {
        let mut run = RunDir::create_inner(sandbox_id, layout)?;
        run.workspace = run.dir.clone();
        Ok(run)
    }

    /// The lock's fd, for a sandbox to hold.
    pub fn lock(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.lock.as_ref().map(|f| f.as_fd())
    }

    /// The run directory itself (private to the run, removed with it).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The host directory bound at /workspace.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The fd holding the run directory's lock (a sandbox keeps a copy, so that the
    /// lock lives exactly as long as the sandbox).
    pub fn lock_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.lock.as_ref().map(|f| f.as_raw_fd())
    }

    /// Whether the workspace was made for this run (and is removed with it).
    pub fn workspace_is_temporary(&self) -> bool {
        self.workspace.starts_with(&self.dir)
    }
}

fn existing_workspace(dir: &str) -> Result<PathBuf, EngineError> {
    let path = PathBuf::from(dir);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(EngineError::Usage(format!("--workspace {dir}: not a directory"))),
        Err(e) => {
            return Err(EngineError::Usage(format!(
                "--workspace {dir}: {e} (create it first, or leave --workspace out for a temporary one)"
            )))
        }
    }
    path.canonicalize().map_err(io("resolve", Path::new(dir)))
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            // Removes the temporary workspace with it; a caller's workspace lives
            // elsewhere and is untouched. The lock is released only afterwards, so an
            // unlocked run directory always means an abandoned one.
            let _ = std::fs::remove_dir_all(&self.dir);
            drop(lock);
        }
    }
}

/// Remove the run directories in `base` that no living run holds, with their
/// sandboxes' cgroups. Returns how many runs were collected.
pub fn collect_stale(base: &Path, layout: &Layout) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix(RUN_PREFIX) else {
            continue;
        };
        let path = entry.path();
        let Ok(dir) = File::open(&path) else { continue };
        if flock(&dir, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // a living run
        }
        // The run directory goes only once the cgroup has: it is what points a later
        // run at a cgroup that could not be removed yet.
        if cgroup::remove_sandbox(layout, id) && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}
