//! A run on an image root: what the front end takes from the image store before clone.
//!
//! [`ImageRun::resolve`] finds the image (a missing one is a usage error that names
//! `phantom image list`) and reads its config as Docker does:
//!
//! * the command is `Entrypoint` followed by the command given after `--`, or by the
//!   image's `Cmd` when none was given; neither is a usage error;
//! * `Env` is laid over phantom's base environment (PATH, HOME, LANG, TERM: the image's
//!   win where it sets them), and `--env` over both;
//! * `WorkingDir` is the working directory when `--cwd` is absent, created in the
//!   sandbox's root if the image lacks it;
//! * `User` is not honoured yet: the command runs as the sandbox's root (an
//!   unprivileged host id), with a warning when the image asks for another user.
//!
//! The root itself is mounted by the sandbox init (`Step::ImageRoot` in `init.rs`).
//!
//! A warm pool on an image ([`ImageRun::for_pool`]) takes the same root and
//! WorkingDir but no command: each run brings its command, Env and working directory
//! resolved exactly as for a cold run, and the engine compares the image's root and
//! WorkingDir with what its pooled sandboxes were built on.

use std::path::{Component, Path, PathBuf};

use phantom_image::{ImageConfig, ImageStore};

use crate::EngineError;

/// What a run on an image takes from it, resolved before clone.
#[derive(Debug, Clone)]
pub(crate) struct ImageRun {
    pub name: String,
    /// Names the root in the store (`sha256:<hex>`): what a warm pool compares.
    pub root_id: String,
    /// The image's root directory in the store: the overlay's lower layer.
    pub lower: PathBuf,
    /// The command: Entrypoint, then the request's argv or else Cmd (empty for a
    /// pool's sandboxes, which get theirs per run).
    pub argv: Vec<String>,
    /// The image's Env, in order.
    pub env: Vec<(String, String)>,
    /// WorkingDir, absolute and without `.` or `..`: the default working directory.
    pub working_dir: Option<String>,
}

impl ImageRun {
    /// Find image `name` in the default store and apply its config to `argv` (the
    /// command given after `--`, possibly empty). Pushes a warning when the image sets
    /// a User that is not root.
    pub(crate) fn resolve(
        name: &str,
        argv: &[String],
        warnings: &mut Vec<String>,
    ) -> Result<ImageRun, EngineError> {
        let (mut run, config) = ImageRun::open(name)?;
        run.argv = command(&config, argv);
        if run.argv.is_empty() {
            return Err(EngineError::Usage(format!(
                "no command given, and image `{name}` has no Entrypoint or Cmd: put one after `--`, e.g. phantom run --image {name} -- sh"
            )));
        }
        warnings.extend(user_warning(name, &config));
        Ok(run)
    }

    /// Image `name` of the default store as a warm pool's sandboxes are built on it:
    /// its root and WorkingDir, no command (each run brings its own).
    pub(crate) fn for_pool(name: &str) -> Result<ImageRun, EngineError> {
        Ok(ImageRun::open(name)?.0)
    }

    /// Find image `name` in the default store: its root and config, no command yet.
    fn open(name: &str) -> Result<(ImageRun, ImageConfig), EngineError> {
        let store = ImageStore::open_default()?;
        let root = store.rootfs(name)?;
        let [lower] = root.layers.as_slice() else {
            return Err(EngineError::Unsupported {
                what: format!("image `{name}`"),
                why: format!(
                    "it has {} root layers; this build mounts one flattened root",
                    root.layers.len()
                ),
                hint: format!(
                    "import it again: `phantom image rm {name}`, then `phantom image import`"
                ),
            });
        };
        let config = root.config;
        let run = ImageRun {
            name: name.to_string(),
            root_id: root.info.root_id,
            lower: lower.clone(),
            argv: Vec::new(),
            env: env(&config),
            working_dir: working_dir(&config),
        };
        Ok((run, config))
    }
}

/// The command as Docker builds it: Entrypoint, then `argv` when one was given, else
/// the image's Cmd.
pub(crate) fn command(config: &ImageConfig, argv: &[String]) -> Vec<String> {
    let mut command = config.entrypoint.clone().unwrap_or_default();
    if argv.is_empty() {
        command.extend(config.cmd.iter().flatten().cloned());
    } else {
        command.extend(argv.iter().cloned());
    }
    command
}

/// The image's `KEY=value` entries; one without `=` or with an empty key is skipped
/// (Docker writes none).
pub(crate) fn env(config: &ImageConfig) -> Vec<(String, String)> {
    config
        .env
        .iter()
        .filter_map(|entry| entry.split_once('='))
        .filter(|(key, _)| !key.is_empty())
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// WorkingDir as an absolute path without `.` or `..` (resolved lexically, as Docker
/// does relative to `/`); `None` when the image sets none.
pub(crate) fn working_dir(config: &ImageConfig) -> Option<String> {
    let dir = config.working_dir.as_deref().filter(|d| !d.is_empty())?;
    let mut normal = PathBuf::from("/");
    for component in Path::new(dir).components() {
        match component {
            Component::Normal(name) => normal.push(name),
            Component::ParentDir => {
                normal.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(normal.to_string_lossy().into_owned())
}

/// A warning when the image asks to run as a user other than root, which this build
/// does not do yet.
pub(crate) fn user_warning(name: &str, config: &ImageConfig) -> Option<String> {
    let user = config.user.as_deref().unwrap_or_default();
    let is_root = |part: &str| part == "root" || part == "0";
    let root = match user.split_once(':') {
        None => user.is_empty() || is_root(user),
        Some((uid, gid)) => is_root(uid) && is_root(gid),
    };
    (!root).then(|| {
        format!(
            "image `{name}` sets User `{user}`, which phantom does not honour yet: the command runs as root of the sandbox's user namespace (an unprivileged id on the host)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn config(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.map(strings),
            cmd: cmd.map(strings),
            ..ImageConfig::default()
        }
    }

    #[test]
    fn the_command_is_built_as_docker_builds_it() {
        let given = strings(&["ls", "-l"]);
        // Cmd alone: replaced by a command, used without one.
        let c = config(None, Some(&["sh", "-c", "echo hi"]));
        assert_eq!(command(&c, &[]), ["sh", "-c", "echo hi"]);
        assert_eq!(command(&c, &given), ["ls", "-l"]);
        // Entrypoint: always first; Cmd are its default arguments.
        let c = config(Some(&["/bin/tini", "--"]), Some(&["serve"]));
        assert_eq!(command(&c, &[]), ["/bin/tini", "--", "serve"]);
        assert_eq!(command(&c, &given), ["/bin/tini", "--", "ls", "-l"]);
        // Neither: nothing to run (the caller refuses it).
        assert!(command(&config(None, None), &[]).is_empty());
        assert!(command(&config(Some(&[]), Some(&[])), &[]).is_empty());
    }

    #[test]
    fn env_entries_keep_their_order_and_skip_malformed_ones() {
        let c = ImageConfig {
            env: strings(&["PATH=/opt/bin:/bin", "EMPTY=", "A=b=c", "NOEQUALS", "=x"]),
            ..ImageConfig::default()
        };
        assert_eq!(
            env(&c),
            [
                ("PATH".to_string(), "/opt/bin:/bin".to_string()),
                ("EMPTY".to_string(), String::new()),
                ("A".to_string(), "b=c".to_string()),
            ]
        );
    }

    #[test]
    fn working_dir_is_absolute_and_cannot_climb() {
        let wd = |d: &str| {
            working_dir(&ImageConfig {
                working_dir: Some(d.to_string()),
                ..ImageConfig::default()
            })
        };
        assert_eq!(wd("/srv/app").as_deref(), Some("/srv/app"));
        assert_eq!(wd("srv/./app/").as_deref(), Some("/srv/app"));
        assert_eq!(wd("/../../etc/../srv").as_deref(), Some("/srv"));
        assert_eq!(wd("/").as_deref(), Some("/"));
        assert_eq!(wd(""), None);
        assert_eq!(working_dir(&ImageConfig::default()), None);
    }

    #[test]
    fn only_a_user_other_than_root_is_warned_about() {
        let warn = |u: Option<&str>| {
            user_warning(
                "img",
                &ImageConfig {
                    user: u.map(str::to_string),
                    ..ImageConfig::default()
                },
            )
        };
        for root in [
            None,
            Some(""),
            Some("root"),
            Some("0"),
            Some("0:0"),
            Some("root:0"),
        ] {
            assert_eq!(warn(root), None, "{root:?}");
        }
        for other in ["nobody", "1000", "1000:1000", "0:1000", "app:root"] {
            let w = warn(Some(other)).unwrap_or_else(|| panic!("{other}: no warning"));
            assert!(w.contains(&format!("User `{other}`")), "{w}");
        }
    }
}
