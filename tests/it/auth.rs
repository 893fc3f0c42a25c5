//! API keys, scopes and limits against the real binary: the authorization
//! matrix (every route × no key, malformed header, unknown key, wrong
//! secret, score key, admin key), per-key rate limits under a flood,
//! anonymous scoring, the global concurrency limit and request timeout,
//! keys in PostgreSQL (with revocation) and key ids in ClickHouse events.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::db::{ChDatabase, PgSchema, ch_query, ch_url, psql, wait_until};
use common::{Server, TempDir, assert_error, binary, plugins_with};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A made-up token for `id` and the `--api-key` value holding its hash.
fn key(id: &str, scope: &str, extra: &str) -> (String, String) {
    let token = format!("{id}.{}", hex::encode(Sha256::digest(id.as_bytes())));
    let spec = format!(
        "{id}:sha256={},scopes={scope}{extra}",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    (token, spec)
}

/// `riskhost key new`: the token it prints once, and the whole output.
fn key_new(args: &[&str]) -> (String, String) {
    let out = Command::new(binary())
        .args(["key", "new"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run riskhost key new");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "key new failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = stdout
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("a token line")
        .trim()
        .to_owned();
    (token, stdout)
}

/// Sends a request with `authorization` as the raw header value.
fn send(
    server: &Server,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    authorization: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = server.client.request(method, server.url(path));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if let Some((content_type, bytes)) = body {
        request = request.header("content-type", content_type).body(bytes);
    }
    let response = request.send().expect("request failed");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.json().unwrap_or(Value::Null), headers)
}

struct Route {
    method: Method,
    path: &'static str,
    body: Option<(&'static str, Vec<u8>)>,
    admin: bool,
    /// Status and error code (if any) once authorized.
    allowed: (u16, Option<&'static str>),
}

fn json_body(v: Value) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/json", serde_json::to_vec(&v).unwrap()))
}

fn routes() -> Vec<Route> {
    let portfolio = json!({"id": "p", "positions": [{"instrument": "SPX", "quantity": 10}]});
    vec![
        Route {
            method: Method::POST,
            path: "/v1/score",
            body: json_body(json!({"model": "var-historical", "portfolio": portfolio})),
            admin: false,
            allowed: (200, None),
        },
        Route {
            method: Method::POST,
            path: "/v1/score/batch",
            body: json_body(json!({"models": ["var-historical"], "portfolios": [portfolio]})),
            admin: false,
            allowed: (200, None),
        },
        Route {
            method: Method::GET,
            path: "/v1/models",
            body: None,
            admin: false,
            allowed: (200, None),
        },
        Route {
            method: Method::GET,
            path: "/v1/fleet",
            body: None,
            admin: false,
            allowed: (200, None),
        },
        Route {
            method: Method::GET,
            path: "/v1/models/var-historical/versions",
            body: None,
            admin: false,
            allowed: (200, None),
        },
        Route {
            method: Method::GET,
            path: "/v1/portfolios/p/scores",
            body: None,
            admin: false,
            // No ClickHouse here: the route answers, but has nothing.
            allowed: (404, Some("history_not_configured")),
        },
        Route {
            method: Method::GET,
            path: "/v1/portfolios/p/stats",
            body: None,
            admin: false,
            allowed: (404, Some("history_not_configured")),
        },
        Route {
            method: Method::GET,
            path: "/v1/models/var-historical/stats",
            body: None,
            admin: false,
            allowed: (404, Some("history_not_configured")),
        },
        Route {
            method: Method::POST,
            path: "/v1/backtests",
            // A valid request over a range the bundled data cannot test:
            // authorized callers reach the backtest's own validation.
            body: json_body(
                json!({"model": "var-historical", "portfolios": [portfolio], "from": "1990-01-02", "to": "1990-02-01"}),
            ),
            admin: false,
            allowed: (422, Some("invalid_backtest")),
        },
        Route {
            method: Method::GET,
            path: "/v1/backtests/bt-none",
            body: None,
            admin: false,
            allowed: (404, Some("unknown_backtest")),
        },
        Route {
            method: Method::GET,
            path: "/v1/backtests/bt-none/report.html",
            body: None,
            admin: false,
            allowed: (404, Some("unknown_backtest")),
        },
        Route {
            method: Method::POST,
            path: "/v1/runs",
            // A selection of nothing: authorized callers reach the run's
            // own validation, and no run is left behind.
            body: json_body(json!({"models": ["var-historical"], "portfolios": {"ids": []}})),
            admin: false,
            allowed: (422, Some("empty_selection")),
        },
        Route {
            method: Method::GET,
            path: "/v1/runs",
            body: None,
            admin: false,
            allowed: (200, None),
        },
        Route {
            method: Method::GET,
            path: "/v1/runs/run-none",
            body: None,
            admin: false,
            allowed: (404, Some("unknown_run")),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/runs/run-none",
            body: None,
            admin: false,
            allowed: (404, Some("unknown_run")),
        },
        Route {
            method: Method::GET,
            path: "/v1/runs/run-none/results",
            body: None,
            admin: false,
            allowed: (404, Some("unknown_run")),
        },
        Route {
            method: Method::PUT,
            path: "/v1/models/var-historical",
            body: Some(("application/wasm", b"\0asm-not-a-component".to_vec())),
            admin: true,
            allowed: (422, Some("invalid_model")),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/models/no-such-model",
            body: None,
            admin: true,
            allowed: (404, Some("unknown_model")),
        },
        Route {
            method: Method::POST,
            path: "/v1/models/var-historical/rollback",
            body: None,
            admin: true,
            allowed: (409, Some("no_previous_version")),
        },
        Route {
            method: Method::PUT,
            path: "/v1/models/var-historical/challenger",
            body: Some(("application/json", br#"{"version": "9.9.9"}"#.to_vec())),
            admin: true,
            allowed: (404, Some("unknown_model_version")),
        },
        Route {
            method: Method::GET,
            path: "/v1/models/var-historical/challenger",
            body: None,
            admin: true,
            allowed: (404, Some("no_challenger")),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/models/var-historical/challenger",
            body: None,
            admin: true,
            allowed: (404, Some("no_challenger")),
        },
        Route {
            method: Method::POST,
            path: "/v1/models/var-historical/promote",
            body: None,
            admin: true,
            allowed: (404, Some("no_challenger")),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/cache",
            body: None,
            admin: true,
            allowed: (200, None),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/cache/var-historical",
            body: None,
            admin: true,
            allowed: (200, None),
        },
        Route {
            method: Method::POST,
            path: "/v1/replay",
            // The matrix's server records no score events.
            body: json_body(json!({"request_id": "any"})),
            admin: true,
            allowed: (404, Some("replay_not_configured")),
        },
    ]
}

#[test]
fn the_matrix_covers_every_protected_route() {
    let matrix = routes();
    for (method, template, scope) in common::routes::ROUTES {
        let Some(scope) = scope else { continue };
        let entries: Vec<&Route> = matrix
            .iter()
            .filter(|r| r.method.as_str() == *method && common::routes::matches(template, r.path))
            .collect();
        assert_eq!(
            entries.len(),
            1,
            "{method} {template} (scope {scope}) needs exactly one row in the authorization matrix"
        );
        assert_eq!(
            entries[0].admin,
            *scope == "admin",
            "{method} {template}: the matrix disagrees with the route list on its scope"
        );
    }
    for r in &matrix {
        assert!(
            common::routes::ROUTES
                .iter()
                .any(|(m, t, s)| *m == r.method.as_str()
                    && s.is_some()
                    && common::routes::matches(t, r.path)),
            "{} {} is in the matrix but not a protected route of the list",
            r.method,
            r.path
        );
    }
}

#[test]
fn every_route_answers_each_kind_of_caller_as_its_scope_says() {
    // The score key comes from `riskhost key new`, whose printed entry goes
    // into a keys file; the admin key is an [[api_keys]] table of the
    // configuration file. (`--api-key` flags, used below, would replace the
    // file's keys: a flag wins over the file.)
    let (score_token, printed) = key_new(&["--id", "svc", "--scope", "score"]);
    assert!(score_token.starts_with("svc.") && score_token.len() == 4 + 64);
    let entry: String = printed
        .lines()
        .skip_while(|l| *l != "[[api_keys]]")
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(entry.contains("id = \"svc\""), "{printed}");
    assert!(
        !entry.contains(&score_token[4..]),
        "the configuration entry holds the secret"
    );
    let (admin_token, _) = key("ops", "admin", "");
    let admin_hash = hex::encode(Sha256::digest(admin_token.as_bytes()));
    let dir = TempDir::new("auth-config");
    let config = dir.path().join("riskhost.toml");
    std::fs::write(
        &config,
        format!("[[api_keys]]\nid = \"ops\"\nsha256 = \"{admin_hash}\"\nscopes = [\"admin\"]\n"),
    )
    .unwrap();
    let keys_file = dir.path().join("keys.toml");
    std::fs::write(&keys_file, &entry).unwrap();
    let config = config.to_string_lossy().into_owned();
    let keys_file = keys_file.to_string_lossy().into_owned();
    let server = Server::start(&[
        "--config",
        &config,
        "--api-keys-file",
        &keys_file,
        "--anonymous-scoring=false",
    ]);

    let wrong_secret = format!("svc.{}", "0".repeat(64));
    let unknown = format!("ghost.{}", "0".repeat(64));
    let callers: [(&str, Option<String>); 6] = [
        ("no key", None),
        ("malformed", Some(format!("Basic {score_token}"))),
        ("unknown key", Some(format!("Bearer {unknown}"))),
        ("wrong secret", Some(format!("Bearer {wrong_secret}"))),
        ("score key", Some(format!("Bearer {score_token}"))),
        ("admin key", Some(format!("Bearer {admin_token}"))),
    ];
    let mut checked = 0;
    for route in routes() {
        for (who, header) in &callers {
            let (status, body, headers) = send(
                &server,
                route.method.clone(),
                route.path,
                route.body.clone(),
                header.as_deref(),
            );
            let expected: (u16, Option<&str>) = match *who {
                "no key" | "malformed" => (401, Some("unauthenticated")),
                "unknown key" | "wrong secret" => (401, Some("invalid_key")),
                "score key" if route.admin => (403, Some("forbidden")),
                _ => route.allowed,
            };
            let context = format!("{} {} as {who}: {body}", route.method, route.path);
            assert_eq!(status, expected.0, "{context}");
            match expected.1 {
                Some(code) => assert_eq!(body["error"]["code"], code, "{context}"),
                None => assert!(body.get("error").is_none(), "{context}"),
            }
            if status == 401 {
                let challenge = headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                assert!(challenge.starts_with("Bearer"), "{context}");
            }
            checked += 1;
        }
    }
    // 26 protected routes × 6 kinds of caller.
    assert_eq!(checked, 156);
    // The open routes need nothing, whatever header comes along.
    for path in ["/healthz", "/readyz", "/metrics"] {
        for (who, header) in &callers {
            let (status, _, _) = send(&server, Method::GET, path, None, header.as_deref());
            assert_eq!(status, 200, "{path} as {who}");
        }
    }
    // The refusals are counted by reason; the token never reaches the metrics.
    let metrics = server.get_text("/metrics");
    assert!(
        // One per admin route, asked with a score key.
        metrics.contains("riskhost_auth_failures_total{reason=\"forbidden\"} 10"),
        "{metrics}"
    );
    assert!(!metrics.contains(&score_token) && !metrics.contains(&admin_token));
}

#[test]
fn the_admin_token_is_an_admin_key_with_id_admin() {
    let server = Server::start(&[
        "--admin-token",
        "legacy-secret",
        "--anonymous-scoring=false",
    ]);
    let (status, _, _) = send(
        &server,
        Method::DELETE,
        "/v1/cache",
        None,
        Some("Bearer legacy-secret"),
    );
    assert_eq!(status, 200);
    let body = json!({"model": "var-historical", "portfolio": {"id": "balanced"}});
    let (status, answer, _) = send(
        &server,
        Method::POST,
        "/v1/score",
        json_body(body.clone()),
        Some("Bearer legacy-secret"),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer, _) = send(&server, Method::POST, "/v1/score", json_body(body), None);
    assert_eq!(
        (status, &answer["error"]["code"]),
        (401, &json!("unauthenticated"))
    );
}

#[test]
fn a_flooding_key_is_limited_while_another_key_is_served() {
    // Key `flood` may send 5 at once, then one a minute; `calm` has the defaults.
    let (flood, flood_spec) = key("flood", "score", ",rate_per_minute=1,burst=5");
    let (calm, calm_spec) = key("calm", "score", "");
    let server = Server::start(&[
        "--api-key",
        &flood_spec,
        "--api-key",
        &calm_spec,
        "--anonymous-scoring=false",
    ]);
    let calm_header = format!("Bearer {calm}");
    let flood_header = format!("Bearer {flood}");
    let (served_calm, flood_answers) = std::thread::scope(|scope| {
        let calm_threads: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..10)
                        .filter(|_| {
                            send(&server, Method::GET, "/v1/models", None, Some(&calm_header)).0
                                == 200
                        })
                        .count()
                })
            })
            .collect();
        let flood_answers: Vec<_> = (0..40)
            .map(|_| {
                send(
                    &server,
                    Method::GET,
                    "/v1/models",
                    None,
                    Some(&flood_header),
                )
            })
            .collect();
        let served: usize = calm_threads
            .into_iter()
            .map(|t| t.join().expect("calm thread"))
            .sum();
        (served, flood_answers)
    });
    assert_eq!(
        served_calm, 40,
        "the calm key was refused while the other flooded"
    );
    let ok = flood_answers.iter().filter(|(s, _, _)| *s == 200).count();
    // The burst of 5, and at most one more if a minute passed.
    assert!((5..=6).contains(&ok), "{ok} of the flood were served");
    assert!(flood_answers[..5].iter().all(|(s, _, _)| *s == 200));
    let limited: Vec<_> = flood_answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(limited.len(), 40 - ok);
    for (_, body, headers) in limited {
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        let retry: u64 = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a numeric Retry-After");
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
}

#[test]
fn anonymous_scoring_is_off_by_default_and_never_opens_the_admin_routes() {
    let body = json!({"model": "var-historical", "portfolio": {"id": "balanced"}});
    let off = Server::start(&["--anonymous-scoring=false"]);
    assert_error(
        &off.post("/v1/score", &body),
        401,
        "unauthenticated",
        "Bearer",
    );
    drop(off);

    let (admin, admin_spec) = key("ops", "admin", "");
    let on = Server::start(&[
        "--anonymous-scoring",
        "--api-key",
        &admin_spec,
        "--rate-limit-per-minute",
        "1",
        "--rate-limit-burst",
        "3",
    ]);
    let (status, answer) = on.post("/v1/score", &body);
    assert_eq!(status, 200, "{answer}");
    let (status, answer, _) = send(&on, Method::DELETE, "/v1/cache", None, None);
    assert_eq!(
        (status, &answer["error"]["code"]),
        (401, &json!("unauthenticated"))
    );
    // A key presented under anonymous mode must still be valid.
    let (status, answer, _) = send(
        &on,
        Method::GET,
        "/v1/models",
        None,
        Some("Bearer ops.nope"),
    );
    assert_eq!(
        (status, &answer["error"]["code"]),
        (401, &json!("invalid_key"))
    );
    // Anonymous callers share the bucket of their address: 3 at once, then 429.
    let statuses: Vec<u16> = (0..4).map(|_| on.get("/v1/models").0).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    // A key's bucket is its own.
    let (status, _, _) = send(
        &on,
        Method::GET,
        "/v1/models",
        None,
        Some(&format!("Bearer {admin}")),
    );
    assert_eq!(status, 200);
}

/// Waits until the server has `n` requests in flight besides the scrape.
fn wait_in_flight(server: &Server, n: f64) {
    wait_until("a request in flight", Duration::from_secs(30), || {
        server
            .get_text("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("riskhost_http_requests_in_flight "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|v| v >= n + 1.0)
    });
}

#[test]
fn over_the_concurrency_limit_requests_are_shed_and_slow_ones_time_out() {
    let plugins = plugins_with(&["var-historical"], &["slow-legal"]);
    let plugins = plugins.path().to_string_lossy().into_owned();
    let server = Server::start_with(&[
        "--plugins",
        &plugins,
        "--model-limits",
        "slow-legal:deadline_ms=60000,deadline_cap_ms=60000",
        "--deadline-cap-ms",
        "60000",
        "--max-concurrent-requests",
        "1",
        "--request-timeout-ms",
        "1500",
    ]);
    let slow = json!({"model": "slow-legal", "portfolio": {"id": "balanced"},
                      "params": {"steps_millions": 8000}});
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| server.post("/v1/score", &slow));
        wait_in_flight(&server, 1.0);
        let (status, body, headers) = send(&server, Method::GET, "/v1/models", None, None);
        assert_eq!(
            (status, &body["error"]["code"]),
            (503, &json!("overloaded")),
            "{body}"
        );
        assert_eq!(
            headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        // The open routes stay outside the limit.
        assert_eq!(server.get("/healthz").0, 200);
        let answer = in_flight.join().expect("slow request");
        assert_error(&answer, 504, "request_timeout", "--request-timeout-ms");
    });
}

/// The key queries PostgreSQL has answered, from `/metrics`.
fn key_queries(server: &Server) -> f64 {
    server
        .get_text("/metrics")
        .lines()
        .find(|l| {
            l.starts_with("riskhost_db_query_duration_seconds_count")
                && l.contains("query=\"api_key\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Online guessing is throttled per address: once the burst of failed
/// authentications is spent, every further attempt with a key gets 429 and
/// `Retry-After` before any lookup, so a flood of new unknown ids costs
/// PostgreSQL a handful of queries, and the admin token cannot be guessed
/// at line rate either.
#[test]
fn failed_authentications_are_throttled_per_address_before_any_lookup() {
    let schema = PgSchema::new("guess");
    let admin_token = "the-one-admin-secret";
    let server = Server::start(&[
        "--keys-source",
        "postgres",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
        "--anonymous-scoring=false",
        "--admin-token",
        admin_token,
        "--auth-failures-per-minute",
        "6",
        "--auth-failure-burst",
        "5",
    ]);
    let mut statuses = Vec::new();
    for i in 0..40 {
        let guess = format!("Bearer guess{i}.{}", "0".repeat(64));
        let (status, body, headers) = send(&server, Method::GET, "/v1/models", None, Some(&guess));
        match status {
            401 => assert_eq!(body["error"]["code"], "invalid_key", "{body}"),
            429 => {
                assert_eq!(body["error"]["code"], "too_many_auth_failures", "{body}");
                assert!(
                    headers.contains_key("retry-after"),
                    "429 without Retry-After"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
        statuses.push(status);
    }
    let refused = statuses.iter().filter(|s| **s == 401).count();
    eprintln!("40 unknown ids: {refused} looked up and refused, the rest throttled");
    assert!((5..=7).contains(&refused), "{statuses:?}");
    assert!(
        key_queries(&server) <= 7.0,
        "{} key queries",
        key_queries(&server)
    );

    // The admin token, guessed from another server's fresh budget.
    drop(server);
    let server = Server::start(&[
        "--anonymous-scoring=false",
        "--admin-token",
        admin_token,
        "--auth-failures-per-minute",
        "6",
        "--auth-failure-burst",
        "5",
    ]);
    let guesses: Vec<u16> = (0..20)
        .map(|i| {
            let guess = format!("Bearer guessed-admin-secret-{i}");
            send(&server, Method::DELETE, "/v1/cache", None, Some(&guess)).0
        })
        .collect();
    let throttled = guesses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        throttled + guesses.iter().filter(|s| **s == 401).count(),
        20,
        "{guesses:?}"
    );
    assert!(throttled >= 13, "{guesses:?}");
    // Throttled means throttled: the right token waits out the address's wait too.
    let right = format!("Bearer {admin_token}");
    assert_eq!(
        send(&server, Method::DELETE, "/v1/cache", None, Some(&right)).0,
        429
    );
}

#[test]
fn keys_in_postgres_are_looked_up_cached_and_revocable() {
    let schema = PgSchema::new("keys");
    let data = [
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
    ];
    let mut args = vec!["--id", "pg-svc", "--scope", "score", "--postgres"];
    args.extend_from_slice(&data);
    let (token, printed) = key_new(&args);
    assert!(printed.contains("stored in PostgreSQL"), "{printed}");
    let stored = psql(
        &schema.url,
        &format!(
            "SELECT sha256 FROM {}.api_keys WHERE id = 'pg-svc'",
            schema.name
        ),
    );
    assert_eq!(stored, hex::encode(Sha256::digest(token.as_bytes())));
    assert!(
        !psql(
            &schema.url,
            &format!("SELECT * FROM {}.api_keys", schema.name)
        )
        .contains(&token[7..])
    );

    let mut serve = vec![
        "--keys-source",
        "postgres",
        "--keys-cache-ttl-ms",
        "200",
        "--anonymous-scoring=false",
    ];
    serve.extend_from_slice(&data);
    let server = Server::start(&serve);
    let header = format!("Bearer {token}");
    let (status, body, _) = send(&server, Method::GET, "/v1/models", None, Some(&header));
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = send(&server, Method::DELETE, "/v1/cache", None, Some(&header));
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));

    let mut revoke = vec!["key", "revoke", "--id", "pg-svc"];
    revoke.extend_from_slice(&data);
    let out = Command::new(binary())
        .args(&revoke)
        .output()
        .expect("revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the revocation to take effect",
        Duration::from_secs(30),
        || send(&server, Method::GET, "/v1/models", None, Some(&header)).0 == 401,
    );
    let (_, body, _) = send(&server, Method::GET, "/v1/models", None, Some(&header));
    assert_eq!(body["error"]["code"], "invalid_key");
    // Revoking twice is an error, and listing shows the revocation.
    let out = Command::new(binary())
        .args(&revoke)
        .output()
        .expect("revoke");
    assert!(!out.status.success());
    let mut list = vec!["key", "list"];
    list.extend_from_slice(&data);
    let out = Command::new(binary()).args(&list).output().expect("list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("pg-svc\tscore") && listed.contains("revoked"),
        "{listed}"
    );
}

#[test]
fn score_events_carry_the_key_id_and_old_tables_gain_the_column() {
    let ch = ChDatabase::new(&ch_url(), "keys");
    // A table as an older riskhost made it, without `key_id`.
    ch_query(&ch.url, &format!("CREATE DATABASE {}", ch.name)).expect("create database");
    ch_query(
        &ch.url,
        &format!(
            "CREATE TABLE {}.score_events (ts DateTime, ts_us UInt32, request_id String,
             portfolio_id String, model String, version String, digest String,
             params_hash String, as_of Date, value Float64, unit String, cached UInt8,
             latency_us UInt64, error_code String, path String, snapshot String)
             ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (portfolio_id, model, ts)",
            ch.name
        ),
    )
    .expect("create an old table");
    let (token, spec) = key("desk-7", "score", "");
    let data_dir = TempDir::new("auth-events");
    let server = Server::start(&[
        "--clickhouse-url",
        &ch.url,
        "--clickhouse-database",
        &ch.name,
        "--data-dir",
        &data_dir.path().to_string_lossy(),
        "--events-flush-ms",
        "50",
        "--api-key",
        &spec,
    ]);
    let header = format!("Bearer {token}");
    let single = json!({"model": "var-historical", "portfolio": {"id": "p-keyed", "positions": [{"instrument": "SPX", "quantity": 1}]}});
    let (status, body, _) = send(
        &server,
        Method::POST,
        "/v1/score",
        json_body(single.clone()),
        Some(&header),
    );
    assert_eq!(status, 200, "{body}");
    let batch = json!({"models": ["var-historical"], "portfolios": [{"id": "p-keyed", "positions": [{"instrument": "SPX", "quantity": 2}]}]});
    let (status, body, _) = send(
        &server,
        Method::POST,
        "/v1/score/batch",
        json_body(batch),
        Some(&header),
    );
    assert_eq!(status, 200, "{body}");
    // Anonymous (the harness turns it on): an empty key id.
    let anonymous = json!({"model": "var-historical", "portfolio": {"id": "p-keyed", "positions": [{"instrument": "SPX", "quantity": 3}]}});
    assert_eq!(server.post("/v1/score", &anonymous).0, 200);
    let query = format!(
        "SELECT path, key_id FROM {}.score_events WHERE portfolio_id = 'p-keyed' ORDER BY path, key_id FORMAT TSV",
        ch.name
    );
    wait_until(
        "three events in ClickHouse",
        Duration::from_secs(30),
        || ch_query(&ch.url, &query).is_ok_and(|t| t.lines().count() == 3),
    );
    let rows = ch_query(&ch.url, &query).expect("events");
    assert_eq!(rows, "batch\tdesk-7\nsingle\t\nsingle\tdesk-7", "{rows}");
    let everything = ch_query(
        &ch.url,
        &format!("SELECT * FROM {}.score_events FORMAT TSV", ch.name),
    )
    .expect("events");
    assert!(
        !everything.contains(&token[7..]),
        "a token reached the events"
    );
}

#[test]
fn key_hash_prints_the_entry_of_a_given_token() {
    use std::io::Write as _;
    let (token, _) = key("made-elsewhere", "score", "");
    let mut child = Command::new(binary())
        .args(["key", "hash", "--scope", "admin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("key hash");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{token}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("key hash output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("id = \"made-elsewhere\""), "{text}");
    assert!(
        text.contains(&hex::encode(Sha256::digest(token.as_bytes()))),
        "{text}"
    );
    assert!(
        text.contains("scopes = [\"admin\"]") && !text.contains(&token),
        "{text}"
    );
}

#[test]
fn numbers_beyond_f64_and_out_of_range_params_are_422() {
    let server = Server::start(&[]);
    let score = |params: &str, quantity: &str| {
        let body = format!(
            r#"{{"model": "var-historical", "portfolio": {{"id": "x", "positions": [{{"instrument": "SPX", "quantity": {quantity}}}]}}, "params": {params}}}"#
        );
        server.post_raw("/v1/score", "application/json", body)
    };
    assert_error(
        &score(r#"{"confidence": 1e999}"#, "1"),
        422,
        "invalid_number",
        "out of range",
    );
    assert_error(
        &score("{}", "-1e400"),
        422,
        "invalid_number",
        "out of range",
    );
    assert_error(
        &score(r#"{"confidence": 2}"#, "1"),
        422,
        "invalid_params",
        "out of bounds",
    );
    // NaN and Infinity are not JSON at all.
    assert_error(
        &score(r#"{"confidence": NaN}"#, "1"),
        400,
        "malformed_json",
        "",
    );
    let long = "A".repeat(65);
    let body = json!({"model": "var-historical", "portfolio": {"id": "x", "positions": [{"instrument": long, "quantity": 1}]}});
    assert_error(
        &server.post("/v1/score", &body),
        422,
        "invalid_portfolio",
        "at most 64",
    );
}
