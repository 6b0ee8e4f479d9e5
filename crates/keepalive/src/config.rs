//! What to run and how to supervise it: [`Command`], [`Config`], [`Lifetime`], [`Notify`],
//! [`Readiness`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::signal::Signal;

/// The command to run: program, arguments, environment, working directory.
///
/// Plain UTF-8 strings so a [`Snapshot`](crate::Snapshot) can carry it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Readiness notification: serving systemd's `NOTIFY_SOCKET` protocol to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Notify {
    /// No `NOTIFY_SOCKET`; the service counts as ready (healthy) as soon as it starts. The default.
    #[default]
    Off,
    /// A unix datagram socket in a private temporary directory (mode 0700); `NOTIFY_SOCKET` is its
    /// path. Every client accepts it (libsystemd, `systemd-notify`, the sd-notify crate).
    PrivateDir,
    /// An abstract unix socket; `NOTIFY_SOCKET=@name`. Nothing on disk, but reachable by any process
    /// in the same network namespace (messages are still accepted only from the main pid), and
    /// the sd-notify crate (0.5) does not support it; libsystemd and `systemd-notify` do.
    Abstract,
}

impl Notify {
    /// Whether a socket is served at all.
    pub fn is_on(self) -> bool {
        self != Notify::Off
    }
}

/// When a main process counts as ready: from then on its running time is "healthy" for the
/// restart policy ([`Backoff`](crate::Backoff) forgets past failures after 10 s of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Readiness {
    /// When it sends `READY=1` on the notify socket; as soon as it starts when [`Config::notify`]
    /// is off. The default.
    #[default]
    Notified,
    /// As soon as it starts, even though a notify socket is served: for a service that is given
    /// `NOTIFY_SOCKET` only for the watchdog (`WATCHDOG=1`) and never sends `READY=1`, as under
    /// `lifeline supervise --watchdog` without `--notify`.
    Started,
}

/// How to supervise. `Config::default()` is the seed's behaviour.
#[derive(Debug, Clone)]
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
    /// Serve `NOTIFY_SOCKET` (default: off). With it, `READY=1` marks the service healthy,
    /// `MAINPID=` moves supervision to a successor, `WATCHDOG=1` feeds the watchdog.
    pub notify: Notify,
    /// When a started, adopted or followed main process counts as ready (default: on `READY=1`
    /// when `notify` is on, at once otherwise).
    pub readiness: Readiness,
    /// Restart the service when it does not send `WATCHDOG=1` at least this often (requires
    /// `notify`). The service finds it in `WATCHDOG_USEC`/`WATCHDOG_PID`. An interval too long to be
    /// added to the current time never expires (so does one the service sets with
    /// `WATCHDOG_USEC=`); `WATCHDOG_USEC` saturates at `u64::MAX` µs.
    pub watchdog: Option<Duration>,
    /// Sent to a service that missed its watchdog deadline (default `SIGABRT`, as systemd);
    /// `SIGKILL` follows after `grace`.
    pub watchdog_signal: Signal,
    /// Restart a started main process that has not sent `READY=1` this long after its start
    /// (systemd's `TimeoutStartSec=`; default: wait for ever). It is stopped like a stop
    /// (`stop_signal`, then `SIGKILL` after `grace`) and its exit goes to the restart policy as a
    /// failure ([`ExitCause::StartTimeout`](crate::ExitCause::StartTimeout)). Requires `notify`
    /// with [`Readiness::Notified`]; an adopted or `MAINPID=`-followed process is not timed. A
    /// timeout too long to be added to the current time never expires.
    pub start_timeout: Option<Duration>,
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
            readiness: Readiness::Notified,
            watchdog: None,
            watchdog_signal: Signal::ABRT,
            start_timeout: None,
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
