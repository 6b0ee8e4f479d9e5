//! [`LockOptions`]: the lock file name, how long to wait, and the locking primitive.

use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::primitive::{Flock, LockPrimitive};

/// The lock file name used unless [`LockOptions::file_name`] says otherwise.
pub const DEFAULT_FILE_NAME: &str = ".lifeline.lock";

/// The longest wait honoured as given: 100 years. [`LockOptions::lock_timeout`] waits no longer
/// than this, so that no deadline computed from a caller's timeout can overflow.
pub const MAX_WAIT: Duration = Duration::from_secs(100 * 31_557_600);

/// How to take a directory lock. `LockOptions::default()` is the common case: `.lifeline.lock`,
/// fail at once when the lock is held, `flock(2)`.
///
/// ```
/// use std::time::{Duration, Instant};
/// use dirlock::LockOptions;
///
/// let options = LockOptions::new().file_name("state.lock").lock_timeout(Duration::from_secs(5));
/// assert_eq!(options.wait(), Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone)]
pub struct LockOptions {
    file_name: OsString,
    wait: Option<Duration>,
    primitive: Arc<dyn LockPrimitive>,
    wait_mode: WaitMode,
}

/// How a waiter learns that the lock may be free ([`LockOptions::wait_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitMode {
    /// An inotify watch on the lock file wakes the waiter when the holder unlinks or closes it
    /// (a release, a crash, a `flock(1)` that ends); between events a waiter sleeps and costs
    /// nothing. The backoff's delays, scaled up to about 256 ms, only back the events up. Where
    /// no inotify instance can be had (`fs.inotify.max_user_instances`), it polls as
    /// [`WaitMode::Poll`] does. The default.
    #[default]
    Notify,
    /// Retries on a backoff: about 1 ms doubling to 16 ms, jittered. For network file systems
    /// where the holder may be on another machine (its release makes no local inotify event).
    Poll,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            file_name: DEFAULT_FILE_NAME.into(),
            wait: None,
            primitive: Arc::new(Flock),
            wait_mode: WaitMode::default(),
        }
    }
}

impl LockOptions {
    /// The defaults: [`DEFAULT_FILE_NAME`], no waiting, [`Flock`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The lock file's name inside each directory (default [`DEFAULT_FILE_NAME`]). It must be a
    /// single plain file name (no `/`, not `.` or `..`); anything else fails when locking with
    /// [`Error::InvalidFileName`](crate::Error::InvalidFileName).
    pub fn file_name(mut self, name: impl Into<OsString>) -> Self {
        self.file_name = name.into();
        self
    }

    /// Wait up to `timeout` for a lock held elsewhere instead of failing at once.
    ///
    /// The first attempt is immediate; while the lock stays held, the waiter sleeps until the
    /// holder lets go ([`WaitMode::Notify`], the default: an inotify watch on the lock file) or
    /// retries on a backoff from about 1 ms doubling to a 16 ms cap, each delay jittered by ±25 %
    /// so waiters do not wake in lockstep ([`WaitMode::Poll`]). A waiter never spins: between sleeps it keeps the lock file open
    /// and a retry costs two system calls (the lock, and a check that the file is still at the
    /// path). `waiting for lock on …` is logged once at `info` level. [`Duration::ZERO`] tries
    /// exactly once, like the default. A timeout too long for a deadline to be computed
    /// ([`Duration::MAX`], anything beyond [`MAX_WAIT`]) waits for ever, in practice.
    ///
    /// # In async code
    ///
    /// Waiting sleeps the calling thread between attempts. On a tokio worker that thread would
    /// stop every other task scheduled on it, so acquire a lock that may be waited for on the
    /// blocking pool (dirlock itself has no async runtime and no tokio dependency):
    ///
    /// ```
    /// use std::time::Duration;
    /// use dirlock::{DirLock, LockOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let state_dir = dir.path().to_path_buf();
    /// let options = LockOptions::new().lock_timeout(Duration::from_secs(30));
    /// let lock: DirLock = tokio::task::spawn_blocking(move || DirLock::acquire_with(&state_dir, &options)).await??;
    /// // … the directory is ours until `lock` is dropped (dropping it does not block).
    /// # drop(lock);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Without a timeout (the default) `acquire` never waits, and calling it directly from async
    /// code is fine: one attempt is a handful of system calls on a local file.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
        self
    }

    /// Fail at once when the lock is held elsewhere (the default).
    pub fn no_wait(mut self) -> Self {
        self.wait = None;
        self
    }

    /// The locking primitive (default [`Flock`]; [`OfdLock`](crate::OfdLock) on Linux).
    pub fn primitive(mut self, primitive: impl LockPrimitive + 'static) -> Self {
        self.primitive = Arc::new(primitive);
        self
    }

    /// How a waiter learns the lock may be free (default [`WaitMode::Notify`]).
    pub fn wait_mode(mut self, mode: WaitMode) -> Self {
        self.wait_mode = mode;
        self
    }

    /// The configured lock file name.
    pub fn name(&self) -> &OsStr {
        &self.file_name
    }

    /// The configured wait, if any.
    pub fn wait(&self) -> Option<Duration> {
        self.wait
    }

    /// The deadline of a wait that starts `now`: `now + wait`, at most [`MAX_WAIT`] away.
    pub(crate) fn deadline_from(&self, now: Instant) -> Option<Instant> {
        // `now + MAX_WAIT` fits in an `Instant` (a monotonic clock counts from boot); should it
        // not, waiting until `now` would be one try, never a panic.
        self.wait.map(|wait| now.checked_add(wait.min(MAX_WAIT)).unwrap_or(now))
    }

    /// The configured wait mode.
    pub(crate) fn waiting(&self) -> WaitMode {
        self.wait_mode
    }

    /// The configured locking primitive.
    pub fn lock_primitive(&self) -> &dyn LockPrimitive {
        &*self.primitive
    }
}
