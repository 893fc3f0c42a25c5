//! End-to-end tests of backtesting against the real binary: a backtest's
//! VaR per day equals `POST /v1/score` as of that day bit for bit, its P&L
//! is the closes' difference, it is memoized like any score, the CLI gives
//! the same answer, bad input is refused field by field, and the report
//! renders in a real browser with one bar per day and one mark per
//! exception.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Server, TempDir, assert_error, binary, plugins_with, workspace};
use serde_json::{Value, json};

/// The instruments of the generated data, in the canonical (sorted) order.
const INSTRUMENTS: [&str; 3] = ["AAA", "BBB", "CCC"];
const QUANTITIES: [f64; 3] = [120.0, -35.0, 80.0];
const LOOKBACK: usize = 20;
const DAYS: usize = 90;

/// Business days from 2021-01-04, and per instrument a random walk with a
/// few crashes, so that a 95 % VaR over 20 days is exceeded now and then.
struct Prices {
    dates: Vec<chrono::NaiveDate>,
    closes: Vec<Vec<f64>>,
}

impl Prices {
    fn generate() -> Prices {
        let mut dates = Vec::new();
        let mut day = chrono::NaiveDate::from_ymd_opt(2021, 1, 4).expect("date");
        while dates.len() < DAYS {
            if !matches!(
                chrono::Datelike::weekday(&day),
                chrono::Weekday::Sat | chrono::Weekday::Sun
            ) {
                dates.push(day);
            }
            day = day.succ_opt().expect("date");
        }
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let closes = INSTRUMENTS
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let mut close = 100.0 + 25.0 * i as f64;
                (0..DAYS)
                    .map(|t| {
                        if t > 0 {
                            let crash = if t % 17 == 5 { -0.06 } else { 0.0 };
                            let r = (uniform() - 0.5) * 0.03 + crash;
                            close = (close * (1.0 + r) * 1e4).round() / 1e4;
                        }
                        close
                    })
                    .collect()
            })
            .collect();
        Prices { dates, closes }
    }

    fn write_csv(&self, path: &Path) {
        let mut text = String::from("date,instrument,close\n");
        for (t, date) in self.dates.iter().enumerate() {
            for (i, id) in INSTRUMENTS.iter().enumerate() {
                text.push_str(&format!("{date},{id},{}\n", self.closes[i][t]));
            }
        }
        std::fs::write(path, text).expect("write prices");
    }

    /// Σ quantity × (close(t+1) − close(t)), in the canonical order.
    fn pnl(&self, t: usize) -> f64 {
        let mut pnl = 0.0;
        for (i, q) in QUANTITIES.iter().enumerate() {
            pnl += q * (self.closes[i][t + 1] - self.closes[i][t]);
        }
        pnl
    }
}

fn portfolio() -> Value {
    json!({
        "id": "book",
        "positions": INSTRUMENTS.iter().zip(QUANTITIES).map(|(id, q)| json!({"instrument": id, "quantity": q})).collect::<Vec<_>>(),
    })
}

fn params() -> Value {
    json!({"confidence": 0.95, "lookback_days": LOOKBACK})
}

/// A server over the generated data with the example models and the test
/// model that is no VaR.
fn start(dir: &TempDir, extra: &[&str]) -> (Server, TempDir) {
    let prices = dir.path().join("prices.csv");
    if !prices.exists() {
        Prices::generate().write_csv(&prices);
    }
    let plugins = plugins_with(&["var-historical", "es-historical"], &["slow-exposure"]);
    let mut args = vec![
        "--plugins",
        plugins.path().to_str().expect("utf-8"),
        "--prices",
        prices.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    (Server::start_with(&args), plugins)
}

fn run_backtest(server: &Server, from: &str, to: &str) -> (u16, Value) {
    server.post(
        "/v1/backtests",
        &json!({"model": "var-historical", "portfolios": [portfolio()], "from": from, "to": to, "params": params()}),
    )
}

#[test]
fn every_day_equals_the_single_score_as_of_that_day_and_the_pnl_its_closes() {
    let prices = Prices::generate();
    let dir = TempDir::new("backtest-e2e");
    // Two servers over the same data: the single scores are computed by one,
    // the backtest by the other, so neither answer comes from the other's memo.
    let (singles, _p1) = start(&dir, &[]);
    let (backtester, _p2) = start(&dir, &[]);
    let (first, last) = (LOOKBACK + 5, DAYS - 1);
    let (status, answer) = run_backtest(
        &backtester,
        &prices.dates[first].to_string(),
        &prices.dates[last].to_string(),
    );
    assert_eq!(status, 201, "{answer}");
    // The last date has no next day: it is not tested.
    assert_eq!(answer["first_day"], prices.dates[first].to_string());
    assert_eq!(answer["last_day"], prices.dates[last - 1].to_string());
    assert_eq!(answer["confidence"], 0.95);
    assert!(
        answer["horizon"]
            .as_str()
            .unwrap_or_default()
            .contains("forced to 1"),
        "{answer}"
    );
    let tested = &answer["portfolios"][0];
    let days = tested["days"].as_array().expect("days");
    assert_eq!(days.len(), last - first);
    assert_eq!(tested["observations"], (last - first) as u64);

    let mut exceptions = 0;
    for (k, day) in days.iter().enumerate() {
        let t = first + k;
        let date = prices.dates[t].to_string();
        assert_eq!(day["date"], date);
        let (status, single) = singles.post(
            "/v1/score",
            &json!({"model": "var-historical", "portfolio": portfolio(), "as_of": date,
                    "params": {"confidence": 0.95, "lookback_days": LOOKBACK, "horizon_days": 1}}),
        );
        assert_eq!(status, 200, "{single}");
        let (var, want) = (
            day["var"].as_f64().expect("var"),
            single["value"].as_f64().expect("value"),
        );
        assert_eq!(
            var.to_bits(),
            want.to_bits(),
            "{date}: backtest {var} vs single {want}"
        );
        let pnl = day["pnl"].as_f64().expect("pnl");
        assert_eq!(pnl.to_bits(), prices.pnl(t).to_bits(), "{date}: P&L {pnl}");
        let exception = pnl < -var;
        assert_eq!(day["exception"], exception, "{date}");
        exceptions += usize::from(exception);
    }
    assert!(
        exceptions > 0,
        "the data's crashes should exceed the VaR at least once"
    );
    assert_eq!(tested["exceptions"], exceptions as u64);
    let expected = (last - first) as f64 * 0.05;
    assert!((tested["expected_exceptions"].as_f64().expect("expected") - expected).abs() < 1e-9);
    for field in ["lr", "p_value"] {
        assert!(
            tested["kupiec"][field].as_f64().is_some_and(f64::is_finite),
            "{tested}"
        );
    }
    assert!(
        ["green", "yellow", "red"].contains(&tested["traffic_light"].as_str().unwrap_or_default())
    );

    // Kept: the same answer again, and the report.
    let id = answer["id"].as_str().expect("id");
    let (status, again) = backtester.get(&format!("/v1/backtests/{id}"));
    assert_eq!(status, 200);
    assert_eq!(again, answer);
    assert_eq!(
        answer["report_url"],
        format!("/v1/backtests/{id}/report.html")
    );
    let page = backtester.get_text(&format!("/v1/backtests/{id}/report.html"));
    assert_eq!(page.matches("fill=\"#4C72B0\"").count(), days.len());
    assert_eq!(page.matches("fill=\"#D62728\"").count(), exceptions);
}

#[test]
fn a_backtest_is_memoized_and_metered_like_any_score() {
    let dir = TempDir::new("backtest-memo");
    let (server, _plugins) = start(&dir, &[]);
    // Every outcome's series (they exist at 0 from the model's load).
    let jobs = |s: &Server| -> f64 {
        s.get_text("/metrics")
            .lines()
            .filter(|l| l.starts_with("riskhost_model_jobs_total{model=\"var-historical\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (status, first) = run_backtest(&server, "2021-02-15", "2021-04-30");
    assert_eq!(status, 201, "{first}");
    let computed = jobs(&server);
    assert!(computed >= 50.0, "each day is one model job: {computed}");
    let (status, second) = run_backtest(&server, "2021-02-15", "2021-04-30");
    assert_eq!(status, 201, "{second}");
    assert_eq!(
        jobs(&server),
        computed,
        "the second run is served from the memo"
    );
    assert_ne!(first["id"], second["id"]);
    assert_eq!(first["portfolios"], second["portfolios"]);
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let dir = TempDir::new("backtest-bad");
    let (server, _plugins) = start(&dir, &["--backtest-max-cells", "30"]);
    let body = |from: &str, to: &str| json!({"model": "var-historical", "portfolios": [portfolio()], "from": from, "to": to, "params": params()});
    let post = |b: Value| server.post("/v1/backtests", &b);

    assert_error(
        &post(body("2021-03-10", "2021-03-01")),
        422,
        "invalid_backtest",
        "`from`",
    );
    assert_error(
        &post(body("1999-01-04", "2021-03-01")),
        422,
        "invalid_backtest",
        "outside the data",
    );
    assert_error(
        &post(body("2021-03-01", "2031-03-01")),
        422,
        "invalid_backtest",
        "`to`",
    );
    assert_error(
        &post(body("2021-03-01", "2021-03-01")),
        422,
        "invalid_backtest",
        "at least 2",
    );
    // 20 returns of history are needed before the first day.
    assert_error(
        &post(body("2021-01-05", "2021-03-01")),
        422,
        "invalid_backtest",
        "earliest `from`",
    );
    // 1 portfolio × ~45 days is over --backtest-max-cells 30.
    assert_error(
        &post(body("2021-02-15", "2021-04-20")),
        422,
        "invalid_backtest",
        "backtest-max-cells",
    );
    assert_error(
        &post(
            json!({"model": "no-such-model", "portfolios": [portfolio()], "from": "2021-03-01", "to": "2021-03-10"}),
        ),
        404,
        "unknown_model",
        "no-such-model",
    );
    assert_error(
        &post(
            json!({"model": "slow-exposure", "portfolios": [portfolio()], "from": "2021-03-01", "to": "2021-03-10"}),
        ),
        422,
        "not_backtestable",
        "confidence",
    );
    assert_error(
        &post(
            json!({"model": "var-historical", "portfolios": [], "from": "2021-03-01", "to": "2021-03-10"}),
        ),
        422,
        "invalid_backtest",
        "`portfolios`",
    );
    assert_error(
        &post(
            json!({"model": "var-historical", "portfolios": [portfolio()], "from": "2021-03-01", "to": "2021-03-10", "params": {"confidence": 1.5}}),
        ),
        422,
        "invalid_params",
        "confidence",
    );
    assert_error(
        &post(
            json!({"model": "var-historical", "portfolios": [portfolio()], "from": "2021-03-01"}),
        ),
        422,
        "invalid_body",
        "to",
    );
    assert_error(
        &post(
            json!({"model": "var-historical", "portfolios": [portfolio()], "from": "03/01/2021", "to": "2021-03-10"}),
        ),
        422,
        "invalid_body",
        "from",
    );
    let (status, malformed) = server.post_raw("/v1/backtests", "application/json", "{\"model\":");
    assert_eq!(status, 400, "{malformed}");
    assert_eq!(malformed["error"]["code"], "malformed_json");
    assert_error(
        &server.get("/v1/backtests/bt-unknown"),
        404,
        "unknown_backtest",
        "bt-unknown",
    );

    // A portfolio that cannot be valued fails alone; the others are tested.
    let (status, mixed) = server.post(
        "/v1/backtests",
        &json!({"model": "var-historical", "from": "2021-03-01", "to": "2021-03-05", "params": params(),
                "portfolios": [portfolio(), {"id": "ghost", "positions": [{"instrument": "ZZZ", "quantity": 1}]}]}),
    );
    assert_eq!(status, 201, "{mixed}");
    assert_eq!(mixed["portfolios"][0]["observations"], 5);
    assert_eq!(
        mixed["portfolios"][1]["error"]["code"], "unknown_instrument",
        "{mixed}"
    );
}

#[test]
fn the_cli_answers_what_the_server_answers() {
    let dir = TempDir::new("backtest-cli");
    let (server, plugins) = start(&dir, &[]);
    let (status, served) = run_backtest(&server, "2021-02-15", "2021-03-31");
    assert_eq!(status, 201, "{served}");

    let portfolio_file = dir.path().join("book.json");
    std::fs::write(&portfolio_file, portfolio().to_string()).expect("write portfolio");
    let (report, json_out) = (
        dir.path().join("report.html"),
        dir.path().join("backtest.json"),
    );
    let output = Command::new(binary())
        .args([
            "backtest",
            "--model",
            "var-historical",
            "--from",
            "2021-02-15",
            "--to",
            "2021-03-31",
        ])
        .args([
            "--param",
            "confidence=0.95",
            "--param",
            &format!("lookback_days={LOOKBACK}"),
        ])
        .arg("--portfolio")
        .arg(&portfolio_file)
        .arg("--plugins")
        .arg(plugins.path())
        .arg("--prices")
        .arg(dir.path().join("prices.csv"))
        .arg("--out")
        .arg(&report)
        .arg("--json")
        .arg(&json_out)
        .output()
        .expect("run riskhost backtest");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("book: "),
        "a verdict line per portfolio: {stderr}"
    );
    let cli: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_out).expect("json")).expect("parse");
    assert_eq!(cli["portfolios"], served["portfolios"]);
    assert_eq!(cli["digest"], served["digest"]);
    assert_eq!(cli["snapshot"], served["snapshot"]);
    let page = std::fs::read_to_string(&report).expect("report");
    let days = served["portfolios"][0]["observations"].as_u64().expect("T") as usize;
    assert_eq!(page.matches("fill=\"#4C72B0\"").count(), days);
}

/// Headless Chromium (Debian's `chromium`, installed by `tests/run.sh`).
fn chromium() -> String {
    for candidate in ["chromium", "chromium-browser"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return candidate.to_owned();
        }
    }
    panic!("chromium is not installed: tests/run.sh installs Debian's `chromium`");
}

fn chromium_command(profile: &TempDir) -> Command {
    let mut command = Command::new(chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--hide-scrollbars",
    ]);
    command.arg(format!("--user-data-dir={}", profile.path().display()));
    command
}

#[test]
fn the_report_renders_in_a_real_browser_with_a_bar_per_day_and_a_mark_per_exception() {
    let dir = TempDir::new("backtest-browser");
    let (server, _plugins) = start(&dir, &[]);
    let (status, answer) = run_backtest(&server, "2021-02-15", "2021-05-07");
    assert_eq!(status, 201, "{answer}");
    let tested = &answer["portfolios"][0];
    let (days, exceptions) = (
        tested["observations"].as_u64().expect("T") as usize,
        tested["exceptions"].as_u64().expect("x") as usize,
    );
    assert!(exceptions > 0, "{tested}");
    let page = server.get_text(answer["report_url"].as_str().expect("report_url"));
    let file = dir.path().join("report.html");
    std::fs::write(&file, page).expect("write report");
    let url = format!("file://{}", file.display());

    // The DOM the browser built: count the chart's bars and marks in it.
    let profile = TempDir::new("chromium-dom");
    let dom = chromium_command(&profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("run chromium --dump-dom");
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    let bars = dom.matches("fill=\"#4C72B0\"").count();
    let marks = dom.matches("fill=\"#D62728\"").count();
    assert_eq!(
        (bars, marks),
        (days, exceptions),
        "bars and exception marks in the DOM"
    );
    assert!(dom.contains("<svg"), "the chart is inline SVG");

    // A screenshot that is not blank: many distinct colours, and the
    // exception red among them.
    let profile = TempDir::new("chromium-shot");
    let shot = dir.path().join("report.png");
    let out = chromium_command(&profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1100,900")
        .arg(&url)
        .output()
        .expect("run chromium --screenshot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("open screenshot"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("png frame");
    let channels = info.color_type.samples();
    let pixels = &pixels[..info.buffer_size()];
    let colours: std::collections::HashSet<&[u8]> = pixels.chunks(channels).collect();
    assert!(
        colours.len() > 16,
        "the screenshot is blank: {} colours",
        colours.len()
    );
    let white = pixels
        .chunks(channels)
        .filter(|p| p[..3].iter().all(|c| *c > 245))
        .count();
    let total = pixels.len() / channels;
    assert!(
        white < total * 98 / 100,
        "the screenshot is {white} of {total} white pixels"
    );
    assert!(
        pixels
            .chunks(channels)
            .any(|p| p[0] > 180 && p[1] < 80 && p[2] < 80),
        "no exception red on screen"
    );
}

#[test]
fn the_statistics_match_scipy() {
    // tests/backtest_fixtures.py computes Kupiec, Christoffersen and the
    // traffic light's binomial probability with scipy.stats for fixed
    // exception sequences; the server must agree on each.
    let python = std::env::var("RISKHOST_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .arg(workspace().join("tests/backtest_fixtures.py"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e} (tests/run.sh sets RISKHOST_TEST_PYTHON)")
        });
    assert!(
        output.status.success(),
        "tests/backtest_fixtures.py failed (scipy is installed by tests/run.sh): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fixtures: Vec<Value> = serde_json::from_slice(&output.stdout).expect("fixtures JSON");
    assert!(fixtures.len() >= 6);
    for fixture in &fixtures {
        let sequence: Vec<bool> = fixture["exceptions"]
            .as_array()
            .expect("exceptions")
            .iter()
            .map(|v| v.as_bool().expect("bool"))
            .collect();
        let confidence = fixture["confidence"].as_f64().expect("confidence");
        let got = riskhost_backtest::coverage(&sequence, confidence);
        let name = fixture["name"].as_str().unwrap_or_default();
        let close = |got: f64, want: &Value, what: &str| {
            let want = want
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: {what} missing"));
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1e-3),
                "{name}: {what} is {got}, scipy says {want}"
            );
        };
        close(got.kupiec.lr, &fixture["kupiec_lr"], "Kupiec LR");
        close(got.kupiec.p_value, &fixture["kupiec_p"], "Kupiec p");
        close(got.christoffersen.lr_ind, &fixture["lr_ind"], "LR_ind");
        close(got.christoffersen.p_value_ind, &fixture["p_ind"], "p_ind");
        close(got.christoffersen.lr_cc, &fixture["lr_cc"], "LR_cc");
        close(got.christoffersen.p_value_cc, &fixture["p_cc"], "p_cc");
        close(
            got.cumulative_probability,
            &fixture["binom_cdf"],
            "P(X ≤ x)",
        );
        assert_eq!(got.traffic_light.as_str(), fixture["zone"], "{name}: zone");
    }
}

#[test]
fn every_day_of_a_backtest_is_a_score_event_marked_backtest() {
    use crate::common::db::{ChDatabase, ch_query, ch_url, wait_until};
    let ch = ChDatabase::new(&ch_url(), "backtest");
    let dir = TempDir::new("backtest-events");
    let (server, _plugins) = start(
        &dir,
        &[
            "--clickhouse-url",
            &ch.url,
            "--clickhouse-database",
            &ch.name,
            "--events-flush-ms",
            "100",
        ],
    );
    let (status, answer) = run_backtest(&server, "2021-02-15", "2021-03-31");
    assert_eq!(status, 201, "{answer}");
    let days = answer["portfolios"][0]["observations"].as_u64().expect("T");
    let query = |sql: &str| {
        ch_query(
            &ch.url,
            &sql.replace("{table}", &format!("{}.score_events", ch.name)),
        )
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    };
    wait_until(
        "the backtest's events are in ClickHouse",
        Duration::from_secs(30),
        || query("SELECT count() FROM {table} WHERE path = 'backtest'") == Some(days),
    );
    // One event per day, each as of its own day, with the day's score.
    assert_eq!(
        query(
            "SELECT uniqExact(as_of) FROM {table} WHERE path = 'backtest' AND portfolio_id = 'book' AND value > 0"
        ),
        Some(days)
    );
    assert_eq!(
        query("SELECT count() FROM {table} WHERE path != 'backtest'"),
        Some(0)
    );
}
