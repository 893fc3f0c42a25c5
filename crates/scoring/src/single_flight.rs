//! Single-flight: concurrent identical misses run the model once.
//!
//! Without it, N requests for the same memo key that arrive before the first
//! one has stored its result would all miss and all run the model (a
//! thundering herd after a deploy, a data update or a TTL expiry). Here the
//! first caller for a key becomes the leader and computes; callers that
//! arrive while it does wait for its value and get a clone of it.
//!
//! - **The leader's error is shared.** Waiters get exactly what the leader
//!   got, error included: they asked for the same computation at the same
//!   moment, and retrying a timeout or an overload N−1 times would multiply
//!   the load on the struggling model. The client may retry.
//! - **A cancelled leader is replaced.** If the leader's future is dropped
//!   (its client went away) before it finishes, its waiters wake up and one
//!   of them becomes the new leader; nobody waits on a computation that
//!   will never end.
//! - Flights cover only the time to compute and store: once the leader has
//!   stored its result, later callers find it in the cache instead (the
//!   scoring path re-checks the in-process tier after winning a flight, for
//!   callers whose lookup missed just before the previous flight ended).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

type Flight<V> = Arc<watch::Sender<Option<V>>>;

/// Deduplicates concurrent computations by key.
pub(crate) struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Flight<V>>>,
}

/// How a caller got its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// It computed the value.
    Leader,
    /// It waited for another caller's computation.
    Follower,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    pub(crate) fn new() -> Self {
        SingleFlight {
            flights: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Flight<V>>> {
        // The map is only ever inserted into or removed from whole; a panic
        // while holding it cannot leave it half-updated.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `compute` unless a computation for `key` is already running, in
    /// which case it waits for that one's value. `compute` is only polled by
    /// a leader (futures are lazy), so a follower's is dropped unrun.
    pub(crate) async fn run<F>(&self, key: K, compute: F) -> (V, Role)
    where
        F: Future<Output = V>,
    {
        let flight = loop {
            let mut waiting = {
                let mut flights = self.lock();
                match flights.get(&key) {
                    Some(flight) => flight.subscribe(),
                    None => {
                        let flight: Flight<V> = Arc::new(watch::channel(None).0);
                        flights.insert(key.clone(), flight.clone());
                        break flight;
                    }
                }
            };
            if let Ok(value) = waiting.wait_for(Option::is_some).await
                && let Some(value) = value.clone()
            {
                return (value, Role::Follower);
            }
            // The leader was dropped before finishing (its guard has taken
            // the flight out of the map): try to take its place.
        };
        let _guard = FlightGuard {
            owner: self,
            key: &key,
            flight: &flight,
        };
        let value = compute.await;
        flight.send_replace(Some(value.clone()));
        (value, Role::Leader)
    }

    /// Keys being computed now (for the tests).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Callers waiting for the computation of `key` (for the tests).
    #[cfg(test)]
    pub(crate) fn waiters(&self, key: &K) -> usize {
        self.lock().get(key).map_or(0, |f| f.receiver_count())
    }
}

/// Takes the leader's flight out of the map when the leader finishes or is
/// dropped; once the leader's handle goes too, the sender is gone and any
/// waiter that saw no value retries.
struct FlightGuard<'a, K: Eq + Hash + Clone, V: Clone> {
    owner: &'a SingleFlight<K, V>,
    key: &'a K,
    flight: &'a Flight<V>,
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for FlightGuard<'_, K, V> {
    fn drop(&mut self) {
        let mut flights = self.owner.lock();
        if flights
            .get(self.key)
            .is_some_and(|f| Arc::ptr_eq(f, self.flight))
        {
            flights.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_computation() {
        let flights = Arc::new(SingleFlight::<u32, Result<u64, String>>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (flights, runs, gate) = (flights.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run(7, async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        // Hold the flight open until every caller has joined.
                        gate.notified().await;
                        Err::<u64, _>("model timed out".to_owned())
                    })
                    .await
            }));
        }
        while flights.waiters(&7) < 31 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        let mut leaders = 0;
        for task in tasks {
            let (value, role) = task.await.expect("task");
            assert_eq!(
                value,
                Err("model timed out".to_owned()),
                "the error is shared"
            );
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(flights.in_flight(), 0, "the flight is removed when done");
    }

    #[tokio::test]
    async fn a_cancelled_leader_is_replaced_by_a_waiter() {
        let flights = Arc::new(SingleFlight::<u32, u64>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let leader = {
            let (flights, runs) = (flights.clone(), runs.clone());
            tokio::spawn(async move {
                flights
                    .run(1, async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<u64>().await
                    })
                    .await
            })
        };
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let follower = {
            let (flights, runs) = (flights.clone(), runs.clone());
            tokio::spawn(async move {
                flights
                    .run(1, async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        42
                    })
                    .await
            })
        };
        while flights.waiters(&1) < 1 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        let (value, role) = follower.await.expect("follower");
        assert_eq!((value, role), (42, Role::Leader));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other() {
        let flights = SingleFlight::<u32, u32>::new();
        let (a, b) = tokio::join!(flights.run(1, async { 1 }), flights.run(2, async { 2 }));
        assert_eq!((a, b), ((1, Role::Leader), (2, Role::Leader)));
    }
}
