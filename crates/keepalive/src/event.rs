//! What happened to the service, as a stream of timestamped [`Event`]s.

use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::exit::ExitStatus;

/// One thing that happened, with when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When the supervisor observed it.
    pub at: Instant,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The command was started.
    Started {
        /// The new main pid.
        pid: u32,
        /// How many times the command has been started by this supervisor, this one included.
        attempt: u32,
    },
    /// A running process was adopted from a snapshot.
    Adopted {
        /// The adopted pid.
        pid: u32,
    },
    /// The main process sent `READY=1`.
    Ready {
        /// The main pid.
        pid: u32,
    },
    /// The main process sent `STATUS=`.
    Status {
        /// The main pid.
        pid: u32,
        /// The status text.
        text: String,
    },
    /// The main process announced a successor with `MAINPID=`; supervision follows it. Not a
    /// restart: no exit, no backoff.
    MainPidChanged {
        /// The previous main pid (it may keep running a while to drain).
        old: u32,
        /// The new main pid.
        new: u32,
    },
    /// The main process exited and a retired one took the service back by naming itself with
    /// `MAINPID=` (a rollback: its successor died in its rollback window). Supervision follows it:
    /// no restart, no backoff, not a failure for the policy.
    RolledBack {
        /// The main process that exited; `None` when its exit had already been counted (the
        /// rollback came while the supervisor waited out a restart delay).
        from: Option<u32>,
        /// Its status ([`ExitStatus::Unknown`] when it was not our child, as a handover
        /// successor's parent is its predecessor).
        status: ExitStatus,
        /// The retired process that is the main process again.
        to: u32,
    },
    /// A retired main process was stopped: it was still draining at
    /// [`Config::drain_deadline`](crate::Config::drain_deadline), or more than
    /// [`Config::max_retired`](crate::Config::max_retired) ran.
    RetiredStopped {
        /// The retired process.
        pid: u32,
        /// Why.
        reason: RetiredStop,
    },
    /// A retired process that got the stop signal was still there after the grace period:
    /// `SIGKILL`.
    RetiredKilled {
        /// The retired process.
        pid: u32,
    },
    /// A probe failed ([`Config::probes`](crate::Config::probes)).
    ProbeFailed {
        /// The main pid.
        pid: u32,
        /// Which probe.
        role: crate::ProbeRole,
        /// Why.
        reason: String,
        /// How many times in a row.
        consecutive: u32,
    },
    /// A probe passed where it had not: the startup probe's first pass, readiness regained, a
    /// liveness probe that had failed passing again.
    ProbePassed {
        /// The main pid.
        pid: u32,
        /// Which probe.
        role: crate::ProbeRole,
    },
    /// The main process missed its watchdog deadline; it is being killed and will be restarted.
    WatchdogTimeout {
        /// The main pid.
        pid: u32,
    },
    /// The main process did not send `READY=1` within
    /// its start timeout ([`Readiness::Notified`](crate::Readiness::Notified)); it is being stopped and will be
    /// restarted (as the policy decides).
    StartTimeout {
        /// The main pid.
        pid: u32,
        /// The timeout it missed.
        after: Duration,
    },
    /// The main process exited on its own (or after a watchdog kill or a start timeout).
    Exited {
        /// The pid that exited.
        pid: u32,
        /// Its status, or [`ExitStatus::Unknown`] when it was not our child.
        status: ExitStatus,
        /// How long it ran.
        runtime: Duration,
    },
    /// What was left of an exited main process's group was stopped before the restart.
    LeftoversStopped {
        /// The process group.
        pgid: u32,
        /// Whether some of them needed `SIGKILL`.
        killed: bool,
    },
    /// The next start waits this long.
    Backoff {
        /// The delay.
        delay: Duration,
        /// The number the next start will have (see [`EventKind::Started`]).
        attempt: u32,
    },
    /// The policy gave up; the supervisor has finished.
    GaveUp {
        /// Why, e.g. `5 failures within 10s`.
        reason: String,
        /// The last exit status.
        last: ExitStatus,
    },
    /// The service finished successfully and the policy does not restart it.
    Done {
        /// The last exit status.
        last: ExitStatus,
    },
    /// The service was stopped on request.
    Stopped {
        /// How it ended.
        outcome: crate::StopOutcome,
    },
    /// Supervision ended, the process keeps running.
    Detached {
        /// The main pid.
        pid: u32,
    },
}

/// Why a retired main process was stopped ([`EventKind::RetiredStopped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetiredStop {
    /// It was still running at [`Config::drain_deadline`](crate::Config::drain_deadline).
    DrainDeadline,
    /// One more handover made more than [`Config::max_retired`](crate::Config::max_retired)
    /// retired processes run; this was the oldest.
    MaxRetired,
}

impl std::fmt::Display for RetiredStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RetiredStop::DrainDeadline => "still draining at the drain deadline",
            RetiredStop::MaxRetired => "the oldest beyond the cap on retired processes",
        })
    }
}

/// A subscription to a supervisor's events.
///
/// Backed by a bounded broadcast channel: a subscriber that falls more than 256 events behind
/// skips the oldest ones (logged) rather than holding memory without bound.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: broadcast::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the supervisor has finished and every event was delivered.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "event subscriber fell behind; skipped events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is already there, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    }
}
