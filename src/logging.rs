//! Log lines, cheaply: buffered per batch, plain or JSON, no colour codes
//! unless stdout is a terminal.
//!
//! Every record gets one line, so a line must cost next to nothing. While a
//! batch runs ([`BatchLogs`]), lines gather in one buffer and reach stdout
//! in large writes, in order: when the buffer passes [`FLUSH_AT`] bytes and
//! when the batch ends (its EMF metrics line last). Outside a batch a line
//! is written at once. A panic in a record is caught with the record, so it
//! loses no line; only a crash of the whole process can lose the lines of
//! the batch it was running.
//!
//! [`init`] installs the subscriber the binaries use: the level from
//! `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else `info`; JSON lines when
//! Lambda's `AWS_LAMBDA_LOG_FORMAT` is `JSON`, else `LEVEL message k=v`.
//! Span context (Lambda's request id on every line) is left out: Lambda's
//! own `START`/`END` lines carry it once per invocation.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The buffer is written out when it grows past this many bytes.
pub const FLUSH_AT: usize = 64 * 1024;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static BATCHES_RUNNING: AtomicUsize = AtomicUsize::new(0);
static TO_STDERR: AtomicBool = AtomicBool::new(false);
static CAPTURED: AtomicBool = AtomicBool::new(false);

/// Writes this process's log and metric lines with `print!` instead of to
/// the stdout handle, so that a test harness capturing output keeps them
/// with the test that made them (shown only when it fails) rather than on
/// the terminal. For the test suites of processes that run a
/// [`Processor`](crate::process::Processor) in-process.
pub fn capture_in_tests() {
    CAPTURED.store(true, Ordering::Relaxed);
}

/// `print!`, which a test harness captures, when [`capture_in_tests`] was
/// called: `true` if it wrote `bytes`.
fn printed(bytes: &[u8]) -> bool {
    if !CAPTURED.load(Ordering::Relaxed) {
        return false;
    }
    print!("{}", String::from_utf8_lossy(bytes));
    true
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The Lambda function: CloudWatch Logs reads stdout.
    Stdout,
    /// The CLI, whose stdout is the command's output.
    Stderr,
}

/// While alive, log lines are buffered; dropping it writes them out.
#[derive(Debug)]
pub struct BatchLogs(());

impl BatchLogs {
    pub fn begin() -> BatchLogs {
        BATCHES_RUNNING.fetch_add(1, Ordering::SeqCst);
        BatchLogs(())
    }

    /// Adds EMF lines to stdout, after the batch's log lines when these go
    /// to stdout too.
    pub fn metrics(&self, bytes: &[u8]) {
        if printed(bytes) {
            return;
        }
        if TO_STDERR.load(Ordering::Relaxed) {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(bytes);
            let _ = stdout.flush();
        } else {
            let _ = LogWriter.write_all(bytes);
        }
    }
}

impl Drop for BatchLogs {
    fn drop(&mut self) {
        BATCHES_RUNNING.fetch_sub(1, Ordering::SeqCst);
        flush();
    }
}

/// Writes out whatever is buffered.
pub fn flush() {
    let mut buffer = BUFFER.lock().unwrap_or_else(|p| p.into_inner());
    if !buffer.is_empty() {
        write_out(&buffer);
        buffer.clear();
    }
}

fn write_out(bytes: &[u8]) {
    // The crate's own unit tests write lines too: to their captured output.
    if cfg!(test) {
        print!("{}", String::from_utf8_lossy(bytes));
        return;
    }
    if printed(bytes) {
        return;
    }
    if TO_STDERR.load(Ordering::Relaxed) {
        let _ = std::io::stderr().lock().write_all(bytes);
    } else {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(bytes);
        let _ = stdout.flush();
    }
}

/// The writer every log line goes through (one `write_all` per line).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if BATCHES_RUNNING.load(Ordering::Relaxed) == 0 {
            write_out(bytes);
            return Ok(bytes.len());
        }
        let mut buffer = BUFFER.lock().unwrap_or_else(|p| p.into_inner());
        buffer.extend_from_slice(bytes);
        if buffer.len() >= FLUSH_AT {
            write_out(&buffer);
            buffer.clear();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(feature = "processor")]
pub use subscriber::init;

#[cfg(feature = "processor")]
mod subscriber {
    use std::io::IsTerminal;

    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
    use tracing_subscriber::fmt::FmtContext;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::util::SubscriberInitExt;

    use super::{LogWriter, Stream, TO_STDERR};

    /// Installs the process's log subscriber, writing to `stream`, with
    /// `default` filter directives unless `AWS_LAMBDA_LOG_LEVEL` (a level)
    /// or `RUST_LOG` (directives) says otherwise.
    pub fn init(stream: Stream, default: &str) {
        TO_STDERR.store(
            stream == Stream::Stderr,
            std::sync::atomic::Ordering::Relaxed,
        );
        let directives = std::env::var("AWS_LAMBDA_LOG_LEVEL")
            .ok()
            .filter(|l| l.parse::<LevelFilter>().is_ok())
            .map(|l| l.to_ascii_lowercase())
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| default.to_owned());
        let filter = targets(&directives);
        let json =
            std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
        let terminal = match stream {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        };
        let builder = tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(terminal);
        let _ = if json {
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .without_time()
                .with_target(false)
                .finish()
                .with(filter)
                .try_init()
        } else {
            builder.event_format(Line).finish().with(filter).try_init()
        };
    }

    /// The filter of `RUST_LOG`-style directives (`level`, `target=level`,
    /// comma-separated), leaving out any that do not parse; `info` when none
    /// does. A target-and-level filter, not `EnvFilter`: span and field
    /// directives are not supported, and the regex engine they need stays
    /// out of the bootstrap.
    pub(super) fn targets(directives: &str) -> Targets {
        let valid: Vec<&str> = directives
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty() && d.parse::<Targets>().is_ok())
            .collect();
        match valid.join(",").parse::<Targets>() {
            Ok(targets) if !valid.is_empty() => targets,
            _ => Targets::new().with_default(LevelFilter::INFO),
        }
    }

    /// `LEVEL message k=v …`: no time (Lambda and journald add it), no
    /// target, no span context.
    struct Line;

    impl<S, N> FormatEvent<S, N> for Line
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &tracing::Event<'_>,
        ) -> std::fmt::Result {
            write!(writer, "{} ", event.metadata().level())?;
            ctx.field_format().format_fields(writer.by_ref(), event)?;
            writeln!(writer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_written_during_a_batch_wait_for_its_end() {
        // The only test touching the process-wide buffer.
        // Other tests' batches may share the buffer: look for our lines.
        let logs = BatchLogs::begin();
        logs.metrics(b"first line of this test\n");
        LogWriter.write_all(b"second line of this test\n").unwrap();
        let buffered = String::from_utf8(BUFFER.lock().unwrap().clone()).unwrap();
        assert!(
            buffered.contains("first line of this test\nsecond line of this test\n"),
            "{buffered}"
        );
        drop(logs);
        let left = String::from_utf8(BUFFER.lock().unwrap().clone()).unwrap();
        assert!(!left.contains("of this test"), "written out at the end");
    }

    #[cfg(feature = "processor")]
    #[test]
    fn log_directives_keep_what_parses_and_default_to_info() {
        use tracing::Level;
        let f = super::subscriber::targets("warn,retryq=debug,hyper=lolwut,[span{x=1}]=trace");
        assert!(f.would_enable("retryq::process", &Level::DEBUG));
        assert!(!f.would_enable("retryq::process", &Level::TRACE));
        assert!(f.would_enable("hyper::client", &Level::WARN));
        assert!(!f.would_enable("hyper::client", &Level::INFO));
        for nothing_valid in ["", "x=lolwut", "a=b=c", " , "] {
            let f = super::subscriber::targets(nothing_valid);
            assert!(f.would_enable("retryq", &Level::INFO), "{nothing_valid:?}");
            assert!(
                !f.would_enable("retryq", &Level::DEBUG),
                "{nothing_valid:?}"
            );
        }
        // A target alone, as env_logger reads it: everything of that target.
        let f = super::subscriber::targets("retryq");
        assert!(f.would_enable("retryq::worker", &Level::TRACE));
        assert!(!f.would_enable("h2", &Level::ERROR));
    }
}
