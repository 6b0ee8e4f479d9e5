//! How a supervised process ended: its status (or that it cannot be known) and how long it ran.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::signal::Signal;

/// The exit status of a supervised process, as far as it can be known.
///
/// Only a parent learns the status of its child. A process that was adopted from a snapshot, or one
/// that became the main process through `MAINPID=` while another process was its parent, exits
/// with a status nobody tells us: that is [`ExitStatus::Unknown`], never an invented code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExitStatus {
    /// The process called `exit(code)`.
    Code(i32),
    /// A signal ended the process.
    Signaled {
        /// The signal.
        signal: Signal,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
    /// The process is gone but was not our child: its status is unknowable.
    Unknown,
}

impl ExitStatus {
    /// `exit(0)`. An unknown status is not a success.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// Decodes a `waitpid`-style status word (`WIFEXITED`, `WIFSIGNALED`).
    pub fn from_wait_status(raw: i32) -> ExitStatus {
        if libc::WIFEXITED(raw) {
            ExitStatus::Code(libc::WEXITSTATUS(raw))
        } else if libc::WIFSIGNALED(raw) {
            ExitStatus::Signaled {
                signal: Signal::from_raw(libc::WTERMSIG(raw)),
                core_dumped: libc::WCOREDUMP(raw),
            }
        } else {
            ExitStatus::Unknown
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled { signal, core_dumped: false } => write!(f, "killed by {signal}"),
            ExitStatus::Signaled { signal, core_dumped: true } => {
                write!(f, "killed by {signal} (core dumped)")
            }
            ExitStatus::Unknown => f.write_str("exited with an unknown status (not our child)"),
        }
    }
}

/// Why the process ended, from the supervisor's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCause {
    /// It exited on its own (a crash, or a normal exit).
    OnItsOwn,
    /// It stopped sending `WATCHDOG=1` and the supervisor killed it.
    WatchdogTimeout,
    /// It did not send `READY=1` within its start timeout ([`Readiness::Notified`](crate::Readiness::Notified))
    /// and the supervisor stopped it.
    StartTimeout,
    /// A startup or liveness probe failed `failures` times in a row and the supervisor stopped it.
    ProbeFailed {
        /// Which probe.
        role: crate::ProbeRole,
        /// The last failure.
        reason: String,
    },
    /// It was stopped to be started again on request
    /// ([`RestartMethod::StopStart`](crate::RestartMethod::StopStart)); not passed to the policy.
    Restarted,
    /// A restart could not even start the program (`exec` failed); `status` is
    /// [`ExitStatus::Unknown`].
    SpawnFailed {
        /// The operating system's reason, e.g. `No such file or directory (os error 2)`.
        reason: String,
    },
}

/// One exit, as a [`RestartPolicy`](crate::RestartPolicy) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit status, or [`ExitStatus::Unknown`].
    pub status: ExitStatus,
    /// Why it ended.
    pub cause: ExitCause,
    /// How long it ran: from its start (or adoption, or becoming the main pid) to its exit.
    pub runtime: Duration,
    /// How long it ran *healthy*: since it sent `READY=1` when readiness notification is on,
    /// otherwise the same as `runtime`. Zero if it never became ready.
    pub healthy: Duration,
    /// When the exit was observed.
    pub at: Instant,
}

impl Exit {
    /// Whether this exit counts as a failure: anything but `exit(0)` on its own. An unknown status
    /// counts as a failure (the conservative choice for restart limits).
    pub fn is_failure(&self) -> bool {
        !(self.status.success() && self.cause == ExitCause::OnItsOwn)
    }
}
