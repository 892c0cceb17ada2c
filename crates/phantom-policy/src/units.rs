//! Sizes, durations and CPU counts as people write them in policies and on the command
//! line.
//!
//! * [`parse_bytes`] — `4096` (bytes), `512K`, `512KB`, `512KiB`, `512M`, `512MB`,
//!   `1G`, `1GiB`, `2T`, `1.5GB`. **Every unit is a power of 1024**: `1MB` = `1MiB` =
//!   1 048 576 bytes (as in Docker's `--memory 512m` and the kernel's `512M`). Case and
//!   a space before the unit do not matter.
//! * [`parse_duration_ms`] — `500ms`, `30s`, `2m`, `1h`, `1.5s`, `1m30s`; a plain
//!   number is seconds (`30` = 30 s). Results are whole milliseconds.
//! * [`parse_cpus`] — `1`, `1.0`, `0.5`, `2.25`: a number of CPUs, more than 0 and at
//!   most 1024, with at most three decimals; returned in thousandths (`0.5` → 500).
//!
//! Each returns a [`UnitError`] that quotes the input and shows a valid example.

/// Why a size, duration or CPU count did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("cannot parse {0:?} as a size (use e.g. 512MB, 1GiB, or 4096 for bytes)")]
    Size(String),
    #[error("cannot parse {0:?} as a duration (use e.g. 30s, 500ms, 2m, 1h)")]
    Duration(String),
    #[error("cannot parse {0:?} as a number of CPUs (use e.g. 1.0, 0.5, 2)")]
    Cpus(String),
    #[error("{input:?} is too large (at most {max})")]
    TooLarge { input: String, max: &'static str },
    #[error("{0:?} is not a whole number of bytes (write e.g. 1536 or 1.5KB)")]
    FractionalBytes(String),
    #[error("{0:?} is finer than a millisecond (durations are whole milliseconds)")]
    SubMillisecond(String),
    #[error("the number of CPUs must be more than 0 and at most 1024, found {0:?}")]
    CpusOutOfRange(String),
    #[error("{0:?} has more than three decimals (CPUs are counted in thousandths)")]
    CpusTooPrecise(String),
}

/// A non-negative decimal number split into its digits: `12.50` → (12, 50, 2).
struct Decimal {
    whole: u128,
    fraction: u128,
    fraction_digits: u32,
}

/// Parses `digits[.digits]` at the start of `s`; returns the number and the rest.
/// `None` when `s` does not start with a digit or a number is absurdly long.
fn split_decimal(s: &str) -> Option<(Decimal, &str)> {
    let end_whole = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (whole_text, rest) = s.split_at(end_whole);
    let (fraction_text, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            after.split_at(end)
        }
        None => ("", rest),
    };
    if whole_text.is_empty() && fraction_text.is_empty() {
        return None;
    }
    // 30 digits keep every product below in u128 range.
    if whole_text.len() > 30 || fraction_text.len() > 30 {
        return None;
    }
    let parse = |t: &str| {
        if t.is_empty() {
            Some(0)
        } else {
            t.parse::<u128>().ok()
        }
    };
    Some((
        Decimal {
            whole: parse(whole_text)?,
            fraction: parse(fraction_text)?,
            fraction_digits: fraction_text.len() as u32,
        },
        rest,
    ))
}

impl Decimal {
    /// `self * unit`, exactly, as (integer part, whether a remainder was dropped).
    fn times(&self, unit: u128) -> Option<(u128, bool)> {
        let scale = 10u128.checked_pow(self.fraction_digits)?;
        let whole = self.whole.checked_mul(unit)?;
        let fraction = self.fraction.checked_mul(unit)?;
        Some((whole.checked_add(fraction / scale)?, fraction % scale != 0))
    }
}

/// Parses a size in bytes. See the module docs for the accepted forms.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::Size(s.to_owned());
    let text = s.trim();
    let (number, unit) = split_decimal(text).ok_or_else(bad)?;
    let multiplier: u128 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let too_large = || UnitError::TooLarge {
        input: s.to_owned(),
        max: "16EiB",
    };
    let (bytes, remainder) = number.times(multiplier).ok_or_else(too_large)?;
    if remainder {
        return Err(UnitError::FractionalBytes(s.to_owned()));
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses a duration into milliseconds. See the module docs for the accepted forms.
pub fn parse_duration_ms(s: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::Duration(s.to_owned());
    let too_large = || UnitError::TooLarge {
        input: s.to_owned(),
        max: "about 584 million years",
    };
    let text = s.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut rest = text;
    let mut total_us: u128 = 0;
    let mut segments = 0;
    while !rest.is_empty() {
        let (number, after) = split_decimal(rest).ok_or_else(bad)?;
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let micros: u128 = match unit.to_ascii_lowercase().as_str() {
            // A plain number is seconds, but only on its own: `1m30` is a typo.
            "" if segments == 0 && after.trim().is_empty() => 1_000_000,
            "ms" => 1_000,
            "s" | "sec" | "secs" => 1_000_000,
            "m" | "min" | "mins" => 60_000_000,
            "h" | "hr" | "hrs" => 3_600_000_000,
            _ => return Err(bad()),
        };
        let (us, remainder) = number.times(micros).ok_or_else(too_large)?;
        if remainder {
            return Err(UnitError::SubMillisecond(s.to_owned()));
        }
        total_us = total_us.checked_add(us).ok_or_else(too_large)?;
        segments += 1;
        rest = after.trim_start();
    }
    if total_us % 1_000 != 0 {
        return Err(UnitError::SubMillisecond(s.to_owned()));
    }
    u64::try_from(total_us / 1_000).map_err(|_| too_large())
}

/// Parses a number of CPUs into thousandths of a CPU. See the module docs.
pub fn parse_cpus(s: &str) -> Result<u32, UnitError> {
    let text = s.trim();
    if text.starts_with('-') {
        return Err(UnitError::CpusOutOfRange(s.to_owned()));
    }
    let (number, rest) = split_decimal(text).ok_or_else(|| UnitError::Cpus(s.to_owned()))?;
    if !rest.is_empty() {
        return Err(UnitError::Cpus(s.to_owned()));
    }
    let (millis, remainder) = number
        .times(1000)
        .ok_or_else(|| UnitError::CpusOutOfRange(s.to_owned()))?;
    if remainder {
        return Err(UnitError::CpusTooPrecise(s.to_owned()));
    }
    if millis == 0 || millis > 1024 * 1000 {
        return Err(UnitError::CpusOutOfRange(s.to_owned()));
    }
    u32::try_from(millis).map_err(|_| UnitError::CpusOutOfRange(s.to_owned()))
}

/// Renders a byte count the way a user would write it (`512MiB`, `1GiB`, `1500B`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{name}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Renders a duration the way a user would write it, exactly (`30s`, `10m`, `1h`,
/// `1500ms`): what [`parse_duration_ms`] reads back to the same value.
pub fn format_duration_ms(ms: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000)];
    for (name, size) in UNITS {
        if ms >= size && ms % size == 0 {
            return format!("{}{name}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Renders a byte count for people to read, rounded to one decimal (`1.5 GiB`,
/// `320.0 KiB`, `12 B`): sizes in reports and in the image and snapshot stores'
/// messages. [`format_bytes`] is for sizes a user would write back.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_format_back_to_what_they_parse() {
        for (ms, text) in [
            (30_000, "30s"),
            (600_000, "10m"),
            (3_600_000_000, "1000h"),
            (1_500, "1500ms"),
            (0, "0ms"),
        ] {
            assert_eq!(format_duration_ms(ms), text);
            assert_eq!(parse_duration_ms(text).unwrap(), ms);
        }
    }

    use super::*;

    #[test]
    fn bytes_accept_the_documented_forms() {
        let mib = 1u64 << 20;
        for (text, expected) in [
            ("4096", 4096),
            ("512MB", 512 * mib),
            ("512M", 512 * mib),
            ("512 mb", 512 * mib),
            ("512MiB", 512 * mib),
            ("1GiB", 1024 * mib),
            ("1G", 1024 * mib),
            ("1.5GB", 1536 * mib),
            ("64KB", 64 * 1024),
            ("0", 0),
            ("1TB", 1 << 40),
        ] {
            assert_eq!(parse_bytes(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bytes_reject_nonsense_with_an_example() {
        for text in ["", "MB", "512XB", "-1", "1.2.3", "0x10", "12 34"] {
            let err = parse_bytes(text).unwrap_err();
            assert!(matches!(err, UnitError::Size(_)), "{text}: {err}");
            assert!(err.to_string().contains("512MB"));
        }
        assert!(matches!(
            parse_bytes("1.5"),
            Err(UnitError::FractionalBytes(_))
        ));
        assert!(matches!(
            parse_bytes("99999999999TB"),
            Err(UnitError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_bytes("999999999999999999999999999999999999"),
            Err(UnitError::Size(_))
        ));
    }

    #[test]
    fn durations_accept_the_documented_forms() {
        for (text, expected) in [
            ("30s", 30_000),
            ("500ms", 500),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("30", 30_000),
            ("1.5s", 1_500),
            ("0.5", 500),
            ("1m30s", 90_000),
            ("1h 2m 3s", 3_723_000),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration_ms(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn durations_reject_nonsense() {
        for text in ["", "s", "30x", "1m30", "-1s", "1d"] {
            assert!(
                matches!(parse_duration_ms(text), Err(UnitError::Duration(_))),
                "{text}"
            );
        }
        assert!(matches!(
            parse_duration_ms("0.0001s"),
            Err(UnitError::SubMillisecond(_))
        ));
        assert!(matches!(
            parse_duration_ms("99999999999999999999h"),
            Err(UnitError::TooLarge { .. })
        ));
    }

    #[test]
    fn cpus_are_thousandths_in_range() {
        assert_eq!(parse_cpus("1.0"), Ok(1000));
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert_eq!(parse_cpus("1024"), Ok(1_024_000));
        assert_eq!(parse_cpus("0.001"), Ok(1));
        for text in ["0", "0.0", "-1", "1025", "1e3"] {
            assert!(parse_cpus(text).is_err(), "{text}");
        }
        assert!(matches!(
            parse_cpus("0.0001"),
            Err(UnitError::CpusTooPrecise(_))
        ));
        assert!(matches!(parse_cpus("two"), Err(UnitError::Cpus(_))));
    }

    #[test]
    fn formatted_bytes_parse_back() {
        for bytes in [0u64, 1, 1500, 4096, 64 << 20, 1 << 30, 3 << 40, 12345 << 10] {
            assert_eq!(parse_bytes(&format_bytes(bytes)), Ok(bytes), "{bytes}");
        }
    }
}
