//! The pages that read: the dead letters (counts, filters, newest first,
//! paged) and one letter with its attempt history.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::html::{csrf_field, esc, hidden, page, q, time};
use super::letters::{now_ms, Filter, Letter, Read};
use super::{Console, Form};

/// Letters a page shows.
pub const PAGE: usize = 50;

/// The filter of a query string (`reason`, `host`, `within`).
pub fn filter_of(form: &Form) -> Filter {
    Filter {
        reason: form.one("reason").map(str::to_owned),
        host: form.one("host").map(|h| h.trim().to_ascii_lowercase()),
        within: form
            .one("within")
            .and_then(|w| crate::clock::parse_length(w).ok()),
    }
}

/// The filter as query pairs, for links and hidden fields.
fn filter_pairs(f: &Filter) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    if let Some(r) = &f.reason {
        pairs.push(("reason", r.clone()));
    }
    if let Some(h) = &f.host {
        pairs.push(("host", h.clone()));
    }
    if let Some(w) = f.within {
        pairs.push(("within", format!("{}s", w.as_secs())));
    }
    pairs
}

fn link(f: &Filter, page: usize) -> String {
    let mut out = format!("/?page={page}");
    for (k, v) in filter_pairs(f) {
        let _ = write!(out, "&{k}={}", q(&v));
    }
    out
}

/// `GET /`: the dead letters.
pub async fn letters(State(console): State<Arc<Console>>, RawQuery(query): RawQuery) -> Response {
    let reading = console.letters.with(|read| read.reading);
    let body = render(&console, query.as_deref().unwrap_or_default());
    Html(page(
        "Dead letters · retryq console",
        &body,
        reading,
        Some(&console.token),
    ))
    .into_response()
}

/// The dead-letters page's body for `query`.
pub fn render(console: &Console, query: &str) -> String {
    let form = Form::parse(query);
    let filter = filter_of(&form);
    let page_number: usize = form
        .one("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let now = now_ms();
    console
        .letters
        .with(|read| render_letters(console, read, &filter, page_number, now))
}

fn render_letters(
    console: &Console,
    read: &Read,
    filter: &Filter,
    page_number: usize,
    now: u64,
) -> String {
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("<h1>Dead letters</h1>");
    out.push_str(&read_status(console, read));
    let all: Vec<&Letter> = read.letters.iter().collect();
    let mut matching: Vec<&Letter> = all
        .iter()
        .copied()
        .filter(|l| filter.matches(l, now))
        .collect();
    if read.reading {
        matching.sort_by_key(|l| std::cmp::Reverse(l.dead_lettered_ms));
    }
    out.push_str(&cards(&all, filter, now));
    out.push_str(&filter_form(&all, filter));
    let pages = matching.len().div_ceil(PAGE).max(1);
    let page_number = page_number.min(pages);
    let shown = &matching[(page_number - 1) * PAGE..matching.len().min(page_number * PAGE)];
    let _ = write!(
        out,
        "<p>{} match{} this filter, newest first. Page {page_number} of {pages}.</p>",
        matching.len(),
        if matching.len() == 1 { "es" } else { "" }
    );
    out.push_str(&selection_form(console, filter, shown, matching.len(), now));
    out.push_str(&pager(filter, page_number, pages));
    out
}

fn read_status(console: &Console, read: &Read) -> String {
    let mut out = String::from("<p class=\"status muted\">");
    let _ = write!(out, "DLQ <code>{}</code>: ", esc(&console.dlq_url));
    match (read.reading, &read.finished_at) {
        (true, _) => {
            let _ = write!(
                out,
                "reading… {} so far (this page refreshes itself).",
                read.letters.len()
            );
        }
        (false, Some(at)) => {
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            let _ = write!(out, "read {} at {}.", read.letters.len(), time(ms));
        }
        (false, None) => out.push_str("not read yet."),
    }
    if read.not_kept > 0 {
        let _ = write!(
            out,
            " {} more not kept (the console keeps {}).",
            read.not_kept,
            super::letters::MOST_LETTERS
        );
    }
    let _ = write!(
        out,
        " <form class=\"inline\" method=\"post\" action=\"/refresh\">{}<button class=\"secondary\">Read again</button></form></p>",
        csrf_field(&console.csrf)
    );
    if let Some(e) = &read.error {
        let _ = write!(
            out,
            "<p class=\"error\">The DLQ could not be read: {}</p>",
            esc(e)
        );
    }
    out
}

/// Counts at the top: all, the last hour, and each reason (a link that
/// filters by it).
fn cards(all: &[&Letter], filter: &Filter, now: u64) -> String {
    let hour = now.saturating_sub(3_600_000);
    let last_hour = all.iter().filter(|l| l.dead_lettered_ms >= hour).count();
    let mut out = String::from("<div class=\"cards\">");
    let _ = write!(
        out,
        "<div class=\"card\"><a href=\"/\"><b>{}</b>dead letters</a></div>",
        all.len()
    );
    let _ = write!(
        out,
        "<div class=\"card\"><a href=\"/?within=1h\"><b>{last_hour}</b>in the last hour</a></div>"
    );
    for (reason, n) in Read::counts(all, |l| l.reason.clone()) {
        let f = Filter {
            reason: Some(reason.clone()),
            ..filter.clone()
        };
        let _ = write!(
            out,
            "<div class=\"card\"><a href=\"{}\"><b>{n}</b><span class=\"reason\">{}</span></a></div>",
            esc(&link(&f, 1)),
            esc(&reason)
        );
    }
    out.push_str("</div>");
    out
}

/// A select's options, each value with its count, `selected` marked.
fn options(counts: impl IntoIterator<Item = (String, usize)>, selected: Option<&str>) -> String {
    let mut out = String::new();
    for (value, n) in counts {
        let mark = if selected == Some(value.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{0}\"{mark}>{0} ({n})</option>",
            esc(&value)
        );
    }
    out
}

fn filter_form(all: &[&Letter], filter: &Filter) -> String {
    let mut out = String::from("<form class=\"filters\" method=\"get\" action=\"/\">");
    out.push_str(super::html::TOKEN_FIELD);
    out.push_str("<label>FailureReason<select name=\"reason\"><option value=\"\">any</option>");
    let reasons = Read::counts(all, |l| l.reason.clone());
    out.push_str(&options(reasons, filter.reason.as_deref()));
    out.push_str("</select></label><label>Destination host<select name=\"host\"><option value=\"\">any</option>");
    let hosts = Read::counts(all, |l| l.host.clone()).into_iter().take(200);
    out.push_str(&options(hosts, filter.host.as_deref()));
    out.push_str("</select></label><label>Dead-lettered<select name=\"within\"><option value=\"\">any time</option>");
    for (value, label) in [
        ("1h", "in the last hour"),
        ("24h", "in the last day"),
        ("7d", "in the last week"),
    ] {
        let secs = crate::clock::parse_length(value)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let selected = if filter.within == Some(Duration::from_secs(secs)) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option value=\"{value}\"{selected}>{label}</option>");
    }
    out.push_str("</select></label><button>Filter</button> <a href=\"/\">clear</a></form>");
    out
}

fn selection_form(
    console: &Console,
    filter: &Filter,
    shown: &[&Letter],
    matching: usize,
    now: u64,
) -> String {
    let mut out = String::from("<form method=\"post\" action=\"/redrive\">");
    out.push_str(&csrf_field(&console.csrf));
    for (k, v) in filter_pairs(filter) {
        out.push_str(&hidden(k, &v));
    }
    out.push_str(
        "<table><tr><th></th><th>Dead-lettered</th><th>FailureReason</th><th>Status</th><th>Attempts</th>\
         <th>Destination</th><th>Retry Message id · SQS message id</th><th>LastError</th></tr>",
    );
    for l in shown {
        let _ = write!(
            out,
            "<tr><td><input type=\"checkbox\" name=\"id\" value=\"{sqs}\" aria-label=\"select\"></td>\
             <td title=\"{at}\">{age}</td><td><span class=\"reason\">{reason}</span></td><td>{status}</td><td>{attempts}</td>\
             <td>{method} {url}</td><td><a href=\"/letter/{sqs_q}\">{id}</a><br><span class=\"muted\">{sqs}</span></td><td class=\"err\">{error}</td></tr>",
            sqs = esc(&l.sqs_message_id),
            sqs_q = esc(&q(&l.sqs_message_id)),
            at = time(l.dead_lettered_ms),
            age = l.age(now),
            reason = esc(l.reason.as_deref().unwrap_or("-")),
            status = esc(l.status.as_deref().unwrap_or("-")),
            attempts = esc(l.attempts.as_deref().unwrap_or("-")),
            method = esc(l.method.as_deref().unwrap_or("")),
            url = esc(l.url.as_deref().or(l.offloaded.as_deref()).unwrap_or("(not a Retry Message)")),
            id = esc(l.id.as_deref().unwrap_or("(no id)")),
            error = esc(&crate::policy::one_line(l.last_error.as_deref().unwrap_or("-"), 240)),
        );
    }
    out.push_str("</table>");
    if console.queue_url.is_some() {
        let _ = write!(
            out,
            "<p><button name=\"scope\" value=\"selected\">Redrive selected…</button> \
             <button class=\"secondary\" name=\"scope\" value=\"filter\">Redrive all {matching} matching…</button> \
             <span class=\"muted\">Each asks for confirmation first.</span></p>"
        );
    } else {
        out.push_str(
            "<p class=\"muted\">Start the console with --queue-url Q to redrive from here.</p>",
        );
    }
    out.push_str("</form>");
    out
}

fn pager(filter: &Filter, page_number: usize, pages: usize) -> String {
    let mut out = String::from("<div class=\"pager\">");
    if page_number > 1 {
        let _ = write!(
            out,
            "<a href=\"{}\">← newer</a>",
            esc(&link(filter, page_number - 1))
        );
    }
    if page_number < pages {
        let _ = write!(
            out,
            "<a href=\"{}\">older →</a>",
            esc(&link(filter, page_number + 1))
        );
    }
    out.push_str("</div>");
    out
}

/// `GET /letter/{sqs_id}`: one dead letter, its request and its attempts.
pub async fn letter(State(console): State<Arc<Console>>, Path(sqs_id): Path<String>) -> Response {
    let Some(l) = console.letters.with(|r| {
        r.letters
            .iter()
            .find(|l| l.sqs_message_id == sqs_id)
            .cloned()
    }) else {
        let body = format!(
            "<h1>Not found</h1><p>No dead letter {} in the last read. <a href=\"/\">Back</a></p>",
            esc(&sqs_id)
        );
        return (
            StatusCode::NOT_FOUND,
            Html(page("Not found", &body, false, Some(&console.token))),
        )
            .into_response();
    };
    let mut body = format!(
        "<h1>Dead letter {}</h1>",
        esc(l.id.as_deref().unwrap_or(&l.sqs_message_id))
    );
    body.push_str(&details(&l));
    body.push_str(&request(&l));
    body.push_str(&history(&console, &l).await);
    if console.queue_url.is_some() {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/redrive\">{}{}<input type=\"hidden\" name=\"scope\" value=\"selected\"><p><button>Redrive this one…</button></p></form>",
            csrf_field(&console.csrf),
            hidden("id", &l.sqs_message_id)
        );
    }
    Html(page(
        "Dead letter · retryq console",
        &body,
        false,
        Some(&console.token),
    ))
    .into_response()
}

fn details(l: &Letter) -> String {
    let row = |name: &str, value: Option<&str>| {
        format!(
            "<dt>{}</dt><dd>{}</dd>",
            esc(name),
            esc(value.unwrap_or("-"))
        )
    };
    let mut out = String::from("<dl>");
    out.push_str(&row("FailureReason", l.reason.as_deref()));
    out.push_str(&row("LastError", l.last_error.as_deref()));
    out.push_str(&row("LastStatusCode", l.status.as_deref()));
    out.push_str(&row("AttemptCount", l.attempts.as_deref()));
    out.push_str(&row("Dead-lettered", Some(&time(l.dead_lettered_ms))));
    out.push_str(&row("Retry Message id", l.id.as_deref()));
    out.push_str(&row("SQS message id", Some(&l.sqs_message_id)));
    out.push_str("</dl>");
    out
}

fn request(l: &Letter) -> String {
    let mut out = String::from("<h2>Request</h2><pre>");
    let _ = writeln!(
        out,
        "{} {}",
        esc(l.method.as_deref().unwrap_or("")),
        esc(l
            .url
            .as_deref()
            .or(l.offloaded.as_deref())
            .unwrap_or("(not a Retry Message)"))
    );
    for (name, value) in &l.headers {
        let _ = writeln!(out, "{}: {}", esc(name), esc(value));
    }
    if !l.preview.is_empty() {
        let _ = write!(out, "\n{}", esc(&l.preview));
    }
    out.push_str("</pre>");
    out
}

/// The ledger's attempts for the letter's Retry Message id, as a timeline.
async fn history(console: &Console, l: &Letter) -> String {
    let mut out = String::from("<h2>Attempts</h2>");
    let (Some(fleet), Some(id)) = (&console.fleet, &l.id) else {
        out.push_str("<p class=\"muted\">Start the console with --state-table T to see each attempt from the ledger.</p>");
        return out;
    };
    let attempts = match fleet.attempts(id).await {
        Ok(a) => a,
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"error\">The ledger could not be read: {}</p>",
                esc(&e.to_string())
            );
            return out;
        }
    };
    if attempts.is_empty() {
        out.push_str("<p class=\"muted\">The ledger holds no attempt for this id (LEDGER=failures records only failed attempts; entries expire after LEDGER_TTL_DAYS).</p>");
        return out;
    }
    out.push_str("<table><tr><th>#</th><th>Started</th><th>Outcome</th><th>Status</th><th>Latency</th><th>LastError</th><th>Answer</th><th>SQS message id</th></tr>");
    let mut copy = None;
    for a in &attempts {
        if copy != Some(&a.sqs_message_id) {
            copy = Some(&a.sqs_message_id);
            if let Some(original) = &a.carried_from {
                let _ = write!(out, "<tr><td></td><td colspan=\"7\" class=\"muted\">carried over: a copy of {}, its count continued</td></tr>", esc(original));
            }
        }
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td class=\"err\">{}</td><td class=\"err\">{}</td><td class=\"muted\">{}</td></tr>",
            a.attempt,
            esc(&a.started_at),
            esc(&a.outcome),
            a.status.map_or("-".into(), |s| s.to_string()),
            a.latency_ms,
            esc(a.last_error.as_deref().unwrap_or("-")),
            esc(&crate::policy::one_line(
                &super::mask::masked_text(a.response_snippet.as_deref().unwrap_or("")),
                200
            )),
            esc(&a.sqs_message_id),
        );
    }
    out.push_str("</table>");
    out
}
