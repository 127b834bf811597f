//! Request signatures (spec §10), as pure functions of the request's bytes,
//! a key and a time: Standard Webhooks and AWS Signature Version 4. The
//! deliverer applies them to the request exactly as it will be sent, after
//! every other header is final.

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

/// A Standard Webhooks signing key: the bytes a `whsec_<base64>` secret
/// encodes.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookKey(Vec<u8>);

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey([redacted])")
    }
}

/// The headers a Standard Webhooks signature sets.
pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

impl WebhookKey {
    /// Reads a `whsec_`-prefixed secret (the prefix may be left off, as the
    /// reference libraries allow). The error says what is wrong, never the
    /// value.
    pub fn parse(secret: &super::Secret) -> Result<WebhookKey, &'static str> {
        let text = secret.expose().trim();
        let encoded = text.strip_prefix("whsec_").unwrap_or(text);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "not a whsec_ secret (whsec_ then base64)")?;
        if key.is_empty() {
            return Err("an empty whsec_ secret");
        }
        Ok(WebhookKey(key))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            // HMAC takes keys of any length.
            Err(_) => unreachable!("HMAC-SHA256 accepts any key length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }

    /// Sets `webhook-id`, `webhook-timestamp` and `webhook-signature` for a
    /// request with this `body`, sent at `now`, replacing any the message
    /// carried. With `also` (the previous key, during a rotation) the
    /// header carries both signatures, space-separated, this key's first.
    pub fn sign(
        &self,
        headers: &mut HeaderMap,
        id: &str,
        now: SystemTime,
        body: &[u8],
        also: Option<&WebhookKey>,
    ) -> Result<(), String> {
        let timestamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id_value =
            HeaderValue::from_str(id).map_err(|_| "id: not usable as webhook-id".to_owned())?;
        let mut signatures = self.signature(id, timestamp, body);
        if let Some(previous) = also.filter(|p| *p != self) {
            signatures.push(' ');
            signatures.push_str(&previous.signature(id, timestamp, body));
        }
        let mut signature = HeaderValue::from_str(&signatures)
            .map_err(|_| "webhook-signature: not a header value".to_owned())?;
        signature.set_sensitive(true);
        headers.insert(HeaderName::from_static(WEBHOOK_ID), id_value);
        headers.insert(
            HeaderName::from_static(WEBHOOK_TIMESTAMP),
            HeaderValue::from(timestamp),
        );
        headers.insert(HeaderName::from_static(WEBHOOK_SIGNATURE), signature);
        Ok(())
    }
}

/// What an AWS Signature Version 4 needs besides the request.
pub struct SigV4<'a> {
    pub credentials: &'a aws_credential_types::Credentials,
    pub service: &'a str,
    pub region: &'a str,
}

/// The headers SigV4 computes: any the message carried are replaced.
const SIGV4_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

impl SigV4<'_> {
    /// Signs a request (method, URL as sent, headers as sent, body as sent)
    /// at `now`: sets `Authorization`, `X-Amz-Date`, `X-Amz-Content-SHA256`
    /// (the payload hash) and, with temporary credentials,
    /// `X-Amz-Security-Token`. Every header present is signed, except
    /// `User-Agent` and `X-Amzn-Trace-Id`, which proxies may change.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &mut HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), String> {
        use aws_sigv4::http_request::{
            sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
            SigningSettings, UriPathNormalizationMode,
        };
        for name in SIGV4_HEADERS {
            headers.remove(name);
        }
        let mut pairs = Vec::with_capacity(headers.len());
        for (name, value) in headers.iter() {
            let value = value
                .to_str()
                .map_err(|_| format!("request.headers.{name}: cannot be signed (not ASCII)"))?;
            pairs.push((name.as_str(), value));
        }
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        if self.service == "s3" {
            // S3's canonical form (§12.8): the path as sent, encoded once
            // and not normalised, as S3 and botocore's S3SigV4Auth compute it.
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        }
        let identity = self.credentials.clone().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name(self.service)
            .time(now)
            .settings(settings)
            .build()
            .map_err(|_| "SigV4: incomplete signing parameters".to_owned())?
            .into();
        let request =
            SignableRequest::new(method, url, pairs.into_iter(), SignableBody::Bytes(body))
                .map_err(|_| "destinationUrl: cannot be signed".to_owned())?;
        let (instructions, _) = sign(request, &params)
            .map_err(|_| "SigV4: the request cannot be put in canonical form".to_owned())?
            .into_parts();
        let (signed, _) = instructions.into_parts();
        for header in signed {
            let name = HeaderName::from_static(header.name());
            let mut value = HeaderValue::from_str(header.value())
                .map_err(|_| format!("SigV4: {name} is not a header value"))?;
            value.set_sensitive(header.sensitive() || name == http::header::AUTHORIZATION);
            headers.insert(name, value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use std::time::Duration;

    /// The example of the Standard Webhooks specification's reference
    /// libraries (their test suites sign this payload with this secret).
    #[test]
    fn webhook_signature_matches_the_specification_example() {
        let key =
            WebhookKey::parse(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let sig = key.signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn webhook_keys_need_base64_and_never_echo_the_secret() {
        assert!(WebhookKey::parse(&Secret::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).is_ok());
        for bad in ["whsec_not base64!", "whsec_", ""] {
            let e = WebhookKey::parse(&Secret::new(bad)).unwrap_err();
            assert!(!e.contains("base64!") || bad.is_empty(), "{e}");
        }
        let key = WebhookKey::parse(&Secret::new("whsec_c2VjcmV0")).unwrap();
        assert_eq!(format!("{key:?}"), "WebhookKey([redacted])");
    }

    #[test]
    fn webhook_headers_replace_the_message_own_and_change_with_time() {
        let key = WebhookKey::parse(&Secret::new("whsec_c2VjcmV0")).unwrap();
        let mut h = HeaderMap::new();
        h.insert("webhook-signature", "v1,stale".parse().unwrap());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        key.sign(&mut h, "m1", t0, b"{}", None).unwrap();
        assert_eq!(h["webhook-id"], "m1");
        assert_eq!(h["webhook-timestamp"], "1700000000");
        assert_eq!(h.get_all("webhook-signature").iter().count(), 1);
        let first = h["webhook-signature"].clone();
        key.sign(&mut h, "m1", t0 + Duration::from_secs(1), b"{}", None)
            .unwrap();
        assert_ne!(h["webhook-signature"], first);
        assert!(h["webhook-signature"].is_sensitive());
    }

    #[test]
    fn during_a_rotation_both_keys_sign_space_separated_the_current_first() {
        let current = WebhookKey::parse(&Secret::new("whsec_Y3VycmVudA==")).unwrap();
        let previous = WebhookKey::parse(&Secret::new("whsec_cHJldmlvdXM=")).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        current
            .sign(&mut h, "m1", t0, b"{}", Some(&previous))
            .unwrap();
        let both = h["webhook-signature"].to_str().unwrap().to_owned();
        assert_eq!(
            both,
            format!(
                "{} {}",
                current.signature("m1", 1_700_000_000, b"{}"),
                previous.signature("m1", 1_700_000_000, b"{}")
            )
        );
        // The same key twice is one signature.
        current
            .sign(&mut h, "m1", t0, b"{}", Some(&current))
            .unwrap();
        assert!(!h["webhook-signature"].to_str().unwrap().contains(' '));
    }

    /// The AWS SigV4 test suite's `get-vanilla` request (example
    /// credentials, 20150830T123600Z), which retryq signs with one more
    /// header, `x-amz-content-sha256`. The expected signature is botocore
    /// 1.43's `SigV4Auth` for the same request and headers, its clock set to
    /// that instant; without the extra header botocore gives the suite's
    /// published `5fa00fa3…bf31`, which checks the way it was obtained.
    #[test]
    fn sigv4_matches_botocore_on_the_aws_test_suite_vanilla_request() {
        let credentials = aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let signer = SigV4 {
            credentials: &credentials,
            service: "service",
            region: "us-east-1",
        };
        let mut h = HeaderMap::new();
        h.insert("host", "example.amazonaws.com".parse().unwrap());
        h.insert("authorization", "Bearer stale".parse().unwrap());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 20150830T123600Z
        signer
            .sign("GET", "https://example.amazonaws.com/", &mut h, b"", now)
            .unwrap();
        assert_eq!(
            h["authorization"].to_str().unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature=726c5c4879a6b4ccbbd3b24edbd6b8826d34f87450fbbf4e85546fc7ba9c1642"
        );
        assert_eq!(h["x-amz-date"], "20150830T123600Z");
        assert_eq!(
            h["x-amz-content-sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(h["authorization"].is_sensitive());
    }
}
