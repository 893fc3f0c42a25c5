//! Replay end to end (`docs/replay.md`): scores served through every path
//! (single, dynamically batched single requests, the batch API, a memo
//! hit, a risk run) and recorded in a real ClickHouse are re-run by `POST /v1/replay`
//! and `riskhost replay` bit for bit, a Monte Carlo model's included; a
//! replay after two swaps runs the recorded version, loaded from the store;
//! a purged version is 410, restated prices in PostgreSQL are 409 naming
//! the snapshots, an unknown request id is 404.
//!
//! A risk run's scores are recorded under the run's id and replayed by it.

use crate::common;

use std::time::Duration;

use common::db::{ChDatabase, PgSchema, ch_query, ch_url, psql, riskhost_db, wait_until};
use common::{
    Server, TempDir, active_digest, admin_request, answer, assert_error, binary, digest,
    plugins_with, put_model, with_custom_section, workspace,
};
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";

/// The flags that record score events into `ch`, flushed every 50 ms.
fn event_flags(ch: &ChDatabase) -> Vec<String> {
    [
        "--clickhouse-url",
        &ch.url,
        "--clickhouse-database",
        &ch.name,
        "--events-flush-ms",
        "50",
        "--admin-token",
        TOKEN,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn start(ch: &ChDatabase, plugins: &TempDir, extra: &[&str]) -> Server {
    let mut args: Vec<String> = vec!["--plugins".into(), plugins.path().display().to_string()];
    args.extend(event_flags(ch));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(&args)
}

/// POSTs `body` to `path` as request `id`.
fn post_as(server: &Server, path: &str, id: &str, body: &Value) -> Value {
    let (status, body) = answer(
        server
            .client
            .post(server.url(path))
            .header("x-request-id", id)
            .json(body)
            .send(),
    );
    assert_eq!(status, 200, "{id}: {body}");
    body
}

/// Waits until `n` score events of request `id` are in ClickHouse.
fn wait_recorded(ch: &ChDatabase, id: &str, n: u64) {
    let sql = format!(
        "SELECT count() FROM {}.score_events WHERE request_id = '{id}'",
        ch.name
    );
    wait_until(
        &format!("the {n} events of {id} are written"),
        Duration::from_secs(60),
        || ch_query(&ch.url, &sql).ok().and_then(|t| t.parse().ok()) == Some(n),
    );
}

/// `riskhost replay ARGS` against `server`, as the admin.
fn replay_cli(server: &Server, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary())
        .arg("replay")
        .args(args)
        .args(["--server", &server.url(""), "--token", TOKEN])
        .output()
        .expect("run riskhost replay")
}

fn replay(server: &Server, id: &str) -> (u16, Value) {
    answer(
        admin_request(server, TOKEN, reqwest::Method::POST, "/v1/replay")
            .json(&json!({"request_id": id}))
            .send(),
    )
}

fn bits(v: &Value) -> Option<u64> {
    v.as_f64().map(f64::to_bits)
}

/// Replays request `id` and checks every cell against `served`: the
/// (model, portfolio id, value, digest, snapshot, as-of) of each score the
/// request answered, in any order. Answers the cells.
fn assert_replays(
    server: &Server,
    id: &str,
    served: &[(String, Value, Value, Value, Value, Value)],
) -> Vec<Value> {
    let (status, body) = replay(server, id);
    assert_eq!(status, 200, "{id}: {body}");
    assert_eq!(body["request_id"], id);
    let cells = body["cells"].as_array().cloned().unwrap_or_default();
    assert_eq!(cells.len(), served.len(), "{id}: {body}");
    for (model, portfolio, value, digest, snapshot, as_of) in served {
        let cell = cells
            .iter()
            .find(|c| {
                c["model"] == model.as_str()
                    && &c["portfolio_id"] == portfolio
                    && bits(&c["recorded"]) == bits(value)
            })
            .unwrap_or_else(|| {
                panic!("{id}: no cell recorded {model} {portfolio} = {value}: {body}")
            });
        assert_eq!(cell["identical"], true, "{id}: {cell}");
        assert_eq!(bits(&cell["replayed"]), bits(value), "{id}: {cell}");
        assert_eq!(&cell["digest"], digest, "{id}: {cell}");
        assert_eq!(&cell["snapshot"], snapshot, "{id}: {cell}");
        assert_eq!(&cell["as_of"], as_of, "{id}: {cell}");
        assert!(cell.get("error").is_none(), "{id}: {cell}");
    }
    cells
}

/// What a single answer served, as `assert_replays` takes it.
fn single_served(body: &Value) -> (String, Value, Value, Value, Value, Value) {
    (
        body["model"].as_str().unwrap_or_default().to_owned(),
        body.get("portfolio_id").cloned().unwrap_or(Value::Null),
        body["value"].clone(),
        body["digest"].clone(),
        body["snapshot"].clone(),
        body["as_of"].clone(),
    )
}

/// What a batch answer served, cell by cell.
fn batch_served(body: &Value) -> Vec<(String, Value, Value, Value, Value, Value)> {
    body["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["model"].as_str().unwrap_or_default().to_owned(),
                c.get("portfolio_id").cloned().unwrap_or(Value::Null),
                c["value"].clone(),
                c["digest"].clone(),
                body["snapshot"].clone(),
                body["as_of"].clone(),
            )
        })
        .collect()
}

fn model_calls(server: &Server) -> f64 {
    ["var-historical", "es-historical", "monte-carlo"]
        .iter()
        .map(|m| {
            server
                .metric(&format!(
                    r#"riskhost_model_call_duration_seconds_count{{model="{m}",version="1.0.0"}}"#
                ))
                .unwrap_or(0.0)
        })
        .sum()
}

#[test]
fn replay_reproduces_every_path_bit_for_bit() {
    let ch = ChDatabase::new(&ch_url(), "replay_paths");
    let plugins = plugins_with(&["var-historical", "es-historical"], &["monte-carlo"]);
    let server = start(&ch, &plugins, &[]);
    let inline = |q: f64| {
        json!({"id": "inline", "positions": [
        {"instrument": "SPX", "quantity": q}, {"instrument": "TLT", "quantity": -20}]})
    };

    // Single requests, one of them Monte Carlo (seeded by the job), one a
    // memo hit of the first.
    let single = post_as(
        &server,
        "/v1/score",
        "single",
        &json!({"model": "var-historical", "portfolio": {"id": "balanced"}, "params": {"confidence": 0.975}}),
    );
    let hit = post_as(
        &server,
        "/v1/score",
        "single-hit",
        &json!({"model": "var-historical", "portfolio": {"id": "balanced"}, "params": {"confidence": 0.975}}),
    );
    assert_eq!(hit["cached"], true, "{hit}");
    let mc = post_as(
        &server,
        "/v1/score",
        "single-mc",
        &json!({"model": "monte-carlo", "portfolio": inline(10.0), "params": {"scenarios": 2000}}),
    );

    // Concurrent single requests, coalesced by the dynamic batcher.
    let concurrent: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (server, body) = (
                    &server,
                    json!({"model": "es-historical", "portfolio": inline(1.0 + i as f64)}),
                );
                s.spawn(move || post_as(server, "/v1/score", &format!("dynamic-{i}"), &body))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Value::Null))
            .collect()
    });

    // The batch API: stored and inline portfolios × two models; and Monte
    // Carlo next to another model.
    let batch = post_as(
        &server,
        "/v1/score/batch",
        "batch",
        &json!({
        "models": ["var-historical", "es-historical"],
        "portfolios": [{"id": "balanced"}, {"id": "tech"}, {"id": "macro"}, inline(3.0)]}),
    );
    let batch_mc = post_as(
        &server,
        "/v1/score/batch",
        "batch-mc",
        &json!({
        "models": ["monte-carlo", "var-historical"],
        "portfolios": [inline(-4.0)], "params": {"scenarios": 3000}}),
    );

    for (id, n) in [
        ("single", 1),
        ("single-hit", 1),
        ("single-mc", 1),
        ("batch", 8),
        ("batch-mc", 2),
    ] {
        wait_recorded(&ch, id, n);
    }
    for i in 0..8 {
        wait_recorded(&ch, &format!("dynamic-{i}"), 1);
    }

    // Every replay computes: no memo answers it.
    let calls_before = model_calls(&server);
    assert_replays(&server, "single", &[single_served(&single)]);
    assert_replays(&server, "single-hit", &[single_served(&hit)]);
    let mc_cells = assert_replays(&server, "single-mc", &[single_served(&mc)]);
    assert_ne!(mc_cells[0]["seed"], 0, "{mc_cells:?}");
    for (i, served) in concurrent.iter().enumerate() {
        assert_replays(&server, &format!("dynamic-{i}"), &[single_served(served)]);
    }
    let cells = assert_replays(&server, "batch", &batch_served(&batch));
    assert!(cells.iter().all(|c| c["path"] == "batch"), "{cells:?}");
    assert_replays(&server, "batch-mc", &batch_served(&batch_mc));
    assert_eq!(
        model_calls(&server) - calls_before,
        (1 + 1 + 1 + 8 + 8 + 2) as f64,
        "one model call per replayed score"
    );

    // The same through the command line, as a table and as JSON.
    let out = replay_cli(&server, &["batch"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("request batch: 8 recorded scores, 8 identical"),
        "{stdout}"
    );
    let out = replay_cli(&server, &["single-mc", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        bits(&printed["cells"][0]["replayed"]),
        bits(&mc["value"]),
        "{printed}"
    );

    // A risk run: its scores are recorded under the run's id.
    let (status, run) = server.post(
        "/v1/runs",
        &json!({"models": ["var-historical", "es-historical"],
                "portfolios": {"ids": ["balanced", "tech", "macro"]}}),
    );
    assert_eq!(status, 202, "{run}");
    let run_id = run["id"].as_str().expect("a run id").to_owned();
    wait_until("the run finishes", Duration::from_secs(60), || {
        server.get(&format!("/v1/runs/{run_id}")).1["status"] == "completed"
    });
    let lines: Vec<Value> = server
        .get_text(&format!("/v1/runs/{run_id}/results"))
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert_eq!(lines.len(), 6);
    wait_recorded(&ch, &run_id, 6);
    let (_, run) = server.get(&format!("/v1/runs/{run_id}"));
    let run_served: Vec<_> = lines
        .iter()
        .map(|line| {
            (
                line["model"].as_str().unwrap_or_default().to_owned(),
                line["portfolio_id"].clone(),
                line["value"].clone(),
                line["digest"].clone(),
                batch["snapshot"].clone(),
                run["as_of"].clone(),
            )
        })
        .collect();
    let cells = assert_replays(&server, &run_id, &run_served);
    assert!(cells.iter().all(|c| c["path"] == "run"), "{cells:?}");

    // Unknown ids and bad bodies are refused by name.
    assert_error(
        &replay(&server, "never-sent"),
        404,
        "unknown_request",
        "never-sent",
    );
    let out = replay_cli(&server, &["never-sent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_request"));
    assert_error(
        &replay(&server, ""),
        422,
        "invalid_request_id",
        "request_id",
    );
    let (status, body) = answer(
        admin_request(&server, TOKEN, reqwest::Method::POST, "/v1/replay")
            .json(&json!({"request": "batch"}))
            .send(),
    );
    assert_error(&(status, body), 422, "invalid_body", "request");
    // Replay is an admin's: a scoring caller is refused.
    let (status, _) = answer(
        server
            .client
            .post(server.url("/v1/replay"))
            .json(&json!({"request_id": "batch"}))
            .send(),
    );
    assert_eq!(status, 401);
}

/// The versioned test model: build B scores twice what build A does;
/// `tag` makes a version of its own (another digest).
fn versioned(build: &str, tag: &str) -> Vec<u8> {
    let path = workspace().join(format!("tests/plugins/dist/versioned-{build}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    with_custom_section(&bytes, tag)
}

#[test]
fn replay_runs_the_recorded_version_after_two_swaps_and_not_a_purged_one() {
    let ch = ChDatabase::new(&ch_url(), "replay_swaps");
    let plugins = plugins_with(&[], &[]);
    // No version kept loaded besides the active one: the recorded version
    // is loaded from the store.
    let server = start(
        &ch,
        &plugins,
        &["--standby-versions", "0", "--cache-ttl-secs", "0"],
    );
    let recorded_version = versioned("b", "first");
    let (status, body) = put_model(&server, TOKEN, "versioned", recorded_version.clone(), None);
    assert_eq!(status, 201, "a new model: {body}");
    let request = json!({"model": "versioned", "portfolio": {"positions": [{"instrument": "SPX", "quantity": 10}]}, "params": {"offset": 1.5}});
    let served = post_as(&server, "/v1/score", "before-swaps", &request);
    assert_eq!(served["digest"], digest(&recorded_version));
    wait_recorded(&ch, "before-swaps", 1);

    for (build, tag) in [("a", "second"), ("a", "third")] {
        let (status, body) = put_model(&server, TOKEN, "versioned", versioned(build, tag), None);
        assert_eq!(status, 201, "a new version, activated: {body}");
    }
    let now = post_as(&server, "/v1/score", "after-swaps", &request);
    assert_eq!(
        active_digest(&server, "versioned"),
        now["digest"].as_str().map(str::to_owned)
    );
    assert_ne!(now["digest"], served["digest"]);
    assert_ne!(
        bits(&now["value"]),
        bits(&served["value"]),
        "build A scores half of B"
    );

    let cells = assert_replays(&server, "before-swaps", &[single_served(&served)]);
    assert_eq!(cells[0]["version"], served["version"]);

    // Deleted with purge: the recorded version is gone for good.
    let (status, body) = answer(
        admin_request(
            &server,
            TOKEN,
            reqwest::Method::DELETE,
            "/v1/models/versioned?purge=true",
        )
        .send(),
    );
    assert_eq!(status, 200, "{body}");
    assert_error(
        &replay(&server, "before-swaps"),
        410,
        "version_gone",
        served["digest"].as_str().unwrap_or("sha256"),
    );
}

#[test]
fn restated_prices_in_postgres_refuse_the_replay_naming_what_changed() {
    let ch = ChDatabase::new(&ch_url(), "replay_pg");
    let schema = PgSchema::new("replay");
    riskhost_db(&[
        "seed",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
    ]);
    let plugins = plugins_with(&["var-historical", "es-historical"], &["monte-carlo"]);
    let server = start(
        &ch,
        &plugins,
        &[
            "--data-source",
            "postgres",
            "--postgres-url",
            &schema.url,
            "--postgres-schema",
            &schema.name,
            "--data-version-ttl-ms",
            "100",
        ],
    );
    let request = json!({"model": "var-historical", "portfolio": {"id": "single-spx"}, "params": {"lookback_days": 20}});
    let single = post_as(&server, "/v1/score", "pg-single", &request);
    let batch = post_as(
        &server,
        "/v1/score/batch",
        "pg-batch",
        &json!({
        "models": ["var-historical", "monte-carlo"], "portfolios": [{"id": "balanced"}], "params": {"scenarios": 1000}}),
    );
    wait_recorded(&ch, "pg-single", 1);
    wait_recorded(&ch, "pg-batch", 2);
    // On unchanged data, PostgreSQL's windows replay bit for bit too.
    assert_replays(&server, "pg-single", &[single_served(&single)]);
    assert_replays(&server, "pg-batch", &batch_served(&batch));

    let recorded = single["snapshot"].as_str().unwrap_or_default().to_owned();
    psql(
        &schema.url,
        &format!(
            "UPDATE {}.prices SET close = close * 1.01 WHERE instrument = 'SPX' AND date = '2018-12-20'",
            schema.name
        ),
    );
    let mut current = String::new();
    wait_until(
        "the restated prices are served",
        Duration::from_secs(30),
        || {
            current = server.post("/v1/score", &request).1["snapshot"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            current != recorded
        },
    );
    let (status, body) = replay(&server, "pg-single");
    assert_error(
        &(status, body.clone()),
        409,
        "snapshot_unavailable",
        &recorded,
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&current),
        "names the current snapshot: {message}"
    );
    assert!(
        message.contains("changed 1 time since"),
        "says what changed: {message}"
    );
    // … naming the instrument, the date and the close before and after.
    let restated = text_after(message, "SPX: 1 close restated on 2018-12-20 (");
    let (old, new) = restated
        .and_then(|rest| rest.split_once(')'))
        .and_then(|(closes, _)| closes.split_once(" → "))
        .and_then(|(old, new)| Some((old.parse::<f64>().ok()?, new.parse::<f64>().ok()?)))
        .unwrap_or_else(|| panic!("names the restated close: {message}"));
    assert_eq!(new.to_bits(), (old * 1.01).to_bits(), "{message}");
}

/// The text of `haystack` after the first `needle`.
fn text_after<'a>(haystack: &'a str, needle: &str) -> Option<&'a str> {
    haystack
        .find(needle)
        .map(|at| &haystack[at + needle.len()..])
}

#[test]
fn replay_without_recorded_events_says_what_it_needs() {
    let plugins = plugins_with(&["var-historical"], &[]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
    ]);
    assert_error(
        &replay(&server, "any"),
        404,
        "replay_not_configured",
        "--clickhouse-url",
    );
}
