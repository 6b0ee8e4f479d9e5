//! [`Builder`]: what a service holds, listens on and carries, and how it drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dirlock::LockOptions;
use restart_socket::ServerConfig;
use tokio::signal::unix::SignalKind;

use super::listeners::{Kind, ListenerSpec};
use super::{Error, ServiceState, Starting};

/// Names the service layer registers for its own file descriptors; listener names must differ.
pub(crate) const LOCK_FD: &str = "lifeline-state-lock";
pub(crate) const CONTROL_FD: &str = "lifeline-control";
/// The fd-store name of the state a stopping service leaves for its next start.
pub(crate) const STATE_FD: &str = "lifeline-state";

/// Configures a service; [`start`](Builder::start) it inside a tokio runtime.
///
/// Every option has a default that suits a production server; each setter documents its own.
/// A builder holds no resource: nothing is locked, bound or read before `start`.
///
/// ```no_run
/// # async fn f() -> Result<(), lifeline::service::Error> {
/// use std::time::Duration;
/// use lifeline::service::Builder;
///
/// let starting = Builder::new()
///     .state_dir("/var/lib/app")
///     .tcp("http", "0.0.0.0:8080".parse().unwrap())
///     .control_socket("/run/app/control.sock")
///     .drain_timeout(Duration::from_secs(10))
///     .start::<()>()
///     .await?;
/// # let _ = starting; Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) lock_options: LockOptions,
    pub(crate) listeners: Vec<ListenerSpec>,
    pub(crate) control: Option<(PathBuf, ServerConfig)>,
    #[cfg(feature = "tls")]
    pub(crate) tls: super::tls::TlsSpec,
    pub(crate) handover: handover::Config,
    pub(crate) drain_timeout: Duration,
    pub(crate) drain_deadline: Option<Duration>,
    pub(crate) quiet_period: Duration,
    pub(crate) stop_signals: Vec<SignalKind>,
    pub(crate) restart_signals: Vec<SignalKind>,
    pub(crate) fd_store: bool,
    pub(crate) rollback_window: Option<Duration>,
    pub(crate) max_retired: Option<usize>,
    pub(crate) restart_on_exe_change: bool,
    pub(crate) ready_fd: Option<std::os::fd::RawFd>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// A service with no state directory, no listener, no control socket; a 30 s ready timeout,
    /// a 30 s drain timeout, a hard drain deadline 10 s after that, a 500 ms quiet period;
    /// SIGTERM and SIGINT stop it, SIGUSR1 and SIGHUP restart it.
    pub fn new() -> Builder {
        Builder {
            state_dir: None,
            lock_options: LockOptions::new(),
            listeners: Vec::new(),
            control: None,
            #[cfg(feature = "tls")]
            tls: super::tls::TlsSpec::default(),
            handover: handover::Config::default(),
            drain_timeout: Duration::from_secs(30),
            drain_deadline: Some(Duration::from_secs(10)),
            quiet_period: Duration::from_millis(500),
            stop_signals: vec![SignalKind::terminate(), SignalKind::interrupt()],
            restart_signals: vec![SignalKind::user_defined1(), SignalKind::hangup()],
            fd_store: false,
            rollback_window: None,
            max_retired: None,
            restart_on_exe_change: false,
            ready_fd: None,
        }
    }

    /// Holds `dir` locked with [`dirlock`] while the service runs (default: no state directory).
    ///
    /// A second instance fails to start with an error for which [`Error::is_locked`] is true.
    /// The held lock passes to each successor without ever lapsing, and the lock file is removed
    /// when the service stops.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// How the state directory is locked: lock file name and primitive (default
    /// [`LockOptions::new`]: `.lifeline.lock`, `flock`, fail at once if held).
    pub fn lock_options(mut self, options: LockOptions) -> Self {
        self.lock_options = options;
        self
    }

    /// A TCP listener named `name`, taken from the predecessor, or from systemd socket activation
    /// (`LISTEN_FDS`, by `FileDescriptorName=`, else the first unnamed TCP socket), or bound to
    /// `addr`, in that order. Take it with [`Starting::tcp`](super::Starting::tcp).
    pub fn tcp(mut self, name: &str, addr: SocketAddr) -> Self {
        self.listeners.push(ListenerSpec { name: name.to_owned(), kind: Kind::Tcp(addr) });
        self
    }

    /// A unix stream listener named `name` at `path` (predecessor, systemd, or bound — a stale
    /// socket file is replaced, a live one is an error). The socket file is removed when the
    /// service stops, never by a process that handed it over or failed to take it over.
    pub fn unix(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.listeners.push(ListenerSpec { name: name.to_owned(), kind: Kind::Unix(path.into()) });
        self
    }

    /// A UDP socket named `name` (predecessor, systemd, or bound to `addr`).
    pub fn udp(mut self, name: &str, addr: SocketAddr) -> Self {
        self.listeners.push(ListenerSpec { name: name.to_owned(), kind: Kind::Udp(addr) });
        self
    }

    /// Serves the [`restart_socket`] control protocol at `path` (default: none): `lifeline
    /// status` and `lifeline restart` work against it. The socket passes to each successor
    /// (the path never disappears) and is removed when the service stops.
    pub fn control_socket(self, path: impl Into<PathBuf>) -> Self {
        self.control_socket_with(path, ServerConfig::default())
    }

    /// [`control_socket`](Builder::control_socket) with its own peer and timeout settings.
    pub fn control_socket_with(mut self, path: impl Into<PathBuf>, config: ServerConfig) -> Self {
        self.control = Some((path.into(), config));
        self
    }

    /// How long a successor has to become ready before it is killed and the restart fails
    /// (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.handover.ready_timeout = timeout;
        self
    }

    /// A file that always names the serving process (default: none): written when a fresh
    /// process is ready, and by each successor once it has taken over.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.handover.pid_file = Some(path.into());
        self
    }

    /// The handover settings beyond those above: the executable and arguments a restart starts,
    /// the state size limit, service-manager notification, the fd store (default
    /// [`handover::Config::default`]). Replaces what [`ready_timeout`](Builder::ready_timeout)
    /// and [`pid_file`](Builder::pid_file) set. Its `fd_store` is ignored: see
    /// [`fd_store`](Builder::fd_store).
    pub fn handover_config(mut self, config: handover::Config) -> Self {
        self.handover = config;
        self
    }

    /// How long in-flight work may take once the service drains (default 30 s); connections
    /// still open after it are cut when the process exits.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// A hard limit, counted from the end of the drain timeout, after which the process exits
    /// even if something blocks it (a handler stuck in a system call, a wedged runtime): exit
    /// status 0 after a handover, 1 after a stop. `None` disables it. Default 10 s.
    pub fn drain_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// During a drain, how long a connection must have moved no byte (and have no request in
    /// progress) before it is closed (default 500 ms). Too short, and a client's next request
    /// already on the wire meets a closed connection; too long, and the drain takes longer.
    pub fn quiet_period(mut self, quiet: Duration) -> Self {
        self.quiet_period = quiet;
        self
    }

    /// The signals that stop the service (default SIGTERM, SIGINT). A stop aborts a restart in
    /// flight (its new process is killed), drains, releases the state directory and removes
    /// the socket files.
    pub fn stop_signals(mut self, signals: impl IntoIterator<Item = SignalKind>) -> Self {
        self.stop_signals = signals.into_iter().collect();
        self
    }

    /// The signals that ask for a restart (default SIGUSR1, SIGHUP); the outcome is logged.
    pub fn restart_signals(mut self, signals: impl IntoIterator<Item = SignalKind>) -> Self {
        self.restart_signals = signals.into_iter().collect();
        self
    }

    /// Keeps the service in systemd's file descriptor store (default off; needs
    /// `FileDescriptorStoreMax=` in the unit and `NOTIFY_SOCKET`): a fresh process stores its
    /// listeners (`FDSTORE=1`, under their names), and a stopping one stores its state — the
    /// generation and the application's [`ServiceState`] — in a sealed memfd. Across a
    /// `systemctl restart` (which keeps the store; `systemctl stop` empties it) the next process
    /// gets both back: connections wait in the kept listeners' queues instead of being refused,
    /// and the generation and the state continue. A stored state the new program cannot read is
    /// dropped with a warning, never trusted; a read one is removed from the store once the new
    /// process is ready.
    pub fn fd_store(mut self, keep: bool) -> Self {
        self.fd_store = keep;
        self
    }

    /// Keeps a process that handed over on standby for `window` (default: none): it accepts
    /// nothing but holds its listeners, lock and control socket, and if the successor dies
    /// (exits non-zero or is killed — a crash, a failed liveness check that made its supervisor
    /// kill it) within the window, it serves again: `MAINPID=` back to itself (a supervisor
    /// follows), the pid file and the lock file name it again, and it can restart again later.
    /// After the window it drains and exits as usual. No peer offers this. Accept through
    /// [`Running::accept`](super::Running::accept) or the HTTP helpers, which pause during the
    /// window. Under systemd the unit needs `NotifyAccess=all`: the `MAINPID=` that takes the
    /// service back comes from a process that is not the main one at that moment.
    pub fn rollback_window(mut self, window: Duration) -> Self {
        self.rollback_window = (!window.is_zero()).then_some(window);
        self
    }

    /// Refuses a restart while `limit` earlier generations are still draining (default: no
    /// limit), with [`Error::TooManyRetired`] — like `HAProxy`'s `mworker-max-reloads`, a guard against
    /// lingering workers. Each generation knows its predecessors by pid and start time.
    pub fn max_retired(mut self, limit: usize) -> Self {
        self.max_retired = Some(limit);
        self
    }

    /// Restarts (a handover) when a new executable is installed at the path this process was
    /// started from (default off): the directory is watched, and once a file renamed or written
    /// into place is a complete, executable regular file other than the one running, a restart
    /// starts it. A broken new binary fails the restart as any failed successor does, and this
    /// process serves on.
    pub fn restart_on_exe_change(mut self, on: bool) -> Self {
        self.restart_on_exe_change = on;
        self
    }

    /// Writes a newline to file descriptor `fd` and closes it once a fresh process is ready
    /// (default: none): the readiness protocol of s6 (`notification-fd`) and dinit
    /// (`ready-notification = pipefd:N`). Successors, which these supervisors do not know, skip it.
    pub fn ready_fd(mut self, fd: std::os::fd::RawFd) -> Self {
        self.ready_fd = Some(fd);
        self
    }

    /// Starts the service, carrying application state of type `S` (`()` for none): adopts what
    /// a predecessor or systemd passed, locks the state directory, sets up the listeners, the
    /// control socket and TLS, reads the predecessor's state, and installs the signal handlers.
    ///
    /// Nothing here tells a predecessor anything: any error means this process cannot take
    /// over, and returning it from `main` (exit non-zero) leaves the predecessor serving, its
    /// lock file and socket files untouched. Must run inside a tokio runtime. Call it once per
    /// process (the inherited file descriptors are adopted once).
    pub async fn start<S: ServiceState>(self) -> Result<Starting<S>, Error> {
        self.validate()?;
        Starting::begin(self).await
    }

    fn validate(&self) -> Result<(), Error> {
        let config = |reason: String| Err(Error::Config { reason });
        for (i, spec) in self.listeners.iter().enumerate() {
            if let Err(err) = handover::validate_name(&spec.name) {
                return config(err.to_string());
            }
            if [LOCK_FD, CONTROL_FD, STATE_FD].contains(&spec.name.as_str()) {
                return config(format!("listener name {:?} is reserved", spec.name));
            }
            if self.listeners[..i].iter().any(|other| other.name == spec.name) {
                return config(format!("two listeners are named {:?}", spec.name));
            }
        }
        if self.handover.ready_timeout.is_zero() {
            return config("the ready timeout is zero".to_owned());
        }
        if self.quiet_period.is_zero() {
            return config("the quiet period is zero".to_owned());
        }
        if self.ready_fd.is_some_and(|fd| fd < 3) {
            return config("the readiness fd must not be a standard stream".to_owned());
        }
        if self.max_retired == Some(0) {
            return config("max_retired of 0 would refuse every restart".to_owned());
        }
        let overlap = self.stop_signals.iter().find(|s| self.restart_signals.contains(s));
        if let Some(signal) = overlap {
            return config(format!("signal {} both stops and restarts", signal.as_raw_value()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn invalid_configurations_are_refused_before_anything_is_touched() {
        let cases = [
            (Builder::new().tcp("a", addr()).udp("a", addr()), "two listeners are named \"a\""),
            (Builder::new().tcp(LOCK_FD, addr()), "is reserved"),
            (Builder::new().tcp("a,b", addr()), "invalid file descriptor name"),
            (Builder::new().ready_timeout(Duration::ZERO), "the ready timeout is zero"),
            (Builder::new().quiet_period(Duration::ZERO), "the quiet period is zero"),
            (Builder::new().restart_signals([SignalKind::terminate()]), "both stops and restarts"),
        ];
        for (builder, expected) in cases {
            let err = builder.validate().unwrap_err();
            assert!(err.to_string().contains(expected), "{err} does not say {expected:?}");
        }
        Builder::new().tcp("a", addr()).unix("b", "/tmp/x").udp("c", addr()).validate().unwrap();
    }
}
