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

/// The top-level `destinationUrl` of a JSON object of which `head` is the
/// beginning, if it is there, complete and a URL. Never reads past the
/// first `destinationUrl`, and stops at the first thing it cannot read (the
/// end of the head, most often).
pub fn destination(head: &[u8]) -> Option<url::Url> {
    let mut found = None;
    let mut reader = serde_json::Deserializer::from_slice(head);
    let _ = serde::Deserializer::deserialize_map(&mut reader, Fields(&mut found));
    found.and_then(|url: String| url::Url::parse(&url).ok())
}

/// Walks an object's keys, skipping values, until `destinationUrl`.
struct Fields<'a>(&'a mut Option<String>);

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Retry Message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "destinationUrl" {
                *self.0 = Some(map.next_value()?);
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
        #[test]
        fn any_bytes_are_read_without_panicking(head in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = destination(&head);
        }
    }
}
