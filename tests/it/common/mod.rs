//! Shared harness of the integration tests: starts the real `riskhost`
//! binary on an ephemeral port and talks to it over HTTP.
#![allow(dead_code)]

pub(crate) mod db;
pub(crate) mod nats;
pub(crate) mod oci;
pub(crate) mod routes;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root.
pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The example models, built by `plugins/build.sh` (which `tests/run.sh` runs first).
pub(crate) fn plugins_dir() -> PathBuf {
    let dir = workspace().join("plugins/dist");
    for model in ["var-historical", "var-parametric", "es-historical"] {
        assert!(
            dir.join(format!("{model}.wasm")).is_file(),
            "{}/{model}.wasm is missing: run plugins/build.sh (tests/run.sh does) before the tests",
            dir.display()
        );
    }
    dir
}

/// The test models (hostile, slow, Monte Carlo), built by
/// `tests/plugins/build.sh` (which `tests/run.sh` runs first).
pub(crate) fn test_plugins_dir() -> PathBuf {
    let dir = workspace().join("tests/plugins/dist");
    assert!(
        dir.is_dir(),
        "{} is missing: run tests/plugins/build.sh (tests/run.sh does) before the tests",
        dir.display()
    );
    dir
}

/// A fresh plugins directory holding the named example models (from
/// `plugins/dist`) and test models (from `tests/plugins/dist`).
pub(crate) fn plugins_with(examples: &[&str], test_models: &[&str]) -> TempDir {
    let dir = TempDir::new("plugins");
    for (source, names) in [(plugins_dir(), examples), (test_plugins_dir(), test_models)] {
        for name in names {
            let file = format!("{name}.wasm");
            assert!(
                source.join(&file).is_file(),
                "{}/{file} is missing: run plugins/build.sh and tests/plugins/build.sh",
                source.display()
            );
            std::fs::copy(source.join(&file), dir.path().join(&file)).expect("copy model");
        }
    }
    dir
}

/// The `riskhost` binary under test: `$RISKHOST_TEST_BINARY` when set, else
/// the one cargo built for these tests. The override exists because
/// worktrees sharing one CARGO_TARGET_DIR also share `target/debug/riskhost`,
/// which another checkout's build can replace while these tests run.
pub(crate) fn binary() -> String {
    std::env::var("RISKHOST_TEST_BINARY")
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_riskhost").to_owned())
}

/// A riskhost server process, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    pub(crate) client: reqwest::blocking::Client,
    /// The model store of this server, unless the test gave `--data-dir`.
    _data_dir: Option<TempDir>,
    /// What the server logged to stderr, when started by [`Server::start_logging`].
    logs: Option<Arc<Mutex<Vec<String>>>>,
}

impl Server {
    /// Starts `riskhost serve` with the example models plus `extra` flags and
    /// waits until it is ready.
    pub(crate) fn start(extra: &[&str]) -> Server {
        let plugins = plugins_dir();
        let mut args = vec!["--plugins", plugins.to_str().unwrap_or_default()];
        args.extend_from_slice(extra);
        Self::start_with(&args)
    }

    /// Starts `riskhost serve --listen 127.0.0.1:0` with exactly `args`, plus
    /// a fresh `--data-dir` of its own unless `args` give one,
    /// `--anonymous-scoring` unless `args` set it (most suites score
    /// without keys; tests/it/auth.rs passes `--anonymous-scoring=false`), and
    /// no rate limit and no failed-authentication budget unless `args` set one.
    pub(crate) fn start_with(args: &[&str]) -> Server {
        Self::launch(args, None, true)
    }

    /// Like [`Server::start_with`], returning once the server listens,
    /// before it is ready (models may still be loading).
    pub(crate) fn start_unready(args: &[&str]) -> Server {
        Self::launch(args, None, false)
    }

    /// Like [`Server::start_with`], logging JSON lines at `filter`
    /// (`RUST_LOG` syntax) into a buffer that [`Server::logs`] returns.
    pub(crate) fn start_logging(args: &[&str], filter: &str) -> Server {
        Self::launch(args, Some(filter), true)
    }

    fn launch(args: &[&str], log_filter: Option<&str>, wait_ready: bool) -> Server {
        let data_dir =
            (!args.iter().any(|a| a.starts_with("--data-dir"))).then(|| TempDir::new("store"));
        let mut command = Command::new(binary());
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args);
        if !args.iter().any(|a| a.starts_with("--anonymous-scoring")) {
            command.arg("--anonymous-scoring");
        }
        // Load-bearing suites send thousands of requests from one address.
        if !args.iter().any(|a| a.starts_with("--rate-limit")) {
            command.args(["--rate-limit-per-minute", "0"]);
        }
        // The auth suites send hundreds of wrong keys on purpose.
        if !args.iter().any(|a| a.starts_with("--auth-failure")) {
            command.args(["--auth-failures-per-minute", "0"]);
        }
        if let Some(dir) = &data_dir {
            command.arg("--data-dir").arg(dir.path());
        }
        if log_filter.is_some() {
            command.args(["--log-format", "json"]);
        }
        let mut child = command
            .env("RUST_LOG", log_filter.unwrap_or("warn"))
            .stdout(Stdio::piped())
            .stderr(if log_filter.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("cannot start riskhost");
        let logs = child.stderr.take().map(|stderr| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
            });
            lines
        });
        let stdout = child.stdout.take().expect("no stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("riskhost listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("riskhost did not announce its address");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let server = Server {
            child,
            base,
            client,
            _data_dir: data_dir,
            logs,
        };
        if wait_ready {
            server.wait_ready(Duration::from_secs(120));
        }
        server
    }

    pub(crate) fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.client.get(self.url("/readyz")).send()
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "riskhost did not become ready in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET, returning status and JSON body.
    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().expect("GET failed");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub(crate) fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .expect("GET failed")
            .text()
            .expect("text body")
    }

    /// POST JSON, returning status and JSON body.
    pub(crate) fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .expect("POST failed");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// POST raw bytes with a content type.
    pub(crate) fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::blocking::Body>,
    ) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .expect("POST failed");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The JSON log lines so far (servers started by [`Server::start_logging`]).
    pub(crate) fn logs(&self) -> Vec<Value> {
        self.logs
            .as_ref()
            .and_then(|l| l.lock().ok().map(|l| l.clone()))
            .unwrap_or_default()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts an error answer: the status, the code, and that the message
/// mentions `needle`.
#[track_caller]
pub(crate) fn assert_error(answer: &(u16, Value), status: u16, code: &str, needle: &str) {
    let (got_status, body) = answer;
    assert_eq!(*got_status, status, "unexpected status; body: {body}");
    assert_eq!(body["error"]["code"], code, "unexpected code; body: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message {message:?} does not mention {needle:?}"
    );
}

/// A fresh temporary directory under the target dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "riskhost-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// The digest of `name`'s active version, as `GET /v1/models` lists it.
pub(crate) fn active_digest(server: &Server, name: &str) -> Option<String> {
    let (_, body) = server.get("/v1/models");
    body["models"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["digest"].as_str())
        .map(str::to_owned)
}

/// The load error `GET /v1/models` lists for the source ending in
/// `source_suffix`, if any.
pub(crate) fn failure_of(server: &Server, source_suffix: &str) -> Option<String> {
    let (_, body) = server.get("/v1/models");
    body["failures"]
        .as_array()?
        .iter()
        .find(|f| {
            f["source"]
                .as_str()
                .is_some_and(|s| s.ends_with(source_suffix))
        })
        .and_then(|f| f["error"].as_str())
        .map(str::to_owned)
}

/// Polls `check` every 10 ms until it holds; fails after `timeout`.
#[track_caller]
pub(crate) fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `sha256:<hex>` of `bytes`: a version's digest as riskhost names it.
pub(crate) fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// `bytes` plus a custom section holding `tag`: a valid component with the
/// same behaviour and a digest of its own (a new version of a model).
pub(crate) fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"riskhost-test";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb128(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The status and JSON body of an answer (`Null` when the body is not JSON).
pub(crate) fn answer(response: reqwest::Result<reqwest::blocking::Response>) -> (u16, Value) {
    let response = response.expect("request failed");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// A request to `path` carrying the admin `token`.
pub(crate) fn admin_request(
    server: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::blocking::RequestBuilder {
    server
        .client
        .request(method, server.url(path))
        .bearer_auth(token)
}

/// `PUT /v1/models/{name}`: uploads a component, with its signature header
/// (`x-riskhost-signature`) when given.
pub(crate) fn put_model(
    server: &Server,
    token: &str,
    name: &str,
    bytes: Vec<u8>,
    signature: Option<&str>,
) -> (u16, Value) {
    let mut request = admin_request(
        server,
        token,
        reqwest::Method::PUT,
        &format!("/v1/models/{name}"),
    )
    .header("content-type", "application/wasm");
    if let Some(signature) = signature {
        request = request.header("x-riskhost-signature", signature);
    }
    answer(request.body(bytes).send())
}

/// `POST /v1/models/{name}/rollback`, with `body` (`{"to": …}`) or none
/// (back to the previous version).
pub(crate) fn rollback(
    server: &Server,
    token: &str,
    name: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let request = admin_request(
        server,
        token,
        reqwest::Method::POST,
        &format!("/v1/models/{name}/rollback"),
    );
    answer(match body {
        Some(b) => request.json(&b).send(),
        None => request.send(),
    })
}

/// Writes `bytes` to `path` and syncs them, so a watcher sees whole files.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).expect("create");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("sync");
}

/// One of the sample portfolios of `examples/portfolios/`, as JSON.
pub(crate) fn sample_portfolio(name: &str) -> Value {
    let path = workspace()
        .join("examples/portfolios")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("read portfolio"))
        .expect("parse portfolio")
}

/// The value of the first sample in a Prometheus text exposition whose line
/// starts with `series` where a series may end: before its labels, between
/// labels, or before the value. `riskhost_events_queued` does not match
/// `riskhost_events_queued_bytes 3`.
pub(crate) fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.chars().next())
                .is_some_and(|c| matches!(c, ' ' | '{' | ',' | '}'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl Server {
    /// [`metric_value`] of this server's `/metrics` now.
    pub(crate) fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.get_text("/metrics"), series)
    }
}

/// `n` inline portfolios, each valued differently (quantities grow with
/// the index), on instruments the bundled data prices.
pub(crate) fn inline_portfolios(n: usize) -> Vec<Value> {
    let instruments = ["AAPL", "SPX", "GOLD", "TLT", "EURUSD", "MSFT"];
    (0..n)
        .map(|i| {
            serde_json::json!({"positions": [
                {"instrument": instruments[i % instruments.len()], "quantity": 10.0 + i as f64},
                {"instrument": instruments[(i + 1) % instruments.len()], "quantity": -3.5},
            ]})
        })
        .collect()
}

/// How many portfolios the bundled data stores (`examples/portfolios`).
pub(crate) fn stored_portfolio_count() -> usize {
    std::fs::read_dir(workspace().join("examples/portfolios"))
        .expect("examples/portfolios")
        .count()
}
