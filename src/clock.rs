//! Instants in the future, without a panic; wall-clock times as people
//! read them.

use std::time::{Duration, Instant};

/// `now + wait`, or as far as the clock goes: never a panic, whatever the
/// wait.
pub fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(u32::MAX.into())))
        .unwrap_or(now)
}

#[cfg(feature = "processor")]
/// A time in ms since the epoch as RFC 3339, to the second (UTC).
pub fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let at =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(feature = "processor")]
/// `30s`, `15m`, `2h`, `1d`: a number and one unit.
pub fn parse_length(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("needs a unit: s, m, h or d (as in 30s, 15m, 2h, 1d)")?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| "begins with a whole number (as in 30s, 15m, 2h, 1d)")?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{unit:?} is not a unit: s, m, h or d")),
    };
    match number.checked_mul(unit) {
        Some(0) => Err("must be longer than 0".into()),
        Some(secs) if secs <= 3650 * 86_400 => Ok(Duration::from_secs(secs)),
        _ => Err("at most 3650d".into()),
    }
}

/// As [`later`], on tokio's clock: the same instant in a running program,
/// and one that a test can pause and move (`tokio::time::pause`).
pub fn later_on_tokio_clock(wait: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(u32::MAX.into())))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_a_number_and_a_unit() {
        assert_eq!(parse_length("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_length("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_length("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_length("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "30", "s", "1w", "1.5h", "-1h", "0s", "99999d"] {
            assert!(parse_length(bad).is_err(), "{bad:?}");
        }
    }
}
