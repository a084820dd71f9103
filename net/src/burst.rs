//! Whether a core's input comes in bursts: the one fact that decides how a response
//! leaves (`http.rs`, `flush`). In a burst, several connections' requests are served in
//! one pass of the executor, and their responses leave together in one ring submission;
//! a lone response is sent straight from its task instead, which puts it on its way
//! sooner and spares the task a park (BENCHMARKS.md, "A lone response sent from its
//! task"). The executor does not say how many tasks a pass runs, so this is read from
//! the times at which input arrives.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Input that arrives within this long of the core's last work (input arriving, or a
/// response sent directly) is part of a burst. Within a pass, one connection's input
/// follows the last one's handling at once; a core that waits for each request, as one
/// connection makes it, idles for a whole round trip between them (over 20 µs on
/// loopback).
const GAP: Duration = Duration::from_micros(10);

/// Once in a burst, a core stays in it while input keeps coming within this long: between
/// two passes of a busy core lies the ring submission of the first pass's sends, which
/// takes longer than [`GAP`] when it carries many.
const HOLD: Duration = Duration::from_micros(100);

/// One core's view of its recent input; core-local, so plain cells.
#[derive(Debug)]
pub struct Bursts {
    /// When input last arrived, or a response was last sent directly, whichever was later.
    last_work: Cell<Instant>,
    /// Whether that input came in a burst.
    in_burst: Cell<bool>,
}

impl Bursts {
    pub fn new(now: Instant) -> Self {
        Self {
            last_work: Cell::new(now),
            in_burst: Cell::new(false),
        }
    }

    /// Notes input arriving at `at` on one of the core's connections, and says whether it
    /// came in a burst: within [`GAP`] of the core's last work, or within [`HOLD`] of it
    /// while a burst lasts.
    pub fn input_arrived(&self, at: Instant) -> bool {
        let gap = at.saturating_duration_since(self.last_work.replace(at));
        let in_burst = gap < GAP || (self.in_burst.get() && gap < HOLD);
        self.in_burst.set(in_burst);
        in_burst
    }

    /// Notes that a response was sent directly, finishing at `at`, so that input arriving
    /// right after it counts as part of a burst: the send's own time is not a pause.
    pub fn sent_directly(&self, at: Instant) {
        self.last_work.set(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn one_connection_waiting_for_each_answer_is_never_a_burst() {
        let start = Instant::now();
        let bursts = Bursts::new(start);
        for i in 1..50 {
            // A request every 25 µs, answered 3 µs after it arrives.
            let arrived = start + micros(25 * i);
            assert!(!bursts.input_arrived(arrived), "request {i}");
            bursts.sent_directly(arrived + micros(3));
        }
    }

    #[test]
    fn a_pass_of_many_requests_is_a_burst_and_it_holds_between_passes() {
        let start = Instant::now();
        let bursts = Bursts::new(start);
        assert!(!bursts.input_arrived(start + micros(50)), "the first input");
        // The rest of the pass, one request's handling apart.
        for i in 1..10 {
            assert!(bursts.input_arrived(start + micros(50 + 2 * i)));
        }
        // The next pass comes after the first's ring submission: still the burst.
        assert!(bursts.input_arrived(start + micros(68 + 60)));
        // A pause longer than the hold ends it.
        assert!(!bursts.input_arrived(start + micros(128 + 150)));
        // And a lone request's successor over the gap does not start one again.
        assert!(!bursts.input_arrived(start + micros(278 + 30)));
    }

    #[test]
    fn input_right_after_a_direct_send_is_a_burst() {
        let start = Instant::now();
        let bursts = Bursts::new(start);
        assert!(!bursts.input_arrived(start + micros(100)));
        // The send took 20 µs; input 4 µs after it ended was waiting meanwhile.
        bursts.sent_directly(start + micros(120));
        assert!(bursts.input_arrived(start + micros(124)));
    }
}
