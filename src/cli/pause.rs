//! `retryq pause`, `retryq resume` and `retryq paused` (spec §13.3): pauses
//! shared by the fleet through its state table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Failure;
use crate::clock::rfc3339;
use crate::config::StateSettings;
use crate::fleet::pause::Pause;
use crate::fleet::FleetState;

/// The fleet's table, or the error a pause without one gets.
fn fleet(state_table: Option<String>) -> Result<FleetState, Failure> {
    let table = state_table.filter(|t| !t.is_empty()).ok_or_else(|| {
        Failure::Usage(
            "pauses are shared through the fleet's state table: give --state-table T (or set STATE_TABLE); without a table there is nothing every process reads".into(),
        )
    })?;
    Ok(FleetState::from_env(StateSettings {
        table,
        ..StateSettings::default()
    }))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// `--until T` (RFC 3339) or `--for D` as an end in ms since the epoch.
pub(super) fn end_of(until: Option<&str>, for_: Option<&str>) -> Result<Option<u64>, Failure> {
    let end = match (until, for_) {
        (Some(t), _) => {
            let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    Failure::Usage(format!("--until {t:?}: not an RFC 3339 time ({e})"))
                })?;
            let ms = at.unix_timestamp_nanos() / 1_000_000;
            u64::try_from(ms).map_err(|_| Failure::Usage(format!("--until {t:?}: before 1970")))?
        }
        (None, Some(d)) => {
            let length =
                parse_length(d).map_err(|e| Failure::Usage(format!("--for {d:?}: {e}")))?;
            now_ms().saturating_add(length.as_millis() as u64)
        }
        (None, None) => return Ok(None),
    };
    if end <= now_ms() {
        return Err(Failure::Usage("--until: that time has passed".into()));
    }
    Ok(Some(end))
}

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

pub(super) async fn pause(
    pattern: &str,
    end: Option<u64>,
    state_table: Option<String>,
) -> Result<(), Failure> {
    pattern
        .parse::<crate::policy::hosts::HostPattern>()
        .map_err(|e| Failure::Usage(format!("PATTERN {pattern:?}: {e}")))?;
    let fleet = fleet(state_table)?;
    let pause = fleet
        .pause(pattern, end)
        .await
        .map_err(|e| Failure::Work(e.to_string()))?;
    println!("paused {} {}", pause.pattern, until_text(&pause));
    Ok(())
}

pub(super) async fn resume(pattern: &str, state_table: Option<String>) -> Result<(), Failure> {
    let fleet = fleet(state_table)?;
    let was = fleet
        .resume(pattern)
        .await
        .map_err(|e| Failure::Work(e.to_string()))?;
    match was {
        true => println!("resumed {pattern}"),
        false => println!("{pattern} was not paused"),
    }
    Ok(())
}

pub(super) async fn list(state_table: Option<String>, json: bool) -> Result<(), Failure> {
    let fleet = fleet(state_table)?;
    let now = now_ms();
    let pauses: Vec<Pause> = fleet
        .pauses()
        .await
        .map_err(|e| Failure::Work(e.to_string()))?
        .into_iter()
        .filter(|p| p.in_force(now))
        .collect();
    if json {
        let text = serde_json::to_string_pretty(&pauses).expect("serializable");
        println!("{text}");
        return Ok(());
    }
    for p in &pauses {
        println!(
            "{:<40} since {} {}",
            p.pattern,
            rfc3339(p.since_ms),
            until_text(p)
        );
    }
    println!("{} pause(s)", pauses.len());
    Ok(())
}

/// "until T" or "until resumed".
pub fn until_text(p: &Pause) -> String {
    match p.until_ms {
        Some(end) => format!("until {}", rfc3339(end)),
        None => "until resumed".into(),
    }
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

    #[test]
    fn an_end_in_the_past_or_malformed_is_refused_naming_its_flag() {
        let past = end_of(Some("2001-01-01T00:00:00Z"), None).unwrap_err();
        assert!(matches!(past, Failure::Usage(m) if m.contains("--until")));
        let bad = end_of(Some("tomorrow"), None).unwrap_err();
        assert!(matches!(bad, Failure::Usage(m) if m.contains("--until")));
        let later = end_of(None, Some("1h")).unwrap().unwrap();
        assert!(later > now_ms() + 3_500_000);
        assert_eq!(end_of(None, None).unwrap(), None);
    }
}
