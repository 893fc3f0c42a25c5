//! Memoization of model outputs.
//!
//! [`ScoreCache`] is the one interface the scoring path sees; the backend is
//! chosen by configuration at start-up (`server.rs`):
//!
//! - embedded default: [`InProcessCache`] alone, a size-bounded moka cache;
//! - with `--redis-url`: [`TieredCache`], the in-process tier (L1) in front
//!   of a Redis tier shared by every replica (L2, [`RedisCache`], whose
//!   circuit breaker is `breaker.rs`). A lookup tries L1, then L2 for what
//!   L1 lacks, and fills L1 from L2 hits; values cross to Redis in the
//!   encoding of `codec.rs`. A purge is broadcast over Redis pub/sub, so
//!   every replica's L1 drops what was purged (`purge.rs`).
//!
//! Keys come from [`score_key`] (`key.rs`), whose recipe guarantees a cached score never
//! crosses a model version, parameter set, portfolio content or market-data
//! snapshot, so nothing ever needs purging for correctness; the purge is an
//! operator's tool (to free memory, or out of caution). [`CachePolicy`]
//! decides what is stored and for how long. Backends never fail a request: a tier
//! that is down behaves like a miss and its writes are dropped.
//! `docs/caching.md` is the operator's description of all of this.
//!
//! The crate's API is what this file re-exports.

mod breaker;
mod codec;
mod key;
mod purge;
mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

pub use self::breaker::BreakerSettings;
pub use self::key::{CanonicalPosition, ScoreKey, days_since_epoch, score_key};
pub use self::redis::{RedisCache, RedisSettings, RedisSetupError};

use riskhost_engine::bindings::{ModelError, Score};

/// Which tier answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CacheTier {
    /// This process's memory.
    L1,
    /// The shared Redis tier.
    L2,
}

impl CacheTier {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::L1 => "l1",
            CacheTier::L2 => "l2",
        }
    }
}

/// A memoized model outcome: a score, or an error the model returned for
/// the job (only deterministic ones are stored; see [`CachePolicy`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedScore {
    pub outcome: Result<Score, ModelError>,
}

impl CachedScore {
    /// Approximate heap footprint, for the size bound.
    fn weight(&self) -> u32 {
        let bytes = match &self.outcome {
            Ok(score) => score.breakdown.iter().map(|c| c.name.len() + 32).sum(),
            Err(
                ModelError::InvalidInput(m)
                | ModelError::InsufficientData(m)
                | ModelError::Internal(m),
            ) => m.len(),
        };
        u32::try_from(64 + bytes).unwrap_or(u32::MAX)
    }
}

/// What a purge removed, per tier; `purged_l2` is `None` without a shared tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    pub purged_l1: u64,
    pub purged_l2: Option<u64>,
}

/// The shared tier could not be purged; the in-process tier was.
#[derive(Debug, Clone, thiserror::Error)]
#[error("purged {purged_l1} entries from l1, but the shared tier could not be purged: {reason}")]
pub struct PurgeError {
    pub purged_l1: u64,
    pub reason: String,
}

/// One lookup's answer: the entry and the tier that had it.
pub type Lookup = Option<(Arc<CachedScore>, CacheTier)>;

/// A memo store for model outcomes. Every method takes the model's name:
/// the shared tier files entries under it so one model's entries can be
/// purged, and metrics are labelled with it. Implementations must never fail
/// a request: a backend that is down behaves like a miss.
#[async_trait::async_trait]
pub trait ScoreCache: Send + Sync + 'static {
    /// Looks every key up in as few round trips as the backend allows (one
    /// pipelined round trip to the shared tier per call). The answer has one
    /// slot per key, in order.
    async fn get_many(&self, model: &str, keys: &[ScoreKey]) -> Vec<Lookup>;
    /// This process's tier only: no I/O, no metrics. For re-checking after
    /// winning a single-flight race, when a flight that just ended has filled
    /// it.
    fn get_local(&self, key: &ScoreKey) -> Option<Arc<CachedScore>>;
    /// Stores every entry with its time to live (one pipelined round trip to
    /// the shared tier per call).
    async fn put_many(&self, model: &str, entries: Vec<(ScoreKey, Arc<CachedScore>, Duration)>);
    /// Drops one model's entries (`Some(name)`, every version of it) or all
    /// of them, in every tier this process reaches.
    async fn purge(&self, model: Option<&str>) -> Result<PurgeReport, PurgeError>;
    /// Creates `model`'s lookup and write counters at 0, for every tier and
    /// result this cache records, when the model loads: a series that first
    /// appears at 1 is no increase to `rate()`, and a hit rate without a
    /// hit series would be no answer instead of 0.
    fn register_model(&self, model: &str);
}

/// What is memoized, and for how long.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// Time to live of a score.
    pub ttl: Duration,
    /// Per-model overrides of `ttl`; zero turns memoization off for a model.
    pub model_ttl: HashMap<String, Duration>,
    /// Time to live of a deterministic model error (invalid input,
    /// insufficient data), never longer than the model's score TTL; zero
    /// stores none.
    pub error_ttl: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            ttl: Duration::from_secs(3600),
            model_ttl: HashMap::new(),
            error_ttl: Duration::from_secs(60),
        }
    }
}

impl CachePolicy {
    /// How long to keep this outcome of this model, or `None` to not store it.
    ///
    /// Errors a model returns for a job's content are as deterministic as
    /// its scores (models are pure), so they are stored, but briefly: that
    /// absorbs a client retrying a bad request in a loop without pinning a
    /// wrongly classified error for long. An `internal` error is a model bug
    /// operators should see on every call, and failures of the call itself
    /// (traps, timeouts, overload, data unavailable) are transient; none of
    /// those reach the cache.
    pub fn ttl_for(&self, model: &str, outcome: &Result<Score, ModelError>) -> Option<Duration> {
        let ttl = self.model_ttl.get(model).copied().unwrap_or(self.ttl);
        let ttl = match outcome {
            Ok(_) => ttl,
            Err(ModelError::InvalidInput(_) | ModelError::InsufficientData(_)) => {
                self.error_ttl.min(ttl)
            }
            Err(ModelError::Internal(_)) => Duration::ZERO,
        };
        (!ttl.is_zero()).then_some(ttl)
    }
}

/// The `result` values of `riskhost_cache_lookups_total` per tier: every
/// lookup is one `l1` result; with a shared tier, each `l1` miss is one `l2`
/// result (`bypass` while the breaker is open, `error` when Redis failed).
/// So the hit rate is (`l1` hits + `l2` hits) / `l1` lookups.
const L1_RESULTS: [&str; 2] = ["hit", "miss"];
const L2_RESULTS: [&str; 4] = ["hit", "miss", "bypass", "error"];

fn zero_lookups(model: &str, tier: CacheTier, results: &[&'static str]) {
    for &result in results {
        metrics::counter!("riskhost_cache_lookups_total", "model" => model.to_owned(), "tier" => tier.as_str(), "result" => result)
            .increment(0);
    }
}

fn count_lookups(model: &str, tier: CacheTier, result: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("riskhost_cache_lookups_total", "model" => model.to_owned(), "tier" => tier.as_str(), "result" => result)
            .increment(n as u64);
    }
}

/// An in-process entry: the outcome, its time to live, and its model (so a
/// purge can select one model's entries).
#[derive(Clone)]
struct Entry {
    value: Arc<CachedScore>,
    ttl: Duration,
    model: Arc<str>,
}

/// The in-process tier: moka, bounded by an approximate byte budget, with a
/// time to live per entry. A clone shares the entries (the purge
/// subscriber holds one).
#[derive(Clone)]
pub struct InProcessCache {
    /// `None` when the budget is zero: the in-process memo is off.
    entries: Option<moka::sync::Cache<ScoreKey, Entry>>,
}

struct PerEntryTtl;

impl moka::Expiry<ScoreKey, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &ScoreKey,
        value: &Entry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &ScoreKey,
        value: &Entry,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl InProcessCache {
    pub fn new(max_bytes: u64) -> Self {
        let entries = (max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &ScoreKey, v: &Entry| v.value.weight())
                .expire_after(PerEntryTtl)
                .build()
        });
        InProcessCache { entries }
    }

    pub fn get(&self, key: &ScoreKey) -> Option<Arc<CachedScore>> {
        self.entries.as_ref()?.get(key).map(|e| e.value)
    }

    pub fn insert(&self, model: Arc<str>, key: ScoreKey, value: Arc<CachedScore>, ttl: Duration) {
        if !ttl.is_zero()
            && let Some(entries) = &self.entries
        {
            entries.insert(key, Entry { value, ttl, model });
        }
    }

    /// Looks keys up and counts hits and misses under `tier="l1"`.
    fn lookup(&self, model: &str, keys: &[ScoreKey]) -> Vec<Option<Arc<CachedScore>>> {
        let span = tracing::debug_span!(
            "cache_lookup",
            tier = "l1",
            model,
            keys = keys.len(),
            hits = tracing::field::Empty
        )
        .entered();
        let found: Vec<_> = keys.iter().map(|k| self.get(k)).collect();
        let hits = found.iter().filter(|f| f.is_some()).count();
        span.record("hits", hits);
        tracing::debug!("memo looked up");
        count_lookups(model, CacheTier::L1, "hit", hits);
        count_lookups(model, CacheTier::L1, "miss", keys.len() - hits);
        found
    }

    /// Removes one model's entries, or all, returning how many there were.
    async fn purge_entries(&self, model: Option<&str>) -> u64 {
        let Some(entries) = self.entries.clone() else {
            return 0;
        };
        let model: Option<Arc<str>> = model.map(Arc::from);
        // A full scan of a large cache is milliseconds of CPU: keep it off
        // the async workers.
        let purged = tokio::task::spawn_blocking(move || match model {
            None => {
                // `entry_count` would include expired entries not yet evicted.
                let n = entries.iter().count() as u64;
                entries.invalidate_all();
                n
            }
            Some(model) => {
                let doomed: Vec<Arc<ScoreKey>> = entries
                    .iter()
                    .filter(|(_, e)| e.model == model)
                    .map(|(k, _)| k)
                    .collect();
                for key in &doomed {
                    entries.invalidate(key.as_ref());
                }
                doomed.len() as u64
            }
        })
        .await;
        purged.unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl ScoreCache for InProcessCache {
    async fn get_many(&self, model: &str, keys: &[ScoreKey]) -> Vec<Lookup> {
        self.lookup(model, keys)
            .into_iter()
            .map(|f| f.map(|v| (v, CacheTier::L1)))
            .collect()
    }

    fn get_local(&self, key: &ScoreKey) -> Option<Arc<CachedScore>> {
        self.get(key)
    }

    async fn put_many(&self, model: &str, entries: Vec<(ScoreKey, Arc<CachedScore>, Duration)>) {
        let model: Arc<str> = Arc::from(model);
        for (key, value, ttl) in entries {
            self.insert(model.clone(), key, value, ttl);
        }
    }

    async fn purge(&self, model: Option<&str>) -> Result<PurgeReport, PurgeError> {
        Ok(PurgeReport {
            purged_l1: self.purge_entries(model).await,
            purged_l2: None,
        })
    }

    fn register_model(&self, model: &str) {
        zero_lookups(model, CacheTier::L1, &L1_RESULTS);
    }
}

/// The in-process tier in front of the shared Redis tier, subscribed to
/// the other replicas' purges.
pub struct TieredCache {
    l1: InProcessCache,
    l2: redis::RedisCache,
    /// Applies other replicas' purges to `l1`; stopped on drop.
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for TieredCache {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl TieredCache {
    /// Must be called within a tokio runtime: it starts the purge subscriber.
    pub fn new(l1: InProcessCache, l2: redis::RedisCache) -> Self {
        let (client, config, connect_timeout, names, address) = l2.subscriber_parts();
        let subscriber =
            purge::spawn_subscriber(client, config, connect_timeout, names, address, l1.clone());
        TieredCache { l1, l2, subscriber }
    }
}

#[async_trait::async_trait]
impl ScoreCache for TieredCache {
    async fn get_many(&self, model: &str, keys: &[ScoreKey]) -> Vec<Lookup> {
        let mut found: Vec<Lookup> = self
            .l1
            .lookup(model, keys)
            .into_iter()
            .map(|f| f.map(|v| (v, CacheTier::L1)))
            .collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return found;
        }
        let missing_keys: Vec<ScoreKey> = missing.iter().map(|&i| keys[i]).collect();
        let span = tracing::debug_span!(
            "cache_lookup",
            tier = "l2",
            model,
            keys = missing_keys.len(),
            hits = tracing::field::Empty
        );
        let from_l2 = self
            .l2
            .get_many(model, &missing_keys)
            .instrument(span.clone())
            .await;
        span.record("hits", from_l2.iter().filter(|h| h.is_some()).count());
        span.in_scope(|| tracing::debug!("memo looked up"));
        let model: Arc<str> = Arc::from(model);
        for (i, hit) in missing.into_iter().zip(from_l2) {
            if let Some((value, remaining)) = hit {
                let value = Arc::new(value);
                // Keep it here only as long as the shared tier keeps it.
                self.l1
                    .insert(model.clone(), keys[i], value.clone(), remaining);
                found[i] = Some((value, CacheTier::L2));
            }
        }
        found
    }

    fn get_local(&self, key: &ScoreKey) -> Option<Arc<CachedScore>> {
        self.l1.get(key)
    }

    fn register_model(&self, model: &str) {
        zero_lookups(model, CacheTier::L1, &L1_RESULTS);
        zero_lookups(model, CacheTier::L2, &L2_RESULTS);
        self.l2.register_model(model);
    }

    async fn put_many(&self, model: &str, entries: Vec<(ScoreKey, Arc<CachedScore>, Duration)>) {
        let shared = Arc::<str>::from(model);
        for (key, value, ttl) in &entries {
            self.l1.insert(shared.clone(), *key, value.clone(), *ttl);
        }
        self.l2.put_many(model, &entries).await;
    }

    async fn purge(&self, model: Option<&str>) -> Result<PurgeReport, PurgeError> {
        let purged_l1 = self.l1.purge_entries(model).await;
        match self.l2.purge(model).await {
            Ok(n) => {
                // After L2, so no replica refills its L1 from L2 with what
                // was purged. Best effort, like every use of Redis here: a
                // purge is never needed for correctness (the memo key
                // covers everything), and a replica whose subscription was
                // down catches up from the generation count when it
                // resubscribes.
                match self.l2.publish_purge(model).await {
                    Ok(generation) => {
                        metrics::counter!("riskhost_cache_purge_broadcasts_total", "result" => "ok")
                            .increment(1);
                        tracing::debug!(generation, "cache purge announced to the other replicas");
                    }
                    Err(error) => {
                        metrics::counter!("riskhost_cache_purge_broadcasts_total", "result" => "error")
                            .increment(1);
                        tracing::warn!(%error, "the cache purge could not be announced: other replicas keep their in-process entries until they expire");
                    }
                }
                Ok(PurgeReport {
                    purged_l1,
                    purged_l2: Some(n),
                })
            }
            Err(e) => Err(PurgeError {
                purged_l1,
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riskhost_engine::bindings::{Contribution, Unit};

    fn score(v: f64) -> Arc<CachedScore> {
        Arc::new(CachedScore {
            outcome: Ok(Score {
                value: v,
                unit: Unit::CurrencyAmount,
                breakdown: vec![Contribution {
                    name: "SPX".into(),
                    value: v,
                }],
            }),
        })
    }

    fn value_of(lookup: &Lookup) -> Option<(f64, CacheTier)> {
        lookup.as_ref().and_then(|(s, t)| match &s.outcome {
            Ok(score) => Some((score.value, *t)),
            Err(_) => None,
        })
    }

    #[tokio::test]
    async fn in_process_cache_returns_what_was_put_and_expires_it() {
        let cache = InProcessCache::new(1 << 20);
        let (a, b) = (ScoreKey([1; 32]), ScoreKey([2; 32]));
        cache
            .put_many(
                "m",
                vec![
                    (a, score(1.0), Duration::from_secs(60)),
                    (b, score(2.0), Duration::from_millis(1)),
                ],
            )
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = cache.get_many("m", &[a, b, ScoreKey([3; 32])]).await;
        assert_eq!(value_of(&got[0]), Some((1.0, CacheTier::L1)));
        assert!(got[1].is_none(), "expired entry was served");
        assert!(got[2].is_none());
        assert_eq!(
            cache.purge(None).await.ok(),
            Some(PurgeReport {
                purged_l1: 1,
                purged_l2: None
            })
        );
        assert!(cache.get(&a).is_none());
    }

    #[tokio::test]
    async fn purging_one_model_keeps_the_others() {
        let cache = InProcessCache::new(1 << 20);
        let ttl = Duration::from_secs(60);
        cache
            .put_many(
                "a",
                vec![
                    (ScoreKey([1; 32]), score(1.0), ttl),
                    (ScoreKey([2; 32]), score(2.0), ttl),
                ],
            )
            .await;
        cache
            .put_many("b", vec![(ScoreKey([3; 32]), score(3.0), ttl)])
            .await;
        let report = cache.purge(Some("a")).await.ok();
        assert_eq!(report.map(|r| r.purged_l1), Some(2));
        assert!(cache.get(&ScoreKey([1; 32])).is_none());
        assert!(cache.get(&ScoreKey([2; 32])).is_none());
        assert!(cache.get(&ScoreKey([3; 32])).is_some());
    }

    #[test]
    fn policy_stores_scores_and_deterministic_errors_only() {
        let mut policy = CachePolicy {
            ttl: Duration::from_secs(3600),
            model_ttl: HashMap::new(),
            error_ttl: Duration::from_secs(60),
        };
        policy
            .model_ttl
            .insert("short".into(), Duration::from_secs(10));
        policy.model_ttl.insert("off".into(), Duration::ZERO);
        let ok = Ok(Score {
            value: 1.0,
            unit: Unit::Ratio,
            breakdown: vec![],
        });
        let invalid = Err(ModelError::InvalidInput("x".into()));
        let short_data = Err(ModelError::InsufficientData("x".into()));
        let internal = Err(ModelError::Internal("x".into()));
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(policy.ttl_for("m", &ok), secs(3600));
        assert_eq!(policy.ttl_for("short", &ok), secs(10));
        assert_eq!(policy.ttl_for("off", &ok), None);
        assert_eq!(policy.ttl_for("m", &invalid), secs(60));
        assert_eq!(policy.ttl_for("m", &short_data), secs(60));
        assert_eq!(
            policy.ttl_for("short", &invalid),
            secs(10),
            "an error never outlives the model's TTL"
        );
        assert_eq!(policy.ttl_for("off", &invalid), None);
        assert_eq!(policy.ttl_for("m", &internal), None);
        policy.error_ttl = Duration::ZERO;
        assert_eq!(policy.ttl_for("m", &invalid), None);
    }
}
