//! The typed error of every `dirlock` operation: one variant per way to fail.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything that can go wrong while taking, adopting or releasing a directory lock.
///
/// The variants a caller usually branches on are [`Error::HeldElsewhere`] and
/// [`Error::TimedOut`] ("someone else has it": retry later, exit 75, ...) versus
/// [`Error::Unsupported`] ("this file system cannot lock at all") versus everything else.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by another open file description: another process, or another
    /// [`DirLock`](crate::DirLock) in this one. Not waiting was asked for.
    #[error("{} is locked by {}", dir_of(path).display(), Holder(*holder_pid))]
    HeldElsewhere {
        /// The lock file.
        path: PathBuf,
        /// The pid the holder wrote into the lock file, when it wrote one (a holder that is still
        /// between locking and writing, or a foreign tool such as `flock(1)`, leaves none).
        holder_pid: Option<u32>,
    },

    /// The lock stayed held elsewhere for the whole `lock_timeout`.
    #[error(
        "timed out after {waited:.1?} waiting for the lock on {}, held by {}",
        dir_of(path).display(),
        Holder(*holder_pid)
    )]
    TimedOut {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid as last read from the lock file.
        holder_pid: Option<u32>,
        /// How long this call waited.
        waited: Duration,
    },

    /// The file system refuses locks altogether (`ENOLCK`, `ENOTSUP`/`EOPNOTSUPP`): some network
    /// and FUSE file systems. Try the other [`LockPrimitive`](crate::LockPrimitive), or another
    /// directory.
    #[error("the file system of {} does not support locking", path.display())]
    Unsupported {
        /// The lock file.
        path: PathBuf,
        /// The error the kernel returned.
        source: io::Error,
    },

    /// The lock path is a symbolic link. It is refused without following it, so its target is
    /// never opened, created or modified.
    #[error("lock path {} is a symbolic link; refusing to follow it", path.display())]
    Symlink {
        /// The lock file path.
        path: PathBuf,
    },

    /// The lock path exists but is not a regular file (a directory, FIFO, socket or device). It is
    /// refused without being opened.
    #[error("lock path {} is not a regular file", path.display())]
    NotRegularFile {
        /// The lock file path.
        path: PathBuf,
    },

    /// The directory to lock does not exist.
    #[error("directory {} does not exist", path.display())]
    NoSuchDirectory {
        /// The directory.
        path: PathBuf,
    },

    /// The path to lock exists but is not a directory (or a component of it is not).
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path that was given as a directory.
        path: PathBuf,
    },

    /// The lock file kept being unlinked or replaced between opening and locking it, more times in
    /// a row than the bound allows. Under the `dirlock` protocol this needs a storm of holders
    /// releasing at exactly the wrong moments, or a foreign process deleting the file in a loop.
    #[error("lock file {} kept being replaced while locking it ({attempts} attempts)", path.display())]
    Replaced {
        /// The lock file.
        path: PathBuf,
        /// How many times in a row the locked file turned out not to be the file at the path.
        attempts: u32,
    },

    /// [`DirLock::adopt`](crate::DirLock::adopt) was given a file descriptor that is not the lock
    /// file currently at the path (a different file, or the lock file was unlinked or replaced
    /// since it was exported).
    #[error("inherited file descriptor is not the lock file at {}", path.display())]
    NotTheLockFile {
        /// The lock file path.
        path: PathBuf,
    },

    /// The configured lock file name is not a single plain file name (empty, `.`, `..`, or
    /// containing `/`).
    #[error("invalid lock file name {name:?}: must be a plain file name")]
    InvalidFileName {
        /// The name as configured.
        name: std::ffi::OsString,
    },

    /// Any other system call failure, with the operation and path it concerned.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done (`create lock file`, `write pid to`, `unlink`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl Error {
    /// The holder's pid, for the two "someone else has it" variants.
    pub fn holder_pid(&self) -> Option<u32> {
        match self {
            Error::HeldElsewhere { holder_pid, .. } | Error::TimedOut { holder_pid, .. } => *holder_pid,
            _ => None,
        }
    }

    /// Whether the lock is held by someone else ([`Error::HeldElsewhere`] or [`Error::TimedOut`]).
    pub fn is_contention(&self) -> bool {
        matches!(self, Error::HeldElsewhere { .. } | Error::TimedOut { .. })
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: impl Into<io::Error>) -> Self {
        Error::Io { op, path: path.to_path_buf(), source: source.into() }
    }
}

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The directory a lock file lives in, for messages that name the directory.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => path,
    }
}

/// Displays `pid N` or `another process`.
struct Holder(Option<u32>);

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("another process"),
        }
    }
}
