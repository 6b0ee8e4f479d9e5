//! The metrics a [`Supervisor`](crate::Supervisor) records through the
//! [`metrics`](https://docs.rs/metrics) facade.
//!
//! Recorded only with the `metrics` feature (off by default: without it nothing is recorded and
//! the `metrics` crate is not a dependency). The names follow Prometheus' conventions and are
//! defined here, in one place. No pid is ever a label.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | [`STARTS_TOTAL`] | counter | | times the command was started ([`EventKind::Started`](crate::EventKind::Started)) |
//! | [`EXITS_TOTAL`] | counter | `cause` = `exited` \| `watchdog` \| `start_timeout` \| `probe` \| `restart` \| `spawn_failed` | exits of the main process by [cause](crate::ExitCause): on its own (a crash or a clean exit), killed for a missed watchdog, a start timeout or a failed probe, stopped for a restart on request, or a start that could not even `exec` |
//! | [`MAIN_PID_CHANGES_TOTAL`] | counter | | handovers followed (`MAINPID=`) |
//! | [`BACKOFF_SECONDS`] | gauge | | the delay before the next start while backing off; 0 once a process runs |
//! | [`MAIN_START_TIME_SECONDS`] | gauge | | Unix time at which the current main process started (or took over by `MAINPID=`) |
//!
//! **Uptime** is computed at query time, as for Prometheus' own `process_start_time_seconds`:
//! `time() - lifeline_keepalive_main_start_time_seconds` is exact at every scrape, where an
//! uptime gauge would be as old as its last update.
//!
//! ```
//! assert_eq!(keepalive::metrics::EXITS_TOTAL, "lifeline_keepalive_exits_total");
//! ```

#[cfg(feature = "metrics")]
use crate::exit::ExitCause;

/// Counter: starts of the command.
pub const STARTS_TOTAL: &str = "lifeline_keepalive_starts_total";
/// Counter: exits of the main process, by `cause`.
pub const EXITS_TOTAL: &str = "lifeline_keepalive_exits_total";
/// Counter: main pid changes followed.
pub const MAIN_PID_CHANGES_TOTAL: &str = "lifeline_keepalive_main_pid_changes_total";
/// Gauge, seconds: the current backoff delay (0 when none).
pub const BACKOFF_SECONDS: &str = "lifeline_keepalive_backoff_seconds";
/// Gauge, Unix seconds: when the current main process started.
pub const MAIN_START_TIME_SECONDS: &str = "lifeline_keepalive_main_start_time_seconds";

/// Label of [`EXITS_TOTAL`].
pub const CAUSE: &str = "cause";

/// Registers the help text and unit of every metric above with the installed recorder (shown
/// as `# HELP` by a Prometheus exporter). Optional: metrics are recorded without it.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(STARTS_TOTAL, "Starts of the supervised command.");
    describe_counter!(EXITS_TOTAL, "Exits of the supervised main process, by cause.");
    describe_counter!(MAIN_PID_CHANGES_TOTAL, "Handovers followed (MAINPID=).");
    describe_gauge!(
        BACKOFF_SECONDS,
        Unit::Seconds,
        "Delay before the next start while backing off; 0 when running."
    );
    describe_gauge!(
        MAIN_START_TIME_SECONDS,
        Unit::Seconds,
        "Unix time at which the current main process started."
    );
}

/// The `cause` label of an exit.
#[cfg(feature = "metrics")]
fn cause_label(cause: &ExitCause) -> &'static str {
    match cause {
        ExitCause::WatchdogTimeout => "watchdog",
        ExitCause::StartTimeout => "start_timeout",
        ExitCause::ProbeFailed { .. } => "probe",
        ExitCause::Restarted => "restart",
        ExitCause::SpawnFailed { .. } => "spawn_failed",
        // `ExitCause` is non-exhaustive only for other crates.
        ExitCause::OnItsOwn => "exited",
    }
}

/// One exit of the main process.
pub(crate) fn exited(cause: &crate::exit::ExitCause) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(EXITS_TOTAL, CAUSE => cause_label(cause)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = cause;
}

/// What an event changes.
pub(crate) fn event(kind: &crate::EventKind) {
    #[cfg(feature = "metrics")]
    match kind {
        crate::EventKind::Started { .. } => {
            ::metrics::counter!(STARTS_TOTAL).increment(1);
            ::metrics::gauge!(BACKOFF_SECONDS).set(0.0);
        }
        crate::EventKind::Adopted { .. } | crate::EventKind::RolledBack { .. } => {
            ::metrics::gauge!(BACKOFF_SECONDS).set(0.0);
        }
        crate::EventKind::MainPidChanged { .. } => ::metrics::counter!(MAIN_PID_CHANGES_TOTAL).increment(1),
        crate::EventKind::Backoff { delay, .. } => {
            ::metrics::gauge!(BACKOFF_SECONDS).set(delay.as_secs_f64());
        }
        _ => {}
    }
    #[cfg(not(feature = "metrics"))]
    let _ = kind;
}

/// The current main process started (or took over) at `since`.
pub(crate) fn main_since(since: std::time::SystemTime) {
    #[cfg(feature = "metrics")]
    if let Ok(after) = since.duration_since(std::time::UNIX_EPOCH) {
        ::metrics::gauge!(MAIN_START_TIME_SECONDS).set(after.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = since;
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;
    use crate::{Command, Decision, EventKind, Supervisor};

    /// Every series as `name{label=value}` (a snapshot empties the counters).
    fn series(snapshotter: &Snapshotter) -> Vec<(String, DebugValue)> {
        let mut series: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let labels: Vec<String> =
                    key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
                (format!("{}{{{}}}", key.key().name(), labels.join(",")), value)
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        series
    }

    fn value<'a>(series: &'a [(String, DebugValue)], name: &str) -> Option<&'a DebugValue> {
        series.iter().find(|(s, _)| s == name).map(|(_, v)| v)
    }

    #[test]
    fn starts_exits_by_cause_and_the_backoff_are_recorded() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                // Two crashes restarted at once, then a long backoff.
                let mut exits = 0;
                let policy = move |_: &crate::Exit| {
                    exits += 1;
                    let after = if exits < 3 { Duration::ZERO } else { Duration::from_secs(600) };
                    Decision::Restart { after }
                };
                let supervised = Supervisor::new(Command::new("sh").args(["-c", "exit 3"]))
                    .policy(policy)
                    .spawn()
                    .unwrap();
                let mut events = supervised.events();
                loop {
                    let event = events.next().await.expect("the supervisor backs off");
                    if let EventKind::Backoff { delay, .. } = event.kind {
                        assert_eq!(delay, Duration::from_secs(600));
                        break;
                    }
                }
                let series = series(&snapshotter);
                assert_eq!(value(&series, &format!("{STARTS_TOTAL}{{}}")), Some(&DebugValue::Counter(3)));
                assert_eq!(
                    value(&series, &format!("{EXITS_TOTAL}{{cause=exited}}")),
                    Some(&DebugValue::Counter(3))
                );
                assert_eq!(
                    value(&series, &format!("{BACKOFF_SECONDS}{{}}")),
                    Some(&DebugValue::Gauge(600.0.into()))
                );
                supervised.stop().await.unwrap();
            });
        });
    }

    #[test]
    fn the_start_time_of_the_main_process_is_recorded() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let before =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        ::metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let supervised = Supervisor::new(Command::new("sleep").arg("600")).spawn().unwrap();
                let mut events = supervised.events();
                let started = events.next().await.unwrap();
                assert!(matches!(started.kind, EventKind::Started { .. }), "{started:?}");
                let stopped = supervised.stop().await.unwrap();
                drop(stopped);
            });
        });
        let series = series(&snapshotter);
        let Some(DebugValue::Gauge(since)) = value(&series, &format!("{MAIN_START_TIME_SECONDS}{{}}")) else {
            panic!("no {MAIN_START_TIME_SECONDS}")
        };
        assert!(since.0 >= before.floor() && since.0 < before + 60.0, "{since} vs {before}");
        assert_eq!(value(&series, &format!("{EXITS_TOTAL}{{cause=exited}}")), None, "a stop is no exit");
    }
}
