//! Fleet-wide purges of the in-process tier, over Redis pub/sub.
//!
//! A purge empties the receiving replica's L1 and the shared L2; the other
//! replicas' L1s would keep serving what was purged until it expired. So
//! [`TieredCache::purge`](crate::TieredCache) then publishes the purge on
//! `{prefix}:purge`, and every replica with the Redis tier runs a
//! [`spawn_subscriber`] task that purges its own L1 (one model or all).
//! The message is published after L2 is purged, so a replica that drops an
//! entry cannot refill it from L2.
//!
//! Pub/sub is at most once: a replica whose subscription is down misses
//! messages. So the publish also counts purges (`INCR
//! {prefix}:purge-generation`, in the same `EVAL` as the `PUBLISH`, so the
//! count and the message never disagree), messages carry that generation,
//! and a subscriber that (re)subscribes reads the counter: if it moved past
//! the last generation this replica saw, purges were missed (of models it
//! cannot know) and it purges its whole L1. The first subscription only
//! takes the baseline (purges made while a replica starts with Redis down
//! are not caught up), and a counter that is gone (Redis lost its data)
//! means nothing to catch up with.
//!
//! The subscriber uses a dedicated connection (Redis's subscribe mode takes
//! the connection over), reconnects with backoff, pings to notice a hung
//! server, never touches the request path, and is aborted when its owner
//! drops.

use std::time::Duration;

use futures::StreamExt;
use redis::AsyncConnectionConfig;

use crate::InProcessCache;

/// The model segment of a message that purges every model (model names
/// are lower-kebab-case, so no model is called this).
pub(crate) const ALL_MODELS: &str = "*";

/// `KEYS[1]` the generation counter; `ARGV` the channel, the origin and
/// the model. Counts the purge and publishes `<generation> <origin> <model>`.
pub(crate) const PUBLISH_PURGE: &str = r"
local generation = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], generation .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
return generation
";

/// Reconnection backoff of the subscriber.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle subscription checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(5);

/// The channel, the counter, and this replica's name in messages.
#[derive(Debug, Clone)]
pub(crate) struct PurgeNames {
    pub(crate) channel: String,
    pub(crate) generation_key: String,
    /// Random per process: a replica ignores its own messages (it purged
    /// its L1 before publishing).
    pub(crate) origin: String,
}

impl PurgeNames {
    pub(crate) fn new(prefix: &str) -> PurgeNames {
        use std::hash::{BuildHasher, RandomState};
        let origin = RandomState::new().hash_one((std::process::id(), std::time::Instant::now()));
        PurgeNames {
            channel: format!("{prefix}:purge"),
            generation_key: format!("{prefix}:purge-generation"),
            origin: format!("{origin:016x}"),
        }
    }
}

/// A purge announced by some replica.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PurgeMessage {
    pub(crate) generation: u64,
    pub(crate) origin: String,
    /// `None`: every model.
    pub(crate) model: Option<String>,
}

impl PurgeMessage {
    pub(crate) fn parse(payload: &str) -> Option<PurgeMessage> {
        let mut parts = payload.splitn(3, ' ');
        let generation = parts.next()?.parse().ok()?;
        let origin = parts.next()?.to_owned();
        let model = parts.next()?;
        Some(PurgeMessage {
            generation,
            origin,
            model: (model != ALL_MODELS).then(|| model.to_owned()),
        })
    }
}

/// Starts the subscriber that applies other replicas' purges to `l1`.
/// Abort the handle to stop it.
pub(crate) fn spawn_subscriber(
    client: redis::Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    names: PurgeNames,
    address: String,
    l1: InProcessCache,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let subscriber = Subscriber {
            client,
            config,
            connect_timeout,
            names,
            address,
            l1,
        };
        // The last generation this replica has seen; `None` until the
        // first subscription takes the baseline.
        let mut seen: Option<u64> = None;
        let mut backoff = BACKOFF_MIN;
        let mut first = true;
        loop {
            let (subscribed, reason) = subscriber.run(&mut seen).await;
            metrics::gauge!("riskhost_cache_purge_subscribed").set(0.0);
            if subscribed {
                backoff = BACKOFF_MIN;
                metrics::counter!("riskhost_cache_purge_resubscriptions_total").increment(1);
            }
            // Once per outage, not once per attempt.
            if subscribed || std::mem::take(&mut first) {
                tracing::warn!(redis = %subscriber.address, %reason, "cache purge subscription down: other replicas' purges reach this one once it is back");
            } else {
                tracing::debug!(redis = %subscriber.address, %reason, retry_in_ms = backoff.as_millis() as u64, "cache purge subscription still down");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

struct Subscriber {
    client: redis::Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    names: PurgeNames,
    address: String,
    l1: InProcessCache,
}

impl Subscriber {
    /// One subscription, until it fails: whether it got as far as
    /// subscribing, and why it ended.
    async fn run(&self, seen: &mut Option<u64>) -> (bool, String) {
        let budget = self.connect_timeout;
        let subscribe = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.names.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(budget, subscribe).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return (false, e.to_string()),
            Err(_) => return (false, format!("no answer within {} ms", budget.as_millis())),
        };
        // Subscribed first, then the counter: a purge after this read
        // arrives as a message, one before it is in the count.
        let read = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            redis::cmd("GET")
                .arg(&self.names.generation_key)
                .query_async::<Option<u64>>(&mut conn)
                .await
        };
        let current = match tokio::time::timeout(budget, read).await {
            Ok(Ok(current)) => current,
            Ok(Err(e)) => return (true, e.to_string()),
            Err(_) => return (true, format!("no answer within {} ms", budget.as_millis())),
        };
        // No counter: no purge yet, or Redis lost its data (then there is
        // nothing to catch up with, and counting starts over).
        let current = current.unwrap_or(0);
        if let Some(last) = *seen
            && current != last
            && current != 0
        {
            let purged = self.l1.purge_entries(None).await;
            metrics::counter!("riskhost_cache_purges_applied_total", "source" => "catch_up")
                .increment(1);
            tracing::info!(redis = %self.address, last, current, purged, "purges were announced while this replica was not subscribed: in-process tier emptied");
        }
        *seen = Some(current);
        metrics::gauge!("riskhost_cache_purge_subscribed").set(1.0);
        tracing::debug!(redis = %self.address, channel = %self.names.channel, "subscribed to cache purges");

        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return (true, "the connection closed".into());
                    };
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    let Some(purge) = PurgeMessage::parse(&payload) else {
                        tracing::debug!(%payload, "not a purge message: ignored");
                        continue;
                    };
                    // Messages arrive in the order of the count.
                    *seen = Some(purge.generation);
                    if purge.origin == self.names.origin {
                        continue;
                    }
                    let purged = self.l1.purge_entries(purge.model.as_deref()).await;
                    metrics::counter!("riskhost_cache_purges_applied_total", "source" => "broadcast")
                        .increment(1);
                    tracing::info!(model = purge.model.as_deref().unwrap_or("*"), purged, "another replica purged the cache: in-process tier purged too");
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(budget, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return (true, e.to_string()),
                        Err(_) => return (true, format!("no answer to PING within {} ms", budget.as_millis())),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        assert_eq!(
            PurgeMessage::parse("7 00ab var-historical"),
            Some(PurgeMessage {
                generation: 7,
                origin: "00ab".into(),
                model: Some("var-historical".into())
            })
        );
        assert_eq!(PurgeMessage::parse("8 00ab *").and_then(|m| m.model), None);
        assert!(PurgeMessage::parse("x 00ab *").is_none());
        assert!(PurgeMessage::parse("9 00ab").is_none());
        let names = PurgeNames::new("p");
        assert_eq!(
            (names.channel.as_str(), names.generation_key.as_str()),
            ("p:purge", "p:purge-generation")
        );
        assert_ne!(names.origin, PurgeNames::new("p").origin);
    }
}
