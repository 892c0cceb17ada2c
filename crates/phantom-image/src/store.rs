//! The image store on disk (layout and dedup: see the crate docs).
//!
//! Writers — import, remove — hold `<store>/lock` (flock, exclusive) for their whole
//! run, so they never see each other's half-done work; readers (list, inspect,
//! rootfs) take no lock: records and roots appear and disappear by `rename`, never
//! half-written. Each import or build works in its own directory under `tmp/`, locked
//! while it lives; a writer removes the ones nobody holds (left by a killed import)
//! and the roots no record names.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use phantom_state::ids::new_sandbox_id;
use phantom_state::store_dir::{self, StoreDirError, STATE_DIR_ENV};
use rustix::fs::{flock, FlockOperation, Mode};
use serde::{Deserialize, Serialize};

use super::digest::{chain_ids, Digest, Progress};
use super::source::{Plan, Source};
use super::tree::{self, TreeCopy};
use super::unpack::{Budget, Unpacker};

use super::{
    host_platform, ImageError, ImageInfo, ImageRoot, ImportOptions, ImportProgress, LayerInfo,
    SourceFormat,
};

/// Longest image name.
const MAX_NAME: usize = 128;

/// The image store: see the crate docs for its layout.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub name: String,
    /// Whether the image's root was deleted (it is kept while another image uses it).
    pub root_removed: bool,
    /// The images that still use the root.
    pub root_shared_with: Vec<String>,
}

/// `roots/sha256/<hex>/root.json`: what a root holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RootRecord {
    root_id: String,
    /// The layers applied, bottom first (empty for a directory import).
    diff_ids: Vec<String>,
    keep_setuid: bool,
    unpacked_bytes: u64,
    files: u64,
    dirs: u64,
    symlinks: u64,
    /// The stored root this one was linked from, if any.
    built_on: Option<String>,
}

/// A directory under `<store>/tmp` that one operation owns: locked while it lives,
/// removed when dropped.
pub(crate) struct WorkDir {
    path: PathBuf,
    _lock: File,
}

impl WorkDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Removed before the lock is released: an unlocked work dir is an abandoned one.
        let _ = tree::remove_path(&self.path);
    }
}

impl ImageStore {
    /// Where [`ImageStore::open_default`] keeps the store.
    pub fn default_dir() -> Result<PathBuf, ImageError> {
        match store_dir::state_dir() {
            Ok(Some(state)) => Ok(state.join("images")),
            Ok(None) => Err(ImageError::Usage(format!(
                "no place for the image store: set HOME, XDG_STATE_HOME or {STATE_DIR_ENV}"
            ))),
            Err(e) => Err(ImageError::io("resolve", Path::new(STATE_DIR_ENV))(e)),
        }
    }

    /// The store at [`ImageStore::default_dir`], created on first use.
    pub fn open_default() -> Result<ImageStore, ImageError> {
        ImageStore::open(ImageStore::default_dir()?)
    }

    /// The store at `dir`, created (0700) on first use. Refuses a directory that
    /// another user owns or that others can write.
    pub fn open(dir: impl Into<PathBuf>) -> Result<ImageStore, ImageError> {
        let dir = dir.into();
        store_dir::prepare(&dir, &["images", "roots", "roots/sha256", "tmp"]).map_err(
            |e| match e {
                StoreDirError::Io { what, path, source } => ImageError::Io { what, path, source },
                StoreDirError::NotYours { uid } => ImageError::Usage(format!(
                    "image store {}: not a directory owned by you (uid {uid}) that only you can \
                     write; fix its owner and mode, or point {STATE_DIR_ENV} elsewhere",
                    dir.display()
                )),
            },
        )?;
        let store = ImageStore { dir };
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn records_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    fn roots_dir(&self) -> PathBuf {
        self.dir.join("roots/sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.records_dir()
            .join(format!("{}.json", name.replace('/', "%")))
    }

    fn root_dir(&self, root_id: &Digest) -> PathBuf {
        self.roots_dir().join(root_id.hex())
    }

    /// Import an image from `source`: an OCI image layout directory, an OCI layout
    /// tar or a `docker save` archive (either possibly gzip/zstd compressed). `name`
    /// defaults to the name the source gives (ref annotation, RepoTag); an image of
    /// that name already in the store is replaced.
    pub fn import(
        &self,
        source: &Path,
        name: Option<&str>,
        options: &ImportOptions,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<ImageInfo, ImageError> {
        if let Some(name) = name {
            validate_name(name)?;
        }
        let _lock = self.lock()?;
        self.collect_garbage();
        let work = self.work_dir("import")?;
        let src = Source::open(source, work.path(), options)?;
        let plan = src.resolve()?;
        let name = match name {
            Some(name) => name.to_string(),
            None => default_name(plan.ref_name.as_deref(), source)?,
        };
        let diff_ids: Vec<Digest> = plan.layers.iter().map(|l| l.diff_id.clone()).collect();
        let roots: Vec<Digest> = chain_ids(&diff_ids)
            .iter()
            .map(|chain| root_id(chain, options.keep_setuid))
            .collect();
        let top = roots
            .last()
            .expect("resolve() refuses images without layers")
            .clone();
        let mut budget = Budget::new(options);
        let root = match self.read_root(&top) {
            Some(root) => {
                budget.stats.reused_layers = plan.layers.len();
                budget.stats.reused_root = true;
                progress(ImportProgress::Resolved {
                    layers: plan.layers.len(),
                    unpack: 0,
                    bytes: 0,
                });
                root
            }
            None => self.build_root(&src, &plan, &roots, &work, &mut budget, progress)?,
        };
        progress(ImportProgress::Finishing);
        let info = ImageInfo {
            name,
            id: plan.config_digest.to_string(),
            digest: plan.manifest_digest.as_ref().map(Digest::to_string),
            root_id: top.to_string(),
            format: src.format,
            source: absolute(source),
            os: plan.os.clone(),
            architecture: plan.architecture.clone(),
            variant: plan.variant.clone(),
            created: plan.created.clone(),
            imported_at: phantom_state::now_s(),
            layers: plan
                .layers
                .iter()
                .map(|l| LayerInfo {
                    digest: l.digest.as_ref().map(Digest::to_string),
                    diff_id: l.diff_id.to_string(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                })
                .collect(),
            size: plan.layers.iter().map(|l| l.size).sum(),
            unpacked_bytes: root.unpacked_bytes,
            files: root.files,
            config: plan.config.clone(),
            import: budget.stats,
        };
        self.write_record(&info, &work)?;
        drop(work);
        // The root of an image this one replaced may be unused now.
        self.collect_garbage();
        Ok(info)
    }

    /// Unpack the layers into a new root (on top of the longest stored prefix of the
    /// chain) and move it into the store.
    fn build_root(
        &self,
        src: &Source,
        plan: &Plan,
        roots: &[Digest],
        work: &WorkDir,
        budget: &mut Budget<'_>,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<RootRecord, ImageError> {
        let keep_setuid = budget.keeps_setuid();
        let count = plan.layers.len();
        let top = &roots[count - 1];
        let (staged, rootfs) = self.stage_root(work)?;
        let root_fd =
            tree::open_dir_path(&rootfs).map_err(|e| ImageError::io("open", &rootfs)(e.into()))?;
        let base = (0..count - 1)
            .rev()
            .find(|&i| self.read_root(&roots[i]).is_some());
        let first = match base {
            Some(i) => {
                let from = self.root_dir(&roots[i]).join("rootfs");
                let from_fd = tree::open_dir_path(&from)
                    .map_err(|e| ImageError::io("open", &from)(e.into()))?;
                tree::link_tree(from_fd.as_fd(), root_fd.as_fd(), 0)
                    .map_err(|e| ImageError::io("link the files of", &from)(e.into()))?;
                budget.stats.reused_layers = i + 1;
                i + 1
            }
            None => 0,
        };
        let total: u64 = plan.layers[first..].iter().map(|l| l.size).sum();
        progress(ImportProgress::Resolved {
            layers: count,
            unpack: count - first,
            bytes: total,
        });
        let unpack_fd = root_fd
            .try_clone()
            .map_err(ImageError::io("open", &rootfs))?;
        let mut unpacker = Unpacker::new(unpack_fd, budget);
        let mut done = 0;
        for (i, layer) in plan.layers.iter().enumerate().skip(first) {
            let shown = layer
                .digest
                .as_ref()
                .map_or_else(|| layer.member.clone(), |d| d.short().to_string());
            let label = format!("layer {}/{count} ({shown})", i + 1);
            progress(ImportProgress::Layer {
                index: i + 1,
                count,
                digest: layer.digest.as_ref().unwrap_or(&layer.diff_id).to_string(),
                bytes: layer.size,
            });
            let (blob, size) = src.open_member(&layer.member)?;
            if size != layer.size {
                return Err(ImageError::BadImage {
                    source_path: src_path(src),
                    why: format!(
                        "{label}: the blob is {size} bytes but its descriptor says {}",
                        layer.size
                    ),
                });
            }
            let digests =
                unpacker.apply_blob(Progress::new(blob, done, total, &mut *progress), &label)?;
            let what = || format!("{}: {label}", src_path(src).display());
            if let Some(expected) = &layer.digest {
                if digests.blob != *expected {
                    return Err(ImageError::DigestMismatch {
                        what: what(),
                        expected_by: "the manifest",
                        expected: expected.to_string(),
                        actual: digests.blob.to_string(),
                    });
                }
            }
            if digests.diff_id != layer.diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("{} (uncompressed)", what()),
                    expected_by: "the config's rootfs.diff_ids",
                    expected: layer.diff_id.to_string(),
                    actual: digests.diff_id.to_string(),
                });
            }
            if digests.blob_size != layer.size {
                return Err(ImageError::Corrupt {
                    what: what(),
                    why: format!("{} bytes read, {} expected", digests.blob_size, layer.size),
                });
            }
            done += layer.size;
        }
        drop(unpacker);
        let record = RootRecord {
            root_id: top.to_string(),
            diff_ids: plan.layers.iter().map(|l| l.diff_id.to_string()).collect(),
            keep_setuid,
            unpacked_bytes: 0,
            files: 0,
            dirs: 0,
            symlinks: 0,
            built_on: base.map(|i| roots[i].to_string()),
        };
        self.commit_root(&staged, &rootfs, top, record)
    }

    /// `work/root/` (0700) with an empty `rootfs/` (0755) in it.
    fn stage_root(&self, work: &WorkDir) -> Result<(PathBuf, PathBuf), ImageError> {
        let staged = work.path().join("root");
        let rootfs = staged.join("rootfs");
        DirBuilder::new()
            .mode(0o700)
            .create(&staged)
            .map_err(ImageError::io("create", &staged))?;
        DirBuilder::new()
            .mode(0o700)
            .create(&rootfs)
            .map_err(ImageError::io("create", &rootfs))?;
        rustix::fs::chmod(&rootfs, Mode::from_raw_mode(0o755))
            .map_err(|e| ImageError::io("chmod", &rootfs)(e.into()))?;
        Ok((staged, rootfs))
    }

    /// Measure a staged root, write its root.json and move it into the store.
    fn commit_root(
        &self,
        staged: &Path,
        rootfs: &Path,
        root_id: &Digest,
        mut record: RootRecord,
    ) -> Result<RootRecord, ImageError> {
        let fd =
            tree::open_dir_path(rootfs).map_err(|e| ImageError::io("open", rootfs)(e.into()))?;
        let usage =
            tree::measure(fd.as_fd()).map_err(|e| ImageError::io("measure", rootfs)(e.into()))?;
        record.unpacked_bytes = usage.bytes;
        record.files = usage.files;
        record.dirs = usage.dirs;
        record.symlinks = usage.symlinks;
        write_json(&staged.join("root.json"), &record)?;
        let target = self.root_dir(root_id);
        fs::rename(staged, &target).map_err(ImageError::io("move into the store", &target))?;
        Ok(record)
    }

    /// Import a plain root directory (copied: symlinks stay symlinks and are never
    /// followed, device nodes are skipped, setuid bits stripped unless kept).
    pub fn import_dir(
        &self,
        dir: &Path,
        name: &str,
        options: &ImportOptions,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<ImageInfo, ImageError> {
        self.import_tree(dir, name, options, progress, absolute(dir))
    }

    /// [`ImageStore::import_dir`], recording `source` as where the image came from.
    pub(crate) fn import_tree(
        &self,
        dir: &Path,
        name: &str,
        options: &ImportOptions,
        progress: &mut dyn FnMut(ImportProgress),
        source: String,
    ) -> Result<ImageInfo, ImageError> {
        validate_name(name)?;
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::Usage(format!(
                    "{}: not a directory",
                    dir.display()
                )))
            }
            Err(e) => return Err(ImageError::Usage(format!("{}: {e}", dir.display()))),
        }
        let src = tree::open_dir_path(dir).map_err(|e| ImageError::io("open", dir)(e.into()))?;
        let device = rustix::fs::fstat(&src)
            .map_err(|e| ImageError::io("inspect", dir)(e.into()))?
            .st_dev;
        let _lock = self.lock()?;
        self.collect_garbage();
        let work = self.work_dir("import")?;
        let (staged, rootfs) = self.stage_root(&work)?;
        let root_fd =
            tree::open_dir_path(&rootfs).map_err(|e| ImageError::io("open", &rootfs)(e.into()))?;
        let mut budget = Budget::new(options);
        progress(ImportProgress::Resolved {
            layers: 0,
            unpack: 0,
            bytes: 0,
        });
        let mut copy = TreeCopy::new(&mut budget, device, &mut *progress);
        copy.copy(src.as_fd(), root_fd.as_fd())?;
        let tree_digest = copy.finish();
        progress(ImportProgress::Finishing);
        let root = match self.read_root(&tree_digest) {
            Some(root) => {
                budget.stats.reused_root = true;
                root
            }
            None => self.commit_root(
                &staged,
                &rootfs,
                &tree_digest,
                RootRecord {
                    root_id: tree_digest.to_string(),
                    diff_ids: Vec::new(),
                    keep_setuid: options.keep_setuid,
                    unpacked_bytes: 0,
                    files: 0,
                    dirs: 0,
                    symlinks: 0,
                    built_on: None,
                },
            )?,
        };
        let host = host_platform();
        let info = ImageInfo {
            name: name.to_string(),
            id: tree_digest.to_string(),
            digest: None,
            root_id: tree_digest.to_string(),
            format: SourceFormat::Directory,
            source,
            os: host.os.to_string(),
            architecture: host.architecture,
            variant: None,
            created: None,
            imported_at: phantom_state::now_s(),
            layers: Vec::new(),
            size: 0,
            unpacked_bytes: root.unpacked_bytes,
            files: root.files,
            config: Default::default(),
            import: budget.stats,
        };
        self.write_record(&info, &work)?;
        drop(work);
        self.collect_garbage();
        Ok(info)
    }

    /// Every image in the store, by name.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let dir = self.records_dir();
        let mut images = Vec::new();
        for entry in fs::read_dir(&dir).map_err(ImageError::io("read", &dir))? {
            let entry = entry.map_err(ImageError::io("read", &dir))?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with('.') || !file_name.ends_with(".json") {
                continue;
            }
            images.push(read_record(&entry.path())?);
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// One image's record.
    pub fn inspect(&self, name: &str) -> Result<ImageInfo, ImageError> {
        validate_name(name)?;
        let path = self.record_path(name);
        if !path.exists() {
            return Err(ImageError::NotFound(name.to_string()));
        }
        read_record(&path)
    }

    /// What a sandbox mounts for `name`: its root directory and its config. The
    /// directory is immutable and stays while a record names it; `remove` (or importing
    /// another image under the same name) deletes it once no record does, so a run
    /// should open it (e.g. `open_tree`) before it can be removed.
    pub fn rootfs(&self, name: &str) -> Result<ImageRoot, ImageError> {
        let info = self.inspect(name)?;
        let root_id = Digest::parse(&info.root_id).map_err(|why| ImageError::Corrupt {
            what: format!("the record of image `{name}`"),
            why,
        })?;
        let dir = self.root_dir(&root_id).join("rootfs");
        if !dir.is_dir() {
            return Err(ImageError::Corrupt {
                what: format!("image `{name}`"),
                why: format!(
                    "its root {} is missing from the store; remove the image and import it again",
                    dir.display()
                ),
            });
        }
        Ok(ImageRoot {
            layers: vec![dir],
            config: info.config.clone(),
            info,
        })
    }

    /// Remove an image; its root goes too unless another image uses it.
    pub fn remove(&self, name: &str) -> Result<Removed, ImageError> {
        validate_name(name)?;
        let _lock = self.lock()?;
        let info = self.inspect(name)?;
        // Every record is read before anything is removed: one that cannot be read
        // might use this root.
        let shared: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|other| other.root_id == info.root_id && other.name != name)
            .map(|other| other.name)
            .collect();
        let path = self.record_path(name);
        fs::remove_file(&path).map_err(ImageError::io("remove", &path))?;
        let root_removed = shared.is_empty();
        if root_removed {
            if let Ok(root_id) = Digest::parse(&info.root_id) {
                self.remove_root(&root_id)?;
            }
        }
        self.collect_garbage();
        Ok(Removed {
            name: name.to_string(),
            root_removed,
            root_shared_with: shared,
        })
    }

    /// Take the store's writer lock (blocks while another import or removal runs).
    fn lock(&self) -> Result<File, ImageError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(ImageError::io("open", &path))?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| ImageError::io("lock", &path)(e.into()))?;
        Ok(file)
    }

    /// A fresh, locked work directory under `tmp/`.
    pub(crate) fn work_dir(&self, op: &str) -> Result<WorkDir, ImageError> {
        let id = new_sandbox_id();
        // Created under a name garbage collection ignores, and renamed once locked.
        let creating = self.tmp_dir().join(format!(".new-{op}-{id}"));
        let path = self.tmp_dir().join(format!("{op}-{id}"));
        DirBuilder::new()
            .mode(0o700)
            .create(&creating)
            .map_err(ImageError::io("create", &creating))?;
        let lock = File::open(&creating).map_err(ImageError::io("open", &creating))?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| ImageError::io("lock", &creating)(e.into()))?;
        fs::rename(&creating, &path).map_err(ImageError::io("rename", &creating))?;
        Ok(WorkDir { path, _lock: lock })
    }

    fn read_root(&self, root_id: &Digest) -> Option<RootRecord> {
        let text = fs::read(self.root_dir(root_id).join("root.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Move a root out of `roots/` at once (so it is never seen half-removed), then
    /// delete it.
    fn remove_root(&self, root_id: &Digest) -> Result<(), ImageError> {
        let dir = self.root_dir(root_id);
        let doomed = self.tmp_dir().join(format!("gc-{}", new_sandbox_id()));
        match fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ImageError::io("remove", &dir)(e)),
        }
        tree::remove_path(&doomed).map_err(ImageError::io("remove", &doomed))
    }

    /// Remove work directories nobody holds and roots no record names. Best effort:
    /// what cannot be removed now is tried again by the next writer.
    fn collect_garbage(&self) {
        if let Ok(entries) = fs::read_dir(self.tmp_dir()) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".new-") {
                    continue;
                }
                let path = entry.path();
                let Ok(handle) = File::open(&path) else {
                    continue;
                };
                if flock(&handle, FlockOperation::NonBlockingLockExclusive).is_ok() {
                    let _ = tree::remove_path(&path);
                }
            }
        }
        // A record that cannot be read might name any root: then keep them all.
        let Ok(images) = self.list() else { return };
        let used: HashSet<String> = images.into_iter().map(|i| i.root_id).collect();
        let Ok(entries) = fs::read_dir(self.roots_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let hex = entry.file_name().to_string_lossy().into_owned();
            let Ok(root_id) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            if !used.contains(root_id.as_str()) {
                let _ = self.remove_root(&root_id);
            }
        }
    }

    /// Write a record: to the work directory first, then renamed into place.
    fn write_record(&self, info: &ImageInfo, work: &WorkDir) -> Result<(), ImageError> {
        let staged = work.path().join("record.json");
        write_json(&staged, info)?;
        let path = self.record_path(&info.name);
        fs::rename(&staged, &path).map_err(ImageError::io("write", &path))
    }
}

/// The directory name of a root: the chain id, distinct when setuid bits were kept
/// (the content differs).
fn root_id(chain: &Digest, keep_setuid: bool) -> Digest {
    if keep_setuid {
        Digest::of(format!("{chain} +setuid").as_bytes())
    } else {
        chain.clone()
    }
}

fn src_path(src: &Source) -> PathBuf {
    src.path().to_path_buf()
}

/// Check an image name: letters, digits and `._-:/@`, starting with a letter or
/// digit, at most 128 bytes — what Docker references use.
pub(crate) fn validate_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b))
        && !name.contains("..")
        && !name.contains("//")
        && !name.ends_with('/');
    if ok {
        Ok(())
    } else {
        Err(ImageError::Usage(format!(
            "invalid image name `{name}`: use letters, digits and . _ - : / @, start with a letter \
             or digit, at most {MAX_NAME} characters (e.g. python:3.11-slim)"
        )))
    }
}

/// The name an image gets without --name: the source's own (a full reference, or a
/// bare tag put after the file name), else the file name without its extensions.
fn default_name(ref_name: Option<&str>, source: &Path) -> Result<String, ImageError> {
    let file = source
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stem = file.as_str();
    for suffix in [".gz", ".zst", ".tgz", ".tar", ".oci"] {
        stem = stem.strip_suffix(suffix).unwrap_or(stem);
    }
    let candidates = match ref_name {
        Some(r) if r.contains(':') || r.contains('/') => vec![r.to_string()],
        Some(tag) => vec![format!("{stem}:{tag}"), tag.to_string()],
        None => Vec::new(),
    };
    candidates
        .into_iter()
        .chain(std::iter::once(stem.to_string()))
        .find(|n| validate_name(n).is_ok())
        .ok_or_else(|| {
            ImageError::Usage(format!(
                "{}: the image has no usable name; give it one with --name NAME",
                source.display()
            ))
        })
}

fn read_record(path: &Path) -> Result<ImageInfo, ImageError> {
    let text = fs::read(path).map_err(ImageError::io("read", path))?;
    serde_json::from_slice(&text).map_err(|e| ImageError::Corrupt {
        what: format!("image record {}", path.display()),
        why: format!("{e}; delete the file to drop the image"),
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ImageError> {
    let text = serde_json::to_vec_pretty(value).expect("image records serialize");
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(ImageError::io("create", path))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(ImageError::io("write", path))
}

fn absolute(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_references_not_paths() {
        for good in [
            "python:3.11-slim",
            "docker.io/library/alpine:3.19",
            "a",
            "x@sha256:ab",
        ] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "a/../b",
            ".hidden",
            "-x",
            "a b",
            "a/",
            "a//b",
            &"a".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_names_come_from_the_source() {
        let path = Path::new("/tmp/alpine.tar.gz");
        assert_eq!(
            default_name(Some("alpine:3.19"), path).unwrap(),
            "alpine:3.19"
        );
        assert_eq!(default_name(Some("3.19"), path).unwrap(), "alpine:3.19");
        assert_eq!(default_name(None, path).unwrap(), "alpine");
        assert!(default_name(None, Path::new("/tmp/.tar")).is_err());
    }
}
