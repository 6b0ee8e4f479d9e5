//! `lifeline supervise`: run a command and keep it running.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    #[arg(long, value_parser = crate::parse_duration)]
    watchdog: Option<Duration>,
    /// Give up after N failures within the --within window.
    #[arg(long, requires = "within")]
    max_failures: Option<u32>,
    /// The window for --max-failures.
    #[arg(long, value_parser = crate::parse_duration, requires = "max_failures")]
    within: Option<Duration>,
    /// The command to supervise.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    drop(args);
    anyhow::bail!("lifeline supervise is not implemented yet")
}
