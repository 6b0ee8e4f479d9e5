//! The locking primitive behind a [`DirLock`](crate::DirLock): `flock(2)` or OFD `fcntl` locks.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The kernel lock a [`DirLock`](crate::DirLock) takes on its lock file.
///
/// Implementations must take an **exclusive lock owned by the open file description**: it is shared
/// by every duplicate of the descriptor (across `fork` and `exec`, which is what lets a lock be
/// handed to a successor process), and the kernel releases it when the last of them closes,
/// including when the holder crashes. `dirlock` never unlocks explicitly; it releases by closing.
/// Classic POSIX record locks (`F_SETLK`) do not qualify: they belong to the process, are lost
/// on closing *any* descriptor of the file, and are not inherited by children.
///
/// Everybody locking the same directory must use the same primitive: on Linux, `flock` locks
/// and OFD locks do not see each other (except on NFS, where `flock` is emulated with byte-range
/// locks).
pub trait LockPrimitive: fmt::Debug + Send + Sync {
    /// Tries to take an exclusive lock on the whole file open as `fd`, without blocking.
    ///
    /// Returns `Ok(true)` when the lock is now held through `fd`'s open file description
    /// (including when it already was: re-locking must be a no-op, never a gap), `Ok(false)` when
    /// another open file description holds a conflicting lock, and `Err` for anything else.
    fn try_lock_exclusive(&self, fd: BorrowedFd<'_>) -> io::Result<bool>;
}

/// `flock(2)`: whole-file locks owned by the open file description. The default, and what
/// `flock(1)` uses, so shell scripts interoperate.
///
/// Re-locking an exclusive lock through the same open file description is a no-op in Linux
/// (`flock_lock_inode` finds the existing lock of the same type and returns), so adopting an
/// inherited lock never opens a gap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flock;

impl LockPrimitive for Flock {
    fn try_lock_exclusive(&self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        loop {
            // SAFETY: `fd` is a live descriptor borrowed for the duration of the call; flock(2)
            // touches no memory.
            let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(false),
                Some(libc::EINTR) => {}
                _ => return Err(err),
            }
        }
    }
}

/// Open file description locks (`fcntl(F_OFD_SETLK)`, Linux ≥ 3.15) on the whole file.
///
/// Same ownership rules as `flock` (per open file description, inherited, released on last
/// close) but implemented as byte-range locks, which network file systems such as NFS and CIFS
/// forward to the server. Use it where `flock` is emulated badly.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[cfg_attr(docsrs, doc(cfg(any(target_os = "linux", target_os = "android"))))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OfdLock;

#[cfg(any(target_os = "linux", target_os = "android"))]
impl LockPrimitive for OfdLock {
    fn try_lock_exclusive(&self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        // SAFETY: `libc::flock` is a plain C struct for which all-zero bytes is a valid value.
        let mut whole_file: libc::flock = unsafe { std::mem::zeroed() };
        whole_file.l_type = libc::F_WRLCK as libc::c_short;
        whole_file.l_whence = libc::SEEK_SET as libc::c_short;
        whole_file.l_start = 0;
        whole_file.l_len = 0; // to the end of the file, however far it grows
        whole_file.l_pid = 0; // required by F_OFD_*
        loop {
            match nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_OFD_SETLK(&whole_file)) {
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}

/// Whether an error from a lock primitive means "this file system cannot lock".
pub(crate) fn is_unsupported(err: &io::Error) -> bool {
    let code = err.raw_os_error();
    code == Some(libc::ENOLCK) || code == Some(libc::ENOTSUP) || code == Some(libc::EOPNOTSUPP)
}
