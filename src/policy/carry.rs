//! Carrying a record over (spec §12.5): when its queue would end it while
//! it still has attempts (the redrive policy's `maxReceiveCount`, or the
//! queue's retention), a copy goes back into the same queue with the
//! `RetryqCarry` attribute, and only then is the old record acknowledged.
//! The attribute continues the attempt count and the age across copies.
//!
//! Pure: what the attribute says, when a record is due to be carried, and
//! how long a carried copy still waits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The String message attribute a carried copy bears.
pub const CARRY_ATTRIBUTE: &str = "RetryqCarry";

/// The longest `DelaySeconds` SQS takes: a carried copy waiting longer is
/// received early, and hidden again until its `notBefore`.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// What a carried copy knows of the copies before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// Fields it does not know are ignored: a later version's copy is still
/// read by this one, which keeps the count and the age going.
#[serde(rename_all = "camelCase")]
pub struct Carry {
    /// Attempts made so far, across every copy.
    pub attempts: u32,
    /// The first copy's `SentTimestamp`, epoch milliseconds: the age counts
    /// from it.
    pub first_sent: u64,
    /// When the next try is due, epoch milliseconds.
    pub not_before: u64,
    /// The first copy's SQS message id (a DLQ copy names it as
    /// `OriginalMessageId`).
    pub original_message_id: String,
}

impl Carry {
    /// Reads the attribute's value; the error names the field.
    pub fn parse(text: &str) -> Result<Carry, String> {
        let carry: Carry =
            serde_json::from_str(text).map_err(|e| format!("{CARRY_ATTRIBUTE}: {e}"))?;
        if carry.original_message_id.is_empty() {
            return Err(format!(
                "{CARRY_ATTRIBUTE}.originalMessageId: must not be empty"
            ));
        }
        Ok(carry)
    }

    /// The attribute's value.
    pub fn to_attribute(&self) -> String {
        serde_json::to_string(self).expect("a Carry always serializes")
    }

    /// The carry of a record carried over now, with `attempts` made in all
    /// and its next try at `next_try`. A record that was never carried
    /// starts the chain: its own `SentTimestamp` and message id.
    pub fn next(
        previous: Option<&Carry>,
        attempts: u32,
        sent_at: SystemTime,
        message_id: &str,
        next_try: SystemTime,
    ) -> Carry {
        Carry {
            attempts,
            first_sent: previous.map_or_else(|| epoch_ms(sent_at), |c| c.first_sent),
            not_before: epoch_ms(next_try),
            original_message_id: previous
                .map_or_else(|| message_id.to_owned(), |c| c.original_message_id.clone()),
        }
    }

    /// When the first copy was sent.
    pub fn first_sent_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.first_sent)
    }

    /// When the next try is due.
    pub fn not_before_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.not_before)
    }

    /// How long a copy received at `now` must still wait before its next
    /// try (it only hides again, using up no attempt), if at all.
    pub fn still_waiting(&self, now: SystemTime) -> Option<Duration> {
        self.not_before_at()
            .duration_since(now)
            .ok()
            .filter(|w| !w.is_zero())
    }
}

/// What decides whether a record that would go back to its queue is
/// carried over instead.
#[derive(Debug, Clone, Copy)]
pub struct Horizon {
    /// SQS's receive count of this copy.
    pub receive_count: u32,
    /// The redrive policy's `maxReceiveCount`, when the queue has one.
    pub max_receive_count: Option<u32>,
    /// The latest a try may come before the queue's retention ends it
    /// (`SentTimestamp + MessageRetentionPeriod − RETENTION_MARGIN_SECONDS`).
    pub retained_until: Option<SystemTime>,
    /// FIFO queues are not carried over: a copy would join the end of its
    /// group.
    pub fifo: bool,
}

impl Horizon {
    /// Is a record whose next try is at `next_try` carried over rather
    /// than returned to its queue? When its receive count reaches
    /// `maxReceiveCount − 1` (the next receive would move it to the DLQ), or
    /// when its next try comes after its queue's retention.
    pub fn carry_due(&self, next_try: SystemTime) -> bool {
        if self.fifo {
            return false;
        }
        let redrive_next = self
            .max_receive_count
            .is_some_and(|max| self.receive_count.saturating_add(1) >= max);
        let retention_passes = self.retained_until.is_some_and(|until| next_try > until);
        redrive_next || retention_passes
    }
}

fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn the_attribute_reads_as_the_contract_writes_it() {
        let text = r#"{"attempts": 3, "firstSent": 1700000000000, "notBefore": 1700000900000, "originalMessageId": "m-1"}"#;
        let carry = Carry::parse(text).unwrap();
        assert_eq!(carry.attempts, 3);
        assert_eq!(carry.first_sent_at(), at(1_700_000_000_000));
        assert_eq!(Carry::parse(&carry.to_attribute()), Ok(carry.clone()));
        let later = r#"{"attempts": 3, "firstSent": 1700000000000, "notBefore": 1700000900000, "originalMessageId": "m-1", "added": true}"#;
        assert_eq!(
            Carry::parse(later),
            Ok(carry),
            "a later version's field is ignored"
        );
        for (bad, names) in [
            (
                r#"{"attempts": -1, "firstSent": 1, "notBefore": 1, "originalMessageId": "m"}"#,
                "RetryqCarry",
            ),
            (
                r#"{"attempts": 1, "firstSent": 1, "notBefore": 1}"#,
                "originalMessageId",
            ),
            (
                r#"{"attempts": 1, "firstSent": 1, "notBefore": 1, "originalMessageId": ""}"#,
                "originalMessageId",
            ),
            ("not json", "RetryqCarry"),
        ] {
            let e = Carry::parse(bad).unwrap_err();
            assert!(e.contains(names), "{bad}: {e}");
        }
    }

    #[test]
    fn a_chain_keeps_its_first_copy_and_counts_on() {
        let first = Carry::next(None, 2, at(1_000), "m-1", at(50_000));
        assert_eq!(
            (first.first_sent, first.original_message_id.as_str()),
            (1_000, "m-1")
        );
        let second = Carry::next(Some(&first), 5, at(90_000), "m-2", at(99_000));
        assert_eq!(
            second.first_sent, 1_000,
            "the age counts from the first copy"
        );
        assert_eq!(second.original_message_id, "m-1");
        assert_eq!((second.attempts, second.not_before), (5, 99_000));
    }

    #[test]
    fn a_copy_received_early_waits_only_until_its_next_try() {
        let carry = Carry::next(None, 1, at(0), "m", at(10_000));
        assert_eq!(carry.still_waiting(at(4_000)), Some(Duration::from_secs(6)));
        assert_eq!(carry.still_waiting(at(10_000)), None);
        assert_eq!(carry.still_waiting(at(20_000)), None);
    }

    #[test]
    fn records_are_carried_before_the_redrive_or_the_retention_would_end_them() {
        let horizon = |receive_count, max, until: Option<u64>, fifo| Horizon {
            receive_count,
            max_receive_count: max,
            retained_until: until.map(at),
            fifo,
        };
        // maxReceiveCount 5: the 4th receive is the last that can carry.
        assert!(!horizon(3, Some(5), None, false).carry_due(at(0)));
        assert!(horizon(4, Some(5), None, false).carry_due(at(0)));
        assert!(horizon(9, Some(5), None, false).carry_due(at(0)));
        // The retention: only a try after it.
        assert!(!horizon(1, None, Some(100), false).carry_due(at(100)));
        assert!(horizon(1, None, Some(100), false).carry_due(at(101)));
        // Neither known: never.
        assert!(!horizon(1_000, None, None, false).carry_due(at(u64::MAX / 4)));
        // FIFO: never.
        assert!(!horizon(4, Some(5), Some(0), true).carry_due(at(1)));
    }

    proptest! {
        #[test]
        fn any_carry_reads_back(attempts: u32, first_sent: u64, not_before: u64, id in "[a-f0-9-]{1,40}") {
            let carry = Carry { attempts, first_sent, not_before, original_message_id: id };
            prop_assert_eq!(Carry::parse(&carry.to_attribute()), Ok(carry));
        }

        #[test]
        fn any_text_is_read_without_panicking(text in ".{0,200}") {
            let _ = Carry::parse(&text);
        }
    }
}
