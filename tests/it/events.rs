//! End-to-end tests of score events in a real ClickHouse: every score
//! served (single, batch, cached or not) is one row, across a ClickHouse
//! outage (spooled, then replayed) and a graceful shutdown, and the history
//! route reads them back.

use crate::common;

use std::time::Duration;

use common::db::{ChDatabase, DedicatedClickHouse, ch_query, ch_url, wait_until};
use common::{Server, TempDir, assert_error};
use serde_json::json;

fn events_server(ch: &ChDatabase, data_dir: &TempDir, extra: &[&str]) -> Server {
    let data_dir = data_dir.path().to_string_lossy().into_owned();
    let mut args = vec![
        "--clickhouse-url",
        &ch.url,
        "--clickhouse-database",
        &ch.name,
        "--clickhouse-timeout-ms",
        "2000",
        "--data-dir",
        &data_dir,
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn count(ch: &ChDatabase, filter: &str) -> Option<u64> {
    ch_query(
        &ch.url,
        &format!("SELECT count() FROM {}.score_events {filter}", ch.name),
    )
    .ok()
    .and_then(|t| t.parse().ok())
}

/// Sends `n` single requests (a third of them repeats, so cached) and one
/// batch of 5 portfolios × 2 models; returns how many scores were served.
fn traffic(server: &Server, tag: &str, n: usize) -> u64 {
    let mut served = 0;
    for i in 0..n {
        let quantity = (i % (2 * n / 3).max(1)) + 1;
        let r = server
            .client
            .post(server.url("/v1/score"))
            .header("x-request-id", format!("{tag}-{i}"))
            .json(
                &json!({"model": "var-historical", "portfolio": {"id": "p-events", "positions": [
                {"instrument": "SPX", "quantity": quantity}]}}),
            )
            .send()
            .expect("POST");
        assert_eq!(r.status().as_u16(), 200);
        served += 1;
    }
    let (status, body) = server.post(
        "/v1/score/batch",
        &json!({"models": ["var-historical", "es-historical"],
                "portfolios": [{"id": "balanced"}, {"id": "tech"}, {"id": "macro"}, {"id": "single-spx"}, {"id": "fifty"}]}),
    );
    assert_eq!(status, 200, "{body}");
    served + body["results"].as_array().map_or(0, |r| r.len() as u64)
}

#[test]
fn every_score_is_recorded_across_a_clickhouse_outage() {
    let clickhouse = DedicatedClickHouse::start();
    let ch = ChDatabase::new(&clickhouse.url(), "outage");
    let data_dir = TempDir::new("events-outage");
    let server = events_server(&ch, &data_dir, &["--events-flush-ms", "100"]);

    let mut served = traffic(&server, "before", 30);
    wait_until(
        "the first events are written",
        Duration::from_secs(60),
        || count(&ch, "") == Some(served),
    );

    clickhouse.stop();
    // The request path does not notice: every score is served.
    served += traffic(&server, "during", 30);
    wait_until("events are spooled", Duration::from_secs(60), || {
        server
            .metric("riskhost_events_spooled_total")
            .unwrap_or(0.0)
            >= 40.0
    });
    // History needs ClickHouse: a clear 503 while it is down.
    assert_error(
        &server.get("/v1/portfolios/p-events/scores"),
        503,
        "data_unavailable",
        "ClickHouse",
    );

    clickhouse.start_again();
    served += traffic(&server, "after", 15);
    wait_until(
        "the spool is replayed and every score is in ClickHouse",
        Duration::from_secs(120),
        // Rows are visible before their insert returns (the more so with
        // the analytics views to feed), and the spool is trimmed and the
        // written counter moved only then.
        || {
            count(&ch, "") == Some(served)
                && server
                    .metric("riskhost_events_spool_pending")
                    .unwrap_or(0.0)
                    == 0.0
                && server
                    .metric("riskhost_events_written_total")
                    .unwrap_or(0.0) as u64
                    == served
        },
    );
    assert_eq!(
        server
            .metric("riskhost_events_spool_pending")
            .unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        server.metric("riskhost_events_failed_total").unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        server
            .metric("riskhost_events_written_total")
            .unwrap_or(0.0) as u64,
        served
    );
    // Exactly once: each request id of the outage appears once.
    assert_eq!(
        count(&ch, "WHERE request_id LIKE 'during-%'"),
        Some(30),
        "duplicates or losses among the spooled events"
    );
    assert_eq!(
        count(&ch, "WHERE path = 'batch' AND error_code = ''"),
        Some(30)
    );
    assert!(count(&ch, "WHERE cached = 1").unwrap_or(0) > 0);

    // The history route reads them back, oldest first.
    let (status, body) =
        server.get("/v1/portfolios/p-events/scores?model=var-historical&limit=10000");
    assert_eq!(status, 200, "{body}");
    let scores = body["scores"].as_array().expect("scores");
    assert_eq!(scores.len(), 75);
    let ids: Vec<&str> = scores
        .iter()
        .filter_map(|s| s["request_id"].as_str())
        .collect();
    assert_eq!(ids.first(), Some(&"before-0"));
    assert!(ids.contains(&"during-29") && ids.contains(&"after-14"));
    let first = &scores[0];
    assert_eq!(first["version"], "1.0.0");
    assert_eq!(first["unit"], "currency_amount");
    assert!(first["value"].as_f64().is_some_and(|v| v > 0.0), "{first}");
    assert_eq!(first["params_hash"].as_str().map(str::len), Some(16));
    let (status, none) = server.get("/v1/portfolios/p-events/scores?from=2001-01-01&to=2001-01-02");
    assert_eq!(status, 200);
    assert_eq!(none["scores"], json!([]));
    assert_error(
        &server.get("/v1/portfolios/p-events/scores?from=yesterday"),
        422,
        "invalid_query",
        "from",
    );
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A rejected request still records what it asked for, but never more than
/// a prefix and a hash of each field: megabytes of model name or portfolio
/// id cost the spool a few hundred bytes, and legitimate events are kept.
#[test]
fn oversized_names_and_ids_are_recorded_bounded_and_crowd_out_nothing() {
    let data_dir = TempDir::new("events-bounded");
    let data = data_dir.path().to_string_lossy().into_owned();
    // No ClickHouse listens there: every event goes to the spool.
    let server = Server::start(&[
        "--clickhouse-url",
        "http://127.0.0.1:9",
        "--clickhouse-timeout-ms",
        "500",
        "--events-flush-ms",
        "50",
        "--events-spool-max-mib",
        "16",
        "--data-dir",
        &data,
    ]);
    let huge = "x".repeat(6 << 20);
    let (status, _) = server.post(
        "/v1/score",
        &json!({"model": huge, "portfolio": {"id": "tech"}}),
    );
    assert!((400..500).contains(&status), "{status}");
    let (status, _) = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": {"id": huge, "positions": [{"instrument": "SPX", "quantity": 1}]}}),
    );
    assert!((400..500).contains(&status), "{status}");
    let (status, body) = server.post(
        "/v1/score/batch",
        &json!({"models": ["var-historical", "es-historical"],
                "portfolios": [{"id": "y".repeat(20 << 20), "positions": [{"instrument": "SPX", "quantity": 1}]}]}),
    );
    assert_eq!(status, 200, "{body}");
    let echoed = body["results"][0]["portfolio_id"]
        .as_str()
        .unwrap_or_default();
    assert!(
        echoed.len() <= 256 && echoed.contains("#blake3:"),
        "{echoed}"
    );
    for i in 0..20 {
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": "var-historical", "portfolio": {"id": format!("ok-{i}"), "positions": [{"instrument": "SPX", "quantity": 1 + i}]}}),
        );
        assert_eq!(status, 200, "{body}");
    }
    wait_until("every event is spooled", Duration::from_secs(60), || {
        server
            .metric("riskhost_events_spooled_total")
            .unwrap_or(0.0)
            >= 24.0
    });
    let spooled = dir_bytes(&data_dir.path().join("spool"));
    eprintln!("24 events, 32 MiB of names and ids asked for: {spooled} bytes spooled");
    assert_eq!(
        server.metric("riskhost_events_failed_total").unwrap_or(0.0),
        0.0,
        "events were lost"
    );
    assert!(spooled < 64 << 10, "{spooled} bytes spooled");
}

/// Durable mode: a score's event is fsynced in the spool before its answer
/// leaves, so a SIGKILL under load loses none. After a restart the spool is
/// replayed and ClickHouse holds the event of every answered request.
#[test]
fn in_durable_mode_a_sigkill_under_load_loses_no_answered_event() {
    let ch = ChDatabase::new(&ch_url(), "durable");
    let data_dir = TempDir::new("events-durable");
    let durable = ["--events-durable", "--events-flush-ms", "200"];
    let server = events_server(&ch, &data_dir, &durable);
    let url = server.url("/v1/score");
    let load: Vec<_> = (0..4)
        .map(|thread| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                let mut answered = Vec::new();
                for i in 0.. {
                    let id = format!("durable-{thread}-{i}");
                    let sent = client
                        .post(&url)
                        .header("x-request-id", &id)
                        .json(
                            &json!({"model": "var-historical", "portfolio": {"positions": [
                            {"instrument": "SPX", "quantity": 1 + i % 50}]}}),
                        )
                        .send();
                    match sent {
                        Ok(r) if r.status().as_u16() == 200 => answered.push(id),
                        Ok(r) => panic!("{id}: {}", r.status()),
                        // The server was killed under us.
                        Err(_) => break,
                    }
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let answered: std::collections::BTreeSet<String> = load
        .into_iter()
        .flat_map(|t| t.join().expect("load thread"))
        .collect();
    assert!(
        answered.len() > 20,
        "only {} answers before the kill",
        answered.len()
    );
    drop(server);

    let _restarted = events_server(&ch, &data_dir, &durable);
    let recorded = || -> std::collections::BTreeSet<String> {
        ch_query(
            &ch.url,
            &format!("SELECT request_id FROM {}.score_events FORMAT TSV", ch.name),
        )
        .map(|rows| rows.lines().map(str::to_owned).collect())
        .unwrap_or_default()
    };
    wait_until(
        "every answered request's event is in ClickHouse",
        Duration::from_secs(60),
        || recorded().is_superset(&answered),
    );
    let recorded = recorded();
    let rows: u64 = ch_query(
        &ch.url,
        &format!("SELECT count() FROM {}.score_events", ch.name),
    )
    .ok()
    .and_then(|n| n.parse().ok())
    .unwrap_or(0);
    eprintln!(
        "{} answered before SIGKILL; {} recorded ({} rows: {} replayed twice)",
        answered.len(),
        recorded.len(),
        rows,
        rows.saturating_sub(recorded.len() as u64)
    );
    // Besides the answered ones, only requests in flight at the kill.
    assert!(
        recorded.iter().all(|id| id.starts_with("durable-")),
        "{recorded:?}"
    );
    assert!(
        recorded.len() <= answered.len() + 4,
        "{} > {} + 4",
        recorded.len(),
        answered.len()
    );
}

#[test]
fn buffered_events_are_flushed_on_graceful_shutdown() {
    let ch = ChDatabase::new(&ch_url(), "shutdown");
    let data_dir = TempDir::new("events-shutdown");
    // A flush interval far longer than the test: only shutdown writes them.
    let server = events_server(&ch, &data_dir, &["--events-flush-ms", "600000"]);
    let r = server
        .client
        .post(server.url("/v1/score"))
        .header("x-request-id", "mine-1")
        .json(&json!({"model": "es-historical", "portfolio": {"id": "tech"}}))
        .send()
        .expect("POST");
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("mine-1")
    );
    let (status, failed) = server.post(
        "/v1/score",
        &json!({"model": "nope", "portfolio": {"id": "tech"}}),
    );
    assert_eq!(status, 404, "{failed}");
    assert_eq!(count(&ch, ""), Some(0));

    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_until("both events are written", Duration::from_secs(60), || {
        count(&ch, "") == Some(2)
    });
    let rows = ch_query(
        &ch.url,
        &format!(
            "SELECT request_id, portfolio_id, model, error_code, toString(as_of) FROM {}.score_events ORDER BY request_id FORMAT TSV",
            ch.name
        ),
    )
    .expect("select");
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines.len(), 2, "{rows}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("mine-1\ttech\tes-historical\t\t2018-12-31")),
        "{rows}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\ttech\tnope\tunknown_model\t")),
        "{rows}"
    );
}
