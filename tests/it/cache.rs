//! End-to-end tests of memoization against the real binary and real Redis:
//! two replicas sharing the Redis tier, the purge endpoints, single-flight,
//! and a Redis that dies and comes back mid-stream.
//!
//! Tests that share the Redis of `tests/services.sh` (127.0.0.1:6379) each
//! use a key prefix of their own, so they run in parallel; the fault test
//! starts a `redis-server` of its own on a free port.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::db::free_port;
use common::{Server, sample_portfolio};
use serde_json::{Value, json};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/";

/// A key prefix no other test (or run) uses.
fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("riskhost-it-{test}-{}-{nanos}", std::process::id())
}

/// Flags of a replica on `url` under `prefix`. The operation timeout is
/// generous because these tests run beside many others on two cores; the
/// fault test shows what happens when Redis is slow or not there at all.
fn redis_flags(url: &str, prefix: &str) -> Vec<String> {
    redis_flags_with_timeout(url, prefix, 2000)
}

fn redis_flags_with_timeout(url: &str, prefix: &str, timeout_ms: u32) -> Vec<String> {
    [
        "--redis-url",
        url,
        "--redis-prefix",
        prefix,
        "--redis-timeout-ms",
        &timeout_ms.to_string(),
        "--redis-breaker-cooldown-ms",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(flags: &[String]) -> Server {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start(&flags)
}

fn delete(server: &Server, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = server.client.delete(server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("DELETE failed");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn redis_keys(url: &str, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client.get_connection().expect("connect to Redis");
    redis::cmd("KEYS")
        .arg(pattern)
        .query(&mut conn)
        .expect("KEYS")
}

#[test]
fn replicas_share_scores_and_model_errors_through_redis() {
    let prefix = prefix("share");
    let flags = redis_flags(SHARED_REDIS, &prefix);
    let (a, b) = (start(&flags), start(&flags));
    let request = json!({"model": "var-historical", "portfolio": sample_portfolio("balanced"), "params": {"confidence": 0.975}});

    let (status, on_a) = a.post("/v1/score", &request);
    assert_eq!(status, 200, "{on_a}");
    assert_eq!(on_a["cached"], false);
    let (status, first_on_b) = b.post("/v1/score", &request);
    assert_eq!(status, 200, "{first_on_b}");
    assert_eq!(first_on_b["cached"], true, "{first_on_b}");
    assert_eq!(first_on_b["cache_tier"], "l2");
    assert_eq!(first_on_b["value"], on_a["value"]);
    assert_eq!(first_on_b["breakdown"], on_a["breakdown"]);
    let (_, second_on_b) = b.post("/v1/score", &request);
    assert_eq!(second_on_b["cache_tier"], "l1", "an L2 hit fills L1");
    assert_eq!(second_on_b["value"], on_a["value"]);

    // A deterministic model error is memoized (briefly) too: B answers it
    // without running the model.
    let too_long = json!({"model": "var-historical", "portfolio": sample_portfolio("balanced"), "params": {"lookback_days": 2000}});
    let (status, error_on_a) = a.post("/v1/score", &too_long);
    assert_eq!(status, 422);
    let (status, error_on_b) = b.post("/v1/score", &too_long);
    assert_eq!(status, 422);
    assert_eq!(error_on_b, error_on_a);
    assert_eq!(
        b.metric("riskhost_model_call_duration_seconds_count{model=\"var-historical\""),
        None,
        "B ran the model though A had stored both outcomes"
    );
    assert_eq!(
        b.metric(r#"riskhost_cache_lookups_total{model="var-historical",tier="l2",result="hit"}"#),
        Some(2.0)
    );

    // The documented key layout, with a TTL.
    let keys = redis_keys(SHARED_REDIS, &format!("{prefix}:v1:var-historical:*"));
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.len() == prefix.len() + ":v1:var-historical:".len() + 64)
    );
    assert_eq!(a.metric("riskhost_cache_breaker_state"), Some(0.0));
}

#[test]
fn purge_endpoints_need_the_admin_token_and_empty_both_tiers() {
    let prefix = prefix("purge");
    let mut flags = redis_flags(SHARED_REDIS, &prefix);
    flags.extend(["--admin-token".to_owned(), "s3cret".to_owned()]);
    let server = start(&flags);
    let token = Some("s3cret");
    let var = json!({"model": "var-historical", "portfolio": sample_portfolio("tech")});
    let es = json!({"model": "es-historical", "portfolio": sample_portfolio("tech")});
    for request in [&var, &es] {
        assert_eq!(server.post("/v1/score", request).0, 200);
    }

    let (status, body) = delete(&server, "/v1/cache", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (status, body) = delete(&server, "/v1/cache/var-historical", Some("wrong"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_key");
    let (status, body) = delete(&server, "/v1/cache/Not*A*Model", token);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_model_name");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Not*A*Model")
    );
    // Nothing was purged by the refused requests.
    assert_eq!(server.post("/v1/score", &var).1["cached"], true);

    let (status, body) = delete(&server, "/v1/cache/var-historical", token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"model": "var-historical", "purged_l1": 1, "purged_l2": 1})
    );
    assert_eq!(server.post("/v1/score", &var).1["cached"], false);
    assert_eq!(server.post("/v1/score", &es).1["cache_tier"], "l1");

    let (status, body) = delete(&server, "/v1/cache", token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"model": null, "purged_l1": 2, "purged_l2": 2}));
    // Every entry is gone; what is left under the prefix is the count of
    // purges announced to other replicas (`{prefix}:purge-generation`).
    assert_eq!(
        redis_keys(SHARED_REDIS, &format!("{prefix}:*")),
        vec![format!("{prefix}:purge-generation")]
    );
    assert_eq!(server.post("/v1/score", &es).1["cached"], false);

    // Without a shared tier there is nothing to say about l2; without an
    // admin key configured no token opens the admin API.
    let local = Server::start(&["--admin-token", "s3cret"]);
    assert_eq!(local.post("/v1/score", &var).0, 200);
    let (status, body) = delete(&local, "/v1/cache", token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"model": null, "purged_l1": 1, "purged_l2": null})
    );
    let off = Server::start(&[]);
    let (status, body) = delete(&off, "/v1/cache", token);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_key");
}

/// The test models, built by `tests/plugins/build.sh` (which `tests/run.sh` runs first).
#[test]
fn concurrent_identical_misses_run_the_model_once() {
    let prefix = prefix("flight");
    let mut flags = redis_flags(SHARED_REDIS, &prefix);
    flags.extend([
        "--plugins".to_owned(),
        common::test_plugins_dir().to_string_lossy().into_owned(),
    ]);
    flags.extend(["--deadline-ms".to_owned(), "20000".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start_with(&flags);
    // A model that computes for a while, so the herd arrives mid-flight.
    let request = json!({"model": "slow-exposure", "portfolio": sample_portfolio("fifty"), "params": {"work": 100}});
    let herd = 32;
    let barrier = Arc::new(Barrier::new(herd));
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..herd)
            .map(|_| {
                let (barrier, request, server) = (barrier.clone(), &request, &server);
                scope.spawn(move || {
                    barrier.wait();
                    server.post("/v1/score", request)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["value"], answers[0].1["value"]);
    }
    assert_eq!(
        server.metric(
            r#"riskhost_model_call_duration_seconds_count{model="slow-exposure",version="1.0.0"}"#
        ),
        Some(1.0),
        "32 identical concurrent requests ran the model more than once"
    );
    // Each of the other 31 either waited for the leader or came late enough
    // to hit the memo; which, depends on the scheduler.
    let coalesced = server
        .metric(r#"riskhost_cache_coalesced_total{model="slow-exposure"}"#)
        .unwrap_or(0.0);
    let hits = answers.iter().filter(|(_, b)| b["cached"] == true).count() as f64;
    eprintln!("single-flight: {coalesced} coalesced, {hits} memo hits");
    assert_eq!(coalesced + hits, (herd - 1) as f64);
}

/// A `redis-server` of our own, killed when dropped.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start_on(port: u16) -> OwnRedis {
        let mut redis = OwnRedis { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (tests/services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: a Redis that
    /// keeps its connections open and never answers.
    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the stream of requests saw.
#[derive(Default)]
struct Seen {
    requests: usize,
    failures: Vec<String>,
    /// L2 hits on replica B, by phase: up, killed, restarted, frozen, thawed.
    l2_hits: [usize; 5],
}

#[test]
fn scoring_survives_redis_dying_or_hanging_and_caching_resumes_when_it_returns() {
    let mut redis = OwnRedis::start_on(free_port());
    let prefix = prefix("fault");
    // A short timeout, so a frozen Redis is noticed quickly; a timeout that
    // fires under load is a miss, which this test tolerates.
    let flags = redis_flags_with_timeout(&redis.url(), &prefix, 200);
    let (a, b) = (start(&flags), start(&flags));

    let phase = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(Seen::default());
    std::thread::scope(|scope| {
        // The stream: each portfolio is scored on A (a miss that A stores in
        // both tiers), then on B (an L2 hit while Redis is up, a miss of its
        // own while it is down). Bounded in count, whatever happens.
        scope.spawn(|| {
            for i in 0..20_000u32 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let request = json!({"model": "var-parametric", "portfolio": {"positions": [
                    {"instrument": "SPX", "quantity": 1 + i}, {"instrument": "TLT", "quantity": -5}]}});
                for (replica, server) in [("A", &a), ("B", &b)] {
                    let current = phase.load(Ordering::Acquire);
                    let (status, body) = server.post("/v1/score", &request);
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    seen.requests += 1;
                    if status != 200 {
                        seen.failures.push(format!("{replica} #{i}: {status} {body}"));
                    } else if replica == "B" && body["cache_tier"] == "l2" {
                        seen.l2_hits[current] += 1;
                    }
                }
            }
        });
        let wait_for = |what: &str, done: &dyn Fn(&Seen) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                if done(&seen.lock().unwrap_or_else(|e| e.into_inner())) {
                    return;
                }
                if Instant::now() > deadline {
                    stop.store(true, Ordering::Release);
                    panic!("gave up waiting for {what}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };

        wait_for("L2 hits with Redis up", &|s| s.l2_hits[0] >= 20);
        redis.kill();
        phase.store(1, Ordering::Release);
        let before = seen.lock().map(|s| s.requests).unwrap_or_default();
        wait_for("requests with Redis down", &|s| s.requests >= before + 100);
        redis.restart();
        phase.store(2, Ordering::Release);
        wait_for("L2 hits after Redis returned", &|s| s.l2_hits[2] >= 20);
        redis.signal("-STOP");
        phase.store(3, Ordering::Release);
        let before = seen.lock().map(|s| s.requests).unwrap_or_default();
        wait_for("requests with Redis frozen", &|s| {
            s.requests >= before + 100
        });
        redis.signal("-CONT");
        phase.store(4, Ordering::Release);
        wait_for("L2 hits after Redis thawed", &|s| s.l2_hits[4] >= 20);
        stop.store(true, Ordering::Release);
    });

    let seen = seen.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "fault test: {} requests, B's L2 hits up/killed/restarted/frozen/thawed: {:?}",
        seen.requests, seen.l2_hits
    );
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        seen.failures.len(),
        seen.requests,
        &seen.failures[..seen.failures.len().min(5)]
    );
    // Both replicas noticed both faults, and both closed their breakers again.
    for server in [&a, &b] {
        for kind in ["connection", "timeout"] {
            let errors = server
                .get_text("/metrics")
                .lines()
                .filter(|l| {
                    l.starts_with("riskhost_redis_errors_total{")
                        && l.contains(&format!("kind=\"{kind}\""))
                })
                .count();
            assert!(errors > 0, "no Redis error of kind {kind} was counted");
        }
        assert_eq!(server.metric("riskhost_cache_breaker_state"), Some(0.0));
    }
    assert!(
        b.metric(
            r#"riskhost_cache_lookups_total{model="var-parametric",tier="l2",result="bypass"}"#
        )
        .unwrap_or(0.0)
            > 0.0,
        "the breaker never spared a request the timeout"
    );
}
