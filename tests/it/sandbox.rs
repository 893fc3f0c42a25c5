//! End-to-end tests of the sandbox against the real binary and the hostile
//! test models of `tests/plugins/`: every misbehaviour is stopped with the
//! right error, costs the host nothing lasting, leaves the model serving and
//! never disturbs a healthy model's traffic; what a model can observe is
//! frozen or seeded; limits can be set per model; load-time hangs are bounded.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Server, assert_error, metric_value, plugins_with};
use serde_json::{Value, json};

/// Far beyond any deadline used here: a hostile call still running after
/// this long means the sandbox failed to stop it.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn spx(quantity: f64) -> Value {
    json!({"id": "p", "positions": [{"instrument": "SPX", "quantity": quantity}]})
}

fn score(server: &Server, model: &str, params: Value) -> (u16, Value) {
    server.post(
        "/v1/score",
        &json!({"model": model, "portfolio": spx(1.0), "params": params}),
    )
}

/// Requests to var-historical streamed from a thread, each with another
/// confidence so each one runs the model, recording every failure.
struct HealthyTraffic {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    handle: JoinHandle<Vec<String>>,
}

impl HealthyTraffic {
    /// Starts the stream and returns once its first request was served.
    fn start(server: &Server) -> HealthyTraffic {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let url = server.url("/v1/score");
        let handle = {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(HANG_GUARD)
                    .build()
                    .expect("client");
                let mut failures = Vec::new();
                let mut i = 0u32;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    let body = json!({"model": "var-historical", "portfolio": {"id": "balanced"},
                                      "params": {"confidence": 0.9 + f64::from(i) * 1e-6}});
                    match client.post(&url).json(&body).send() {
                        Ok(r) if r.status().is_success() => {
                            served.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok(r) => failures.push(format!(
                            "{}: {}",
                            r.status(),
                            r.text().unwrap_or_default()
                        )),
                        Err(e) => failures.push(e.to_string()),
                    }
                    // A steady stream, not a flood: CI machines have few cores.
                    std::thread::sleep(Duration::from_millis(1));
                }
                failures
            })
        };
        let traffic = HealthyTraffic {
            stop,
            served,
            handle,
        };
        let started = Instant::now();
        while traffic.served() == 0 {
            assert!(
                started.elapsed() < HANG_GUARD,
                "the healthy model never answered"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        traffic
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Acquire)
    }

    /// Stops the stream and asserts that not one request failed.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Release);
        let served = self.served();
        let failures = self.handle.join().expect("traffic thread");
        assert!(
            failures.is_empty(),
            "the healthy model failed {} times while a hostile one ran, e.g. {}",
            failures.len(),
            failures[0]
        );
        served
    }
}

/// Starts a server with var-historical and `model`, makes `model` misbehave
/// (three times, with healthy traffic running) and checks each answer; then
/// checks that a well-behaved call to the same model succeeds, i.e. the
/// failing instances were discarded. Returns the last error message.
fn assert_contained(
    model: &str,
    misbehave: u32,
    status: u16,
    code: &str,
    needle: &str,
    extra_args: &[&str],
) -> String {
    let plugins = plugins_with(&["var-historical"], &[model]);
    let mut args = vec!["--plugins", plugins.path().to_str().unwrap_or_default()];
    args.extend_from_slice(extra_args);
    let server = Server::start_with(&args);
    let traffic = HealthyTraffic::start(&server);
    let mut message = String::new();
    for _ in 0..3 {
        let before = traffic.served();
        let started = Instant::now();
        let answer = score(&server, model, json!({"misbehave": misbehave}));
        let elapsed = started.elapsed();
        let during = traffic.served() - before;
        eprintln!(
            "{model} (misbehave={misbehave}) was stopped after {elapsed:?} with {}; \
             {during} healthy requests were served meanwhile",
            answer.0
        );
        assert!(elapsed < HANG_GUARD, "{model} ran for {elapsed:?}");
        assert_error(&answer, status, code, needle);
        message = answer.1["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.starts_with(&format!("{model}: ")),
            "the message names the model: {message}"
        );
    }
    let served = traffic.finish();
    eprintln!("{model}: {served} healthy requests served, none failed");

    let (status, body) = score(&server, model, json!({"misbehave": 0}));
    assert_eq!(status, 200, "{model} did not recover: {body}");
    assert!(body["value"].as_f64().is_some_and(f64::is_finite), "{body}");

    let metrics = server.get_text("/metrics");
    let errors =
        format!(r#"riskhost_model_errors_total{{model="{model}",version="1.0.0",kind="{code}"}}"#);
    assert_eq!(
        metric_value(&metrics, &errors),
        Some(3.0),
        "{errors}\n{metrics}"
    );
    message
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline_while_others_are_served() {
    let plugins = plugins_with(&["var-historical"], &["hostile-loop"]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--deadline-ms",
        "500",
    ]);
    let traffic = HealthyTraffic::start(&server);
    let before = traffic.served();
    let started = Instant::now();
    let answer = score(&server, "hostile-loop", json!({"misbehave": 1}));
    let elapsed = started.elapsed();
    let during = traffic.served() - before;
    eprintln!("hostile-loop was stopped after {elapsed:?}; {during} healthy requests meanwhile");
    assert!(elapsed < HANG_GUARD, "hostile-loop ran for {elapsed:?}");
    assert_error(&answer, 504, "model_timeout", "deadline of 502 ms");
    // The loop held a core for half a second; the healthy model kept answering.
    assert!(
        during > 0,
        "no healthy request was served while the loop ran"
    );
    traffic.finish();
    // And the rest of the contract, under the default deadline.
    drop(server);
    assert_contained("hostile-loop", 1, 504, "model_timeout", "deadline", &[]);
}

/// Epoch interruption cannot stop a guest parked in a host call, so a sleep
/// or a wait inside WASI must end at the deadline like a loop in wasm does.
#[test]
fn a_sleep_or_a_wait_inside_wasi_ends_at_the_deadline() {
    for (misbehave, attack) in [
        (1, "a one-minute sleep"),
        (2, "block forever"),
        (3, "poll forever"),
    ] {
        eprintln!("hostile-wasi: {attack}");
        assert_contained(
            "hostile-wasi",
            misbehave,
            504,
            "model_timeout",
            "deadline",
            &[],
        );
    }
}

/// Waits that never end, from more callers than the model has slots: every
/// one ends at its deadline, each freeing its slot for the next, so the
/// model serves again afterwards and the healthy model is never disturbed.
#[test]
fn concurrent_waits_that_never_end_free_the_models_slots_at_the_deadline() {
    let plugins = plugins_with(&["var-historical"], &["hostile-wasi"]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--deadline-ms",
        "300",
        "--model-limits",
        "hostile-wasi:max_concurrent=2,max_queued=4",
    ]);
    let traffic = HealthyTraffic::start(&server);
    let url = server.url("/v1/score");
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(HANG_GUARD)
                    .build()
                    .expect("client");
                // Distinct portfolios, so single-flight does not merge calls.
                let body = json!({
                    "model": "hostile-wasi",
                    "portfolio": spx(1.0 + f64::from(i)),
                    "params": {"misbehave": 2 + i % 2},
                });
                let r = client
                    .post(&url)
                    .json(&body)
                    .send()
                    .expect("the wait outlived the hang guard");
                (r.status().as_u16(), r.json::<Value>().unwrap_or_default())
            })
        })
        .collect();
    for call in calls {
        let answer = call.join().expect("call thread");
        assert_error(&answer, 504, "model_timeout", "deadline of 302 ms");
    }
    assert!(
        traffic.finish() > 0,
        "no healthy request was served meanwhile"
    );
    let (status, body) = score(&server, "hostile-wasi", json!({"misbehave": 0}));
    assert_eq!(status, 200, "the model's slots were not freed: {body}");
}

/// Every pollable a guest creates is an entry in the host's resource table,
/// host memory outside the guest's cap; the table is capped in proportion
/// to the memory cap (16,384 entries under the default 64 MiB).
#[test]
fn hoarding_wasi_resources_hits_a_cap_proportional_to_the_memory_cap() {
    let message = assert_contained(
        "hostile-wasi",
        4,
        500,
        "model_resource_exhausted",
        "more than 16384 WASI resources",
        &[],
    );
    eprintln!("{message}");
}

#[test]
fn a_memory_bomb_hits_the_memory_cap() {
    assert_contained(
        "hostile-memory",
        1,
        500,
        "model_resource_exhausted",
        "memory limit of 67108864 bytes",
        &[],
    );
}

#[test]
fn unbounded_recursion_overflows_the_stack_cap() {
    assert_contained(
        "hostile-recursion",
        1,
        500,
        "model_resource_exhausted",
        "stack",
        &[],
    );
}

#[test]
fn a_million_breakdown_entries_are_refused_while_being_read() {
    assert_contained(
        "hostile-output",
        1,
        500,
        "model_resource_exhausted",
        "results exceed the call's budget",
        &[],
    );
}

#[test]
fn a_sixteen_mib_name_is_refused_while_being_read() {
    assert_contained(
        "hostile-output",
        2,
        500,
        "model_resource_exhausted",
        "results exceed the call's budget",
        &[],
    );
}

#[test]
fn outputs_over_the_per_score_caps_are_refused() {
    assert_contained(
        "hostile-output",
        3,
        500,
        "model_resource_exhausted",
        "20000 breakdown entries; the limit is 10000",
        &[],
    );
    assert_contained(
        "hostile-output",
        4,
        500,
        "model_resource_exhausted",
        "a breakdown name is 5000 bytes; the limit is 4096",
        &[],
    );
}

#[test]
fn a_panic_is_a_trap_that_carries_the_panic_message_and_the_function() {
    let message = assert_contained(
        "hostile-panic",
        1,
        500,
        "model_trap",
        "hostile-panic was told to misbehave (1 positions)",
        &[],
    );
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        message.contains("panicked at tests/plugins/hostile-panic/src/lib.rs:"),
        "{message}"
    );
    // From the component's name section: the model's own function, not abort().
    assert!(message.contains("in hostile_panic::explode"), "{message}");
}

#[test]
fn a_call_to_exit_is_a_trap_not_the_end_of_the_host() {
    let message = assert_contained(
        "hostile-panic",
        2,
        500,
        "model_trap",
        "the model called exit (status 1) instead of returning",
        &[],
    );
    assert!(!message.contains('\n'), "one line, no backtrace: {message}");
}

#[test]
fn a_slow_but_legal_model_finishes_without_disturbing_others() {
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    // Deadlines are wall-clock. The default (1 s) leaves slow-legal's ~0.2 s
    // of CPU a wide margin on a dedicated core, but not on a shared CI
    // machine running other tests; this test is about the model being let
    // finish and disturbing no one, not about the machine's load.
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--deadline-ms",
        "10000",
    ]);
    let traffic = HealthyTraffic::start(&server);
    let started = Instant::now();
    let (status, body) = score(&server, "slow-legal", json!({}));
    let elapsed = started.elapsed();
    eprintln!("slow-legal answered in {elapsed:?}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], 1947.52, "{body}");
    traffic.finish();
    let metrics = server.get_text("/metrics");
    let cpu = metric_value(
        &metrics,
        r#"riskhost_model_cpu_seconds_sum{model="slow-legal",version="1.0.0"}"#,
    )
    .unwrap_or_default();
    eprintln!("slow-legal used {cpu} s of CPU");
    assert!(cpu > 0.0, "no CPU time was recorded\n{metrics}");
}

/// Parses hostile-snoop's report: probe → (what it saw, value).
fn snoop(
    server: &Server,
    portfolio: Value,
    as_of: &str,
) -> std::collections::BTreeMap<String, (String, f64)> {
    let (status, body) = server.post(
        "/v1/score",
        &json!({"model": "hostile-snoop", "portfolio": portfolio, "as_of": as_of}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cached"], false, "the memo is off: {body}");
    body["breakdown"]
        .as_array()
        .expect("breakdown")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default();
            let (probe, seen) = name.split_once('=').unwrap_or((name, ""));
            (
                probe.to_owned(),
                (seen.to_owned(), c["value"].as_f64().unwrap_or(f64::NAN)),
            )
        })
        .collect()
}

#[test]
fn a_snooping_model_sees_no_host_and_only_frozen_or_seeded_time_and_randomness() {
    let plugins = plugins_with(&[], &["hostile-snoop"]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--cache-max-mib",
        "0",
    ]);
    let seen = snoop(&server, spx(1.0), "2018-12-31");
    eprintln!("hostile-snoop saw: {seen:#?}");
    let probe = |name: &str| {
        seen.get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no probe {name}: {seen:?}"))
    };

    for forbidden in ["file", "dir", "write"] {
        let (what, succeeded) = probe(forbidden);
        assert_eq!(succeeded, 0.0, "{forbidden} succeeded: {what}");
    }
    assert_eq!(probe("env").1, 0.0, "environment variables are visible");
    assert_eq!(
        probe("env_path").1,
        0.0,
        "PATH is visible: {}",
        probe("env_path").0
    );
    assert_eq!(probe("args").1, 0.0, "arguments are visible");
    assert_eq!(probe("stdin").1, 0.0, "stdin has data");
    let (net, connected) = probe("net");
    assert_eq!(connected, 0.0, "a socket connected: {net}");
    assert!(net.contains("access-denied"), "{net}");

    // Midnight UTC of the as-of date, whatever the host's clock says.
    assert_eq!(probe("wall_clock").1, 1_546_214_400.0);
    assert_eq!(probe("monotonic").1, 0.0, "monotonic time advanced");
    let other_day = snoop(&server, spx(1.0), "2017-06-30");
    assert_eq!(other_day["wall_clock"].1, 1_498_780_800.0);

    // The same job sees the same randomness; another job other randomness.
    let again = snoop(&server, spx(1.0), "2018-12-31");
    for name in ["random", "hash_seed", "job_seed"] {
        assert_eq!(again[name].0, probe(name).0, "{name} is not reproducible");
        assert_eq!(again[name].0.len(), 16, "{name}: {}", again[name].0);
        assert_ne!(other_day[name].0, probe(name).0, "{name} ignores the job");
    }
    let other_portfolio = snoop(&server, spx(2.0), "2018-12-31");
    assert_ne!(other_portfolio["random"].0, probe("random").0);
}

#[test]
fn monte_carlo_is_bit_identical_over_a_hundred_runs_and_seeded_per_job() {
    let plugins = plugins_with(&[], &["monte-carlo"]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--cache-max-mib",
        "0",
    ]);
    let run = |quantity: f64| {
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": "monte-carlo", "portfolio": {"positions": [
                {"instrument": "SPX", "quantity": quantity}, {"instrument": "TLT", "quantity": -20}]}}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["cached"], false);
        body
    };
    let first = run(10.0);
    let bits = |body: &Value| body["value"].as_f64().map(f64::to_bits);
    for i in 1..100 {
        let next = run(10.0);
        assert_eq!(
            bits(&next),
            bits(&first),
            "run {i} differs: {next} vs {first}"
        );
        assert_eq!(next["breakdown"], first["breakdown"], "run {i}");
    }
    let metrics = server.get_text("/metrics");
    assert_eq!(
        metric_value(
            &metrics,
            r#"riskhost_model_call_duration_seconds_count{model="monte-carlo",version="1.0.0"}"#
        ),
        Some(100.0),
        "the model did not run 100 times\n{metrics}"
    );
    // Doubling every position would double the VaR under the same draws; it
    // does not, because another portfolio is another job with another seed.
    let double = server.post(
        "/v1/score",
        &json!({"model": "monte-carlo", "portfolio": {"positions": [
            {"instrument": "SPX", "quantity": 20}, {"instrument": "TLT", "quantity": -40}]}}),
    );
    assert_eq!(double.0, 200, "{}", double.1);
    let (one, two) = (
        first["value"].as_f64().unwrap_or_default(),
        double.1["value"].as_f64().unwrap_or_default(),
    );
    assert!(one > 0.0, "{first}");
    assert_ne!(two, 2.0 * one, "the seed ignored the portfolio");
}

#[test]
fn per_model_limits_override_the_defaults() {
    let plugins = plugins_with(
        &["var-historical"],
        &["slow-legal", "hostile-memory", "hostile-loop"],
    );
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--deadline-ms",
        "200",
        "--model-limits",
        "slow-legal:deadline_ms=20000",
        "--model-limits",
        "hostile-memory:memory_mib=16;hostile-loop:max_concurrent=1,max_queued=0",
    ]);
    let (_, models) = server.get("/v1/models");
    let limits = |name: &str| {
        models["models"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name))
            .map(|m| m["limits"].clone())
            .unwrap_or_else(|| panic!("{name} is not served: {models}"))
    };
    assert_eq!(limits("slow-legal")["deadline_ms"], 20000);
    assert_eq!(limits("hostile-memory")["memory_bytes"], 16 << 20);
    assert_eq!(limits("hostile-loop")["max_concurrent"], 1);
    assert_eq!(limits("hostile-loop")["max_queued"], 0);
    assert_eq!(limits("var-historical")["deadline_ms"], 200);
    assert_eq!(limits("var-historical")["memory_bytes"], 64 << 20);

    // About 0.7 s of CPU: far over the default 200 ms, within its own 20 s.
    let (status, body) = score(&server, "slow-legal", json!({"steps_millions": 600}));
    assert_eq!(status, 200, "{body}");
    assert_error(
        &score(&server, "hostile-memory", json!({"misbehave": 1})),
        500,
        "model_resource_exhausted",
        "memory limit of 16777216 bytes",
    );
    assert_error(
        &score(&server, "hostile-loop", json!({"misbehave": 1})),
        504,
        "model_timeout",
        "deadline of 202 ms",
    );

    // One slot, no queue: of simultaneous calls, the ones that find the slot
    // taken are refused at once with 503 and Retry-After. The portfolios
    // differ so that single-flight does not merge the calls into one.
    let barrier = Arc::new(std::sync::Barrier::new(6));
    let url = server.url("/v1/score");
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let (barrier, url) = (barrier.clone(), url.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                barrier.wait();
                let r = client
                    .post(&url)
                    .json(&json!({"model": "hostile-loop", "portfolio": spx(1.0 + f64::from(i)), "params": {"misbehave": 1}}))
                    .send()
                    .expect("POST");
                let retry_after = r.headers().contains_key("retry-after");
                (r.status().as_u16(), retry_after, r.json::<Value>().unwrap_or_default())
            })
        })
        .collect();
    let answers: Vec<(u16, bool, Value)> = calls
        .into_iter()
        .map(|c| c.join().expect("call thread"))
        .collect();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert!(
        answers.iter().any(|a| a.0 == 504),
        "no call got the slot: {answers:?}"
    );
    assert!(!refused.is_empty(), "no call was refused: {answers:?}");
    for (status, retry_after, body) in refused {
        assert_error(&(*status, body.clone()), 503, "overloaded", "queue is full");
        assert!(retry_after, "503 without Retry-After");
    }
}

#[test]
fn model_limits_come_from_the_environment_too_and_bad_ones_are_named() {
    let plugins = plugins_with(&[], &["hostile-memory"]);
    let output = std::process::Command::new(common::binary())
        .args([
            "score",
            "--model",
            "hostile-memory",
            "--param",
            "misbehave=1",
        ])
        .args(["--plugins", plugins.path().to_str().unwrap_or_default()])
        .arg("--portfolio")
        .arg(common::workspace().join("examples/portfolios/balanced.json"))
        .env(
            "RISKHOST_MODEL_LIMITS",
            "other:memory_mib=1;hostile-memory:memory_mib=8",
        )
        .output()
        .expect("run riskhost score");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("[model_resource_exhausted]"), "{stderr}");
    assert!(stderr.contains("memory limit of 8388608 bytes"), "{stderr}");

    for (value, needle) in [
        ("slow-legal:deadline=5", "unknown limit `deadline`"),
        ("slow-legal:memory_mib=0", "between 1 and 4096"),
        ("deadline_ms=5", "MODEL:KEY=VALUE"),
    ] {
        let output = std::process::Command::new(common::binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--model-limits", value])
            .output()
            .expect("run riskhost serve");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value} was accepted");
        assert!(stderr.contains(needle), "{value}: {stderr}");
    }
}

#[test]
fn fuel_stops_a_loop_deterministically_and_is_metered() {
    let plugins = plugins_with(&["var-historical"], &["hostile-loop"]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--fuel-per-job",
        "50000000",
        "--cache-max-mib",
        "0",
    ]);
    let started = Instant::now();
    let answer = score(&server, "hostile-loop", json!({"misbehave": 1}));
    eprintln!("hostile-loop ran out of fuel after {:?}", started.elapsed());
    assert_error(
        &answer,
        500,
        "model_resource_exhausted",
        "fuel exhausted: the model used up its budget of 100000000 fuel units",
    );
    assert_eq!(score(&server, "hostile-loop", json!({})).0, 200);

    let fuel_of_var = |server: &Server| {
        metric_value(
            &server.get_text("/metrics"),
            r#"riskhost_model_fuel_consumed_sum{model="var-historical",version="1.0.0"}"#,
        )
    };
    assert_eq!(score(&server, "var-historical", json!({})).0, 200);
    let once = fuel_of_var(&server).expect("no fuel metric for var-historical");
    assert_eq!(score(&server, "var-historical", json!({})).0, 200);
    let twice = fuel_of_var(&server).unwrap_or_default();
    eprintln!("one var-historical call consumed {once} fuel");
    assert!(once > 0.0);
    // Fuel counts instructions, not time: the same call costs the same.
    assert_eq!(twice, 2.0 * once);
    let metrics = server.get_text("/metrics");
    assert_eq!(
        metric_value(
            &metrics,
            r#"riskhost_model_fuel_consumed_sum{model="hostile-loop",version="1.0.0"}"#
        )
        .map(|f| f >= 100_000_000.0),
        Some(true),
        "{metrics}"
    );
}

#[test]
fn a_model_that_hangs_at_load_is_stopped_and_reported_without_blocking_the_others() {
    let plugins = plugins_with(
        &["var-historical", "es-historical"],
        &["hostile-warmup", "hostile-import", "hostile-sleep-info"],
    );
    let started = Instant::now();
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--deadline-ms",
        "500",
    ]);
    let ready_after = started.elapsed();
    eprintln!("ready after {ready_after:?} despite a model that loops in info()");
    assert!(ready_after < HANG_GUARD);

    let (_, body) = server.get("/v1/models");
    let names: Vec<&str> = body["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["es-historical", "var-historical"]);
    let error_of = |file: &str| {
        body["failures"]
            .as_array()
            .and_then(|f| {
                f.iter()
                    .find(|f| f["source"].as_str().unwrap_or_default().ends_with(file))
            })
            .and_then(|f| f["error"].as_str())
            .unwrap_or_else(|| panic!("no failure for {file}: {body}"))
            .to_owned()
    };
    let warmup = error_of("hostile-warmup.wasm");
    assert!(warmup.contains("info() failed"), "{warmup}");
    assert!(warmup.contains("deadline of 500 ms"), "{warmup}");
    // A sleep in info() is a wait inside WASI, beyond epoch interruption.
    let sleep = error_of("hostile-sleep-info.wasm");
    assert!(sleep.contains("info() failed"), "{sleep}");
    assert!(sleep.contains("deadline of 500 ms"), "{sleep}");
    let import = error_of("hostile-import.wasm");
    assert!(import.contains("`evil:net/exfiltrate`"), "{import}");
    assert!(
        !import.contains("`wasi:"),
        "only the foreign import is named: {import}"
    );
    assert_eq!(server.get("/readyz").0, 200);
    let (status, body) = score(&server, "es-historical", json!({}));
    assert_eq!(status, 200, "{body}");
}

/// The resident set size of a process, from /proc (Linux only).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn memory_and_output_bombs_leave_the_host_rss_bounded() {
    let plugins = plugins_with(&["var-historical"], &["hostile-memory", "hostile-output"]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--memory-limit-mib",
        "64",
    ]);
    // One call each first, so the pool's first slots and caches are warm.
    assert_eq!(score(&server, "hostile-memory", json!({})).0, 200);
    assert_eq!(score(&server, "hostile-output", json!({})).0, 200);
    let Some(before) = rss_bytes(server.pid()) else {
        eprintln!("no /proc here: skipping the RSS check");
        return;
    };
    let started = Instant::now();
    let bombers: Vec<_> = (0..4)
        .map(|t| {
            let url = server.url("/v1/score");
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(HANG_GUARD)
                    .build()
                    .expect("client");
                (0..8)
                    .map(|i| {
                        let (model, misbehave) = match (t + i) % 4 {
                            0 | 1 => ("hostile-memory", 1),
                            2 => ("hostile-output", 1),
                            _ => ("hostile-output", 2),
                        };
                        let r = client
                            .post(&url)
                            .json(&json!({"model": model, "portfolio": spx(1.0), "params": {"misbehave": misbehave}}))
                            .send()
                            .expect("POST");
                        (r.status().as_u16(), r.json::<Value>().unwrap_or_default())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for answer in bombers
        .into_iter()
        .flat_map(|b| b.join().expect("bomber thread"))
    {
        assert_error(&answer, 500, "model_resource_exhausted", "");
    }
    let after = rss_bytes(server.pid()).unwrap_or_default();
    eprintln!(
        "32 bombs in {:?}: host RSS {} MiB before, {} MiB after",
        started.elapsed(),
        before >> 20,
        after >> 20
    );
    assert!(
        after < before + (256 << 20),
        "RSS grew from {} MiB to {} MiB",
        before >> 20,
        after >> 20
    );
    assert_eq!(score(&server, "var-historical", json!({})).0, 200);
}

#[test]
fn a_non_finite_score_is_the_models_failure_never_memoized_and_fails_its_cell_alone() {
    let plugins = plugins_with(&["var-historical"], &["hostile-nonfinite"]);
    let server = Server::start_with(&["--plugins", plugins.path().to_str().unwrap_or_default()]);
    let model = "hostile-nonfinite";
    let cases = [
        (1, "`value` is NaN"),
        (2, "`value` is inf"),
        (3, "breakdown entry `SPX` is NaN"),
        (4, "breakdown entry `SPX` is -inf"),
    ];
    for (misbehave, field) in cases {
        // Twice: the second answer is computed again, not served from the memo.
        for _ in 0..2 {
            let answer = score(&server, model, json!({"misbehave": misbehave}));
            assert_error(&answer, 500, "model_internal_error", field);
            let message = answer.1["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with(model) && message.contains("portfolio `p`"),
                "the message names the model and the job: {message}"
            );
        }
    }
    let jobs = format!(
        r#"riskhost_model_jobs_total{{model="{model}",version="1.0.0",outcome="internal"}}"#
    );
    let metrics = server.get_text("/metrics");
    assert_eq!(
        metric_value(&metrics, &jobs),
        Some(8.0),
        "{jobs}\n{metrics}"
    );

    // In a batch, only the hostile model's cells fail.
    let (status, body) = server.post(
        "/v1/score/batch",
        &json!({"models": ["var-historical", model], "params": {"misbehave": 3},
                "portfolios": [spx(1.0), {"id": "balanced"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let cells = body["results"].as_array().expect("results");
    assert_eq!(cells.len(), 4, "{body}");
    for cell in cells {
        if cell["model"] == model {
            assert_eq!(cell["error"]["code"], "model_internal_error", "{cell}");
            let message = cell["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("breakdown entry"), "{message}");
        } else {
            assert!(cell["value"].as_f64().is_some_and(f64::is_finite), "{cell}");
        }
    }
    let metrics = server.get_text("/metrics");
    assert_eq!(
        metric_value(&metrics, &jobs),
        Some(10.0),
        "{jobs}\n{metrics}"
    );

    // The model still serves sane scores.
    let (status, body) = score(&server, model, json!({"misbehave": 0}));
    assert_eq!(status, 200, "{body}");
}
