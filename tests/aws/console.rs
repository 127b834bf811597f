//! `retryq console` (spec §14) in a real browser: headless Chromium driven
//! through chromedriver, against the built `retryq` serving moto's SQS and
//! DynamoDB. Seeded dead letters are listed with their reasons, a filter
//! narrows them, a redrive of a selection moves exactly those, a pause set
//! on the page defers records, a masked header's value never reaches the
//! page, and a request without the token is refused.
//!
//! `RETRYQ_CONSOLE_SCREENSHOTS=DIR` also saves a PNG of each page there
//! (how docs/console/*.png are made).

use std::collections::BTreeSet;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::MessageAttributeValue;

use crate::browser::Browser;
use crate::common::*;
use crate::destination::Destination;
use crate::fleet::{attempts, state_table};

/// A value the page must never show.
const SECRET: &str = "s3cr3t-console-value";

/// A running console: its URL (with the token) and its output lines.
struct Console {
    url: String,
    base: String,
    lines: Arc<Mutex<Vec<String>>>,
    _process: Running,
}

impl Console {
    fn start(dlq: &TestQueue, target: &TestQueue, table: &str) -> Console {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_retryq"));
        command
            .args([
                "console",
                "--dlq-url",
                &dlq.url,
                "--queue-url",
                &target.url,
                "--state-table",
                table,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        aws_env(&mut command);
        let mut process = Running::spawn(command);
        let stdout = process.0.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        let started = Instant::now();
        let url = loop {
            let found = lines.lock().unwrap().iter().find_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("http://127.0.0.1:"))
                    .map(str::to_owned)
            });
            if let Some(url) = found {
                break url;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the console printed no URL"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let base = url.split("/?").next().unwrap().to_owned();
        Console {
            url,
            base,
            lines,
            _process: process,
        }
    }

    fn token(&self) -> &str {
        self.url.split("token=").nth(1).unwrap()
    }

    /// `path` on the console, with its token.
    fn at(&self, path: &str) -> String {
        let joint = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{joint}token={}", self.base, self.token())
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// Sends a dead letter as the processor writes one: the Retry Message and
/// its failure attributes.
async fn seed(
    sqs: &aws_sdk_sqs::Client,
    dlq: &TestQueue,
    id: &str,
    url: &str,
    reason: &str,
    status: &str,
) {
    let body = serde_json::json!({
        "id": id,
        "destinationUrl": url,
        "request": {"method": "POST",
                    "headers": {"authorization": format!("Bearer {SECRET}"), "content-type": "application/json"},
                    "body": format!("{{\"order\":\"{id}\"}}")},
    });
    let attr = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    };
    sqs.send_message()
        .queue_url(&dlq.url)
        .message_body(body.to_string())
        .message_attributes("FailureReason", attr(reason))
        .message_attributes("LastStatusCode", attr(status))
        .message_attributes("AttemptCount", attr("5"))
        .message_attributes(
            "LastError",
            attr(&format!("HTTP {status} from the partner")),
        )
        .send()
        .await
        .unwrap();
}

/// The Retry Message ids in `q` (received: they stay hidden a while).
async fn ids_in(sqs: &aws_sdk_sqs::Client, q: &TestQueue) -> BTreeSet<String> {
    let got = receive_n(sqs, q, 20, Duration::from_secs(3)).await;
    got.iter()
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(m.body()?).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect()
}

async fn shot(browser: &Browser, name: &str) {
    if let Ok(dir) = std::env::var("RETRYQ_CONSOLE_SCREENSHOTS") {
        browser
            .screenshot(&std::path::Path::new(&dir).join(format!("{name}.png")))
            .await;
    }
}

/// Everyone's view: the seeded letters, listed with their reasons.
async fn lists_every_letter(console: &Console, browser: &Browser) {
    browser.open(&console.url).await;
    let text = browser
        .wait_for_text("read 5 at", Duration::from_secs(30))
        .await;
    for id in ["order-1", "order-2", "order-3", "order-4", "order-5"] {
        assert!(text.contains(id), "{id} listed:\n{text}");
    }
    for reason in ["non-retryable", "attempts-exhausted", "expired"] {
        assert!(text.contains(reason), "{reason} shown");
    }
    assert!(
        !browser.dom().await.contains(SECRET),
        "no secret in the list's DOM"
    );
    shot(browser, "dead-letters").await;
}

/// A filter chosen in the form, as a person would, narrows the list.
async fn a_filter_narrows_them(browser: &Browser) {
    browser
        .click("select[name=reason] option[value=attempts-exhausted]")
        .await;
    browser.click("form.filters button").await;
    let text = browser
        .wait_for_text("2 match this filter", Duration::from_secs(10))
        .await;
    assert!(
        text.contains("order-3") && text.contains("order-4"),
        "{text}"
    );
    assert!(
        !text.contains("order-1") && !text.contains("order-5"),
        "{text}"
    );
}

/// One letter: its request, the credential masked, in the DOM too.
async fn one_letter_shows_its_request_masked(console: &Console, browser: &Browser) {
    browser.open(&console.at("/")).await;
    browser
        .wait_for_text("read 5 at", Duration::from_secs(10))
        .await;
    browser.click("a[href^='/letter/']").await;
    let text = browser
        .wait_for_text("LastError", Duration::from_secs(10))
        .await;
    assert!(text.contains("authorization: •••• (masked)"), "{text}");
    assert!(text.contains("api_key=masked"), "{text}");
    assert!(
        !browser.dom().await.contains(SECRET),
        "no secret in the letter's DOM"
    );
    shot(browser, "dead-letter").await;
}

/// A redrive of a selection moves exactly those two.
async fn a_selection_is_redriven_exactly(
    console: &Console,
    browser: &Browser,
    sqs: &aws_sdk_sqs::Client,
    (dlq, target): (&TestQueue, &TestQueue),
) {
    browser.open(&console.at("/?reason=non-retryable")).await;
    browser
        .wait_for_text("2 match this filter", Duration::from_secs(10))
        .await;
    let boxes = browser.count("input[name=id]").await;
    assert_eq!(boxes, 2);
    browser.click("tr:nth-of-type(2) input[name=id]").await;
    browser.click("tr:nth-of-type(3) input[name=id]").await;
    browser.click("button[value=selected]").await;
    let text = browser
        .wait_for_text("Confirm", Duration::from_secs(10))
        .await;
    assert!(text.contains("2 selected dead letters"), "{text}");
    shot(browser, "confirm").await;
    browser.click("button.danger").await;
    let text = browser
        .wait_for_text("moved 2", Duration::from_secs(30))
        .await;
    assert!(text.contains("failed 0"), "{text}");
    assert!(
        console.log().contains("redrive 2 selected dead letters"),
        "one log line:\n{}",
        console.log()
    );
    assert_eq!(
        ids_in(sqs, target).await,
        ["order-1", "order-2"].map(str::to_owned).into(),
        "exactly the selection moved"
    );
    assert_eq!(
        ids_in(sqs, dlq).await,
        ["order-3", "order-4", "order-5"].map(str::to_owned).into(),
        "the rest stayed"
    );
}

/// A pause set on the Destinations page; the host's `host:port`.
async fn a_pause_is_set_on_the_page(
    console: &Console,
    browser: &Browser,
    dest: &Destination,
) -> String {
    let host_port = dest
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    browser.open(&console.at("/destinations")).await;
    browser
        .wait_for_text("Pauses", Duration::from_secs(10))
        .await;
    browser.type_into("input[name=pattern]", &host_port).await;
    browser.type_into("input[name=for]", "1h").await;
    browser.click("button.danger").await;
    browser
        .wait_for_text("Confirm", Duration::from_secs(10))
        .await;
    browser.click("button.danger").await;
    browser
        .wait_for_text(&format!("Paused {host_port}"), Duration::from_secs(10))
        .await;
    assert!(
        console.log().contains(&format!("pause {host_port}")),
        "{}",
        console.log()
    );
    host_port
}

/// A breaker the fleet opened a moment ago shows as open, with its end.
async fn an_open_breaker_is_shown(
    console: &Console,
    browser: &Browser,
    table: &str,
    host_port: &str,
) {
    let open_until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    let s = aws_sdk_dynamodb::types::AttributeValue::S;
    let n = |v: u128| aws_sdk_dynamodb::types::AttributeValue::N(v.to_string());
    crate::fleet::dynamodb()
        .put_item()
        .table_name(table)
        .item("pk", s("breaker#hooks.other.net:443".into()))
        .item("sk", s("state".into()))
        .item("failures", n(5))
        .item("openUntil", n(open_until))
        .send()
        .await
        .unwrap();
    browser.open(&console.at("/destinations")).await;
    let text = browser
        .wait_for_text("Resume", Duration::from_secs(10))
        .await;
    assert!(text.contains(host_port), "{text}");
    assert!(
        text.contains("hooks.other.net:443 open 5"),
        "the open breaker:\n{text}"
    );
    shot(browser, "destinations").await;
}

/// The paused host's record is put back, with no request and no attempt.
async fn a_paused_record_is_deferred(
    sqs: &aws_sdk_sqs::Client,
    (dlq, table): (&TestQueue, &str),
    dest: &Destination,
) {
    let source = queue(sqs, "console-src").await;
    let p = processor(&[
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("STATE_TABLE", table),
    ]);
    send(
        sqs,
        &source,
        &message("paused-1", &dest.url("/ok/p"), serde_json::json!({})),
    )
    .await;
    let got = receive_n(sqs, &source, 1, Duration::from_secs(10)).await;
    assert_eq!(
        failures(&invoke(&p, sqs, &source, &got).await).len(),
        1,
        "put back"
    );
    assert_eq!(dest.requests(), 0, "no request while paused");
    assert!(
        attempts(table, "paused-1").await.is_empty(),
        "no attempt used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_filters_redrives_a_selection_and_pauses_in_a_real_browser() {
    let sqs = sqs();
    let table = state_table().await;
    let dlq = queue(&sqs, "console-dlq").await;
    let target = queue(&sqs, "console-target").await;
    for (id, host, reason, status) in [
        ("order-1", "api.partner.com", "non-retryable", "400"),
        ("order-2", "api.partner.com", "non-retryable", "422"),
        ("order-3", "hooks.other.net", "attempts-exhausted", "503"),
        ("order-4", "hooks.other.net", "attempts-exhausted", "503"),
        ("order-5", "hooks.other.net", "expired", "500"),
    ] {
        seed(
            &sqs,
            &dlq,
            id,
            &format!("https://{host}/v1/orders?api_key={SECRET}"),
            reason,
            status,
        )
        .await;
    }
    let console = Console::start(&dlq, &target, &table);
    let browser = Browser::start().await;

    lists_every_letter(&console, &browser).await;
    a_filter_narrows_them(&browser).await;
    one_letter_shows_its_request_masked(&console, &browser).await;
    a_selection_is_redriven_exactly(&console, &browser, &sqs, (&dlq, &target)).await;
    let dest = Destination::start(Duration::ZERO).await;
    let host_port = a_pause_is_set_on_the_page(&console, &browser, &dest).await;
    an_open_breaker_is_shown(&console, &browser, &table, &host_port).await;
    a_paused_record_is_deferred(&sqs, (&dlq, &table), &dest).await;
}

#[tokio::test]
async fn the_console_refuses_requests_without_its_token_from_elsewhere_or_without_its_form_token() {
    let sqs = sqs();
    let table = state_table().await;
    let dlq = queue(&sqs, "console-guard-dlq").await;
    let target = queue(&sqs, "console-guard-target").await;
    seed(
        &sqs,
        &dlq,
        "guarded-1",
        "https://api.partner.com/x",
        "non-retryable",
        "400",
    )
    .await;
    let console = Console::start(&dlq, &target, &table);
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let status = |r: reqwest::Response| r.status().as_u16();
    let base = &console.base;
    // No token, a wrong one, or a token with another Host: refused.
    assert_eq!(
        status(http.get(format!("{base}/")).send().await.unwrap()),
        401
    );
    assert_eq!(
        status(
            http.get(format!("{base}/?token=nope"))
                .send()
                .await
                .unwrap()
        ),
        401
    );
    let rebound = http
        .get(&console.url)
        .header("host", "evil.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(status(rebound), 403);
    // With the token, pages open; the token is never set as a cookie
    // (a browser would send it to every port of 127.0.0.1), and a cookie
    // holding it opens nothing.
    let first = http.get(&console.url).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    assert!(first.headers().get("set-cookie").is_none(), "no cookie");
    let page = first.text().await.unwrap();
    assert!(
        page.contains(&format!("href=\"/destinations?token={}\"", console.token())),
        "links carry the token"
    );
    let by_cookie = http
        .get(format!("{base}/destinations"))
        .header("cookie", format!("retryq_console={}", console.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(status(by_cookie), 401);
    the_token_alone_never_acts(&console, &http, &page).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        ids_in(&sqs, &target).await.is_empty(),
        "nothing was redriven"
    );
    let paused = run_retryq(&["paused", "--state-table", &table], &[])
        .await
        .success();
    assert!(paused.stdout.contains("0 pause(s)"), "{}", paused.stdout);
}

/// A POST without the form token, or from another origin, is refused.
async fn the_token_alone_never_acts(console: &Console, http: &reqwest::Client, page: &str) {
    let status = |r: reqwest::Response| r.status().as_u16();
    let forged = http
        .post(console.at("/redrive"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("scope=filter&confirm=yes")
        .send()
        .await
        .unwrap();
    assert_eq!(status(forged), 403);
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's form token")
        .to_owned();
    let cross = http
        .post(console.at("/pause"))
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&pattern=api.partner.com&confirm=yes"))
        .send()
        .await
        .unwrap();
    assert_eq!(status(cross), 403);
}

/// Review finding: a result page reloaded, or "Yes, do it" clicked twice,
/// did the action again. Each confirmation now acts once.
#[tokio::test]
async fn a_confirmation_acts_once_however_often_it_is_sent() {
    let sqs = sqs();
    let table = state_table().await;
    let dlq = queue(&sqs, "console-once-dlq").await;
    let target = queue(&sqs, "console-once-target").await;
    let console = Console::start(&dlq, &target, &table);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let field = |page: &str, name: &str| {
        page.split(&format!("name=\"{name}\" value=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no {name} on the page"))
            .to_owned()
    };
    let home = http
        .get(&console.url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = field(&home, "csrf");
    let post = |form: String| {
        http.post(console.at("/pause"))
            .header("origin", console.base.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    let asked = post(format!("csrf={csrf}&pattern=once.example.com&for=1h"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let nonce = field(&asked, "nonce");
    let confirm = format!("csrf={csrf}&nonce={nonce}&pattern=once.example.com&for=1h&confirm=yes");
    let first = post(confirm.clone()).await.unwrap().text().await.unwrap();
    assert!(first.contains("Paused once.example.com"), "{first}");
    let again = post(confirm).await.unwrap().text().await.unwrap();
    assert!(again.contains("used already"), "{again}");
    let lines = console.log().matches("pause once.example.com").count();
    assert_eq!(lines, 1, "one action, one line:\n{}", console.log());
}
