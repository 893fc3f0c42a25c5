//! The shared tier: Redis, reached by every replica.
//!
//! Entries live under `{prefix}:v{KEY_SCHEMA_VERSION}:{model}:{hex key}`
//! (the model segment lets one model's entries be purged with a `SCAN`
//! pattern), valued with [`super::codec`] and set with `PX` (the entry's
//! TTL). Batches cost one round trip each way: lookups are `MGET`s of at
//! most [`CHUNK`] keys, all chunks in one pipeline; writes are one pipeline of
//! `SET … PX`.
//!
//! Redis is an optimisation, never a dependency: every operation has a short
//! timeout, a failure is a miss (or a dropped write), and the
//! [`Breaker`](super::breaker) stops requests from paying the timeout while
//! Redis is down or slow. One multiplexed connection carries every request
//! (Redis answers in order, so a pipeline per request is as good as a pool).
//! When the breaker opens the connection is dropped; a supervisor task
//! probes (connects and `PING`s) after each cool-down, installs the new
//! connection and closes the breaker. The server therefore starts with Redis
//! down, and recovers by itself when Redis returns.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::breaker::{Breaker, BreakerSettings, Transition};
use super::key::KEY_SCHEMA_VERSION;
use super::purge::{PUBLISH_PURGE, PurgeNames};
use super::{CacheTier, CachedScore, ScoreKey, codec, count_lookups};

/// Keys per `MGET` (and writes per pipeline slice of the timeout budget):
/// large enough to amortise the round trip, small enough that one reply
/// stays well under a megabyte for typical breakdowns.
pub(crate) const CHUNK: usize = 1000;

/// Longest TTL sent to Redis (ten years): Redis refuses an expiry that
/// overflows its clock, and a refused write would count against the breaker.
const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// The `result` values of `riskhost_cache_writes_total`.
const WRITE_RESULTS: [&str; 3] = ["ok", "error", "bypass"];

/// How to reach Redis and when to give up on it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`, `unix://`).
    pub url: String,
    /// First segment of every key, so deployments can share a Redis.
    pub prefix: String,
    /// Budget of one round trip (per [`CHUNK`] of a batch).
    pub op_timeout: Duration,
    /// Budget of connecting (at start-up and in each probe).
    pub connect_timeout: Duration,
    pub breaker: BreakerSettings,
}

/// The configuration cannot work (as opposed to Redis being unreachable,
/// which is only ever a warning).
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("--redis-url is not a Redis URL: {0}")]
    Url(String),
    #[error("--redis-prefix must be 1 to 128 printable ASCII characters without spaces, got {0:?}")]
    Prefix(String),
}

/// Why one operation did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpError {
    #[error("no connection to Redis (circuit breaker open)")]
    Unavailable,
    #[error("Redis did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl OpError {
    fn kind(&self) -> &'static str {
        match self {
            OpError::Unavailable => "unavailable",
            OpError::Timeout(_) => "timeout",
            OpError::Redis(e) if connection_lost(e) => "connection",
            OpError::Redis(_) => "server",
        }
    }

    /// Whether the connection is unusable, so waiting for more failures
    /// would only cost more timeouts.
    fn loses_connection(&self) -> bool {
        match self {
            OpError::Unavailable => true,
            OpError::Timeout(_) => false,
            OpError::Redis(e) => connection_lost(e),
        }
    }
}

fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

struct Inner {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// The connection requests use; `None` while the breaker is open.
    conn: ArcSwapOption<MultiplexedConnection>,
    breaker: Breaker,
    /// `{prefix}:v{KEY_SCHEMA_VERSION}:`, the head of every key.
    key_head: String,
    /// The same, with glob characters escaped, for `SCAN MATCH`.
    pattern_head: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    /// Where Redis is, for logs (never the URL: it may hold a password).
    address: String,
    /// Where purges are announced to the other replicas.
    purges: PurgeNames,
}

/// The Redis tier. Cheap to share: clone the `Arc` around it.
pub struct RedisCache {
    inner: Arc<Inner>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for RedisCache {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl RedisCache {
    /// Validates the settings and tries to connect once. An unreachable
    /// Redis is a warning, not an error: the tier starts with its breaker
    /// open and the supervisor keeps trying.
    pub async fn connect(settings: RedisSettings) -> Result<Self, RedisSetupError> {
        let prefix_ok = !settings.prefix.is_empty()
            && settings.prefix.len() <= 128
            && settings.prefix.bytes().all(|b| b.is_ascii_graphic());
        if !prefix_ok {
            return Err(RedisSetupError::Prefix(settings.prefix));
        }
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| RedisSetupError::Url(e.to_string()))?;
        let address = client.get_connection_info().addr().to_string();
        // Timeouts are ours (`tokio::time::timeout` with a budget that grows
        // with the batch), not the connection's.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(None);
        let key_head = format!("{}:v{KEY_SCHEMA_VERSION}:", settings.prefix);
        let pattern_head = escape_glob(&key_head);

        let first = connect_and_ping(&client, &config, settings.connect_timeout).await;
        let connected = match first {
            Ok(conn) => {
                tracing::info!(redis = %address, prefix = %settings.prefix, "shared cache tier connected");
                Some(Arc::new(conn))
            }
            Err(error) => {
                tracing::warn!(redis = %address, %error, "Redis is unreachable at start-up: serving without the shared cache tier until it answers");
                None
            }
        };
        let breaker = Breaker::new(settings.breaker, connected.is_some(), Instant::now());
        let inner = Arc::new(Inner {
            client,
            config,
            conn: ArcSwapOption::new(connected),
            breaker,
            key_head,
            pattern_head,
            op_timeout: settings.op_timeout,
            connect_timeout: settings.connect_timeout,
            address,
            purges: PurgeNames::new(&settings.prefix),
        });
        let tick = (settings.breaker.cooldown / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let supervisor = tokio::spawn(supervise(Arc::downgrade(&inner), tick));
        Ok(RedisCache { inner, supervisor })
    }

    #[cfg(test)]
    pub(crate) fn breaker_state(&self) -> super::breaker::BreakerState {
        self.inner.breaker.state()
    }

    /// What the purge subscriber needs: its own client (a pub/sub
    /// connection is dedicated), the connect budget, the names, and where
    /// Redis is for logs.
    pub(crate) fn subscriber_parts(
        &self,
    ) -> (
        redis::Client,
        AsyncConnectionConfig,
        Duration,
        PurgeNames,
        String,
    ) {
        (
            self.inner.client.clone(),
            self.inner.config.clone(),
            self.inner.connect_timeout,
            self.inner.purges.clone(),
            self.inner.address.clone(),
        )
    }

    /// Tells every replica to purge its in-process tier (`None`: every
    /// model): one `EVAL` that counts the purge (the generation) and
    /// publishes it. Returns the generation.
    pub(crate) async fn publish_purge(&self, model: Option<&str>) -> Result<u64, OpError> {
        let names = &self.inner.purges;
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(PUBLISH_PURGE)
            .arg(1)
            .arg(&names.generation_key)
            .arg(&names.channel)
            .arg(&names.origin)
            .arg(model.unwrap_or(super::purge::ALL_MODELS));
        let (generation,): (u64,) = self.inner.execute("publish", &pipe, 1).await?;
        Ok(generation)
    }

    /// The Redis key of an entry.
    pub(crate) fn redis_key(&self, model: &str, key: &ScoreKey) -> String {
        format!("{}{model}:{}", self.inner.key_head, key.to_hex())
    }

    /// Looks keys up: one pipeline of `MGET`s. Each hit comes with how long
    /// it remains valid. Counts lookups under `tier="l2"`.
    pub(crate) async fn get_many(
        &self,
        model: &str,
        keys: &[ScoreKey],
    ) -> Vec<Option<(CachedScore, Duration)>> {
        let mut found: Vec<Option<(CachedScore, Duration)>> = vec![None; keys.len()];
        if keys.is_empty() {
            return found;
        }
        if !self.inner.breaker.allows_requests() {
            count_lookups(model, CacheTier::L2, "bypass", keys.len());
            return found;
        }
        let mut pipe = redis::pipe();
        for chunk in keys.chunks(CHUNK) {
            let mut mget = redis::cmd("MGET");
            for key in chunk {
                mget.arg(self.redis_key(model, key));
            }
            pipe.add_command(mget);
        }
        let chunks = keys.len().div_ceil(CHUNK);
        let replies: Vec<Vec<Option<Vec<u8>>>> =
            match self.inner.execute("mget", &pipe, chunks).await {
                Ok(replies) => replies,
                Err(_) => {
                    count_lookups(model, CacheTier::L2, "error", keys.len());
                    return found;
                }
            };
        let now_ms = unix_ms();
        let (mut hits, mut corrupt) = (0, 0);
        for (slot, value) in found.iter_mut().zip(replies.into_iter().flatten()) {
            let Some(bytes) = value else { continue };
            match codec::decode(&bytes) {
                Ok((value, expires_at_ms)) if expires_at_ms > now_ms => {
                    hits += 1;
                    *slot = Some((value, Duration::from_millis(expires_at_ms - now_ms)));
                }
                // Expired by our clock though Redis still had it (clock skew
                // between replicas): recompute rather than extend it.
                Ok(_) => {}
                Err(error) => {
                    corrupt += 1;
                    tracing::debug!(model, %error, "undecodable value in the shared cache tier: treated as a miss");
                }
            }
        }
        if corrupt > 0 {
            metrics::counter!("riskhost_redis_errors_total", "op" => "mget", "kind" => "decode")
                .increment(corrupt);
        }
        count_lookups(model, CacheTier::L2, "hit", hits);
        count_lookups(model, CacheTier::L2, "miss", keys.len() - hits);
        found
    }

    /// Creates `model`'s write counters at 0 (`put_many`'s results).
    pub(crate) fn register_model(&self, model: &str) {
        for result in WRITE_RESULTS {
            metrics::counter!("riskhost_cache_writes_total", "model" => model.to_owned(), "tier" => "l2", "result" => result)
                .increment(0);
        }
    }

    /// Stores entries: one pipeline of `SET key value PX ttl`.
    pub(crate) async fn put_many(
        &self,
        model: &str,
        entries: &[(ScoreKey, Arc<CachedScore>, Duration)],
    ) {
        let entries: Vec<_> = entries.iter().filter(|e| !e.2.is_zero()).collect();
        if entries.is_empty() {
            return;
        }
        let count = |result: &'static str| {
            metrics::counter!("riskhost_cache_writes_total", "model" => model.to_owned(), "tier" => "l2", "result" => result)
                .increment(entries.len() as u64);
        };
        if !self.inner.breaker.allows_requests() {
            count("bypass");
            return;
        }
        let now_ms = unix_ms();
        let mut pipe = redis::pipe();
        for (key, value, ttl) in &entries {
            let ttl_ms = u64::try_from(ttl.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, MAX_TTL_MS);
            pipe.cmd("SET")
                .arg(self.redis_key(model, key))
                .arg(codec::encode(value, now_ms.saturating_add(ttl_ms)))
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        let chunks = entries.len().div_ceil(CHUNK);
        match self.inner.execute::<()>("set", &pipe, chunks).await {
            Ok(()) => count("ok"),
            Err(_) => count("error"),
        }
    }

    /// Deletes one model's entries or all of this prefix's (current key
    /// schema), returning how many were deleted. `SCAN` + `UNLINK`, so Redis
    /// never blocks on a huge `KEYS`.
    pub(crate) async fn purge(&self, model: Option<&str>) -> Result<u64, OpError> {
        if !self.inner.breaker.allows_requests() {
            return Err(OpError::Unavailable);
        }
        let pattern = match model {
            // Model names are lower-kebab-case (checked by the caller), so
            // they need no escaping.
            Some(model) => format!("{}{model}:*", self.inner.pattern_head),
            None => format!("{}*", self.inner.pattern_head),
        };
        let mut cursor: u64 = 0;
        let mut purged = 0u64;
        loop {
            let mut scan = redis::pipe();
            scan.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(CHUNK);
            let ((next, keys),): ((u64, Vec<Vec<u8>>),) =
                self.inner.execute("scan", &scan, 1).await?;
            if !keys.is_empty() {
                let mut unlink = redis::pipe();
                unlink.cmd("UNLINK").arg(keys);
                let (n,): (u64,) = self.inner.execute("unlink", &unlink, 1).await?;
                purged += n;
            }
            if next == 0 {
                return Ok(purged);
            }
            cursor = next;
        }
    }
}

impl Inner {
    /// Runs a pipeline within `op_timeout × slices` and feeds the breaker.
    async fn execute<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
        slices: usize,
    ) -> Result<T, OpError> {
        let Some(conn) = self.conn.load_full() else {
            let error = OpError::Unavailable;
            self.failed(op, &error);
            return Err(error);
        };
        let mut conn = MultiplexedConnection::clone(&conn);
        let budget = self
            .op_timeout
            .saturating_mul(u32::try_from(slices.max(1)).unwrap_or(u32::MAX));
        let started = Instant::now();
        let result = tokio::time::timeout(budget, pipe.query_async::<T>(&mut conn)).await;
        metrics::histogram!("riskhost_redis_op_duration_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(value)) => {
                self.breaker.on_success();
                return Ok(value);
            }
            Ok(Err(e)) => OpError::Redis(e),
            Err(_) => OpError::Timeout(budget),
        };
        self.failed(op, &error);
        Err(error)
    }

    fn failed(&self, op: &'static str, error: &OpError) {
        metrics::counter!("riskhost_redis_errors_total", "op" => op, "kind" => error.kind())
            .increment(1);
        let now = Instant::now();
        let transition = if error.loses_connection() {
            self.breaker.trip(now)
        } else {
            self.breaker.on_failure(now)
        };
        if transition == Transition::Opened {
            // The probe reconnects from scratch: a connection that timed out
            // may be wedged, and one that errored is gone.
            self.conn.store(None);
            tracing::warn!(redis = %self.address, op, %error, "shared cache tier failing: circuit breaker open, scoring uncached until Redis answers again");
        } else {
            tracing::debug!(redis = %self.address, op, %error, "shared cache tier operation failed");
        }
    }
}

/// Runs the breaker's probes: after each cool-down, reconnect and `PING`.
/// Holds only a weak reference, so it ends with the tier.
async fn supervise(inner: Weak<Inner>, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else { return };
        if !inner.breaker.try_begin_probe(Instant::now()) {
            continue;
        }
        match connect_and_ping(&inner.client, &inner.config, inner.connect_timeout).await {
            Ok(conn) => {
                // Install the connection before closing the breaker, so no
                // request finds the breaker closed and no connection.
                inner.conn.store(Some(Arc::new(conn)));
                inner.breaker.end_probe(true, Instant::now());
                tracing::info!(redis = %inner.address, "shared cache tier reachable again: circuit breaker closed");
            }
            Err(error) => {
                inner.breaker.end_probe(false, Instant::now());
                metrics::counter!("riskhost_redis_errors_total", "op" => "probe", "kind" => error.kind())
                    .increment(1);
                tracing::debug!(redis = %inner.address, %error, "shared cache tier probe failed");
            }
        }
    }
}

async fn connect_and_ping(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    timeout: Duration,
) -> Result<MultiplexedConnection, OpError> {
    let started = Instant::now();
    let attempt = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok::<_, OpError>(conn)
    };
    let result = tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(OpError::Timeout(timeout)));
    metrics::histogram!("riskhost_redis_op_duration_seconds", "op" => "connect")
        .record(started.elapsed().as_secs_f64());
    result
}

/// Escapes the characters `SCAN MATCH` treats as glob syntax.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerState;
    use riskhost_engine::bindings::{Contribution, ModelError, Score, Unit};

    // These talk to the real Redis of `tests/services.sh`, each test under a
    // prefix of its own so they run in parallel.
    const URL: &str = "redis://127.0.0.1:6379/";

    fn settings(url: &str, test: &str) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            prefix: format!("riskhost-unit-{test}-{}", std::process::id()),
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            breaker: BreakerSettings {
                failure_threshold: 3,
                cooldown: Duration::from_millis(100),
            },
        }
    }

    fn key(i: u32) -> ScoreKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        ScoreKey(k)
    }

    fn memo(i: u32) -> Arc<CachedScore> {
        Arc::new(CachedScore {
            outcome: Ok(Score {
                value: f64::from(i),
                unit: Unit::CurrencyAmount,
                breakdown: vec![Contribution {
                    name: format!("I{i}"),
                    value: -0.0,
                }],
            }),
        })
    }

    async fn raw(test_settings: &RedisSettings) -> MultiplexedConnection {
        let client = redis::Client::open(test_settings.url.as_str()).expect("url");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis on 127.0.0.1:6379 (run tests/services.sh)")
    }

    #[tokio::test]
    async fn batches_round_trip_across_chunks_under_documented_keys() {
        let settings = settings(URL, "batch");
        let cache = RedisCache::connect(settings.clone())
            .await
            .expect("connect");
        assert_eq!(cache.breaker_state(), BreakerState::Closed);
        let n = 2 * CHUNK as u32 + 17;
        let ttl = Duration::from_secs(60);
        let entries: Vec<_> = (0..n).map(|i| (key(i), memo(i), ttl)).collect();
        cache.put_many("m-a", &entries).await;
        // Every other key of model m-a, plus keys never stored.
        let keys: Vec<ScoreKey> = (0..n + 10).step_by(2).map(key).collect();
        let got = cache.get_many("m-a", &keys).await;
        assert_eq!(got.len(), keys.len());
        for (i, slot) in (0..n + 10).step_by(2).zip(&got) {
            match slot {
                Some((value, remaining)) if i < n => {
                    assert_eq!(value, memo(i).as_ref());
                    assert!(*remaining <= ttl && *remaining > Duration::ZERO);
                }
                None if i >= n => {}
                other => panic!("key {i}: {other:?}"),
            }
        }
        // Another model's name is another key space.
        assert!(
            cache
                .get_many("m-b", &keys[..3])
                .await
                .iter()
                .all(Option::is_none)
        );

        let mut conn = raw(&settings).await;
        let redis_key = format!(
            "{}:v{KEY_SCHEMA_VERSION}:m-a:{}",
            settings.prefix,
            key(5).to_hex()
        );
        assert_eq!(cache.redis_key("m-a", &key(5)), redis_key);
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(pttl > 0 && pttl <= 60_000, "PTTL {pttl}");

        // A value this build cannot decode is a miss, not an error.
        let _: () = redis::cmd("SET")
            .arg(&redis_key)
            .arg(b"\x07garbage".as_slice())
            .query_async(&mut conn)
            .await
            .expect("SET");
        assert!(cache.get_many("m-a", &[key(5)]).await[0].is_none());
        assert_eq!(cache.breaker_state(), BreakerState::Closed);
        let _ = cache.purge(None).await;
    }

    #[tokio::test]
    async fn purge_removes_one_model_or_the_whole_prefix_only() {
        let settings = settings(URL, "purge");
        let cache = RedisCache::connect(settings.clone())
            .await
            .expect("connect");
        let ttl = Duration::from_secs(60);
        let errors = Arc::new(CachedScore {
            outcome: Err(ModelError::InsufficientData("short".into())),
        });
        cache
            .put_many(
                "m-a",
                &(0..1500)
                    .map(|i| (key(i), memo(i), ttl))
                    .collect::<Vec<_>>(),
            )
            .await;
        cache
            .put_many("m-b", &[(key(1), errors.clone(), ttl)])
            .await;
        // A neighbour deployment whose prefix extends ours is not ours.
        let mut conn = raw(&settings).await;
        let neighbour = format!("{}x:v{KEY_SCHEMA_VERSION}:m-a:00", settings.prefix);
        let _: () = redis::cmd("SET")
            .arg(&neighbour)
            .arg(1)
            .arg("EX")
            .arg(60)
            .query_async(&mut conn)
            .await
            .expect("SET");

        assert_eq!(cache.purge(Some("m-a")).await.ok(), Some(1500));
        assert!(cache.get_many("m-a", &[key(0)]).await[0].is_none());
        let kept = cache.get_many("m-b", &[key(1)]).await;
        assert_eq!(kept[0].as_ref().map(|(v, _)| v), Some(errors.as_ref()));
        assert_eq!(cache.purge(None).await.ok(), Some(1));
        assert!(cache.get_many("m-b", &[key(1)]).await[0].is_none());
        let exists: u64 = redis::cmd("EXISTS")
            .arg(&neighbour)
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        assert_eq!(exists, 1, "purge reached past its prefix");
        let _: () = redis::cmd("DEL")
            .arg(&neighbour)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_a_warning_and_every_operation_a_miss() {
        // Nothing listens on port 1.
        let cache = RedisCache::connect(settings("redis://127.0.0.1:1/", "down"))
            .await
            .expect("starts anyway");
        assert_ne!(cache.breaker_state(), BreakerState::Closed);
        assert!(cache.get_many("m", &[key(1)]).await[0].is_none());
        cache
            .put_many("m", &[(key(1), memo(1), Duration::from_secs(1))])
            .await;
        assert!(matches!(cache.purge(None).await, Err(OpError::Unavailable)));
        assert!(matches!(
            RedisCache::connect(settings("http://nope", "bad")).await,
            Err(RedisSetupError::Url(_))
        ));
        let mut bad_prefix = settings(URL, "prefix");
        bad_prefix.prefix = "has space".into();
        assert!(matches!(
            RedisCache::connect(bad_prefix).await,
            Err(RedisSetupError::Prefix(_))
        ));
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("riskhost:v1:"), "riskhost:v1:");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
