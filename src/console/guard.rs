//! Who may use the console: a request from this machine's browser that
//! holds the token the console printed.
//!
//! - Every request carries the token in its URL's query: the printed URL
//!   has it, and every link and form of a page has it too. Anything else
//!   gets 401. It is never a cookie: browsers send 127.0.0.1's cookies to
//!   every port of it, so any local server the operator opened would get
//!   the token (and `Referrer-Policy: same-origin` keeps it out of
//!   `Referer`s).
//! - The `Host` header must name 127.0.0.1 or localhost on the console's
//!   port (403 otherwise): a page elsewhere that points its own name at
//!   127.0.0.1 (DNS rebinding) is refused before the token is looked at.
//! - A POST must carry the console's CSRF token in its form, and an
//!   `Origin`, when sent, must be the console's own (403 otherwise): the
//!   cookie alone never moves a letter.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Console;

/// A random token: 244 bits from the system's generator.
pub fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Compares without stopping at the first difference.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn token_in_query(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

fn from_here(console: &Console, headers: &HeaderMap) -> bool {
    let port = console.port;
    let host_ok = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h == format!("127.0.0.1:{port}") || h == format!("localhost:{port}"));
    let origin_ok = headers.get(header::ORIGIN).is_none_or(|o| {
        o.to_str().is_ok_and(|o| {
            o == format!("http://127.0.0.1:{port}") || o == format!("http://localhost:{port}")
        })
    });
    host_ok && origin_ok
}

/// The guard in front of every page and action.
pub async fn check(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    if !from_here(&console, request.headers()) {
        return refused(
            StatusCode::FORBIDDEN,
            "This console answers only its own address (http://127.0.0.1:PORT), from this machine.",
        );
    }
    let held = token_in_query(request.uri().query()).is_some_and(|t| same(&t, &console.token));
    if !held {
        return refused(
            StatusCode::UNAUTHORIZED,
            "This page needs the console's token: open the URL `retryq console` printed.",
        );
    }
    let mut answer = next.run(request).await;
    let h = answer.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    answer
}

/// Is a POST's form CSRF token the console's?
pub fn csrf_ok(console: &Console, form: &super::Form) -> bool {
    form.one("csrf").is_some_and(|t| same(t, &console.csrf))
}

pub fn refused(status: StatusCode, why: &str) -> Response {
    let page = super::html::page(
        "retryq console",
        &format!("<p class=\"error\">{}</p>", super::html::esc(why)),
        false,
        None,
    );
    (status, axum::response::Html(page)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_compared_whole() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b));
        assert!(!same(&a, &a[..63]));
    }

    #[test]
    fn the_token_is_found_in_the_query() {
        assert_eq!(token_in_query(Some("page=2&token=abc")), Some("abc".into()));
        assert_eq!(token_in_query(Some("page=2")), None);
    }
}
