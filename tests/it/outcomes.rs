//! Every row of the outcome table (spec §3), against real HTTP servers
//! on loopback: one attempt by the HTTP adapter, then the classifier.

use std::time::{Duration, SystemTime};

use retryq::deliver::destination::DestinationPolicy;
use retryq::deliver::{Deliverer, Delivery};
use retryq::message::RetryMessage;
use retryq::policy::classify::{NoResponse, Outcome};
use wiremock::matchers::{any, body_bytes, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn deliverer(allow_private: bool, timeout: Duration) -> Deliverer {
    let policy = DestinationPolicy {
        allowed: Vec::new(),
        allow_private,
    };
    Deliverer::new(policy, timeout, 8).unwrap()
}

fn msg(url: &str) -> RetryMessage {
    msg_with(url, serde_json::json!({"method": "POST", "body": "{}"}))
}

fn msg_with(url: &str, request: serde_json::Value) -> RetryMessage {
    RetryMessage::parse(
        &serde_json::json!({"id": "m-1", "destinationUrl": url, "request": request}).to_string(),
    )
    .unwrap()
}

async fn attempt(d: &Deliverer, m: &RetryMessage) -> (Delivery, Option<Outcome>) {
    let delivery = d.deliver(m).await;
    let outcome = retryq::policy::record::outcome(delivery.result(), SystemTime::now()).ok();
    (delivery, outcome)
}

async fn outcome_for(response: ResponseTemplate) -> Outcome {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(response)
        .mount(&server)
        .await;
    attempt(
        &deliverer(true, Duration::from_secs(5)),
        &msg(&server.uri()),
    )
    .await
    .1
    .unwrap()
}

#[tokio::test]
async fn a_2xx_is_delivered_whatever_other_headers_say() {
    for status in [200, 201, 202, 204] {
        let o = outcome_for(ResponseTemplate::new(status).insert_header("retry-after", "60")).await;
        assert_eq!(o, Outcome::Delivered { status });
    }
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (delivery, o) = attempt(
        &deliverer(true, Duration::from_secs(5)),
        &msg(&format!("http://127.0.0.1:{port}/")),
    )
    .await;
    assert!(
        matches!(
            delivery,
            Delivery::NoResponse {
                kind: NoResponse::Connect,
                ..
            }
        ),
        "{delivery:?}"
    );
    assert!(matches!(o, Some(Outcome::Retryable { status: None, .. })));
}

#[tokio::test]
async fn a_reset_connection_is_retryable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (stream, _) = listener.accept().await.unwrap();
            // Closing with unread request data makes the kernel send RST.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(stream);
        }
    });
    let (delivery, o) = attempt(
        &deliverer(true, Duration::from_secs(5)),
        &msg(&format!("http://127.0.0.1:{port}/")),
    )
    .await;
    assert!(
        matches!(delivery, Delivery::NoResponse { .. }),
        "{delivery:?}"
    );
    assert!(matches!(o, Some(Outcome::Retryable { status: None, .. })));
    server.abort();
}

#[tokio::test]
async fn a_tls_failure_is_retryable() {
    // https to a server that only speaks plain HTTP.
    let server = MockServer::start().await;
    let url = server.uri().replace("http://", "https://");
    let (delivery, o) = attempt(&deliverer(true, Duration::from_secs(5)), &msg(&url)).await;
    assert!(
        matches!(
            delivery,
            Delivery::NoResponse {
                kind: NoResponse::Tls,
                ..
            }
        ),
        "{delivery:?}"
    );
    assert!(matches!(o, Some(Outcome::Retryable { status: None, .. })));
}

#[tokio::test]
async fn a_timeout_is_retryable() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let (delivery, o) = attempt(
        &deliverer(true, Duration::from_secs(1)),
        &msg(&server.uri()),
    )
    .await;
    assert!(
        matches!(
            delivery,
            Delivery::NoResponse {
                kind: NoResponse::Timeout,
                ..
            }
        ),
        "{delivery:?}"
    );
    assert!(matches!(o, Some(Outcome::Retryable { status: None, .. })));
}

#[tokio::test]
async fn a_5xx_is_retryable() {
    for status in [500, 502, 503, 504] {
        let o = outcome_for(ResponseTemplate::new(status)).await;
        assert!(
            matches!(o, Outcome::Retryable { status: Some(s), retry_after: None, .. } if s == status),
            "{o:?}"
        );
    }
}

#[tokio::test]
async fn timeout_conflict_and_too_many_requests_are_retryable() {
    for status in [408, 409, 429] {
        let o = outcome_for(ResponseTemplate::new(status)).await;
        assert!(
            matches!(o, Outcome::Retryable { status: Some(s), .. } if s == status),
            "{o:?}"
        );
    }
}

#[tokio::test]
async fn retry_after_makes_any_status_retryable_not_before_that_time() {
    let o = outcome_for(ResponseTemplate::new(404).insert_header("retry-after", "120")).await;
    assert!(
        matches!(o, Outcome::Retryable { status: Some(404), retry_after: Some(d), .. } if d == Duration::from_secs(120)),
        "{o:?}"
    );

    let in_90s = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
    let o =
        outcome_for(ResponseTemplate::new(503).insert_header("retry-after", in_90s.as_str())).await;
    let Outcome::Retryable {
        retry_after: Some(d),
        ..
    } = o
    else {
        panic!("{o:?}")
    };
    assert!((85..=90).contains(&d.as_secs()), "{d:?}");
}

#[tokio::test]
async fn other_4xx_are_non_retryable() {
    for status in [400, 401, 403, 404, 410, 422] {
        let o = outcome_for(ResponseTemplate::new(status)).await;
        assert!(
            matches!(o, Outcome::NonRetryable { status: Some(s), .. } if s == status),
            "{o:?}"
        );
    }
}

#[tokio::test]
async fn redirects_are_not_followed_and_are_non_retryable() {
    let target = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&target)
        .await;
    for status in [301, 302, 307, 308] {
        let o = outcome_for(
            ResponseTemplate::new(status).insert_header("location", target.uri().as_str()),
        )
        .await;
        assert!(
            matches!(o, Outcome::NonRetryable { status: Some(s), .. } if s == status),
            "{o:?}"
        );
    }
    target.verify().await;
}

#[tokio::test]
async fn the_request_is_replayed_as_the_message_describes() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/v1/orders/7"))
        .and(query_param("x", "1"))
        .and(header("idempotency-key", "m-1"))
        .and(header("content-type", "application/octet-stream"))
        .and(body_bytes(vec![0u8, 1, 2, 255]))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let m = msg_with(
        &format!("{}/v1/orders/7?x=1", server.uri()),
        serde_json::json!({
            "method": "PATCH",
            "headers": {
                "content-type": "application/octet-stream",
                "accept": ["application/json", "text/plain"],
                "host": "evil.example.com",
                "content-length": "9999",
                "connection": "close, x-hop",
                "x-hop": "1",
                "transfer-encoding": "chunked"
            },
            "body": "AAEC/w==",
            "bodyEncoding": "base64"
        }),
    );
    let (_, o) = attempt(&deliverer(true, Duration::from_secs(5)), &m).await;
    assert_eq!(o, Some(Outcome::Delivered { status: 204 }));
    let requests = server.received_requests().await.unwrap();
    let r = &requests[0];
    assert_eq!(
        r.headers.get_all("accept").iter().count(),
        2,
        "repeated headers are kept"
    );
    assert_ne!(
        r.headers["host"], "evil.example.com",
        "Host comes from the URL"
    );
    assert_eq!(
        r.headers["content-length"], "4",
        "Content-Length comes from the body"
    );
    assert!(
        r.headers.get("x-hop").is_none(),
        "headers named in Connection are dropped"
    );
    assert!(r.headers.get("transfer-encoding").is_none());
    server.verify().await;
}

#[tokio::test]
async fn an_own_idempotency_key_is_kept() {
    let server = MockServer::start().await;
    Mock::given(header("idempotency-key", "from-service-a"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let m = msg_with(
        &server.uri(),
        serde_json::json!({"method": "POST", "headers": {"Idempotency-Key": "from-service-a"}}),
    );
    let (_, o) = attempt(&deliverer(true, Duration::from_secs(5)), &m).await;
    assert_eq!(o, Some(Outcome::Delivered { status: 200 }));
    server.verify().await;
}
