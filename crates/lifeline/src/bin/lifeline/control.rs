//! `lifeline restart` and `lifeline status`: talk to a service's restart socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use restart_socket::{Client, Error};

/// How long `lifeline restart` waits for the outcome without `--timeout`: longer than a
/// handover's default readiness timeout (30 s), so its failure reason gets through.
const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// Exit status for a missing or dead socket (nothing is serving at the path).
const EXIT_NO_SERVER: u8 = 2;

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
pub(crate) fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let StatusArgs { socket } = args;
    let outcome = runtime()?.block_on(async { Client::connect(&socket).await?.status().await });
    match outcome {
        Ok(status) => {
            println!("{}", serde_json::to_string(&status).context("cannot encode the status as JSON")?);
            Ok(ExitCode::SUCCESS)
        }
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
