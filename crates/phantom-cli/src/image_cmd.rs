//! `phantom image import|import-dir|list|inspect|rm|build`: the image store from the
//! command line. Each subcommand maps its flags onto `phantom_image` and
//! prints what the store returns; a progress bar goes to stderr when it is a terminal.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use phantom_image::{
    Debootstrap, ImageError, ImageInfo, ImageStore, ImportOptions, ImportProgress,
};
use phantom_policy::units::human_size;

use crate::{age, error_line, print_json};

/// Shown by `phantom image --help`.
pub const EXAMPLES: &str = "Examples:
  docker save python:3.11-slim -o python.tar && phantom image import python.tar
  skopeo copy docker://alpine:3.20 oci:alpine-oci:3.20 && phantom image import alpine-oci
  phantom image import-dir ./rootfs --name my-root
  sudo phantom image build --debootstrap bookworm --name debian:bookworm --include python3
  phantom image list
  phantom image inspect python:3.11-slim --json
  phantom image rm python:3.11-slim

The store is /var/lib/phantom/images for root, else $XDG_STATE_HOME/phantom/images
(~/.local/state/phantom/images); PHANTOM_STATE_DIR=DIR puts it in DIR/images.";

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    #[command(
        after_help = "Layers may be uncompressed, gzip or zstd; the archive itself may be gzip or
zstd compressed. Every blob's sha256 is verified; layers that would write outside the
image, through a symlink or to a device are refused or defused; setuid bits are
stripped unless --keep-setuid. Importing a name that exists replaces that image.

Examples:
  phantom image import python.tar
  phantom image import ./oci-layout --name ci:2024 --json
  phantom image import huge.tar --max-size 32GiB"
    )]
    Import(ImportArgs),
    /// Import a plain root directory (a chroot, a debootstrap result) as an image.
    #[command(
        after_help = "Symlinks are copied as symlinks and never followed; device nodes, fifos and
sockets are skipped; other filesystems mounted inside are left out.

Example:
  phantom image import-dir ./rootfs --name my-root"
    )]
    ImportDir(ImportDirArgs),
    /// List the images in the store.
    List {
        /// One JSON array of image records instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show an image: digests, layers, sizes, and the config a run uses.
    Inspect {
        /// The image's name, as `phantom image list` shows it.
        name: String,
        /// The image record as JSON, with the path of its root (`rootfs`).
        #[arg(long)]
        json: bool,
    },
    /// Remove an image (its root stays while another image uses it).
    #[command(visible_alias = "remove")]
    Rm {
        /// The image's name.
        name: String,
    },
    /// Build a Debian or Ubuntu image with the system's debootstrap (needs root).
    #[command(
        after_help = "Runs `debootstrap --variant=minbase [--include=...] SUITE DIR [MIRROR]` in a work
directory of the store, then imports DIR as with `phantom image import-dir`.

Example:
  sudo phantom image build --debootstrap bookworm --name debian:bookworm --include python3"
    )]
    Build(BuildArgs),
}

#[derive(Args, Debug)]
pub struct ImportFlags {
    /// Keep setuid/setgid bits (stripped by default: the store is on the host).
    #[arg(long)]
    keep_setuid: bool,
    /// Refuse an image whose files add up to more than SIZE.
    #[arg(long, value_name = "SIZE", default_value = "8GiB", value_parser = parse_size)]
    max_size: u64,
    /// Refuse an image with more than N entries (files, directories, links).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_entries: u64,
    /// Print the imported image's record as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An OCI image layout directory or tar, or a `docker save` archive.
    #[arg(value_name = "FILE|DIR")]
    source: PathBuf,
    /// Name in the store (default: the name the image carries, else the file name).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    flags: ImportFlags,
}

#[derive(Args, Debug)]
pub struct ImportDirArgs {
    /// The root directory to import.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Name in the store.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    flags: ImportFlags,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The release to bootstrap: bookworm, trixie, noble, ...
    #[arg(long, value_name = "SUITE")]
    debootstrap: String,
    /// Name in the store.
    #[arg(long)]
    name: String,
    /// Extra packages, comma-separated.
    #[arg(long, value_name = "PKG,...", value_delimiter = ',')]
    include: Vec<String>,
    /// Debian/Ubuntu mirror URL (debootstrap's default otherwise).
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    #[command(flatten)]
    flags: ImportFlags,
}

fn parse_size(text: &str) -> Result<u64, String> {
    phantom_policy::units::parse_bytes(text).map_err(|e| e.to_string())
}

impl ImportFlags {
    fn options(&self) -> ImportOptions {
        ImportOptions {
            keep_setuid: self.keep_setuid,
            max_bytes: self.max_size,
            max_entries: self.max_entries,
        }
    }
}

pub fn image(cmd: ImageCommand) -> i32 {
    let store = match ImageStore::open_default() {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    match cmd {
        ImageCommand::Import(args) => {
            let started = Instant::now();
            let mut bar = Bar::new();
            let result = store.import(
                &args.source,
                args.name.as_deref(),
                &args.flags.options(),
                &mut |event| bar.update(event),
            );
            bar.finish();
            report_import(result, args.flags.json, started)
        }
        ImageCommand::ImportDir(args) => {
            let started = Instant::now();
            let mut bar = Bar::new();
            let result =
                store.import_dir(&args.dir, &args.name, &args.flags.options(), &mut |event| {
                    bar.update(event)
                });
            bar.finish();
            report_import(result, args.flags.json, started)
        }
        ImageCommand::Build(args) => {
            // debootstrap talks a lot: to stderr, so stdout stays the result (--json).
            let log = match std::io::stderr().as_fd().try_clone_to_owned() {
                Ok(fd) => fd,
                Err(e) => {
                    error_line(format!("duplicate stderr: {e}"));
                    return 1;
                }
            };
            let recipe = Debootstrap {
                suite: args.debootstrap,
                include: args.include,
                mirror: args.mirror,
            };
            let started = Instant::now();
            let mut bar = Bar::new();
            let result = store.build_debootstrap(
                &recipe,
                &args.name,
                &args.flags.options(),
                log,
                &mut |event| bar.update(event),
            );
            bar.finish();
            report_import(result, args.flags.json, started)
        }
        ImageCommand::List { json } => match store.list() {
            Ok(images) if json => print_json(&images),
            Ok(images) => {
                print_table(&images);
                0
            }
            Err(e) => fail(e),
        },
        ImageCommand::Inspect { name, json } => match store.rootfs(&name) {
            Ok(root) if json => {
                let mut value = serde_json::to_value(&root.info).expect("image records serialize");
                value["rootfs"] = serde_json::json!(root.layers[0]);
                print_json(&value)
            }
            Ok(root) => {
                print_info(&root.info, &root.layers[0]);
                0
            }
            Err(e) => fail(e),
        },
        ImageCommand::Rm { name } => match store.remove(&name) {
            Ok(removed) if removed.root_removed => {
                println!("removed {name}");
                0
            }
            Ok(removed) => {
                println!(
                    "removed {name} (its root stays: {} use it)",
                    removed.root_shared_with.join(", ")
                );
                0
            }
            Err(e) => fail(e),
        },
    }
}

fn fail(e: ImageError) -> i32 {
    error_line(&e);
    e.exit_code()
}

fn report_import(result: Result<ImageInfo, ImageError>, json: bool, started: Instant) -> i32 {
    let info = match result {
        Ok(info) => info,
        Err(e) => return fail(e),
    };
    if json {
        return print_json(&info);
    }
    let layers = match info.layers.len() {
        0 => String::new(),
        1 => "1 layer, ".into(),
        n => format!("{n} layers, "),
    };
    println!(
        "imported {} ({}): {layers}{} in {} files, {:.1} s",
        info.name,
        short(&info.id),
        human_size(info.unpacked_bytes),
        info.files,
        started.elapsed().as_secs_f64()
    );
    let stats = &info.import;
    if stats.reused_root {
        println!("  the store had this root already: nothing new was stored");
    } else if stats.reused_layers > 0 {
        println!(
            "  {} of its layers were in the store already (their files are shared)",
            stats.reused_layers
        );
    }
    if stats.devices_skipped > 0 {
        println!(
            "  {} device nodes or fifos skipped (a sandbox gets its own /dev)",
            stats.devices_skipped
        );
    }
    if stats.setid_stripped > 0 {
        println!(
            "  setuid/setgid bits stripped from {} entries (--keep-setuid keeps them)",
            stats.setid_stripped
        );
    }
    0
}

/// `sha256:0123456789ab` -> `0123456789ab`.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn print_table(images: &[ImageInfo]) {
    if images.is_empty() {
        println!("no images (import one with `phantom image import FILE`)");
        return;
    }
    let width = images
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<12}  {:<13}  {:>6}  {:>10}  {:>10}  IMPORTED",
        "NAME", "ID", "PLATFORM", "LAYERS", "SIZE", "UNPACKED"
    );
    for image in images {
        println!(
            "{:<width$}  {:<12}  {:<13}  {:>6}  {:>10}  {:>10}  {}",
            image.name,
            short(&image.id),
            format!("{}/{}", image.os, image.architecture),
            image.layers.len(),
            human_size(image.size),
            human_size(image.unpacked_bytes),
            age(image.imported_at)
        );
    }
}

fn print_info(info: &ImageInfo, rootfs: &std::path::Path) {
    let list = |v: &Option<Vec<String>>| match v {
        Some(items) => serde_json::to_string(items).expect("strings serialize"),
        None => "-".into(),
    };
    println!("name        {}", info.name);
    println!("id          {}", info.id);
    println!("digest      {}", info.digest.as_deref().unwrap_or("-"));
    println!("format      {} ({})", info.format.as_str(), info.source);
    let variant = info
        .variant
        .as_deref()
        .map(|v| format!("/{v}"))
        .unwrap_or_default();
    println!("platform    {}/{}{variant}", info.os, info.architecture);
    println!("created     {}", info.created.as_deref().unwrap_or("-"));
    println!("imported    {}", age(info.imported_at));
    println!(
        "size        {} in layers, {} unpacked in {} files",
        human_size(info.size),
        human_size(info.unpacked_bytes),
        info.files
    );
    println!("root        {}", rootfs.display());
    println!("config");
    println!(
        "  user        {}",
        info.config.user.as_deref().unwrap_or("-")
    );
    println!(
        "  workdir     {}",
        info.config.working_dir.as_deref().unwrap_or("-")
    );
    println!("  entrypoint  {}", list(&info.config.entrypoint));
    println!("  cmd         {}", list(&info.config.cmd));
    for (i, env) in info.config.env.iter().enumerate() {
        println!("  {:<11} {env}", if i == 0 { "env" } else { "" });
    }
    println!("layers ({})", info.layers.len());
    for layer in &info.layers {
        println!(
            "  {:<19} {:>10}  diff {}",
            layer
                .digest
                .as_deref()
                .map(|d| &d[..d.len().min(19)])
                .unwrap_or("-"),
            human_size(layer.size),
            &layer.diff_id[..layer.diff_id.len().min(19)]
        );
    }
}

/// The progress bar on stderr, drawn from the first event on (after debootstrap's own
/// output, for `build`); nothing when stderr is not a terminal.
struct Bar {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Bar {
    fn new() -> Bar {
        Bar {
            enabled: std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    fn update(&mut self, event: ImportProgress) {
        if !self.enabled {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(style("{spinner} {msg}"));
            bar
        });
        match event {
            ImportProgress::Resolved {
                layers,
                unpack,
                bytes,
            } => {
                if layers > 0 && unpack == 0 {
                    bar.set_message("every layer is in the store already");
                } else if bytes > 0 {
                    bar.set_length(bytes);
                    bar.set_style(style(
                        "{msg:<12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    ));
                } else {
                    bar.set_style(style("{spinner} {msg} {bytes} copied ({bytes_per_sec})"));
                    bar.set_message("copying");
                }
            }
            ImportProgress::Layer { index, count, .. } => {
                bar.set_message(format!("layer {index}/{count}"))
            }
            ImportProgress::Bytes { done, .. } => bar.set_position(done),
            ImportProgress::Finishing => bar.set_message("finishing"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("progress templates are constants")
        .progress_chars("=> ")
}
