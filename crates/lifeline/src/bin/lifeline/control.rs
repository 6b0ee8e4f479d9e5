//! `lifeline restart` and `lifeline status`: talk to a service's restart socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use restart_socket::{Client, Details, Error, Status, SupervisorStatus};

/// How long `lifeline restart` waits for the outcome without `--timeout`: longer than a
/// handover's default readiness timeout (30 s), so its failure reason gets through.
const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// `json`: one JSON object on one line (the default, for scripts); `text`: one field per
    /// line, times as dates, for a person.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

/// `lifeline status --format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Json,
    Text,
}

/// Prints the new pid (exit 0), or the reason the restart failed (stderr, exit 1); a missing or
/// dead socket exits 69.
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
        Err(err) => failure(err),
    }
}

/// Prints the status on stdout (exit 0): one JSON object by default, or text; a missing or dead
/// socket exits 69. A supervisor's socket (`lifeline supervise --control`) answers in detail: the
/// same keys and more (`state`, `ready`, `restarts`, `last_exit`, `backoff_until`, `uptime_ms`,
/// …), and exit 3 when its service is not up — a container health check's answer.
pub(crate) fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let StatusArgs { socket, format } = args;
    let outcome = runtime()?.block_on(async { Client::connect(&socket).await?.details().await });
    match outcome {
        Ok(Details::Service(status)) => {
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string(&status).context("cannot encode the status as JSON")?
                ),
                Format::Text => print!("{}", text(&status, SystemTime::now())),
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Details::Supervisor(status)) => {
            let now = SystemTime::now();
            match format {
                Format::Json => {
                    let mut json =
                        serde_json::to_value(&status).context("cannot encode the status as JSON")?;
                    // The plain status's keys keep their meaning: `started_at` is when the current
                    // main process began (as a service reports its own start).
                    let plain = status.plain();
                    let now = restart_socket::unix_millis(now);
                    if let Some(map) = json.as_object_mut() {
                        map.insert("started_at".to_owned(), plain.started_at.into());
                        map.insert(
                            "uptime_ms".to_owned(),
                            status.since.map(|since| now.saturating_sub(since)).into(),
                        );
                    }
                    println!("{json}");
                }
                Format::Text => print!("{}", supervisor_text(&status, now)),
            }
            Ok(if status.is_up() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_UP) })
        }
        Ok(other) => anyhow::bail!("unexpected answer: {other:?}"),
        Err(err) => failure(err),
    }
}

/// `lifeline stop --socket PATH`: asks a supervisor to stop its service; exit 0 once it has.
pub(crate) fn stop(socket: &std::path::Path, timeout: Option<Duration>) -> anyhow::Result<ExitCode> {
    // Longer than any grace period a supervisor would use before SIGKILL.
    let timeout = timeout.unwrap_or(DEFAULT_RESTART_TIMEOUT);
    let outcome = runtime()?.block_on(async { Client::connect(socket).await?.stop(timeout).await });
    match outcome {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(err) => failure(err),
    }
}

/// The status for a person: one field per line, times as UTC dates with how long ago.
fn text(status: &Status, now: SystemTime) -> String {
    let when = |ms: u64| {
        let at = UNIX_EPOCH + Duration::from_millis(ms);
        let ago = now.duration_since(at).map_or(Duration::ZERO, |d| Duration::from_secs(d.as_secs()));
        format!("{} ({} ago)", humantime::format_rfc3339_seconds(at), humantime::format_duration(ago))
    };
    format!(
        "pid:          {}\ngeneration:   {}\nstarted_at:   {}\nlast_restart: {}\n",
        status.pid,
        status.generation,
        when(status.started_at),
        status.last_restart.map_or_else(|| "never".to_owned(), when),
    )
}

/// A supervisor's status for a person: the service's fields, then the supervisor's.
fn supervisor_text(status: &SupervisorStatus, now: SystemTime) -> String {
    use std::fmt::Write as _;
    let mut out = text(&status.plain(), now);
    let optional = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let retired = status.retired.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    let _ = write!(
        out,
        "state:        {}\nready:        {}\nrestarts:     {}\nrollbacks:    {}\nlast_exit:    {}\nretired:      {}\nsupervisor:   {}\n",
        serde_json::to_value(status.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        status.ready,
        status.restarts,
        status.rollbacks,
        optional(status.last_exit.clone()),
        if retired.is_empty() { "-".to_owned() } else { retired },
        status.supervisor_pid,
    );
    if let Some(text) = &status.text {
        let _ = writeln!(out, "status_text:  {}", one_line(text));
    }
    out
}

/// Exit 69 for "no service at the socket", otherwise the generic error path (one line, exit 1).
fn failure(err: Error) -> anyhow::Result<ExitCode> {
    if err.is_no_server() {
        eprintln!("lifeline: {}", crate::chain(err));
        return Ok(ExitCode::from(crate::exit::NO_SERVICE));
    }
    Err(err.into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_one_field_per_line_with_dates() {
        let status = Status { pid: 42, generation: 3, started_at: 1_700_000_000_123, last_restart: None };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_090);
        assert_eq!(
            text(&status, now),
            "pid:          42\ngeneration:   3\nstarted_at:   2023-11-14T22:13:20Z (1m 29s ago)\nlast_restart: never\n"
        );
        let restarted = Status { last_restart: Some(1_700_000_060_000), ..status };
        assert!(text(&restarted, now).ends_with("last_restart: 2023-11-14T22:14:20Z (30s ago)\n"));
    }
}
