//! Challengers: a stored version scored in the shadow of live traffic.
//! Live answers stay bit-equal to a server without the challenger, every
//! sampled cell (`sample: 1.0`) is compared and its divergence counted
//! exactly, in the evidence, the metrics and ClickHouse; promotion is
//! refused below its bar and goes through above it; bad input gets its
//! error.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::db::{ChDatabase, ch_query, ch_url};
use crate::common::{
    Server, admin_request, answer, assert_error, inline_portfolios, plugins_with, put_model,
    rollback, wait_until, with_custom_section, workspace,
};

const TOKEN: &str = "challenger-admin-s3cret";

fn versioned(build: &str) -> Vec<u8> {
    std::fs::read(workspace().join(format!("tests/plugins/dist/versioned-{build}.wasm")))
        .expect("a built test model")
}

/// A server serving `versioned` build A (1.0.0), with build B (2.0.0,
/// outputs × 2) stored beside it; `extra` flags.
fn server_with_a_and_b(plugins: &crate::common::TempDir, extra: &[&str]) -> (Server, String) {
    let mut args = vec![
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
    ];
    args.extend_from_slice(extra);
    let server = Server::start_with(&args);
    let (status, b) = put_model(&server, TOKEN, "versioned", versioned("b"), None);
    assert_eq!(status, 201, "{b}");
    let (status, back) = rollback(&server, TOKEN, "versioned", None);
    assert_eq!(status, 200, "{back}");
    (server, b["digest"].as_str().unwrap_or_default().to_owned())
}

fn challenger_request(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let request = admin_request(server, TOKEN, method, path);
    answer(match body {
        Some(body) => request.json(&body).send(),
        None => request.send(),
    })
}

/// Waits until the challenger's evidence satisfies `done`; the evidence.
fn evidence_when(server: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until(what, Duration::from_secs(120), || {
        last = challenger_request(
            server,
            reqwest::Method::GET,
            "/v1/models/versioned/challenger",
            None,
        )
        .1;
        done(&last)
    });
    last
}

/// Waits until the challenger has compared `n` cells; its evidence.
fn evidence_after(server: &Server, n: u64) -> Value {
    evidence_when(server, "the challenger compared every cell", |e| {
        e["compared"].as_u64().unwrap_or(0) + e["errors"]["both"].as_u64().unwrap_or(0) >= n
    })
}

#[test]
fn a_full_sample_challenger_compares_every_live_cell_and_leaves_live_answers_alone() {
    let plugins = plugins_with(&["var-historical"], &["versioned-a"]);
    let clickhouse = ChDatabase::new(&ch_url(), "challenger");
    let (server, b_digest) = server_with_a_and_b(
        &plugins,
        &[
            "--clickhouse-url",
            &clickhouse.url,
            "--clickhouse-database",
            &clickhouse.name,
        ],
    );
    // The same models, no challenger: what live answers must equal.
    let reference = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--events",
        "none",
    ]);
    let (status, set) = challenger_request(
        &server,
        reqwest::Method::PUT,
        "/v1/models/versioned/challenger",
        Some(json!({"version": "2.0.0", "sample": 1.0})),
    );
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["digest"], b_digest.as_str());
    assert_eq!(set["compared"], 0);

    let portfolios = inline_portfolios(50);
    // 20 single requests …
    for portfolio in &portfolios[..20] {
        let body = json!({"model": "versioned", "portfolio": portfolio});
        let (live_status, live) = server.post("/v1/score", &body);
        let (_, alone) = reference.post("/v1/score", &body);
        assert_eq!(live_status, 200, "{live}");
        assert_eq!(live["digest"], alone["digest"], "the champion answers");
        assert_eq!(
            live["value"].as_f64().map(f64::to_bits),
            alone["value"].as_f64().map(f64::to_bits)
        );
    }
    // … and a batch of 30 portfolios × 2 models (only `versioned` has a
    // challenger).
    let body = json!({"models": ["versioned", "var-historical"], "portfolios": portfolios[20..]});
    let (live_status, live) = server.post("/v1/score/batch", &body);
    let (_, alone) = reference.post("/v1/score/batch", &body);
    assert_eq!(live_status, 200, "{live}");
    let values = |answer: &Value| -> Vec<Option<u64>> {
        answer["results"]
            .as_array()
            .map(|cells| {
                cells
                    .iter()
                    .map(|c| c["value"].as_f64().map(f64::to_bits))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(values(&live), values(&alone));
    assert_eq!(values(&live).len(), 60);

    // B is A × 2: every compared cell is off by exactly 100 %.
    let evidence = evidence_after(&server, 50);
    assert_eq!(evidence["compared"], 50, "{evidence}");
    assert_eq!(evidence["diverged"], 50, "{evidence}");
    assert_eq!(evidence["max_rel_diff"], 1.0, "{evidence}");
    assert_eq!(evidence["mean_rel_diff"], 1.0, "{evidence}");
    assert_eq!(evidence["dropped"], 0);
    let worst = evidence["worst"].as_array().expect("worst");
    assert_eq!(worst.len(), 20);
    assert!(
        worst
            .iter()
            .all(|w| w["challenger"].as_f64() == w["champion"].as_f64().map(|v| 2.0 * v))
    );
    let metrics = server.get_text("/metrics");
    let metric = |series: &str| crate::common::metric_value(&metrics, series);
    assert_eq!(
        metric("riskhost_challenger_compared_total{model=\"versioned\"}"),
        Some(50.0)
    );
    assert_eq!(
        metric("riskhost_challenger_diverged_total{model=\"versioned\"}"),
        Some(50.0)
    );
    // Every comparison lands in ClickHouse, with both digests.
    let query = format!(
        "SELECT count(), sum(diverged), uniqExact(challenger_digest), any(challenger_digest) FROM {}.challenger_comparisons",
        clickhouse.name
    );
    wait_until(
        "the comparisons are in ClickHouse",
        Duration::from_secs(30),
        || ch_query(&clickhouse.url, &query).is_ok_and(|row| row.starts_with("50\t50\t1\t")),
    );
    let row = ch_query(&clickhouse.url, &query).expect("comparisons");
    assert!(row.ends_with(&b_digest), "{row}");

    // Promotion on a bar B cannot meet is refused, with the evidence.
    let (status, refused) = challenger_request(
        &server,
        reqwest::Method::POST,
        "/v1/models/versioned/promote",
        Some(json!({"require_max_rel": 1e-3})),
    );
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "promotion_refused");
    assert_eq!(refused["evidence"]["compared"], 50);
    assert_ne!(
        server
            .post(
                "/v1/score",
                &json!({"model": "versioned", "portfolio": {"id": "tech"}})
            )
            .1["digest"],
        b_digest.as_str(),
        "a refused promotion changes nothing"
    );
    // Stopping answers the final evidence; then there is none.
    let (status, stopped) = challenger_request(
        &server,
        reqwest::Method::DELETE,
        "/v1/models/versioned/challenger",
        None,
    );
    assert_eq!(status, 200, "{stopped}");
    assert!(stopped["compared"].as_u64() >= Some(50));
    let answer = challenger_request(
        &server,
        reqwest::Method::GET,
        "/v1/models/versioned/challenger",
        None,
    );
    assert_error(&answer, 404, "no_challenger", "versioned");
}

#[test]
fn a_challenger_that_agrees_is_promoted_on_its_evidence() {
    let plugins = plugins_with(&["var-historical"], &["versioned-a"]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
    ]);
    // A rebuild of A: the same answers under another digest.
    let rebuild = with_custom_section(&versioned("a"), "rebuild");
    let (status, rebuilt) = put_model(&server, TOKEN, "versioned", rebuild, None);
    assert_eq!(status, 201, "{rebuilt}");
    let rebuilt = rebuilt["digest"].as_str().unwrap_or_default().to_owned();
    let (status, back) = rollback(&server, TOKEN, "versioned", None);
    assert_eq!(status, 200, "{back}");
    let (status, set) = challenger_request(
        &server,
        reqwest::Method::PUT,
        "/v1/models/versioned/challenger",
        Some(json!({"version": rebuilt, "sample": 1.0, "tolerance": {"abs": 0.0, "rel": 0.0}})),
    );
    assert_eq!(status, 200, "{set}");
    for portfolio in inline_portfolios(10) {
        let (status, live) = server.post(
            "/v1/score",
            &json!({"model": "versioned", "portfolio": portfolio}),
        );
        assert_eq!(status, 200, "{live}");
    }
    let evidence = evidence_after(&server, 10);
    assert_eq!(evidence["compared"], 10, "{evidence}");
    assert_eq!(evidence["diverged"], 0, "{evidence}");
    assert_eq!(evidence["max_rel_diff"], 0.0, "{evidence}");
    // Not enough cells for this bar …
    let (status, refused) = challenger_request(
        &server,
        reqwest::Method::POST,
        "/v1/models/versioned/promote",
        Some(json!({"require_max_rel": 0.0, "require_compared": 11})),
    );
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("10 cells compared, 11 required")),
        "{refused}"
    );
    // … enough for this one.
    let (status, promoted) = challenger_request(
        &server,
        reqwest::Method::POST,
        "/v1/models/versioned/promote",
        Some(json!({"require_max_rel": 0.0, "require_compared": 10})),
    );
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["deployed"]["digest"], rebuilt.as_str());
    assert_eq!(promoted["evidence"]["compared"], 10);
    assert_eq!(
        server
            .post(
                "/v1/score",
                &json!({"model": "versioned", "portfolio": {"id": "tech"}})
            )
            .1["digest"],
        rebuilt.as_str(),
        "the promoted version serves"
    );
    let answer = challenger_request(
        &server,
        reqwest::Method::GET,
        "/v1/models/versioned/challenger",
        None,
    );
    assert_error(&answer, 404, "no_challenger", "versioned");
    // The promotion is in the model's history, as any activation.
    let (_, versions) = server.get("/v1/models/versioned/versions");
    assert_eq!(versions["active"], rebuilt.as_str(), "{versions}");
}

#[test]
fn bad_challengers_get_their_errors() {
    let plugins = plugins_with(&["var-historical"], &["versioned-a"]);
    let (server, _) = server_with_a_and_b(&plugins, &[]);
    let put = |body: Value| {
        challenger_request(
            &server,
            reqwest::Method::PUT,
            "/v1/models/versioned/challenger",
            Some(body),
        )
    };
    assert_error(
        &put(json!({"version": "9.9.9"})),
        404,
        "unknown_model_version",
        "9.9.9",
    );
    assert_error(
        &put(json!({"version": "1.0.0"})),
        409,
        "challenger_is_active",
        "active",
    );
    assert_error(
        &put(json!({"version": "2.0.0", "sample": 0})),
        422,
        "invalid_challenger",
        "sample",
    );
    assert_error(
        &put(json!({"version": "2.0.0", "sample": 1.5})),
        422,
        "invalid_challenger",
        "sample",
    );
    assert_error(
        &put(json!({"version": "2.0.0", "tolerance": {"abs": -1}})),
        422,
        "invalid_challenger",
        "tolerance",
    );
    assert_error(
        &put(json!({"versoin": "2.0.0"})),
        422,
        "invalid_body",
        "versoin",
    );
    let answer = challenger_request(
        &server,
        reqwest::Method::PUT,
        "/v1/models/no-such-model/challenger",
        Some(json!({"version": "2.0.0"})),
    );
    assert_error(&answer, 404, "unknown_model", "no-such-model");
    let malformed = answer_raw(&server, "/v1/models/versioned/challenger", "{");
    assert_error(&malformed, 400, "malformed_json", "");
    let answer = challenger_request(
        &server,
        reqwest::Method::POST,
        "/v1/models/versioned/promote",
        None,
    );
    assert_error(&answer, 404, "no_challenger", "versioned");
    let answer = challenger_request(
        &server,
        reqwest::Method::DELETE,
        "/v1/models/versioned/challenger",
        None,
    );
    assert_error(&answer, 404, "no_challenger", "versioned");
    // Admin only.
    let response = server
        .client
        .get(server.url("/v1/models/versioned/challenger"))
        .send()
        .expect("get");
    assert_eq!(response.status().as_u16(), 401);
}

fn answer_raw(server: &Server, path: &str, body: &'static str) -> (u16, Value) {
    answer(
        admin_request(server, TOKEN, reqwest::Method::PUT, path)
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
}

/// Waits until the challenger has accounted for `n` cells (compared, failed
/// on either side, or dropped); its evidence.
fn evidence_accounting_for(server: &Server, n: u64) -> Value {
    let sum = |errors: &Value| -> u64 {
        errors
            .as_object()
            .map(|codes| codes.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    evidence_when(server, "the challenger accounted for every cell", |e| {
        e["compared"].as_u64().unwrap_or(0)
            + e["dropped"].as_u64().unwrap_or(0)
            + e["errors"]["both"].as_u64().unwrap_or(0)
            + sum(&e["errors"]["challenger_only"])
            + sum(&e["errors"]["champion_only"])
            >= n
    })
}

#[test]
fn a_failing_or_hanging_challenger_never_fails_or_changes_a_live_answer() {
    let plugins = plugins_with(&[], &["versioned-a"]);
    let flags = [
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--events",
        "none",
        // A hanging call is stopped after 300 ms.
        "--model-limits",
        "versioned:deadline_ms=300",
    ];
    let reference = Server::start_with(&flags);
    let mut args = flags.to_vec();
    args.extend(["--admin-token", TOKEN]);
    let server = Server::start_with(&args);
    for build in ["failing", "hanging"] {
        let (status, stored) = put_model(&server, TOKEN, "versioned", versioned(build), None);
        assert_eq!(status, 201, "{stored}");
    }
    let (status, back) = rollback(&server, TOKEN, "versioned", Some(json!({"to": "1.0.0"})));
    assert_eq!(status, 200, "{back}");

    let portfolios = inline_portfolios(40);
    let live_equals_reference = |portfolios: &[Value]| {
        for portfolio in portfolios {
            let body = json!({"model": "versioned", "portfolio": portfolio});
            let (status, live) = server.post("/v1/score", &body);
            let (_, alone) = reference.post("/v1/score", &body);
            assert_eq!(status, 200, "{live}");
            assert_eq!(live["version"], "1.0.0", "{live}");
            assert_eq!(
                live["value"].as_f64().map(f64::to_bits),
                alone["value"].as_f64().map(f64::to_bits)
            );
        }
    };

    // Every job of 3.0.0 fails: each sampled cell is an error of the
    // challenger alone, never a comparison.
    let (status, set) = challenger_request(
        &server,
        reqwest::Method::PUT,
        "/v1/models/versioned/challenger",
        Some(json!({"version": "3.0.0", "sample": 1.0})),
    );
    assert_eq!(status, 200, "{set}");
    live_equals_reference(&portfolios[..20]);
    let evidence = evidence_accounting_for(&server, 20);
    assert_eq!(
        evidence["errors"]["challenger_only"]["model_internal_error"], 20,
        "{evidence}"
    );
    assert_eq!(evidence["compared"], 0, "{evidence}");
    assert_eq!(evidence["dropped"], 0, "{evidence}");

    // Every call of 4.0.0 runs into its deadline. Each sampled cell ends as
    // the challenger's timeout, or dropped when live work had the cores
    // (the deadline is wall time, and challenger calls run at the lowest
    // priority).
    let (status, set) = challenger_request(
        &server,
        reqwest::Method::PUT,
        "/v1/models/versioned/challenger",
        Some(json!({"version": "4.0.0", "sample": 1.0})),
    );
    assert_eq!(status, 200, "{set}");
    live_equals_reference(&portfolios[20..]);
    let evidence = evidence_accounting_for(&server, 20);
    let timeouts = evidence["errors"]["challenger_only"]["model_timeout"]
        .as_u64()
        .unwrap_or(0);
    let dropped = evidence["dropped"].as_u64().unwrap_or(0);
    assert_eq!(timeouts + dropped, 20, "{evidence}");
    assert_eq!(evidence["compared"], 0, "{evidence}");
    let metrics = server.get_text("/metrics");
    let counted: f64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("riskhost_challenger_errors_total{")
                && line.contains("code=\"model_timeout\"")
                && line.contains("side=\"challenger_only\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, timeouts as f64, "{metrics}");
}
