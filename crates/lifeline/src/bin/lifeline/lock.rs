//! `lifeline lock`: hold directory locks while a command runs — and while anything it left
//! running still runs.
//!
//! Contract (DESIGN.md): every DIR's lock is held while CMD runs; the exit status is CMD's
//! (128+N when a signal N killed it); a DIR held elsewhere prints one line naming it and the
//! holder's pid and exits 75. CMD inherits no lock descriptor (they are close-on-exec), so the
//! locks live exactly as long as this process: SIGTERM, SIGINT and the other terminating signals
//! are forwarded instead of ending us early, and CMD gets SIGKILL if this process dies anyway (it
//! must never run unlocked).
//!
//! Extended: CMD's descendants are covered too. A service that restarts itself without downtime
//! (a handover) starts its successor and exits: the successor serves on from the same
//! directories. So `lifeline lock` is a child subreaper (`PR_SET_CHILD_SUBREAPER`, set before CMD
//! starts): whatever CMD's process tree leaves behind is re-parented to it and reaped by it, and
//! it keeps the locks until CMD *and every descendant that outlived it* have exited; then it
//! exits with CMD's status. Forwarded signals go to CMD while it runs; once it has exited, to each
//! process re-parented to us (the tops of what is left). A stop signal (SIGTERM, SIGINT, SIGQUIT)
//! goes to every child we have — CMD and what is re-parented to us — and to every process
//! re-parented to us later, because its parent exited meanwhile: a stop request reaches all that
//! is left, so the locks are not held for ever. A `lifeline lock` killed by SIGKILL takes CMD with
//! it, but not what CMD left behind: nothing can arm a death signal for processes it did not start.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus};
use std::time::Duration;

use anyhow::Context as _;
use dirlock::{LockOptions, LockSet};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

/// The exit status for "a directory is locked elsewhere" (`EX_TEMPFAIL`: try again later).
const EXIT_LOCKED: u8 = 75;

/// Signals forwarded to CMD: the ones whose default action would end `lifeline lock` (and so
/// release the locks) while CMD keeps running.
const FORWARDED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];

/// Arguments of `lifeline lock`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Wait up to this long for held locks (humantime: `500ms`, `5s`); default: fail at once.
    #[arg(long, value_parser = crate::args::parse_duration)]
    wait: Option<Duration>,
    /// Lock file name inside each DIR.
    #[arg(long, default_value = ".lifeline.lock")]
    name: String,
    /// Directories to lock.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// The command to run while holding the locks.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args { wait, name, dirs, cmd } = args;
    let mut options = LockOptions::new().file_name(name);
    if let Some(wait) = wait {
        options = options.lock_timeout(wait);
    }
    let locks = match LockSet::acquire(&dirs, &options) {
        Ok(locks) => locks,
        Err(err) if err.is_contention() => {
            // One line, naming the directory and the holder: scripts read it.
            crate::say!("lifeline: {}", crate::chain(err));
            return Ok(ExitCode::from(EXIT_LOCKED));
        }
        Err(err) => return Err(err.into()),
    };
    // `locks` is dropped (released) on every path out of here, including errors.
    let status = run_forwarding_signals(&cmd)?;
    if let Err(err) = locks.release() {
        // The locks are released regardless; a lock file left behind is harmless. (The CLI
        // has no `tracing` dependency of its own; library logs go through the subscriber.)
        crate::say!("lifeline: warning: {}", crate::chain(err));
    }
    Ok(exit_code(status))
}

/// Runs `cmd` to completion — and then until every descendant it left running has exited —
/// forwarding [`FORWARDED`] signals sent to us (by `kill`, systemd, a supervisor): to CMD while
/// it runs, then to each of our remaining children; a stop signal ([`STOPS`]) to every child we
/// have or get from then on (see [`Forwarder`]). Returns CMD's status.
///
/// Signals the terminal sends to the whole foreground process group (Ctrl-C) reach CMD directly;
/// they arrive with `SI_KERNEL` and are not forwarded again, so CMD sees each Ctrl-C once.
fn run_forwarding_signals(cmd: &[String]) -> anyhow::Result<ExitStatus> {
    let (program, args) = cmd.split_first().context("no command given")?;
    let mut mask = SigSet::empty();
    for signal in FORWARDED {
        mask.add(signal);
    }
    mask.add(Signal::SIGCHLD);
    // Block first, so a signal arriving from now on waits in the signalfd instead of killing us.
    // The child inherits the mask across fork and exec; it is restored there before exec.
    let previous_mask = mask.thread_swap_mask(SigmaskHow::SIG_BLOCK).context("cannot block signals")?;
    let result = (|| {
        let signals =
            SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).context("cannot create a signalfd")?;
        // Before CMD exists: every orphan of its tree must come to us (and keep the locks held),
        // not to init. Not inherited by CMD (fork clears it).
        nix::sys::prctl::set_child_subreaper(true).context("cannot become a child subreaper")?;
        let parent = nix::unistd::getpid();
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe system calls (sigprocmask, prctl, getppid); it allocates nothing
        // (`after_fork` builds its errors from raw OS error numbers).
        unsafe {
            command.pre_exec(move || after_fork(&previous_mask, parent));
        }
        let child = command.spawn().with_context(|| format!("cannot run {program}"))?;
        let cmd_pid = Pid::from_raw(child.id() as i32);
        // We reap CMD ourselves, with everything else (std's handle neither waits nor kills).
        drop(child);
        let mut cmd_status: Option<ExitStatus> = None;
        let mut forwarder = Forwarder::default();
        loop {
            if reap_all(cmd_pid, &mut cmd_status, &mut forwarder)? {
                return cmd_status.context("CMD was never reaped");
            }
            // Processes re-parented to us since the last look get the stop signals already asked for.
            forwarder.catch_up();
            let info = match signals.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) | Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err).context("cannot read signals"),
            };
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else { continue };
            if signal == Signal::SIGCHLD || info.ssi_code == libc::SI_KERNEL {
                continue;
            }
            forwarder.forward(signal, cmd_status.is_none().then_some(cmd_pid));
        }
    })();
    // Restore the mask (and the default disposition of pending signals' delivery) for whatever
    // runs after us in this process; pending forwarded signals were consumed by the signalfd.
    if let Err(err) = previous_mask.thread_set_mask() {
        crate::say!("lifeline: warning: cannot restore the signal mask: {err}");
    }
    result
}

/// Signals that ask to stop: once one has come, every process that is or becomes our child gets
/// it (a process re-parented to us after the signal came, because its parent exited meanwhile,
/// would otherwise never hear of it, and we would hold the locks for ever).
const STOPS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Where forwarded signals go. Only our own children are signalled, and only before we reap them:
/// until then their pids cannot be reused. (An error is ESRCH: it is exiting, SIGCHLD follows.)
#[derive(Default)]
struct Forwarder {
    /// The stop signals asked for so far, each once, in order.
    stops: Vec<Signal>,
    /// Children that have had every signal in `stops` (forgotten when reaped).
    told: std::collections::HashSet<Pid>,
}

impl Forwarder {
    /// `signal` came: to CMD while it runs (`cmd`), else to each of our children; a stop signal
    /// also to every child, now and later.
    fn forward(&mut self, signal: Signal, cmd: Option<Pid>) {
        if !STOPS.contains(&signal) {
            match cmd {
                Some(cmd) => send(cmd, signal),
                None => own_children().into_iter().for_each(|pid| send(pid, signal)),
            }
            return;
        }
        if self.stops.contains(&signal) {
            // Asked again: once more to everyone (a second SIGTERM may mean "now").
            for pid in own_children() {
                send(pid, signal);
            }
            return;
        }
        self.stops.push(signal);
        for pid in own_children() {
            if self.told.contains(&pid) {
                send(pid, signal);
            } else {
                self.tell(pid);
            }
        }
    }

    /// Every child that has not had the stop signals asked for so far gets them.
    fn catch_up(&mut self) {
        if self.stops.is_empty() {
            return;
        }
        for pid in own_children() {
            if !self.told.contains(&pid) {
                self.tell(pid);
            }
        }
    }

    fn tell(&mut self, pid: Pid) {
        for &signal in &self.stops {
            send(pid, signal);
        }
        self.told.insert(pid);
    }

    fn reaped(&mut self, pid: Pid) {
        self.told.remove(&pid);
    }
}

/// Signals our unreaped child `pid`; ESRCH (it is exiting) is fine: SIGCHLD follows.
fn send(pid: Pid, signal: Signal) {
    let _ = nix::sys::signal::kill(pid, signal);
}

/// Reaps every child that has exited, noting CMD's status. Returns whether no child is left at
/// all: then, as a subreaper, we have no descendant left either.
fn reap_all(
    cmd_pid: Pid,
    cmd_status: &mut Option<ExitStatus>,
    forwarder: &mut Forwarder,
) -> anyhow::Result<bool> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status word into a local we own.
        let pid = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
        match pid {
            0 => return Ok(false),
            -1 => match nix::errno::Errno::last() {
                nix::errno::Errno::ECHILD => return Ok(true),
                nix::errno::Errno::EINTR => {}
                err => return Err(err).context("cannot wait for the command"),
            },
            pid => {
                forwarder.reaped(Pid::from_raw(pid));
                if pid == cmd_pid.as_raw() {
                    *cmd_status = Some(ExitStatus::from_raw(status));
                }
                // Otherwise an orphan re-parented to us, reaped: nothing more to do.
            }
        }
    }
}

/// Our children, from `/proc/self/task/*/children` (every thread's list).
fn own_children() -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| text.split_ascii_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .map(Pid::from_raw)
        .collect()
}

/// What CMD's process does between fork and exec: restore the signal mask, die with us.
fn after_fork(previous_mask: &SigSet, parent: Pid) -> std::io::Result<()> {
    previous_mask.thread_set_mask()?;
    // If we die (even by SIGKILL), CMD must not go on running without the locks.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid() != parent {
        // We died before the line above took effect. (From a raw errno: nothing here may
        // allocate, and `io::Error::other` boxes its message.)
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// CMD's exit status as ours: its code, or 128+N when signal N killed it (the shell convention).
fn exit_code(status: ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(code as u8);
    }
    match status.signal() {
        Some(signal) => ExitCode::from((128 + signal) as u8),
        None => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts allocations, so that a forked child can tell whether it allocated.
    struct Counting;

    static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

    // SAFETY: every call is passed on unchanged to the system allocator; counting has no effect
    // on the memory handed out.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
            // SAFETY: the caller's contract is System's contract.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above; `ptr` came from `alloc`, which is System's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `after_fork` in a forked child, as `pre_exec` does, and returns how many allocations
    /// it made there: in a multi-threaded parent, another thread may hold the allocator's lock at
    /// the fork, and the child would deadlock on its first allocation.
    fn allocations_in_a_forked_child(parent: Pid) -> usize {
        let mask = SigSet::empty();
        // SAFETY: the child only calls `after_fork` (the code under test), reads an atomic and
        // `_exit`s; the parent waits for it.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let before = ALLOCATIONS.load(Ordering::SeqCst);
                let result = after_fork(&mask, parent);
                let made = ALLOCATIONS.load(Ordering::SeqCst) - before;
                let code = if result.is_ok() { made } else { made + 100 };
                // SAFETY: _exit ends the child without running the parent's destructors.
                unsafe { libc::_exit(code.min(200) as i32) }
            }
            nix::unistd::ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => (code as usize) % 100,
                other => panic!("the child did not exit normally: {other:?}"),
            },
        }
    }

    #[test]
    fn nothing_allocates_between_fork_and_exec_even_when_the_parent_is_gone() {
        // The parent's pid as the child sees it: all goes well.
        assert_eq!(allocations_in_a_forked_child(nix::unistd::getpid()), 0);
        // A parent pid that is not the child's parent: the "lifeline lock died" error path.
        assert_eq!(allocations_in_a_forked_child(Pid::from_raw(1)), 0);
    }
}
