//! `lifeline cert check`: validate a certificate/key pair exactly as certwatch would.

use std::path::PathBuf;
use std::process::ExitCode;

/// `lifeline cert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Validate a cert/key pair as certwatch would; exit 0 if it would be accepted, 1 otherwise.
    Check {
        /// PEM certificate chain, leaf first.
        #[arg(long)]
        cert: PathBuf,
        /// PEM private key (PKCS#8, PKCS#1 or SEC1).
        #[arg(long)]
        key: PathBuf,
    },
}

pub(crate) fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    drop(cmd);
    anyhow::bail!("lifeline cert check is not implemented yet")
}
