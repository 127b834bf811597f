//! The S3 adapter of the claim check: reads an offloaded payload, deletes
//! it once delivered, and stores one for the producer. The client is built
//! on the first pointer, so a process that never meets one never reads the
//! AWS configuration for it.

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;

use super::PayloadPointer;

/// Why a payload could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The pointer cannot be resolved, now or later (no such object or
    /// bucket, larger than allowed, not text): the message is invalid.
    Invalid(String),
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

    /// The payload as text, if it is at most `max_bytes`.
    pub async fn get(&self, p: &PayloadPointer, max_bytes: usize) -> Result<String, PayloadError> {
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
        let size = object.content_length().unwrap_or(0).max(0) as usize;
        if size > max_bytes {
            return Err(PayloadError::Invalid(format!(
                "payload pointer: {address} holds {size} bytes, more than {max_bytes}"
            )));
        }
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
            return Err(PayloadError::Invalid(format!(
                "payload pointer: {address} is larger than {max_bytes} bytes"
            )));
        }
        // Into the String without a copy when the buffer is not shared.
        String::from_utf8(Vec::from(bytes)).map_err(|_| {
            PayloadError::Invalid(format!("payload pointer: {address} is not UTF-8 text"))
        })
    }

    /// Deletes a delivered payload. A failure is only logged by the caller:
    /// the bucket's lifecycle rule expires what is left.
    pub async fn delete(&self, p: &PayloadPointer) -> Result<(), String> {
        let call = self
            .client()
            .await
            .delete_object()
            .bucket(&p.bucket)
            .key(&p.key)
            .send();
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "S3 failed deleting {} ({})",
                p.address(),
                e.code().unwrap_or("no answer")
            )),
            Err(_) => Err(format!("S3 timed out deleting {}", p.address())),
        }
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
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(p),
            Ok(Err(e)) => Err(format!(
                "S3 failed storing {} ({})",
                p.address(),
                e.code().unwrap_or("no answer")
            )),
            Err(_) => Err(format!("S3 timed out storing {}", p.address())),
        }
    }
}
