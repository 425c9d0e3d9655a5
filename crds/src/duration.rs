//! Durations as written in Permit specs (a positive integer and one unit of `s`, `m`, `h`,
//! `d`), and the lexer they share with the operator's duration flags (which also take `ms`).

use std::time::Duration;

/// The unit written after a duration's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationUnit {
    /// `ms`
    Millis,
    /// `s`
    Seconds,
    /// `m`
    Minutes,
    /// `h`
    Hours,
    /// `d`
    Days,
}

impl DurationUnit {
    /// `n` of this unit; `None` when that does not fit a [`Duration`] of `u64` milliseconds.
    pub fn times(self, n: u64) -> Option<Duration> {
        let ms_per_unit: u64 = match self {
            Self::Millis => 1,
            Self::Seconds => 1_000,
            Self::Minutes => 60_000,
            Self::Hours => 3_600_000,
            Self::Days => 86_400_000,
        };
        n.checked_mul(ms_per_unit).map(Duration::from_millis)
    }
}

/// Splits `<digits><unit>` (ASCII digits, then exactly one of `ms`, `s`, `m`, `h`, `d`; nothing
/// else, no spaces, no sign, no fraction) into its number and unit (pure). `None` for
/// anything else, and for numbers of more than 18 digits.
pub fn split_duration(s: &str) -> Option<(u64, DurationUnit)> {
    let (digits, unit) = if let Some(d) = s.strip_suffix("ms") {
        (d, DurationUnit::Millis)
    } else {
        let unit = match s.bytes().last()? {
            b's' => DurationUnit::Seconds,
            b'm' => DurationUnit::Minutes,
            b'h' => DurationUnit::Hours,
            b'd' => DurationUnit::Days,
            _ => return None,
        };
        (&s[..s.len() - 1], unit)
    };
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, unit))
}

/// The longest duration accepted (365 days).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not `<digits><unit>`.
    #[error("{0:?} is not a duration: write a number and one unit of s, m, h or d, e.g. 24h")]
    Syntax(String),
    /// Zero length.
    #[error("{0:?} is zero; durations must be positive")]
    Zero(String),
    /// Longer than [`MAX_DURATION`].
    #[error("{0:?} is longer than the maximum of 365d")]
    TooLong(String),
}

/// Parses `30s`, `15m`, `24h`, `7d`.
///
/// # Errors
/// [`DurationError`] naming the rule that failed.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(s.to_owned());
    let (n, unit) = split_duration(s)
        // At most 9 digits and a one-letter unit.
        .filter(|(_, unit)| *unit != DurationUnit::Millis && s.len() <= 10)
        .ok_or_else(syntax)?;
    let d = unit.times(n).ok_or_else(syntax)?;
    if n == 0 {
        Err(DurationError::Zero(s.to_owned()))
    } else if d > MAX_DURATION {
        Err(DurationError::TooLong(s.to_owned()))
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
    }

    #[test]
    fn rejects_bad_syntax_zero_and_too_long_naming_the_rule() {
        for bad in [
            "",
            "h",
            "24",
            "1.5h",
            "-1h",
            "24H",
            "1h30m",
            " 1h",
            "१h",
            "500ms",
            "1234567890s",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(parse_duration("0s"), Err(DurationError::Zero(_))));
        let err = parse_duration("366d").expect_err("too long");
        assert!(err.to_string().contains("365d"), "{err}");
    }

    #[test]
    fn the_shared_lexer_takes_digits_and_exactly_one_unit() {
        assert_eq!(split_duration("500ms"), Some((500, DurationUnit::Millis)));
        assert_eq!(split_duration("0s"), Some((0, DurationUnit::Seconds)));
        assert_eq!(split_duration("10m"), Some((10, DurationUnit::Minutes)));
        assert_eq!(split_duration("1h"), Some((1, DurationUnit::Hours)));
        assert_eq!(split_duration("7d"), Some((7, DurationUnit::Days)));
        for bad in [
            "", "ms", "s", "5", "5 s", "+5s", "5S", "5sec", "1.5s", "1m30s", "5mss",
        ] {
            assert_eq!(split_duration(bad), None, "{bad:?}");
        }
        assert_eq!(
            DurationUnit::Days.times(7),
            Some(Duration::from_secs(604_800))
        );
        assert_eq!(DurationUnit::Days.times(u64::MAX / 1000), None);
    }
}
