//! Building an image with the system's `debootstrap`: a Debian or Ubuntu root made in a
//! work directory of the store, then imported with [`ImageStore::import_dir`]. This
//! runs a host tool as root to *build* a root filesystem; nothing is isolated here.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{ImageError, ImageInfo, ImageStore, ImportOptions, ImportProgress};

/// What to debootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debootstrap {
    /// Release codename: `bookworm`, `trixie`, `noble`, ...
    pub suite: String,
    /// Extra packages (`--include`).
    pub include: Vec<String>,
    /// Mirror URL; debootstrap's default when `None`.
    pub mirror: Option<String>,
}

impl Debootstrap {
    fn validate(&self) -> Result<(), ImageError> {
        let word = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.len() <= 64
                && s.as_bytes()[0].is_ascii_alphanumeric()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
        };
        if !word(&self.suite, b"-_.") {
            return Err(ImageError::Usage(format!(
                "invalid suite `{}`: give a release codename such as bookworm or noble",
                self.suite
            )));
        }
        if let Some(bad) = self.include.iter().find(|p| !word(p, b"+-.")) {
            return Err(ImageError::Usage(format!(
                "invalid package name `{bad}` in --include (lower-case letters, digits, + - .)"
            )));
        }
        if let Some(mirror) = &self.mirror {
            let scheme = ["http://", "https://", "file:/"]
                .iter()
                .any(|p| mirror.starts_with(p));
            if !scheme || mirror.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ImageError::Usage(format!(
                    "invalid mirror `{mirror}`: give an http://, https:// or file:/ URL"
                )));
            }
        }
        Ok(())
    }
}

/// `debootstrap` on PATH or in the sbin directories (not on a user's PATH).
fn find_debootstrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("debootstrap"))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl ImageStore {
    /// Run `debootstrap --variant=minbase [--include=...] SUITE DIR [MIRROR]` into a
    /// work directory of the store and import the result as `name`. debootstrap's
    /// output (stdout and stderr) goes to `log`.
    pub fn build_debootstrap(
        &self,
        recipe: &Debootstrap,
        name: &str,
        options: &ImportOptions,
        log: OwnedFd,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<ImageInfo, ImageError> {
        super::store::validate_name(name)?;
        recipe.validate()?;
        let Some(debootstrap) = find_debootstrap() else {
            return Err(ImageError::Tool(
                "debootstrap is not installed; install it (apt-get install debootstrap) or build the \
                 root another way and use `phantom image import-dir`"
                    .into(),
            ));
        };
        if phantom_linux::process::euid() != 0 {
            return Err(ImageError::Tool(
                "debootstrap must run as root (it creates device nodes and chroots into the new root); \
                 run this command as root, or build the root elsewhere and use `phantom image import-dir`"
                    .into(),
            ));
        }
        // Locked for its whole life: an import running meanwhile leaves it alone.
        let work = self.work_dir("build")?;
        let target = work.path().join("rootfs");
        let stderr = log
            .try_clone()
            .map_err(ImageError::io("duplicate", "the log fd"))?;
        let mut command = Command::new(&debootstrap);
        command.arg("--variant=minbase");
        if !recipe.include.is_empty() {
            command.arg(format!("--include={}", recipe.include.join(",")));
        }
        command.arg(&recipe.suite).arg(&target);
        if let Some(mirror) = &recipe.mirror {
            command.arg(mirror);
        }
        let status = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .status()
            .map_err(ImageError::io("run", &debootstrap))?;
        if !status.success() {
            return Err(ImageError::Tool(format!(
                "debootstrap {} failed ({status}); its output above says why",
                recipe.suite
            )));
        }
        let mut source = format!("debootstrap --variant=minbase {}", recipe.suite);
        if !recipe.include.is_empty() {
            source.push_str(&format!(" --include={}", recipe.include.join(",")));
        }
        if let Some(mirror) = &recipe.mirror {
            source.push_str(&format!(" {mirror}"));
        }
        self.import_tree(&target, name, options, progress, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_are_validated_before_anything_runs() {
        let ok = Debootstrap {
            suite: "bookworm".into(),
            include: vec!["python3".into(), "libstdc++6".into()],
            mirror: Some("http://deb.debian.org/debian".into()),
        };
        assert!(ok.validate().is_ok());
        let bad_suite = Debootstrap {
            suite: "../x".into(),
            ..ok.clone()
        };
        assert!(bad_suite.validate().is_err());
        let bad_pkg = Debootstrap {
            include: vec!["--foo".into()],
            ..ok.clone()
        };
        assert!(bad_pkg.validate().is_err());
        let bad_mirror = Debootstrap {
            mirror: Some("ftp://x y".into()),
            ..ok
        };
        assert!(bad_mirror.validate().is_err());
    }
}
