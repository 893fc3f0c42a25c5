//! Risk runs. The functional tests run on both backends (`local::…` on
//! one process with `--runs local`, `nats::…` on NATS JetStream with state
//! in PostgreSQL and results in ClickHouse): a run of every stored
//! portfolio matches single scores bit for bit, an NDJSON upload is planned
//! into chunks with one cell per portfolio and model, a run keeps its
//! pinned version while another is activated, cancel stops it, a purged
//! version quarantines the chunks that need it, bad input gets its error,
//! and a run is only its submitter's. Then what each backend adds: a
//! SIGKILL and a SIGTERM mid-run on one process; two replicas through a
//! SIGKILL of one, NATS restarted mid-run, and NATS down at submission.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::nats::{DedicatedNats, NatsRuns};
use crate::common::{
    Server, TempDir, assert_error, inline_portfolios, plugins_dir, plugins_with, put_model,
    stored_portfolio_count, workspace,
};

/// Where a functional test's runs are kept and worked.
enum Backend {
    Local,
    Nats(NatsRuns),
}

impl Backend {
    fn nats() -> Backend {
        Backend::Nats(NatsRuns::new("runs"))
    }

    /// `args` plus this backend's flags, except those `args` give.
    fn args(&self, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        // slow-legal's warm-up at load (150 M steps, ~250 ms alone) may
        // take past the default 1 s deadline on a machine busy with the
        // other tests, and the model would not load.
        if !args.contains(&"--model-limits") {
            all.extend([
                "--model-limits".into(),
                "slow-legal:deadline_ms=20000".into(),
            ]);
        }
        if let Backend::Nats(nats) = self {
            for pair in nats.args().chunks(2) {
                if !args.contains(&pair[0].as_str()) {
                    all.extend_from_slice(pair);
                }
            }
        }
        all
    }

    /// A server with exactly `args` (which name `--plugins`) and the
    /// backend's flags.
    fn start_with(&self, args: &[&str]) -> Server {
        let args = self.args(args);
        Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// A server with the example models, `extra` and the backend's flags.
    fn start(&self, extra: &[&str]) -> Server {
        let plugins = plugins_dir();
        let mut args = vec!["--plugins", plugins.to_str().unwrap_or_default()];
        args.extend_from_slice(extra);
        self.start_with(&args)
    }
}

/// Each named test once per backend: `local::NAME` and `nats::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[test]
            fn $name() {
                super::$name(&super::Backend::Local)
            })*
        }
        mod nats {
            $(#[test]
            fn $name() {
                super::$name(&super::Backend::nats())
            })*
        }
    };
}

on_both_backends!(
    a_run_of_every_stored_portfolio_matches_single_scores_bit_for_bit,
    an_ndjson_upload_gets_one_cell_per_portfolio_and_model_across_chunks,
    a_run_keeps_its_pinned_version_while_another_is_activated,
    cancel_stops_a_run_and_its_results_so_far_stay_readable,
    a_chunk_whose_pinned_version_is_purged_is_quarantined_and_reported,
    bad_runs_get_their_errors,
    a_run_is_read_only_by_the_key_that_submitted_it,
    a_run_of_every_portfolio_stored_in_postgres_scores_each_once,
);

const TOKEN: &str = "runs-admin-s3cret";

/// `POST /v1/runs` with a JSON body.
fn submit(server: &Server, body: &Value) -> (u16, Value) {
    server.post("/v1/runs", body)
}

/// `POST /v1/runs` that must be accepted: the run's id.
fn submit_ok(server: &Server, body: &Value) -> String {
    let (status, run) = submit(server, body);
    assert_eq!(status, 202, "{run}");
    run["id"].as_str().expect("id").to_owned()
}

/// `POST /v1/runs` with an NDJSON body.
fn upload(server: &Server, lines: &[Value]) -> (u16, Value) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let response = server
        .client
        .post(server.url("/v1/runs"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .expect("upload");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// Polls a run until its status is final.
fn wait_final(server: &Server, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, run) = server.get(&format!("/v1/runs/{id}"));
        assert_eq!(status, 200, "{run}");
        let state = run["status"].as_str().unwrap_or_default();
        if ["completed", "completed_with_failures", "cancelled"].contains(&state) {
            return run;
        }
        assert!(Instant::now() < deadline, "the run did not finish: {run}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The run's NDJSON result lines.
fn results(server: &Server, id: &str) -> Vec<Value> {
    let text = server.get_text(&format!("/v1/runs/{id}/results"));
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// (portfolio_index, model) → its line, asserting each appears once.
fn by_cell(lines: &[Value]) -> BTreeMap<(u64, String), Value> {
    let mut cells = BTreeMap::new();
    for line in lines {
        let key = (
            line["portfolio_index"].as_u64().expect("portfolio_index"),
            line["model"].as_str().unwrap_or_default().to_owned(),
        );
        assert!(
            cells.insert(key.clone(), line.clone()).is_none(),
            "{key:?} twice"
        );
    }
    cells
}

fn a_run_of_every_stored_portfolio_matches_single_scores_bit_for_bit(backend: &Backend) {
    let server = backend.start(&[]);
    let models = ["var-historical", "es-historical", "var-parametric"];
    let (status, run) = submit(
        &server,
        &json!({"models": models, "portfolios": {"all": true}}),
    );
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_owned();
    assert_eq!(run["status_url"], format!("/v1/runs/{id}"));
    let run = wait_final(&server, &id, Duration::from_secs(60));
    assert_eq!(run["status"], "completed", "{run}");
    let stored = stored_portfolio_count() as u64;
    assert_eq!(run["portfolios"], stored);
    assert_eq!(run["cells"], json!({"ok": stored * 3, "failed": 0}));
    let lines = results(&server, &id);
    let cells = by_cell(&lines);
    assert_eq!(cells.len() as u64, stored * 3);
    for line in &lines {
        assert_eq!(line["run_id"], id.as_str());
        let model = line["model"].as_str().unwrap_or_default();
        let digest = &run["digests"][model];
        assert_eq!(&line["digest"], digest, "{line}");
        let (status, single) = server.post(
            "/v1/score",
            &json!({
                "model": format!("{model}@{}", digest.as_str().unwrap_or_default()),
                "portfolio": {"id": line["portfolio_id"]},
                "as_of": run["as_of"],
            }),
        );
        assert_eq!(status, 200, "{single}");
        assert_eq!(
            line["value"].as_f64(),
            single["value"].as_f64(),
            "{line}\n{single}"
        );
    }
    // CSV: a header and a row per cell.
    let csv = server.get_text(&format!("/v1/runs/{id}/results?format=csv"));
    let rows: Vec<&str> = csv.lines().collect();
    assert!(
        rows[0].starts_with("run_id,portfolio_index,portfolio_id,model"),
        "{csv}"
    );
    assert_eq!(rows.len() as u64, 1 + stored * 3);
    // The list holds it.
    let (_, list) = server.get("/v1/runs");
    assert_eq!(list["runs"][0]["id"], id.as_str());
}

fn an_ndjson_upload_gets_one_cell_per_portfolio_and_model_across_chunks(backend: &Backend) {
    let server = backend.start(&["--run-chunk-size", "64"]);
    let mut lines = vec![json!({"models": ["var-historical", "es-historical"]})];
    let mut inline = inline_portfolios(1000);
    // One portfolio no model can value: it fails its own cells only.
    inline[500] = json!({"positions": [{"instrument": "NO-SUCH", "quantity": 1}]});
    lines.extend(inline);
    let (status, run) = upload(&server, &lines);
    assert_eq!(status, 202, "{run}");
    assert_eq!(
        run["chunks"]["total"], 16,
        "1000 portfolios in chunks of 64"
    );
    let id = run["id"].as_str().expect("id").to_owned();
    let run = wait_final(&server, &id, Duration::from_secs(120));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["cells"], json!({"ok": 1998, "failed": 2}), "{run}");
    let cells = by_cell(&results(&server, &id));
    assert_eq!(cells.len(), 2000);
    for index in 0..1000u64 {
        for model in ["var-historical", "es-historical"] {
            let cell = &cells[&(index, model.to_owned())];
            if index == 500 {
                assert_eq!(cell["error"]["code"], "unknown_instrument", "{cell}");
            } else {
                assert!(cell["value"].is_number(), "{cell}");
            }
        }
    }
}

fn a_run_keeps_its_pinned_version_while_another_is_activated(backend: &Backend) {
    let plugins = plugins_with(&["var-historical"], &["versioned-a", "slow-legal"]);
    let server = backend.start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
        "--run-chunk-size",
        "1",
        "--run-workers",
        "1",
    ]);
    let (_, models) = server.get("/v1/models");
    let pinned = models["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "versioned"))
        .map(|m| m["digest"].clone())
        .expect("versioned is served");
    // slow-legal makes each chunk last ~30 ms, so the run outlives the swap.
    let id = submit_ok(
        &server,
        &json!({"models": ["versioned", "slow-legal"], "params": {"steps_millions": 20},
                "portfolios": {"inline": inline_portfolios(150)}}),
    );
    let b = std::fs::read(workspace().join("tests/plugins/dist/versioned-b.wasm")).expect("b");
    let (status, deployed) = put_model(&server, TOKEN, "versioned", b, None);
    assert_eq!(status, 201, "{deployed}");
    let (_, during) = server.get(&format!("/v1/runs/{id}"));
    assert!(
        during["chunks"]["done"].as_u64() < during["chunks"]["total"].as_u64(),
        "the run finished before the swap, so it proves nothing: {during}"
    );
    let run = wait_final(&server, &id, Duration::from_secs(120));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["digests"]["versioned"], pinned);
    for cell in results(&server, &id)
        .iter()
        .filter(|c| c["model"] == "versioned")
    {
        assert_eq!(
            cell["digest"], pinned,
            "a cell left the pinned version: {cell}"
        );
    }
    assert_eq!(
        server
            .post(
                "/v1/score",
                &json!({"model": "versioned", "portfolio": {"id": "tech"}})
            )
            .1["digest"],
        deployed["digest"],
        "new requests get the new version"
    );
}

fn cancel_stops_a_run_and_its_results_so_far_stay_readable(backend: &Backend) {
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    let server = backend.start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--run-chunk-size",
        "1",
        "--run-workers",
        "1",
    ]);
    let id = submit_ok(
        &server,
        &json!({"models": ["slow-legal"], "params": {"steps_millions": 20},
                "portfolios": {"inline": inline_portfolios(300)}}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let response = server
        .client
        .delete(server.url(&format!("/v1/runs/{id}")))
        .send()
        .expect("cancel");
    assert_eq!(response.status().as_u16(), 200);
    let cancelled: Value = response.json().expect("JSON");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(cancelled["finished_at"].is_string());
    // At most the chunk in flight finishes after the cancel.
    std::thread::sleep(Duration::from_millis(500));
    let (_, later) = server.get(&format!("/v1/runs/{id}"));
    let done = later["chunks"]["done"].as_u64().unwrap_or_default();
    assert!(
        done <= cancelled["chunks"]["done"].as_u64().unwrap_or_default() + 1 && done < 300,
        "{cancelled}\n{later}"
    );
    assert_eq!(later["status"], "cancelled");
    assert_eq!(results(&server, &id).len() as u64, done);
}

fn a_chunk_whose_pinned_version_is_purged_is_quarantined_and_reported(backend: &Backend) {
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    let server = backend.start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
        "--run-chunk-size",
        "10",
        "--run-workers",
        "1",
        "--run-max-deliveries",
        "2",
        "--run-backoff-ms",
        "10",
    ]);
    let id = submit_ok(
        &server,
        &json!({"models": ["slow-legal"], "params": {"steps_millions": 20},
                "portfolios": {"inline": inline_portfolios(100)}}),
    );
    std::thread::sleep(Duration::from_millis(400));
    let response = server
        .client
        .delete(server.url("/v1/models/slow-legal?purge=true"))
        .bearer_auth(TOKEN)
        .send()
        .expect("purge");
    assert_eq!(response.status().as_u16(), 200);
    let run = wait_final(&server, &id, Duration::from_secs(120));
    assert_eq!(run["status"], "completed_with_failures", "{run}");
    let failed = run["chunks"]["failed"].as_u64().unwrap_or_default();
    assert!(failed >= 1, "{run}");
    assert_eq!(
        run["chunks"]["done"].as_u64().unwrap_or_default() + failed,
        10
    );
    let failures = run["failures"].as_array().expect("failures");
    assert_eq!(failures.len() as u64, failed);
    for failure in failures {
        assert_eq!(failure["portfolios"], 10, "{failure}");
        assert_eq!(failure["deliveries"], 2, "{failure}");
        assert!(
            failure["reason"]
                .as_str()
                .is_some_and(|r| r.contains("slow-legal")),
            "{failure}"
        );
    }
    // No portfolio is dropped: every one has its cell, the quarantined
    // ones an error naming why.
    let cells = by_cell(&results(&server, &id));
    assert_eq!(cells.len(), 100);
    let quarantined = cells
        .values()
        .filter(|c| c["error"]["code"] == "chunk_failed")
        .count() as u64;
    assert_eq!(quarantined, failed * 10);
}

#[test]
fn a_run_survives_a_sigkill_and_ends_with_exactly_one_cell_each() {
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    let data = TempDir::new("runs-data");
    let args = [
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--data-dir",
        data.path().to_str().unwrap_or_default(),
        "--run-chunk-size",
        "5",
        "--run-workers",
        "2",
    ];
    let server = Server::start_with(&args);
    let id = submit_ok(
        &server,
        &json!({"models": ["var-historical", "slow-legal"], "params": {"steps_millions": 10},
                "portfolios": {"inline": inline_portfolios(200)}}),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, now) = server.get(&format!("/v1/runs/{id}"));
        if now["chunks"]["done"].as_u64().unwrap_or_default() >= 3 {
            assert_ne!(
                now["status"], "completed",
                "the run ended before the kill: {now}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{now}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server); // SIGKILL
    let server = Server::start_with(&args);
    let run = wait_final(&server, &id, Duration::from_secs(120));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["cells"], json!({"ok": 400, "failed": 0}), "{run}");
    let cells = by_cell(&results(&server, &id));
    assert_eq!(cells.len(), 400, "exactly one cell per portfolio and model");
}

fn bad_runs_get_their_errors(backend: &Backend) {
    let server = backend.start(&["--run-max-portfolios", "10"]);
    let answer = submit(
        &server,
        &json!({"models": ["no-such-model"], "portfolios": {"all": true}}),
    );
    assert_error(&answer, 404, "unknown_model", "no-such-model");
    let answer = submit(
        &server,
        &json!({"models": ["var-historical"], "portfolios": {"ids": []}}),
    );
    assert_error(&answer, 422, "empty_selection", "no portfolio");
    let answer = submit(
        &server,
        &json!({"models": ["var-historical"], "portfolios": {"inline": inline_portfolios(11)}}),
    );
    assert_error(&answer, 413, "too_many_portfolios", "10");
    let answer = submit(&server, &json!({"models": [], "portfolios": {"all": true}}));
    assert_error(&answer, 422, "invalid_run", "models");
    let answer = submit(&server, &json!({"models": ["var-historical"]}));
    assert_error(&answer, 422, "invalid_run", "portfolios");
    let answer = submit(
        &server,
        &json!({"models": ["var-historical"], "portfolios": {"all": false}}),
    );
    assert_error(&answer, 422, "invalid_run", "all");
    // Valid JSON of the wrong shape is not malformed JSON.
    let answer = submit(
        &server,
        &json!({"models": ["var-historical"], "portfolios": [{"id": "tech"}]}),
    );
    assert_error(&answer, 422, "invalid_run", "{\"ids\": […]}");
    let answer = submit(
        &server,
        &json!({"models": ["var-historical"], "as_of": "1999-01-01", "portfolios": {"all": true}}),
    );
    assert_error(&answer, 422, "invalid_run", "as_of");
    let answer = upload(
        &server,
        &[json!({"models": ["var-historical"], "portfolios": {"all": true}})],
    );
    assert_error(&answer, 422, "invalid_run", "lines");
    let answer = upload(
        &server,
        &[
            json!({"models": ["var-historical"]}),
            json!({"id": "tech"}),
            json!({"positions": 7}),
        ],
    );
    assert_error(&answer, 422, "invalid_body", "line 3");
    let answer = server.get("/v1/runs/no-such-run");
    assert_error(&answer, 404, "unknown_run", "no-such-run");
    let response = server
        .client
        .post(server.url("/v1/runs"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .expect("post");
    assert_eq!(response.status().as_u16(), 415);
    // Nothing of a refused run stays: the list is empty.
    assert_eq!(server.get("/v1/runs").1["runs"], json!([]));
}

/// A made-up token for `id` and the `--api-key` value holding its hash.
fn key(id: &str) -> (String, String) {
    let token = format!("{id}.{}", hex::encode(Sha256::digest(id.as_bytes())));
    let spec = format!(
        "{id}:sha256={},scopes=score",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    (token, spec)
}

fn a_run_is_read_only_by_the_key_that_submitted_it(backend: &Backend) {
    let (alice, alice_spec) = key("alice");
    let (bob, bob_spec) = key("bob");
    let server = backend.start(&[
        "--api-key",
        &alice_spec,
        "--api-key",
        &bob_spec,
        "--anonymous-scoring=false",
    ]);
    let request = |token: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = server
            .client
            .request(method, server.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let response = r.send().expect("request");
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let (status, run) = request(
        &alice,
        reqwest::Method::POST,
        "/v1/runs",
        Some(json!({"models": ["var-historical"], "portfolios": {"ids": ["tech"]}})),
    );
    assert_eq!(status, 202, "{run}");
    let path = format!("/v1/runs/{}", run["id"].as_str().unwrap_or_default());
    assert_eq!(request(&alice, reqwest::Method::GET, &path, None).0, 200);
    assert_eq!(request(&bob, reqwest::Method::GET, &path, None).0, 404);
    assert_eq!(request(&bob, reqwest::Method::DELETE, &path, None).0, 404);
    assert_eq!(
        request(&bob, reqwest::Method::GET, "/v1/runs", None).1["runs"],
        json!([])
    );
    assert_eq!(
        request(&alice, reqwest::Method::GET, "/v1/runs", None).1["runs"][0]["id"],
        run["id"]
    );
}

/// SIGTERM mid-run: no chunk starts after it, the one being scored is
/// written before the process exits (within the grace period), and a
/// restart finishes the run with exactly one cell each.
#[test]
fn sigterm_lets_the_chunk_being_scored_finish_and_a_restart_completes_the_run() {
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    let data = TempDir::new("runs-drain");
    let args = [
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--data-dir",
        data.path().to_str().unwrap_or_default(),
        "--run-chunk-size",
        "2",
        "--run-workers",
        "1",
        "--shutdown-grace-secs",
        "60",
    ];
    let mut server = Server::start_logging(&args, "info");
    let id = submit_ok(
        &server,
        &json!({"models": ["slow-legal"], "params": {"steps_millions": 40},
                "portfolios": {"inline": inline_portfolios(60)}}),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.get(&format!("/v1/runs/{id}")).1["chunks"]["done"].as_u64() < Some(2) {
        assert!(Instant::now() < deadline, "no chunk was scored");
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate_drained(&mut server);
    // One worker scores the chunks in order: the written ones are a prefix,
    // and no half-written file is left.
    let chunks = data.path().join("runs").join(&id).join("chunks");
    let names: Vec<String> = std::fs::read_dir(&chunks)
        .expect("chunks")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    let written = names.iter().filter(|n| n.ends_with(".out.ndjson")).count();
    assert!(
        (2..30).contains(&written),
        "{written} of 30 chunks before the stop"
    );
    for chunk in 0..written {
        assert!(
            names.contains(&format!("{chunk:08}.out.ndjson")),
            "{names:?}"
        );
    }
    drop(server);
    let server = Server::start_with(&args);
    let run = wait_final(&server, &id, Duration::from_secs(120));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(by_cell(&results(&server, &id)).len(), 60);
}

/// `{"all": true}` on PostgreSQL: every portfolio the database stores,
/// across chunks, each read by id when its chunk is scored; a sample of
/// cells equals single scores by id.
fn a_run_of_every_portfolio_stored_in_postgres_scores_each_once(backend: &Backend) {
    use crate::common::db::{PgSchema, psql, riskhost_db};
    // On NATS, the market data and the run state share the run's schema.
    let own;
    let schema = match backend {
        Backend::Nats(nats) => &nats.schema,
        Backend::Local => {
            own = PgSchema::new("runs_all");
            &own
        }
    };
    riskhost_db(&[
        "seed",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
    ]);
    psql(
        &schema.url,
        &format!(
            "INSERT INTO {s}.portfolios (id) SELECT 'pg-' || i FROM generate_series(1, 300) AS i;
             INSERT INTO {s}.positions SELECT 'pg-' || i, 'SPX', i FROM generate_series(1, 300) AS i;
             INSERT INTO {s}.positions SELECT 'pg-' || i, 'TLT', -2 FROM generate_series(1, 300) AS i",
            s = schema.name
        ),
    );
    let stored: usize = psql(
        &schema.url,
        &format!("SELECT count(*) FROM {}.portfolios", schema.name),
    )
    .lines()
    .find_map(|l| l.trim().parse().ok())
    .expect("a count");
    assert!(stored >= 300, "{stored}");
    let server = backend.start(&[
        "--data-source",
        "postgres",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
        "--events",
        "none",
        "--run-chunk-size",
        "64",
    ]);
    let models = ["var-historical", "es-historical"];
    let id = submit_ok(
        &server,
        &json!({"models": models, "portfolios": {"all": true}}),
    );
    let run = wait_final(&server, &id, Duration::from_secs(120));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["portfolios"], stored as u64);
    assert_eq!(run["chunks"]["total"], stored.div_ceil(64) as u64);
    let lines = results(&server, &id);
    let cells = by_cell(&lines);
    assert_eq!(cells.len(), stored * models.len());
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        assert!(line["value"].is_number(), "{line}");
        *ids.entry(line["portfolio_id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert_eq!(ids.len(), stored, "every stored id once per model");
    assert!(ids.values().all(|n| *n == models.len()), "{ids:?}");
    for line in lines.iter().filter(|l| {
        ["pg-1", "pg-150", "pg-300"].contains(&l["portfolio_id"].as_str().unwrap_or_default())
    }) {
        let (status, single) = server.post(
            "/v1/score",
            &json!({"model": line["model"], "portfolio": {"id": line["portfolio_id"]}, "as_of": run["as_of"]}),
        );
        assert_eq!(status, 200, "{single}");
        assert_eq!(
            line["value"].as_f64(),
            single["value"].as_f64(),
            "{line}\n{single}"
        );
    }
}

/// `GET /metrics` of `server`: one series' value.
fn metric(server: &Server, series: &str) -> f64 {
    crate::common::metric_value(&server.get_text("/metrics"), series).unwrap_or_default()
}

/// Two replicas on one NATS stream score 20,000 portfolios × 3 models; one
/// is SIGKILLed while it scores. Its chunks are delivered again to the
/// other after the ack wait, and the run ends with exactly 60,000 cells,
/// each once, a sample equal bit for bit to single scores.
#[test]
fn two_replicas_on_nats_score_a_run_through_a_sigkill_of_one_exactly_once() {
    let nats = NatsRuns::new("runs");
    let backend = Backend::Nats(nats);
    let plugins = plugins_dir();
    let args = [
        "--plugins",
        plugins.to_str().unwrap_or_default(),
        "--run-chunk-size",
        "250",
        "--run-workers",
        "2",
        "--run-ack-wait-secs",
        "3",
    ];
    let doomed = backend.start_with(&args);
    let survivor = backend.start_with(&args);
    let models = ["var-historical", "es-historical", "var-parametric"];
    let portfolios = inline_portfolios(20_000);
    let mut lines = vec![json!({"models": models})];
    lines.extend(portfolios.iter().cloned());
    let (status, run) = upload(&doomed, &lines);
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["chunks"]["total"], 80);
    let id = run["id"].as_str().expect("id").to_owned();
    // Kill the replica while it scores a chunk, once the run is under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, now) = survivor.get(&format!("/v1/runs/{id}"));
        assert_ne!(now["status"], "completed", "the run ended before the kill");
        if now["chunks"]["done"].as_u64() >= Some(8)
            && metric(&doomed, "riskhost_run_chunks_in_flight") >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{now}");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(doomed); // SIGKILL
    let run = wait_final(&survivor, &id, Duration::from_secs(600));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["cells"], json!({"ok": 60_000, "failed": 0}), "{run}");
    let results = results(&survivor, &id);
    assert_eq!(results.len(), 60_000, "exactly one line per cell");
    let cells = by_cell(&results);
    assert_eq!(cells.len(), 60_000);
    // The killed replica's chunk was begun again by the survivor.
    if let Backend::Nats(nats) = &backend {
        let redelivered = crate::common::db::psql(
            &nats.schema.url,
            &format!(
                "SELECT count(*) FROM {}.run_chunks WHERE run_id = '{id}' AND starts > 1",
                nats.schema.name
            ),
        );
        assert_ne!(redelivered, "0", "no chunk was delivered twice");
    }
    for index in (0..20_000u64).step_by(1_999) {
        for model in models {
            let cell = &cells[&(index, model.to_owned())];
            let (status, single) = survivor.post(
                "/v1/score",
                &json!({
                    "model": format!("{model}@{}", run["digests"][model].as_str().unwrap_or_default()),
                    "portfolio": portfolios[index as usize],
                    "as_of": run["as_of"],
                }),
            );
            assert_eq!(status, 200, "{single}");
            assert_eq!(
                cell["value"].as_f64().map(f64::to_bits),
                single["value"].as_f64().map(f64::to_bits),
                "{cell}\n{single}"
            );
        }
    }
}

/// A server on the NATS `nats` scoring 200 portfolios in slow chunks of 5,
/// once at least `done` chunks are scored: what it needs kept alive, the
/// server and the run's id.
fn slow_run_under_way(
    nats: &DedicatedNats,
    models: &[&str],
    done: u64,
) -> ((Backend, TempDir), Server, String) {
    let backend = Backend::Nats(NatsRuns::on("runs", &nats.url()));
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    let server = backend.start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--run-chunk-size",
        "5",
        "--run-workers",
        "1",
        "--run-ack-wait-secs",
        "3",
    ]);
    let id = submit_ok(
        &server,
        &json!({"models": models, "params": {"steps_millions": 10},
                "portfolios": {"inline": inline_portfolios(200)}}),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.get(&format!("/v1/runs/{id}")).1["chunks"]["done"].as_u64() < Some(done) {
        assert!(Instant::now() < deadline, "no chunk was scored");
        std::thread::sleep(Duration::from_millis(20));
    }
    ((backend, plugins), server, id)
}

/// NATS stopped and started again mid-run: the chunks on its file-backed
/// stream survive, the workers reconnect, and the run completes with
/// exactly one cell each.
#[test]
fn a_run_on_nats_completes_through_a_restart_of_nats() {
    let nats = DedicatedNats::start();
    let (_kept, server, id) = slow_run_under_way(&nats, &["var-historical", "slow-legal"], 3);
    nats.stop();
    std::thread::sleep(Duration::from_secs(2));
    let (_, during) = server.get(&format!("/v1/runs/{id}"));
    assert_eq!(during["status"], "running", "{during}");
    nats.start_again();
    let run = wait_final(&server, &id, Duration::from_secs(180));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["cells"], json!({"ok": 400, "failed": 0}), "{run}");
    assert_eq!(by_cell(&results(&server, &id)).len(), 400);
}

/// NATS restarted with its store wiped mid-run: every queued chunk is
/// gone from the stream, but PostgreSQL still holds them pending; the
/// replicas publish them again and the run completes, each cell once.
#[test]
fn a_run_on_nats_completes_when_nats_comes_back_without_its_data() {
    let nats = DedicatedNats::start();
    let (_kept, server, id) = slow_run_under_way(&nats, &["slow-legal"], 2);
    nats.stop();
    nats.wipe();
    nats.start_again();
    let run = wait_final(&server, &id, Duration::from_secs(180));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["cells"], json!({"ok": 200, "failed": 0}), "{run}");
    assert_eq!(by_cell(&results(&server, &id)).len(), 200);
}

/// NATS down at submission: 503 `runs_unavailable` naming NATS; once it is
/// back, a run goes through.
#[test]
fn a_run_submitted_while_nats_is_down_gets_503_and_goes_through_once_it_is_back() {
    let server_nats = DedicatedNats::start();
    let backend = Backend::Nats(NatsRuns::on("runs", &server_nats.url()));
    let server = backend.start(&[]);
    server_nats.stop();
    let body = json!({"models": ["var-historical"], "portfolios": {"all": true}});
    let answer = submit(&server, &body);
    assert_error(&answer, 503, "runs_unavailable", "NATS");
    // Nothing of the refused run stays.
    assert_eq!(server.get("/v1/runs").1["runs"], json!([]));
    server_nats.start_again();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let (status, run) = submit(&server, &body);
        if status == 202 {
            break run["id"].as_str().expect("id").to_owned();
        }
        assert_eq!(status, 503, "{run}");
        assert!(
            Instant::now() < deadline,
            "NATS is back but runs are not: {run}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let run = wait_final(&server, &id, Duration::from_secs(60));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        by_cell(&results(&server, &id)).len(),
        stored_portfolio_count()
    );
}

/// SIGTERM to one of two NATS replicas mid-run: it stops pulling, the
/// chunk it scores is written and acked within the grace period, it exits
/// cleanly, and the other replica finishes the run with one cell each.
#[test]
fn a_nats_replica_drains_on_sigterm_and_the_other_finishes_the_run() {
    let backend = Backend::nats();
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    let plugins = plugins.path().to_str().unwrap_or_default().to_owned();
    let args = [
        "--plugins",
        plugins.as_str(),
        "--run-chunk-size",
        "2",
        "--run-workers",
        "1",
        "--shutdown-grace-secs",
        "60",
    ];
    let all = backend.args(&args);
    let mut leaving =
        Server::start_logging(&all.iter().map(String::as_str).collect::<Vec<_>>(), "info");
    let staying = backend.start_with(&args);
    let id = submit_ok(
        &leaving,
        &json!({"models": ["slow-legal"], "params": {"steps_millions": 40},
                "portfolios": {"inline": inline_portfolios(60)}}),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&leaving, "riskhost_run_chunks_in_flight") < 1.0 {
        assert!(Instant::now() < deadline, "the replica never took a chunk");
        std::thread::sleep(Duration::from_millis(5));
    }
    terminate_drained(&mut leaving);
    let run = wait_final(&staying, &id, Duration::from_secs(180));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["cells"], json!({"ok": 60, "failed": 0}), "{run}");
    assert_eq!(by_cell(&results(&staying, &id)).len(), 60);
    // The chunk in flight at the SIGTERM was finished by its replica, not
    // begun again by the other.
    if let Backend::Nats(nats) = &backend {
        let restarted = crate::common::db::psql(
            &nats.schema.url,
            &format!(
                "SELECT count(*) FROM {}.run_chunks WHERE run_id = '{id}' AND starts > 1",
                nats.schema.name
            ),
        );
        assert_eq!(restarted, "0", "a chunk was begun twice");
    }
}

/// Sends `server` SIGTERM and checks it exits cleanly after draining the
/// chunks it was scoring.
fn terminate_drained(server: &mut Server) {
    server.terminate();
    let exit = server
        .wait_exit(Duration::from_secs(90))
        .expect("the server exits");
    assert!(exit.success(), "{exit:?}");
    assert!(
        server
            .logs()
            .iter()
            .any(|l| l["message"] == "runs drained: every chunk being scored was written"),
        "no drain in the logs"
    );
}
