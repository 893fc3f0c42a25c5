//! Graceful shutdown under load, with score events in a real ClickHouse:
//! on SIGTERM the server turns unready but keeps serving for
//! `--shutdown-delay-secs`, then stops accepting, lets the in-flight
//! request finish, flushes the buffered events and exits with status 0.

use crate::common;

use std::net::TcpStream;
use std::time::Duration;

use common::db::{ChDatabase, ch_query, ch_url, wait_until};
use common::{Server, plugins_with};
use serde_json::{Value, json};

fn in_flight(server: &Server) -> f64 {
    server
        .get_text("/metrics")
        .lines()
        .find(|l| l.starts_with("riskhost_http_requests_in_flight "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn score(server: &Server, id: &str, model: &str, params: Value) -> (u16, Value) {
    let r = server
        .client
        .post(server.url("/v1/score"))
        .header("x-request-id", id)
        .json(&json!({"model": model, "portfolio": {"id": "p-drain", "positions": [{"instrument": "SPX", "quantity": 1}]}, "params": params}))
        .send()
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn sigterm_drains_the_in_flight_request_flushes_its_events_and_exits_zero() {
    let ch = ChDatabase::new(&ch_url(), "drain");
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    let mut server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        // Wall-clock deadlines far above the slow call, on a busy machine.
        "--deadline-ms",
        "120000",
        "--deadline-cap-ms",
        "120000",
        "--clickhouse-url",
        &ch.url,
        "--clickhouse-database",
        &ch.name,
        "--clickhouse-timeout-ms",
        "2000",
        // Only shutdown writes the events.
        "--events-flush-ms",
        "600000",
        "--shutdown-delay-secs",
        "5",
        "--shutdown-grace-secs",
        "120",
    ]);
    let address = server
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    for id in ["before-1", "before-2"] {
        assert_eq!(score(&server, id, "var-historical", json!({})).0, 200);
    }
    // Several seconds of model work, in flight across the signal.
    let slow = {
        let client = server.client.clone();
        let url = server.url("/v1/score");
        std::thread::spawn(move || {
            let r = client
                .post(url)
                .header("x-request-id", "slow")
                .json(&json!({"model": "slow-legal", "portfolio": {"id": "p-drain", "positions": [{"instrument": "SPX", "quantity": 1}]},
                              "params": {"steps_millions": 6000}}))
                .send()
                .expect("the in-flight request failed");
            let status = r.status().as_u16();
            (status, r.json::<Value>().unwrap_or(Value::Null))
        })
    };
    // This scrape is in flight itself: 2 means the slow request is too.
    wait_until(
        "the slow request is in flight",
        Duration::from_secs(60),
        || in_flight(&server) >= 2.0,
    );

    server.terminate();
    // Not ready, but still serving while load balancers notice.
    wait_until("/readyz turns 503", Duration::from_secs(4), || {
        server.get("/readyz").0 == 503
    });
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "shutting down");
    assert_eq!(
        score(&server, "during-delay", "var-historical", json!({})).0,
        200
    );

    // Then the listener closes: new connections are refused.
    wait_until(
        "new connections are refused",
        Duration::from_secs(60),
        || TcpStream::connect(&address).is_err(),
    );
    let (status, body) = slow.join().expect("the slow request's thread");
    assert_eq!(
        status, 200,
        "the in-flight request was not let finish: {body}"
    );
    assert_eq!(body["model"], "slow-legal");

    let exit = server
        .wait_exit(Duration::from_secs(120))
        .expect("riskhost did not exit after draining");
    assert_eq!(exit.code(), Some(0), "{exit:?}");

    // Flushed before exiting: exactly the scores served, once each.
    let rows = ch_query(
        &ch.url,
        &format!(
            "SELECT request_id, model, error_code = '' FROM {}.score_events ORDER BY request_id FORMAT TSV",
            ch.name
        ),
    )
    .expect("select");
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [
            "before-1\tvar-historical\t1",
            "before-2\tvar-historical\t1",
            "during-delay\tvar-historical\t1",
            "slow\tslow-legal\t1",
        ],
        "{rows}"
    );
}
