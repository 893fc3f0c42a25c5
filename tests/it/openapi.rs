//! The HTTP contract as documented and as served: `GET /openapi.json` is an
//! OpenAPI 3 document that names exactly the routes the server answers,
//! with the scopes of the key design and resolvable schemas; every answer
//! (errors from the router and from extractors included) carries
//! `x-request-id`; and each request is logged inside a span that names it.

use crate::common;

use std::collections::BTreeSet;

use common::Server;
use common::routes::ROUTES;
use serde_json::{Value, json};

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];

fn fill(path: &str) -> String {
    path.replace("{name}", "var-historical")
        .replace("{model}", "var-historical")
        .replace("{id}", "balanced")
}

/// A body the route accepts, so that it answers with something documented.
fn body_for(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        ("POST", "/v1/score") => Some(
            json!({"model": "var-historical", "portfolio": {"positions": [{"instrument": "SPX", "quantity": 1}]}}),
        ),
        ("POST", "/v1/backtests") => Some(
            json!({"model": "var-historical", "portfolios": [{"id": "balanced"}], "from": "1990-01-02", "to": "1990-02-01"}),
        ),
        ("POST", "/v1/score/batch") => {
            Some(json!({"models": ["var-historical"], "portfolios": [{"id": "balanced"}]}))
        }
        _ => None,
    }
}

fn request(server: &Server, method: &str, path: &str) -> reqwest::blocking::RequestBuilder {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    server.client.request(method, server.url(path))
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_document_lists_exactly_the_routes_served_with_their_scopes() {
    // No admin token: the admin routes answer 403 and change nothing.
    let server = Server::start(&[]);
    let response = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .expect("GET /openapi.json");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    );
    let doc: Value = response.json().expect("JSON document");
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "not OpenAPI 3: {version:?}");
    assert_eq!(doc["info"]["title"], "riskhost");

    // The document holds exactly the authoritative list.
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .filter(|m| METHODS.iter().any(|k| k.eq_ignore_ascii_case(m)))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, listed, "the document and the route list differ");

    // The scheme and the scopes of the key design.
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    for (method, path, scope) in ROUTES {
        let op = &doc["paths"][path][method.to_lowercase()];
        match scope {
            Some(scope) => {
                // This server scores anonymously (the harness's default), so
                // its document makes the key optional where `score` suffices.
                let security = if *scope == "score" {
                    json!([{}, {"bearer": [scope]}])
                } else {
                    json!([{"bearer": [scope]}])
                };
                assert_eq!(op["security"], security, "{method} {path}");
                for status in ["401", "403", "429"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} does not document {status}"
                    );
                }
            }
            None => assert!(op["security"].is_null(), "{method} {path} should be open"),
        }
        // Every answer documents the request id header.
        for (status, answer) in op["responses"].as_object().expect("responses") {
            assert!(
                answer["headers"]["x-request-id"].is_object(),
                "{method} {path} {status} lacks x-request-id"
            );
        }
    }

    // Error answers use the one error body.
    let unknown = &doc["paths"]["/v1/score"]["post"]["responses"]["404"];
    assert_eq!(
        unknown["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(
        error["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    // The streaming variant and the binary upload.
    let batch = &doc["paths"]["/v1/score/batch"]["post"]["responses"]["200"]["content"];
    assert!(batch["application/json"].is_object() && batch["application/x-ndjson"].is_object());
    let upload = &doc["paths"]["/v1/models/{name}"]["put"]["requestBody"]["content"];
    let schema = &upload["application/octet-stream"]["schema"];
    let schema = schema["$ref"]
        .as_str()
        .and_then(|r| doc.pointer(r.trim_start_matches('#')))
        .unwrap_or(schema);
    assert_eq!(schema["format"], "binary", "{schema}");
    let history = &doc["paths"]["/v1/portfolios/{id}/scores"]["get"]["parameters"];
    let names: BTreeSet<&str> = history
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["id", "model", "from", "to", "limit", "x-request-id"] {
        assert!(names.contains(name), "history lacks parameter {name}");
    }

    // Every reference resolves.
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for r in &found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }

    // The server answers every listed route, with a documented status, and
    // no other method on those paths.
    for (method, path, _) in ROUTES {
        let mut r = request(&server, method, &fill(path));
        if let Some(body) = body_for(method, path) {
            r = r.json(&body);
        }
        let answer = r.send().expect("request");
        let status = answer.status().as_u16();
        let body: Value = answer.json().unwrap_or(Value::Null);
        assert!(
            !matches!(
                body["error"]["code"].as_str(),
                Some("not_found" | "method_not_allowed")
            ),
            "{method} {path} is documented but not served: {status} {body}"
        );
        assert!(
            doc["paths"][path][method.to_lowercase()]["responses"][status.to_string()].is_object(),
            "{method} {path} answered {status}, which is not documented: {body}"
        );
    }
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, p, _)| *p).collect();
    for path in paths {
        for method in METHODS {
            if listed.contains(&((*method).to_owned(), path.to_owned())) {
                continue;
            }
            let status = request(&server, method, &fill(path))
                .send()
                .expect("request")
                .status()
                .as_u16();
            assert_eq!(status, 405, "{method} {path} is served but not documented");
        }
    }
}

#[test]
fn the_cli_prints_the_same_document() {
    let out = std::process::Command::new(common::binary())
        .arg("openapi")
        .output()
        .expect("riskhost openapi");
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // The CLI prints the document of the default settings.
    let server = Server::start(&["--anonymous-scoring=false"]);
    let (status, served) = server.get("/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(printed, served);
}

/// The served document states the bounds of this server's flags, and under
/// `--anonymous-scoring` that a key is optional for scoring.
#[test]
fn the_served_document_follows_the_servers_limits_and_key_policy() {
    let server = Server::start(&["--batch-max-models", "4", "--max-positions", "50"]);
    let (_, doc) = server.get("/openapi.json");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["BatchRequest"]["properties"]["models"]["maxItems"],
        4
    );
    assert_eq!(
        schemas["PortfolioInput"]["properties"]["positions"]["maxItems"],
        50
    );
    assert_eq!(
        doc["paths"]["/v1/score"]["post"]["security"],
        json!([{}, {"bearer": ["score"]}])
    );
    assert_eq!(
        doc["paths"]["/v1/models/{name}"]["put"]["security"],
        json!([{"bearer": ["admin"]}])
    );
    // What the document promises is what the server does: 4 models pass
    // the bound, 5 are refused with 413.
    let models = [
        "var-historical",
        "es-historical",
        "var-parametric",
        "var-historical@1.0.0",
        "es-historical@1.0.0",
    ];
    let batch = |n: usize| {
        server.post(
            "/v1/score/batch",
            &json!({"models": models[..n], "portfolios": [{"id": "tech"}]}),
        )
    };
    assert_ne!(batch(4).0, 413, "{}", batch(4).1);
    assert_eq!(batch(5).0, 413, "{}", batch(5).1);
}

#[test]
fn every_answer_carries_a_request_id_and_each_request_is_logged_in_its_span() {
    let server = Server::start_logging(
        &[
            "--plugins",
            common::plugins_dir().to_str().unwrap_or_default(),
            "--max-body-bytes",
            "2048",
            "--access-log",
            "all",
        ],
        "info,riskhost=debug",
    );
    let score = json!({"model": "var-historical", "portfolio": {"positions": [{"instrument": "SPX", "quantity": 3}]}});
    let cases: Vec<(&str, reqwest::blocking::RequestBuilder, u16)> = vec![
        (
            "200",
            server.client.post(server.url("/v1/score")).json(&score),
            200,
        ),
        ("404 fallback", server.client.get(server.url("/nope")), 404),
        ("405", server.client.get(server.url("/v1/score")), 405),
        (
            "413 body limit",
            server
                .client
                .post(server.url("/v1/score"))
                .header("content-type", "application/json")
                .body(format!("{{\"model\": \"{}\"}}", "x".repeat(4096))),
            413,
        ),
        (
            "415",
            server
                .client
                .post(server.url("/v1/score"))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
        ),
        (
            "400 malformed JSON",
            server
                .client
                .post(server.url("/v1/score"))
                .header("content-type", "application/json")
                .body("{"),
            400,
        ),
        (
            "422 JSON rejection",
            server
                .client
                .post(server.url("/v1/score"))
                .json(&json!({"model": 1})),
            422,
        ),
        (
            "404 unknown model",
            server
                .client
                .post(server.url("/v1/score"))
                .json(&json!({"model": "nope", "portfolio": {"id": "balanced"}})),
            404,
        ),
        (
            "401 admin route without a key",
            server.client.delete(server.url("/v1/cache")),
            401,
        ),
        ("open route", server.client.get(server.url("/healthz")), 200),
    ];
    for (what, request, expected) in cases {
        let answer = request.send().expect(what);
        assert_eq!(answer.status().as_u16(), expected, "{what}");
        let id = answer
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(id.len(), 36, "{what}: no generated x-request-id ({id:?})");
    }

    // A client's id is echoed; an unusable one is replaced.
    let echoed = server
        .client
        .post(server.url("/v1/score"))
        .header("x-request-id", "client-id-42")
        .json(&score)
        .send()
        .expect("POST");
    assert_eq!(echoed.headers()["x-request-id"], "client-id-42");
    let replaced = server
        .client
        .get(server.url("/healthz"))
        .header("x-request-id", "x".repeat(200))
        .send()
        .expect("GET");
    assert_eq!(replaced.headers()["x-request-id"].len(), 36);

    // The completion line of each request names it, inside its span; the
    // model call of a miss is a span nested under the request's.
    let mut finished = None;
    common::db::wait_until(
        "the request is logged",
        std::time::Duration::from_secs(30),
        || {
            finished = server.logs().into_iter().find(|l| {
                l["message"] == "request finished" && l["spans"][0]["request_id"] == "client-id-42"
            });
            finished.is_some()
        },
    );
    let finished = finished.unwrap_or_default();
    let span = &finished["spans"][0];
    assert_eq!(span["name"], "request");
    assert_eq!(span["method"], "POST");
    assert_eq!(span["route"], "/v1/score");
    assert_eq!(finished["status"], 200);
    assert!(finished["latency_us"].as_u64().is_some(), "{finished}");
    let logs = server.logs();
    let not_found = logs
        .iter()
        .find(|l| l["message"] == "request finished" && l["status"] == 404)
        .expect("the 404 is logged");
    assert!(
        not_found["spans"][0]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    );
    // Spans nested under a request, seen through the debug lines inside them.
    let nested: BTreeSet<String> = logs
        .iter()
        .filter_map(|l| l["spans"].as_array())
        .filter(|spans| spans.first().is_some_and(|s| s["name"] == "request"))
        .flat_map(|spans| spans.iter().skip(1))
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    for name in [
        "dynamic_batch",
        "model_call",
        "market_fetch",
        "cache_lookup",
    ] {
        assert!(
            nested.contains(name),
            "no {name} span under a request: {nested:?}"
        );
    }
    let call = logs
        .iter()
        .find(|l| l["message"] == "model call finished")
        .expect("the model call is logged at debug");
    let spans = call["spans"].as_array().expect("spans");
    let model_call = spans.last().expect("model_call span");
    assert_eq!(model_call["name"], "model_call");
    assert_eq!(model_call["model"], "var-historical");
    assert!(
        model_call["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    assert_eq!(model_call["jobs"], 1);
    assert!(
        spans[0]["key_id"].is_null(),
        "key_id is recorded only by authentication"
    );
}

#[test]
fn by_default_only_error_answers_are_logged() {
    let server = Server::start_logging(
        &[
            "--plugins",
            common::plugins_dir().to_str().unwrap_or_default(),
        ],
        "info",
    );
    let score = json!({"model": "var-historical", "portfolio": {"positions": [{"instrument": "SPX", "quantity": 3}]}});
    let send = |id: &str, body: &Value| {
        let answer = server
            .client
            .post(server.url("/v1/score"))
            .header("x-request-id", id)
            .json(body)
            .send()
            .expect("POST");
        answer.status().as_u16()
    };
    assert_eq!(send("default-ok", &score), 200);
    let unknown = json!({"model": "nope", "portfolio": {"positions": [{"instrument": "SPX", "quantity": 3}]}});
    assert_eq!(send("default-404", &unknown), 404);
    let line_of = |id: &str| {
        server
            .logs()
            .into_iter()
            .find(|l| l["message"] == "request finished" && l["spans"][0]["request_id"] == id)
    };
    // The 404 was answered after the 200, and each line is written before
    // its answer: once the 404's line is there, a 200's line would be too.
    common::db::wait_until(
        "the 404 is logged",
        std::time::Duration::from_secs(30),
        || line_of("default-404").is_some(),
    );
    let not_found = line_of("default-404").unwrap_or_default();
    assert_eq!(not_found["status"], 404);
    assert!(
        line_of("default-ok").is_none(),
        "a 200 is not logged under --access-log errors (the default)"
    );
}
