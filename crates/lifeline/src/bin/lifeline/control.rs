//! `lifeline restart` and `lifeline status`: talk to a service's restart socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `lifeline restart`.
#[derive(Debug, clap::Args)]
pub(crate) struct RestartArgs {
    /// The service's control socket.
    #[arg(long)]
    socket: PathBuf,
    /// Give up waiting for the answer after this long.
    #[arg(long, value_parser = crate::parse_duration)]
    timeout: Option<Duration>,
}

/// Arguments of `lifeline status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The service's control socket.
    #[arg(long)]
    socket: PathBuf,
}

pub(crate) fn restart(args: RestartArgs) -> anyhow::Result<ExitCode> {
    drop(args);
    anyhow::bail!("lifeline restart is not implemented yet")
}

pub(crate) fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    drop(args);
    anyhow::bail!("lifeline status is not implemented yet")
}
