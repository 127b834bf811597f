//! HTTP adapter: replay a Retry Message's request and report what happened.
//!
//! One [`Deliverer`] (one `reqwest::Client`, one connection pool) serves the
//! whole process, so warm invocations reuse connections. Its client:
//!
//! * follows no redirects: a 3xx is an answer, classified non-retryable (§3);
//! * resolves names through a resolver that applies the destination policy
//!   to every resolved address, so the addresses checked are exactly those
//!   connected to, and a name cannot be re-pointed between check and connect;
//! * applies `REQUEST_TIMEOUT_SECONDS` to each attempt, from connect to the
//!   last byte of the answer.
//!
//! The request sent is the message's, less the headers a proxy must not
//! forward (hop-by-hop headers, those named in `Connection`, `Host` and
//! `Content-Length`, which the client sets from the URL and body), plus
//! `Idempotency-Key: <message id>` unless the message carries one.

pub mod destination;
mod pool;

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::{AuthError, Authenticator, CertificateRead, Credential, Renewal};
use crate::breaker::Slots;
use crate::message::RetryMessage;
use crate::policy::classify::{Answer, NoResponse};
use crate::policy::record::AttemptResult;
use destination::{DestinationPolicy, NotAllowed};

/// How much of an answer's body is read (and then discarded) so the
/// connection can go back to the pool. Longer bodies close the connection.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Headers that describe one hop, never the end-to-end request (RFC 9110
/// §7.6.1), plus those the client must compute itself.
const DROPPED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Most of a 401's body that is read to apply an `expiredToken` rule.
const AUTH_BODY_LIMIT: usize = 8 * 1024;

/// What one attempt produced.
#[derive(Debug)]
pub enum Delivery {
    /// The destination answered. `token_expired`: it said the token expired
    /// even after the one refresh an attempt may make.
    Answered {
        status: u16,
        headers: HeaderMap,
        token_expired: bool,
        /// The first bytes of a non-2xx answer's body, when the deliverer
        /// keeps them (the attempt ledger's `RESPONSE_SNIPPET_BYTES`).
        snippet: Vec<u8>,
    },
    /// No credential could be had for the message's auth profile.
    AuthFailed(AuthError),
    /// No answer; `detail` is one line without the URL.
    NoResponse { kind: NoResponse, detail: String },
    /// The destination policy refused it; no connection was made.
    NotAllowed(NotAllowed),
    /// The message cannot be turned into a request.
    Invalid(String),
    /// Not sent: its [`SendGate`] said no once it had its slot (a probe
    /// whose lease was lost meanwhile, §12.7). No attempt was made.
    Withheld,
}

/// Asked right before each request of an attempt goes out, once it holds
/// its request slot and its credential: `false` withholds it. The fleet
/// breaker's probe renews its lease here, so the lease covers the request
/// from the moment it is sent, however long the wait before (§12.7).
pub trait SendGate: Sync {
    fn open(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
}

/// How one request of an attempt is sent: within `timeout`, keeping a 401's
/// body when `read_401_body` (for the expired-token rule), once `gate`
/// opens.
#[derive(Clone, Copy)]
struct Sending<'a> {
    timeout: Duration,
    read_401_body: bool,
    gate: &'a dyn SendGate,
}

impl<'a> Sending<'a> {
    fn new(timeout: Duration, read_401_body: bool, gate: &'a dyn SendGate) -> Sending<'a> {
        Sending {
            timeout,
            read_401_body,
            gate,
        }
    }
}

/// The gate of an attempt that needs none.
pub struct AlwaysOpen;

impl SendGate for AlwaysOpen {
    fn open(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(std::future::ready(true))
    }
}

impl Delivery {
    /// The start of a non-2xx answer's body, if kept.
    pub fn snippet(&self) -> &[u8] {
        match self {
            Delivery::Answered { snippet, .. } => snippet,
            _ => &[],
        }
    }

    /// What became of the attempt, for [`crate::policy::record::conclude`].
    pub fn result(&self) -> AttemptResult<'_> {
        match self {
            Delivery::NotAllowed(e) => AttemptResult::NotAllowed(e.to_string()),
            Delivery::Invalid(e) => AttemptResult::Invalid(e),
            // Not sent: the processor defers such an attempt before it is
            // concluded; concluded anyway, it is retryable, never final.
            Delivery::Withheld => AttemptResult::NoResponse {
                kind: NoResponse::Other,
                detail: "withheld before it was sent",
            },
            Delivery::NoResponse { kind, detail } => AttemptResult::NoResponse {
                kind: *kind,
                detail,
            },
            Delivery::AuthFailed(AuthError::Unavailable(e)) => {
                AttemptResult::CredentialUnavailable(e)
            }
            Delivery::AuthFailed(AuthError::Rejected(e)) => AttemptResult::CredentialRejected(e),
            Delivery::Answered {
                status,
                token_expired: true,
                ..
            } => AttemptResult::Answer(Answer::ExpiredAfterRefresh { status: *status }),
            Delivery::Answered {
                status, headers, ..
            } => AttemptResult::Answer(Answer::Status {
                status: *status,
                headers,
            }),
        }
    }
}

/// The `User-Agent` of a replayed request that did not carry one.
const USER_AGENT: &str = concat!("retryq/", env!("CARGO_PKG_VERSION"));

/// Replays requests. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    settings: ClientSettings,
    /// The clients of profiles with a client certificate, built on their
    /// first request, each with the certificate it presents.
    tls_clients: Arc<Mutex<HashMap<String, TlsClient>>>,
    policy: Arc<DestinationPolicy>,
    timeout: Duration,
    auth: Option<Arc<Authenticator>>,
    slots: Option<Arc<Slots>>,
    /// How much of a non-2xx answer's body to keep.
    snippet_bytes: usize,
    /// The idle sockets the clients may keep (§12.9).
    sockets: Arc<pool::SocketBudget>,
    /// The shared client keeping no idle connection, for requests past
    /// that budget; built when first needed.
    unpooled: Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl Deliverer {
    /// Builds the process's one HTTP client. Makes no network call.
    pub fn new(
        policy: DestinationPolicy,
        timeout: Duration,
        max_idle_per_host: usize,
    ) -> Result<Deliverer, reqwest::Error> {
        Deliverer::with_resolver(policy, timeout, max_idle_per_host, None)
    }

    /// As [`new`](Self::new), looking names up with `resolver` instead of the
    /// system's (the destination policy still applies to every address it
    /// gives).
    pub fn with_resolver(
        policy: DestinationPolicy,
        timeout: Duration,
        max_idle_per_host: usize,
        resolver: Option<Arc<dyn reqwest::dns::Resolve>>,
    ) -> Result<Deliverer, reqwest::Error> {
        let policy = Arc::new(policy);
        let settings = ClientSettings {
            resolver: Arc::new(GuardedResolver {
                policy: Arc::clone(&policy),
                inner: resolver,
            }),
            max_idle_per_host,
            timeout,
            ca_bundle: None,
        };
        Ok(Deliverer {
            client: settings.client(None)?,
            settings,
            tls_clients: Arc::default(),
            policy,
            timeout,
            auth: None,
            slots: None,
            snippet_bytes: 0,
            sockets: pool::SocketBudget::new(pool::IDLE_SOCKETS),
            unpooled: Arc::default(),
        })
    }

    /// Trusts the roots of `CA_BUNDLE` too (rebuilds the client when set).
    pub fn with_ca_bundle(
        mut self,
        bundle: Option<crate::tls::CaBundle>,
    ) -> Result<Deliverer, reqwest::Error> {
        if bundle.is_some() {
            self.settings.ca_bundle = bundle;
            self.client = self.settings.client(None)?;
        }
        Ok(self)
    }

    /// How many hosts' request limits it keeps (at most `HOST_STATE_LIMIT`).
    pub fn hosts_kept(&self) -> usize {
        self.slots.as_ref().map_or(0, |s| s.hosts_kept())
    }

    /// Keeps at most `sockets` idle connections (at most
    /// [`pool::IDLE_SOCKETS`]): `HOST_STATE_LIMIT` when smaller.
    pub fn with_idle_sockets(mut self, sockets: usize) -> Deliverer {
        self.sockets = pool::SocketBudget::new(sockets.min(pool::IDLE_SOCKETS));
        self
    }

    /// The shared clients: the pooled one, and the one keeping no idle
    /// connection when it was built already.
    fn shared_clients(&self) -> Clients {
        Clients {
            pooled: self.client.clone(),
            unpooled: self.unpooled.get().cloned(),
        }
    }

    /// The client for a request that holds its slot: the pooled one while
    /// the idle-socket budget allows (the lease is held until its answer),
    /// else one that keeps no connection.
    fn client_to_send(
        &self,
        clients: &Clients,
        url: &url::Url,
    ) -> (reqwest::Client, Option<pool::PoolLease>) {
        if let Some(lease) = self.sockets.lease(&crate::breaker::host_key(url)) {
            return (clients.pooled.clone(), Some(lease));
        }
        let unpooled = clients.unpooled.clone().unwrap_or_else(|| {
            self.unpooled
                .get_or_init(|| {
                    self.settings
                        .unpooled()
                        .client(None)
                        .unwrap_or_else(|_| self.client.clone())
                })
                .clone()
        });
        (unpooled, None)
    }

    /// Makes every HTTP exchange wait for a request slot.
    pub fn with_slots(mut self, slots: Arc<Slots>) -> Deliverer {
        self.slots = Some(slots);
        self
    }

    /// Keeps the first `bytes` of every non-2xx answer's body
    /// ([`Delivery::snippet`]).
    pub fn with_snippets(mut self, bytes: usize) -> Deliverer {
        self.snippet_bytes = bytes;
        self
    }

    /// Applies these auth profiles to messages that name one.
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Deliverer {
        self.auth = Some(auth);
        self
    }

    /// The resolver every client of this deliverer connects through: the
    /// wrapped resolver's answer, refused whole when the destination policy
    /// refuses any of its addresses. Exposed so that a policy can be checked
    /// on a name without a connection being possible.
    pub fn resolver(&self) -> Arc<dyn reqwest::dns::Resolve> {
        self.settings.resolver.clone()
    }

    /// Why the destination policy refuses `url` (its URL alone; the
    /// addresses a name stands for are checked when connecting).
    pub fn destination_refusal(&self, url: &url::Url) -> Option<String> {
        self.policy.check(url).err().map(|e| e.to_string())
    }

    /// May this profile's credentials go to `url` (§12.8)? `None`: no such
    /// profile.
    pub fn profile_allows(&self, profile: &str, url: &url::Url) -> Option<bool> {
        self.auth.as_ref()?.allows(profile, url)
    }

    /// Makes one attempt, within `REQUEST_TIMEOUT_SECONDS`.
    pub async fn deliver(&self, msg: &RetryMessage) -> Delivery {
        self.deliver_within(msg, self.timeout).await
    }

    /// As [`deliver`](Self::deliver), with the request body already taken
    /// out of the message ([`RetryMessage::take_body`]): a large body is
    /// then held once, and every request of the attempt shares it.
    pub async fn deliver_with_body(
        &self,
        msg: &RetryMessage,
        body: Result<Option<bytes::Bytes>, String>,
    ) -> Delivery {
        self.attempt(msg, body, self.timeout, &AlwaysOpen).await
    }

    /// As [`deliver_with_body`](Self::deliver_with_body), each request
    /// going out only if `gate` opens once it has its slot.
    pub async fn deliver_gated(
        &self,
        msg: &RetryMessage,
        body: Result<Option<bytes::Bytes>, String>,
        gate: &dyn SendGate,
    ) -> Delivery {
        self.attempt(msg, body, self.timeout, gate).await
    }

    /// Makes one attempt within `timeout` (never longer than the configured
    /// request timeout). With an auth profile, an answer that asks for a
    /// newer credential (an expired token; a refused API key or webhook
    /// secret that was rotated; a client certificate refused in the TLS
    /// handshake that was rotated) gets one renewal and one immediate retry,
    /// within the attempt. Waiting for a credential holds no request slot.
    pub async fn deliver_within(&self, msg: &RetryMessage, timeout: Duration) -> Delivery {
        let body = msg
            .body_bytes()
            .map(|b| {
                msg.request
                    .body
                    .is_some()
                    .then(|| bytes::Bytes::copy_from_slice(&b))
            })
            .map_err(|e| e.to_string());
        self.attempt(msg, body, timeout, &AlwaysOpen).await
    }

    async fn attempt(
        &self,
        msg: &RetryMessage,
        body: Result<Option<bytes::Bytes>, String>,
        timeout: Duration,
        gate: &dyn SendGate,
    ) -> Delivery {
        let payload = match body {
            Ok(payload) => payload,
            Err(e) => return Delivery::Invalid(e),
        };
        let payload = payload.as_ref();
        if let Err(e) = self.policy.check(&msg.destination_url) {
            return Delivery::NotAllowed(e);
        }
        let timeout = timeout.min(self.timeout).max(Duration::from_millis(1));
        let Some(profile) = msg.auth.as_deref() else {
            return self
                .send(
                    &self.shared_clients(),
                    msg,
                    payload,
                    None,
                    Sending::new(timeout, false, gate),
                )
                .await
                .0;
        };
        // Boxed: the credential's reads and renewals (Secrets Manager, a
        // token endpoint) make a future many kilobytes large, which a
        // record without a profile should not carry.
        Box::pin(self.attempt_with_profile(msg, profile, payload, timeout, gate)).await
    }

    /// An attempt under an auth profile: the credential applied, and one
    /// renewal and retry when the answer asks for it.
    async fn attempt_with_profile(
        &self,
        msg: &RetryMessage,
        profile: &str,
        payload: Option<&bytes::Bytes>,
        timeout: Duration,
        gate: &dyn SendGate,
    ) -> Delivery {
        let auth = match self.authenticator_for(msg, profile) {
            Ok(auth) => auth,
            Err(refused) => return refused,
        };
        let mut credential = match auth.credential(profile).await {
            Ok(c) => c,
            Err(e) => return Delivery::AuthFailed(e),
        };
        let (client, certificate) = match self.client_for(auth, profile, None).await {
            Ok(c) => c,
            Err(e) => return Delivery::AuthFailed(e),
        };
        let how = Sending::new(timeout, auth.needs_body(profile), gate);
        let (first, body) = self
            .send(&client, msg, payload, Some(&mut credential), how)
            .await;
        let mut renewed = match &first {
            Delivery::NoResponse {
                kind: NoResponse::Tls,
                ..
            } => {
                let Some(client) = self
                    .client_after_tls_refusal(auth, profile, certificate)
                    .await
                else {
                    return first;
                };
                let (again, _) = self
                    .send(&client, msg, payload, Some(&mut credential), how)
                    .await;
                // Withheld: the first request's answer stands.
                return match again {
                    Delivery::Withheld => first,
                    again => again,
                };
            }
            Delivery::Answered {
                status, headers, ..
            } => match auth
                .renew(profile, &credential, *status, headers, &body)
                .await
            {
                Renewal::Keep => return first,
                Renewal::Failed(e) => return Delivery::AuthFailed(e),
                Renewal::Retry(c) => c,
            },
            _ => return first,
        };
        let (mut second, body) = self
            .send(&client, msg, payload, Some(&mut renewed), how)
            .await;
        if let Delivery::Withheld = second {
            return first;
        }
        if let Delivery::Answered {
            status,
            headers,
            token_expired,
            ..
        } = &mut second
        {
            // Only a token that expired again right after its refresh is
            // retryable for that reason (§3); any other answer stands.
            *token_expired = auth.says_expired(profile, *status, headers, &body);
        }
        second
    }

    /// The authenticator that holds `profile`, if its credentials may go to
    /// the message's destination. Checked where credentials are attached,
    /// so that every caller (the processor, `retryq call`, the library)
    /// keeps them to the profile's `hosts` (§12.8); the processor refuses
    /// such a record before.
    fn authenticator_for(
        &self,
        msg: &RetryMessage,
        profile: &str,
    ) -> Result<&Authenticator, Delivery> {
        let auth = self.auth.as_deref();
        match auth.map(|a| a.allows(profile, &msg.destination_url)) {
            Some(Some(true)) => Ok(auth.expect("checked")),
            Some(Some(false)) => Err(Delivery::Invalid(format!(
                "auth: profile {profile:?} may not be sent to this destination's host (its hosts)"
            ))),
            _ => Err(Delivery::AuthFailed(AuthError::Rejected(format!(
                "auth profile {profile:?} is not configured"
            )))),
        }
    }

    /// After a TLS handshake failure: a client certificate the server
    /// refused may have been rotated. Reads it again; the client to try once
    /// more with if it changed.
    async fn client_after_tls_refusal(
        &self,
        auth: &Authenticator,
        profile: &str,
        sent: Option<(u64, u64)>,
    ) -> Option<Clients> {
        let sent = sent?;
        match self.client_for(auth, profile, Some(sent)).await {
            Ok((client, Some(read))) if read != sent => {
                tracing::info!(
                    profile,
                    "client certificate re-read after a TLS failure: trying once more"
                );
                Some(client)
            }
            _ => None,
        }
    }

    /// The client for a request under `profile`: the shared one, or the
    /// profile's own when it presents a client certificate (built again when
    /// the certificate was read anew with another value). `stale` names a
    /// certificate the server refused, to read it again.
    async fn client_for(
        &self,
        auth: &Authenticator,
        profile: &str,
        stale: Option<(u64, u64)>,
    ) -> Result<(Clients, Option<(u64, u64)>), AuthError> {
        if !auth.has_client_certificate(profile) {
            return Ok((self.shared_clients(), None));
        }
        let Some(read) = auth.client_certificate(profile, stale).await? else {
            return Ok((self.shared_clients(), None));
        };
        let generation = read.generation;
        {
            let mut clients = self.tls_clients.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = clients.get_mut(profile) {
                if held.read.generation == generation || held.read.same_pem(&read) {
                    held.read.generation = generation;
                    return Ok((held.clients.clone(), Some(generation)));
                }
            }
        }
        let clients = Clients {
            pooled: self.client_with(&read, profile, &self.settings)?,
            unpooled: Some(self.client_with(&read, profile, &self.settings.unpooled())?),
        };
        self.tls_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                profile.to_owned(),
                TlsClient {
                    read,
                    clients: clients.clone(),
                },
            );
        Ok((clients, Some(generation)))
    }

    /// A client presenting the certificate `read`.
    fn client_with(
        &self,
        read: &CertificateRead,
        profile: &str,
        settings: &ClientSettings,
    ) -> Result<reqwest::Client, AuthError> {
        let identity = read.identity().map_err(|e| {
            AuthError::Rejected(format!(
                "the client certificate of profile {profile:?}: {e}"
            ))
        })?;
        settings.client(Some(identity)).map_err(|e| {
            AuthError::Rejected(format!(
                "profile {profile:?}: cannot build a client with its certificate ({})",
                e.without_url()
            ))
        })
    }

    /// The request slot for `msg`, held with a credential that is not due
    /// for renewal: one that became due while the request waited is
    /// renewed without the slot, which is then waited for again (a few
    /// rounds at most; a credential renewed that often is used as it is).
    async fn slot_with_fresh(
        &self,
        msg: &RetryMessage,
        mut credential: Option<&mut Credential>,
    ) -> Result<Option<crate::breaker::SlotPermit<'_>>, AuthError> {
        const ROUNDS: usize = 3;
        for round in 1..=ROUNDS {
            let slot = match &self.slots {
                Some(slots) => Some(slots.acquire(&msg.destination_url).await),
                None => None,
            };
            let (Some(c), Some(auth), Some(profile)) = (
                credential.as_deref_mut(),
                self.auth.as_ref(),
                msg.auth.as_deref(),
            ) else {
                return Ok(slot);
            };
            if !c.is_stale() || round == ROUNDS {
                return Ok(slot);
            }
            drop(slot);
            // Boxed: a renewal's future is kilobytes large, and every
            // request's future would carry it inline.
            *c = Box::pin(auth.credential(profile)).await?;
        }
        unreachable!("the last round returns")
    }

    /// One HTTP exchange. Returns the body too when it is a 401 and
    /// `read_401_body` (for the expired-token rule), else an empty one.
    /// The credential is applied once the request has its slot and its
    /// gate opened, right before it is sent (§12.8); one that became due
    /// for renewal while the request waited for its slot is renewed first,
    /// and `credential` is left as sent.
    async fn send(
        &self,
        clients: &Clients,
        msg: &RetryMessage,
        body: Option<&bytes::Bytes>,
        mut credential: Option<&mut Credential>,
        how: Sending<'_>,
    ) -> (Delivery, Vec<u8>) {
        let Sending {
            timeout,
            read_401_body,
            gate,
        } = how;
        let mut request = match build(&clients.pooled, msg, body, timeout) {
            Ok(r) => r,
            Err(reason) => return (Delivery::Invalid(reason), Vec::new()),
        };
        let _slot = match self.slot_with_fresh(msg, credential.as_deref_mut()).await {
            Ok(slot) => slot,
            Err(e) => return (Delivery::AuthFailed(e), Vec::new()),
        };
        if !gate.open().await {
            return (Delivery::Withheld, Vec::new());
        }
        // Signed last: the gate may wait on the state table.
        if let Some(c) = credential.as_deref() {
            if let Err(reason) = c.apply(&mut request, &msg.id, SystemTime::now()) {
                return (Delivery::Invalid(reason), Vec::new());
            }
        }
        let (client, _lease) = self.client_to_send(clients, &msg.destination_url);
        let credential = credential.as_deref();
        match client.execute(request).await {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let headers = std::mem::take(response.headers_mut());
                let failed = !(200..300).contains(&status);
                let snippet_bytes = if failed { self.snippet_bytes } else { 0 };
                let keep = if read_401_body && status == 401 {
                    AUTH_BODY_LIMIT.max(snippet_bytes)
                } else {
                    snippet_bytes
                };
                let body = drain(response, keep).await;
                let mut snippet = body[..body.len().min(snippet_bytes)].to_vec();
                // A destination that echoes the request's key or token in
                // its error must not leave it in the ledger.
                if !snippet.is_empty() {
                    for secret in credential.map(Credential::secrets).unwrap_or_default() {
                        crate::auth::redact(&mut snippet, &secret);
                    }
                }
                let answered = Delivery::Answered {
                    status,
                    headers,
                    token_expired: false,
                    snippet,
                };
                (answered, body)
            }
            Err(e) => (transport_failure(e), Vec::new()),
        }
    }
}

/// The request as it will be sent, but for its credential, which
/// [`Deliverer::send`] applies last, after every other header is final, so
/// that a signature covers exactly what is sent.
fn build(
    client: &reqwest::Client,
    msg: &RetryMessage,
    body: Option<&bytes::Bytes>,
    timeout: Duration,
) -> Result<reqwest::Request, String> {
    let method = reqwest::Method::from_bytes(msg.request.method.as_bytes())
        .map_err(|_| "request.method: not a valid method".to_owned())?;
    let mut headers = request_headers(msg)?;
    // Set here rather than as the client's default header, which the
    // client would copy into every request; the message's own wins.
    headers
        .entry(http::header::USER_AGENT)
        .or_insert(HeaderValue::from_static(USER_AGENT));
    let mut builder = client
        .request(method, msg.destination_url.clone())
        .headers(headers)
        .timeout(timeout);
    if let Some(body) = body {
        // Shared, not copied: every request of the attempt sends the same
        // bytes.
        builder = builder.body(body.clone());
    }
    builder.build().map_err(|e| e.without_url().to_string())
}

/// What every client of the deliverer shares; a profile's client adds its
/// certificate.
#[derive(Clone)]
struct ClientSettings {
    resolver: Arc<GuardedResolver>,
    max_idle_per_host: usize,
    timeout: Duration,
    ca_bundle: Option<crate::tls::CaBundle>,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("ca_bundle", &self.ca_bundle)
            .finish_non_exhaustive()
    }
}

impl ClientSettings {
    /// A client that follows no redirect, resolves through the destination
    /// policy and trusts the public roots plus `CA_BUNDLE`'s; with
    /// `identity`, it presents that client certificate when asked.
    /// The same settings, keeping no idle connection.
    fn unpooled(&self) -> ClientSettings {
        ClientSettings {
            max_idle_per_host: 0,
            ..self.clone()
        }
    }

    fn client(
        &self,
        identity: Option<reqwest::Identity>,
    ) -> Result<reqwest::Client, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::clone(&self.resolver) as Arc<dyn reqwest::dns::Resolve>)
            .pool_max_idle_per_host(self.max_idle_per_host)
            .pool_idle_timeout(pool::POOL_IDLE)
            .connect_timeout(self.timeout)
            .no_proxy()
            .tls_certs_only(crate::tls::trusted_roots(self.ca_bundle.as_ref()));
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder.build()
    }
}

/// A profile's client and the certificate it presents.
#[derive(Debug)]
struct TlsClient {
    read: CertificateRead,
    clients: Clients,
}

/// A client, and its twin that keeps no idle connection (`None`: the
/// shared one, built when first needed).
#[derive(Debug, Clone)]
struct Clients {
    pooled: reqwest::Client,
    unpooled: Option<reqwest::Client>,
}

/// The headers to send: the message's, filtered, plus `Idempotency-Key`.
pub fn request_headers(msg: &RetryMessage) -> Result<HeaderMap, String> {
    // Headers named in the message's own `Connection` header are hop-by-hop
    // too.
    let connection_named: Vec<String> = msg
        .request
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.iter())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::with_capacity(msg.request.headers.len() + 1);
    for (name, values) in &msg.request.headers {
        let dropped = DROPPED_HEADERS.iter().any(|d| d.eq_ignore_ascii_case(name))
            || connection_named
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name));
        if dropped {
            continue;
        }
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("request.headers.{name}: not a valid header name"))?;
        for value in values.iter() {
            let value = HeaderValue::from_bytes(value.as_bytes())
                .map_err(|_| format!("request.headers.{name}: not a valid header value"))?;
            headers.append(header.clone(), value);
        }
    }
    let key = HeaderName::from_static("idempotency-key");
    if !headers.contains_key(&key) {
        let id = HeaderValue::from_str(&msg.id)
            .map_err(|_| "id: not usable as a header value".to_owned())?;
        headers.insert(key, id);
    }
    Ok(headers)
}

/// Reads a bounded part of the body so the connection can be reused, and
/// returns its first `keep` bytes; errors here do not change the outcome,
/// the status is in.
async fn drain(mut response: reqwest::Response, keep: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut read = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        if kept.len() < keep {
            let room = keep - kept.len();
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        read += chunk.len();
        if read > DRAIN_LIMIT {
            break;
        }
    }
    kept
}

fn transport_failure(e: reqwest::Error) -> Delivery {
    let e = e.without_url();
    // The resolver's refusal and rustls' errors are buried in the chain.
    let (mut dns, mut tls) = (false, false);
    for err in causes(&e) {
        if let Some(resolve) = err.downcast_ref::<ResolveError>() {
            match resolve {
                ResolveError::NotAllowed(n) => return Delivery::NotAllowed(n.clone()),
                ResolveError::Lookup(_) => dns = true,
            }
        }
        tls |= err.is::<rustls::Error>();
    }
    let detail = error_chain(&e);
    let kind = if e.is_timeout() {
        NoResponse::Timeout
    } else if dns {
        NoResponse::Dns
    } else if tls {
        NoResponse::Tls
    } else if e.is_connect() {
        NoResponse::Connect
    } else {
        NoResponse::Other
    };
    Delivery::NoResponse { kind, detail }
}

/// The error and its causes, outermost first. An `io::Error`'s `source()`
/// skips the error it wraps (that is how rustls and hyper report), so the
/// wrapped error is taken instead.
fn causes<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut chain = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        chain.push(err);
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    chain
}

/// `outer: inner: innermost`, skipping repeats, on one line.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in causes(e) {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Resolves names with the system resolver, then applies the destination
/// policy to every address. A name with any refused address is refused
/// whole, so a round-robin record cannot smuggle in a private address.
struct GuardedResolver {
    policy: Arc<DestinationPolicy>,
    /// The system resolver when `None`.
    inner: Option<Arc<dyn reqwest::dns::Resolve>>,
}

#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("DNS lookup failed: {0}")]
    Lookup(std::io::Error),
    #[error("{0}")]
    NotAllowed(NotAllowed),
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let inner = self.inner.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match inner {
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await
                    .map_err(ResolveError::Lookup)?
                    .collect(),
                Some(inner) => inner
                    .resolve(name)
                    .await
                    .map_err(|e| ResolveError::Lookup(std::io::Error::other(e.to_string())))?
                    .collect(),
            };
            if addrs.is_empty() {
                return Err(ResolveError::Lookup(std::io::Error::other("no addresses")).into());
            }
            for addr in &addrs {
                policy.check_address(addr.ip()).map_err(|_| {
                    ResolveError::NotAllowed(NotAllowed::PrivateAddress(format!(
                        "{} (resolved from {host})",
                        addr.ip()
                    )))
                })?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
#[path = "credential_hosts_tests.rs"]
mod credential_hosts_tests;

#[cfg(test)]
#[path = "send_tests.rs"]
mod send_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: serde_json::Value) -> RetryMessage {
        RetryMessage::parse(
            &serde_json::json!({
                "id": "msg-1",
                "destinationUrl": "https://api.example.com/x",
                "request": { "method": "POST", "headers": headers }
            })
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn hop_by_hop_host_and_content_length_are_dropped() {
        let h = request_headers(&message(serde_json::json!({
            "Connection": "keep-alive, X-Hop",
            "Keep-Alive": "timeout=5",
            "X-Hop": "1",
            "Transfer-Encoding": "chunked",
            "TE": "trailers",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic x",
            "Host": "evil.example.com",
            "Content-Length": "999",
            "Content-Type": "application/json",
            "Accept": ["a/b", "c/d"],
        })))
        .unwrap();
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept", "content-type", "idempotency-key"]);
        assert_eq!(h.get_all("accept").iter().count(), 2);
    }

    #[test]
    fn the_message_id_is_the_idempotency_key_unless_one_is_present() {
        let h = request_headers(&message(serde_json::json!({}))).unwrap();
        assert_eq!(h["idempotency-key"], "msg-1");
        let h = request_headers(&message(serde_json::json!({"Idempotency-Key": "own"}))).unwrap();
        assert_eq!(
            h.get_all("idempotency-key").iter().collect::<Vec<_>>(),
            ["own"]
        );
    }
}
