//! Auth profiles and TLS trust (spec §10) checked by implementations retryq
//! did not write:
//!
//! * Standard Webhooks signatures by the `standardwebhooks` package (PyPI);
//! * SigV4 signatures by botocore's own signer, over the request exactly as
//!   the destination received it;
//! * mutual TLS and `CA_BUNDLE` against an HTTPS destination served by
//!   Python's `ssl` module (OpenSSL), with certificates minted by `rcgen`.
//!
//! The Python checks live in `tests/interop/`. A signature the reference
//! refuses fails the test; each check also proves it would refuse a changed
//! body.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::*;

fn python() -> Command {
    Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
}

fn interop_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// Runs `verify.py args…` on a request the destination received: the
/// script's JSON answer, or why the reference refused it.
fn verify(args: &[&str], request: &wiremock::Request) -> Result<serde_json::Value, String> {
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let input = serde_json::json!({
        "method": request.method.as_str(),
        "url": request.url.as_str(),
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(&request.body),
    });
    let out = run_python("verify.py", args, &input.to_string());
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("verify.py prints JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A fresh `whsec_` secret.
fn webhook_secret() -> String {
    let key: Vec<u8> = (0..24).map(|_| fastrand::u8(..)).collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// A destination answering `statuses` in turn, then 204.
async fn answering_in_turn(statuses: &[u16]) -> MockServer {
    let server = MockServer::start().await;
    for &status in statuses {
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(status))
            .up_to_n_times(1)
            .mount(&server)
            .await;
    }
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    server
}

/// Sends `body`, receives it (within 20 s) and runs it through the handler;
/// the ids the handler reported as failed.
async fn once(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    p: &Arc<retryq::process::Processor>,
    body: &str,
) -> Vec<String> {
    send(sqs, q, body).await;
    redeliver(sqs, q, p).await
}

/// Receives the one message in `q` (within 20 s) and runs the handler.
async fn redeliver(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    p: &Arc<retryq::process::Processor>,
) -> Vec<String> {
    let received = receive_n(sqs, q, 1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1, "the message came back");
    failures(&invoke(p, sqs, q, &received).await)
}

#[tokio::test]
async fn standard_webhooks_signatures_verify_with_the_reference_library_on_every_attempt() {
    let secret = webhook_secret();
    let dest = answering_in_turn(&[503]).await;
    let profiles = r#"{"hooks": {"type": "standard-webhooks", "secretEnv": "HOOK_SECRET"}}"#;
    let (sqs, q, dlq, p) = with_dlq(
        "webhooks",
        &[
            ("AUTH_PROFILES", profiles),
            ("HOOK_SECRET", &secret),
            ("BACKOFF_BASE_SECONDS", "1"),
            ("BACKOFF_MAX_SECONDS", "1"),
        ],
    )
    .await;
    let body = message(
        "order-7",
        &format!("{}/hooks/orders", dest.uri()),
        serde_json::json!({"auth": "hooks", "request": {
            "method": "POST",
            "headers": {"content-type": "application/json", "webhook-signature": "v1,stale"},
            "body": "{\"order\":7,\"note\":\"caf\u{e9}\"}"
        }}),
    );

    let first = once(&sqs, &q, &p, &body).await;
    // The retry is at least a second later: a new timestamp, a new signature.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = redeliver(&sqs, &q, &p).await;

    assert_eq!(first.len(), 1, "503: retried");
    assert!(second.is_empty(), "delivered on the second attempt");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    let requests = dest.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let mut timestamps = Vec::new();
    for r in &requests {
        let checked = verify(&["webhook", &secret], r)
            .unwrap_or_else(|e| panic!("standardwebhooks refused attempt: {e}"));
        assert_eq!(
            checked["webhook-id"], "order-7",
            "webhook-id is the message id"
        );
        timestamps.push(checked["webhook-timestamp"].as_str().unwrap().to_owned());
        assert_eq!(r.headers.get_all("webhook-signature").iter().count(), 1);
    }
    assert_ne!(timestamps[0], timestamps[1], "each attempt is signed anew");
    // Another key's signature is refused by the same check.
    assert!(verify(&["webhook", &webhook_secret()], &requests[0]).is_err());
}

#[tokio::test]
async fn a_rotated_webhook_secret_is_read_again_after_a_401_and_the_request_signed_anew() {
    let old = webhook_secret();
    let new = webhook_secret();
    let arn = create_secret("hook-secret", &old).await;
    // Delivered, then refused once (the receiver has rotated), then delivered.
    let dest = answering_in_turn(&[204, 401]).await;
    let profiles = serde_json::json!({"hooks": {"type": "standard-webhooks", "secretArn": arn}});
    let (sqs, q, dlq, p) = with_dlq(
        "webhooks-rotate",
        &[("AUTH_PROFILES", &profiles.to_string())],
    )
    .await;
    let to = |id: &str| message(id, &dest.uri(), serde_json::json!({"auth": "hooks"}));

    let before = once(&sqs, &q, &p, &to("w-1")).await;
    rotate_secret(&arn, &new).await;
    let after = once(&sqs, &q, &p, &to("w-2")).await;

    assert!(
        before.is_empty() && after.is_empty(),
        "both delivered on their first receive"
    );
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    let r = dest.received_requests().await.unwrap();
    assert_eq!(r.len(), 3, "one more request within the attempt, no more");
    verify(&["webhook", &old], &r[0]).expect("first request: the old secret");
    verify(&["webhook", &old], &r[1]).expect("refused request: the secret held");
    verify(&["webhook", &new], &r[2]).expect("retry: the secret read again");
}

/// §12.8: while Secrets Manager holds two versions (`AWSCURRENT` and
/// `AWSPREVIOUS`), a request carries a signature for each, and
/// `standardwebhooks` accepts it with either secret: a receiver that has
/// not rotated yet takes it on the first request.
#[tokio::test]
async fn during_a_rotation_a_webhook_verifies_with_the_old_secret_and_the_new() {
    let old = webhook_secret();
    let new = webhook_secret();
    let arn = create_secret("hook-rotating", &old).await;
    let dest = answering_in_turn(&[]).await;
    let profiles = serde_json::json!({"hooks": {
        "type": "standard-webhooks", "secretArn": arn, "hosts": ["127.0.0.1"]}});
    let (sqs, q, dlq, p) =
        with_dlq("webhooks-both", &[("AUTH_PROFILES", &profiles.to_string())]).await;
    let to = |id: &str| message(id, &dest.uri(), serde_json::json!({"auth": "hooks"}));

    let before = once(&sqs, &q, &p, &to("r-1")).await;
    rotate_secret(&arn, &new).await;
    // A new processor: its first read of the secret finds the rotation.
    let p2 = processor(&[
        ("AUTH_PROFILES", &profiles.to_string()),
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
    ]);
    let after = once(&sqs, &q, &p2, &to("r-2")).await;

    assert!(before.is_empty() && after.is_empty(), "both delivered");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    let r = dest.received_requests().await.unwrap();
    assert_eq!(r.len(), 2, "one request each");
    let signatures = |r: &wiremock::Request| {
        r.headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count()
    };
    assert_eq!(signatures(&r[0]), 1, "no previous version: one signature");
    verify(&["webhook", &old], &r[0]).expect("before: the only secret");
    assert_eq!(signatures(&r[1]), 2, "mid-rotation: a signature for each");
    verify(&["webhook", &new], &r[1]).expect("a receiver that has rotated");
    verify(&["webhook", &old], &r[1]).expect("a receiver that has not rotated yet");
    assert!(verify(&["webhook", &webhook_secret()], &r[1]).is_err());
}

#[tokio::test]
async fn sigv4_signatures_match_botocores_signer_for_the_request_as_received() {
    let dest = answering_in_turn(&[]).await;
    let profiles = r#"{
        "gateway": {"type": "aws-sigv4", "service": "execute-api", "region": "eu-west-1", "hosts": ["127.0.0.1"]},
        "function-url": {"type": "aws-sigv4", "service": "lambda", "hosts": ["127.0.0.1"]}
    }"#;
    let (sqs, q, dlq, p) = with_dlq("sigv4", &[("AUTH_PROFILES", profiles)]).await;
    // Escapes, repeated and empty parameters, a header with inner spaces,
    // a non-ASCII body: what canonical forms differ on.
    let post = message(
        "sig-1",
        &format!(
            "{}/prod/orders/a%20b/caf%C3%A9?b=2&a=1&a=0&empty=&sp=x%20y&slash=a%2Fb",
            dest.uri()
        ),
        serde_json::json!({"auth": "gateway", "request": {
            "method": "POST",
            "headers": {"content-type": "application/json", "x-custom": "  a   b  ",
                        "authorization": "Bearer stale", "x-amz-date": "20000101T000000Z"},
            "body": "{\"order\":1,\"name\":\"\u{e9}t\u{e9}\"}"
        }}),
    );
    let get = message(
        "sig-2",
        &format!("{}/?Action=Describe", dest.uri()),
        serde_json::json!({"auth": "function-url", "request": {"method": "GET"}}),
    );

    let first = once(&sqs, &q, &p, &post).await;
    let second = once(&sqs, &q, &p, &get).await;

    assert!(first.is_empty() && second.is_empty(), "both delivered");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    let r = dest.received_requests().await.unwrap();
    assert_eq!(r.len(), 2);
    let checked = verify(&["sigv4", "execute-api", "eu-west-1"], &r[0])
        .unwrap_or_else(|e| panic!("botocore disagrees: {e}"));
    let signed = checked["signedHeaders"].as_str().unwrap();
    for h in [
        "content-type",
        "host",
        "idempotency-key",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-custom",
    ] {
        assert!(signed.split(';').any(|s| s == h), "{h} is signed: {signed}");
    }
    assert_eq!(r[0].headers.get_all("authorization").iter().count(), 1);
    verify(&["sigv4", "lambda", "us-east-1"], &r[1])
        .unwrap_or_else(|e| panic!("botocore disagrees (the process's region): {e}"));
    assert!(
        verify(&["sigv4", "lambda", "eu-west-1"], &r[1]).is_err(),
        "another region's signature differs"
    );
}

/// §12.8: SigV4 for `s3` is S3's canonical form (the path as sent, not
/// encoded twice, not normalised): botocore's `S3SigV4Auth` agrees for keys
/// with a space, an `é`, an encoded slash and an empty segment, where the
/// generic form (double encoding) gives another signature.
#[tokio::test]
async fn sigv4_for_s3_matches_botocores_s3_signer_for_awkward_keys() {
    let dest = answering_in_turn(&[]).await;
    let profiles = r#"{"store": {"type": "aws-sigv4", "service": "s3", "region": "eu-west-1", "hosts": ["127.0.0.1"]}}"#;
    let (sqs, q, dlq, p) = with_dlq("sigv4-s3", &[("AUTH_PROFILES", profiles)]).await;
    let put = message(
        "s3-1",
        &format!(
            "{}/bucket/a%20b/caf%C3%A9/x%2Fy//z.txt?x-id=PutObject",
            dest.uri()
        ),
        serde_json::json!({"auth": "store", "request": {"method": "PUT", "body": "k\u{e9}y"}}),
    );

    let failed = once(&sqs, &q, &p, &put).await;

    assert!(failed.is_empty(), "delivered");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    let r = dest.received_requests().await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].url.path(), "/bucket/a%20b/caf%C3%A9/x%2Fy//z.txt");
    verify(&["s3", "eu-west-1"], &r[0])
        .unwrap_or_else(|e| panic!("botocore's S3SigV4Auth disagrees: {e}"));
}

/// A certificate authority, and certificates it signs, as PEM files in a
/// directory of their own.
struct TestPki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    fn new(name: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!(
            "retryq-pki-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "retryq test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        TestPki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A certificate for `name` (CN and, for servers, the names 127.0.0.1
    /// and localhost): `(certificate PEM, key PEM)`, also written to
    /// `{name}.pem` and `{name}.key`.
    fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let sans = match purpose {
            ExtendedKeyUsagePurpose::ServerAuth => vec!["127.0.0.1".into(), "localhost".into()],
            _ => vec![],
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert, key) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.dir.join(format!("{name}.pem")), &cert).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), &key).unwrap();
        (cert, key)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tests/interop/tls_destination.py`: an HTTPS server on loopback (OpenSSL
/// through Python's `ssl`), stopped when dropped.
struct TlsDestination {
    _process: Running,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl TlsDestination {
    /// Serves `server.pem`; with `client_ca`, requires a client certificate
    /// that CA signed.
    fn start(pki: &TestPki, client_ca: bool) -> TlsDestination {
        let mut command = python();
        command
            .arg(interop_script("tls_destination.py"))
            .args([pki.path("server.pem"), pki.path("server.key")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if client_ca {
            command.arg(pki.path("ca.pem"));
        }
        let mut process = Running::spawn(command);
        let stdout = process.0.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = port_tx.send(port.trim().parse::<u16>().unwrap());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("tls_destination.py listens within 30 s");
        TlsDestination {
            _process: process,
            port,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// The requests it answered, as `METHOD PATH client=CN`, once `n` have
    /// been read from its output (which a thread reads while the test goes
    /// on), or after 10 s with what there is.
    fn requests(&self, n: usize) -> Vec<String> {
        let read = || -> Vec<String> {
            self.log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| l.strip_prefix("request ").map(str::to_owned))
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while read().len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        read()
    }
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_with_ca_bundle() {
    let pki = TestPki::new("bundle");
    pki.issue("server", ExtendedKeyUsagePurpose::ServerAuth);
    let dest = TlsDestination::start(&pki, false);
    let bundle = pki.path("ca.pem");

    let (sqs, q, dlq, without) = with_dlq("ca-without", &[("MAX_ATTEMPTS", "2")]).await;
    let first = once(
        &sqs,
        &q,
        &without,
        &message("ca-1", &dest.url("/a"), serde_json::json!({})),
    )
    .await;
    let (sqs2, q2, dlq2, with) = with_dlq("ca-with", &[("CA_BUNDLE", &bundle)]).await;
    let delivered = once(
        &sqs2,
        &q2,
        &with,
        &message("ca-2", &dest.url("/b"), serde_json::json!({})),
    )
    .await;

    assert_eq!(
        first.len(),
        1,
        "an unknown issuer is a TLS failure: retryable"
    );
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    assert!(delivered.is_empty(), "trusted with the bundle");
    assert_eq!(depth(&sqs2, &dlq2).await, (0, 0));
    assert_eq!(dest.requests(1), ["POST /b client=-"]);

    // Its last attempt dead-letters it, saying it was TLS.
    let (sqs3, q3, dlq3, last) = with_dlq("ca-last", &[("MAX_ATTEMPTS", "1")]).await;
    once(
        &sqs3,
        &q3,
        &last,
        &message("ca-3", &dest.url("/c"), serde_json::json!({})),
    )
    .await;
    let dead = receive_n(&sqs3, &dlq3, 1, Duration::from_secs(20)).await;
    let last_error = attr(&dead[0], "LastError").unwrap();
    assert!(last_error.starts_with("TLS failure"), "{last_error}");
}

#[tokio::test]
async fn mutual_tls_is_refused_without_the_client_certificate_and_accepted_with_it() {
    let pki = TestPki::new("mtls");
    pki.issue("server", ExtendedKeyUsagePurpose::ServerAuth);
    let (cert, key) = pki.issue("retryq-client", ExtendedKeyUsagePurpose::ClientAuth);
    let (sm_cert, sm_key) = pki.issue("retryq-from-sm", ExtendedKeyUsagePurpose::ClientAuth);
    let cert_arn = create_secret("client-cert", &sm_cert).await;
    let key_arn = create_secret("client-key", &sm_key).await;
    let dest = TlsDestination::start(&pki, true);
    let profiles = serde_json::json!({
        "partner": {"clientCertificate": {"certEnv": "CLIENT_CERT", "keyEnv": "CLIENT_KEY"}},
        "partner-key": {"type": "header", "name": "x-api-key", "valueEnv": "API_KEY",
                        "clientCertificate": {"certArn": cert_arn, "keyArn": key_arn}}
    });
    let bundle = pki.path("ca.pem");
    let (sqs, q, dlq, p) = with_dlq(
        "mtls",
        &[
            ("CA_BUNDLE", &bundle),
            ("AUTH_PROFILES", &profiles.to_string()),
            ("CLIENT_CERT", &cert),
            ("CLIENT_KEY", &key),
            ("API_KEY", "k"),
        ],
    )
    .await;

    let to = |id: &str, auth: serde_json::Value| message(id, &dest.url(&format!("/{id}")), auth);

    let without = once(&sqs, &q, &p, &to("m-0", serde_json::json!({}))).await;
    // The queue holds the refused one back for its backoff; the others are
    // sent and received one at a time.
    let q2 = queue(&sqs, "mtls-2").await;
    let env = serde_json::json!({"auth": "partner"});
    let with = once(&sqs, &q2, &p, &to("m-1", env)).await;
    let sm = serde_json::json!({"auth": "partner-key"});
    let from_sm = once(&sqs, &q2, &p, &to("m-2", sm)).await;

    assert_eq!(
        without.len(),
        1,
        "no client certificate: the handshake fails, retryable"
    );
    assert!(
        with.is_empty(),
        "delivered with the certificate from the environment"
    );
    assert!(
        from_sm.is_empty(),
        "delivered with the certificate from Secrets Manager"
    );
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    assert_eq!(
        dest.requests(2),
        [
            "POST /m-1 client=retryq-client",
            "POST /m-2 client=retryq-from-sm"
        ]
    );
}

#[tokio::test]
async fn retryq_call_makes_its_first_attempt_with_the_same_profiles() {
    let pki = TestPki::new("call");
    pki.issue("server", ExtendedKeyUsagePurpose::ServerAuth);
    let (cert, key) = pki.issue("retryq-call", ExtendedKeyUsagePurpose::ClientAuth);
    let tls = TlsDestination::start(&pki, true);
    let hooks = answering_in_turn(&[]).await;
    let secret = webhook_secret();
    let profiles = serde_json::json!({
        "partner": {"clientCertificate": {"certEnv": "CLIENT_CERT", "keyEnv": "CLIENT_KEY"}},
        "hooks": {"type": "standard-webhooks", "secretEnv": "HOOK_SECRET"}
    });
    let sqs = sqs();
    let q = queue(&sqs, "call-profiles").await;
    let profiles = profiles.to_string();
    let ca = pki.path("ca.pem");
    let env = [
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("AUTH_PROFILES", profiles.as_str()),
        ("CA_BUNDLE", ca.as_str()),
        ("CLIENT_CERT", cert.as_str()),
        ("CLIENT_KEY", key.as_str()),
        ("HOOK_SECRET", secret.as_str()),
    ];
    let call = |url: String, profile: &'static str| {
        let q = q.url.clone();
        async move {
            let args = [
                "call",
                "--queue-url",
                &q,
                "--url",
                &url,
                "--auth",
                profile,
                "-d",
                "{\"x\":1}",
            ];
            run_retryq(&args, &env).await
        }
    };

    call(tls.url("/first"), "partner").await.success();
    call(format!("{}/first", hooks.uri()), "hooks")
        .await
        .success();
    assert_eq!(tls.requests(1), ["POST /first client=retryq-call"]);
    let r = hooks.received_requests().await.unwrap();
    verify(&["webhook", &secret], &r[0]).expect("standardwebhooks verifies retryq call's request");
    assert_eq!(depth(&sqs, &q).await, (0, 0), "delivered: nothing enqueued");
}

#[tokio::test]
async fn a_rotated_client_certificate_is_read_again_when_the_handshake_fails() {
    let pki = TestPki::new("mtls-rotate");
    pki.issue("server", ExtendedKeyUsagePurpose::ServerAuth);
    let (good_cert, good_key) = pki.issue("rotated-in", ExtendedKeyUsagePurpose::ClientAuth);
    // A certificate the server does not trust: another CA signed it.
    let rogue = TestPki::new("mtls-rogue");
    let (bad_cert, bad_key) = rogue.issue("rotated-out", ExtendedKeyUsagePurpose::ClientAuth);
    let cert_arn = create_secret("rotating-cert", &bad_cert).await;
    let key_arn = create_secret("rotating-key", &bad_key).await;
    let dest = TlsDestination::start(&pki, true);
    let profiles = serde_json::json!({
        "partner": {"clientCertificate": {"certArn": cert_arn, "keyArn": key_arn}}
    });
    let bundle = pki.path("ca.pem");
    let vars = [
        ("CA_BUNDLE", bundle.as_str()),
        ("AUTH_PROFILES", &profiles.to_string()),
        ("MAX_ATTEMPTS", "1"),
    ];
    let (sqs, q, dlq, p) = with_dlq("mtls-rotate", &vars).await;
    let to = |id: &str| {
        message(
            id,
            &dest.url(&format!("/{id}")),
            serde_json::json!({"auth": "partner"}),
        )
    };

    // Refused, read again, still the same certificate: the attempt fails as TLS.
    once(&sqs, &q, &p, &to("r-1")).await;
    let dead = receive_n(&sqs, &dlq, 1, Duration::from_secs(20)).await;
    rotate_secret(&cert_arn, &good_cert).await;
    rotate_secret(&key_arn, &good_key).await;
    // The process still holds the refused certificate (within its TTL): the
    // refusal reads it again, and the request goes once more with the new one.
    let after = once(&sqs, &q, &p, &to("r-2")).await;

    let last_error = attr(&dead[0], "LastError").unwrap();
    assert!(last_error.starts_with("TLS failure"), "{last_error}");
    assert!(after.is_empty(), "delivered within its one attempt");
    assert_eq!(
        depth(&sqs, &dlq).await,
        (0, 1),
        "only r-1 was dead-lettered"
    );
    assert_eq!(dest.requests(1), ["POST /r-2 client=rotated-in"]);
}

/// `CA_BUNDLE` is trusted for token endpoints as for destinations: a token
/// endpoint behind the private CA (Python's `ssl`) is refused without it
/// (retryable: no credential could be had, nothing sent) and serves the
/// token with it.
#[tokio::test]
async fn a_token_endpoint_behind_a_private_ca_is_trusted_only_with_ca_bundle() {
    let pki = TestPki::new("token-ca");
    pki.issue("server", ExtendedKeyUsagePurpose::ServerAuth);
    let tokens = TlsDestination::start(&pki, false);
    let dest = MockServer::start().await;
    Mock::given(wiremock::matchers::header(
        "authorization",
        "Bearer tok-over-tls",
    ))
    .respond_with(ResponseTemplate::new(200))
    .expect(1)
    .mount(&dest)
    .await;
    let profiles = serde_json::json!({"p": {
        "type": "oauth2-client-credentials", "tokenUrl": tokens.url("/token"),
        "clientId": "retryq", "clientSecretEnv": "TOKEN_CA_SECRET"}})
    .to_string();
    let bundle = pki.path("ca.pem");
    let body = |id: &str| message(id, &dest.uri(), serde_json::json!({"auth": "p"}));

    let (sqs, q, dlq, without) = with_dlq(
        "token-ca-without",
        &[("AUTH_PROFILES", &profiles), ("TOKEN_CA_SECRET", "s")],
    )
    .await;
    let refused = run_batch(&without, &sqs, &q, &dlq, &[body("t-1")]).await;
    assert_eq!(refused.retried, ["t-1".to_owned()].into(), "{refused:?}");
    assert!(tokens.requests(0).is_empty(), "no TLS handshake completed");

    let (sqs, q, dlq, with) = with_dlq(
        "token-ca-with",
        &[
            ("AUTH_PROFILES", &profiles),
            ("TOKEN_CA_SECRET", "s"),
            ("CA_BUNDLE", &bundle),
        ],
    )
    .await;
    run_batch(&with, &sqs, &q, &dlq, &[body("t-2")])
        .await
        .assert_all_delivered(&["t-2"]);
    assert_eq!(tokens.requests(1), ["POST /token client=-"]);
    dest.verify().await;
}

/// What a slow destination saw: each request, and when it arrived.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<(std::time::SystemTime, wiremock::Request)>>>);

impl wiremock::Respond for Arrivals {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        self.0
            .lock()
            .unwrap()
            .push((std::time::SystemTime::now(), request.clone()));
        ResponseTemplate::new(204).set_delay(Duration::from_millis(1200))
    }
}

/// Seconds since the epoch of an `x-amz-date` (`20150830T123600Z`).
fn amz_date_secs(value: &str) -> u64 {
    let format =
        time::format_description::parse_borrowed::<2>("[year][month][day]T[hour][minute][second]Z")
            .unwrap();
    let at = time::PrimitiveDateTime::parse(value, &format).expect("an x-amz-date");
    at.assume_utc().unix_timestamp() as u64
}

/// §12.8: a request is signed once it has its request slot. With one slot
/// and a destination that takes 1.2 s, the fourth request waits 3.6 s for
/// its slot; its `webhook-timestamp` and `x-amz-date` are still at most a
/// second (their resolution) older than its arrival, and the reference
/// verifiers accept every request.
#[tokio::test]
async fn requests_are_signed_after_they_wait_for_their_slot() {
    let secret = webhook_secret();
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(wiremock::matchers::any())
        .respond_with(arrivals.clone())
        .mount(&server)
        .await;
    let profiles = r#"{
        "hooks": {"type": "standard-webhooks", "secretEnv": "HOOK_SECRET", "hosts": ["127.0.0.1"]},
        "gateway": {"type": "aws-sigv4", "service": "execute-api", "region": "eu-west-1", "hosts": ["127.0.0.1"]}
    }"#;
    let (sqs, q, dlq, p) = with_dlq(
        "signed-late",
        &[
            ("AUTH_PROFILES", profiles),
            ("HOOK_SECRET", &secret),
            ("MAX_CONCURRENCY", "1"),
        ],
    )
    .await;
    let bodies: Vec<String> = (0..4)
        .map(|i| {
            let profile = if i % 2 == 0 { "hooks" } else { "gateway" };
            message(
                &format!("late-{i}"),
                &format!("{}/in/{i}", server.uri()),
                serde_json::json!({"auth": profile, "request": {"method": "POST", "body": "{}"}}),
            )
        })
        .collect();

    let outcomes = run_batch(&p, &sqs, &q, &dlq, &bodies).await;

    assert_eq!(outcomes.delivered.len(), 4, "{outcomes:?}");
    let seen = arrivals.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    let mut oldest = 0;
    for (arrived, r) in &seen {
        let arrived = arrived
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let signed_at = match r.headers.get("webhook-timestamp") {
            Some(t) => {
                verify(&["webhook", &secret], r).expect("standardwebhooks accepts it");
                t.to_str().unwrap().parse::<u64>().unwrap()
            }
            None => {
                verify(&["sigv4", "execute-api", "eu-west-1"], r).expect("botocore agrees");
                amz_date_secs(r.headers["x-amz-date"].to_str().unwrap())
            }
        };
        oldest = oldest.max(arrived.saturating_sub(signed_at));
    }
    assert!(
        oldest <= 1,
        "a signature was {oldest} s old when its request arrived"
    );
}
