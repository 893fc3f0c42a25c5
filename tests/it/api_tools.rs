//! The API as standard tools see it, through `/openapi.json` alone:
//! schemathesis with every check against a running server (anonymous
//! scoring, then under an admin key for the admin routes), and Python
//! clients made by two generators with their default settings.
//!
//! The tools come from tests/tools.sh's venv. The hooks
//! (tests/schemathesis_hooks.py) put real model names, instruments, stored
//! portfolios and components into the requests meant to be valid; the
//! settings (tests/schemathesis.toml) say which statuses count as a
//! rejection, and why. Runs are seeded and bounded by examples per
//! operation, not by time.

use std::process::Command;

use serde_json::{Value, json};

use crate::common::oci::Registry;
use crate::common::{Server, TempDir, plugins_dir, workspace};

const SEED: &str = "20261207";
const EXAMPLES_PER_OPERATION: &str = "25";

/// Small bounds keep the generated batches small; the served document
/// states them, so schemathesis draws within them.
const BOUNDS: [&str; 6] = [
    "--max-positions",
    "50",
    "--batch-max-portfolios",
    "20",
    "--batch-max-models",
    "4",
];

fn python() -> String {
    std::env::var("RISKHOST_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs schemathesis against `server`; it must pass, having tested every
/// operation with enough cases that a pass means something.
fn schemathesis(
    server: &Server,
    token: Option<&str>,
    hooks_env: &[(&str, String)],
    extra: &[&str],
) {
    let dir = TempDir::new("schemathesis");
    let mut command = Command::new(python());
    command
        .current_dir(dir.path())
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(workspace().join("tests/schemathesis.toml"))
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args(["--checks", "all", "--seed", SEED])
        .args(["--max-examples", EXAMPLES_PER_OPERATION, "--workers", "2"])
        .args(extra)
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", workspace().join("tests"))
        .env("RISKHOST_ST_COMPONENTS", plugins_dir());
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    for (name, value) in hooks_env {
        command.env(name, value);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run schemathesis: {e} (tests/run.sh sets RISKHOST_TEST_PYTHON)")
    });
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    // The failures and the summary, without the request bodies that can be
    // megabytes long.
    let shown: String = report
        .lines()
        .filter(|l| !l.contains("curl -X"))
        .map(|l| l.chars().take(400).collect::<String>() + "\n")
        .collect();
    assert!(
        output.status.success(),
        "schemathesis failed:\n{shown}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "Operations: N selected / M total", then "Tested: N" in the summary.
    let selected = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Operations:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse::<usize>().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let operations = selected.first().copied().unwrap_or_default();
    assert!(
        selected.len() == 2 && selected[0] == selected[1] && operations >= 19,
        "not every operation was selected: {selected:?}\n{shown}"
    );
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "not every one of the {operations} operations was tested:\n{shown}"
    );
    let generated: usize = report
        .lines()
        .find_map(|l| l.trim().split_once(" generated"))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_default();
    assert!(
        generated >= 20 * operations,
        "only {generated} cases:\n{shown}"
    );
}

/// What the hooks need to know of `server`: its models (with their
/// parameters), instruments it has prices for, its stored portfolios, and
/// the as-of dates that leave room for any lookback the hooks draw.
fn hooks_env(server: &Server, token: Option<&str>) -> Vec<(&'static str, String)> {
    let mut request = server.client.get(server.url("/v1/models"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let models: Value = request
        .send()
        .and_then(|r| r.json())
        .expect("GET /v1/models");
    let mut instruments = Vec::new();
    let mut portfolios = Vec::new();
    for entry in std::fs::read_dir(workspace().join("examples/portfolios")).expect("portfolios") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        let portfolio: Value = serde_json::from_str(&text).expect("portfolio JSON");
        portfolios.push(portfolio["id"].clone());
        for position in portfolio["positions"].as_array().into_iter().flatten() {
            instruments.push(position["instrument"].clone());
        }
    }
    instruments.sort_by_key(|i| i.to_string());
    instruments.dedup();
    let last = score_date(server, token);
    vec![
        ("RISKHOST_ST_MODELS", models.to_string()),
        ("RISKHOST_ST_INSTRUMENTS", json!(instruments).to_string()),
        ("RISKHOST_ST_PORTFOLIOS", json!(portfolios).to_string()),
        // Two years of trading days before the last one hold the longest
        // lookback the hooks draw (twice a default of 250).
        ("RISKHOST_ST_DATES", json!(["2017-06-01", last]).to_string()),
    ]
}

/// The as-of date of a score with the defaults: the last day of the data.
fn score_date(server: &Server, token: Option<&str>) -> String {
    let mut request = server.client.post(server.url("/v1/score")).json(&json!({
        "model": "var-historical",
        "portfolio": {"id": "balanced"},
    }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer: Value = request.send().and_then(|r| r.json()).expect("score");
    let date = answer["as_of"].as_str().unwrap_or_default().to_owned();
    assert!(date.starts_with("20"), "{answer}");
    date
}

/// Anonymous scoring: the document makes the key optional on the scoring
/// routes, so every check applies, `ignored_auth` included (the admin
/// routes still need a key), except `use_after_free` (see below).
#[test]
fn schemathesis_finds_no_failure_with_anonymous_scoring() {
    let server = Server::start(&BOUNDS);
    let env = hooks_env(&server, None);
    schemathesis(&server, None, &env, &["--exclude-checks", "use_after_free"]);
}

/// Under an admin key every route is reached: uploads (real components,
/// and OCI references to a registry of the test's own), rollbacks,
/// deletes and purges, besides scoring.
#[test]
fn schemathesis_finds_no_failure_on_every_route_under_an_admin_key() {
    const TOKEN: &str = "schemathesis-admin-s3cret";
    let registry = Registry::start();
    let mut args = BOUNDS.to_vec();
    args.extend([
        "--anonymous-scoring=false",
        "--admin-token",
        TOKEN,
        "--oci-insecure-registries",
        &registry.host,
    ]);
    let server = Server::start(&args);
    let mut env = hooks_env(&server, Some(TOKEN));
    env.push(("RISKHOST_ST_OCI_REGISTRY", registry.host.clone()));
    // `use_after_free` (here and in the anonymous run) expects a DELETE to
    // remove every path under it. Two DELETEs keep what is under them, by
    // design: `DELETE /v1/models/{name}` without `?purge=true` unloads the
    // model and keeps its stored versions (so one can be activated again),
    // which `/versions` still lists; `DELETE /v1/runs/{id}` cancels a run,
    // whose status and results so far stay readable.
    schemathesis(
        &server,
        Some(TOKEN),
        &env,
        &["--exclude-checks", "use_after_free"],
    );
}

/// Clients generated from the served document by openapi-python-client
/// and openapi-generator list the models, score, read a batch whose cells
/// are scores and errors, and roll back with the default (absent) body,
/// each answer as the generator's typed model; what they read is what the
/// server answers.
#[test]
fn generated_python_clients_score_batch_and_list_models_with_typed_results() {
    const TOKEN: &str = "generated-client-s3cret";
    let server = Server::start(&["--admin-token", TOKEN, "--anonymous-scoring=false"]);
    let dir = TempDir::new("generated-clients");
    let output = Command::new(python())
        .arg(workspace().join("tests/generated_clients.py"))
        .arg(&server.base)
        .arg(TOKEN)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let read: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from the clients: {stdout}"));

    // The server's own answers, for the same requests.
    let positions = json!([
        {"instrument": "AAPL", "quantity": 100.0},
        {"instrument": "SPX", "quantity": -3.0},
        {"instrument": "GOLD", "quantity": 12.5},
    ]);
    let authorized = |path: &str, body: Value| -> Value {
        server
            .client
            .post(server.url(path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .and_then(|r| r.json())
            .expect("request")
    };
    let single = authorized(
        "/v1/score",
        json!({"model": "var-historical", "portfolio": {"positions": positions}}),
    );
    let batch = authorized(
        "/v1/score/batch",
        json!({
            "models": ["var-historical", "es-historical"],
            "portfolios": [
                {"positions": positions},
                {"positions": [{"instrument": "NO-SUCH-INSTRUMENT", "quantity": 1.0}]},
                {"id": "tech"},
            ],
        }),
    );
    let cells: Vec<Value> = batch["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|c| {
            json!({
                "portfolio_index": c["portfolio_index"],
                "model": c["model"],
                "value": c["value"],
                "error": c["error"]["code"],
            })
        })
        .collect();
    assert!(
        cells.iter().any(|c| c["error"] == "unknown_instrument")
            && cells.iter().any(|c| c["value"].is_number()),
        "the batch has both a score and an error: {batch}"
    );
    for generator in ["openapi-python-client", "openapi-generator"] {
        let client = &read[generator];
        assert_eq!(
            client["models"],
            json!(["es-historical", "var-historical", "var-parametric"]),
            "{generator}: {client}"
        );
        assert_eq!(client["score"], single["value"], "{generator}: {client}");
        assert_eq!(client["digest"], single["digest"], "{generator}: {client}");
        assert_eq!(client["cells"], json!(cells), "{generator}: {client}");
        // The default rollback call reaches the server (409: no earlier
        // version), instead of failing on its own body.
        assert_eq!(
            client["rollback"], "no_previous_version",
            "{generator}: {client}"
        );
    }
}
