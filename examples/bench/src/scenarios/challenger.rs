//! Scenario 14: what a challenger costs live traffic. One server serves
//! `var-historical`; a rebuild of it (the same answers under another
//! digest) is stored beside it. Live `POST /v1/score` is loaded with no
//! challenger, then with the rebuild as challenger at `sample` 0.1 and at
//! 1.0, on L1 hits (a fixed body) and on misses (a new portfolio per
//! request), in the same run. The challenger's evidence after each
//! variant says how many cells it compared and how many its full queue
//! dropped.
//!
//! Then a challenger that misbehaves: a second server serves the `versioned`
//! test model (build A), with build `failing` (every job fails) and build
//! `hanging` (every call runs into its 200 ms deadline) stored beside it;
//! live misses are loaded with no challenger, then with each of them at
//! `sample` 1.0.

use std::sync::Arc;

use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};

use super::hotswap::with_custom_section;
use super::http::median;
use super::{Context, load_row, ratio, score_body};
use crate::loadgen::Target;
use crate::report::{Row, number};
use crate::service::{Scratch, Server};

const SCENARIO: &str = "challenger";
const MODEL: &str = "var-historical";
const CONNECTIONS: usize = 64;
const UNIQUE_FROM: u64 = 3_000_000;

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let data = Scratch::new("challenger")?;
    let dist = ctx.dist_arg();
    let server = ctx.host.serve(
        &data.join("server"),
        &[
            "--plugins",
            dist.as_str(),
            "--watch",
            "false",
            "--events",
            "none",
        ],
    )?;
    // The rebuild, stored and rolled back from, so the original serves.
    let original = std::fs::read(ctx.dist.join(format!("{MODEL}.wasm")))?;
    let rebuild = upload(
        ctx,
        &server,
        MODEL,
        with_custom_section(&original, "challenger"),
    )?;
    rollback(ctx, &server, MODEL, Bytes::new())?;

    let fixed = score_body(MODEL, 10);
    server.post_ok("/v1/score", fixed.clone())?;
    let plan = ctx.load.closed(CONNECTIONS);
    let mut rows = Vec::new();
    let mut next_unique = UNIQUE_FROM;
    for path in ["L1 hit", "miss (model call)"] {
        let mut baseline = 0.0;
        for sample in [None, Some(0.1), Some(1.0)] {
            match sample {
                None => {
                    send(
                        ctx,
                        &server,
                        Method::DELETE,
                        &challenger_path(),
                        "application/json",
                        Bytes::new(),
                    )?;
                }
                Some(sample) => {
                    let body = json!({"version": rebuild, "sample": sample});
                    let (status, answer) = send(
                        ctx,
                        &server,
                        Method::PUT,
                        &challenger_path(),
                        "application/json",
                        Bytes::from(serde_json::to_vec(&body)?),
                    )?;
                    anyhow::ensure!(
                        status == 200,
                        "challenger: {status} {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
            }
            let target = if path == "L1 hit" {
                Target::post_fixed(server.addr, "/v1/score", fixed.clone())
            } else {
                // Each variant scores portfolios no other variant did.
                let from = next_unique;
                next_unique += 10_000_000;
                let body: crate::loadgen::BodyFn =
                    Arc::new(move |n: u64| score_body(MODEL, from + n));
                Target::post(server.addr, "/v1/score", body)
            };
            let outcome = super::http::measure(ctx, &target, plan)?;
            let rps = median(&outcome.throughput);
            let label = match sample {
                None => "no challenger".to_owned(),
                Some(s) => format!("challenger at sample {s}"),
            };
            let mut row = load_row(
                SCENARIO,
                format!("{path}, {label} · {CONNECTIONS} conns"),
                &outcome,
            );
            row = match sample {
                None => {
                    baseline = rps;
                    row.reference("1.00×".to_owned())
                }
                Some(_) => {
                    let (_, evidence) = server.get(&challenger_path())?;
                    let evidence: Value = serde_json::from_slice(&evidence)?;
                    row.reference(format!(
                        "{} without ({} req/s); the challenger compared {}, diverged {}, dropped {}",
                        ratio(rps, baseline),
                        number(baseline),
                        evidence["compared"],
                        evidence["diverged"],
                        evidence["dropped"],
                    ))
                }
            };
            rows.push(row);
        }
    }
    drop(server);
    rows.extend(misbehaving(ctx, &data)?);
    Ok(rows)
}

/// Live misses of `versioned` without a challenger, then with a failing
/// and with a hanging one at sample 1.0.
fn misbehaving(ctx: &Context, data: &Scratch) -> anyhow::Result<Vec<Row>> {
    crate::build_script(&ctx.root, "tests/plugins/build.sh", "the test models")?;
    let test_models = ctx.root.join("tests/plugins/dist");
    let plugins = data.join("versioned-plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(
        test_models.join("versioned-a.wasm"),
        plugins.join("versioned-a.wasm"),
    )?;
    let plugins = plugins.to_string_lossy().into_owned();
    let server = ctx.host.serve(
        &data.join("versioned"),
        &[
            "--plugins",
            plugins.as_str(),
            "--watch",
            "false",
            "--events",
            "none",
            "--model-limits",
            "versioned:deadline_ms=200",
        ],
    )?;
    let mut stored = Vec::new();
    for build in ["failing", "hanging"] {
        let bytes = std::fs::read(test_models.join(format!("versioned-{build}.wasm")))?;
        stored.push((build, upload(ctx, &server, "versioned", bytes)?));
    }
    rollback(
        ctx,
        &server,
        "versioned",
        Bytes::from_static(br#"{"to": "1.0.0"}"#),
    )?;

    let plan = ctx.load.closed(CONNECTIONS);
    let mut rows = Vec::new();
    let mut baseline = 0.0;
    let mut next_offset = 0u64;
    let path = "/v1/models/versioned/challenger";
    for challenger in [None, Some(&stored[0]), Some(&stored[1])] {
        if let Some((_, digest)) = challenger {
            let body = json!({"version": digest, "sample": 1.0});
            let (status, answer) = send(
                ctx,
                &server,
                Method::PUT,
                path,
                "application/json",
                Bytes::from(serde_json::to_vec(&body)?),
            )?;
            anyhow::ensure!(
                status == 200,
                "challenger: {status} {}",
                String::from_utf8_lossy(&answer)
            );
        }
        // Every request a miss: an offset no other request used.
        let from = next_offset;
        next_offset += 100_000_000;
        let body: crate::loadgen::BodyFn = Arc::new(move |n: u64| versioned_body(from + n));
        let target = Target::post(server.addr, "/v1/score", body);
        let outcome = super::http::measure(ctx, &target, plan)?;
        let rps = median(&outcome.throughput);
        let label = match challenger {
            None => "no challenger".to_owned(),
            Some((build, _)) => format!("a {build} challenger at sample 1.0"),
        };
        let row = load_row(
            SCENARIO,
            format!("versioned misses, {label} · {CONNECTIONS} conns"),
            &outcome,
        );
        rows.push(match challenger {
            None => {
                baseline = rps;
                row.reference("1.00×".to_owned())
            }
            Some(_) => {
                let (_, evidence) = server.get(path)?;
                let evidence: Value = serde_json::from_slice(&evidence)?;
                row.reference(format!(
                    "{} without ({} req/s); the challenger failed {}, dropped {}",
                    ratio(rps, baseline),
                    number(baseline),
                    evidence["errors"]["challenger_only"],
                    evidence["dropped"],
                ))
            }
        });
    }
    drop(server);
    Ok(rows)
}

/// A `versioned` score request whose `offset` makes it a memo miss.
fn versioned_body(offset: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"versioned","portfolio":{{"positions":[{{"instrument":"SPX","quantity":10}},{{"instrument":"TLT","quantity":-200}},{{"instrument":"AAPL","quantity":50}}]}},"params":{{"offset":{offset}}}}}"#
    ))
}

/// Stores `bytes` as a version of `model` (which activates it); its digest.
fn upload(ctx: &Context, server: &Server, model: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
    let (status, body) = send(
        ctx,
        server,
        Method::PUT,
        &format!("/v1/models/{model}"),
        "application/wasm",
        Bytes::from(bytes),
    )?;
    anyhow::ensure!(
        status == 201,
        "upload of a {model} version: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let answer: Value = serde_json::from_slice(&body)?;
    Ok(answer["digest"].as_str().unwrap_or_default().to_owned())
}

/// `POST /v1/models/{model}/rollback` with `body`.
fn rollback(ctx: &Context, server: &Server, model: &str, body: Bytes) -> anyhow::Result<()> {
    let (status, answer) = send(
        ctx,
        server,
        Method::POST,
        &format!("/v1/models/{model}/rollback"),
        "application/json",
        body,
    )?;
    anyhow::ensure!(
        status == 200,
        "rollback of {model}: {status} {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

fn challenger_path() -> String {
    format!("/v1/models/{MODEL}/challenger")
}

fn send(
    ctx: &Context,
    server: &Server,
    method: Method,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    ctx.rt.block_on(crate::loadgen::request_typed(
        server.addr,
        method,
        path,
        content_type,
        body,
    ))
}
