//! A real browser for the console's tests: Debian's headless Chromium,
//! driven through chromedriver's W3C WebDriver API (plain HTTP and JSON on
//! 127.0.0.1, so no client crate). `make test`'s tool step installs both;
//! a test that cannot start them fails.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{free_port, Running};

/// Sends `body` as JSON; the answer's JSON.
async fn send_json(request: reqwest::RequestBuilder, body: Option<Value>) -> Value {
    let mut request = request.timeout(Duration::from_secs(60));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let answer = request.send().await.expect("chromedriver answers");
    let bytes = answer.bytes().await.expect("chromedriver's answer");
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session. Dropping it stops the driver's process group,
/// Chromium with it, and removes the profile.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: Running,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    pub async fn start() -> Browser {
        let port = free_port();
        let mut command = std::process::Command::new("chromedriver");
        command
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let driver = Running::spawn(command);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let started = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start on port {port} (is chromium-driver installed? make test installs it)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("retryq-chromium-{}-{port}", std::process::id()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--window-size=1400,1000", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let answer = send_json(http.post(format!("{base}/session")), Some(capabilities)).await;
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_owned();
        Browser {
            http,
            base,
            session,
            _driver: driver,
            _profile: TempDir(profile),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = self.http.request(method, url);
        send_json(request, body).await["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// The page as the browser holds it now.
    pub async fn dom(&self) -> String {
        let v = self.call(reqwest::Method::GET, "/source", None).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        let body = self.find("body").await;
        let v = self
            .call(reqwest::Method::GET, &format!("/element/{body}/text"), None)
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    pub async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css:?} on the page: {v}"))
            .to_owned()
    }

    pub async fn count(&self, css: &str) -> usize {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array().map_or(0, Vec::len)
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Waits (at most `limit`) until the page's text holds `wanted`.
    pub async fn wait_for_text(&self, wanted: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            let text = self.text().await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                started.elapsed() < limit,
                "no {wanted:?} within {limit:?}; the page says:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the page, written to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a screenshot"))
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}
