//! Configuration of the handover: timeouts, what to start, pid file, systemd integration.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::state::DEFAULT_STATE_LIMIT;

/// How a process hands over and adopts. `Config::default()` suits most servers; the setters
/// change one field each.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// How long the new process has, from spawn to `ready()`, before it is killed and the
    /// upgrade fails with "not ready after …". Default 30 s. A timeout too long for a deadline
    /// to be computed (more than about 100 years, [`Duration::MAX`]) means no deadline.
    pub ready_timeout: Duration,
    /// The executable to start. Default (`None`): the path this process was started from,
    /// resolved when the [`Handover`](crate::Handover) is created, so that a binary newly
    /// installed at that path is what starts.
    pub executable: Option<PathBuf>,
    /// The arguments of the new process (without `argv[0]`). Default (`None`): this process's.
    pub args: Option<Vec<OsString>>,
    /// Largest state payload accepted (checked before allocating) or sent. Default 16 MiB.
    pub state_limit: usize,
    /// A file that always holds the pid of the current main process, replaced atomically:
    /// written by a freshly started process in `ready()` and by the old process after a
    /// successful handover. Default: none.
    pub pid_file: Option<PathBuf>,
    /// Talk to the service manager when `NOTIFY_SOCKET` is set: `READY=1` from a process that is
    /// not a spawned successor, `MAINPID=<new pid>` from the old process after a handover.
    /// Default true.
    pub notify: bool,
    /// Also store every registered file descriptor in systemd's fd store (`FDSTORE=1`,
    /// `FDNAME=<name>`) when a process that is not a spawned successor becomes ready, so that
    /// even a plain `systemctl restart` keeps the sockets (they come back through `LISTEN_FDS`
    /// under their names). Needs `FileDescriptorStoreMax=` in the unit. Default false.
    pub fd_store: bool,
    /// Keep the registered file descriptors after a successful upgrade (instead of closing them),
    /// so that this process can take over again with
    /// [`Upgrader::roll_back`](crate::Upgrader::roll_back) if its successor dies; close them with
    /// [`Upgrader::release_retained`](crate::Upgrader::release_retained). Default false.
    pub keep_for_rollback: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ready_timeout: Duration::from_secs(30),
            executable: None,
            args: None,
            state_limit: DEFAULT_STATE_LIMIT,
            pid_file: None,
            notify: true,
            fd_store: false,
            keep_for_rollback: false,
        }
    }
}

impl Config {
    /// Sets [`Config::ready_timeout`].
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Sets [`Config::executable`].
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.executable = Some(path.into());
        self
    }

    /// Sets [`Config::args`].
    pub fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, args: I) -> Self {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets [`Config::state_limit`].
    pub fn state_limit(mut self, bytes: usize) -> Self {
        self.state_limit = bytes;
        self
    }

    /// Sets [`Config::pid_file`].
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Sets [`Config::notify`].
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Sets [`Config::keep_for_rollback`].
    pub fn keep_for_rollback(mut self, keep: bool) -> Self {
        self.keep_for_rollback = keep;
        self
    }

    /// Sets [`Config::fd_store`].
    pub fn fd_store(mut self, store: bool) -> Self {
        self.fd_store = store;
        self
    }
}

/// The longest timeout honoured as given: 100 years. Longer ones wait this long, which is for
/// ever in practice, so no deadline computed from a caller's timeout can overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(100 * 31_557_600);

/// `now + timeout`, at most 100 years away.
pub(crate) fn deadline_after(now: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    // A monotonic clock counts from boot: `now + 100 years` fits. Should it not, `now` makes the
    // wait end at once, never a panic.
    now.checked_add(timeout.min(MAX_TIMEOUT)).unwrap_or(now)
}
