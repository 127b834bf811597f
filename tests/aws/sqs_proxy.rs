//! A small HTTP proxy in front of the local SQS server: it counts the SQS
//! requests by operation, and can refuse chosen entries of a
//! `SendMessageBatch` (the local server never fails one entry of a batch on
//! its own, real SQS can). Everything else is answered by the real server.
//! `make bench` uses it too (benches/retryq.rs) to count requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A running proxy; stops when dropped.
pub struct SqsProxy {
    pub endpoint: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SqsProxy {
    /// Proxies to `upstream`; a `SendMessageBatch` entry whose body contains
    /// `refuse` (if any) is not forwarded and is answered as failed.
    pub async fn start(upstream: String, refuse: Option<&'static str>) -> SqsProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let client = reqwest::Client::new();
        let c = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (client, upstream, counts) = (client.clone(), upstream.clone(), Arc::clone(&c));
                tokio::spawn(serve(stream, client, upstream, counts, refuse));
            }
        });
        SqsProxy {
            endpoint,
            counts,
            task,
        }
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

async fn serve(
    stream: tokio::net::TcpStream,
    client: reqwest::Client,
    upstream: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    refuse: Option<&'static str>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    while let Some(Request {
        method,
        path,
        headers,
        mut body,
    }) = read_request(&mut reader).await
    {
        let target = headers
            .iter()
            .find(|(n, _)| n == "x-amz-target")
            .map(|(_, v)| v.trim_start_matches("AmazonSQS.").to_owned())
            .unwrap_or_else(|| "other".into());
        *counts.lock().unwrap().entry(target.clone()).or_default() += 1;

        let (refused, nothing_left) = match refuse {
            Some(marker) if target == "SendMessageBatch" => take_refused(&mut body, marker),
            _ => (Vec::new(), false),
        };
        if nothing_left {
            let answer = add_failed(b"{\"Successful\":[]}", &refused);
            if respond(&mut write, 200, "application/x-amz-json-1.0", &answer)
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let mut request = client.request(method.parse().unwrap(), format!("{upstream}{path}"));
        for (name, value) in &headers {
            if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                request = request.header(name, value);
            }
        }
        let (status, content_type, mut answer) = match request.body(body).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let ct = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/x-amz-json-1.0")
                    .to_owned();
                (status, ct, r.bytes().await.unwrap_or_default().to_vec())
            }
            Err(_) => (502, "text/plain".into(), b"upstream unreachable".to_vec()),
        };
        if !refused.is_empty() && status == 200 {
            answer = add_failed(&answer, &refused);
        }
        if respond(&mut write, status, &content_type, &answer)
            .await
            .is_err()
        {
            return;
        }
    }
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

/// Removes the batch entries whose body contains `marker`: their ids, and
/// whether no entry is left.
fn take_refused(body: &mut Vec<u8>, marker: &str) -> (Vec<String>, bool) {
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return (Vec::new(), false);
    };
    let Some(entries) = request["Entries"].as_array_mut() else {
        return (Vec::new(), false);
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
    let nothing_left = entries.is_empty();
    *body = serde_json::to_vec(&request).unwrap();
    (refused, nothing_left)
}

fn add_failed(answer: &[u8], refused: &[String]) -> Vec<u8> {
    let mut answer: Value =
        serde_json::from_slice(answer).unwrap_or_else(|_| serde_json::json!({}));
    let failed: Vec<Value> = refused
        .iter()
        .map(|id| serde_json::json!({"Id": id, "Code": "InternalError", "SenderFault": false, "Message": "refused by the test proxy"}))
        .collect();
    match answer["Failed"].as_array_mut() {
        Some(list) => list.extend(failed),
        None => answer["Failed"] = Value::Array(failed),
    }
    serde_json::to_vec(&answer).unwrap()
}
