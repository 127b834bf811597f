//! The actions: each a POST carrying the console's CSRF token, each shown
//! first as a confirmation page (`confirm=yes` then does it), each logged
//! as one line on the console's output. Redrive is `retryq dlq redrive`
//! (§12.1 included: a payload pointer's moved message names a fresh copy).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::html::{csrf_field, esc, hidden, page};
use super::letters::{now_ms, read_again};
use super::pages::filter_of;
use super::{guard, log_action, Console, Form};
use crate::fleet::FleetState;

/// The CSRF check every action makes first.
fn checked(console: &Console, body: &str) -> Result<Form, Box<Response>> {
    let form = Form::parse(body);
    if guard::csrf_ok(console, &form) {
        Ok(form)
    } else {
        Err(Box::new(guard::refused(StatusCode::FORBIDDEN, "This action did not come from the console's own page (its form token is missing or wrong).")))
    }
}

/// The page that asks before doing: the same form again, with
/// `confirm=yes`.
fn confirm(console: &Console, action: &str, question: &str, form: &Form) -> Response {
    let mut fields = csrf_field(&console.csrf);
    fields.push_str(&hidden("nonce", &console.issue_nonce()));
    for (k, v) in form
        .0
        .iter()
        .filter(|(k, _)| k != "csrf" && k != "confirm" && k != "nonce")
    {
        fields.push_str(&hidden(k, v));
    }
    let body = format!(
        "<h1>Confirm</h1><p>{}</p><form method=\"post\" action=\"{action}\">{fields}{}\
         <button class=\"danger\">Yes, do it</button> <a href=\"/\">Cancel</a></form>",
        question,
        hidden("confirm", "yes"),
    );
    Html(page(
        "Confirm · retryq console",
        &body,
        false,
        Some(&console.token),
    ))
    .into_response()
}

fn done(console: &Console, message: &str, ok: bool, back: &str) -> Response {
    let class = if ok { "ok" } else { "error" };
    let body = format!(
        "<h1>Done</h1><p class=\"{class}\">{}</p><p><a href=\"{back}\">Back</a></p>",
        esc(message)
    );
    Html(page("retryq console", &body, false, Some(&console.token))).into_response()
}

/// The page for a confirmation that was used already (a reload of a
/// result page, a second click): nothing is done again.
fn replayed(console: &Console, back: &str) -> Response {
    done(
        console,
        "This confirmation was used already: nothing was done again. Start the action anew to repeat it.",
        false,
        back,
    )
}

/// Runs `action` to its end, whatever becomes of the request: a browser
/// that leaves mid-way cuts neither the work nor its log line.
async fn detached<F>(console: &Console, action: F) -> Response
where
    F: std::future::Future<Output = Response> + Send + 'static,
{
    match tokio::spawn(action).await {
        Ok(answer) => answer,
        Err(e) => done(console, &format!("The action failed: {e}"), false, "/"),
    }
}

/// `POST /refresh`: read the DLQ again.
pub async fn refresh(State(console): State<Arc<Console>>, body: String) -> Response {
    if let Err(refused) = checked(&console, &body) {
        return *refused;
    }
    read_again(console.clone());
    Redirect::to(&format!("/?token={}", console.token)).into_response()
}

/// `POST /redrive`: the ticked letters (`scope=selected`, `id`…) or all
/// the filter matches (`scope=filter`), to the console's `--queue-url`.
pub async fn redrive(State(console): State<Arc<Console>>, body: String) -> Response {
    let form = match checked(&console, &body) {
        Ok(f) => f,
        Err(refused) => return *refused,
    };
    let Some(to) = console.queue_url.clone() else {
        return done(
            &console,
            "Start the console with --queue-url Q to redrive.",
            false,
            "/",
        );
    };
    let now = now_ms();
    let filter = filter_of(&form);
    let (selection, what) = match form.one("scope") {
        Some("filter") => {
            let n = console
                .letters
                .with(|r| r.letters.iter().filter(|l| filter.matches(l, now)).count());
            (
                filter.selection(now),
                format!("every dead letter matching this filter (about {n})"),
            )
        }
        _ => {
            let ids: std::collections::HashSet<String> =
                form.all("id").map(str::to_owned).collect();
            if ids.is_empty() {
                return done(
                    &console,
                    "Nothing was selected: tick the letters to redrive.",
                    false,
                    "/",
                );
            }
            let what = format!(
                "{} selected dead letter{}",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" }
            );
            (
                crate::dlq::Selection {
                    message_ids: Some(ids),
                    ..crate::dlq::Selection::default()
                },
                what,
            )
        }
    };
    if form.one("confirm") != Some("yes") {
        let question = format!("Move {} back to <code>{}</code> for another run? Bodies go unchanged, failure attributes are dropped.", esc(&what), esc(&to));
        return confirm(&console, "/redrive", &question, &form);
    }
    if !console.spend_nonce(form.one("nonce")) {
        return replayed(&console, "/");
    }
    let run = run_redrive(console.clone(), to, selection, what);
    detached(&console, run).await
}

/// The redrive itself, its log line and its page.
async fn run_redrive(
    console: Arc<Console>,
    to: String,
    selection: crate::dlq::Selection,
    what: String,
) -> Response {
    let payloads = crate::dlq::RedrivePayloads {
        store: &console.store,
        buckets: &console.payload_buckets,
    };
    let result = {
        let _walk = console.walk.lock().await;
        crate::dlq::redrive(
            &console.queues,
            &payloads,
            &console.dlq_url,
            &to,
            usize::MAX,
            &selection,
        )
        .await
    };
    read_again(console.clone());
    let selected = selection
        .message_ids
        .as_ref()
        .map_or(0, |ids| ids.len() as u64);
    match result {
        Ok(s) => {
            let line = format!(
                "redrive {what} to {to}: moved {}, failed {}, already finished {}",
                s.moved, s.failed, s.already_finished
            );
            log_action(&line);
            let missing = selected.saturating_sub(s.moved + s.failed + s.already_finished);
            if missing > 0 {
                let why = format!("{line}. {missing} of the selected letters were not found: already moved, or hidden for a few minutes by another reader of the DLQ (retryq dlq list, another console). Read again, then retry.");
                return done(&console, &why, false, "/");
            }
            done(&console, &line, s.failed == 0, "/")
        }
        Err(e) => {
            log_action(&format!("redrive {what} to {to}: failed: {e}"));
            done(&console, &format!("The redrive stopped: {e}"), false, "/")
        }
    }
}

/// What a pause or resume form must hold: the CSRF token, a table to
/// write to (returned), and a valid host pattern (returned, trimmed).
fn pattern_form(
    console: &Console,
    body: &str,
) -> Result<(Form, String, Arc<FleetState>), Box<Response>> {
    let form = checked(console, body)?;
    let Some(fleet) = console.fleet.clone() else {
        let why = "Pauses live in the state table: start the console with --state-table T.";
        return Err(Box::new(done(console, why, false, "/destinations")));
    };
    let pattern = form.one("pattern").unwrap_or_default().trim().to_owned();
    if let Err(e) = pattern.parse::<crate::policy::hosts::HostPattern>() {
        let why = format!("Host pattern {pattern:?}: {e}");
        return Err(Box::new(done(console, &why, false, "/destinations")));
    }
    Ok((form, pattern, fleet))
}

/// Makes a confirmed change to the pauses, [`detached`]: `change` gives
/// the log line and the page's message of a change made, or why none was.
async fn change_pauses<F>(console: &Arc<Console>, change: F) -> Response
where
    F: std::future::Future<Output = Result<(String, String), String>> + Send + 'static,
{
    let run = Arc::clone(console);
    detached(console, async move {
        match change.await {
            Ok((line, what)) => {
                log_action(&line);
                done(&run, &what, true, "/destinations")
            }
            Err(why) => done(&run, &why, false, "/destinations"),
        }
    })
    .await
}

/// `POST /pause`: `pattern`, and `for` (empty: until resumed).
pub async fn pause(State(console): State<Arc<Console>>, body: String) -> Response {
    let (form, pattern, fleet) = match pattern_form(&console, &body) {
        Ok(got) => got,
        Err(refused) => return *refused,
    };
    let length = match form.one("for").map(crate::clock::parse_length).transpose() {
        Ok(l) => l,
        Err(e) => return done(&console, &format!("For: {e}"), false, "/destinations"),
    };
    let until = length.map(|l| now_ms().saturating_add(l.as_millis() as u64));
    let how_long = until.map_or("until resumed".to_owned(), |u| {
        format!("until {}", super::html::time(u))
    });
    if form.one("confirm") != Some("yes") {
        let question = format!("Pause every destination matching <code>{}</code> {}? Records for them wait, using up no attempt.", esc(&pattern), esc(&how_long));
        return confirm(&console, "/pause", &question, &form);
    }
    if !console.spend_nonce(form.one("nonce")) {
        return replayed(&console, "/destinations");
    }
    change_pauses(&console, async move {
        match fleet.pause(&pattern, until).await {
            Ok(_) => Ok((
                format!("pause {pattern} {how_long}"),
                format!("Paused {pattern} {how_long}."),
            )),
            Err(e) => Err(format!("Not paused: {e}")),
        }
    })
    .await
}

/// `POST /resume`: `pattern`.
pub async fn resume(State(console): State<Arc<Console>>, body: String) -> Response {
    let (form, pattern, fleet) = match pattern_form(&console, &body) {
        Ok(got) => got,
        Err(refused) => return *refused,
    };
    if form.one("confirm") != Some("yes") {
        let mut question = String::new();
        let _ = write!(
            question,
            "Resume deliveries to <code>{}</code>?",
            esc(&pattern)
        );
        return confirm(&console, "/resume", &question, &form);
    }
    if !console.spend_nonce(form.one("nonce")) {
        return replayed(&console, "/destinations");
    }
    change_pauses(&console, async move {
        match fleet.resume(&pattern).await {
            Ok(true) => Ok((format!("resume {pattern}"), format!("Resumed {pattern}."))),
            Ok(false) => Ok((
                format!("resume {pattern}"),
                format!("{pattern} was not paused."),
            )),
            Err(e) => Err(format!("Not resumed: {e}")),
        }
    })
    .await
}
