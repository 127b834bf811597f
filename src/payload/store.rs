//! The S3 adapter of the claim check: reads an offloaded payload, copies
//! it for a dead letter, marks it finished (a tag the bucket's lifecycle
//! rule expires a day later), and stores one for the producer. The client
//! is built on the first pointer, so a process that never meets one never
//! reads the AWS configuration for it.

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;

use super::budget::{MemoryBudget, Reserved};
use super::{Finished, PayloadPointer, FINISHED_TAG};

/// Why a payload could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The pointer cannot be resolved, now or later (no such object or
    /// bucket): the message is invalid.
    Invalid(String),
    /// The object exists but cannot be a message (larger than allowed, not
    /// text): the message is invalid, and its letter gets a copy of it. Its
    /// size, for the letter's `ExtendedPayloadSize`.
    Unusable(String, usize),
    /// S3 did not answer usefully (timeout, 5xx, throttling, access): worth
    /// another try.
    Unavailable(String),
}

/// Offloaded payloads in S3.
#[derive(Debug, Default)]
pub struct PayloadStore {
    client: tokio::sync::OnceCell<aws_sdk_s3::Client>,
}

/// One S3 call's bound.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The tag that binds a finished mark to the SQS message it was made for:
/// an object marked for another message (a producer that copied a marked
/// object, a pointer to another message's payload) is not taken as done.
pub const MESSAGE_TAG: &str = "retryq-message";

/// The tag of a dead letter's copy, naming the SQS message it was made
/// for. Such an object is never marked finished, whatever message names
/// it: the letter keeps its object until the letter is gone.
pub const LETTER_TAG: &str = "retryq-letter";

/// A payload read from S3.
#[derive(Debug)]
pub struct Payload {
    /// The Retry Message, as text.
    pub text: String,
    /// Its object is marked finished ([`FINISHED_TAG`]) for this very SQS
    /// message.
    pub finished: Option<Finished>,
    /// What a mark must keep of the object.
    pub kept: Kept,
    /// Its room in `PAYLOAD_MEMORY_BYTES`, held until this is dropped.
    pub reserved: Reserved,
}

/// What marking an object keeps: it is copied onto itself, and such a copy
/// must replace the metadata, so the metadata, content type and the tags
/// that are not retryq's are sent again.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    content_type: Option<String>,
    metadata: Option<std::collections::HashMap<String, String>>,
    tags: Vec<(String, String)>,
}

impl Kept {
    /// Is the object a dead letter's copy ([`LETTER_TAG`])?
    pub fn is_letter(&self) -> bool {
        self.tags.iter().any(|(k, _)| k == LETTER_TAG)
    }
}

impl PayloadStore {
    pub fn new() -> PayloadStore {
        PayloadStore::default()
    }

    /// With this S3 client instead of one from the environment.
    pub fn with_client(client: aws_sdk_s3::Client) -> PayloadStore {
        PayloadStore {
            client: tokio::sync::OnceCell::new_with(Some(client)),
        }
    }

    /// The S3 client from the standard AWS environment. With an endpoint
    /// override (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, a local
    /// S3-compatible server), buckets are addressed by path.
    async fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| async {
                let sdk = crate::wiring::sdk_config_from_env().await;
                let local = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                    .iter()
                    .any(|v| std::env::var_os(v).is_some_and(|u| !u.is_empty()));
                let config = aws_sdk_s3::config::Builder::from(&sdk)
                    .force_path_style(local)
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            })
            .await
    }

    /// The payload as text, if it is at most `max_bytes`, and whether it is
    /// marked finished (asked of S3 only when the object has tags). Its
    /// bytes are read only once `budget` has room for them (until `until`;
    /// none in time leaves the record for another receive).
    pub async fn get(
        &self,
        p: &PayloadPointer,
        message_id: &str,
        max_bytes: usize,
        budget: &MemoryBudget,
        until: tokio::time::Instant,
    ) -> Result<Payload, PayloadError> {
        let address = p.address();
        let call = self
            .client()
            .await
            .get_object()
            .bucket(&p.bucket)
            .key(&p.key)
            .send();
        let object = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => {
                return Err(PayloadError::Unavailable(format!(
                    "payload pointer: S3 timed out reading {address}"
                )))
            }
            Ok(Err(e)) => {
                let code = e.code().unwrap_or("no answer");
                let missing = matches!(code, "NoSuchKey" | "NoSuchBucket")
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
                return Err(if missing {
                    PayloadError::Invalid(format!(
                        "payload pointer: {address} does not exist ({code})"
                    ))
                } else {
                    PayloadError::Unavailable(format!(
                        "payload pointer: S3 failed reading {address} ({code})"
                    ))
                });
            }
            Ok(Ok(object)) => object,
        };
        let tagged = object.tag_count().is_some_and(|n| n > 0);
        let size = object.content_length().unwrap_or(0).max(0) as usize;
        if size > max_bytes {
            return Err(PayloadError::Unusable(
                format!("payload pointer: {address} holds {size} bytes, more than {max_bytes}"),
                size,
            ));
        }
        let mut kept = Kept {
            content_type: object.content_type().map(str::to_owned),
            metadata: object.metadata().cloned(),
            tags: Vec::new(),
        };
        let Some(reserved) = budget.reserve(size, until).await else {
            return Err(PayloadError::Unavailable(format!(
                "payload pointer: no room in PAYLOAD_MEMORY_BYTES for the {size} bytes of {address} in time"
            )));
        };
        let bytes = tokio::time::timeout(CALL_TIMEOUT, object.body.collect())
            .await
            .map_err(|_| {
                PayloadError::Unavailable(format!(
                    "payload pointer: S3 timed out reading {address}"
                ))
            })?
            .map_err(|_| {
                PayloadError::Unavailable(format!(
                    "payload pointer: S3 failed mid-object reading {address}"
                ))
            })?
            .into_bytes();
        if bytes.len() > max_bytes {
            return Err(PayloadError::Unusable(
                format!("payload pointer: {address} is larger than {max_bytes} bytes"),
                bytes.len(),
            ));
        }
        // Into the String without a copy when the buffer is not shared.
        let text = String::from_utf8(Vec::from(bytes)).map_err(|e| {
            PayloadError::Unusable(
                format!("payload pointer: {address} is not UTF-8 text"),
                e.as_bytes().len(),
            )
        })?;
        let mut finished = None;
        if tagged {
            let tags = self.tags(p).await?;
            let tag = |key: &str| tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            if tag(MESSAGE_TAG) == Some(message_id) {
                finished = tag(FINISHED_TAG).and_then(Finished::from_tag);
            }
            kept.tags = tags
                .iter()
                .filter(|(k, _)| k != FINISHED_TAG && k != MESSAGE_TAG)
                .cloned()
                .collect();
        }
        Ok(Payload {
            text,
            finished,
            kept,
            reserved,
        })
    }

    /// Is the object a dead letter's copy ([`LETTER_TAG`])? Only such an
    /// object may be deleted when its letter is redriven: any other (the
    /// producer's own, which a duplicate message may still name) stays.
    pub async fn is_letter_copy(&self, p: &PayloadPointer) -> Result<bool, String> {
        let tags = self.tags(p).await.map_err(|e| match e {
            PayloadError::Invalid(why)
            | PayloadError::Unusable(why, _)
            | PayloadError::Unavailable(why) => why,
        })?;
        Ok(tags.iter().any(|(k, _)| k == LETTER_TAG))
    }

    /// The object's tags. Not knowing is worth another try: guessing "not
    /// finished" would send a delivered request again.
    async fn tags(&self, p: &PayloadPointer) -> Result<Vec<(String, String)>, PayloadError> {
        let call = self
            .client()
            .await
            .get_object_tagging()
            .bucket(&p.bucket)
            .key(&p.key)
            .send();
        let tags = bounded(&format!("reading the tags of {}", p.address()), call)
            .await
            .map_err(|f| PayloadError::Unavailable(format!("payload pointer: {}", f.text)))?;
        Ok(tags
            .tag_set()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect())
    }

    /// Marks a payload finished instead of deleting it: a redelivery of its
    /// message (a lost acknowledgement, a failed invocation, a
    /// standard-queue duplicate) then finds it, and is acknowledged without
    /// a new attempt. The object is copied onto itself with
    /// [`FINISHED_TAG`] (a server-side copy, no bytes through here): a
    /// lifecycle rule counts days from an object's creation, and a tag
    /// alone would let the bucket's one-day rule for finished payloads
    /// remove an old object at once, before a redelivery could find it. A
    /// failure is only logged by the caller: the object then lives to the
    /// bucket's expiry, and a redelivery is handled again (at least once).
    /// The mark names the SQS message (`message_id`) it was made for, and
    /// keeps the object's metadata, content type and other tags.
    pub async fn mark_finished(
        &self,
        p: &PayloadPointer,
        how: Finished,
        message_id: &str,
        kept: &Kept,
    ) -> Result<(), String> {
        let mut tags = kept.tags.clone();
        tags.push((FINISHED_TAG.to_owned(), how.as_str().to_owned()));
        tags.push((MESSAGE_TAG.to_owned(), message_id.to_owned()));
        let call = self
            .client()
            .await
            .copy_object()
            .copy_source(copy_source(p))
            .bucket(&p.bucket)
            .key(&p.key)
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .set_metadata(kept.metadata.clone())
            .set_content_type(kept.content_type.clone())
            .tagging_directive(aws_sdk_s3::types::TaggingDirective::Replace)
            .tagging(tagging(&tags))
            .send();
        let doing = format!("marking {} {}", p.address(), how.as_str());
        bounded(&doing, call).await.map(drop).map_err(|f| f.text)
    }

    /// A copy of the payload under a new key in the same bucket, written
    /// now (§12.1): what a dead letter or a redriven letter points to, so
    /// that its object lives as long as its queue keeps it. Server-side.
    /// A letter's copy (`letter_of`: the SQS message it is the letter of)
    /// carries [`LETTER_TAG`] and no other tag; any other copy none.
    pub async fn copy(
        &self,
        p: &PayloadPointer,
        letter_of: Option<&str>,
    ) -> Result<PayloadPointer, String> {
        let copy = PayloadPointer {
            bucket: p.bucket.clone(),
            key: uuid::Uuid::new_v4().to_string(),
        };
        let call = self
            .client()
            .await
            .copy_object()
            .copy_source(copy_source(p))
            .bucket(&copy.bucket)
            .key(&copy.key)
            .tagging_directive(aws_sdk_s3::types::TaggingDirective::Replace)
            .set_tagging(letter_of.map(|id| tagging(&[(LETTER_TAG.to_owned(), id.to_owned())])))
            .send();
        let doing = format!("copying {}", p.address());
        bounded(&doing, call)
            .await
            .map(|_| copy)
            .map_err(|f| f.text)
    }

    /// The bucket's lifecycle rules, for `retryq validate --payload-bucket`
    /// (none when it has no lifecycle configuration).
    pub async fn lifecycle_rules(&self, bucket: &str) -> Result<Vec<super::LifecycleRule>, String> {
        let call = self
            .client()
            .await
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send();
        let config = match bounded(&format!("reading the lifecycle of s3://{bucket}"), call).await {
            Ok(config) => config,
            Err(f) if f.code.as_deref() == Some("NoSuchLifecycleConfiguration") => {
                return Ok(Vec::new())
            }
            Err(f) => return Err(f.text),
        };
        Ok(config.rules().iter().map(lifecycle_rule).collect())
    }

    /// Deletes a payload that no message points to any more.
    pub async fn delete(&self, p: &PayloadPointer) -> Result<(), String> {
        let call = self
            .client()
            .await
            .delete_object()
            .bucket(&p.bucket)
            .key(&p.key)
            .send();
        let doing = format!("deleting {}", p.address());
        bounded(&doing, call).await.map(drop).map_err(|f| f.text)
    }

    /// Stores `body` under a new key in `bucket`; its pointer.
    pub async fn put(&self, bucket: &str, body: String) -> Result<PayloadPointer, String> {
        let p = PayloadPointer {
            bucket: bucket.to_owned(),
            key: uuid::Uuid::new_v4().to_string(),
        };
        let call = self
            .client()
            .await
            .put_object()
            .bucket(&p.bucket)
            .key(&p.key)
            .body(body.into_bytes().into())
            .send();
        let doing = format!("storing {}", p.address());
        bounded(&doing, call).await.map(|_| p).map_err(|f| f.text)
    }
}

/// Why an S3 call gave nothing: its error code (none for a timeout or no
/// answer), and a line saying what was being done.
struct S3Failure {
    code: Option<String>,
    text: String,
}

/// One S3 call, bounded by [`CALL_TIMEOUT`]; a failure says what it was
/// `doing` ("copying s3://b/k") and S3's error code.
async fn bounded<T, E: ProvideErrorMetadata>(
    doing: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, S3Failure> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(S3Failure {
            code: e.code().map(str::to_owned),
            text: format!("S3 failed {doing} ({})", e.code().unwrap_or("no answer")),
        }),
        Err(_) => Err(S3Failure {
            code: None,
            text: format!("S3 timed out {doing}"),
        }),
    }
}

/// What the payload lifetime check needs of one rule.
fn lifecycle_rule(rule: &aws_sdk_s3::types::LifecycleRule) -> super::LifecycleRule {
    let finished_tag = |t: &aws_sdk_s3::types::Tag| t.key() == FINISHED_TAG;
    let only_finished = rule.filter().is_some_and(|f| {
        f.tag().is_some_and(finished_tag)
            || f.and()
                .is_some_and(|and| and.tags().iter().any(finished_tag))
    });
    super::LifecycleRule {
        id: rule.id().unwrap_or("(no id)").to_owned(),
        enabled: *rule.status() == aws_sdk_s3::types::ExpirationStatus::Enabled,
        expiration_days: rule
            .expiration()
            .and_then(|e| e.days())
            .and_then(|d| u32::try_from(d).ok()),
        expiration_date: rule
            .expiration()
            .and_then(|e| e.date())
            .map(|d| d.to_string()),
        only_finished,
    }
}

/// What URL encoding leaves alone: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A CopyObject source, `bucket/key` with the key URL-encoded (its `/`
/// kept).
fn copy_source(p: &PayloadPointer) -> String {
    const KEY: &percent_encoding::AsciiSet = &UNRESERVED.remove(b'/');
    format!(
        "{}/{}",
        p.bucket,
        percent_encoding::utf8_percent_encode(&p.key, KEY)
    )
}

/// Tags as S3's `x-amz-tagging` takes them: a URL query.
fn tagging(tags: &[(String, String)]) -> String {
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string();
    tags.iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_encode_the_key_but_its_slashes() {
        let p = PayloadPointer {
            bucket: "b".into(),
            key: "a dir/é+k%2F".into(),
        };
        assert_eq!(copy_source(&p), "b/a%20dir/%C3%A9%2Bk%252F");
    }

    #[test]
    fn tags_are_sent_as_a_url_query() {
        let tags = [
            ("owner".to_owned(), "a&b=c d".to_owned()),
            (FINISHED_TAG.to_owned(), "delivered".to_owned()),
        ];
        assert_eq!(
            tagging(&tags),
            "owner=a%26b%3Dc%20d&retryq-finished=delivered"
        );
    }
}
