//! What models print: captured stdout/stderr lines logged under the target
//! `riskhost::model_output`, tagged with the model and rate-limited per model
//! so a chatty or hostile model cannot flood the host's log.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Model output lines logged per model per second; the rest are counted.
const MODEL_LOG_LINES_PER_SECOND: u32 = 20;

/// Logs what a model printed, tagged with the model, rate-limited per model
/// so a chatty or hostile model cannot flood the host's log.
pub(crate) fn model_output(model: &str, stream: &str, text: &str, dropped_bytes: u64) {
    static WINDOWS: OnceLock<Mutex<HashMap<String, (Instant, u32)>>> = OnceLock::new();
    let windows = WINDOWS.get_or_init(|| Mutex::new(HashMap::new()));
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let allowed = match windows.lock() {
            Ok(mut w) => {
                let now = Instant::now();
                let slot = w.entry(model.to_owned()).or_insert((now, 0));
                if now.duration_since(slot.0) >= Duration::from_secs(1) {
                    *slot = (now, 0);
                }
                slot.1 += 1;
                slot.1 <= MODEL_LOG_LINES_PER_SECOND
            }
            Err(_) => false,
        };
        if allowed {
            tracing::info!(target: "riskhost::model_output", model, stream, "{line}");
        } else {
            metrics::counter!("riskhost_model_output_lines_dropped_total", "model" => model.to_owned()).increment(1);
        }
    }
    if dropped_bytes > 0 {
        tracing::warn!(target: "riskhost::model_output", model, stream, dropped_bytes, "model output truncated");
    }
}
