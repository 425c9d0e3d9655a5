//! Durations as written in Permit specs: a positive integer and one unit (`s`, `m`, `h`, `d`).

use std::time::Duration;

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
    let unit = s.chars().last().ok_or_else(syntax)?;
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 9 {
        return Err(syntax());
    }
    let n: u64 = digits.parse().map_err(|_| syntax())?;
    let secs = match unit {
        's' => n,
        'm' => n * 60,
        'h' => n * 3600,
        'd' => n * 86_400,
        _ => return Err(syntax()),
    };
    let d = Duration::from_secs(secs);
    if secs == 0 {
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
        for bad in ["", "h", "24", "1.5h", "-1h", "24H", "1h30m", " 1h", "१h"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(parse_duration("0s"), Err(DurationError::Zero(_))));
        let err = parse_duration("366d").expect_err("too long");
        assert!(err.to_string().contains("365d"), "{err}");
    }
}
