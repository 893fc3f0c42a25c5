//! Scenario 7: start-up, from spawning `riskhost serve` to the first 200 of
//! `/readyz`, with the 3 example models: cold (an empty model store, every
//! component compiled), restarted with the compiled artifacts from the
//! store, and restarted with `--artifact-cache false`; then the same cold
//! and cached with the Python example model added (an 18 MB componentize-py
//! component, built by `examples/python/build.sh` when missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use super::Context;
use crate::report::{Row, number};
use crate::service::Scratch;

const SCENARIO: &str = "start-up";
const PYTHON_MODEL: &str = "var-parametric-py";

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let runs = ctx.load.runs;
    let data = Scratch::new("startup")?;
    let dist = ctx.dist_arg();
    let mut rows = Vec::new();

    let three = |dir: &Path, extra: &[&str]| -> anyhow::Result<f64> {
        let mut args = vec!["--plugins", dist.as_str(), "--watch", "false"];
        args.extend_from_slice(extra);
        Ok(ctx.host.serve(dir, &args)?.ready_after.as_secs_f64() * 1000.0)
    };
    let cold: Vec<f64> = (0..runs)
        .map(|i| three(&data.join(&format!("cold-{i}")), &[]))
        .collect::<anyhow::Result<_>>()?;
    let warm_dir = data.join("warm");
    three(&warm_dir, &[])?;
    let cached: Vec<f64> = (0..runs)
        .map(|_| three(&warm_dir, &[]))
        .collect::<anyhow::Result<_>>()?;
    let no_cache: Vec<f64> = (0..runs)
        .map(|_| three(&warm_dir, &["--artifact-cache", "false"]))
        .collect::<anyhow::Result<_>>()?;
    let cold_row = Row::sampled(
        SCENARIO,
        "3 example models · cold (empty model store)".into(),
        &cold,
        "ms",
    );
    let cold_median = cold_row.median;
    rows.push(
        cold_row
            .reference("the reference".into())
            .note(format!("{runs} runs")),
    );
    for (name, values) in [
        (
            "3 example models · restart with the compiled-artifact cache",
            &cached,
        ),
        (
            "3 example models · restart with --artifact-cache false",
            &no_cache,
        ),
    ] {
        let row = Row::sampled(SCENARIO, name.into(), values, "ms");
        let versus = versus_cold(row.median, cold_median);
        rows.push(row.reference(versus).note(format!("{runs} runs")));
    }

    match python_model(ctx) {
        Ok(python) => {
            let plugins = Scratch::new("startup-python")?;
            for m in &ctx.models {
                std::fs::copy(&m.path, plugins.join(&format!("{}.wasm", m.name)))?;
            }
            std::fs::copy(&python, plugins.join(&format!("{PYTHON_MODEL}.wasm")))?;
            let plugins_arg = plugins.path().display().to_string();
            let serve = |dir: &Path| -> anyhow::Result<f64> {
                let server = ctx.host.serve(
                    dir,
                    &["--plugins", plugins_arg.as_str(), "--watch", "false"],
                )?;
                Ok(server.ready_after.as_secs_f64() * 1000.0)
            };
            // Compiling the Python component takes seconds: fewer cold runs.
            let cold_runs = if ctx.quick { 1 } else { runs.min(3) };
            let cold: Vec<f64> = (0..cold_runs)
                .map(|i| serve(&data.join(&format!("py-cold-{i}"))))
                .collect::<anyhow::Result<_>>()?;
            let warm = data.join("py-warm");
            serve(&warm)?;
            let cached: Vec<f64> = (0..runs)
                .map(|_| serve(&warm))
                .collect::<anyhow::Result<_>>()?;
            let size = std::fs::metadata(&python)?.len() as f64 / (1024.0 * 1024.0);
            let cold_row = Row::sampled(
                SCENARIO,
                format!("3 models + Python {PYTHON_MODEL} ({size:.1} MiB) · cold"),
                &cold,
                "ms",
            );
            let py_cold = cold_row.median;
            rows.push(
                cold_row
                    .reference("the reference".into())
                    .note(format!("{cold_runs} runs")),
            );
            let row = Row::sampled(
                SCENARIO,
                format!(
                    "3 models + Python {PYTHON_MODEL} · restart with the compiled-artifact cache"
                ),
                &cached,
                "ms",
            );
            let versus = versus_cold(row.median, py_cold);
            rows.push(row.reference(versus).note(format!("{runs} runs")));
        }
        Err(e) => {
            eprintln!("  warning: no Python model, its start-up rows are not measured: {e:#}");
            rows.push(
                Row::reading(
                    SCENARIO,
                    format!("3 models + Python {PYTHON_MODEL}"),
                    0.0,
                    "ms",
                )
                .note(not_measured(&e)),
            );
        }
    }
    Ok(rows)
}

/// `examples/python/dist/var-parametric-py.wasm`, built first if missing.
pub(crate) fn python_model(ctx: &Context) -> anyhow::Result<PathBuf> {
    let path = ctx
        .root
        .join(format!("examples/python/dist/{PYTHON_MODEL}.wasm"));
    if !path.exists() {
        let script = ctx.root.join("examples/python/build.sh");
        eprintln!("  building the Python model: {} …", script.display());
        let status = Command::new("bash")
            .arg(&script)
            .stdout(Stdio::from(std::io::stderr()))
            .status()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !status.success() || !path.exists() {
            bail!("{} failed ({status})", script.display());
        }
    }
    Ok(path)
}

/// The note of a row that could not be measured, with the reason.
pub(crate) fn not_measured(e: &anyhow::Error) -> String {
    let reason: String = format!("{e:#}").chars().take(150).collect();
    format!("NOT MEASURED: {reason}")
}

/// `ms` against the cold start `cold`, as "N× faster" or "N× slower".
fn versus_cold(ms: f64, cold: f64) -> String {
    if ms <= cold {
        format!(
            "{:.1}× faster than cold ({} ms)",
            cold / ms.max(1e-9),
            number(cold)
        )
    } else {
        format!(
            "{:.1}× slower than cold ({} ms)",
            ms / cold.max(1e-9),
            number(cold)
        )
    }
}
