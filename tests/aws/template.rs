//! The template's rules that no linter knows are rules: every SQS trigger
//! reports partial batch failures (without it Lambda deletes or returns a
//! whole batch), and the retry queue's redrive policy is the safety net the
//! processor's attempt count assumes. Read through cfn-lint's decoder
//! (tests/interop/template_facts.py), which `make test` installs.

use serde_json::{json, Value};

use crate::common::run_python;

fn facts() -> Value {
    facts_with(&[])
}

/// The facts, with the SQS events also as deployed with these parameter
/// values (`Name=Value`).
fn facts_with(parameters: &[&str]) -> Value {
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml");
    let mut args = vec![template];
    args.extend_from_slice(parameters);
    let out = run_python("template_facts.py", &args, "");
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

/// On-demand mode by default, capped by `MaximumConcurrency`; with pollers
/// set, provisioned mode and no `MaximumConcurrency` (Lambda refuses both).
/// The event source's `EventCount` metrics are on either way.
#[test]
fn pollers_switch_the_sqs_trigger_to_provisioned_mode_without_maximum_concurrency() {
    let trigger =
        |parameters: &[&str]| facts_with(parameters)["resolvedSqsEvents"][0]["properties"].clone();
    let on_demand = trigger(&[]);
    assert_eq!(
        on_demand["ScalingConfig"],
        json!({"MaximumConcurrency": "10"})
    );
    assert!(
        on_demand.get("ProvisionedPollerConfig").is_none(),
        "{on_demand}"
    );
    assert_eq!(
        on_demand["MetricsConfig"],
        json!({"Metrics": ["EventCount"]})
    );

    let provisioned = trigger(&["MinimumPollers=2", "MaximumPollers=20"]);
    assert!(provisioned.get("ScalingConfig").is_none(), "{provisioned}");
    assert_eq!(
        provisioned["ProvisionedPollerConfig"],
        json!({"MinimumPollers": "2", "MaximumPollers": "20"})
    );
    assert_eq!(
        provisioned["MetricsConfig"],
        json!({"Metrics": ["EventCount"]})
    );

    let minimum_only = trigger(&["MinimumPollers=3"]);
    assert!(
        minimum_only.get("ScalingConfig").is_none(),
        "{minimum_only}"
    );
    assert_eq!(
        minimum_only["ProvisionedPollerConfig"],
        json!({"MinimumPollers": "3"})
    );
}

/// The Serverless Application Repository's metadata names the licence the
/// crate and the repository carry.
#[test]
fn the_application_metadata_names_the_licence_in_the_repository() {
    let facts = facts();
    let app = &facts["metadata"]["AWS::ServerlessRepo::Application"];
    for field in [
        "Name",
        "Description",
        "Author",
        "SemanticVersion",
        "SourceCodeUrl",
        "LicenseUrl",
    ] {
        assert!(
            app[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {app}"
        );
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let spdx = app["SpdxLicenseId"].as_str().unwrap();
    assert!(
        cargo.contains(&format!("license = \"{spdx}\"")),
        "Cargo.toml's licence is {spdx}"
    );
    assert_eq!(app["SemanticVersion"], json!(env!("CARGO_PKG_VERSION")));
    let licence = std::fs::read_to_string(root.join(app["LicenseUrl"].as_str().unwrap())).unwrap();
    assert!(
        spdx == "Apache-2.0"
            && licence.contains("Apache License")
            && licence.contains("Version 2.0"),
        "the licence file is the {spdx} text"
    );
}

/// Both queues take SQS's largest message, 1 MiB (§13.2): producers offload
/// only what would not fit, and the DLQ is never smaller than its source.
#[test]
fn both_queues_take_messages_of_one_mebibyte() {
    let facts = facts();
    for queue in ["RetryQueue", "DeadLetterQueue"] {
        assert_eq!(
            facts["queues"][queue]["MaximumMessageSize"],
            json!(1048576),
            "{queue}"
        );
    }
}
