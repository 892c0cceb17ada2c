//! sha256 digests as OCI writes them (`sha256:<64 lower-case hex>`), the OCI ChainID,
//! and the readers an import streams every blob through: one that hashes, one that
//! bounds how many bytes may pass, one that reports progress.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::ImportProgress;

/// A validated `sha256:<hex>` digest. Only sha256 is accepted: it is what OCI requires
/// every implementation to support and what every image in the wild uses.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lower-case hex digits>`; the error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Digest, String> {
        let Some(hex) = text.strip_prefix("sha256:") else {
            return Err(match text.split_once(':') {
                Some((algorithm, _)) => {
                    format!("digest `{text}` uses {algorithm}; only sha256 is supported")
                }
                None => format!("`{text}` is not a digest (expected sha256:<64 hex digits>)"),
            });
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "`{text}` is not a digest (expected sha256:<64 lower-case hex digits>)"
            ));
        }
        Ok(Digest(text.to_string()))
    }

    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Digest {
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        Digest::from_hasher(hasher)
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        let mut text = String::with_capacity(71);
        text.push_str("sha256:");
        for byte in hasher.finalize().iter() {
            text.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            text.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
        }
        Digest(text)
    }

    /// The 64 hex digits: the file name of a blob or a chain directory.
    pub(crate) fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// `sha256:0123456789ab`: short form for messages and tables.
    pub(crate) fn short(&self) -> &str {
        &self.0[..19]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The OCI ChainID of every prefix of a layer stack, bottom first:
/// `ChainID(L0) = DiffID(L0)`, `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`.
/// Two images whose layers have the same uncompressed content have the same chain,
/// whatever their compression or manifest.
pub(crate) fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chains: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chains.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
        };
        chains.push(next);
    }
    chains
}

/// Hashes (sha256) and counts every byte read through it.
pub(crate) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Hashing<R> {
    pub(crate) fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left to the end, so the digest covers the whole stream.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    /// The digest and length of everything read so far.
    pub(crate) fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.bytes)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The error a [`Limited`] reader returns when more than its limit would pass.
#[derive(Debug)]
pub(crate) struct LimitExceeded;

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stream exceeds its size limit")
    }
}

impl std::error::Error for LimitExceeded {}

impl LimitExceeded {
    /// Whether `error` is (or wraps) a [`LimitExceeded`].
    pub(crate) fn is(error: &io::Error) -> bool {
        error
            .get_ref()
            .is_some_and(|inner| inner.is::<LimitExceeded>())
    }
}

/// Lets at most `limit` bytes through; reading past them is an error (not a silent
/// EOF, which a decompression bomb would turn into a truncated-looking archive).
pub(crate) struct Limited<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Limited<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Limited<R> {
        Limited { inner, left: limit }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // One byte more than allowed tells "at the limit" from "over it".
        let want = buf.len().min(
            usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        );
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(io::Error::other(LimitExceeded));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reports [`ImportProgress::Bytes`] about every MiB read through it.
pub(crate) struct Progress<'p, R> {
    inner: R,
    done: u64,
    total: u64,
    reported: u64,
    report: &'p mut dyn FnMut(ImportProgress),
}

impl<'p, R: Read> Progress<'p, R> {
    /// `done`: bytes of the import read before this stream; `total`: of the whole import.
    pub(crate) fn new(
        inner: R,
        done: u64,
        total: u64,
        report: &'p mut dyn FnMut(ImportProgress),
    ) -> Progress<'p, R> {
        Progress {
            inner,
            done,
            total,
            reported: done,
            report,
        }
    }
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.reported >= 1 << 20 || (n == 0 && self.done != self.reported) {
            self.reported = self.done;
            (self.report)(ImportProgress::Bytes {
                done: self.done,
                total: Some(self.total),
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256_hex() {
        let hex = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_ok());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(Digest::parse(&format!("sha256:{}/../x", "a".repeat(58))).is_err());
        let e = Digest::parse(&format!("sha512:{hex}")).unwrap_err();
        assert!(e.contains("only sha256"), "{e}");
    }

    #[test]
    fn digest_of_empty_input_is_the_well_known_one() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chain_id_follows_the_oci_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn limited_refuses_the_byte_past_its_limit() {
        let mut ok = Limited::new(&[0u8; 10][..], 10);
        assert_eq!(io::copy(&mut ok, &mut io::sink()).unwrap(), 10);
        let mut over = Limited::new(&[0u8; 11][..], 10);
        let e = io::copy(&mut over, &mut io::sink()).unwrap_err();
        assert!(LimitExceeded::is(&e));
    }
}
