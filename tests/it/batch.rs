//! End-to-end tests of the batch API, dynamic batching and `score-file`:
//! batch cells equal single-request scores exactly, failures stay in their
//! cells, limits are enforced, NDJSON streams, and concurrent single
//! requests are coalesced without changing any result.

use crate::common;

use std::sync::Arc;

use common::{Server, TempDir, assert_error, plugins_dir, workspace};
use serde_json::{Value, json};

const MODELS: [&str; 3] = ["var-historical", "es-historical", "var-parametric"];

fn sample(name: &str) -> Value {
    let path = workspace()
        .join("examples/portfolios")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("parse")
}

fn samples() -> Vec<Value> {
    ["balanced", "tech", "macro", "single-spx", "fifty"]
        .into_iter()
        .map(sample)
        .collect()
}

#[test]
fn batch_cells_equal_single_requests_in_order() {
    let server = Server::start(&[]);
    let portfolios = samples();
    let params = json!({"confidence": 0.975, "lookback_days": 500});
    let (status, batch) = server.post(
        "/v1/score/batch",
        &json!({"models": MODELS, "portfolios": portfolios, "params": params}),
    );
    assert_eq!(status, 200, "{batch}");
    let cells = batch["results"].as_array().expect("results");
    assert_eq!(cells.len(), portfolios.len() * MODELS.len());
    assert_eq!(batch["as_of"], "2018-12-31");

    // A second server, with nothing cached, answers the same jobs one by one.
    let reference = Server::start(&["--dynamic-batch-max", "1"]);
    for (i, cell) in cells.iter().enumerate() {
        let (p, m) = (i / MODELS.len(), i % MODELS.len());
        assert_eq!(cell["portfolio_index"], p);
        assert_eq!(cell["model"], MODELS[m]);
        assert_eq!(cell["portfolio_id"], portfolios[p]["id"]);
        assert_eq!(cell["cached"], false);
        let (status, single) = reference.post(
            "/v1/score",
            &json!({"model": MODELS[m], "portfolio": portfolios[p], "params": params}),
        );
        assert_eq!(status, 200, "{single}");
        assert_eq!(
            cell["value"], single["value"],
            "cell {i} differs from the single request"
        );
        assert_eq!(cell["breakdown"], single["breakdown"]);
        assert_eq!(cell["digest"], single["digest"]);
    }

    // The same batch again is answered from the memo, identically.
    let (_, again) = server.post(
        "/v1/score/batch",
        &json!({"models": MODELS, "portfolios": portfolios, "params": params}),
    );
    let again = again["results"].as_array().expect("results");
    assert!(again.iter().all(|c| c["cached"] == true));
    for (a, b) in cells.iter().zip(again) {
        assert_eq!(a["value"], b["value"]);
    }
}

#[test]
fn breakdown_false_answers_the_same_values_without_breakdowns() {
    let server = Server::start(&[]);
    let portfolios = samples();
    let batch = |breakdown: Option<bool>| {
        let mut body = json!({"models": MODELS, "portfolios": portfolios});
        if let Some(breakdown) = breakdown {
            body["breakdown"] = json!(breakdown);
        }
        let (status, answer) = server.post("/v1/score/batch", &body);
        assert_eq!(status, 200, "{answer}");
        answer["results"].as_array().cloned().unwrap_or_default()
    };
    // Computed without breakdowns, then served from the memo with them
    // (the memo keeps the whole score), then without again.
    let bare = batch(Some(false));
    let full = batch(None);
    let bare_again = batch(Some(false));
    assert_eq!(bare.len(), portfolios.len() * MODELS.len());
    for ((bare, full), again) in bare.iter().zip(&full).zip(&bare_again) {
        assert_eq!(bare["breakdown"], json!([]), "{bare}");
        assert_eq!(again["breakdown"], json!([]), "{again}");
        assert!(
            full["breakdown"].as_array().is_some_and(|b| !b.is_empty()),
            "{full}"
        );
        assert_eq!(bare["cached"], false);
        assert_eq!(full["cached"], true);
        assert_eq!(
            bare["value"].as_f64().map(f64::to_bits),
            full["value"].as_f64().map(f64::to_bits)
        );
    }
    // The single route likewise.
    let request =
        json!({"model": "var-historical", "portfolio": portfolios[0], "breakdown": false});
    let (status, single) = server.post("/v1/score", &request);
    assert_eq!(status, 200, "{single}");
    assert_eq!(single["breakdown"], json!([]));
    assert_eq!(
        single["value"].as_f64().map(f64::to_bits),
        full[0]["value"].as_f64().map(f64::to_bits)
    );
    let (status, refused) = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": portfolios[0], "breakdown": "no"}),
    );
    assert_error(&(status, refused), 422, "invalid_body", "breakdown");
}

#[test]
fn failures_stay_in_their_cells_and_name_the_portfolio() {
    let server = Server::start(&[]);
    let portfolios = json!([
        sample("balanced"),
        {"id": "ghost", "positions": [{"instrument": "SPX", "quantity": 1}, {"instrument": "NOPE", "quantity": 2}]},
        {"id": "empty", "positions": []},
        {"id": "tech"},
        {"id": "unknown-stored"},
        {"positions": [{"instrument": "bad name", "quantity": 1}]}
    ]);
    let (status, body) = server.post(
        "/v1/score/batch",
        &json!({"models": ["var-historical", "es-historical"], "portfolios": portfolios}),
    );
    assert_eq!(status, 200, "{body}");
    let cells = body["results"].as_array().expect("results");
    assert_eq!(cells.len(), 12);
    let code = |i: usize| cells[i]["error"]["code"].as_str().unwrap_or("").to_owned();
    let message = |i: usize| {
        cells[i]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    // balanced: scored by both models.
    assert!(cells[0]["value"].is_number() && cells[1]["value"].is_number());
    // ghost: the unknown instrument is named, in both cells.
    assert_eq!(code(2), "unknown_instrument");
    assert!(
        message(2).contains("NOPE") && !message(2).contains("SPX"),
        "{}",
        message(2)
    );
    assert_eq!(code(3), "unknown_instrument");
    // empty: a malformed portfolio is reported with its index.
    assert_eq!(code(4), "invalid_portfolio");
    assert!(message(4).contains("portfolio 2"), "{}", message(4));
    // a stored portfolio by id is scored like an inline one.
    assert!(cells[6]["value"].is_number(), "{}", cells[6]);
    assert_eq!(cells[6]["portfolio_id"], "tech");
    assert_eq!(code(8), "unknown_portfolio");
    assert_eq!(code(10), "invalid_portfolio");
    assert!(message(10).contains("portfolio 5"));
}

#[test]
fn request_level_errors_and_limits() {
    let server = Server::start(&["--batch-max-portfolios", "3", "--batch-max-models", "2"]);
    let one = json!([sample("tech")]);
    let post = |body: Value| server.post("/v1/score/batch", &body);
    assert_error(
        &post(json!({"models": MODELS, "portfolios": one})),
        413,
        "batch_too_large",
        "3 models",
    );
    assert_error(
        &post(
            json!({"models": ["var-historical"], "portfolios": [sample("tech"), sample("tech"), sample("tech"), sample("tech")]}),
        ),
        413,
        "batch_too_large",
        "4 portfolios",
    );
    assert_error(
        &post(json!({"models": [], "portfolios": one})),
        422,
        "invalid_batch",
        "model",
    );
    assert_error(
        &post(json!({"models": ["var-historical"], "portfolios": []})),
        422,
        "invalid_batch",
        "portfolio",
    );
    assert_error(
        &post(json!({"models": ["nope"], "portfolios": one})),
        404,
        "unknown_model",
        "nope",
    );
    assert_error(
        &post(json!({"models": ["var-historical", "var-historical"], "portfolios": one})),
        422,
        "invalid_batch",
        "twice",
    );
    assert_error(
        &post(json!({"models": ["var-historical"], "portfolios": one, "params": {"alpha": 1}})),
        422,
        "invalid_params",
        "alpha",
    );
    assert_error(
        &post(
            json!({"models": ["var-historical"], "portfolios": one, "params": {"confidence": 2}}),
        ),
        422,
        "invalid_params",
        "var-historical",
    );
    assert_error(
        &post(json!({"models": ["var-historical"], "portfolios": one, "as_of": "2001-01-01"})),
        422,
        "as_of_out_of_range",
        "2001-01-01",
    );
}

#[test]
fn ndjson_streams_one_cell_per_line() {
    let server = Server::start(&[]);
    let body = json!({"models": MODELS, "portfolios": samples()});
    let (_, as_json) = server.post("/v1/score/batch", &body);
    let text = server
        .client
        .post(server.url("/v1/score/batch"))
        .header("accept", "application/x-ndjson")
        .json(&body)
        .send()
        .expect("POST")
        .text()
        .expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let cells = as_json["results"].as_array().expect("results");
    assert_eq!(lines.len(), cells.len());
    for (line, cell) in lines.iter().zip(cells) {
        assert_eq!(line["portfolio_index"], cell["portfolio_index"]);
        assert_eq!(line["model"], cell["model"]);
        assert_eq!(line["value"], cell["value"]);
    }
}

#[test]
fn concurrent_single_requests_are_coalesced_without_changing_results() {
    // One execution slot and a 20 ms gathering delay make coalescing certain.
    let server = Arc::new(Server::start(&[
        "--max-concurrent-calls",
        "1",
        "--dynamic-batch-delay-us",
        "20000",
    ]));
    let reference = Server::start(&["--dynamic-batch-max", "1"]);
    // Two as-of dates interleaved: a coalesced batch holds jobs on two
    // pins, which must be split into one call per pin.
    let requests: Vec<Value> = (0..32)
        .map(|i| {
            let as_of = if i % 2 == 0 {
                "2018-12-31"
            } else {
                "2018-06-29"
            };
            json!({"model": "var-historical", "portfolio": sample("balanced"),
                   "as_of": as_of,
                   "params": {"confidence": 0.9 + f64::from(i) / 1000.0}})
        })
        .collect();
    let threads: Vec<_> = requests
        .iter()
        .cloned()
        .map(|request| {
            let server = server.clone();
            std::thread::spawn(move || server.post("/v1/score", &request))
        })
        .collect();
    let answers: Vec<(u16, Value)> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    for (request, (status, answer)) in requests.iter().zip(&answers) {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["as_of"], request["as_of"]);
        let (_, alone) = reference.post("/v1/score", request);
        assert_eq!(answer["value"], alone["value"]);
        assert_eq!(answer["breakdown"], alone["breakdown"]);
    }
    let metrics = server.get_text("/metrics");
    let count = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    let calls = count(r#"riskhost_model_call_duration_seconds_count{model="var-historical""#);
    assert!(
        calls < 32.0,
        "32 concurrent requests took {calls} model calls: nothing was coalesced"
    );
    let jobs =
        count(r#"riskhost_model_jobs_total{model="var-historical",version="1.0.0",outcome="ok"}"#);
    assert_eq!(jobs, 32.0, "every request is one job");
}

#[test]
fn score_file_uses_the_batch_engine() {
    let dir = TempDir::new("score-file");
    let input = dir.path().join("portfolios.jsonl");
    let mut lines: Vec<String> = samples().iter().map(|p| p.to_string()).collect();
    lines.insert(2, String::new());
    lines.push(
        json!({"id": "bad", "positions": [{"instrument": "NOPE", "quantity": 1}]}).to_string(),
    );
    std::fs::write(&input, lines.join("\n")).expect("write");
    for out in ["out.csv", "out.jsonl"] {
        let out = dir.path().join(out);
        let status = std::process::Command::new(common::binary())
            .args([
                "score-file",
                "--models",
                "var-historical,es-historical",
                "--quiet",
            ])
            .args(["--plugins", plugins_dir().to_str().unwrap_or_default()])
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run score-file");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let summary = String::from_utf8_lossy(&status.stderr);
        assert!(
            summary.contains("scored 6 portfolios × 2 models: 10 scores, 2 errors"),
            "{summary}"
        );
        let written = std::fs::read_to_string(&out).expect("output");
        if out.extension().is_some_and(|e| e == "csv") {
            let rows: Vec<&str> = written.lines().collect();
            assert_eq!(rows.len(), 13, "{written}");
            assert!(rows[0].starts_with("line,portfolio_id,model"));
            assert!(rows.iter().any(
                |r| r.starts_with("7,bad,var-historical,") && r.contains("unknown_instrument")
            ));
        } else {
            let cells: Vec<Value> = written
                .lines()
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect();
            assert_eq!(cells.len(), 12);
            assert_eq!(cells[0]["line"], 1);
            assert_eq!(cells[4]["line"], 4, "the blank line still counts");
        }
    }
}

/// Inline positions win over a stored portfolio of the same id, in a batch
/// as in a single request, however many portfolios are given by id alone
/// (two or more are fetched from the data source in one round trip).
#[test]
fn inline_positions_win_over_a_stored_portfolio_of_the_same_id() {
    let server = Server::start(&[]);
    let inline = json!({"id": "tech", "positions": [{"instrument": "SPX", "quantity": 1}]});
    let (status, single) = server.post(
        "/v1/score",
        &json!({"model": "var-parametric", "portfolio": inline}),
    );
    assert_eq!(status, 200, "{single}");
    let names = |breakdown: &Value| -> Vec<String> {
        breakdown
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(names(&single["breakdown"]), ["SPX"], "{single}");

    let (status, batch) = server.post(
        "/v1/score/batch",
        &json!({"models": ["var-parametric"], "portfolios": [{"id": "tech"}, {"id": "balanced"}, inline]}),
    );
    assert_eq!(status, 200, "{batch}");
    let cells = batch["results"].as_array().expect("results");
    assert_eq!(cells.len(), 3);
    assert_eq!(cells[2]["portfolio_id"], "tech");
    assert_eq!(
        names(&cells[2]["breakdown"]),
        ["SPX"],
        "the inline portfolio was scored with the stored positions: {}",
        cells[2]
    );
    assert_eq!(cells[2]["value"], single["value"]);
    // The portfolios given by id alone are still the stored ones.
    assert!(names(&cells[0]["breakdown"]).contains(&"AAPL".to_owned()));
    assert_ne!(cells[0]["value"], cells[2]["value"]);
}
