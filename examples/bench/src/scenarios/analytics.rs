//! Scenario 12: score analytics. 10 million synthetic score events (120
//! days, 200 portfolios, 4 models, 2 versions, errors and memo hits) are
//! written into a real ClickHouse (`RISKHOST_BENCH_CLICKHOUSE_URL`, default
//! the one `tests/clickhouse.sh` starts) before the aggregates exist, so
//! `riskhost db migrate` backfills them (timed); then a 90-day daily-stats
//! answer for one portfolio and for one model, through
//! `GET /v1/portfolios/{id}/stats` and `GET /v1/models/{name}/stats`
//! (a miss of the server's answer cache, then a hit), against the same
//! aggregates computed over the raw events by ClickHouse. Every sample
//! asks a different 90-day window, so no miss is served from a cache.
//! Times are client-side: request sent to answer read.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::Context;
use crate::report::{Row, number};
use crate::service::Scratch;

const SCENARIO: &str = "score analytics";
const EVENTS: u64 = 10_000_000;
const DAYS: i64 = 120;
const WINDOW_DAYS: i64 = 90;
const PORTFOLIO: &str = "p7";
const MODEL: &str = "var-historical";

/// A statement over ClickHouse's HTTP interface (no keep-alive, no
/// authorization header: the bench's load generator sends its API key,
/// which ClickHouse would take for credentials).
fn ch(addr: &str, sql: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("ClickHouse at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(1800)))?;
    write!(
        stream,
        "POST / HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("ClickHouse answered no HTTP")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "ClickHouse refused {}: {body}",
            sql.chars().take(200).collect::<String>()
        );
    }
    Ok(body.to_owned())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn day(epoch_day: i64) -> String {
    chrono::DateTime::from_timestamp(epoch_day * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The aggregates of the stats routes, over the raw events of `filter`
/// in `[from, to)` (epoch seconds), grouped by day, `series` and error.
fn raw_sql(db: &str, filter: &str, series: &str, from: i64, to: i64) -> String {
    format!(
        "SELECT toUInt32(intDiv(toUInt32(ts), 86400) * 86400) AS b, {series}, error_code,
                count(), sum(cached), minIf(value, error_code = ''), maxIf(value, error_code = ''),
                avgIf(value, error_code = ''), quantilesTDigestIf(0.5, 0.95, 0.99)(value, error_code = '')
         FROM {db}.score_events
         WHERE {filter} AND ts >= toDateTime({from}) AND ts < toDateTime({to})
         GROUP BY b, {series}, error_code ORDER BY b, {series}, error_code FORMAT JSON"
    )
}

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let url = std::env::var("RISKHOST_BENCH_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned());
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let db = format!("bench_analytics_{}", std::process::id());
    let migrate = || -> anyhow::Result<String> {
        let out = std::process::Command::new(&ctx.host.bin)
            .args(["db", "migrate", "--clickhouse-url", &url])
            .args(["--clickhouse-database", &db])
            .env("RUST_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "riskhost db migrate: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    migrate()?;
    // Back to an events table without aggregates, as before the upgrade.
    for t in ["portfolio_day", "portfolio_hour", "model_day", "model_hour"] {
        ch(addr, &format!("DROP TABLE {db}.score_events_{t}_mv"))?;
        ch(addr, &format!("DROP TABLE {db}.score_events_{t}"))?;
    }
    ch(
        addr,
        &format!("DROP TABLE {db}.score_events_analytics_state"),
    )?;

    let today = chrono::Utc::now().timestamp().div_euclid(86_400);
    let first_day = today - DAYS;
    let start = first_day * 86_400;
    let span = DAYS * 86_400;
    // In chunks of 12 days: ClickHouse refuses an insert block spanning
    // more than 100 partitions (days).
    let chunks = 10u64;
    let per = EVENTS / chunks;
    let loading = Instant::now();
    for k in 0..chunks {
        ch(
            addr,
            &format!(
                "INSERT INTO {db}.score_events (ts, ts_us, request_id, portfolio_id, model, version, value, cached, error_code, path)
                 SELECT toDateTime({start} + intDiv(number * {span}, {EVENTS})), 0, toString(number),
                        concat('p', toString(intHash32(number) % 200)),
                        ['var-historical', 'var-parametric', 'es-historical', 'var-mc'][intHash32(number + 1) % 4 + 1],
                        if(intHash32(number + 2) % 5 = 0, '1.1.0', '1.0.0'),
                        if(number % 97 = 0, nan, (intHash32(number + 3) % 1000000) / 100.0),
                        toUInt8(intHash32(number + 4) % 3 = 0),
                        if(number % 97 = 0, 'invalid_params', ''), 'single'
                 FROM system.numbers LIMIT {}, {per}",
                k * per
            ),
        )?;
    }
    let loaded = loading.elapsed();
    let backfilling = Instant::now();
    let report = migrate()?;
    let backfill = backfilling.elapsed();
    if !report.contains(&format!("{EVENTS} events recorded before")) {
        bail!("the backfill did not count every event: {report}");
    }

    let data = Scratch::new("analytics")?;
    let dist = ctx.dist_arg();
    let server = ctx.host.serve(
        &data.join("server"),
        &[
            "--plugins",
            dist.as_str(),
            "--watch",
            "false",
            "--clickhouse-url",
            url.as_str(),
            "--clickhouse-database",
            db.as_str(),
        ],
    )?;
    let samples: i64 = if ctx.quick { 5 } else { 15 };
    let mut rows = vec![
        Row::reading(
            SCENARIO,
            format!(
                "load {} events ({DAYS} days) into score_events",
                number(EVENTS as f64)
            ),
            loaded.as_secs_f64(),
            "s",
        )
        .note("INSERT … SELECT from system.numbers, 10 inserts".to_owned()),
        Row::reading(
            SCENARIO,
            format!(
                "riskhost db migrate: backfill of {} events",
                number(EVENTS as f64)
            ),
            backfill.as_secs_f64(),
            "s",
        )
        .note("4 aggregate tables (portfolio and model × day and hour)".to_owned()),
    ];
    for (what, route, filter, series) in [
        (
            format!("portfolio {PORTFOLIO}"),
            format!("/v1/portfolios/{PORTFOLIO}/stats"),
            format!("portfolio_id = '{PORTFOLIO}'"),
            "model",
        ),
        (
            format!("model {MODEL}"),
            format!("/v1/models/{MODEL}/stats"),
            format!("model = '{MODEL}'"),
            "version",
        ),
    ] {
        let (mut miss, mut hit, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..samples {
            let from_day = first_day + DAYS - WINDOW_DAYS - i;
            let path = format!(
                "{route}?bucket=day&from={}&to={}",
                day(from_day),
                day(from_day + WINDOW_DAYS - 1)
            );
            let t = Instant::now();
            let (status, body) = server.get(&path)?;
            miss.push(ms(t.elapsed()));
            if status != 200 {
                bail!(
                    "GET {path}: HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            let answer: serde_json::Value = serde_json::from_slice(&body)?;
            let buckets = answer["buckets"].as_array().map_or(0, Vec::len);
            if buckets < WINDOW_DAYS as usize {
                bail!("GET {path}: {buckets} buckets, expected at least {WINDOW_DAYS}");
            }
            let t = Instant::now();
            let (status, _) = server.get(&path)?;
            hit.push(ms(t.elapsed()));
            if status != 200 {
                bail!("GET {path} again: HTTP {status}");
            }
            let sql = raw_sql(
                &db,
                &filter,
                series,
                from_day * 86_400,
                (from_day + WINDOW_DAYS) * 86_400,
            );
            let t = Instant::now();
            ch(addr, &sql)?;
            raw.push(ms(t.elapsed()));
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (m, r) = (median(&miss), median(&raw));
        let speedup = r / m;
        rows.push(
            Row::sampled(
                SCENARIO,
                format!("{what} · 90 daily buckets · route, answer-cache miss"),
                &miss,
                "ms",
            )
            .reference(format!("{speedup:.0}× faster than raw ({} ms)", number(r)))
            .goal("≤ 100 ms and ≥ 20× raw", m <= 100.0 && speedup >= 20.0)
            .note(format!("{samples} distinct 90-day windows")),
        );
        rows.push(Row::sampled(
            SCENARIO,
            format!("{what} · 90 daily buckets · route, answer-cache hit"),
            &hit,
            "ms",
        ));
        rows.push(
            Row::sampled(
                SCENARIO,
                format!(
                    "{what} · 90 daily buckets · same aggregates over raw events (ClickHouse HTTP)"
                ),
                &raw,
                "ms",
            )
            .reference("1.00×".to_owned()),
        );
    }
    drop(server);
    ch(addr, &format!("DROP DATABASE IF EXISTS {db}"))?;
    Ok(rows)
}
