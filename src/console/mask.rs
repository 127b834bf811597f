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

/// Is `name` (a header or query parameter) credential-bearing?
pub fn is_credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name != "idempotency-key" && WORDS.iter().any(|w| name.contains(w))
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
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_credential_name(&k) {
                    "masked".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
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
    }
}
