//! Fair queues (§13.1): the `MessageGroupId` a producer gives a message on a
//! standard queue, so that SQS serves quiet groups first while one group's
//! backlog grows.

use crate::message::InvalidMessage;

/// SQS's rule for a `MessageGroupId`: 1 to 128 characters, each a letter,
/// a digit or ASCII punctuation.
pub fn validate_group(group: &str) -> Result<(), InvalidMessage> {
    let valid = (1..=128).contains(&group.len())
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_ascii_punctuation());
    if valid {
        Ok(())
    } else {
        Err(InvalidMessage::new(
            "group",
            "must be 1 to 128 characters, letters, digits and punctuation only",
        ))
    }
}

/// The tenant key a message gets on a standard queue when its producer
/// named no group (`FAIR_QUEUE_KEY`, §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FairQueueKey {
    /// The destination's host name, without the port: one partner's
    /// backlog does not delay the others'.
    #[default]
    Host,
    /// No `MessageGroupId`: the queue is not a fair queue.
    None,
}

impl std::str::FromStr for FairQueueKey {
    type Err = String;

    fn from_str(value: &str) -> Result<FairQueueKey, String> {
        match value.trim() {
            "host" => Ok(FairQueueKey::Host),
            "none" => Ok(FairQueueKey::None),
            other => Err(format!("must be host or none, not {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_group_is_what_sqs_takes_and_nothing_else() {
        for ok in [
            "tenant-7",
            "partner.example.com",
            "a",
            &"x".repeat(128),
            "!#$%&()*+,-./:;<=>?@[]^_`{|}~",
        ] {
            assert!(validate_group(ok).is_ok(), "{ok}");
        }
        for bad in ["", "tenant 7", "tenant\n7", "ténant", &"x".repeat(129)] {
            let e = validate_group(bad).unwrap_err();
            assert_eq!(e.field, "group", "{bad:?}");
        }
        assert_eq!("host".parse(), Ok(FairQueueKey::Host));
        assert_eq!(" none ".parse(), Ok(FairQueueKey::None));
        assert!("tenant".parse::<FairQueueKey>().is_err());
    }

    proptest! {
        #[test]
        fn any_accepted_group_is_short_printable_ascii(group in "\\PC{0,140}") {
            if validate_group(&group).is_ok() {
                prop_assert!((1..=128).contains(&group.len()));
                prop_assert!(group.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
    }
}
