//! Traces through retries (spec §11), on moto's SQS: a record's
//! `AWSTraceHeader` goes downstream as `X-Amzn-Trace-Id` (unless the request
//! has its own), a `traceparent` passes through unchanged, and the DLQ copy
//! and a redriven message keep `AWSTraceHeader`.

use std::time::Duration;

use aws_sdk_sqs::types::{
    MessageSystemAttributeName, MessageSystemAttributeNameForSends, MessageSystemAttributeValue,
};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::*;

const TRACE: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn send_traced(sqs: &aws_sdk_sqs::Client, q: &TestQueue, body: &str) {
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(body)
        .message_system_attributes(
            MessageSystemAttributeNameForSends::AwsTraceHeader,
            MessageSystemAttributeValue::builder()
                .data_type("String")
                .string_value(TRACE)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("send_message with AWSTraceHeader");
}

fn trace_of(m: &aws_sdk_sqs::types::Message) -> Option<String> {
    m.attributes
        .as_ref()?
        .get(&MessageSystemAttributeName::AwsTraceHeader)
        .cloned()
}

#[tokio::test]
async fn the_trace_goes_downstream_into_the_dlq_and_through_a_redrive() {
    let dest = MockServer::start().await;
    Mock::given(path("/gone"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&dest)
        .await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    let (sqs, q, dlq, p) = with_dlq("traces", &[]).await;
    let target = queue(&sqs, "traces-redriven").await;
    let with_traceparent = message(
        "t-1",
        &format!("{}/a", dest.uri()),
        serde_json::json!({"request": {"method": "POST", "headers": {"traceparent": TRACEPARENT}}}),
    );
    let with_own_trace = message(
        "t-2",
        &format!("{}/b", dest.uri()),
        serde_json::json!({"request": {"method": "POST", "headers": {"x-amzn-trace-id": "Root=own"}}}),
    );
    let dead = message(
        "t-3",
        &format!("{}/gone", dest.uri()),
        serde_json::json!({}),
    );
    for body in [&with_traceparent, &with_own_trace, &dead] {
        send_traced(&sqs, &q, body).await;
    }

    let received = receive_n(&sqs, &q, 3, Duration::from_secs(20)).await;
    let failed = failures(&invoke(&p, &sqs, &q, &received).await);
    let copies = receive_n_hidden_for(&sqs, &dlq, 1, 0, Duration::from_secs(20)).await;
    let redrive = run_retryq(
        &["dlq", "redrive", "--dlq-url", &dlq.url, "--to", &target.url],
        &[],
    )
    .await;
    let redriven = receive_n(&sqs, &target, 1, Duration::from_secs(20)).await;

    assert!(failed.is_empty());
    assert!(
        received
            .iter()
            .all(|m| trace_of(m).as_deref() == Some(TRACE)),
        "moto keeps the header"
    );
    let requests = dest.received_requests().await.unwrap();
    let header = |p: &str, name: &str| {
        requests
            .iter()
            .find(|r| r.url.path() == p)
            .and_then(|r| r.headers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header("/a", "x-amzn-trace-id").as_deref(), Some(TRACE));
    assert_eq!(header("/a", "traceparent").as_deref(), Some(TRACEPARENT));
    assert_eq!(
        header("/b", "x-amzn-trace-id").as_deref(),
        Some("Root=own"),
        "the request's own wins"
    );
    assert_eq!(header("/gone", "x-amzn-trace-id").as_deref(), Some(TRACE));
    assert_eq!(
        trace_of(&copies[0]).as_deref(),
        Some(TRACE),
        "the DLQ copy keeps it"
    );
    assert_eq!(redrive.code, 0, "{}", redrive.stderr);
    assert_eq!(
        trace_of(&redriven[0]).as_deref(),
        Some(TRACE),
        "the redriven message keeps it"
    );
}
