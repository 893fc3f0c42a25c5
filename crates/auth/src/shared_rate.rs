//! Fleet-wide rate limits: one GCRA bucket per caller in Redis, shared by
//! every replica, so a key gets its rate across the fleet rather than once
//! per replica.
//!
//! Each decision is one round trip: `EVALSHA` of [`GCRA`], which reads the
//! bucket's theoretical arrival time (TAT), decides against Redis's own
//! clock (`TIME`, so replicas with skewed clocks still share one timeline),
//! and writes the new TAT with an expiry of when the bucket is full again
//! (so Redis holds only recently active callers). The arithmetic is
//! governor's, so the shared bucket admits exactly what a local bucket of
//! the same quota would.
//!
//! A fast bucket is not asked once per request: a round trip per request
//! made Redis part of every request's cost (an L1 hit took 1.5× the CPU)
//! and the fleet's request rate Redis's command rate. Where a bucket's
//! quota refills at least [`LEASE_MIN_TOKENS`] requests in a
//! [`LEASE_WINDOW`] (and its burst is 16 times that), a replica takes a
//! *lease*: up to that many requests from the bucket in one round trip,
//! sized to what the replica used of its last lease, spent locally and
//! dropped when the window ends. Tokens are taken before they are spent,
//! so the fleet never admits more than the bucket gives; a lease spent
//! late lets through at most one window of the quota early, and a lease
//! dropped unspent refuses at most one window of it. Slower buckets (every
//! per-key quota of the default settings) keep one round trip per request.
//!
//! Redis is not allowed to become a dependency of authentication: every
//! call has a short timeout, and a failure or timeout answers
//! [`SharedError`], on which [`RateLimits`](crate::RateLimits) decides with
//! the replica's own `governor` buckets (counted in
//! `riskhost_rate_limit_fallback_total`). A small circuit breaker stops
//! requests from paying the timeout while Redis is down: after
//! `failure_threshold` consecutive failures (or at once on a lost
//! connection) requests skip Redis, and a supervisor task reconnects after
//! each cool-down, re-loads the script, and closes the breaker. The
//! supervisor holds a weak reference, so it ends with its owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

/// The GCRA decision for up to `ARGV[3]` requests at once. `KEYS[1]` is the
/// bucket; `ARGV[1]` the emission interval `t` and `ARGV[2]` the tolerance
/// `tau = t × (burst − 1)`, both in microseconds. Answers `{granted, 0}`
/// with 1 ≤ granted ≤ `ARGV[3]` (as many as the bucket holds now), or
/// `{0, wait}`: how many microseconds until one request would be admitted
/// (always > 0). One request at a time, it is governor's GCRA exactly.
pub(crate) const GCRA: &str = r"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
if tat - now > tau then
    return {0, tat - tau - now}
end
local granted = math.min(want, math.floor((tau - (tat - now)) / t) + 1)
local next_tat = tat + granted * t
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1)
return {granted, 0}
";

/// How long a lease may be spent: the most a replica takes from a shared
/// bucket ahead of its requests, in time of the bucket's quota.
pub(crate) const LEASE_WINDOW: Duration = Duration::from_millis(10);

/// The fewest requests a bucket must refill in a [`LEASE_WINDOW`] to be
/// leased: below it a lease would save few round trips.
pub(crate) const LEASE_MIN_TOKENS: u64 = 4;

/// Leased buckets a replica keeps before it forgets the spent ones.
const LEASE_SLOTS: usize = 4096;

/// How to reach Redis and when to give up on it.
#[derive(Debug, Clone)]
pub struct SharedRateSettings {
    /// `redis://…`, the same Redis as the shared cache tier.
    pub url: String,
    /// First segment of every key (`--redis-prefix`).
    pub prefix: String,
    /// Budget of one decision (one round trip).
    pub op_timeout: Duration,
    /// Budget of connecting (at start-up and in each probe).
    pub connect_timeout: Duration,
    /// Consecutive failed decisions that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before the supervisor reconnects.
    pub cooldown: Duration,
}

/// The configuration cannot work (an unreachable Redis is only a warning).
#[derive(Debug, thiserror::Error)]
pub enum SharedRateSetupError {
    #[error("--redis-url is not a Redis URL: {0}")]
    Url(String),
    #[error("--redis-prefix must be 1 to 128 printable ASCII characters without spaces, got {0:?}")]
    Prefix(String),
}

/// Why the shared bucket could not decide; the caller falls back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SharedError {
    #[error("no connection to Redis (circuit breaker open)")]
    Unavailable,
    #[error("Redis did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the rate-limit script answered [{0}, {1}]")]
    Answer(i64, i64),
}

/// Every value [`SharedError::reason`] answers.
pub(crate) const FALLBACK_REASONS: [&str; 3] = ["unavailable", "timeout", "error"];

impl SharedError {
    /// The `reason` label of `riskhost_rate_limit_fallback_total`.
    /// The `reason` label of `riskhost_rate_limit_fallback_total`: one of
    /// [`FALLBACK_REASONS`].
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            SharedError::Unavailable => "unavailable",
            SharedError::Timeout(_) => "timeout",
            SharedError::Redis(_) | SharedError::Answer(..) => "error",
        }
    }

    fn loses_connection(&self) -> bool {
        match self {
            SharedError::Unavailable => true,
            SharedError::Redis(e) => {
                e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
            }
            SharedError::Timeout(_) | SharedError::Answer(..) => false,
        }
    }
}

/// A quota in the script's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Emission interval: one request per `t_us` microseconds.
    pub(crate) t_us: u64,
    /// Tolerance: `t × (burst − 1)` microseconds.
    pub(crate) tau_us: u64,
}

impl Gcra {
    /// `per_minute` > 0 and `burst` ≥ 1, as governor's `Quota` has them.
    pub(crate) fn new(per_minute: u32, burst: u32) -> Gcra {
        let t_us = (60_000_000 / u64::from(per_minute.max(1))).max(1);
        Gcra {
            t_us,
            tau_us: t_us.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// The largest lease of this quota: what it refills in a
    /// [`LEASE_WINDOW`], at most a sixteenth of its burst; 1 (no lease)
    /// when that is under [`LEASE_MIN_TOKENS`].
    pub(crate) fn lease_limit(self) -> u64 {
        let window_us = u64::try_from(LEASE_WINDOW.as_micros()).unwrap_or(u64::MAX);
        let burst = self.tau_us / self.t_us + 1;
        let limit = (window_us / self.t_us).min(burst / 16);
        if limit < LEASE_MIN_TOKENS { 1 } else { limit }
    }
}

/// What the script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// This many requests were taken from the bucket (at least one).
    Granted(u64),
    /// Nothing was taken; one request would be admitted after the wait.
    Refused(Duration),
}

/// A replica's lease on one shared bucket.
#[derive(Default)]
struct LeaseSlot {
    state: Mutex<Lease>,
    /// Held while the lease is renewed, so concurrent requests that find it
    /// spent wait for one round trip instead of each taking their own.
    renewal: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Lease {
    /// Requests taken from the bucket and not yet spent.
    left: u64,
    /// Size of the last grant (what the next one is sized from).
    granted: u64,
    /// End of the window the tokens may be spent in.
    until: Option<Instant>,
}

impl LeaseSlot {
    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        // Plain counters never left half-written: poisoning cannot corrupt them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spends one leased request, if the lease has one left in its window.
    fn spend(&self, now: Instant) -> bool {
        let mut lease = self.lease();
        if lease.left > 0 && lease.until.is_some_and(|until| now < until) {
            lease.left -= 1;
            true
        } else {
            false
        }
    }

    /// How many requests to ask for: double the last grant when it was all
    /// spent in its window, else what was spent of it; within `1..=limit`.
    fn wanted(&self, now: Instant, limit: u64) -> u64 {
        let lease = self.lease();
        let spent_in_time = lease.left == 0 && lease.until.is_some_and(|until| now < until);
        let want = if spent_in_time {
            lease.granted.saturating_mul(2)
        } else {
            lease.granted - lease.left
        };
        want.clamp(1, limit)
    }

    /// Records a grant of `granted` requests, one of them spent now.
    fn record_grant(&self, granted: u64, now: Instant) {
        *self.lease() = Lease {
            left: granted - 1,
            granted,
            until: Some(now + LEASE_WINDOW),
        };
    }

    fn expired(&self, now: Instant) -> bool {
        self.lease().until.is_none_or(|until| now >= until)
    }
}

#[derive(Debug, Clone, Copy)]
enum BreakerState {
    Closed { failures: u32 },
    Open { probe_at: Instant },
}

/// The connection and the script's digest, replaced together by a probe.
#[derive(Clone)]
struct Live {
    conn: MultiplexedConnection,
    sha: String,
}

struct Inner {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// `{prefix}:ratelimit:v1:`, the head of every bucket key.
    key_head: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    failure_threshold: u32,
    cooldown: Duration,
    /// `None` while the breaker is open.
    live: Mutex<Option<Live>>,
    breaker: Mutex<BreakerState>,
    /// Where Redis is, for logs (never the URL: it may hold a password).
    address: String,
    /// The leases of this replica, by bucket key.
    leases: Mutex<HashMap<String, Arc<LeaseSlot>>>,
    /// Decisions Redis made, for the tests that check leases save round
    /// trips (the operator's count is the `rate_limit` op's histogram).
    round_trips: AtomicU64,
}

/// The shared buckets. Dropping it stops its supervisor.
pub struct SharedRate {
    inner: Arc<Inner>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for SharedRate {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl std::fmt::Debug for SharedRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRate")
            .field("redis", &self.inner.address)
            .field("key_head", &self.inner.key_head)
            .finish()
    }
}

impl SharedRate {
    /// Validates the settings and tries to connect once; an unreachable
    /// Redis starts the breaker open (local buckets decide) and the
    /// supervisor keeps trying.
    pub async fn connect(settings: SharedRateSettings) -> Result<SharedRate, SharedRateSetupError> {
        let prefix_ok = !settings.prefix.is_empty()
            && settings.prefix.len() <= 128
            && settings.prefix.bytes().all(|b| b.is_ascii_graphic());
        if !prefix_ok {
            return Err(SharedRateSetupError::Prefix(settings.prefix));
        }
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| SharedRateSetupError::Url(e.to_string()))?;
        let address = client.get_connection_info().addr().to_string();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(None);
        let first = connect_and_load(&client, &config, settings.connect_timeout).await;
        let now = Instant::now();
        let (live, breaker) = match first {
            Ok(live) => {
                tracing::info!(redis = %address, prefix = %settings.prefix, "fleet-wide rate limits in Redis");
                (Some(live), BreakerState::Closed { failures: 0 })
            }
            Err(error) => {
                tracing::warn!(redis = %address, %error, "Redis is unreachable at start-up: rate limits are per replica until it answers");
                (None, BreakerState::Open { probe_at: now })
            }
        };
        let inner = Arc::new(Inner {
            client,
            config,
            key_head: format!("{}:ratelimit:v1:", settings.prefix),
            op_timeout: settings.op_timeout,
            connect_timeout: settings.connect_timeout,
            failure_threshold: settings.failure_threshold.max(1),
            cooldown: settings.cooldown,
            live: Mutex::new(live),
            breaker: Mutex::new(breaker),
            address,
            leases: Mutex::new(HashMap::new()),
            round_trips: AtomicU64::new(0),
        });
        let tick =
            (settings.cooldown / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let supervisor = tokio::spawn(supervise(Arc::downgrade(&inner), tick));
        Ok(SharedRate { inner, supervisor })
    }

    /// The Redis key of a bucket (`kind` is `key` or `ip`).
    pub(crate) fn bucket_key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.inner.key_head)
    }

    /// Takes one request from the bucket: `Ok(None)` admitted,
    /// `Ok(Some(wait))` refused for `wait`, `Err` when Redis could not
    /// decide (the caller falls back to its local bucket). A fast bucket is
    /// taken from a lease (see the module's documentation).
    pub(crate) async fn take(
        &self,
        bucket: &str,
        quota: Gcra,
    ) -> Result<Option<Duration>, SharedError> {
        let limit = quota.lease_limit();
        if limit == 1 {
            return Ok(match self.decide(bucket, quota, 1).await? {
                Decision::Granted(_) => None,
                Decision::Refused(wait) => Some(wait),
            });
        }
        let slot = self.inner.lease_slot(bucket);
        if slot.spend(Instant::now()) {
            return Ok(None);
        }
        let _renewing = slot.renewal.lock().await;
        // Another request may have renewed it while this one waited.
        let now = Instant::now();
        if slot.spend(now) {
            return Ok(None);
        }
        match self.decide(bucket, quota, slot.wanted(now, limit)).await? {
            Decision::Granted(granted) => {
                slot.record_grant(granted, Instant::now());
                Ok(None)
            }
            Decision::Refused(wait) => Ok(Some(wait)),
        }
    }

    /// One round trip: takes up to `want` requests from the bucket.
    pub(crate) async fn decide(
        &self,
        bucket: &str,
        quota: Gcra,
        want: u64,
    ) -> Result<Decision, SharedError> {
        let live = self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(Live { mut conn, sha }) = live else {
            return Err(SharedError::Unavailable);
        };
        let run = async {
            let evalsha = redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(1)
                .arg(bucket)
                .arg(quota.t_us)
                .arg(quota.tau_us)
                .arg(want)
                .query_async::<(i64, i64)>(&mut conn)
                .await;
            match evalsha {
                // Redis restarted or its scripts were flushed: run the body,
                // which also caches it again for the next EVALSHA.
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    redis::cmd("EVAL")
                        .arg(GCRA)
                        .arg(1)
                        .arg(bucket)
                        .arg(quota.t_us)
                        .arg(quota.tau_us)
                        .arg(want)
                        .query_async::<(i64, i64)>(&mut conn)
                        .await
                }
                other => other,
            }
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.op_timeout, run).await;
        metrics::histogram!("riskhost_redis_op_duration_seconds", "op" => "rate_limit")
            .record(started.elapsed().as_secs_f64());
        if let Ok(Ok(_)) = &result {
            self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        let error = match result {
            Ok(Ok((granted, 0))) if granted >= 1 && granted.unsigned_abs() <= want => {
                self.inner.succeeded();
                return Ok(Decision::Granted(granted.unsigned_abs()));
            }
            Ok(Ok((0, wait_us))) if wait_us > 0 => {
                self.inner.succeeded();
                return Ok(Decision::Refused(Duration::from_micros(
                    wait_us.unsigned_abs(),
                )));
            }
            Ok(Ok((granted, wait_us))) => SharedError::Answer(granted, wait_us),
            Ok(Err(e)) => SharedError::Redis(e),
            Err(_) => SharedError::Timeout(self.inner.op_timeout),
        };
        self.inner.failed(&error);
        Err(error)
    }

    #[cfg(test)]
    pub(crate) fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        matches!(*self.inner.breaker(), BreakerState::Closed { .. })
    }
}

impl Inner {
    /// The lease slot of `bucket`, made on first use. Past [`LEASE_SLOTS`]
    /// buckets the expired leases are dropped, so memory follows the
    /// callers active in the last window, not every caller ever.
    fn lease_slot(&self, bucket: &str) -> Arc<LeaseSlot> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = leases.get(bucket) {
            return slot.clone();
        }
        if leases.len() >= LEASE_SLOTS {
            let now = Instant::now();
            leases.retain(|_, slot| !slot.expired(now));
        }
        let slot = Arc::new(LeaseSlot::default());
        leases.insert(bucket.to_owned(), slot.clone());
        slot
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // A plain value never left half-written: poisoning cannot corrupt it.
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn succeeded(&self) {
        if let BreakerState::Closed { failures } = &mut *self.breaker() {
            *failures = 0;
        }
    }

    fn failed(&self, error: &SharedError) {
        metrics::counter!("riskhost_redis_errors_total", "op" => "rate_limit", "kind" => error.reason())
            .increment(1);
        let opened = {
            let mut state = self.breaker();
            match &mut *state {
                BreakerState::Closed { failures } => {
                    *failures += 1;
                    let open = error.loses_connection() || *failures >= self.failure_threshold;
                    if open {
                        *state = BreakerState::Open {
                            probe_at: Instant::now() + self.cooldown,
                        };
                    }
                    open
                }
                BreakerState::Open { .. } => false,
            }
        };
        if opened {
            // The probe reconnects from scratch: a connection that timed out
            // may be wedged, and one that errored is gone.
            *self.live.lock().unwrap_or_else(PoisonError::into_inner) = None;
            tracing::warn!(redis = %self.address, %error, "fleet-wide rate limits failing: circuit breaker open, limiting per replica until Redis answers again");
        } else {
            tracing::debug!(redis = %self.address, %error, "fleet-wide rate-limit decision failed");
        }
    }
}

/// After each cool-down: reconnect, load the script, close the breaker.
async fn supervise(inner: Weak<Inner>, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else { return };
        let due = matches!(*inner.breaker(), BreakerState::Open { probe_at } if Instant::now() >= probe_at);
        if !due {
            continue;
        }
        match connect_and_load(&inner.client, &inner.config, inner.connect_timeout).await {
            Ok(live) => {
                // The connection first, then the breaker: a request that
                // finds the breaker closed finds a connection.
                *inner.live.lock().unwrap_or_else(PoisonError::into_inner) = Some(live);
                *inner.breaker() = BreakerState::Closed { failures: 0 };
                tracing::info!(redis = %inner.address, "fleet-wide rate limits reachable again: circuit breaker closed");
            }
            Err(error) => {
                *inner.breaker() = BreakerState::Open {
                    probe_at: Instant::now() + inner.cooldown,
                };
                metrics::counter!("riskhost_redis_errors_total", "op" => "rate_limit_probe", "kind" => error.reason())
                    .increment(1);
                tracing::debug!(redis = %inner.address, %error, "fleet-wide rate-limit probe failed");
            }
        }
    }
}

/// Connects and loads [`GCRA`] (`SCRIPT LOAD` answers its SHA-1, so no
/// hashing crate is needed here).
async fn connect_and_load(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    timeout: Duration,
) -> Result<Live, SharedError> {
    let attempt = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(GCRA)
            .query_async(&mut conn)
            .await?;
        Ok::<_, SharedError>(Live { conn, sha })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(SharedError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The real Redis of `tests/services.sh`, under a prefix per test.
    const URL: &str = "redis://127.0.0.1:6379/";

    fn settings(url: &str, test: &str) -> SharedRateSettings {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        SharedRateSettings {
            url: url.into(),
            prefix: format!("riskhost-unit-rate-{test}-{}-{nanos}", std::process::id()),
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            failure_threshold: 3,
            cooldown: Duration::from_millis(100),
        }
    }

    /// A replica's buckets on the real Redis, under a prefix of its own.
    async fn connected(test: &str) -> SharedRate {
        SharedRate::connect(settings(URL, test))
            .await
            .expect("connect")
    }

    #[test]
    fn quotas_become_governors_interval_and_tolerance() {
        assert_eq!(
            Gcra::new(60, 1),
            Gcra {
                t_us: 1_000_000,
                tau_us: 0
            }
        );
        assert_eq!(
            Gcra::new(60, 5),
            Gcra {
                t_us: 1_000_000,
                tau_us: 4_000_000
            }
        );
        assert_eq!(Gcra::new(1, 3).tau_us, 120_000_000);
        // Faster than a microsecond per request still advances the clock.
        assert_eq!(Gcra::new(u32::MAX, 1).t_us, 1);
    }

    #[tokio::test]
    async fn the_burst_is_admitted_then_the_wait_is_one_interval_at_most() {
        let settings = settings(URL, "burst");
        let shared = SharedRate::connect(settings.clone())
            .await
            .expect("connect");
        assert!(shared.is_closed());
        // One a minute, burst 3: three at once, then a wait of at most a minute.
        let quota = Gcra::new(1, 3);
        let bucket = shared.bucket_key("key", "svc");
        assert_eq!(bucket, format!("{}:ratelimit:v1:key:svc", settings.prefix));
        for i in 0..3 {
            assert_eq!(
                shared.take(&bucket, quota).await.expect("decided"),
                None,
                "request {i}"
            );
        }
        let wait = shared
            .take(&bucket, quota)
            .await
            .expect("decided")
            .expect("refused");
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        // A refusal takes nothing: the wait does not grow.
        let again = shared
            .take(&bucket, quota)
            .await
            .expect("decided")
            .expect("refused");
        assert!(again <= wait, "{again:?} > {wait:?}");
        // Another bucket is untouched.
        assert_eq!(
            shared
                .take(&shared.bucket_key("key", "other"), quota)
                .await
                .expect("decided"),
            None
        );

        // The bucket expires when it would be full again: 3 minutes at most.
        let client = redis::Client::open(URL).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis");
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&bucket)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(pttl > 170_000 && pttl <= 180_001, "PTTL {pttl}");

        // A second replica (another connection) draws from the same bucket.
        let other = SharedRate::connect(settings).await.expect("connect");
        assert!(other.take(&bucket, quota).await.expect("decided").is_some());

        // Scripts flushed (a restarted Redis): EVALSHA's NOSCRIPT is answered by EVAL.
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .expect("FLUSH");
        assert!(
            other
                .take(&bucket, quota)
                .await
                .expect("decided after NOSCRIPT")
                .is_some()
        );
        let _: () = redis::cmd("DEL")
            .arg(&bucket)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }

    #[tokio::test]
    async fn a_fast_bucket_refills_at_its_rate() {
        let shared = connected("refill").await;
        // 600 a minute (one per 100 ms), burst 1.
        let quota = Gcra::new(600, 1);
        let bucket = shared.bucket_key("ip", "10.0.0.1");
        assert_eq!(shared.take(&bucket, quota).await.expect("decided"), None);
        let wait = shared
            .take(&bucket, quota)
            .await
            .expect("decided")
            .expect("refused");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        tokio::time::sleep(wait + Duration::from_millis(5)).await;
        assert_eq!(shared.take(&bucket, quota).await.expect("decided"), None);
    }

    #[test]
    fn only_fast_buckets_with_deep_bursts_are_leased() {
        // 10,000 a second (one per 100 µs) refills 100 in a window; burst
        // 1,600 allows 100: leases of up to 100.
        assert_eq!(Gcra::new(600_000, 1_600).lease_limit(), 100);
        // The same rate with a burst of 64: a sixteenth is 4, still leased.
        assert_eq!(Gcra::new(600_000, 64).lease_limit(), 4);
        // Burst 32 (a sixteenth is 2) or 6,000 a minute (1 a window): one
        // round trip per request, as before leases.
        assert_eq!(Gcra::new(600_000, 32).lease_limit(), 1);
        assert_eq!(Gcra::new(6_000, 1_000_000).lease_limit(), 1);
        assert_eq!(Gcra::new(60, 5).lease_limit(), 1);
    }

    #[tokio::test]
    async fn one_round_trip_grants_as_many_as_the_bucket_holds() {
        let shared = connected("grant").await;
        let quota = Gcra::new(1, 3);
        let bucket = shared.bucket_key("key", "grant");
        assert_eq!(
            shared.decide(&bucket, quota, 2).await.expect("decided"),
            Decision::Granted(2)
        );
        // One left of three: a request for five gets one.
        assert_eq!(
            shared.decide(&bucket, quota, 5).await.expect("decided"),
            Decision::Granted(1)
        );
        match shared.decide(&bucket, quota, 5).await.expect("decided") {
            Decision::Refused(wait) => assert!(
                wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
                "{wait:?}"
            ),
            granted => panic!("an empty bucket granted {granted:?}"),
        }
    }

    #[tokio::test]
    async fn a_fast_bucket_is_leased_in_a_few_round_trips() {
        let shared = connected("lease").await;
        // One per 10 µs with a deep burst: leases of up to 1,000.
        let quota = Gcra::new(6_000_000, 1_000_000);
        assert_eq!(quota.lease_limit(), 1_000);
        let bucket = shared.bucket_key("key", "lease");
        for i in 0..5_000 {
            assert_eq!(
                shared.take(&bucket, quota).await.expect("decided"),
                None,
                "request {i}"
            );
        }
        // Leases double from one while they are spent in their window.
        let round_trips = shared.round_trips();
        assert!(
            (2..=500).contains(&round_trips),
            "{round_trips} round trips for 5,000 requests"
        );
    }

    #[tokio::test]
    async fn two_leasing_replicas_admit_no_more_than_the_bucket_gives() {
        let settings = settings(URL, "fleet");
        let (a, b) = (
            SharedRate::connect(settings.clone())
                .await
                .expect("connect"),
            SharedRate::connect(settings).await.expect("connect"),
        );
        // One per 2.5 ms, burst 64: leases of 4, and a bucket that 2,000
        // requests empty unless they take 5 s (it refills 400 a second).
        let quota = Gcra::new(24_000, 64);
        assert_eq!(quota.lease_limit(), 4);
        let bucket = a.bucket_key("key", "fleet");
        let started = Instant::now();
        let mut admitted = 0u64;
        for i in 0..2_000 {
            let replica = if i % 2 == 0 { &a } else { &b };
            if replica
                .take(&bucket, quota)
                .await
                .expect("decided")
                .is_none()
            {
                admitted += 1;
            }
        }
        // What the bucket gave in the elapsed time (the burst, then one per
        // interval) plus one lease per replica spent after it was taken.
        let elapsed_us = u64::try_from(started.elapsed().as_micros()).expect("µs");
        let given = 64 + elapsed_us / quota.t_us;
        assert!(
            admitted <= given + 2 * 4,
            "admitted {admitted}, the bucket gave {given}"
        );
        assert!(
            admitted < 2_000,
            "nothing was refused: the bound was not tested"
        );
        // At most a lease per replica is dropped unspent.
        assert!(admitted >= 64 - 2 * 4, "admitted {admitted}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_answers_unavailable_at_once() {
        // Nothing listens on port 1.
        let shared = SharedRate::connect(settings("redis://127.0.0.1:1/", "down"))
            .await
            .expect("starts anyway");
        assert!(!shared.is_closed());
        let started = Instant::now();
        let error = shared
            .take("x", Gcra::new(60, 1))
            .await
            .expect_err("no Redis");
        assert_eq!(error.reason(), "unavailable");
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(matches!(
            SharedRate::connect(settings("http://nope", "bad")).await,
            Err(SharedRateSetupError::Url(_))
        ));
    }
}
