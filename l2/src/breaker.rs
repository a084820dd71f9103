//! A circuit breaker for the Redis tier. `threshold` consecutive failures (errors or
//! timeouts) open it; while open, calls are refused at once (the cache keeps serving
//! from L1 and the origin) until `cooldown` has passed; then one probe is let through
//! (half-open), and its success closes the breaker while its failure opens it again.
//! Time is passed in, so the tests hold the clock.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight.
    HalfOpen,
}

#[derive(Clone, Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: State,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: State::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// Whether a call may go to Redis now. When the cooldown is over, the caller that
    /// gets `true` is the probe.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    pub fn record(&mut self, success: bool, now: Instant) {
        self.state = match (self.state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            (_, false) => State::Open {
                until: now + self.cooldown,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Breaker::new(3, s(5));
        b.record(false, t0);
        b.record(false, t0);
        b.record(true, t0);
        assert_eq!(
            b.state(),
            State::Closed { failures: 0 },
            "a success resets the count"
        );
        for _ in 0..3 {
            assert!(b.allow(t0));
            b.record(false, t0);
        }
        assert!(b.is_open());
        assert!(!b.allow(t0 + s(4)), "refused during the cooldown");
        assert!(b.allow(t0 + s(5)), "one probe after it");
        assert!(!b.allow(t0 + s(5)), "only one");
        b.record(false, t0 + s(5));
        assert!(!b.allow(t0 + s(9)), "a failed probe opens it again");
        assert!(b.allow(t0 + s(10)));
        b.record(true, t0 + s(10));
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert!(b.allow(t0 + s(10)));
    }
}
