//! Hot swap end to end, against the real binary: versions arrive through the
//! watched plugins directory and the admin API while clients score without
//! pause; rollbacks, pins, deletes, restarts and the admin API's auth.
//!
//! The `versioned` test model (tests/plugins/versioned-a and -b) scores
//! `scale × (gross exposure + offset)` with scale 1 in build A (1.0.0) and 2
//! in build B (2.0.0), so every response proves which build computed it.
//! Appending a custom section to a build gives a new, valid version (new
//! digest) with that build's outputs. Servers run with `--cache-ttl-secs 0`
//! so every score is computed by the model that answers.

use crate::common;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Server, TempDir, active_digest, admin_request, answer, assert_error, digest, failure_of,
    plugins_dir, put_model, rollback, wait_until, with_custom_section, workspace, write_file,
};
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";

fn test_model(build: &str) -> Vec<u8> {
    let path = workspace().join(format!("tests/plugins/dist/versioned-{build}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run tests/plugins/build.sh (tests/run.sh does) before the tests",
            path.display()
        )
    })
}

/// The versions a test deploys: their bytes and the scale of their outputs.
#[derive(Default)]
struct Versions {
    scale: HashMap<String, f64>,
}

impl Versions {
    /// Version `i`: build A for even `i`, B for odd, made unique by a tag.
    fn make(&mut self, i: usize) -> (Vec<u8>, String) {
        let (build, scale) = if i.is_multiple_of(2) {
            ("a", 1.0)
        } else {
            ("b", 2.0)
        };
        let bytes = with_custom_section(&test_model(build), &format!("version-{i}"));
        let d = digest(&bytes);
        self.scale.insert(d.clone(), scale);
        (bytes, d)
    }
}

fn spx() -> Value {
    json!({"id": "spx", "positions": [{"instrument": "SPX", "quantity": 10}]})
}

fn score(server: &Server, model: &str, offset: f64) -> (u16, Value) {
    server.post(
        "/v1/score",
        &json!({"model": model, "portfolio": spx(), "params": {"offset": offset}}),
    )
}

/// Publishes the recommended way: a hidden temporary name, then a rename.
fn publish_atomically(path: &Path, bytes: &[u8]) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("x");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_file(&tmp, bytes);
    std::fs::rename(&tmp, path).expect("rename");
}

/// Writes half the bytes, pauses long enough for the watcher to see the
/// half file, then writes the rest.
fn write_in_two_halves(path: &Path, bytes: &[u8], pause: Duration) {
    let mut file = std::fs::File::create(path).expect("create");
    let half = bytes.len() / 2;
    file.write_all(&bytes[..half]).expect("write");
    file.sync_all().expect("sync");
    std::thread::sleep(pause);
    file.write_all(&bytes[half..]).expect("write");
    file.sync_all().expect("sync");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label}: n={} p50={:.0} ms p99={:.0} ms max={:.0} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// One scoring request of the load.
#[derive(Debug, Clone)]
struct Sample {
    sent: Instant,
    status: u16,
    digest: String,
    value: f64,
    offset: f64,
    cached: bool,
    error: String,
}

/// Clients scoring `versioned` without pause, each request with a new
/// `offset` (a new computation), until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    first_seen: Arc<Mutex<HashMap<String, Instant>>>,
    workers: Vec<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(base: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let first_seen = Arc::new(Mutex::new(HashMap::new()));
        let counter = Arc::new(AtomicU64::new(1));
        let workers = (0..threads)
            .map(|_| {
                let (stop, first_seen, counter) = (stop.clone(), first_seen.clone(), counter.clone());
                let url = format!("{base}/v1/score");
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .expect("client");
                    let mut samples = Vec::new();
                    // Bounded: stops when told, or after this many requests.
                    for _ in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let offset = counter.fetch_add(1, Ordering::Relaxed) as f64;
                        let sent = Instant::now();
                        let result = client
                            .post(&url)
                            .json(&json!({"model": "versioned", "portfolio": spx(), "params": {"offset": offset}}))
                            .send();
                        let (status, body) = match result {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                (status, r.json::<Value>().unwrap_or(Value::Null))
                            }
                            Err(e) => (0, json!({"error": {"message": e.to_string()}})),
                        };
                        let received = Instant::now();
                        let digest = body["digest"].as_str().unwrap_or_default().to_owned();
                        if status == 200 {
                            first_seen
                                .lock()
                                .expect("lock")
                                .entry(digest.clone())
                                .or_insert(received);
                        }
                        samples.push(Sample {
                            sent,
                            status,
                            digest,
                            value: body["value"].as_f64().unwrap_or(f64::NAN),
                            offset,
                            cached: body["cached"].as_bool().unwrap_or(false),
                            error: body["error"].to_string(),
                        });
                    }
                    samples
                })
            })
            .collect();
        Load {
            stop,
            first_seen,
            workers,
        }
    }

    /// When a response from `digest` was first received.
    fn seen(&self, digest: &str) -> Option<Instant> {
        self.first_seen.lock().expect("lock").get(digest).copied()
    }

    fn wait_for(&self, digest: &str, timeout: Duration) -> Instant {
        let mut seen = None;
        wait_until(&format!("a response from {digest}"), timeout, || {
            seen = self.seen(digest);
            seen.is_some()
        });
        seen.unwrap_or_else(Instant::now)
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.workers
            .into_iter()
            .flat_map(|w| w.join().expect("load thread panicked"))
            .collect()
    }
}

/// Checks every sample: answered, computed (not memoized), by a known
/// version with that version's outputs, and never by a version older than
/// one already live when the request was sent.
fn check_samples(samples: &[Sample], versions: &Versions, gross: f64, swaps: &[(String, Instant)]) {
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        samples.len(),
        failed.first().map(|s| (s.status, &s.error))
    );
    let order: HashMap<&str, usize> = swaps
        .iter()
        .enumerate()
        .map(|(i, (d, _))| (d.as_str(), i))
        .collect();
    for s in samples {
        assert!(!s.cached, "a memoized answer: {s:?}");
        let scale = versions
            .scale
            .get(&s.digest)
            .unwrap_or_else(|| panic!("answered by an unknown version: {s:?}"));
        let want = scale * (gross + s.offset);
        assert!(
            (s.value - want).abs() <= 1e-9 * want.abs(),
            "{} answered {} for offset {}, want {want}",
            s.digest,
            s.value,
            s.offset
        );
        let answered = *order
            .get(s.digest.as_str())
            .unwrap_or_else(|| panic!("answered by a version never made active: {s:?}"));
        let live_when_sent = swaps.iter().rposition(|(_, at)| *at < s.sent).unwrap_or(0);
        assert!(
            answered >= live_when_sent,
            "a request sent after {} was live was answered by the older {}",
            swaps[live_when_sent].0,
            s.digest
        );
    }
}

fn gross_exposure(server: &Server) -> f64 {
    let (status, body) = score(server, "versioned@1.0.0", 0.0);
    assert_eq!(status, 200, "{body}");
    body["value"].as_f64().expect("value")
}

#[test]
fn swaps_under_load_lose_no_request_and_serve_the_new_version_at_once() {
    let dir = TempDir::new("swap-plugins");
    let file = dir.path().join("versioned.wasm");
    let mut versions = Versions::default();
    let (initial, initial_digest) = versions.make(0);
    write_file(&file, &initial);
    let server = Server::start_with(&[
        "--plugins",
        dir.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
        "--cache-ttl-secs",
        "0",
    ]);
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(initial_digest.as_str())
    );
    let gross = gross_exposure(&server);
    assert!(gross > 0.0);

    let load = Load::start(&server.base, 3);
    let mut swaps = vec![(initial_digest.clone(), Instant::now())];
    load.wait_for(&initial_digest, Duration::from_secs(30));

    // 20 swaps through the directory, in four ways of writing the file.
    let mut dir_latency = Vec::new();
    for i in 1..=20 {
        let (bytes, d) = versions.make(i);
        let live = swaps.last().map(|(d, _)| d.clone()).unwrap_or_default();
        match i % 4 {
            0 => publish_atomically(&file, &bytes),
            1 => write_file(&file, &bytes),
            2 => write_in_two_halves(&file, &bytes, Duration::from_millis(700)),
            _ => {
                // A corrupt version first: reported, never served.
                assert_eq!(failure_of(&server, "versioned.wasm"), None);
                write_file(&file, b"\0asm\x0d\0\x01\0 definitely not a component");
                wait_until(
                    "the corrupt file to be reported",
                    Duration::from_secs(30),
                    || failure_of(&server, "versioned.wasm").is_some(),
                );
                assert_eq!(active_digest(&server, "versioned"), Some(live.clone()));
                write_file(&file, &bytes);
            }
        }
        let written = Instant::now();
        let seen = load.wait_for(&d, Duration::from_secs(30));
        dir_latency.push(seen.saturating_duration_since(written));
        swaps.push((d, seen));
    }
    assert_eq!(
        failure_of(&server, "versioned.wasm"),
        None,
        "a good file clears the failure of its bad predecessor"
    );

    // 20 swaps through the admin API, with rejected uploads in between.
    let mut api_latency = Vec::new();
    for i in 21..=40 {
        let (bytes, d) = versions.make(i);
        let live = swaps.last().map(|(d, _)| d.clone()).unwrap_or_default();
        if i % 5 == 0 {
            let half = bytes[..bytes.len() / 2].to_vec();
            let (status, body) = put_model(&server, TOKEN, "versioned", half, None);
            assert_error(&(status, body), 422, "invalid_model", "");
            let (status, body) = put_model(&server, TOKEN, "var-historical", bytes.clone(), None);
            assert_error(&(status, body), 422, "model_name_mismatch", "versioned");
            assert_eq!(active_digest(&server, "versioned"), Some(live.clone()));
        }
        let sent = Instant::now();
        let (status, body) = put_model(&server, TOKEN, "versioned", bytes, None);
        let done = Instant::now();
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["digest"], d.as_str());
        assert_eq!(body["previous"]["digest"], live.as_str());
        api_latency.push(done - sent);
        swaps.push((d, done));
    }
    let last = swaps.last().map(|(d, _)| d.clone()).unwrap_or_default();
    load.wait_for(&last, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    let samples = load.finish();
    println!("{} scoring requests during 40 swaps", samples.len());
    report(
        "directory swap, file written -> first response from the new version",
        dir_latency,
    );
    report("API swap, PUT sent -> 201 (new version live)", api_latency);
    check_samples(&samples, &versions, gross, &swaps);
    for (d, _) in &swaps {
        assert!(
            samples.iter().any(|s| &s.digest == d),
            "no request was answered by {d}"
        );
    }

    let metrics = server.get_text("/metrics");
    let swaps_total = metrics
        .lines()
        .find(|l| l.starts_with(r#"riskhost_model_swaps_total{model="versioned"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(swaps_total, Some(40.0), "{metrics}");
    let active_info: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("riskhost_model_active_info{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(active_info.len(), 1, "one active version: {active_info:?}");
    assert!(
        active_info[0].contains(&format!(r#"digest="{last}""#)),
        "{active_info:?}"
    );
    assert!(metrics.contains("riskhost_model_swap_duration_seconds_count"));
    assert!(metrics.contains("riskhost_model_load_failures_total"));
}

#[test]
fn rollback_restores_the_previous_versions_exact_outputs() {
    let dir = TempDir::new("rollback-plugins");
    let mut versions = Versions::default();
    let (a, a_digest) = versions.make(0);
    let (b, b_digest) = versions.make(1);
    write_file(&dir.path().join("versioned.wasm"), &a);
    let server = Server::start_with(&[
        "--plugins",
        dir.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
        "--cache-ttl-secs",
        "0",
    ]);
    let (_, before) = score(&server, "versioned", 1234.5);
    assert_eq!(before["digest"], a_digest.as_str());
    assert_eq!(before["cached"], false);

    let (status, body) = put_model(&server, TOKEN, "versioned", b.clone(), None);
    assert_eq!(status, 201, "{body}");
    let (_, during) = score(&server, "versioned", 1234.5);
    assert_eq!(during["digest"], b_digest.as_str());
    assert_eq!(during["version"], "2.0.0");
    assert_ne!(during["value"], before["value"]);
    // Putting the live version again changes nothing.
    let (status, body) = put_model(&server, TOKEN, "versioned", b, None);
    assert_eq!(
        (status, body["changed"].clone()),
        (200, json!(false)),
        "{body}"
    );

    let (status, body) = rollback(&server, TOKEN, "versioned", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["digest"], a_digest.as_str());
    assert_eq!(body["previous"]["digest"], b_digest.as_str());
    let (_, after) = score(&server, "versioned", 1234.5);
    assert_eq!(after["cached"], false, "the test needs a fresh computation");
    assert_eq!(after["digest"], a_digest.as_str());
    assert_eq!(after["value"], before["value"], "bit-identical outputs");
    assert_eq!(after["breakdown"], before["breakdown"]);

    // A rollback without a target toggles; a target is a digest or a semver.
    let (_, body) = rollback(&server, TOKEN, "versioned", None);
    assert_eq!(body["digest"], b_digest.as_str());
    let (_, body) = rollback(&server, TOKEN, "versioned", Some(json!({"to": "1.0.0"})));
    assert_eq!(body["digest"], a_digest.as_str());
    let (_, body) = rollback(&server, TOKEN, "versioned", Some(json!({"to": b_digest})));
    assert_eq!(body["digest"], b_digest.as_str());
    assert_error(
        &rollback(&server, TOKEN, "versioned", Some(json!({"to": "9.9.9"}))),
        404,
        "unknown_model_version",
        "9.9.9",
    );
    assert_error(
        &rollback(&server, TOKEN, "versioned", Some(json!({"to": 3}))),
        422,
        "invalid_body",
        "",
    );
    assert_error(
        &rollback(&server, TOKEN, "nope", None),
        404,
        "unknown_model",
        "nope",
    );

    // Every stored version, and which one is live; readable without the token.
    let (status, body) = server.get("/v1/models/versioned/versions");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], b_digest.as_str());
    let listed: Vec<(&str, bool)> = body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["digest"].as_str().unwrap_or_default(),
                v["active"] == true,
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(a_digest.as_str(), false), (b_digest.as_str(), true)]
    );
    assert!(
        body["history"].as_array().is_some_and(|h| h.len() >= 5),
        "{body}"
    );
}

#[test]
fn pinned_versions_restarts_and_the_artifact_cache() {
    let store = TempDir::new("restart-store");
    let dir = TempDir::new("restart-plugins");
    for model in ["var-historical", "var-parametric", "es-historical"] {
        std::fs::copy(
            plugins_dir().join(format!("{model}.wasm")),
            dir.path().join(format!("{model}.wasm")),
        )
        .expect("copy");
    }
    let mut versions = Versions::default();
    let (a, a_digest) = versions.make(0);
    let (b, b_digest) = versions.make(1);
    let (a2, a2_digest) = versions.make(2);
    write_file(&dir.path().join("versioned.wasm"), &a);
    let args = |cache: &'static str| {
        vec![
            "--plugins".to_owned(),
            dir.path().display().to_string(),
            "--data-dir".to_owned(),
            store.path().display().to_string(),
            "--admin-token".to_owned(),
            TOKEN.to_owned(),
            "--cache-ttl-secs".to_owned(),
            "0".to_owned(),
            "--artifact-cache".to_owned(),
            cache.to_owned(),
            "--standby-versions".to_owned(),
            "1".to_owned(),
        ]
    };
    let start = |cache: &'static str| {
        let args = args(cache);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let server = Server::start_with(&args);
        (server, started.elapsed())
    };
    let artifacts = || {
        walk(&store.path().join("artifacts"))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .count()
    };

    let (server, cold) = start("true");
    assert_eq!(put_model(&server, TOKEN, "versioned", b, None).0, 201);
    // Same semver as a, another digest: still a new active version.
    assert_eq!(put_model(&server, TOKEN, "versioned", a2, None).0, 201);
    let (_, by_a) = score(&server, "versioned@1.0.0", 1.0);
    assert_eq!(
        by_a["digest"],
        a2_digest.as_str(),
        "a semver pin prefers the active version"
    );
    let (status, by_b) = score(&server, "versioned@2.0.0", 1.0);
    assert_eq!(status, 200, "{by_b}");
    assert_eq!(by_b["digest"], b_digest.as_str());
    let (_, by_digest) = score(&server, &format!("versioned@{a_digest}"), 1.0);
    assert_eq!(by_digest["digest"], a_digest.as_str());
    assert_eq!(by_digest["value"], by_a["value"]);
    assert_eq!(
        by_b["value"].as_f64().map(|v| v / 2.0),
        by_a["value"].as_f64()
    );
    wait_until(
        "every compiled artifact to be written",
        Duration::from_secs(30),
        || artifacts() >= 6,
    );
    drop(server);

    let (server, warm) = start("true");
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(a2_digest.as_str())
    );
    let (_, body) = server.get("/v1/models/versioned/versions");
    assert_eq!(body["versions"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(body["active"], a2_digest.as_str());
    // Not loaded after a restart; loaded from the store on first use.
    let (status, pinned) = score(&server, &format!("versioned@{b_digest}"), 1.0);
    assert_eq!(status, 200, "{pinned}");
    assert_eq!(pinned["value"], by_b["value"]);
    let (_, models) = server.get("/v1/models");
    assert_eq!(
        models["models"].as_array().map(Vec::len),
        Some(4),
        "{models}"
    );
    assert_eq!(models["failures"], json!([]));
    // The file's version is stored and was replaced by uploads: a restart
    // does not bring it back.
    assert_ne!(
        active_digest(&server, "versioned").as_deref(),
        Some(a_digest.as_str())
    );
    drop(server);

    let (server, uncached) = start("false");
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(a2_digest.as_str())
    );
    drop(server);
    println!(
        "start-up to ready with 4 models: first start (compile, empty store) {:.0} ms; \
         restart with artifact cache {:.0} ms; restart without artifact cache {:.0} ms",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        uncached.as_secs_f64() * 1e3
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_directory_loads_new_files_swaps_changed_ones_and_unloads_removed_ones() {
    let dir = TempDir::new("watch-plugins");
    let mut versions = Versions::default();
    let (a, a_digest) = versions.make(0);
    let (b, b_digest) = versions.make(1);
    let server = Server::start_with(&[
        "--plugins",
        dir.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
    ]);
    assert_eq!(active_digest(&server, "versioned"), None);

    // A new file loads.
    publish_atomically(&dir.path().join("versioned.wasm"), &a);
    wait_until("the new file to load", Duration::from_secs(30), || {
        active_digest(&server, "versioned").as_deref() == Some(a_digest.as_str())
    });
    // Another file holding another model loads as that model; dotfiles and
    // other extensions are ignored.
    std::fs::copy(
        plugins_dir().join("var-parametric.wasm"),
        dir.path().join("pvar.wasm"),
    )
    .expect("copy");
    write_file(&dir.path().join(".hidden.wasm"), b"ignored");
    write_file(&dir.path().join("notes.txt"), b"ignored");
    wait_until("the second file to load", Duration::from_secs(30), || {
        active_digest(&server, "var-parametric").is_some()
    });
    // The changed file becomes the new version.
    publish_atomically(&dir.path().join("versioned.wasm"), &b);
    wait_until(
        "the changed file to swap in",
        Duration::from_secs(30),
        || active_digest(&server, "versioned").as_deref() == Some(b_digest.as_str()),
    );
    // The file now holds another model: loaded as that one; `versioned` stays.
    std::fs::copy(
        plugins_dir().join("es-historical.wasm"),
        dir.path().join("versioned.wasm"),
    )
    .expect("copy");
    wait_until("the other model to load", Duration::from_secs(30), || {
        active_digest(&server, "es-historical").is_some()
    });
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(b_digest.as_str())
    );
    // Removing a file unloads the model whose live version it holds.
    std::fs::remove_file(dir.path().join("pvar.wasm")).expect("remove");
    wait_until(
        "the removed file's model to unload",
        Duration::from_secs(30),
        || active_digest(&server, "var-parametric").is_none(),
    );
    let (status, body) = score(&server, "var-parametric", 0.0);
    assert_error(&(status, body), 404, "unknown_model", "var-parametric");
    let (_, body) = server.get("/v1/models");
    assert_eq!(
        body["failures"],
        json!([]),
        "ignored files are not failures"
    );

    // With --unload-on-delete false, a removed file's model keeps serving.
    drop(server);
    let keep = Server::start_with(&[
        "--plugins",
        dir.path().to_str().unwrap_or_default(),
        "--unload-on-delete",
        "false",
    ]);
    assert!(active_digest(&keep, "es-historical").is_some());
    std::fs::remove_file(dir.path().join("versioned.wasm")).expect("remove");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(active_digest(&keep, "es-historical").is_some());
}

/// Whether `name` was unloaded at some point, by its activation log.
fn was_unloaded(server: &Server, name: &str) -> bool {
    let (_, body) = server.get(&format!("/v1/models/{name}/versions"));
    body["history"]
        .as_array()
        .is_some_and(|h| h.iter().any(|a| a["digest"].is_null()))
}

/// Waits until the watcher has handled everything done to `dir` so far: it
/// handles changes in order, so once a later invalid marker file is
/// reported (and, removed, no longer is), what came before is done.
fn watcher_caught_up(server: &Server, dir: &Path, n: usize) {
    // Past the debounce window, so the marker is a pass of its own.
    std::thread::sleep(Duration::from_millis(500));
    let marker = format!("zz-marker-{n}.wasm");
    write_file(&dir.join(&marker), b"not a component");
    wait_until("the marker to be reported", Duration::from_secs(30), || {
        failure_of(server, &marker).is_some()
    });
    std::fs::remove_file(dir.join(&marker)).expect("remove marker");
    wait_until("the marker's removal", Duration::from_secs(30), || {
        failure_of(server, &marker).is_none()
    });
}

#[test]
fn renaming_or_copying_a_plugin_file_keeps_its_model_served() {
    let dir = TempDir::new("rename-plugins");
    let file = |name: &str| dir.path().join(name);
    let mut versions = Versions::default();
    let (a, a_digest) = versions.make(0);
    let (b, b_digest) = versions.make(1);
    write_file(&file("versioned.wasm"), &a);
    let server = Server::start_with(&[
        "--plugins",
        dir.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
    ]);
    let served = |model: &str| active_digest(&server, model);
    assert_eq!(served("versioned").as_deref(), Some(a_digest.as_str()));
    let still_served = |when: &str| {
        assert_eq!(
            served("versioned").as_deref(),
            Some(a_digest.as_str()),
            "{when}"
        );
        assert!(
            !was_unloaded(&server, "versioned"),
            "{when}: the model was unloaded on the way"
        );
    };

    // To a name sorting first (the new name is handled before the old
    // name's removal), then to one sorting last (the removal first).
    std::fs::rename(file("versioned.wasm"), file("a-versioned.wasm")).expect("rename");
    watcher_caught_up(&server, dir.path(), 1);
    still_served("renamed to a-versioned.wasm");
    std::fs::rename(file("a-versioned.wasm"), file("z-versioned.wasm")).expect("rename");
    watcher_caught_up(&server, dir.path(), 2);
    still_served("renamed to z-versioned.wasm");
    let (status, body) = score(&server, "versioned", 0.0);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["digest"], a_digest.as_str());

    // Of two copies, removing one unloads nothing.
    std::fs::copy(file("z-versioned.wasm"), file("copy.wasm")).expect("copy");
    watcher_caught_up(&server, dir.path(), 3);
    std::fs::remove_file(file("z-versioned.wasm")).expect("remove");
    watcher_caught_up(&server, dir.path(), 4);
    still_served("one of two copies removed");

    // Another version in another file becomes active; removing that file
    // while copy.wasm still provides the model activates nothing: the
    // active version keeps serving.
    publish_atomically(&file("other.wasm"), &b);
    wait_until(
        "the other version to swap in",
        Duration::from_secs(30),
        || served("versioned").as_deref() == Some(b_digest.as_str()),
    );
    std::fs::remove_file(file("other.wasm")).expect("remove");
    watcher_caught_up(&server, dir.path(), 5);
    assert_eq!(
        served("versioned").as_deref(),
        Some(b_digest.as_str()),
        "a removal while another file provides the model changes nothing"
    );
    assert!(!was_unloaded(&server, "versioned"));

    // Removing the last file that provides the model unloads it.
    std::fs::remove_file(file("copy.wasm")).expect("remove");
    wait_until("the model to unload", Duration::from_secs(30), || {
        served("versioned").is_none()
    });
    let (_, body) = server.get("/v1/models");
    assert_eq!(body["failures"], json!([]), "{body}");
}

#[test]
fn a_file_renamed_while_stopped_provides_its_model_at_start_up() {
    let store = TempDir::new("rename-store");
    let dir = TempDir::new("rename-stopped-plugins");
    let (a, a_digest) = Versions::default().make(0);
    write_file(&dir.path().join("versioned.wasm"), &a);
    let start = || {
        Server::start_with(&[
            "--plugins",
            dir.path().to_str().unwrap_or_default(),
            "--data-dir",
            store.path().to_str().unwrap_or_default(),
        ])
    };
    let server = start();
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(a_digest.as_str())
    );
    drop(server);

    std::fs::rename(
        dir.path().join("versioned.wasm"),
        dir.path().join("a-versioned.wasm"),
    )
    .expect("rename");
    let server = start();
    let (_, body) = server.get("/v1/models");
    assert_eq!(
        active_digest(&server, "versioned").as_deref(),
        Some(a_digest.as_str()),
        "the renamed file still provides the model: {body}"
    );
    assert_eq!(body["failures"], json!([]), "{body}");
    drop(server);

    // With the last file providing it gone, the model is unloaded.
    std::fs::remove_file(dir.path().join("a-versioned.wasm")).expect("remove");
    let server = start();
    assert_eq!(active_digest(&server, "versioned"), None);
}

#[test]
fn delete_unloads_and_rollback_brings_the_model_back() {
    let dir = TempDir::new("delete-plugins");
    let mut versions = Versions::default();
    let (a, a_digest) = versions.make(0);
    write_file(&dir.path().join("versioned.wasm"), &a);
    let server = Server::start_with(&[
        "--plugins",
        dir.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
    ]);
    let (status, body) = answer(
        admin_request(
            &server,
            TOKEN,
            reqwest::Method::DELETE,
            "/v1/models/versioned",
        )
        .send(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["unloaded"]["digest"], a_digest.as_str());
    assert_error(
        &score(&server, "versioned", 0.0),
        404,
        "unknown_model",
        "versioned",
    );
    assert_error(
        &score(&server, &format!("versioned@{a_digest}"), 0.0),
        404,
        "unknown_model",
        "versioned",
    );
    let (status, body) = answer(
        admin_request(
            &server,
            TOKEN,
            reqwest::Method::DELETE,
            "/v1/models/versioned",
        )
        .send(),
    );
    assert_error(&(status, body), 404, "unknown_model", "versioned");

    let (status, body) = rollback(&server, TOKEN, "versioned", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        score(&server, "versioned", 0.0).1["digest"],
        a_digest.as_str()
    );

    let (status, body) = answer(
        admin_request(
            &server,
            TOKEN,
            reqwest::Method::DELETE,
            "/v1/models/versioned?purge=true",
        )
        .send(),
    );
    assert_eq!(
        (status, body["purged"].clone()),
        (200, json!(true)),
        "{body}"
    );
    assert_error(
        &server.get("/v1/models/versioned/versions"),
        404,
        "unknown_model",
        "versioned",
    );
}

#[test]
fn the_admin_routes_need_the_admin_token() {
    // Small bodies: a refused upload is answered before its body is read,
    // and a client still sending a large one may see the connection close.
    let a = b"\0asm".to_vec();
    let guarded: [(reqwest::Method, &str); 3] = [
        (reqwest::Method::PUT, "/v1/models/versioned"),
        (reqwest::Method::POST, "/v1/models/versioned/rollback"),
        (reqwest::Method::DELETE, "/v1/models/versioned"),
    ];
    let server = Server::start(&["--admin-token", TOKEN]);
    for (method, path) in &guarded {
        let request = || {
            server
                .client
                .request(method.clone(), server.url(path))
                .body(a.clone())
        };
        assert_error(&answer(request().send()), 401, "unauthenticated", "Bearer");
        assert_error(
            &answer(request().bearer_auth("wrong").send()),
            401,
            "invalid_key",
            "",
        );
    }
    assert_error(
        &answer(
            admin_request(&server, TOKEN, reqwest::Method::PUT, "/v1/models/versioned")
                .header("content-type", "text/plain")
                .body(test_model("a"))
                .send(),
        ),
        415,
        "unsupported_media_type",
        "application/wasm",
    );
    // Reading the versions needs only the `score` scope, which the
    // harness's --anonymous-scoring grants without a key.
    assert_eq!(server.get("/v1/models/var-historical/versions").0, 200);
    drop(server);

    let server = Server::start(&[]);
    for (method, path) in &guarded {
        let response = server
            .client
            .request(method.clone(), server.url(path))
            .bearer_auth(TOKEN)
            .body(a.clone())
            .send();
        assert_error(&answer(response), 401, "invalid_key", "unknown");
    }
}

#[test]
fn uploads_may_be_larger_than_other_bodies_up_to_the_component_limit() {
    let model = test_model("a");
    assert!(model.len() > 64 << 10);
    let server = Server::start(&[
        "--admin-token",
        TOKEN,
        "--max-component-mib",
        "1",
        "--max-body-bytes",
        "65536",
    ]);
    let (status, body) = put_model(&server, TOKEN, "versioned", model, None);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "versioned");
    assert_eq!(body["version"], "1.0.0");
    let (status, body) = put_model(&server, TOKEN, "versioned", vec![0u8; 512 << 10], None);
    assert_error(
        &(status, body),
        422,
        "invalid_model",
        "not a WebAssembly component",
    );
    // The server answers before reading all of an oversized body and closes
    // that connection, so this request gets a client of its own.
    let response = reqwest::blocking::Client::new()
        .put(server.url("/v1/models/versioned"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/wasm")
        .body(vec![0u8; 2 << 20])
        .send();
    assert_error(
        &answer(response),
        413,
        "body_too_large",
        "max-component-mib",
    );
}
