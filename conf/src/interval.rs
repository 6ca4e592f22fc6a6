//! Checkpoint intervals: Slurm's time formats and the short `30s`/`10m`/`2h`/`1d` forms.
//!
//! Accepted (as in `sbatch --time`): `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
//! `D-HH:MM:SS`, plus a number with one unit suffix (`s`, `m`, `h`, `d`). The leading field
//! is unbounded; every later field must be in range (`HH` < 24 after `D-`, `MM`/`SS` < 60).
//! Zero, signs, spaces, empty fields and anything longer than [`Interval::MAX_SECS`] are refused.

use std::fmt;
use std::str::FromStr;

/// Why a string is not an interval. Every variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    #[error("empty interval")]
    Empty,
    #[error("negative interval")]
    Negative,
    #[error("interval must be greater than zero")]
    Zero,
    #[error("{field} field {value} is out of range (must be below {limit})")]
    OutOfRange {
        field: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("empty or non-numeric {field} field")]
    BadField { field: &'static str },
    #[error("interval longer than {max} seconds", max = Interval::MAX_SECS)]
    TooLong,
    #[error("not an interval (use e.g. 30s, 10m, 2h, 1d, MM, MM:SS, HH:MM:SS, D-HH:MM:SS)")]
    Syntax,
}

/// A checkpoint interval: a whole, non-zero number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval(u64);

impl Interval {
    /// Upper bound: one year. Longer values are almost certainly typos.
    pub const MAX_SECS: u64 = 366 * 86_400;
    /// One minute: the default site minimum.
    pub const ONE_MINUTE: Interval = Interval(60);

    /// Builds an interval from seconds; refuses 0 and anything above [`Self::MAX_SECS`].
    pub fn from_secs(secs: u64) -> Result<Self, IntervalError> {
        if secs == 0 {
            Err(IntervalError::Zero)
        } else if secs > Self::MAX_SECS {
            Err(IntervalError::TooLong)
        } else {
            Ok(Self(secs))
        }
    }

    /// The interval in seconds (never 0).
    pub fn as_secs(self) -> u64 {
        self.0
    }

    /// Parses any accepted format (see the module documentation).
    pub fn parse(s: &str) -> Result<Self, IntervalError> {
        if s.is_empty() {
            return Err(IntervalError::Empty);
        }
        if let Some(rest) = s.strip_prefix('-') {
            // `-5` is a negative number; `--time=5` is the next option swallowed as a value.
            return Err(
                if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                    IntervalError::Negative
                } else {
                    IntervalError::Syntax
                },
            );
        }
        if let Some(secs) = parse_suffixed(s)? {
            return Self::from_secs(secs);
        }
        Self::from_secs(parse_slurm(s)?)
    }
}

impl FromStr for Interval {
    type Err = IntervalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Interval {
    /// Canonical short form: the largest unit that divides the value exactly (`90s`, `10m`, `2h`, `1d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s.is_multiple_of(86_400) {
            write!(f, "{}d", s / 86_400)
        } else if s.is_multiple_of(3_600) {
            write!(f, "{}h", s / 3_600)
        } else if s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

/// A run of ASCII digits, at most 12 of them (so products cannot overflow `u64`).
fn digits(field: &'static str, s: &str) -> Result<u64, IntervalError> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IntervalError::BadField { field });
    }
    s.parse().map_err(|_| IntervalError::BadField { field })
}

fn bounded(field: &'static str, s: &str, limit: u64) -> Result<u64, IntervalError> {
    let value = digits(field, s)?;
    if value >= limit {
        return Err(IntervalError::OutOfRange {
            field,
            value,
            limit,
        });
    }
    Ok(value)
}

/// `30s`, `10m`, `2h`, `1d`: `Ok(None)` when the string has no unit suffix.
fn parse_suffixed(s: &str) -> Result<Option<u64>, IntervalError> {
    let Some(last) = s.chars().last() else {
        return Err(IntervalError::Empty);
    };
    let unit = match last {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        c if c.is_ascii_digit() || c == ':' || c == '-' => return Ok(None),
        _ => return Err(IntervalError::Syntax),
    };
    let number = &s[..s.len() - 1];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IntervalError::Syntax);
    }
    let n = digits("number", number)?;
    Ok(Some(n.checked_mul(unit).ok_or(IntervalError::TooLong)?))
}

/// Slurm's `[D-]HH[:MM[:SS]]` and `MM[:SS]` / `HH:MM:SS` forms, in seconds.
fn parse_slurm(s: &str) -> Result<u64, IntervalError> {
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b':' || b == b'-')
    {
        return Err(IntervalError::Syntax);
    }
    if let Some((days, rest)) = s.split_once('-') {
        let days = digits("days", days)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (h, m, sec) = match parts.as_slice() {
            [h] => (bounded("hours", h, 24)?, 0, 0),
            [h, m] => (bounded("hours", h, 24)?, bounded("minutes", m, 60)?, 0),
            [h, m, sec] => (
                bounded("hours", h, 24)?,
                bounded("minutes", m, 60)?,
                bounded("seconds", sec, 60)?,
            ),
            _ => return Err(IntervalError::Syntax),
        };
        return days
            .checked_mul(86_400)
            .and_then(|d| d.checked_add(h * 3_600 + m * 60 + sec))
            .ok_or(IntervalError::TooLong);
    }
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [m] => digits("minutes", m)?
            .checked_mul(60)
            .ok_or(IntervalError::TooLong),
        [m, sec] => {
            let sec = bounded("seconds", sec, 60)?;
            digits("minutes", m)?
                .checked_mul(60)
                .and_then(|m| m.checked_add(sec))
                .ok_or(IntervalError::TooLong)
        }
        [h, m, sec] => {
            let m = bounded("minutes", m, 60)?;
            let sec = bounded("seconds", sec, 60)?;
            digits("hours", h)?
                .checked_mul(3_600)
                .and_then(|h| h.checked_add(m * 60 + sec))
                .ok_or(IntervalError::TooLong)
        }
        _ => Err(IntervalError::Syntax),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        match Interval::parse(s) {
            Ok(i) => i.as_secs(),
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn err(s: &str) -> IntervalError {
        match Interval::parse(s) {
            Ok(i) => panic!("{s:?} should be refused, got {}s", i.as_secs()),
            Err(e) => e,
        }
    }

    #[test]
    fn slurm_minutes() {
        assert_eq!(secs("10"), 600);
        assert_eq!(secs("90"), 5_400);
    }
    #[test]
    fn slurm_minutes_seconds() {
        assert_eq!(secs("10:30"), 630);
        assert_eq!(secs("0:30"), 30);
    }
    #[test]
    fn slurm_hours_minutes_seconds() {
        assert_eq!(secs("1:00:00"), 3_600);
        assert_eq!(secs("01:02:03"), 3_723);
        assert_eq!(secs("36:00:00"), 129_600);
    }
    #[test]
    fn slurm_days_hours() {
        assert_eq!(secs("1-0"), 86_400);
        assert_eq!(secs("2-12"), 216_000);
    }
    #[test]
    fn slurm_days_hours_minutes() {
        assert_eq!(secs("1-01:30"), 91_800);
    }
    #[test]
    fn slurm_days_hours_minutes_seconds() {
        assert_eq!(secs("0-00:00:30"), 30);
        assert_eq!(secs("1-00:00:01"), 86_401);
    }
    #[test]
    fn suffixes() {
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("10m"), 600);
        assert_eq!(secs("2h"), 7_200);
        assert_eq!(secs("1d"), 86_400);
    }
    #[test]
    fn display_is_canonical_and_round_trips() {
        for (input, shown) in [
            ("90s", "90s"),
            ("10", "10m"),
            ("2:00:00", "2h"),
            ("1-0", "1d"),
        ] {
            let i = Interval::parse(input).expect("valid");
            assert_eq!(i.to_string(), shown);
            assert_eq!(Interval::parse(shown), Ok(i));
        }
    }

    // One case per malformed input.
    #[test]
    fn rejects_banana() {
        assert_eq!(err("banana"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_negative() {
        assert_eq!(err("-5"), IntervalError::Negative);
    }
    #[test]
    fn rejects_minutes_out_of_range() {
        assert!(matches!(
            err("0:99:00"),
            IntervalError::OutOfRange {
                field: "minutes",
                value: 99,
                ..
            }
        ));
    }
    #[test]
    fn rejects_seconds_out_of_range() {
        assert!(matches!(
            err("10:60"),
            IntervalError::OutOfRange {
                field: "seconds",
                ..
            }
        ));
    }
    #[test]
    fn rejects_hours_out_of_range_after_days() {
        assert!(matches!(
            err("1-24"),
            IntervalError::OutOfRange { field: "hours", .. }
        ));
    }
    #[test]
    fn rejects_empty() {
        assert_eq!(err(""), IntervalError::Empty);
    }
    #[test]
    fn rejects_zero_minutes() {
        assert_eq!(err("0"), IntervalError::Zero);
    }
    #[test]
    fn rejects_zero_suffixed() {
        assert_eq!(err("0s"), IntervalError::Zero);
    }
    #[test]
    fn rejects_zero_clock() {
        assert_eq!(err("00:00:00"), IntervalError::Zero);
    }
    #[test]
    fn rejects_zero_days() {
        assert_eq!(err("0-0"), IntervalError::Zero);
    }
    #[test]
    fn rejects_unknown_unit() {
        assert_eq!(err("5w"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_uppercase_unit() {
        assert_eq!(err("5M"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_bare_unit() {
        assert_eq!(err("m"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_combined_units() {
        assert_eq!(err("1h30m"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_plus_sign() {
        assert_eq!(err("+5"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_whitespace() {
        assert_eq!(err(" 5"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_trailing_whitespace() {
        assert_eq!(err("5 "), IntervalError::Syntax);
    }
    #[test]
    fn rejects_decimal() {
        assert_eq!(err("1.5h"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_empty_field() {
        assert!(matches!(err("10:"), IntervalError::BadField { .. }));
    }
    #[test]
    fn rejects_leading_colon() {
        assert!(matches!(err(":30"), IntervalError::BadField { .. }));
    }
    #[test]
    fn rejects_too_many_fields() {
        assert_eq!(err("1:2:3:4"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_two_dashes() {
        assert!(matches!(err("1-2-3"), IntervalError::BadField { .. }));
    }
    #[test]
    fn rejects_days_without_hours() {
        assert!(matches!(err("1-"), IntervalError::BadField { .. }));
    }
    #[test]
    fn rejects_too_long() {
        assert_eq!(err("400d"), IntervalError::TooLong);
    }
    #[test]
    fn rejects_overflowing_digits() {
        assert!(matches!(
            err("99999999999999999999s"),
            IntervalError::BadField { .. }
        ));
    }
    #[test]
    fn rejects_next_option() {
        // What a bare `--checkpoint --time=5` hands us.
        assert_eq!(err("--time=5"), IntervalError::Syntax);
    }
    #[test]
    fn rejects_a_path() {
        // What a bare `--checkpoint job.sh` hands us.
        assert_eq!(err("job.sh"), IntervalError::Syntax);
    }
}
