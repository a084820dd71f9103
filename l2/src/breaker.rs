//! A circuit breaker for the Redis tier. `threshold` consecutive failures (errors or
//! timeouts) open it; while open, calls are refused at once (the cache keeps serving
//! from L1 and the origin) until `cooldown` has passed; then one probe is let through
//! (half-open), and its success closes the breaker while its failure opens it again.
//! Time is passed in, so the tests hold the clock.
//!
//! [`Breakers`] holds a tier's breakers: on a cluster one per master, picked by the slot
//! of the key a call is about, so a dead master makes only its own slots skip L2; one
//! for the whole tier for a single Redis and for calls about no one key.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, RwLock};
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

/// Which breaker a call goes through: a master's (by its address) or the tier's.
pub type Which = Option<Arc<str>>;

const SLOTS: usize = 16384;

#[derive(Debug)]
pub struct Breakers {
    template: Breaker,
    tier: Mutex<Breaker>,
    /// Slot → its master's address; empty until a cluster's layout is known.
    owners: RwLock<Vec<Option<Arc<str>>>>,
    nodes: Mutex<HashMap<Arc<str>, Breaker>>,
}

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        let template = Breaker::new(threshold, cooldown);
        Self {
            tier: Mutex::new(template.clone()),
            template,
            owners: RwLock::new(Vec::new()),
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a cluster's layout: each master's address and slots. Masters that stay keep
    /// their breakers' state.
    pub fn set_layout(&self, masters: Vec<(String, Vec<RangeInclusive<u16>>)>) {
        let mut owners = vec![None; SLOTS];
        let mut nodes = self.nodes.lock().expect("breakers lock");
        let mut kept = HashMap::new();
        for (address, ranges) in masters {
            let address: Arc<str> = address.into();
            let breaker = nodes
                .remove(&address)
                .unwrap_or_else(|| self.template.clone());
            for range in ranges {
                for slot in range {
                    if let Some(owner) = owners.get_mut(usize::from(slot)) {
                        *owner = Some(address.clone());
                    }
                }
            }
            kept.insert(address, breaker);
        }
        *nodes = kept;
        *self.owners.write().expect("breakers lock") = owners;
    }

    /// The breaker for a call about the L2 key `key` (`None`: about no one key).
    pub fn which(&self, key: Option<&[u8]>) -> Which {
        let owners = self.owners.read().expect("breakers lock");
        let slot = redis::cluster_routing::get_slot(key?);
        owners.get(usize::from(slot)).cloned().flatten()
    }

    fn with<T>(&self, which: &Which, f: impl FnOnce(&mut Breaker) -> T) -> T {
        if let Some(address) = which {
            if let Some(breaker) = self.nodes.lock().expect("breakers lock").get_mut(address) {
                return f(breaker);
            }
        }
        f(&mut self.tier.lock().expect("breakers lock"))
    }

    pub fn allow(&self, which: &Which, now: Instant) -> bool {
        self.with(which, |b| b.allow(now))
    }

    pub fn record(&self, which: &Which, success: bool, now: Instant) {
        self.with(which, |b| b.record(success, now));
    }

    /// Whether any breaker is open.
    pub fn any_open(&self) -> bool {
        self.tier.lock().expect("breakers lock").is_open()
            || self
                .nodes
                .lock()
                .expect("breakers lock")
                .values()
                .any(Breaker::is_open)
    }

    /// The masters whose breaker is open.
    pub fn open_nodes(&self) -> Vec<String> {
        let nodes = self.nodes.lock().expect("breakers lock");
        let mut open: Vec<String> = nodes
            .iter()
            .filter(|(_, b)| b.is_open())
            .map(|(a, _)| a.to_string())
            .collect();
        open.sort();
        open
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

    #[test]
    fn a_masters_breaker_covers_only_its_slots() {
        let t0 = Instant::now();
        let breakers = Breakers::new(2, Duration::from_secs(5));
        let key_on = |wanted: std::ops::Range<u16>| {
            (0..)
                .map(|i| format!("k{i}").into_bytes())
                .find(|k| wanted.contains(&redis::cluster_routing::get_slot(k)))
                .unwrap()
        };
        let (low, high) = (key_on(0..8000), key_on(9000..16384));
        assert_eq!(
            breakers.which(Some(&low)),
            None,
            "no layout yet: the tier's"
        );
        breakers.set_layout(vec![
            ("a:1".into(), vec![0..=8191]),
            ("b:2".into(), vec![8192..=16383]),
        ]);
        let (a, b) = (breakers.which(Some(&low)), breakers.which(Some(&high)));
        assert_eq!((a.as_deref(), b.as_deref()), (Some("a:1"), Some("b:2")));
        for _ in 0..2 {
            breakers.record(&b, false, t0);
        }
        assert!(!breakers.allow(&b, t0), "b's slots are skipped");
        assert!(breakers.allow(&a, t0), "a's are not");
        assert!(breakers.allow(&None, t0), "nor calls about no one key");
        assert_eq!(breakers.open_nodes(), vec!["b:2".to_string()]);
        assert!(breakers.any_open());
        // A new layout keeps b's state; a master that left takes its breaker along.
        breakers.set_layout(vec![("b:2".into(), vec![0..=16383])]);
        assert!(!breakers.allow(&breakers.which(Some(&low)), t0));
    }
}
