//! An HTTPS server that uses all five lifeline mechanisms — the showcase.
//!
//! ```text
//! https-server --listen ADDR --cert FILE --key FILE --state-dir DIR [--control SOCKET]
//!              [--ready-timeout D] [--drain-timeout D]
//! ```
//!
//! - **dirlock**: holds `DIR/.lifeline.lock`; a second instance on the same DIR exits 75 naming
//!   the holder. The held lock passes to each successor, so no third instance slips in between.
//! - **certwatch**: serves the cert/key files and follows them as they are rotated.
//! - **restart-socket**: `--control SOCKET` answers `lifeline status` and `lifeline restart`;
//!   SIGUSR1 asks for a restart over the same socket.
//! - **handover**: a restart starts a new process of the same executable with the listening
//!   socket, the control socket, the lock and the state (request counter, generation); once it is
//!   ready, this one stops accepting, drains and exits 0. A failed successor changes nothing.
//! - **keepalive**: run it under `lifeline supervise --notify`: it sends `READY=1`, and each
//!   handover sends `MAINPID=<new pid>`, which the supervisor follows.
//!
//! `GET /` answers `pid=<pid> generation=<n> served=<count>`; `GET /delay?ms=N` answers the same
//! after N ms. Started by `systemd-socket-activate` (or a systemd socket unit), it serves on the
//! inherited socket. On start it prints one line to stdout:
//! `https-server: pid=<pid> generation=<n> listening on <addr>`.
//!
//! The served count passes to the successor as a snapshot taken when the successor starts:
//! requests this process answers while the successor starts and while it drains are not in
//! the successor's count.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use certwatch::{CertWatcher, PemFiles, ReloadEvent, WatchConfig};
use clap::Parser;
use dirlock::{DirLock, LockOptions};
use handover::{Config, Handover, LifecycleHandler, StateWriter, Upgrader};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use restart_socket::{
    Client as ControlClient, ListenerHandle, Server as ControlServer, ServerConfig, Status,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit status when the state directory is locked by another instance (as `lifeline lock`).
const EXIT_LOCKED: u8 = 75;
/// During a drain, a keep-alive connection is closed once it has been quiet this long.
const QUIET: Duration = Duration::from_millis(500);
/// The longest `/delay` honoured.
const MAX_DELAY: Duration = Duration::from_secs(120);
/// Version of [`State`] on the wire: a successor that cannot read it refuses to take over.
const STATE_VERSION: u32 = 1;

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
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    ready_timeout: Duration,
    /// How long in-flight requests may take to finish after a handover or stop.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    drain_timeout: Duration,
}

/// What passes from one generation to the next.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    served: u64,
    generation: u64,
}

/// What every request handler sees.
struct Shared {
    generation: u64,
    served: AtomicU64,
    /// Cancelled when this process stops accepting: responses then carry `Connection: close`.
    draining: CancellationToken,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: log files and scripts get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
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
            eprintln!("https-server: {}", error_line(&err));
            match err.downcast_ref::<dirlock::Error>() {
                Some(lock_err) if lock_err.is_contention() => ExitCode::from(EXIT_LOCKED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started_at = unix_millis(SystemTime::now());
    // Signals first: from `ready()` on (`READY=1`, the start line) a supervisor may stop us or
    // ask for a restart, and a signal without a handler would kill the process outright.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    // Before anything else: adopt what a predecessor (or systemd) passed us.
    let mut handover = Handover::from_env(Config::default().ready_timeout(args.ready_timeout))?;

    // dirlock: the state directory has one owner; a successor inherits the held lock.
    let lock = StateLock::take(&mut handover, &args.state_dir)?;
    let listener = listening_socket(&mut handover, args.listen)?;

    // certwatch: the served certificate follows the files.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertWatcher::watch(
        PemFiles::new(&args.cert, &args.key).with_provider(provider.clone()),
        WatchConfig::default(),
    )?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs.resolver());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let mut events = certs.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if matches!(event, ReloadEvent::Failed(_)) {
                tracing::error!("{event}");
            } else {
                tracing::info!("{event}");
            }
        }
    });

    // The predecessor's state: a version we cannot read makes us exit before `ready()`, and the
    // predecessor keeps serving.
    let state: Option<State> = handover.read_state(STATE_VERSION).await?;
    let (served, generation) = state.map_or((0, 1), |s| (s.served, s.generation + 1));
    let last_restart = (generation > 1).then_some(started_at);
    let shared =
        Arc::new(Shared { generation, served: AtomicU64::new(served), draining: CancellationToken::new() });

    // restart-socket: inherited from the predecessor (the path never disappears) or bound now.
    let control = match (&args.control, handover.take_fd("control")) {
        (Some(path), Some(fd)) => Some(ControlServer::adopt(fd, path, control_config())?),
        (Some(path), None) => Some(ControlServer::bind(path, control_config())?),
        (None, _) => None,
    };

    // What a successor gets, then: ready (tells the predecessor, or systemd `READY=1`).
    handover.register_dup("https", &listener)?;
    handover.register_dup("state-lock", &lock.as_fd())?;
    let upgrader =
        handover.ready(Lifecycle { shared: shared.clone() }).await.context("cannot signal readiness")?;
    let lock = lock.into_ours(&args.state_dir)?;
    if let Some(server) = &control {
        server.listener().claim();
    }
    let listener = {
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)?
    };
    let address = listener.local_addr()?;
    println!("https-server: pid={} generation={generation} listening on {address}", std::process::id());
    tracing::info!(%address, generation, served, "serving");

    // The control socket stops accepting the moment a handover succeeds, before the answer to
    // the restart goes out: a request sent after it must reach the successor, not be accepted
    // here and then dropped by the shutdown.
    let control_stop = upgrader.upgraded().child_token();
    let tracker = TaskTracker::new();
    if let Some(server) = control {
        let handle = server.listener();
        let restart = restart_handler(upgrader.clone(), handle);
        let status =
            move || async move { Status { pid: std::process::id(), generation, started_at, last_restart } };
        // Tracked, so the answer to the restart that replaces us is written before we exit.
        tracker.spawn(server.serve(restart, status, control_stop.clone()));
    }

    // Serve until handed over (or told to stop), then drain.
    let handed_over = upgrader.upgraded();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = handed_over.cancelled() => break,
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break }
            _ = sigusr1.recv() => {
                restart_on_sigusr1(args.control.clone(), args.ready_timeout);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tracker.spawn(serve_connection(stream, peer, acceptor.clone(), shared.clone()));
    }
    drop(listener);
    shared.draining.cancel();
    control_stop.cancel();
    tracker.close();
    let drained = handover::drain(&tracker, args.drain_timeout).await;
    tracing::info!(?drained, served = shared.served.load(Ordering::SeqCst), "stopped");

    if handed_over.is_cancelled() {
        // The successor holds the lock now (through the descriptor it inherited): leave the file.
        drop(lock.export());
    } else {
        lock.release()?;
    }
    Ok(())
}

/// The listening socket: from the predecessor, from systemd, or bound now.
fn listening_socket(handover: &mut Handover, listen: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    if let Some(inherited) = handover.take_tcp_listener("https")? {
        return Ok(inherited);
    }
    if let Some(activated) = handover.take_tcp_listener("unknown")? {
        return Ok(activated);
    }
    std::net::TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))
}

/// The state directory's lock before this process is ready.
///
/// A successor inherits the held lock (it never lapses) but adopts it only once it is ready:
/// adopting writes its pid into the lock file, and a dropped `DirLock` unlinks the file, which a
/// successor failing at start-up would do under its predecessor, letting a third instance in.
enum StateLock {
    /// Acquired by this process (no predecessor): released if start-up fails.
    Held(DirLock),
    /// Inherited from a predecessor, which still owns the lock file until we are ready.
    Inherited(OwnedFd),
}

impl StateLock {
    fn take(handover: &mut Handover, dir: &std::path::Path) -> anyhow::Result<StateLock> {
        Ok(match handover.take_fd("state-lock") {
            Some(fd) => StateLock::Inherited(fd),
            None => StateLock::Held(DirLock::acquire(dir)?),
        })
    }

    /// Once ready: the lock is ours alone.
    fn into_ours(self, dir: &std::path::Path) -> anyhow::Result<DirLock> {
        Ok(match self {
            StateLock::Held(lock) => lock,
            StateLock::Inherited(fd) => DirLock::adopt(fd, dir, &LockOptions::new())?.commit(),
        })
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            StateLock::Held(lock) => lock.as_fd(),
            StateLock::Inherited(fd) => fd.as_fd(),
        }
    }
}

/// The restart socket's handler: a handover to a new process of this executable.
fn restart_handler(
    upgrader: Upgrader,
    control: ListenerHandle,
) -> impl Fn() -> Pin<Box<dyn Future<Output = Result<u32, String>> + Send>> + Send + Sync + 'static {
    move || {
        let upgrader = upgrader.clone();
        let control = control.clone();
        Box::pin(async move {
            let fd = control.export().map_err(|e| e.to_string())?;
            upgrader.register("control", fd).map_err(|e| e.to_string())?;
            match upgrader.upgrade().await {
                Ok(pid) => Ok(pid),
                Err(err) => {
                    // The socket file stays ours to remove, and the next attempt registers anew.
                    control.reclaim();
                    drop(upgrader.unregister("control"));
                    Err(err.to_string())
                }
            }
        })
    }
}

fn control_config() -> ServerConfig {
    // SIGUSR1 is handled by `run` (see `restart_on_sigusr1`).
    ServerConfig::default()
}

/// SIGUSR1: a restart requested over our own control socket, exactly as `lifeline restart` would
/// (one at a time with any other request); the outcome is only logged.
///
/// Not restart-socket's own SIGUSR1 option: that handler is installed only once `serve()` first
/// runs, after the start line and `READY=1`, and a SIGUSR1 before it killed the process.
fn restart_on_sigusr1(control: Option<PathBuf>, ready_timeout: Duration) {
    let Some(path) = control else {
        tracing::warn!("SIGUSR1 ignored: restarts need --control");
        return;
    };
    tracing::info!("SIGUSR1: restarting");
    tokio::spawn(async move {
        // The answer comes within the readiness timeout; the margin covers spawning and killing.
        let timeout = ready_timeout + Duration::from_secs(10);
        let outcome = async { ControlClient::connect(&path).await?.restart(timeout).await }.await;
        match outcome {
            Ok(pid) => tracing::info!(pid, "SIGUSR1: handed over"),
            Err(err) => tracing::warn!(error = %err, "SIGUSR1: restart failed"),
        }
    });
}

/// The old process's side of a handover: the state the successor continues from.
struct Lifecycle {
    shared: Arc<Shared>,
}

impl LifecycleHandler for Lifecycle {
    async fn send_state(&mut self, writer: &mut StateWriter) -> std::io::Result<()> {
        let state =
            State { served: self.shared.served.load(Ordering::SeqCst), generation: self.shared.generation };
        writer.send(STATE_VERSION, &state).await
    }

    async fn new_process_failed(&mut self) {
        tracing::warn!("the new process failed; still serving");
    }
}

/// One TLS connection: HTTP/1.1 with keep-alive, drained without racing the client.
///
/// When draining starts, the next response on the connection carries `Connection: close`; a
/// connection with no request in flight is closed only after it has been quiet for [`QUIET`],
/// since a connection that looks idle may already carry the client's next request on the wire.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => return tracing::debug!(%peer, error = %err, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked { inner: tls, activity: activity.clone() });
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| handle(req, service_shared.clone()));
    let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return log_end(peer, result),
        () = shared.draining.cancelled() => {}
    }
    loop {
        let quiet_for = activity.quiet_for();
        if quiet_for >= QUIET {
            conn.as_mut().graceful_shutdown();
            break;
        }
        tokio::select! {
            result = conn.as_mut() => return log_end(peer, result),
            () = tokio::time::sleep(QUIET.saturating_sub(quiet_for)) => {}
        }
    }
    log_end(peer, conn.await);
}

fn log_end(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/") => None,
        (&hyper::Method::GET, "/delay") => match delay_param(req.uri().query()) {
            Some(delay) => Some(delay),
            None => return Ok(plain(StatusCode::BAD_REQUEST, "expected /delay?ms=N\n".into(), &shared)),
        },
        _ => return Ok(plain(StatusCode::NOT_FOUND, "not found\n".into(), &shared)),
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let served = shared.served.fetch_add(1, Ordering::SeqCst) + 1;
    let body = format!("pid={} generation={} served={served}\n", std::process::id(), shared.generation);
    Ok(plain(StatusCode::OK, body, &shared))
}

fn delay_param(query: Option<&str>) -> Option<Duration> {
    let ms = query?.split('&').find_map(|pair| pair.strip_prefix("ms="))?.parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_DELAY))
}

fn plain(status: StatusCode, body: String, shared: &Shared) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    if shared.draining.is_cancelled() {
        headers.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

/// An error and its causes on one line, without repeating a cause already in the text.
fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When a connection last moved a byte.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity { epoch: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// An I/O stream that records when bytes move, for the drain's quiet period.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
