//! The destination policy (spec §6) on the real resolver path: names are
//! checked on the addresses they resolve to, inside the HTTP client's
//! resolver, so what is checked is what would be connected to. Refused
//! destinations never see a connection.
//!
//! `localhost` goes through the system resolver. Names that stand for other
//! private addresses (10.x, the metadata service, ::1) go through a static
//! resolver plugged into the same hook: this sandbox has no DNS server to
//! ask, and traffic to private ranges off this machine is not allowed, so
//! those addresses are only ever refused here, never connected to.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use retryq::deliver::destination::DestinationPolicy;
use retryq::deliver::{Deliverer, Delivery};
use retryq::message::RetryMessage;

/// A resolver answering from a fixed table, and from the system for other
/// names (`localhost`). A name listed with no address does not exist.
struct StaticResolver(HashMap<&'static str, Vec<IpAddr>>);

impl reqwest::dns::Resolve for StaticResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let known: Option<Vec<SocketAddr>> = self
            .0
            .get(name.as_str())
            .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect());
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = match known {
                Some(addrs) if addrs.is_empty() => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                        "failed to lookup address information: {host}: Name or service not known"
                    ),
                    )
                    .into())
                }
                Some(addrs) => addrs,
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn resolver() -> Arc<StaticResolver> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    Arc::new(StaticResolver(HashMap::from([
        ("loopback.test", vec![ip("127.0.0.1")]),
        ("v6-loopback.test", vec![ip("::1")]),
        ("internal.test", vec![ip("10.1.2.3")]),
        ("metadata.test", vec![ip("169.254.169.254")]),
        ("metadata-v6.test", vec![ip("fd00:ec2::254")]),
        ("mapped.test", vec![ip("::ffff:10.0.0.1")]),
        ("mixed.test", vec![ip("93.184.216.34"), ip("127.0.0.1")]),
        ("nxdomain.test", vec![]),
    ])))
}

fn deliverer(allow_private: bool) -> Deliverer {
    let policy = DestinationPolicy {
        allowed: Vec::new(),
        allow_private,
    };
    Deliverer::with_resolver(policy, Duration::from_secs(5), 4, Some(resolver())).unwrap()
}

fn msg(url: &str) -> RetryMessage {
    RetryMessage::parse(
        &serde_json::json!({"id": "m", "destinationUrl": url, "request": {"method": "GET"}})
            .to_string(),
    )
    .unwrap()
}

/// An HTTP server on `addr` that counts connections and answers 200.
async fn counting_server(addr: &str) -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (port, count, task)
}

#[tokio::test]
async fn names_resolving_to_loopback_are_refused_by_default_and_allowed_deliberately() {
    let (v4_port, v4_connections, v4) = counting_server("127.0.0.1:0").await;
    let (v6_port, v6_connections, v6) = counting_server("[::1]:0").await;
    let urls = [
        format!("http://localhost:{v4_port}/"),
        format!("http://loopback.test:{v4_port}/"),
        format!("http://v6-loopback.test:{v6_port}/"),
    ];
    for url in &urls {
        let d = deliverer(false).deliver(&msg(url)).await;
        assert!(matches!(d, Delivery::NotAllowed(_)), "{url}: {d:?}");
    }
    assert_eq!(
        v4_connections.load(Ordering::SeqCst) + v6_connections.load(Ordering::SeqCst),
        0
    );

    for url in &urls {
        let d = deliverer(true).deliver(&msg(url)).await;
        assert!(
            matches!(d, Delivery::Answered { status: 200, .. }),
            "{url}: {d:?}"
        );
    }
    assert!(
        v4_connections.load(Ordering::SeqCst) >= 2 && v6_connections.load(Ordering::SeqCst) >= 1
    );
    v4.abort();
    v6.abort();
}

/// Names standing for private, metadata or mixed addresses are refused by
/// the resolver the deliverer's client connects through. They are checked
/// on that resolver alone, never with `deliver`: were the policy broken,
/// `deliver` would send a request off this machine. The loopback test above
/// shows that `deliver` goes through this resolver and connects to nothing
/// it refuses.
#[tokio::test]
async fn names_resolving_to_private_or_metadata_addresses_are_refused() {
    let resolver = deliverer(false).resolver();
    for name in [
        "internal.test",
        "metadata.test",
        "metadata-v6.test",
        "mapped.test",
        "mixed.test",
    ] {
        let refused = match resolver.resolve(name.parse().unwrap()).await {
            Ok(addrs) => panic!("{name}: resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(
            refused.contains(name) && refused.contains("non-public address"),
            "the refusal names the host: {refused}"
        );
    }
    // Allowed deliberately, they pass the policy (not connected to here:
    // this sandbox may not send traffic to private ranges).
    let open = DestinationPolicy {
        allowed: Vec::new(),
        allow_private: true,
    };
    for ip in [
        "10.1.2.3",
        "169.254.169.254",
        "fd00:ec2::254",
        "::ffff:10.0.0.1",
    ] {
        assert_eq!(open.check_address(ip.parse().unwrap()), Ok(()), "{ip}");
    }
}

/// A name that does not resolve, through the real delivery path: no
/// answer of kind DNS, which the outcome table makes retryable, and an
/// error that names neither the URL's password nor its query.
#[tokio::test]
async fn a_failed_dns_lookup_is_a_retryable_no_response_without_the_url_secrets() {
    use retryq::policy::classify::{classify, Answer, NoResponse, Outcome};
    use retryq::policy::record::AttemptResult;
    let d = deliverer(false)
        .deliver(&msg("http://user:pw-secret@nxdomain.test/x?token=q-secret"))
        .await;
    let AttemptResult::NoResponse { kind, detail } = d.result() else {
        panic!("{d:?}")
    };
    assert_eq!(kind, NoResponse::Dns, "{detail}");
    assert!(
        !detail.contains("pw-secret") && !detail.contains("q-secret"),
        "{detail}"
    );
    assert!(matches!(
        classify(&Answer::NoResponse(kind), std::time::SystemTime::now()),
        Outcome::Retryable { status: None, .. }
    ));
}

#[tokio::test]
async fn private_ip_literals_are_refused_in_every_notation_without_a_connection() {
    let (port, connections, task) = counting_server("127.0.0.1:0").await;
    let strict = deliverer(false);
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://0177.0.0.01:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://[::ffff:7f00:1]:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://0.0.0.0:{port}/"),
    ] {
        let d = strict.deliver(&msg(&url)).await;
        assert!(matches!(d, Delivery::NotAllowed(_)), "{url}: {d:?}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    task.abort();
}

#[tokio::test]
async fn refused_messages_are_dead_lettered_as_destination_not_allowed_with_zero_connections() {
    let (port, connections, task) = counting_server("127.0.0.1:0").await;
    let sqs = sqs();
    let source = queue(&sqs, "ssrf").await;
    let dlq = queue(&sqs, "ssrf-dlq").await;
    // Private addresses allowed, but only api.partner.com listed.
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("ALLOWED_DESTINATIONS", "api.partner.com,*.partner.net"),
    ]);
    let (_, received) = send_one(
        &sqs,
        &source,
        &message(
            "listed-not",
            &format!("http://127.0.0.1:{port}/"),
            serde_json::json!({}),
        ),
    )
    .await;
    assert!(failures(&invoke(&p, &sqs, &source, &received).await).is_empty());
    let dead = receive_n(&sqs, &dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(
        attr(&dead[0], "FailureReason").as_deref(),
        Some("destination-not-allowed")
    );
    assert!(attr(&dead[0], "LastError")
        .unwrap()
        .contains("ALLOWED_DESTINATIONS"));
    assert_eq!(connections.load(Ordering::SeqCst), 0);

    // Listing the exact host and port opens it.
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("ALLOWED_DESTINATIONS", &format!("127.0.0.1:{port}")),
    ]);
    let (_, received) = send_one(
        &sqs,
        &source,
        &message(
            "listed",
            &format!("http://127.0.0.1:{port}/"),
            serde_json::json!({}),
        ),
    )
    .await;
    assert!(failures(&invoke(&p, &sqs, &source, &received).await).is_empty());
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        depth(&sqs, &dlq).await,
        (0, 1),
        "delivered: the only dead letter is the first message's"
    );
    task.abort();
}

#[tokio::test]
async fn each_limit_violation_is_an_invalid_message_with_a_reason() {
    let (sqs, source, dlq, p) = with_dlq("limits", &[]).await;
    let base = |request: serde_json::Value, url: String| {
        serde_json::json!({"id": "lim", "destinationUrl": url, "request": request}).to_string()
    };
    let many: serde_json::Map<String, serde_json::Value> =
        (0..101).map(|i| (format!("x-{i}"), "v".into())).collect();
    let cases = [
        (
            base(
                serde_json::json!({"method": "GET"}),
                format!("https://x.example.com/{}", "a".repeat(9000)),
            ),
            "destinationUrl",
        ),
        (
            base(
                serde_json::json!({"method": "GET", "headers": many}),
                "https://x.example.com/".into(),
            ),
            "request.headers",
        ),
        (
            base(
                serde_json::json!({"method": "GET", "headers": {"x-big": "v".repeat(40_000)}}),
                "https://x.example.com/".into(),
            ),
            "request.headers",
        ),
        (
            base(
                serde_json::json!({"method": "GET", "headers": {"x-bad": "a\u{0}b"}}),
                "https://x.example.com/".into(),
            ),
            "request.headers.x-bad",
        ),
        (
            base(
                serde_json::json!({"method": "GET", "headers": {"bad:name": "v"}}),
                "https://x.example.com/".into(),
            ),
            "request.headers.bad:name",
        ),
        (
            base(
                serde_json::json!({"method": "POST", "body": "b".repeat(512 * 1024 + 1)}),
                "https://x.example.com/".into(),
            ),
            "request.body",
        ),
    ];
    for (body, field) in &cases {
        let record = retryq::process::Record {
            message_id: format!("limit-{field}"),
            receipt_handle: "unused".into(),
            body: body.clone(),
            receive_count: 1,
            source_queue_arn: source.arn.clone(),
            message_group_id: None,
            sent_at: None,
            trace_header: None,
            first_received_at: None,
            message_attributes: Vec::new(),
        };
        let report = p.process_batch(vec![record], None).await;
        assert_eq!(
            report.records[0].disposition,
            retryq::process::Disposition::DeadLettered(
                retryq::policy::FailureReason::InvalidMessage
            ),
            "{field}"
        );
        let dead = receive_n(&sqs, &dlq, 1, Duration::from_secs(10)).await;
        let last_error = attr(&dead[0], "LastError").unwrap();
        assert!(last_error.starts_with(field), "{field}: {last_error}");
    }
}
