//! Parsers of the CLI's argument values that come from outside (durations, signal names): every
//! value is refused with one clear line or accepted as something the libraries can use as is.

use std::fmt;
use std::time::Duration;

use keepalive::Signal;

/// The longest duration any flag accepts: 100 years (`100y`, humantime's years of 365.25 days).
///
/// Far beyond any real timeout, and far below what `Instant + Duration` can hold, so no
/// arithmetic on an accepted value can overflow: a "wait for ever" is spelled `100y`.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Why a duration flag's value was refused.
#[derive(Debug)]
pub(crate) enum DurationError {
    /// Not a humantime duration (`500ms`, `5s`, `1m`, `2h 30m`).
    Invalid(humantime::DurationError),
    /// Longer than [`MAX_DURATION`].
    TooLong,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::Invalid(err) => write!(f, "{err} (expected a duration such as 500ms, 5s, 1m)"),
            DurationError::TooLong => f.write_str("longer than the maximum: durations are at most 100y"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses a humantime duration (`500ms`, `5s`, `1m`) for clap; refuses more than [`MAX_DURATION`].
pub(crate) fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(s).map_err(DurationError::Invalid)?;
    if d > MAX_DURATION {
        return Err(DurationError::TooLong);
    }
    Ok(d)
}

/// Parses a signal name or number (`SIGTERM`, `TERM`, `sigterm`, `15`; real-time signals by number).
pub(crate) fn parse_signal(s: &str) -> Result<Signal, keepalive::Error> {
    s.parse()
}

#[cfg(test)]
mod tests;
