//! `lifeline supervise`: run a command and keep it running.
//!
//! Beyond DESIGN.md's contract: `--state FILE` keeps a snapshot of the service so that a new
//! supervisor adopts it (instead of starting a second instance) after this one was killed, and
//! `--die-with-supervisor` makes the service go down with the supervisor instead, and
//! `--start-timeout` restarts a `--notify` service that never sends `READY=1`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use dirlock::{DirLock, LockOptions};
use keepalive::{
    Backoff, Command, Config, Error, Finished, Lifetime, Notify, Readiness, RestartOn, Signal, Snapshot,
    StopOutcome, Supervised, Supervisor,
};
use tokio::signal::unix::{SignalKind, signal};

/// Exit status when another supervisor holds the state file (`EX_TEMPFAIL`, as `lifeline lock`).
const EXIT_LOCKED: u8 = 75;

/// Arguments of `lifeline supervise`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Keep the service's current main pid in this file.
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// Time between the stop signal and SIGKILL.
    #[arg(long, value_parser = crate::args::parse_duration, default_value = "5s")]
    grace: Duration,
    /// Signal that asks the service to stop.
    #[arg(long, default_value = "SIGTERM")]
    stop_signal: String,
    /// Serve `NOTIFY_SOCKET`: `READY=1` marks the service started, `MAINPID=` is followed.
    #[arg(long)]
    notify: bool,
    /// Restart the service when it does not send WATCHDOG=1 this often. Serves `NOTIFY_SOCKET`
    /// (with `WATCHDOG_USEC`) even without --notify; then the service counts as started at once.
    #[arg(long, value_parser = crate::args::parse_duration)]
    watchdog: Option<Duration>,
    /// With --notify: stop and restart the service (a failure for the restart policy) when it has
    /// not sent READY=1 this long after it was started. Default: wait for ever.
    #[arg(long, value_parser = crate::args::parse_duration, requires = "notify")]
    start_timeout: Option<Duration>,
    /// Give up after N failures within the --within window.
    #[arg(long, requires = "within")]
    max_failures: Option<u32>,
    /// The window for --max-failures.
    #[arg(long, value_parser = crate::args::parse_duration, requires = "max_failures")]
    within: Option<Duration>,
    /// Which exits are restarted: every exit (a service runs forever), only failures, or none.
    #[arg(long, value_enum, default_value_t = Restart::Always)]
    restart: Restart,
    /// Keep a snapshot of the service in FILE (JSON, replaced atomically); on start, adopt the
    /// process it names if it still runs (same boot, pid, start time and uid) instead of starting
    /// CMD. A stale snapshot is ignored; a FILE that is a symlink, not ours (or root's), or
    /// writable by group or others is refused. Removed on a clean stop. One supervisor per FILE
    /// (FILE.lock).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Send the service --stop-signal when the supervisor dies, even by SIGKILL (default: the
    /// service keeps running, for a new supervisor to adopt with --state).
    #[arg(long)]
    die_with_supervisor: bool,
    /// The command to supervise.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// `--restart` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Restart {
    Always,
    OnFailure,
    Never,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let stop_signal = crate::args::parse_signal(&args.stop_signal)?;
    // One thread: a supervisor spends its life asleep in epoll; this keeps it small.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(supervise(args, stop_signal))
}

async fn supervise(args: Args, stop_signal: Signal) -> anyhow::Result<ExitCode> {
    let mut policy = Backoff::default().with_restart(match args.restart {
        Restart::Always => RestartOn::Always,
        Restart::OnFailure => RestartOn::Failure,
        Restart::Never => RestartOn::Never,
    });
    if let (Some(failures), Some(within)) = (args.max_failures, args.within) {
        policy = policy.with_give_up(failures, within);
    }
    let config = Config {
        stop_signal,
        grace: args.grace,
        lifetime: if args.die_with_supervisor {
            Lifetime::DieWithSupervisor { signal: stop_signal }
        } else {
            Lifetime::OutliveSupervisor
        },
        pid_file: args.pidfile.clone(),
        state_file: args.state.clone(),
        // A watchdog needs a socket to be fed through; without --notify nobody awaits READY=1.
        notify: if args.notify || args.watchdog.is_some() { Notify::PrivateDir } else { Notify::Off },
        readiness: if args.notify { Readiness::Notified } else { Readiness::Started },
        watchdog: args.watchdog,
        start_timeout: args.start_timeout,
        // Orphans of the service are re-parented to us and reaped; a handover successor becomes
        // our child once its parent exits, so its exit status stays known.
        subreaper: true,
        // This process exists only for the service: every child is its, every one is reaped
        // (also orphans that called setsid()), and a stop ends only when none is left.
        dedicated: true,
        ..Config::default()
    };
    let (program, rest) = args.cmd.split_first().context("no command given")?;
    let command = Command::new(program.clone()).args(rest.iter().cloned());
    let display = command.display();
    // Held until we exit (close-on-exec: the service does not inherit it); the kernel drops it
    // if we are killed, so a new supervisor can take over at once.
    let _state_lock = match &args.state {
        Some(state) => match lock_state(state)? {
            Some(lock) => Some(lock),
            None => return Ok(ExitCode::from(EXIT_LOCKED)),
        },
        None => None,
    };

    // Handlers first: a SIGTERM right after the start must stop the service, not kill only us.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;

    let supervisor = || Supervisor::new(command.clone()).config(config.clone()).policy(policy.clone());
    let mut supervised = match &args.state {
        Some(state) => adopt_or_spawn(state, supervisor, &display, args.die_with_supervisor)?,
        None => supervisor().spawn()?,
    };
    loop {
        let action = tokio::select! {
            finished = supervised.wait() => Action::Finished(finished),
            _ = term.recv() => Action::Stop,
            _ = int.recv() => Action::Stop,
            _ = hup.recv() => Action::Forward(Signal::HUP),
            _ = usr1.recv() => Action::Forward(Signal::USR1),
            _ = usr2.recv() => Action::Forward(Signal::USR2),
        };
        match action {
            Action::Forward(sig) => {
                // (The `cli` feature has no tracing dependency; the library logs, this one line is ours.)
                if let Err(err) = supervised.signal(sig).await {
                    crate::say!("lifeline: cannot forward {sig}: {err}");
                }
            }
            Action::Stop => {
                // A stop that needed SIGKILL is still a stop: the service is gone, exit 0 (the
                // library has logged a warning). Exit 0 means nothing of it is left running.
                match supervised.stop().await? {
                    StopOutcome::Stuck { survivors, .. } => {
                        let pids: Vec<String> = survivors.iter().map(u32::to_string).collect();
                        anyhow::bail!(
                            "stopped `{display}`, but pid {} survived SIGKILL (uninterruptible sleep?)",
                            pids.join(", ")
                        )
                    }
                    _ => return Ok(ExitCode::SUCCESS),
                }
            }
            Action::Finished(Finished::GaveUp { reason, last }) => {
                anyhow::bail!("gave up on `{display}`: {reason}; last exit: {last}")
            }
            Action::Finished(Finished::Done { .. }) => return Ok(ExitCode::SUCCESS),
            Action::Finished(other) => {
                anyhow::bail!("supervisor of `{display}` ended unexpectedly: {other:?}")
            }
        }
    }
}

/// Locks `FILE.lock` beside the state file, so that two supervisors never adopt the same
/// service. `None` (after a message) when another supervisor holds it.
fn lock_state(state: &Path) -> anyhow::Result<Option<DirLock>> {
    let dir = match state.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = state.file_name().with_context(|| format!("--state {}: not a file name", state.display()))?;
    let mut lock_name = name.to_os_string();
    lock_name.push(".lock");
    match DirLock::acquire_with(dir, &LockOptions::new().file_name(lock_name)) {
        Ok(lock) => Ok(Some(lock)),
        Err(err) if err.is_contention() => {
            let holder = err.holder_pid().map_or_else(String::new, |pid| format!(" (pid {pid})"));
            crate::say!("lifeline: state file {} is in use by another supervisor{holder}", state.display());
            Ok(None)
        }
        Err(err) => Err(err).with_context(|| format!("cannot lock state file {}", state.display())),
    }
}

/// Adopts the service the state file names if it still runs; otherwise (no file, or a stale
/// snapshot: said on stderr) starts the command.
fn adopt_or_spawn(
    state: &Path,
    supervisor: impl Fn() -> Supervisor,
    display: &str,
    die_with_supervisor: bool,
) -> anyhow::Result<Supervised> {
    let shown = state.display();
    let snapshot = match Snapshot::read(state) {
        Ok(snapshot) => snapshot,
        Err(Error::ReadSnapshot { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(supervisor().spawn()?);
        }
        // Whoever could write it could make us adopt (and later signal) any process: refuse, and
        // start nothing (a second instance beside a running one is no better).
        Err(err @ Error::UntrustedFile { .. }) => return Err(err.into()),
        Err(err) => {
            crate::say!("lifeline: ignoring state file {shown}: {err}; starting the command");
            return Ok(supervisor().spawn()?);
        }
    };
    let pid = snapshot.pid;
    match supervisor().adopt(&snapshot) {
        Ok(supervised) => {
            let mut line = format!("lifeline: adopted the running service (pid {pid}) from {shown}");
            let started_as = snapshot.command.display();
            if started_as != display {
                let _ = write!(line, " (it was started as `{started_as}`; restarts run `{display}`)");
            }
            if die_with_supervisor {
                // PR_SET_PDEATHSIG can only be set by a process on itself before we exec it.
                line.push_str("; not our child, it will not die with this supervisor");
            }
            crate::say!("{line}");
            Ok(supervised)
        }
        Err(
            err @ (Error::NotRunning { .. }
            | Error::PidReused { .. }
            | Error::OtherBoot { .. }
            | Error::OtherUid { .. }),
        ) => {
            crate::say!("lifeline: ignoring stale state file {shown}: {err}; starting the command");
            Ok(supervisor().spawn()?)
        }
        Err(err) => Err(err).with_context(|| format!("cannot adopt pid {pid} from state file {shown}")),
    }
}

enum Action {
    Finished(Finished),
    Stop,
    Forward(Signal),
}
