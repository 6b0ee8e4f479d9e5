//! `lifeline lock`: hold directory locks while a command runs.
//!
//! Contract (DESIGN.md): every DIR's lock is held while CMD runs; the exit status is CMD's
//! (128+N when a signal N killed it); a DIR held elsewhere prints one line naming it and the
//! holder's pid and exits 75. CMD inherits no lock descriptor (they are close-on-exec), so the
//! locks live exactly as long as this process: SIGTERM, SIGINT and the other terminating signals
//! are forwarded to CMD instead of ending us early, and CMD gets SIGKILL if this process dies
//! anyway (it must never run unlocked).

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
            eprintln!("lifeline: {err}");
            return Ok(ExitCode::from(EXIT_LOCKED));
        }
        Err(err) => return Err(err.into()),
    };
    // `locks` is dropped (released) on every path out of here, including errors.
    let status = run_forwarding_signals(&cmd)?;
    if let Err(err) = locks.release() {
        // The locks are released regardless; a lock file left behind is harmless. (The CLI
        // has no `tracing` dependency of its own; library logs go through the subscriber.)
        eprintln!("lifeline: warning: {err}");
    }
    Ok(exit_code(status))
}

/// Runs `cmd` to completion, forwarding [`FORWARDED`] signals sent to us (by `kill`, systemd,
/// a supervisor) to it.
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
        let parent = nix::unistd::getpid();
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe system calls (sigprocmask, prctl, getppid); it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                previous_mask.thread_set_mask()?;
                // If we die (even by SIGKILL), CMD must not go on running without the locks.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if nix::unistd::getppid() != parent {
                    // We died before the line above took effect.
                    return Err(std::io::Error::other("lifeline lock exited"));
                }
                Ok(())
            });
        }
        let mut child = command.spawn().with_context(|| format!("cannot run {program}"))?;
        let child_pid = Pid::from_raw(child.id() as i32);
        loop {
            if let Some(status) = child.try_wait().context("cannot wait for the command")? {
                return Ok(status);
            }
            let info = match signals.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) | Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err).context("cannot read signals"),
            };
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else { continue };
            if signal == Signal::SIGCHLD || info.ssi_code == libc::SI_KERNEL {
                continue;
            }
            // An error is ESRCH: CMD is exiting, and its status arrives with the next SIGCHLD.
            let _ = nix::sys::signal::kill(child_pid, signal);
        }
    })();
    // Restore the mask (and the default disposition of pending signals' delivery) for whatever
    // runs after us in this process; pending forwarded signals were consumed by the signalfd.
    if let Err(err) = previous_mask.thread_set_mask() {
        eprintln!("lifeline: warning: cannot restore the signal mask: {err}");
    }
    result
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
