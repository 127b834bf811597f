//! Shared helpers for the integration tests: a client for the local SQS
//! server that `make test` starts (scripts/with-moto.sh), uniquely named
//! queues, Retry Message bodies, and an emulation of what Lambda's event
//! source mapping does around the handler.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::SqsBatchResponse;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use lambda_runtime::{Context, LambdaEvent};
use retryq::config::Config;
use retryq::process::Processor;

pub const REGION: &str = "us-east-1";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";

/// The local SQS server. Fails (never skips) when it is not there.
pub fn endpoint() -> String {
    std::env::var("RETRYQ_TEST_SQS_ENDPOINT").expect(
        "RETRYQ_TEST_SQS_ENDPOINT is not set: run the tests with `make test`, \
         which installs and starts the local SQS server (moto_server)",
    )
}

pub fn sqs() -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version_latest()
        .region(Region::new(REGION))
        .endpoint_url(endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

pub fn secrets_manager() -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version_latest()
        .region(Region::new(REGION))
        .endpoint_url(endpoint())
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

pub struct TestQueue {
    pub url: String,
    pub arn: String,
}

/// Creates a queue whose name no other test uses.
pub async fn queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> TestQueue {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    named_queue(sqs, &name).await
}

/// A queue whose name no other test uses, with these attributes
/// (`MessageRetentionPeriod`, `MaximumMessageSize`, `VisibilityTimeout`, …).
pub async fn queue_with(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    attributes: &[(&str, &str)],
) -> TestQueue {
    let q = queue(sqs, prefix).await;
    if !attributes.is_empty() {
        let mut set = sqs.set_queue_attributes().queue_url(&q.url);
        for (name, value) in attributes {
            set = set.attributes(aws_sdk_sqs::types::QueueAttributeName::from(*name), *value);
        }
        set.send().await.expect("set_queue_attributes");
    }
    q
}

pub async fn named_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> TestQueue {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create_queue on the local SQS server")
        .queue_url
        .unwrap();
    TestQueue {
        url,
        arn: format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"),
    }
}

/// The configuration from these variables only (defaults otherwise).
/// The processors built from it write their metric lines to the test's
/// captured output, not to the terminal.
pub fn config(vars: &[(&str, &str)]) -> Config {
    retryq::logging::capture_in_tests();
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        .expect("valid test configuration")
}

/// A source queue, its DLQ, and a processor writing to that DLQ with
/// private destinations allowed (the tests' destinations are on loopback)
/// and `extra` variables.
pub async fn with_dlq(
    prefix: &str,
    extra: &[(&str, &str)],
) -> (aws_sdk_sqs::Client, TestQueue, TestQueue, Arc<Processor>) {
    let sqs = sqs();
    let source = queue(&sqs, prefix).await;
    let dlq = queue(&sqs, &format!("{prefix}-dlq")).await;
    let mut vars = vec![
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
    ];
    vars.extend_from_slice(extra);
    let p = processor(&vars);
    (sqs, source, dlq, p)
}

/// A Secrets Manager secret on the local server; its ARN.
pub async fn create_secret(name: &str, value: &str) -> String {
    secrets_manager()
        .create_secret()
        .name(format!(
            "{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ))
        .secret_string(value)
        .send()
        .await
        .expect("create_secret on the local server")
        .arn
        .unwrap()
}

pub fn processor(vars: &[(&str, &str)]) -> Arc<Processor> {
    Arc::new(Processor::new(config(vars), sqs(), Some(secrets_manager())).expect("processor"))
}

/// A Retry Message body for `url`, with `extra` fields merged in.
pub fn message(id: &str, url: &str, extra: serde_json::Value) -> String {
    let mut m = serde_json::json!({
        "id": id,
        "destinationUrl": url,
        "request": { "method": "POST", "headers": { "content-type": "application/json" }, "body": "{\"n\":1}" }
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            m[k] = v;
        }
    }
    m.to_string()
}

pub async fn send(sqs: &aws_sdk_sqs::Client, q: &TestQueue, body: &str) -> String {
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(body)
        .send()
        .await
        .expect("send_message")
        .message_id
        .unwrap()
}

/// Receives what is visible now (one call, no long poll), with all
/// attributes, hiding it for `visibility` seconds.
pub async fn receive(sqs: &aws_sdk_sqs::Client, q: &TestQueue, visibility: i32) -> Vec<Message> {
    sqs.receive_message()
        .queue_url(&q.url)
        .max_number_of_messages(10)
        .visibility_timeout(visibility)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receive_message")
        .messages
        .unwrap_or_default()
}

/// Receives until `n` messages arrived or `limit` passed.
pub async fn receive_n(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    n: usize,
    limit: Duration,
) -> Vec<Message> {
    receive_n_hidden_for(sqs, q, n, 300, limit).await
}

/// As [`receive_n`], hiding what it receives for `visibility` seconds.
pub async fn receive_n_hidden_for(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    n: usize,
    visibility: i32,
    limit: Duration,
) -> Vec<Message> {
    let start = std::time::Instant::now();
    let mut all = Vec::new();
    while all.len() < n && start.elapsed() < limit {
        let got = receive(sqs, q, visibility).await;
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        all.extend(got);
    }
    all
}

/// A Lambda context whose deadline is `secs` from now.
pub fn context(secs: u64) -> Context {
    let mut ctx = Context::default();
    ctx.deadline = (SystemTime::now() + Duration::from_secs(secs))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ctx
}

/// Does what Lambda's SQS event source mapping does: builds the event from
/// received messages, invokes the handler, and deletes every record not
/// listed in `batchItemFailures`.
pub async fn invoke(
    processor: &Arc<Processor>,
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    messages: &[Message],
) -> SqsBatchResponse {
    invoke_within(processor, sqs, q, messages, 60).await
}

/// `received` as the Lambda handler reads it: the event the local trigger
/// emulation makes, as JSON (what Lambda sends), read by the handler's type.
pub fn lambda_event(received: &[Message], queue_arn: &str) -> retryq::lambda::SqsRecords {
    let event = retryq::trigger::sqs_event(received, queue_arn, REGION);
    serde_json::from_slice(&serde_json::to_vec(&event).unwrap())
        .expect("the handler reads the event")
}

/// The records of `received`, as the Lambda handler hands them on.
pub fn lambda_records(received: &[Message], queue_arn: &str) -> Vec<retryq::process::Record> {
    lambda_event(received, queue_arn)
        .records
        .into_iter()
        .map(retryq::process::Record::from)
        .collect()
}

/// Hands `received` to the handler as one event (deadline `secs` away) and
/// deletes nothing: its answer.
async fn handle(
    processor: Arc<Processor>,
    q: &TestQueue,
    received: &[Message],
    secs: u64,
) -> SqsBatchResponse {
    let event = lambda_event(received, &q.arn);
    retryq::lambda::handle(processor, LambdaEvent::new(event, context(secs)))
        .await
        .expect("the handler answers")
}

/// As when the answer is lost and the same messages come again: handles
/// them, deleting nothing; the ids of `batchItemFailures`.
pub async fn handle_unacknowledged(
    processor: Arc<Processor>,
    q: &TestQueue,
    received: &[Message],
) -> Vec<String> {
    failures(&handle(processor, q, received, 60).await)
}

/// As [`invoke`], with the invocation's deadline `secs` away.
pub async fn invoke_within(
    processor: &Arc<Processor>,
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    messages: &[Message],
    secs: u64,
) -> SqsBatchResponse {
    let response = handle(Arc::clone(processor), q, messages, secs).await;
    for m in messages {
        let id = m.message_id.as_deref().unwrap();
        if !response
            .batch_item_failures
            .iter()
            .any(|f| f.item_identifier == id)
        {
            sqs.delete_message()
                .queue_url(&q.url)
                .receipt_handle(m.receipt_handle.as_deref().unwrap())
                .send()
                .await
                .expect("delete_message");
        }
    }
    response
}

/// Replaces the value of a Secrets Manager secret (a rotation).
pub async fn rotate_secret(arn: &str, value: &str) {
    secrets_manager()
        .put_secret_value()
        .secret_id(arn)
        .secret_string(value)
        .send()
        .await
        .expect("put_secret_value");
}

pub fn failures(response: &SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

/// The string value of a message attribute.
pub fn attr(m: &Message, name: &str) -> Option<String> {
    m.message_attributes
        .as_ref()?
        .get(name)?
        .string_value
        .clone()
}

/// How many messages the queue holds, visible or not.
pub async fn depth(sqs: &aws_sdk_sqs::Client, q: &TestQueue) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&q.url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("get_queue_attributes")
        .attributes
        .unwrap_or_default();
    let get = |a: A| attrs.get(&a).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        get(A::ApproximateNumberOfMessages),
        get(A::ApproximateNumberOfMessagesNotVisible),
    )
}

/// What a dead-letter queue holds, one line per letter (`FailureReason`,
/// `AttemptCount`, `LastError`), for a failing assertion to show.
pub async fn dead_letters(sqs: &aws_sdk_sqs::Client, dlq: &TestQueue) -> String {
    receive_n(sqs, dlq, 10, Duration::from_secs(2))
        .await
        .iter()
        .map(|m| {
            format!(
                "{:?} attempt {:?}: {:?}\n",
                attr(m, "FailureReason"),
                attr(m, "AttemptCount"),
                attr(m, "LastError")
            )
        })
        .collect()
}

/// What one invocation did with each record, as SQS shows it to a user:
/// listed in `batchItemFailures` (retried: it comes back), acknowledged
/// with a DLQ copy (dead-lettered), or acknowledged without one (delivered:
/// the processor acknowledges nothing else). Keyed by the Retry Message's
/// `id`, or by the SQS message id for a body that has none.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub delivered: std::collections::BTreeSet<String>,
    pub retried: std::collections::BTreeSet<String>,
    /// The DLQ copy of each dead-lettered record.
    pub dead: std::collections::BTreeMap<String, Message>,
}

impl Outcomes {
    /// The `FailureReason` of each dead letter, by id.
    pub fn reasons(&self) -> std::collections::BTreeMap<String, String> {
        self.dead
            .iter()
            .map(|(id, m)| (id.clone(), attr(m, "FailureReason").unwrap_or_default()))
            .collect()
    }

    /// Panics, showing every outcome, unless all of `ids` were delivered
    /// and nothing else happened.
    pub fn assert_all_delivered(&self, ids: &[&str]) {
        let wanted: std::collections::BTreeSet<String> =
            ids.iter().map(|s| s.to_string()).collect();
        assert!(
            self.delivered == wanted && self.retried.is_empty() && self.dead.is_empty(),
            "expected {wanted:?} delivered; got delivered {:?}, retried {:?}, dead {:?}",
            self.delivered,
            self.retried,
            self.reasons()
        );
    }
}

/// The Retry Message id of a received message (its SQS id if the body is
/// not a message with an id).
fn message_key(m: &Message) -> String {
    serde_json::from_str::<serde_json::Value>(m.body.as_deref().unwrap_or_default())
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| m.message_id.clone().unwrap())
}

/// Everything visible in `dlq` now, deleted as it is read (receives until
/// an empty answer, at most 50 times). Deleted, not hidden: in a FIFO DLQ a
/// hidden copy would hold back the later copies of its group.
pub async fn drain(sqs: &aws_sdk_sqs::Client, dlq: &TestQueue) -> Vec<Message> {
    let mut all = Vec::new();
    for _ in 0..50 {
        let got = receive(sqs, dlq, 300).await;
        if got.is_empty() {
            break;
        }
        for m in &got {
            sqs.delete_message()
                .queue_url(&dlq.url)
                .receipt_handle(m.receipt_handle.as_deref().unwrap())
                .send()
                .await
                .expect("delete_message");
        }
        all.extend(got);
    }
    all
}

/// Invokes the handler with `received` (deadline `secs` away), as the event
/// source mapping does, and reads the DLQ (deleting what it reads): what
/// became of each record. The DLQ copies of earlier invocations must have
/// been read already; a copy of a record not in this batch fails.
pub async fn outcomes_of(
    processor: &Arc<Processor>,
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    dlq: &TestQueue,
    received: &[Message],
    secs: u64,
) -> Outcomes {
    let response = invoke_within(processor, sqs, q, received, secs).await;
    let failed = failures(&response);
    let mut copies: std::collections::BTreeMap<String, Message> = drain(sqs, dlq)
        .await
        .into_iter()
        .map(|c| (attr(&c, "OriginalMessageId").unwrap_or_default(), c))
        .collect();
    let mut outcomes = Outcomes::default();
    for m in received {
        let sqs_id = m.message_id.clone().unwrap();
        let key = message_key(m);
        if failed.contains(&sqs_id) {
            outcomes.retried.insert(key);
        } else if let Some(copy) = copies.remove(&sqs_id) {
            outcomes.dead.insert(key, copy);
        } else {
            outcomes.delivered.insert(key);
        }
    }
    assert!(
        copies.is_empty(),
        "DLQ copies of records not in this batch: {:?}",
        copies.keys()
    );
    outcomes
}

/// Sends `bodies`, receives them all, invokes the handler once with them
/// and reads the DLQ: see [`outcomes_of`].
pub async fn run_batch(
    processor: &Arc<Processor>,
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    dlq: &TestQueue,
    bodies: &[String],
) -> Outcomes {
    send_batch(sqs, q, bodies).await;
    let received = receive_n(sqs, q, bodies.len(), Duration::from_secs(30)).await;
    assert_eq!(
        received.len(),
        bodies.len(),
        "every message sent was received"
    );
    outcomes_of(processor, sqs, q, dlq, &received, 60).await
}

/// Sends one message and receives it back (with all attributes), as the
/// event source mapping would before invoking the function.
pub async fn send_one(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    body: &str,
) -> (String, Vec<Message>) {
    let id = send(sqs, q, body).await;
    let received = receive_n(sqs, q, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "the message sent was received");
    (id, received)
}

/// Makes a child the test starts die with the test: it is sent SIGTERM
/// when the thread that started it ends, which includes the test process
/// being killed (an interrupted `cargo test`, CI's time limit) as well as
/// a panic. Without it, a child in its own process group would run on.
pub fn dies_with_test(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl and getppid are async-signal-safe; the closure
    // allocates nothing.
    unsafe {
        let parent = libc::getpid();
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        })
    }
}

/// A process group started by a test, stopped (TERM, then KILL) when
/// dropped, and sent SIGTERM if the test process dies first.
pub struct Running(pub std::process::Child);

impl Running {
    pub fn spawn(mut command: std::process::Command) -> Running {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        dies_with_test(&mut command);
        Running(command.spawn().expect("the process starts"))
    }

    /// Sends SIGTERM to the process group.
    pub fn terminate(&self) {
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        self.terminate();
        if self.wait_for_exit(Duration::from_secs(10)).is_none() {
            let group = format!("-{}", self.0.id());
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &group])
                .status();
            let _ = self.0.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The environment a child process needs to reach the local SQS server.
pub fn aws_env(command: &mut std::process::Command) -> &mut std::process::Command {
    command
        .env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

/// `cargo lambda watch` for this crate on 127.0.0.1:`port`, with the local
/// SQS environment plus `env`, its output to `log`.
pub fn cargo_lambda_watch(port: u16, env: &[(&str, &str)], log: &std::path::Path) -> Running {
    let log = std::fs::File::create(log).unwrap();
    let mut command = std::process::Command::new("cargo");
    command
        .args([
            "lambda",
            "watch",
            "--ignore-changes",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // The test's own variables win over the local defaults.
    aws_env(&mut command).envs(env.iter().copied());
    Running::spawn(command)
}

/// A copy of the SQS event file `event` whose messages were sent `age` ago,
/// made by scripts/fresh-event.py, the script `make invoke` sends the
/// samples through: the files in `events/` carry fixed timestamps, and the
/// retention rule reads them.
pub fn event_sent_ago(event: &std::path::Path, age: Duration) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command =
        std::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    command
        .arg(root.join("scripts/fresh-event.py"))
        .arg("--age-seconds")
        .arg(age.as_secs().to_string())
        .arg(event);
    let out = output_within(command, "", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("scripts/fresh-event.py: {e}"));
    assert!(
        out.status.success(),
        "scripts/fresh-event.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = event.file_name().unwrap().to_string_lossy();
    let copy = std::env::temp_dir().join(format!(
        "retryq-{}-{}s-{name}",
        std::process::id(),
        age.as_secs()
    ));
    std::fs::write(&copy, out.stdout).unwrap();
    copy
}

/// `cargo lambda invoke retryq-processor` with an event file; the answer's
/// JSON, or what went wrong.
pub fn cargo_lambda_invoke(
    port: u16,
    event: &std::path::Path,
) -> Result<serde_json::Value, String> {
    let mut command = std::process::Command::new("cargo");
    command
        .args([
            "lambda",
            "invoke",
            "retryq-processor",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        .arg("--data-file")
        .arg(event)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = output_within(command, "", Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or(stdout.to_string())?;
    serde_json::from_str(json).map_err(|e| format!("{e}: {stdout}"))
}

/// Waits until the function under `cargo lambda watch` answers (its first
/// call builds it; bounded to 10 minutes), by invoking it with an empty
/// batch: an invocation that timed out on the client's side may still run
/// later, so only an event without effects is sent more than once.
pub async fn wait_for_cargo_lambda_watch(port: u16, log: &std::path::Path) {
    let empty = std::env::temp_dir().join(format!(
        "retryq-empty-event-{}-{port}.json",
        std::process::id()
    ));
    std::fs::write(&empty, r#"{"Records":[]}"#).unwrap();
    let start = std::time::Instant::now();
    loop {
        match cargo_lambda_invoke(port, &empty) {
            Ok(_) => break,
            // Not installed: no wait can help (make test installs it).
            Err(e) if e.contains("no such command") => panic!("cargo lambda is missing: {e}"),
            Err(e) if start.elapsed() < Duration::from_secs(600) => {
                eprintln!(
                    "waiting for cargo lambda watch: {}",
                    e.lines().last().unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!(
                "cargo lambda watch never answered: {e}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
    let _ = std::fs::remove_file(empty);
}

/// Sends the bodies ten at a time.
pub async fn send_batch(sqs: &aws_sdk_sqs::Client, q: &TestQueue, bodies: &[String]) {
    for chunk in bodies.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b)
                    .build()
                    .unwrap()
            })
            .collect();
        let out = sqs
            .send_message_batch()
            .queue_url(&q.url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send_message_batch");
        assert!(out.failed.is_empty(), "every message sent");
    }
}

/// A destination answering every request with `status`.
pub async fn answering(status: u16) -> wiremock::MockServer {
    serving(wiremock::ResponseTemplate::new(status)).await
}

/// A destination answering every request with `response`.
pub async fn serving(response: wiremock::ResponseTemplate) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

/// A destination answering `status` to anything, which fails the test
/// (on `verify`) unless it got exactly `n` requests.
pub async fn expecting(status: u16, n: u64) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(wiremock::ResponseTemplate::new(status))
        .expect(n)
        .mount(&server)
        .await;
    server
}

/// A destination that must not be called (checked by `verify`).
pub async fn never_called() -> wiremock::MockServer {
    expecting(200, 0).await
}

/// A token endpoint's answer with this access token.
pub fn token_answer(token: &str) -> wiremock::ResponseTemplate {
    wiremock::ResponseTemplate::new(200).set_body_json(
        serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
    )
}

/// What a finished `retryq` command left: its exit code and output.
#[derive(Debug)]
pub struct RetryqOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RetryqOutput {
    /// Panics with the output unless the command exited 0.
    pub fn success(self) -> RetryqOutput {
        assert_eq!(
            self.code, 0,
            "stdout: {} stderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the built `retryq` as a user would: `args`, the local AWS server's
/// endpoints and credentials, then `env`, no standard input. Bounded: one
/// that has not finished within 60 s (a worker that should have stopped)
/// is killed and fails the test.
pub async fn run_retryq(args: &[&str], env: &[(&str, &str)]) -> RetryqOutput {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_retryq"));
    command.args(args).stdin(std::process::Stdio::null());
    aws_env(&mut command).envs(env.iter().copied());
    dies_with_test(&mut command);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::from(command)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("retryq {args:?} did not finish within 60 s"))
    .expect("retryq runs");
    RetryqOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `tests/interop/<script> args…` with `stdin` under the tools'
/// Python (`PYTHON`, else `python3`), bounded to 60 s; its output.
pub fn run_python(script: &str, args: &[&str], stdin: &str) -> std::process::Output {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let mut command =
        std::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    command.arg(path).args(args);
    output_within(command, stdin, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("tests/interop/{script} {args:?}: {e}"))
}

/// Runs `command` with `stdin` and waits at most `limit` for its output;
/// kills it after that. Input and output are written and read while it
/// runs, so neither can fill a pipe and stall it. Dies with the test.
pub fn output_within(
    mut command: std::process::Command,
    stdin: &str,
    limit: Duration,
) -> Result<std::process::Output, String> {
    use std::io::Write;
    use std::process::Stdio;
    dies_with_test(&mut command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("{:?} does not start: {e}", command.get_program()))?;
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
        drop(input);
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(limit) else {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        return Err(format!("did not finish within {limit:?}"));
    };
    out.map_err(|e| e.to_string())
}
