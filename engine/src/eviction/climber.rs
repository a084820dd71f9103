//! Sizing the admission window by hill climbing on the hit rate, as Caffeine does.
//!
//! The climber watches the hit rate over samples of three lookups per cached entry.
//! After each sample it moves the window's share one step: on in the same direction if
//! the hit rate rose (or held), back the other way if it fell. Steps start at 6.25 % of
//! the cache and shrink by 10 % a sample down to 2 %, so the window settles within a
//! few dozen samples and can still follow a workload that drifts. The floor is set by
//! noise: a sample's hit rate wanders by a few points on its own, more than a 0.5 %
//! step changes it, so with smaller steps the window stopped climbing towards the
//! share a recency workload wanted (the unit tests' recency workload over several hash
//! seeds); on the ARC traces floors of 0.5, 1 and 2 % scored within a few tenths of
//! each other (BENCHMARKS.md).
//!
//! Where this departs from Caffeine's climber (samples of ten lookups per entry, steps
//! shrinking by 2 %, a restart to large steps when the hit rate jumps by 5 points) it
//! does so by measurement on the ARC traces (BENCHMARKS.md): samples that long leave a
//! large cache only a handful of steps over a trace, and real traces change phase often
//! enough that restarts on jumps kept the window wandering.
//!
//! The lookups come from the shard's readers (each counts its own; see `table.rs`), so
//! the owner learns the hit rate without any reader touching shared state.

const STEP: f64 = 0.0625;
const STEP_DECAY: f64 = 0.9;
const MIN_STEP: f64 = 0.02;
/// Lookups per cached entry in one sample.
const SAMPLE_PER_ENTRY: u64 = 3;

#[derive(Debug)]
pub struct Climber {
    sample_size: u64,
    lookups: u64,
    hits: u64,
    previous_hit_rate: f64,
    /// The next move of the window's share, signed.
    step: f64,
}

impl Climber {
    pub fn new(capacity: usize) -> Self {
        Self {
            sample_size: (capacity.max(1) as u64).saturating_mul(SAMPLE_PER_ENTRY),
            lookups: 0,
            hits: 0,
            previous_hit_rate: 0.0,
            // Caffeine's first move shrinks the window.
            step: -STEP,
        }
    }

    /// Counts `lookups` more lookups, `hits` of them hits. At the end of a sample, returns
    /// the window's new share given its current one.
    pub fn observe(&mut self, lookups: u64, hits: u64, share: f64) -> Option<f64> {
        self.lookups += lookups;
        self.hits += hits.min(lookups);
        if self.lookups < self.sample_size {
            return None;
        }
        let hit_rate = self.hits as f64 / self.lookups as f64;
        let change = hit_rate - self.previous_hit_rate;
        let amount = if change >= 0.0 { self.step } else { -self.step };
        self.step = (amount * STEP_DECAY).abs().max(MIN_STEP).copysign(amount);
        self.previous_hit_rate = hit_rate;
        self.lookups = 0;
        self.hits = 0;
        Some((share + amount).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds samples whose hit rate is `rate(share)` until the share settles.
    fn climb(rate: impl Fn(f64) -> f64) -> f64 {
        let mut c = Climber::new(100);
        let mut share = 0.01;
        for _ in 0..600 {
            let hits = (rate(share) * 1_000.0) as u64;
            if let Some(s) = c.observe(1_000, hits, share) {
                share = s;
            }
        }
        share
    }

    #[test]
    fn climbs_to_the_window_size_that_hits_most() {
        let peak = |at: f64| move |s: f64| 0.8 - (s - at).abs() * 0.5;
        assert!(
            (climb(peak(0.3)) - 0.3).abs() < 0.08,
            "{}",
            climb(peak(0.3))
        );
        assert!(
            climb(|s| 0.2 + 0.5 * s) > 0.9,
            "recency wins: a large window"
        );
        assert!(
            climb(|s| 0.7 - 0.5 * s) < 0.1,
            "frequency wins: a small window"
        );
    }

    #[test]
    fn only_whole_samples_move_the_window() {
        let mut c = Climber::new(10);
        assert_eq!(c.observe(29, 15, 0.5), None);
        let share = c.observe(1, 1, 0.5).expect("a sample of 30 lookups");
        assert!((share - (0.5 - STEP)).abs() < 1e-9, "{share}");
    }
}
