//! Pauses (spec §13.3): an operator stops deliveries to the hosts a
//! pattern matches, across the fleet, until a time or until resumed.
//!
//! All pauses live in one partition (`pk` = `pause`, `sk` = `pattern#<pattern>`),
//! so one `Query` reads them all: a process reads it at most once a second
//! (one call at a time, whatever the number of records waiting) and keeps
//! the answer for a second. A read that fails keeps the last answer, and
//! asks again a second later; a process that never read one delivers (and
//! says so once, as for any table failure).
//!
//! Resuming writes the pause's end as now, so every process sees it end on
//! its next read; the item then expires a day later (TTL). A pause with an
//! end expires a day after it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;

use super::table::Update;
use super::{n, number, s, string, FleetState, Item, Key, StateError};
use crate::policy::hosts::HostPattern;

/// The partition every pause is in.
const PARTITION: &str = "pause";
/// Sort keys of pauses begin with this.
const PREFIX: &str = "pattern#";
/// How long a read of the pauses is kept.
pub const REREAD: Duration = Duration::from_secs(1);
/// An ended pause's item stays this long (for `retryq paused --all`).
const KEPT_AFTER_END: u64 = 86_400;

/// One pause, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// The host pattern, as `ALLOWED_DESTINATIONS` writes them.
    pub pattern: String,
    /// When it was set, in ms since the epoch.
    #[serde(rename = "sinceMs")]
    pub since_ms: u64,
    /// When it ends, in ms since the epoch (`None`: until resumed).
    #[serde(rename = "untilMs")]
    pub until_ms: Option<u64>,
    /// Ended by `retryq resume`, whatever the clocks say.
    #[serde(skip)]
    pub resumed: bool,
    #[serde(skip)]
    matcher: Option<HostPattern>,
}

impl Pause {
    /// Is it in force at `now_ms`?
    pub fn in_force(&self, now_ms: u64) -> bool {
        !self.resumed && self.until_ms.is_none_or(|end| end > now_ms)
    }

    /// Does it hold `url`'s host at `now_ms`?
    pub fn holds(&self, url: &url::Url, now_ms: u64) -> bool {
        let Some(matcher) = &self.matcher else {
            return false;
        };
        self.in_force(now_ms) && HostPattern::any_matches(std::slice::from_ref(matcher), url)
    }

    fn from_item(item: &Item) -> Option<Pause> {
        let pattern = string(item, "pattern")?.to_owned();
        Some(Pause {
            matcher: pattern.parse().ok(),
            pattern,
            since_ms: number(item, "since").unwrap_or(0),
            until_ms: number(item, "until"),
            resumed: matches!(item.get("resumed").map(|v| v.as_bool()), Some(Ok(true))),
        })
    }
}

/// When the pauses were last asked for, and the answer if one came.
type Asked = (Instant, Option<Arc<Vec<Pause>>>);

/// The pauses this process knows, read at most once a [`REREAD`].
#[derive(Debug, Default)]
pub struct FleetPauses {
    /// The last answer and when it was asked for (a failed read counts, so
    /// that a table that fails is asked once a second, not per record).
    known: std::sync::Mutex<Option<Asked>>,
    /// One read at a time.
    reading: tokio::sync::Mutex<()>,
    /// A failed read was logged (once per process).
    warned: std::sync::atomic::AtomicBool,
}

impl FleetPauses {
    fn fresh(&self) -> Option<Option<Arc<Vec<Pause>>>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        match &*known {
            Some((at, pauses)) if at.elapsed() < REREAD => Some(pauses.clone()),
            _ => None,
        }
    }

    fn last(&self) -> Option<Arc<Vec<Pause>>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.as_ref().and_then(|(_, p)| p.clone())
    }

    fn remember(&self, pauses: Option<Arc<Vec<Pause>>>) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), pauses));
    }
}

impl FleetState {
    /// The pause holding `url`'s host now, if any: from this process's
    /// copy, read again when older than a second. An error only when no
    /// read has ever answered.
    pub async fn pause_of(&self, url: &url::Url) -> Result<Option<Pause>, StateError> {
        let pauses = self.known_pauses().await?;
        let now = self.now_ms();
        Ok(pauses.iter().find(|p| p.holds(url, now)).cloned())
    }

    async fn known_pauses(&self) -> Result<Arc<Vec<Pause>>, StateError> {
        let known = &self.pauses;
        if let Some(Some(pauses)) = known.fresh() {
            return Ok(pauses);
        }
        let _reading = known.reading.lock().await;
        match known.fresh() {
            Some(Some(pauses)) => return Ok(pauses),
            // Failed less than a second ago: the last answer, if any.
            Some(None) => return known.last().ok_or_else(not_read),
            None => {}
        }
        match self.pauses().await {
            Ok(pauses) => {
                let pauses = Arc::new(pauses);
                known.remember(Some(pauses.clone()));
                Ok(pauses)
            }
            Err(e) => {
                let last = known.last();
                known.remember(last.clone());
                if !known
                    .warned
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(err = %e, kept = last.is_some(), "the pauses could not be read: this process keeps the last list it read (none: it delivers); asked again each second");
                }
                last.ok_or(e)
            }
        }
    }

    /// Every pause the table holds, ended ones included (one `Query`).
    pub async fn pauses(&self) -> Result<Vec<Pause>, StateError> {
        let items = self
            .table
            .query(PARTITION.to_owned(), PREFIX.to_owned())
            .await?;
        Ok(items.iter().filter_map(Pause::from_item).collect())
    }

    /// Pauses `pattern` from now until `until_ms` (`None`: until resumed).
    pub async fn pause(&self, pattern: &str, until_ms: Option<u64>) -> Result<Pause, StateError> {
        let pattern = &normalised(pattern);
        let matcher: HostPattern = pattern.parse().map_err(|e| StateError {
            operation: "pause",
            detail: format!("PATTERN {pattern:?}: {e}"),
        })?;
        let now = self.now_ms();
        let mut changes = vec![
            super::table::Change::Set("pattern", s(pattern)),
            super::table::Change::Set("since", n(now)),
            super::table::Change::Remove("resumed"),
        ];
        match until_ms {
            Some(end) => {
                changes.push(super::table::Change::Set("until", n(end)));
                changes.push(super::table::Change::Set(
                    "ttl",
                    n(end / 1000 + KEPT_AFTER_END),
                ));
            }
            None => {
                changes.push(super::table::Change::Remove("until"));
                changes.push(super::table::Change::Remove("ttl"));
            }
        }
        self.table.update(write(pattern, changes)).await?;
        Ok(Pause {
            pattern: pattern.to_owned(),
            since_ms: now,
            until_ms,
            resumed: false,
            matcher: Some(matcher),
        })
    }

    /// Ends the pause of `pattern` now; `false` when none was in force.
    pub async fn resume(&self, pattern: &str) -> Result<bool, StateError> {
        let pattern = &normalised(pattern);
        let now = self.now_ms();
        let key = Key::new(PARTITION, format!("{PREFIX}{pattern}"));
        let Some(old) = self.table.get(key).await? else {
            return Ok(false);
        };
        let was_in_force = Pause::from_item(&old).is_some_and(|p| p.in_force(now));
        // Ended by a flag, not by a time: a fleet whose clocks differ
        // from this machine's sees it end on its next read all the same.
        let changes = vec![
            super::table::Change::Set("resumed", AttributeValue::Bool(true)),
            super::table::Change::Set("until", n(now)),
            super::table::Change::Set("ttl", n(now / 1000 + KEPT_AFTER_END)),
        ];
        self.table.update(write(pattern, changes)).await?;
        Ok(was_in_force)
    }
}

fn write(pattern: &str, changes: Vec<super::table::Change>) -> Update {
    Update {
        key: Key::new(PARTITION, format!("{PREFIX}{pattern}")),
        changes,
        condition: None,
        returns: super::table::Returns::Nothing,
    }
}

/// One key per pattern, however it was typed (case, IDNA, IP notation):
/// the pattern as the URL parser normalises its host.
fn normalised(pattern: &str) -> String {
    let pattern = pattern.trim();
    pattern
        .parse::<HostPattern>()
        .map_or_else(|_| pattern.to_ascii_lowercase(), |p| p.to_string())
}

fn not_read() -> StateError {
    StateError {
        operation: "Query",
        detail: "the pauses could not be read".into(),
    }
}

/// How long a paused record is put back for: until the pause ends when
/// that is sooner, else a while that doubles with each receive. A record
/// that can be carried over waits 15 s doubling up to 5 minutes, so that a
/// record put back before a resume is tried again within 5 minutes of it.
/// One that cannot (FIFO) spends a receive of its queue's redrive count
/// each time: it waits 1 minute doubling up to an hour, so that the
/// template's count of 100 lasts about four days of pause.
pub fn wait(pause: &Pause, now_ms: u64, receive_count: u32, carried: bool) -> Duration {
    let doublings = receive_count.saturating_sub(1).min(6);
    let (first, most) = match carried {
        true => (15, 300),
        false => (60, 3600),
    };
    let backoff = Duration::from_secs((first << doublings).min(most));
    match pause.until_ms {
        Some(end) => Duration::from_millis(end.saturating_sub(now_ms)).min(backoff),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(pattern: &str, until_ms: Option<u64>) -> Pause {
        Pause {
            pattern: pattern.into(),
            since_ms: 0,
            until_ms,
            resumed: false,
            matcher: pattern.parse().ok(),
        }
    }

    #[test]
    fn a_pause_holds_the_hosts_its_pattern_matches_until_it_ends() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        let p = pause("*.partner.com", Some(10_000));
        assert!(p.holds(&url("https://api.partner.com/x"), 9_999));
        assert!(!p.holds(&url("https://api.partner.com/x"), 10_000));
        assert!(!p.holds(&url("https://partner.com/x"), 0));
        assert!(!p.holds(&url("https://api.other.com/x"), 0));
        let port = pause("127.0.0.1:9100", None);
        assert!(port.holds(&url("http://127.0.0.1:9100/"), u64::MAX));
        assert!(!port.holds(&url("http://127.0.0.1:9101/"), 0));
    }

    #[test]
    fn a_pattern_is_one_key_however_it_is_written() {
        assert_eq!(
            normalised("BÜCHER.example"),
            normalised("xn--bcher-kva.example")
        );
        assert_eq!(normalised(" Api.Partner.com:443 "), "api.partner.com:443");
        assert_eq!(normalised("*.Partner.COM"), "*.partner.com");
    }

    #[test]
    fn a_resumed_pause_is_over_whatever_the_clock_says() {
        let mut p = pause("a.com", Some(u64::MAX));
        assert!(p.in_force(0));
        p.resumed = true;
        assert!(!p.in_force(0));
    }

    #[test]
    fn a_paused_record_waits_for_the_end_or_a_growing_while() {
        let open = pause("a.com", None);
        assert_eq!(wait(&open, 0, 1, true), Duration::from_secs(15));
        assert_eq!(wait(&open, 0, 3, true), Duration::from_secs(60));
        assert_eq!(wait(&open, 0, 50, true), Duration::from_secs(300));
        let ending = pause("a.com", Some(40_000));
        assert_eq!(wait(&ending, 30_000, 3, true), Duration::from_secs(10));
        // A FIFO record: a redrive count of 100 lasts days, not hours.
        let total: u64 = (1..=100).map(|r| wait(&open, 0, r, false).as_secs()).sum();
        assert!(total > 3 * 86_400, "{total} s");
        assert_eq!(wait(&open, 0, 1, false), Duration::from_secs(60));
    }
}
