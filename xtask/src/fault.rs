//! `cargo xtask fault`: the cross-crate fault-injection suite (`tests/src/bin/lifeline-fault.rs`)
//! against the real `lifeline` CLI and example server; one PASS/FAIL/SKIP line per scenario.
//! Part of `cargo xtask ci`.

use std::process::Command;

use anyhow::{Context, bail};

use crate::bench::target_dir;
use crate::project_root;

/// Arguments of `cargo xtask fault`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only the scenarios whose name contains this.
    #[arg(long)]
    pub(crate) only: Option<String>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    // The driver finds its fixture next to its own executable.
    crate::demo::build_stage(&["lifeline-fault", "fault-lock-holder"])?;
    let debug = target_dir().join("debug");
    let mut command = Command::new(debug.join("lifeline-fault"));
    command
        .arg("--lifeline")
        .arg(debug.join("lifeline"))
        .arg("--server")
        .arg(debug.join("examples/https-server"))
        .current_dir(project_root());
    if let Some(only) = &args.only {
        command.args(["--only", only]);
    }
    let status = command.status().context("run the fault suite")?;
    if !status.success() {
        bail!("a fault scenario failed (see FAIL above)");
    }
    Ok(())
}
