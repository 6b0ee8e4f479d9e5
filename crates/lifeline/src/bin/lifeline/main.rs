//! The `lifeline` command-line tool: lock directories, check certificates, restart, inspect and
//! stop a running service, and supervise a process. The flags, output and exit codes are a contract
//! that operators' scripts depend on (see DESIGN.md).

mod args;
mod cert;
mod control;
mod lock;
mod stop;
mod supervise;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keep long-running Unix services alive and serving.
#[derive(Debug, Parser)]
#[command(name = "lifeline", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hold every DIR's lock while CMD runs; exit with CMD's status (75 if a DIR is held elsewhere).
    Lock(lock::Args),
    /// Run CMD and keep it running; SIGTERM/SIGINT stop it gracefully.
    Supervise(Box<supervise::Args>),
    /// Certificate tools.
    #[command(subcommand)]
    Cert(cert::Command),
    /// Ask a running service for a zero-downtime restart; print the new pid.
    Restart(control::RestartArgs),
    /// Print a running service's status as one JSON object.
    Status(control::StatusArgs),
    /// Send a stop signal to PID and wait until it has exited (`ExecStop=lifeline stop $MAINPID`).
    Stop(stop::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Lock(args) => lock::run(args),
        Command::Supervise(args) => supervise::run(*args),
        Command::Cert(cmd) => cert::run(cmd),
        Command::Restart(args) => control::restart(args),
        Command::Status(args) => control::status(args),
        Command::Stop(args) => stop::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line, no backtrace: operators' scripts read this.
            eprintln!("lifeline: {}", error_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings and errors only).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only for a person at a terminal: log files and scripts get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        // A line that cannot be written (stderr is a closed pipe) is dropped: by default the
        // subscriber reports that with `eprintln!`, which panics — and a panic in the supervisor's
        // task ended supervision half-way through a stop, leaving the service running.
        .log_internal_errors(false)
        .init();
}

/// An error and its causes on one line. A cause whose text is already in the line is skipped:
/// the libraries' messages include the OS error they also return as their source.
fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Writes one line to stderr, like `eprintln!` but never panicking: a closed stderr must not end
/// a process that still has a service or a lock to look after.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
pub(crate) use say;
