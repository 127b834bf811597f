//! Wiring: the adapters the configuration describes, and the AWS clients
//! from the standard environment, built in this one place for the Lambda
//! function, `retryq worker`, `retryq call` and the examples.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::breaker::Slots;
use crate::config::Config;
use crate::deliver::Deliverer;

/// The deliverer the configuration describes: its destination policy,
/// request timeout, auth profiles and request slots (`MAX_CONCURRENCY`,
/// `MAX_CONCURRENCY_PER_HOST`). Makes no network call.
pub fn deliverer(
    config: &Config,
    max_idle_per_host: usize,
    secrets_manager: Option<crate::auth::SecretsManager>,
) -> Result<Deliverer, reqwest::Error> {
    let auth = Authenticator::new(
        &config.auth,
        config.request_timeout,
        config.secret_ttl,
        secrets_manager,
    )
    .with_ca_bundle(config.ca_bundle.clone());
    let slots = Slots::new(config.max_concurrency, config.max_concurrency_per_host)
        .with_policies(config.destination_policies.clone())
        .with_host_limit(config.host_state_limit);
    Ok(Deliverer::new(
        config.destinations.clone(),
        config.request_timeout,
        max_idle_per_host,
    )?
    .with_ca_bundle(config.ca_bundle.clone())?
    .with_auth(Arc::new(auth))
    .with_slots(Arc::new(slots))
    .with_idle_sockets(config.host_state_limit)
    .with_snippets(config.state.as_ref().map_or(0, |s| s.snippet_bytes)))
}

/// Builds an SQS client from the standard AWS environment
/// (`AWS_REGION`, `AWS_ENDPOINT_URL[_SQS]`, credentials chain). Credentials
/// are resolved lazily, on the first call.
pub async fn sqs_client_from_env() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config_from_env().await)
}

/// The AWS SDK configuration from the standard environment, for all clients.
pub async fn sdk_config_from_env() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// The Secrets Manager client when `needed` (and compiled in: the
/// `secrets-manager` feature); the AWS configuration is read only then.
pub async fn secrets_manager_from_env(needed: bool) -> Option<crate::auth::SecretsManager> {
    #[cfg(feature = "secrets-manager")]
    if needed {
        return Some(aws_sdk_secretsmanager::Client::new(
            &sdk_config_from_env().await,
        ));
    }
    let _ = needed;
    None
}

/// The SQS client, and the Secrets Manager client when `needed` (and
/// compiled in: the `secrets-manager` feature).
pub async fn clients_from_env(
    secrets_manager_needed: bool,
) -> (aws_sdk_sqs::Client, Option<crate::auth::SecretsManager>) {
    let sdk = sdk_config_from_env().await;
    #[cfg(feature = "secrets-manager")]
    let secrets = secrets_manager_needed.then(|| aws_sdk_secretsmanager::Client::new(&sdk));
    #[cfg(not(feature = "secrets-manager"))]
    let secrets = {
        let _ = secrets_manager_needed;
        None
    };
    (aws_sdk_sqs::Client::new(&sdk), secrets)
}
