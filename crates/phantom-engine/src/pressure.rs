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

#[cfg(test)]
mod tests {
    use super::*;

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
