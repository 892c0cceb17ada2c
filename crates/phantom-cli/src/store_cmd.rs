//! `phantom store snapshot|restore|list|rm|gc|verify`: the content-addressed snapshot
//! store from the command line. Each subcommand maps its flags onto `phantom_store`
//! and prints what the store returns; a progress bar goes to stderr when it is a
//! terminal.
//!
//! Until persistent sandboxes exist, snapshots are of host directories
//! (`phantom store snapshot DIR --tag TAG`); `phantom snapshot NAME` for a sandbox's
//! workspace comes with them and uses the same store.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use phantom_policy::units::human_size;
use phantom_store::{
    GcReport, RestoreInfo, RestoreMode, RestoreProgress, SnapshotError, SnapshotInfo,
    SnapshotLimits, SnapshotOptions, SnapshotProgress, SnapshotStore, VerifyReport,
};

use crate::{age, error_line, print_json};

/// Shown by `phantom store --help`.
pub const EXAMPLES: &str = "Examples:
  phantom store snapshot ./proj --tag proj-1
  phantom store restore proj-1 ./proj-copy
  phantom store restore proj-1 /srv/ro-view --link hardlink
  phantom store list
  phantom store rm proj-1 && phantom store gc
  phantom store verify --json

Files are cut into content-defined chunks (FastCDC, ~64 KiB), hashed with BLAKE3 and
stored once, zstd-compressed: a snapshot of an unchanged directory stores nothing new.
The store is /var/lib/phantom/snapshots for root, else $XDG_STATE_HOME/phantom/snapshots
(~/.local/state/phantom/snapshots); PHANTOM_STATE_DIR=DIR puts it in DIR/snapshots.
Snapshots of host directories for now; `phantom snapshot NAME` (a sandbox's workspace)
comes with persistent sandboxes and uses this same store.";

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Snapshot a host directory into the store under a tag.
    #[command(
        after_help = "Records regular files, directories and symlinks (targets as written, never
followed), modes and mtimes; setuid/setgid bits are stripped; device nodes, fifos,
sockets and other filesystems mounted inside are skipped. Owners and xattrs are not
kept. An existing tag is an error unless --replace.

Examples:
  phantom store snapshot ./proj --tag proj-1
  phantom store snapshot ./proj --tag latest --replace --json"
    )]
    Snapshot(SnapshotArgs),
    /// Restore a snapshot into a new or empty directory.
    #[command(
        after_help = "--link copy (the default) writes every file; reflink clones files from the
store's file cache (btrfs, XFS; same filesystem as the store); hardlink links them
to it — read-only files that must not be handed to untrusted code as its writable
workspace. Where the filesystem refuses, files are copied and the output says why.

Examples:
  phantom store restore proj-1 ./proj-copy
  phantom store restore proj-1 ./view --link hardlink"
    )]
    Restore(RestoreArgs),
    /// List the snapshots in the store.
    List {
        /// One JSON array of snapshot records instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a snapshot's tag (`phantom store gc` frees what no other tag uses).
    #[command(visible_alias = "remove")]
    Rm {
        /// The snapshot's tag.
        tag: String,
    },
    /// Remove the chunks, manifests and cached files no tag uses; report bytes freed.
    Gc {
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every chunk, manifest and cached file; exit 1 naming each corrupt or
    /// missing one and the snapshots it breaks.
    Verify {
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct LimitFlags {
    /// Refuse a tree whose files add up to more than SIZE.
    #[arg(long, value_name = "SIZE", default_value = "8GiB", value_parser = parse_size)]
    max_size: u64,
    /// Refuse a tree of more than N entries (files, directories, symlinks).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_files: u64,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The directory to snapshot.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Name of the snapshot: letters, digits and . _ - : @ +.
    #[arg(long)]
    tag: String,
    /// Point an existing tag at the new snapshot.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    limits: LimitFlags,
    /// Print the snapshot's record as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot's tag.
    tag: String,
    /// A new directory (its parent must exist) or an empty one.
    #[arg(value_name = "DEST")]
    dest: PathBuf,
    /// How file data gets there.
    #[arg(long, value_enum, default_value_t = Link::Copy)]
    link: Link,
    #[command(flatten)]
    limits: LimitFlags,
    /// Print what the restore did as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Link {
    Copy,
    Reflink,
    Hardlink,
}

impl Link {
    fn mode(self) -> RestoreMode {
        match self {
            Link::Copy => RestoreMode::Copy,
            Link::Reflink => RestoreMode::Reflink,
            Link::Hardlink => RestoreMode::Hardlink,
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    phantom_policy::units::parse_bytes(text).map_err(|e| e.to_string())
}

impl LimitFlags {
    fn limits(&self) -> SnapshotLimits {
        SnapshotLimits {
            max_bytes: self.max_size,
            max_entries: self.max_files,
        }
    }
}

pub fn store(cmd: StoreCommand) -> i32 {
    let store = match SnapshotStore::open_default() {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    match cmd {
        StoreCommand::Snapshot(args) => {
            let store = store.with_limits(args.limits.limits());
            let started = Instant::now();
            let bar = Bar::new(None);
            let options = SnapshotOptions {
                replace: args.replace,
            };
            let result = store.snapshot(
                &args.dir,
                &crate::principal().owner,
                &args.tag,
                &options,
                &mut |event| match event {
                    SnapshotProgress::Read { bytes, .. } => bar.set(bytes),
                    SnapshotProgress::Committing => bar.message("committing"),
                },
            );
            bar.finish();
            match result {
                Ok(info) if args.json => print_json(&info),
                Ok(info) => {
                    print_snapshot(&info, started);
                    0
                }
                Err(e) => fail(e),
            }
        }
        StoreCommand::Restore(args) => {
            let store = store.with_limits(args.limits.limits());
            let started = Instant::now();
            let mut bar: Option<Bar> = None;
            let result = store.restore_with_progress(
                &crate::principal().owner,
                &args.tag,
                &args.dest,
                args.link.mode(),
                &mut |RestoreProgress { bytes, total_bytes }| {
                    bar.get_or_insert_with(|| Bar::new(Some(total_bytes)))
                        .set(bytes)
                },
            );
            if let Some(bar) = &bar {
                bar.finish();
            }
            match result {
                Ok(info) if args.json => print_json(&info),
                Ok(info) => {
                    print_restore(&info, &args.dest, started);
                    0
                }
                Err(e) => fail(e),
            }
        }
        StoreCommand::List { json } => match store.list(Some(&crate::principal().owner)) {
            Ok(list) if json => print_json(&list),
            Ok(list) => {
                print_table(&list);
                0
            }
            Err(e) => fail(e),
        },
        StoreCommand::Rm { tag } => match store.remove(&crate::principal().owner, &tag) {
            Ok(()) => {
                println!("removed {tag} (`phantom store gc` frees what no other snapshot uses)");
                0
            }
            Err(e) => fail(e),
        },
        StoreCommand::Gc { json } => match store.gc() {
            Ok(report) if json => print_json(&report),
            Ok(report) => {
                print_gc(&report);
                0
            }
            Err(e) => fail(e),
        },
        StoreCommand::Verify { json } => match store.verify() {
            Ok(report) => {
                if json {
                    print_json(&report);
                } else {
                    print_verify(&report);
                }
                if report.is_ok() {
                    0
                } else {
                    1
                }
            }
            Err(e) => fail(e),
        },
    }
}

fn fail(e: SnapshotError) -> i32 {
    error_line(&e);
    e.exit_code()
}

pub(crate) fn print_snapshot(info: &SnapshotInfo, started: Instant) {
    println!(
        "snapshot {} ({}): {} in {} files, {} dirs, {} symlinks; {:.1} s",
        info.tag,
        &info.manifest[..12],
        human_size(info.bytes),
        info.files,
        info.dirs,
        info.symlinks,
        started.elapsed().as_secs_f64()
    );
    if info.new_chunks == 0 && info.new_bytes == 0 {
        println!("  nothing new stored: every chunk was in the store already");
    } else {
        println!(
            "  stored {} new chunks of {} ({} chunks reused), {} on disk",
            info.new_chunks,
            info.unique_chunks,
            info.unique_chunks - info.new_chunks,
            human_size(info.new_bytes)
        );
    }
    let skipped = [
        (
            info.special_skipped,
            "device nodes, fifos or sockets skipped",
        ),
        (
            info.other_fs_skipped,
            "directories of other filesystems skipped",
        ),
        (info.vanished, "entries vanished while being read"),
        (info.setid_stripped, "setuid/setgid bits stripped"),
    ];
    for (count, what) in skipped {
        if count > 0 {
            println!("  {count} {what}");
        }
    }
}

fn print_restore(info: &RestoreInfo, dest: &std::path::Path, started: Instant) {
    println!(
        "restored {} into {}: {} in {} files, {} dirs, {} symlinks; {:.1} s",
        info.tag,
        dest.display(),
        human_size(info.bytes),
        info.files,
        info.dirs,
        info.symlinks,
        started.elapsed().as_secs_f64()
    );
    match info.mode {
        RestoreMode::Copy => {}
        RestoreMode::Reflink => println!(
            "  {} files reflinked, {} copied",
            info.reflinked, info.copied
        ),
        RestoreMode::Hardlink => println!(
            "  {} files hard-linked to the store (read-only), {} copied",
            info.hardlinked, info.copied
        ),
    }
    if let Some(why) = &info.fallback {
        println!("  {why}");
    }
}

pub(crate) fn print_table(list: &[SnapshotInfo]) {
    if list.is_empty() {
        println!("no snapshots (take one with `phantom store snapshot DIR --tag TAG`)");
        return;
    }
    let width = list.iter().map(|i| i.tag.len()).max().unwrap_or(3).max(3);
    println!(
        "{:<width$}  {:<12}  {:>8}  {:>10}  {:<14}  SOURCE",
        "TAG", "MANIFEST", "FILES", "SIZE", "CREATED"
    );
    for info in list {
        println!(
            "{:<width$}  {:<12}  {:>8}  {:>10}  {:<14}  {}",
            info.tag,
            &info.manifest[..info.manifest.len().min(12)],
            info.files,
            human_size(info.bytes),
            age(info.created),
            info.source
        );
    }
}

fn print_gc(report: &GcReport) {
    println!(
        "removed {} chunks, {} manifests, {} cached files, {} temp files: {} freed",
        report.chunks_removed,
        report.manifests_removed,
        report.cache_files_removed,
        report.temp_files_removed,
        human_size(report.bytes_freed)
    );
}

fn print_verify(report: &VerifyReport) {
    for problem in &report.problems {
        let kind = match problem.kind {
            phantom_store::ObjectKind::Tag => "tag",
            phantom_store::ObjectKind::Manifest => "manifest",
            phantom_store::ObjectKind::Chunk => "chunk",
            phantom_store::ObjectKind::CacheFile => "cached file",
        };
        let breaks = if problem.breaks.is_empty() {
            "breaks no snapshot".to_string()
        } else {
            format!("breaks {}", problem.breaks.join(", "))
        };
        println!(
            "{kind} {} ({}): {}; {breaks}",
            problem.id,
            problem.path.display(),
            problem.what
        );
    }
    let summary = format!(
        "{} snapshots, {} manifests, {} chunks, {} cached files ({} re-hashed)",
        report.tags,
        report.manifests,
        report.chunks,
        report.cache_files,
        human_size(report.bytes)
    );
    if report.is_ok() {
        println!("ok: {summary}");
    } else if report.broken_tags.is_empty() {
        println!(
            "{} problems in {summary}; no snapshot is broken",
            report.problems.len()
        );
    } else {
        println!(
            "{} problems in {summary}; broken snapshots: {}",
            report.problems.len(),
            report.broken_tags.join(", ")
        );
    }
}

/// A progress bar on stderr when it is a terminal (bytes against a total, or a spinner
/// with the bytes read); nothing otherwise.
pub(crate) struct Bar(Option<ProgressBar>);

impl Bar {
    pub(crate) fn new(total: Option<u64>) -> Bar {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = match total {
            Some(_) => "[{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            None => "{spinner} {bytes} read ({bytes_per_sec}) {msg}",
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("progress templates are constants")
                .progress_chars("=> "),
        );
        Bar(Some(bar))
    }

    pub(crate) fn set(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(bytes);
        }
    }

    pub(crate) fn message(&self, msg: &'static str) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg);
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
