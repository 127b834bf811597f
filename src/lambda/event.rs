//! Lambda's SQS event, read for only what retryq uses.
//!
//! `aws_lambda_events`' `SqsEvent` keeps every field of every record:
//! `md5OfBody`, `eventSource`, `awsRegion` and a map of every system
//! attribute, each its own allocation. A batch holds all its records from
//! the start, so at 10,000 records that is tens of thousands of
//! allocations nobody reads, and megabytes more of the batch's working set
//! (docs/performance.md). [`SqsRecords`] reads the same JSON and skips what
//! retryq does not use; the message attributes keep `aws_lambda_events`'
//! type, so their reading (base64 for `Binary`) is the same.

use std::collections::HashMap;

use aws_lambda_events::event::sqs::SqsMessageAttribute;
use serde::Deserialize;

use crate::batch::{MessageAttribute, Record};

/// The event: its records, in order. Without `Records` (a mistyped test
/// event, say) it is refused, naming the field, as `SqsEvent` refuses it:
/// read as an empty batch, it would be answered as all delivered.
#[derive(Debug, Default, Deserialize)]
pub struct SqsRecords {
    #[serde(rename = "Records")]
    pub records: Vec<SqsRecord>,
}

/// One record of the event, with the fields [`Record`] needs.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsRecord {
    message_id: Option<String>,
    receipt_handle: Option<String>,
    body: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    attributes: SystemAttributes,
    #[serde(default, deserialize_with = "null_as_default")]
    message_attributes: HashMap<String, SqsMessageAttribute>,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: Option<String>,
}

/// The system attributes [`Record::from_sqs`] reads; the others are
/// skipped unread. Read as a map, as `SqsEvent` reads them: a name given
/// twice keeps its last value.
#[derive(Debug, Default)]
struct SystemAttributes {
    approximate_receive_count: Option<String>,
    message_group_id: Option<String>,
    sent_timestamp: Option<String>,
    approximate_first_receive_timestamp: Option<String>,
    aws_trace_header: Option<String>,
}

/// A system attribute's name: one of those retryq reads, or another.
#[derive(Deserialize)]
#[serde(field_identifier)]
enum AttributeName {
    ApproximateReceiveCount,
    MessageGroupId,
    SentTimestamp,
    ApproximateFirstReceiveTimestamp,
    #[serde(rename = "AWSTraceHeader")]
    AwsTraceHeader,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for SystemAttributes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SystemAttributes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of SQS system attributes")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut a = SystemAttributes::default();
                while let Some(name) = map.next_key::<AttributeName>()? {
                    let slot = match name {
                        AttributeName::ApproximateReceiveCount => &mut a.approximate_receive_count,
                        AttributeName::MessageGroupId => &mut a.message_group_id,
                        AttributeName::SentTimestamp => &mut a.sent_timestamp,
                        AttributeName::ApproximateFirstReceiveTimestamp => {
                            &mut a.approximate_first_receive_timestamp
                        }
                        AttributeName::AwsTraceHeader => &mut a.aws_trace_header,
                        AttributeName::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value()?;
                }
                Ok(a)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

impl SystemAttributes {
    /// The attribute SQS calls `name`, moved out.
    fn take(&mut self, name: &str) -> Option<String> {
        match name {
            "ApproximateReceiveCount" => self.approximate_receive_count.take(),
            "MessageGroupId" => self.message_group_id.take(),
            "SentTimestamp" => self.sent_timestamp.take(),
            "ApproximateFirstReceiveTimestamp" => self.approximate_first_receive_timestamp.take(),
            "AWSTraceHeader" => self.aws_trace_header.take(),
            _ => None,
        }
    }
}

/// `null` read as the type's default, as `aws_lambda_events` reads it.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A record's message attributes, as `aws_lambda_events` reads them; one
/// without a value is left out, one without a type is a `String`.
fn message_attributes(map: HashMap<String, SqsMessageAttribute>) -> Vec<MessageAttribute> {
    map.into_iter()
        .filter_map(|(name, a)| {
            let data_type = a.data_type.unwrap_or_else(|| "String".into());
            MessageAttribute::from_sqs(name, data_type, a.string_value, a.binary_value.map(|b| b.0))
        })
        .collect()
}

impl From<SqsRecord> for Record {
    fn from(m: SqsRecord) -> Record {
        let message_attributes = message_attributes(m.message_attributes);
        let mut attributes = m.attributes;
        Record::from_sqs(
            m.message_id,
            m.receipt_handle,
            m.body,
            m.event_source_arn.unwrap_or_default(),
            |name| attributes.take(name),
        )
        .with_message_attributes(message_attributes)
    }
}

#[cfg(test)]
mod tests {
    use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
    use serde_json::{json, Value};

    use super::*;

    /// The record as read through `aws_lambda_events`' full `SqsEvent`,
    /// every attribute kept: what the processor read before.
    fn through_sqs_event(m: SqsMessage) -> Record {
        let attributes = m.attributes;
        let message_attributes = message_attributes(m.message_attributes);
        Record::from_sqs(
            m.message_id,
            m.receipt_handle,
            m.body,
            m.event_source_arn.unwrap_or_default(),
            |name| attributes.get(name).cloned(),
        )
        .with_message_attributes(message_attributes)
    }

    /// Both readings of `event`, message attributes sorted by name (a map
    /// has no order).
    fn both(event: Value) -> (Vec<Record>, Vec<Record>) {
        let sorted = |mut r: Record| {
            r.message_attributes.sort_by(|a, b| a.name.cmp(&b.name));
            r
        };
        let ours: SqsRecords = serde_json::from_value(event.clone()).unwrap();
        let theirs: SqsEvent = serde_json::from_value(event).unwrap();
        (
            ours.records
                .into_iter()
                .map(Record::from)
                .map(sorted)
                .collect(),
            theirs
                .records
                .into_iter()
                .map(through_sqs_event)
                .map(sorted)
                .collect(),
        )
    }

    #[test]
    fn each_record_reads_as_through_aws_lambda_events() {
        let full = json!({
            "messageId": "m-2", "receiptHandle": "r", "body": "{\"a\":1}",
            "attributes": {
                "ApproximateReceiveCount": "3", "SentTimestamp": "1700000000000",
                "SenderId": "AIDA", "ApproximateFirstReceiveTimestamp": "1700000000500",
                "MessageGroupId": "g", "MessageDeduplicationId": "d", "SequenceNumber": "1",
                "AWSTraceHeader": "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"
            },
            "messageAttributes": {
                "RetryqCarry": {"stringValue": "{\"attempts\":4,\"firstSent\":1,\"notBefore\":2,\"originalMessageId\":\"m-1\"}", "dataType": "String", "stringListValues": [], "binaryListValues": []},
                "ExtendedPayloadSize": {"stringValue": "300000", "dataType": "Number", "stringListValues": [], "binaryListValues": []},
                "Blob": {"binaryValue": "AAEC", "dataType": "Binary", "stringListValues": [], "binaryListValues": []},
                "Untyped": {"stringValue": "x"}
            },
            "md5OfBody": "0", "eventSource": "aws:sqs", "awsRegion": "us-east-1",
            "eventSourceARN": "arn:aws:sqs:us-east-1:1:q.fifo"
        });
        let events = [
            json!({"Records": [full.clone(), {}]}),
            json!({"Records": [{"messageId": "m", "attributes": null, "messageAttributes": null}]}),
            json!({"Records": [{"messageId": "m", "attributes": {"ApproximateReceiveCount": "x"}, "messageAttributes": {}}]}),
            json!({"Records": []}),
        ];
        for event in events {
            let (ours, theirs) = both(event.clone());
            assert_eq!(ours, theirs, "{event}");
        }
        let (ours, _) = both(json!({"Records": [full]}));
        let r = &ours[0];
        assert_eq!(
            (r.receive_count, r.message_group_id.as_deref()),
            (3, Some("g"))
        );
        assert!(r.trace_header.is_some() && r.sent_at.is_some() && r.first_received_at.is_some());
        let carry = r.carry().unwrap().unwrap();
        assert_eq!(
            (carry.attempts, carry.original_message_id.as_str()),
            (4, "m-1")
        );
        let find = |n: &str| r.message_attributes.iter().find(|a| a.name == n).unwrap();
        assert_eq!(find("ExtendedPayloadSize").data_type, "Number");
        assert_eq!(find("Untyped").data_type, "String");
        assert_eq!(
            find("Blob").value,
            crate::batch::AttributeValue::Bytes(vec![0, 1, 2])
        );
    }

    #[test]
    fn an_event_without_records_is_refused_naming_it() {
        for event in [
            json!({}),
            json!({"records": [{"messageId": "m"}]}),
            json!({"Records": null}),
        ] {
            let ours = serde_json::from_value::<SqsRecords>(event.clone()).unwrap_err();
            assert!(serde_json::from_value::<SqsEvent>(event.clone()).is_err());
            if event.get("Records").is_none() {
                assert!(ours.to_string().contains("Records"), "{ours}");
            }
        }
        let empty: SqsRecords = serde_json::from_value(json!({"Records": []})).unwrap();
        assert!(empty.records.is_empty());
        let plain = Record::from(SqsRecord::default());
        assert!(plain.carry().is_none() && plain.message_id.is_empty());
    }

    #[test]
    fn an_attribute_given_twice_keeps_its_last_value_as_sqs_event_does() {
        let event = r#"{"Records": [{"messageId": "m", "attributes": {
            "ApproximateReceiveCount": "1", "MessageGroupId": "a", "SenderId": "x",
            "ApproximateReceiveCount": "5", "MessageGroupId": "b", "SenderId": "y"}}]}"#;
        let ours: SqsRecords = serde_json::from_str(event).unwrap();
        let theirs: SqsEvent = serde_json::from_str(event).unwrap();
        let (ours, theirs) = (
            Record::from(ours.records.into_iter().next().unwrap()),
            through_sqs_event(theirs.records.into_iter().next().unwrap()),
        );
        assert_eq!(ours, theirs);
        assert_eq!(
            (ours.receive_count, ours.message_group_id.as_deref()),
            (5, Some("b"))
        );
    }
}
