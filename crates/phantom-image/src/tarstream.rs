//! Reading tar archives with bounded memory: the `tar` crate's raw entries, with GNU
//! long names and PAX records handled here, each under a size cap (the crate itself
//! would buffer an extension header of any size). Used for layer tars and for the
//! outer archive of an OCI or `docker save` tar.
//!
//! [`walk`] also says whether the archive ended with its end-of-archive block: a tar
//! that stops at an entry boundary without it was cut short.

use std::io::{self, Read, Seek, SeekFrom};

use super::digest::LimitExceeded;

/// The longest entry path or link target accepted (Linux's PATH_MAX).
pub(crate) const MAX_PATH: usize = 4096;
/// The largest PAX extended header accepted.
const MAX_PAX: u64 = 1 << 20;
/// How many extension headers may precede one entry.
const MAX_EXTENSIONS: u32 = 8;
const BLOCK: u64 = 512;

/// What an entry is. Sockets cannot be in a tar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    /// Character or block device, or fifo.
    Special,
}

/// One entry, with long names and PAX records applied.
#[derive(Debug)]
pub(crate) struct Entry {
    pub kind: Kind,
    pub path: Vec<u8>,
    /// Symlink target or hardlink target (an archive path).
    pub link: Option<Vec<u8>>,
    pub mode: u32,
    pub mtime: i64,
    /// Bytes of data that follow the header.
    pub size: u64,
    /// Where the data starts in the (uncompressed) archive.
    pub offset: u64,
}

/// Why a walk stopped.
pub(crate) enum WalkError<E> {
    /// The archive is not a valid tar.
    Tar(String),
    /// The archive ends early.
    Truncated(String),
    /// Reading the stream under the archive failed (it may be [`LimitExceeded`]).
    Io(io::Error),
    /// The callback refused an entry.
    Callback(E),
}

/// How many bytes the tar reader has consumed (for the end-of-archive check).
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

/// Calls `each` for every entry of the tar read from `reader`, with a reader for its
/// data (which `each` may leave unread). Returns `reader`, positioned after the
/// end-of-archive block. An archive without that block, or cut inside an entry, is
/// [`WalkError::Truncated`].
pub(crate) fn walk<R: Read, E>(
    reader: R,
    mut each: impl FnMut(&Entry, &mut dyn Read) -> Result<(), E>,
) -> Result<R, WalkError<E>> {
    let mut archive = tar::Archive::new(Counting {
        inner: reader,
        pos: 0,
    });
    let entries = archive
        .entries()
        .map_err(|e| WalkError::Tar(e.to_string()))?;
    let end = visit(entries, &mut each)?;
    finish(archive.into_inner(), end)
}

/// [`walk`] for a seekable archive: data that `each` leaves unread is skipped by
/// seeking, not read.
pub(crate) fn walk_seekable<R: Read + Seek, E>(
    reader: R,
    mut each: impl FnMut(&Entry, &mut dyn Read) -> Result<(), E>,
) -> Result<R, WalkError<E>> {
    let mut archive = tar::Archive::new(Counting {
        inner: reader,
        pos: 0,
    });
    let entries = archive
        .entries_with_seek()
        .map_err(|e| WalkError::Tar(e.to_string()))?;
    let end = visit(entries, &mut each)?;
    finish(archive.into_inner(), end)
}

fn finish<R, E>(counting: Counting<R>, end_of_entries: u64) -> Result<R, WalkError<E>> {
    // The tar reader stops at the first all-zero block (consumed: pos is past it) or at
    // EOF where a header should be (pos is where that header would start).
    if counting.pos <= end_of_entries {
        return Err(WalkError::Truncated(
            "the tar archive ends without its end-of-archive block (cut short)".into(),
        ));
    }
    Ok(counting.inner)
}

/// Extension headers seen since the last real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    mtime: Option<i64>,
    size: Option<u64>,
    count: u32,
}

fn tar_error<E>(e: io::Error) -> WalkError<E> {
    if LimitExceeded::is(&e) {
        return WalkError::Io(e);
    }
    let text = clip(&e.to_string());
    if e.kind() == io::ErrorKind::UnexpectedEof
        || text.contains("entire block")
        || text.contains("unexpected EOF")
    {
        WalkError::Truncated(format!("the tar archive is cut short ({text})"))
    } else if e.kind() == io::ErrorKind::Other {
        // The tar crate's own complaints about the format.
        WalkError::Tar(format!("not a valid tar archive: {text}"))
    } else {
        // The stream under the tar failed (a corrupt gzip or zstd stream, a read error).
        WalkError::Io(e)
    }
}

/// Returns where the entries end (the position right after the last entry's data).
fn visit<R: Read, E>(
    entries: tar::Entries<'_, R>,
    each: &mut dyn FnMut(&Entry, &mut dyn Read) -> Result<(), E>,
) -> Result<u64, WalkError<E>> {
    let mut pending = Pending::default();
    let mut end = 0u64;
    for entry in entries.raw(true) {
        let mut entry = entry.map_err(tar_error)?;
        let header = entry.header();
        let size = header.entry_size().map_err(tar_error)?;
        let offset = entry.raw_file_position();
        end = offset + size.div_ceil(BLOCK) * BLOCK;
        let type_byte = header.entry_type().as_byte();
        let kind = match type_byte {
            b'L' | b'K' | b'x' | b'g' => {
                pending.count += 1;
                if pending.count > MAX_EXTENSIONS {
                    return Err(WalkError::Tar(
                        "more than 8 extension headers before one entry".into(),
                    ));
                }
                let limit = if type_byte == b'x' || type_byte == b'g' {
                    MAX_PAX
                } else {
                    MAX_PATH as u64 + 1
                };
                if size > limit {
                    return Err(WalkError::Tar(format!(
                        "an extension header of {size} bytes (at most {limit} accepted)"
                    )));
                }
                let mut data = Vec::with_capacity(size as usize);
                (&mut entry)
                    .take(size)
                    .read_to_end(&mut data)
                    .map_err(tar_error)?;
                if (data.len() as u64) < size {
                    return Err(WalkError::Truncated(
                        "the tar archive is cut short inside an extension header".into(),
                    ));
                }
                match type_byte {
                    b'L' => pending.path = Some(trim_nul(data)),
                    b'K' => pending.link = Some(trim_nul(data)),
                    // Global records apply to every later entry; none of the ones that
                    // matter here (path, size) may be global, so they are ignored.
                    b'g' => {}
                    _ => parse_pax(&data, &mut pending).map_err(WalkError::Tar)?,
                }
                continue;
            }
            b'0' | b'\0' | b'7' => Kind::File,
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink,
            b'1' => Kind::Hardlink,
            b'3' | b'4' | b'6' => Kind::Special,
            b'S' => return Err(WalkError::Tar("GNU sparse files are not supported".into())),
            other => {
                return Err(WalkError::Tar(format!(
                    "entry type `{}` is not supported",
                    char::from(other).escape_default()
                )))
            }
        };
        if let Some(pax_size) = pending.size {
            // The raw reader steps over `header size` bytes; a PAX size that says
            // otherwise would make it read data as headers.
            if pax_size != size {
                return Err(WalkError::Tar(
                    "a PAX size record that differs from the header's size is not supported".into(),
                ));
            }
        }
        let pending = std::mem::take(&mut pending);
        let path = match pending.path {
            Some(path) => path,
            None => header.path_bytes().into_owned(),
        };
        let link = match pending.link {
            Some(link) => Some(link),
            None => header.link_name_bytes().map(|l| l.into_owned()),
        };
        if path.len() > MAX_PATH || link.as_ref().is_some_and(|l| l.len() > MAX_PATH) {
            return Err(WalkError::Tar(format!(
                "an entry path or link target longer than {MAX_PATH} bytes"
            )));
        }
        let mode = header.mode().map_err(tar_error)?;
        let mtime = match pending.mtime {
            Some(mtime) => mtime,
            None => i64::try_from(header.mtime().map_err(tar_error)?).unwrap_or(i64::MAX),
        };
        let meta = Entry {
            kind,
            path,
            link,
            mode,
            mtime,
            size,
            offset,
        };
        each(&meta, &mut entry).map_err(WalkError::Callback)?;
    }
    Ok(end)
}

/// An error text fit for one line: at most 100 characters, control characters escaped
/// (the tar crate quotes header bytes, which may be anything).
fn clip(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(100)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    out
}

fn trim_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Parses PAX records (`"<len> <key>=<value>\n"`), keeping the ones that matter.
fn parse_pax(data: &[u8], pending: &mut Pending) -> Result<(), String> {
    let bad = || "malformed PAX extended header".to_string();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break; // padding some writers leave
        }
        let space = rest.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad)?;
                pending.size = Some(size);
            }
            b"mtime" => {
                // Seconds with an optional fraction, possibly negative.
                let text = std::str::from_utf8(value).map_err(|_| bad())?;
                let whole = text.split('.').next().unwrap_or("");
                pending.mtime = Some(whole.parse().map_err(|_| bad())?);
            }
            key if key.starts_with(b"GNU.sparse.") => {
                return Err("GNU sparse files are not supported".into())
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One PAX record; its length field counts its own digits.
    fn record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while len != body.len() + len.to_string().len() {
            len = body.len() + len.to_string().len();
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn pax_records_override_path_link_and_mtime() {
        let mut data = record("path", "a/very/long/name");
        data.extend(record("linkpath", "target"));
        data.extend(record("mtime", "1700000000.25"));
        data.extend(record("SCHILY.xattr.user.x", "ignored"));
        let mut pending = Pending::default();
        parse_pax(&data, &mut pending).unwrap();
        assert_eq!(pending.path.as_deref(), Some(&b"a/very/long/name"[..]));
        assert_eq!(pending.link.as_deref(), Some(&b"target"[..]));
        assert_eq!(pending.mtime, Some(1_700_000_000));
    }

    #[test]
    fn malformed_pax_is_refused() {
        let mut pending = Pending::default();
        assert!(parse_pax(b"99 path=x\n", &mut pending).is_err());
        assert!(parse_pax(b"x path=x\n", &mut pending).is_err());
        assert!(parse_pax(&record("GNU.sparse.map", "0,1"), &mut pending).is_err());
    }

    #[test]
    fn a_tar_without_end_blocks_is_truncated() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        builder.append_data(&mut header, "f", &b"abc"[..]).unwrap();
        let full = builder.into_inner().unwrap();
        let entries_only = &full[..1024];
        let mut seen = 0;
        assert!(walk(&full[..], |_, _| -> Result<(), ()> {
            seen += 1;
            Ok(())
        })
        .is_ok());
        assert_eq!(seen, 1);
        match walk(entries_only, |_, _| -> Result<(), ()> { Ok(()) }) {
            Err(WalkError::Truncated(_)) => {}
            _ => panic!("a tar without end blocks must be refused"),
        }
    }
}
