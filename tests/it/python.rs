//! Python models are a supported path: `examples/python/var-parametric-py`
//! (pure Python, built with componentize-py by `examples/python/build.sh`)
//! loads in the real server next to the Rust `var-parametric` and answers
//! the same requests with the same numbers, errors included.

use crate::common;

use common::{Server, TempDir, workspace};
use serde_json::{Value, json};

/// The Python example, built by `examples/python/build.sh` (tests/run.sh runs it).
fn python_model() -> std::path::PathBuf {
    let path = workspace().join("examples/python/dist/var-parametric-py.wasm");
    assert!(
        path.is_file(),
        "{} is missing: run examples/python/build.sh (tests/run.sh does) before the tests",
        path.display()
    );
    path
}

/// A plugins directory holding the Rust and the Python var-parametric.
fn plugins() -> TempDir {
    let dir = TempDir::new("python");
    let rust = common::plugins_dir().join("var-parametric.wasm");
    std::fs::copy(&rust, dir.path().join("var-parametric.wasm")).expect("copy rust model");
    std::fs::copy(python_model(), dir.path().join("var-parametric-py.wasm"))
        .expect("copy python model");
    dir
}

#[track_caller]
fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: Python {got}, Rust {want} (relative difference {:e})",
        (got - want).abs() / want.abs().max(1.0)
    );
}

/// Same value and same breakdown (names in order, values to 1e-9 relative).
#[track_caller]
fn assert_same_score(python: &Value, rust: &Value, what: &str) {
    assert_close(
        python["value"].as_f64().expect("python value"),
        rust["value"].as_f64().expect("rust value"),
        what,
    );
    assert_eq!(python["unit"], rust["unit"], "{what}");
    assert_eq!(python["params"], rust["params"], "{what}");
    let (p, r) = (
        python["breakdown"].as_array().expect("python breakdown"),
        rust["breakdown"].as_array().expect("rust breakdown"),
    );
    assert_eq!(p.len(), r.len(), "{what}: breakdown lengths");
    for (pc, rc) in p.iter().zip(r) {
        assert_eq!(pc["name"], rc["name"], "{what}");
        assert_close(
            pc["value"].as_f64().expect("python contribution"),
            rc["value"].as_f64().expect("rust contribution"),
            &format!("{what}, contribution of {}", rc["name"]),
        );
    }
}

/// One server for every check: a Python component takes seconds to compile.
#[test]
fn the_python_model_serves_the_same_scores_and_errors_as_the_rust_one() {
    let dir = plugins();
    let server = Server::start_with(&["--plugins", dir.path().to_str().expect("utf-8 path")]);
    lists_both_with_the_same_contract(&server);
    scores_match(&server);
    errors_match(&server);
    batches_mix_python_and_rust_models(&server);
}

fn lists_both_with_the_same_contract(server: &Server) {
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["failures"], json!([]), "{models}");
    let python = models["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["name"] == "var-parametric-py")
        .expect("the Python model is served")
        .clone();
    assert_eq!(python["version"], "1.0.0");
    let rust = models["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["name"] == "var-parametric")
        .expect("the Rust model is served")
        .clone();
    assert_eq!(python["info"]["params"], rust["info"]["params"]);
    assert_eq!(python["info"]["data"], rust["info"]["data"]);
}

fn scores_match(server: &Server) {
    let param_sets = [
        json!({}),
        json!({"confidence": 0.975, "horizon_days": 10}),
        json!({"confidence": 0.9999, "lookback_days": 60}),
        json!({"confidence": 0.5}),
    ];
    for portfolio in ["balanced", "tech", "macro", "single-spx", "fifty"] {
        for params in &param_sets {
            let score = |model: &str| {
                let (status, body) = server.post(
                    "/v1/score",
                    &json!({"model": model, "portfolio": {"id": portfolio}, "params": params, "as_of": "2017-06-30"}),
                );
                assert_eq!(status, 200, "{model} {portfolio} {params}: {body}");
                body
            };
            assert_same_score(
                &score("var-parametric-py"),
                &score("var-parametric"),
                &format!("{portfolio} {params}"),
            );
        }
    }

    // A hand-made portfolio with a short and a hedge, at the latest date.
    let hedged = json!({"id": "hedged", "positions": [
        {"instrument": "SPX", "quantity": 10}, {"instrument": "SX5E", "quantity": -25},
        {"instrument": "TLT", "quantity": 300}, {"instrument": "BTCUSD", "quantity": 0.5}]});
    let score = |model: &str| {
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": model, "portfolio": hedged, "params": {"horizon_days": 5}}),
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    assert_same_score(
        &score("var-parametric-py"),
        &score("var-parametric"),
        "hedged",
    );
}

fn errors_match(server: &Server) {
    let both = |body: Value| {
        ["var-parametric-py", "var-parametric"].map(|model| {
            let mut body = body.clone();
            body["model"] = json!(model);
            server.post("/v1/score", &body)
        })
    };

    // Out of bounds: rejected by the host against info(), identically.
    let [py, rs] = both(json!({"portfolio": {"id": "balanced"}, "params": {"confidence": 1.5}}));
    common::assert_error(&py, 422, "invalid_params", "confidence");
    assert_eq!(
        py.1["error"]["message"]
            .as_str()
            .map(|m| m.replace("-py", "")),
        rs.1["error"]["message"].as_str().map(str::to_owned)
    );

    // More history than the data holds: the model names the instrument.
    let [py, rs] =
        both(json!({"portfolio": {"id": "balanced"}, "params": {"lookback_days": 2000}}));
    common::assert_error(&py, 422, "insufficient_data", "daily returns");
    common::assert_error(&rs, 422, "insufficient_data", "daily returns");
    let strip = |answer: &(u16, Value)| {
        answer.1["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .split_once(": ")
            .map(|(_, rest)| rest.to_owned())
    };
    assert_eq!(strip(&py), strip(&rs), "the models' own messages match");
}

fn batches_mix_python_and_rust_models(server: &Server) {
    let (status, body) = server.post(
        "/v1/score/batch",
        &json!({
            "models": ["var-parametric", "var-parametric-py"],
            "portfolios": [{"id": "balanced"}, {"id": "tech"}, {"id": "fifty"}],
            "params": {"confidence": 0.99}
        }),
    );
    assert_eq!(status, 200, "{body}");
    let cells = body["results"].as_array().expect("results");
    assert_eq!(cells.len(), 6);
    for pair in cells.chunks(2) {
        assert_eq!(pair[0]["model"], "var-parametric");
        assert_eq!(pair[1]["model"], "var-parametric-py");
        assert!(pair[1]["error"].is_null(), "{}", pair[1]);
        assert_same_score(
            &pair[1],
            &pair[0],
            pair[0]["portfolio_id"].as_str().unwrap_or_default(),
        );
    }
}
