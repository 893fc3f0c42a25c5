//! Memoization of model outputs.
//!
//! [`ScoreCache`] is the one interface the scoring path sees; backends are
//! chosen by configuration. The embedded default is [`InProcessCache`], a
//! size-bounded moka cache. Keys come from [`key`], whose recipe guarantees a
//! cached score never crosses a model version, parameter set, portfolio
//! content or market-data snapshot.

pub mod key;

use std::sync::Arc;
use std::time::Duration;

pub use key::{CanonicalPosition, ScoreKey, score_key};

use crate::engine::bindings::Score;

/// Which tier answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// A memoized model output.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedScore {
    pub score: Score,
}

impl CachedScore {
    /// Approximate heap footprint, for the size bound.
    fn weight(&self) -> u32 {
        let names: usize = self.score.breakdown.iter().map(|c| c.name.len() + 32).sum();
        u32::try_from(64 + names).unwrap_or(u32::MAX)
    }
}

/// A memo store for scores. Implementations must never fail a request:
/// a backend that is down behaves like a miss.
#[async_trait::async_trait]
pub trait ScoreCache: Send + Sync + 'static {
    /// Looks every key up in as few round trips as the backend allows.
    async fn get_many(&self, keys: &[ScoreKey]) -> Vec<Option<(Arc<CachedScore>, CacheTier)>>;
    /// Stores every entry with its time to live.
    async fn put_many(&self, entries: Vec<(ScoreKey, Arc<CachedScore>, Duration)>);
    /// Drops every entry (all models: entries do not know their model).
    async fn purge_all(&self);
}

/// The in-process tier: moka, bounded by an approximate byte budget, with a
/// time to live per entry. A budget of 0 disables it: every lookup misses,
/// so every request runs its model (for tests and benchmarks of the models
/// themselves).
pub struct InProcessCache {
    entries: Option<moka::sync::Cache<ScoreKey, (Arc<CachedScore>, Duration)>>,
}

struct PerEntryTtl;

impl moka::Expiry<ScoreKey, (Arc<CachedScore>, Duration)> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &ScoreKey,
        value: &(Arc<CachedScore>, Duration),
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

impl InProcessCache {
    pub fn new(max_bytes: u64) -> Self {
        let entries = (max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &ScoreKey, v: &(Arc<CachedScore>, Duration)| v.0.weight())
                .expire_after(PerEntryTtl)
                .build()
        });
        InProcessCache { entries }
    }

    pub fn get(&self, key: &ScoreKey) -> Option<Arc<CachedScore>> {
        self.entries.as_ref()?.get(key).map(|(v, _)| v)
    }

    pub fn insert(&self, key: ScoreKey, value: Arc<CachedScore>, ttl: Duration) {
        if let Some(entries) = &self.entries {
            entries.insert(key, (value, ttl));
        }
    }
}

#[async_trait::async_trait]
impl ScoreCache for InProcessCache {
    async fn get_many(&self, keys: &[ScoreKey]) -> Vec<Option<(Arc<CachedScore>, CacheTier)>> {
        keys.iter()
            .map(|k| self.get(k).map(|v| (v, CacheTier::L1)))
            .collect()
    }

    async fn put_many(&self, entries: Vec<(ScoreKey, Arc<CachedScore>, Duration)>) {
        for (key, value, ttl) in entries {
            self.insert(key, value, ttl);
        }
    }

    async fn purge_all(&self) {
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::bindings::{Contribution, Unit};

    fn score(v: f64) -> Arc<CachedScore> {
        Arc::new(CachedScore {
            score: Score {
                value: v,
                unit: Unit::CurrencyAmount,
                breakdown: vec![Contribution {
                    name: "SPX".into(),
                    value: v,
                }],
            },
        })
    }

    #[tokio::test]
    async fn in_process_cache_returns_what_was_put_and_expires_it() {
        let cache = InProcessCache::new(1 << 20);
        let (a, b) = (ScoreKey([1; 32]), ScoreKey([2; 32]));
        cache
            .put_many(vec![
                (a, score(1.0), Duration::from_secs(60)),
                (b, score(2.0), Duration::from_millis(1)),
            ])
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = cache.get_many(&[a, b, ScoreKey([3; 32])]).await;
        assert_eq!(
            got[0].as_ref().map(|(s, t)| (s.score.value, *t)),
            Some((1.0, CacheTier::L1))
        );
        assert!(got[1].is_none(), "expired entry was served");
        assert!(got[2].is_none());
        cache.purge_all().await;
        assert!(cache.get(&a).is_none());
    }

    #[tokio::test]
    async fn a_zero_budget_disables_the_cache() {
        let cache = InProcessCache::new(0);
        let key = ScoreKey([1; 32]);
        cache
            .put_many(vec![(key, score(1.0), Duration::from_secs(60))])
            .await;
        assert!(cache.get_many(&[key]).await[0].is_none());
    }
}
