//! Admission: per-key token buckets (429 + Retry-After), per-key and global
//! concurrency (a guard per admitted sandbox), and pressure (PSI) thresholds (503).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

#[cfg(test)]
mod tests {
    use super::*;

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
