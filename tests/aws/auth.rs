//! Auth profiles (spec §3, §5) against a real token endpoint and a real
//! destination (local HTTP servers), the SQS API (moto) and Secrets Manager
//! (moto): tokens fetched once and shared, one refresh on an expired token,
//! retryable when the token endpoint is down, dead-lettered when it rejects
//! the credentials.

use std::time::Duration;

use crate::common::*;
use base64::Engine as _;
use retryq::process::Processor;
use std::sync::Arc;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "s3cr3t-client";

fn token(value: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(
        serde_json::json!({"access_token": value, "token_type": "Bearer", "expires_in": 3600}),
    )
}

async fn token_endpoint(first: &str, then: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token(first))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token(then))
        .mount(&server)
        .await;
    server
}

fn oauth_profile(token_url: &str, extra: serde_json::Value) -> String {
    let mut p = serde_json::json!({
        "type": "oauth2-client-credentials", "tokenUrl": token_url, "clientId": "retryq",
        "clientSecretEnv": "PARTNER_X_SECRET", "scope": "orders:write",
        "expiredToken": { "status": 401, "bodyContains": "token_expired" }
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    serde_json::json!({ "partner-x": p }).to_string()
}

/// A source queue, a DLQ and a processor with these profiles. Requests
/// (and token fetches) may take 10 s: generous on a busy machine.
async fn setup(profiles: &str) -> (aws_sdk_sqs::Client, TestQueue, TestQueue, Arc<Processor>) {
    setup_timing_out_after(profiles, "10").await
}

/// As [`setup`], with `REQUEST_TIMEOUT_SECONDS` = `timeout`.
async fn setup_timing_out_after(
    profiles: &str,
    timeout: &str,
) -> (aws_sdk_sqs::Client, TestQueue, TestQueue, Arc<Processor>) {
    let vars = [
        ("REQUEST_TIMEOUT_SECONDS", timeout),
        ("AUTH_PROFILES", profiles),
        ("PARTNER_X_SECRET", SECRET),
        ("PARTNER_Y_KEY", "k3y-value"),
    ];
    with_dlq("auth", &vars).await
}

/// The same, with the one OAuth 2 profile "partner-x" on `tokens`.
async fn setup_oauth(
    tokens: &MockServer,
    extra: serde_json::Value,
) -> (aws_sdk_sqs::Client, TestQueue, TestQueue, Arc<Processor>) {
    setup(&oauth_profile(
        &format!("{}/oauth/token", tokens.uri()),
        extra,
    ))
    .await
}

fn authed(id: &str, url: &str) -> String {
    message(id, url, serde_json::json!({"auth": "partner-x"}))
}

#[tokio::test]
async fn the_token_is_fetched_once_and_reused_across_records_and_invocations() {
    let tokens = token_endpoint("tok-1", "tok-unexpected").await;
    let dest = MockServer::start().await;
    Mock::given(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    let (sqs, q, dlq, p) = setup_oauth(&tokens, serde_json::json!({})).await;

    let first = run_batch(
        &p,
        &sqs,
        &q,
        &dlq,
        &[authed("a", &dest.uri()), authed("b", &dest.uri())],
    )
    .await;
    let second = run_batch(&p, &sqs, &q, &dlq, &[authed("c", &dest.uri())]).await;

    first.assert_all_delivered(&["a", "b"]);
    second.assert_all_delivered(&["c"]);
    assert_eq!(dest.received_requests().await.unwrap().len(), 3);
    let token_requests = tokens.received_requests().await.unwrap();
    assert_eq!(
        token_requests.len(),
        1,
        "one token for every record of both invocations"
    );
    let t = &token_requests[0];
    let body = String::from_utf8_lossy(&t.body);
    assert!(
        body.contains("grant_type=client_credentials") && body.contains("scope=orders%3Awrite"),
        "{body}"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("retryq:{SECRET}"));
    assert_eq!(
        t.headers["authorization"],
        format!("Basic {basic}").as_str(),
        "client_secret_basic by default"
    );
}

#[tokio::test]
async fn the_client_secret_can_go_in_the_form() {
    let tokens = MockServer::start().await;
    Mock::given(body_string_contains(format!("client_secret={SECRET}")))
        .respond_with(token("tok-f"))
        .expect(1)
        .mount(&tokens)
        .await;
    let dest = MockServer::start().await;
    Mock::given(header("authorization", "Bearer tok-f"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    let (sqs, q, dlq, p) = setup_oauth(&tokens, serde_json::json!({"clientAuth": "form"})).await;
    run_batch(&p, &sqs, &q, &dlq, &[authed("f", &dest.uri())])
        .await
        .assert_all_delivered(&["f"]);
    tokens.verify().await;
}

#[tokio::test]
async fn an_expired_token_is_refreshed_and_the_record_delivered_on_its_first_receive() {
    let tokens = token_endpoint("tok-old", "tok-new").await;
    let dest = MockServer::start().await;
    Mock::given(header("authorization", "Bearer tok-old"))
        .respond_with(ResponseTemplate::new(401).set_body_string(r#"{"error":"token_expired"}"#))
        .mount(&dest)
        .await;
    Mock::given(header("authorization", "Bearer tok-new"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    let (sqs, q, dlq, p) = setup_oauth(&tokens, serde_json::json!({})).await;

    run_batch(&p, &sqs, &q, &dlq, &[authed("e", &dest.uri())])
        .await
        .assert_all_delivered(&["e"]);
    assert_eq!(depth(&sqs, &q).await, (0, 0));
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    assert_eq!(tokens.received_requests().await.unwrap().len(), 2);
    assert_eq!(
        dest.received_requests().await.unwrap().len(),
        2,
        "one retry, at once"
    );
}

#[tokio::test]
async fn fifty_concurrent_records_with_an_expired_token_cause_exactly_one_refresh() {
    let tokens = token_endpoint("tok-1", "tok-2").await;
    let dest = MockServer::start().await;
    // tok-1 works once (warming the cache), then has expired.
    Mock::given(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200))
        .up_to_n_times(1)
        .mount(&dest)
        .await;
    Mock::given(header("authorization", "Bearer tok-1"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_string("token_expired")
                .set_delay(Duration::from_millis(50)),
        )
        .mount(&dest)
        .await;
    Mock::given(header("authorization", "Bearer tok-2"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    let (sqs, q, dlq, p) = setup_oauth(&tokens, serde_json::json!({})).await;
    run_batch(&p, &sqs, &q, &dlq, &[authed("warm", &dest.uri())])
        .await
        .assert_all_delivered(&["warm"]);

    let ids: Vec<String> = (0..50).map(|i| format!("c-{i}")).collect();
    let bodies: Vec<String> = ids.iter().map(|id| authed(id, &dest.uri())).collect();
    let outcomes = run_batch(&p, &sqs, &q, &dlq, &bodies).await;

    outcomes.assert_all_delivered(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        tokens.received_requests().await.unwrap().len(),
        2,
        "the first token, then one refresh for all fifty"
    );
}

#[tokio::test]
async fn the_message_own_authorization_header_is_replaced_not_sent_alongside() {
    let tokens = token_endpoint("tok-1", "tok-1").await;
    let dest = serving(ResponseTemplate::new(200)).await;
    let (sqs, q, dlq, p) = setup_oauth(&tokens, serde_json::json!({})).await;
    let body = serde_json::json!({
        "id": "stale", "destinationUrl": dest.uri(), "auth": "partner-x",
        "request": {"method": "POST", "headers": {"Authorization": "Bearer stale-from-service-a"}}
    })
    .to_string();
    run_batch(&p, &sqs, &q, &dlq, &[body])
        .await
        .assert_all_delivered(&["stale"]);
    let r = &dest.received_requests().await.unwrap()[0];
    let sent: Vec<_> = r.headers.get_all("authorization").iter().collect();
    assert_eq!(sent, ["Bearer tok-1"]);
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_or_slow_makes_the_record_retryable() {
    let closed = format!("http://127.0.0.1:{}/oauth/token", free_port());
    let slow = serving(token("late").set_delay(Duration::from_secs(5))).await;
    for token_url in [closed, format!("{}/oauth/token", slow.uri())] {
        let dest = never_called().await;
        // A token fetch times out after 1 s (the slow endpoint takes 5).
        let profiles = oauth_profile(&token_url, serde_json::json!({}));
        let (sqs, q, dlq, p) = setup_timing_out_after(&profiles, "1").await;
        let outcomes = run_batch(&p, &sqs, &q, &dlq, &[authed("later", &dest.uri())]).await;
        assert_eq!(
            outcomes.retried,
            ["later".to_owned()].into(),
            "{token_url}: comes back after its backoff: {outcomes:?}"
        );
        assert_eq!(
            depth(&sqs, &q).await,
            (0, 1),
            "{token_url}: hidden for the backoff"
        );
        assert_eq!(depth(&sqs, &dlq).await, (0, 0));
        dest.verify().await;
    }
}

#[tokio::test]
async fn rejected_credentials_are_dead_lettered_with_a_reason_that_says_so() {
    for status in [400, 401] {
        let tokens =
            serving(ResponseTemplate::new(status).set_body_string(r#"{"error":"invalid_client"}"#))
                .await;
        let dest = MockServer::start().await;
        let (sqs, q, dlq, p) = setup_oauth(&tokens, serde_json::json!({})).await;
        let outcomes = run_batch(&p, &sqs, &q, &dlq, &[authed("nope", &dest.uri())]).await;
        assert_eq!(
            outcomes.reasons(),
            [("nope".to_owned(), "non-retryable".to_owned())].into(),
            "{outcomes:?}"
        );
        let last_error = attr(&outcomes.dead["nope"], "LastError").unwrap();
        assert!(
            last_error.contains("rejected the credentials") && last_error.contains("partner-x"),
            "{last_error}"
        );
        assert!(!last_error.contains(SECRET));
    }
}

#[tokio::test]
async fn a_401_that_is_not_an_expired_token_is_non_retryable_and_a_second_expiry_is_retryable() {
    let tokens = token_endpoint("tok-1", "tok-2").await;
    let dest = MockServer::start().await;
    Mock::given(path("/forbidden"))
        .respond_with(ResponseTemplate::new(401).set_body_string("no such account"))
        .mount(&dest)
        .await;
    Mock::given(path("/always-expired"))
        .respond_with(ResponseTemplate::new(401).set_body_string("token_expired"))
        .mount(&dest)
        .await;
    let (sqs, q, dlq, p) = setup_oauth(&tokens, serde_json::json!({})).await;

    let outcomes = run_batch(
        &p,
        &sqs,
        &q,
        &dlq,
        &[
            authed("plain-401", &format!("{}/forbidden", dest.uri())),
            authed("again", &format!("{}/always-expired", dest.uri())),
        ],
    )
    .await;

    assert_eq!(
        outcomes.retried,
        ["again".to_owned()].into(),
        "the second expiry comes back to be retried"
    );
    assert_eq!(
        outcomes.reasons(),
        [("plain-401".to_owned(), "non-retryable".to_owned())].into()
    );
    assert_eq!(
        attr(&outcomes.dead["plain-401"], "LastStatusCode").as_deref(),
        Some("401")
    );
    let expired_requests = dest
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/always-expired")
        .count();
    assert_eq!(expired_requests, 2, "one refresh and one retry, no more");
}

#[tokio::test]
async fn a_header_profile_sends_its_api_key() {
    let dest = MockServer::start().await;
    Mock::given(header("x-api-key", "k3y-value"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&dest)
        .await;
    let profiles =
        r#"{"partner-y": {"type": "header", "name": "x-api-key", "valueEnv": "PARTNER_Y_KEY"}}"#;
    let (sqs, q, dlq, p) = setup(profiles).await;
    let body = message("key", &dest.uri(), serde_json::json!({"auth": "partner-y"}));
    run_batch(&p, &sqs, &q, &dlq, &[body])
        .await
        .assert_all_delivered(&["key"]);
    dest.verify().await;
}

#[tokio::test]
async fn an_unknown_profile_is_an_invalid_message() {
    let (sqs, q, dlq, p) = setup(r#"{}"#).await;
    // A destination on loopback that fails the test if called, so that a
    // regression cannot send the request anywhere else.
    let dest = never_called().await;
    let body = message("who", &dest.uri(), serde_json::json!({"auth": "nobody"}));
    let outcomes = run_batch(&p, &sqs, &q, &dlq, &[body]).await;
    assert_eq!(
        outcomes.reasons(),
        [("who".to_owned(), "invalid-message".to_owned())].into()
    );
    assert!(attr(&outcomes.dead["who"], "LastError")
        .unwrap()
        .contains("nobody"));
    dest.verify().await;
}

#[tokio::test]
async fn secrets_can_come_from_secrets_manager() {
    let json_secret = create_secret(
        "partner-x",
        r#"{"clientSecret": "sm-client-secret", "other": "x"}"#,
    )
    .await;
    let plain_secret = create_secret("partner-y", "sm-api-key").await;
    let tokens = MockServer::start().await;
    let basic = base64::engine::general_purpose::STANDARD.encode("retryq:sm-client-secret");
    Mock::given(header("authorization", format!("Basic {basic}").as_str()))
        .respond_with(token("tok-sm"))
        .expect(1)
        .mount(&tokens)
        .await;
    let dest = MockServer::start().await;
    Mock::given(header("authorization", "Bearer tok-sm"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    Mock::given(header("x-api-key", "sm-api-key"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    let profiles = serde_json::json!({
        "partner-x": { "type": "oauth2-client-credentials", "tokenUrl": format!("{}/oauth/token", tokens.uri()),
                       "clientId": "retryq", "clientSecretArn": json_secret, "jsonKey": "clientSecret" },
        "partner-y": { "type": "header", "name": "x-api-key", "valueArn": plain_secret }
    })
    .to_string();
    let (sqs, q, dlq, p) = setup(&profiles).await;
    let bodies = [
        authed("sm-1", &dest.uri()),
        authed("sm-2", &dest.uri()),
        message(
            "sm-3",
            &dest.uri(),
            serde_json::json!({"auth": "partner-y"}),
        ),
    ];
    run_batch(&p, &sqs, &q, &dlq, &bodies)
        .await
        .assert_all_delivered(&["sm-1", "sm-2", "sm-3"]);
    tokens.verify().await;
}

/// Token URLs are the operator's: the destination policy does not apply to
/// them. Only the destination's host is allowed here; the token endpoint,
/// on another name, still serves the token, while a message naming that
/// name as its destination is refused.
#[tokio::test]
async fn the_token_url_is_not_held_to_the_destination_policy() {
    let tokens = token_endpoint("tok-1", "tok-1").await;
    let dest = MockServer::start().await;
    Mock::given(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&dest)
        .await;
    let dest_port = dest.address().port();
    let token_url = format!("http://localhost:{}/oauth/token", tokens.address().port());
    let vars = [
        ("REQUEST_TIMEOUT_SECONDS", "10"),
        (
            "AUTH_PROFILES",
            &oauth_profile(&token_url, serde_json::json!({})),
        ),
        ("PARTNER_X_SECRET", SECRET),
        ("ALLOWED_DESTINATIONS", &format!("127.0.0.1:{dest_port}")),
    ];
    let (sqs, q, dlq, p) = with_dlq("token-policy", &vars).await;

    let outcomes = run_batch(
        &p,
        &sqs,
        &q,
        &dlq,
        &[
            authed("allowed", &dest.uri()),
            message(
                "unlisted",
                &format!("http://localhost:{dest_port}/"),
                serde_json::json!({}),
            ),
        ],
    )
    .await;

    assert_eq!(
        outcomes.delivered,
        ["allowed".to_owned()].into(),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.reasons(),
        [("unlisted".to_owned(), "destination-not-allowed".to_owned())].into()
    );
    assert_eq!(tokens.received_requests().await.unwrap().len(), 1);
    dest.verify().await;
}

/// §12.8: a token endpoint that sends `expires_in` as a string of digits,
/// a fraction or a huge exponent (as some identity providers do) still
/// gives a usable token; each record is delivered on its first receive.
#[tokio::test]
async fn a_token_whose_expires_in_is_a_string_or_a_fraction_is_used() {
    for (i, expires_in) in [
        serde_json::json!("3599"),
        serde_json::json!(3599.5),
        serde_json::json!(1e30),
    ]
    .into_iter()
    .enumerate()
    {
        let tokens = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"access_token": "tok-odd", "token_type": "Bearer", "expires_in": expires_in}),
            ))
            .mount(&tokens)
            .await;
        let dest = MockServer::start().await;
        Mock::given(header("authorization", "Bearer tok-odd"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&dest)
            .await;
        let (sqs, q, dlq, p) = setup_oauth(&tokens, serde_json::json!({})).await;
        let id = format!("odd-{i}");
        let outcome = run_batch(&p, &sqs, &q, &dlq, &[authed(&id, &dest.uri())]).await;
        outcome.assert_all_delivered(&[id.as_str()]);
    }
}

/// §12.8: a profile's credentials go only to its `hosts`. A message naming
/// `partner-x` with another destination is `invalid-message`, nothing is
/// sent (no token fetched, no request), and `LastError` names the profile,
/// not the host; the same profile still delivers to its own host.
#[tokio::test]
async fn a_profile_credential_goes_only_to_its_hosts() {
    let tokens = token_endpoint("tok-h", "tok-h").await;
    let own = MockServer::start().await;
    Mock::given(header("authorization", "Bearer tok-h"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&own)
        .await;
    let elsewhere = MockServer::start().await;
    let own_host = format!("127.0.0.1:{}", own.address().port());
    let (sqs, q, dlq, p) = setup_oauth(&tokens, serde_json::json!({ "hosts": [own_host] })).await;

    let outcome = run_batch(
        &p,
        &sqs,
        &q,
        &dlq,
        &[
            authed("own", &own.uri()),
            authed("stolen", &elsewhere.uri()),
        ],
    )
    .await;

    assert!(outcome.delivered.contains("own"), "{:?}", outcome.delivered);
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "nothing sent elsewhere"
    );
    let letter = &outcome.dead["stolen"];
    assert_eq!(
        attr(letter, "FailureReason").as_deref(),
        Some("invalid-message")
    );
    let error = attr(letter, "LastError").unwrap();
    assert!(error.contains("partner-x"), "{error}");
    assert!(
        !error.contains("127.0.0.1"),
        "no host in LastError: {error}"
    );
    assert_eq!(
        tokens.received_requests().await.unwrap().len(),
        1,
        "one token, for own"
    );
}

/// Token endpoint answering `tok-1`, `tok-2`, … each valid for 2 s.
struct ShortTokens(std::sync::atomic::AtomicUsize);

impl wiremock::Respond for ShortTokens {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": format!("tok-{n}"), "expires_in": 2}))
    }
}

/// §12.8: a token is attached once the request has its slot. With one slot,
/// a destination that takes 1.2 s and tokens that live 2 s, the third
/// request waits past its token's refresh time: it is sent with a new
/// token, not the one held when it started to wait.
#[tokio::test]
async fn a_token_that_expires_while_its_request_waits_for_a_slot_is_renewed() {
    let tokens = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ShortTokens(Default::default()))
        .mount(&tokens)
        .await;
    let dest = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_millis(1200)))
        .mount(&dest)
        .await;
    let profiles = oauth_profile(
        &format!("{}/oauth/token", tokens.uri()),
        serde_json::json!({}),
    );
    let (sqs, q, dlq, p) = with_dlq(
        "auth-slot",
        &[
            ("AUTH_PROFILES", &profiles),
            ("PARTNER_X_SECRET", SECRET),
            ("MAX_CONCURRENCY", "1"),
        ],
    )
    .await;
    let bodies: Vec<String> = (0..3)
        .map(|i| authed(&format!("slot-{i}"), &dest.uri()))
        .collect();

    let outcomes = run_batch(&p, &sqs, &q, &dlq, &bodies).await;

    assert_eq!(outcomes.delivered.len(), 3, "{outcomes:?}");
    let sent: Vec<String> = dest
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0], "Bearer tok-1");
    assert_ne!(
        sent[2], "Bearer tok-1",
        "the third request waited 2.4 s: its 2 s token was renewed first ({sent:?})"
    );
}
