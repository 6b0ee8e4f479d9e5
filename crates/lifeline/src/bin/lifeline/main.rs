//! The `lifeline` command-line tool: lock directories, check certificates, restart, inspect and
//! stop a running service, and supervise a process. The flags, output and exit codes are a contract
//! that operators' scripts depend on (see DESIGN.md).

mod args;
mod cert;
mod control;
mod exit;
mod generate;
mod lock;
mod stop;
mod supervise;

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

/// Keep long-running Unix services alive and serving.
#[derive(Debug, Parser)]
#[command(name = "lifeline", version, about, propagate_version = true, after_help = exit::help())]
struct Cli {
    #[command(flatten)]
    verbosity: Verbosity,
    #[command(subcommand)]
    command: Command,
}

/// `-v` / `-q`: the level of the log lines on stderr (the one-line error that ends a command is
/// printed whatever the level).
#[derive(Debug, clap::Args)]
struct Verbosity {
    /// More log lines on stderr: -v info, -vv debug, -vvv trace (default: warnings and errors;
    /// overrides `RUST_LOG`).
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "quiet")]
    verbose: u8,
    /// Fewer log lines on stderr: -q errors only, -qq none (overrides `RUST_LOG`).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    quiet: u8,
}

impl Verbosity {
    /// The filter the flags ask for; `None` without either flag (then `RUST_LOG`, else `warn`).
    fn filter(&self) -> Option<&'static str> {
        match (self.verbose, self.quiet) {
            (0, 0) => None,
            (0, 1) => Some("error"),
            (0, _) => Some("off"),
            (1, _) => Some("info"),
            (2, _) => Some("debug"),
            _ => Some("trace"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hold every DIR's lock while CMD runs; exit with CMD's status (75 if a DIR is held elsewhere).
    #[command(after_help = "\
Examples:
  lifeline lock /var/lib/app -- app migrate
  lifeline lock --wait 30s /srv/a /srv/b -- rsync -a /srv/a/ /srv/b/

Exit status: CMD's (128+N when signal N killed it); 75 when a DIR is locked elsewhere.")]
    Lock(lock::Args),
    /// Run CMD and keep it running; SIGTERM/SIGINT stop it gracefully.
    #[command(after_help = "\
Examples:
  lifeline supervise --pidfile /run/app.pid -- /usr/local/bin/app --serve
  lifeline supervise --notify --watchdog 30s --max-failures 5 --within 1m -- app
  lifeline supervise --state /var/lib/app/supervise.json -- app
  lifeline supervise --control /run/app/supervisor.sock --probe liveness:http://127.0.0.1:8080/ -- app

Exit status: 0 after a stop by SIGTERM/SIGINT; 1 when it gave up; 75 when another supervisor
holds the --state file.")]
    Supervise(Box<supervise::Args>),
    /// Certificate tools.
    #[command(
        subcommand,
        after_help = "\
Examples:
  lifeline cert check --cert /etc/app/cert.pem --key /etc/app/key.pem --checkend 30d"
    )]
    Cert(cert::Command),
    /// Ask a running service for a zero-downtime restart; print the new pid.
    #[command(after_help = "\
Examples:
  lifeline restart --socket /run/app/control.sock
  lifeline restart --socket /run/app/control.sock --timeout 2m

Exit status: 0 restarted (the new pid on stdout); 1 the restart failed (the reason on stderr);
69 no service at the socket.")]
    Restart(control::RestartArgs),
    /// Print a running service's status (one JSON object, or text with --format text).
    #[command(after_help = "\
Examples:
  lifeline status --socket /run/app/control.sock
  lifeline status --socket /run/app/control.sock --format text
  lifeline status --socket /run/app/supervisor.sock      (lifeline supervise --control)

Exit status: 0 printed; 3 a supervisor answered but its service is not up; 69 no service at the
socket; 1 any other failure.")]
    Status(control::StatusArgs),
    /// Send a stop signal to PID and wait until it has exited (`ExecStop=lifeline stop $MAINPID`).
    #[command(after_help = "\
Examples:
  lifeline stop 4242
  lifeline stop --signal SIGINT --timeout 90s 4242
  ExecStop=/usr/local/bin/lifeline stop $MAINPID      (in a systemd unit)
  lifeline stop --socket /run/app/supervisor.sock     (a supervisor's service)

Exit status: 0 once it has exited (or when there is no such process); 1 when it still runs after
--timeout.")]
    Stop(stop::Args),
}

fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    // The hidden `generate` subcommand is known to the parser only (see generate.rs).
    let matches = Cli::command().subcommand(generate::command()).get_matches();
    if let Some((generate::NAME, matches)) = matches.subcommand() {
        return finish(generate::run(matches));
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    init_tracing(cli.verbosity.filter());
    let result = match cli.command {
        Command::Lock(args) => lock::run(args),
        Command::Supervise(args) => supervise::run(*args),
        Command::Cert(cmd) => cert::run(cmd),
        Command::Restart(args) => control::restart(args),
        Command::Status(args) => control::status(args),
        Command::Stop(args) => stop::run(&args),
    };
    finish(result)
}

/// The exit status of a command's result; an error is printed on one line first.
fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line, no backtrace: operators' scripts read this.
            eprintln!("lifeline: {}", chain(err));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `-v`/`-q` when given, else by `RUST_LOG` (default: warnings
/// and errors only).
fn init_tracing(flags: Option<&str>) {
    let filter = match flags {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    };
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

/// An error and its causes on one line, `: `-separated (anyhow's `{:#}`). The libraries' messages
/// never repeat their source, so each cause appears once; whitespace inside a cause (a server's
/// words) is folded so that scripts get exactly one line.
pub(crate) fn chain(err: impl Into<anyhow::Error>) -> String {
    format!("{:#}", err.into()).split_whitespace().collect::<Vec<_>>().join(" ")
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
