//! The template's rules that no linter knows are rules: every SQS trigger
//! reports partial batch failures (without it Lambda deletes or returns a
//! whole batch), and the retry queue's redrive policy is the safety net the
//! processor's attempt count assumes. Read through cfn-lint's decoder
//! (tests/interop/template_facts.py), which `make test` installs.

use serde_json::{json, Value};

use crate::common::run_python;

fn facts() -> Value {
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml");
    let out = run_python("template_facts.py", &[template], "");
    assert!(
        out.status.success(),
        "template_facts.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_sqs_trigger_reports_batch_item_failures() {
    let facts = facts();
    let events = facts["sqsEvents"].as_array().unwrap();
    assert!(!events.is_empty(), "the function has an SQS trigger");
    for event in events {
        assert_eq!(
            event["properties"]["FunctionResponseTypes"],
            json!(["ReportBatchItemFailures"]),
            "{event}"
        );
        assert_eq!(
            event["properties"]["Queue"],
            json!({"Fn::GetAtt": ["RetryQueue", "Arn"]}),
            "{event}"
        );
    }
}

#[test]
fn the_retry_queue_redrives_to_the_dlq_after_the_attempts_the_processor_counts() {
    let facts = facts();
    let redrive = &facts["queues"]["RetryQueue"]["RedrivePolicy"];
    assert_eq!(
        redrive["deadLetterTargetArn"],
        json!({"Fn::GetAtt": ["DeadLetterQueue", "Arn"]})
    );
    // A standard queue's records are carried over before the redrive
    // policy would take them (§12.5): a small safety net. FIFO records are
    // not carried: without the fleet's ledger, receives are attempts (the
    // safety net moves a message after MAX_ATTEMPTS receives); with it,
    // receives that were no attempts are allowed for.
    assert_eq!(
        redrive["maxReceiveCount"],
        json!({"Fn::If": [
            "IsFifo",
            {"Fn::If": ["HasFleetState", {"Ref": "FleetMaxReceiveCount"}, {"Ref": "MaxAttempts"}]},
            5
        ]})
    );
    let env = &facts["environment"]["RetryProcessorFunction"];
    assert_eq!(env["MAX_ATTEMPTS"], json!({"Ref": "MaxAttempts"}));
    assert_eq!(env["DLQ_URL"], json!({"Ref": "DeadLetterQueue"}), "{env}");
}

#[test]
fn the_function_follows_pointers_into_its_own_bucket_only() {
    let facts = facts();
    let env = &facts["environment"]["RetryProcessorFunction"];
    assert_eq!(
        env["PAYLOAD_BUCKETS"],
        json!({"Fn::If": ["HasPayloadBucket", {"Ref": "PayloadBucket"}, ""]}),
        "{env}"
    );
}

/// §12.1 and §12.3: no payload expires before a message that points to it
/// (a day after the longest retention of the queues), and a finished one
/// (marked by a copy onto itself) goes a day after it was marked.
#[test]
fn the_payload_bucket_outlives_the_queues_and_removes_finished_payloads() {
    let facts = facts();
    let longest_retention = ["RetryQueue", "DeadLetterQueue"]
        .iter()
        .map(|q| {
            facts["queues"][q]["MessageRetentionPeriod"]
                .as_u64()
                .unwrap()
        })
        .max()
        .unwrap();
    let rules = facts["buckets"]["PayloadBucket"]["LifecycleConfiguration"]["Rules"]
        .as_array()
        .unwrap();
    let general: Vec<&Value> = rules
        .iter()
        .filter(|r| r.get("TagFilters").is_none())
        .collect();
    assert_eq!(general.len(), 1, "{rules:?}");
    assert_eq!(
        general[0]["ExpirationInDays"].as_u64().unwrap() * 86_400,
        longest_retention + 86_400
    );
    for finished in ["delivered", "dead-lettered"] {
        let rule = rules
            .iter()
            .find(|r| r["TagFilters"] == json!([{"Key": "retryq-finished", "Value": finished}]))
            .unwrap_or_else(|| panic!("a rule for {finished}: {rules:?}"));
        assert_eq!(rule["ExpirationInDays"], 1);
        assert_eq!(rule["Status"], "Enabled");
    }
}
