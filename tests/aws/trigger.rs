//! `retryq trigger` acknowledges exactly what the function's answer says,
//! as Lambda's event source mapping does, and nothing when the function
//! fails or answers something that is not a batch response. The function
//! here is a real HTTP server speaking the Lambda invoke API.

use std::time::Duration;

use crate::common::*;
use aws_lambda_events::event::sqs::SqsEvent;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Answers with the first record of each batch as failed.
struct FailFirst;

impl Respond for FailFirst {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let event: SqsEvent = serde_json::from_slice(&request.body).expect("an SQS event");
        let first = event.records[0].message_id.clone().unwrap();
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"batchItemFailures": [{"itemIdentifier": first}]}))
    }
}

async fn function(response: impl Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(retryq::trigger::DEFAULT_INVOKE_PATH))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

/// Runs the trigger until `n` invocations reached the function (bounded).
async fn run_trigger(q: &TestQueue, function: &MockServer, n: usize) {
    let queues = retryq::queue::Queues::new(sqs());
    let options = retryq::trigger::TriggerOptions {
        queue_url: q.url.clone(),
        function_url: retryq::trigger::invoke_url(&function.uri()).unwrap(),
        batch_size: 10,
        wait: Duration::from_secs(1),
    };
    let shutdown = async {
        let start = std::time::Instant::now();
        while function.received_requests().await.unwrap().len() < n
            && start.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    retryq::trigger::run(&queues, REGION, &options, shutdown)
        .await
        .unwrap();
}

async fn queue_with(n: usize) -> (aws_sdk_sqs::Client, TestQueue) {
    let sqs = sqs();
    let q = queue(&sqs, "trigger").await;
    for i in 0..n {
        send(&sqs, &q, &format!("{{\"n\": {i}}}")).await;
    }
    (sqs, q)
}

#[tokio::test]
async fn records_not_listed_as_failures_are_deleted() {
    let (sqs, q) = queue_with(3).await;
    let f = function(FailFirst).await;
    run_trigger(&q, &f, 1).await;

    let requests = f.received_requests().await.unwrap();
    let event: SqsEvent = serde_json::from_slice(&requests[0].body).unwrap();
    let r = &event.records[0];
    assert_eq!(r.event_source.as_deref(), Some("aws:sqs"));
    assert_eq!(r.event_source_arn.as_deref(), Some(q.arn.as_str()));
    assert_eq!(r.aws_region.as_deref(), Some(REGION));
    assert_eq!(
        r.attributes
            .get("ApproximateReceiveCount")
            .map(String::as_str),
        Some("1")
    );
    assert!(r.receipt_handle.is_some() && r.md5_of_body.is_some());

    assert_eq!(event.records.len(), 3, "the three messages made one batch");
    assert_eq!(
        depth(&sqs, &q).await,
        (0, 1),
        "the two acknowledged records were deleted; the failed one waits, in flight"
    );
}

#[tokio::test]
async fn a_function_error_or_a_bad_answer_acknowledges_nothing() {
    let answers = [
        ResponseTemplate::new(500).set_body_string("boom"),
        ResponseTemplate::new(200)
            .insert_header("x-amz-function-error", "Unhandled")
            .set_body_string("{}"),
        ResponseTemplate::new(200).set_body_string("not a batch response"),
        ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "not-in-the-batch"}]}),
        ),
    ];
    for answer in answers {
        let (sqs, q) = queue_with(2).await;
        let f = function(answer).await;
        run_trigger(&q, &f, 1).await;
        let (visible, hidden) = depth(&sqs, &q).await;
        assert_eq!(visible + hidden, 2, "nothing was deleted");
    }
}
