//! Checkpoint-request signal names: `USR1`, `USR2`, `RTMIN+N`, `RTMAX-N` (optionally `SIG`-prefixed) or a number.
//!
//! Numbers follow Linux/glibc: SIGUSR1 = 10, SIGUSR2 = 12, SIGRTMIN = 34, SIGRTMAX = 64.

/// glibc's SIGRTMIN (the kernel's 32 and 33 are reserved by the C library).
pub const SIGRTMIN: u32 = 34;
/// Linux SIGRTMAX.
pub const SIGRTMAX: u32 = 64;
const SIGUSR1: u32 = 10;
const SIGUSR2: u32 = 12;

/// Why a signal specification is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("unknown signal (use USR1, USR2, RTMIN+N, RTMAX-N or a number)")]
    Unknown,
    #[error(
        "signal {0} is not usable for checkpoint requests (use USR1, USR2 or a real-time signal)"
    )]
    NotAllowed(u32),
}

/// Parses a signal name or number; only SIGUSR1, SIGUSR2 and real-time signals are allowed,
/// since any other signal already has a meaning to programs or to Slurm.
pub fn parse_signal(s: &str) -> Result<u32, SignalError> {
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let num = if name.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() {
        name.parse::<u32>().map_err(|_| SignalError::Unknown)?
    } else if name == "USR1" {
        SIGUSR1
    } else if name == "USR2" {
        SIGUSR2
    } else if name == "RTMIN" {
        SIGRTMIN
    } else if name == "RTMAX" {
        SIGRTMAX
    } else if let Some(n) = name.strip_prefix("RTMIN+") {
        SIGRTMIN + small(n)?
    } else if let Some(n) = name.strip_prefix("RTMAX-") {
        SIGRTMAX
            .checked_sub(small(n)?)
            .ok_or(SignalError::Unknown)?
    } else {
        return Err(SignalError::Unknown);
    };
    if num == SIGUSR1 || num == SIGUSR2 || (SIGRTMIN..=SIGRTMAX).contains(&num) {
        Ok(num)
    } else {
        Err(SignalError::NotAllowed(num))
    }
}

fn small(n: &str) -> Result<u32, SignalError> {
    if n.is_empty() || n.len() > 2 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignalError::Unknown);
    }
    n.parse().map_err(|_| SignalError::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("USR1"), Ok(10));
        assert_eq!(parse_signal("SIGUSR2"), Ok(12));
        assert_eq!(parse_signal("rtmin+4"), Ok(38));
        assert_eq!(parse_signal("RTMAX-2"), Ok(62));
        assert_eq!(parse_signal("40"), Ok(40));
    }
    #[test]
    fn rejects_term() {
        assert_eq!(parse_signal("TERM"), Err(SignalError::Unknown));
    }
    #[test]
    fn rejects_kill_by_number() {
        assert_eq!(parse_signal("9"), Err(SignalError::NotAllowed(9)));
    }
    #[test]
    fn rejects_beyond_rtmax() {
        assert_eq!(parse_signal("RTMIN+40"), Err(SignalError::NotAllowed(74)));
    }
    #[test]
    fn rejects_empty() {
        assert_eq!(parse_signal(""), Err(SignalError::Unknown));
    }
    #[test]
    fn rejects_garbage_offset() {
        assert_eq!(parse_signal("RTMIN+x"), Err(SignalError::Unknown));
    }
}
