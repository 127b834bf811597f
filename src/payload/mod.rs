//! Large payloads (spec §11): the claim check of the Amazon SQS Extended
//! Client libraries. A body too large for SQS is stored as an S3 object,
//! and the SQS message carries a pointer to it:
//!
//! ```json
//! ["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "B", "s3Key": "K"}]
//! ```
//!
//! with the Number message attribute `ExtendedPayloadSize` (the object's
//! size). The processor resolves such a record from S3 and handles the
//! Retry Message it holds; its DLQ copy is the pointer, byte for byte, so
//! the Extended Client can still read it; the object is deleted once the
//! message is delivered.
//!
//! [`PayloadPointer`] is pure; [`store`] is the S3 adapter.

#[cfg(feature = "s3-payloads")]
pub mod budget;
pub mod head;
#[cfg(feature = "s3-payloads")]
pub mod store;

use serde::Deserialize;

/// The message attribute that marks an offloaded body (its value: the
/// payload's size in bytes, a Number).
pub const EXTENDED_PAYLOAD_SIZE: &str = "ExtendedPayloadSize";
/// The same, as older Extended Client versions name it.
pub const LEGACY_PAYLOAD_SIZE: &str = "SQSLargePayloadSize";

/// The pointer class the current Extended Clients write.
pub const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
/// The pointer class of the first Java Extended Client.
const LEGACY_POINTER_CLASS: &str = "com.amazon.sqs.javamessaging.MessageS3Pointer";

pub use crate::policy::record::Finished;

/// The tag key of a finished payload; the value is [`Finished::as_str`].
/// The template's bucket expires objects carrying it a day after the tag
/// was set (it is set by a copy onto itself, which starts the day anew).
pub const FINISHED_TAG: &str = "retryq-finished";

/// The tag that binds a finished mark to the SQS messages it was made for
/// (their ids, space-separated): an object marked for another message (a
/// producer that copied a marked object, a pointer to another message's
/// payload) is not taken as done.
pub const MESSAGE_TAG: &str = "retryq-message";

/// Is an object with these tags marked finished for `message_id`?
pub fn finished_for(tags: &[(String, String)], message_id: &str) -> Option<Finished> {
    let tag = |key: &str| tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let ids = tag(MESSAGE_TAG)?;
    if message_id.is_empty() || !ids.split(' ').any(|id| id == message_id) {
        return None;
    }
    tag(FINISHED_TAG).and_then(Finished::from_tag)
}

/// One rule of a payload bucket's lifecycle configuration, as far as the
/// lifetime of payloads is concerned (§12.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleRule {
    pub id: String,
    pub enabled: bool,
    /// `Expiration.Days`: counted from an object's creation.
    pub expiration_days: Option<u32>,
    /// `Expiration.Date`: every object it matches goes on that day.
    pub expiration_date: Option<String>,
    /// The rule matches only payloads retryq marked finished (its filter is
    /// the [`FINISHED_TAG`] tag): no message needs those any more.
    pub only_finished: bool,
    /// The rule's earliest move to an archive storage class (Glacier
    /// Flexible Retrieval, Deep Archive), from which S3 serves nothing
    /// until the object is restored.
    pub archive: Option<Archive>,
}

/// A lifecycle transition to an archive storage class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub storage_class: String,
    /// `Transition.Days`: counted from an object's creation.
    pub days: Option<u32>,
    /// `Transition.Date`.
    pub date: Option<String>,
}

/// Where an offloaded payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadPointer {
    pub bucket: String,
    pub key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PointerJson {
    s3_bucket_name: String,
    s3_key: String,
}

impl PayloadPointer {
    /// Reads a message body as a pointer: `None` when it is not one (a
    /// Retry Message is a JSON object, a pointer a two-element array naming
    /// the pointer class), `Some(Err)` naming what is wrong with one that
    /// looks like a pointer.
    pub fn parse(body: &str) -> Option<Result<PayloadPointer, String>> {
        let trimmed = body.trim_start();
        if !trimmed.starts_with('[') {
            return None;
        }
        let (class, pointer): (String, serde_json::Value) = serde_json::from_str(trimmed).ok()?;
        if class != POINTER_CLASS && class != LEGACY_POINTER_CLASS {
            return None;
        }
        Some(
            serde_json::from_value::<PointerJson>(pointer)
                .map_err(|_| "payload pointer: needs s3BucketName and s3Key strings".to_owned())
                .and_then(|p| {
                    if p.s3_bucket_name.is_empty() || p.s3_key.is_empty() {
                        Err("payload pointer: s3BucketName and s3Key must not be empty".into())
                    } else {
                        Ok(PayloadPointer {
                            bucket: p.s3_bucket_name,
                            key: p.s3_key,
                        })
                    }
                }),
        )
    }

    /// The pointer as the Extended Clients write it.
    pub fn body(&self) -> String {
        serde_json::json!([
            POINTER_CLASS,
            {"s3BucketName": self.bucket, "s3Key": self.key}
        ])
        .to_string()
    }

    /// Is the pointer's bucket one of `allowed` (`PAYLOAD_BUCKETS`)? The
    /// error names the bucket, or says that no bucket is allowed.
    pub fn check_bucket(&self, allowed: &[String]) -> Result<(), String> {
        if allowed.contains(&self.bucket) {
            Ok(())
        } else if allowed.is_empty() {
            Err(format!(
                "payload pointer: bucket {} is not allowed: neither PAYLOAD_BUCKETS nor PAYLOAD_BUCKET is set",
                self.bucket
            ))
        } else {
            Err(format!(
                "payload pointer: bucket {} is not allowed (not in PAYLOAD_BUCKETS)",
                self.bucket
            ))
        }
    }

    /// `s3://bucket/key`, for error texts (an address, not a value).
    pub fn address(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_extended_clients_pointers_are_read() {
        let python = r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "k-1"}]"#;
        let p = PayloadPointer::parse(python).unwrap().unwrap();
        assert_eq!(
            p,
            PayloadPointer {
                bucket: "b".into(),
                key: "k-1".into()
            }
        );
        assert_eq!(PayloadPointer::parse(&p.body()), Some(Ok(p.clone())));
        let legacy = r#"["com.amazon.sqs.javamessaging.MessageS3Pointer",{"s3BucketName":"b","s3Key":"k-1"}]"#;
        assert_eq!(PayloadPointer::parse(legacy), Some(Ok(p)));
        assert_eq!(p_address(), "s3://b/k-1");
    }

    fn p_address() -> String {
        PayloadPointer {
            bucket: "b".into(),
            key: "k-1".into(),
        }
        .address()
    }

    #[test]
    fn other_bodies_are_not_pointers_and_bad_pointers_say_why() {
        for body in [r#"{"id":"x"}"#, "[1,2]", r#"["other.Class", {}]"#, "[", ""] {
            assert_eq!(PayloadPointer::parse(body), None, "{body}");
        }
        for body in [
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b"}]"#,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "", "s3Key": "k"}]"#,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer", 7]"#,
        ] {
            let e = PayloadPointer::parse(body).unwrap().unwrap_err();
            assert!(e.starts_with("payload pointer"), "{e}");
        }
    }

    #[test]
    fn pointers_are_followed_only_into_allowed_buckets() {
        let p = PayloadPointer {
            bucket: "b".into(),
            key: "k".into(),
        };
        assert_eq!(p.check_bucket(&["a".into(), "b".into()]), Ok(()));
        let other = p.check_bucket(&["a".into()]).unwrap_err();
        assert!(other.contains("bucket b is not allowed") && other.contains("PAYLOAD_BUCKETS"));
        let none = p.check_bucket(&[]).unwrap_err();
        assert!(none.contains("bucket b is not allowed") && none.contains("PAYLOAD_BUCKET is set"));
        // Exact names only: no prefix or case folding.
        assert!(p
            .check_bucket(&["B".into(), "bb".into(), "".into()])
            .is_err());
    }

    #[test]
    fn a_mark_counts_only_for_the_messages_it_names() {
        let tags = |ids: &str| {
            vec![
                (FINISHED_TAG.to_owned(), "delivered".to_owned()),
                (MESSAGE_TAG.to_owned(), ids.to_owned()),
            ]
        };
        assert_eq!(finished_for(&tags("a b"), "b"), Some(Finished::Delivered));
        assert_eq!(finished_for(&tags("a b"), "a"), Some(Finished::Delivered));
        for (ids, id) in [("ab", "a"), ("a b", ""), ("a", "b"), ("", "")] {
            assert_eq!(finished_for(&tags(ids), id), None, "{ids:?} {id:?}");
        }
        assert_eq!(finished_for(&tags("a")[1..], "a"), None, "no finished tag");
    }

    proptest! {
        #[test]
        fn any_text_is_read_without_panicking(body in ".{0,200}") {
            let _ = PayloadPointer::parse(&body);
        }

        #[test]
        fn a_written_pointer_reads_back(bucket in "[a-z0-9.-]{3,20}", key in "[ -~]{1,60}") {
            let p = PayloadPointer { bucket, key };
            prop_assert_eq!(PayloadPointer::parse(&p.body()), Some(Ok(p)));
        }
    }
}
