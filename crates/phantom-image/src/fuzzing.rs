//! The tar reader and the layer unpacker, for the fuzz targets in `fuzz/` (not an API).

use std::io::{Cursor, Read};
use std::path::Path;

use super::tarstream::{self, WalkError};
use super::unpack::{Budget, Unpacker};
use super::{ImageError, ImportOptions, ImportStats};

/// What a walk of a tar saw: one line per entry (kind, path, link, mode, size and
/// the data bytes read), then how it ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Walked {
    pub entries: Vec<String>,
    /// `Ok` or the kind of error (`tar`, `truncated`, `io`) with its message.
    pub end: Result<(), String>,
}

/// Walk `bytes` as a tar, reading every entry's data; `seekable` walks it as the
/// outer archive of an OCI or `docker save` tar is walked (data skipped by seeking
/// when it is not read — here the even-numbered entries are left unread).
pub fn walk_tar(bytes: &[u8], seekable: bool) -> Walked {
    let mut entries = Vec::new();
    let mut each = |entry: &tarstream::Entry, data: &mut dyn Read| -> Result<(), String> {
        let index = entries.len();
        let read = if seekable && index % 2 == 0 {
            None
        } else {
            let mut sink = Vec::new();
            data.read_to_end(&mut sink).map_err(|e| e.to_string())?;
            Some(sink.len() as u64)
        };
        entries.push(format!(
            "{:?} {:?} {:?} {:o} {} {:?}",
            entry.kind,
            String::from_utf8_lossy(&entry.path),
            entry.link.as_deref().map(String::from_utf8_lossy),
            entry.mode,
            entry.size,
            read
        ));
        Ok(())
    };
    let end = if seekable {
        tarstream::walk_seekable(Cursor::new(bytes), &mut each).map(drop)
    } else {
        tarstream::walk(bytes, &mut each).map(drop)
    };
    let end = end.map_err(|e| match e {
        WalkError::Tar(m) => format!("tar: {m}"),
        WalkError::Truncated(m) => format!("truncated: {m}"),
        WalkError::Io(e) => format!("io: {e}"),
        WalkError::Callback(m) => format!("callback: {m}"),
    });
    Walked { entries, end }
}

/// Apply `blob` (a layer: a tar, gzip- or zstd-compressed or not) to the directory
/// `root` as an import does, within `options`' limits.
pub fn apply_layer(
    root: &Path,
    blob: &[u8],
    options: &ImportOptions,
) -> Result<ImportStats, ImageError> {
    let fd =
        super::tree::open_dir_path(root).map_err(|e| ImageError::io("open", root)(e.into()))?;
    let mut budget = Budget::new(options);
    Unpacker::new(fd, &mut budget).apply_blob(blob, "layer")?;
    Ok(budget.stats)
}
