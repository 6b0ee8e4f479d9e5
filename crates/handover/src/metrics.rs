//! The metrics handover records through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Recorded only with the `metrics` feature (off by default: without it nothing is recorded and
//! the `metrics` crate is not a dependency). The names follow Prometheus' conventions and are
//! defined here, in one place. They count what *this process* did: a successor starts from
//! zero (`lifeline::service` carries its own totals across generations).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | [`RESTARTS_TOTAL`] | counter | `outcome` = `ok` \| `failed` \| `refused` | upgrades ([`Upgrader::upgrade`](crate::Upgrader::upgrade), and successors served through [`Upgrader::serve_successors`](crate::Upgrader::serve_successors)): `ok` a successor became ready, `failed` it did not (it was killed, this process serves on), `refused` none was started (one already in progress, already upgraded, stopping) |
//! | [`RESTART_DURATION_SECONDS`] | histogram | `outcome` = `ok` \| `failed` | from the start of an upgrade to the successor's readiness (or the failure) |
//! | [`DRAIN_DURATION_SECONDS`] | histogram | `outcome` = `complete` \| `timed_out` | how long [`drain`](crate::drain) waited |
//! | [`DRAINED_CONNECTIONS_TOTAL`] | counter | `outcome` = `finished` \| `cut_off` | tracked tasks (one per connection, in the usual shape) in flight when a drain began: `finished` within the deadline, `cut_off` still running at it |
//!
//! ```
//! assert_eq!(handover::metrics::RESTARTS_TOTAL, "lifeline_handover_restarts_total");
//! ```

use std::time::Duration;

/// Counter: upgrades by `outcome`.
pub const RESTARTS_TOTAL: &str = "lifeline_handover_restarts_total";
/// Histogram, seconds: upgrade latency by `outcome`.
pub const RESTART_DURATION_SECONDS: &str = "lifeline_handover_restart_duration_seconds";
/// Histogram, seconds: drain duration by `outcome`.
pub const DRAIN_DURATION_SECONDS: &str = "lifeline_handover_drain_duration_seconds";
/// Counter: tasks in flight at the start of a drain, by `outcome`.
pub const DRAINED_CONNECTIONS_TOTAL: &str = "lifeline_handover_drained_connections_total";

/// The label of every metric above.
pub const OUTCOME: &str = "outcome";

/// Registers the help text and unit of every metric above with the installed recorder (shown
/// as `# HELP` by a Prometheus exporter). Optional: metrics are recorded without it.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        RESTARTS_TOTAL,
        "Handovers started by this process: ok, failed (it serves on) or refused."
    );
    describe_histogram!(
        RESTART_DURATION_SECONDS,
        Unit::Seconds,
        "From the start of a handover to the successor's readiness or failure."
    );
    describe_histogram!(DRAIN_DURATION_SECONDS, Unit::Seconds, "How long a drain waited for in-flight work.");
    describe_counter!(
        DRAINED_CONNECTIONS_TOTAL,
        "Connections in flight when a drain began: finished in time or cut off."
    );
}

/// An upgrade that was refused before anything started.
pub(crate) fn refused() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(RESTARTS_TOTAL, OUTCOME => "refused").increment(1);
}

/// An upgrade that ran for `took`.
pub(crate) fn restarted(ok: bool, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let outcome = if ok { "ok" } else { "failed" };
        ::metrics::counter!(RESTARTS_TOTAL, OUTCOME => outcome).increment(1);
        ::metrics::histogram!(RESTART_DURATION_SECONDS, OUTCOME => outcome).record(took);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (ok, took);
}

/// A drain that began with `in_flight` tasks and left `remaining` after `took`.
pub(crate) fn drained(in_flight: usize, remaining: usize, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let outcome = if remaining == 0 { "complete" } else { "timed_out" };
        ::metrics::histogram!(DRAIN_DURATION_SECONDS, OUTCOME => outcome).record(took);
        let finished = in_flight.saturating_sub(remaining) as u64;
        ::metrics::counter!(DRAINED_CONNECTIONS_TOTAL, OUTCOME => "finished").increment(finished);
        ::metrics::counter!(DRAINED_CONNECTIONS_TOTAL, OUTCOME => "cut_off").increment(remaining as u64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (in_flight, remaining, took);
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;
    use crate::handover::{Handover, Start};
    use crate::{Config, Drained};

    /// `name{outcome=…}` → counter value or histogram sample count.
    fn recorded(snapshotter: &Snapshotter) -> Vec<(String, usize)> {
        let mut recorded: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let outcome = key
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect::<Vec<_>>()
                    .join(",");
                let n = match value {
                    DebugValue::Counter(n) => n as usize,
                    DebugValue::Histogram(samples) => samples.len(),
                    DebugValue::Gauge(_) => panic!("no gauges here"),
                };
                (format!("{}{{{outcome}}}", key.key().name()), n)
            })
            .collect();
        recorded.sort();
        recorded
    }

    /// A successor that reports ready at once (perl writes the readiness message), then exits.
    const READY_AT_ONCE: &str = r#"
        open(my $ready, ">&=", $ENV{LIFELINE_READY_FD}) or die "ready fd: $!";
        syswrite($ready, pack("A1 V", "R", $$)) == 5 or die "write: $!";
    "#;

    #[test]
    fn failed_successful_and_refused_restarts_and_a_drain_are_recorded() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let failing = Config::default().notify(false).executable("/bin/sh").args(["-c", "exit 3"]);
                let upgrader = Handover::bare(failing, Start::Fresh).unwrap().ready(()).await.unwrap();
                assert!(upgrader.upgrade().await.is_err());

                let config = Config::default().notify(false).executable("perl").args(["-e", READY_AT_ONCE]);
                let upgrader = Handover::bare(config, Start::Fresh).unwrap().ready(()).await.unwrap();
                upgrader.upgrade().await.unwrap();
                assert!(upgrader.upgrade().await.is_err(), "already upgraded");

                let tracker = tokio_util::task::TaskTracker::new();
                tracker.spawn(tokio::time::sleep(Duration::from_millis(1)));
                tracker.spawn(std::future::pending::<()>());
                let drained = crate::drain(&tracker, Duration::from_millis(10)).await;
                assert_eq!(drained, Drained::TimedOut { remaining: 1 });
            });
        });
        let mut expected = [
            (format!("{DRAINED_CONNECTIONS_TOTAL}{{outcome=cut_off}}"), 1),
            (format!("{DRAINED_CONNECTIONS_TOTAL}{{outcome=finished}}"), 1),
            (format!("{DRAIN_DURATION_SECONDS}{{outcome=timed_out}}"), 1),
            (format!("{RESTARTS_TOTAL}{{outcome=failed}}"), 1),
            (format!("{RESTARTS_TOTAL}{{outcome=ok}}"), 1),
            (format!("{RESTARTS_TOTAL}{{outcome=refused}}"), 1),
            (format!("{RESTART_DURATION_SECONDS}{{outcome=failed}}"), 1),
            (format!("{RESTART_DURATION_SECONDS}{{outcome=ok}}"), 1),
        ];
        expected.sort();
        assert_eq!(recorded(&snapshotter), expected);
    }
}
