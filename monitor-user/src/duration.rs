//! Human durations on the command line and in configuration (`1s`, `500ms`, `2m`).

use std::time::Duration;

/// Shortest sampling interval we accept: below this, sampling `/proc`
/// would cost more than the figures are worth.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest sampling interval we accept (one day); anything longer is a typo.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("invalid duration {input:?}: {reason} (examples: 1s, 500ms, 2m)")]
    Syntax { input: String, reason: String },
    #[error("interval {input:?} is out of range: it must be between 10ms and 24h")]
    OutOfRange { input: String },
}

/// Parses a sampling interval such as `1s`, `500ms`, `2m` or `1m30s`.
pub fn parse_interval(input: &str) -> Result<Duration, DurationError> {
    let trimmed = input.trim();
    let duration = humantime::parse_duration(trimmed).map_err(|err| DurationError::Syntax {
        input: input.to_owned(),
        reason: err.to_string(),
    })?;
    if !is_valid_interval(duration) {
        return Err(DurationError::OutOfRange {
            input: input.to_owned(),
        });
    }
    Ok(duration)
}

/// Whether an interval lies within [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
pub fn is_valid_interval(duration: Duration) -> bool {
    (MIN_INTERVAL..=MAX_INTERVAL).contains(&duration)
}

/// Parses a number of seconds such as `2.5` (the workloads' `--seconds`),
/// from 0 to one day: a negative, infinite or absurd value is refused
/// rather than turned into a `Duration` that panics or never ends.
pub fn parse_seconds(input: &str) -> Result<f64, String> {
    let seconds: f64 = input
        .trim()
        .parse()
        .map_err(|_| format!("{input:?} is not a number of seconds (e.g. 2.5)"))?;
    if !(0.0..=MAX_INTERVAL.as_secs_f64()).contains(&seconds) {
        return Err(format!("{input:?} seconds: must be between 0 and 86400"));
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        for (input, expected) in [
            ("1s", Duration::from_secs(1)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1m30s", Duration::from_secs(90)),
            (" 10s ", Duration::from_secs(10)),
            ("24h", MAX_INTERVAL),
            ("10ms", MIN_INTERVAL),
        ] {
            assert_eq!(parse_interval(input), Ok(expected), "{input}");
        }
    }

    #[test]
    fn rejects_garbage_with_the_input_in_the_message() {
        for input in ["", "fast", "1", "-1s", "1 parsec"] {
            let err = parse_interval(input).unwrap_err();
            assert!(
                matches!(err, DurationError::Syntax { .. }),
                "{input}: {err}"
            );
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(parse_seconds("2.5"), Ok(2.5));
        assert_eq!(parse_seconds("0"), Ok(0.0));
        assert_eq!(parse_seconds("86400"), Ok(86400.0));
        for bad in ["-1", "inf", "NaN", "1e300", "86401", "soon"] {
            let err = parse_seconds(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn rejects_zero_and_absurd_intervals() {
        for input in ["0s", "0ms", "1ms", "9ms", "25h", "100y"] {
            assert_eq!(
                parse_interval(input),
                Err(DurationError::OutOfRange {
                    input: input.into()
                }),
                "{input}"
            );
        }
    }
}
