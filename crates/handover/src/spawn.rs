//! Starting the successor: fds inherited by name, state and readiness pipes, its own process group.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, pipe2};
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::env::{
    LIFELINE_FDS, LIFELINE_PARENT_PID, LIFELINE_READY_FD, LIFELINE_STATE_FD, LISTEN_FDNAMES, LISTEN_FDS,
    LISTEN_PID, format_fds,
};
use crate::error::ExitReason;
use crate::handover::{READY_BYTE, READY_LEN};
use crate::lifecycle::DynLifecycle;
use crate::upgrader::Shared;
use crate::{Error, StateWriter};

/// How long a successor that closed its readiness pipe has to exit before it is killed (and the
/// failure reported as "closed" rather than with its exit status).
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long a successor may take to be gone after `SIGKILL` before the upgrade stops waiting for
/// it (see [`reap_within`]).
pub(crate) const REAP_BOUND: Duration = Duration::from_secs(5);

/// Spawns the successor and waits for it to become ready; kills its process group on failure.
pub(crate) async fn spawn_successor(shared: &Shared, lifecycle: &mut dyn DynLifecycle) -> Result<u32, Error> {
    let (state_rx, state_tx) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::Io { op: "create the state pipe", source: e.into() })?;
    let (ready_rx, ready_tx) = pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| Error::Io { op: "create the readiness pipe", source: e.into() })?;
    let deadline = crate::config::deadline_after(Instant::now(), shared.config.ready_timeout);
    let extra = lifecycle.upgrade_fds().await.map_err(|source| Error::SendState { source })?;
    for (name, _) in &extra {
        crate::env::validate_name(name)?;
        if shared.registry().contains(name) || extra.iter().filter(|(n, _)| n == name).count() > 1 {
            return Err(Error::DuplicateName { name: name.clone() });
        }
    }
    let mut child = spawn(shared, &state_rx, &ready_tx, &extra)?;
    // This upgrade's own fds are the child's now (or nobody's, if it failed).
    drop(extra);
    // The child's ends, closed here so that the child's exit is seen as EOF.
    drop((state_rx, ready_tx));
    let pid = child.id().unwrap_or_default();
    tracing::info!(pid, executable = %shared.executable.display(), "started the new process");

    let outcome = match (pipe::Sender::from_owned_fd(state_tx), pipe::Receiver::from_owned_fd(ready_rx)) {
        (Ok(tx), Ok(rx)) => {
            let writer = StateWriter::new(tx, shared.config.state_limit);
            let waiting =
                tokio::time::timeout_at(deadline, wait_ready(&mut child, pid, rx, writer, lifecycle));
            tokio::select! {
                // A readiness message that arrived together with the stop wins: it was a commit.
                biased;
                waited = waiting => {
                    waited.unwrap_or(Err(Error::NotReady { pid, timeout: shared.config.ready_timeout }))
                }
                () = shared.stopping.cancelled() => Err(Error::Aborted { pid }),
            }
        }
        (Err(source), _) | (_, Err(source)) => Err(Error::Io { op: "register the handover pipes", source }),
    };
    if outcome.is_err() {
        kill_and_reap(&mut child, pid).await;
    } else {
        // The successor runs on; its exit (a crash during a rollback window, or much later) is
        // reaped and published here.
        let exit = shared.successor_exit.clone();
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                let reason = ExitReason::from_status(status);
                tracing::info!(pid, %reason, "the successor exited");
                exit.send_replace(Some((pid, reason)));
            }
        });
    }
    outcome
}

fn spawn(
    shared: &Shared,
    state_rx: &OwnedFd,
    ready_tx: &OwnedFd,
    extra: &[(String, OwnedFd)],
) -> Result<Child, Error> {
    // The successor inherits copies made for it: `F_DUPFD` gives a copy without `FD_CLOEXEC`,
    // and the copies are closed here once it has been spawned (the originals keep the flag).
    // Nothing has to run in the child between fork and exec, so the spawn is a `posix_spawn`
    // (a vfork) rather than a fork: a fork copies the page tables of this process, whose size
    // grows with its memory — 36 ms at 600 MB, against 3.7 ms for posix_spawn (ARCHITECTURE.md,
    // Scaling). The copies exist only while `spawn` runs; a process that another thread of this
    // process spawns meanwhile may inherit them (ARCHITECTURE.md says so).
    let registry = shared.registry();
    let originals: Vec<(&str, RawFd)> = registry
        .iter()
        .map(|(n, fd)| (n, fd.as_raw_fd()))
        .chain(extra.iter().map(|(n, fd)| (n.as_str(), fd.as_raw_fd())))
        .collect();
    let copy = |fd: RawFd| inheritable(fd).map_err(Error::io("copy a descriptor for the new process"));
    let mut copies: Vec<OwnedFd> = Vec::with_capacity(originals.len() + 2);
    let mut named: Vec<(&str, RawFd)> = Vec::with_capacity(originals.len());
    for (name, fd) in originals {
        let dup = copy(fd)?;
        named.push((name, dup.as_raw_fd()));
        copies.push(dup);
    }
    let state_fd = copy(state_rx.as_raw_fd())?;
    let ready_fd = copy(ready_tx.as_raw_fd())?;

    let mut cmd = Command::new(&shared.executable);
    cmd.args(&shared.args)
        .env(LIFELINE_FDS, format_fds(named.iter().copied()))
        .env(LIFELINE_STATE_FD, state_fd.as_raw_fd().to_string())
        .env(LIFELINE_READY_FD, ready_fd.as_raw_fd().to_string())
        .env(LIFELINE_PARENT_PID, std::process::id().to_string())
        .env_remove(LISTEN_PID)
        .env_remove(LISTEN_FDS)
        .env_remove(LISTEN_FDNAMES)
        // WATCHDOG_PID names this process: left as it is, libsystemd and sd-notify in the
        // successor would consider the watchdog meant for someone else and never ping it.
        // Without it, WATCHDOG_USEC applies to whoever reads it, which the successor is.
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        // Its own process group: a failed successor is killed together with its children.
        .process_group(0)
        .kill_on_drop(false);
    let spawned = cmd.spawn().map_err(|source| Error::Spawn { path: shared.executable.clone(), source });
    drop((copies, state_fd, ready_fd));
    spawned
}

/// A copy of `fd` (numbered 3 or above) that a spawned process inherits.
fn inheritable(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD duplicates a descriptor this process owns (the caller holds it open) into
    // the lowest free number ≥ 3, without FD_CLOEXEC; the new descriptor is ours alone.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` was just returned by fcntl and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Sends the state while waiting for the readiness message or the child's exit.
async fn wait_ready(
    child: &mut Child,
    pid: u32,
    ready: pipe::Receiver,
    mut writer: StateWriter,
    lifecycle: &mut dyn DynLifecycle,
) -> Result<u32, Error> {
    let send = async move {
        let result = lifecycle.send_state(&mut writer).await;
        // Closing the pipe is the end of the state.
        drop(writer);
        result
    };
    let read = read_ready(ready);
    tokio::pin!(send, read);
    let mut sending = true;
    loop {
        tokio::select! {
            biased;
            status = child.wait() => {
                let status = status.map_err(Error::io("wait for the new process"))?;
                // The readiness message is the commit point: once it is written the successor
                // serves, and on a loaded machine it may have handed over in turn and exited
                // before we looked. A complete message still in the pipe means it was ready; only
                // without one is the exit a failure (its pipe is closed now: no long wait).
                if let Ok(Ok(Some(ready_pid))) = tokio::time::timeout(EXIT_GRACE, &mut read).await {
                    tracing::warn!(pid, ?status, "the new process became ready, then exited before we looked");
                    return Ok(ready_pid);
                }
                return Err(Error::Exited { pid, status: ExitReason::from_status(status) });
            }
            result = &mut read => return match result? {
                Some(ready_pid) => Ok(ready_pid),
                // Closed without the message: almost always the process exiting. Its status
                // says more than "closed", so give it a moment to arrive.
                None => match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                    Ok(status) => {
                        let status = status.map_err(Error::io("wait for the new process"))?;
                        Err(Error::Exited { pid, status: ExitReason::from_status(status) })
                    }
                    Err(_) => Err(Error::ClosedWithoutReady { pid }),
                },
            },
            result = &mut send, if sending => {
                sending = false;
                match result {
                    Ok(()) => tracing::debug!(pid, "state sent"),
                    // The child closed its end: it does not want the state, or it is exiting;
                    // its exit or readiness decides.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        tracing::debug!(pid, "the new process closed the state pipe");
                    }
                    Err(source) => return Err(Error::SendState { source }),
                }
            }
        }
    }
}

/// Reads the readiness message: `Some(pid)`, or `None` if the pipe closed first.
pub(crate) async fn read_ready<R: tokio::io::AsyncRead + Unpin>(mut ready: R) -> Result<Option<u32>, Error> {
    let mut msg = [0u8; READY_LEN];
    let mut filled = 0;
    while filled < READY_LEN {
        let n = ready.read(&mut msg[filled..]).await.map_err(Error::io("read the readiness message"))?;
        if n == 0 {
            return Ok(None);
        }
        filled += n;
    }
    if msg[0] != READY_BYTE {
        return Err(Error::Protocol { reason: format!("unexpected readiness message {msg:?}") });
    }
    Ok(Some(u32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]])))
}

/// SIGKILLs the child's process group and reaps the child, waiting at most [`REAP_BOUND`].
async fn kill_and_reap(child: &mut Child, pid: u32) {
    if pid != 0 {
        // The group id is the child's pid (`process_group(0)`). While the group has members
        // the kernel does not hand that number out again; ESRCH means none is left.
        match killpg(Pid::from_raw(pid as i32), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pid, error = %e, "cannot kill the new process group"),
        }
    }
    reap_within(child.wait(), pid, REAP_BOUND).await;
}

/// Waits at most `bound` for `reap` (the exit status of the killed successor `pid`); whether it
/// was reaped.
///
/// A process in uninterruptible sleep (D state) does not go away on `SIGKILL` until its I/O
/// ends, which may be never; waiting for it without bound would hold the upgrade lock and refuse
/// every later restart as "already in progress". So the wait ends after `bound`: the `Child` is
/// then dropped by the caller and tokio reaps it in the background whenever it does exit (no
/// zombie is left for longer than the process itself lives).
pub(crate) async fn reap_within(
    reap: impl Future<Output = io::Result<std::process::ExitStatus>>,
    pid: u32,
    bound: Duration,
) -> bool {
    match tokio::time::timeout(bound, reap).await {
        Ok(Ok(status)) => {
            tracing::info!(pid, ?status, "the failed new process was reaped");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(pid, error = %e, "cannot reap the failed new process");
            false
        }
        Err(_) => {
            tracing::warn!(
                pid,
                ?bound,
                "the failed new process is still there after SIGKILL (uninterruptible sleep?); \
                 not waiting any longer, it is reaped in the background when it exits"
            );
            false
        }
    }
}
