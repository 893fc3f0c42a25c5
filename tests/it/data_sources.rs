//! End-to-end tests of the database market-data sources against real
//! PostgreSQL and ClickHouse: the same scores as the embedded source bit for
//! bit, stored portfolios by id, a data change reaching the cache key, and a
//! PostgreSQL outage answered with 503 and recovered from on its own.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::db::{ChDatabase, DedicatedPostgres, PgSchema, ch_url, psql, riskhost_db, wait_until};
use common::{Server, assert_error, plugins_with};
use serde_json::{Value, json};

const MODELS: [&str; 3] = ["var-historical", "var-parametric", "es-historical"];
const PORTFOLIOS: [&str; 5] = ["balanced", "tech", "macro", "single-spx", "fifty"];

fn pg_server(schema: &PgSchema, extra: &[&str]) -> Server {
    let mut args = vec![
        "--data-source",
        "postgres",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
        "--events",
        "none",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The exact text of every number of a score: value and breakdown.
fn fingerprint(body: &Value) -> String {
    let breakdown: Vec<String> = body["breakdown"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|c| format!("{}={}", c["name"], c["value"]))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} {} [{}]",
        body["value"],
        body["unit"],
        breakdown.join(",")
    )
}

#[test]
fn postgres_and_clickhouse_serve_the_embedded_scores_bit_for_bit() {
    let schema = PgSchema::new("parity");
    let ch = ChDatabase::new(&ch_url(), "parity");
    let out = riskhost_db(&[
        "seed",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
        "--clickhouse-url",
        &ch.url,
        "--clickhouse-database",
        &ch.name,
    ]);
    assert!(out.contains("25008 prices"), "{out}");

    let embedded = Server::start(&["--events", "none"]);
    let postgres = pg_server(&schema, &[]);
    let clickhouse = Server::start(&[
        "--data-source",
        "clickhouse",
        "--clickhouse-url",
        &ch.url,
        "--clickhouse-database",
        &ch.name,
        "--events",
        "none",
    ]);

    let mut compared = 0;
    for as_of in [None, Some("2016-02-13"), Some("2015-03-02")] {
        for model in MODELS {
            for id in PORTFOLIOS {
                let mut request = json!({"model": model, "portfolio": {"id": id}, "params": {"lookback_days": 60}});
                if let Some(d) = as_of {
                    request["as_of"] = json!(d);
                }
                let (status, want) = embedded.post("/v1/score", &request);
                for server in [&postgres, &clickhouse] {
                    let (got_status, got) = server.post("/v1/score", &request);
                    assert_eq!(got_status, status, "{request}: {got} vs {want}");
                    if status == 200 {
                        assert_eq!(fingerprint(&got), fingerprint(&want), "{request}");
                        assert_eq!(got["as_of"], want["as_of"]);
                        compared += 1;
                    } else {
                        assert_eq!(got["error"]["code"], want["error"]["code"], "{request}");
                    }
                }
            }
        }
    }
    // 2015-03-02 with 60 days of lookback is insufficient data: both refuse
    // alike, and everything else was compared.
    assert!(
        compared >= 2 * 2 * MODELS.len() * PORTFOLIOS.len(),
        "{compared}"
    );

    // A batch by ids: positions come from the database in one query.
    let batch = json!({
        "models": MODELS,
        "portfolios": PORTFOLIOS.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
        "as_of": "2018-06-29",
    });
    let (status, want) = embedded.post("/v1/score/batch", &batch);
    assert_eq!(status, 200, "{want}");
    for server in [&postgres, &clickhouse] {
        let (status, got) = server.post("/v1/score/batch", &batch);
        assert_eq!(status, 200, "{got}");
        let cells = |b: &Value| -> Vec<String> {
            b["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|c| format!("{} {} {}", c["portfolio_id"], c["model"], fingerprint(c)))
                .collect()
        };
        assert_eq!(cells(&got), cells(&want));
        assert_eq!(cells(&got).len(), 15);
    }
}

#[test]
fn stored_portfolios_and_errors_come_from_postgres() {
    let schema = PgSchema::new("stored");
    riskhost_db(&[
        "seed",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
    ]);
    psql(
        &schema.url,
        &format!(
            "INSERT INTO {s}.portfolios (id) VALUES ('mine');
             INSERT INTO {s}.positions VALUES ('mine', 'SPX', 3), ('mine', 'TLT', -5)",
            s = schema.name
        ),
    );
    let server = pg_server(&schema, &[]);

    let by_id = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": {"id": "mine"}}),
    );
    let inline = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": {"positions": [
            {"instrument": "TLT", "quantity": -5}, {"instrument": "SPX", "quantity": 3}]}}),
    );
    assert_eq!(by_id.0, 200, "{}", by_id.1);
    assert_eq!(by_id.1["portfolio_id"], "mine");
    assert_eq!(fingerprint(&by_id.1), fingerprint(&inline.1));

    assert_error(
        &server.post(
            "/v1/score",
            &json!({"model": "var-historical", "portfolio": {"id": "nope"}}),
        ),
        404,
        "unknown_portfolio",
        "nope",
    );
    assert_error(
        &server.post(
            "/v1/score",
            &json!({"model": "var-historical", "portfolio": {"positions": [{"instrument": "ZZZ", "quantity": 1}]}}),
        ),
        422,
        "unknown_instrument",
        "ZZZ",
    );
    assert_error(
        &server.post(
            "/v1/score",
            &json!({"model": "var-historical", "portfolio": {"id": "tech"}, "as_of": "2030-01-01"}),
        ),
        422,
        "as_of_out_of_range",
        "2018-12-31",
    );
    // One unknown id in a batch fails its own cells only.
    let (status, body) = server.post(
        "/v1/score/batch",
        &json!({"models": ["var-historical"], "portfolios": [{"id": "mine"}, {"id": "nope"}, {"id": "tech"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let codes: Vec<Value> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|c| c["error"]["code"].clone())
        .collect();
    assert_eq!(
        codes,
        [Value::Null, json!("unknown_portfolio"), Value::Null]
    );
    // Score history needs ClickHouse.
    assert_error(
        &server.get("/v1/portfolios/mine/scores"),
        404,
        "history_not_configured",
        "--clickhouse-url",
    );
}

#[test]
fn a_price_change_in_postgres_changes_the_snapshot_and_the_score() {
    let schema = PgSchema::new("change");
    riskhost_db(&[
        "seed",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
    ]);
    let version = || {
        psql(
            &schema.url,
            &format!("SELECT version FROM {}.data_version", schema.name),
        )
    };
    let before = version();
    // Seeding identical data again keeps the version (and every cached score).
    riskhost_db(&[
        "seed",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
    ]);
    assert_eq!(version(), before);
    // An instrument update moves the version too, unless nothing differs.
    let rename = |name: &str| {
        psql(
            &schema.url,
            &format!(
                "UPDATE {}.instruments SET name = {name} WHERE id = 'TLT'",
                schema.name
            ),
        )
    };
    rename("name");
    assert_eq!(
        version(),
        before,
        "an update that changes nothing keeps the version"
    );
    rename("'renamed'");
    let renamed = version();
    assert_ne!(
        renamed, before,
        "an instrument update bumps the data version"
    );
    let before = renamed;

    let server = pg_server(&schema, &["--data-version-ttl-ms", "100"]);
    let request = json!({"model": "var-historical", "portfolio": {"id": "single-spx"}, "params": {"lookback_days": 20}});
    let (_, first) = server.post("/v1/score", &request);
    assert_eq!(first["cached"], false, "{first}");
    let (_, again) = server.post("/v1/score", &request);
    assert_eq!(again["cached"], true);

    psql(
        &schema.url,
        &format!(
            "UPDATE {}.prices SET close = close * 1.5 WHERE instrument = 'SPX' AND date = '2018-12-20'",
            schema.name
        ),
    );
    assert_ne!(version(), before, "the trigger bumps the data version");
    let mut changed = Value::Null;
    wait_until(
        "the new data version is served",
        Duration::from_secs(30),
        || {
            changed = server.post("/v1/score", &request).1;
            changed["cached"] == false
        },
    );
    assert_ne!(changed["value"], first["value"], "{changed}");
}

/// A score's memo key and its price window come from one snapshot: under a
/// stream of price updates, every answer (computed or memoized, single or
/// batch) equals the score recomputed on the data of the snapshot it names.
///
/// The model values the portfolio (`hostile-loop` behaving: Σ |q × close|),
/// and the updater commits a new SPX close every few milliseconds, equal to
/// the data version it creates, so the close of every version is known and
/// each answer can be checked exactly.
#[test]
fn every_score_under_price_updates_matches_the_data_of_its_snapshot() {
    let schema = PgSchema::new("pin");
    riskhost_db(&[
        "seed",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
    ]);
    let plugins = plugins_with(&[], &["hostile-loop"]);
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--data-source",
        "postgres",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
        "--data-version-ttl-ms",
        "0",
        "--events",
        "none",
    ]);
    let (url, name) = (schema.url.clone(), schema.name.clone());
    let last_date = psql(
        &url,
        &format!("SELECT max(date) FROM {name}.prices WHERE instrument = 'SPX'"),
    );
    let first_version: u64 = psql(&url, &format!("SELECT version FROM {name}.data_version"))
        .parse()
        .expect("a version number");
    let first_close: f64 = psql(
        &url,
        &format!(
            "SELECT close FROM {name}.prices WHERE instrument = 'SPX' AND date = '{last_date}'"
        ),
    )
    .parse()
    .expect("a close");
    // The trigger bumps the version once per statement, so the close an
    // update writes (the version plus one) is the close of the version it makes.
    let close_of = |version: u64| {
        if version == first_version {
            first_close
        } else {
            version as f64
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let updater = {
        let (done, url, name, last_date) =
            (done.clone(), url.clone(), name.clone(), last_date.clone());
        std::thread::spawn(move || {
            psql(
                &url,
                &format!(
                    "DO $$ BEGIN FOR i IN 1..500 LOOP
                       UPDATE {name}.prices SET close = (SELECT version + 1 FROM {name}.data_version)
                        WHERE instrument = 'SPX' AND date = '{last_date}';
                       COMMIT;
                       PERFORM pg_sleep(0.003);
                     END LOOP; END $$"
                ),
            );
            done.store(true, Ordering::SeqCst);
        })
    };
    let spx = |q: f64| json!({"positions": [{"instrument": "SPX", "quantity": q}]});
    let answers: Vec<(f64, Value)> = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..4)
            .map(|reader| {
                let (server, done, spx) = (&server, &done, &spx);
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    let mut n = 0u32;
                    while !done.load(Ordering::SeqCst) || n < 20 {
                        n += 1;
                        // Few distinct portfolios per version, so many
                        // answers come from the memo.
                        let q = f64::from(1 + (n + reader) % 6);
                        if n.is_multiple_of(4) {
                            let request =
                                json!({"models": ["hostile-loop"], "portfolios": [spx(q)]});
                            let (status, body) = server.post("/v1/score/batch", &request);
                            assert_eq!(status, 200, "{body}");
                            let mut cell = body["results"][0].clone();
                            if cell["error"]["code"] == "data_unavailable" {
                                continue;
                            }
                            cell["snapshot"] = body["snapshot"].clone();
                            seen.push((q, cell));
                        } else {
                            let request = json!({"model": "hostile-loop", "portfolio": spx(q)});
                            let (status, body) = server.post("/v1/score", &request);
                            if status == 503 {
                                // The data moved on every attempt: allowed, never wrong.
                                assert_eq!(body["error"]["code"], "data_unavailable", "{body}");
                                continue;
                            }
                            assert_eq!(status, 200, "{body}");
                            seen.push((q, body));
                        }
                    }
                    seen
                })
            })
            .collect();
        readers
            .into_iter()
            .flat_map(|r| r.join().expect("reader"))
            .collect()
    });
    updater.join().expect("updater");

    let last_version: u64 = psql(&url, &format!("SELECT version FROM {name}.data_version"))
        .parse()
        .expect("a version number");
    let (mut cached, mut wrong) = (0, Vec::new());
    for (q, answer) in &answers {
        let snapshot = answer["snapshot"]
            .as_str()
            .unwrap_or_else(|| panic!("no snapshot: {answer}"));
        let version: u64 = snapshot
            .rsplit('.')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("snapshot {snapshot} names no version"));
        assert!(
            (first_version..=last_version).contains(&version),
            "{snapshot}"
        );
        let close = close_of(version);
        if answer["cached"] == true {
            cached += 1;
        }
        if answer["value"].as_f64() != Some(q * close) {
            wrong.push(format!(
                "{q} SPX at {snapshot}: {} (expected {})",
                answer["value"],
                q * close
            ));
        }
    }
    eprintln!(
        "{} answers over {} data versions ({cached} from the memo), {} wrong",
        answers.len(),
        last_version - first_version + 1,
        wrong.len()
    );
    assert!(cached > 0, "no answer came from the memo");
    assert!(
        last_version > first_version + 2,
        "the data did not change under the requests"
    );
    assert!(
        wrong.is_empty(),
        "scores computed on other data than their snapshot: {wrong:#?}"
    );
}

#[test]
fn a_postgres_outage_gives_503_and_the_pool_recovers_on_its_own() {
    let pg = DedicatedPostgres::start();
    let url = pg.url();
    riskhost_db(&[
        "seed",
        "--postgres-url",
        &url,
        "--postgres-schema",
        "riskhost",
    ]);
    let server = Arc::new(Server::start(&[
        "--data-source",
        "postgres",
        "--postgres-url",
        &url,
        "--postgres-pool-size",
        "4",
        "--postgres-wait-timeout-ms",
        "500",
        "--postgres-connect-timeout-ms",
        "500",
        "--data-version-ttl-ms",
        "50",
        "--events",
        "none",
    ]));
    // Every request has its own quantity, so it misses the memo and reads
    // the database.
    let counter = Arc::new(AtomicUsize::new(1));
    let score = {
        let (server, counter) = (server.clone(), counter.clone());
        move || {
            let q = counter.fetch_add(1, Ordering::Relaxed);
            server.post(
                "/v1/score",
                &json!({"model": "var-historical", "portfolio": {"positions": [
                    {"instrument": "SPX", "quantity": q}, {"instrument": "GOLD", "quantity": 1}]}}),
            )
        }
    };
    for _ in 0..10 {
        let (status, body) = score();
        assert_eq!(status, 200, "{body}");
    }

    // Load from four clients across the whole outage.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (score, stop) = (score.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.push(score());
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    pg.stop();
    let mut during = Vec::new();
    for _ in 0..10 {
        during.push(score());
    }
    pg.start_again();
    wait_until("scores succeed again", Duration::from_secs(60), || {
        score().0 == 200
    });
    stop.store(true, Ordering::Relaxed);
    let mut under_load: Vec<(u16, Value)> = Vec::new();
    for w in workers {
        under_load.extend(w.join().expect("worker"));
    }

    for (status, body) in &during {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["error"]["code"], "data_unavailable", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("PostgreSQL"), "{message}");
    }
    // Under load, every answer was a score or a clean 503: no 500, no hang
    // (the client's timeout would have failed the request).
    assert!(
        under_load
            .iter()
            .all(|(s, b)| *s == 200 || (*s == 503 && b["error"]["code"] == "data_unavailable")),
        "{:?}",
        under_load
            .iter()
            .filter(|(s, _)| *s != 200 && *s != 503)
            .collect::<Vec<_>>()
    );
    assert!(under_load.iter().any(|(s, _)| *s == 503));
    for _ in 0..10 {
        let (status, body) = score();
        assert_eq!(status, 200, "{body}");
    }
    let metrics = server.get_text("/metrics");
    for name in [
        "riskhost_db_pool_size{pool=\"postgres\"}",
        "riskhost_db_pool_in_use{pool=\"postgres\"}",
        "riskhost_db_pool_idle{pool=\"postgres\"}",
        "riskhost_db_pool_waiters{pool=\"postgres\"}",
        "riskhost_db_query_duration_seconds_count{pool=\"postgres\",query=\"price_window\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}
