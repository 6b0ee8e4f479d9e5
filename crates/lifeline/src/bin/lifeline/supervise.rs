//! `lifeline supervise`: run a command and keep it running.
//!
//! Beyond DESIGN.md's contract: `--state FILE` keeps a snapshot of the service so that a new
//! supervisor adopts it (instead of starting a second instance) after this one was killed, and
//! `--die-with-supervisor` makes the service go down with the supervisor instead, and
//! `--start-timeout` restarts a `--notify` service that never sends `READY=1`.
//!
//! Issue 16 and 12 added: retired generations under control (`--drain-deadline`,
//! `--max-retired`), rollbacks followed (`--rollback-grace`), readiness for s6/dinit
//! (`--ready-fd`), the supervisor's own control socket (`--control`, `--handover-signal`), its
//! own service manager told `READY=1`/`STATUS=`/`STOPPING=1` and its watchdog fed (when
//! `NOTIFY_SOCKET` is set), and a container-init mode (`--init`, or automatically as PID 1).

mod control;
mod manager;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use dirlock::{DirLock, LockOptions};
use keepalive::{
    Backoff, Command, Config, Error, ExitStatus, Finished, Lifetime, Notify, NotifyConfig, Readiness,
    RestartMethod, RestartOn, Signal, Snapshot, StopOutcome, Supervised, Supervisor,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use control::{ControlServer, StopReply};
use manager::Manager;

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
    /// Default: always; with --init, never (tini's behaviour: the container's exit is the
    /// service's).
    #[arg(long, value_enum)]
    restart: Option<Restart>,
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
    /// Stop a previous main process (retired by a MAINPID= handover) still draining this long
    /// after it was retired: --stop-signal to it (and its process group), SIGKILL after --grace.
    /// HAProxy's `hard-stop-after`. Default: let it drain for as long as it takes.
    #[arg(long, value_parser = crate::args::parse_duration)]
    drain_deadline: Option<Duration>,
    /// At most N retired main processes may run at once: a handover beyond that stops the
    /// oldest (as at --drain-deadline). HAProxy's `mworker-max-reloads` (the oldest worker is
    /// ended; the reload itself is never refused). Default: no cap.
    #[arg(long, value_name = "N")]
    max_retired: Option<usize>,
    /// After the main process exits, how long a retired process still running may take the
    /// service back (MAINPID= naming itself: a predecessor in its rollback window) before the
    /// exit counts as a crash and the command is restarted. Only waited while a retired process
    /// runs.
    #[arg(long, value_parser = crate::args::parse_duration, default_value = "2s")]
    rollback_grace: Duration,
    /// Write a newline to file descriptor N once the service is ready, then close it: s6's
    /// `notification-fd` and dinit's `ready-notification = pipefd:N`. N must be open and 3 or
    /// more; the service does not inherit it.
    #[arg(long, value_name = "N")]
    ready_fd: Option<i32>,
    /// Serve a control socket (mode 0600, our uid only) at SOCKET: `lifeline status --socket`
    /// (exit 0 when the service runs and is ready, 3 when not), `lifeline restart --socket` and
    /// `lifeline stop --socket` — supervisorctl's status, restart and stop.
    #[arg(long, value_name = "SOCKET")]
    control: Option<PathBuf>,
    /// With --notify: a restart through --control sends SIG to the main process and waits for
    /// its zero-downtime handover (MAINPID= naming a ready successor), for services that restart
    /// themselves on a signal (`lifeline::service` does on SIGHUP). Without it a restart stops
    /// the service and starts it again, as `systemctl restart` does.
    #[arg(long, value_name = "SIG", requires = "notify")]
    handover_signal: Option<String>,
    /// A startup, readiness or liveness probe (repeat for each; at most one of each role), for
    /// programs that speak no notify protocol — Kubernetes' probes: `ROLE[,KEY=VALUE…]:TARGET`,
    /// e.g. `startup:http://127.0.0.1:8080/healthz`,
    /// `liveness,interval=5s,timeout=1s,failures=3:http://127.0.0.1:8080/healthz`,
    /// `readiness,status=200-299:https://localhost:8443/ready` (certificate not verified),
    /// `liveness:tcp:127.0.0.1:5432`, `readiness:exec:/usr/local/bin/check --quick` (no shell).
    /// A failed startup probe fails the start (backoff applies), a failed liveness probe restarts
    /// the program, a failed readiness probe makes it not ready.
    #[arg(long = "probe", value_name = "PROBE", value_parser = parse_probe)]
    probes: Vec<keepalive::Probe>,
    /// Container-init mode, as tini (chosen automatically when lifeline runs as PID 1): every
    /// orphan is reaped; SIGTERM and SIGINT stop the service with that signal, SIGHUP, SIGUSR1,
    /// SIGUSR2 and SIGWINCH are forwarded to it; lifeline exits with the service's status (128+N
    /// when a signal N ended it). --restart defaults to never.
    #[arg(long)]
    init: bool,
    /// The command to supervise.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// How long a restart through --control waits for the new main process to be ready, unless
/// --start-timeout says otherwise: shorter than `lifeline restart`'s default wait (60 s), so
/// that its reason reaches the client.
const RESTART_TIMEOUT: Duration = Duration::from_secs(50);

/// Exit status of `lifeline supervise --init` for a service whose status is unknown (it was not
/// our child) or that survived SIGKILL.
const EXIT_UNKNOWN: u8 = 1;

/// `--restart` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Restart {
    Always,
    OnFailure,
    Never,
}

pub(crate) fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    let stop_signal = crate::args::parse_signal(&args.stop_signal)?;
    // PID 1 (a container's entrypoint) must reap orphans and pass signals on: init mode.
    args.init |= std::process::id() == 1;
    // One thread: a supervisor spends its life asleep in epoll; this keeps it small.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(supervise(args, stop_signal))
}

/// The restart policy and the supervisor's configuration the flags ask for.
fn policy_and_config(args: &Args, stop_signal: Signal) -> anyhow::Result<(Backoff, Config)> {
    let restart = args.restart.unwrap_or(if args.init { Restart::Never } else { Restart::Always });
    let mut policy = Backoff::default().with_restart(match restart {
        Restart::Always => RestartOn::Always,
        Restart::OnFailure => RestartOn::Failure,
        Restart::Never => RestartOn::Never,
    });
    if args.max_retired == Some(0) {
        bail!("--max-retired 0: a handover always retires one process; use 1 or more");
    }
    if let (Some(failures), Some(within)) = (args.max_failures, args.within) {
        policy = policy.with_give_up(failures, within);
    }
    // A watchdog needs a socket to be fed through; without --notify nobody awaits READY=1 (and
    // clap refuses --start-timeout without --notify).
    let notify = if args.notify {
        let mut on = NotifyConfig::new().readiness(Readiness::Notified { start_timeout: args.start_timeout });
        on.watchdog = args.watchdog;
        Notify::On(on)
    } else if let Some(interval) = args.watchdog {
        Notify::On(NotifyConfig::new().readiness(Readiness::Started).watchdog(interval))
    } else {
        Notify::Off
    };
    let mut config = Config::default()
        .stop_signal(stop_signal)
        .grace(args.grace)
        .lifetime(if args.die_with_supervisor {
            Lifetime::DieWithSupervisor { signal: stop_signal }
        } else {
            Lifetime::OutliveSupervisor
        })
        .notify(notify)
        // Orphans of the service are re-parented to us and reaped; a handover successor becomes
        // our child once its parent exits, so its exit status stays known.
        .subreaper(true)
        // This process exists only for the service: every child is its, every one is reaped
        // (also orphans that called setsid()), and a stop ends only when none is left.
        .dedicated(true)
        .rollback_grace(args.rollback_grace)
        .probes(args.probes.clone())
        // HTTPS probes: this program's choice of provider (the library never picks one).
        .probe_tls_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()));
    config.pid_file.clone_from(&args.pidfile);
    config.state_file.clone_from(&args.state);
    config.drain_deadline = args.drain_deadline;
    config.max_retired = args.max_retired;
    Ok((policy, config))
}

async fn supervise(args: Args, stop_signal: Signal) -> anyhow::Result<ExitCode> {
    let (policy, config) = policy_and_config(&args, stop_signal)?;
    let handover_signal = args.handover_signal.as_deref().map(crate::args::parse_signal).transpose()?;
    // Our own service manager (systemd's NOTIFY_SOCKET, s6's --ready-fd): checked before anything
    // starts, so a bad --ready-fd is a usage error with nothing left running.
    let mut manager = Manager::new(args.ready_fd)?;
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
    // Only a container's init passes SIGWINCH on (a terminal resized); otherwise it is ignored.
    let mut winch = if args.init { Some(signal(SignalKind::window_change())?) } else { None };

    let supervisor = || Supervisor::new(command.clone()).config(config.clone()).policy(policy.clone());
    let mut supervised = match &args.state {
        Some(state) => adopt_or_spawn(state, supervisor, &display, args.die_with_supervisor)?,
        None => supervisor().spawn()?,
    };
    let mut status = supervised.status_watch();
    manager.on_status(&status.current());
    let (stop_requests, mut stops) = mpsc::channel::<StopReply>(16);
    let control = match &args.control {
        Some(path) => {
            let method = handover_signal.map_or(RestartMethod::StopStart, RestartMethod::Handover);
            let timeout = args.start_timeout.unwrap_or(RESTART_TIMEOUT);
            let started =
                ControlServer::start(path, &supervised.controller(), method, timeout, stop_requests);
            match started {
                Ok(server) => Some(server),
                // Nothing may be left running when we fail.
                Err(err) => return supervised.stop().await.map_err(anyhow::Error::from).and(Err(err)),
            }
        }
        None => None,
    };
    let mut ping = manager.ping_interval().map(tokio::time::interval);
    let mut stop_replies: Vec<StopReply> = Vec::new();
    let code = loop {
        let action = tokio::select! {
            finished = supervised.wait() => Action::Finished(finished),
            _ = term.recv() => Action::Stop(Signal::TERM),
            _ = int.recv() => Action::Stop(Signal::INT),
            _ = hup.recv() => Action::Forward(Signal::HUP),
            _ = usr1.recv() => Action::Forward(Signal::USR1),
            _ = usr2.recv() => Action::Forward(Signal::USR2),
            Some(()) = next_signal(winch.as_mut()) => Action::Forward(Signal::WINCH),
            Some(reply) = stops.recv() => {
                stop_replies.push(reply);
                Action::Stop(stop_signal)
            }
            changed = status.changed() => {
                if let Some(now) = changed {
                    manager.on_status(&now);
                }
                continue;
            }
            () = tick(ping.as_mut()) => {
                manager.ping();
                continue;
            }
        };
        match action {
            Action::Forward(sig) => {
                // (The `cli` feature has no tracing dependency; the library logs, this one line is ours.)
                if let Err(err) = supervised.signal(sig).await {
                    crate::say!("lifeline: cannot forward {sig}: {}", crate::chain(err));
                }
            }
            Action::Stop(received) => {
                manager.stopping();
                let main = supervised.pid();
                // In init mode the signal we got is the one the service gets (SIGINT stays
                // SIGINT, as tini forwards it); otherwise the configured --stop-signal.
                let outcome =
                    if args.init { supervised.stop_with(received).await? } else { supervised.stop().await? };
                for reply in stop_replies.drain(..) {
                    let _ = reply.send(Ok(main));
                }
                break stopped(outcome, args.init, &display);
            }
            Action::Finished(Finished::GaveUp { last, .. } | Finished::Done { last }) if args.init => {
                break Ok(init_exit_code(last));
            }
            Action::Finished(Finished::GaveUp { reason, last }) => {
                break Err(anyhow::anyhow!("gave up on `{display}`: {reason}; last exit: {last}"));
            }
            Action::Finished(Finished::Done { .. }) => break Ok(ExitCode::SUCCESS),
            Action::Finished(other) => {
                break Err(anyhow::anyhow!("supervisor of `{display}` ended unexpectedly: {other:?}"));
            }
        }
    };
    if let Some(control) = control {
        // The answers to stops go out before the socket file is removed.
        control.close().await;
    }
    code
}

/// `--probe` for clap: one line on a mistake.
fn parse_probe(text: &str) -> Result<keepalive::Probe, String> {
    text.parse::<keepalive::Probe>().map_err(|err| err.reason)
}

/// How `lifeline supervise` exits after a stop. A stop that needed SIGKILL is still a stop: the
/// service is gone, exit 0 (the library has logged a warning); exit 0 means nothing of it is left
/// running. In init mode: the service's status.
fn stopped(outcome: StopOutcome, init: bool, display: &str) -> anyhow::Result<ExitCode> {
    match outcome {
        StopOutcome::Stuck { survivors, .. } => {
            let pids: Vec<String> = survivors.iter().map(u32::to_string).collect();
            bail!(
                "stopped `{display}`, but pid {} survived SIGKILL (uninterruptible sleep?)",
                pids.join(", ")
            )
        }
        StopOutcome::Exited { status, .. } | StopOutcome::Killed { status, .. } if init => {
            Ok(init_exit_code(status))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The exit status of `lifeline supervise --init` for the service's: its code, or 128+N for a
/// signal N (the shell's and tini's convention).
fn init_exit_code(status: ExitStatus) -> ExitCode {
    match status {
        ExitStatus::Code(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_UNKNOWN)),
        ExitStatus::Signaled { signal, .. } => {
            ExitCode::from(u8::try_from(128 + signal.as_raw()).unwrap_or(EXIT_UNKNOWN))
        }
        _ => ExitCode::from(EXIT_UNKNOWN),
    }
}

/// The next delivery of an optional signal; never without one.
async fn next_signal(signal: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// The next tick of an optional interval; never without one.
async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
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
            crate::say!("lifeline: ignoring state file {shown}: {}; starting the command", crate::chain(err));
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
            crate::say!(
                "lifeline: ignoring stale state file {shown}: {}; starting the command",
                crate::chain(err)
            );
            Ok(supervisor().spawn()?)
        }
        Err(err) => Err(err).with_context(|| format!("cannot adopt pid {pid} from state file {shown}")),
    }
}

enum Action {
    Finished(Finished),
    /// Stop, on this signal (or a stop request: the --stop-signal).
    Stop(Signal),
    Forward(Signal),
}
