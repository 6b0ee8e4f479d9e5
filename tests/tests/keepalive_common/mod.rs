//! Helpers shared by the keepalive integration tests: waiting for events and for processes to go.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use keepalive::{Event, EventKind, Events};
use lifeline_tests::PATIENCE;

/// The next event, or a panic after [`PATIENCE`].
pub async fn next(events: &mut Events) -> Event {
    let within = tokio::time::timeout(PATIENCE, events.next()).await;
    let event = within.unwrap_or_else(|elapsed| panic!("no event within {PATIENCE:?} ({elapsed})"));
    event.expect("the supervisor finished while an event was expected")
}

/// Events up to and including the first one `pred` accepts.
pub async fn until(events: &mut Events, mut pred: impl FnMut(&EventKind) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = next(events).await;
        let done = pred(&event.kind);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: on success the fd is new and ours.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether `pid` has exited (or never existed), right now.
pub fn is_gone(pid: u32) -> bool {
    exited_within(pid, Duration::ZERO)
}

/// Waits on the process's pidfd (an event, not polling) until it exits; false after `timeout`.
pub fn exited_within(pid: u32, timeout: Duration) -> bool {
    let Some(fd) = pidfd(pid) else { return true };
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one pollfd that lives across the call.
    unsafe { libc::poll(&raw mut pfd, 1, ms) > 0 }
}

/// Panics unless `pid` exits within [`PATIENCE`].
pub fn wait_gone(pid: u32) {
    assert!(exited_within(pid, PATIENCE), "pid {pid} still running after {PATIENCE:?}");
}

/// SIGKILLs a leftover process at the end of a test.
pub fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// Reads a file of pids, one per line, once it exists.
pub fn read_pids(path: &std::path::Path) -> Vec<u32> {
    lifeline_tests::wait_for(&format!("{}", path.display()), || {
        let text = std::fs::read_to_string(path).ok()?;
        let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (!pids.is_empty()).then_some(pids)
    })
}

/// The pid of a Started event.
pub fn started_pid(kind: &EventKind) -> Option<u32> {
    match kind {
        EventKind::Started { pid, .. } => Some(*pid),
        _ => None,
    }
}

/// A process held by a pidfd opened while it is known to be running: unlike its pid, the handle
/// can never come to mean another process.
pub struct Held {
    pub pid: u32,
    fd: OwnedFd,
}

impl Held {
    /// Opens a pidfd for `pid`, which the caller knows is running.
    pub fn new(pid: u32) -> Held {
        Held { pid, fd: pidfd(pid).unwrap_or_else(|| panic!("pid {pid} is not running")) }
    }

    /// Whether the process has exited (now, without waiting).
    pub fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd that lives across the call.
        unsafe { libc::poll(&raw mut pfd, 1, 0) > 0 }
    }
}
