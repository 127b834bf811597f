//! A malformed variable stops the function at start-up, before it asks the
//! Runtime API for the first event: exit status non-zero and a message on
//! stderr naming the variable (contract §5).

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

fn run_with(var: &str, value: &str) -> (std::process::Output, usize) {
    // A stand-in Runtime API that only counts connections.
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    api.set_nonblocking(true).unwrap();
    let addr = api.local_addr().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_retryq-processor"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "retryq-processor")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env(var, value)
        .output()
        .expect("the function binary runs");
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_retryq-processor"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            api.local_addr().unwrap().to_string(),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "retryq-processor")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
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
