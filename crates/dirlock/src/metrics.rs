//! The metrics dirlock records through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Recorded only with the `metrics` feature (off by default: without it nothing is recorded and
//! the `metrics` crate is not a dependency). The names follow Prometheus' conventions; they are
//! defined here, in one place, so that dashboards and tests can refer to them.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | [`WAIT_SECONDS`] | histogram | `outcome` = `acquired` \| `held` \| `timed_out` \| `error` | time from the first try to the end of an acquisition, one sample per [`DirLock::acquire_with`](crate::DirLock::acquire_with) (and per directory of a [`LockSet`](crate::LockSet)): 0 for an uncontended lock, the wait for a contended one |
//!
//! `held` is a lock found held with no wait asked for (fail fast), `timed_out` one still held at
//! the deadline, `error` any other failure (a symlink at the lock path, a missing directory, …).
//!
//! ```
//! # #[cfg(feature = "metrics")] {
//! // With a recorder installed by the application (any `metrics` exporter):
//! let dir = tempfile::tempdir().unwrap();
//! let lock = dirlock::DirLock::acquire(dir.path()).unwrap();
//! // … one `lifeline_dirlock_wait_seconds{outcome="acquired"}` sample was recorded.
//! assert_eq!(dirlock::metrics::WAIT_SECONDS, "lifeline_dirlock_wait_seconds");
//! # drop(lock); }
//! ```

/// Histogram, seconds: how long an acquisition took, by `outcome`.
pub const WAIT_SECONDS: &str = "lifeline_dirlock_wait_seconds";

/// The label of [`WAIT_SECONDS`] that says how the acquisition ended.
pub const OUTCOME: &str = "outcome";

/// Registers the help text and unit of every metric above with the installed recorder (shown
/// as `# HELP` by a Prometheus exporter). Optional: metrics are recorded without it.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    ::metrics::describe_histogram!(
        WAIT_SECONDS,
        ::metrics::Unit::Seconds,
        "Time from the first try to the end of a directory lock acquisition, by outcome."
    );
}

/// Records one acquisition; a no-op without the `metrics` feature.
pub(crate) fn record_wait<T>(result: &crate::Result<T>, waited: std::time::Duration) {
    #[cfg(feature = "metrics")]
    {
        let outcome = match result {
            Ok(_) => "acquired",
            Err(crate::Error::HeldElsewhere { .. }) => "held",
            Err(crate::Error::TimedOut { .. }) => "timed_out",
            Err(_) => "error",
        };
        ::metrics::histogram!(WAIT_SECONDS, OUTCOME => outcome).record(waited);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (result, waited);
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::{DirLock, LockOptions};

    /// The samples of `WAIT_SECONDS` recorded while `f` ran, by outcome.
    fn waits(f: impl FnOnce()) -> Vec<(String, usize)> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, f);
        let mut waits: Vec<(String, usize)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == WAIT_SECONDS)
            .map(|(key, _, _, value)| {
                let outcome = key.key().labels().find(|l| l.key() == OUTCOME).map(|l| l.value().to_owned());
                let DebugValue::Histogram(samples) = value else {
                    panic!("{WAIT_SECONDS} is not a histogram")
                };
                (outcome.unwrap_or_default(), samples.len())
            })
            .collect();
        waits.sort();
        waits
    }

    #[test]
    fn each_acquisition_records_its_wait_by_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let recorded = waits(|| {
            let lock = DirLock::acquire(dir.path()).unwrap();
            assert!(DirLock::acquire(dir.path()).is_err());
            let patient = LockOptions::new().lock_timeout(Duration::from_millis(20));
            assert!(DirLock::acquire_with(dir.path(), &patient).is_err());
            lock.release().unwrap();
            assert!(DirLock::acquire(dir.path().join("missing")).is_err());
        });
        let expected = [("acquired", 1), ("error", 1), ("held", 1), ("timed_out", 1)];
        assert_eq!(recorded, expected.map(|(o, n)| (o.to_owned(), n)));
    }

    #[test]
    fn a_timed_out_wait_records_at_least_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _lock = DirLock::acquire(dir.path()).unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            let patient = LockOptions::new().lock_timeout(Duration::from_millis(30));
            assert!(DirLock::acquire_with(dir.path(), &patient).is_err());
        });
        let (_, _, _, value) = snapshotter.snapshot().into_vec().pop().unwrap();
        let DebugValue::Histogram(samples) = value else { panic!("not a histogram") };
        assert!(samples[0].0 >= 0.03, "{samples:?}");
    }
}
