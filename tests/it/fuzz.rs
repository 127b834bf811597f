//! A mutation fuzzer over body → decision: the message parser, validation,
//! the destination policy, header building, the classifier and the decision
//! must never panic, whatever the body and whatever the destination
//! answers; and every body that parses must serialize and parse back to the
//! same message.
//!
//! cargo-fuzz needs a nightly toolchain, which this project's machines do
//! not have, so this is a plain time-bounded loop: seeds from the fixtures
//! and sample events, mutated at the byte and the JSON level with a seeded
//! RNG. `make test` runs it for a few seconds (`RETRYQ_FUZZ_SECONDS`,
//! default 3); `make fuzz` for five minutes. A failing input is written to
//! `target/fuzz-failure-*.json` and its seed printed (`RETRYQ_FUZZ_SEED`
//! replays a run).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use retryq::deliver::destination::DestinationPolicy;
use retryq::message::RetryMessage;
use retryq::policy::backoff::Backoff;
use retryq::policy::classify::{Answer, NoResponse};
use retryq::policy::record::{conclude, plan, AttemptResult, Plan, Received, Settings};
use retryq::policy::{Action, RetryPolicy};

fn seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = Vec::new();
    for dir in [
        "tests/fixtures/messages/valid",
        "tests/fixtures/messages/invalid",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            seeds.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
    }
    for entry in std::fs::read_dir(root.join("events")).unwrap() {
        let event: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for r in event["Records"].as_array().unwrap() {
            seeds.push(r["body"].as_str().unwrap().to_owned());
        }
    }
    seeds
}

const LONG: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

const INTERESTING: &[&str] = &[
    "",
    "\u{0}",
    "\r\n",
    "\"",
    "\\",
    "{",
    "}",
    "[]",
    "null",
    "true",
    "-1",
    "0",
    "4294967296",
    "1e309",
    "NaN",
    "http://",
    "http://[::1]/",
    "http://2130706433/",
    "https://a.b/",
    "ftp://x",
    "base64",
    "utf8",
    "==",
    "2020-01-01T00:00:00Z",
    "9999-12-31T23:59:59+14:00",
    "\u{FEFF}",
    "é",
    "\u{10FFFF}",
    LONG,
];

fn random_value(rng: &mut fastrand::Rng, depth: u32) -> serde_json::Value {
    match rng.u8(0..8) {
        0 => serde_json::Value::Null,
        1 => rng.bool().into(),
        2 => rng.i64(..).into(),
        3 => (rng.f64() * 1e20).into(),
        4 if depth < 3 => (0..rng.usize(0..4))
            .map(|_| random_value(rng, depth + 1))
            .collect::<Vec<_>>()
            .into(),
        5 if depth < 3 => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.usize(0..4) {
                m.insert(
                    INTERESTING[rng.usize(..INTERESTING.len())].to_owned(),
                    random_value(rng, depth + 1),
                );
            }
            m.into()
        }
        _ => INTERESTING[rng.usize(..INTERESTING.len())].into(),
    }
}

/// Replaces, removes or adds one node somewhere in the JSON tree.
fn mutate_json(v: &mut serde_json::Value, rng: &mut fastrand::Rng) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() && rng.u8(0..4) != 0 => {
            let key = m.keys().nth(rng.usize(..m.len())).unwrap().clone();
            match rng.u8(0..4) {
                0 => drop(m.remove(&key)),
                1 => drop(m.insert(key, random_value(rng, 0))),
                _ => mutate_json(m.get_mut(&key).unwrap(), rng),
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() && rng.bool() => {
            let i = rng.usize(..a.len());
            mutate_json(&mut a[i], rng)
        }
        serde_json::Value::Object(m) => {
            m.insert(
                INTERESTING[rng.usize(..INTERESTING.len())].to_owned(),
                random_value(rng, 0),
            );
        }
        other => *other = random_value(rng, 0),
    }
}

fn mutate_bytes(text: &str, rng: &mut fastrand::Rng, seeds: &[String]) -> String {
    let mut b = text.as_bytes().to_vec();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(..=b.len());
        match rng.u8(0..5) {
            0 if !b.is_empty() => drop(b.remove(at.min(b.len() - 1))),
            1 => b.insert(at, rng.u8(..)),
            2 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] ^= 1 << rng.u8(0..8);
            }
            3 => {
                let other = seeds[rng.usize(..seeds.len())].as_bytes();
                let from = rng.usize(..=other.len());
                let len = rng.usize(..=(other.len() - from).min(64));
                drop(b.splice(at..at, other[from..from + len].iter().copied()));
            }
            _ => drop(b.splice(at..at, INTERESTING[rng.usize(..INTERESTING.len())].bytes())),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Everything the processor does with a body, but the I/O: the same
/// `plan` and `conclude` it calls, with every kind of attempt result.
fn decide(body: &str, rng: &mut fastrand::Rng) {
    let policy = RetryPolicy {
        max_attempts: rng.u32(1..10),
        backoff: Backoff::new(
            Duration::from_secs(rng.u64(1..100)),
            Duration::from_secs(rng.u64(100..=43_200)),
        )
        .unwrap(),
        retry_after_max: Duration::from_secs(rng.u64(1..=43_200)),
    };
    let settings = Settings::new(&policy, &|p, _| (p == "partner-x").then_some(true));
    let now = SystemTime::now();
    let mut received = Received::new(body, rng.u32(1..20));
    if rng.bool() {
        received.retained_until = Some(now + Duration::from_secs(rng.u64(0..100_000)));
    }
    let (msg, attempt) = match plan(&received, &settings, now) {
        Plan::Attempt { message, attempt } => (message, attempt),
        Plan::Decided(decision) => {
            assert!(
                !matches!(decision.action, Action::Ack | Action::Retry { .. }),
                "nothing is delivered or retried without an attempt"
            );
            return;
        }
        Plan::Leave(why) => panic!("nothing to leave for: {why}"),
    };
    let again = RetryMessage::parse(&serde_json::to_string(&msg).unwrap())
        .expect("a parsed message serializes to a valid one");
    assert_eq!(again, *msg, "round trip");
    let destinations = DestinationPolicy {
        allowed: ["api.partner.com", "*.example.com", "127.0.0.1:8080"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect(),
        allow_private: rng.bool(),
    };
    let _ = msg.body_bytes().expect("validated bodies decode");
    let mut headers = HeaderMap::new();
    if rng.bool() {
        let raw = mutate_bytes(
            INTERESTING[rng.usize(..INTERESTING.len())],
            rng,
            &[String::from("120")],
        );
        if let Ok(v) = HeaderValue::from_str(&raw) {
            headers.insert(http::header::RETRY_AFTER, v);
        }
    }
    let refused = destinations
        .check(&msg.destination_url)
        .err()
        .map(|e| e.to_string());
    let invalid = retryq::deliver::request_headers(&msg).err();
    let result = match (refused, invalid.as_deref()) {
        (Some(e), _) => AttemptResult::NotAllowed(e),
        (None, Some(e)) => AttemptResult::Invalid(e),
        (None, None) => match rng.u8(0..8) {
            0 => AttemptResult::NoResponse {
                kind: NoResponse::Timeout,
                detail: "operation timed out",
            },
            1 => AttemptResult::BreakerOpen { host: "h:443" },
            2 => AttemptResult::CredentialUnavailable("token endpoint timed out"),
            3 => AttemptResult::CredentialRejected("token endpoint rejected the credentials"),
            4 => AttemptResult::Answer(Answer::ExpiredAfterRefresh { status: 401 }),
            _ => AttemptResult::Answer(Answer::Status {
                status: rng.u16(0..1000),
                headers: &headers,
            }),
        },
    };
    let max_delay = Duration::from_secs(rng.u64(0..=43_200));
    let decision = conclude(&settings, &attempt, result, now, max_delay, rng);
    if let Action::Retry { delay } = decision.action {
        assert!(delay <= max_delay, "{delay:?} beyond {max_delay:?}");
        if let Some(until) = attempt.retained_until {
            assert!(now + delay <= until, "a retry past the retention");
        }
    }
}

#[test]
fn no_body_makes_the_decision_core_panic() {
    let seconds: u64 = std::env::var("RETRYQ_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("RETRYQ_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut cases = 0u64;
    while Instant::now() < deadline && cases < 100_000_000 {
        let seed_text = &seeds[rng.usize(..seeds.len())];
        let body = match (
            rng.bool(),
            serde_json::from_str::<serde_json::Value>(seed_text),
        ) {
            (true, Ok(mut v)) => {
                for _ in 0..rng.usize(1..4) {
                    mutate_json(&mut v, &mut rng);
                }
                v.to_string()
            }
            _ => mutate_bytes(seed_text, &mut rng, &seeds),
        };
        let mut case_rng = fastrand::Rng::with_seed(rng.u64(..));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| decide(&body, &mut case_rng))) {
            let file = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("target/fuzz-failure-{seed}-{cases}.json"));
            let _ = std::fs::write(&file, &body);
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!(
                "case {cases} (RETRYQ_FUZZ_SEED={seed}) panicked: {message:?}; input in {}",
                file.display()
            );
        }
        cases += 1;
    }
    println!("fuzz: {cases} cases in {seconds}s without a panic (RETRYQ_FUZZ_SEED={seed})");
    assert!(cases > 100, "the fuzzer ran ({cases} cases)");
}
