//! An HTTPS server that uses all five lifeline mechanisms through `lifeline::service`.
//!
//! ```text
//! https-server --listen ADDR --cert FILE --key FILE --state-dir DIR [--control SOCKET]
//!              [--ready-timeout D] [--drain-timeout D] [--fd-store] [--rollback-window D]
//!              [--drain-deadline D] [--max-retired N] [--restart-on-exe-change] [--ready-fd N]
//! ```
//!
//! - **dirlock**: holds `DIR/.lifeline.lock`; a second instance on the same DIR exits 75 naming
//!   the holder. The held lock passes to each successor, so no third instance slips in between.
//! - **certwatch**: serves the cert/key files and follows them as they are rotated.
//! - **restart-socket**: `--control SOCKET` answers `lifeline status` and `lifeline restart`;
//!   SIGUSR1 (or SIGHUP) asks for a restart too.
//! - **handover**: a restart starts a new process of the same executable with the listening
//!   socket, the control socket, the lock and the state (request counter, generation); once it is
//!   ready, this one stops accepting, drains and exits 0. A failed successor changes nothing.
//! - **keepalive**: run it under `lifeline supervise --notify`: it sends `READY=1`, and each
//!   handover sends `MAINPID=<new pid>`, which the supervisor follows.
//!
//! `GET /` answers `pid=<pid> generation=<n> served=<count>`; `GET /delay?ms=N` answers the same
//! after N ms; `GET /metrics` serves the metrics (Prometheus text; counts carried across
//! handovers). HTTP/1.1 and HTTP/2. Started by a systemd socket unit, it serves on that socket. On
//! start it prints `https-server: pid=<pid> generation=<n> listening on <addr>`. The served count
//! passes to the successor as a snapshot taken when the successor starts.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, header};
use lifeline::service::{Builder, ServiceState, http, metrics::Prometheus};
use serde::{Deserialize, Serialize};

/// Exit status when the state directory is locked by another instance (as `lifeline lock`).
const EXIT_LOCKED: u8 = 75;
/// The longest `/delay` honoured.
const MAX_DELAY: Duration = Duration::from_secs(120);

/// An HTTPS server that uses all five lifeline mechanisms.
#[derive(Debug, Parser)]
#[command(name = "https-server")]
struct Args {
    /// Address to listen on (unless a socket is inherited from a predecessor or systemd).
    #[arg(long)]
    listen: SocketAddr,
    /// PEM certificate chain, followed as it changes.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key, followed as it changes.
    #[arg(long)]
    key: PathBuf,
    /// State directory, held locked while this server (or its successor) runs.
    #[arg(long)]
    state_dir: PathBuf,
    /// Control socket for `lifeline restart` and `lifeline status`.
    #[arg(long)]
    control: Option<PathBuf>,
    /// How long a successor has to become ready.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    ready_timeout: Duration,
    /// How long in-flight requests may take to finish after a handover or stop.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    drain_timeout: Duration,
    /// Keep the listener and, at a stop, the state in systemd's fd store (`systemctl restart`).
    #[arg(long)]
    fd_store: bool,
    /// After a handover, stand by this long and serve again if the new process dies (0s: never).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    rollback_window: Duration,
    /// Exit this long after the drain timeout even if something still runs (`HAProxy`'s hard-stop-after).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    drain_deadline: Duration,
    /// Refuse a restart while this many earlier generations still drain.
    #[arg(long)]
    max_retired: Option<usize>,
    /// Restart when a new executable is installed at this program's path.
    #[arg(long)]
    restart_on_exe_change: bool,
    /// s6/dinit readiness: write a newline to this file descriptor once ready.
    #[arg(long, value_name = "FD")]
    ready_fd: Option<i32>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?; // at most 100y, like the CLI
    if d > Duration::from_secs(3_155_760_000) { Err("durations are at most 100y".into()) } else { Ok(d) }
}
/// What passes to the next generation (the generation number travels with it).
#[derive(Debug, Serialize, Deserialize)]
struct State {
    served: u64,
}

impl ServiceState for State {
    const VERSION: u32 = 1;
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: log files and scripts get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    // The application picks the crypto provider; the libraries never do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("https-server: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("https-server: {err:#}");
            match err.downcast_ref::<lifeline::service::Error>() {
                Some(err) if err.is_locked() => ExitCode::from(EXIT_LOCKED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let prometheus = Prometheus::install()?; // before the start: the lock and the certificate record
    let mut builder = Builder::new()
        .state_dir(&args.state_dir)
        .tcp("https", args.listen)
        .tls(&args.cert, &args.key)
        .ready_timeout(args.ready_timeout)
        .drain_timeout(args.drain_timeout)
        .drain_deadline(Some(args.drain_deadline))
        .fd_store(args.fd_store)
        .rollback_window(args.rollback_window)
        .restart_on_exe_change(args.restart_on_exe_change);
    if let Some(limit) = args.max_retired {
        builder = builder.max_retired(limit);
    }
    if let Some(fd) = args.ready_fd {
        builder = builder.ready_fd(fd);
    }
    if let Some(control) = &args.control {
        builder = builder.control_socket(control);
    }
    let mut starting = builder.start::<State>().await?;
    let served = Arc::new(AtomicU64::new(starting.take_state().map_or(0, |s| s.served)));
    metrics::counter!("https_server_requests_total").absolute(served.load(Ordering::SeqCst)); // carried
    let (generation, listener) = (starting.generation(), starting.tcp("https")?);
    let acceptor = starting.tls_acceptor().context("TLS is not configured")?;
    let snapshot = served.clone();
    let running = starting.ready(move || State { served: snapshot.load(Ordering::SeqCst) }).await?;
    let (pid, address, mut out) = (std::process::id(), listener.local_addr()?, std::io::stdout());
    let _ = writeln!(out, "https-server: pid={pid} generation={generation} listening on {address}"); // may be closed
    let service = hyper::service::service_fn(move |req| handle(req, generation, served.clone()));
    http::serve_tls(&running, listener, acceptor, prometheus.route(service)).await; // and GET /metrics
    running.drain().await;
    Ok(())
}

async fn handle(
    req: Request<Incoming>,
    generation: u64,
    served: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/") => {}
        (&hyper::Method::GET, "/delay") => match delay_param(req.uri().query()) {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return Ok(plain(StatusCode::BAD_REQUEST, "expected /delay?ms=N\n".into())),
        },
        _ => return Ok(plain(StatusCode::NOT_FOUND, "not found\n".into())),
    }
    let served = served.fetch_add(1, Ordering::SeqCst) + 1;
    metrics::counter!("https_server_requests_total").increment(1);
    let body = format!("pid={} generation={generation} served={served}\n", std::process::id());
    Ok(plain(StatusCode::OK, body))
}

fn delay_param(query: Option<&str>) -> Option<Duration> {
    let ms = query?.split('&').find_map(|pair| pair.strip_prefix("ms="))?.parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_DELAY))
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    response
}
