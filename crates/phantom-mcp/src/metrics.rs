//! What `get_metrics` reports: runs served by how they started, and end-to-end latency
//! percentiles (a tool call's run, from its arguments to its report, in this server).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// Latency samples kept for the percentiles (the most recent ones).
const SAMPLES: usize = 10_000;

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    runs: u64,
    warm: u64,
    prewarmed: u64,
    cold: u64,
    failed_to_start: u64,
    cancelled: u64,
    timed_out: u64,
    latencies_ms: VecDeque<f64>,
}

/// Latency percentiles in milliseconds, over `samples` runs.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Snapshot {
    pub uptime_s: f64,
    /// Runs that got a sandbox (whatever their exit code).
    pub runs_served: u64,
    pub warm: u64,
    /// Of the warm ones: served by a pre-started interpreter.
    pub prewarmed: u64,
    pub cold: u64,
    /// Calls whose sandbox could not start (bad request, host failure).
    pub failed_to_start: u64,
    pub cancelled: u64,
    pub timed_out: u64,
    pub latency_ms: Percentiles,
}

/// The `q` quantile (0..=1) of sorted `v`, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Metrics {
    /// A run that got a sandbox; `start` is the report's (cold, warm, prewarmed,
    /// forked).
    pub fn record(&self, start: &str, wall_ms: f64, cancelled: bool, timed_out: bool) {
        let mut m = self.inner.lock().expect("metrics lock");
        m.runs += 1;
        match start {
            "warm" => m.warm += 1,
            // A zygote's fork is warm too (the interpreter was loaded before).
            "prewarmed" | "forked" => {
                m.warm += 1;
                m.prewarmed += 1;
            }
            _ => m.cold += 1,
        }
        m.cancelled += cancelled as u64;
        m.timed_out += timed_out as u64;
        if m.latencies_ms.len() == SAMPLES {
            m.latencies_ms.pop_front();
        }
        m.latencies_ms.push_back(wall_ms);
    }

    pub fn record_failure(&self) {
        self.inner.lock().expect("metrics lock").failed_to_start += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        let m = self.inner.lock().expect("metrics lock");
        let mut sorted: Vec<f64> = m.latencies_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let round = |v: Option<f64>| v.map(|x| (x * 100.0).round() / 100.0);
        Snapshot {
            uptime_s: (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            runs_served: m.runs,
            warm: m.warm,
            prewarmed: m.prewarmed,
            cold: m.cold,
            failed_to_start: m.failed_to_start,
            cancelled: m.cancelled,
            timed_out: m.timed_out,
            latency_ms: Percentiles {
                samples: sorted.len(),
                p50: round(quantile(&sorted, 0.50)),
                p95: round(quantile(&sorted, 0.95)),
                p99: round(quantile(&sorted, 0.99)),
                max: round(sorted.last().copied()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.95), Some(95.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[7.0], 0.5), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn counts_by_start() {
        let m = Metrics::default();
        m.record("cold", 30.0, false, true);
        m.record("warm", 5.0, true, false);
        m.record("prewarmed", 2.0, false, false);
        m.record_failure();
        let s = m.snapshot();
        assert_eq!((s.runs_served, s.cold, s.warm, s.prewarmed), (3, 1, 2, 1));
        assert_eq!((s.failed_to_start, s.cancelled, s.timed_out), (1, 1, 1));
        assert_eq!(s.latency_ms.samples, 3);
        assert_eq!(s.latency_ms.p50, Some(5.0));
        assert_eq!(s.latency_ms.max, Some(30.0));
    }
}
