//! The Prometheus scrape: after a known amount of traffic across routes
//! (scores that miss and then hit both cache tiers, a batch, errors, an
//! admin upload), `/metrics` holds conventionally named metrics with the
//! expected labels, histograms with buckets, and counts equal to what was
//! sent.

use crate::common;

use std::collections::BTreeMap;

use common::{Server, workspace};
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
