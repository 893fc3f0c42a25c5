//! Limits that keep one client from exhausting the host: per-key and
//! per-address rate limits (token buckets from `governor`), a per-address
//! budget of failed authentications (so keys and the admin token cannot be
//! guessed online, and unknown ids cannot flood the key store), and the global
//! concurrency limit and request timeout (tower layers: load shedding, not an
//! unbounded queue).
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
        }
    }

    /// A key's quota: its own rate and burst, else the defaults (a key's
    /// burst defaults to the smaller of the default burst and its rate).
    fn key_quota(&self, rate: RateOverride) -> Option<Quota> {
        let per_minute = rate.per_minute.unwrap_or(self.settings.per_minute);
        let burst = rate
            .burst
            .unwrap_or_else(|| self.settings.burst.min(per_minute));
        quota(per_minute, burst)
    }

    /// Takes one request from key `id`'s bucket.
    pub(crate) fn check_key(&self, id: &str, rate: RateOverride) -> Result<(), RetryAfter> {
        let Some(quota) = self.key_quota(rate) else {
            return Ok(());
        };
        let limiter = {
            let Ok(mut buckets) = self.per_key.lock() else {
                // A panic elsewhere poisoned the map: serve rather than fail.
                return Ok(());
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
        limiter
            .check()
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// Takes one request from an anonymous client address's bucket.
    pub(crate) fn check_ip(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        match &self.per_ip {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(&ip)
                .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now()))),
        }
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

    #[test]
    fn each_key_has_its_own_bucket() {
        let limits = RateLimits::new(RateSettings {
            per_minute: 60,
            burst: 2,
            ..RateSettings::off()
        });
        let own = RateOverride::default();
        assert!(limits.check_key("a", own).is_ok());
        assert!(limits.check_key("a", own).is_ok());
        let wait = limits.check_key("a", own).unwrap_err();
        assert!(wait.0 <= Duration::from_secs(1) && wait.secs() == 1);
        assert!(limits.check_key("b", own).is_ok());
        // A key of its own rate: 1 a minute, no burst.
        let slow = RateOverride {
            per_minute: Some(1),
            burst: None,
        };
        assert!(limits.check_key("c", slow).is_ok());
        assert!(limits.check_key("c", slow).unwrap_err().secs() >= 59);
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!(limits.check_ip(ip).is_ok() && limits.check_ip(ip).is_ok());
        assert!(limits.check_ip(ip).is_err());
    }

    #[test]
    fn zero_turns_rate_limiting_off() {
        let limits = RateLimits::new(RateSettings {
            burst: 1,
            ..RateSettings::off()
        });
        for _ in 0..100 {
            assert!(limits.check_key("a", RateOverride::default()).is_ok());
            assert!(limits.check_ip([10, 0, 0, 1].into()).is_ok());
        }
    }
}
