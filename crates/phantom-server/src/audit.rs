//! The audit log's writer: one thread with one connection to the state database,
//! fed through a channel, so that recording a request never costs the request a
//! database open (or a blocking-pool thread). Records are written in batches, one
//! transaction each; a failure is logged, never silently lost.
//!
//! Refused requests (no key, a wrong or revoked key) cost the sender nothing, so they
//! are budgeted per source address before they reach the database ([`RefusalBudget`]):
//! in each window of [`REFUSAL_WINDOW`], a source's first [`REFUSALS_PER_SOURCE`]
//! refusals are written in full (and [`REFUSALS_PER_WINDOW`] across all sources);
//! beyond that they are only counted, and when the window ends one summary row per
//! source says how many more there were ("N more refusals from ADDR") — for the
//! [`SUMMARIES_PER_WINDOW`] busiest sources, the rest in one row. An IPv6 source is
//! its /64 (one host's share of addresses). What a row may hold is bounded by
//! phantom-state ([`phantom_state::audit::MAX_FIELD_BYTES`], `MAX_ROWS`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phantom_state::audit::NewEntry;

/// How long one refusal window lasts.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Refusals of one source written in full per window.
pub const REFUSALS_PER_SOURCE: u32 = 20;
/// Refusals written in full per window, all sources together.
pub const REFUSALS_PER_WINDOW: u32 = 200;
/// Summary rows per window: one per source for the busiest, then one for the rest.
pub const SUMMARIES_PER_WINDOW: usize = 20;
/// Sources counted one by one per window; refusals from further sources are counted
/// together (the table's memory is bounded too).
const MAX_SOURCES: usize = 4096;

/// One audit record.
pub(crate) struct Entry {
    pub key: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub result: String,
    pub detail: Option<String>,
}

impl Entry {
    fn into_new(self) -> NewEntry {
        NewEntry {
            key_id: self.key,
            action: self.action,
            target: self.target,
            result: self.result,
            detail: self.detail,
        }
    }
}

/// Where a refused request came from, as budgeted: an IPv4 address, an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(Ipv4Addr),
    /// The first 64 bits of the address.
    V6Net(u64),
    /// No peer address known (not served over TCP).
    Unknown,
}

impl Source {
    pub fn of(peer: Option<IpAddr>) -> Source {
        match peer {
            Some(IpAddr::V4(a)) => Source::V4(a),
            Some(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Net((u128::from(a) >> 64) as u64),
            },
            None => Source::Unknown,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(a) => write!(f, "{a}"),
            Source::V6Net(net) => {
                write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(*net) << 64))
            }
            Source::Unknown => write!(f, "an unknown address"),
        }
    }
}

/// The refusals of one window: which are written, which only counted.
#[derive(Debug)]
pub struct RefusalBudget {
    window: Duration,
    started: Instant,
    written: u32,
    /// Per source: refusals written, refusals only counted.
    sources: HashMap<Source, (u32, u64)>,
    /// Counted refusals of sources beyond MAX_SOURCES.
    overflow: u64,
}

impl RefusalBudget {
    pub fn new(window: Duration, now: Instant) -> RefusalBudget {
        RefusalBudget {
            window,
            started: now,
            written: 0,
            sources: HashMap::new(),
            overflow: 0,
        }
    }

    /// Whether a refusal from `source` at `now` is written in full (else it is
    /// counted). Call [`RefusalBudget::rotate_if_due`] first.
    pub fn admit(&mut self, source: Source) -> bool {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            self.overflow += 1;
            return false;
        }
        let (written, counted) = self.sources.entry(source).or_insert((0, 0));
        if *written < REFUSALS_PER_SOURCE && self.written < REFUSALS_PER_WINDOW {
            *written += 1;
            self.written += 1;
            true
        } else {
            *counted += 1;
            false
        }
    }

    /// When the window has ended at `now`: its summary rows, and a new window.
    pub fn rotate_if_due(&mut self, now: Instant) -> Vec<NewEntry> {
        if now.saturating_duration_since(self.started) < self.window {
            return Vec::new();
        }
        self.rotate(now)
    }

    /// End the window now: the summary rows of what was only counted.
    pub fn rotate(&mut self, now: Instant) -> Vec<NewEntry> {
        let secs = now.saturating_duration_since(self.started).as_secs().max(1);
        let mut counted: Vec<(Source, u64)> = self
            .sources
            .drain()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(s, (_, n))| (s, n))
            .collect();
        counted.sort_by_key(|c| std::cmp::Reverse(c.1));
        let rest = counted.split_off(counted.len().min(SUMMARIES_PER_WINDOW));
        let mut rows: Vec<NewEntry> = counted
            .into_iter()
            .map(|(source, n)| summary(&source.to_string(), format!("{n} more refusals from {source} in the last {secs}s, counted, not written one by one")))
            .collect();
        let others = rest.len() as u64 + u64::from(self.overflow > 0);
        let n = rest.iter().map(|(_, n)| n).sum::<u64>() + self.overflow;
        if n > 0 {
            rows.push(summary(
                "other sources",
                format!("{n} more refusals from {others} or more other sources in the last {secs}s, counted, not written one by one"),
            ));
        }
        self.started = now;
        self.written = 0;
        self.overflow = 0;
        rows
    }
}

fn summary(target: &str, detail: String) -> NewEntry {
    NewEntry {
        key_id: None,
        action: "auth".into(),
        target: Some(target.into()),
        result: "denied".into(),
        detail: Some(detail),
    }
}

enum Message {
    Record(NewEntry),
    /// Close the refusal window, write everything, then answer.
    Flush(Sender<()>),
}

/// The sending side; cheap to use from any thread.
pub(crate) struct AuditLog {
    tx: Mutex<Sender<Message>>,
    budget: Arc<Mutex<RefusalBudget>>,
}

impl AuditLog {
    /// Start the writer thread, writing to the state database in `dir`.
    pub(crate) fn start(dir: Option<PathBuf>) -> AuditLog {
        let (tx, rx) = mpsc::channel();
        let budget = Arc::new(Mutex::new(RefusalBudget::new(
            REFUSAL_WINDOW,
            Instant::now(),
        )));
        let writer_budget = budget.clone();
        let _ = std::thread::Builder::new()
            .name("phantom-audit".into())
            .spawn(move || writer(rx, dir, writer_budget));
        AuditLog {
            tx: Mutex::new(tx),
            budget,
        }
    }

    fn send(&self, message: Message) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(message);
        }
    }

    /// A call that was let in (its rate is bounded by its key's).
    pub(crate) fn record(&self, entry: Entry) {
        self.send(Message::Record(entry.into_new()));
    }

    /// A refused call from `peer`: written within the budget, else counted.
    pub(crate) fn refusal(&self, peer: Option<IpAddr>, entry: Entry) {
        let (write, summaries) = {
            let mut budget = self.budget.lock().expect("refusal budget");
            let summaries = budget.rotate_if_due(Instant::now());
            (budget.admit(Source::of(peer)), summaries)
        };
        for row in summaries {
            self.send(Message::Record(row));
        }
        if write {
            self.record(entry);
        }
    }

    /// Write the open window's summary and everything sent so far (at shutdown);
    /// waits at most `limit`.
    pub(crate) fn flush(&self, limit: Duration) {
        let (done, wait) = mpsc::channel();
        self.send(Message::Flush(done));
        let _ = wait.recv_timeout(limit);
    }
}

fn writer(rx: Receiver<Message>, dir: Option<PathBuf>, budget: Arc<Mutex<RefusalBudget>>) {
    let mut audit = None;
    loop {
        // Woken at least once a second, to close a refusal window no request closed.
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = budget
            .lock()
            .expect("refusal budget")
            .rotate_if_due(Instant::now());
        let mut flushed = Vec::new();
        let mut next = first;
        while let Some(message) = next.take() {
            match message {
                Message::Record(e) => batch.push(e),
                Message::Flush(done) => {
                    batch.extend(
                        budget
                            .lock()
                            .expect("refusal budget")
                            .rotate(Instant::now()),
                    );
                    flushed.push(done);
                }
            }
            // What came meanwhile goes in the same transaction.
            if batch.len() < 256 {
                next = rx.recv_timeout(Duration::from_millis(2)).ok();
            }
        }
        if !batch.is_empty() {
            write(&mut audit, dir.as_deref(), &batch);
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

fn write(
    audit: &mut Option<phantom_state::audit::Audit>,
    dir: Option<&std::path::Path>,
    batch: &[NewEntry],
) {
    if audit.is_none() {
        let opened = match dir {
            Some(dir) => phantom_state::audit::Audit::open(dir),
            None => phantom_state::audit::Audit::open_default(),
        };
        match opened {
            Ok(a) => *audit = Some(a),
            Err(e) => {
                eprintln!(
                    "phantom-supervisor: audit log: {e} ({} records lost)",
                    batch.len()
                );
                return;
            }
        }
    }
    let a = audit.as_ref().expect("opened above");
    if let Err(err) = a.record_all(batch) {
        eprintln!(
            "phantom-supervisor: audit log: {err} ({} records lost)",
            batch.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_past_its_budget_is_counted_and_summed_up_once_per_window() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::new(Duration::from_secs(60), t0);
        let flood = Source::of(Some("192.0.2.7".parse().unwrap()));
        let other = Source::of(Some("198.51.100.1".parse().unwrap()));
        let n = 1000;
        let written = (0..n).filter(|_| b.admit(flood)).count();
        assert_eq!(written, REFUSALS_PER_SOURCE as usize);
        // Another source still gets its own budget.
        assert!(b.admit(other));
        assert!(b.rotate_if_due(t0 + Duration::from_secs(59)).is_empty());
        let rows = b.rotate_if_due(t0 + Duration::from_secs(60));
        assert_eq!(rows.len(), 1, "{rows:?}");
        let detail = rows[0].detail.as_deref().unwrap();
        let counted: usize = detail.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(counted + written, n, "{detail}");
        assert!(detail.contains("from 192.0.2.7"), "{detail}");
        assert_eq!(rows[0].target.as_deref(), Some("192.0.2.7"));
        // A new window: the budget is back.
        assert!(b.admit(flood));
    }

    #[test]
    fn many_sources_share_one_budget_and_ipv6_counts_by_64() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::new(Duration::from_secs(60), t0);
        // Every address of one /64 is one source.
        let written = (0..100u32)
            .filter(|i| {
                b.admit(Source::of(Some(
                    format!("2001:db8:0:1::{i:x}").parse().unwrap(),
                )))
            })
            .count();
        assert_eq!(written, REFUSALS_PER_SOURCE as usize);
        // Many sources: the window's total is bounded too, and so are its rows.
        let mut written = 0;
        for i in 0..(2 * MAX_SOURCES as u32) {
            let a = Ipv4Addr::from(0x0a00_0000 + i);
            for _ in 0..3 {
                written += usize::from(b.admit(Source::V4(a)));
            }
        }
        assert!(written <= REFUSALS_PER_WINDOW as usize, "{written}");
        assert!(b.sources.len() <= MAX_SOURCES);
        let rows = b.rotate(t0 + Duration::from_secs(1));
        assert_eq!(rows.len(), SUMMARIES_PER_WINDOW + 1, "{rows:?}");
        let total: u64 = rows
            .iter()
            .map(|r| {
                let d = r.detail.as_deref().unwrap();
                d.split(' ').next().unwrap().parse::<u64>().unwrap()
            })
            .sum();
        // Everything refused is either written or counted in a summary.
        let refused = 100 + 2 * MAX_SOURCES as u64 * 3;
        let written_in_all = REFUSALS_PER_SOURCE as u64 + written as u64;
        assert_eq!(total + written_in_all, refused);
        assert_eq!(
            Source::of(Some("2001:db8:0:1::5".parse().unwrap())).to_string(),
            "2001:db8:0:1::/64"
        );
        assert_eq!(
            Source::of(Some("::ffff:192.0.2.1".parse().unwrap())).to_string(),
            "192.0.2.1"
        );
    }
}
