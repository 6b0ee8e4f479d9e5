//! Starting the successor: fds inherited by name, state and readiness pipes, its own process group.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::unistd::{Pid, pipe2};
use tokio::io::AsyncReadExt as _;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
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
    let pid = child.id();
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
) -> Result<Successor, Error> {
    let spawn_error = |source: io::Error| Error::Spawn { path: shared.executable.clone(), source };
    let registry = shared.registry();
    let named: Vec<(&str, RawFd)> = registry
        .iter()
        .map(|(n, fd)| (n, fd.as_raw_fd()))
        .chain(extra.iter().map(|(n, fd)| (n.as_str(), fd.as_raw_fd())))
        .collect();
    let mut sources: Vec<RawFd> = named.iter().map(|(_, fd)| *fd).collect();
    sources.push(state_rx.as_raw_fd());
    sources.push(ready_tx.as_raw_fd());
    // Every descriptor keeps FD_CLOEXEC here; the child gets each at a number of its own by a
    // dup2 that `posix_spawn` performs in the child (the copy it makes has no FD_CLOEXEC). The
    // numbers start at 3 and skip the sources, so no dup2 replaces a descriptor a later one
    // reads; whatever else of ours they replace in the child would have been closed at exec.
    let targets = target_numbers(&sources);
    let mut actions = PosixSpawnFileActions::init().map_err(|e| spawn_error(e.into()))?;
    for (&source, &target) in sources.iter().zip(&targets) {
        actions.add_dup2(source, target).map_err(|e| spawn_error(e.into()))?;
    }
    actions
        .add_open(0, "/dev/null", OFlag::O_RDONLY, nix::sys::stat::Mode::empty())
        .map_err(|e| spawn_error(e.into()))?;
    let named_targets = named.iter().zip(&targets).map(|((name, _), fd)| (*name, *fd));
    let (state_fd, ready_fd) = (targets[named.len()], targets[named.len() + 1]);

    let mut attr = PosixSpawnAttr::init().map_err(|e| spawn_error(e.into()))?;
    // Its own process group: a failed successor is killed together with its children. Signals
    // as a new program expects them (as std's Command does): none blocked, SIGPIPE default.
    let mut default = SigSet::empty();
    default.add(Signal::SIGPIPE);
    attr.set_pgroup(Pid::from_raw(0)).map_err(|e| spawn_error(e.into()))?;
    attr.set_sigmask(&SigSet::empty()).map_err(|e| spawn_error(e.into()))?;
    attr.set_sigdefault(&default).map_err(|e| spawn_error(e.into()))?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(|e| spawn_error(e.into()))?;

    let ours = [
        (LIFELINE_FDS, format_fds(named_targets)),
        (LIFELINE_STATE_FD, state_fd.to_string()),
        (LIFELINE_READY_FD, ready_fd.to_string()),
        (LIFELINE_PARENT_PID, std::process::id().to_string()),
    ];
    // WATCHDOG_PID names this process: left as it is, libsystemd and sd-notify in the successor
    // would consider the watchdog meant for someone else and never ping it. Without it,
    // WATCHDOG_USEC applies to whoever reads it, which the successor is.
    let removed = [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, "WATCHDOG_PID"];
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        if removed.iter().chain(ours.iter().map(|(k, _)| k)).any(|r| key == *r) {
            continue;
        }
        env.push(c_string([key.as_bytes(), b"=", value.as_bytes()].concat()).map_err(spawn_error)?);
    }
    for (key, value) in &ours {
        env.push(c_string(format!("{key}={value}").into_bytes()).map_err(spawn_error)?);
    }
    let mut argv = vec![c_string(shared.executable.as_os_str().as_bytes().to_vec()).map_err(spawn_error)?];
    for arg in &shared.args {
        argv.push(c_string(arg.as_bytes().to_vec()).map_err(spawn_error)?);
    }

    // A vfork (glibc's posix_spawn): the page tables of this process are not copied, so the
    // spawn costs the same however much memory it holds (ARCHITECTURE.md, Scaling).
    // A bare name is looked up in PATH, as `Command` does (the configured executable is a path
    // unless the application chose otherwise).
    let spawned = if shared.executable.as_os_str().as_bytes().contains(&b'/') {
        nix::spawn::posix_spawn(shared.executable.as_path(), &actions, &attr, &argv, &env)
    } else {
        nix::spawn::posix_spawnp(&argv[0], &actions, &attr, &argv, &env)
    };
    let pid = spawned.map_err(|e| spawn_error(e.into()))?;
    Successor::watch(pid).map_err(|source| Error::Io { op: "watch the new process", source })
}

/// The numbers the successor gets its descriptors at: from 3 up, skipping every source.
fn target_numbers(sources: &[RawFd]) -> Vec<RawFd> {
    let mut next: RawFd = 3;
    let mut targets = Vec::with_capacity(sources.len());
    for _ in sources {
        while sources.contains(&next) {
            next += 1;
        }
        targets.push(next);
        next += 1;
    }
    targets
}

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument or the environment")
    })
}

/// The successor process: spawned by us, watched through a pidfd, reaped by [`Successor::wait`]
/// — or, if dropped before it has exited, in the background once it does (no zombie outlives it).
pub(crate) struct Successor {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<std::process::ExitStatus>,
}

impl Successor {
    fn watch(pid: Pid) -> io::Result<Successor> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1. The pid is
        // our unreaped child: its number cannot be reused before we reap it.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just returned and is ours alone (pidfds are O_CLOEXEC).
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Successor { pid: pid.as_raw().unsigned_abs(), pidfd: Some(readable(fd)?), status: None })
    }

    pub(crate) fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it; its status (again, once reaped).
    pub(crate) async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let Some(pidfd) = self.pidfd.as_ref() else { return Err(io::ErrorKind::NotFound.into()) };
        loop {
            let mut ready = pidfd.readable().await?;
            if let Some(status) = reap(self.pid)? {
                self.status = Some(status);
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let (Some(pidfd), Ok(runtime)) = (self.pidfd.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let pid = self.pid;
        runtime.spawn(async move {
            loop {
                let Ok(mut ready) = pidfd.readable().await else { return };
                match reap(pid) {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) => ready.clear_ready(),
                }
            }
        });
    }
}

/// The pidfd registered with the reactor for readability (the process has exited).
///
/// `AsyncFd::with_interest` is deprecated since tokio 1.5x in favour of the `unsafe`
/// `register_with_interest` (for a type whose `as_raw_fd` could change); the workspace supports
/// tokio 1.47, and an `OwnedFd` owns one fd for its whole life, which is exactly that contract.
#[allow(deprecated)]
fn readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// Reaps `pid` if it has exited (`None` while it runs).
fn reap(pid: u32) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt as _;
    let mut status = 0;
    loop {
        // SAFETY: waitpid with WNOHANG on our own child, writing to a local integer.
        let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &raw mut status, libc::WNOHANG) };
        match reaped {
            0 => return Ok(None),
            r if r > 0 => return Ok(Some(std::process::ExitStatus::from_raw(status))),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// Sends the state while waiting for the readiness message or the child's exit.
async fn wait_ready(
    child: &mut Successor,
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
async fn kill_and_reap(child: &mut Successor, pid: u32) {
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

#[cfg(test)]
mod spawn_tests {
    use super::target_numbers;
    use proptest::prelude::*;

    proptest! {
        /// The successor's numbers are distinct, from 3 up, and never a source: no dup2 in the
        /// child replaces a descriptor that a later one reads, nor a standard stream.
        #[test]
        fn target_numbers_are_distinct_above_the_standard_streams_and_never_a_source(
            sources in proptest::collection::vec(0..64i32, 0..24),
        ) {
            let targets = target_numbers(&sources);
            prop_assert_eq!(targets.len(), sources.len());
            let mut seen = std::collections::HashSet::new();
            for t in &targets {
                prop_assert!(*t >= 3);
                prop_assert!(!sources.contains(t));
                prop_assert!(seen.insert(*t));
            }
        }
    }

    #[test]
    fn target_numbers_fill_the_lowest_free_numbers() {
        assert_eq!(target_numbers(&[10, 3, 4]), vec![5, 6, 7]);
        assert_eq!(target_numbers(&[20, 21]), vec![3, 4]);
    }
}
