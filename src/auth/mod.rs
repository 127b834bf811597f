//! Auth profiles (spec §3, §5, §8.3, §8.4, §10): the processor, never the
//! message, holds the credentials a destination wants.
//!
//! `AUTH_PROFILES` names profiles ([`profiles`]); a message picks one with
//! `auth`:
//!
//! * `oauth2-client-credentials`: a bearer token from the profile's token
//!   URL, cached for its lifetime (refreshed a little before `expires_in`,
//!   which is believed up to 12 hours) and shared by every record in flight
//!   and every warm invocation. A 401 that matches the profile's
//!   `expiredToken` rule forces **one** refresh and one immediate retry of
//!   that record.
//! * `header`: a static header, such as an API key.
//! * `aws-sigv4`: an AWS Signature Version 4 with the process's own AWS
//!   credentials (the standard chain, read on first use and cached until
//!   shortly before they expire).
//! * `standard-webhooks`: `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature` from a `whsec_` secret.
//! * any profile may carry `clientCertificate` (PEM certificate and key) for
//!   mutual TLS; a profile may be that alone.
//!
//! Signatures ([`sign`]) are computed on the request as it is sent, after
//! every other header is final, once per request: a retry gets a fresh
//! timestamp and signature.
//!
//! Secrets come from an environment variable (`clientSecretEnv`,
//! `valueEnv`, `secretEnv`, `certEnv`, `keyEnv`; read at start-up, so a
//! missing one stops the function) or from AWS Secrets Manager (the `…Arn`
//! fields, with `jsonKey` to pick a field of a JSON secret), read on first
//! use and kept for at most `SECRET_TTL_SECONDS`.
//!
//! **Rotation.** A Secrets Manager secret is read again at once when the
//! token endpoint refuses the client's credentials (400 `invalid_client`,
//! 401, 403), when a destination answers 401 or 403 to a `header` or
//! `standard-webhooks` profile's request, or when the TLS handshake of a
//! profile with a client certificate fails. If the value changed, the token
//! request (or the destination request) is made once more within the same
//! attempt. Only credentials still refused after that are non-retryable.
//!
//! **One fetch, shared.** Tokens and secrets are fetched by one record at a
//! time; the records that waited share its result, success or failure, so a
//! hanging endpoint costs one timeout, not one per record. Unreachable,
//! slow or failing (5xx, 429, other 4xx) token endpoints are retryable. The
//! processor holds no request slot while a record waits here.
//!
//! Secret values, tokens, keys and the headers carrying them never reach a
//! log, an error text or a DLQ attribute: [`Secret`] has no `Display` and a
//! redacted `Debug`, header values are marked sensitive, and errors name
//! only the profile and the status.
//!
//! Nothing here is loaded before a record needs it: no AWS credentials, no
//! certificate and no client while no message names such a profile.

pub mod profiles;
pub mod sign;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

pub use profiles::{AuthProfiles, ClientAuth};
use profiles::{Kind, ProfileSpec, SecretSource};
use sign::{SigV4, WebhookKey};

/// A secret value: only [`Secret::expose`] shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The Secrets Manager client: the SDK's with the `secrets-manager` feature
/// (part of the default `processor` feature), else a type with no value, so
/// a producer-only build neither compiles the SDK nor reads a secret.
#[cfg(feature = "secrets-manager")]
pub type SecretsManager = aws_sdk_secretsmanager::Client;
#[cfg(not(feature = "secrets-manager"))]
#[derive(Debug, Clone)]
pub enum SecretsManager {}

/// Why no credential could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint or Secrets Manager could not answer: retryable.
    #[error("{0}")]
    Unavailable(String),
    /// The token endpoint refused the credentials: they will not work on
    /// another try.
    #[error("{0}")]
    Rejected(String),
}

/// What authenticates one request under a profile: a header, a signature
/// computed on the request as sent, or nothing beyond the profile's client
/// certificate.
#[derive(Debug, Clone)]
pub struct Credential {
    applied: Applied,
    /// Which token or secret this was made from, to ask for a newer one.
    generation: u64,
    /// The secret it was made from (header and webhook profiles), to tell
    /// whether a re-read brought a new one.
    made_from: Option<Secret>,
    /// From then on the token, secret or AWS credentials it was made from
    /// are due for renewal: a request that waited past it for its slot
    /// asks for the credential again before it is signed (§12.8).
    fresh_until: Option<Instant>,
}

#[derive(Debug, Clone)]
enum Applied {
    /// Marked sensitive.
    Header(HeaderName, HeaderValue),
    /// The current key, and during a rotation the previous one.
    Webhook(WebhookKey, Option<WebhookKey>),
    SigV4 {
        credentials: aws_credential_types::Credentials,
        service: String,
        region: String,
    },
    Nothing,
}

impl Credential {
    /// The secret bytes a request with it carries (a header's value, the
    /// token or key in it, the secret it was made from), to keep out of
    /// anything stored; signatures are not secrets.
    pub fn secrets(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Applied::Header(_, value) = &self.applied {
            let value = value.as_bytes();
            out.push(value.to_vec());
            if let Some(space) = value.iter().position(|b| *b == b' ') {
                out.push(value[space + 1..].to_vec());
            }
        }
        out.extend(
            self.made_from
                .iter()
                .map(|s| s.expose().as_bytes().to_vec()),
        );
        // Longest first, so a value is replaced whole before its parts.
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.retain(|s| s.len() >= MIN_REDACTED);
        out
    }

    /// Is what it was made from due for renewal?
    pub fn is_stale(&self) -> bool {
        self.fresh_until.is_some_and(|t| Instant::now() >= t)
    }

    /// Applies the credential to the request as it will be sent: replaces
    /// the message's header of that name, or signs method, URL, headers and
    /// body at `now`. `id` is the Retry Message `id` (`webhook-id`).
    pub fn apply(
        &self,
        request: &mut reqwest::Request,
        id: &str,
        now: SystemTime,
    ) -> Result<(), String> {
        let mut headers = std::mem::take(request.headers_mut());
        let body = request
            .body()
            .and_then(reqwest::Body::as_bytes)
            .unwrap_or_default();
        let signed = match &self.applied {
            Applied::Header(name, value) => {
                headers.insert(name.clone(), value.clone());
                Ok(())
            }
            Applied::Webhook(key, previous) => {
                key.sign(&mut headers, id, now, body, previous.as_ref())
            }
            Applied::SigV4 {
                credentials,
                service,
                region,
            } => {
                let url = &request.url()[..url::Position::AfterQuery];
                let signer = SigV4 {
                    credentials,
                    service,
                    region,
                };
                signer.sign(request.method().as_str(), url, &mut headers, body, now)
            }
            Applied::Nothing => Ok(()),
        };
        *request.headers_mut() = headers;
        signed
    }
}

/// Secrets shorter than this are not looked for in stored text: replacing
/// every occurrence of a few bytes would mangle it and hide nothing.
const MIN_REDACTED: usize = 4;

/// Replaces every occurrence of `secret` in `text` with `[redacted]`.
pub fn redact(text: &mut Vec<u8>, secret: &[u8]) {
    if secret.is_empty() || text.len() < secret.len() {
        return;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(secret) {
            out.extend_from_slice(b"[redacted]");
            i += secret.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    *text = out;
}

/// What to do after the destination answered a request sent with a
/// credential.
#[derive(Debug)]
pub enum Renewal {
    /// The answer stands.
    Keep,
    /// A newer credential: send the request once more with it.
    Retry(Credential),
    /// The token expired and no new one could be had.
    Failed(AuthError),
}

#[derive(Clone)]
struct Token {
    value: Secret,
    refresh_at: Instant,
    generation: u64,
}

/// A secret as last read, and when it must be read again.
#[derive(Clone)]
struct SecretRead {
    value: Secret,
    /// The version before it (`AWSPREVIOUS`), when asked for, present and
    /// different: during a rotation a webhook is signed with both (§12.8).
    previous: Option<Secret>,
    refresh_at: Instant,
    generation: u64,
}

/// A token is refreshed this long before it expires (or at 90% of its
/// lifetime, if that is sooner), so it does not expire in flight.
const EARLY_REFRESH: Duration = Duration::from_secs(60);
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest lifetime believed, whatever `expires_in` says.
const MAX_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// When Secrets Manager cannot be read at the end of a secret's TTL, the
/// value already held is used this much longer before the next try.
const STALE_SECRET_GRACE: Duration = Duration::from_secs(30);

/// A value fetched by one caller at a time. The callers that waited while a
/// fetch ran share its result, success or failure, instead of each fetching
/// again in turn: a hanging endpoint costs one timeout per wave of callers,
/// not one per caller.
struct Flight<T> {
    slot: tokio::sync::Mutex<(Option<T>, Option<AuthError>)>,
    fetches: AtomicU64,
}

impl<T: Clone> Flight<T> {
    fn new() -> Flight<T> {
        Flight {
            slot: tokio::sync::Mutex::new((None, None)),
            fetches: AtomicU64::new(0),
        }
    }

    /// The held value if `usable`, else the result of one `fetch` (given the
    /// value held, if any).
    async fn get<Fut>(
        &self,
        usable: impl Fn(&T) -> bool,
        fetch: impl FnOnce(Option<T>) -> Fut,
    ) -> Result<T, AuthError>
    where
        Fut: std::future::Future<Output = Result<T, AuthError>>,
    {
        let seen = self.fetches.load(Ordering::Acquire);
        let mut slot = self.slot.lock().await;
        let (held, failure) = &mut *slot;
        if self.fetches.load(Ordering::Acquire) != seen {
            // A fetch finished while this caller waited for it.
            if let Some(e) = failure {
                return Err(e.clone());
            }
        }
        if let Some(v) = held.as_ref().filter(|v| usable(v)) {
            return Ok(v.clone());
        }
        let result = fetch(held.clone()).await;
        self.fetches.fetch_add(1, Ordering::Release);
        match result {
            Ok(v) => {
                *held = Some(v.clone());
                *failure = None;
                Ok(v)
            }
            Err(e) => {
                *failure = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// Applies the profiles: fetches, caches and refreshes credentials. One per
/// process, shared by every batch.
pub struct Authenticator {
    profiles: HashMap<String, Profile>,
    generation: AtomicU64,
    /// The token endpoints' client, built on the first token request so
    /// that start-up does not pay for it.
    http: tokio::sync::OnceCell<reqwest::Client>,
    secrets_manager: Option<SecretsManager>,
    /// The process's AWS credentials and region, loaded for the first
    /// `aws-sigv4` request.
    aws: tokio::sync::OnceCell<AwsChain>,
    aws_credentials: Flight<AwsCredentials>,
    ca_bundle: Option<crate::tls::CaBundle>,
    timeout: Duration,
    secret_ttl: Duration,
}

/// One configured profile and what the process has learned for it.
struct Profile {
    spec: ProfileSpec,
    /// The cached token (OAuth 2 profiles).
    token: Flight<Token>,
    /// The secret as last read (Secrets Manager sources).
    secret: Flight<SecretRead>,
    /// The client certificate and its key, as last read.
    cert: Flight<SecretRead>,
    key: Flight<SecretRead>,
}

/// The standard AWS credentials chain and the process's region.
struct AwsChain {
    provider: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    region: Option<String>,
}

#[derive(Clone)]
struct AwsCredentials {
    credentials: aws_credential_types::Credentials,
    refresh_at: Instant,
}

/// AWS credentials are asked of the chain again this often, or this long
/// before they expire, whichever is sooner.
const AWS_CREDENTIALS_REFRESH: Duration = Duration::from_secs(300);

/// A profile's client certificate as last read: the PEM certificate chain
/// and key, and which reads they were.
#[derive(Clone)]
pub struct CertificateRead {
    cert: Secret,
    key: Secret,
    /// Changes when either is read anew with a different value.
    pub generation: (u64, u64),
}

impl fmt::Debug for CertificateRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRead")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl CertificateRead {
    /// The rustls client identity: the certificate chain, then the key.
    pub fn identity(&self) -> Result<reqwest::Identity, String> {
        identity(&self.cert, &self.key)
    }

    /// Are both texts those of `other`?
    pub fn same_pem(&self, other: &CertificateRead) -> bool {
        self.cert == other.cert && self.key == other.key
    }
}

/// A client identity from PEM texts; the error names the part that is
/// wrong, never its content.
pub(crate) fn identity(cert: &Secret, key: &Secret) -> Result<reqwest::Identity, String> {
    if !cert.expose().contains("-----BEGIN CERTIFICATE-----") {
        return Err("the certificate is not a PEM certificate".into());
    }
    if !key.expose().contains("PRIVATE KEY-----") {
        return Err("the key is not a PEM private key".into());
    }
    let pem = format!("{}\n{}", cert.expose(), key.expose());
    reqwest::Identity::from_pem(pem.as_bytes())
        .map_err(|_| "the certificate or the key cannot be read as PEM".into())
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("profiles", &self.profiles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Makes no network call and builds no client: all of that waits for
    /// the first record that needs it. Secrets Manager values are kept for
    /// at most `secret_ttl`.
    pub fn new(
        profiles: &AuthProfiles,
        timeout: Duration,
        secret_ttl: Duration,
        secrets_manager: Option<SecretsManager>,
    ) -> Authenticator {
        for name in profiles.reaching_any_host() {
            tracing::warn!(
                profile = name,
                "auth profile has no hosts: its credentials may go to any destination ALLOWED_DESTINATIONS allows"
            );
        }
        Authenticator {
            profiles: profiles
                .profiles
                .iter()
                .map(|(name, spec)| {
                    let profile = Profile {
                        spec: spec.clone(),
                        token: Flight::new(),
                        secret: Flight::new(),
                        cert: Flight::new(),
                        key: Flight::new(),
                    };
                    (name.clone(), profile)
                })
                .collect(),
            generation: AtomicU64::new(0),
            http: tokio::sync::OnceCell::new(),
            secrets_manager,
            aws: tokio::sync::OnceCell::new(),
            aws_credentials: Flight::new(),
            ca_bundle: None,
            timeout,
            secret_ttl,
        }
    }

    /// Token endpoints behind a private CA: these roots are trusted too.
    pub fn with_ca_bundle(mut self, bundle: Option<crate::tls::CaBundle>) -> Authenticator {
        self.ca_bundle = bundle;
        self
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Token URLs are the operator's and trusted: their client has no
    /// destination policy.
    async fn token_client(&self) -> Result<&reqwest::Client, AuthError> {
        self.http
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("retryq/", env!("CARGO_PKG_VERSION")))
                    .timeout(self.timeout)
                    .no_proxy()
                    .tls_certs_only(crate::tls::trusted_roots(self.ca_bundle.as_ref()))
                    .build()
                    .map_err(|e| {
                        AuthError::Unavailable(format!("cannot build the token client: {e}"))
                    })
            })
            .await
    }

    /// May `profile`'s credentials go to `url` (§12.8)? `None`: no such
    /// profile.
    pub fn allows(&self, profile: &str, url: &url::Url) -> Option<bool> {
        Some(self.profiles.get(profile)?.spec.hosts.allow(url))
    }

    fn profile(&self, profile: &str) -> Result<&Profile, AuthError> {
        self.profiles.get(profile).ok_or_else(|| {
            AuthError::Rejected(format!("auth profile {profile:?} is not configured"))
        })
    }

    /// What authenticates a request under `profile`.
    pub async fn credential(&self, profile: &str) -> Result<Credential, AuthError> {
        let p = self.profile(profile)?;
        match &p.spec.kind {
            Kind::Header { value, .. } => {
                let secret = self.secret(profile, value, &p.secret, None, false).await?;
                header_credential(profile, &p.spec.kind, &secret)
            }
            Kind::StandardWebhooks { secret } => {
                let secret = self.secret(profile, secret, &p.secret, None, true).await?;
                webhook_credential(profile, &secret)
            }
            Kind::OAuth2 { .. } => self.token(profile, p, None).await,
            Kind::SigV4 { service, region } => {
                self.sigv4(profile, service, region.as_deref()).await
            }
            Kind::CertificateOnly => Ok(Credential {
                applied: Applied::Nothing,
                generation: 0,
                made_from: None,
                fresh_until: None,
            }),
        }
    }

    /// After the destination answered `status` to a request sent with
    /// `sent`: is a newer credential worth one more try?
    ///
    /// * OAuth 2: an answer that matches the profile's `expiredToken` rule
    ///   gets a new token.
    /// * Header and Standard Webhooks profiles with a Secrets Manager
    ///   secret: a 401 or 403 re-reads the secret (it may have been
    ///   rotated); a new value gets one more try, the same value lets the
    ///   answer stand.
    pub async fn renew(
        &self,
        profile: &str,
        sent: &Credential,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Renewal {
        let Ok(p) = self.profile(profile) else {
            return Renewal::Keep;
        };
        let rotated = match &p.spec.kind {
            Kind::OAuth2 { .. } if self.says_expired(profile, status, headers, body) => {
                tracing::debug!(profile, "token expired: refreshing and retrying once");
                return match self.token(profile, p, Some(sent.generation)).await {
                    Ok(c) => Renewal::Retry(c),
                    Err(e) => Renewal::Failed(e),
                };
            }
            Kind::Header { value: source, .. } | Kind::StandardWebhooks { secret: source }
                if matches!(source, SecretSource::SecretsManager { .. })
                    && matches!(status, 401 | 403) =>
            {
                source
            }
            _ => return Renewal::Keep,
        };
        match self
            .secret(
                profile,
                rotated,
                &p.secret,
                Some(sent.generation),
                matches!(p.spec.kind, Kind::StandardWebhooks { .. }),
            )
            .await
        {
            Ok(s) if sent.made_from.as_ref() != Some(&s.value) => {
                tracing::info!(
                    profile,
                    status,
                    "secret re-read after a refusal: a new value, trying once more"
                );
                let renewed = match &p.spec.kind {
                    Kind::StandardWebhooks { .. } => webhook_credential(profile, &s),
                    kind => header_credential(profile, kind, &s),
                };
                renewed.map_or(Renewal::Keep, Renewal::Retry)
            }
            _ => Renewal::Keep,
        }
    }

    /// Does the profile present a client certificate?
    pub fn has_client_certificate(&self, profile: &str) -> bool {
        self.profiles
            .get(profile)
            .is_some_and(|p| p.spec.client_certificate.is_some())
    }

    /// The profile's client certificate, if it has one: as held, or read
    /// anew when its TTL ran out, or when `stale` names the reads of a
    /// certificate the server's TLS handshake refused.
    pub async fn client_certificate(
        &self,
        profile: &str,
        stale: Option<(u64, u64)>,
    ) -> Result<Option<CertificateRead>, AuthError> {
        let p = self.profile(profile)?;
        let Some(c) = &p.spec.client_certificate else {
            return Ok(None);
        };
        let cert = self
            .secret(profile, &c.cert, &p.cert, stale.map(|s| s.0), false)
            .await?;
        let key = self
            .secret(profile, &c.key, &p.key, stale.map(|s| s.1), false)
            .await?;
        Ok(Some(CertificateRead {
            generation: (cert.generation, key.generation),
            cert: cert.value,
            key: key.value,
        }))
    }

    /// A SigV4 credential: the process's AWS credentials from the standard
    /// chain, asked for on first use and kept until shortly before they
    /// expire.
    async fn sigv4(
        &self,
        profile: &str,
        service: &str,
        region: Option<&str>,
    ) -> Result<Credential, AuthError> {
        let chain = self
            .aws
            .get_or_init(|| async {
                let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                AwsChain {
                    provider: sdk.credentials_provider(),
                    region: sdk.region().map(|r| r.to_string()),
                }
            })
            .await;
        let region = region
            .map(str::to_owned)
            .or_else(|| chain.region.clone())
            .ok_or_else(|| {
                AuthError::Rejected(format!(
                    "profile {profile:?} names no region and AWS_REGION is not set"
                ))
            })?;
        let provider = chain.provider.as_ref().ok_or_else(|| {
            AuthError::Rejected(format!("profile {profile:?}: no AWS credentials chain"))
        })?;
        let usable = |c: &AwsCredentials| Instant::now() < c.refresh_at;
        let held = self
            .aws_credentials
            .get(usable, |_| async {
                use aws_credential_types::provider::ProvideCredentials;
                let credentials =
                    tokio::time::timeout(self.timeout, provider.provide_credentials())
                        .await
                        .map_err(|_| {
                            AuthError::Unavailable(format!(
                                "AWS credentials timed out for profile {profile:?}"
                            ))
                        })?
                        .map_err(|_| {
                            AuthError::Unavailable(format!(
                                "no AWS credentials for profile {profile:?}"
                            ))
                        })?;
                let until_expiry = credentials
                    .expiry()
                    .and_then(|e| e.duration_since(SystemTime::now()).ok())
                    .map_or(AWS_CREDENTIALS_REFRESH * 2, |d| d);
                let refresh_in = until_expiry
                    .saturating_sub(AWS_CREDENTIALS_REFRESH)
                    .min(AWS_CREDENTIALS_REFRESH);
                Ok(AwsCredentials {
                    credentials,
                    refresh_at: crate::clock::later(refresh_in),
                })
            })
            .await?;
        Ok(Credential {
            applied: Applied::SigV4 {
                credentials: held.credentials,
                service: service.to_owned(),
                region,
            },
            generation: 0,
            made_from: None,
            fresh_until: Some(held.refresh_at),
        })
    }

    /// Does this answer say the profile's token expired? (Only OAuth 2
    /// profiles have tokens that expire.)
    pub fn says_expired(
        &self,
        profile: &str,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> bool {
        match self.profiles.get(profile).map(|p| &p.spec.kind) {
            Some(Kind::OAuth2 { expired, .. }) => expired.matches(status, headers, body),
            _ => false,
        }
    }

    /// Whether a 401 body must be read to apply the profile's rule.
    pub fn needs_body(&self, profile: &str) -> bool {
        matches!(self.profiles.get(profile).map(|p| &p.spec.kind), Some(Kind::OAuth2 { expired, .. }) if expired.body_contains.is_some())
    }

    /// The profile's token: the cached one unless it is due for refresh or
    /// is the `stale` one the destination refused.
    async fn token(
        &self,
        profile: &str,
        p: &Profile,
        stale: Option<u64>,
    ) -> Result<Credential, AuthError> {
        let usable = |t: &Token| Instant::now() < t.refresh_at && stale != Some(t.generation);
        let token = p
            .token
            .get(usable, |_| self.fetch_token(profile, p))
            .await?;
        Ok(Credential {
            applied: Applied::Header(
                http::header::AUTHORIZATION,
                sensitive(&format!("Bearer {}", token.value.expose()), profile)?,
            ),
            generation: token.generation,
            made_from: None,
            fresh_until: Some(token.refresh_at),
        })
    }

    /// A token from the endpoint. When the endpoint rejects the client's
    /// credentials and the secret comes from Secrets Manager, the secret is
    /// read again and, if it changed, tried once more: a rotation is not a
    /// reason to dead-letter.
    async fn fetch_token(&self, profile: &str, p: &Profile) -> Result<Token, AuthError> {
        let Kind::OAuth2 { secret: source, .. } = &p.spec.kind else {
            unreachable!("only OAuth 2 profiles have tokens")
        };
        let secret = self.secret(profile, source, &p.secret, None, false).await?;
        match self
            .request_token(profile, &p.spec.kind, &secret.value)
            .await
        {
            Err(TokenError::Rejected(status)) => {
                let fresh = match source {
                    SecretSource::SecretsManager { .. } => {
                        self.secret(profile, source, &p.secret, Some(secret.generation), false)
                            .await?
                    }
                    SecretSource::Value(_) => return Err(rejected(profile, status)),
                };
                if fresh.value == secret.value {
                    return Err(rejected(profile, status));
                }
                tracing::info!(
                    profile,
                    status,
                    "token endpoint refused the client secret; re-read it and trying once more"
                );
                self.request_token(profile, &p.spec.kind, &fresh.value)
                    .await
                    .map_err(|e| e.into_auth(profile))
            }
            other => other.map_err(|e| e.into_auth(profile)),
        }
    }

    /// One token request.
    async fn request_token(
        &self,
        profile: &str,
        spec: &Kind,
        client_secret: &Secret,
    ) -> Result<Token, TokenError> {
        let Kind::OAuth2 {
            token_url,
            client_id,
            scope,
            audience,
            client_auth,
            ..
        } = spec
        else {
            unreachable!("only OAuth 2 profiles have tokens")
        };
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend(scope.as_deref().map(|s| ("scope", s)));
        form.extend(audience.as_deref().map(|a| ("audience", a)));
        let mut request = self
            .token_client()
            .await
            .map_err(TokenError::Auth)?
            .post(token_url.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        match client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: both parts form-encoded, then Basic.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", enc(client_id), enc(client_secret.expose()));
                let basic = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                let value = sensitive(&basic, profile).map_err(TokenError::Auth)?;
                request = request.header(http::header::AUTHORIZATION, value);
            }
            ClientAuth::Form => {
                form.push(("client_id", client_id));
                form.push(("client_secret", client_secret.expose()));
            }
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = request.body(body).send().await.map_err(|e| {
            TokenError::Unavailable(format!("unreachable ({})", transport_kind(&e)))
        })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| {
            TokenError::Unavailable(format!("failed mid-answer ({})", transport_kind(&e)))
        })?;
        let (value, lifetime) = token_answer(status, &body)?;
        tracing::debug!(profile, lifetime_s = lifetime.as_secs(), "fetched a token");
        Ok(Token {
            value,
            refresh_at: crate::clock::later(
                lifetime.saturating_sub(EARLY_REFRESH.min(lifetime / 10)),
            ),
            generation: self.next_generation(),
        })
    }

    /// One of the profile's secrets, held in `held`. Environment values
    /// never change; a Secrets Manager value is read again after
    /// `SECRET_TTL_SECONDS`, or at once when `stale` names the read that was
    /// refused (one reader at a time; the others share what it read).
    async fn secret(
        &self,
        profile: &str,
        source: &SecretSource,
        held: &Flight<SecretRead>,
        stale: Option<u64>,
        with_previous: bool,
    ) -> Result<SecretRead, AuthError> {
        let (arn, json_key) = match source {
            SecretSource::Value(s) => {
                return Ok(SecretRead {
                    value: s.clone(),
                    previous: None,
                    refresh_at: crate::clock::later(MAX_LIFETIME),
                    generation: 0,
                })
            }
            SecretSource::SecretsManager { arn, json_key } => (arn, json_key.as_deref()),
        };
        let usable = |s: &SecretRead| Instant::now() < s.refresh_at && stale != Some(s.generation);
        held
            .get(usable, |held| async move {
                match self.fetch_secret(profile, arn, json_key, None).await {
                    Ok(value) => Ok(SecretRead {
                        previous: match with_previous {
                            true => self.previous_secret(profile, arn, json_key, &value).await,
                            false => None,
                        },
                        value,
                        refresh_at: crate::clock::later(self.secret_ttl),
                        generation: self.next_generation(),
                    }),
                    // At the end of its TTL, a value that worked is better
                    // than none while Secrets Manager is unavailable.
                    Err(AuthError::Unavailable(e)) if stale.is_none() && held.is_some() => {
                        tracing::warn!(profile, error = %e, "could not re-read the secret; using the one held");
                        let mut held = held.expect("checked");
                        held.refresh_at = crate::clock::later(STALE_SECRET_GRACE);
                        Ok(held)
                    }
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// The secret's `AWSPREVIOUS` version, if it has one that differs from
    /// `current`. Not having one is the usual case, and a failure to read
    /// it only means that one signature is sent.
    async fn previous_secret(
        &self,
        profile: &str,
        arn: &str,
        json_key: Option<&str>,
        current: &Secret,
    ) -> Option<Secret> {
        match self
            .fetch_secret(profile, arn, json_key, Some("AWSPREVIOUS"))
            .await
        {
            Ok(previous) => (previous != *current).then_some(previous),
            Err(e) => {
                tracing::debug!(profile, error = %e, "no previous version of the secret");
                None
            }
        }
    }

    /// The secret's value at `stage` (`AWSCURRENT` when `None`).
    async fn fetch_secret(
        &self,
        profile: &str,
        arn: &str,
        json_key: Option<&str>,
        stage: Option<&'static str>,
    ) -> Result<Secret, AuthError> {
        let client = self.secrets_manager.as_ref().ok_or_else(|| {
            AuthError::Unavailable(format!(
                "profile {profile:?} needs Secrets Manager, which is not set up"
            ))
        })?;
        let text = read_secret_string(client, (arn, stage), self.timeout, profile).await?;
        let text = text.as_str();
        match json_key {
            None => Ok(Secret::new(text)),
            Some(key) => serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get(key).and_then(|s| s.as_str()).map(Secret::new))
                .ok_or_else(|| {
                    AuthError::Rejected(format!(
                        "the secret of profile {profile:?} has no string field {key:?}"
                    ))
                }),
        }
    }
}

/// A secret's string from Secrets Manager, within `timeout`.
#[cfg(feature = "secrets-manager")]
async fn read_secret_string(
    client: &SecretsManager,
    (arn, stage): (&str, Option<&'static str>),
    timeout: Duration,
    profile: &str,
) -> Result<String, AuthError> {
    use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
    let read = client
        .get_secret_value()
        .secret_id(arn)
        .set_version_stage(stage.map(str::to_owned));
    let answer = tokio::time::timeout(timeout, read.send())
        .await
        .map_err(|_| {
            AuthError::Unavailable(format!("Secrets Manager timed out for profile {profile:?}"))
        })?
        .map_err(|e| {
            AuthError::Unavailable(format!(
                "Secrets Manager failed for profile {profile:?}: {}",
                e.code().unwrap_or("no answer")
            ))
        })?;
    answer.secret_string().map(str::to_owned).ok_or_else(|| {
        AuthError::Rejected(format!("the secret of profile {profile:?} is not a string"))
    })
}

#[cfg(not(feature = "secrets-manager"))]
async fn read_secret_string(
    client: &SecretsManager,
    _: (&str, Option<&'static str>),
    _: Duration,
    _: &str,
) -> Result<String, AuthError> {
    match *client {}
}

/// Why one token request failed.
enum TokenError {
    /// The endpoint refused the client's credentials (this status).
    Rejected(u16),
    /// No usable answer: worth another attempt later.
    Unavailable(String),
    Auth(AuthError),
}

impl TokenError {
    fn into_auth(self, profile: &str) -> AuthError {
        match self {
            TokenError::Rejected(status) => rejected(profile, status),
            TokenError::Unavailable(what) => {
                AuthError::Unavailable(format!("token endpoint of profile {profile:?} {what}"))
            }
            TokenError::Auth(e) => e,
        }
    }
}

fn rejected(profile: &str, status: u16) -> AuthError {
    AuthError::Rejected(format!(
        "token endpoint of profile {profile:?} rejected the credentials (HTTP {status})"
    ))
}

/// The token and its lifetime (believed up to [`MAX_LIFETIME`]) from the
/// token endpoint's answer; a refusal of the credentials, or why there is no
/// usable token.
fn token_answer(status: u16, body: &[u8]) -> Result<(Secret, Duration), TokenError> {
    if credentials_refused(status, body) {
        return Err(TokenError::Rejected(status));
    }
    if !(200..300).contains(&status) {
        return Err(TokenError::Unavailable(format!("answered HTTP {status}")));
    }
    #[derive(Deserialize)]
    struct TokenAnswer {
        access_token: String,
        expires_in: Option<serde_json::Value>,
    }
    let answer: TokenAnswer = serde_json::from_slice(body)
        .map_err(|_| TokenError::Unavailable("answered without an access_token".into()))?;
    let lifetime = answer
        .expires_in
        .as_ref()
        .map_or(DEFAULT_LIFETIME, lifetime_of);
    Ok((Secret::new(answer.access_token), lifetime))
}

/// A token's lifetime from `expires_in` (§12.8): a JSON integer, a fraction
/// or exponent, or a string of digits (as some identity providers send),
/// clamped to [`MAX_LIFETIME`] (§8.6). Anything else (negative, not a
/// number, another string) means [`DEFAULT_LIFETIME`].
fn lifetime_of(expires_in: &serde_json::Value) -> Duration {
    let seconds = match expires_in {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            // Digits only: too many of them is a long lifetime, clamped.
            Some(s.parse::<f64>().unwrap_or(f64::MAX))
        }
        _ => None,
    };
    match seconds {
        Some(s) if s.is_finite() && s >= 0.0 => {
            Duration::from_secs_f64(s.min(MAX_LIFETIME.as_secs_f64()))
        }
        Some(s) if s == f64::INFINITY => MAX_LIFETIME,
        _ => DEFAULT_LIFETIME,
    }
}

/// Did the token endpoint refuse the client's credentials (RFC 6749 §5.2:
/// `invalid_client`, or a plain 401 or 403)? Other refusals, such as an
/// unknown scope, are the endpoint's to fix and are retried.
fn credentials_refused(status: u16, body: &[u8]) -> bool {
    match status {
        401 | 403 => true,
        400 => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(|e| e == "invalid_client"))
            .unwrap_or(false),
        _ => false,
    }
}

/// A header profile's credential from its secret (after the profile's
/// `prefix`, if any).
fn header_credential(
    profile: &str,
    kind: &Kind,
    secret: &SecretRead,
) -> Result<Credential, AuthError> {
    let Kind::Header { name, prefix, .. } = kind else {
        return Err(AuthError::Rejected(format!(
            "profile {profile:?} is not a header profile"
        )));
    };
    let text = format!(
        "{}{}",
        prefix.as_deref().unwrap_or(""),
        secret.value.expose()
    );
    Ok(Credential {
        applied: Applied::Header(name.clone(), sensitive(&text, profile)?),
        generation: secret.generation,
        made_from: Some(secret.value.clone()),
        fresh_until: Some(secret.refresh_at),
    })
}

/// A Standard Webhooks profile's credential from its `whsec_` secret.
/// During a rotation, the previous version's key too (if it parses): the
/// request then carries a signature for each.
fn webhook_credential(profile: &str, secret: &SecretRead) -> Result<Credential, AuthError> {
    let key = WebhookKey::parse(&secret.value)
        .map_err(|e| AuthError::Rejected(format!("the secret of profile {profile:?} is {e}")))?;
    let previous = secret
        .previous
        .as_ref()
        .and_then(|p| WebhookKey::parse(p).ok());
    Ok(Credential {
        applied: Applied::Webhook(key, previous),
        generation: secret.generation,
        made_from: Some(secret.value.clone()),
        fresh_until: Some(secret.refresh_at),
    })
}

fn sensitive(text: &str, profile: &str) -> Result<HeaderValue, AuthError> {
    let mut v = HeaderValue::from_str(text).map_err(|_| {
        AuthError::Rejected(format!(
            "the credential of profile {profile:?} is not a valid header value"
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "no answer"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PARTNER_X_SECRET" => Some("s3cr3t".into()),
            "PARTNER_Y_KEY" => Some("k3y".into()),
            "HOOK_SECRET" => Some("whsec_c2VjcmV0LWtleQ==".into()),
            "NOT_PEM" => Some("k3y-not-pem".into()),
            _ => None,
        }
    }

    const CONTRACT_EXAMPLE: &str = r#"{
      "partner-x": { "type": "oauth2-client-credentials", "tokenUrl": "https://auth.partner.example.com/oauth/token",
                     "clientId": "retryq", "clientSecretEnv": "PARTNER_X_SECRET", "scope": "orders:write",
                     "expiredToken": { "status": 401, "bodyContains": "token_expired" } },
      "partner-y": { "type": "header", "name": "x-api-key", "valueEnv": "PARTNER_Y_KEY" }
    }"#;

    #[test]
    fn the_contract_example_parses() {
        let p = AuthProfiles::parse(CONTRACT_EXAMPLE, env).unwrap();
        assert!(p.contains("partner-x") && p.contains("partner-y"));
        assert!(!p.uses_secrets_manager());
    }

    #[test]
    fn bad_profiles_are_named_without_their_secrets() {
        let cases = [
            ("[]", "JSON object"),
            (r#"{"a": {"type": "kerberos"}}"#, "\"a\""),
            (
                r#"{"a": {"type": "header", "name": "x-k", "valueEnv": "MISSING"}}"#,
                "MISSING is not set",
            ),
            (
                r#"{"a": {"type": "header", "name": "bad name", "valueEnv": "PARTNER_Y_KEY"}}"#,
                "name",
            ),
            // The secret itself pasted where its variable's name belongs.
            (
                r#"{"a": {"type": "header", "name": "x-k", "valueEnv": "sk_live s3cr3t/value"}}"#,
                "not a variable name",
            ),
            (
                r#"{"a": {"type": "header", "name": "x", "valueEnv": "PARTNER_Y_KEY", "valueArn": "arn:x"}}"#,
                "exactly one",
            ),
            (
                r#"{"a": {"type": "oauth2-client-credentials", "tokenUrl": "ftp://x", "clientId": "c", "clientSecretEnv": "PARTNER_X_SECRET"}}"#,
                "tokenUrl",
            ),
            (
                r#"{"a": {"type": "oauth2-client-credentials", "tokenUrl": "https://x", "clientSecretEnv": "PARTNER_X_SECRET"}}"#,
                "clientId",
            ),
            (
                r#"{"a": {"type": "header", "name": "x", "valueEnv": "PARTNER_Y_KEY", "typo": 1}}"#,
                "typo",
            ),
        ];
        for (json, says) in cases {
            let err = AuthProfiles::parse(json, env).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
            assert!(!err.contains("s3cr3t") && !err.contains("k3y"));
        }
    }

    const SECTION_10_EXAMPLES: &str = r#"{
      "gateway": {"type": "aws-sigv4", "service": "execute-api", "region": "us-east-1"},
      "function-url": {"type": "aws-sigv4", "service": "lambda"},
      "hooks": {"type": "standard-webhooks", "secretEnv": "HOOK_SECRET"},
      "hooks-sm": {"type": "standard-webhooks", "secretArn": "arn:aws:secretsmanager:us-east-1:1:secret:h"},
      "mtls": {"clientCertificate": {"certArn": "arn:c", "keyArn": "arn:k"}},
      "mtls-key": {"type": "header", "name": "x-api-key", "valueEnv": "PARTNER_Y_KEY",
                   "clientCertificate": {"certArn": "arn:c", "keyArn": "arn:k"}}
    }"#;

    #[test]
    fn the_new_profile_types_parse() {
        let p = AuthProfiles::parse(SECTION_10_EXAMPLES, env).unwrap();
        assert!(p.uses_secrets_manager());
        assert!(matches!(
            p.profiles["function-url"].kind,
            Kind::SigV4 { region: None, .. }
        ));
        assert!(matches!(p.profiles["mtls"].kind, Kind::CertificateOnly));
        assert!(p.profiles["mtls-key"].client_certificate.is_some());
        let only_cert =
            r#"{"m": {"clientCertificate": {"certArn": "arn:c", "keyEnv": "PARTNER_Y_KEY"}}}"#;
        assert!(
            AuthProfiles::parse(only_cert, env)
                .unwrap()
                .uses_secrets_manager(),
            "a certificate from Secrets Manager needs the client"
        );
    }

    #[test]
    fn bad_section_10_profiles_name_the_field_never_the_value() {
        let cases = [
            (r#"{"a": {"type": "aws-sigv4"}}"#, "service"),
            (r#"{"a": {"type": "aws-sigv4", "service": ""}}"#, "service"),
            (
                r#"{"a": {"type": "aws-sigv4", "service": "s", "region": " "}}"#,
                "region",
            ),
            (
                r#"{"a": {"type": "standard-webhooks"}}"#,
                "secretEnv and secretArn",
            ),
            (
                r#"{"a": {"type": "standard-webhooks", "secretEnv": "NOT_PEM"}}"#,
                "whsec_",
            ),
            (
                r#"{"a": {"clientCertificate": {"certEnv": "NOT_PEM"}}}"#,
                "clientCertificate.keyEnv and clientCertificate.keyArn",
            ),
            (
                r#"{"a": {"clientCertificate": {"certEnv": "NOT_PEM", "keyEnv": "NOT_PEM"}}}"#,
                "not a PEM certificate",
            ),
            (
                r#"{"a": {"clientCertificate": {"certArn": "c", "keyArn": "k", "pem": 1}}}"#,
                "pem",
            ),
            (r#"{"a": {"clientCertificate": 3}}"#, "clientCertificate"),
        ];
        for (json, says) in cases {
            let err = AuthProfiles::parse(json, env).unwrap_err();
            assert!(err.contains(says) && err.contains("\"a\""), "{json}: {err}");
            assert!(!err.contains("k3y-not-pem"), "{err}");
        }
    }

    #[test]
    fn redact_replaces_every_occurrence_and_nothing_else() {
        let mut t = b"bad key sk_live_1 (sk_live_1)".to_vec();
        redact(&mut t, b"sk_live_1");
        assert_eq!(t, b"bad key [redacted] ([redacted])");
        let mut short = b"ab".to_vec();
        redact(&mut short, b"abc");
        assert_eq!(short, b"ab");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let p = AuthProfiles::parse(CONTRACT_EXAMPLE, env).unwrap();
        let debug = format!("{p:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("k3y"),
            "{debug}"
        );
    }

    #[test]
    fn the_default_expired_rule_reads_the_header_or_the_body() {
        let rule = profiles::ExpiredTokenRule::default();
        let mut h = HeaderMap::new();
        assert!(!rule.matches(401, &h, b"nope"));
        assert!(rule.matches(401, &h, b"{\"error\":\"token expired\"}"));
        assert!(!rule.matches(403, &h, b"expired"), "only the rule's status");
        h.insert(
            "www-authenticate",
            "Bearer error=\"invalid_token\", error_description=\"x\""
                .parse()
                .unwrap(),
        );
        assert!(rule.matches(401, &h, b""));
    }

    #[test]
    fn a_custom_rule_replaces_the_default() {
        let p = AuthProfiles::parse(CONTRACT_EXAMPLE, env).unwrap();
        let Kind::OAuth2 { expired, .. } = &p.profiles["partner-x"].kind else {
            panic!("partner-x is an OAuth 2 profile")
        };
        let h = HeaderMap::new();
        assert!(expired.matches(401, &h, b"{\"code\":\"token_expired\"}"));
        assert!(
            !expired.matches(401, &h, b"expired"),
            "the default body rule no longer applies"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_expires_in_is_bounded_and_never_panics(n in proptest::num::f64::ANY, text in ".{0,40}") {
            for value in [serde_json::json!(n), serde_json::json!(text), serde_json::json!(n.to_string())] {
                proptest::prop_assert!(lifetime_of(&value) <= MAX_LIFETIME);
            }
        }
    }

    #[test]
    fn token_answers_are_read_and_their_lifetime_bounded() {
        let ok = |body: &str| {
            token_answer(200, body.as_bytes())
                .ok()
                .map(|(t, l)| (t.expose().to_owned(), l))
        };
        assert_eq!(
            ok(r#"{"access_token":"t","expires_in":3600}"#),
            Some(("t".into(), Duration::from_secs(3600)))
        );
        assert_eq!(ok(r#"{"access_token":"t"}"#).unwrap().1, DEFAULT_LIFETIME);
        assert_eq!(
            ok(r#"{"access_token":"t","expires_in":18446744073709551615}"#)
                .unwrap()
                .1,
            MAX_LIFETIME
        );
        assert_eq!(ok(r#"{"expires_in":1}"#), None);
        // §12.8: a string of digits, a fraction, an exponent; each clamped.
        let lifetime = |e: &str| {
            ok(&format!(r#"{{"access_token":"t","expires_in":{e}}}"#))
                .unwrap()
                .1
        };
        assert_eq!(lifetime(r#""3599""#), Duration::from_secs(3599));
        assert_eq!(lifetime("3599.5"), Duration::from_secs_f64(3599.5));
        assert_eq!(lifetime("3.6e3"), Duration::from_secs(3600));
        assert_eq!(lifetime("1e30"), MAX_LIFETIME);
        assert_eq!(lifetime(r#""99999999999999999999999999""#), MAX_LIFETIME);
        for other in ["-5", r#""3599s""#, r#""""#, r#""-1""#, "null", "true", "[]"] {
            assert_eq!(lifetime(other), DEFAULT_LIFETIME, "{other}");
        }
        assert!(matches!(
            token_answer(401, b""),
            Err(TokenError::Rejected(401))
        ));
        assert!(matches!(
            token_answer(503, b""),
            Err(TokenError::Unavailable(_))
        ));
    }

    #[test]
    fn only_invalid_client_401_and_403_refuse_the_credentials() {
        assert!(credentials_refused(401, b""));
        assert!(credentials_refused(403, b"nope"));
        assert!(credentials_refused(400, br#"{"error":"invalid_client"}"#));
        assert!(!credentials_refused(400, br#"{"error":"invalid_scope"}"#));
        assert!(!credentials_refused(400, b"invalid_client but not JSON"));
        assert!(!credentials_refused(500, b""));
        assert!(!credentials_refused(429, b""));
    }
}
