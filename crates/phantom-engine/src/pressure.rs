//! Pressure stall information (PSI): how much the host is waiting for CPU and memory.
//! The supervisor pauses pool refills above its thresholds so that warm pools never
//! push an overloaded host further.

/// A sample of pressure, in percent (`some avg10` of /proc/pressure/{cpu,memory}).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    pub cpu: f64,
    pub memory: f64,
}

/// Where pressure comes from: the kernel, or a fake in tests.
pub trait PressureSource {
    /// None when the host has no PSI.
    fn sample(&mut self) -> Option<Pressure>;
}

/// /proc/pressure.
#[derive(Debug, Default)]
pub struct ProcPressure;

fn some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

impl PressureSource for ProcPressure {
    fn sample(&mut self) -> Option<Pressure> {
        let read = |r: &str| std::fs::read_to_string(format!("/proc/pressure/{r}")).ok();
        Some(Pressure {
            cpu: some_avg10(&read("cpu")?)?,
            memory: some_avg10(&read("memory")?)?,
        })
    }
}

/// Pressure files in another directory (`cpu` and `memory`, in /proc/pressure's
/// format): a container's view, or a test's fake written to disk.
#[derive(Debug, Clone)]
pub struct DirPressure(pub std::path::PathBuf);

impl PressureSource for DirPressure {
    fn sample(&mut self) -> Option<Pressure> {
        let read = |r: &str| std::fs::read_to_string(self.0.join(r)).ok();
        Some(Pressure {
            cpu: some_avg10(&read("cpu")?)?,
            memory: some_avg10(&read("memory")?)?,
        })
    }
}

/// A source that replays fixed samples (the last one repeats).
#[derive(Debug, Clone)]
pub struct FakePressure {
    pub samples: Vec<Pressure>,
}

impl PressureSource for FakePressure {
    fn sample(&mut self) -> Option<Pressure> {
        if self.samples.len() > 1 {
            Some(self.samples.remove(0))
        } else {
            self.samples.first().copied()
        }
    }
}

/// Thresholds above which refills pause, in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub cpu: f64,
    pub memory: f64,
}

impl Thresholds {
    /// Why a sample is too high, if it is.
    pub fn exceeded(&self, p: Pressure) -> Option<String> {
        if p.memory > self.memory {
            Some(format!(
                "memory pressure {:.1}% > {:.1}%",
                p.memory, self.memory
            ))
        } else if p.cpu > self.cpu {
            Some(format!("cpu pressure {:.1}% > {:.1}%", p.cpu, self.cpu))
        } else {
            None
        }
    }
}

/// The host's idle CPU share over short windows (from /proc/stat), to tell a host
/// with no core to spare: refilling a pool ahead of time then only takes CPU from the
/// runs under way.
#[derive(Debug, Default)]
pub(crate) struct IdleCpu {
    /// The last reading: when, idle and total jiffies.
    last: Option<(std::time::Instant, u64, u64)>,
    /// The idle share between the last two readings.
    share: Option<f64>,
}

impl IdleCpu {
    /// The idle share (0 to 1) between the last two readings, read again when the last
    /// one is at least `window` old. None before two readings, or without /proc/stat.
    pub(crate) fn share(&mut self, window: std::time::Duration) -> Option<f64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|(at, _, _)| now.duration_since(at) < window)
        {
            return self.share;
        }
        let (idle, total) = idle_and_total(&std::fs::read_to_string("/proc/stat").ok()?)?;
        if let Some((_, idle0, total0)) = self.last {
            if total > total0 {
                self.share = Some(idle.saturating_sub(idle0) as f64 / (total - total0) as f64);
            }
        }
        self.last = Some((now, idle, total));
        self.share
    }
}

/// Idle (idle + iowait) and total jiffies of all CPUs, from /proc/stat's `cpu` line.
pub(crate) fn idle_and_total(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let total = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_share_comes_from_the_cpu_line_of_proc_stat() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\nintr 1 2\n";
        assert_eq!(idle_and_total(stat), Some((820, 980)));
        assert_eq!(idle_and_total("intr 1\n"), None);
    }

    #[test]
    fn parses_the_kernels_format() {
        let text = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_avg10(text), Some(12.5));
        assert_eq!(some_avg10("full avg10=1.00\n"), None);
    }

    #[test]
    fn thresholds_name_what_is_too_high() {
        let t = Thresholds {
            cpu: 80.0,
            memory: 40.0,
        };
        assert_eq!(
            t.exceeded(Pressure {
                cpu: 10.0,
                memory: 10.0
            }),
            None
        );
        assert!(t
            .exceeded(Pressure {
                cpu: 10.0,
                memory: 50.0
            })
            .unwrap()
            .starts_with("memory pressure 50.0%"));
        assert!(t
            .exceeded(Pressure {
                cpu: 90.0,
                memory: 10.0
            })
            .unwrap()
            .starts_with("cpu pressure 90.0%"));
    }

    #[test]
    fn fake_replays_then_repeats() {
        let a = Pressure {
            cpu: 1.0,
            memory: 2.0,
        };
        let b = Pressure {
            cpu: 3.0,
            memory: 4.0,
        };
        let mut f = FakePressure {
            samples: vec![a, b],
        };
        assert_eq!(f.sample(), Some(a));
        assert_eq!(f.sample(), Some(b));
        assert_eq!(f.sample(), Some(b));
    }
}
