//! The soak's destination: a raw HTTP server on loopback that answers each
//! message's requests from a script drawn from the seed (2xx, slow 2xx,
//! 5xx, 429, 408, 404, a hang past the request timeout, a connection
//! closed without an answer), and logs every request: which message, from
//! which client port, when, and what was answered.
//!
//! Like a real idempotent destination, once it has answered a message 2xx
//! it answers every later request for it 2xx.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};

use crate::sqs_proxy::read_request;

/// What the destination does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Ok,
    /// 200 after this long.
    Slow(Duration),
    Status(u16),
    /// No answer, longer than the request timeout; then the connection
    /// is closed.
    Hang,
    /// The connection is closed without an answer.
    Reset,
}

/// One request as the destination saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: usize,
    /// The client's port: which worker sent it, while that connection is
    /// open.
    pub peer_port: u16,
    pub started: Instant,
    pub ended: Option<Instant>,
    /// The status written in full (`None`: hung or reset).
    pub answer: Option<u16>,
}

impl Seen {
    /// A final answer: the message is done once its worker acts on it.
    pub fn is_final(&self) -> bool {
        matches!(self.answer, Some(200 | 404))
    }
}

#[derive(Default)]
struct Log {
    seen: Vec<Seen>,
    /// Requests so far, per message.
    count: Vec<usize>,
    delivered: Vec<bool>,
}

/// A running destination; stops when dropped.
pub struct Destination {
    pub port: u16,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Destination {
    /// Serves `scripts[id][n]` to the `n`th request for message `id`
    /// (its last entry once the script ends) on `/m/{id}`.
    pub async fn start(scripts: Vec<Vec<Fault>>, hang: Duration) -> Destination {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Log {
            count: vec![0; scripts.len()],
            delivered: vec![false; scripts.len()],
            seen: Vec::new(),
        }));
        let scripts = Arc::new(scripts);
        let l = Arc::clone(&log);
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (log, scripts) = (Arc::clone(&l), Arc::clone(&scripts));
                tokio::spawn(serve(stream, peer.port(), log, scripts, hang));
            }
        });
        Destination { port, log, task }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().seen.clone()
    }

    /// Requests from these client ports still waiting for their answer,
    /// and those with a final answer whose message is not `finished`
    /// (deleted) yet: together, what that worker has in flight.
    pub fn in_flight_from(
        &self,
        ports: &std::collections::HashSet<u16>,
        finished: impl Fn(usize) -> bool,
    ) -> (usize, usize) {
        let log = self.log.lock().unwrap();
        let mine = log.seen.iter().filter(|s| ports.contains(&s.peer_port));
        let (mut open, mut answered) = (0, 0);
        for s in mine {
            if s.ended.is_none() {
                open += 1;
            } else if s.is_final() && !finished(s.id) {
                answered += 1;
            }
        }
        (open, answered)
    }

    /// Messages answered 2xx so far.
    pub fn delivered(&self) -> Vec<bool> {
        self.log.lock().unwrap().delivered.clone()
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    peer_port: u16,
    log: Arc<Mutex<Log>>,
    scripts: Arc<Vec<Vec<Fault>>>,
    hang: Duration,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    while let Some(request) = read_request(&mut reader).await {
        let Some(id) = request
            .path
            .strip_prefix("/m/")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < scripts.len())
        else {
            let _ = write
                .write_all(b"HTTP/1.1 400 X\r\ncontent-length: 0\r\n\r\n")
                .await;
            continue;
        };
        let (index, fault) = {
            let mut log = log.lock().unwrap();
            let n = log.count[id];
            log.count[id] += 1;
            let script = &scripts[id];
            let fault = if log.delivered[id] {
                Fault::Ok
            } else {
                script[n.min(script.len() - 1)]
            };
            log.seen.push(Seen {
                id,
                peer_port,
                started: Instant::now(),
                ended: None,
                answer: None,
            });
            (log.seen.len() - 1, fault)
        };
        let status = match fault {
            Fault::Ok => Some(200),
            Fault::Slow(d) => {
                tokio::time::sleep(d).await;
                Some(200)
            }
            Fault::Status(s) => Some(s),
            Fault::Hang => {
                tokio::time::sleep(hang).await;
                None
            }
            Fault::Reset => None,
        };
        let written = match status {
            Some(s) => {
                let answer = format!("HTTP/1.1 {s} X\r\ncontent-length: 2\r\n\r\nok");
                write.write_all(answer.as_bytes()).await.is_ok()
            }
            None => false,
        };
        let mut log = log.lock().unwrap();
        let seen = &mut log.seen[index];
        seen.ended = Some(Instant::now());
        seen.answer = status.filter(|_| written);
        if written && status == Some(200) {
            log.delivered[id] = true;
        }
        if !written {
            return;
        }
    }
}
