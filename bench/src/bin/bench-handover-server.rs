//! Helper of `bench-handover` (not a benchmark: run alone, or with only `--quick`, it exits 0 and
//! prints nothing): the same minimal line-protocol server restarted four ways.
//!
//! - `--handover --control PATH`: built on `handover`; `restart` on the control socket answers
//!   `ok <pid>` once the successor is ready; the request counter passes on.
//! - `--ecdysis --port N --upgrade-socket PATH`: built on cloudflare's `ecdysis` 1.1; a
//!   connection to the upgrade socket triggers an upgrade and is closed when it is over.
//! - `--naive --port N`: no handover; SIGTERM stops it, the bench starts a new one.
//! - `--floor`: writes one byte on stdout and exits (the floor: spawn + one readiness byte).
//!
//! Every server prints `ready pid=<pid> generation=<g> addr=<addr>` when serving, answers `GET`
//! lines with `pid=<pid> generation=<g> served=<n>` and drains alike: after a restart, each
//! connection's next answer carries ` close`, and an idle connection is closed after a quiet
//! second.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use handover::{Config, Handover, LifecycleHandler, StateWriter, Upgrader};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const QUIET: Duration = Duration::from_secs(1);
const DRAIN: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--quick").collect();
    let Some(mode) = args.first() else { return Ok(()) };
    let value = |flag: &str| -> anyhow::Result<String> {
        let at = args.iter().position(|a| a == flag).with_context(|| format!("{flag} is required"))?;
        args.get(at + 1).cloned().with_context(|| format!("{flag} needs a value"))
    };
    if mode == "--floor" {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        out.write_all(b"R")?;
        return Ok(out.flush()?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match mode.as_str() {
        "--handover" => runtime.block_on(handover_server(value("--control")?.into())),
        "--ecdysis" => {
            runtime.block_on(ecdysis_server(value("--port")?.parse()?, value("--upgrade-socket")?.into()))
        }
        "--naive" => runtime.block_on(naive_server(value("--port")?.parse()?)),
        other => bail!("unknown mode {other}"),
    }
}

struct Counter(Arc<AtomicU64>);

impl LifecycleHandler for Counter {
    async fn send_state(&mut self, writer: &mut StateWriter) -> std::io::Result<()> {
        writer.send(1, &self.0.load(Ordering::SeqCst)).await
    }
}

async fn handover_server(control: PathBuf) -> anyhow::Result<()> {
    let mut handover = Handover::from_env(Config::default())?;
    let listener = match handover.take_tcp_listener("http")? {
        Some(l) => l,
        None => std::net::TcpListener::bind("127.0.0.1:0")?,
    };
    let control = match handover.take_unix_listener("control")? {
        Some(l) => l,
        None => std::os::unix::net::UnixListener::bind(&control)?,
    };
    let generation = u64::from(handover.predecessor().is_some());
    let served = Arc::new(AtomicU64::new(handover.read_state::<u64>(1).await?.unwrap_or(0)));
    handover.register_dup("http", &listener)?;
    handover.register_dup("control", &control)?;
    let upgrader = handover.ready(Counter(served.clone())).await?;

    let stop = upgrader.upgraded();
    let tracker = TaskTracker::new();
    control.set_nonblocking(true)?;
    let control = UnixListener::from_std(control)?;
    tracker.spawn(control_loop(control, upgrader, stop.clone(), tracker.clone()));
    serve_until(listener, served, generation, stop, tracker).await
}

async fn control_loop(
    listener: UnixListener,
    upgrader: Upgrader,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                tracker.spawn(control(conn, upgrader.clone()));
            }
        }
    }
}

async fn control(conn: UnixStream, upgrader: Upgrader) {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(_)) = lines.next_line().await {
        let answer = match upgrader.upgrade().await {
            Ok(pid) => format!("ok {pid}\n"),
            Err(err) => format!("err {err}\n"),
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn ecdysis_server(port: u16, upgrade_socket: PathBuf) -> anyhow::Result<()> {
    use ecdysis::tokio_ecdysis::{SignalKind, TokioEcdysisBuilder};

    let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup())?;
    builder.upgrade_on_socket(&upgrade_socket)?;
    let listener = builder.std_ecdysis().listen_tcp(SocketAddr::from(([127, 0, 0, 1], port)))?;
    let generation = u64::from(builder.is_child());
    let (_ecdysis, upgraded) = builder.ready()?;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            match upgraded.await {
                Ok((mode, _)) => eprintln!("bench-handover-server: ecdysis: {mode:?}"),
                Err(err) => eprintln!("bench-handover-server: ecdysis: {err}"),
            }
            stop.cancel();
        }
    });
    serve_until(listener, Arc::new(AtomicU64::new(0)), generation, stop, TaskTracker::new()).await
}

async fn naive_server(port: u16) -> anyhow::Result<()> {
    // std sets SO_REUSEADDR: the next instance can bind while old connections linger.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let stop = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn({
        let stop = stop.clone();
        async move {
            term.recv().await;
            stop.cancel();
        }
    });
    serve_until(listener, Arc::new(AtomicU64::new(0)), 0, stop, TaskTracker::new()).await
}

/// Accepts until `stop`, then drains (connections are tracked by `tracker`).
async fn serve_until(
    listener: std::net::TcpListener,
    served: Arc<AtomicU64>,
    generation: u64,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    println!("ready pid={} generation={generation} addr={addr}", std::process::id());
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => {
                if let Ok((conn, _)) = accepted {
                    tracker.spawn(serve(conn, served.clone(), generation, stop.clone()));
                }
            }
        }
    }
    drop(listener);
    handover::drain(&tracker, DRAIN).await;
    Ok(())
}

async fn serve(conn: TcpStream, served: Arc<AtomicU64>, generation: u64, stop: CancellationToken) {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = if stop.is_cancelled() {
            match tokio::time::timeout(QUIET, lines.next_line()).await {
                Ok(line) => line,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                line = lines.next_line() => line,
                () = stop.cancelled() => continue,
            }
        };
        let Ok(Some(_)) = line else { return };
        let closing = stop.is_cancelled();
        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = format!(
            "pid={} generation={generation} served={n}{}\n",
            std::process::id(),
            if closing { " close" } else { "" }
        );
        if write.write_all(answer.as_bytes()).await.is_err() || closing {
            return;
        }
    }
}
