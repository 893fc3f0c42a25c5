//! A fleet of replicas behaves as one host (issue 16): a key's rate limit
//! is shared through Redis (and falls back to each replica's own buckets
//! when Redis is gone), a cache purge on one replica empties every
//! replica's in-process tier (Redis pub/sub), and a key revoked in
//! PostgreSQL is refused by every replica long before its cache TTL
//! (`LISTEN`/`NOTIFY`).
//!
//! Each test starts real `riskhost serve` processes against the shared
//! Redis (a key prefix of its own) and PostgreSQL (a schema of its own);
//! the fall-back test starts a `redis-server` of its own and kills it. No
//! timing is asserted: counts are bounded by the quota, and notifications
//! are awaited with a bounded poll.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::db::{PgSchema, free_port, psql, wait_until};
use common::{Server, binary, sample_portfolio};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/";

/// A key prefix no other test (or run) uses.
fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("riskhost-it-fleet-{test}-{}-{nanos}", std::process::id())
}

/// A made-up token for `id` and the `--api-key` value holding its hash.
fn key(id: &str, extra: &str) -> (String, String) {
    let token = format!("{id}.{}", hex::encode(Sha256::digest(id.as_bytes())));
    let spec = format!(
        "{id}:sha256={},scopes=score{extra}",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    (token, spec)
}

/// Flags of a replica on Redis `url` under `prefix`, deciding rates there.
/// The operation timeout is generous: these tests share two cores with
/// others, and the fall-back test shows what a Redis that is gone does.
fn redis_flags(url: &str, prefix: &str) -> Vec<String> {
    [
        "--redis-url",
        url,
        "--redis-prefix",
        prefix,
        "--redis-timeout-ms",
        "2000",
        "--redis-breaker-cooldown-ms",
        "100",
        "--rate-limit-store",
        "redis",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(flags: &[String]) -> Server {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start(&flags)
}

/// `GET /v1/models` with `token`: the status and the `Retry-After` value.
fn models(server: &Server, token: &str) -> (u16, Option<u64>, Value) {
    let response = server
        .client
        .request(Method::GET, server.url("/v1/models"))
        .bearer_auth(token)
        .send()
        .expect("request failed");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, response.json().unwrap_or(Value::Null))
}

/// Sends `n` requests to each replica in turn; how many each admitted.
/// Every refusal must be a 429 `rate_limited` with a sane `Retry-After`.
fn flood(replicas: &[&Server], token: &str, n: usize) -> Vec<usize> {
    let mut admitted = vec![0; replicas.len()];
    for _ in 0..n {
        for (i, server) in replicas.iter().enumerate() {
            let (status, retry, body) = models(server, token);
            match status {
                200 => admitted[i] += 1,
                429 => {
                    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                    let retry = retry.expect("a numeric Retry-After");
                    assert!((1..=60).contains(&retry), "Retry-After {retry}");
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
    }
    admitted
}

/// The sum of every series of `name` in a scrape (all label values).
fn metric_sum(server: &Server, name: &str) -> f64 {
    server
        .get_text("/metrics")
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn replicas_sharing_redis_admit_one_quota_per_key_not_one_each() {
    let prefix = prefix("rate");
    // One a minute after a burst of 5: whatever the flood, 5 requests (6 if
    // a minute passes) across the whole fleet.
    let (token, spec) = key("fleet", ",rate_per_minute=1,burst=5");
    let mut flags = redis_flags(SHARED_REDIS, &prefix);
    flags.extend(["--api-key".into(), spec, "--anonymous-scoring=false".into()]);
    let (a, b) = (start(&flags), start(&flags));

    let admitted = flood(&[&a, &b], &token, 15);
    let total: usize = admitted.iter().sum();
    assert!(
        (5..=6).contains(&total),
        "{admitted:?} admitted by the two replicas: the quota is 5 (+1 a minute) for the fleet"
    );
    assert!(
        admitted.iter().all(|&n| n >= 2),
        "both replicas admitted from the one bucket: {admitted:?}"
    );
    for server in [&a, &b] {
        assert_eq!(
            metric_sum(server, "riskhost_rate_limit_fallback_total"),
            0.0
        );
    }
    // The bucket is where the documentation says, and expires.
    let client = redis::Client::open(SHARED_REDIS).expect("redis url");
    let mut conn = client.get_connection().expect("connect to Redis");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:ratelimit:v1:key:fleet"))
        .query(&mut conn)
        .expect("PTTL");
    assert!(pttl > 0, "PTTL {pttl}");
}

/// A `redis-server` of our own on a free port, killed when dropped.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (tests/services.sh installs it)");
        let redis = OwnRedis {
            port,
            child: Some(child),
        };
        wait_until("redis-server answers", Duration::from_secs(20), || {
            redis::Client::open(redis.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
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

#[test]
fn without_redis_each_replica_still_limits_with_its_own_buckets_and_counts_it() {
    let mut redis = OwnRedis::start();
    let (token, spec) = key("fallback", ",rate_per_minute=1,burst=4");
    let mut flags = redis_flags(&redis.url(), &prefix("fallback"));
    flags.extend(["--api-key".into(), spec, "--anonymous-scoring=false".into()]);
    let (a, b) = (start(&flags), start(&flags));

    // Up: one bucket for both.
    let shared = flood(&[&a, &b], &token, 2);
    assert!(
        (4..=5).contains(&shared.iter().sum::<usize>()),
        "{shared:?}"
    );

    // Gone: each replica decides alone, from its own buckets, which were
    // charged with what it admitted while Redis decided, so no replica
    // gets a fresh burst on top.
    redis.kill();
    let alone = flood(&[&a, &b], &token, 10);
    for (i, server) in [&a, &b].into_iter().enumerate() {
        assert!(
            shared[i] + alone[i] <= 4 + 1,
            "replica {i} admitted {} with Redis and {} without: more than its burst",
            shared[i],
            alone[i]
        );
        // Every decision without Redis was a fall-back, and is counted.
        let fallbacks = metric_sum(server, "riskhost_rate_limit_fallback_total");
        assert!(fallbacks >= 10.0, "replica {i}: {fallbacks} fall-backs");
    }

    // A Redis that is not there at all at start-up: local buckets from the
    // first request.
    let (token, spec) = key("nowhere", ",rate_per_minute=1,burst=3");
    let mut flags = redis_flags(
        &format!("redis://127.0.0.1:{}/", free_port()),
        &prefix("nowhere"),
    );
    flags.extend(["--api-key".into(), spec, "--anonymous-scoring=false".into()]);
    let alone = start(&flags);
    let admitted = flood(&[&alone], &token, 12);
    assert!((3..=4).contains(&admitted[0]), "{admitted:?}");
    assert_eq!(
        alone.metric(r#"riskhost_rate_limit_fallback_total{reason="unavailable"}"#),
        Some(12.0)
    );
}

fn delete(server: &Server, path: &str, token: &str) -> (u16, Value) {
    let response = server
        .client
        .delete(server.url(path))
        .bearer_auth(token)
        .send()
        .expect("DELETE failed");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// Polls `server` with `request` until it is computed again (not cached):
/// the purge announced by another replica has reached its in-process tier.
fn wait_for_miss(server: &Server, request: &Value) {
    wait_until(
        "the purge to reach the other replica",
        Duration::from_secs(5),
        || {
            let (status, body) = server.post("/v1/score", request);
            assert_eq!(status, 200, "{body}");
            body["cached"] == false
        },
    );
}

#[test]
fn a_purge_on_one_replica_empties_every_replicas_in_process_tier() {
    let prefix = prefix("purge");
    let mut flags = redis_flags(SHARED_REDIS, &prefix);
    flags.extend(["--admin-token".into(), "s3cret".into()]);
    let (a, b) = (start(&flags), start(&flags));
    let var = json!({"model": "var-historical", "portfolio": sample_portfolio("tech")});
    let es = json!({"model": "es-historical", "portfolio": sample_portfolio("tech")});
    for request in [&var, &es] {
        assert_eq!(a.post("/v1/score", request).1["cached"], false);
        assert_eq!(b.post("/v1/score", request).1["cache_tier"], "l2");
        // Both replicas now answer from their own memory.
        assert_eq!(a.post("/v1/score", request).1["cache_tier"], "l1");
        assert_eq!(b.post("/v1/score", request).1["cache_tier"], "l1");
    }

    // One model, purged on A: B computes it again, and keeps the other.
    let (status, body) = delete(&a, "/v1/cache/var-historical", "s3cret");
    assert_eq!(status, 200, "{body}");
    wait_for_miss(&b, &var);
    assert_eq!(b.post("/v1/score", &es).1["cache_tier"], "l1");

    // Everything, purged on A.
    let (status, body) = delete(&a, "/v1/cache", "s3cret");
    assert_eq!(status, 200, "{body}");
    wait_for_miss(&b, &es);
    assert_eq!(
        b.metric(r#"riskhost_cache_purges_applied_total{source="broadcast"}"#),
        Some(2.0)
    );
    // A purged its own tier before announcing, and ignores its own message.
    assert_eq!(
        a.metric(r#"riskhost_cache_purges_applied_total{source="broadcast"}"#),
        None
    );
    assert_eq!(
        a.metric(r#"riskhost_cache_purge_broadcasts_total{result="ok"}"#),
        Some(2.0)
    );
    assert_eq!(b.metric("riskhost_cache_purge_subscribed"), Some(1.0));
}

/// `riskhost key <args>` with the schema's flags; its standard output.
fn key_command(schema: &PgSchema, args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("key")
        .args(args)
        .args([
            "--postgres-url",
            &schema.url,
            "--postgres-schema",
            &schema.name,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run riskhost key");
    assert!(
        out.status.success(),
        "riskhost key {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The token `riskhost key new` printed (its first non-comment line).
fn printed_token(output: &str) -> String {
    output
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("a token line")
        .trim()
        .to_owned()
}

#[test]
fn a_key_revoked_in_postgres_is_refused_by_every_replica_well_before_its_cache_ttl() {
    let schema = PgSchema::new("fleetkeys");
    let token = printed_token(&key_command(
        &schema,
        &["new", "--id", "fleet-svc", "--scope", "score", "--postgres"],
    ));
    // A cache TTL of ten minutes: only the notification can explain a
    // change seen within seconds.
    let serve = [
        "--keys-source",
        "postgres",
        "--keys-cache-ttl-ms",
        "600000",
        "--anonymous-scoring=false",
        "--postgres-url",
        &schema.url,
        "--postgres-schema",
        &schema.name,
    ];
    let (a, b) = (Server::start(&serve), Server::start(&serve));
    // Both replicas listen (the gauge is per listener name).
    for server in [&a, &b] {
        wait_until("the key listener connects", Duration::from_secs(10), || {
            server.metric(r#"riskhost_db_listen_connected{listener="riskhost-keys"}"#) == Some(1.0)
        });
    }
    // A key that does not exist yet is refused, and that answer is cached.
    let late_guess = format!("fleet-late.{}", "0".repeat(64));
    for server in [&a, &b] {
        assert_eq!(models(server, &token).0, 200);
        assert_eq!(models(server, &late_guess).0, 401);
    }

    key_command(&schema, &["revoke", "--id", "fleet-svc"]);
    for (name, server) in [("A", &a), ("B", &b)] {
        wait_until(
            &format!("replica {name} to refuse the revoked key"),
            Duration::from_secs(5),
            || models(server, &token).0 == 401,
        );
        let (_, _, body) = models(server, &token);
        assert_eq!(body["error"]["code"], "invalid_key", "{body}");
    }

    // A key created after a replica cached its absence is accepted at once
    // too (an INSERT notifies like an UPDATE).
    let late = printed_token(&key_command(
        &schema,
        &[
            "new",
            "--id",
            "fleet-late",
            "--scope",
            "score",
            "--postgres",
        ],
    ));
    for (name, server) in [("A", &a), ("B", &b)] {
        wait_until(
            &format!("replica {name} to accept the new key"),
            Duration::from_secs(5),
            || models(server, &late).0 == 200,
        );
    }
    // And a plain SQL change notifies as well: whoever writes, every
    // replica hears.
    psql(
        &schema.url,
        &format!(
            "UPDATE {}.api_keys SET revoked_at = now() WHERE id = 'fleet-late'",
            schema.name
        ),
    );
    for (name, server) in [("A", &a), ("B", &b)] {
        wait_until(
            &format!("replica {name} to refuse the key revoked in SQL"),
            Duration::from_secs(5),
            || models(server, &late).0 == 401,
        );
    }
}

#[test]
fn a_replica_that_missed_purges_while_unsubscribed_empties_its_tier_when_back() {
    // Pub/sub is at most once; the generation count is what a returning
    // subscriber compares. A Redis of our own, so cutting its pub/sub
    // clients off touches no other test.
    let redis = OwnRedis::start();
    let prefix = prefix("catchup");
    let b = start(&redis_flags(&redis.url(), &prefix));
    let var = json!({"model": "var-historical", "portfolio": sample_portfolio("balanced")});
    assert_eq!(b.post("/v1/score", &var).1["cached"], false);
    assert_eq!(b.post("/v1/score", &var).1["cache_tier"], "l1");
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client.get_connection().expect("connect to Redis");
    let subscribers: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{prefix}:purge"))
        .query(&mut conn)
        .expect("PUBSUB NUMSUB");
    assert_eq!(subscribers.1, 1, "the replica subscribes to {prefix}:purge");
    // A purge B never hears of (another replica's, while B's subscription
    // was down): the count moves, the shared tier is emptied, no message
    // reaches B. Then B's subscription drops, as in a network blip.
    let _: u64 = redis::cmd("INCR")
        .arg(format!("{prefix}:purge-generation"))
        .query(&mut conn)
        .expect("INCR");
    let entries: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:v1:*"))
        .query(&mut conn)
        .expect("KEYS");
    assert_eq!(entries.len(), 1, "{entries:?}");
    let _: u64 = redis::cmd("DEL")
        .arg(entries)
        .query(&mut conn)
        .expect("DEL");
    let _: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut conn)
        .expect("CLIENT KILL");
    wait_until("B to catch up", Duration::from_secs(10), || {
        b.metric(r#"riskhost_cache_purges_applied_total{source="catch_up"}"#) == Some(1.0)
    });
    assert_eq!(b.post("/v1/score", &var).1["cached"], false);
}
