//! `retryq console` (spec §14): the operator's web page on 127.0.0.1.
//!
//! It reads AWS with the operator's own credentials and serves
//! server-rendered pages: the dead letters ([`letters`], [`pages`]), one
//! letter with its attempt history, the destinations' health ([`health`]),
//! and the actions ([`actions`]): redrive, pause, resume, each confirmed
//! and each logged as one line on the console's standard output. The
//! guard ([`guard`]) keeps everyone but the holder of the printed token
//! out. Nothing here is in the Lambda bootstrap (feature `console`).

mod actions;
mod guard;
mod health;
mod html;
mod letters;
mod mask;
mod pages;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::config::StateSettings;
use crate::fleet::FleetState;
use crate::queue::Queues;

/// What `retryq console` was given.
#[derive(Debug, Clone)]
pub struct Options {
    pub dlq_url: String,
    /// Where redrives go; without it the console does not redrive.
    pub queue_url: Option<String>,
    pub state_table: Option<String>,
    /// 0: any free port.
    pub port: u16,
}

/// The console's state, shared by every request.
pub struct Console {
    token: String,
    csrf: String,
    port: u16,
    dlq_url: String,
    queue_url: Option<String>,
    queues: Queues,
    fleet: Option<Arc<FleetState>>,
    table: Option<(aws_sdk_dynamodb::Client, String)>,
    payload_buckets: Vec<String>,
    store: crate::payload::store::PayloadStore,
    letters: letters::Letters,
    /// One walk over the DLQ at a time (a read or a redrive).
    walk: tokio::sync::Mutex<()>,
    /// Confirmation pages shown and not yet used: each confirms once.
    nonces: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Most confirmations waiting at once (older ones are forgotten).
const MOST_NONCES: usize = 1000;

impl Console {
    /// A one-time token for a confirmation page.
    fn issue_nonce(&self) -> String {
        let nonce = guard::new_token();
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if nonces.len() >= MOST_NONCES {
            nonces.clear();
        }
        nonces.insert(nonce.clone());
        nonce
    }

    /// Uses up `nonce`: `false` when it was not issued or used already.
    fn spend_nonce(&self, nonce: Option<&str>) -> bool {
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonce.is_some_and(|n| nonces.remove(n))
    }
}

/// A form or query string: its pairs, repeated names kept.
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(text: &str) -> Form {
        Form(
            url::form_urlencoded::parse(text.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, when not empty.
    pub fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serves the console until `shutdown`; prints its URL once.
pub async fn serve(
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, options.port)))
            .await
            .map_err(|e| format!("--port {}: cannot listen on 127.0.0.1: {e}", options.port))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let console = Arc::new(build(options, port).await?);
    println!(
        "retryq console: open http://127.0.0.1:{port}/?token={} (this URL is the key: keep it to yourself)",
        console.token
    );
    letters::read_again(console.clone());
    let app = router(console);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())
}

async fn build(options: Options, port: u16) -> Result<Console, String> {
    let sdk = crate::wiring::sdk_config_from_env().await;
    let config =
        crate::config::Config::from_env().map_err(|e| format!("configuration error: {e}"))?;
    let (fleet, table) = match options.state_table.filter(|t| !t.is_empty()) {
        Some(name) => {
            let client = crate::fleet::client_for(&sdk);
            let settings = StateSettings {
                table: name.clone(),
                ..StateSettings::default()
            };
            (
                Some(FleetState::new(settings, client.clone())),
                Some((client, name)),
            )
        }
        None => (None, None),
    };
    let queues = Queues::new(crate::wiring::sqs_client_from_env().await);
    Ok(Console {
        fleet: fleet.map(Arc::new),
        table,
        payload_buckets: config.payload_buckets.clone(),
        ..Console::new(queues, port, options.dlq_url, options.queue_url)
    })
}

impl Console {
    /// A console over `queues` with fresh tokens, nothing read yet, and no
    /// state table or payload buckets.
    fn new(queues: Queues, port: u16, dlq_url: String, queue_url: Option<String>) -> Console {
        Console {
            token: guard::new_token(),
            csrf: guard::new_token(),
            port,
            dlq_url,
            queue_url,
            queues,
            fleet: None,
            table: None,
            payload_buckets: Vec::new(),
            store: crate::payload::store::PayloadStore::new(),
            letters: letters::Letters::default(),
            walk: tokio::sync::Mutex::new(()),
            nonces: std::sync::Mutex::default(),
        }
    }
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(pages::letters))
        .route("/letter/{sqs_id}", get(pages::letter))
        .route("/destinations", get(health::destinations))
        .route("/refresh", post(actions::refresh))
        .route("/redrive", post(actions::redrive))
        .route("/pause", post(actions::pause))
        .route("/resume", post(actions::resume))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            guard::check,
        ))
        .with_state(console)
}

/// For `make bench`: the dead-letters page for `query` over `messages`,
/// rendered as a request to a console that read them would be, without
/// AWS; and how long summarising the messages took.
#[doc(hidden)]
pub fn render_over(
    messages: &[aws_sdk_sqs::types::Message],
    queries: &[&str],
) -> (std::time::Duration, Vec<(String, std::time::Duration)>) {
    let client = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build(),
    );
    let console = Console::new(Queues::new(client), 0, "bench".into(), Some("bench".into()));
    let started = std::time::Instant::now();
    console.letters.fill(messages);
    let summarised = started.elapsed();
    let pages = queries
        .iter()
        .map(|q| {
            let started = std::time::Instant::now();
            let html = pages::render(&console, q);
            (html, started.elapsed())
        })
        .collect();
    (summarised, pages)
}

/// One line on the console's log (its standard output): control
/// characters shown as `?`, so that nothing a form carries can forge a
/// second line.
fn log_action(line: &str) {
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    println!("{} {line}", crate::clock::rfc3339(letters::now_ms()));
}
