//! `lifeline supervise` under a service manager of its own: systemd (`Type=notify`, through
//! `NOTIFY_SOCKET`) and s6/dinit (`--ready-fd`).
//!
//! The supervisor is the unit's main process and stays so (`MAINPID` is never sent: the service's
//! handovers are the supervisor's business). It tells its manager `READY=1` once the service is
//! first ready, `STATUS=` whenever what it would say changes, `STOPPING=1` when it stops, and
//! feeds the manager's watchdog (`WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or names us) from
//! its own loop. None of `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID` reaches the service:
//! keepalive removes them from every command it starts.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{FromRawFd as _, RawFd};
use std::time::Duration;

use anyhow::bail;
use keepalive::{State, Status};
use sd_notify::NotifyState;

/// What the supervisor tells its own service manager.
pub(crate) struct Manager {
    /// `NOTIFY_SOCKET` was set: systemd (or another manager speaking its protocol) listens.
    notify: bool,
    /// The manager's watchdog interval, if it asked for one.
    pub(crate) watchdog: Option<Duration>,
    /// s6/dinit's notification fd, until readiness is written to it.
    ready_fd: Option<File>,
    /// `READY=1` went out (or the newline).
    ready_told: bool,
    /// The last `STATUS=` sent.
    last_status: String,
}

impl Manager {
    /// Looks at our own environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`/`WATCHDOG_PID`) and takes
    /// `--ready-fd` (checked: 3 or more, and open; made close-on-exec so that the service does
    /// not inherit it).
    pub(crate) fn new(ready_fd: Option<RawFd>) -> anyhow::Result<Manager> {
        let ready_fd = ready_fd.map(take_fd).transpose()?;
        let notify = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        // Only when WATCHDOG_PID is unset or ours (sd_watchdog_enabled's rule).
        let watchdog = if notify { sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) } else { None };
        Ok(Manager { notify, watchdog, ready_fd, ready_told: false, last_status: String::new() })
    }

    /// How often to ping the manager's watchdog: half its interval, as systemd advises.
    pub(crate) fn ping_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Pings the manager's watchdog.
    pub(crate) fn ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// The service's status changed: `READY=1` (and the ready fd) the first time it is ready,
    /// and `STATUS=` when the words change.
    pub(crate) fn on_status(&mut self, status: &Status) {
        let text = describe(status);
        let ready = status.ready && status.pid.is_some() && status.state == State::Running;
        if ready && !self.ready_told {
            self.ready_told = true;
            if let Some(mut fd) = self.ready_fd.take() {
                // s6's and dinit's readiness: a newline, then the fd is closed.
                if let Err(err) = fd.write_all(b"\n") {
                    crate::say!("lifeline: cannot write readiness to --ready-fd: {err}");
                }
            }
            self.send(&[NotifyState::Ready, NotifyState::Status(&text)]);
            self.last_status = text;
        } else if text != self.last_status {
            self.send(&[NotifyState::Status(&text)]);
            self.last_status = text;
        }
    }

    /// The supervisor is stopping the service.
    pub(crate) fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.notify {
            return;
        }
        if let Err(err) = sd_notify::notify(states) {
            crate::say!("lifeline: cannot notify the service manager: {err}");
        }
    }
}

/// `STATUS=` words for a status: `pid 4242 ready; 2 restarts` and so on.
pub(crate) fn describe(status: &Status) -> String {
    let restarts = status.starts.saturating_sub(1);
    let tail = match restarts {
        0 => String::new(),
        1 => "; 1 restart".to_owned(),
        n => format!("; {n} restarts"),
    };
    match (status.state, status.pid) {
        (State::Running, Some(pid)) if status.ready => format!("pid {pid} ready{tail}"),
        (State::Running, Some(pid)) => format!("pid {pid} starting{tail}"),
        (State::BackingOff, _) => format!("waiting to restart{tail}"),
        (State::Stopping, _) => "stopping".to_owned(),
        _ => format!("not running{tail}"),
    }
}

/// Takes `--ready-fd N`: open, not a standard stream, close-on-exec from now on.
fn take_fd(fd: RawFd) -> anyhow::Result<File> {
    if fd < 3 {
        bail!("--ready-fd {fd}: must be 3 or more (0, 1 and 2 are the standard streams)");
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; an fd that is not open gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        bail!("--ready-fd {fd}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFD on an fd that is open (checked above) only changes its flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        bail!("--ready-fd {fd}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above), and --ready-fd gives it to us: whoever
    // started us passed it for exactly this; nothing else in this process uses it.
    Ok(unsafe { File::from_raw_fd(fd) })
}
