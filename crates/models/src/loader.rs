//! Loads model components from files into the registry.
//!
//! Compilation is CPU-bound and can take seconds for large components, so it
//! runs on blocking threads; one file failing never stops the others.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::registry::{Bulkhead, BulkheadLimits, ModelEntry, ModelRegistry};
use riskhost_engine::ModelEngine;

/// The `.wasm` files of a directory, sorted by name.
pub(crate) fn component_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    files.sort();
    Ok(files)
}

/// Loads one file; on success the model becomes active, on failure the
/// error is recorded in the registry. Returns the model name on success.
pub async fn load_file(
    engine: &Arc<ModelEngine>,
    registry: &ModelRegistry,
    path: &Path,
    bulkhead: BulkheadLimits,
) -> Result<String, String> {
    let source = format!("file:{}", path.display());
    let started = Instant::now();
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) => {
            let error = format!("cannot read {}: {e}", path.display());
            registry.record_failure(&source, error.clone());
            return Err(error);
        }
    };
    let engine = engine.clone();
    let loaded = tokio::task::spawn_blocking(move || engine.load(&bytes))
        .await
        .map_err(|e| format!("loading panicked: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
    match loaded {
        Ok(model) => {
            let name = model.name().to_owned();
            tracing::info!(
                model = %name, version = %model.version(), digest = %model.digest, source = %source,
                ms = started.elapsed().as_millis() as u64, "model loaded"
            );
            let bulkhead = Bulkhead::new(bulkhead.for_model(&model.limits));
            registry.activate(Arc::new(ModelEntry {
                model,
                source,
                loaded_at: SystemTime::now(),
                bulkhead,
            }));
            Ok(name)
        }
        Err(error) => {
            tracing::error!(source = %source, %error, "model failed to load");
            registry.record_failure(&source, error.clone());
            Err(error)
        }
    }
}

/// Loads every component of `dir` at start-up. Two files naming the same
/// model is a configuration error: the first (by file name) is served, the
/// second is recorded as failed.
pub async fn load_directory(
    engine: &Arc<ModelEngine>,
    registry: &ModelRegistry,
    dir: &Path,
    bulkhead: BulkheadLimits,
) {
    let files = match component_files(dir) {
        Ok(files) => files,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugins directory; serving no models");
            registry.record_failure(
                &format!("dir:{}", dir.display()),
                format!("cannot read directory: {e}"),
            );
            return;
        }
    };
    if files.is_empty() {
        tracing::warn!(dir = %dir.display(), "the plugins directory holds no .wasm files");
    }
    // Smallest files first: a Rust model compiles in milliseconds, a Python
    // one (~18 MB, CPython inside) in seconds, so in size order the small
    // ones are served while a large one still compiles. Which of two files
    // naming the same model wins still goes by file name (below).
    let mut files = files;
    files.sort_by_key(|p| std::fs::metadata(p).map_or(u64::MAX, |m| m.len()));
    for path in files {
        let before = registry.active();
        let source = format!("file:{}", path.display());
        match load_file(engine, registry, &path, bulkhead).await {
            Ok(name) => {
                if let Some(earlier) = before.get(&name) {
                    // Sources share the directory, so this compares file names.
                    let (winner, loser) = if earlier.source < source {
                        registry.activate(earlier.clone());
                        (earlier.source.clone(), source)
                    } else {
                        (source, earlier.source.clone())
                    };
                    registry.record_failure(
                        &loser,
                        format!(
                            "model `{name}` is already provided by {winner}; rename one of them"
                        ),
                    );
                }
            }
            Err(_) => continue,
        }
    }
}
