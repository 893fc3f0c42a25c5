//! Scenario 8: resident memory (`VmRSS`) of `riskhost serve`: with no model,
//! idle with the 3 example models (after one score of each, so every model
//! has been instantiated), the peak while 64 connections send misses
//! (sampled every 20 ms), and per loaded model: the idle difference to the
//! empty server, divided by the number of models; the same for the Python
//! model alone, and what one call of it costs against its Rust twin.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Context, score_body};
use crate::loadgen::Target;
use crate::report::{Row, number};
use crate::service::{Scratch, Server, rss_mib};

const SCENARIO: &str = "memory";

/// RSS after a moment of quiet (what the allocator gives back, it has).
fn idle_rss(server: &Server) -> anyhow::Result<f64> {
    std::thread::sleep(Duration::from_millis(500));
    server.rss_mib()
}

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let data = Scratch::new("memory")?;
    let empty_plugins = Scratch::new("memory-empty")?;
    let dist = ctx.dist_arg();
    let empty_arg = empty_plugins.path().display().to_string();

    let empty = ctx.host.serve(
        &data.join("empty"),
        &["--plugins", empty_arg.as_str(), "--watch", "false"],
    )?;
    let base = idle_rss(&empty)?;
    drop(empty);

    let server = ctx.host.serve(
        &data.join("three"),
        &["--plugins", dist.as_str(), "--watch", "false"],
    )?;
    for m in &ctx.models {
        server.post_ok("/v1/score", score_body(m.name, 10))?;
    }
    let idle = idle_rss(&server)?;

    // Peak under load: a sampler thread while 64 connections send misses.
    let pid = server.pid();
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = Arc::clone(&running);
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while running.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_mib(pid) {
                    peak = peak.max(rss);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let target = Target::post(
        server.addr,
        "/v1/score",
        Arc::new(|n: u64| score_body("var-historical", 1_000_000 + n)),
    );
    let outcome = ctx
        .rt
        .block_on(crate::loadgen::run(&target, ctx.load.closed(64)));
    running.store(false, Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0.0);
    let outcome = outcome?;
    let after = idle_rss(&server)?;
    drop(server);

    let n = ctx.models.len() as f64;
    let mut rows = vec![
        Row::reading(SCENARIO, "host with no model · idle".into(), base, "MiB")
            .note("empty plugins directory".into()),
        Row::reading(
            SCENARIO,
            "host with the 3 example models · idle".into(),
            idle,
            "MiB",
        )
        .reference(format!("no model + {} MiB", number(idle - base)))
        .note("after one score of each model".into()),
        Row::reading(
            SCENARIO,
            "host with the 3 example models · peak under load".into(),
            peak,
            "MiB",
        )
        .reference(format!(
            "idle + {} MiB; {} MiB idle again after",
            number(peak - idle),
            number(after)
        ))
        .note(format!(
            "64 conns, all misses (memo filling), {} requests, {} errors",
            outcome.ok + outcome.errors,
            outcome.errors
        )),
        Row::reading(
            SCENARIO,
            "per loaded Rust model (idle)".into(),
            (idle - base) / n,
            "MiB",
        )
        .note("(3 models idle − no model idle) / 3".into()),
    ];

    match super::startup::python_model(ctx) {
        Ok(python) => {
            let plugins = Scratch::new("memory-python")?;
            std::fs::copy(&python, plugins.join("var-parametric-py.wasm"))?;
            let arg = plugins.path().display().to_string();
            let server = ctx.host.serve(
                &data.join("python"),
                &["--plugins", arg.as_str(), "--watch", "false"],
            )?;
            server.post_ok("/v1/score", score_body("var-parametric-py", 10))?;
            let rss = idle_rss(&server)?;
            rows.push(
                Row::reading(
                    SCENARIO,
                    "per loaded Python model (idle)".into(),
                    rss - base,
                    "MiB",
                )
                .goal("≤ 100 MiB", rss - base <= 100.0)
                .note("(host with var-parametric-py only − no model), after one score".into()),
            );
            drop(server);
            // The same data directory: the restart loads the compiled artifact.
            std::fs::copy(
                ctx.dist.join("var-parametric.wasm"),
                plugins.join("var-parametric.wasm"),
            )?;
            let server = ctx.host.serve(
                &data.join("python"),
                &["--plugins", arg.as_str(), "--watch", "false"],
            )?;
            rows.push(python_versus_rust(&server)?);
        }
        Err(e) => rows.push(
            Row::reading(
                SCENARIO,
                "per loaded Python model (idle)".into(),
                0.0,
                "MiB",
            )
            .note(super::startup::not_measured(&e)),
        ),
    }
    Ok(rows)
}

/// Model CPU per call (one job, a memo miss each) of the Python
/// `var-parametric-py` against the Rust `var-parametric` on one server, as
/// the server's `riskhost_model_cpu_seconds` counts it.
fn python_versus_rust(server: &Server) -> anyhow::Result<Row> {
    const CALLS: u64 = 200;
    const MODELS: [&str; 2] = ["var-parametric-py", "var-parametric"];
    for model in MODELS {
        for n in 0..CALLS {
            // One at a time, so each is a call of one job.
            server.post_ok("/v1/score", score_body(model, 1_000 + n))?;
        }
    }
    let [python, rust] = MODELS.map(|model| mean_cpu_micros(server, model));
    let (python, rust) = (python?, rust?);
    Ok(Row::reading(
        SCENARIO,
        "Python var-parametric-py · model CPU per call (1 job)".into(),
        python,
        "µs/call",
    )
    .reference(format!(
        "{:.0}× its Rust twin var-parametric ({} µs)",
        python / rust.max(1e-9),
        number(rust)
    ))
    .note(format!(
        "mean of riskhost_model_cpu_seconds over {CALLS} calls each (+1 warm-up), one server"
    )))
}

/// Mean of a model's `riskhost_model_cpu_seconds` histogram, in µs.
fn mean_cpu_micros(server: &Server, model: &str) -> anyhow::Result<f64> {
    let (seconds, calls) = server.model_cpu(Some(model))?;
    if calls == 0.0 {
        anyhow::bail!("no model CPU recorded for {model}");
    }
    Ok(seconds / calls * 1e6)
}
