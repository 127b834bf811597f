//! What kind of answer was this? (spec §3)
//!
//! [`classify`] looks only at plain values, the status and the headers of the
//! answer, or the kind of transport failure, so the whole outcome table is
//! tested without a network. The first matching row of §3 decides; in
//! particular a 2xx is delivered whatever its headers say, and a
//! `Retry-After` turns any other status into a retryable one.
//!
//! ```
//! use retryq::policy::classify::{classify, Answer, Outcome};
//! use std::time::{Duration, SystemTime};
//!
//! let mut headers = http::HeaderMap::new();
//! headers.insert("retry-after", "120".parse().unwrap());
//! let outcome = classify(&Answer::Status { status: 429, headers: &headers }, SystemTime::now());
//! assert!(matches!(outcome, Outcome::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(120)));
//! ```

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// What the destination did.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// An HTTP answer arrived.
    Status { status: u16, headers: &'a HeaderMap },
    /// No answer: the request failed in transport.
    NoResponse(NoResponse),
    /// A 401 that said the token expired, answered again right after the
    /// token was refreshed (the one refresh an attempt may make).
    ExpiredAfterRefresh { status: u16 },
}

/// The kinds of "no response" in spec §3. All are retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoResponse {
    Dns,
    Connect,
    Tls,
    Timeout,
    /// Anything else that stopped the exchange before a status arrived
    /// (reset connection, malformed answer).
    Other,
}

impl NoResponse {
    pub fn as_str(self) -> &'static str {
        match self {
            NoResponse::Dns => "DNS failure",
            NoResponse::Connect => "connection failed",
            NoResponse::Tls => "TLS failure",
            NoResponse::Timeout => "timed out",
            NoResponse::Other => "no response",
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered { status: u16 },
    /// Worth another attempt; `retry_after` is the destination's own
    /// `Retry-After`, which overrides the backoff.
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
    },
    /// Will not succeed by trying again.
    NonRetryable { status: Option<u16>, error: String },
}

impl Outcome {
    /// The status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered { status } => Some(*status),
            Outcome::Retryable { status, .. } | Outcome::NonRetryable { status, .. } => *status,
        }
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retryable { .. } => "retryable",
            Outcome::NonRetryable { .. } => "non-retryable",
        }
    }
}

/// Classifies one answer per the §3 table. `now` resolves an HTTP-date
/// `Retry-After` into a delay.
pub fn classify(answer: &Answer<'_>, now: SystemTime) -> Outcome {
    let (status, headers) = match *answer {
        Answer::NoResponse(kind) => {
            return Outcome::Retryable {
                status: None,
                retry_after: None,
                error: kind.as_str().to_owned(),
            }
        }
        Answer::ExpiredAfterRefresh { status } => {
            return Outcome::Retryable {
                status: Some(status),
                retry_after: None,
                error: format!("HTTP {status}: the token expired again right after a refresh"),
            }
        }
        Answer::Status { status, headers } => (status, headers),
    };
    if (200..300).contains(&status) {
        return Outcome::Delivered { status };
    }
    let retry_after = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let error = status_line(status);
    if (500..600).contains(&status) || matches!(status, 408 | 409 | 429) || retry_after.is_some() {
        return Outcome::Retryable {
            status: Some(status),
            retry_after,
            error,
        };
    }
    // Any other 4xx, any 3xx (redirects are not followed), and statuses
    // outside the HTTP classes, which no retry will fix either.
    Outcome::NonRetryable {
        status: Some(status),
        error,
    }
}

/// `HTTP 503 Service Unavailable`, or `HTTP 599` for unnamed codes.
fn status_line(status: u16) -> String {
    match http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("HTTP {status} {reason}"),
        None => format!("HTTP {status}"),
    }
}

/// Parses a `Retry-After` value, either delay-seconds or an HTTP-date, into
/// a delay from `now`. A date in the past means "now" (zero). Anything else,
/// including negative or fractional numbers, is not a `Retry-After`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurdly long digit strings rather than rejecting them:
        // the caller caps the delay anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_status(status: u16, retry_after: Option<&str>) -> Outcome {
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after {
            headers.insert(http::header::RETRY_AFTER, v.parse().unwrap());
        }
        classify(
            &Answer::Status {
                status,
                headers: &headers,
            },
            SystemTime::UNIX_EPOCH,
        )
    }

    fn kind(o: &Outcome) -> &'static str {
        o.name()
    }

    #[test]
    fn every_2xx_is_delivered_whatever_other_headers_say() {
        for status in 200..300 {
            assert_eq!(with_status(status, None), Outcome::Delivered { status });
            assert_eq!(
                with_status(status, Some("60")),
                Outcome::Delivered { status }
            );
        }
    }

    #[test]
    fn every_kind_of_no_response_is_retryable() {
        for k in [
            NoResponse::Dns,
            NoResponse::Connect,
            NoResponse::Tls,
            NoResponse::Timeout,
            NoResponse::Other,
        ] {
            let o = classify(&Answer::NoResponse(k), SystemTime::UNIX_EPOCH);
            assert_eq!(kind(&o), "retryable");
            assert_eq!(o.status(), None);
        }
    }

    #[test]
    fn a_token_that_expires_again_after_its_refresh_is_retryable() {
        let o = classify(
            &Answer::ExpiredAfterRefresh { status: 401 },
            SystemTime::UNIX_EPOCH,
        );
        assert!(
            matches!(
                o,
                Outcome::Retryable {
                    status: Some(401),
                    retry_after: None,
                    ..
                }
            ),
            "{o:?}"
        );
    }

    #[test]
    fn every_5xx_is_retryable() {
        for status in 500..600 {
            assert_eq!(kind(&with_status(status, None)), "retryable", "{status}");
        }
    }

    #[test]
    fn timeout_conflict_and_too_many_requests_are_retryable() {
        for status in [408, 409, 429] {
            assert_eq!(kind(&with_status(status, None)), "retryable", "{status}");
        }
    }

    #[test]
    fn any_status_with_retry_after_is_retryable_not_before_that_time() {
        for status in [300, 301, 400, 404, 418, 422, 429, 503] {
            let o = with_status(status, Some("30"));
            assert_eq!(
                o,
                Outcome::Retryable {
                    status: Some(status),
                    retry_after: Some(Duration::from_secs(30)),
                    error: status_line(status),
                }
            );
        }
    }

    #[test]
    fn other_4xx_and_all_3xx_are_non_retryable() {
        for status in (300..500).filter(|s| ![408, 409, 429].contains(s)) {
            assert_eq!(
                kind(&with_status(status, None)),
                "non-retryable",
                "{status}"
            );
        }
    }

    #[test]
    fn an_unparseable_retry_after_is_ignored() {
        assert_eq!(kind(&with_status(404, Some("soon"))), "non-retryable");
        assert!(matches!(
            with_status(503, Some("-5")),
            Outcome::Retryable {
                retry_after: None,
                ..
            }
        ));
    }

    #[test]
    fn statuses_outside_the_http_classes_are_non_retryable() {
        for status in [100, 101, 199, 600, 999] {
            assert_eq!(
                kind(&with_status(status, None)),
                "non-retryable",
                "{status}"
            );
        }
    }

    #[test]
    fn last_error_names_the_status() {
        assert!(matches!(with_status(503, None),
            Outcome::Retryable { error, .. } if error == "HTTP 503 Service Unavailable"));
        assert!(matches!(with_status(404, None),
            Outcome::NonRetryable { error, .. } if error == "HTTP 404 Not Found"));
    }

    #[test]
    fn retry_after_accepts_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:40 GMT", now),
            Some(Duration::from_secs(100))
        );
        // The obsolete forms an HTTP-date may take are accepted too.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:40 GMT", now),
            Some(Duration::from_secs(100))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
    }

    #[test]
    fn retry_after_rejects_what_is_not_seconds_or_a_date() {
        for v in ["", " ", "1.5", "-1", "+3", "1e3", "soon", "0x10"] {
            assert_eq!(parse_retry_after(v, SystemTime::UNIX_EPOCH), None, "{v:?}");
        }
    }

    proptest! {
        #[test]
        fn delay_seconds_round_trip(secs in 0u64..10_000_000) {
            prop_assert_eq!(
                parse_retry_after(&secs.to_string(), SystemTime::UNIX_EPOCH),
                Some(Duration::from_secs(secs))
            );
        }

        #[test]
        fn http_dates_round_trip(secs in 0u64..4_000_000_000, now in 0u64..4_000_000_000) {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
            let expected = at.duration_since(now).unwrap_or(Duration::ZERO);
            prop_assert_eq!(parse_retry_after(&httpdate::fmt_http_date(at), now), Some(expected));
        }

        #[test]
        fn parse_retry_after_never_panics(s in "\\PC{0,64}") {
            let _ = parse_retry_after(&s, SystemTime::now());
        }

        #[test]
        fn classification_is_total_and_2xx_alone_delivers(status in 0u16..1000, ra in proptest::option::of("[0-9]{1,6}")) {
            let o = with_status(status, ra.as_deref());
            prop_assert_eq!(matches!(o, Outcome::Delivered { .. }), (200..300).contains(&status));
        }
    }
}
