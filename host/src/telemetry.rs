//! Logs and metrics: one place that installs the tracing subscriber and the
//! Prometheus recorder, and the helpers that record what the host sees.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines, for local runs.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the filter.
pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    // A second init (e.g. from tests in one process) keeps the first subscriber.
    let _ = result;
}

/// Latency buckets from 10 µs to 30 s: model calls take microseconds, HTTP
/// requests milliseconds, and deadlines seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// Fuel units per call, from trivial calls to the order of a CPU-minute.
const FUEL_BUCKETS: &[f64] = &[1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12];

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub(crate) fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = METRICS.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), SIZE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_fuel_consumed".into()), FUEL_BUCKETS)?
        .install_recorder()?;
    describe_metrics();
    Ok(METRICS.get_or_init(|| handle).clone())
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "riskhost_model_call_duration_seconds",
        Unit::Seconds,
        "Wall time of one batch call into a model, instantiation included"
    );
    describe_histogram!(
        "riskhost_model_batch_size",
        Unit::Count,
        "Jobs per model call"
    );
    describe_histogram!(
        "riskhost_model_cpu_seconds",
        Unit::Seconds,
        "CPU time of one batch call into a model (the calling thread's CPU clock)"
    );
    describe_histogram!(
        "riskhost_model_fuel_consumed",
        Unit::Count,
        "Fuel units one batch call consumed, when fuel metering is on"
    );
    describe_counter!(
        "riskhost_model_jobs_total",
        "Jobs scored by a model, by outcome"
    );
    describe_counter!(
        "riskhost_model_errors_total",
        "Model calls that failed as a whole, by kind"
    );
    describe_counter!(
        "riskhost_model_rejected_total",
        "Calls refused because the model's queue was full"
    );
    describe_counter!(
        "riskhost_model_load_failures_total",
        "Components that failed to load"
    );
    describe_gauge!("riskhost_models_loaded", "Models being served");
    describe_counter!(
        "riskhost_cache_lookups_total",
        "Memo lookups by tier and result"
    );
    describe_counter!(
        "riskhost_http_requests_total",
        "HTTP requests by route, method and status"
    );
    describe_histogram!(
        "riskhost_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route, method and status"
    );
    describe_gauge!(
        "riskhost_http_requests_in_flight",
        "HTTP requests being served"
    );
    describe_counter!(
        "riskhost_model_output_lines_dropped_total",
        "Model stdout/stderr log lines dropped by the rate limit"
    );
}
