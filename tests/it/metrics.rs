//! The Prometheus scrape: after a known amount of traffic across routes
//! (scores that miss and then hit both cache tiers, a batch, errors, an
//! admin upload), `/metrics` holds conventionally named metrics with the
//! expected labels, histograms with buckets, and counts equal to what was
//! sent; the counters alerts read exist at 0 from a model's load; errors
//! are counted by whose fault they are; and `promtool check metrics`
//! accepts the scrape (every metric has HELP text).

use crate::common;

use std::collections::BTreeMap;

use common::{Server, admin_request, answer, plugins_with, put_model, test_plugins_dir, workspace};
use serde_json::json;

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/";
const TOKEN: &str = "metrics-s3cret";

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text exposition format (label values may hold `{`, `}` and
/// `,`, as routes do, but no escaped quotes).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or(f64::NAN);
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let value: String = chars.by_ref().take_while(|&c| c != '"').collect();
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                    labels.insert(key, value);
                }
                (name.to_owned(), labels)
            }
        };
        samples.push((name, labels, value));
    }
    samples
}

/// The sum of the samples of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn score(server: &Server, quantity: u32) -> u16 {
    server
        .post(
            "/v1/score",
            &json!({"model": "var-historical", "portfolio": {"positions": [{"instrument": "SPX", "quantity": quantity}]}}),
        )
        .0
}

#[test]
fn the_scrape_counts_exactly_the_traffic_sent() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let prefix = format!("riskhost-it-metrics-{}-{nanos}", std::process::id());
    let server = Server::start(&[
        "--admin-token",
        TOKEN,
        "--redis-url",
        SHARED_REDIS,
        "--redis-prefix",
        &prefix,
        "--redis-timeout-ms",
        "2000",
    ]);

    // 3 misses, then the same 3 again: hits in the in-process tier.
    for q in 1..=3 {
        assert_eq!(score(&server, q), 200);
    }
    for q in 1..=3 {
        assert_eq!(score(&server, q), 200);
    }
    // A batch of 2 portfolios × 2 models: 2 misses per model, 4 jobs.
    let (status, body) = server.post(
        "/v1/score/batch",
        &json!({"models": ["var-historical", "es-historical"], "portfolios": [{"id": "balanced"}, {"id": "tech"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(4));
    // Errors: no route, invalid parameters, unknown model.
    assert_eq!(server.get("/no/such/route").0, 404);
    let (status, _) = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": {"id": "balanced"}, "params": {"confidence": 7}}),
    );
    assert_eq!(status, 422);
    let (status, _) = server.post(
        "/v1/score",
        &json!({"model": "no-such-model", "portfolio": {"id": "balanced"}}),
    );
    assert_eq!(status, 404);
    // Admin upload of the active version (200, unchanged), and one without the token (401).
    let wasm = std::fs::read(workspace().join("plugins/dist/var-parametric.wasm")).expect("model");
    let upload = |token: Option<&str>| {
        let mut r = server
            .client
            .put(server.url("/v1/models/var-parametric"))
            .header("content-type", "application/wasm")
            .body(wasm.clone());
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        r.send().expect("PUT").status().as_u16()
    };
    assert_eq!(upload(Some(TOKEN)), 200);
    assert_eq!(upload(None), 401);

    let text = server.get_text("/metrics");
    let samples = parse(&text);

    // Names: riskhost_ prefix; counters end in _total; no summaries;
    // histograms measuring time end in _seconds.
    let mut types = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line["# TYPE ".len()..].split(' ');
        let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        types.insert(name.to_owned(), kind.to_owned());
    }
    assert!(!types.is_empty());
    for (name, kind) in &types {
        assert!(name.starts_with("riskhost_"), "{name}");
        assert_ne!(kind, "summary", "{name} is a summary, not a histogram");
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
        if name.contains("duration") || name.contains("delay") || name.contains("cpu") {
            assert!(name.ends_with("_seconds"), "{name} has no unit suffix");
        }
    }
    for (name, _, _) in &samples {
        assert!(name.starts_with("riskhost_"), "{name}");
    }
    for histogram in [
        "riskhost_http_request_duration_seconds",
        "riskhost_model_call_duration_seconds",
        "riskhost_model_cpu_seconds",
        "riskhost_model_batch_size",
        "riskhost_redis_op_duration_seconds",
        "riskhost_data_fetch_duration_seconds",
    ] {
        assert_eq!(
            types.get(histogram).map(String::as_str),
            Some("histogram"),
            "{histogram}"
        );
        let buckets = samples
            .iter()
            .filter(|(n, l, _)| *n == format!("{histogram}_bucket") && l.contains_key("le"))
            .count();
        assert!(buckets > 1, "{histogram} has no buckets");
    }

    // HTTP: by route template, method and status.
    let http = |route: &str, method: &str, status: &str| {
        value(
            &samples,
            "riskhost_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(http("/v1/score", "POST", "200"), 6.0);
    assert_eq!(http("/v1/score", "POST", "422"), 1.0);
    assert_eq!(http("/v1/score", "POST", "404"), 1.0);
    assert_eq!(http("/v1/score/batch", "POST", "200"), 1.0);
    assert_eq!(http("/v1/models/{name}", "PUT", "200"), 1.0);
    assert_eq!(http("/v1/models/{name}", "PUT", "401"), 1.0);
    assert_eq!(
        value(
            &samples,
            "riskhost_http_requests_total",
            &[("method", "GET"), ("status", "404")]
        ),
        1.0
    );
    // The latency histogram counts the same requests, in every bucket up to +Inf.
    let latency = [
        ("route", "/v1/score"),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_eq!(
        value(
            &samples,
            "riskhost_http_request_duration_seconds_count",
            &latency
        ),
        6.0
    );
    let inf: Vec<(&str, &str)> = latency.iter().copied().chain([("le", "+Inf")]).collect();
    assert_eq!(
        value(
            &samples,
            "riskhost_http_request_duration_seconds_bucket",
            &inf
        ),
        6.0
    );

    // Cache: the single misses and the batch's misses in both tiers, the
    // repeats as in-process hits.
    let lookups = |model: &str, tier: &str, result: &str| {
        value(
            &samples,
            "riskhost_cache_lookups_total",
            &[("model", model), ("tier", tier), ("result", result)],
        )
    };
    assert_eq!(lookups("var-historical", "l1", "miss"), 5.0);
    assert_eq!(lookups("var-historical", "l1", "hit"), 3.0);
    assert_eq!(lookups("var-historical", "l2", "miss"), 5.0);
    assert_eq!(lookups("var-historical", "l2", "hit"), 0.0);
    assert_eq!(lookups("es-historical", "l1", "miss"), 2.0);
    assert_eq!(lookups("es-historical", "l2", "miss"), 2.0);

    // Models: jobs scored equal the misses; batch sizes add up to them.
    let jobs = |model: &str| {
        value(
            &samples,
            "riskhost_model_jobs_total",
            &[("model", model), ("version", "1.0.0"), ("outcome", "ok")],
        )
    };
    assert_eq!(jobs("var-historical"), 5.0);
    assert_eq!(jobs("es-historical"), 2.0);
    assert_eq!(
        value(
            &samples,
            "riskhost_model_batch_size_sum",
            &[("model", "var-historical"), ("version", "1.0.0")]
        ),
        5.0
    );
    assert!(
        value(
            &samples,
            "riskhost_model_call_duration_seconds_count",
            &[("model", "es-historical"), ("version", "1.0.0")]
        ) >= 1.0
    );
    assert_eq!(value(&samples, "riskhost_model_errors_total", &[]), 0.0);
    assert_eq!(value(&samples, "riskhost_models_loaded", &[]), 3.0);
}

/// Sends `method path` on a fresh connection and returns the status line.
fn raw_request(server: &Server, method: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let addr = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// An unauthenticated caller cannot grow the scrape: every label takes its
/// values from a bounded set, whatever methods and paths are sent.
#[test]
fn odd_methods_and_paths_do_not_grow_the_scrape() {
    let server = Server::start(&[]);
    // Methods are tokens: any of these characters, any length.
    const TCHAR: &[u8] =
        b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut method = |len: usize| -> String {
        (0..len)
            .map(|_| char::from(TCHAR[next() as usize % TCHAR.len()]))
            .collect()
    };
    let paths = |i: usize| match i % 3 {
        0 => "/healthz".to_owned(),
        1 => "/v1/score".to_owned(),
        _ => format!("/nowhere/{i}"),
    };
    // One odd request per (path kind, status) first, so the series the flood
    // may legitimately use exist before the baseline is taken.
    for i in 0..3 {
        let status = raw_request(&server, "BREW", &paths(i));
        assert!(status.starts_with("HTTP/1.1 4"), "{status}");
    }
    let _ = server.get_text("/metrics");
    let before = server.get_text("/metrics").len();

    let flood = 200;
    for i in 0..flood {
        let len = if i % 10 == 0 {
            1000 + i * 7
        } else {
            1 + i % 40
        };
        let odd = format!("X{}", method(len));
        let status = raw_request(&server, &odd, &paths(i));
        assert!(
            status.starts_with("HTTP/1.1 4"),
            "{} bytes: {status}",
            odd.len()
        );
    }

    let text = server.get_text("/metrics");
    // Counts and sums grow by a few digits; a new series per method would
    // add kilobytes per request.
    assert!(
        text.len() < before + 2048,
        "the scrape grew from {before} to {} bytes",
        text.len()
    );
    let samples = parse(&text);
    assert_eq!(
        value(
            &samples,
            "riskhost_http_requests_total",
            &[("method", "other")]
        ),
        (flood + 3) as f64
    );
    assert_eq!(
        value(
            &samples,
            "riskhost_http_requests_total",
            &[("route", "unmatched"), ("method", "other")]
        ),
        (flood / 3 + 1) as f64
    );
    // The standard methods keep their names.
    assert!(
        value(
            &samples,
            "riskhost_http_requests_total",
            &[("method", "GET")]
        ) >= 2.0
    );
}

/// `promtool check metrics` on `text`: its exit status and what it printed.
fn promtool_check(text: &str) -> (Option<i32>, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`): run tests/tools.sh, as tests/run.sh does");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the scrape to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), printed)
}

/// Issue 23, findings 4 to 6. Right after the models load, the counters
/// alerts read exist at 0 (so `increase()` counts the first event); after
/// traffic that reaches most paths (cache misses and hits in both tiers,
/// a batch, a model trap, a quantity too large to value, an auth failure,
/// an upload that swaps, a delete and a re-upload), errors are counted by
/// cause and `promtool check metrics` accepts the scrape.
#[test]
fn promtool_accepts_the_scrape_and_alerted_counters_start_at_zero() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let prefix = format!("riskhost-it-promtool-{}-{nanos}", std::process::id());
    let plugins = plugins_with(
        &["var-historical", "var-parametric"],
        &["hostile-panic", "versioned-a"],
    );
    let server = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--admin-token",
        TOKEN,
        "--redis-url",
        SHARED_REDIS,
        "--redis-prefix",
        &prefix,
        "--redis-timeout-ms",
        "2000",
    ]);

    // At load, before any request: every label value, at 0.
    let samples = parse(&server.get_text("/metrics"));
    let at_zero = |name: &str, labels: &[(&str, &str)]| {
        let found: Vec<f64> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(found, [0.0], "{name} {labels:?}");
    };
    at_zero("riskhost_model_load_failures_total", &[]);
    for (model, version) in [
        ("var-historical", "1.0.0"),
        ("var-parametric", "1.0.0"),
        ("hostile-panic", "1.0.0"),
        ("versioned", "1.0.0"),
    ] {
        let mv = [("model", model), ("version", version)];
        for kind in [
            "model_timeout",
            "model_resource_exhausted",
            "model_trap",
            "model_unavailable",
        ] {
            at_zero(
                "riskhost_model_errors_total",
                &[mv[0], mv[1], ("kind", kind)],
            );
        }
        for outcome in ["ok", "invalid_input", "insufficient_data", "internal"] {
            at_zero(
                "riskhost_model_jobs_total",
                &[mv[0], mv[1], ("outcome", outcome)],
            );
        }
        at_zero("riskhost_model_rejected_total", &[mv[0]]);
        at_zero("riskhost_model_swaps_total", &[mv[0]]);
        at_zero("riskhost_cache_coalesced_total", &[mv[0]]);
        for (tier, result) in [
            ("l1", "hit"),
            ("l1", "miss"),
            ("l2", "hit"),
            ("l2", "miss"),
            ("l2", "bypass"),
            ("l2", "error"),
        ] {
            at_zero(
                "riskhost_cache_lookups_total",
                &[mv[0], ("tier", tier), ("result", result)],
            );
        }
    }
    for cause in ["caller", "model", "server"] {
        at_zero(
            "riskhost_http_errors_total",
            &[("route", "/v1/score"), ("cause", cause)],
        );
    }

    // Traffic. Scores: 2 misses, the same 2 again (in-process hits).
    for _ in 0..2 {
        for q in 1..=2 {
            assert_eq!(score(&server, q), 200);
        }
    }
    let (status, body) = server.post(
        "/v1/score/batch",
        &json!({"models": ["var-historical", "var-parametric"], "portfolios": [{"id": "balanced"}]}),
    );
    assert_eq!(status, 200, "{body}");
    // The caller's mistakes: invalid parameters, and a quantity whose
    // valuation overflows f64 (422 before any model runs, not a 500).
    let (status, body) = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": {"id": "balanced"}, "params": {"confidence": 7}}),
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = server.post(
        "/v1/score",
        &json!({"model": "var-historical", "portfolio": {"positions": [{"instrument": "SPX", "quantity": 1e306}]}}),
    );
    assert_eq!(status, 422, "{body}");
    // A model's failure: it traps on this input, twice (never memoized).
    for _ in 0..2 {
        let (status, body) = server.post(
            "/v1/score",
            &json!({"model": "hostile-panic", "portfolio": {"id": "balanced"}, "params": {"misbehave": 1}}),
        );
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["error"]["code"], "model_trap", "{body}");
    }
    // An unknown key.
    let (status, _) = answer(
        admin_request(
            &server,
            "nosuchkey.wrong-secret",
            reqwest::Method::GET,
            "/v1/models",
        )
        .send(),
    );
    assert_eq!(status, 401);
    // A swap, then a delete and a re-upload of another model.
    let b = std::fs::read(test_plugins_dir().join("versioned-b.wasm")).expect("versioned-b");
    let (status, body) = put_model(&server, TOKEN, "versioned", b, None);
    assert_eq!(status, 201, "{body}");
    let (status, body) = answer(
        admin_request(
            &server,
            TOKEN,
            reqwest::Method::DELETE,
            "/v1/models/var-parametric",
        )
        .send(),
    );
    assert_eq!(status, 200, "{body}");
    let parametric =
        std::fs::read(workspace().join("plugins/dist/var-parametric.wasm")).expect("model");
    let (status, body) = put_model(&server, TOKEN, "var-parametric", parametric, None);
    assert!(matches!(status, 200 | 201), "{body}");
    assert_eq!(body["changed"], true, "{body}");

    let text = server.get_text("/metrics");
    let samples = parse(&text);
    let errors = |cause: &str| {
        value(
            &samples,
            "riskhost_http_errors_total",
            &[("route", "/v1/score"), ("cause", cause)],
        )
    };
    assert_eq!(errors("caller"), 2.0, "the 422s are the caller's");
    assert_eq!(errors("model"), 2.0, "the traps are the model's");
    assert_eq!(errors("server"), 0.0, "nothing failed on the server side");
    assert_eq!(
        value(
            &samples,
            "riskhost_model_errors_total",
            &[("model", "hostile-panic"), ("kind", "model_trap")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "riskhost_auth_failures_total",
            &[("reason", "invalid_key")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "riskhost_model_swaps_total",
            &[("model", "versioned")]
        ),
        1.0
    );
    // Re-uploaded after its delete: no swap (nothing was active), but the
    // series is there for the next one.
    let swaps: Vec<_> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == "riskhost_model_swaps_total"
                && l.get("model").map(String::as_str) == Some("var-parametric")
        })
        .collect();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(swaps[0].2, 0.0);
    assert_eq!(
        value(
            &samples,
            "riskhost_cache_lookups_total",
            &[("tier", "l1"), ("result", "hit")]
        ),
        2.0
    );

    // Every metric has HELP text and follows the conventions promtool knows.
    let described: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = line.split(' ').next().unwrap_or_default();
        assert!(described.contains(&name), "{name} has no HELP text");
    }
    let (status, printed) = promtool_check(&text);
    assert!(!printed.contains("no help text"), "{printed}");
    assert_eq!(status, Some(0), "promtool check metrics: {printed}\n{text}");

    // A second replica on the same Redis: the two scores the first one
    // stored are L2 hits there (each an l1 miss and an l2 hit), a third is
    // a miss in both. 2 of its 3 requests came from the memo, and that is
    // the hit rate the alert and the dashboard compute; counting every
    // lookup result as a lookup would say 2 of 6.
    let plugins = plugins_with(&["var-historical"], &[]);
    let replica = Server::start_with(&[
        "--plugins",
        plugins.path().to_str().unwrap_or_default(),
        "--redis-url",
        SHARED_REDIS,
        "--redis-prefix",
        &prefix,
        "--redis-timeout-ms",
        "2000",
    ]);
    for q in 1..=3 {
        assert_eq!(score(&replica, q), 200);
    }
    let samples = parse(&replica.get_text("/metrics"));
    let lookups =
        |selector: &[(&str, &str)]| value(&samples, "riskhost_cache_lookups_total", selector);
    assert_eq!(lookups(&[("tier", "l2"), ("result", "hit")]), 2.0);
    let hit_rate = lookups(&[("result", "hit")]) / lookups(&[("tier", "l1")]);
    assert_eq!(hit_rate, 2.0 / 3.0);
    assert_eq!(
        value(
            &samples,
            "riskhost_model_jobs_total",
            &[("model", "var-historical"), ("outcome", "ok")]
        ),
        1.0,
        "the model ran for the third request only"
    );
}
