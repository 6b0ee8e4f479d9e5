//! Benchmark of restart-socket: `Status` round-trip latency against a bare unix-socket echo
//! measured in the same run, and a legitimate request's latency with 500 idle or half-sent
//! connections held open.
//!
//! Topology, identical for the figure and its baseline: the server runs on a one-worker tokio
//! runtime on its own thread; the client is an in-process `restart_socket::Client` on a
//! current-thread runtime on the main thread. "Persistent" reuses one connection for every
//! request; "new connection" connects, asks, and closes each time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use lifeline_bench::{Row, iterations, percentile, quick, us};
use restart_socket::{CancellationToken, Client, Server, ServerConfig, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const MECHANISM: &str = "restart-socket";
const HELD_CONNECTIONS: usize = 500;
/// The largest point of the concurrent-clients curve (below the server's default limit of 1024).
const CURVE_MAX: usize = 1000;
/// An echo message the size of a Status request frame's answer (header + ~20 bytes).
const ECHO_LEN: usize = 24;

fn main() -> anyhow::Result<()> {
    raise_fd_limit(4 * CURVE_MAX as u64 + 256)?;
    let dir = tempfile::tempdir()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let shutdown = CancellationToken::new();

    // The restart socket, with a read timeout long enough that held connections stay held.
    let socket = dir.path().join("control.sock");
    let config = ServerConfig::default().with_read_timeout(Duration::from_secs(120));
    let server = server_rt.block_on(async { Server::bind(&socket, config) })?;
    let status =
        Status { pid: std::process::id(), generation: 1, started_at: 1_700_000_000_000, last_restart: None };
    let serving = server_rt.spawn(server.serve(
        || async { Ok::<u32, String>(0) },
        move || async move { status },
        shutdown.clone(),
    ));
    // The floor: an echo server on the same runtime.
    let echo = dir.path().join("echo.sock");
    let echo_listener = server_rt.block_on(async { UnixListener::bind(&echo) })?;
    server_rt.spawn(echo_server(echo_listener, shutdown.clone()));

    let n = iterations(20_000, 2_000);
    client_rt.block_on(async {
        let status_persistent = timed(n, persistent_status(&socket)).await?;
        let echo_persistent = timed(n, persistent_echo(&echo)).await?;
        report_pair("Status round trip, persistent connection", status_persistent, "bare unix-socket echo round trip, persistent connection", echo_persistent);

        let status_fresh = timed(n / 2, fresh_status(&socket)).await?;
        let echo_fresh = timed(n / 2, fresh_echo(&echo)).await?;
        report_pair("Status round trip, new connection per request", status_fresh, "connect + echo round trip + close", echo_fresh);

        // Hold 500 connections: half idle, half stuck inside a frame (a header announcing 100
        // bytes, then 3 of them). Then measure fresh-connection Status requests again.
        let unloaded = timed(n / 4, fresh_status(&socket)).await?;
        let mut held = Vec::with_capacity(HELD_CONNECTIONS);
        for i in 0..HELD_CONNECTIONS {
            let mut conn = UnixStream::connect(&socket).await.context("open a held connection")?;
            if i % 2 == 1 {
                conn.write_all(&[100, 0, 0, 0, 1, 2, 3]).await?;
            }
            held.push(conn);
        }
        let loaded = timed(n / 4, fresh_status(&socket)).await?;
        let still_open = held.iter().filter(|c| still_open(c)).count();
        eprintln!("bench-restart-socket: {still_open}/{HELD_CONNECTIONS} held connections still open after the measurement");
        anyhow::ensure!(still_open == HELD_CONNECTIONS, "the server closed held connections during the measurement");
        report_loaded(unloaded, loaded);
        drop(held);
        concurrent_clients_curve(&socket, &echo).await?;
        anyhow::Ok(())
    })?;

    shutdown.cancel();
    server_rt.block_on(serving)??;
    Ok(())
}

/// Runs `op` `n` times (after a warm-up of n/10) and returns each duration in µs.
async fn timed<Op: AsyncOp>(n: usize, mut op: Op) -> anyhow::Result<Vec<f64>> {
    for _ in 0..n / 10 {
        op.run().await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        op.run().await?;
        samples.push(us(start.elapsed()));
    }
    Ok(samples)
}

/// One timed operation (a request, an echo) that may hold state between runs.
trait AsyncOp {
    async fn run(&mut self) -> anyhow::Result<()>;
}

struct PersistentStatus(Option<Client>, PathBuf);
fn persistent_status(path: &Path) -> PersistentStatus {
    PersistentStatus(None, path.to_owned())
}
impl AsyncOp for PersistentStatus {
    async fn run(&mut self) -> anyhow::Result<()> {
        if self.0.is_none() {
            self.0 = Some(Client::connect(&self.1).await?);
        }
        let client = self.0.as_mut().context("connected above")?;
        std::hint::black_box(client.status().await?);
        Ok(())
    }
}

struct FreshStatus(PathBuf);
fn fresh_status(path: &Path) -> FreshStatus {
    FreshStatus(path.to_owned())
}
impl AsyncOp for FreshStatus {
    async fn run(&mut self) -> anyhow::Result<()> {
        std::hint::black_box(Client::connect(&self.0).await?.status().await?);
        Ok(())
    }
}

struct PersistentEcho(Option<UnixStream>, PathBuf);
fn persistent_echo(path: &Path) -> PersistentEcho {
    PersistentEcho(None, path.to_owned())
}
impl AsyncOp for PersistentEcho {
    async fn run(&mut self) -> anyhow::Result<()> {
        if self.0.is_none() {
            self.0 = Some(UnixStream::connect(&self.1).await?);
        }
        let conn = self.0.as_mut().context("connected above")?;
        echo_once(conn).await
    }
}

struct FreshEcho(PathBuf);
fn fresh_echo(path: &Path) -> FreshEcho {
    FreshEcho(path.to_owned())
}
impl AsyncOp for FreshEcho {
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut conn = UnixStream::connect(&self.0).await?;
        echo_once(&mut conn).await
    }
}

async fn echo_once(conn: &mut UnixStream) -> anyhow::Result<()> {
    let mut buf = [7u8; ECHO_LEN];
    conn.write_all(&buf).await?;
    conn.read_exact(&mut buf).await?;
    std::hint::black_box(buf);
    Ok(())
}

async fn echo_server(listener: UnixListener, shutdown: CancellationToken) {
    loop {
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut conn, _)) = conn else { continue };
        tokio::spawn(async move {
            let mut buf = [0u8; ECHO_LEN];
            while conn.read_exact(&mut buf).await.is_ok() {
                if conn.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The control-socket curve: 1, 100 and 1 000 clients (`--quick`: 1) connected at once, each
/// asking `Status` again and again, paced so that all of them together ask [`CURVE_RATE`] times a
/// second (one client alone asks back to back): the round trip of every request, against the
/// same clients on the bare echo server, in the same run (the two alternate). The clients connect
/// in one burst; every refusal (a `Busy` answer, a failed connect or request) is counted: the
/// limit is 1 024 connections, so none is allowed.
async fn concurrent_clients_curve(socket: &Path, echo: &Path) -> anyhow::Result<()> {
    let points: &[usize] = if quick() { &[1] } else { &[1, 100, CURVE_MAX] };
    let window = if quick() { Duration::from_millis(300) } else { Duration::from_secs(4) };
    let rounds = if quick() { 1 } else { 2 };
    for &clients in points {
        let (mut status, mut echoes) = (Vec::new(), Vec::new());
        let (mut refused, mut echo_failed) = (0usize, 0usize);
        for _ in 0..rounds {
            let (ok, failed) = paced(clients, socket, true, window).await;
            status.extend(ok);
            refused += failed;
            let (ok, failed) = paced(clients, echo, false, window).await;
            echoes.extend(ok);
            echo_failed += failed;
        }
        let (p99, b99) = (percentile(&mut status, 99.0), percentile(&mut echoes, 99.0));
        let (p50, b50) = (percentile(&mut status, 50.0), percentile(&mut echoes, 50.0));
        eprintln!(
            "bench-restart-socket: {clients} concurrent clients: {} Status requests, p50 {p50:.0} µs p99 {p99:.0} µs, \
             {refused} refused; echo {} requests, p50 {b50:.0} µs p99 {b99:.0} µs, {echo_failed} failed",
            status.len(),
            echoes.len()
        );
        Row::new(
            MECHANISM,
            &format!(
                "Status round trip p99, {clients} clients connected at once asking together {CURVE_RATE}/s ({} requests)",
                status.len()
            ),
            p99 / 1e3,
            "ms",
            if clients == CURVE_MAX { "≤ 10 ms" } else { "informational (target at 1000)" },
        )
        .baseline("the same clients on a bare unix-socket echo server, p99", b99 / 1e3)
        .point("Status round trip p99 vs concurrent clients", "concurrent clients", clients as f64)
        .met_if(clients == CURVE_MAX, p99 <= 10_000.0)
        .emit();
        Row::new(
            MECHANISM,
            &format!("refused or failed Status connections and requests, {clients} clients connecting at once (limit 1024)"),
            refused as f64,
            "count",
            "0",
        )
        .baseline("failed echo connections and requests, same clients", echo_failed as f64)
        .point("refused requests vs concurrent clients", "concurrent clients", clients as f64)
        .met(refused == 0)
        .emit();
    }
    Ok(())
}

/// How many requests per second all the clients of a point ask together.
const CURVE_RATE: usize = 2_000;

/// `clients` tasks connect in one burst (released together), then each asks once per
/// `clients / CURVE_RATE` seconds (jittered) until `window` has passed; the round trips in µs
/// and how many connections or requests failed.
async fn paced(clients: usize, path: &Path, status: bool, window: Duration) -> (Vec<f64>, usize) {
    // Closed until every task exists; then opened for all at once (a late task finds it open).
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    // Every client connected (or failed to) before any asks: the round trips are those of
    // `clients` open connections, not of the connection burst (whose refusals are counted).
    let connected = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = tokio::task::JoinSet::new();
    let period = Duration::from_secs_f64(clients as f64 / CURVE_RATE as f64);
    for id in 0..clients {
        let (gate, path, connected) = (gate.clone(), path.to_owned(), connected.clone());
        tasks.spawn(async move {
            let _pass = gate.acquire().await;
            let (mut rtts, mut failed) = (Vec::new(), 0usize);
            let conn = if status {
                Client::connect(&path).await.map(|c| Conn::Status(Box::new(c))).map_err(anyhow::Error::from)
            } else {
                UnixStream::connect(&path).await.map(Conn::Echo).map_err(anyhow::Error::from)
            };
            connected.wait().await;
            let Ok(mut conn) = conn else { return (rtts, 1) };
            // Spread the clients over the period, then keep each to its pace.
            let mut next = Instant::now() + period.mul_f64((id as f64 * 0.618_034).fract());
            let end = Instant::now() + window;
            while Instant::now() < end {
                tokio::time::sleep_until(next.into()).await;
                let start = Instant::now();
                let asked = match &mut conn {
                    Conn::Status(client) => client.status().await.map(drop).map_err(anyhow::Error::from),
                    Conn::Echo(stream) => echo_once(stream).await,
                };
                if asked.is_err() {
                    failed += 1;
                    break;
                }
                rtts.push(us(start.elapsed()));
                next += period;
            }
            (rtts, failed)
        });
    }
    tokio::task::yield_now().await;
    gate.add_permits(clients);
    let (mut ok, mut failed) = (Vec::new(), 0);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((rtts, f)) => {
                ok.extend(rtts);
                failed += f;
            }
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}

enum Conn {
    Status(Box<Client>),
    Echo(UnixStream),
}

/// Whether the server still holds `conn` open (nothing to read, no EOF).
fn still_open(conn: &UnixStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(conn.try_read(&mut buf), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

/// A sample set small enough to embed in a row.
fn thin(samples: &[f64]) -> Vec<f64> {
    let step = samples.len().div_ceil(2_000).max(1);
    samples.iter().step_by(step).copied().collect()
}

fn report_pair(name: &str, mut figure: Vec<f64>, baseline_name: &str, mut baseline: Vec<f64>) {
    let (p50, p99) = (percentile(&mut figure, 50.0), percentile(&mut figure, 99.0));
    let (b50, b99) = (percentile(&mut baseline, 50.0), percentile(&mut baseline, 99.0));
    eprintln!(
        "bench-restart-socket: {name}: p50 {p50:.1} µs, p99 {p99:.1} µs (floor p50 {b50:.1} µs, p99 {b99:.1} µs)"
    );
    Row::new(MECHANISM, &format!("{name} (p50)"), p50, "µs", "≤ 100 µs")
        .baseline(&format!("{baseline_name} (p50)"), b50)
        .met(p50 <= 100.0)
        .samples(thin(&figure))
        .emit();
    Row::new(MECHANISM, &format!("{name} (p99)"), p99, "µs", "informational")
        .baseline(&format!("{baseline_name} (p99)"), b99)
        .emit();
}

fn report_loaded(mut unloaded: Vec<f64>, mut loaded: Vec<f64>) {
    let to_ms = |v: f64| v / 1e3;
    let name = format!("Status, new connection, with {HELD_CONNECTIONS} idle/half-sent connections open");
    let baseline = "same request with no other connections";
    for p in [50.0, 99.0] {
        let (value, base) = (to_ms(percentile(&mut loaded, p)), to_ms(percentile(&mut unloaded, p)));
        eprintln!("bench-restart-socket: {name}: p{p} {value:.3} ms (unloaded {base:.3} ms)");
        Row::new(MECHANISM, &format!("{name} (p{p})"), value, "ms", "≤ 10 ms")
            .baseline(&format!("{baseline} (p{p})"), base)
            .met(value <= 10.0)
            .emit();
    }
    let max = to_ms(loaded.iter().copied().fold(0.0, f64::max));
    Row::new(MECHANISM, &format!("{name} (max)"), max, "ms", "informational").emit();
    if quick() {
        eprintln!("bench-restart-socket: --quick: few samples, figures are rough");
    }
}

/// The benchmark holds ~1000 descriptors at once (500 held connections, both ends).
fn raise_fd_limit(want: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the valid, exclusively borrowed struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur >= want {
        return Ok(());
    }
    anyhow::ensure!(
        limit.rlim_max >= want,
        "RLIMIT_NOFILE hard limit {} is below the {want} descriptors needed",
        limit.rlim_max
    );
    limit.rlim_cur = want;
    // SAFETY: setrlimit only reads the valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(())
}
