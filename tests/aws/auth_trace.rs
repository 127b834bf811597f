//! Secret hygiene: the function, run by `cargo lambda watch` with
//! `RUST_LOG=trace`, goes through every auth path (token fetched, expired
//! token refreshed, form and basic client auth, API key, Secrets Manager,
//! rejected credentials, token endpoint down, SigV4, Standard Webhooks, a
//! client certificate), and none of the secret values, tokens, keys,
//! signatures or credential headers appears in its output, in the answers,
//! or in the DLQ attributes.

use std::time::Duration;

use crate::common::*;
use base64::Engine as _;
use wiremock::matchers::{any, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CLIENT_SECRET: &str = "cs-Zq8vT2-never-log-me";
const FORM_SECRET: &str = "fs-Hh3kP9-never-log-me";
const API_KEY: &str = "ak-Ww5mN1-never-log-me";
const SM_SECRET: &str = "sm-Rr7cX4-never-log-me";
const TOKEN_OLD: &str = "tk-old-Jj2bL6-never-log-me";
const TOKEN_NEW: &str = "tk-new-Pp9dF3-never-log-me";
const TOKEN_SM: &str = "tk-sm-Yy4gK8-never-log-me";
const AWS_SECRET: &str = "aws-Qq6vB3-never-log-me";
const AWS_SESSION: &str = "session-Uu1nM7-never-log-me";
/// The password and query of a destination URL nothing listens at: a
/// connection failure's error must not carry them (spec: errors name the
/// host, never the URL's userinfo or query).
const URL_PASSWORD: &str = "pw-Kk8sD1-never-log-me";
const URL_QUERY: &str = "q-Mm3hT5-never-log-me";
/// `whsec_` + base64 of "wh-Ee5tG2-never-log-me".
const HOOK_SECRET: &str = "whsec_d2gtRWU1dEcyLW5ldmVyLWxvZy1tZQ==";

fn token(value: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"access_token": value, "expires_in": 3600}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_trace_output_or_the_dlq() {
    let sqs = sqs();
    let source = queue(&sqs, "auth-trace").await;
    let dlq = queue(&sqs, "auth-trace-dlq").await;
    let sm_arn = create_secret(
        "trace",
        &serde_json::json!({"clientSecret": SM_SECRET}).to_string(),
    )
    .await;

    let tokens = MockServer::start().await;
    Mock::given(path("/basic"))
        .respond_with(token(TOKEN_OLD))
        .up_to_n_times(1)
        .mount(&tokens)
        .await;
    Mock::given(path("/basic"))
        .respond_with(token(TOKEN_NEW))
        .mount(&tokens)
        .await;
    Mock::given(path("/form"))
        .respond_with(token(TOKEN_NEW))
        .mount(&tokens)
        .await;
    Mock::given(path("/sm"))
        .respond_with(token(TOKEN_SM))
        .mount(&tokens)
        .await;
    Mock::given(path("/reject"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&tokens)
        .await;
    let dest = MockServer::start().await;
    Mock::given(header(
        "authorization",
        format!("Bearer {TOKEN_OLD}").as_str(),
    ))
    .respond_with(ResponseTemplate::new(401).set_body_string("token expired"))
    .mount(&dest)
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;

    let oauth = |url: String, extra: serde_json::Value| {
        let mut p = serde_json::json!({"type": "oauth2-client-credentials", "tokenUrl": url, "clientId": "retryq", "clientSecretEnv": "CLIENT_SECRET"});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let profiles = serde_json::json!({
        "basic": oauth(format!("{}/basic", tokens.uri()), serde_json::json!({})),
        "form": oauth(format!("{}/form", tokens.uri()), serde_json::json!({"clientAuth": "form", "clientSecretEnv": "FORM_SECRET"})),
        "sm": { "type": "oauth2-client-credentials", "tokenUrl": format!("{}/sm", tokens.uri()), "clientId": "retryq",
                "clientSecretArn": sm_arn, "jsonKey": "clientSecret" },
        "reject": oauth(format!("{}/reject", tokens.uri()), serde_json::json!({})),
        "down": oauth(format!("http://127.0.0.1:{}/token", free_port()), serde_json::json!({})),
        "key": { "type": "header", "name": "x-api-key", "valueEnv": "API_KEY" },
        "sigv4": { "type": "aws-sigv4", "service": "execute-api", "hosts": ["127.0.0.1"] },
        "hooks": { "type": "standard-webhooks", "secretEnv": "HOOK_SECRET" },
        "mtls": { "type": "header", "name": "x-api-key", "valueEnv": "API_KEY",
                  "clientCertificate": { "certEnv": "CLIENT_CERT", "keyEnv": "CLIENT_KEY" } }
    })
    .to_string();

    // One message per profile, plus the expired-token path (the first
    // message of "basic" meets TOKEN_OLD and has to refresh).
    let bodies: Vec<String> = [
        "basic", "basic", "form", "sm", "reject", "down", "key", "sigv4", "hooks", "mtls",
    ]
    .iter()
    .enumerate()
    .map(|(i, p)| {
        message(
            &format!("trace-{i}"),
            &dest.uri(),
            serde_json::json!({"auth": p}),
        )
    })
    .chain(std::iter::once(message(
        "trace-refused",
        &format!(
            "http://user:{URL_PASSWORD}@127.0.0.1:{}/c?token={URL_QUERY}",
            free_port()
        ),
        // One attempt: the connection failure is dead-lettered with its
        // LastError, which is checked below with the log.
        serde_json::json!({"maxAttempts": 1}),
    )))
    .collect();
    let event = retryq::cli::event(&bodies, &source.arn, 1);
    let dir = std::env::temp_dir().join(format!("retryq-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let event_file = dir.join("event.json");
    std::fs::write(&event_file, serde_json::to_vec(&event).unwrap()).unwrap();
    let log_file = dir.join("watch.log");

    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["client.test".to_owned()])
        .unwrap()
        .self_signed(&client_key)
        .unwrap()
        .pem();
    let client_key = client_key.serialize_pem();
    let port = free_port();
    let watch = cargo_lambda_watch(
        port,
        &[
            ("RUST_LOG", "trace"),
            ("DLQ_URL", &dlq.url),
            ("ALLOW_PRIVATE_DESTINATIONS", "true"),
            ("AUTH_PROFILES", &profiles),
            ("CLIENT_SECRET", CLIENT_SECRET),
            ("FORM_SECRET", FORM_SECRET),
            ("API_KEY", API_KEY),
            ("HOOK_SECRET", HOOK_SECRET),
            ("CLIENT_CERT", &client_cert),
            ("CLIENT_KEY", &client_key),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
            ("AWS_SESSION_TOKEN", AWS_SESSION),
        ],
        &log_file,
    );
    // Built and answering first: the event itself is sent once.
    wait_for_cargo_lambda_watch(port, &log_file).await;
    let answer = cargo_lambda_invoke(port, &event_file).unwrap().to_string();
    drop(watch);

    // The paths were really taken.
    let failed: serde_json::Value =
        serde_json::from_str(answer.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(
        failed["batchItemFailures"].as_array().unwrap().len(),
        1,
        "only the token-endpoint-down record: {answer}"
    );
    assert_eq!(
        tokens
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == "/basic")
            .count(),
        2,
        "a refresh happened"
    );
    let dead = receive_n(&sqs, &dlq, 2, Duration::from_secs(10)).await;
    let mut reasons: Vec<String> = dead
        .iter()
        .filter_map(|d| attr(d, "FailureReason"))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["attempts-exhausted", "non-retryable"],
        "the rejected credentials and the refused connection"
    );
    let refused = dead
        .iter()
        .find(|d| attr(d, "FailureReason").as_deref() == Some("attempts-exhausted"))
        .unwrap();
    let last_error = attr(refused, "LastError").unwrap();
    assert!(last_error.starts_with("connection failed"), "{last_error}");

    let mut output = std::fs::read_to_string(&log_file).unwrap();
    output.push_str(&answer);
    for d in &dead {
        output.push_str(&format!("{:?}", d.message_attributes));
    }
    assert!(
        output.contains("TRACE") || output.contains("trace"),
        "trace logging was on"
    );
    assert!(
        output.len() > 10_000,
        "the trace output is substantial ({} bytes)",
        output.len()
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("retryq:{CLIENT_SECRET}"));
    // What the signed requests carried: their signatures are credentials
    // too, for as long as a replay would be accepted.
    let received = dest.received_requests().await.unwrap();
    let carried = |name: &str| -> Vec<String> {
        received
            .iter()
            .filter_map(|r| r.headers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    let webhook_signatures = carried("webhook-signature");
    let sigv4_signatures: Vec<String> = carried("authorization")
        .into_iter()
        .filter_map(|a| a.split("Signature=").nth(1).map(str::to_owned))
        .collect();
    assert_eq!(webhook_signatures.len(), 1, "the webhook was signed");
    assert_eq!(sigv4_signatures.len(), 1, "the SigV4 request was signed");
    assert_eq!(carried("x-amz-security-token"), [AWS_SESSION]);
    let key_body: String = client_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let hook_key = HOOK_SECRET.trim_start_matches("whsec_");
    for secret in [
        AWS_SECRET,
        AWS_SESSION,
        HOOK_SECRET,
        hook_key,
        "wh-Ee5tG2-never-log-me",
        &key_body[..40],
        webhook_signatures[0].trim_start_matches("v1,"),
        sigv4_signatures[0].as_str(),
        URL_PASSWORD,
        URL_QUERY,
    ] {
        assert!(!output.contains(secret), "{secret} appears in the output");
    }
    for secret in [
        CLIENT_SECRET,
        FORM_SECRET,
        API_KEY,
        SM_SECRET,
        TOKEN_OLD,
        TOKEN_NEW,
        TOKEN_SM,
        basic.as_str(),
    ] {
        assert!(!output.contains(secret), "{secret} appears in the output");
    }
    let _ = std::fs::remove_dir_all(dir);
}
