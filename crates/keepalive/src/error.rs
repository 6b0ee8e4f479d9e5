//! The error type: one variant per way supervising can fail.

use std::io;
use std::path::PathBuf;

use crate::signal::Signal;

/// Everything that can go wrong while starting, adopting, signalling or stopping a service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A signal name or number did not parse (`SIGNOPE`, `0`).
    #[error("invalid signal {name:?}")]
    InvalidSignal {
        /// The text that was given.
        name: String,
    },
    /// The command could not be started (not found, not executable, bad working directory...).
    #[error("cannot start {program:?}")]
    Spawn {
        /// The program.
        program: String,
        /// The operating system's reason.
        source: io::Error,
    },
    /// A pidfd could not be opened for a process that exists (the kernel is older than 5.3, or
    /// the file descriptor limit is reached).
    #[error("cannot open a pidfd for pid {pid}")]
    Pidfd {
        /// The process.
        pid: u32,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The process to adopt is not running any more.
    #[error("pid {pid} is not running")]
    NotRunning {
        /// The pid from the snapshot.
        pid: u32,
    },
    /// The pid from a snapshot now belongs to another process (its start time differs): the
    /// original process is gone and the pid was reused. Adopting it would signal a stranger.
    #[error("pid {pid} now belongs to another process (start time {found}, expected {expected})")]
    PidReused {
        /// The pid from the snapshot.
        pid: u32,
        /// The start time recorded in the snapshot (clock ticks after boot).
        expected: u64,
        /// The start time of the process that has this pid now.
        found: u64,
    },
    /// The snapshot was written during another boot (its boot id differs from
    /// `/proc/sys/kernel/random/boot_id`): start times count from the boot, so the pid and start
    /// time may match an unrelated process started early in this boot.
    #[error("pid {pid}: the snapshot is from another boot ({expected}; this boot is {found})")]
    OtherBoot {
        /// The pid from the snapshot.
        pid: u32,
        /// The boot id recorded in the snapshot.
        expected: String,
        /// This boot's id.
        found: String,
    },
    /// The process with the snapshot's pid and start time runs as another uid than the snapshot
    /// recorded: it is not the process the snapshot describes (or it changed its uid after the
    /// last snapshot was written).
    #[error("pid {pid} runs as uid {found}, the snapshot says uid {expected}")]
    OtherUid {
        /// The pid from the snapshot.
        pid: u32,
        /// The uid recorded in the snapshot.
        expected: u32,
        /// The uid the process runs as.
        found: u32,
    },
    /// This boot's id could not be read (`/proc/sys/kernel/random/boot_id`).
    #[error("cannot read the boot id")]
    BootId {
        /// The reason.
        source: io::Error,
    },
    /// A state file is not trusted, and is not read: it is a symbolic link or not a regular file,
    /// it belongs to a user other than this process's effective uid and root, or its group or
    /// others may write it. Whoever can write it could make a supervisor adopt (and later signal)
    /// any process.
    #[error("refusing state file {path}: {reason}")]
    UntrustedFile {
        /// The file.
        path: PathBuf,
        /// Why, e.g. `writable by group or others (mode 0666)`.
        reason: String,
    },
    /// `/proc/<pid>/stat` could not be read or parsed.
    #[error("cannot read /proc/{pid}/stat")]
    ProcStat {
        /// The process.
        pid: u32,
        /// The reason.
        source: io::Error,
    },
    /// The pid file could not be written.
    #[error("cannot write pid file {path}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The state file ([`Config::state_file`](crate::Config::state_file)) could not be written.
    #[error("cannot write state file {path}")]
    StateFile {
        /// The state file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// A snapshot file could not be read ([`Snapshot::read`](crate::Snapshot::read)); a missing
    /// file is `source.kind() == NotFound`.
    #[error("cannot read snapshot file {path}")]
    ReadSnapshot {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The `NOTIFY_SOCKET` could not be created.
    #[error("cannot create the notify socket {address}")]
    NotifySocket {
        /// The socket path, or `@name` for an abstract socket.
        address: String,
        /// The operating system's reason.
        source: io::Error,
    },
    /// `prctl(PR_SET_CHILD_SUBREAPER)` failed.
    #[error("cannot become a child subreaper")]
    Subreaper {
        /// The operating system's reason.
        source: io::Error,
    },
    /// A signal could not be delivered to the service.
    #[error("cannot send {signal} to pid {pid}")]
    Signal {
        /// The main pid.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// The operating system's reason.
        source: io::Error,
    },
    /// `detach()` was refused: the service was started to die with the supervisor
    /// ([`Lifetime::DieWithSupervisor`](crate::Lifetime::DieWithSupervisor)), so it cannot be
    /// left running.
    #[error("cannot detach a service started to die with its supervisor")]
    DetachRefused,
    /// A restart ([`Supervised::restart`](crate::Supervised::restart)) did not lead to a ready
    /// main process.
    #[error("restart failed: {reason}")]
    RestartFailed {
        /// Why, in one line.
        reason: String,
    },
    /// Two probes of one role were configured ([`Config::probes`](crate::Config::probes)).
    #[error("more than one {role} probe")]
    ProbeConflict {
        /// The role given twice.
        role: crate::ProbeRole,
    },
    /// No process is running right now (the supervisor is waiting out a restart delay).
    #[error("no process is running (waiting to restart)")]
    NothingRunning,
    /// The supervisor has already finished (it gave up, the service is done, or it was stopped).
    #[error("the supervisor has finished")]
    Finished,
    /// The call needs a tokio runtime (with I/O and time drivers) and there is none.
    #[error("keepalive must be used inside a tokio runtime with I/O and time enabled")]
    NoRuntime,
    /// A snapshot could not be decoded.
    #[error("invalid snapshot: {reason}")]
    Snapshot {
        /// What is wrong with it.
        reason: String,
    },
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
