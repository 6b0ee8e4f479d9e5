//! Draining after a handover: wait for tracked in-flight work, up to a deadline.

use std::time::Duration;

use tokio_util::task::TaskTracker;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drained {
    /// Every tracked task finished.
    Complete,
    /// The deadline passed with this many tasks still running.
    TimedOut {
        /// Tasks still running.
        remaining: usize,
    },
}

/// Closes `tracker` and waits until every task it tracks has finished, or `deadline` has passed.
///
/// The usual shape after a successful upgrade: the accept loops return when
/// [`Upgrader::upgraded`](crate::Upgrader::upgraded) is cancelled (dropping their listeners),
/// connection tasks were spawned with `tracker.spawn`, and `main` calls `drain` then exits 0 —
/// whatever is left after the deadline is cut off by the exit.
pub async fn drain(tracker: &TaskTracker, deadline: Duration) -> Drained {
    tracker.close();
    let (started, in_flight) = (std::time::Instant::now(), tracker.len());
    if tokio::time::timeout(deadline, tracker.wait()).await.is_ok() {
        crate::metrics::drained(in_flight, 0, started.elapsed());
        return Drained::Complete;
    }
    let remaining = tracker.len();
    crate::metrics::drained(in_flight, remaining, started.elapsed());
    tracing::warn!(remaining, ?deadline, "drain deadline passed");
    Drained::TimedOut { remaining }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn times_out_with_the_remaining_count() {
        let tracker = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tracker.spawn(async move {
            let _ = rx.await;
        });
        tracker.spawn(async {});
        assert_eq!(drain(&tracker, Duration::from_millis(50)).await, Drained::TimedOut { remaining: 1 });
        drop(tx);
        assert_eq!(drain(&tracker, Duration::from_secs(5)).await, Drained::Complete);
    }
}
