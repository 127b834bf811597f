//! The console's pages: server-rendered HTML, no script, one stylesheet
//! inline. Every value shown goes through [`esc`].

use std::fmt::Write;

/// `text` safe inside HTML text and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query string's value.
pub fn q(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center}\
header a{color:#cfe0ff;text-decoration:none;font-weight:600}header .brand{font-weight:700;color:#fff}\
main{padding:16px 20px;max-width:1400px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}\
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:12px}.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:8px 14px}\
.card b{display:block;font-size:22px}.card a{color:inherit;text-decoration:none}\
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8}\
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;vertical-align:top}th{background:#eef1f5;font-weight:600}\
td.err{color:#8a1c1c;max-width:480px;overflow-wrap:anywhere}.reason{font-family:ui-monospace,monospace;font-size:12px;background:#fde8e8;padding:1px 6px;border-radius:4px}\
form.inline{display:inline}.filters{background:#fff;border:1px solid #dde1e8;padding:8px 12px;margin-bottom:12px;display:flex;gap:12px;align-items:end;flex-wrap:wrap}\
.filters label{display:flex;flex-direction:column;font-size:12px;color:#4a5366}\
button{background:#2456c7;color:#fff;border:0;border-radius:4px;padding:6px 12px;cursor:pointer}button.secondary{background:#5b6477}\
button.danger{background:#b3261e}pre{background:#fff;border:1px solid #dde1e8;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere;max-height:320px;overflow:auto}\
.muted{color:#6b7385}.error{color:#8a1c1c;font-weight:600}.ok{color:#1b6b2c;font-weight:600}.status{margin:0 0 12px}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;border:1px solid #dde1e8;padding:10px 14px}dt{color:#4a5366}dd{margin:0;overflow-wrap:anywhere}\
.pager{margin:10px 0;display:flex;gap:12px}";

/// Where a GET form carries the token (its action's query is dropped).
pub const TOKEN_FIELD: &str = "<!--token-->";

/// `html` with the token in every link and form of the console's own
/// (`href="/…"`, `action="/…"`, and [`TOKEN_FIELD`]). The token rides in
/// URLs, never in a cookie: a browser sends 127.0.0.1's cookies to every
/// port of it, so any local server the operator opens would get it.
pub fn with_token(html: &str, token: &str) -> String {
    let mut out = String::with_capacity(html.len() + 2048);
    let mut rest = html;
    while let Some(at) = [rest.find("href=\"/"), rest.find("action=\"/")]
        .into_iter()
        .flatten()
        .min()
    {
        let start = at + rest[at..].find('"').unwrap_or(0) + 1;
        let end = start + rest[start..].find('"').unwrap_or(rest.len() - start);
        out.push_str(&rest[..end]);
        let joint = if rest[start..end].contains('?') {
            "&amp;"
        } else {
            "?"
        };
        out.push_str(&format!("{joint}token={}", esc(token)));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out.replace(TOKEN_FIELD, &hidden("token", token))
}

/// A whole page: the navigation, then `body`. `reload`: the page reloads
/// itself every two seconds (while the DLQ is being read). `token`: the
/// console's, put into every link and form (`None` on a refusal).
pub fn page(title: &str, body: &str, reload: bool, token: Option<&str>) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>{}\
         <style>{STYLE}</style></head><body><header><span class=\"brand\">retryq console</span>\
         <a href=\"/\">Dead letters</a><a href=\"/destinations\">Destinations</a></header><main>{body}</main></body></html>",
        esc(title),
        if reload { "<meta http-equiv=\"refresh\" content=\"2\">" } else { "" },
    );
    match token {
        Some(token) => with_token(&out, token),
        None => out,
    }
}

/// The hidden field every action form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A hidden field.
pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

/// A time in ms since the epoch, as RFC 3339 to the second.
pub fn time(ms: u64) -> String {
    crate::clock::rfc3339(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_shown_not_run() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(q("a b&c"), "a+b%26c");
    }

    #[test]
    fn every_own_link_and_form_carries_the_token() {
        let html = format!(
            "<a href=\"/\">a</a><a href=\"/?page=2&amp;host=x\">b</a><form action=\"/redrive\">{TOKEN_FIELD}</form><a href=\"https://elsewhere/\">c</a>"
        );
        let out = with_token(&html, "T");
        assert!(out.contains("href=\"/?token=T\""), "{out}");
        assert!(
            out.contains("href=\"/?page=2&amp;host=x&amp;token=T\""),
            "{out}"
        );
        assert!(out.contains("action=\"/redrive?token=T\""), "{out}");
        assert!(out.contains("name=\"token\" value=\"T\""), "{out}");
        assert!(out.contains("href=\"https://elsewhere/\""), "{out}");
    }
}
