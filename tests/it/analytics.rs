//! Score analytics against a real ClickHouse (a database per test): the
//! aggregates the materialized views keep, read through
//! `GET /v1/portfolios/{id}/stats` and `GET /v1/models/{name}/stats`, equal
//! the same aggregates computed over the raw events; `riskhost db migrate`
//! backfills events recorded before the views, once; buckets split at
//! midnight and at month (partition) boundaries; bad ranges are refused.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::db::{ChDatabase, ch_query, ch_url, riskhost_db, wait_until};
use common::{Server, TempDir, assert_error};
use serde_json::{Value, json};

fn analytics_server(ch: &ChDatabase, data_dir: &TempDir) -> Server {
    let data_dir = data_dir.path().to_string_lossy().into_owned();
    Server::start(&[
        "--clickhouse-url",
        &ch.url,
        "--clickhouse-database",
        &ch.name,
        "--clickhouse-timeout-ms",
        "5000",
        "--events-flush-ms",
        "100",
        "--data-dir",
        &data_dir,
    ])
}

fn count(ch: &ChDatabase) -> u64 {
    ch_query(
        &ch.url,
        &format!("SELECT count() FROM {}.score_events", ch.name),
    )
    .ok()
    .and_then(|t| t.parse().ok())
    .unwrap_or(0)
}

/// One bucket's aggregates, from either side.
#[derive(Debug, Default, PartialEq)]
struct Agg {
    count: u64,
    scores: u64,
    cache_hits: u64,
    errors: BTreeMap<String, u64>,
    /// min, max, mean, p50, p95, p99 (NaN when absent).
    values: [f64; 6],
}

type Key = (i64, String);

/// The aggregates of the raw events, grouped by bucket and `series`
/// (`model` or `version`), for the events matching `filter`.
fn raw_aggregates(ch: &ChDatabase, seconds: i64, series: &str, filter: &str) -> BTreeMap<Key, Agg> {
    let db = &ch.name;
    let rows = ch_query(
        &ch.url,
        &format!(
            "SELECT toInt64(intDiv(toUInt32(ts), {seconds}) * {seconds}) AS b, {series}, count(),
                    countIf(error_code = ''), sum(cached),
                    minIf(value, error_code = ''), maxIf(value, error_code = ''),
                    avgIf(value, error_code = ''),
                    quantilesTDigestIf(0.5, 0.95, 0.99)(value, error_code = '')
             FROM {db}.score_events WHERE {filter} GROUP BY b, {series} FORMAT TSV"
        ),
    )
    .expect("raw aggregates");
    let mut out = BTreeMap::new();
    for line in rows.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
        let q: Vec<f64> = f[8]
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(num)
            .collect();
        let scores: u64 = f[3].parse().unwrap();
        let v = if scores == 0 {
            [f64::NAN; 6]
        } else {
            [num(f[5]), num(f[6]), num(f[7]), q[0], q[1], q[2]]
        };
        out.insert(
            (f[0].parse().unwrap(), f[1].to_owned()),
            Agg {
                count: f[2].parse().unwrap(),
                scores,
                cache_hits: f[4].parse().unwrap(),
                errors: BTreeMap::new(),
                values: v,
            },
        );
    }
    let errors = ch_query(
        &ch.url,
        &format!(
            "SELECT toInt64(intDiv(toUInt32(ts), {seconds}) * {seconds}) AS b, {series}, error_code, count()
             FROM {db}.score_events WHERE {filter} AND error_code != ''
             GROUP BY b, {series}, error_code FORMAT TSV"
        ),
    )
    .expect("raw errors");
    for line in errors.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let key = (f[0].parse().unwrap(), f[1].to_owned());
        out.get_mut(&key)
            .expect("a bucket with errors has events")
            .errors
            .insert(f[2].to_owned(), f[3].parse().unwrap());
    }
    out
}

/// The route's buckets, keyed like [`raw_aggregates`].
fn route_aggregates(answer: &Value, series: &str) -> BTreeMap<Key, Agg> {
    let mut out = BTreeMap::new();
    for b in answer["buckets"].as_array().expect("buckets") {
        let start = chrono::DateTime::parse_from_rfc3339(b["start"].as_str().unwrap())
            .unwrap()
            .timestamp();
        let f = |name: &str| b[name].as_f64().unwrap_or(f64::NAN);
        let errors = b["errors"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect();
        let count = b["count"].as_u64().unwrap();
        let hits = b["cache_hits"].as_u64().unwrap();
        let share = b["cache_hit_share"].as_f64().unwrap();
        assert!((share - hits as f64 / count as f64).abs() < 1e-12, "{b}");
        out.insert(
            (start, b[series].as_str().unwrap().to_owned()),
            Agg {
                count,
                scores: b["scores"].as_u64().unwrap(),
                cache_hits: hits,
                errors,
                values: [f("min"), f("max"), f("mean"), f("p50"), f("p95"), f("p99")],
            },
        );
    }
    out
}

/// Counts exactly; min and max exactly; the mean to rounding; the
/// quantiles (t-digest, merged from the views' partial states) against a
/// t-digest over the raw events, within ClickHouse's stated 1 % error of
/// the values' range (and Float32 rounding, which t-digest keeps values in).
fn assert_same(route: &BTreeMap<Key, Agg>, raw: &BTreeMap<Key, Agg>, what: &str) {
    assert_eq!(
        route.keys().collect::<Vec<_>>(),
        raw.keys().collect::<Vec<_>>(),
        "{what}: buckets"
    );
    for (key, r) in route {
        let w = &raw[key];
        let context = format!("{what} {key:?}: route {r:?}, raw {w:?}");
        assert_eq!(
            (r.count, r.scores, r.cache_hits, &r.errors),
            (w.count, w.scores, w.cache_hits, &w.errors),
            "{context}"
        );
        for (i, (a, b)) in r.values.iter().zip(&w.values).enumerate() {
            let ok = if a.is_nan() || b.is_nan() {
                a.is_nan() && b.is_nan()
            } else if i < 2 {
                a == b
            } else if i == 2 {
                (a - b).abs() <= 1e-9 * b.abs().max(1.0)
            } else {
                let range = w.values[1] - w.values[0];
                (a - b).abs() <= 0.01 * range + 1e-6 * b.abs().max(1.0)
            };
            assert!(ok, "{context}: value {i}");
        }
    }
}

#[test]
fn every_aggregate_equals_the_raw_events() {
    let ch = ChDatabase::new(&ch_url(), "analytics");
    let data_dir = TempDir::new("analytics");
    let server = analytics_server(&ch, &data_dir);

    // Known traffic: distinct values, repeats (memo hits), errors of two
    // codes, two models, one batch across portfolios.
    let mut served = 0u64;
    for i in 0..40 {
        let quantity = (i % 25) + 1;
        let model = if i % 3 == 0 {
            "es-historical"
        } else {
            "var-historical"
        };
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": model, "portfolio": {"id": "p-an", "positions": [
                {"instrument": "SPX", "quantity": quantity}]}}),
        );
        assert_eq!(status, 200, "{body}");
        served += 1;
    }
    for i in 0..3 {
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": "nope", "portfolio": {"id": "p-an", "positions": [
                {"instrument": "SPX", "quantity": i + 1}]}}),
        );
        assert_eq!(status, 404, "{body}");
        served += 1;
    }
    for _ in 0..2 {
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": "var-historical", "params": {"confidence": 2.0},
                    "portfolio": {"id": "p-an", "positions": [{"instrument": "SPX", "quantity": 1}]}}),
        );
        assert_eq!(status, 422, "{body}");
        served += 1;
    }
    let (status, body) = server.post(
        "/v1/score/batch",
        &json!({"models": ["var-historical", "es-historical"],
                "portfolios": [{"id": "balanced"}, {"id": "tech"}, {"id": "p-an", "positions": [
                    {"instrument": "SPX", "quantity": 3}]}]}),
    );
    assert_eq!(status, 200, "{body}");
    served += body["results"].as_array().map_or(0, |r| r.len() as u64);
    // One insert feeds the events table, then the four views: the rows are
    // visible in the table before the aggregates have them.
    let aggregated = || -> u64 {
        ["portfolio_day", "portfolio_hour", "model_day", "model_hour"]
            .iter()
            .map(|t| {
                ch_query(
                    &ch.url,
                    &format!("SELECT countMerge(n) FROM {}.score_events_{t}", ch.name),
                )
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0)
            })
            .sum()
    };
    wait_until(
        "every event is written and aggregated",
        Duration::from_secs(60),
        || count(&ch) == served && aggregated() == 4 * served,
    );
    let hits: u64 = ch_query(
        &ch.url,
        &format!("SELECT sum(cached) FROM {}.score_events", ch.name),
    )
    .unwrap()
    .parse()
    .unwrap();
    assert!(hits > 0, "the traffic has memo hits");

    for (bucket, seconds) in [("day", 86_400), ("hour", 3_600)] {
        let (status, answer) = server.get(&format!("/v1/portfolios/p-an/stats?bucket={bucket}"));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["bucket"], bucket);
        let route = route_aggregates(&answer, "model");
        assert!(route.keys().any(|(_, m)| m == "nope"), "{answer}");
        assert_same(
            &route,
            &raw_aggregates(&ch, seconds, "model", "portfolio_id = 'p-an'"),
            &format!("portfolio by {bucket}"),
        );
        let (status, one) = server.get(&format!(
            "/v1/portfolios/p-an/stats?bucket={bucket}&model=es-historical"
        ));
        assert_eq!(status, 200, "{one}");
        assert_same(
            &route_aggregates(&one, "model"),
            &raw_aggregates(
                &ch,
                seconds,
                "model",
                "portfolio_id = 'p-an' AND model = 'es-historical'",
            ),
            &format!("portfolio and model by {bucket}"),
        );
        let (status, answer) =
            server.get(&format!("/v1/models/var-historical/stats?bucket={bucket}"));
        assert_eq!(status, 200, "{answer}");
        assert_same(
            &route_aggregates(&answer, "version"),
            &raw_aggregates(&ch, seconds, "version", "model = 'var-historical'"),
            &format!("model by {bucket}"),
        );
    }
    // Asked again, the answer comes from the sink's answer cache, the same.
    let hits = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("riskhost_stats_requests_total{")
                    && l.contains("outcome=\"hit\"")
                    && l.contains("subject=\"portfolio\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = hits(&server.get_text("/metrics"));
    let (_, first) = server.get("/v1/portfolios/p-an/stats?bucket=hour");
    let (status, again) = server.get("/v1/portfolios/p-an/stats?bucket=hour");
    assert_eq!(status, 200, "{again}");
    assert_eq!(first, again);
    let metrics = server.get_text("/metrics");
    assert!(hits(&metrics) >= before + 1.0, "{metrics}");
    assert!(
        metrics.contains("riskhost_stats_query_seconds_bucket"),
        "the queries are timed"
    );

    // Buckets split at midnight, at the turn of a month and a year (the
    // aggregate tables' partition boundary), in UTC. Written straight into
    // the events table, after the views' cutoff, as a writer would.
    ch_query(
        &ch.url,
        &format!(
            "INSERT INTO {}.score_events (ts, ts_us, request_id, portfolio_id, model, version, value, cached, error_code, path)
             VALUES (toDateTime(1924991999), 0, 'm1', 'p-midnight', 'm', '1.0.0', 1.0, 0, '', 'single'),
                    (toDateTime(1924991999), 500000, 'm2', 'p-midnight', 'm', '1.0.0', 3.0, 1, '', 'single'),
                    (toDateTime(1924992000), 0, 'm3', 'p-midnight', 'm', '1.0.0', 10.0, 0, '', 'single'),
                    (toDateTime(1924992000), 0, 'm4', 'p-midnight', 'm', '1.0.0', nan, 0, 'timeout', 'single')",
            ch.name
        ),
    )
    .expect("insert around midnight");
    // 1924991999 is 2030-12-31T23:59:59Z.
    let (status, days) =
        server.get("/v1/portfolios/p-midnight/stats?from=2030-12-31&to=2031-01-01");
    assert_eq!(status, 200, "{days}");
    let b = days["buckets"].as_array().unwrap();
    assert_eq!(b.len(), 2, "{days}");
    assert_eq!(b[0]["start"], "2030-12-31T00:00:00Z");
    assert_eq!(
        (
            b[0]["count"].as_u64(),
            b[0]["min"].as_f64(),
            b[0]["max"].as_f64()
        ),
        (Some(2), Some(1.0), Some(3.0))
    );
    assert_eq!(b[0]["cache_hit_share"].as_f64(), Some(0.5));
    assert_eq!(b[1]["start"], "2031-01-01T00:00:00Z");
    assert_eq!(
        (b[1]["count"].as_u64(), b[1]["scores"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(b[1]["errors"], json!({"timeout": 1}));
    assert_eq!(b[1]["mean"].as_f64(), Some(10.0));
    let (status, hours) = server
        .get("/v1/models/m/stats?bucket=hour&from=2030-12-31T23:00:00Z&to=2031-01-01T01:00:00Z");
    assert_eq!(status, 200, "{hours}");
    let h = hours["buckets"].as_array().unwrap();
    assert_eq!(h.len(), 2, "{hours}");
    assert_eq!(h[0]["start"], "2030-12-31T23:00:00Z");
    assert_eq!(h[0]["version"], "1.0.0");
    assert_eq!(h[1]["start"], "2031-01-01T00:00:00Z");
}

#[test]
fn migrate_backfills_older_events_once() {
    let ch = ChDatabase::new(&ch_url(), "backfill");
    let url = ch.url.clone();
    let db = ch.name.clone();
    let migrate = || {
        riskhost_db(&[
            "migrate",
            "--clickhouse-url",
            &url,
            "--clickhouse-database",
            &db,
        ])
    };
    migrate();
    // Back to a table made before analytics: no aggregates, no views.
    for t in ["portfolio_day", "portfolio_hour", "model_day", "model_hour"] {
        ch_query(&url, &format!("DROP TABLE {db}.score_events_{t}_mv")).unwrap();
        ch_query(&url, &format!("DROP TABLE {db}.score_events_{t}")).unwrap();
    }
    ch_query(
        &url,
        &format!("DROP TABLE {db}.score_events_analytics_state"),
    )
    .unwrap();
    // Events from the past (2026-01-15 and 16), written by an older riskhost.
    ch_query(
        &url,
        &format!(
            "INSERT INTO {db}.score_events (ts, ts_us, request_id, portfolio_id, model, version, value, cached, error_code, path)
             VALUES (toDateTime(1768435200), 0, 'b1', 'p-old', 'var-historical', '1.0.0', 2.0, 0, '', 'single'),
                    (toDateTime(1768478400), 0, 'b2', 'p-old', 'var-historical', '1.0.0', 4.0, 1, '', 'single'),
                    (toDateTime(1768521600), 0, 'b3', 'p-old', 'var-historical', '1.0.0', nan, 0, 'invalid_params', 'single')"
        ),
    )
    .unwrap();
    let first = migrate();
    assert!(first.contains("3 events recorded before"), "{first}");
    let again = migrate();
    assert!(again.contains("already backfilled"), "{again}");
    // Without the record (an interrupted migrate), the rows it left are
    // seen and the backfill refused, not run twice.
    ch_query(
        &url,
        &format!("DROP TABLE {db}.score_events_analytics_state"),
    )
    .unwrap();
    let refused = std::process::Command::new(common::binary())
        .args(["db", "migrate", "--clickhouse-url", &url])
        .args(["--clickhouse-database", &db])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("no record of a backfill"), "{stderr}");
    ch_query(
        &url,
        &format!(
            "CREATE TABLE IF NOT EXISTS {db}.score_events_analytics_state (step String, cutoff DateTime, done DateTime) ENGINE = TinyLog"
        ),
    )
    .unwrap();
    ch_query(
        &url,
        &format!(
            "INSERT INTO {db}.score_events_analytics_state SELECT concat('backfill:score_events_', t), now(), now()
             FROM (SELECT arrayJoin(['portfolio_day', 'portfolio_hour', 'model_day', 'model_hour']) AS t)"
        ),
    )
    .unwrap();

    let data_dir = TempDir::new("backfill");
    let server = analytics_server(&ch, &data_dir);
    let (status, answer) = server.get("/v1/portfolios/p-old/stats?from=2026-01-15&to=2026-01-16");
    assert_eq!(status, 200, "{answer}");
    let b = answer["buckets"].as_array().unwrap();
    assert_eq!(b.len(), 2, "{answer}");
    assert_eq!(
        (
            b[0]["count"].as_u64(),
            b[0]["min"].as_f64(),
            b[0]["max"].as_f64()
        ),
        (Some(2), Some(2.0), Some(4.0)),
        "counted once, though migrate ran twice: {answer}"
    );
    assert_eq!(b[1]["errors"], json!({"invalid_params": 1}));
    let (status, model) =
        server.get("/v1/models/var-historical/stats?from=2026-01-15&to=2026-01-16&version=1.0.0");
    assert_eq!(status, 200, "{model}");
    let total: u64 = model["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3, "{model}");
    // A score served now is aggregated by the views, once.
    let (status, body) = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": {"id": "p-old", "positions": [
            {"instrument": "SPX", "quantity": 1}]}}),
    );
    assert_eq!(status, 200, "{body}");
    // The events' rows are visible before the views have their share (one
    // insert feeds both, the table first), so wait for the aggregate.
    let aggregated = || -> u64 {
        ch_query(
            &url,
            &format!("SELECT countMerge(n) FROM {db}.score_events_portfolio_day WHERE portfolio_id = 'p-old'"),
        )
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
    };
    wait_until(
        "the new event is aggregated",
        Duration::from_secs(60),
        || aggregated() >= 4,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&ch), 4);
    assert_eq!(aggregated(), 4, "the new event is aggregated once");
}

#[test]
fn bad_ranges_and_buckets_are_refused() {
    let ch = ChDatabase::new(&ch_url(), "statsbad");
    let data_dir = TempDir::new("statsbad");
    let server = analytics_server(&ch, &data_dir);
    for (path, code, needle) in [
        (
            "/v1/portfolios/p/stats?bucket=week",
            "unknown_bucket",
            "week",
        ),
        (
            "/v1/models/m/stats?from=2026-02-01&to=2026-01-01",
            "invalid_range",
            "before",
        ),
        (
            "/v1/portfolios/p/stats?from=tomorrow",
            "invalid_range",
            "tomorrow",
        ),
        (
            "/v1/portfolios/p/stats?from=2020-01-01&to=2026-01-01",
            "too_many_buckets",
            "1000",
        ),
        (
            "/v1/models/m/stats?bucket=hour&from=2026-01-01&to=2026-03-01",
            "too_many_buckets",
            "1440",
        ),
        ("/v1/portfolios/p/stats?limit=3", "invalid_query", "limit"),
    ] {
        assert_error(&server.get(path), 422, code, needle);
    }
    let (status, empty) = server.get("/v1/models/m/stats?from=2001-01-01&to=2001-01-02");
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["buckets"], json!([]));
    // Without ClickHouse there is nothing to aggregate.
    let plain = Server::start(&[]);
    assert_error(
        &plain.get("/v1/models/m/stats"),
        404,
        "history_not_configured",
        "clickhouse",
    );
}
