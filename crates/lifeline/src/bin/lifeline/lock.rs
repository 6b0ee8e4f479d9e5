//! `lifeline lock`: hold directory locks while a command runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `lifeline lock`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Wait up to this long for held locks (humantime: `500ms`, `5s`); default: fail at once.
    #[arg(long, value_parser = crate::parse_duration)]
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
    drop(args);
    anyhow::bail!("lifeline lock is not implemented yet")
}
