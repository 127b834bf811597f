//! Retry Message v1: the JSON body of every message on the retry queue.
//!
//! The model is deliberately a plain serde struct, so that the producer side
//! (service A) and the processor share one definition, and so that
//! `schema/retry-message.v1.json` can be checked against it in tests.
//!
//! [`RetryMessage::parse`] is the only way the processor reads a body: it
//! deserializes and then [validates](RetryMessage::validate) every field, and
//! every error names the field at fault (`request.method: …`). Error texts never
//! echo string values from the message, because a message may carry a stale
//! `Authorization` header or other data an operator should not see in a log.
//!
//! Unknown fields are ignored, so newer producers can add fields without
//! breaking older processors.
//!
//! ```
//! use retryq::message::RetryMessage;
//!
//! let msg = RetryMessage::parse(r#"{
//!     "id": "order-42",
//!     "destinationUrl": "https://partner.example.com/v1/orders",
//!     "request": { "method": "POST", "body": "{\"order\":42}" }
//! }"#).unwrap();
//! assert_eq!(msg.request.method, "POST");
//! assert_eq!(msg.received_count, 0);
//!
//! let err = RetryMessage::parse(r#"{ "id": "x", "request": { "method": "GET" } }"#).unwrap_err();
//! assert_eq!(err.field, "destinationUrl");
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;

/// Longest accepted message id (spec §2).
pub const MAX_ID_LEN: usize = 128;

/// Limits on what a message may ask the processor to send. A message past
/// one is `invalid-message`, with the limit named. They bound the work and
/// memory one record can cost, and stay well above what real APIs accept
/// (most servers refuse URLs over 8 KiB and header blocks over 32 KiB).
pub mod limits {
    /// Longest `destinationUrl`, in bytes.
    pub const URL_BYTES: usize = 8 * 1024;
    /// Longest `request.method`.
    pub const METHOD_BYTES: usize = 32;
    /// Most header values, repeated ones counted.
    pub const HEADER_VALUES: usize = 100;
    /// Most bytes of header names and values together.
    pub const HEADER_BYTES: usize = 32 * 1024;
    /// Largest body once decoded. Half of SQS's largest message (1 MiB),
    /// so that a message at the limit still fits in the DLQ with its
    /// attributes.
    pub const BODY_BYTES: usize = 512 * 1024;
}

/// The header that carries an X-Ray trace.
pub const TRACE_ID_HEADER: &str = "X-Amzn-Trace-Id";

/// One Retry Message, version 1 (spec §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryMessage {
    /// Stable across attempts; sent downstream as `Idempotency-Key`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originating_service: Option<String>,
    /// Passed through for operators; never interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    pub destination_url: Url,
    /// Name of an auth profile configured in the processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Lowers the processor's `MAX_ATTEMPTS` for this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// No attempt is made after this instant.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// Attempts already made before the message entered the queue.
    #[serde(default)]
    pub received_count: u32,
    /// Written after the fields above, which decide whether an attempt is
    /// made: a processor reading only the head of a large offloaded
    /// message finds them there (§12.4).
    pub request: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The `MessageGroupId` a producer chose for it (§13.1): not part of
    /// the body, sent beside it.
    #[serde(skip)]
    pub group: Option<String>,
}

/// The HTTP request to replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub method: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderValues>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "BodyEncoding::is_utf8")]
    pub body_encoding: BodyEncoding,
}

/// A header's value: one string, or a list for a repeated header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

impl HeaderValues {
    /// The values in order, whichever form the message used.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let slice: &[String] = match self {
            HeaderValues::One(v) => std::slice::from_ref(v),
            HeaderValues::Many(vs) => vs,
        };
        slice.iter().map(String::as_str)
    }
}

/// How `request.body` is encoded in the JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    #[default]
    Utf8,
    Base64,
}

impl BodyEncoding {
    fn is_utf8(&self) -> bool {
        *self == BodyEncoding::Utf8
    }
}

/// Why a body is not a valid v1 Retry Message. `field` is the JSON path of the
/// offending field (`request.headers.accept`), or `body` when the text is not
/// a JSON object at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidMessage {
    pub field: String,
    pub reason: String,
}

impl InvalidMessage {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidMessage {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl RetryMessage {
    /// Parses and validates an SQS message body.
    pub fn parse(body: &str) -> Result<RetryMessage, InvalidMessage> {
        RetryMessage::parse_with_body_limit(body, limits::BODY_BYTES)
    }

    /// As [`parse`](Self::parse), allowing a request body of up to
    /// `body_limit` bytes (an offloaded payload's `MAX_OFFLOADED_BODY_BYTES`
    /// instead of the inline limit).
    pub fn parse_with_body_limit(
        body: &str,
        body_limit: usize,
    ) -> Result<RetryMessage, InvalidMessage> {
        // serde would also read a struct from a JSON array, positionally;
        // a Retry Message is an object.
        if !body.trim_start().starts_with('{') {
            return Err(InvalidMessage::new("body", "must be a JSON object"));
        }
        // Most bodies are well formed: read them at serde_json's full speed,
        // and only a body that fails is read again, tracking the path, to
        // name the field at fault.
        let de = &mut serde_json::Deserializer::from_str(body);
        let msg = match RetryMessage::deserialize(&mut *de) {
            Ok(msg) => msg,
            Err(_) => {
                let de = &mut serde_json::Deserializer::from_str(body);
                serde_path_to_error::deserialize(de).map_err(from_serde)?
            }
        };
        msg.validate_with_body_limit(body_limit)?;
        Ok(msg)
    }

    /// Checks the rules of spec §2 that the JSON types alone do not
    /// express.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        self.validate_with_body_limit(limits::BODY_BYTES)
    }

    /// As [`validate`](Self::validate), allowing a request body of up to
    /// `body_limit` bytes (an offloaded message's).
    pub fn validate_with_body_limit(&self, body_limit: usize) -> Result<(), InvalidMessage> {
        validate_id(&self.id)?;
        self.validate_destination()?;
        self.validate_method()?;
        self.validate_headers()?;
        if self.body_bytes()?.len() > body_limit {
            return Err(InvalidMessage::new(
                "request.body",
                format!("is larger than {body_limit} bytes"),
            ));
        }
        if self.auth.as_deref() == Some("") {
            return Err(InvalidMessage::new("auth", "must not be empty"));
        }
        if self.max_attempts == Some(0) {
            return Err(InvalidMessage::new("maxAttempts", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_destination(&self) -> Result<(), InvalidMessage> {
        let url = &self.destination_url;
        let problem = if !matches!(url.scheme(), "http" | "https") {
            "scheme must be http or https".to_owned()
        } else if url.host().is_none() {
            "has no host".to_owned()
        } else if url.as_str().len() > limits::URL_BYTES {
            format!("is longer than {} bytes", limits::URL_BYTES)
        } else {
            return Ok(());
        };
        Err(InvalidMessage::new("destinationUrl", problem))
    }

    fn validate_method(&self) -> Result<(), InvalidMessage> {
        let method = &self.request.method;
        if method.len() > limits::METHOD_BYTES {
            return Err(InvalidMessage::new(
                "request.method",
                format!("is longer than {} characters", limits::METHOD_BYTES),
            ));
        }
        if !is_token(method) {
            return Err(InvalidMessage::new(
                "request.method",
                "must be an HTTP method token such as GET or POST",
            ));
        }
        Ok(())
    }

    fn validate_headers(&self) -> Result<(), InvalidMessage> {
        let values = || {
            self.request
                .headers
                .iter()
                .flat_map(|(name, values)| values.iter().map(move |v| (name, v)))
        };
        if values().count() > limits::HEADER_VALUES {
            return Err(InvalidMessage::new(
                "request.headers",
                format!("has more than {} values", limits::HEADER_VALUES),
            ));
        }
        if values().map(|(n, v)| n.len() + v.len()).sum::<usize>() > limits::HEADER_BYTES {
            return Err(InvalidMessage::new(
                "request.headers",
                format!("are larger than {} bytes in all", limits::HEADER_BYTES),
            ));
        }
        for (name, values) in &self.request.headers {
            let field = || format!("request.headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(InvalidMessage::new(field(), "is not a valid header name"));
            }
            if values
                .iter()
                .any(|v| http::HeaderValue::from_bytes(v.as_bytes()).is_err())
            {
                return Err(InvalidMessage::new(
                    field(),
                    "value contains characters not allowed in a header (control characters or line breaks)",
                ));
            }
        }
        Ok(())
    }

    /// The request body as bytes, decoded per `bodyEncoding`; empty when the
    /// message has no body. A UTF-8 body is borrowed, not copied.
    pub fn body_bytes(&self) -> Result<Cow<'_, [u8]>, InvalidMessage> {
        match (&self.request.body, self.request.body_encoding) {
            (None, _) => Ok(Cow::Borrowed(&[])),
            (Some(text), BodyEncoding::Utf8) => Ok(Cow::Borrowed(text.as_bytes())),
            (Some(text), BodyEncoding::Base64) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Cow::Owned)
                .map_err(|_| InvalidMessage::new("request.body", "is not valid base64")),
        }
    }

    /// Continues the X-Ray trace `trace_header` (a record's `AWSTraceHeader`)
    /// downstream as `X-Amzn-Trace-Id`, unless the request already carries
    /// one (spec §11). A `traceparent` header is the message's own and
    /// passes through unchanged.
    pub fn continue_trace(&mut self, trace_header: &str) {
        let has_one = self
            .request
            .headers
            .keys()
            .any(|name| name.eq_ignore_ascii_case(TRACE_ID_HEADER));
        if !has_one {
            self.request.headers.insert(
                TRACE_ID_HEADER.to_owned(),
                HeaderValues::One(trace_header.to_owned()),
            );
        }
    }

    /// Takes the request body out of the message as the bytes to send
    /// (decoded per `bodyEncoding`): a UTF-8 body moves without a copy, so a
    /// large body is held once. `Ok(None)` when there is no body.
    pub fn take_body(&mut self) -> Result<Option<bytes::Bytes>, InvalidMessage> {
        let decoded = match self.request.body_encoding {
            BodyEncoding::Utf8 => None,
            BodyEncoding::Base64 => Some(self.body_bytes()?.into_owned()),
        };
        let Some(text) = self.request.body.take() else {
            return Ok(None);
        };
        Ok(Some(match decoded {
            Some(bytes) => bytes::Bytes::from(bytes),
            None => bytes::Bytes::from(text),
        }))
    }

    /// The attempt limit for this message: `min(maxAttempts, MAX_ATTEMPTS)`.
    pub fn attempt_limit(&self, max_attempts: u32) -> u32 {
        self.max_attempts
            .map_or(max_attempts, |m| m.min(max_attempts))
    }
}

/// Is `id` a valid message id (spec §2)?
pub fn validate_id(id: &str) -> Result<(), InvalidMessage> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(InvalidMessage::new("id", "must be 1 to 128 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(InvalidMessage::new(
            "id",
            "may only contain A-Z, a-z, 0-9, '.', '_', ':' and '-'",
        ));
    }
    Ok(())
}

/// RFC 9110 `token`: the characters allowed in a method name.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Turns a serde error into one that names the field, the position and the
/// kind of error, and never a value from the message: serde's own texts
/// quote the offending value, so none of them is copied, only recognised.
fn from_serde(err: serde_path_to_error::Error<serde_json::Error>) -> InvalidMessage {
    let path = err.path().to_string();
    let inner = err.inner();
    let at = format!("line {} column {}", inner.line(), inner.column());
    if !matches!(inner.classify(), serde_json::error::Category::Data) {
        return InvalidMessage::new("body", format!("not valid JSON (syntax error at {at})"));
    }
    let text = inner.to_string();
    let at_root = path == "." || path.is_empty();
    if let Some(rest) = text.strip_prefix("missing field `") {
        // The name is one of our own fields, never the message's text.
        let name = rest.split('`').next().unwrap_or_default();
        let field = if at_root {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
        return InvalidMessage::new(field, "is required");
    }
    let field = if at_root { "body".to_owned() } else { path };
    InvalidMessage::new(field, format!("{} (at {at})", data_error_kind(&text)))
}

/// The kind of a serde data error, from the fixed start of its text, and
/// what was expected when serde says so in its own words (a type or a list
/// of our variant names). The unexpected value, which sits between the two,
/// is never kept.
fn data_error_kind(text: &str) -> String {
    const KINDS: [&str; 5] = [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
        "duplicate field",
    ];
    let Some(kind) = KINDS
        .into_iter()
        .find(|k| text.starts_with(&format!("{k}:")))
    else {
        return "invalid value".to_owned();
    };
    let text = text.rsplit_once(" at line ").map_or(text, |(t, _)| t);
    // The last ", expected " is serde's: the value comes before it.
    match text.rsplit_once(", expected ") {
        Some((_, expected)) if !expected.contains(['"', '\\']) => {
            format!("{kind}, expected {expected}")
        }
        _ => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_body_moves_text_and_decodes_base64_once() {
        let mut m = RetryMessage::parse(
            r#"{"id":"a","destinationUrl":"https://x.example.com/","request":{"method":"POST","body":"héllo"}}"#,
        )
        .unwrap();
        let text_ptr = m.request.body.as_ref().unwrap().as_ptr();
        let body = m.take_body().unwrap().unwrap();
        assert_eq!(&body[..], "héllo".as_bytes());
        assert_eq!(body.as_ptr(), text_ptr, "the same buffer, not a copy");
        assert!(m.request.body.is_none());
        assert_eq!(m.take_body().unwrap(), None);
        let mut b = RetryMessage::parse(
            r#"{"id":"a","destinationUrl":"https://x.example.com/","request":{"method":"POST","bodyEncoding":"base64","body":"AAEC"}}"#,
        )
        .unwrap();
        assert_eq!(&b.take_body().unwrap().unwrap()[..], &[0u8, 1, 2]);
    }
    use proptest::prelude::*;

    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "id": "7b0f2c5e-1f0c-4a53-9a55-2f8f6d1c9e10",
            "originatingService": "orders-api",
            "createdAt": "2026-11-28T12:00:00Z",
            "destinationUrl": "https://partner.example.com/v1/orders?x=1",
            "request": {
                "method": "POST",
                "headers": { "content-type": "application/json", "accept": ["application/json", "text/plain"] },
                "body": "{\"order\":42}",
                "bodyEncoding": "utf8"
            },
            "auth": "partner-x",
            "maxAttempts": 8,
            "expiresAt": "2026-11-29T12:00:00Z",
            "receivedCount": 0,
            "metadata": { "correlationId": "abc-123" }
        })
    }

    fn parse(v: &serde_json::Value) -> Result<RetryMessage, InvalidMessage> {
        RetryMessage::parse(&v.to_string())
    }

    fn field_of(v: serde_json::Value) -> String {
        parse(&v).unwrap_err().field
    }

    #[test]
    fn the_contract_example_parses_with_every_field() {
        let msg = parse(&valid()).unwrap();
        assert_eq!(msg.attempt_limit(5), 5);
        assert_eq!(msg.attempt_limit(10), 8);
        assert_eq!(
            msg.request.headers["accept"].iter().collect::<Vec<_>>(),
            ["application/json", "text/plain"]
        );
        assert_eq!(*msg.body_bytes().unwrap(), *br#"{"order":42}"#);
        assert_eq!(msg.expires_at.unwrap().unix_timestamp(), 1_795_953_600);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut v = valid();
        v["futureField"] = serde_json::json!({"x": 1});
        v["request"]["futureToo"] = serde_json::json!(true);
        assert!(parse(&v).is_ok());
    }

    #[test]
    fn base64_bodies_are_decoded() {
        let mut v = valid();
        v["request"]["body"] = "AAEC/w==".into();
        v["request"]["bodyEncoding"] = "base64".into();
        assert_eq!(*parse(&v).unwrap().body_bytes().unwrap(), [0, 1, 2, 255]);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("id", Box::new(|v| v["id"] = "".into())),
            ("id", Box::new(|v| v["id"] = "has space".into())),
            ("id", Box::new(|v| v["id"] = "x".repeat(129).into())),
            ("id", Box::new(|v| v["id"] = 5.into())),
            (
                "id",
                Box::new(|v| drop(v.as_object_mut().unwrap().remove("id"))),
            ),
            (
                "destinationUrl",
                Box::new(|v| v["destinationUrl"] = "ftp://x.example/".into()),
            ),
            (
                "destinationUrl",
                Box::new(|v| v["destinationUrl"] = "/relative".into()),
            ),
            (
                "request",
                Box::new(|v| drop(v.as_object_mut().unwrap().remove("request"))),
            ),
            (
                "request.method",
                Box::new(|v| v["request"]["method"] = "GE T".into()),
            ),
            (
                "request.method",
                Box::new(|v| drop(v["request"].as_object_mut().unwrap().remove("method"))),
            ),
            (
                "request.headers.bad name",
                Box::new(|v| v["request"]["headers"]["bad name"] = "x".into()),
            ),
            (
                "request.headers.x-a",
                Box::new(|v| v["request"]["headers"]["x-a"] = "a\r\nb".into()),
            ),
            (
                "request.headers.x-a",
                Box::new(|v| v["request"]["headers"]["x-a"] = 5.into()),
            ),
            (
                "request.body",
                Box::new(|v| {
                    v["request"]["bodyEncoding"] = "base64".into();
                    v["request"]["body"] = "not base64!".into();
                }),
            ),
            (
                "request.bodyEncoding",
                Box::new(|v| v["request"]["bodyEncoding"] = "gzip".into()),
            ),
            ("maxAttempts", Box::new(|v| v["maxAttempts"] = 0.into())),
            ("maxAttempts", Box::new(|v| v["maxAttempts"] = (-1).into())),
            (
                "expiresAt",
                Box::new(|v| v["expiresAt"] = "tomorrow".into()),
            ),
            (
                "receivedCount",
                Box::new(|v| v["receivedCount"] = "3".into()),
            ),
            ("auth", Box::new(|v| v["auth"] = "".into())),
            ("metadata", Box::new(|v| v["metadata"] = "flat".into())),
        ];
        for (field, mutate) in cases {
            let mut v = valid();
            mutate(&mut v);
            assert_eq!(field_of(v.clone()), field, "for {v}");
        }
    }

    #[test]
    fn each_limit_is_enforced_and_named() {
        let mut at_limit = valid();
        at_limit["request"]["headers"] = serde_json::json!({});
        for i in 0..limits::HEADER_VALUES {
            at_limit["request"]["headers"][format!("x-h{i}")] = "v".into();
        }
        at_limit["request"]["body"] = "b".repeat(limits::BODY_BYTES).into();
        let long_path = "p".repeat(limits::URL_BYTES - "https://partner.example.com/".len());
        at_limit["destinationUrl"] = format!("https://partner.example.com/{long_path}").into();
        assert!(parse(&at_limit).is_ok(), "exactly at every limit is fine");

        let cases: Vec<(&str, Mutation)> = vec![
            (
                "destinationUrl",
                Box::new(|v| {
                    v["destinationUrl"] =
                        format!("https://x.example.com/{}", "p".repeat(limits::URL_BYTES)).into()
                }),
            ),
            (
                "request.method",
                Box::new(|v| v["request"]["method"] = "M".repeat(limits::METHOD_BYTES + 1).into()),
            ),
            (
                "request.headers",
                Box::new(|v| {
                    v["request"]["headers"]["x-many"] = vec!["v"; limits::HEADER_VALUES + 1].into()
                }),
            ),
            (
                "request.headers",
                Box::new(|v| {
                    v["request"]["headers"]["x-big"] = "v".repeat(limits::HEADER_BYTES).into()
                }),
            ),
            (
                "request.body",
                Box::new(|v| v["request"]["body"] = "b".repeat(limits::BODY_BYTES + 1).into()),
            ),
            (
                "request.body",
                Box::new(|v| {
                    v["request"]["bodyEncoding"] = "base64".into();
                    v["request"]["body"] = "AAAA".repeat(limits::BODY_BYTES / 3 + 1).into();
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut v = valid();
            mutate(&mut v);
            let err = parse(&v).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.reason.contains("than"), "{err}");
        }
    }

    #[test]
    fn text_that_is_not_a_json_object_is_reported_as_the_body() {
        for body in ["", "not json", "[1,2]", "42", "{\"id\":"] {
            assert_eq!(
                RetryMessage::parse(body).unwrap_err().field,
                "body",
                "{body:?}"
            );
        }
    }

    #[test]
    fn errors_never_echo_string_values() {
        let mut v = valid();
        v["maxAttempts"] = "Bearer s3cr3t".into();
        let err = parse(&v).unwrap_err();
        assert_eq!(err.field, "maxAttempts");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn serialization_round_trips() {
        let msg = parse(&valid()).unwrap();
        let again = RetryMessage::parse(&serde_json::to_string(&msg).unwrap()).unwrap();
        assert_eq!(msg, again);
    }

    /// Some run of 6 characters of `value` (or of its JSON-escaped form)
    /// that appears in `text`.
    fn echoed(value: &str, text: &str) -> Option<String> {
        let escaped = serde_json::to_string(value).unwrap();
        let found = [value, escaped.trim_matches('"')]
            .into_iter()
            .find_map(|v| {
                let chars: Vec<char> = v.chars().collect();
                chars
                    .windows(6)
                    .map(|w| w.iter().collect::<String>())
                    .find(|w| text.contains(w.as_str()))
            });
        found
    }

    /// Every way a message can carry a value into an error: in a header, the
    /// body, the query, the userinfo, and every field that can be wrong.
    fn placements(value: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = valid();
            f(&mut v);
            out.push(v);
        };
        with(&|v| v["request"]["headers"]["x-secret"] = serde_json::json!({ "k": value }));
        with(&|v| v["request"]["headers"]["x-secret"] = format!("{value}\n").into());
        with(&|v| v["request"]["headers"]["x-secret"] = serde_json::json!([value, 5]));
        with(&|v| v["request"]["body"] = serde_json::json!([value]));
        with(&|v| {
            v["request"]["bodyEncoding"] = "base64".into();
            v["request"]["body"] = value.into();
        });
        with(&|v| v["request"]["bodyEncoding"] = value.into());
        with(&|v| v["destinationUrl"] = format!("https://partner.example.com:{value}/").into());
        with(&|v| v["destinationUrl"] = format!("ftp://u:{value}@x.example/?q={value}").into());
        with(&|v| v["destinationUrl"] = format!("{value}?token={value}").into());
        with(&|v| {
            v["destinationUrl"] = format!("https://u:{value}@x.example/?q={value}").into();
            v["request"]["method"] = "GE T".into();
        });
        with(&|v| v["request"]["method"] = value.into());
        with(&|v| v["maxAttempts"] = value.into());
        with(&|v| v["receivedCount"] = value.into());
        with(&|v| v["expiresAt"] = value.into());
        with(&|v| v["id"] = value.into());
        with(&|v| v["auth"] = serde_json::json!({ "p": value }));
        out
    }

    proptest! {
        #[test]
        fn no_error_text_echoes_a_value_of_the_message(
            value in "[A-Za-z0-9\"\\\\ é☃€\u{1F600}:/@?&=,.{}\\[\\]-]{6,40}"
        ) {
            for v in placements(&value) {
                let text = v.to_string();
                let Err(err) = RetryMessage::parse(&text) else { continue };
                let shown = err.to_string();
                prop_assert!(echoed(&value, &shown).is_none(),
                    "{shown:?} echoes {value:?} (from {text})");
            }
            // Truncated JSON: a syntax error in the middle of the value.
            let mut v = valid();
            v["request"]["body"] = value.clone().into();
            let text = v.to_string();
            let escaped = serde_json::to_string(&value).unwrap();
            let inner = &escaped[1..escaped.len() - 1];
            let start = text.find(inner).unwrap();
            let cut = &text[..start + inner.chars().next().unwrap().len_utf8()];
            let err = RetryMessage::parse(cut).unwrap_err().to_string();
            prop_assert!(echoed(&value, &err).is_none(), "{err:?} echoes {value:?}");
        }

        #[test]
        fn parse_never_panics_on_arbitrary_text(s in "\\PC{0,200}") {
            let _ = RetryMessage::parse(&s);
        }

        #[test]
        fn ids_of_the_allowed_alphabet_are_accepted(id in "[A-Za-z0-9._:-]{1,128}") {
            let mut v = valid();
            v["id"] = id.into();
            prop_assert!(parse(&v).is_ok());
        }

        #[test]
        fn any_token_is_a_method(m in "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}") {
            let mut v = valid();
            v["request"]["method"] = m.into();
            prop_assert!(parse(&v).is_ok());
        }
    }
}
