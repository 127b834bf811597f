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
    secrets_manager: Option<aws_sdk_secretsmanager::Client>,
) -> Result<Deliverer, reqwest::Error> {
    let auth = Authenticator::new(
        &config.auth,
        config.request_timeout,
        config.secret_ttl,
        secrets_manager,
    );
    let slots = Slots::new(config.max_concurrency, config.max_concurrency_per_host);
    Ok(Deliverer::new(
        config.destinations.clone(),
        config.request_timeout,
        max_idle_per_host,
    )?
    .with_auth(Arc::new(auth))
    .with_slots(Arc::new(slots)))
}
