//! The manifest: a snapshot's tree and each file's chunk list, as JSON, stored
//! zstd-compressed under the BLAKE3 of the JSON. Pure data: encoding, decoding and the
//! checks a restore makes before it writes anything.
//!
//! ```json
//! {"format":1,"chunking":"fastcdc2020/16384/65536/262144",
//!  "root":{"mode":493,"mtime":1700000000,"nsec":0},
//!  "entries":[
//!   {"path":"src","mode":493,"mtime":1700000000,"nsec":0,"type":"dir"},
//!   {"path":"src/main.py","mode":420,"mtime":1700000000,"nsec":0,"type":"file",
//!    "size":70000,"hash":"<blake3 of the file>","chunks":[["<blake3>",40000],["<blake3>",30000]]},
//!   {"path":"src/link","mode":511,"mtime":1700000000,"nsec":0,"type":"symlink","target":"../etc"}]}
//! ```
//!
//! Entries are in walk order: a directory before its contents, names within a
//! directory in byte order. Paths and symlink targets that are not UTF-8 are written as
//! `{"hex":"..."}`.

use std::fmt;
use std::io::Read;

use phantom_policy::units::human_size;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{SnapshotLimits, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// The manifest format this code writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// Largest decompressed manifest read (a million entries fit in a few hundred MB).
pub(crate) const MAX_MANIFEST: u64 = 1 << 30;

/// Longest path in a manifest (PATH_MAX) and longest name (NAME_MAX).
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;

/// Deepest nesting accepted, when snapshotting and when restoring.
pub const MAX_DEPTH: usize = 256;

/// zstd level of chunks and manifests.
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// The BLAKE3 hash of an object's uncompressed content: its name in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ContentHash([u8; 32]);

impl ContentHash {
    pub(crate) fn of(data: &[u8]) -> ContentHash {
        ContentHash(*blake3::hash(data).as_bytes())
    }

    pub(crate) fn from_hasher(hasher: &blake3::Hasher) -> ContentHash {
        ContentHash(*hasher.finalize().as_bytes())
    }

    /// Parse 64 lowercase hex digits — the only spelling the store uses, so that a name
    /// from a manifest can never be anything but one file name.
    pub(crate) fn parse(hex: &str) -> Option<ContentHash> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(ContentHash(out))
    }

    pub(crate) fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `<ab>/<hex>`: where the object lives below its kind's directory.
    pub(crate) fn rel_path(&self) -> String {
        format!("{:02x}/{}", self.0[0], self.hex())
    }

    /// The fan-out directory name.
    pub(crate) fn fan_out(&self) -> String {
        format!("{:02x}", self.0[0])
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ContentHash, D::Error> {
        let text = String::deserialize(d)?;
        ContentHash::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not a BLAKE3 hash: {text:?}")))
    }
}

/// A path or symlink target: any bytes. JSON holds it as a string when it is UTF-8,
/// else as `{"hex": "..."}`.
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct RawBytes(pub Vec<u8>);

impl fmt::Debug for RawBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for RawBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for RawBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
                HexRepr { hex }.serialize(s)
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HexRepr {
    hex: String,
}

impl<'de> Deserialize<'de> for RawBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawBytes, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Hex(HexRepr),
        }
        match Repr::deserialize(d)? {
            Repr::Text(text) => Ok(RawBytes(text.into_bytes())),
            Repr::Hex(HexRepr { hex }) => {
                let bytes = hex.as_bytes();
                if bytes.len() % 2 != 0 {
                    return Err(serde::de::Error::custom("odd number of hex digits"));
                }
                bytes
                    .chunks_exact(2)
                    .map(|pair| {
                        std::str::from_utf8(pair)
                            .ok()
                            .and_then(|p| u8::from_str_radix(p, 16).ok())
                    })
                    .collect::<Option<Vec<u8>>>()
                    .map(RawBytes)
                    .ok_or_else(|| serde::de::Error::custom("bad hex digit"))
            }
        }
    }
}

/// Mode and modification time of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Permission bits and sticky bit (setuid/setgid are never recorded).
    pub mode: u32,
    pub mtime: i64,
    pub nsec: u32,
}

/// One chunk of a file: its hash and its uncompressed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChunkRef(pub ContentHash, pub u32);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Kind {
    Dir,
    File {
        size: u64,
        /// BLAKE3 of the whole content: names the file in the restore cache.
        hash: ContentHash,
        chunks: Vec<ChunkRef>,
    },
    Symlink {
        target: RawBytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Relative to the snapshot's root, components joined by `/`.
    pub path: RawBytes,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(flatten)]
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: u32,
    /// The chunking parameters (informational: dedup works between snapshots cut the
    /// same way).
    pub chunking: String,
    /// Mode and mtime of the snapshot's root directory.
    pub root: Meta,
    pub entries: Vec<Entry>,
}

/// Totals of a manifest, as [`Manifest::check`] counted them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

pub(crate) fn chunking() -> String {
    format!("fastcdc2020/{CHUNK_MIN}/{CHUNK_AVG}/{CHUNK_MAX}")
}

impl Manifest {
    /// The JSON, its hash (the manifest's name) and the compressed bytes to store.
    pub(crate) fn encode(&self) -> (ContentHash, Vec<u8>) {
        let json = serde_json::to_vec(self).expect("manifests serialize");
        let hash = ContentHash::of(&json);
        let compressed =
            zstd::bulk::compress(&json, ZSTD_LEVEL).expect("zstd compresses into a Vec");
        (hash, compressed)
    }

    /// Decompress and parse a stored manifest, checking that it hashes to `expected`.
    /// The error says what is wrong, for a [`super::SnapshotError::Corrupt`].
    pub(crate) fn decode(expected: &ContentHash, stored: &[u8]) -> Result<Manifest, String> {
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(stored)
            .map_err(|e| format!("not a zstd frame: {e}"))?
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut json)
            .map_err(|e| format!("not a zstd frame: {e}"))?;
        if json.len() as u64 > MAX_MANIFEST {
            return Err(format!("larger than {MAX_MANIFEST} bytes"));
        }
        let actual = ContentHash::of(&json);
        if actual != *expected {
            return Err(format!("content hashes to {actual}"));
        }
        serde_json::from_slice(&json).map_err(|e| format!("not a manifest: {e}"))
    }

    /// Everything a restore relies on, checked before it writes anything: the format;
    /// each path relative, made of real names (no empty, `.` or `..` component, no
    /// NUL), shorter than PATH_MAX; parents listed before their children and each name
    /// once (walk order, names ascending within a directory); symlink targets
    /// non-empty; chunk lengths that add up to the file size and fit the chunker's
    /// maximum; totals within `limits`. The error is the first thing wrong.
    pub(crate) fn check(&self, limits: &SnapshotLimits) -> Result<Totals, CheckError> {
        if self.format != FORMAT {
            return Err(CheckError::Unsafe(format!(
                "format {} (this phantom reads format {FORMAT})",
                self.format
            )));
        }
        if self.entries.len() as u64 > limits.max_entries {
            return Err(CheckError::Limit {
                what: format!("{} entries", self.entries.len()),
                limit: format!("{} files, directories and symlinks", limits.max_entries),
                flag: "--max-files",
            });
        }
        let bad = CheckError::Unsafe;
        check_meta(&self.root).map_err(|why| bad(format!("root: {why}")))?;
        let mut totals = Totals::default();
        // The directories enclosing the current entry, outermost first, with the last
        // name seen in each: `stack[0]` is the root (path "").
        let mut stack: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![(Vec::new(), None)];
        for entry in &self.entries {
            let path = &entry.path.0;
            let shown = &entry.path;
            let (parent, name) =
                split_checked(path).map_err(|why| bad(format!("`{shown}`: {why}")))?;
            while stack.len() > 1 && stack.last().map(|(p, _)| p.as_slice()) != Some(parent) {
                stack.pop();
            }
            let Some((top, last)) = stack.last_mut() else {
                unreachable!("the root is never popped")
            };
            if top.as_slice() != parent {
                return Err(bad(format!(
                    "`{shown}` is not inside the directory listed before it"
                )));
            }
            if last.as_deref().is_some_and(|prev| prev >= name) {
                return Err(bad(format!("`{shown}` is listed twice or out of order")));
            }
            *last = Some(name.to_vec());
            check_meta(&entry.meta).map_err(|why| bad(format!("`{shown}`: {why}")))?;
            match &entry.kind {
                Kind::Dir => {
                    totals.dirs += 1;
                    if stack.len() > MAX_DEPTH {
                        return Err(bad(format!("`{shown}` is nested deeper than {MAX_DEPTH}")));
                    }
                    stack.push((path.clone(), None));
                }
                Kind::File { size, chunks, .. } => {
                    totals.files += 1;
                    let mut sum = 0u64;
                    for ChunkRef(_, len) in chunks {
                        if *len == 0 || *len as usize > CHUNK_MAX {
                            return Err(bad(format!("`{shown}`: chunk of {len} bytes")));
                        }
                        sum += u64::from(*len);
                    }
                    if sum != *size {
                        return Err(bad(format!(
                            "`{shown}`: chunks add up to {sum} bytes, not {size}"
                        )));
                    }
                    totals.bytes = totals.bytes.saturating_add(*size);
                    if totals.bytes > limits.max_bytes {
                        return Err(CheckError::Limit {
                            what: "the size of its files".into(),
                            limit: human_size(limits.max_bytes),
                            flag: "--max-size",
                        });
                    }
                }
                Kind::Symlink { target } => {
                    totals.symlinks += 1;
                    if target.0.is_empty() || target.0.len() >= MAX_PATH || target.0.contains(&0) {
                        return Err(bad(format!("`{shown}`: symlink target `{target}`")));
                    }
                }
            }
        }
        Ok(totals)
    }
}

/// What [`Manifest::check`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckError {
    /// Something no snapshot writes: the manifest was made or edited by hand.
    Unsafe(String),
    /// Over a [`SnapshotLimits`] bound.
    Limit {
        what: String,
        limit: String,
        flag: &'static str,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Unsafe(why) => f.write_str(why),
            CheckError::Limit { what, limit, .. } => {
                write!(f, "{what} exceed the limit of {limit}")
            }
        }
    }
}

/// Split a manifest path into its parent and its last name, refusing anything that is
/// not a plain relative path.
pub(crate) fn split_checked(path: &[u8]) -> Result<(&[u8], &[u8]), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path[0] == b'/' {
        return Err("absolute path".into());
    }
    if path.len() >= MAX_PATH {
        return Err(format!("path longer than {MAX_PATH} bytes"));
    }
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" => return Err("empty path component".into()),
            b"." | b".." => return Err("`.` or `..` in the path".into()),
            name if name.contains(&0) => return Err("NUL byte in the path".into()),
            name if name.len() > MAX_NAME => {
                return Err(format!("name longer than {MAX_NAME} bytes"))
            }
            _ => {}
        }
    }
    Ok(match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (&[][..], path),
    })
}

fn check_meta(meta: &Meta) -> Result<(), String> {
    if meta.nsec >= 1_000_000_000 {
        return Err(format!("mtime nanoseconds {}", meta.nsec));
    }
    if meta.mode & !0o7777 != 0 {
        return Err(format!("mode {:o}", meta.mode));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            mode: 0o755,
            mtime: 1,
            nsec: 0,
        }
    }

    fn entry(path: &[u8], kind: Kind) -> Entry {
        Entry {
            path: RawBytes(path.to_vec()),
            meta: meta(),
            kind,
        }
    }

    fn file(path: &[u8], lens: &[u32]) -> Entry {
        let chunks: Vec<ChunkRef> = lens
            .iter()
            .map(|&l| ChunkRef(ContentHash::of(&l.to_le_bytes()), l))
            .collect();
        entry(
            path,
            Kind::File {
                size: lens.iter().map(|&l| u64::from(l)).sum(),
                hash: ContentHash::of(path),
                chunks,
            },
        )
    }

    fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest {
            format: FORMAT,
            chunking: chunking(),
            root: meta(),
            entries,
        }
    }

    fn check(entries: Vec<Entry>) -> Result<Totals, String> {
        manifest(entries)
            .check(&SnapshotLimits::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn hashes_are_64_lowercase_hex_digits() {
        let hash = ContentHash::of(b"x");
        assert_eq!(ContentHash::parse(&hash.hex()), Some(hash));
        assert_eq!(hash.hex(), blake3::hash(b"x").to_hex().as_str());
        assert_eq!(&hash.rel_path()[..3], &format!("{}/", &hash.hex()[..2]));
        for bad in [
            "",
            "../../../../etc/passwd",
            &hash.hex().to_uppercase(),
            &hash.hex()[..63],
            &format!("{}0", hash.hex()),
            &format!("{}/", &hash.hex()[..63]),
        ] {
            assert_eq!(ContentHash::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn non_utf8_names_survive_json() {
        let m = manifest(vec![
            entry(b"caf\xe9", Kind::Dir),
            entry(
                b"caf\xe9/l",
                Kind::Symlink {
                    target: RawBytes(b"\xff/x".to_vec()),
                },
            ),
            entry("naïve".as_bytes(), Kind::Dir),
        ]);
        let (hash, stored) = m.encode();
        let json = zstd::decode_all(&stored[..]).unwrap();
        assert!(String::from_utf8(json)
            .unwrap()
            .contains(r#""path":{"hex":"636166e9"}"#));
        assert_eq!(Manifest::decode(&hash, &stored).unwrap(), m);
    }

    #[test]
    fn decode_refuses_what_does_not_hash_to_its_name() {
        let (hash, stored) = manifest(vec![]).encode();
        let other = ContentHash::of(b"other");
        assert!(Manifest::decode(&other, &stored)
            .unwrap_err()
            .starts_with("content hashes to"));
        assert!(Manifest::decode(&hash, b"not zstd")
            .unwrap_err()
            .starts_with("not a zstd frame"));
    }

    #[test]
    fn a_well_formed_tree_passes() {
        let totals = check(vec![
            entry(b"a", Kind::Dir),
            entry(b"a/b", Kind::Dir),
            file(b"a/b/f", &[100, 5]),
            file(b"a/c", &[]),
            entry(
                b"a/d",
                Kind::Symlink {
                    target: RawBytes(b"../../../etc/passwd".to_vec()),
                },
            ),
            entry(b"b", Kind::Dir),
            file(b"c", &[1]),
        ])
        .unwrap();
        assert_eq!(
            totals,
            Totals {
                files: 3,
                dirs: 3,
                symlinks: 1,
                bytes: 106
            }
        );
    }

    #[test]
    fn paths_that_leave_the_destination_are_refused() {
        for path in [
            &b"../x"[..],
            b"/etc/passwd",
            b"a/../../x",
            b"./x",
            b"a//b",
            b"a/",
            b"",
            b"a\0b",
        ] {
            let entries = vec![entry(b"a", Kind::Dir), file(path, &[1])];
            assert!(
                check(entries).is_err(),
                "{:?}",
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn children_come_after_their_directory_and_names_once() {
        // A child of a directory that was never listed.
        assert!(check(vec![file(b"a/x", &[1])])
            .unwrap_err()
            .contains("not inside"));
        // A child after its directory was left.
        assert!(check(vec![
            entry(b"a", Kind::Dir),
            entry(b"b", Kind::Dir),
            file(b"a/x", &[1])
        ])
        .is_err());
        // The same name twice (would make O_EXCL fail half-way).
        assert!(check(vec![file(b"x", &[1]), file(b"x", &[1])])
            .unwrap_err()
            .contains("twice"));
        // A file where a directory's children follow.
        assert!(check(vec![file(b"a", &[1]), file(b"a/x", &[1])]).is_err());
    }

    #[test]
    fn sizes_and_limits_are_enforced() {
        assert!(check(vec![file(b"x", &[CHUNK_MAX as u32 + 1])]).is_err());
        assert!(check(vec![file(b"x", &[0])]).is_err());
        let mut lying = file(b"x", &[10]);
        if let Kind::File { size, .. } = &mut lying.kind {
            *size = 11;
        }
        assert!(check(vec![lying]).unwrap_err().contains("add up"));
        let limits = SnapshotLimits {
            max_bytes: 10,
            max_entries: 2,
        };
        assert!(manifest(vec![file(b"x", &[11])]).check(&limits).is_err());
        assert!(
            manifest(vec![file(b"x", &[1]), file(b"y", &[1]), file(b"z", &[1])])
                .check(&limits)
                .is_err()
        );
        let mut deep = Vec::new();
        let mut path = b"d".to_vec();
        for _ in 0..=MAX_DEPTH {
            deep.push(entry(&path, Kind::Dir));
            path.extend_from_slice(b"/d");
        }
        assert!(check(deep).unwrap_err().contains("deeper"));
    }
}
