//! `GET /destinations`: each destination's breaker (from the state
//! table), its pauses, and what the DLQ tells of the last hour.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::html::{csrf_field, esc, hidden, page, time};
use super::letters::now_ms;
use super::Console;

/// Pages of the table's scan for breakers, at most (1 MB each).
const SCAN_PAGES: usize = 20;

/// One host's breaker, as the table holds it.
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    pub host: String,
    pub failures: u64,
    pub proven: bool,
    pub open_until_ms: u64,
    pub probe_until_ms: u64,
}

impl Breaker {
    fn state(&self, now: u64) -> &'static str {
        match () {
            _ if self.open_until_ms > now => "open",
            _ if self.probe_until_ms > now => "probing",
            _ if self.open_until_ms > 0 => "half-open (next request probes)",
            _ if self.proven => "closed (proven)",
            _ => "closed",
        }
    }
}

/// Every breaker in the table: a scan of the `breaker#` items, bounded.
async fn breakers(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<(Vec<Breaker>, bool), String> {
    let mut out = Vec::new();
    let mut start = None;
    for _ in 0..SCAN_PAGES {
        let page = client
            .scan()
            .table_name(table)
            .filter_expression("begins_with(pk, :b)")
            .expression_attribute_values(":b", AttributeValue::S("breaker#".into()))
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "DynamoDB Scan failed: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                )
            })?;
        for item in page.items() {
            let number = |name: &str| {
                item.get(name)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            let Some(host) = item
                .get("pk")
                .and_then(|v| v.as_s().ok())
                .and_then(|pk| pk.strip_prefix("breaker#"))
            else {
                continue;
            };
            out.push(Breaker {
                host: host.to_owned(),
                failures: number("failures"),
                proven: matches!(item.get("proven").map(|v| v.as_bool()), Some(Ok(true))),
                open_until_ms: number("openUntil"),
                probe_until_ms: number("probeUntil"),
            });
        }
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok((out, false)),
        }
    }
    Ok((out, true))
}

/// `GET /destinations`.
pub async fn destinations(State(console): State<Arc<Console>>) -> Response {
    let now = now_ms();
    let mut body = String::from("<h1>Destinations</h1>");
    body.push_str(&pauses(&console, now).await);
    body.push_str(&breaker_table(&console, now).await);
    body.push_str(&last_hour(&console, now));
    Html(page(
        "Destinations · retryq console",
        &body,
        false,
        Some(&console.token),
    ))
    .into_response()
}

async fn pauses(console: &Console, now: u64) -> String {
    let mut out = String::from("<h2>Pauses</h2>");
    let Some(fleet) = &console.fleet else {
        out.push_str("<p class=\"muted\">Pauses live in the state table: start the console with --state-table T.</p>");
        return out;
    };
    match fleet.pauses().await {
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"error\">The pauses could not be read: {}</p>",
                esc(&e.to_string())
            );
        }
        Ok(all) => {
            let live: Vec<_> = all.into_iter().filter(|p| p.in_force(now)).collect();
            if live.is_empty() {
                out.push_str("<p>Nothing is paused.</p>");
            } else {
                out.push_str(
                    "<table><tr><th>Pattern</th><th>Since</th><th>Until</th><th></th></tr>",
                );
                for p in &live {
                    let _ = write!(
                        out,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td><form class=\"inline\" method=\"post\" action=\"/resume\">{}{}<button>Resume…</button></form></td></tr>",
                        esc(&p.pattern),
                        time(p.since_ms),
                        p.until_ms.map_or("resumed by hand".into(), time),
                        csrf_field(&console.csrf),
                        hidden("pattern", &p.pattern),
                    );
                }
                out.push_str("</table>");
            }
        }
    }
    let _ = write!(
        out,
        "<form class=\"filters\" method=\"post\" action=\"/pause\">{}<label>Host pattern<input name=\"pattern\" placeholder=\"api.partner.com or *.partner.com\" required></label>\
         <label>For<input name=\"for\" placeholder=\"30m, 2h, 1d (empty: until resumed)\"></label><button class=\"danger\">Pause…</button></form>",
        csrf_field(&console.csrf)
    );
    out
}

async fn breaker_table(console: &Console, now: u64) -> String {
    let mut out = String::from("<h2>Circuit breakers</h2>");
    let Some((client, table)) = &console.table else {
        out.push_str("<p class=\"muted\">Fleet breakers live in the state table: start the console with --state-table T.</p>");
        return out;
    };
    match breakers(client, table).await {
        Err(e) => {
            let _ = write!(out, "<p class=\"error\">{}</p>", esc(&e));
        }
        Ok((list, cut)) if list.is_empty() && !cut => {
            out.push_str("<p>No breaker has state in the table.</p>")
        }
        Ok((mut list, cut)) => {
            list.sort_by(|a, b| {
                b.open_until_ms
                    .cmp(&a.open_until_ms)
                    .then(b.failures.cmp(&a.failures))
            });
            out.push_str("<table><tr><th>Host</th><th>State</th><th>Failures in a row</th><th>Cool-down ends</th></tr>");
            for b in &list {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&b.host),
                    b.state(now),
                    b.failures,
                    if b.open_until_ms > 0 {
                        time(b.open_until_ms)
                    } else {
                        "-".into()
                    },
                );
            }
            out.push_str("</table>");
            if cut {
                let _ = write!(out, "<p class=\"muted\">Only the first {SCAN_PAGES} pages of the table were scanned.</p>");
            }
        }
    }
    out
}

/// Dead letters of the last hour per host, from the console's read.
fn last_hour(console: &Console, now: u64) -> String {
    let hour = now.saturating_sub(3_600_000);
    let counts: BTreeMap<String, usize> = console.letters.with(|r| {
        let mut counts = BTreeMap::new();
        for l in r.letters.iter().filter(|l| l.dead_lettered_ms >= hour) {
            *counts
                .entry(l.host.clone().unwrap_or_else(|| "(unknown)".into()))
                .or_default() += 1;
        }
        counts
    });
    let mut out = String::from("<h2>The last hour</h2>");
    out.push_str("<p class=\"muted\">Dead-lettered, from the DLQ as last read. Deliveries and retries per destination are in CloudWatch (the Delivered and Retried metrics, dimension Destination): neither the DLQ nor the table counts them by host.</p>");
    if counts.is_empty() {
        out.push_str("<p>Nothing dead-lettered in the last hour.</p>");
        return out;
    }
    out.push_str("<table><tr><th>Host</th><th>Dead-lettered</th></tr>");
    for (host, n) in counts {
        let _ = write!(
            out,
            "<tr><td><a href=\"/?within=1h&amp;host={}\">{}</a></td><td>{n}</td></tr>",
            esc(&super::html::q(&host)),
            esc(&host)
        );
    }
    out.push_str("</table>");
    out
}
