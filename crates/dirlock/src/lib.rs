//! Exclusive lock files for directories: one holder per directory, across processes.
//!
//! A service that owns a state directory must not run twice against it: two copies started by a
//! confused supervisor, an operator's manual run next to the systemd unit, a cron job overlapping
//! itself. `dirlock` gives each directory one holder at a time, fails fast with an error that
//! names the holder's pid, never leaves a stale lock behind a crash, and locks several
//! directories without deadlock. It is the mechanism of Certbot's lock files, done completely.
//!
//! # Example
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use dirlock::{DirLock, Error, LockOptions};
//!
//! let state = tempfile::tempdir()?;
//!
//! // Fail at once if someone holds it; the lock is held until `lock` is dropped or released.
//! let lock = DirLock::acquire(state.path())?;
//! assert!(state.path().join(".lifeline.lock").exists());
//!
//! // Anyone else (another process, or here another attempt in this one) is refused, and told who
//! // holds it.
//! match DirLock::acquire(state.path()) {
//!     Err(Error::HeldElsewhere { holder_pid, .. }) => assert_eq!(holder_pid, Some(std::process::id())),
//!     other => panic!("expected contention, got {other:?}"),
//! }
//!
//! // Waiting is opt-in and bounded.
//! let patient = LockOptions::new().lock_timeout(Duration::from_millis(20));
//! let err = DirLock::acquire_with(state.path(), &patient).unwrap_err();
//! assert!(matches!(err, Error::TimedOut { .. }), "{err}");
//!
//! // Releasing unlinks the lock file (while still holding the lock), then unlocks.
//! lock.release()?;
//! assert!(!state.path().join(".lifeline.lock").exists());
//! # Ok(()) }
//! ```
//!
//! Several directories: [`LockSet::acquire`] canonicalises, de-duplicates and locks them in
//! sorted order, all or nothing. Handing a held lock to a successor process:
//! [`DirLock::export`], then [`DirLock::adopt`] and [`Adopted::commit`] in the successor.
//!
//! # The protocol
//!
//! The lock file is `DIR/.lifeline.lock` ([`LockOptions::file_name`] to change it). To acquire:
//!
//! 1. Create it with `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`, mode 0600 (fixed with `fchmod` when
//!    the umask interferes). If it exists, `lstat` it first: a symlink or non-regular file is
//!    refused without being opened or followed; a regular file is opened with `O_NOFOLLOW`.
//! 2. Take an exclusive, non-blocking lock on it ([`Flock`] by default, [`OfdLock`] on Linux).
//!    Held elsewhere: read the holder's pid from the file and fail with
//!    [`Error::HeldElsewhere`] (or back off and retry until the deadline with
//!    [`LockOptions::lock_timeout`]).
//! 3. `fstat` the descriptor and `lstat` the path: if device and inode differ, the file was
//!    unlinked or replaced between steps 1 and 2 (a previous holder released it): close, retry
//!    (bounded: [`Error::Replaced`]).
//! 4. Write `"<pid>\n"` into the file (truncating it first if it had content).
//!
//! To release: unlink the path *while still holding the lock*, then close.
//!
//! # Ordering and safety
//!
//! - **Unlink before unlock.** Whoever locks a file checks afterwards that it is still the one at
//!   the path; because holders only unlink while holding, a file that passes the check cannot be
//!   locked by anyone else. Dropping a [`DirLock`] keeps this order; never `flock(LOCK_UN)` its
//!   descriptor yourself.
//! - **A crash releases the lock.** The kernel drops the lock with the last descriptor; the file
//!   stays behind and the next acquirer locks it at once (no stale-pid guessing).
//! - **Everyone must use the same primitive and protocol.** `flock(1)` interoperates for holding
//!   and for non-blocking checks (`flock -n`); but a *blocking* `flock(1)` waiter does not re-check
//!   the inode, so after a `dirlock` release it may end up holding an unlinked file.
//! - **Several directories: only through [`LockSet`]** (or the same [`lock_order`]) — locking
//!   overlapping sets in different orders is how deadlocks happen.
//! - **Descriptors are close-on-exec.** Children you spawn do not inherit a lock. To hand one over
//!   on purpose, clear `FD_CLOEXEC` in the child only (between `fork` and `exec`), keep the
//!   `DirLock` until the successor has adopted it, then [`export`](DirLock::export) (never drop)
//!   it. The successor's [`Adopted`] lock changes nothing on disk until it is
//!   [committed](Adopted::commit), so a successor that gives up while starting cannot unlink the
//!   file its predecessor still holds. A `fork`ed child without `exec` never
//!   unlinks its parent's lock file on drop.
//! - The pid in the file is informative (for messages), never trusted for correctness.
//!
//! # Platforms
//!
//! Unix: `flock(2)` and `O_NOFOLLOW` are all it needs. [`OfdLock`] is Linux (and Android) only.
//! Built and tested on Linux.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(unix))]
compile_error!("dirlock needs a Unix system: it locks with flock(2) and opens files with O_NOFOLLOW");

mod backoff;
mod error;
mod lock;
mod lockfile;
pub mod metrics;
mod options;
mod primitive;
mod set;
mod wake;

pub use error::{Error, Result};
pub use lock::{Adopted, DirLock};
pub use options::{DEFAULT_FILE_NAME, LockOptions, MAX_WAIT, WaitMode};
#[cfg(any(target_os = "linux", target_os = "android"))]
#[cfg_attr(docsrs, doc(cfg(any(target_os = "linux", target_os = "android"))))]
pub use primitive::OfdLock;
pub use primitive::{Flock, LockPrimitive};
pub use set::{LockSet, lock_order};

#[cfg(test)]
mod tests;
