//! Auth profiles (spec §3, §5, §8.3, §8.4): the processor, never the
//! message, holds the credentials a destination wants.
//!
//! `AUTH_PROFILES` names profiles; a message picks one with `auth`:
//!
//! * `oauth2-client-credentials`: a bearer token from the profile's token
//!   URL, cached for its lifetime (refreshed a little before `expires_in`,
//!   which is believed up to 12 hours) and shared by every record in flight
//!   and every warm invocation. A 401 that matches the profile's
//!   `expiredToken` rule forces **one** refresh and one immediate retry of
//!   that record.
//! * `header`: a static header, such as an API key.
//!
//! Secrets come from an environment variable (`clientSecretEnv`,
//! `valueEnv`; read at start-up, so a missing one stops the function) or
//! from AWS Secrets Manager (`clientSecretArn`, `valueArn`, with `jsonKey`
//! to pick a field of a JSON secret), read on first use and kept for at most
//! `SECRET_TTL_SECONDS`.
//!
//! **Rotation.** A Secrets Manager secret is read again at once when the
//! token endpoint refuses the client's credentials (400 `invalid_client`,
//! 401, 403), or when a destination answers 401 or 403 to a `header`
//! profile's request. If the value changed, the token request (or the
//! destination request) is made once more within the same attempt. Only
//! credentials still refused after that are non-retryable.
//!
//! **One fetch, shared.** Tokens and secrets are fetched by one record at a
//! time; the records that waited share its result, success or failure, so a
//! hanging endpoint costs one timeout, not one per record. Unreachable,
//! slow or failing (5xx, 429, other 4xx) token endpoints are retryable. The
//! processor holds no request slot while a record waits here.
//!
//! Secret values, tokens and the headers carrying them never reach a log,
//! an error text or a DLQ attribute: [`Secret`] has no `Display` and a
//! redacted `Debug`, header values are marked sensitive, and errors name
//! only the profile and the status.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use url::Url;

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

/// `AUTH_PROFILES`, parsed and checked at start-up.
#[derive(Debug, Clone, Default)]
pub struct AuthProfiles {
    profiles: HashMap<String, ProfileSpec>,
}

#[derive(Debug, Clone)]
enum ProfileSpec {
    OAuth2 {
        token_url: Url,
        client_id: String,
        secret: SecretSource,
        scope: Option<String>,
        audience: Option<String>,
        client_auth: ClientAuth,
        expired: ExpiredTokenRule,
    },
    Header {
        name: HeaderName,
        value: SecretSource,
        prefix: Option<String>,
    },
}

#[derive(Debug, Clone)]
enum SecretSource {
    /// Read from the environment at start-up.
    Value(Secret),
    /// Fetched from Secrets Manager on first use.
    SecretsManager {
        arn: String,
        json_key: Option<String>,
    },
}

/// How the client secret reaches the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`), the OAuth 2 default.
    #[default]
    Basic,
    /// In the form body (`client_secret_post`).
    Form,
}

/// When a 401 means "your token expired".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredTokenRule {
    pub status: u16,
    /// The answer's body contains this.
    pub body_contains: Option<String>,
    /// The `WWW-Authenticate` header contains this.
    pub header_contains: Option<String>,
}

impl Default for ExpiredTokenRule {
    /// Spec §5: `WWW-Authenticate` with `error="invalid_token"`, or a
    /// body containing `expired`.
    fn default() -> ExpiredTokenRule {
        ExpiredTokenRule {
            status: 401,
            body_contains: Some("expired".into()),
            header_contains: Some("error=\"invalid_token\"".into()),
        }
    }
}

impl ExpiredTokenRule {
    /// Does this answer say the token expired? Either condition suffices.
    pub fn matches(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> bool {
        if status != self.status {
            return false;
        }
        let in_header = self.header_contains.as_deref().is_some_and(|needle| {
            headers
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(needle))
        });
        let in_body = self
            .body_contains
            .as_deref()
            .is_some_and(|needle| String::from_utf8_lossy(body).contains(needle));
        in_header || in_body
    }
}

/// The JSON shape of one profile.
#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum ProfileJson {
    #[serde(rename = "oauth2-client-credentials", rename_all = "camelCase")]
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret_env: Option<String>,
        client_secret_arn: Option<String>,
        json_key: Option<String>,
        scope: Option<String>,
        audience: Option<String>,
        #[serde(default)]
        client_auth: ClientAuth,
        expired_token: Option<ExpiredTokenJson>,
    },
    #[serde(rename = "header", rename_all = "camelCase")]
    Header {
        name: String,
        value_env: Option<String>,
        value_arn: Option<String>,
        json_key: Option<String>,
        prefix: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExpiredTokenJson {
    status: Option<u16>,
    body_contains: Option<String>,
    header_contains: Option<String>,
}

impl AuthProfiles {
    /// Parses `AUTH_PROFILES`; `env` reads the variables that hold secrets.
    /// The error names the profile and the field, never a secret.
    pub fn parse(json: &str, env: impl Fn(&str) -> Option<String>) -> Result<AuthProfiles, String> {
        let raw: HashMap<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| format!("not a JSON object of profiles ({e})"))?;
        let mut profiles = HashMap::new();
        for (name, value) in raw {
            let spec: ProfileJson =
                serde_json::from_value(value).map_err(|e| format!("profile {name:?}: {e}"))?;
            let source = |env_var: Option<String>,
                          arn: Option<String>,
                          json_key: Option<String>,
                          what: &str| {
                match (env_var, arn) {
                    (Some(var), None) => env(&var)
                        .filter(|v| !v.is_empty())
                        .map(|v| SecretSource::Value(Secret::new(v)))
                        .ok_or_else(|| format!("profile {name:?}: {what}Env {var} is not set")),
                    (None, Some(arn)) => Ok(SecretSource::SecretsManager { arn, json_key }),
                    _ => Err(format!(
                        "profile {name:?}: exactly one of {what}Env and {what}Arn is needed"
                    )),
                }
            };
            let spec = match spec {
                ProfileJson::OAuth2 {
                    token_url,
                    client_id,
                    client_secret_env,
                    client_secret_arn,
                    json_key,
                    scope,
                    audience,
                    client_auth,
                    expired_token,
                } => {
                    let token_url = Url::parse(&token_url)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https"))
                        .ok_or_else(|| {
                            format!("profile {name:?}: tokenUrl is not an http(s) URL")
                        })?;
                    let expired = match expired_token {
                        None => ExpiredTokenRule::default(),
                        Some(e) => ExpiredTokenRule {
                            status: e.status.unwrap_or(401),
                            body_contains: e.body_contains,
                            header_contains: e.header_contains,
                        },
                    };
                    ProfileSpec::OAuth2 {
                        token_url,
                        client_id,
                        secret: source(
                            client_secret_env,
                            client_secret_arn,
                            json_key,
                            "clientSecret",
                        )?,
                        scope,
                        audience,
                        client_auth,
                        expired,
                    }
                }
                ProfileJson::Header {
                    name: header,
                    value_env,
                    value_arn,
                    json_key,
                    prefix,
                } => ProfileSpec::Header {
                    name: HeaderName::from_bytes(header.as_bytes())
                        .map_err(|_| format!("profile {name:?}: name is not a header name"))?,
                    value: source(value_env, value_arn, json_key, "value")?,
                    prefix,
                },
            };
            profiles.insert(name, spec);
        }
        Ok(AuthProfiles { profiles })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.profiles.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Does any profile read Secrets Manager?
    pub fn uses_secrets_manager(&self) -> bool {
        self.profiles.values().any(|p| {
            let source = match p {
                ProfileSpec::OAuth2 { secret, .. } => secret,
                ProfileSpec::Header { value, .. } => value,
            };
            matches!(source, SecretSource::SecretsManager { .. })
        })
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

/// The header that authenticates a request.
#[derive(Debug, Clone)]
pub struct Credential {
    pub name: HeaderName,
    /// Marked sensitive.
    pub value: HeaderValue,
    /// Which token or secret this was made from, to ask for a newer one.
    generation: u64,
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
        Authenticator {
            profiles: profiles
                .profiles
                .iter()
                .map(|(name, spec)| {
                    let profile = Profile {
                        spec: spec.clone(),
                        token: Flight::new(),
                        secret: Flight::new(),
                    };
                    (name.clone(), profile)
                })
                .collect(),
            generation: AtomicU64::new(0),
            http: tokio::sync::OnceCell::new(),
            secrets_manager,
            timeout,
            secret_ttl,
        }
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
                    .tls_certs_only(crate::tls::trusted_roots())
                    .build()
                    .map_err(|e| {
                        AuthError::Unavailable(format!("cannot build the token client: {e}"))
                    })
            })
            .await
    }

    pub fn has(&self, profile: &str) -> bool {
        self.profiles.contains_key(profile)
    }

    fn profile(&self, profile: &str) -> Result<&Profile, AuthError> {
        self.profiles.get(profile).ok_or_else(|| {
            AuthError::Rejected(format!("auth profile {profile:?} is not configured"))
        })
    }

    /// The header for a request under `profile`.
    pub async fn credential(&self, profile: &str) -> Result<Credential, AuthError> {
        let p = self.profile(profile)?;
        match &p.spec {
            ProfileSpec::Header { .. } => {
                let secret = self.secret(profile, p, None).await?;
                header_credential(profile, &p.spec, &secret)
            }
            ProfileSpec::OAuth2 { .. } => self.token(profile, p, None).await,
        }
    }

    /// After the destination answered `status` to a request sent with
    /// `sent`: is a newer credential worth one more try?
    ///
    /// * OAuth 2: an answer that matches the profile's `expiredToken` rule
    ///   gets a new token.
    /// * Header profiles: a 401 or 403 re-reads the secret (it may have been
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
        match &p.spec {
            ProfileSpec::OAuth2 { .. } if self.says_expired(profile, status, headers, body) => {
                tracing::debug!(profile, "token expired: refreshing and retrying once");
                match self.token(profile, p, Some(sent.generation)).await {
                    Ok(c) => Renewal::Retry(c),
                    Err(e) => Renewal::Failed(e),
                }
            }
            ProfileSpec::Header {
                value: SecretSource::SecretsManager { .. },
                ..
            } if matches!(status, 401 | 403) => {
                match self.secret(profile, p, Some(sent.generation)).await {
                    Ok(s) if !same(&s.value, sent, &p.spec) => {
                        tracing::info!(
                            profile,
                            status,
                            "secret re-read after a refusal: a new value, trying once more"
                        );
                        header_credential(profile, &p.spec, &s)
                            .map_or(Renewal::Keep, Renewal::Retry)
                    }
                    _ => Renewal::Keep,
                }
            }
            _ => Renewal::Keep,
        }
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
        match self.profiles.get(profile).map(|p| &p.spec) {
            Some(ProfileSpec::OAuth2 { expired, .. }) => expired.matches(status, headers, body),
            _ => false,
        }
    }

    /// Whether a 401 body must be read to apply the profile's rule.
    pub fn needs_body(&self, profile: &str) -> bool {
        matches!(self.profiles.get(profile).map(|p| &p.spec), Some(ProfileSpec::OAuth2 { expired, .. }) if expired.body_contains.is_some())
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
            name: http::header::AUTHORIZATION,
            value: sensitive(&format!("Bearer {}", token.value.expose()), profile)?,
            generation: token.generation,
        })
    }

    /// A token from the endpoint. When the endpoint rejects the client's
    /// credentials and the secret comes from Secrets Manager, the secret is
    /// read again and, if it changed, tried once more: a rotation is not a
    /// reason to dead-letter.
    async fn fetch_token(&self, profile: &str, p: &Profile) -> Result<Token, AuthError> {
        let secret = self.secret(profile, p, None).await?;
        match self.request_token(profile, &p.spec, &secret.value).await {
            Err(TokenError::Rejected(status)) => {
                let fresh = match &p.spec {
                    ProfileSpec::OAuth2 {
                        secret: SecretSource::SecretsManager { .. },
                        ..
                    } => self.secret(profile, p, Some(secret.generation)).await?,
                    _ => return Err(rejected(profile, status)),
                };
                if fresh.value == secret.value {
                    return Err(rejected(profile, status));
                }
                tracing::info!(
                    profile,
                    status,
                    "token endpoint refused the client secret; re-read it and trying once more"
                );
                self.request_token(profile, &p.spec, &fresh.value)
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
        spec: &ProfileSpec,
        client_secret: &Secret,
    ) -> Result<Token, TokenError> {
        let ProfileSpec::OAuth2 {
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

    /// The profile's secret. Environment values never change; a Secrets
    /// Manager value is read again after `SECRET_TTL_SECONDS`, or at once
    /// when `stale` names the read that was refused (one reader at a time;
    /// the others share what it read).
    async fn secret(
        &self,
        profile: &str,
        p: &Profile,
        stale: Option<u64>,
    ) -> Result<SecretRead, AuthError> {
        let source = match &p.spec {
            ProfileSpec::OAuth2 { secret, .. } => secret,
            ProfileSpec::Header { value, .. } => value,
        };
        let (arn, json_key) = match source {
            SecretSource::Value(s) => {
                return Ok(SecretRead {
                    value: s.clone(),
                    refresh_at: crate::clock::later(MAX_LIFETIME),
                    generation: 0,
                })
            }
            SecretSource::SecretsManager { arn, json_key } => (arn, json_key.as_deref()),
        };
        let usable = |s: &SecretRead| Instant::now() < s.refresh_at && stale != Some(s.generation);
        p.secret
            .get(usable, |held| async move {
                match self.fetch_secret(profile, arn, json_key).await {
                    Ok(value) => Ok(SecretRead {
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

    async fn fetch_secret(
        &self,
        profile: &str,
        arn: &str,
        json_key: Option<&str>,
    ) -> Result<Secret, AuthError> {
        let client = self.secrets_manager.as_ref().ok_or_else(|| {
            AuthError::Unavailable(format!(
                "profile {profile:?} needs Secrets Manager, which is not set up"
            ))
        })?;
        let text = read_secret_string(client, arn, self.timeout, profile).await?;
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
    arn: &str,
    timeout: Duration,
    profile: &str,
) -> Result<String, AuthError> {
    use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
    let answer = tokio::time::timeout(timeout, client.get_secret_value().secret_id(arn).send())
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
    _: &str,
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
        expires_in: Option<u64>,
    }
    let answer: TokenAnswer = serde_json::from_slice(body)
        .map_err(|_| TokenError::Unavailable("answered without an access_token".into()))?;
    let lifetime = answer
        .expires_in
        .map_or(DEFAULT_LIFETIME, Duration::from_secs)
        .min(MAX_LIFETIME);
    Ok((Secret::new(answer.access_token), lifetime))
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

/// A header profile's credential from its secret.
fn header_credential(
    profile: &str,
    spec: &ProfileSpec,
    secret: &SecretRead,
) -> Result<Credential, AuthError> {
    let ProfileSpec::Header { name, .. } = spec else {
        unreachable!("only header profiles")
    };
    Ok(Credential {
        name: name.clone(),
        value: sensitive(&header_text(spec, &secret.value), profile)?,
        generation: secret.generation,
    })
}

/// The value a header profile sends: its prefix, then the secret.
fn header_text(spec: &ProfileSpec, secret: &Secret) -> String {
    let prefix = match spec {
        ProfileSpec::Header { prefix, .. } => prefix.as_deref().unwrap_or(""),
        ProfileSpec::OAuth2 { .. } => "",
    };
    format!("{prefix}{}", secret.expose())
}

/// Would `secret` make the same header as `sent`?
fn same(secret: &Secret, sent: &Credential, spec: &ProfileSpec) -> bool {
    sent.value.as_bytes() == header_text(spec, secret).as_bytes()
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
        let rule = ExpiredTokenRule::default();
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
        let ProfileSpec::OAuth2 { expired, .. } = &p.profiles["partner-x"] else {
            panic!("partner-x is an OAuth 2 profile")
        };
        let h = HeaderMap::new();
        assert!(expired.matches(401, &h, b"{\"code\":\"token_expired\"}"));
        assert!(
            !expired.matches(401, &h, b"expired"),
            "the default body rule no longer applies"
        );
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
