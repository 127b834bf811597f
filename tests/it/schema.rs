//! `schema/retry-message.v1.json` and the Rust model must agree: every
//! fixture under tests/fixtures/messages/valid is accepted by both, every
//! one under invalid/ is refused by both.

use std::path::Path;

use retryq::message::RetryMessage;

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schema/retry-message.v1.json"))
            .expect("the schema is JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema is a valid JSON Schema")
}

fn fixtures(kind: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/messages")
        .join(kind);
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "fixtures missing in {}", dir.display());
    files
}

fn schema_accepts(v: &jsonschema::Validator, text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|json| v.is_valid(&json))
}

#[test]
fn the_schema_and_the_model_accept_the_same_valid_messages() {
    let v = validator();
    for (name, text) in fixtures("valid") {
        assert!(schema_accepts(&v, &text), "schema refuses valid/{name}");
        if let Err(e) = RetryMessage::parse(&text) {
            panic!("model refuses valid/{name}: {e}");
        }
    }
}

#[test]
fn the_schema_and_the_model_refuse_the_same_invalid_messages() {
    let v = validator();
    for (name, text) in fixtures("invalid") {
        assert!(!schema_accepts(&v, &text), "schema accepts invalid/{name}");
        assert!(
            RetryMessage::parse(&text).is_err(),
            "model accepts invalid/{name}"
        );
    }
}

#[test]
fn the_sample_events_carry_messages_the_schema_describes() {
    let v = validator();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events");
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("mixed-batch.json")).unwrap())
            .unwrap();
    let records = event["Records"].as_array().unwrap();
    let mut accepted = 0;
    for record in records {
        let body = record["body"].as_str().unwrap();
        let by_schema = schema_accepts(&v, body);
        assert_eq!(
            by_schema,
            RetryMessage::parse(body).is_ok(),
            "schema and model disagree on {body}"
        );
        accepted += usize::from(by_schema);
    }
    // Every record but the one with an invalid body is a message.
    assert_eq!(accepted, records.len() - 1, "messages accepted by both");
}
