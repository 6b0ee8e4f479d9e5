//! Project automation, run as `cargo xtask <command>`: `ci` runs everything CI runs, `demo` shows
//! the whole system working, `bench` measures it against baselines, `fault` attacks it, `man`
//! and `completions` generate the CLI's man pages and shell completions.

mod bench;
mod ci;
mod demo;
mod fault;
mod generate;
mod svg;
mod tools;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "lifeline project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything CI runs: fmt, clippy, tests, per-crate builds, docs, cargo-deny, faults.
    Ci(ci::Args),
    /// Build everything and walk through every mechanism against a live server.
    Demo(demo::Args),
    /// Run the benchmarks against their baselines and write target/bench/report.md.
    Bench(bench::Args),
    /// The cross-crate fault-injection suite.
    Fault(fault::Args),
    /// Install what `ci` needs and a fresh machine lacks (`ci` does this first), or with
    /// --no-install only say how to get it.
    Tools(tools::Args),
    /// The `lifeline` CLI's man pages, in target/man.
    Man(generate::Args),
    /// The `lifeline` CLI's shell completions (bash, zsh, fish, elvish, PowerShell), in target/completions.
    Completions(generate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ci(args) => ci::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fault(args) => fault::run(&args),
        Command::Tools(args) => tools::ensure(!args.no_install),
        Command::Man(args) => generate::man(&args),
        Command::Completions(args) => generate::completions(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}
