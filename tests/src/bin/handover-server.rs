//! Fixture: a minimal line-protocol TCP server built on `handover`, with knobs to misbehave.
//!
//! Clients send `GET` or `DELAY <ms>` lines and get `pid=<pid> generation=<g> served=<n>` back
//! (with ` close` appended, and the connection closed, while draining). A unix control socket
//! takes `restart` (answers `ok <pid>` or `err <reason>`) and `status`. On readiness the server
//! prints `ready pid=<pid> generation=<g> addr=<addr>` on stdout; after a handover it drains and
//! prints `exit pid=<pid> drained=<complete|timeout>`. SIGTERM stops it (aborting a handover in
//! flight: `stopping pid=<pid>`).
//!
//! `--mode-file FILE` is read at start-up, so a test makes only the *next* process misbehave:
//! `crash` (abort at once), `exit-after-state` (exit 1 after reading the state), `hang` (never
//! ready; starts a grandchild; writes `child=<pid> grandchild=<pid>` to `FILE.pids`),
//! `reject-version` (expects state version 2; exits 3).
//!
//! `--sealed-state BYTES` passes, with each upgrade, a state of BYTES bytes as a sealed memfd
//! (`LifecycleHandler::upgrade_fds`); the successor maps it and prints
//! `sealed-state bytes=<n> version=<v> intact|corrupt` before its ready line.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use handover::{Config, Handover, LifecycleHandler, StateWriter, Upgrader};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const STATE_VERSION: u32 = 1;
/// A draining connection idle this long is closed (see DESIGN.md: drain without a race).
const QUIET: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
struct State {
    served: u64,
    generation: u64,
}

#[derive(Default)]
struct Args {
    listen: Option<String>,
    control: Option<PathBuf>,
    mode_file: Option<PathBuf>,
    successor_socket: Option<PathBuf>,
    from_socket: Option<PathBuf>,
    lock: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    ready_timeout: Option<Duration>,
    drain: Duration,
    fd_store: bool,
    sealed_state: Option<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { drain: Duration::from_secs(10), ..Args::default() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = Some(value()?),
            "--control" => args.control = Some(value()?.into()),
            "--mode-file" => args.mode_file = Some(value()?.into()),
            "--successor-socket" => args.successor_socket = Some(value()?.into()),
            "--from-socket" => args.from_socket = Some(value()?.into()),
            "--lock" => args.lock = Some(value()?.into()),
            "--pid-file" => args.pid_file = Some(value()?.into()),
            "--ready-timeout-ms" => args.ready_timeout = Some(Duration::from_millis(value()?.parse()?)),
            "--drain-ms" => args.drain = Duration::from_millis(value()?.parse()?),
            "--fd-store" => args.fd_store = true,
            "--sealed-state" => args.sealed_state = Some(value()?.parse()?),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn mode(args: &Args) -> String {
    args.mode_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

struct Lifecycle {
    served: Arc<AtomicU64>,
    generation: u64,
    sealed_state: Option<usize>,
}

/// The byte at `i` of the sealed state generation `generation` passes on.
fn sealed_byte(i: usize, generation: u64) -> u8 {
    (i as u64).wrapping_mul(31).wrapping_add(generation) as u8
}

impl LifecycleHandler for Lifecycle {
    async fn send_state(&mut self, writer: &mut StateWriter) -> std::io::Result<()> {
        let state = State { served: self.served.load(Ordering::SeqCst), generation: self.generation };
        writer.send(STATE_VERSION, &state).await
    }

    async fn upgrade_fds(&mut self) -> std::io::Result<Vec<(String, OwnedFd)>> {
        let Some(len) = self.sealed_state else { return Ok(Vec::new()) };
        let generation = self.generation;
        let fd = handover::SealedState::build("sealed-state", STATE_VERSION, len, |buf| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = sealed_byte(i, generation);
            }
        })
        .map_err(std::io::Error::other)?;
        Ok(vec![("sealed-state".to_owned(), fd)])
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("handover-server: {err:#}");
            return ExitCode::from(2);
        }
    };
    if mode(&args) == "crash" {
        std::process::abort();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("handover-server: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("handover-server: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// A state passed as a sealed memfd of this upgrade: mapped, not read, and checked byte by byte.
fn report_sealed_state(handover: &mut Handover, from: u64) -> anyhow::Result<()> {
    if let Some(fd) = handover.take_fd("sealed-state") {
        let mapped = handover::SealedState::map(&fd, 1 << 30)?;
        let intact = mapped.payload().iter().enumerate().all(|(i, b)| *b == sealed_byte(i, from));
        println!(
            "sealed-state bytes={} version={} {}",
            mapped.payload().len(),
            mapped.version(),
            if intact { "intact" } else { "corrupt" }
        );
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mode = mode(&args);
    let mut config = Config::default().fd_store(args.fd_store);
    if let Some(t) = args.ready_timeout {
        config = config.ready_timeout(t);
    }
    if let Some(p) = &args.pid_file {
        config = config.pid_file(p);
    }
    let mut handover = match &args.from_socket {
        Some(path) => Handover::from_socket(config, path).await?,
        None => Handover::from_env(config)?,
    };

    let Sockets { listener, control, successor_socket, lock } =
        Sockets::take_or_create(&mut handover, &args)?;
    let state = match mode.as_str() {
        "reject-version" => match handover.read_state::<State>(STATE_VERSION + 1).await {
            Ok(state) => state,
            Err(err) => {
                eprintln!("handover-server: {err}");
                return Ok(ExitCode::from(3));
            }
        },
        _ => handover.read_state::<State>(STATE_VERSION).await?,
    };
    report_sealed_state(&mut handover, state.as_ref().map_or(0, |s| s.generation))?;
    match mode.as_str() {
        "exit-after-state" => return Ok(ExitCode::from(1)),
        "hang" => hang(&args)?,
        _ => {}
    }
    let served = Arc::new(AtomicU64::new(state.as_ref().map_or(0, |s| s.served)));
    let generation = state.map_or(0, |s| s.generation + 1);

    handover.register_dup("http", &listener)?;
    for (name, fd) in [
        ("control", control.as_ref().map(AsFd::as_fd)),
        ("handover", successor_socket.as_ref().map(AsFd::as_fd)),
        ("lock", lock.as_ref().map(AsFd::as_fd)),
    ] {
        if let Some(fd) = fd {
            handover.register_dup(name, &fd)?;
        }
    }
    let upgrader = handover
        .ready(Lifecycle { served: served.clone(), generation, sealed_state: args.sealed_state })
        .await?;

    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let tracker = TaskTracker::new();
    let stop = upgrader.upgraded();
    let pid = std::process::id();
    println!("ready pid={pid} generation={generation} addr={addr}");

    let info = Info { served: served.clone(), generation, stop: stop.clone() };
    if let Some(c) = control {
        c.set_nonblocking(true)?;
        tracker.spawn(control_loop(
            UnixListener::from_std(c)?,
            upgrader.clone(),
            info.clone(),
            tracker.clone(),
        ));
    }
    if let Some(s) = successor_socket {
        let upgrader = upgrader.clone();
        tokio::spawn(async move {
            match upgrader.serve_successors(s).await {
                Ok(pid) => eprintln!("handover-server: handed over to connected successor {pid}"),
                Err(err) => eprintln!("handover-server: successor socket: {err}"),
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            // Once handed over, never accept again: the successor owns the queue.
            biased;
            () = stop.cancelled() => break,
            _ = term.recv() => {
                // Stopping, not handing over: a restart in flight is aborted (its process killed).
                match upgrader.stop_upgrades().await {
                    Some(pid) => println!("handed over to {pid} while stopping"),
                    None => println!("stopping pid={pid}"),
                }
                stop.cancel();
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    tracker.spawn(serve(conn, info.clone()));
                }
                Err(err) => eprintln!("handover-server: accept: {err}"),
            },
        }
    }
    drop(listener);
    drop(lock);
    let drained = handover::drain(&tracker, args.drain).await;
    let drained = if drained == handover::Drained::Complete { "complete" } else { "timeout" };
    println!("exit pid={pid} drained={drained}");
    Ok(ExitCode::SUCCESS)
}

/// What the server listens on and holds: inherited by name, or created on a first start.
struct Sockets {
    listener: std::net::TcpListener,
    control: Option<std::os::unix::net::UnixListener>,
    successor_socket: Option<std::os::unix::net::UnixListener>,
    lock: Option<OwnedFd>,
}

impl Sockets {
    fn take_or_create(handover: &mut Handover, args: &Args) -> anyhow::Result<Sockets> {
        let listener = match handover.take_tcp_listener("http")? {
            Some(l) => l,
            None => std::net::TcpListener::bind(args.listen.as_deref().unwrap_or("127.0.0.1:0"))?,
        };
        let control = match handover.take_unix_listener("control")? {
            Some(l) => Some(l),
            None => args.control.as_ref().map(std::os::unix::net::UnixListener::bind).transpose()?,
        };
        let successor_socket = match handover.take_unix_listener("handover")? {
            Some(l) => Some(l),
            None => args.successor_socket.as_ref().map(std::os::unix::net::UnixListener::bind).transpose()?,
        };
        let lock = match handover.take_fd("lock") {
            Some(fd) => Some(fd),
            None => args.lock.as_ref().map(|p| lock_file(p)).transpose()?,
        };
        Ok(Sockets { listener, control, successor_socket, lock })
    }
}

#[derive(Clone)]
struct Info {
    served: Arc<AtomicU64>,
    generation: u64,
    stop: CancellationToken,
}

impl Info {
    fn line(&self, count: bool) -> String {
        let served = if count {
            self.served.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.served.load(Ordering::SeqCst)
        };
        format!("pid={} generation={} served={served}", std::process::id(), self.generation)
    }
}

/// Serves one client: one line per request; while draining, the next answer closes.
async fn serve(conn: TcpStream, info: Info) {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = if info.stop.is_cancelled() {
            match tokio::time::timeout(QUIET, lines.next_line()).await {
                Ok(line) => line,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                line = lines.next_line() => line,
                () = info.stop.cancelled() => continue,
            }
        };
        let Ok(Some(line)) = line else { return };
        if let Some(ms) = line.strip_prefix("DELAY ") {
            let ms = ms.trim().parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let closing = info.stop.is_cancelled();
        let mut answer = info.line(true);
        if closing {
            answer.push_str(" close");
        }
        answer.push('\n');
        if write.write_all(answer.as_bytes()).await.is_err() || closing {
            return;
        }
    }
}

async fn control_loop(listener: UnixListener, upgrader: Upgrader, info: Info, tracker: TaskTracker) {
    loop {
        tokio::select! {
            biased;
            () = info.stop.cancelled() => return,
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                tracker.spawn(control(conn, upgrader.clone(), info.clone()));
            }
        }
    }
}

async fn control(conn: UnixStream, upgrader: Upgrader, info: Info) {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = match line.trim() {
            "restart" => match upgrader.upgrade().await {
                Ok(pid) => format!("ok {pid}\n"),
                Err(err) => format!("err {err}\n"),
            },
            "status" => format!("{}\n", info.line(false)),
            other => format!("err unknown command {other:?}\n"),
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Locks `path` like `flock -x -n` would; the fd is what passes to the successor, and the lock
/// (which belongs to the open file description) goes with it.
fn lock_file(path: &std::path::Path) -> anyhow::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!("cannot lock {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// The `hang` mode: a grandchild in our process group, our pids on record, then never ready.
fn hang(args: &Args) -> anyhow::Result<()> {
    let grandchild = std::process::Command::new("sleep").arg("1000").spawn()?;
    if let Some(path) = &args.mode_file {
        let mut record = path.clone().into_os_string();
        record.push(".pids");
        std::fs::write(record, format!("child={} grandchild={}\n", std::process::id(), grandchild.id()))?;
    }
    loop {
        std::thread::park();
    }
}
