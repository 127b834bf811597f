//! A small HTTP proxy in front of the local SQS server: it counts the SQS
//! requests by operation, and can refuse chosen entries of a
//! `SendMessageBatch` (the local server never fails one entry of a batch on
//! its own, real SQS can). Everything else is answered by the real server.
//! `make bench` uses it too (benches/retryq.rs) to count requests.
//!
//! With [`Faults`] it also behaves as SQS does where the local server does
//! not: a receipt handle replaced by a later receive of its message, or
//! whose message was deleted, is refused (`ReceiptHandleIsInvalid`) by
//! `ChangeMessageVisibility[Batch]` and `DeleteMessage[Batch]` (the local
//! server accepts it, docs/testing.md); and a share of requests can be
//! throttled (`ThrottlingException`, which the SDKs retry).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A running proxy; stops when dropped.
pub struct SqsProxy {
    pub endpoint: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    handles: Arc<Mutex<Handles>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy does beyond forwarding.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// A `SendMessageBatch` entry whose body contains this is refused.
    pub refuse: Option<&'static str>,
    /// Refuse stale receipt handles, as SQS does.
    pub stale_handles: bool,
    /// Throttle this many requests in a thousand (any operation).
    pub throttle_per_mille: u32,
    pub seed: u64,
    /// Every request of this operation is refused with this error code
    /// (a 400 the SDK does not retry).
    pub fail_op: Option<(&'static str, &'static str)>,
    /// Requests of this operation are never answered.
    pub hang_op: Option<&'static str>,
}

/// Receipt handles as SQS sees them: each message's latest, and the
/// messages deleted.
#[derive(Default)]
struct Handles {
    message_of: HashMap<String, String>,
    latest: HashMap<String, String>,
    deleted: std::collections::HashSet<String>,
    /// The `id` in each received message's body (a Retry Message's).
    body_id: HashMap<String, String>,
}

impl Handles {
    fn is_stale(&self, handle: &str) -> bool {
        self.message_of.get(handle).is_some_and(|id| {
            self.deleted.contains(id) || self.latest.get(id).map(String::as_str) != Some(handle)
        })
    }
}

/// What one connection's requests share.
#[derive(Clone)]
struct Shared {
    client: reqwest::Client,
    upstream: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    faults: Faults,
    handles: Arc<Mutex<Handles>>,
    rng: Arc<Mutex<fastrand::Rng>>,
}

impl SqsProxy {
    /// Proxies to `upstream`; a `SendMessageBatch` entry whose body contains
    /// `refuse` (if any) is not forwarded and is answered as failed.
    pub async fn start(upstream: String, refuse: Option<&'static str>) -> SqsProxy {
        SqsProxy::start_with(
            upstream,
            Faults {
                refuse,
                ..Faults::default()
            },
        )
        .await
    }

    /// Proxies to `upstream` with `faults`.
    pub async fn start_with(upstream: String, faults: Faults) -> SqsProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let handles: Arc<Mutex<Handles>> = Arc::default();
        let shared = Shared {
            client: reqwest::Client::new(),
            upstream,
            counts: Arc::clone(&counts),
            faults,
            handles: Arc::clone(&handles),
            rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(faults.seed))),
        };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        SqsProxy {
            endpoint,
            counts,
            handles,
            task,
        }
    }

    /// The body `id`s of the messages deleted so far (with
    /// `Faults::stale_handles`).
    #[allow(dead_code)] // not every user of this file calls it
    pub fn deleted_ids(&self) -> std::collections::HashSet<String> {
        let handles = self.handles.lock().unwrap();
        handles
            .deleted
            .iter()
            .filter_map(|id| handles.body_id.get(id).cloned())
            .collect()
    }

    /// As if another receiver had received `message_id` since: its
    /// receipt handles so far are stale (with `Faults::stale_handles`).
    #[allow(dead_code)] // not every user of this file calls it
    pub fn supersede(&self, message_id: &str) {
        self.handles
            .lock()
            .unwrap()
            .latest
            .insert(message_id.to_owned(), "superseded".into());
    }

    /// Requests seen per SQS operation (`SendMessageBatch`, …).
    pub fn counts(&self) -> HashMap<String, usize> {
        self.counts.lock().unwrap().clone()
    }

    /// Requests seen for `operation`.
    pub fn count(&self, operation: &str) -> usize {
        self.counts().get(operation).copied().unwrap_or(0)
    }

    /// An SQS client that goes through this proxy.
    pub fn client(&self) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "proxy",
            ))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }
}

impl Drop for SqsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: tokio::net::TcpStream, shared: Shared) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    while let Some(request) = read_request(&mut reader).await {
        let (status, content_type, answer) = answer(request, &shared).await;
        if respond(&mut write, status, &content_type, &answer)
            .await
            .is_err()
        {
            return;
        }
    }
}

const JSON: &str = "application/x-amz-json-1.0";

/// The answer to one request: a fault, or the server's (with refused
/// entries added).
async fn answer(request: Request, shared: &Shared) -> (u16, String, Vec<u8>) {
    let Request {
        method,
        path,
        headers,
        mut body,
    } = request;
    let target = headers
        .iter()
        .find(|(n, _)| n == "x-amz-target")
        .map(|(_, v)| v.trim_start_matches("AmazonSQS.").to_owned())
        .unwrap_or_else(|| "other".into());
    *shared
        .counts
        .lock()
        .unwrap()
        .entry(target.clone())
        .or_default() += 1;
    let faults = shared.faults;
    if faults.throttle_per_mille > 0
        && shared.rng.lock().unwrap().u32(..1000) < faults.throttle_per_mille
    {
        *shared
            .counts
            .lock()
            .unwrap()
            .entry("throttled".into())
            .or_default() += 1;
        let error = serde_json::json!({"__type": "com.amazonaws.sqs#ThrottlingException", "message": "Rate exceeded (test proxy)"});
        return (400, JSON.into(), serde_json::to_vec(&error).unwrap());
    }
    if faults.hang_op.is_some_and(|op| op == target) {
        std::future::pending::<()>().await;
    }
    if let Some((op, code)) = faults.fail_op.filter(|(op, _)| *op == target) {
        let error = serde_json::json!({"__type": format!("com.amazonaws.sqs#{code}"), "message": format!("{op} refused (test proxy)")});
        return (400, JSON.into(), serde_json::to_vec(&error).unwrap());
    }
    let mut refused = match faults.refuse {
        Some(marker) if target == "SendMessageBatch" => take_refused(&mut body, marker),
        _ => Vec::new(),
    };
    let handle_entries = faults.stale_handles
        && matches!(
            target.as_str(),
            "ChangeMessageVisibilityBatch" | "DeleteMessageBatch"
        );
    if faults.stale_handles
        && matches!(target.as_str(), "ChangeMessageVisibility" | "DeleteMessage")
    {
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let handle = request["ReceiptHandle"].as_str().unwrap_or_default();
        if shared.handles.lock().unwrap().is_stale(handle) {
            let error = serde_json::json!({"__type": "com.amazonaws.sqs#ReceiptHandleIsInvalid", "message": "stale receipt handle (test proxy)"});
            return (400, JSON.into(), serde_json::to_vec(&error).unwrap());
        }
    }
    let mut stale = Vec::new();
    if handle_entries {
        stale = take_stale(&mut body, &shared.handles.lock().unwrap());
    }
    let nothing_left = (!refused.is_empty() || !stale.is_empty()) && entries_left(&body) == 0;
    let (status, content_type, mut answer) = if nothing_left {
        (200, JSON.to_owned(), b"{\"Successful\":[]}".to_vec())
    } else {
        forward(shared, &method, &path, &headers, body.clone()).await
    };
    if status == 200 && faults.stale_handles {
        observe(&target, &body, &answer, &mut shared.handles.lock().unwrap());
    }
    if status == 200 && (!refused.is_empty() || !stale.is_empty()) {
        answer = add_failed(&answer, &refused, "InternalError");
        answer = add_failed(&answer, &stale, "ReceiptHandleIsInvalid");
    }
    refused.clear();
    (status, content_type, answer)
}

/// The server's answer.
async fn forward(
    shared: &Shared,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let mut request = shared.client.request(
        method.parse().unwrap(),
        format!("{}{path}", shared.upstream),
    );
    for (name, value) in headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            request = request.header(name, value);
        }
    }
    match request.body(body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(JSON)
                .to_owned();
            (status, ct, r.bytes().await.unwrap_or_default().to_vec())
        }
        Err(_) => (502, "text/plain".into(), b"upstream unreachable".to_vec()),
    }
}

/// Notes the receipt handles a receive handed out, and the messages a
/// delete removed.
fn observe(target: &str, request: &[u8], answer: &[u8], handles: &mut Handles) {
    let answer: Value = serde_json::from_slice(answer).unwrap_or_default();
    match target {
        "ReceiveMessage" => {
            for m in answer["Messages"].as_array().into_iter().flatten() {
                let (Some(id), Some(handle)) =
                    (m["MessageId"].as_str(), m["ReceiptHandle"].as_str())
                else {
                    continue;
                };
                handles.message_of.insert(handle.to_owned(), id.to_owned());
                handles.latest.insert(id.to_owned(), handle.to_owned());
                let body: Value = serde_json::from_str(m["Body"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                if let Some(body_id) = body["id"].as_str() {
                    handles.body_id.insert(id.to_owned(), body_id.to_owned());
                }
            }
        }
        "DeleteMessageBatch" => {
            let request: Value = serde_json::from_slice(request).unwrap_or_default();
            let done: Vec<&str> = answer["Successful"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["Id"].as_str())
                .collect();
            for e in request["Entries"].as_array().into_iter().flatten() {
                if done.contains(&e["Id"].as_str().unwrap_or_default()) {
                    let handle = e["ReceiptHandle"].as_str().unwrap_or_default();
                    if let Some(id) = handles.message_of.get(handle).cloned() {
                        handles.deleted.insert(id);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Removes the entries whose receipt handle is stale: their ids.
fn take_stale(body: &mut Vec<u8>, handles: &Handles) -> Vec<String> {
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let Some(entries) = request["Entries"].as_array_mut() else {
        return Vec::new();
    };
    let mut stale = Vec::new();
    entries.retain(|e| {
        let hit = handles.is_stale(e["ReceiptHandle"].as_str().unwrap_or_default());
        if hit {
            stale.push(e["Id"].as_str().unwrap_or_default().to_owned());
        }
        !hit
    });
    *body = serde_json::to_vec(&request).unwrap();
    stale
}

fn entries_left(body: &[u8]) -> usize {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|r| r["Entries"].as_array().map(Vec::len))
        .unwrap_or(1)
}

/// One HTTP/1.1 request: method, path, headers (names in lower case), body.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads the next request of a connection (`None` at its end). The bench's
/// Runtime API reads its requests with it too.
pub async fn read_request(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("POST").to_owned(),
        parts.next().unwrap_or("/").to_owned(),
    );
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
            if name == "content-length" {
                length = value.parse().unwrap_or(0);
            }
            headers.push((name, value));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Writes one answer, in one write: two would wait on the client's delayed
/// ACK.
async fn respond(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    write.write_all(&[head.as_bytes(), body].concat()).await
}

/// Removes the batch entries whose body contains `marker`: their ids.
fn take_refused(body: &mut Vec<u8>, marker: &str) -> Vec<String> {
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let Some(entries) = request["Entries"].as_array_mut() else {
        return Vec::new();
    };
    let mut refused = Vec::new();
    entries.retain(|e| {
        let hit = e["MessageBody"]
            .as_str()
            .is_some_and(|b| b.contains(marker));
        if hit {
            refused.push(e["Id"].as_str().unwrap_or_default().to_owned());
        }
        !hit
    });
    *body = serde_json::to_vec(&request).unwrap();
    refused
}

fn add_failed(answer: &[u8], refused: &[String], code: &str) -> Vec<u8> {
    if refused.is_empty() {
        return answer.to_vec();
    }
    let mut answer: Value =
        serde_json::from_slice(answer).unwrap_or_else(|_| serde_json::json!({}));
    let failed: Vec<Value> = refused
        .iter()
        .map(|id| serde_json::json!({"Id": id, "Code": code, "SenderFault": code != "InternalError", "Message": "refused by the test proxy"}))
        .collect();
    match answer["Failed"].as_array_mut() {
        Some(list) => list.extend(failed),
        None => answer["Failed"] = Value::Array(failed),
    }
    serde_json::to_vec(&answer).unwrap()
}
