//! Stopping processes and process groups: signal, wait on pidfds with a deadline, then `SIGKILL`.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, timeout_at};

use crate::signal::Signal;
use crate::sys;

/// How long to wait for processes to disappear after `SIGKILL` before giving up on them (a process
/// in uninterruptible sleep can take a while; one stuck forever must not hang the supervisor).
const AFTER_KILL: Duration = Duration::from_secs(10);

/// A process to stop by pidfd, with the process group it was in.
pub(crate) struct Target<'a> {
    pub(crate) pidfd: &'a AsyncFd<OwnedFd>,
    pub(crate) pgid: i32,
}

/// Signals `procs` and every process in `groups`, waits up to `grace` for all of them to be gone,
/// then `SIGKILL`s whatever is left. Returns whether `SIGKILL` was needed.
///
/// Each process gets each signal once: a process in one of `groups` gets it through its group
/// only (a second SIGTERM means "stop *now*" to many servers). `groups` must not contain the
/// caller's own process group.
pub(crate) async fn terminate(
    procs: &[Target<'_>],
    groups: &BTreeSet<i32>,
    signal: Signal,
    grace: Duration,
) -> bool {
    send(procs, groups, signal);
    if signal != Signal::KILL && signal.as_raw() != libc::SIGCONT {
        // A stopped process cannot act on the stop signal until it is continued (systemd does this too).
        send(procs, groups, Signal::from_raw(libc::SIGCONT));
    }
    if wait_gone(procs, groups, Instant::now() + grace).await {
        return false;
    }
    tracing::warn!(?groups, grace = ?grace, "still running after the grace period; sending SIGKILL");
    send(procs, groups, Signal::KILL);
    if !wait_gone(procs, groups, Instant::now() + AFTER_KILL).await {
        tracing::error!(?groups, "processes survived SIGKILL for {AFTER_KILL:?}; giving up on them");
    }
    true
}

fn send(procs: &[Target<'_>], groups: &BTreeSet<i32>, signal: Signal) {
    for &pgid in groups {
        if let Err(err) = sys::kill_group(pgid, signal) {
            tracing::debug!(pgid, %signal, %err, "cannot signal process group");
        }
    }
    // A process outside those groups (a successor that made its own group, say) gets it directly.
    for target in procs.iter().filter(|t| !groups.contains(&t.pgid)) {
        if let Err(err) = sys::pidfd_send_signal(target.pidfd.as_fd(), signal) {
            tracing::debug!(%signal, %err, "cannot signal process");
        }
    }
}

/// Waits until every process in `procs` has exited and no live (non-zombie) process is left in
/// `groups`, or until `deadline`. Event-driven: it sleeps on pidfds, and scans `/proc` for group
/// members only to find out which pidfds to sleep on (again after they fired, to catch forks).
pub(crate) async fn wait_gone(procs: &[Target<'_>], groups: &BTreeSet<i32>, deadline: Instant) -> bool {
    for target in procs {
        if timeout_at(deadline, target.pidfd.readable()).await.is_err() {
            return false;
        }
    }
    loop {
        let members: Vec<sys::ProcStat> =
            sys::group_members(groups).into_iter().filter(|s| !s.is_zombie()).collect();
        if members.is_empty() {
            return true;
        }
        let fds: Vec<AsyncFd<OwnedFd>> = members
            .iter()
            .filter_map(|m| sys::pidfd_open(m.pid).ok())
            .filter_map(|fd| sys::async_fd(fd).ok())
            .collect();
        for fd in &fds {
            if timeout_at(deadline, fd.readable()).await.is_err() {
                return false;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        // Everything we saw has exited; let its parent (or us) reap it before looking again.
        tokio::task::yield_now().await;
    }
}
