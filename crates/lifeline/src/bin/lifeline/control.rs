//! `lifeline restart` and `lifeline status`: talk to a service's restart socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use restart_socket::{Client, Details, Error};

/// How long `lifeline restart` waits for the outcome without `--timeout`: longer than a
/// handover's default readiness timeout (30 s), so its failure reason gets through.
const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// Exit status for a missing or dead socket (nothing is serving at the path).
const EXIT_NO_SERVER: u8 = 2;

/// Exit status of `lifeline status` when a supervisor answers but its service is not up
/// (backing off, starting, stopping): LSB's "program is not running", as `systemctl status`.
const EXIT_NOT_UP: u8 = 3;

/// Arguments of `lifeline restart`.
#[derive(Debug, clap::Args)]
pub(crate) struct RestartArgs {
    /// The service's control socket.
    #[arg(long)]
    socket: PathBuf,
    /// Give up waiting for the answer after this long (default: 60s). A restart the service has
    /// begun still runs to completion.
    #[arg(long, value_parser = crate::args::parse_duration)]
    timeout: Option<Duration>,
}

/// Arguments of `lifeline status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The service's control socket.
    #[arg(long)]
    socket: PathBuf,
}

/// Prints the new pid (exit 0), or the reason the restart failed (stderr, exit 1); a missing or
/// dead socket exits 2.
pub(crate) fn restart(args: RestartArgs) -> anyhow::Result<ExitCode> {
    let RestartArgs { socket, timeout } = args;
    let timeout = timeout.unwrap_or(DEFAULT_RESTART_TIMEOUT);
    let outcome = runtime()?.block_on(async {
        let mut client = Client::connect(&socket).await?;
        client.restart(timeout).await
    });
    match outcome {
        Ok(pid) => {
            println!("{pid}");
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::RestartFailed { reason }) => {
            eprintln!("lifeline: restart failed: {}", one_line(&reason));
            Ok(ExitCode::FAILURE)
        }
        Err(err) => failure(&err),
    }
}

/// Prints the status as one JSON object on stdout (exit 0); a missing or dead socket exits 2.
/// A supervisor's socket (`lifeline supervise --control`) answers in detail: the same keys and
/// more (`state`, `ready`, `restarts`, `last_exit`, `backoff_until`, `uptime_ms`, …), and exit 3
/// when its service is not up — a container health check's answer.
pub(crate) fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let StatusArgs { socket } = args;
    let outcome = runtime()?.block_on(async { Client::connect(&socket).await?.details().await });
    match outcome {
        Ok(Details::Service(status)) => {
            println!("{}", serde_json::to_string(&status).context("cannot encode the status as JSON")?);
            Ok(ExitCode::SUCCESS)
        }
        Ok(Details::Supervisor(status)) => {
            let mut json = serde_json::to_value(&status).context("cannot encode the status as JSON")?;
            // The plain status's keys keep their meaning: `started_at` is when the current main
            // process began (as a service reports its own start).
            let plain = status.plain();
            let now = restart_socket::unix_millis(std::time::SystemTime::now());
            if let Some(map) = json.as_object_mut() {
                map.insert("started_at".to_owned(), plain.started_at.into());
                map.insert(
                    "uptime_ms".to_owned(),
                    status.since.map(|since| now.saturating_sub(since)).into(),
                );
            }
            println!("{json}");
            Ok(if status.is_up() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_UP) })
        }
        Ok(other) => anyhow::bail!("unexpected answer: {other:?}"),
        Err(err) => failure(&err),
    }
}

/// `lifeline stop --socket PATH`: asks a supervisor to stop its service; exit 0 once it has.
pub(crate) fn stop(socket: &std::path::Path, timeout: Option<Duration>) -> anyhow::Result<ExitCode> {
    // Longer than any grace period a supervisor would use before SIGKILL.
    let timeout = timeout.unwrap_or(DEFAULT_RESTART_TIMEOUT);
    let outcome = runtime()?.block_on(async { Client::connect(socket).await?.stop(timeout).await });
    match outcome {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(err) => failure(&err),
    }
}

/// Exit 2 for "no server", otherwise the generic error path (one line, exit 1).
fn failure(err: &Error) -> anyhow::Result<ExitCode> {
    if err.is_no_server() {
        eprintln!("lifeline: {err}");
        return Ok(ExitCode::from(EXIT_NO_SERVER));
    }
    anyhow::bail!("{}", one_line(&err.to_string()))
}

/// The server's words are printed on one line whatever they contain.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
