//! `riskhost model inspect FILE.wasm`: what a component is and whether the
//! server would serve it.
//!
//! The verdict comes from `ModelEngine::load`, the server's own load (compile,
//! link against the sandbox, check `info()`, warm-up call) under the same
//! limits (`RISKHOST_*` variables and flags apply), so "valid" here means
//! "loads in production".

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use wasmtime::component::Component;

use super::imports::{self, ImportReport, Treatment};
use super::{InspectArgs, human_bytes, human_duration};
use riskhost_engine::{LoadedModel, ModelDescription, ModelEngine, SandboxLimits};

/// Everything `inspect` reports, as printed with `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Inspection {
    pub(crate) file: String,
    pub(crate) size_bytes: usize,
    pub(crate) digest: String,
    /// Whether the server would load and serve it.
    pub(crate) valid: bool,
    /// Why it would not, when it would not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// What `info()` says (absent when the component did not get that far).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) info: Option<ModelDescription>,
    /// Empty when the file is not a component.
    pub(crate) imports: Vec<ImportReport>,
    pub(crate) exports: Vec<String>,
    /// Time of the whole load (compile, link, info, warm-up), in milliseconds.
    pub(crate) load_ms: u64,
}

/// Reads and loads a component the way the server does, keeping the compiled
/// model when it loaded. Shared with `riskhost model test`.
pub(crate) fn load(
    engine: &ModelEngine,
    path: &Path,
) -> anyhow::Result<(Inspection, Option<LoadedModel>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let started = Instant::now();
    let loaded = engine.load(&bytes);
    let load_ms = duration_ms(started.elapsed());
    let mut inspection = Inspection {
        file: path.display().to_string(),
        size_bytes: bytes.len(),
        digest: ModelEngine::digest(&bytes),
        valid: loaded.is_ok(),
        error: None,
        info: None,
        imports: Vec::new(),
        exports: Vec::new(),
        load_ms,
    };
    let wasmtime = engine.wasmtime_engine();
    match loaded {
        Ok(model) => {
            inspection.info = Some(model.description.clone());
            inspection.imports = imports::imports(wasmtime, model.component());
            inspection.exports = imports::exports(wasmtime, model.component());
            Ok((inspection, Some(model)))
        }
        Err(error) => {
            inspection.error = Some(error.to_string());
            // The load failed after (or while) compiling: compile once more
            // to list what the component imports and exports, which is
            // usually what explains the failure.
            if let Ok(component) = Component::new(wasmtime, &bytes) {
                inspection.imports = imports::imports(wasmtime, &component);
                inspection.exports = imports::exports(wasmtime, &component);
            }
            Ok((inspection, None))
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let engine = Arc::new(ModelEngine::new(args.sandbox.limits())?);
    let path = args.file.clone();
    let task_engine = engine.clone();
    // Compilation is blocking and CPU-bound, as in the server's loader.
    let (inspection, _) = tokio::task::spawn_blocking(move || load(&task_engine, &path))
        .await
        .context("loading the component panicked")??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        print!("{}", render(&inspection, engine.limits()));
    }
    // A component the server would refuse fails the command too, so
    // `riskhost model inspect m.wasm && deploy` cannot ship it.
    match inspection.error {
        None => Ok(()),
        Some(error) => anyhow::bail!(
            "{} does not load, so the server would not serve it: {error}",
            args.file.display()
        ),
    }
}

/// The human-readable report.
pub(crate) fn render(i: &Inspection, limits: &SandboxLimits) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("file       {}", i.file));
    line(format!(
        "size       {} ({} bytes)",
        human_bytes(i.size_bytes),
        i.size_bytes
    ));
    line(format!("digest     {}", i.digest));
    if let Some(info) = &i.info {
        line(format!("name       {}", info.name));
        line(format!("version    {}", info.version));
        let first_line = info.description.lines().next().unwrap_or_default();
        line(format!("about      {first_line}"));
        if info.params.is_empty() {
            line("params     (none)".into());
        } else {
            line("params".into());
            for p in &info.params {
                line(format!(
                    "  {:<16} {:<7} default {:<8} in [{}, {}]  {}",
                    p.name,
                    if p.integer { "integer" } else { "real" },
                    p.default,
                    p.min,
                    p.max,
                    p.description
                ));
            }
        }
        let data = match &info.data.lookback_param {
            Some(param) => format!(
                "{}: N daily returns per instrument, N = parameter `{param}`",
                info.data.kind
            ),
            None => format!(
                "{}: {} daily returns per instrument",
                info.data.kind, info.data.lookback_days
            ),
        };
        line(format!("data       {data}"));
    }
    if !i.exports.is_empty() {
        line(format!("exports    {}", i.exports.join(", ")));
    }
    if !i.imports.is_empty() {
        line("imports".into());
        for import in &i.imports {
            let flag = match import.treatment {
                Treatment::Provided => " ",
                Treatment::Virtualised => "~",
                Treatment::Denied => "!",
                Treatment::Unsupported => "x",
            };
            line(format!(
                "  {flag} {:<40} {:<11} {}",
                import.name,
                import.treatment.as_str(),
                import.note
            ));
        }
        line("  (~ virtualised: works, deterministic stand-in; ! denied: every use fails; x unsupported: cannot load)".into());
    }
    match &i.error {
        None => line(format!(
            "valid      yes: loads as the server loads it (compile, link, info(), warm-up) in {}; \
             memory limit {}",
            human_duration(Duration::from_millis(i.load_ms)),
            human_bytes(limits.memory_bytes)
        )),
        Some(error) => line(format!("valid      NO: {error}")),
    }
    out
}
