//! How a request goes out, against a real keep-alive HTTP/1.1 server: it
//! is signed after its gate opens (§12.8), and the idle connections the
//! clients keep stay within a budget of sockets, however many hosts
//! producers name and however many requests go to each at once (§12.9).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::auth::{AuthProfiles, Authenticator};

/// A keep-alive HTTP/1.1 server on 127.0.0.1: counts open connections and
/// keeps (arrival time, request head) of every request.
struct Server {
    port: u16,
    open: Arc<AtomicUsize>,
    /// Connections accepted in all.
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(SystemTime, String)>>>,
}

async fn server() -> Server {
    server_answering_after(Duration::ZERO).await
}

/// As [`server`], each answer `delay` after its request.
async fn server_answering_after(delay: Duration) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (o, s, a) = (open.clone(), seen.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (o, s) = (o.clone(), s.clone());
            o.fetch_add(1, Ordering::SeqCst);
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        buf.drain(..end + 4 + len);
                        s.lock().unwrap().push((SystemTime::now(), head));
                        tokio::time::sleep(delay).await;
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Server {
        port,
        open,
        accepted,
        seen,
    }
}

/// Every name resolves to 127.0.0.1.
struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().unwrap()];
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Open connections once closing has settled: closes take the server a
/// moment to see (at most 5 s waited for the count to reach `at_most`).
async fn settled_open(open: &AtomicUsize, at_most: usize) -> usize {
    let mut n = usize::MAX;
    for _ in 0..50 {
        n = open.load(Ordering::SeqCst);
        if n <= at_most {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n
}

fn deliverer() -> Deliverer {
    let policy = DestinationPolicy {
        allowed: Vec::new(),
        allow_private: true,
    };
    Deliverer::with_resolver(policy, Duration::from_secs(5), 64, Some(Arc::new(Loopback)))
        .unwrap()
        .with_slots(Arc::new(Slots::new(64, Some(2)).with_host_limit(4)))
        .with_idle_sockets(4)
}

/// [`deliverer`] with these auth profiles.
fn deliverer_with(profiles: &str, env: impl Fn(&str) -> Option<String>) -> Deliverer {
    let profiles = AuthProfiles::parse(profiles, env).unwrap();
    let timeout = Duration::from_secs(5);
    let auth = Authenticator::new(&profiles, timeout, Duration::from_secs(300), None);
    deliverer().with_auth(Arc::new(auth))
}

fn msg(url: &str, auth: Option<&str>) -> RetryMessage {
    let mut m = serde_json::json!({
        "id": "msg-1",
        "destinationUrl": url,
        "request": {"method": "POST", "body": "{}"}
    });
    if let Some(a) = auth {
        m["auth"] = a.into();
    }
    RetryMessage::parse(&m.to_string()).unwrap()
}

/// 300 hosts named, 4 kept: the connections to the others close with
/// their answers (300 stayed open for 90 s before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_kept_for_a_bounded_number_of_hosts() {
    let s = server().await;
    let d = deliverer();
    const HOSTS: usize = 300;
    for i in 0..HOSTS {
        let url = format!("http://h{i}.producer.example:{}/x", s.port);
        match d.deliver(&msg(&url, None)).await {
            Delivery::Answered { status: 200, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let open = settled_open(&s.open, 4).await;
    assert!(d.hosts_kept() <= 4);
    assert!(open <= 4, "{open} idle connections held for {HOSTS} hosts");
    // A kept host still reuses its connection.
    let url = format!("http://h0.producer.example:{}/x", s.port);
    let accepted = s.accepted.load(Ordering::SeqCst);
    d.deliver(&msg(&url, None)).await;
    assert_eq!(s.accepted.load(Ordering::SeqCst), accepted, "reused");
}

/// The gate (the fleet probe's lease, a table call) may take seconds: the
/// signature is made after it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_signed_after_its_gate_opens() {
    struct SlowGate;
    impl SendGate for SlowGate {
        fn open(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                true
            })
        }
    }
    let s = server().await;
    let env = |n: &str| (n == "HOOK").then(|| "whsec_c2VjcmV0LWtleQ==".to_owned());
    let d = deliverer_with(
        r#"{"hooks": {"type": "standard-webhooks", "secretEnv": "HOOK"}}"#,
        env,
    );
    let url = format!("http://partner.example:{}/hook", s.port);
    let body = Ok(Some(bytes::Bytes::from_static(b"{}")));
    match d
        .deliver_gated(&msg(&url, Some("hooks")), body, &SlowGate)
        .await
    {
        Delivery::Answered { status: 200, .. } => {}
        other => panic!("{other:?}"),
    }
    let (arrived, head) = s.seen.lock().unwrap()[0].clone();
    let ts: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("webhook-timestamp: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let arrived = arrived
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let age = arrived - ts as f64;
    assert!(age < 1.0, "signed {age:.3} s before it was sent");
}

/// A profile presenting a client certificate has a client of its own: its
/// idle connections count against the same budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_profile_keeps_within_the_same_budget() {
    let s = server().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let key = key.serialize_pem();
    let env = move |n: &str| match n {
        "C" => Some(cert.clone()),
        "K" => Some(key.clone()),
        _ => None,
    };
    let d = deliverer_with(
        r#"{"m": {"clientCertificate": {"certEnv": "C", "keyEnv": "K"}, "hosts": ["*.producer.example"]}}"#,
        env,
    );
    const HOSTS: usize = 300;
    for i in 0..HOSTS {
        let url = format!("http://h{i}.producer.example:{}/x", s.port);
        match d.deliver(&msg(&url, Some("m"))).await {
            Delivery::Answered { status: 200, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let open = settled_open(&s.open, 4).await;
    assert!(
        open <= 4,
        "{open} idle connections held for {HOSTS} hosts under an mTLS profile"
    );
}

/// 20 hosts at 64 requests in flight each (1,280 idle sockets before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_sockets_stay_within_their_budget_at_full_concurrency() {
    let server = server_answering_after(Duration::from_millis(300)).await;
    let (port, open) = (server.port, server.open);
    let policy = DestinationPolicy {
        allowed: Vec::new(),
        allow_private: true,
    };
    // As wiring::deliverer builds it for the processor: idle per host = MAX_CONCURRENCY.
    let d = Arc::new(
        Deliverer::with_resolver(
            policy,
            Duration::from_secs(20),
            64,
            Some(Arc::new(Loopback)),
        )
        .unwrap()
        .with_slots(Arc::new(Slots::new(64, None)))
        .with_idle_sockets(10_000),
    );
    for h in 0..20 {
        let mut hs = Vec::new();
        for _ in 0..64 {
            let d = d.clone();
            let url = format!("http://h{h}.p.example:{port}/x");
            hs.push(tokio::spawn(
                async move { d.deliver(&msg(&url, None)).await },
            ));
        }
        for j in hs {
            j.await.unwrap();
        }
    }
    let n = settled_open(&open, pool::IDLE_SOCKETS).await;
    assert!(
        n <= pool::IDLE_SOCKETS,
        "{n} idle sockets after 20 hosts x 64 concurrent requests"
    );
}

/// A destination that echoes the request's key in its error: the snippet
/// kept for the ledger holds `[redacted]`, not the key.
#[tokio::test]
async fn an_echoed_key_does_not_reach_the_snippet() {
    let dest = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(|r: &wiremock::Request| {
            let key = r.headers["x-api-key"].to_str().unwrap().to_owned();
            wiremock::ResponseTemplate::new(400).set_body_string(format!("bad key: {key}"))
        })
        .mount(&dest)
        .await;
    let env = |n: &str| (n == "KEY").then(|| "sk_live_ABCDEFG".to_owned());
    let d = deliverer_with(
        r#"{"k": {"type": "header", "name": "x-api-key", "prefix": "Key ", "valueEnv": "KEY"}}"#,
        env,
    )
    .with_snippets(512);
    match d
        .deliver(&msg(&format!("{}/x", dest.uri()), Some("k")))
        .await
    {
        Delivery::Answered {
            status: 400,
            snippet,
            ..
        } => {
            let text = String::from_utf8(snippet).unwrap();
            assert_eq!(text, "bad key: [redacted]");
        }
        other => panic!("{other:?}"),
    }
}
