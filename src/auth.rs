//! Auth profiles (contract §3, §5): the processor, never the message, holds
//! the credentials a destination wants.
//!
//! `AUTH_PROFILES` names profiles; a message picks one with `auth`:
//!
//! * `oauth2-client-credentials`: a bearer token from the profile's token
//!   URL, cached for its lifetime (refreshed a little before `expires_in`)
//!   and shared by every record in flight and every warm invocation. A 401
//!   that matches the profile's `expiredToken` rule forces **one** refresh and
//!   one immediate retry of that record. Concurrent records that find the
//!   same token expired cause one token request between them: the cache is
//!   behind a lock that is held across the fetch, and a record asking to
//!   replace a token that someone already replaced gets the new one.
//! * `header`: a static header, such as an API key.
//!
//! Secrets come from an environment variable (`clientSecretEnv`,
//! `valueEnv`; read at start-up, so a missing one stops the function) or
//! from AWS Secrets Manager (`clientSecretArn`, `valueArn`, with `jsonKey`
//! to pick a field of a JSON secret; fetched on first use and cached).
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
    /// Contract §5: `WWW-Authenticate` with `error="invalid_token"`, or a
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
    /// Which token this is, to ask for a newer one.
    generation: u64,
}

struct Token {
    value: Secret,
    refresh_at: Instant,
    generation: u64,
}

/// A token is refreshed this long before it expires (or at 90% of its
/// lifetime, if that is sooner), so it does not expire in flight.
const EARLY_REFRESH: Duration = Duration::from_secs(60);
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// Applies the profiles: fetches, caches and refreshes credentials. One per
/// process, shared by every batch.
pub struct Authenticator {
    profiles: HashMap<String, Profile>,
    generation: AtomicU64,
    /// The token endpoints' client, built on the first token request so
    /// that start-up does not pay for it.
    http: tokio::sync::OnceCell<reqwest::Client>,
    secrets_manager: Option<aws_sdk_secretsmanager::Client>,
    timeout: Duration,
}

/// One configured profile and what the process has learned for it.
struct Profile {
    spec: ProfileSpec,
    /// The cached token (OAuth 2 profiles).
    token: tokio::sync::Mutex<Option<Token>>,
    /// The secret, once fetched (Secrets Manager sources).
    secret: tokio::sync::OnceCell<Secret>,
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
    /// the first record that needs it.
    pub fn new(
        profiles: &AuthProfiles,
        timeout: Duration,
        secrets_manager: Option<aws_sdk_secretsmanager::Client>,
    ) -> Authenticator {
        Authenticator {
            profiles: profiles
                .profiles
                .iter()
                .map(|(name, spec)| {
                    let profile = Profile {
                        spec: spec.clone(),
                        token: tokio::sync::Mutex::new(None),
                        secret: tokio::sync::OnceCell::new(),
                    };
                    (name.clone(), profile)
                })
                .collect(),
            generation: AtomicU64::new(0),
            http: tokio::sync::OnceCell::new(),
            secrets_manager,
            timeout,
        }
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

    /// The header for a request under `profile`.
    pub async fn credential(&self, profile: &str) -> Result<Credential, AuthError> {
        self.credential_replacing(profile, None).await
    }

    /// A newer credential than `stale`, after the destination said it
    /// expired. For a header profile, the same one.
    pub async fn refresh(
        &self,
        profile: &str,
        stale: &Credential,
    ) -> Result<Credential, AuthError> {
        self.credential_replacing(profile, Some(stale.generation))
            .await
    }

    /// Did this answer say the profile's token expired? (Only OAuth 2
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

    /// Whether a 401 body must be read to apply the rule.
    pub fn needs_body(&self, profile: &str) -> bool {
        matches!(self.profiles.get(profile).map(|p| &p.spec), Some(ProfileSpec::OAuth2 { expired, .. }) if expired.body_contains.is_some())
    }

    async fn credential_replacing(
        &self,
        profile: &str,
        stale: Option<u64>,
    ) -> Result<Credential, AuthError> {
        let p = self.profiles.get(profile).ok_or_else(|| {
            AuthError::Rejected(format!("auth profile {profile:?} is not configured"))
        })?;
        match &p.spec {
            ProfileSpec::Header {
                name,
                value,
                prefix,
            } => {
                let secret = self.secret(profile, value, &p.secret).await?;
                let text = format!("{}{}", prefix.as_deref().unwrap_or(""), secret.expose());
                Ok(Credential {
                    name: name.clone(),
                    value: sensitive(&text, profile)?,
                    generation: 0,
                })
            }
            ProfileSpec::OAuth2 { .. } => {
                let mut cached = p.token.lock().await;
                // Usable: not due for refresh, and not the token the caller
                // found expired (another record may have replaced it while
                // this one waited for the lock).
                let usable = cached
                    .as_ref()
                    .is_some_and(|t| Instant::now() < t.refresh_at && stale != Some(t.generation));
                if !usable {
                    *cached = Some(self.fetch_token(profile, p).await?);
                }
                let token = cached.as_ref().expect("just filled");
                Ok(Credential {
                    name: http::header::AUTHORIZATION,
                    value: sensitive(&format!("Bearer {}", token.value.expose()), profile)?,
                    generation: token.generation,
                })
            }
        }
    }

    async fn fetch_token(&self, profile: &str, p: &Profile) -> Result<Token, AuthError> {
        let ProfileSpec::OAuth2 {
            token_url,
            client_id,
            secret,
            scope,
            audience,
            client_auth,
            ..
        } = &p.spec
        else {
            unreachable!("only OAuth 2 profiles have tokens")
        };
        let client_secret = self.secret(profile, secret, &p.secret).await?;
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend(scope.as_deref().map(|s| ("scope", s)));
        form.extend(audience.as_deref().map(|a| ("audience", a)));
        let mut request = self
            .token_client()
            .await?
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
                request = request.header(http::header::AUTHORIZATION, sensitive(&basic, profile)?);
            }
            ClientAuth::Form => {
                form.push(("client_id", client_id));
                form.push(("client_secret", client_secret.expose()));
            }
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let unavailable = |what: String| {
            AuthError::Unavailable(format!("token endpoint of profile {profile:?} {what}"))
        };
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable(format!("unreachable ({})", transport_kind(&e))))?;
        let status = response.status().as_u16();
        if matches!(status, 400 | 401 | 403) {
            return Err(AuthError::Rejected(format!(
                "token endpoint of profile {profile:?} rejected the credentials (HTTP {status})"
            )));
        }
        if !(200..300).contains(&status) {
            return Err(unavailable(format!("answered HTTP {status}")));
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            access_token: String,
            expires_in: Option<u64>,
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(format!("failed mid-answer ({})", transport_kind(&e))))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| unavailable("answered without an access_token".into()))?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let early = EARLY_REFRESH.min(lifetime / 10);
        tracing::debug!(profile, lifetime_s = lifetime.as_secs(), "fetched a token");
        Ok(Token {
            value: Secret::new(answer.access_token),
            refresh_at: Instant::now() + lifetime.saturating_sub(early),
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    async fn secret(
        &self,
        profile: &str,
        source: &SecretSource,
        cached: &tokio::sync::OnceCell<Secret>,
    ) -> Result<Secret, AuthError> {
        match source {
            SecretSource::Value(s) => Ok(s.clone()),
            SecretSource::SecretsManager { arn, json_key } => cached
                .get_or_try_init(|| self.fetch_secret(profile, arn, json_key.as_deref()))
                .await
                .cloned(),
        }
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
        let answer = tokio::time::timeout(
            self.timeout,
            client.get_secret_value().secret_id(arn).send(),
        )
        .await
        .map_err(|_| {
            AuthError::Unavailable(format!("Secrets Manager timed out for profile {profile:?}"))
        })?
        .map_err(|e| {
            use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
            AuthError::Unavailable(format!(
                "Secrets Manager failed for profile {profile:?}: {}",
                e.code().unwrap_or("no answer")
            ))
        })?;
        let text = answer.secret_string().ok_or_else(|| {
            AuthError::Rejected(format!("the secret of profile {profile:?} is not a string"))
        })?;
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
        let a = Authenticator::new(&p, Duration::from_secs(1), None);
        let h = HeaderMap::new();
        assert!(a.says_expired("partner-x", 401, &h, b"{\"code\":\"token_expired\"}"));
        assert!(
            !a.says_expired("partner-x", 401, &h, b"expired"),
            "the default body rule no longer applies"
        );
        assert!(
            !a.says_expired("partner-y", 401, &h, b"token_expired"),
            "header profiles have no tokens"
        );
    }
}
