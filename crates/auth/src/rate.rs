//! Limits that keep one client from exhausting the host: per-key and
//! per-address rate limits (GCRA buckets: fleet-wide in Redis when
//! [`SharedRate`] is configured, else, and whenever Redis cannot answer,
//! this replica's own `governor` buckets), a per-address
//! budget of failed authentications (so keys and the admin token cannot be
//! guessed online, and unknown ids cannot flood the key store), and the global
//! concurrency limit and request timeout (tower layers: load shedding, not an
//! unbounded queue).
//!
//! The per-replica buckets are charged even while Redis decides, so a
//! fall-back starts from each replica's recent traffic rather than a fresh
//! burst. Failed authentications are always counted per replica: they
//! protect this replica's key lookups.
//!
//! The rate limits are checked by the auth extractors once they know who is
//! calling ([`crate`]); the layers wrap the `/v1` routes in
//! `riskhost_http::router`. The open routes (`/healthz`, `/readyz`,
//! `/metrics`) are outside both, so probes and scrapes answer under load.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::keys::RateOverride;
use crate::shared_rate::{Gcra, SharedRate};

/// Rate-limit settings.
#[derive(Debug, Clone, Copy)]
pub struct RateSettings {
    /// Requests per minute of a key without its own rate (and of each
    /// anonymous client address); 0 turns rate limiting off.
    pub per_minute: u32,
    /// Requests a caller may send at once after being idle.
    pub burst: u32,
    /// Failed authentications (unknown key, wrong secret, malformed header)
    /// per minute of one client address; 0 turns the budget off.
    pub failures_per_minute: u32,
    /// Failures one address may make at once before it is throttled.
    pub failure_burst: u32,
}

/// The token buckets: one per key (keys may have their own rate) and one per
/// client address for anonymous scoring.
pub struct RateLimits {
    settings: RateSettings,
    per_key: Mutex<HashMap<String, (Quota, Arc<DefaultDirectRateLimiter>)>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Failed authentications per address.
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses out of failures, until when: their requests with an
    /// `Authorization` header are refused before any key lookup.
    throttled: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
    /// The fleet-wide buckets, when Redis is configured for them.
    shared: Option<SharedRate>,
}

/// How long to wait before the next request would be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryAfter(pub(crate) Duration);

impl RetryAfter {
    /// Whole seconds, rounded up, at least 1 (the `Retry-After` value).
    pub(crate) fn secs(self) -> u32 {
        let d = self.0;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
    }
}

fn quota(per_minute: u32, burst: u32) -> Option<Quota> {
    let per_minute = NonZeroU32::new(per_minute)?;
    let burst = NonZeroU32::new(burst.max(1))?;
    Some(Quota::per_minute(per_minute).allow_burst(burst))
}

/// The decision of a request: the shared bucket's when it answered, else
/// the local bucket's. A request the fleet admits is charged locally too
/// (whatever the local bucket says), so a fall-back continues from this
/// replica's recent traffic; a refused one is charged nowhere.
fn combine(
    shared: Option<Result<(), RetryAfter>>,
    local: impl FnOnce() -> Result<(), RetryAfter>,
) -> Result<(), RetryAfter> {
    match shared {
        Some(Ok(())) => {
            let _ = local();
            Ok(())
        }
        Some(refused) => refused,
        None => local(),
    }
}

impl RateLimits {
    pub fn new(settings: RateSettings) -> RateLimits {
        RateLimits {
            settings,
            per_key: Mutex::new(HashMap::new()),
            per_ip: quota(settings.per_minute, settings.burst).map(RateLimiter::keyed),
            failures: quota(settings.failures_per_minute, settings.failure_burst)
                .map(RateLimiter::keyed),
            throttled: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            shared: None,
        }
    }

    /// Decides key and address rates in Redis, fleet-wide; the local
    /// buckets remain the fall-back.
    pub fn with_shared(mut self, shared: SharedRate) -> RateLimits {
        // At 0 from start-up, so an alert's `rate()` counts the first
        // fall-back too.
        for reason in crate::shared_rate::FALLBACK_REASONS {
            metrics::counter!("riskhost_rate_limit_fallback_total", "reason" => reason)
                .increment(0);
        }
        self.shared = Some(shared);
        self
    }

    /// Asks the shared bucket first: `Some(answer)` when Redis decided,
    /// `None` when the local bucket must (no shared store, or it failed;
    /// the failure is counted).
    async fn take_shared(
        &self,
        kind: &str,
        id: &str,
        per_minute: u32,
        burst: u32,
    ) -> Option<Result<(), RetryAfter>> {
        let shared = self.shared.as_ref()?;
        let bucket = shared.bucket_key(kind, id);
        match shared.take(&bucket, Gcra::new(per_minute, burst)).await {
            Ok(None) => Some(Ok(())),
            Ok(Some(wait)) => Some(Err(RetryAfter(wait))),
            Err(error) => {
                metrics::counter!("riskhost_rate_limit_fallback_total", "reason" => error.reason())
                    .increment(1);
                None
            }
        }
    }

    /// A key's quota: its own rate and burst, else the defaults (a key's
    /// burst defaults to the smaller of the default burst and its rate).
    fn key_quota(&self, rate: RateOverride) -> Option<(Quota, u32, u32)> {
        let per_minute = rate.per_minute.unwrap_or(self.settings.per_minute);
        let burst = rate
            .burst
            .unwrap_or_else(|| self.settings.burst.min(per_minute))
            .max(1);
        quota(per_minute, burst).map(|q| (q, per_minute, burst))
    }

    /// Takes one request from key `id`'s bucket: the fleet's when Redis
    /// answers, else this replica's.
    pub(crate) async fn check_key(&self, id: &str, rate: RateOverride) -> Result<(), RetryAfter> {
        let Some((quota, per_minute, burst)) = self.key_quota(rate) else {
            return Ok(());
        };
        let shared = self.take_shared("key", id, per_minute, burst).await;
        let limiter = {
            let Ok(mut buckets) = self.per_key.lock() else {
                // A panic elsewhere poisoned the map: serve rather than fail.
                return shared.unwrap_or(Ok(()));
            };
            match buckets.get(id) {
                // A changed rate (key re-read from PostgreSQL) starts a new bucket.
                Some((q, limiter)) if *q == quota => limiter.clone(),
                _ => {
                    let limiter = Arc::new(RateLimiter::direct(quota));
                    buckets.insert(id.to_owned(), (quota, limiter.clone()));
                    limiter
                }
            }
        };
        let local = || {
            limiter
                .check()
                .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
        };
        combine(shared, local)
    }

    /// Takes one request from an anonymous client address's bucket: the
    /// fleet's when Redis answers, else this replica's.
    pub(crate) async fn check_ip(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        let Some(limiter) = &self.per_ip else {
            return Ok(());
        };
        let burst = self.settings.burst.max(1);
        let shared = self
            .take_shared("ip", &ip.to_string(), self.settings.per_minute, burst)
            .await;
        let local = || {
            limiter
                .check_key(&ip)
                .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
        };
        combine(shared, local)
    }

    /// Whether `ip` may try to authenticate now: `Err` while it is out of
    /// failures. Checked before the key lookup, so a throttled address costs
    /// the key store nothing.
    pub(crate) fn check_failures(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        let Ok(throttled) = self.throttled.lock() else {
            return Ok(());
        };
        match throttled.get(&ip) {
            Some(until) => match until.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => Err(RetryAfter(wait)),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`. Once its budget is spent
    /// the address is throttled until a failure would be allowed again.
    pub fn record_failure(&self, ip: IpAddr) {
        let Some(failures) = &self.failures else {
            return;
        };
        if let Err(not_until) = failures.check_key(&ip) {
            let wait = not_until.wait_time_from(self.clock.now());
            if let Ok(mut throttled) = self.throttled.lock() {
                throttled.insert(ip, Instant::now() + wait);
            }
        }
    }

    /// Forgets the buckets of addresses that are full again, so memory
    /// follows the number of recent clients, not of all clients ever.
    pub fn spawn_upkeep(self: &Arc<Self>, every: Duration) {
        let limits = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(limits) = limits.upgrade() else {
                    return;
                };
                for keyed in [&limits.per_ip, &limits.failures].into_iter().flatten() {
                    keyed.retain_recent();
                    keyed.shrink_to_fit();
                }
                if let Ok(mut throttled) = limits.throttled.lock() {
                    let now = Instant::now();
                    throttled.retain(|_, until| *until > now);
                }
            }
        });
    }
}

impl RateSettings {
    /// No limit of any kind (the tests' base).
    #[cfg(test)]
    pub(crate) fn off() -> RateSettings {
        RateSettings {
            per_minute: 0,
            burst: 0,
            failures_per_minute: 0,
            failure_burst: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_rate::SharedRateSettings;

    #[test]
    fn an_address_out_of_failures_is_throttled_alone_until_its_bucket_refills() {
        let limits = RateLimits::new(RateSettings {
            failures_per_minute: 60,
            failure_burst: 3,
            ..RateSettings::off()
        });
        let (guesser, other): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        for _ in 0..3 {
            assert!(limits.check_failures(guesser).is_ok());
            limits.record_failure(guesser);
        }
        assert!(
            limits.check_failures(guesser).is_ok(),
            "the burst is not spent yet"
        );
        limits.record_failure(guesser);
        let wait = limits.check_failures(guesser).expect_err("throttled");
        assert!(
            wait.0 <= Duration::from_secs(1) && wait.secs() == 1,
            "{wait:?}"
        );
        assert!(limits.check_failures(other).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::ZERO).secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1)).secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1001)).secs(), 2);
        assert_eq!(RetryAfter(Duration::from_secs(3)).secs(), 3);
    }

    #[tokio::test]
    async fn each_key_has_its_own_bucket() {
        let limits = RateLimits::new(RateSettings {
            per_minute: 60,
            burst: 2,
            ..RateSettings::off()
        });
        let own = RateOverride::default();
        assert!(limits.check_key("a", own).await.is_ok());
        assert!(limits.check_key("a", own).await.is_ok());
        let wait = limits.check_key("a", own).await.unwrap_err();
        assert!(wait.0 <= Duration::from_secs(1) && wait.secs() == 1);
        assert!(limits.check_key("b", own).await.is_ok());
        // A key of its own rate: 1 a minute, no burst.
        let slow = RateOverride {
            per_minute: Some(1),
            burst: None,
        };
        assert!(limits.check_key("c", slow).await.is_ok());
        assert!(limits.check_key("c", slow).await.unwrap_err().secs() >= 59);
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!(limits.check_ip(ip).await.is_ok() && limits.check_ip(ip).await.is_ok());
        assert!(limits.check_ip(ip).await.is_err());
    }

    #[tokio::test]
    async fn zero_turns_rate_limiting_off() {
        let limits = RateLimits::new(RateSettings {
            burst: 1,
            ..RateSettings::off()
        });
        for _ in 0..100 {
            assert!(limits.check_key("a", RateOverride::default()).await.is_ok());
            assert!(limits.check_ip([10, 0, 0, 1].into()).await.is_ok());
        }
    }

    fn shared_settings(url: &str, test: &str) -> SharedRateSettings {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        SharedRateSettings {
            url: url.into(),
            prefix: format!("riskhost-unit-limits-{test}-{}-{nanos}", std::process::id()),
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            failure_threshold: 3,
            cooldown: Duration::from_secs(60),
        }
    }

    async fn replica(url: &str, settings: &SharedRateSettings) -> RateLimits {
        let shared = SharedRate::connect(SharedRateSettings {
            url: url.into(),
            ..settings.clone()
        })
        .await
        .expect("connect");
        RateLimits::new(RateSettings {
            per_minute: 1,
            burst: 4,
            ..RateSettings::off()
        })
        .with_shared(shared)
    }

    #[tokio::test]
    async fn replicas_sharing_redis_share_one_bucket_per_key_and_address() {
        let settings = shared_settings("redis://127.0.0.1:6379/", "fleet");
        let (a, b) = (
            replica("redis://127.0.0.1:6379/", &settings).await,
            replica("redis://127.0.0.1:6379/", &settings).await,
        );
        // A key of its own rate: one a minute, burst 4 (the address's quota
        // is the defaults: the same).
        let own = RateOverride {
            per_minute: Some(1),
            burst: Some(4),
        };
        let mut admitted = 0;
        for i in 0..10 {
            let replica = if i % 2 == 0 { &a } else { &b };
            admitted += usize::from(replica.check_key("k", own).await.is_ok());
        }
        // One a minute, burst 4: four across both replicas, not eight.
        assert_eq!(admitted, 4);
        let wait = b.check_key("k", own).await.expect_err("refused");
        assert!(wait.secs() > 50 && wait.secs() <= 60, "{wait:?}");
        let ip: IpAddr = [10, 1, 2, 3].into();
        let admitted = admitted_from_address(&a, &b, ip).await;
        assert_eq!(admitted, 4);
    }

    async fn admitted_from_address(a: &RateLimits, b: &RateLimits, ip: IpAddr) -> usize {
        let mut admitted = 0;
        for _ in 0..5 {
            admitted += usize::from(a.check_ip(ip).await.is_ok());
            admitted += usize::from(b.check_ip(ip).await.is_ok());
        }
        admitted
    }

    #[tokio::test]
    async fn without_redis_each_replica_limits_alone() {
        let settings = shared_settings("redis://127.0.0.1:1/", "down");
        let a = replica("redis://127.0.0.1:1/", &settings).await;
        // A key of its own rate: one a minute, burst 4 (the address's quota
        // is the defaults: the same).
        let own = RateOverride {
            per_minute: Some(1),
            burst: Some(4),
        };
        let admitted = {
            let mut n = 0;
            for _ in 0..10 {
                n += usize::from(a.check_key("k", own).await.is_ok());
            }
            n
        };
        assert_eq!(admitted, 4, "the local bucket decides: its burst, once");
    }
}
