//! `lifeline supervise`: run a command and keep it running.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use keepalive::{Backoff, Command, Config, Finished, Notify, RestartOn, Signal, StopOutcome, Supervisor};
use tokio::signal::unix::{SignalKind, signal};

/// Arguments of `lifeline supervise`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Keep the service's current main pid in this file.
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// Time between the stop signal and SIGKILL.
    #[arg(long, value_parser = crate::parse_duration, default_value = "5s")]
    grace: Duration,
    /// Signal that asks the service to stop.
    #[arg(long, default_value = "SIGTERM")]
    stop_signal: String,
    /// Serve `NOTIFY_SOCKET`: `READY=1` marks the service started, `MAINPID=` is followed.
    #[arg(long)]
    notify: bool,
    /// Restart the service when it does not send WATCHDOG=1 this often.
    #[arg(long, value_parser = crate::parse_duration, requires = "notify")]
    watchdog: Option<Duration>,
    /// Give up after N failures within the --within window.
    #[arg(long, requires = "within")]
    max_failures: Option<u32>,
    /// The window for --max-failures.
    #[arg(long, value_parser = crate::parse_duration, requires = "max_failures")]
    within: Option<Duration>,
    /// Which exits are restarted: every exit (a service runs forever), only failures, or none.
    #[arg(long, value_enum, default_value_t = Restart::Always)]
    restart: Restart,
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
    let stop_signal: Signal = args.stop_signal.parse()?;
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
        pid_file: args.pidfile,
        notify: if args.notify { Notify::PrivateDir } else { Notify::Off },
        watchdog: args.watchdog,
        // Orphans of the service are re-parented to us and reaped; a handover successor becomes
        // our child once its parent exits, so its exit status stays known.
        subreaper: true,
        ..Config::default()
    };
    let (program, rest) = args.cmd.split_first().context("no command given")?;
    let command = Command::new(program.clone()).args(rest.iter().cloned());
    let display = command.display();

    // Handlers first: a SIGTERM right after the start must stop the service, not kill only us.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;

    let mut supervised = Supervisor::new(command).config(config).policy(policy).spawn()?;
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
                    eprintln!("lifeline: cannot forward {sig}: {err}");
                }
            }
            Action::Stop => {
                // A stop that needed SIGKILL is still a stop: the service is gone, exit 0 (the
                // library has logged a warning).
                let _outcome: StopOutcome = supervised.stop().await?;
                return Ok(ExitCode::SUCCESS);
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

enum Action {
    Finished(Finished),
    Stop,
    Forward(Signal),
}
