//! `retryq pause`, `retryq resume` and `retryq paused` (spec §13.3): pauses
//! shared by the fleet through its state table.

use std::time::{SystemTime, UNIX_EPOCH};

use super::Failure;
use crate::clock::{parse_length, rfc3339};
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
