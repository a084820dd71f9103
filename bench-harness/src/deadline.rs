//! A connection's request deadlines on one timer for its whole life.
//!
//! A timeout future around every request creates a timer and drops it again for each
//! request: on tokio, where the load ran before, about 2 % of a load thread's time at 64
//! connections (BENCHMARKS.md, "The load generator's own cost"), time the load core then
//! cannot spend sending. Here the connection keeps one sleep for its life and resets it to
//! each request's deadline, which moves its entry in the thread's timer wheel. (Keeping
//! the timer where it was and moving it on from the task when it fired, as the server's
//! connection timer does, would wake every connection once per timeout period for
//! nothing.)

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Instant;

use monoio::time::Sleep;

pub struct Deadlines {
    sleep: Pin<Box<Sleep>>,
}

impl Default for Deadlines {
    fn default() -> Self {
        // Reset before it is first polled, by the first request.
        Self {
            sleep: Box::pin(monoio::time::sleep(std::time::Duration::MAX)),
        }
    }
}

impl Deadlines {
    /// Runs `work` until it completes (`Some`) or `deadline` passes (`None`).
    pub async fn run<F: Future>(&mut self, deadline: Instant, work: F) -> Option<F::Output> {
        self.sleep.as_mut().reset(deadline.into());
        let mut work = pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            self.sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run<T: Send + 'static, Fut: Future<Output = T>>(
        test: impl FnOnce() -> Fut + Send + 'static,
    ) -> T {
        crate::runtime::run(crate::runtime::IoDriver::Auto, test).unwrap()
    }

    #[test]
    fn work_that_completes_in_time_gives_its_output() {
        run(|| async {
            let mut deadlines = Deadlines::default();
            for i in 0..3 {
                let soon = Instant::now() + Duration::from_secs(5);
                assert_eq!(deadlines.run(soon, async { i }).await, Some(i));
            }
        });
    }

    #[test]
    fn work_past_its_deadline_is_abandoned_at_that_deadline_not_an_earlier_one() {
        run(|| async {
            let mut deadlines = Deadlines::default();
            // An earlier request, which waits once, sets the timer to its nearer deadline.
            let near = Instant::now() + Duration::from_millis(20);
            let answered = deadlines.run(near, async {
                monoio::time::sleep(Duration::from_millis(1)).await;
                1
            });
            assert_eq!(answered.await, Some(1));
            // The next one's deadline is later: the timer must not fire at the old one.
            let later = Instant::now() + Duration::from_millis(150);
            let outcome = deadlines.run(later, std::future::pending::<()>()).await;
            assert_eq!(outcome, None);
            assert!(Instant::now() >= later, "abandoned before its deadline");
            // After it fired, the timer serves the next requests as before.
            let soon = Instant::now() + Duration::from_secs(5);
            assert_eq!(deadlines.run(soon, async { 2 }).await, Some(2));
            let last = Instant::now() + Duration::from_millis(10);
            assert_eq!(
                deadlines.run(last, std::future::pending::<()>()).await,
                None
            );
            assert!(Instant::now() >= last);
        });
    }
}
