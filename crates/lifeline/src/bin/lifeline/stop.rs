//! `lifeline stop`: signal a process and wait until it has exited.
//!
//! Made for `ExecStop=lifeline stop $MAINPID` in a systemd unit whose service hands over to new
//! processes. After a handover the main process is the old one's child, not systemd's, and
//! systemd does not wait for a main process that is not its child: on `systemctl stop` or
//! `restart` it follows SIGTERM with SIGKILL at once, and the server never drains (nor keeps its
//! state in the fd store, nor removes its lock file). An `ExecStop=` command is waited for
//! (up to `TimeoutStopSec=`): this one sends the stop signal itself and returns once the process
//! is gone, after which systemd finds nothing left to kill.
//!
//! The process is held by a pidfd from the start: the signal and the wait reach that very
//! process, never another that got its pid later.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keepalive::Signal;

/// Arguments of `lifeline stop`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Signal that asks the process to stop.
    #[arg(long, default_value = "SIGTERM")]
    signal: String,
    /// Give up waiting after this long (exit 1). Default: wait until it exits (under systemd,
    /// `TimeoutStopSec=` bounds an `ExecStop=` command).
    #[arg(long, value_parser = crate::args::parse_duration)]
    timeout: Option<Duration>,
    /// Instead of a PID: ask the supervisor serving this control socket (`lifeline supervise
    /// --control`) to stop its service; exit 0 once it has.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "signal"])]
    socket: Option<std::path::PathBuf>,
    /// The process to stop (in a unit: `$MAINPID`, which is empty when there is no main process
    /// any more: then there is nothing to do).
    pid: Option<u32>,
}

/// Exit 0 once the process has exited (or when there is none), 1 when it still runs after
/// `--timeout`.
pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(socket) = &args.socket {
        return crate::control::stop(socket, args.timeout);
    }
    let signal: Signal = args.signal.parse()?;
    let Some(pid) = args.pid else { return Ok(ExitCode::SUCCESS) };
    if pid <= 1 || i32::try_from(pid).is_err() {
        bail!("refusing to stop pid {pid}");
    }
    let Some(pidfd) = pidfd_open(pid).with_context(|| format!("cannot watch pid {pid}"))? else {
        return Ok(ExitCode::SUCCESS);
    };
    if !send_signal(&pidfd, signal).with_context(|| format!("cannot send {signal} to pid {pid}"))? {
        return Ok(ExitCode::SUCCESS);
    }
    if wait_exit(&pidfd, args.timeout)? {
        Ok(ExitCode::SUCCESS)
    } else {
        let waited = args.timeout.unwrap_or_default();
        eprintln!("lifeline: pid {pid} still runs {} after {signal}", humantime::format_duration(waited));
        Ok(ExitCode::FAILURE)
    }
}

/// `pidfd_open(2)`; `None` when no such process exists.
fn pidfd_open(pid: u32) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) { Ok(None) } else { Err(err) };
    }
    // SAFETY: the kernel just returned this fd to us, and nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// `pidfd_send_signal(2)`; `false` when the process has already exited.
fn send_signal(pidfd: &OwnedFd, signal: Signal) -> std::io::Result<bool> {
    // SAFETY: a valid pidfd, a signal number, no siginfo (null), no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal.as_raw(),
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) { Ok(false) } else { Err(err) };
    }
    Ok(true)
}

/// Waits until the pidfd is readable (the process has exited); `false` after `timeout`.
fn wait_exit(pidfd: &OwnedFd, timeout: Option<Duration>) -> anyhow::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let wait_ms = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up, so that a wait never ends just before the deadline.
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
        };
        let mut poll = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&raw mut poll, 1, wait_ms) };
        if rc > 0 {
            return Ok(true);
        }
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).context("cannot wait for the process");
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}
