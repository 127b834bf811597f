//! What the console never shows: the values of headers and query
//! parameters whose names carry credentials.
//!
//! A name is credential-bearing when it contains any of the words below,
//! in any case (`Authorization`, `X-Api-Key`, `x-amz-security-token`,
//! `client_secret`, `Cookie`, …). `Idempotency-Key` is the one exception:
//! it is the message's id, which the page shows anyway. The rule errs on
//! the side of masking: a masked value that was harmless costs nothing.

/// Shown instead of a masked value.
pub const MASK: &str = "•••• (masked)";

const WORDS: [&str; 11] = [
    "auth",
    "token",
    "secret",
    "password",
    "passwd",
    "key",
    "cookie",
    "signature",
    "session",
    "credential",
    "jwt",
];

/// Query parameters that carry credentials under short names: Azure's
/// SAS signature and Functions key, and signed URLs' parts.
const QUERY_NAMES: [&str; 6] = [
    "sig",
    "code",
    "sv",
    "se",
    "x-amz-credential",
    "x-goog-credential",
];

/// Is `name` (a header, a JSON key or a query parameter) credential-bearing?
pub fn is_credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name != "idempotency-key" && WORDS.iter().any(|w| name.contains(w))
}

/// Does `text` mention a credential-bearing word anywhere?
pub fn mentions_credentials(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    WORDS.iter().any(|w| text.contains(w))
}

/// A path segment that looks like a secret (a webhook's token in its
/// path, as Slack's and Discord's are): 20 characters or more of letters
/// and digits mixed.
fn secret_like(segment: &str) -> bool {
    segment.len() >= 20
        && segment.bytes().any(|b| b.is_ascii_digit())
        && segment.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `value` (a letter that is not a Retry Message) with what may be a
/// credential masked, at any depth: the value of a credential-bearing key;
/// a string that mentions a credential word; the other values of an
/// object or pair that names a credential-bearing header
/// (`{"name": "Authorization", "value": …}`, `["Authorization", …]`); and
/// a URL's secrets ([`masked_url`]). A string that holds JSON (a message
/// encoded twice) is read as JSON and masked the same way.
pub fn masked_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let names_one = map
                .values()
                .any(|v| v.as_str().is_some_and(is_credential_name));
            for (k, v) in map.iter_mut() {
                if is_credential_name(k)
                    || (names_one && !v.as_str().is_some_and(is_credential_name))
                {
                    *v = Value::String(MASK.into());
                } else {
                    masked_json(v);
                }
            }
        }
        Value::Array(list) => {
            let pair = list.len() == 2 && list[0].as_str().is_some_and(is_credential_name);
            if pair {
                list[1] = Value::String(MASK.into());
            } else {
                list.iter_mut().for_each(masked_json);
            }
        }
        Value::String(text) => *text = masked_text(text),
        _ => {}
    }
}

/// A string of a letter: JSON inside it masked as JSON, a URL masked as a
/// URL, and any other text that mentions a credential word masked whole.
pub fn masked_text(text: &str) -> String {
    if let Ok(mut inner) = serde_json::from_str::<serde_json::Value>(text) {
        if inner.is_object() || inner.is_array() || inner.is_string() {
            masked_json(&mut inner);
            return inner.to_string();
        }
    }
    if let Ok(url) = url::Url::parse(text) {
        if url.has_host() {
            return masked_url(&url);
        }
    }
    if mentions_credentials(text) {
        return MASK.to_owned();
    }
    text.to_owned()
}

/// `value`, or the mask when `name` is credential-bearing.
pub fn shown(name: &str, value: &str) -> String {
    if is_credential_name(name) {
        MASK.to_owned()
    } else {
        value.to_owned()
    }
}

/// `url` with credential-bearing query values and any user info masked.
pub fn masked_url(url: &url::Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("masked");
        let _ = url.set_password(None);
    }
    // A query split on `;`, which the pairs below would not split.
    if url.query().is_some_and(|q| q.contains(';')) {
        url.set_query(Some("masked"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = is_credential_name(&k) || QUERY_NAMES.contains(&lower.as_str());
                let v = if secret {
                    "masked".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    let segments: Option<Vec<String>> = url.path_segments().map(|s| {
        s.map(|seg| {
            if secret_like(seg) {
                "masked".to_owned()
            } else {
                seg.to_owned()
            }
        })
        .collect()
    });
    if let (Some(segments), Ok(mut path)) = (segments, url.path_segments_mut()) {
        path.clear().extend(segments);
    }
    // A fragment never reaches the destination; it may hold a token.
    if url.fragment().is_some() {
        url.set_fragment(Some("masked"));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names_are_masked_whatever_their_case() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "X-Api-Key",
            "x-amz-security-token",
            "Cookie",
            "X-Hub-Signature-256",
            "client_secret",
        ] {
            assert!(is_credential_name(name), "{name}");
            assert_eq!(shown(name, "s3cr3t"), MASK);
        }
        for name in ["content-type", "Idempotency-Key", "accept", "x-request-id"] {
            assert!(!is_credential_name(name), "{name}");
        }
    }

    #[test]
    fn a_url_keeps_its_shape_without_its_secrets() {
        let url = url::Url::parse("https://u:pw@api.partner.com/x?api_key=s3cr3t&page=2").unwrap();
        let shown = masked_url(&url);
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("pw"),
            "{shown}"
        );
        assert!(
            shown.contains("page=2") && shown.contains("api.partner.com/x"),
            "{shown}"
        );
        // Azure SAS and Functions keys, a webhook token in the path.
        let sas = url::Url::parse(
            "https://a.blob.core.windows.net/c/b?sv=2024&sig=s3cr3tSIG&code=s3cr3tCODE",
        )
        .unwrap();
        let shown = masked_url(&sas);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let hook =
            url::Url::parse("https://hooks.slack.com/services/T0000/B0000/Xk2s3cr3tAbCdEf12345678")
                .unwrap();
        let shown = masked_url(&hook);
        assert!(
            !shown.contains("s3cr3t") && shown.contains("/services/T0000/B0000/masked"),
            "{shown}"
        );
    }

    #[test]
    fn letters_that_hide_credentials_in_other_shapes_show_none() {
        let cases = [
            // A message encoded twice.
            serde_json::Value::String(
                serde_json::json!({"request": {"headers": {"Authorization": "Bearer s3cr3t"}}})
                    .to_string(),
            ),
            serde_json::json!("Authorization: Bearer s3cr3t"),
            serde_json::json!({"destinationURL": "https://u:s3cr3t@a.com/x?sig=s3cr3t"}),
            serde_json::json!({"headers": [{"name": "Authorization", "value": "Bearer s3cr3t"}]}),
            serde_json::json!({"headers": [["Authorization", "Bearer s3cr3t"]]}),
        ];
        for mut case in cases {
            let before = case.to_string();
            masked_json(&mut case);
            assert!(!case.to_string().contains("s3cr3t"), "{before} → {case}");
        }
        for url in [
            "https://a.com/x#access_token=s3cr3t",
            "https://a.com/x?a=1;api_key=s3cr3t",
        ] {
            let shown = masked_url(&url::Url::parse(url).unwrap());
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
    }

    #[test]
    fn credential_keys_are_masked_at_any_depth_of_a_json_letter() {
        let mut v = serde_json::json!({"destinationURL": "x", "request": {"headers": {"Authorization": "Bearer s3cr3t"}},
                                       "list": [{"api_key": "s3cr3t"}], "note": "fine"});
        masked_json(&mut v);
        let shown = v.to_string();
        assert!(
            !shown.contains("s3cr3t") && shown.contains("fine"),
            "{shown}"
        );
    }
}
