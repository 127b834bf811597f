//! `AUTH_PROFILES`: the JSON object of profiles, parsed and checked at
//! start-up. Errors name the profile and the field, never a value.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName};
use serde::Deserialize;
use url::Url;

use super::sign::WebhookKey;
use super::Secret;
use crate::policy::hosts::HostPattern;

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
    /// Where its credentials may go (§12.8).
    pub hosts: ProfileHosts,
}

/// The destinations a profile's credentials may be sent to (§12.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileHosts {
    /// Its `hosts`.
    Listed(Vec<HostPattern>),
    /// An `aws-sigv4` profile without `hosts`: AWS endpoints only.
    AwsEndpoints,
    /// Any other profile without `hosts`: wherever `ALLOWED_DESTINATIONS`
    /// lets requests go (a start-up warning names it).
    Anywhere,
}

/// AWS endpoints, where an `aws-sigv4` profile without `hosts` may sign
/// (parsed once).
static AWS_ENDPOINTS: std::sync::LazyLock<Vec<HostPattern>> = std::sync::LazyLock::new(|| {
    ["*.amazonaws.com", "*.amazonaws.com.cn", "*.on.aws"]
        .iter()
        .map(|p| p.parse().expect("valid patterns"))
        .collect()
});

impl ProfileHosts {
    fn default_for(kind: &Kind) -> ProfileHosts {
        match kind {
            Kind::SigV4 { .. } => ProfileHosts::AwsEndpoints,
            _ => ProfileHosts::Anywhere,
        }
    }

    /// May the profile's credentials go to `url`?
    /// Matched as `ALLOWED_DESTINATIONS` is.
    pub fn allow(&self, url: &Url) -> bool {
        match self {
            ProfileHosts::Listed(patterns) => HostPattern::any_matches(patterns, url),
            ProfileHosts::AwsEndpoints => HostPattern::any_matches(&AWS_ENDPOINTS, url),
            ProfileHosts::Anywhere => true,
        }
    }
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

    /// The profiles without `hosts` whose credentials may go to any host
    /// the destination policy allows (not `aws-sigv4`: AWS endpoints only),
    /// by name.
    pub fn reaching_any_host(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .profiles
            .iter()
            .filter(|(_, p)| p.hosts == ProfileHosts::Anywhere)
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        names
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
    let hosts = object.remove("hosts").map(listed_hosts).transpose()?;
    let client_certificate = match object.remove("clientCertificate") {
        None => None,
        Some(c) => Some(client_certificate(c, env)?),
    };
    // A profile may be a client certificate alone.
    let kind = if client_certificate.is_some() && object.is_empty() {
        Kind::CertificateOnly
    } else {
        let json: ProfileJson = serde_json::from_value(value).map_err(|e| e.to_string())?;
        kind_of(json, env)?
    };
    let hosts = hosts.unwrap_or_else(|| ProfileHosts::default_for(&kind));
    Ok(ProfileSpec {
        kind,
        client_certificate,
        hosts,
    })
}

/// `hosts`: destination patterns, written as in `ALLOWED_DESTINATIONS`.
fn listed_hosts(value: serde_json::Value) -> Result<ProfileHosts, String> {
    let list: Vec<String> =
        serde_json::from_value(value).map_err(|_| "hosts: not a list of host patterns")?;
    let patterns = list
        .iter()
        .enumerate()
        .map(|(i, p)| p.parse().map_err(|e| format!("hosts[{i}]: {e}")))
        .collect::<Result<Vec<HostPattern>, String>>()?;
    Ok(ProfileHosts::Listed(patterns))
}

/// `clientCertificate`: a PEM chain and key, checked now when both are in
/// the environment.
fn client_certificate(
    value: serde_json::Value,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ClientCertificate, String> {
    let c: ClientCertificateJson =
        serde_json::from_value(value).map_err(|e| format!("clientCertificate: {e}"))?;
    let cert = source(env, c.cert_env, c.cert_arn, None, "clientCertificate.cert")?;
    let key = source(env, c.key_env, c.key_arn, None, "clientCertificate.key")?;
    if let (SecretSource::Value(cert), SecretSource::Value(key)) = (&cert, &key) {
        super::identity(cert, key).map_err(|e| format!("clientCertificate: {e}"))?;
    }
    Ok(ClientCertificate { cert, key })
}

/// The profile's type and its fields, checked.
fn kind_of(json: ProfileJson, env: &impl Fn(&str) -> Option<String>) -> Result<Kind, String> {
    Ok(match json {
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
        } => Kind::OAuth2 {
            token_url: Url::parse(&token_url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or("tokenUrl is not an http(s) URL")?,
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
            expired: expired_token.map_or_else(ExpiredTokenRule::default, |e| ExpiredTokenRule {
                status: e.status.unwrap_or(401),
                body_contains: e.body_contains,
                header_contains: e.header_contains,
            }),
        },
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
        ProfileJson::SigV4 { service, region } => sigv4_kind(service, region)?,
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
    })
}

fn sigv4_kind(service: String, region: Option<String>) -> Result<Kind, String> {
    if service.is_empty() || service.contains(char::is_whitespace) {
        return Err("service is not an AWS service name (such as execute-api)".into());
    }
    if region
        .as_deref()
        .is_some_and(|r| r.is_empty() || r.contains(char::is_whitespace))
    {
        return Err("region is not an AWS region name (such as us-east-1)".into());
    }
    Ok(Kind::SigV4 { service, region })
}

/// Could `name` be an environment variable's name as operators write them?
fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
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
            .ok_or_else(|| match is_variable_name(&var) {
                true => format!("{what}Env {var} is not set"),
                // A secret pasted where its variable's name belongs is
                // not printed.
                false => format!("{what}Env is not a variable name (letters, digits, _)"),
            }),
        (None, Some(arn)) => Ok(SecretSource::SecretsManager { arn, json_key }),
        _ => Err(format!("exactly one of {what}Env and {what}Arn is needed")),
    }
}

#[cfg(test)]
mod hosts_tests {
    #[test]
    fn a_profile_lists_the_hosts_its_credentials_may_go_to() {
        let env = |_: &str| Some("v".to_owned());
        let spec = |json: serde_json::Value| super::parse_profile(json, &env);
        let url = |u: &str| url::Url::parse(u).unwrap();
        let header = serde_json::json!({"type": "header", "name": "x-api-key", "valueEnv": "K",
            "hosts": ["api.partner.com", "*.partner.net:8443"]});
        let hosts = spec(header).unwrap().hosts;
        assert!(hosts.allow(&url("https://api.partner.com/x")));
        assert!(hosts.allow(&url("https://eu.partner.net:8443/x")));
        assert!(
            !hosts.allow(&url("https://eu.partner.net/x")),
            "another port"
        );
        assert!(!hosts.allow(&url("https://attacker.example/x")));
        assert!(!hosts.allow(&url("https://api.partner.com.attacker.example/x")));
        // aws-sigv4 without hosts: AWS endpoints only.
        let sigv4 = spec(serde_json::json!({"type": "aws-sigv4", "service": "execute-api"}))
            .unwrap()
            .hosts;
        assert_eq!(sigv4, super::ProfileHosts::AwsEndpoints);
        assert!(sigv4.allow(&url("https://abc.execute-api.us-east-1.amazonaws.com/p")));
        assert!(sigv4.allow(&url("https://abc.lambda-url.us-east-1.on.aws/")));
        assert!(!sigv4.allow(&url("https://attacker.example/")));
        // Any other profile without hosts: wherever requests may go.
        let open = spec(serde_json::json!({"type": "header", "name": "x-k", "valueEnv": "K"}))
            .unwrap()
            .hosts;
        assert_eq!(open, super::ProfileHosts::Anywhere);
        // A bad pattern is an error naming its position, never a value.
        let bad = spec(
            serde_json::json!({"type": "header", "name": "x-k", "valueEnv": "K", "hosts": ["https://x/"]}),
        );
        assert!(bad.unwrap_err().starts_with("hosts[0]: "));
    }
}
