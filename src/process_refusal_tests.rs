//! Records the destination policy or a profile's `hosts` refuse: refused
//! before anything is spent on them (a rate token, a breaker's allowance)
//! and counted under `Destination` `refused` (§12.9).

use super::*;
use crate::process::unreachable_sqs;

fn processor(vars: &[(&str, &str)]) -> Processor {
    let config = Config::from_lookup(|name| {
        vars.iter()
            .chain(&[("DLQ_URL", "http://127.0.0.1:9/000000000000/dlq")])
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .expect("config");
    Processor::new(config, unreachable_sqs(), None).expect("processor")
}

fn record(id: &str, url: &str, auth: Option<&str>) -> Record {
    let mut body = serde_json::json!({
        "id": id, "destinationUrl": url, "request": {"method": "POST", "body": "{}"}
    });
    if let Some(profile) = auth {
        body["auth"] = profile.into();
    }
    Record::from_sqs(
        Some(id.into()),
        Some(format!("rh-{id}")),
        Some(body.to_string()),
        "arn:aws:sqs:us-east-1:000000000000:q".into(),
        |_| None,
    )
}

#[tokio::test]
async fn a_record_refused_by_its_profile_hosts_counts_under_refused() {
    let p = processor(&[
        (
            "ALLOWED_DESTINATIONS",
            "api.partner.com,h1.producer.example",
        ),
        (
            "AUTH_PROFILES",
            r#"{"partner-y": {"type": "header", "name": "x-api-key", "valueEnv": "K", "hosts": ["api.partner.com"]}}"#,
        ),
        ("K", "k3y"),
    ]);
    let batch = Batch::starting_now();
    let by_policy = p
        .process_record(record("a", "https://h0.producer.example/x", None), &batch)
        .await;
    let by_hosts = p
        .process_record(
            record("b", "https://h1.producer.example/x", Some("partner-y")),
            &batch,
        )
        .await;
    assert_eq!(by_policy.destination.as_deref(), Some("refused"));
    assert_eq!(by_hosts.destination.as_deref(), Some("refused"));
}

/// A record to a host `ALLOWED_DESTINATIONS` refuses, but which a rate's
/// pattern matches, does not take the token the allowed host's record
/// needs.
#[tokio::test]
async fn a_refused_record_spends_no_rate_token() {
    let dest = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(wiremock::ResponseTemplate::new(204))
        .mount(&dest)
        .await;
    let allowed = format!("127.0.0.1:{}", dest.address().port());
    let p = processor(&[
        ("ALLOWED_DESTINATIONS", &allowed),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        (
            "DESTINATION_POLICIES",
            r#"{"127.0.0.1": {"rps": 0.01, "burst": 1}}"#,
        ),
    ]);
    let batch = Batch::starting_now();
    let refused = p
        .process_record(record("r1", "http://127.0.0.1:9/x", None), &batch)
        .await;
    let legit = p
        .process_record(record("r2", &format!("{}/x", dest.uri()), None), &batch)
        .await;
    assert_eq!(refused.destination.as_deref(), Some("refused"));
    assert_eq!(legit.disposition, Disposition::Delivered, "{legit:?}");
}
