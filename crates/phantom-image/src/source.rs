//! Reading an image where the user has it, and verifying it down to its layers.
//!
//! A source is a directory or a file. A file is a tar (optionally gzip or zstd
//! compressed as a whole, which is first decompressed into the import's work
//! directory); its members are indexed once and read in place (`pread`), never
//! extracted. Either way it holds one of two formats:
//!
//! * an OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/<hex>`. The index
//!   may nest indexes (multi-platform images); the manifest for this host's platform
//!   is chosen. Every blob read (index, manifest, config) must have the size and
//!   sha256 its descriptor gives;
//! * a `docker save` archive: `manifest.json` listing a config named by its sha256 and
//!   the layer files (legacy `<id>/layer.tar`, or `blobs/sha256/<hex>` since Docker 25,
//!   whose archives are also OCI layouts and are read as such).
//!
//! Layers are verified while they are unpacked (`store.rs`): the blob's sha256 against
//! its descriptor or file name, and the uncompressed tar's sha256 against the config's
//! `rootfs.diff_ids` — so a `docker save` layer, which has no descriptor, is checked
//! by the config, which is checked by its name.
//!
//! Paths inside a source directory are opened with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` from the directory's fd (symlinks between blobs work, none
//! leads out); inside an archive, links are resolved by name within the archive.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde::Deserialize;

use super::digest::{Digest, Limited};
use super::tarstream::{self, Kind, WalkError};
use super::tree;
use super::unpack::{components, Compression};
use super::{host_platform, ImageConfig, ImageError, ImportOptions, SourceFormat};

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Largest index, manifest or manifest.json read.
const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config read (long histories make them big).
const MAX_CONFIG: u64 = 8 << 20;
/// Most members an image archive may have.
const MAX_MEMBERS: usize = 100_000;
/// Most layers an image may have (Docker's own limit is 127).
const MAX_LAYERS: usize = 256;

/// An opened source: where its files are and which format they are in.
pub(crate) struct Source {
    path: PathBuf,
    container: Container,
    pub format: SourceFormat,
}

enum Container {
    Dir(OwnedFd),
    Archive(Archive),
}

/// An uncompressed tar, indexed.
struct Archive {
    file: File,
    members: HashMap<Vec<u8>, Member>,
}

#[derive(Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
}

/// Everything known about the image before its layers are read.
pub(crate) struct Plan {
    pub manifest_digest: Option<Digest>,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
    pub created: Option<String>,
    pub layers: Vec<LayerPlan>,
    /// The name the source gives the image (a ref annotation, a RepoTag).
    pub ref_name: Option<String>,
}

/// One layer to read: its file in the source and what it must hash to.
pub(crate) struct LayerPlan {
    pub member: String,
    /// The blob's digest when the source names it (always, except legacy
    /// `docker save` layers, which only the diff_id vouches for).
    pub digest: Option<Digest>,
    pub size: u64,
    pub media_type: String,
    pub diff_id: Digest,
}

#[derive(Deserialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ConfigFile {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: Option<ContainerConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A descriptor found in an index, with the name its ancestors gave it.
struct Candidate {
    descriptor: Descriptor,
    name: Option<String>,
}

/// Reads a member of a source archive in place.
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside this member",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Source {
    /// Open `path` (a directory or a file) and find out its format. A compressed
    /// archive is decompressed into `work` first.
    pub(crate) fn open(
        path: &Path,
        work: &Path,
        options: &ImportOptions,
    ) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            ImageError::Usage(format!(
                "{}: {} (give an OCI image layout directory or tar, or a `docker save` archive)",
                path.display(),
                plain(&e)
            ))
        })?;
        let bad = |why: String| ImageError::BadImage {
            source_path: path.to_path_buf(),
            why,
        };
        if meta.is_dir() {
            let dir =
                tree::open_dir_path(path).map_err(|e| ImageError::io("open", path)(e.into()))?;
            let has = |name: &str| rfs::statat(&dir, name, rfs::AtFlags::empty()).is_ok();
            let format = if has("oci-layout") {
                SourceFormat::OciLayout
            } else if has("manifest.json") {
                SourceFormat::DockerArchive
            } else {
                return Err(bad(
                    "neither an OCI image layout (no oci-layout file) nor an unpacked `docker save` archive \
                     (no manifest.json); for a plain root directory use `phantom image import-dir`"
                        .into(),
                ));
            };
            return Ok(Source {
                path: path.to_path_buf(),
                container: Container::Dir(dir),
                format,
            });
        }
        if !meta.is_file() {
            return Err(ImageError::Usage(format!(
                "{}: not a regular file or a directory",
                path.display()
            )));
        }
        let mut file = File::open(path).map_err(ImageError::io("open", path))?;
        let mut head = [0u8; 4];
        let got = read_head(&mut file, &mut head).map_err(ImageError::io("read", path))?;
        let compression = Compression::detect(&head[..got]);
        if compression != Compression::None {
            file = decompress(file, compression, path, work, options)?;
        }
        let archive = index_archive(file).map_err(bad)?;
        let format = if archive.members.contains_key(&b"oci-layout"[..]) {
            SourceFormat::OciArchive
        } else if archive.members.contains_key(&b"manifest.json"[..]) {
            SourceFormat::DockerArchive
        } else {
            return Err(bad(
                "a tar archive, but neither an OCI image layout (no oci-layout) nor a `docker save` archive \
                 (no manifest.json)"
                    .into(),
            ));
        };
        Ok(Source {
            path: path.to_path_buf(),
            container: Container::Archive(archive),
            format,
        })
    }

    /// The path the user gave.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn bad(&self, why: impl Into<String>) -> ImageError {
        ImageError::BadImage {
            source_path: self.path.clone(),
            why: why.into(),
        }
    }

    /// Open a file of the source by its path inside it; returns a reader and its size.
    pub(crate) fn open_member(
        &self,
        member: &str,
    ) -> Result<(Box<dyn Read + '_>, u64), ImageError> {
        let missing = || self.bad(format!("`{member}` is missing"));
        match &self.container {
            Container::Archive(archive) => {
                let (offset, size) = archive
                    .find(member)
                    .map_err(|why| self.bad(why))?
                    .ok_or_else(missing)?;
                Ok((
                    Box::new(Section {
                        file: &archive.file,
                        pos: offset,
                        end: offset + size,
                    }),
                    size,
                ))
            }
            Container::Dir(dir) => {
                let parts = components(member.as_bytes())
                    .map_err(|why| self.bad(format!("`{member}`: {why}")))?;
                let relative = String::from_utf8_lossy(&parts.join(&b'/')).into_owned();
                let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let opened = match rfs::openat2(
                    dir,
                    relative.as_str(),
                    flags,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                ) {
                    // No openat2 (old kernel, filtered): walk without following links.
                    Err(Errno::NOSYS) => {
                        let (name, parents) = parts.split_last().ok_or_else(missing)?;
                        tree::walk_dirs(dir.as_fd(), parents).and_then(|d| {
                            rfs::openat(d, *name, flags | OFlags::NOFOLLOW, Mode::empty())
                        })
                    }
                    other => other,
                };
                let fd = match opened {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => return Err(missing()),
                    Err(e) => return Err(ImageError::io("open", self.path.join(member))(e.into())),
                };
                let st = rfs::fstat(&fd)
                    .map_err(|e| ImageError::io("inspect", self.path.join(member))(e.into()))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(self.bad(format!("`{member}` is not a regular file")));
                }
                Ok((Box::new(File::from(fd)), st.st_size as u64))
            }
        }
    }

    /// Read a whole (small) member.
    fn read_member(&self, member: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let (reader, size) = self.open_member(member)?;
        if size > limit {
            return Err(self.bad(format!(
                "`{member}` is {size} bytes; at most {limit} accepted"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        reader
            .take(size)
            .read_to_end(&mut data)
            .map_err(|e| self.bad(format!("`{member}`: {}", plain(&e))))?;
        if data.len() as u64 != size {
            return Err(self.bad(format!("`{member}` is cut short")));
        }
        Ok(data)
    }

    /// Read the blob a descriptor names and check its size and digest.
    fn read_blob(
        &self,
        descriptor: &Descriptor,
        limit: u64,
        what: &str,
    ) -> Result<(Vec<u8>, Digest), ImageError> {
        let digest =
            Digest::parse(&descriptor.digest).map_err(|why| self.bad(format!("{what}: {why}")))?;
        let member = format!("blobs/sha256/{}", digest.hex());
        let data = self.read_member(&member, limit)?;
        if data.len() as u64 != descriptor.size {
            return Err(self.bad(format!(
                "{what} `{member}` is {} bytes but its descriptor says {}",
                data.len(),
                descriptor.size
            )));
        }
        let actual = Digest::of(&data);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("{}: {what} `{member}`", self.path.display()),
                expected_by: "its descriptor",
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok((data, digest))
    }

    fn parse<'a, T: Deserialize<'a>>(&self, data: &'a [u8], what: &str) -> Result<T, ImageError> {
        serde_json::from_slice(data).map_err(|e| self.bad(format!("{what} is not valid: {e}")))
    }

    /// Read and verify everything but the layers.
    pub(crate) fn resolve(&self) -> Result<Plan, ImageError> {
        match self.format {
            SourceFormat::OciLayout | SourceFormat::OciArchive => self.resolve_oci(),
            SourceFormat::DockerArchive => self.resolve_docker(),
            SourceFormat::Directory => unreachable!("directories are imported by import_dir"),
        }
    }

    fn resolve_oci(&self) -> Result<Plan, ImageError> {
        let layout: serde_json::Value =
            self.parse(&self.read_member("oci-layout", 64 << 10)?, "oci-layout")?;
        match layout.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(version) if version.starts_with("1.") => {}
            other => {
                return Err(self.bad(format!(
                    "oci-layout: imageLayoutVersion {} is not supported (1.x is)",
                    other.unwrap_or("(missing)")
                )))
            }
        }
        let index: Index =
            self.parse(&self.read_member("index.json", MAX_MANIFEST)?, "index.json")?;
        let mut leaves = Vec::new();
        self.collect_manifests(&index.manifests, None, 0, &mut leaves)?;
        let host = host_platform();
        // Attestations and other artifacts carry the platform unknown/unknown.
        leaves.retain(|c| {
            c.descriptor
                .platform
                .as_ref()
                .is_none_or(|p| p.os != "unknown")
        });
        if leaves.is_empty() {
            return Err(self.bad("index.json lists no image manifest"));
        }
        let (mut matching, others): (Vec<Candidate>, Vec<Candidate>) =
            leaves.into_iter().partition(|c| {
                c.descriptor.platform.as_ref().is_none_or(|p| {
                    p.os == host.os && normalize_arch(&p.architecture) == host.architecture
                })
            });
        if matching.is_empty() {
            let mut offered: Vec<String> = others
                .iter()
                .filter_map(|c| c.descriptor.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            offered.dedup();
            return Err(ImageError::Platform {
                source_path: self.path.clone(),
                image: offered.join(", "),
                host: host.to_string(),
            });
        }
        matching.dedup_by(|a, b| a.descriptor.digest == b.descriptor.digest);
        if matching.len() > 1 {
            let names: Vec<String> = matching
                .iter()
                .map(|c| {
                    c.name
                        .clone()
                        .unwrap_or_else(|| c.descriptor.digest.clone())
                })
                .collect();
            return Err(self.bad(format!(
                "holds {} images ({}); import supports one image per archive — save them one at a time",
                matching.len(),
                names.join(", ")
            )));
        }
        let chosen = matching.remove(0);
        let (manifest_bytes, manifest_digest) =
            self.read_blob(&chosen.descriptor, MAX_MANIFEST, "manifest")?;
        let manifest: Manifest = self.parse(&manifest_bytes, "the manifest")?;
        if !manifest.config.media_type.is_empty()
            && !CONFIG_TYPES.contains(&manifest.config.media_type.as_str())
        {
            return Err(self.bad(format!(
                "not a container image: its config has media type `{}`",
                manifest.config.media_type
            )));
        }
        let (config_bytes, config_digest) =
            self.read_blob(&manifest.config, MAX_CONFIG, "config")?;
        let config: ConfigFile = self.parse(&config_bytes, "the image config")?;
        let diff_ids = self.check_config(&config, manifest.layers.len())?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (descriptor, diff_id) in manifest.layers.iter().zip(diff_ids) {
            let media_type = descriptor.media_type.clone();
            if media_type.contains("encrypted") {
                return Err(self.bad(format!("encrypted layers are not supported ({media_type})")));
            }
            if !media_type.is_empty() && !media_type.contains("tar") {
                return Err(self.bad(format!("layer media type `{media_type}` is not a tar")));
            }
            let digest = Digest::parse(&descriptor.digest)
                .map_err(|why| self.bad(format!("layer: {why}")))?;
            layers.push(LayerPlan {
                member: format!("blobs/sha256/{}", digest.hex()),
                digest: Some(digest),
                size: descriptor.size,
                media_type,
                diff_id,
            });
        }
        Ok(Plan {
            manifest_digest: Some(manifest_digest),
            config_digest,
            config: image_config(config.config),
            architecture: normalize_arch(&config.architecture).to_string(),
            os: config.os,
            variant: config.variant,
            created: config.created,
            layers,
            ref_name: chosen.name,
        })
    }

    /// Walk (nested) indexes down to image manifests.
    fn collect_manifests(
        &self,
        descriptors: &[Descriptor],
        name: Option<&str>,
        depth: usize,
        out: &mut Vec<Candidate>,
    ) -> Result<(), ImageError> {
        for descriptor in descriptors {
            let name = descriptor
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| {
                    descriptor
                        .annotations
                        .get("org.opencontainers.image.ref.name")
                })
                .map(String::as_str)
                .or(name);
            let media_type = descriptor.media_type.as_str();
            if INDEX_TYPES.contains(&media_type) {
                if depth >= 4 {
                    return Err(self.bad("image indexes nested more than 4 deep"));
                }
                let (data, _) = self.read_blob(descriptor, MAX_MANIFEST, "image index")?;
                let child: Index = self.parse(&data, "an image index")?;
                self.collect_manifests(&child.manifests, name, depth + 1, out)?;
            } else if MANIFEST_TYPES.contains(&media_type) || media_type.is_empty() {
                out.push(Candidate {
                    descriptor: descriptor.clone(),
                    name: name.map(str::to_string),
                });
            }
            // Anything else (signatures, SBOMs, other artifacts) is not an image.
        }
        Ok(())
    }

    /// Check the config's platform and rootfs; returns the diff_ids.
    fn check_config(&self, config: &ConfigFile, layers: usize) -> Result<Vec<Digest>, ImageError> {
        let host = host_platform();
        let arch = normalize_arch(&config.architecture);
        if config.os != host.os || arch != host.architecture {
            return Err(ImageError::Platform {
                source_path: self.path.clone(),
                image: format!("{}/{arch}", config.os),
                host: host.to_string(),
            });
        }
        if config.rootfs.kind != "layers" {
            return Err(self.bad(format!(
                "config rootfs.type is `{}`, not `layers`",
                config.rootfs.kind
            )));
        }
        if config.rootfs.diff_ids.len() != layers {
            return Err(self.bad(format!(
                "the manifest lists {layers} layers but the config's rootfs.diff_ids {}",
                config.rootfs.diff_ids.len()
            )));
        }
        if layers == 0 {
            return Err(self.bad("the image has no layers"));
        }
        if layers > MAX_LAYERS {
            return Err(self.bad(format!("{layers} layers; at most {MAX_LAYERS} accepted")));
        }
        config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| {
                Digest::parse(d).map_err(|why| self.bad(format!("config rootfs.diff_ids: {why}")))
            })
            .collect()
    }

    fn resolve_docker(&self) -> Result<Plan, ImageError> {
        let entries: Vec<DockerEntry> = self.parse(
            &self.read_member("manifest.json", MAX_MANIFEST)?,
            "manifest.json",
        )?;
        let entry = match entries.as_slice() {
            [entry] => entry,
            [] => return Err(self.bad("manifest.json lists no image")),
            many => {
                let tags: Vec<String> = many
                    .iter()
                    .map(|e| {
                        e.repo_tags
                            .as_ref()
                            .and_then(|t| t.first().cloned())
                            .unwrap_or_else(|| e.config.clone())
                    })
                    .collect();
                return Err(self.bad(format!(
                    "holds {} images ({}); import supports one image per archive — `docker save` them one at a time",
                    many.len(),
                    tags.join(", ")
                )));
            }
        };
        // The config is named by its digest; it vouches for the layers (diff_ids).
        let named = entry
            .config
            .strip_prefix("blobs/sha256/")
            .or_else(|| entry.config.strip_suffix(".json"))
            .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            .ok_or_else(|| {
                self.bad(format!(
                    "manifest.json: config `{}` is not named by its sha256 digest, so the image cannot be verified",
                    entry.config
                ))
            })?;
        let config_bytes = self.read_member(&entry.config, MAX_CONFIG)?;
        let actual = Digest::of(&config_bytes);
        if actual != named {
            return Err(ImageError::DigestMismatch {
                what: format!("{}: config `{}`", self.path.display(), entry.config),
                expected_by: "its file name",
                expected: named.to_string(),
                actual: actual.to_string(),
            });
        }
        let config: ConfigFile = self.parse(&config_bytes, "the image config")?;
        let diff_ids = self.check_config(&config, entry.layers.len())?;
        let mut layers = Vec::with_capacity(entry.layers.len());
        for (member, diff_id) in entry.layers.iter().zip(diff_ids) {
            let digest = member
                .strip_prefix("blobs/sha256/")
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok());
            let (_, size) = self.open_member(member)?;
            layers.push(LayerPlan {
                member: member.clone(),
                digest,
                size,
                media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
                diff_id,
            });
        }
        Ok(Plan {
            manifest_digest: None,
            config_digest: named,
            config: image_config(config.config),
            architecture: normalize_arch(&config.architecture).to_string(),
            os: config.os,
            variant: config.variant,
            created: config.created,
            layers,
            ref_name: entry.repo_tags.as_ref().and_then(|t| t.first().cloned()),
        })
    }
}

fn image_config(config: Option<ContainerConfig>) -> ImageConfig {
    let config = config.unwrap_or_default();
    ImageConfig {
        env: config.env.unwrap_or_default(),
        working_dir: config.working_dir.filter(|w| !w.is_empty()),
        entrypoint: config.entrypoint,
        cmd: config.cmd,
        user: config.user.filter(|u| !u.is_empty()),
    }
}

/// Spellings of architectures seen in the wild, mapped to the OCI/Go names.
pub(crate) fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i486" | "i586" | "i686" => "386",
        "armv7l" | "armv6l" | "armhf" => "arm",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The error text without the " (os error N)" suffix.
fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_lowercase(),
        None => text,
    }
}

fn read_head(file: &mut File, head: &mut [u8]) -> io::Result<usize> {
    let n = file.read_at(head, 0)?;
    Ok(n)
}

/// Decompress a whole compressed archive into `work/source.tar`.
fn decompress(
    file: File,
    compression: Compression,
    path: &Path,
    work: &Path,
    options: &ImportOptions,
) -> Result<File, ImageError> {
    let target = work.join("source.tar");
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(ImageError::io("create", &target))?;
    let input = BufReader::new(file);
    let decoder: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(input)
                .map_err(ImageError::io("read", path))?,
        ),
        Compression::None => Box::new(input),
    };
    let mut limited = Limited::new(decoder, options.max_bytes);
    if let Err(e) = io::copy(&mut limited, &mut out) {
        return Err(if super::digest::LimitExceeded::is(&e) {
            ImageError::TooLarge {
                what: format!("{} (decompressed)", path.display()),
                limit: phantom_policy::units::human_size(options.max_bytes),
                flag: "--max-size",
            }
        } else {
            ImageError::Corrupt {
                what: path.display().to_string(),
                why: format!("cannot decompress: {}", plain(&e)),
            }
        });
    }
    Ok(out)
}

fn index_archive(file: File) -> Result<Archive, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut members = HashMap::new();
    let mut reader = BufReader::new(&file);
    io::Seek::rewind(&mut reader).map_err(|e| e.to_string())?;
    let result = tarstream::walk_seekable(reader, |entry, _| -> Result<(), String> {
        // Members that could not be addressed safely are simply not indexed.
        let Ok(parts) = components(&entry.path) else {
            return Ok(());
        };
        let key = parts.join(&b'/');
        let member = match entry.kind {
            Kind::File => {
                if entry.offset + entry.size > len {
                    return Err(format!(
                        "the archive is cut short (member `{}` ends past its end)",
                        String::from_utf8_lossy(&key)
                    ));
                }
                Member::File {
                    offset: entry.offset,
                    size: entry.size,
                }
            }
            Kind::Symlink => Member::Symlink(entry.link.clone().unwrap_or_default()),
            Kind::Hardlink => match components(entry.link.as_deref().unwrap_or_default()) {
                Ok(target) => Member::Hardlink(target.join(&b'/')),
                Err(_) => return Ok(()),
            },
            Kind::Dir | Kind::Special => return Ok(()),
        };
        if members.len() >= MAX_MEMBERS {
            return Err(format!("more than {MAX_MEMBERS} members in the archive"));
        }
        members.insert(key, member);
        Ok(())
    });
    match result {
        Ok(_) => Ok(Archive { file, members }),
        Err(WalkError::Callback(why))
        | Err(WalkError::Tar(why))
        | Err(WalkError::Truncated(why)) => Err(why),
        Err(WalkError::Io(e)) => Err(format!("cannot read the archive: {e}")),
    }
}

impl Archive {
    /// Where a member's data is, following links within the archive.
    fn find(&self, member: &str) -> Result<Option<(u64, u64)>, String> {
        let mut key = match components(member.as_bytes()) {
            Ok(parts) => parts.join(&b'/'),
            Err(why) => return Err(format!("`{member}`: {why}")),
        };
        for _ in 0..16 {
            match self.members.get(&key) {
                None => return Ok(None),
                Some(Member::File { offset, size }) => return Ok(Some((*offset, *size))),
                Some(Member::Hardlink(target)) => key = target.clone(),
                Some(Member::Symlink(target)) => match resolve_link(&key, target) {
                    Some(next) => key = next,
                    None => {
                        return Err(format!(
                            "`{member}`: a symbolic link that leads out of the archive"
                        ))
                    }
                },
            }
        }
        Err(format!("`{member}`: too many levels of links"))
    }
}

/// The archive path a symlink at `at` with `target` points to; `None` if it leaves
/// the archive.
fn resolve_link(at: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = if target.first() == Some(&b'/') {
        Vec::new()
    } else {
        let mut parts: Vec<&[u8]> = at.split(|b| *b == b'/').collect();
        parts.pop();
        parts
    };
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            _ => parts.push(part),
        }
    }
    Some(parts.join(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_links_resolve_inside_the_archive() {
        assert_eq!(
            resolve_link(b"a/layer.tar", b"../b/layer.tar").unwrap(),
            b"b/layer.tar"
        );
        assert_eq!(resolve_link(b"a/x", b"/blobs/y").unwrap(), b"blobs/y");
        assert!(resolve_link(b"a/x", b"../../etc/passwd").is_none());
    }

    #[test]
    fn architectures_are_normalized() {
        assert_eq!(normalize_arch("x86_64"), "amd64");
        assert_eq!(normalize_arch("aarch64"), "arm64");
        assert_eq!(normalize_arch("riscv64"), "riscv64");
    }
}
