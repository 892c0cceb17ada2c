//! Admission: per-key token buckets (429 + Retry-After), per-key and global
//! concurrency (a guard per admitted sandbox), pressure (PSI) thresholds (503), the
//! deadlines of every request ([`Deadlines`]) and the worker threads a key may hold
//! at once ([`Workers`]).
//!
//! Blocking work (an engine call, file I/O, a key lookup) runs on tokio's blocking
//! pool, whose threads cannot be taken back from a call that hangs: a deadline ends the
//! *request* (504, its slot given back), not the thread. So each piece of blocking work
//! also holds a worker permit of its key until the thread is really done: however its
//! calls hang, one key can hold at most [`WORKERS_PER_KEY`] threads, and the others keep
//! theirs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A token bucket: `burst` tokens, refilled at `rate_per_min`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_min: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(burst.max(1)),
            per_sec: f64::from(rate_per_min.max(1)) / 60.0,
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Take one token at `now`; `Err(wait)` says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The key's request rate (429).
    Rate { retry_after: Duration },
    /// The key's sandboxes at once (429).
    KeyBusy { limit: u32 },
    /// The server's sandboxes at once (503).
    Full { limit: usize },
    /// Host pressure above the thresholds (503).
    Pressure { why: String },
    /// The key's worker threads are all busy (503).
    Workers { limit: usize },
}

/// Counts of sandboxes in flight, per key and in all.
#[derive(Debug, Default)]
pub struct Inflight {
    per_key: HashMap<String, u32>,
    total: usize,
}

/// Held while an admitted sandbox runs; gives its slot back on drop.
pub struct Slot {
    inflight: Arc<Mutex<Inflight>>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut f = self.inflight.lock().expect("inflight lock");
        f.total = f.total.saturating_sub(1);
        if let Some(n) = f.per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Take a slot for `key` (limit `per_key`) within `global` (counting `persistent`
/// sandboxes that already hold one each).
pub fn take_slot(
    inflight: &Arc<Mutex<Inflight>>,
    key: &str,
    per_key: u32,
    global: usize,
    persistent: usize,
) -> Result<Slot, Refusal> {
    let mut f = inflight.lock().expect("inflight lock");
    if f.total + persistent >= global {
        return Err(Refusal::Full { limit: global });
    }
    let n = f.per_key.entry(key.to_string()).or_insert(0);
    if *n >= per_key {
        return Err(Refusal::KeyBusy { limit: per_key });
    }
    *n += 1;
    f.total += 1;
    Ok(Slot {
        inflight: inflight.clone(),
        key: key.to_string(),
    })
}

/// The number of sandboxes in flight now.
pub fn in_flight(inflight: &Arc<Mutex<Inflight>>) -> usize {
    inflight.lock().expect("inflight lock").total
}

/// How long each kind of request may take before it is answered 504 and gives back
/// its slot (a run is also killed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// An engine call that answers from its tables (list, get, census, pools, the
    /// workspace's fd), a key lookup.
    pub call: Duration,
    /// Creating or destroying a persistent sandbox.
    pub lifecycle: Duration,
    /// Reading, writing or listing files of a workspace.
    pub files: Duration,
    /// A snapshot of a workspace.
    pub snapshot: Duration,
    /// A run or an exec until the engine says it started...
    pub start: Duration,
    /// ...then its own timeout plus this.
    pub run_margin: Duration,
    /// How long a request waits for one of its key's worker threads.
    pub queue: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            call: Duration::from_secs(30),
            lifecycle: Duration::from_secs(120),
            files: Duration::from_secs(60),
            snapshot: Duration::from_secs(600),
            start: Duration::from_secs(120),
            run_margin: Duration::from_secs(30),
            queue: Duration::from_secs(10),
        }
    }
}

/// Blocking threads one key (or all key lookups together) may hold at once.
pub const WORKERS_PER_KEY: usize = 64;
/// Blocking threads of all keys at once: below tokio's pool of 512, so that what the
/// server needs for itself always finds a thread.
pub const WORKERS: usize = 448;

/// Worker permits: per key and in all.
pub struct Workers {
    all: Arc<Semaphore>,
    per_key: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_key_limit: usize,
}

/// Held by a piece of blocking work until its thread is done.
pub struct WorkerPermit {
    _key: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl Workers {
    pub fn new(per_key: usize, all: usize) -> Workers {
        Workers {
            all: Arc::new(Semaphore::new(all)),
            per_key: Mutex::new(HashMap::new()),
            per_key_limit: per_key,
        }
    }

    /// A permit for `key`, waiting at most `wait` for one.
    pub async fn acquire(&self, key: &str, wait: Duration) -> Result<WorkerPermit, Refusal> {
        let mine = self
            .per_key
            .lock()
            .expect("workers lock")
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_key_limit)))
            .clone();
        let refused = || Refusal::Workers {
            limit: self.per_key_limit,
        };
        let both = async {
            let key = mine.acquire_owned().await.ok()?;
            let all = self.all.clone().acquire_owned().await.ok()?;
            Some(WorkerPermit {
                _key: key,
                _all: all,
            })
        };
        match tokio::time::timeout(wait, both).await {
            Ok(Some(p)) => Ok(p),
            _ => Err(refused()),
        }
    }

    /// Permits of `key` held now.
    pub fn held(&self, key: &str) -> usize {
        let map = self.per_key.lock().expect("workers lock");
        map.get(key)
            .map_or(0, |s| self.per_key_limit - s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_key_holding_all_its_workers_leaves_the_others_theirs() {
        let w = Workers::new(2, 3);
        let wait = Duration::from_millis(50);
        let a1 = w.acquire("a", wait).await.unwrap();
        let _a2 = w.acquire("a", wait).await.unwrap();
        assert_eq!(
            w.acquire("a", wait).await.err(),
            Some(Refusal::Workers { limit: 2 })
        );
        assert_eq!(w.held("a"), 2);
        let _b1 = w.acquire("b", wait).await.unwrap();
        // The pool in all is full now: b waits, and gets one when a's comes back.
        assert!(w.acquire("b", wait).await.is_err());
        drop(a1);
        w.acquire("b", wait).await.unwrap();
        assert_eq!(w.held("a"), 1);
    }

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60, 3, t0); // one a second, three at once
        for _ in 0..3 {
            b.take(t0).unwrap();
        }
        let wait = b.take(t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Half a second later: still empty, half a second to go.
        let wait = b.take(t0 + Duration::from_millis(500)).unwrap_err();
        assert!(wait <= Duration::from_millis(501), "{wait:?}");
        b.take(t0 + Duration::from_millis(1000)).unwrap();
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            b.take(later).unwrap();
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn slots_count_per_key_and_in_all_and_come_back_on_drop() {
        let f = Arc::new(Mutex::new(Inflight::default()));
        let a1 = take_slot(&f, "a", 2, 3, 0).unwrap();
        let _a2 = take_slot(&f, "a", 2, 3, 0).unwrap();
        assert_eq!(
            take_slot(&f, "a", 2, 3, 0).err(),
            Some(Refusal::KeyBusy { limit: 2 })
        );
        let _b1 = take_slot(&f, "b", 2, 3, 0).unwrap();
        assert_eq!(
            take_slot(&f, "b", 2, 3, 0).err(),
            Some(Refusal::Full { limit: 3 })
        );
        drop(a1);
        assert_eq!(in_flight(&f), 2);
        take_slot(&f, "b", 2, 3, 0).unwrap();
        // Persistent sandboxes count against the global limit.
        assert_eq!(
            take_slot(&f, "c", 2, 3, 1).err(),
            Some(Refusal::Full { limit: 3 })
        );
    }
}
