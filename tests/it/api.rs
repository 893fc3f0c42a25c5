//! End-to-end tests of the HTTP API against the real binary and the three
//! example models: listing, scoring, memoization, hand-computed values,
//! error answers, probes and metrics.

use crate::common;

use common::{Server, TempDir, assert_error, plugins_dir, sample_portfolio, workspace};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    workspace()
        .join("tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn breakdown_sum(body: &Value) -> f64 {
    body["breakdown"]
        .as_array()
        .expect("breakdown")
        .iter()
        .map(|c| c["value"].as_f64().unwrap_or(f64::NAN))
        .sum()
}

#[track_caller]
fn assert_close(got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "got {got}, want {want}"
    );
}

#[test]
fn lists_the_three_models_with_digests_and_info() {
    let server = Server::start(&[]);
    let (status, body) = server.get("/v1/models");
    assert_eq!(status, 200);
    let models = body["models"].as_array().expect("models");
    let names: Vec<&str> = models.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["es-historical", "var-historical", "var-parametric"]);
    for m in models {
        let digest = m["digest"].as_str().unwrap_or_default();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 7 + 64,
            "digest {digest}"
        );
        assert_eq!(m["version"], "1.0.0");
        let params: Vec<&str> = m["info"]["params"]
            .as_array()
            .expect("params")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(params, ["confidence", "horizon_days", "lookback_days"]);
        assert_eq!(m["info"]["data"]["lookback_param"], "lookback_days");
    }
    assert_eq!(body["failures"], json!([]));
}

#[test]
fn scores_a_sample_portfolio_and_memoizes_it() {
    let server = Server::start(&[]);
    let request = json!({"model": "var-historical", "portfolio": sample_portfolio("balanced"), "params": {"confidence": 0.99}});
    let (status, first) = server.post("/v1/score", &request);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["cached"], false);
    assert_eq!(first["unit"], "currency_amount");
    assert_eq!(first["as_of"], "2018-12-31");
    assert_eq!(first["portfolio_id"], "balanced");
    assert_eq!(
        first["params"],
        json!({"confidence": 0.99, "horizon_days": 1.0, "lookback_days": 250.0})
    );
    let value = first["value"].as_f64().expect("value");
    assert!(
        value > 0.0,
        "a 99% VaR of a long portfolio should be a loss: {value}"
    );
    assert_close(breakdown_sum(&first), value);

    let (status, second) = server.post("/v1/score", &request);
    assert_eq!(status, 200);
    assert_eq!(second["cached"], true);
    assert_eq!(second["cache_tier"], "l1");
    assert_eq!(second["value"], first["value"]);
    assert_eq!(second["breakdown"], first["breakdown"]);

    // The same positions in another order and split in two are the same portfolio.
    let mut positions = first_positions(&sample_portfolio("balanced"));
    positions.reverse();
    let split = positions[0].clone();
    let half = split["quantity"].as_f64().unwrap_or_default() / 2.0;
    positions[0]["quantity"] = json!(half);
    positions.push(json!({"instrument": split["instrument"], "quantity": half}));
    let reordered = json!({"model": "var-historical", "portfolio": {"positions": positions}, "params": {"confidence": 0.99}});
    let (status, third) = server.post("/v1/score", &reordered);
    assert_eq!(status, 200);
    assert_eq!(
        third["cached"], true,
        "a reordered, split portfolio must hit the same memo entry"
    );
    assert_eq!(third["value"], first["value"]);

    // Other parameters are another computation.
    let (_, other) = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": sample_portfolio("balanced"), "params": {"confidence": 0.95}}),
    );
    assert_eq!(other["cached"], false);
    assert!(
        other["value"].as_f64().unwrap_or_default() < value,
        "95% VaR must be below 99% VaR"
    );
}

fn first_positions(portfolio: &Value) -> Vec<Value> {
    portfolio["positions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The small fixture's numbers, computed by hand (see tests/fixtures/README.md):
/// AAA returns +10 %, −10 %, +10 %, −5 %, +5 %; BBB −2 %, +3 %, −2 %, −2 %, +3 %;
/// 10 AAA (worth 1086.2775) and −20 BBB (worth −998.5105928) on 2020-01-08.
/// Losses per scenario: −128.597961856, 138.583067784, −128.597961856,
/// 34.343663144, −24.358557216. At 80 % with 5 scenarios the type-1 rank is
/// ⌈0.8·5⌉ = 4: VaR = 34.343663144 (scenario 4), ES = mean of ranks 4..5 =
/// 86.463365464. Parametric: σ² = vᵀΣv with the sample covariance
/// [[0.00825, −0.001125], [−0.001125, 0.00075]] gives σ = 113.68043714426,
/// and z(0.8) = 0.8416212335729143, so VaR = 95.67586974246.
#[test]
fn example_models_give_the_hand_computed_values_through_the_host() {
    let server = Server::start(&["--prices", &fixture("small-prices.csv")]);
    let portfolio = json!({"id": "hand", "positions": [{"instrument": "AAA", "quantity": 10}, {"instrument": "BBB", "quantity": -20}]});
    let params = json!({"confidence": 0.8, "lookback_days": 5});
    let score = |model: &str, params: &Value| {
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": model, "portfolio": portfolio, "params": params}),
        );
        assert_eq!(status, 200, "{model}: {body}");
        body
    };
    let var = score("var-historical", &params);
    assert_eq!(var["as_of"], "2020-01-08");
    assert_close(var["value"].as_f64().unwrap_or_default(), 34.343663144);
    assert_close(
        var["breakdown"][0]["value"].as_f64().unwrap_or_default(),
        54.313875,
    );
    assert_close(
        var["breakdown"][1]["value"].as_f64().unwrap_or_default(),
        -19.970211856,
    );
    assert_eq!(var["breakdown"][0]["name"], "AAA");

    let es = score("es-historical", &params);
    assert_close(es["value"].as_f64().unwrap_or_default(), 86.463365464);
    assert_close(breakdown_sum(&es), 86.463365464);

    let pvar = score("var-parametric", &params);
    assert_close(
        pvar["value"].as_f64().unwrap_or_default(),
        95.67586974246049,
    );
    assert_close(
        pvar["breakdown"][0]["value"].as_f64().unwrap_or_default(),
        81.10591643911762,
    );
    assert_close(
        pvar["breakdown"][1]["value"].as_f64().unwrap_or_default(),
        14.569953303342869,
    );

    // √h scaling: a 4-day horizon doubles every figure.
    let four_day = score(
        "var-historical",
        &json!({"confidence": 0.8, "lookback_days": 5, "horizon_days": 4}),
    );
    assert_close(
        four_day["value"].as_f64().unwrap_or_default(),
        2.0 * 34.343663144,
    );

    // Asking for more history than exists is the model's insufficient-data error.
    let (status, body) = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": portfolio, "params": {"lookback_days": 6}}),
    );
    assert_error(&(status, body), 422, "insufficient_data", "AAA");
}

#[test]
fn bad_requests_get_clear_json_errors() {
    let server = Server::start(&[]);
    let spx = json!({"positions": [{"instrument": "SPX", "quantity": 10}]});
    let post = |body: Value| server.post("/v1/score", &body);

    assert_error(
        &post(json!({"model": "nope", "portfolio": spx})),
        404,
        "unknown_model",
        "var-historical",
    );
    assert_error(
        &post(json!({"model": "var-historical@9.9.9", "portfolio": spx})),
        404,
        "unknown_model_version",
        "9.9.9",
    );
    assert_error(
        &post(
            json!({"model": "var-historical", "portfolio": {"positions": [{"instrument": "NOPE", "quantity": 1}]}}),
        ),
        422,
        "unknown_instrument",
        "NOPE",
    );
    assert_error(
        &post(json!({"model": "var-historical", "portfolio": {"positions": []}})),
        422,
        "invalid_portfolio",
        "no positions",
    );
    assert_error(
        &post(json!({"model": "var-historical", "portfolio": {}})),
        422,
        "invalid_portfolio",
        "positions",
    );
    assert_error(
        &post(json!({"model": "var-historical", "portfolio": spx, "params": {"confidence": 1.5}})),
        422,
        "invalid_params",
        "confidence",
    );
    assert_error(
        &post(json!({"model": "var-historical", "portfolio": spx, "params": {"alpha": 0.5}})),
        422,
        "invalid_params",
        "alpha",
    );
    assert_error(
        &post(
            json!({"model": "var-historical", "portfolio": spx, "params": {"lookback_days": 2.5}}),
        ),
        422,
        "invalid_params",
        "whole number",
    );
    assert_error(
        &post(
            json!({"model": "var-historical", "portfolio": spx, "params": {"lookback_days": 2000}}),
        ),
        422,
        "insufficient_data",
        "SPX",
    );
    assert_error(
        &post(json!({"model": "var-historical", "portfolio": spx, "as_of": "2030-01-01"})),
        422,
        "as_of_out_of_range",
        "2030-01-01",
    );
    assert_error(
        &post(json!({"model": "var-historical", "portfolio": spx, "as_of": "31/12/2018"})),
        422,
        "invalid_body",
        "as_of",
    );
    assert_error(
        &post(json!({"model": "var-historical", "portfolio": spx, "extra": 1})),
        422,
        "invalid_body",
        "extra",
    );
    assert_error(
        &post(json!({"portfolio": spx})),
        422,
        "invalid_body",
        "model",
    );

    // JSON has no NaN or infinity; these are the ways clients try to send them.
    let raw = |body: &str| server.post_raw("/v1/score", "application/json", body.to_owned());
    let (status, body) = raw(
        r#"{"model": "var-historical", "portfolio": {"positions": [{"instrument": "SPX", "quantity": NaN}]}}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "malformed_json");
    let (status, body) = raw(
        r#"{"model": "var-historical", "portfolio": {"positions": [{"instrument": "SPX", "quantity": 1e999}]}}"#,
    );
    assert!(status == 400 || status == 422, "{status} {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("number"),
        "{body}"
    );
    let (status, body) = raw(
        r#"{"model": "var-historical", "portfolio": {"positions": [{"instrument": "SPX", "quantity": "Infinity"}]}}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert_error(&raw("{not json"), 400, "malformed_json", "");
    assert_error(
        &server.post_raw("/v1/score", "text/plain", "{}".to_owned()),
        415,
        "unsupported_media_type",
        "",
    );
    // The server answers an oversized body before reading all of it and
    // closes that connection, so this request gets a client of its own.
    let huge = format!(
        r#"{{"model": "var-historical", "portfolio": {{"id": "{}"}}}}"#,
        "x".repeat(9 << 20)
    );
    let response = reqwest::blocking::Client::new()
        .post(server.url("/v1/score"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .expect("POST failed");
    let status = response.status().as_u16();
    assert_error(
        &(status, response.json().unwrap_or_default()),
        413,
        "body_too_large",
        "",
    );

    let (status, body) = server.get("/v1/nothing-here");
    assert_error(&(status, body), 404, "not_found", "/v1/nothing-here");
    let (status, body) = server.get("/v1/score");
    assert_error(&(status, body), 405, "method_not_allowed", "GET");
}

#[test]
fn probes_and_metrics_reflect_the_traffic() {
    let server = Server::start(&[]);
    assert_eq!(server.get("/healthz"), (200, json!({"status": "ok"})));
    let (status, ready) = server.get("/readyz");
    assert_eq!(status, 200);
    assert_eq!(ready["models_loaded"], 3);

    let request = json!({"model": "es-historical", "portfolio": sample_portfolio("tech")});
    for _ in 0..3 {
        assert_eq!(server.post("/v1/score", &request).0, 200);
    }
    assert_eq!(
        server
            .post("/v1/score", &json!({"model": "nope", "portfolio": {}}))
            .0,
        404
    );

    let text = server.get_text("/metrics");
    let sample = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric line starting with {prefix}\n{text}"))
    };
    // One miss ran the model once; two hits did not.
    assert_eq!(
        sample(
            r#"riskhost_model_call_duration_seconds_count{model="es-historical",version="1.0.0"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(r#"riskhost_http_requests_total{route="/v1/score",method="POST",status="200"}"#),
        3.0
    );
    assert_eq!(
        sample(r#"riskhost_http_requests_total{route="/v1/score",method="POST",status="404"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"riskhost_cache_lookups_total{model="es-historical",tier="l1",result="hit"}"#),
        2.0
    );
    assert!(text.contains("riskhost_model_call_duration_seconds_bucket{model=\"es-historical\",version=\"1.0.0\",le=\"0.0001\"}"));
}

#[test]
fn a_broken_file_never_blocks_the_good_models() {
    let dir = TempDir::new("broken");
    for model in ["var-historical", "es-historical"] {
        std::fs::copy(
            plugins_dir().join(format!("{model}.wasm")),
            dir.path().join(format!("{model}.wasm")),
        )
        .expect("copy");
    }
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not wasm").expect("write");
    std::fs::write(dir.path().join("empty.wasm"), b"").expect("write");
    // A core module (not a component): the 8-byte header of an empty module.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    let server = Server::start_with(&["--plugins", dir.path().to_str().unwrap_or_default()]);
    let (_, body) = server.get("/v1/models");
    assert_eq!(body["models"].as_array().map(Vec::len), Some(2));
    let failures = body["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 3, "{body}");
    let error_of = |file: &str| {
        failures
            .iter()
            .find(|f| f["source"].as_str().unwrap_or_default().ends_with(file))
            .and_then(|f| f["error"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        error_of("garbage.wasm").contains("not a WebAssembly component"),
        "{}",
        error_of("garbage.wasm")
    );
    assert!(error_of("empty.wasm").contains("empty"));
    assert!(
        error_of("core.wasm").contains("core wasm module"),
        "{}",
        error_of("core.wasm")
    );
    let (status, _) = server.post(
        "/v1/score",
        &json!({"model": "es-historical", "portfolio": sample_portfolio("single-spx")}),
    );
    assert_eq!(status, 200);
}

#[test]
fn the_cli_scores_like_the_server() {
    let server = Server::start(&[]);
    let (_, over_http) = server.post("/v1/score", &json!({"model": "var-parametric", "portfolio": sample_portfolio("macro"), "params": {"confidence": 0.975}}));
    let output = std::process::Command::new(common::binary())
        .args([
            "score",
            "--model",
            "var-parametric",
            "--param",
            "confidence=0.975",
        ])
        .args(["--plugins", plugins_dir().to_str().unwrap_or_default()])
        .arg("--portfolio")
        .arg(workspace().join("examples/portfolios/macro.json"))
        .output()
        .expect("run riskhost score");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let from_cli: Value = serde_json::from_slice(&output.stdout).expect("CLI prints JSON");
    assert_eq!(from_cli["value"], over_http["value"]);
    assert_eq!(from_cli["digest"], over_http["digest"]);

    let bad = std::process::Command::new(common::binary())
        .args([
            "score",
            "--model",
            "var-parametric",
            "--portfolio",
            "/nonexistent.json",
        ])
        .args(["--plugins", plugins_dir().to_str().unwrap_or_default()])
        .output()
        .expect("run riskhost score");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.json"));
}

#[test]
fn config_prints_effective_settings_with_sources_and_redacts_secrets() {
    let dir = TempDir::new("config");
    let file = dir.path().join("riskhost.toml");
    std::fs::write(
        &file,
        "cache_ttl_secs = 600\nadmin-token = \"s3cret-token\"\nlisten = \"127.0.0.1:1\"\n",
    )
    .expect("write");
    let output = std::process::Command::new(common::binary())
        .arg("config")
        .arg("--config")
        .arg(&file)
        .args(["--max-positions", "5"])
        .env("RISKHOST_LISTEN", "0.0.0.0:9000")
        .output()
        .expect("run riskhost config");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("cache-ttl-secs ").contains("600") && line("cache-ttl-secs ").contains("file"),
        "{text}"
    );
    assert!(
        line("max-positions ").contains("5") && line("max-positions ").contains("flag"),
        "{text}"
    );
    assert!(
        line("listen ").contains("0.0.0.0:9000") && line("listen ").contains("env"),
        "env beats the file: {text}"
    );
    assert!(line("admin-token ").contains("<redacted>"), "{text}");
    assert!(!text.contains("s3cret-token"), "a secret leaked: {text}");

    std::fs::write(&file, "nested = { x = 1 }\n").expect("write");
    let bad = std::process::Command::new(common::binary())
        .arg("config")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`nested` is a table"));
}

/// A secret read from a mounted file (`RISKHOST_<NAME>_FILE`) is used as
/// its variable would be, shown as coming from a file and never printed; a
/// variable set both ways, or a file that cannot be read, stops start-up.
#[test]
fn secrets_can_come_from_files_named_by_file_variables() {
    let dir = TempDir::new("secret-files");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "file-s3cret\n").expect("write");
    let config = |envs: &[(&str, &std::path::Path)]| {
        let mut command = std::process::Command::new(common::binary());
        command.arg("config").env_remove("RISKHOST_ADMIN_TOKEN");
        for (name, value) in envs {
            command.env(name, value);
        }
        command.output().expect("run riskhost config")
    };
    let output = config(&[("RISKHOST_ADMIN_TOKEN_FILE", &token_file)]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("admin-token "))
        .unwrap_or_default();
    assert!(
        line.contains("<redacted>") && line.contains("env file"),
        "{text}"
    );
    assert!(!text.contains("file-s3cret"), "a secret leaked: {text}");

    // A value read from a file is the variable's value, its newline trimmed.
    let url_file = dir.path().join("postgres-url");
    std::fs::write(&url_file, "postgres://riskhost:pw@127.0.0.1:5999/risk\n").expect("write");
    let output = config(&[("RISKHOST_POSTGRES_URL_FILE", &url_file)]);
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("postgres-url "))
        .unwrap_or_default();
    assert!(
        line.contains("postgres://riskhost:***@127.0.0.1:5999/risk ") && line.contains("env file"),
        "{text}"
    );

    let mut both = std::process::Command::new(common::binary());
    let both = both
        .arg("config")
        .env("RISKHOST_ADMIN_TOKEN", "x")
        .env("RISKHOST_ADMIN_TOKEN_FILE", &token_file)
        .output()
        .expect("run");
    assert!(!both.status.success());
    assert!(
        String::from_utf8_lossy(&both.stderr)
            .contains("both RISKHOST_ADMIN_TOKEN and RISKHOST_ADMIN_TOKEN_FILE"),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    let missing = config(&[("RISKHOST_POSTGRES_URL_FILE", &dir.path().join("absent"))]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("RISKHOST_POSTGRES_URL_FILE"));
}

/// A path parameter that is not UTF-8 once decoded (`%FF`) is refused with
/// a JSON error on every route that has one, as every other error is.
#[test]
fn undecodable_path_parameters_get_json_errors_on_every_route() {
    const TOKEN: &str = "path-s3cret";
    let server = Server::start(&["--admin-token", TOKEN]);
    let (status, document) = server.get("/openapi.json");
    assert_eq!(status, 200);
    let paths = document["paths"].as_object().expect("paths");
    let mut tried = Vec::new();
    for (template, operations) in paths.iter().filter(|(p, _)| p.contains('{')) {
        let path: String = template
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "%FF"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let methods = operations.as_object().expect("operations").keys();
        for method in
            methods.filter(|m| ["get", "put", "post", "delete", "patch"].contains(&m.as_str()))
        {
            let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .expect("method");
            let response = server
                .client
                .request(method.clone(), server.url(&path))
                .bearer_auth(TOKEN)
                .header("content-type", "application/wasm")
                .send()
                .expect("request");
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body: Value = response.json().unwrap_or(Value::Null);
            let answer = format!("{method} {path}: {status} {content_type} {body}");
            assert_eq!(status, 400, "{answer}");
            assert!(content_type.starts_with("application/json"), "{answer}");
            assert_eq!(body["error"]["code"], "invalid_path", "{answer}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("UTF-8")),
                "{answer}"
            );
            tried.push(format!("{method} {template}"));
        }
    }
    // Every route with a path parameter, the public and the admin ones.
    for route in [
        "GET /v1/portfolios/{id}/scores",
        "DELETE /v1/cache/{model}",
        "PUT /v1/models/{name}",
        "DELETE /v1/models/{name}",
        "GET /v1/models/{name}/versions",
        "POST /v1/models/{name}/rollback",
    ] {
        assert!(
            tried.iter().any(|t| t == route),
            "{route} not tried: {tried:?}"
        );
    }
}

/// An upload to a path that no model can be called is refused for its name
/// before the body is used: no OCI registry is asked (it would answer 502
/// here, where `unreachable.invalid` resolves to nothing).
#[test]
fn an_upload_to_an_invalid_model_name_is_refused_before_any_pull() {
    let server = Server::start(&["--admin-token", "name-s3cret"]);
    for name in ["Bad_Name", "%C3%94V", "-x", "a--b"] {
        let response = server
            .client
            .put(server.url(&format!("/v1/models/{name}")))
            .bearer_auth("name-s3cret")
            .json(&json!({"oci": "unreachable.invalid/models/x:1"}))
            .send()
            .expect("upload");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().unwrap_or_default();
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(
            body["error"]["code"], "invalid_model_name",
            "{name}: {body}"
        );
    }
}

/// A quantity whose valuation no model can compute in f64 is the request's
/// fault: 422 naming the position, before any model runs.
#[test]
fn quantities_too_large_to_value_are_refused_before_the_model_runs() {
    let server = Server::start(&[]);
    let portfolio = |quantity: f64| json!({"positions": [{"instrument": "AAPL", "quantity": 10}, {"instrument": "SPX", "quantity": quantity}]});
    for model in ["var-historical", "var-parametric", "es-historical"] {
        for quantity in [1e306, -1e306, 1e200] {
            let answer = server.post(
                "/v1/score",
                &json!({"model": model, "portfolio": portfolio(quantity)}),
            );
            assert_error(&answer, 422, "invalid_portfolio", "SPX");
            let message = answer.1["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("gross exposure"), "{message}");
        }
        // In a batch, only that portfolio's cell fails.
        let (status, body) = server.post(
            "/v1/score/batch",
            &json!({"models": [model], "portfolios": [portfolio(1e306), portfolio(1e6)]}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["results"][0]["error"]["code"], "invalid_portfolio",
            "{body}"
        );
        assert!(body["results"][1]["value"].is_number(), "{body}");
    }
    // No model ran for the refused portfolios: only the batches' good cells.
    let metrics = server.get_text("/metrics");
    let jobs: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("riskhost_model_jobs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(jobs, 3.0, "{metrics}");
}
