//! A connection's request deadlines on one timer for its whole life.
//!
//! `tokio::time::timeout` around every request puts an entry into the timer wheel and
//! takes it out again, under the timer driver's lock, for each request: about 2.5 % of a
//! load thread's time at 64 connections (BENCHMARKS.md, "The load generator's own cost"),
//! time the load core then cannot spend sending. Here the connection keeps one sleep,
//! moved only to an earlier deadline. Each request's deadline is later than the last one,
//! so the sleep is left where it is and fires at an earlier request's deadline; it is then
//! moved on to the current one if that has not passed. The sleep is moved about once per
//! timeout period instead of twice per request, and a request still times out at its own
//! deadline.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// Far enough that no request's deadline is later.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub struct Deadlines {
    sleep: Pin<Box<Sleep>>,
    /// Where the sleep is aimed: never after the deadline being waited on.
    at: Instant,
}

impl Default for Deadlines {
    fn default() -> Self {
        let at = Instant::now() + FAR_FUTURE;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(at.into())),
            at,
        }
    }
}

impl Deadlines {
    /// Runs `work` until it completes (`Some`) or `deadline` passes (`None`).
    pub async fn run<F: Future>(&mut self, deadline: Instant, work: F) -> Option<F::Output> {
        if deadline < self.at {
            self.aim(deadline);
        }
        let mut work = pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            while self.sleep.as_mut().poll(cx).is_ready() {
                if Instant::now() >= deadline {
                    return Poll::Ready(None);
                }
                self.aim(deadline);
            }
            Poll::Pending
        })
        .await
    }

    fn aim(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline.into());
        self.at = deadline;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(test: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(test)
    }

    #[test]
    fn work_that_completes_in_time_gives_its_output() {
        run(async {
            let mut deadlines = Deadlines::default();
            for i in 0..3 {
                let soon = Instant::now() + Duration::from_secs(5);
                assert_eq!(deadlines.run(soon, async { i }).await, Some(i));
            }
        });
    }

    #[test]
    fn work_past_its_deadline_is_abandoned_at_that_deadline_not_an_earlier_one() {
        run(async {
            let mut deadlines = Deadlines::default();
            // An earlier request aims the timer at its own, nearer deadline.
            let near = Instant::now() + Duration::from_millis(20);
            assert_eq!(deadlines.run(near, async { 1 }).await, Some(1));
            // The next one's deadline is later: the timer fires at the old one first and
            // must be moved on, not taken for this request's deadline.
            let started = Instant::now();
            let later = started + Duration::from_millis(150);
            let outcome = deadlines.run(later, std::future::pending::<()>()).await;
            assert_eq!(outcome, None);
            assert!(Instant::now() >= later, "abandoned before its deadline");
            // A new connection's first deadline brings the timer in from the far future.
            let mut fresh = Deadlines::default();
            let first = Instant::now() + Duration::from_millis(10);
            assert_eq!(fresh.run(first, std::future::pending::<()>()).await, None);
            assert!(Instant::now() >= first);
        });
    }
}
