//! The crate's error type: one variant per way a handover can fail.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while registering, adopting or handing over file descriptors
/// and state.
///
/// The `Display` text is one lowercase line meant for the person who asked for the restart; the
/// cause (an OS error, ...) is the [`source`](std::error::Error::source), never repeated in the
/// message. A restart-socket handler answers with the whole chain, e.g.
/// `RestartFailed { reason: format!("{:#}", anyhow::Error::from(err)) }`, so that the operator
/// sees why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name was registered twice; names identify file descriptors across the handover.
    #[error("a file descriptor named {name:?} is already registered")]
    DuplicateName {
        /// The name registered twice.
        name: String,
    },

    /// A name cannot travel in `LIFELINE_FDS` / `LISTEN_FDNAMES`.
    #[error("invalid file descriptor name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An environment variable set by the predecessor or by systemd is malformed.
    #[error("malformed {var}={value:?}: {reason}")]
    Env {
        /// The variable (`LIFELINE_FDS`, `LISTEN_FDS`, ...).
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An inherited file descriptor number is not open in this process.
    #[error("inherited file descriptor {name:?} (fd {fd}) is not open")]
    NotOpen {
        /// The name it was passed under.
        name: String,
        /// Its number.
        fd: RawFd,
        /// The error of `fcntl(F_GETFD)`.
        source: io::Error,
    },

    /// Inherited file descriptors were already adopted by this process.
    #[error("inherited file descriptors were already adopted by this process")]
    AlreadyAdopted,

    /// An inherited file descriptor is not of the type asked for.
    #[error("inherited file descriptor {name:?} is {found}, not {expected}")]
    WrongType {
        /// The name it was passed under.
        name: String,
        /// What the caller asked for (`a TCP listener`, ...).
        expected: &'static str,
        /// What it is (`a UDP socket`, `not a socket`, ...).
        found: String,
    },

    /// The path of the running executable could not be resolved at start-up.
    #[error("cannot resolve the path of the running executable")]
    Executable {
        /// The error of reading `/proc/self/exe`.
        source: io::Error,
    },

    /// The new process could not be started.
    #[error("cannot start {}", path.display())]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// The error of `fork`/`exec`.
        source: io::Error,
    },

    /// The new process exited (or was killed by a signal) before calling `ready()`.
    #[error("new process {status} before becoming ready")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitReason,
    },

    /// The new process did not call `ready()` within the readiness timeout; it was killed.
    #[error("not ready after {}", Secs(*timeout))]
    NotReady {
        /// Its pid.
        pid: u32,
        /// The readiness timeout.
        timeout: Duration,
    },

    /// The new process closed its end of the handover channel without becoming ready.
    #[error("new process closed the readiness channel without becoming ready")]
    ClosedWithoutReady {
        /// Its pid (the peer's pid for a successor connected over a socket).
        pid: u32,
    },

    /// Another upgrade is running; only one runs at a time.
    #[error("restart already in progress")]
    InProgress,

    /// The upgrade was aborted because this process is stopping ([`Upgrader::stop_upgrades`]);
    /// the new process was killed.
    ///
    /// [`Upgrader::stop_upgrades`]: crate::Upgrader::stop_upgrades
    #[error("restart aborted: the service is stopping")]
    Aborted {
        /// The new process's pid.
        pid: u32,
    },

    /// This process is stopping ([`Upgrader::stop_upgrades`]); it starts no new process.
    ///
    /// [`Upgrader::stop_upgrades`]: crate::Upgrader::stop_upgrades
    #[error("the service is stopping")]
    Stopping,

    /// A rollback ([`Upgrader::roll_back`]) is not possible.
    ///
    /// [`Upgrader::roll_back`]: crate::Upgrader::roll_back
    #[error("cannot roll back to this process: successor pid {pid}: {reason}")]
    SuccessorRunning {
        /// The successor's pid (0 when there is none).
        pid: u32,
        /// Why not.
        reason: String,
    },

    /// This process already handed over to a successor and is draining.
    #[error("already handed over to pid {pid}")]
    AlreadyUpgraded {
        /// The successor's pid.
        pid: u32,
    },

    /// The lifecycle handler failed to send the state; the new process was killed.
    #[error("cannot send the state to the new process")]
    SendState {
        /// The handler's error.
        source: io::Error,
    },

    /// The state frame was written with a version this process does not read.
    #[error("state version {found} is not supported (expected {expected})")]
    StateVersion {
        /// The version tag in the frame.
        found: u32,
        /// The version the reader accepts.
        expected: u32,
    },

    /// The state frame announces more bytes than the configured limit; nothing was allocated.
    #[error("state of {len} bytes exceeds the limit of {limit} bytes")]
    StateTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        limit: usize,
    },

    /// The state frame is not a lifeline state frame or cannot be decoded.
    #[error("corrupt state: {reason}")]
    StateCorrupt {
        /// What is wrong.
        reason: String,
    },

    /// Reading the state from the predecessor failed.
    #[error("cannot read the state")]
    StateRead {
        /// The I/O error.
        source: io::Error,
    },

    /// Telling the predecessor that this process is ready failed (it gave up or died).
    #[error("cannot tell the old process that this one is ready")]
    Ready {
        /// The I/O error.
        source: io::Error,
    },

    /// Talking to the service manager over `NOTIFY_SOCKET` failed.
    #[error("cannot notify the service manager")]
    Notify {
        /// The I/O error.
        source: io::Error,
    },

    /// Writing the pid file failed.
    #[error("cannot write pid file {}", path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },

    /// Connecting to a running process's handover socket failed.
    #[error("cannot connect to the handover socket {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },

    /// A peer on the handover socket broke the protocol or is not allowed.
    #[error("handover socket: {reason}")]
    Protocol {
        /// What went wrong.
        reason: String,
    },

    /// A system call needed for the handover failed.
    #[error("cannot {op}")]
    Io {
        /// The operation (`create the readiness pipe`, ...).
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { op, source }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// It exited with this status.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitReason {
    pub(crate) fn from_status(status: std::process::ExitStatus) -> ExitReason {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitReason::Code(code),
            (None, Some(signal)) => ExitReason::Signal(signal),
            // Neither code nor signal only happens for stopped/continued statuses, which `wait`
            // does not report without WUNTRACED.
            (None, None) => ExitReason::Code(-1),
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitReason::Code(code) => write!(f, "exited with status {code}"),
            ExitReason::Signal(signal) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(sig) => write!(f, "was killed by signal {}", sig.as_str()),
                Err(_) => write!(f, "was killed by signal {signal}"),
            },
        }
    }
}

/// Formats a duration as `30 s` (whole seconds) or `250 ms`.
pub(crate) struct Secs(pub(crate) Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_nanos() == 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

/// An error and each of its sources on one line, joined by `: `, for text that leaves the
/// process or is read by a person without a chain printer (a restart's failure reason, an event).
/// The messages never repeat their source, so each cause appears exactly once.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    use std::fmt::Write as _;
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let _ = write!(line, ": {cause}");
        next = cause.source();
    }
    line
}
