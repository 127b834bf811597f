//! The destination of an offloaded Retry Message, read from the first
//! bytes of its object (§12.4): enough for the rate limit and the breaker
//! to decide before the body is fetched. retryq's producer writes
//! `destinationUrl` before `request`, so for its objects the head holds
//! it; another producer's may not, and then the whole object is read
//! first, as before.

use serde::de::{IgnoredAny, MapAccess, Visitor};

/// How many bytes of an object are read to find its destination. An
/// object this small is read whole at once.
pub const HEAD_BYTES: usize = 64 * 1024;

/// What the head of an offloaded Retry Message says, as far as it goes:
/// the top-level fields before `request` that decide whether an attempt is
/// made. retryq's producer writes them all before `request`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// `destinationUrl`, if it is there, complete and a URL.
    pub destination: Option<url::Url>,
    /// `expiresAt`, if it came before the head ended (RFC 3339).
    pub expires_at: Option<std::time::SystemTime>,
    /// `maxAttempts`, likewise.
    pub max_attempts: Option<u32>,
    /// `receivedCount`, likewise.
    pub received_count: Option<u32>,
}

/// Reads `head`, the beginning of a JSON object, up to its `request` (or
/// the first thing it cannot read: the end of the head, most often). A
/// field that is not of its type ends the reading; the whole message,
/// once read, says what is wrong with it.
pub fn read(head: &[u8]) -> Head {
    let mut found = Head::default();
    let mut reader = serde_json::Deserializer::from_slice(head);
    let _ = serde::Deserializer::deserialize_map(&mut reader, Fields(&mut found));
    found
}

/// Walks an object's keys, skipping the values of others, until `request`.
struct Fields<'a>(&'a mut Head);

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Retry Message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "request" => return Ok(()),
                "destinationUrl" => {
                    let url: String = map.next_value()?;
                    self.0.destination = url::Url::parse(&url).ok();
                }
                "expiresAt" => {
                    let at: String = map.next_value()?;
                    let rfc3339 = &time::format_description::well_known::Rfc3339;
                    self.0.expires_at = time::OffsetDateTime::parse(&at, rfc3339)
                        .ok()
                        .map(std::time::SystemTime::from);
                }
                "maxAttempts" => self.0.max_attempts = Some(map.next_value()?),
                "receivedCount" => self.0.received_count = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn destination(head: &[u8]) -> Option<url::Url> {
        read(head).destination
    }

    const MESSAGE: &str = r#"{"id":"a","createdAt":"x","destinationUrl":"https://partner.example.com/v1?q=\u0031","request":{"method":"POST","body":"0123456789"},"maxAttempts":3}"#;

    #[test]
    fn the_destination_is_found_in_any_head_that_holds_it() {
        let end = MESSAGE.find(",\"request\"").unwrap();
        let want = url::Url::parse("https://partner.example.com/v1?q=1").unwrap();
        for cut in end..=MESSAGE.len() {
            assert_eq!(
                destination(&MESSAGE.as_bytes()[..cut]),
                Some(want.clone()),
                "{cut}"
            );
        }
        let start = MESSAGE.find("\"destinationUrl\"").unwrap();
        for cut in 0..start + 20 {
            assert_eq!(destination(&MESSAGE.as_bytes()[..cut]), None, "{cut}");
        }
    }

    #[test]
    fn only_a_top_level_url_counts() {
        let nested = br#"{"id":"a","metadata":{"destinationUrl":"https://evil.example/"},"destinationUrl":"https://good.example/","request":{}}"#;
        assert_eq!(
            destination(nested).unwrap().as_str(),
            "https://good.example/"
        );
        for not_one in [
            &br#"{"destinationUrl":"not a url","request":{}}"#[..],
            br#"{"destinationUrl":7}"#,
            br#"["destinationUrl","https://x.example/"]"#,
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(destination(not_one), None);
        }
    }

    #[test]
    fn the_fields_before_the_request_are_read_and_none_after_it() {
        let head = br#"{"id":"a","destinationUrl":"https://x.example/","expiresAt":"2020-01-01T00:00:00Z","maxAttempts":3,"receivedCount":2,"request":{"method":"POST","body":"xxxx"#;
        let read = read(head);
        assert_eq!(read.destination.unwrap().as_str(), "https://x.example/");
        assert_eq!(
            read.expires_at,
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800))
        );
        assert_eq!((read.max_attempts, read.received_count), (Some(3), Some(2)));
        let after = br#"{"destinationUrl":"https://x.example/","request":{},"maxAttempts":3}"#;
        assert_eq!(super::read(after).max_attempts, None);
        let ill_typed =
            br#"{"destinationUrl":"https://x.example/","maxAttempts":"3","receivedCount":2}"#;
        assert_eq!(super::read(ill_typed).received_count, None);
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_without_panicking(head in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = read(&head);
        }
    }
}
