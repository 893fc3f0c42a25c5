//! Logs and metrics: one place that installs the tracing subscriber and the
//! Prometheus recorder, and the helpers that record what the host sees.

use std::sync::OnceLock;

use metrics::Unit;
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
    // Colour only for a person at a terminal: in a file or a log shipper
    // escape codes are noise, and styling is work on every access line.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
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

/// Relative differences of challenger cells, a decade a bucket: 0 (bit
/// equal) falls in the first, a wrong model in the last.
const RELATIVE_DIFFERENCE_BUCKETS: &[f64] =
    &[1e-15, 1e-12, 1e-9, 1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0];

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
        .set_buckets_for_metric(
            Matcher::Suffix("_relative_difference".into()),
            RELATIVE_DIFFERENCE_BUCKETS,
        )?
        .install_recorder()?;
    describe_metrics();
    Ok(METRICS.get_or_init(|| handle).clone())
}

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric riskhost exports: name, kind, unit and the text of its
/// `# HELP` line. A metric without one fails `promtool check metrics`;
/// `every_metric_recorded_is_described` holds the sources to this list.
#[rustfmt::skip]
const DESCRIPTIONS: &[(&str, Kind, Option<Unit>, &str)] = &[
    // Models and their calls.
    ("riskhost_model_call_duration_seconds", Kind::Histogram, Some(Unit::Seconds), "Wall time of one batch call into a model, instantiation included"),
    ("riskhost_model_batch_size", Kind::Histogram, Some(Unit::Count), "Jobs per model call"),
    ("riskhost_model_cpu_seconds", Kind::Histogram, Some(Unit::Seconds), "CPU time of one batch call into a model (the calling thread's CPU clock)"),
    ("riskhost_model_fuel_consumed", Kind::Histogram, Some(Unit::Count), "Fuel units one batch call consumed, when fuel metering is on"),
    ("riskhost_model_jobs_total", Kind::Counter, None, "Jobs scored by a model, by outcome (ok, invalid_input, insufficient_data, internal); 0 from the version's load"),
    ("riskhost_model_errors_total", Kind::Counter, None, "Model calls that failed as a whole, by kind (the error code); 0 from the version's load"),
    ("riskhost_model_rejected_total", Kind::Counter, None, "Calls refused because the model's queue was full; 0 from the model's load"),
    ("riskhost_model_load_failures_total", Kind::Counter, None, "Components that failed to load (compile, validation, signature, restore)"),
    ("riskhost_model_swaps_total", Kind::Counter, None, "Active versions replaced by another version, by model; 0 from the model's load"),
    ("riskhost_model_swap_duration_seconds", Kind::Histogram, Some(Unit::Seconds), "Time from the start of a deployment to the new version being live"),
    ("riskhost_model_active_info", Kind::Gauge, None, "1 for each model's active version (model, version, digest), 0 for versions active earlier in this process"),
    ("riskhost_model_output_lines_dropped_total", Kind::Counter, None, "Model stdout/stderr log lines dropped by the rate limit"),
    ("riskhost_models_loaded", Kind::Gauge, None, "Models being served"),
    ("riskhost_batch_queue_delay_seconds", Kind::Histogram, Some(Unit::Seconds), "Time a single request waited for its dynamic batch to start"),
    ("riskhost_dynamic_batch_size", Kind::Histogram, Some(Unit::Count), "Jobs per dynamic batch of concurrent single requests"),
    ("riskhost_data_fetch_duration_seconds", Kind::Histogram, Some(Unit::Seconds), "Time to fetch market data for a set of jobs, by what was fetched"),
    ("riskhost_snapshot_repins_total", Kind::Counter, None, "Requests scored again because the market data moved while they were scored, by route"),
    // The memo.
    ("riskhost_cache_lookups_total", Kind::Counter, None, "Memo lookups by tier and result: one l1 result per lookup, one l2 result per l1 miss with Redis; hit rate = hits / l1 lookups"),
    ("riskhost_cache_writes_total", Kind::Counter, None, "Memo entries written to the shared tier, by result"),
    ("riskhost_cache_coalesced_total", Kind::Counter, None, "Requests that shared a concurrent identical computation instead of running the model"),
    ("riskhost_cache_breaker_state", Kind::Gauge, None, "The Redis tier's circuit breaker: 0 closed, 1 half-open, 2 open"),
    ("riskhost_cache_purge_broadcasts_total", Kind::Counter, None, "Purges announced to the other replicas, by result"),
    ("riskhost_cache_purges_applied_total", Kind::Counter, None, "Other replicas' purges applied to this replica's in-process tier, by source"),
    ("riskhost_cache_purge_resubscriptions_total", Kind::Counter, None, "Times the purge subscription was lost and made again"),
    ("riskhost_cache_purge_subscribed", Kind::Gauge, None, "1 while this replica hears other replicas' purges"),
    ("riskhost_redis_op_duration_seconds", Kind::Histogram, Some(Unit::Seconds), "Time of one Redis operation (pipeline, connect, rate-limit script), by op"),
    ("riskhost_redis_errors_total", Kind::Counter, None, "Redis operations that failed, by op and kind"),
    // HTTP.
    ("riskhost_http_requests_total", Kind::Counter, None, "HTTP requests by route, method and status"),
    ("riskhost_http_errors_total", Kind::Counter, None, "HTTP error answers by route and cause: caller (4xx), model (a model failed on the input), server (the host; what pages)"),
    ("riskhost_http_request_duration_seconds", Kind::Histogram, Some(Unit::Seconds), "HTTP request latency by route, method and status"),
    ("riskhost_http_requests_in_flight", Kind::Gauge, None, "HTTP requests being served"),
    ("riskhost_http_shed_total", Kind::Counter, None, "Requests refused with 503 because too many were in flight"),
    ("riskhost_http_timeouts_total", Kind::Counter, None, "Requests answered 504 at the request timeout"),
    // Callers.
    ("riskhost_auth_failures_total", Kind::Counter, None, "Refused authentications, by reason (invalid_key, forbidden, throttled)"),
    ("riskhost_rate_limited_total", Kind::Counter, None, "Requests refused by a caller's rate limit"),
    ("riskhost_rate_limit_fallback_total", Kind::Counter, None, "Rate decisions made by this replica's buckets because Redis could not decide, by reason"),
    ("riskhost_keys_cache_invalidations_total", Kind::Counter, None, "API-key cache entries dropped on a PostgreSQL notification"),
    // Databases.
    ("riskhost_db_pool_size", Kind::Gauge, None, "Connections open in the pool"),
    ("riskhost_db_pool_max_size", Kind::Gauge, None, "Largest number of connections the pool may open"),
    ("riskhost_db_pool_idle", Kind::Gauge, None, "Idle connections in the pool"),
    ("riskhost_db_pool_in_use", Kind::Gauge, None, "Connections of the pool in use"),
    ("riskhost_db_pool_waiters", Kind::Gauge, None, "Callers waiting for a connection of the pool"),
    ("riskhost_db_query_duration_seconds", Kind::Histogram, Some(Unit::Seconds), "Database statement time by pool and query"),
    ("riskhost_db_query_errors_total", Kind::Counter, None, "Database statements that failed, by pool and query"),
    ("riskhost_db_listen_connected", Kind::Gauge, None, "1 while the PostgreSQL LISTEN connection is up, by listener"),
    ("riskhost_db_listen_reconnects_total", Kind::Counter, None, "Times a PostgreSQL LISTEN connection was lost or could not be made, by listener"),
    // Score events.
    ("riskhost_events_queued", Kind::Gauge, None, "Score events waiting to be written to ClickHouse"),
    ("riskhost_events_queued_bytes", Kind::Gauge, None, "Bytes of the score events waiting to be written"),
    ("riskhost_events_written_total", Kind::Counter, None, "Score events written to ClickHouse"),
    ("riskhost_events_spooled_total", Kind::Counter, None, "Score events appended to the on-disk spool"),
    ("riskhost_events_spool_pending", Kind::Gauge, None, "Score events in the spool not yet written to ClickHouse"),
    ("riskhost_events_failed_total", Kind::Counter, None, "Score events lost (queue full, spool unwritable, unreadable spool lines)"),
    ("riskhost_events_group_commits_total", Kind::Counter, None, "Group commits (fsyncs) of the durable event spool"),
    ("riskhost_events_sync_failures_total", Kind::Counter, None, "Failed fsyncs of the event spool"),
    ("riskhost_stats_requests_total", Kind::Counter, None, "Score-statistics answers by subject and outcome (hit: from the answer cache)"),
    ("riskhost_stats_query_seconds", Kind::Histogram, Some(Unit::Seconds), "ClickHouse time of one score-statistics query, by subject"),
    // The fleet and OCI registries.
    ("riskhost_fleet_stale", Kind::Gauge, None, "1 while this replica cannot read the shared model registry"),
    ("riskhost_fleet_model_revision", Kind::Gauge, None, "Registry revision of the version this replica serves, by model"),
    ("riskhost_fleet_reconcile_failures_total", Kind::Counter, None, "Registry changes this replica could not apply, by reason"),
    ("riskhost_fleet_reconcile_lag_seconds", Kind::Histogram, Some(Unit::Seconds), "Time from a registry change to this replica serving it"),
    ("riskhost_oci_pulls_total", Kind::Counter, None, "Components pulled from OCI registries, by result"),
    ("riskhost_oci_pull_bytes_total", Kind::Counter, Some(Unit::Bytes), "Bytes of components pulled from OCI registries"),
    ("riskhost_oci_pull_duration_seconds", Kind::Histogram, Some(Unit::Seconds), "Time of one pull from an OCI registry"),
    // Risk runs.
    ("riskhost_runs", Kind::Gauge, None, "Runs by status (planned, running, completed, completed_with_failures, cancelled)"),
    ("riskhost_run_chunks_pending", Kind::Gauge, None, "Run chunks queued and not yet taken by a worker (the queue's lag)"),
    ("riskhost_run_chunks_in_flight", Kind::Gauge, None, "Run chunks being scored now"),
    ("riskhost_run_chunks_quarantined_total", Kind::Counter, None, "Run chunks that failed on every delivery and were quarantined"),
    ("riskhost_run_cells_total", Kind::Counter, None, "Run cells (portfolio × model) written, by outcome (ok, failed); its rate is the runs' cells/s"),
    ("riskhost_run_portfolios_total", Kind::Counter, None, "Portfolios planned into runs"),
    // Challengers.
    ("riskhost_challenger_compared_total", Kind::Counter, None, "Live cells scored by both the model's active version and its challenger, by model"),
    ("riskhost_challenger_diverged_total", Kind::Counter, None, "Compared cells whose challenger value is over the tolerance, by model"),
    ("riskhost_challenger_relative_difference", Kind::Histogram, None, "|challenger - champion| / |champion| of each compared cell, by model"),
    ("riskhost_challenger_errors_total", Kind::Counter, None, "Cells one side failed and the other scored, by model, side (challenger_only, champion_only) and error code"),
    ("riskhost_challenger_dropped_total", Kind::Counter, None, "Sampled cells dropped because the challenger queue was full, by model"),
    ("riskhost_challenger_comparisons_lost_total", Kind::Counter, None, "Challenger comparisons ClickHouse did not take (they are evidence, not spooled)"),
];

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    for &(name, kind, unit, help) in DESCRIPTIONS {
        match (kind, unit) {
            (Kind::Counter, Some(unit)) => describe_counter!(name, unit, help),
            (Kind::Counter, None) => describe_counter!(name, help),
            (Kind::Gauge, Some(unit)) => describe_gauge!(name, unit, help),
            (Kind::Gauge, None) => describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("readable source directory")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every `metrics::counter!`/`gauge!`/`histogram!("riskhost_…")` in
    /// the workspace's sources, with its kind.
    fn recorded() -> BTreeMap<String, Kind> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        rust_files(&root.join("host/src"), &mut files);
        rust_files(&root.join("crates"), &mut files);
        let mut found = BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (macro_name, kind) in [
                ("counter!(", Kind::Counter),
                ("gauge!(", Kind::Gauge),
                ("histogram!(", Kind::Histogram),
            ] {
                for (at, _) in text.match_indices(macro_name) {
                    let rest = text[at + macro_name.len()..].trim_start();
                    let Some(rest) = rest.strip_prefix('"') else {
                        continue;
                    };
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if name.is_empty() || !rest[name.len()..].starts_with('"') {
                        continue;
                    }
                    if let Some(earlier) = found.insert(name.clone(), kind) {
                        assert_eq!(earlier, kind, "{name} is recorded as two kinds");
                    }
                }
            }
        }
        found
    }

    #[test]
    fn every_metric_recorded_is_described() {
        let recorded = recorded();
        // The scan finds the metrics it must (names on the macro's line and
        // on the next one).
        assert!(recorded.len() > 50, "{recorded:?}");
        assert_eq!(
            recorded.get("riskhost_model_active_info"),
            Some(&Kind::Gauge)
        );
        let described: BTreeMap<String, Kind> = DESCRIPTIONS
            .iter()
            .map(|&(name, kind, _, help)| {
                assert!(!help.is_empty(), "{name}");
                (name.to_owned(), kind)
            })
            .collect();
        assert_eq!(
            described.len(),
            DESCRIPTIONS.len(),
            "a metric is described twice"
        );
        for (name, kind) in &recorded {
            assert!(
                name.starts_with("riskhost_"),
                "{name} lacks the riskhost_ prefix"
            );
            assert_eq!(
                described.get(name),
                Some(kind),
                "{name} ({kind:?}) has no HELP text in DESCRIPTIONS"
            );
        }
        for name in described.keys() {
            assert!(
                recorded.contains_key(name),
                "{name} is described but never recorded"
            );
        }
    }
}
