//! A malformed variable stops the function at start-up, before it asks the
//! Runtime API for the first event: exit status non-zero and a message on
//! stderr naming the variable (spec §5).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The function binary with a bare Lambda environment and this Runtime API.
fn function(runtime_api: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_retryq-processor"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "retryq-processor")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1");
    command
}

fn run_with(var: &str, value: &str) -> (std::process::Output, usize) {
    // A stand-in Runtime API that only counts connections.
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    api.set_nonblocking(true).unwrap();
    let addr = api.local_addr().unwrap();
    let mut child = function(&addr.to_string())
        .env(var, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the function binary runs");
    // Bounded: a function that did not stop would wait for an event forever.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{var}={value}: the function did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut connections = 0;
    while api.accept().is_ok() {
        connections += 1;
    }
    (output, connections)
}

#[test]
fn each_malformed_variable_stops_the_function_before_the_first_event() {
    for (var, value) in [
        ("MAX_ATTEMPTS", "0"),
        ("MAX_ATTEMPTS", "lots"),
        ("BACKOFF_BASE_SECONDS", "-1"),
        ("BACKOFF_MAX_SECONDS", "99999"),
        ("RETRY_AFTER_MAX_SECONDS", "1e3"),
        ("REQUEST_TIMEOUT_SECONDS", "0"),
        ("MAX_CONCURRENCY", "0"),
        ("ALLOWED_DESTINATIONS", "https://api.example.com/"),
        ("ALLOW_PRIVATE_DESTINATIONS", "TRUE"),
        // Durations beyond 12 hours (once accepted, then a panic).
        ("BREAKER_COOLDOWN_SECONDS", "18446744073709551615"),
        ("SECRET_TTL_SECONDS", "43201"),
        ("RETENTION_MARGIN_SECONDS", "99999999"),
        ("BATCHING_WINDOW_SECONDS", "301"),
    ] {
        let (output, connections) = run_with(var, value);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{var}={value} should stop the function"
        );
        assert!(
            stderr.contains(var),
            "{var}={value}: stderr does not name it: {stderr}"
        );
        assert_eq!(connections, 0, "{var}={value}: asked for an event anyway");
    }
}

#[test]
fn a_valid_configuration_goes_on_to_ask_for_an_event() {
    // The control for the test above: the same stand-in API does see the
    // function's first `/next` request when nothing is malformed.
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    api.set_nonblocking(true).unwrap();
    let mut child = function(&api.local_addr().unwrap().to_string())
        .env("MAX_ATTEMPTS", "3")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut connected = false;
    for _ in 0..200 {
        if api.accept().is_ok() {
            connected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(connected, "the function never asked for an event");
}
