//! What to run and how to supervise it: [`Command`], [`Config`], [`Lifetime`], [`Notify`]
//! ([`NotifyConfig`], [`NotifyAddress`], [`Readiness`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::signal::Signal;

/// The command to run: program, arguments, environment, working directory.
///
/// Plain UTF-8 strings so a [`Snapshot`](crate::Snapshot) can carry it as JSON. Built with
/// [`Command::new`] and its setters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Command {
    /// The program: a path, or a name looked up in `PATH`.
    pub program: String,
    /// Its arguments (not including the program name).
    pub args: Vec<String>,
    /// Variables set in its environment (after `env_clear` and `env_remove`).
    pub env: Vec<(String, String)>,
    /// Variables removed from the inherited environment.
    pub env_remove: Vec<String>,
    /// Start from an empty environment instead of the supervisor's.
    pub env_clear: bool,
    /// Its working directory (default: the supervisor's).
    pub cwd: Option<PathBuf>,
}

impl Command {
    /// `program` with no arguments, the supervisor's environment and working directory.
    pub fn new(program: impl Into<String>) -> Command {
        Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            env_clear: false,
            cwd: None,
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Command {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Command {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes an inherited environment variable.
    pub fn env_remove(mut self, key: impl Into<String>) -> Command {
        self.env_remove.push(key.into());
        self
    }

    /// Starts from an empty environment.
    pub fn env_clear(mut self) -> Command {
        self.env_clear = true;
        self
    }

    /// Sets the working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Command {
        self.cwd = Some(dir.into());
        self
    }

    /// `program arg1 arg2`, for messages.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Whether the service may outlive its supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lifetime {
    /// The service keeps running when the supervisor exits or dies (the seed's behaviour); a new
    /// supervisor can [`adopt`](crate::Supervisor::adopt) it from a snapshot. The default.
    #[default]
    OutliveSupervisor,
    /// The kernel sends `signal` to the main process when the supervisor dies
    /// (`PR_SET_PDEATHSIG`). The signal fires when the *thread* that started the process exits:
    /// the supervisor starts processes from its own task, which runs on a runtime worker thread
    /// (the main thread on a current-thread runtime), so keep the runtime alive as long as the
    /// service. It applies to processes the supervisor starts, not to a successor that becomes
    /// the main process through `MAINPID=`. [`detach`](crate::Supervised::detach) is refused.
    DieWithSupervisor {
        /// The signal the service gets (`SIGKILL` cannot be ignored; `SIGTERM` lets it clean up).
        signal: Signal,
    },
}

/// Readiness notification: serving systemd's `NOTIFY_SOCKET` protocol to the service, and what
/// only works with it (a watchdog, a start timeout), so that neither can be asked for without it.
///
/// ```
/// use std::time::Duration;
/// use keepalive::{Config, NotifyConfig};
///
/// let config = Config::default().notify(
///     NotifyConfig::new().start_timeout(Duration::from_secs(90)).watchdog(Duration::from_secs(30)),
/// );
/// assert!(config.notify.is_on());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Notify {
    /// No `NOTIFY_SOCKET`; the service counts as ready (healthy) as soon as it starts, or when
    /// its startup probe passes. The default.
    #[default]
    Off,
    /// A `NOTIFY_SOCKET` is served: `READY=1` marks the service healthy (unless
    /// [`Readiness::Started`]), `MAINPID=` moves supervision to a successor, `WATCHDOG=1` feeds
    /// the watchdog.
    On(NotifyConfig),
}

impl Notify {
    /// Whether a socket is served at all.
    pub fn is_on(self) -> bool {
        self != Notify::Off
    }

    /// The watchdog interval, if any.
    pub(crate) fn watchdog(self) -> Option<Duration> {
        match self {
            Notify::On(on) => on.watchdog,
            Notify::Off => None,
        }
    }

    /// The start timeout, if any.
    pub(crate) fn start_timeout(self) -> Option<Duration> {
        match self {
            Notify::On(NotifyConfig { readiness: Readiness::Notified { start_timeout }, .. }) => {
                start_timeout
            }
            _ => None,
        }
    }

    /// Whether a new main process counts as ready at once (no `READY=1` awaited).
    pub(crate) fn ready_at_start(self) -> bool {
        !matches!(self, Notify::On(NotifyConfig { readiness: Readiness::Notified { .. }, .. }))
    }
}

impl From<NotifyConfig> for Notify {
    fn from(on: NotifyConfig) -> Notify {
        Notify::On(on)
    }
}

/// How the `NOTIFY_SOCKET` is served ([`Notify::On`]). `NotifyConfig::new()`: a socket in a
/// private directory, ready on `READY=1` (no start timeout), no watchdog; the setters change one
/// field each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NotifyConfig {
    /// Where the socket is (default [`NotifyAddress::PrivateDir`]).
    pub address: NotifyAddress,
    /// When a started, adopted or followed main process counts as ready (default: on `READY=1`,
    /// waiting for ever).
    pub readiness: Readiness,
    /// Restart the service when it does not send `WATCHDOG=1` at least this often (default:
    /// none). The service finds it in `WATCHDOG_USEC`/`WATCHDOG_PID`. An interval too long to be
    /// added to the current time never expires (so does one the service sets with
    /// `WATCHDOG_USEC=`); `WATCHDOG_USEC` saturates at `u64::MAX` µs. The signal is
    /// [`Config::watchdog_signal`].
    pub watchdog: Option<Duration>,
}

impl NotifyConfig {
    /// The defaults: a private directory, ready on `READY=1`, no start timeout, no watchdog.
    pub fn new() -> NotifyConfig {
        NotifyConfig::default()
    }

    /// Sets [`NotifyConfig::address`].
    pub fn address(mut self, address: NotifyAddress) -> NotifyConfig {
        self.address = address;
        self
    }

    /// Sets [`NotifyConfig::readiness`].
    pub fn readiness(mut self, readiness: Readiness) -> NotifyConfig {
        self.readiness = readiness;
        self
    }

    /// Awaits `READY=1` ([`Readiness::Notified`]) for at most `timeout` after a start.
    pub fn start_timeout(mut self, timeout: Duration) -> NotifyConfig {
        self.readiness = Readiness::Notified { start_timeout: Some(timeout) };
        self
    }

    /// Sets [`NotifyConfig::watchdog`].
    pub fn watchdog(mut self, interval: Duration) -> NotifyConfig {
        self.watchdog = Some(interval);
        self
    }
}

/// Where the `NOTIFY_SOCKET` is ([`NotifyConfig::address`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NotifyAddress {
    /// A unix datagram socket in a private temporary directory (mode 0700); `NOTIFY_SOCKET` is its
    /// path. Every client accepts it (libsystemd, `systemd-notify`, the sd-notify crate). The
    /// default.
    #[default]
    PrivateDir,
    /// An abstract unix socket; `NOTIFY_SOCKET=@name`. Nothing on disk, but reachable by any process
    /// in the same network namespace (messages are still accepted only from the main pid), and
    /// the sd-notify crate (0.5) does not support it; libsystemd and `systemd-notify` do.
    Abstract,
}

/// When a main process counts as ready ([`NotifyConfig::readiness`]): from then on its running
/// time is "healthy" for the restart policy ([`Backoff`](crate::Backoff) forgets past failures
/// after 10 s of it). Without notification ([`Notify::Off`]) it is ready as soon as it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// When it sends `READY=1` on the notify socket. The default.
    Notified {
        /// A started main process that has not sent `READY=1` this long after its start is
        /// restarted (systemd's `TimeoutStartSec=`; `None`: wait for ever). It is stopped like a
        /// stop (`stop_signal`, then `SIGKILL` after `grace`) and its exit goes to the restart
        /// policy as a failure ([`ExitCause::StartTimeout`](crate::ExitCause::StartTimeout)). An
        /// adopted or `MAINPID=`-followed process is not timed. A timeout too long to be added to
        /// the current time never expires. (A startup [`Probe`](crate::Probe) has its own limit:
        /// its `failures`.)
        start_timeout: Option<Duration>,
    },
    /// As soon as it starts, even though a notify socket is served: for a service that is given
    /// `NOTIFY_SOCKET` only for the watchdog (`WATCHDOG=1`) and never sends `READY=1`, as under
    /// `lifeline supervise --watchdog` without `--notify`. No start timeout: nothing is awaited.
    Started,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness::Notified { start_timeout: None }
    }
}

/// How to supervise. `Config::default()` is the seed's behaviour; the setters change one field
/// each.
///
/// ```
/// use std::time::Duration;
/// use keepalive::{Config, NotifyConfig, Signal};
///
/// let config = Config::default()
///     .stop_signal(Signal::INT)
///     .grace(Duration::from_secs(10))
///     .pid_file("/run/app.pid")
///     .notify(NotifyConfig::new().watchdog(Duration::from_secs(30)));
/// assert_eq!(config.grace, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Sent to the service's process group to stop it (default `SIGTERM`).
    pub stop_signal: Signal,
    /// How long a stop waits after `stop_signal` before `SIGKILL`ing the group (default 5 s). A
    /// duration too long to be added to the current time (`Duration::MAX`) means "wait for ever".
    pub grace: Duration,
    /// Whether the service may outlive the supervisor (default: it may).
    pub lifetime: Lifetime,
    /// When the main process exits on its own (a crash, not a handover), stop what is left of its
    /// process group (stop signal, grace, `SIGKILL`) before restarting, so that no orphan keeps a
    /// lock or port the next instance needs (default: on). A process that became the main pid
    /// through `MAINPID=` is never caught by this.
    pub stop_group_on_crash: bool,
    /// Keep the current main pid in this file (written atomically; removed on a clean stop).
    pub pid_file: Option<PathBuf>,
    /// Keep a current [`Snapshot`](crate::Snapshot) of the service in this file (JSON, mode 0600,
    /// replaced atomically like the pid file), rewritten whenever the main pid changes and when it
    /// becomes ready; removed on a clean stop, when the service is done and when the policy gives
    /// up; left in place (holding the detached snapshot) by [`detach`](crate::Supervised::detach).
    /// If the supervisor dies, a new one can [`adopt`](crate::Supervisor::adopt) the service from
    /// it ([`Snapshot::read`](crate::Snapshot::read)). A failed write of this file or of the pid
    /// file is retried (1 s, doubling to 30 s) until it succeeds; the previous file stays intact
    /// meanwhile.
    pub state_file: Option<PathBuf>,
    /// Serve `NOTIFY_SOCKET` (default: off), with when the service counts as ready, its start
    /// timeout and its watchdog ([`NotifyConfig`]). With it, `READY=1` marks the service healthy,
    /// `MAINPID=` moves supervision to a successor, `WATCHDOG=1` feeds the watchdog.
    pub notify: Notify,
    /// Sent to a service that missed its watchdog deadline ([`NotifyConfig::watchdog`]; default
    /// `SIGABRT`, as systemd); `SIGKILL` follows after `grace`.
    pub watchdog_signal: Signal,
    /// Become a child subreaper (`PR_SET_CHILD_SUBREAPER`, process-wide): orphaned descendants of
    /// the service are re-parented to this process instead of init, so a handover successor
    /// becomes our child when its parent exits (its exit status is then known) and orphans are
    /// reaped here (default: off; `lifeline supervise` turns it on).
    ///
    /// Which orphans the supervisor reaps, and which it stops with the service, depends on
    /// [`dedicated`](Config::dedicated): by default only those it can attribute to the service.
    pub subreaper: bool,
    /// This process exists only to supervise this one service (`lifeline supervise` is such a
    /// process): every child it has, and every descendant, is the service's (default: off).
    ///
    /// With it, the supervisor reaps *every* child that exits (with [`subreaper`](Config::subreaper),
    /// also orphans that moved to a session of their own with `setsid()`, which nothing else ties
    /// to the service), a stop waits until the process has no descendant left (signalling each
    /// with the stop signal, then `SIGKILL`), and a child re-parented to it may become the main
    /// process through `MAINPID=`. Never turn it on in a process with children of its own: they
    /// would be reaped (their exit statuses lost to whoever spawned them) and stopped.
    ///
    /// Without it, the supervisor reaps and stops only what it can attribute to the service: the
    /// main process and previous ones still draining, their process groups, their current
    /// sessions and their descendants (an orphan that called `setsid()` after its parent exited
    /// is none of these, and is left to its new parent, possibly as a zombie).
    pub dedicated: bool,
    /// A previous main process (retired by a `MAINPID=` handover, draining) still running this
    /// long after it was retired is stopped: `stop_signal` to it (and to its process group when
    /// no other process of the service is in it), `SIGKILL` after `grace` (default: never;
    /// HAProxy's `hard-stop-after`). A duration too long to add to the clock means "never".
    pub drain_deadline: Option<Duration>,
    /// At most this many retired main processes may run at once: when a `MAINPID=` handover
    /// retires one more, the oldest beyond the cap are stopped like at the
    /// [`drain_deadline`](Config::drain_deadline) (default: no cap; HAProxy's
    /// `mworker-max-reloads`, which ends the oldest worker rather than refusing the reload — the
    /// successor is already serving when `MAINPID=` arrives, so there is nothing left to refuse).
    /// Between the handover and the oldest one's exit (at most `grace`), one more than the cap runs.
    pub max_retired: Option<usize>,
    /// How long, after the main process exited, to wait for a retired process still running to
    /// take the service back (`MAINPID=` naming *itself*, as a predecessor in its rollback window
    /// does when its successor dies) before the exit counts as a crash (default 2 s). Not waited
    /// when no retired process runs. Such a rollback is followed: no restart, no backoff, not a
    /// failure for the policy ([`EventKind::RolledBack`](crate::EventKind::RolledBack)).
    pub rollback_grace: Duration,
    /// Startup, readiness and liveness probes ([`Probe`](crate::Probe)), at most one of each
    /// role, for services that speak no notify protocol (default: none). A startup probe decides
    /// when a started process has started (it is not ready before, and `failures` failures in a
    /// row fail the start: stopped, then the policy decides, backoff applies); readiness and
    /// liveness probes begin once it passed (at once without one, and for an adopted or followed
    /// process). Readiness failures make the service not ready, liveness failures stop and
    /// restart it.
    pub probes: Vec<crate::Probe>,
    /// The rustls crypto provider HTTPS probes use (feature `tls`); `None`: rustls' process-wide
    /// default ([`CryptoProvider::get_default`](rustls::crypto::CryptoProvider::get_default)).
    /// keepalive never picks one itself.
    #[cfg(feature = "tls")]
    pub probe_tls_provider: Option<std::sync::Arc<rustls::crypto::CryptoProvider>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stop_signal: Signal::TERM,
            grace: Duration::from_secs(5),
            lifetime: Lifetime::OutliveSupervisor,
            stop_group_on_crash: true,
            pid_file: None,
            state_file: None,
            notify: Notify::Off,
            watchdog_signal: Signal::ABRT,
            subreaper: false,
            dedicated: false,
            drain_deadline: None,
            max_retired: None,
            rollback_grace: Duration::from_secs(2),
            probes: Vec::new(),
            #[cfg(feature = "tls")]
            probe_tls_provider: None,
        }
    }
}

impl Config {
    /// Sets [`Config::stop_signal`].
    pub fn stop_signal(mut self, signal: Signal) -> Config {
        self.stop_signal = signal;
        self
    }

    /// Sets [`Config::grace`].
    pub fn grace(mut self, grace: Duration) -> Config {
        self.grace = grace;
        self
    }

    /// Sets [`Config::lifetime`].
    pub fn lifetime(mut self, lifetime: Lifetime) -> Config {
        self.lifetime = lifetime;
        self
    }

    /// Sets [`Config::stop_group_on_crash`].
    pub fn stop_group_on_crash(mut self, on: bool) -> Config {
        self.stop_group_on_crash = on;
        self
    }

    /// Sets [`Config::pid_file`].
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Config {
        self.pid_file = Some(path.into());
        self
    }

    /// Sets [`Config::state_file`].
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Config {
        self.state_file = Some(path.into());
        self
    }

    /// Sets [`Config::notify`]: [`Notify::Off`], or a [`NotifyConfig`].
    pub fn notify(mut self, notify: impl Into<Notify>) -> Config {
        self.notify = notify.into();
        self
    }

    /// Sets [`Config::watchdog_signal`].
    pub fn watchdog_signal(mut self, signal: Signal) -> Config {
        self.watchdog_signal = signal;
        self
    }

    /// Sets [`Config::subreaper`].
    pub fn subreaper(mut self, on: bool) -> Config {
        self.subreaper = on;
        self
    }

    /// Sets [`Config::dedicated`].
    pub fn dedicated(mut self, on: bool) -> Config {
        self.dedicated = on;
        self
    }

    /// Sets [`Config::drain_deadline`].
    pub fn drain_deadline(mut self, deadline: Duration) -> Config {
        self.drain_deadline = Some(deadline);
        self
    }

    /// Sets [`Config::max_retired`].
    pub fn max_retired(mut self, max: usize) -> Config {
        self.max_retired = Some(max);
        self
    }

    /// Sets [`Config::rollback_grace`].
    pub fn rollback_grace(mut self, grace: Duration) -> Config {
        self.rollback_grace = grace;
        self
    }

    /// Adds a probe to [`Config::probes`] (at most one of each role; a second one fails the start
    /// with [`Error::ProbeConflict`](crate::Error::ProbeConflict)).
    pub fn probe(mut self, probe: crate::Probe) -> Config {
        self.probes.push(probe);
        self
    }

    /// Sets [`Config::probes`].
    pub fn probes(mut self, probes: impl IntoIterator<Item = crate::Probe>) -> Config {
        self.probes = probes.into_iter().collect();
        self
    }

    /// Sets [`Config::probe_tls_provider`] (feature `tls`).
    #[cfg(feature = "tls")]
    pub fn probe_tls_provider(mut self, provider: std::sync::Arc<rustls::crypto::CryptoProvider>) -> Config {
        self.probe_tls_provider = Some(provider);
        self
    }
}
