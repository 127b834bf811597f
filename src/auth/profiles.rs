//! `AUTH_PROFILES`: the JSON object of profiles, parsed and checked at
//! start-up. Errors name the profile and the field, never a value.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName};
use serde::Deserialize;
use url::Url;

use super::sign::WebhookKey;
use super::Secret;

/// `AUTH_PROFILES`, parsed and checked at start-up.
#[derive(Debug, Clone, Default)]
pub struct AuthProfiles {
    pub(super) profiles: HashMap<String, ProfileSpec>,
}

/// One profile: how requests are authenticated, and the client certificate
/// presented for mutual TLS, if any.
#[derive(Debug, Clone)]
pub(super) struct ProfileSpec {
    pub kind: Kind,
    pub client_certificate: Option<ClientCertificate>,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
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
    /// AWS Signature Version 4 with the process's credentials; the region
    /// is the process's (`AWS_REGION`) when the profile names none.
    SigV4 {
        service: String,
        region: Option<String>,
    },
    /// Standard Webhooks signatures with a `whsec_` secret.
    StandardWebhooks { secret: SecretSource },
    /// No credential in the request: only the client certificate.
    CertificateOnly,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub(super) struct ClientCertificate {
    pub cert: SecretSource,
    pub key: SecretSource,
}

#[derive(Debug, Clone)]
pub(super) enum SecretSource {
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

/// The JSON shape of one profile (less `clientCertificate`, read apart).
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
    #[serde(rename = "aws-sigv4", rename_all = "camelCase")]
    SigV4 {
        service: String,
        region: Option<String>,
    },
    #[serde(rename = "standard-webhooks", rename_all = "camelCase")]
    StandardWebhooks {
        secret_env: Option<String>,
        secret_arn: Option<String>,
        json_key: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExpiredTokenJson {
    status: Option<u16>,
    body_contains: Option<String>,
    header_contains: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClientCertificateJson {
    cert_env: Option<String>,
    cert_arn: Option<String>,
    key_env: Option<String>,
    key_arn: Option<String>,
}

impl AuthProfiles {
    /// Parses `AUTH_PROFILES`; `env` reads the variables that hold secrets.
    /// The error names the profile and the field, never a secret.
    pub fn parse(json: &str, env: impl Fn(&str) -> Option<String>) -> Result<AuthProfiles, String> {
        let raw: HashMap<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| format!("not a JSON object of profiles ({e})"))?;
        let mut profiles = HashMap::new();
        for (name, value) in raw {
            let spec = parse_profile(value, &env).map_err(|e| format!("profile {name:?}: {e}"))?;
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
        self.profiles
            .values()
            .flat_map(ProfileSpec::sources)
            .any(|s| matches!(s, SecretSource::SecretsManager { .. }))
    }
}

impl ProfileSpec {
    /// Every secret the profile reads.
    fn sources(&self) -> impl Iterator<Item = &SecretSource> {
        let own = match &self.kind {
            Kind::OAuth2 { secret, .. } | Kind::StandardWebhooks { secret } => Some(secret),
            Kind::Header { value, .. } => Some(value),
            Kind::SigV4 { .. } | Kind::CertificateOnly => None,
        };
        let cert = self
            .client_certificate
            .iter()
            .flat_map(|c| [&c.cert, &c.key]);
        own.into_iter().chain(cert)
    }
}

fn parse_profile(
    mut value: serde_json::Value,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ProfileSpec, String> {
    let object = value.as_object_mut().ok_or("not a JSON object")?;
    let client_certificate = match object.remove("clientCertificate") {
        None => None,
        Some(c) => {
            let c: ClientCertificateJson =
                serde_json::from_value(c).map_err(|e| format!("clientCertificate: {e}"))?;
            let cert = source(env, c.cert_env, c.cert_arn, None, "clientCertificate.cert")?;
            let key = source(env, c.key_env, c.key_arn, None, "clientCertificate.key")?;
            if let (SecretSource::Value(cert), SecretSource::Value(key)) = (&cert, &key) {
                super::identity(cert, key).map_err(|e| format!("clientCertificate: {e}"))?;
            }
            Some(ClientCertificate { cert, key })
        }
    };
    // A profile may be a client certificate alone.
    if client_certificate.is_some() && object.is_empty() {
        return Ok(ProfileSpec {
            kind: Kind::CertificateOnly,
            client_certificate,
        });
    }
    let json: ProfileJson = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let kind = match json {
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
                .ok_or("tokenUrl is not an http(s) URL")?;
            let expired = match expired_token {
                None => ExpiredTokenRule::default(),
                Some(e) => ExpiredTokenRule {
                    status: e.status.unwrap_or(401),
                    body_contains: e.body_contains,
                    header_contains: e.header_contains,
                },
            };
            Kind::OAuth2 {
                token_url,
                client_id,
                secret: source(
                    env,
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
        } => Kind::Header {
            name: HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| "name is not a header name")?,
            value: source(env, value_env, value_arn, json_key, "value")?,
            prefix,
        },
        ProfileJson::SigV4 { service, region } => {
            if service.is_empty() || service.contains(char::is_whitespace) {
                return Err("service is not an AWS service name (such as execute-api)".into());
            }
            if region
                .as_deref()
                .is_some_and(|r| r.is_empty() || r.contains(char::is_whitespace))
            {
                return Err("region is not an AWS region name (such as us-east-1)".into());
            }
            Kind::SigV4 { service, region }
        }
        ProfileJson::StandardWebhooks {
            secret_env,
            secret_arn,
            json_key,
        } => {
            let secret = source(env, secret_env, secret_arn, json_key, "secret")?;
            if let SecretSource::Value(s) = &secret {
                WebhookKey::parse(s).map_err(|e| format!("secretEnv: {e}"))?;
            }
            Kind::StandardWebhooks { secret }
        }
    };
    Ok(ProfileSpec {
        kind,
        client_certificate,
    })
}

/// Where a secret comes from: exactly one of `{what}Env` (read now) and
/// `{what}Arn` (read on first use).
fn source(
    env: &impl Fn(&str) -> Option<String>,
    env_var: Option<String>,
    arn: Option<String>,
    json_key: Option<String>,
    what: &str,
) -> Result<SecretSource, String> {
    match (env_var, arn) {
        (Some(var), None) => env(&var)
            .filter(|v| !v.is_empty())
            .map(|v| SecretSource::Value(Secret::new(v)))
            .ok_or_else(|| format!("{what}Env {var} is not set")),
        (None, Some(arn)) => Ok(SecretSource::SecretsManager { arn, json_key }),
        _ => Err(format!("exactly one of {what}Env and {what}Arn is needed")),
    }
}
