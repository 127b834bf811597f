//! The S3 adapter of the claim check: reads an offloaded payload, copies
//! it for a dead letter, marks it finished (a tag the bucket's lifecycle
//! rule expires a day later), and stores one for the producer. The client
//! is built on the first pointer, so a process that never meets one never
//! reads the AWS configuration for it.

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;

use super::budget::{MemoryBudget, Reserved};
use super::head::HEAD_BYTES;
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

pub use super::MESSAGE_TAG;

/// The tag of a dead letter's copy, naming the SQS message it was made
/// for. Such an object is never marked finished, whatever message names
/// it: the letter keeps its object until the letter is gone.
pub const LETTER_TAG: &str = "retryq-letter";

/// What the first read of a payload found (§12.4): its size, whether it
/// is finished, what a mark must keep, and either the whole payload (a
/// small one) or the destination its head names (a larger one, whose body
/// is read by [`PayloadStore::body`] once the record is admitted).
#[derive(Debug)]
pub struct Peeked {
    /// The object's size in bytes.
    pub size: usize,
    /// Its object is marked finished ([`FINISHED_TAG`]) for this very SQS
    /// message.
    pub finished: Option<Finished>,
    /// What a mark or a copy must keep of the object.
    pub kept: Kept,
    /// The whole payload as text, with its room in `PAYLOAD_MEMORY_BYTES`
    /// (held until dropped), when it is at most [`HEAD_BYTES`].
    pub whole: Option<(String, Reserved)>,
    /// What the head of a larger payload says (its destination, when it
    /// names one).
    pub head: super::head::Head,
}

/// What marking or copying an object keeps. A copy onto itself must
/// replace the metadata, so the metadata, content type, the other
/// system metadata and the tags that are not retryq's are sent again; and
/// a copy gets the bucket's default storage class and encryption unless
/// told, so those are sent too.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    metadata: Option<std::collections::HashMap<String, String>>,
    storage_class: Option<aws_sdk_s3::types::StorageClass>,
    encryption: Option<aws_sdk_s3::types::ServerSideEncryption>,
    kms_key: Option<String>,
    bucket_key: Option<bool>,
    /// The version read, so that a later read gets the same object.
    etag: Option<String>,
    tags: Vec<(String, String)>,
}

impl Kept {
    /// Is the object a dead letter's copy ([`LETTER_TAG`])?
    pub fn is_letter(&self) -> bool {
        self.tags.iter().any(|(k, _)| k == LETTER_TAG)
    }
}

/// [`Kept`] from a GetObject or HeadObject answer (both have the same
/// accessors, but no shared trait).
macro_rules! kept_of {
    ($o:expr) => {
        Kept {
            content_type: $o.content_type().map(str::to_owned),
            cache_control: $o.cache_control().map(str::to_owned),
            content_disposition: $o.content_disposition().map(str::to_owned),
            content_encoding: $o.content_encoding().map(str::to_owned),
            content_language: $o.content_language().map(str::to_owned),
            metadata: $o.metadata().cloned(),
            storage_class: $o.storage_class().cloned(),
            encryption: $o.server_side_encryption().cloned(),
            kms_key: $o.ssekms_key_id().map(str::to_owned),
            bucket_key: $o.bucket_key_enabled(),
            etag: $o.e_tag().map(str::to_owned),
            tags: Vec::new(),
        }
    };
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

    /// The first read of a payload (§12.4): at most [`HEAD_BYTES`] of it,
    /// its size, and whether it is marked finished (asked of S3 only when
    /// the object has tags, and before any of its bytes are read). A payload
    /// of at most [`HEAD_BYTES`] is read whole, once `budget` has room for
    /// it (until `until`; none in time leaves the record for another
    /// receive); of a larger one only the destination is kept.
    pub async fn peek(
        &self,
        p: &PayloadPointer,
        message_id: &str,
        max_bytes: usize,
        budget: &MemoryBudget,
        until: tokio::time::Instant,
    ) -> Result<Peeked, PayloadError> {
        let address = p.address();
        let call = self
            .client()
            .await
            .get_object()
            .bucket(&p.bucket)
            .key(&p.key)
            .range(format!("bytes=0-{}", HEAD_BYTES - 1))
            .send();
        let object = match bounded(&format!("reading {address}"), call).await {
            Ok(object) => object,
            // A range of an empty object: there is nothing to read.
            Err(f) if f.code.as_deref() == Some("InvalidRange") => {
                return Ok(Peeked {
                    size: 0,
                    finished: None,
                    kept: Kept::default(),
                    whole: Some((String::new(), budget.nothing())),
                    head: Default::default(),
                })
            }
            // Archived: a finished mark still says what became of it.
            Err(f) if f.code.as_deref() == Some("InvalidObjectState") => {
                let Some(how) = self.archived_mark(p, message_id).await else {
                    return Err(read_failure(f, &address));
                };
                return Ok(Peeked {
                    size: 0,
                    finished: Some(how),
                    kept: Kept::default(),
                    whole: None,
                    head: Default::default(),
                });
            }
            Err(f) => return Err(read_failure(f, &address)),
        };
        let size = object
            .content_range()
            .and_then(|r| r.rsplit('/').next()?.parse::<usize>().ok())
            .unwrap_or_else(|| object.content_length().unwrap_or(0).max(0) as usize);
        if size > max_bytes {
            return Err(PayloadError::Unusable(
                format!("payload pointer: {address} holds {size} bytes, more than {max_bytes}"),
                size,
            ));
        }
        let mut head = Peeked {
            size,
            finished: None,
            kept: kept_of!(object),
            whole: None,
            head: Default::default(),
        };
        if object.tag_count().is_some_and(|n| n > 0) {
            let tags = self.tags(p).await?;
            head.finished = super::finished_for(&tags, message_id);
            head.kept.tags = tags;
            if head.finished.is_some() {
                return Ok(head);
            }
        }
        let Some(reserved) = budget.reserve(room_for(size.min(HEAD_BYTES)), until).await else {
            return Err(no_room(size.min(HEAD_BYTES), &address));
        };
        let bytes = collect(object.body, &address).await?;
        if size <= HEAD_BYTES {
            head.whole = Some((text(bytes, &address)?, reserved));
        } else {
            head.head = super::head::read(&bytes);
        }
        Ok(head)
    }

    /// The whole payload as text, once `budget` has room for it (until
    /// `until`): the read after [`peek`](Self::peek) of a
    /// payload larger than its head, for a record about to be sent. The
    /// object must be the one peeked at (`kept`); if it changed meanwhile
    /// the record is left for another receive.
    pub async fn body(
        &self,
        p: &PayloadPointer,
        size: usize,
        kept: &Kept,
        budget: &MemoryBudget,
        until: tokio::time::Instant,
    ) -> Result<(String, Reserved), PayloadError> {
        let address = p.address();
        let Some(reserved) = budget.reserve(room_for(size), until).await else {
            return Err(no_room(size, &address));
        };
        let call = self
            .client()
            .await
            .get_object()
            .bucket(&p.bucket)
            .key(&p.key)
            .set_if_match(kept.etag.clone())
            .send();
        let object = bounded(&format!("reading {address}"), call)
            .await
            .map_err(|f| read_failure(f, &address))?;
        if object
            .content_length()
            .is_some_and(|n| n.max(0) as usize != size)
        {
            return Err(PayloadError::Unavailable(format!(
                "payload pointer: {address} changed while it was being read"
            )));
        }
        let bytes = collect(object.body, &address).await?;
        Ok((text(bytes, &address)?, reserved))
    }

    /// The finished mark of an archived object, for `message_id`: from its
    /// tags, or, where a store will not give the tags of an archived object,
    /// from the same mark in its metadata (HeadObject answers for any
    /// storage class). Nothing read means no mark.
    async fn archived_mark(&self, p: &PayloadPointer, message_id: &str) -> Option<Finished> {
        if let Ok(tags) = self.tags(p).await {
            return super::finished_for(&tags, message_id);
        }
        let metadata = self.kept(p).await.ok()?.metadata?;
        let pairs: Vec<(String, String)> = metadata.into_iter().collect();
        super::finished_for(&pairs, message_id)
    }

    /// The object's tags, for `retryq dlq redrive`: whether it is marked
    /// finished for the letter's message, and whether it is a letter's own
    /// copy ([`LETTER_TAG`]), the only object a redrive may delete.
    pub async fn tags_of(&self, p: &PayloadPointer) -> Result<Vec<(String, String)>, String> {
        self.tags(p).await.map_err(|e| match e {
            PayloadError::Invalid(why)
            | PayloadError::Unusable(why, _)
            | PayloadError::Unavailable(why) => why,
        })
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
        let tags = finished_tags(&kept.tags, how, message_id);
        let call = self
            .client()
            .await
            .copy_object()
            .copy_source(copy_source(p))
            .bucket(&p.bucket)
            .key(&p.key)
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .set_metadata(Some(finished_metadata(kept.metadata.as_ref(), &tags)))
            .set_content_type(kept.content_type.clone())
            .set_cache_control(kept.cache_control.clone())
            .set_content_disposition(kept.content_disposition.clone())
            .set_content_encoding(kept.content_encoding.clone())
            .set_content_language(kept.content_language.clone())
            .set_storage_class(kept.storage_class.clone())
            .set_server_side_encryption(kept.encryption.clone())
            .set_ssekms_key_id(kept.kms_key.clone())
            .set_bucket_key_enabled(kept.bucket_key)
            .tagging_directive(aws_sdk_s3::types::TaggingDirective::Replace)
            .tagging(tagging(&tags))
            .send();
        let doing = format!("marking {} {}", p.address(), how.as_str());
        bounded(&doing, call).await.map(drop).map_err(|f| f.text)
    }

    /// A copy of the payload under a new key in the same bucket, written
    /// now (§12.1): what a dead letter or a redriven letter points to, so
    /// that its object lives as long as its queue keeps it. Server-side,
    /// keeping the object's metadata, storage class and encryption (`kept`,
    /// or asked of S3 when not given). A letter's copy (`letter_of`: the
    /// SQS message it is the letter of) carries [`LETTER_TAG`] and no other
    /// tag; any other copy none.
    pub async fn copy(
        &self,
        p: &PayloadPointer,
        letter_of: Option<&str>,
        kept: Option<&Kept>,
    ) -> Result<PayloadPointer, String> {
        let asked;
        let kept = match kept {
            Some(kept) => kept,
            None => {
                asked = self.kept(p).await?;
                &asked
            }
        };
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
            .set_storage_class(kept.storage_class.clone())
            .set_server_side_encryption(kept.encryption.clone())
            .set_ssekms_key_id(kept.kms_key.clone())
            .set_bucket_key_enabled(kept.bucket_key)
            .tagging_directive(aws_sdk_s3::types::TaggingDirective::Replace)
            .set_tagging(letter_of.map(|id| tagging(&[(LETTER_TAG.to_owned(), id.to_owned())])))
            .send();
        let doing = format!("copying {}", p.address());
        bounded(&doing, call)
            .await
            .map(|_| copy)
            .map_err(|f| f.text)
    }

    /// What a copy of the object must keep, asked of S3 (HeadObject).
    async fn kept(&self, p: &PayloadPointer) -> Result<Kept, String> {
        let call = self
            .client()
            .await
            .head_object()
            .bucket(&p.bucket)
            .key(&p.key)
            .send();
        let head = bounded(&format!("reading {}", p.address()), call)
            .await
            .map_err(|f| f.text)?;
        Ok(kept_of!(head))
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

/// A GetObject that failed. A missing object or bucket makes the message
/// invalid, and so does an object S3 will not serve as it is: archived
/// (`InvalidObjectState`), encrypted with a customer's key or otherwise
/// refused (`InvalidRequest`), or a key S3 does not take (`KeyTooLongError`).
/// Anything else (throttling, 5xx, access, an object replaced since it was
/// peeked at: `PreconditionFailed`) is worth another receive.
fn read_failure(f: S3Failure, address: &str) -> PayloadError {
    let code = f.code.as_deref().unwrap_or_default();
    match code {
        "NoSuchKey" | "NoSuchBucket" | "NotFound" => PayloadError::Invalid(format!(
            "payload pointer: {address} does not exist ({code})"
        )),
        "InvalidObjectState" | "InvalidRequest" | "KeyTooLongError" => PayloadError::Invalid(
            format!("payload pointer: S3 will not serve {address} ({code})"),
        ),
        _ => PayloadError::Unavailable(format!("payload pointer: {}", f.text)),
    }
}

/// The room a payload of `size` bytes takes in `PAYLOAD_MEMORY_BYTES`:
/// twice its size, because its text and the body parsed from it exist
/// together for a moment (the text is released once parsed).
fn room_for(size: usize) -> usize {
    size.saturating_mul(2)
}

fn no_room(size: usize, address: &str) -> PayloadError {
    PayloadError::Unavailable(format!(
        "payload pointer: no room in PAYLOAD_MEMORY_BYTES for the {size} bytes of {address} in time"
    ))
}

/// An object's bytes, within [`CALL_TIMEOUT`].
async fn collect(
    body: aws_sdk_s3::primitives::ByteStream,
    address: &str,
) -> Result<bytes::Bytes, PayloadError> {
    match tokio::time::timeout(CALL_TIMEOUT, body.collect()).await {
        Err(_) => Err(PayloadError::Unavailable(format!(
            "payload pointer: S3 timed out reading {address}"
        ))),
        Ok(Err(_)) => Err(PayloadError::Unavailable(format!(
            "payload pointer: S3 failed mid-object reading {address}"
        ))),
        Ok(Ok(data)) => Ok(data.into_bytes()),
    }
}

/// The payload as text: into the String without a copy when the buffer is
/// not shared.
fn text(bytes: bytes::Bytes, address: &str) -> Result<String, PayloadError> {
    String::from_utf8(Vec::from(bytes)).map_err(|e| {
        PayloadError::Unusable(
            format!("payload pointer: {address} is not UTF-8 text"),
            e.as_bytes().len(),
        )
    })
}

/// An object's user metadata once it is marked finished: its own, and the
/// mark's two tags again (a store that will not give the tags of an
/// archived object still gives its metadata).
fn finished_metadata(
    metadata: Option<&std::collections::HashMap<String, String>>,
    finished_tags: &[(String, String)],
) -> std::collections::HashMap<String, String> {
    let ours = |k: &str| k == FINISHED_TAG || k == MESSAGE_TAG;
    let mut out: std::collections::HashMap<String, String> = metadata
        .into_iter()
        .flatten()
        .filter(|(k, _)| !ours(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(finished_tags.iter().filter(|(k, _)| ours(k)).cloned());
    out
}

/// The longest value S3 takes for a tag.
const TAG_VALUE_LIMIT: usize = 256;

/// An object's tags once it is marked finished for `message_id`: its tags
/// that are not retryq's, [`FINISHED_TAG`], and [`MESSAGE_TAG`] naming
/// this message after any others it was finished for (the newest that fit
/// S3's limit), so that a second message naming the same object does not
/// make the first one's redelivery look unfinished.
fn finished_tags(
    tags: &[(String, String)],
    how: Finished,
    message_id: &str,
) -> Vec<(String, String)> {
    let mut ids: Vec<&str> = tags
        .iter()
        .filter(|(k, _)| k == MESSAGE_TAG)
        .flat_map(|(_, v)| v.split(' '))
        .filter(|id| !id.is_empty() && *id != message_id)
        .collect();
    ids.push(message_id);
    while ids.len() > 1 && ids.iter().map(|id| id.len() + 1).sum::<usize>() > TAG_VALUE_LIMIT + 1 {
        ids.remove(0);
    }
    let mut out: Vec<(String, String)> = tags
        .iter()
        .filter(|(k, _)| k != FINISHED_TAG && k != MESSAGE_TAG)
        .cloned()
        .collect();
    out.push((FINISHED_TAG.to_owned(), how.as_str().to_owned()));
    out.push((MESSAGE_TAG.to_owned(), ids.join(" ")));
    out
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
        archive: rule
            .transitions()
            .iter()
            .filter(|t| {
                use aws_sdk_s3::types::TransitionStorageClass as Class;
                matches!(t.storage_class(), Some(Class::Glacier | Class::DeepArchive))
            })
            .map(|t| super::Archive {
                storage_class: t
                    .storage_class()
                    .map(|c| c.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                days: t.days().and_then(|d| u32::try_from(d).ok()),
                date: t.date().map(|d| d.to_string()),
            })
            .min_by_key(|a| (a.date.is_none(), a.days)),
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
    fn a_mark_names_every_message_it_was_made_for_within_s3s_limit() {
        let id = |n: usize| format!("{n:08}-0000-4000-8000-000000000000");
        let first = finished_tags(
            &[("owner".into(), "billing".into())],
            Finished::DeadLettered,
            &id(1),
        );
        assert_eq!(
            first,
            [
                ("owner".to_owned(), "billing".to_owned()),
                (FINISHED_TAG.to_owned(), "dead-lettered".to_owned()),
                (MESSAGE_TAG.to_owned(), id(1)),
            ]
        );
        let mut tags = first;
        for n in 2..=10 {
            tags = finished_tags(&tags, Finished::Delivered, &id(n));
        }
        let ids = &tags.iter().find(|(k, _)| k == MESSAGE_TAG).unwrap().1;
        let names = |ids: &str, id: &str| ids.split(' ').any(|named| named == id);
        assert!(ids.len() <= TAG_VALUE_LIMIT, "{}", ids.len());
        assert!(names(ids, &id(10)) && names(ids, &id(5)), "{ids}");
        assert!(!names(ids, &id(1)), "the oldest made room: {ids}");
        assert_eq!(ids.split(' ').count(), 6);
        // Marking again for a message already named does not repeat it.
        let again = finished_tags(&tags, Finished::Delivered, &id(10));
        assert_eq!(again, tags);
        assert_eq!(tags.iter().filter(|(k, _)| k == FINISHED_TAG).count(), 1);
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
