//! The circuit breaker in front of the shared (Redis) tier.
//!
//! Without it, a Redis that is down or slow would cost every request the
//! full operation timeout before it fell back to computing. With it:
//!
//! ```text
//!            N consecutive failures                cool-down elapsed
//!   Closed ─────────────────────────► Open ───────────────────────────► HalfOpen
//!     ▲         (or a lost connection)  ▲        (one probe may run)       │
//!     │                                 └──────── probe failed ────────────┤
//!     └─────────────────────────────────────────── probe succeeded ────────┘
//! ```
//!
//! Requests use the tier only while the breaker is closed; in the other
//! states they skip it at once (a miss, or a write that is not made). The
//! probe is not a request: the tier's supervisor task runs it (reconnect and
//! `PING`), so recovery needs no traffic and no request ever waits on it.
//!
//! The state machine takes the current time as an argument, so it is tested
//! without sleeping.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// When the breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failed operations that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a probe is allowed.
    pub cooldown: Duration,
}

/// The externally visible state (also the `riskhost_cache_breaker_state`
/// gauge: 0 closed, 1 half-open, 2 open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub(crate) fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { probe_at: Instant },
    HalfOpen,
}

/// What a recorded failure did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// The breaker neither opened nor closed (a failed probe keeps it open).
    None,
    /// The breaker just opened.
    Opened,
    /// The breaker just closed.
    Closed,
}

pub(crate) struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker, or an open one whose first probe is due at `now`
    /// (a tier that could not connect at start-up).
    pub(crate) fn new(settings: BreakerSettings, closed: bool, now: Instant) -> Self {
        let state = if closed {
            State::Closed { failures: 0 }
        } else {
            State::Open { probe_at: now }
        };
        let breaker = Breaker {
            settings: BreakerSettings {
                failure_threshold: settings.failure_threshold.max(1),
                ..settings
            },
            state: Mutex::new(state),
        };
        breaker.publish();
        breaker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value that is never left half-written, so a
        // panic elsewhere while holding the lock cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may use the tier now.
    pub(crate) fn allows_requests(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }

    /// A request's operation succeeded.
    pub(crate) fn on_success(&self) {
        // Only a closed breaker counts: a straggler that started before the
        // breaker opened says nothing about the tier now.
        if let State::Closed { failures } = &mut *self.lock() {
            *failures = 0;
        }
    }

    /// A request's operation failed or timed out.
    pub(crate) fn on_failure(&self, now: Instant) -> Transition {
        let transition = {
            let mut state = self.lock();
            match &mut *state {
                State::Closed { failures } => {
                    *failures += 1;
                    if *failures >= self.settings.failure_threshold {
                        *state = State::Open {
                            probe_at: now + self.settings.cooldown,
                        };
                        Transition::Opened
                    } else {
                        Transition::None
                    }
                }
                State::Open { .. } | State::HalfOpen => Transition::None,
            }
        };
        self.publish_if(transition);
        transition
    }

    /// Opens the breaker at once, whatever the count (the connection is
    /// gone, so every further operation would fail too).
    pub(crate) fn trip(&self, now: Instant) -> Transition {
        let transition = {
            let mut state = self.lock();
            match *state {
                State::Closed { .. } => {
                    *state = State::Open {
                        probe_at: now + self.settings.cooldown,
                    };
                    Transition::Opened
                }
                State::Open { .. } | State::HalfOpen => Transition::None,
            }
        };
        self.publish_if(transition);
        transition
    }

    /// Claims the probe: true for exactly one caller once the cool-down has
    /// elapsed, which moves the breaker to half-open.
    pub(crate) fn try_begin_probe(&self, now: Instant) -> bool {
        let begun = {
            let mut state = self.lock();
            match *state {
                State::Open { probe_at } if now >= probe_at => {
                    *state = State::HalfOpen;
                    true
                }
                _ => false,
            }
        };
        if begun {
            self.publish();
        }
        begun
    }

    /// The probe's outcome: closes the breaker, or opens it for another
    /// cool-down.
    pub(crate) fn end_probe(&self, succeeded: bool, now: Instant) -> Transition {
        let transition = {
            let mut state = self.lock();
            if !matches!(*state, State::HalfOpen) {
                Transition::None
            } else if succeeded {
                *state = State::Closed { failures: 0 };
                Transition::Closed
            } else {
                *state = State::Open {
                    probe_at: now + self.settings.cooldown,
                };
                Transition::None
            }
        };
        self.publish();
        transition
    }

    fn publish_if(&self, transition: Transition) {
        if transition != Transition::None {
            self.publish();
        }
    }

    fn publish(&self) {
        metrics::gauge!("riskhost_cache_breaker_state").set(self.state().gauge_value());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(1);

    fn breaker(closed: bool, now: Instant) -> Breaker {
        Breaker::new(
            BreakerSettings {
                failure_threshold: 3,
                cooldown: COOLDOWN,
            },
            closed,
            now,
        )
    }

    #[test]
    fn opens_after_n_consecutive_failures_only() {
        let t0 = Instant::now();
        let b = breaker(true, t0);
        assert_eq!(b.on_failure(t0), Transition::None);
        assert_eq!(b.on_failure(t0), Transition::None);
        // A success in between resets the count.
        b.on_success();
        assert_eq!(b.on_failure(t0), Transition::None);
        assert_eq!(b.on_failure(t0), Transition::None);
        assert!(b.allows_requests());
        assert_eq!(b.on_failure(t0), Transition::Opened);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allows_requests());
        // Further failures and stray successes change nothing while open.
        assert_eq!(b.on_failure(t0), Transition::None);
        b.on_success();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn probes_once_after_the_cooldown_and_closes_on_success() {
        let t0 = Instant::now();
        let b = breaker(true, t0);
        assert_eq!(b.trip(t0), Transition::Opened);
        assert!(
            !b.try_begin_probe(t0 + COOLDOWN / 2),
            "probe before cool-down"
        );
        assert!(b.try_begin_probe(t0 + COOLDOWN));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(
            !b.allows_requests(),
            "requests wait for the probe's verdict"
        );
        assert!(
            !b.try_begin_probe(t0 + COOLDOWN),
            "only one probe at a time"
        );
        assert_eq!(b.end_probe(true, t0 + COOLDOWN), Transition::Closed);
        assert!(b.allows_requests());
        // Closed again with a fresh count.
        assert_eq!(b.on_failure(t0), Transition::None);
        assert_eq!(b.on_failure(t0), Transition::None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cooldown() {
        let t0 = Instant::now();
        let b = breaker(false, t0);
        assert_eq!(b.state(), BreakerState::Open);
        // Started open (Redis down at start-up): the first probe is due at once.
        assert!(b.try_begin_probe(t0));
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(b.end_probe(false, t1), Transition::None);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_begin_probe(t1 + COOLDOWN / 2));
        assert!(b.try_begin_probe(t1 + COOLDOWN));
        assert_eq!(b.end_probe(true, t1 + COOLDOWN), Transition::Closed);
        // A late probe result when not half-open is ignored.
        assert_eq!(b.end_probe(false, t1 + COOLDOWN), Transition::None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn trip_is_immediate_and_idempotent() {
        let t0 = Instant::now();
        let b = breaker(true, t0);
        assert_eq!(b.trip(t0), Transition::Opened);
        assert_eq!(b.trip(t0), Transition::None);
        assert!(b.try_begin_probe(t0 + COOLDOWN));
        // Failures reported by requests during the probe do not decide it.
        assert_eq!(b.on_failure(t0 + COOLDOWN), Transition::None);
        assert_eq!(b.trip(t0 + COOLDOWN), Transition::None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }
}
