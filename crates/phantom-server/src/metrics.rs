//! Prometheus metrics (text format at /metrics), with the seed's family names.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpawnLabels {
    pub profile: String,
    /// `warm`, `cold` or `exec`.
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabel {
    pub profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// `allowed`, `refused` or `failed`.
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SandboxLabel {
    pub sandbox: String,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0, 30.0, 60.0,
    ]
    .into_iter()
}

/// OpenMetrics text to the Prometheus text format: a counter's HELP and TYPE name its
/// `_total` samples, and there are no `# EOF` or `# UNIT` lines.
fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// p50, p95 and p99 (nearest rank) of `v`; zeros when empty.
fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    [0.5, 0.95, 0.99].map(|q| {
        let i = ((v.len() as f64) * q).ceil() as usize;
        v[i.saturating_sub(1).min(v.len() - 1)]
    })
}

/// Every family the server exports.
pub struct Metrics {
    pub registry: Registry,
    pub spawn_duration: Family<SpawnLabels, Histogram>,
    pub pool_size: Family<ProfileLabel, Gauge>,
    pub psi_cpu: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub psi_memory: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub seccomp_violations: Counter,
    pub policy_compile: Histogram,
    pub p95_spawn_ms: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub request_duration: Family<RequestLabels, Histogram>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub rate_limit_hits: Counter,
    /// Requests answered 504: past their deadline.
    pub deadlines_passed: Counter,
    pub admission_refusals: Family<ReasonLabel, Counter>,
    pub sandbox_starts: Family<KindLabel, Counter>,
    pub active_connections: Gauge,
    pub sandbox_memory: Family<SandboxLabel, Gauge>,
    pub proxy_connections: Family<DecisionLabel, Counter>,
    /// The last 1000 runs: profile, path, wall ms (for the p95 gauge and
    /// /fragments/performance).
    recent: Mutex<Vec<(String, String, f64)>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let spawn_duration = Family::<SpawnLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "phantom_fragment_spawn_duration_seconds",
            "Wall time of a sandboxed run from request to exit, by profile and path (warm, cold, exec)",
            spawn_duration.clone(),
        );
        let pool_size = Family::<ProfileLabel, Gauge>::default();
        registry.register(
            "phantom_orchestrator_warm_pool_size",
            "Sandboxes ready in the warm pool, by profile",
            pool_size.clone(),
        );
        let psi_cpu = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "phantom_orchestrator_psi_cpu_pressure_ratio",
            "CPU pressure (some avg10) as a ratio, 0 to 1",
            psi_cpu.clone(),
        );
        let psi_memory = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "phantom_orchestrator_psi_memory_pressure_ratio",
            "Memory pressure (some avg10) as a ratio, 0 to 1",
            psi_memory.clone(),
        );
        let seccomp_violations = Counter::default();
        registry.register(
            "phantom_security_seccomp_violations",
            "Runs killed by SIGSYS (a syscall the policy kills; denials answered with EPERM are not visible)",
            seccomp_violations.clone(),
        );
        let policy_compile =
            Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05]);
        registry.register(
            "phantom_security_policy_compile_duration_seconds",
            "Time to load and compile a request's policy",
            policy_compile.clone(),
        );
        let p95_spawn_ms = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "phantom_performance_p95_spawn_time_ms",
            "95th percentile of the last 1000 runs' wall time, in milliseconds",
            p95_spawn_ms.clone(),
        );
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "aisbx_request_duration_seconds",
            "HTTP request duration by method, route and status",
            request_duration.clone(),
        );
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "aisbx_auth_failures",
            "Requests refused for a missing, malformed, unknown or revoked API key",
            auth_failures.clone(),
        );
        let rate_limit_hits = Counter::default();
        registry.register(
            "aisbx_rate_limit_hits",
            "Requests answered 429 by a key's token bucket",
            rate_limit_hits.clone(),
        );
        let deadlines_passed = Counter::default();
        registry.register(
            "aisbx_deadlines_passed",
            "Requests answered 504 because they ran past their deadline",
            deadlines_passed.clone(),
        );
        let admission_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "aisbx_admission_refusals",
            "Sandboxes refused by concurrency limits or host pressure",
            admission_refusals.clone(),
        );
        let sandbox_starts = Family::<KindLabel, Counter>::default();
        registry.register(
            "aisbx_sandbox_starts",
            "Sandboxes started, by kind (run, exec, persistent)",
            sandbox_starts.clone(),
        );
        let active_connections = Gauge::default();
        registry.register(
            "aisbx_active_connections",
            "HTTP requests being served now",
            active_connections.clone(),
        );
        let sandbox_memory = Family::<SandboxLabel, Gauge>::default();
        registry.register(
            "aisbx_sandbox_memory_bytes",
            "Memory in use per persistent sandbox, by sandbox id (from its cgroup)",
            sandbox_memory.clone(),
        );
        let proxy_connections = Family::<DecisionLabel, Counter>::default();
        registry.register(
            "phantom_network_proxy_connections",
            "Connections of network-limited runs through the egress proxy, by decision: allowed, refused (by the policy), failed",
            proxy_connections.clone(),
        );
        Metrics {
            registry,
            spawn_duration,
            pool_size,
            psi_cpu,
            psi_memory,
            seccomp_violations,
            policy_compile,
            p95_spawn_ms,
            request_duration,
            auth_failures,
            rate_limit_hits,
            deadlines_passed,
            admission_refusals,
            sandbox_starts,
            active_connections,
            sandbox_memory,
            proxy_connections,
            recent: Mutex::new(Vec::new()),
        }
    }

    /// Record one finished run.
    pub fn spawned(&self, profile: &str, path: &str, wall_ms: f64) {
        self.spawn_duration
            .get_or_create(&SpawnLabels {
                profile: profile.to_string(),
                path: path.to_string(),
            })
            .observe(wall_ms / 1000.0);
        let mut recent = self.recent.lock().expect("metrics lock");
        recent.push((profile.to_string(), path.to_string(), wall_ms));
        if recent.len() > 1000 {
            let excess = recent.len() - 1000;
            recent.drain(..excess);
        }
        let all: Vec<f64> = recent.iter().map(|r| r.2).collect();
        self.p95_spawn_ms.set(percentiles(all)[1]);
    }

    /// Count and p50/p95/p99 (ms) of the recent runs.
    pub fn recent_percentiles(&self) -> (usize, f64, f64, f64) {
        let all: Vec<f64> = self
            .recent
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|r| r.2)
            .collect();
        let n = all.len();
        let [p50, p95, p99] = percentiles(all);
        (n, p50, p95, p99)
    }

    /// The recent runs' percentiles per profile and path.
    pub fn by_path(&self) -> Vec<serde_json::Value> {
        let recent = self.recent.lock().expect("metrics lock").clone();
        let mut groups: std::collections::BTreeMap<(String, String), Vec<f64>> = Default::default();
        for (profile, path, ms) in recent {
            groups.entry((profile, path)).or_default().push(ms);
        }
        groups
            .into_iter()
            .map(|((profile, path), v)| {
                let n = v.len();
                let [p50, p95, p99] = percentiles(v);
                serde_json::json!({"profile": profile, "path": path, "runs": n, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99})
            })
            .collect()
    }

    /// OpenMetrics text (what prometheus-client writes).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }

    /// The Prometheus text format (0.0.4), which scrapers and `promtool check
    /// metrics` read by default.
    pub fn encode(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_samples_in_the_prometheus_format() {
        let m = Metrics::new();
        m.rate_limit_hits.inc();
        m.spawned("default", "warm", 4.0);
        let text = m.encode();
        assert!(
            text.contains("# TYPE aisbx_rate_limit_hits_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP aisbx_rate_limit_hits_total "),
            "{text}"
        );
        assert!(text.contains("aisbx_rate_limit_hits_total 1"), "{text}");
        assert!(!text.contains("# EOF"));
        assert!(
            text.contains("phantom_performance_p95_spawn_time_ms 4"),
            "{text}"
        );
        assert!(m.encode_openmetrics().ends_with("# EOF\n"));
    }
}
