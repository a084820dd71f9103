//! Open-loop pacing and coordinated-omission correction, the way wrk2 does them.
//!
//! In open loop every connection owns a fixed schedule: request `k` is *meant* to start
//! at `start + k × interval`. A connection that falls behind (the server stalled) sends
//! the next request at once instead of skipping it, and its latency is measured from the
//! intended start, not from when it actually went out; so a stall is charged to every
//! request it delayed, as a user arriving on schedule would have felt it. Connections
//! are staggered across one interval so they do not fire in lockstep.
//!
//! Only the server's delay is charged, not the tool's: when the connection was free by
//! the intended time, a late send is the timer's doing (the load thread's has 1 ms resolution) and
//! latency is measured from the actual send.

use std::time::{Duration, Instant};

/// One connection's schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
    sent: u64,
}

impl Schedule {
    /// A schedule for connection `index` of `connections` sharing `rate` requests/s.
    pub fn new(start: Instant, rate: f64, index: usize, connections: usize) -> Self {
        let interval = Duration::from_secs_f64(connections as f64 / rate);
        let offset = interval.mul_f64(index as f64 / connections as f64);
        Self {
            start: start + offset,
            interval,
            sent: 0,
        }
    }

    /// When the next request is meant to start; advances the schedule.
    pub fn next_intended(&mut self) -> Instant {
        let at = self.start + self.interval.mul_f64(self.sent as f64);
        self.sent += 1;
        at
    }
}

/// When a request's latency starts counting: its intended start if the connection was
/// still busy with earlier requests then (the server delayed it), else when it was sent.
pub fn charged_start(intended: Instant, connection_free_at: Instant, sent: Instant) -> Instant {
    if connection_free_at > intended {
        intended
    } else {
        sent
    }
}

/// Latency charged to a request that completed at `completed`.
pub fn corrected_latency(charged_start: Instant, completed: Instant) -> Duration {
    completed.saturating_duration_since(charged_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_share_the_rate_and_are_staggered() {
        let t0 = Instant::now();
        let connections = 4;
        let mut all: Vec<Instant> = Vec::new();
        for i in 0..connections {
            let mut s = Schedule::new(t0, 1000.0, i, connections);
            all.extend((0..250).map(|_| s.next_intended()));
        }
        all.sort();
        // 1000 requests over one second of schedule, evenly spaced by 1 ms.
        let span = *all.last().unwrap() - all[0];
        assert!((span.as_secs_f64() - 0.999).abs() < 1e-6, "{span:?}");
        for pair in all.windows(2) {
            let gap = (pair[1] - pair[0]).as_secs_f64();
            assert!((gap - 0.001).abs() < 1e-6, "gap {gap}");
        }
    }

    #[test]
    fn a_stall_is_charged_to_every_request_it_delayed() {
        // 100 req/s on one connection: requests meant for 0, 10, 20, 30 ms. The server
        // stalls 35 ms on the first; the rest go out back to back after it, each served
        // in 1 ms. Measured from the intended start, the delays show.
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 100.0, 0, 1);
        let ms = Duration::from_millis;
        let mut free_at = t0;
        let mut latencies = Vec::new();
        for service in [ms(35), ms(1), ms(1), ms(1)] {
            let intended = s.next_intended();
            let sent = free_at.max(intended);
            let start = charged_start(intended, free_at, sent);
            free_at = sent + service;
            latencies.push(corrected_latency(start, free_at));
        }
        assert_eq!(latencies, vec![ms(35), ms(26), ms(17), ms(8)]);
        // A closed-loop tool would have reported 35, 1, 1, 1: the omission wrk2 corrects.
    }

    #[test]
    fn the_tools_own_timer_lag_is_not_charged_to_the_server() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // The connection was free at 0; the request was meant for 10 ms, the timer woke
        // at 10.9 ms, the answer took 0.1 ms.
        let start = charged_start(t0 + ms(10), t0, t0 + Duration::from_micros(10_900));
        assert_eq!(
            corrected_latency(start, t0 + ms(11)),
            Duration::from_micros(100)
        );
    }
}
