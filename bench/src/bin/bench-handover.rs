//! Benchmark of `handover`: restart latency (request → "restart complete") against the floor of
//! spawning the same binary and reading one readiness byte, and requests failed while clients
//! hammer the server through repeated restarts — `handover` side by side with the same server on
//! cloudflare's `ecdysis` and with a naive stop-then-start restart. All in one run, one machine.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lifeline_bench::{Row, iterations, median, ms, percentile};

const MECHANISM: &str = "handover";
const TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    state_size_curve()?;
    let helper = helper()?;
    let dir = tempfile::tempdir()?;

    // Floor and handover samples alternate, so that both see the same machine load.
    let mut server = Server::start(&helper, Kind::Handover, dir.path())?;
    // One untimed round warms the page cache and the lazy paths of both.
    server.restart()?;
    floor_latency(&helper)?;
    let mut floor_ms = Vec::new();
    let mut handover_ms = Vec::new();
    for _ in 0..iterations(50, 5) {
        floor_ms.push(ms(floor_latency(&helper)?));
        handover_ms.push(ms(server.restart()?));
    }
    drop(server);
    let floor_p50 = median(&mut floor_ms);
    let handover_p50 = median(&mut handover_ms);
    let handover_p99 = percentile(&mut handover_ms, 99.0);
    Row::new(MECHANISM, "restart latency p50 (request → restart complete)", handover_p50, "ms", "≤ 25 ms")
        .baseline("spawn same binary + read 1 readiness byte (p50)", floor_p50)
        .met(handover_p50 <= 25.0)
        .samples(handover_ms.clone())
        .emit();
    Row::new(MECHANISM, "restart latency p99", handover_p99, "ms", "informational")
        .baseline("spawn same binary + read 1 readiness byte (p99)", percentile(&mut floor_ms, 99.0))
        .emit();

    let ecdysis = restart_latencies(&helper, Kind::Ecdysis, dir.path(), iterations(20, 3))?;
    let mut ecdysis_ms: Vec<f64> = ecdysis.iter().map(|d| ms(*d)).collect();
    Row::new(
        MECHANISM,
        "ecdysis 1.1.1 restart latency p50 (upgrade socket → closed)",
        median(&mut ecdysis_ms),
        "ms",
        "informational",
    )
    .baseline("handover restart latency p50", handover_p50)
    .samples(ecdysis_ms)
    .emit();
    let naive = restart_latencies(&helper, Kind::Naive, dir.path(), iterations(20, 3))?;
    let mut naive_ms: Vec<f64> = naive.iter().map(|d| ms(*d)).collect();
    Row::new(
        MECHANISM,
        "naive stop-then-start latency p50 (SIGTERM → new one serving)",
        median(&mut naive_ms),
        "ms",
        "informational",
    )
    .baseline("handover restart latency p50", handover_p50)
    .samples(naive_ms)
    .emit();

    let restarts = iterations(20, 3);
    let naive = failures_under_load(&helper, Kind::Naive, dir.path(), restarts)?;
    let ecdysis = failures_under_load(&helper, Kind::Ecdysis, dir.path(), restarts)?;
    let handover = failures_under_load(&helper, Kind::Handover, dir.path(), restarts)?;
    for (kind, load) in [(Kind::Handover, &handover), (Kind::Ecdysis, &ecdysis), (Kind::Naive, &naive)] {
        eprintln!(
            "bench-handover: {kind:?}: {} ok, {} failed over {restarts} restarts; first failures: {:?}",
            load.ok,
            load.failures.len(),
            load.failures.iter().take(3).collect::<Vec<_>>()
        );
    }
    let name = format!("failed requests during {restarts} handovers under load");
    Row::new(MECHANISM, &name, handover.failures.len() as f64, "count", "0")
        .baseline("naive stop-then-start, same load", naive.failures.len() as f64)
        .met(handover.failures.is_empty())
        .emit();
    let name = format!("ecdysis 1.1.1: failed requests during {restarts} upgrades under load");
    Row::new(MECHANISM, &name, ecdysis.failures.len() as f64, "count", "informational")
        .baseline("naive stop-then-start, same load", naive.failures.len() as f64)
        .emit();
    let name = format!("requests answered during the {restarts}-handover run (4 clients)");
    Row::new(MECHANISM, &name, handover.ok as f64, "count", "informational").emit();
    Ok(())
}

/// The helper server program, built beside this one (`cargo xtask bench` builds every bench
/// binary); built on demand when this benchmark was built alone.
fn helper() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("bench-handover-server");
    if !path.exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--release", "-p", "lifeline-bench", "--bin", "bench-handover-server"])
            .current_dir(root)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() || !path.exists() {
            bail!("cannot build {}", path.display());
        }
    }
    Ok(path)
}

/// Spawns the helper binary and reads the one byte it writes: what any restart has to pay.
fn floor_latency(helper: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new(helper).arg("--floor").stdout(Stdio::piped()).spawn()?;
    let mut byte = [0u8; 1];
    child.stdout.take().context("stdout")?.read_exact(&mut byte)?;
    let elapsed = start.elapsed();
    child.wait()?;
    Ok(elapsed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Handover,
    Ecdysis,
    Naive,
}

/// A running server of one kind and the lines its processes print.
struct Server {
    kind: Kind,
    helper: PathBuf,
    dir: PathBuf,
    port: u16,
    lines: mpsc::Receiver<String>,
    tx: mpsc::Sender<String>,
    children: Vec<Child>,
    pid: u32,
    addr: SocketAddr,
}

fn pipe_lines(child: &mut Child, tx: &mpsc::Sender<String>) {
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    fn start(helper: &Path, kind: Kind, dir: &Path) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir_in(dir)?.keep();
        let (tx, lines) = mpsc::channel();
        let mut server = Server {
            kind,
            helper: helper.to_owned(),
            dir,
            port: free_port()?,
            lines,
            tx,
            children: Vec::new(),
            pid: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.helper);
        match self.kind {
            Kind::Handover => cmd.arg("--handover").arg("--control").arg(self.dir.join("control")),
            Kind::Ecdysis => cmd
                .arg("--ecdysis")
                .args(["--port", &self.port.to_string()])
                .arg("--upgrade-socket")
                .arg(self.dir.join("upgrade")),
            Kind::Naive => cmd.arg("--naive").args(["--port", &self.port.to_string()]),
        };
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
        pipe_lines(&mut child, &self.tx);
        self.children.push(child);
        self.wait_ready(None)
    }

    /// Waits for a `ready` line (of `pid`, when given).
    fn wait_ready(&mut self, pid: Option<u32>) -> anyhow::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let line = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))?;
            let Some(rest) = line.strip_prefix("ready pid=") else { continue };
            let mut words = rest.split_whitespace();
            let ready_pid: u32 = words.next().context("pid")?.parse()?;
            if pid.is_some_and(|p| p != ready_pid) {
                continue;
            }
            let addr = words.find_map(|w| w.strip_prefix("addr=")).context("addr")?;
            self.pid = ready_pid;
            self.addr = addr.parse()?;
            return Ok(());
        }
    }

    /// Restarts the server the way its kind does; returns request → complete.
    fn restart(&mut self) -> anyhow::Result<Duration> {
        match self.kind {
            Kind::Handover => {
                let mut conn = UnixStream::connect(self.dir.join("control"))?;
                conn.set_read_timeout(Some(TIMEOUT))?;
                let mut answer = String::new();
                let start = Instant::now();
                conn.write_all(b"restart\n")?;
                BufReader::new(conn).read_line(&mut answer)?;
                let elapsed = start.elapsed();
                let pid = answer.trim().strip_prefix("ok ").with_context(|| format!("restart: {answer}"))?;
                self.wait_ready(Some(pid.parse()?))?;
                Ok(elapsed)
            }
            Kind::Ecdysis => {
                let old = self.pid;
                let start = Instant::now();
                let mut conn = UnixStream::connect(self.dir.join("upgrade"))?;
                conn.set_read_timeout(Some(TIMEOUT))?;
                let mut rest = Vec::new();
                conn.read_to_end(&mut rest)?;
                let elapsed = start.elapsed();
                self.wait_ready(None)?;
                if self.pid == old {
                    bail!("ecdysis did not upgrade");
                }
                Ok(elapsed)
            }
            Kind::Naive => {
                let start = Instant::now();
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid as i32),
                    nix::sys::signal::SIGTERM,
                )?;
                let mut old = self.children.pop().context("no child")?;
                old.wait()?;
                self.spawn()?;
                Ok(start.elapsed())
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::SIGKILL);
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn restart_latencies(helper: &Path, kind: Kind, dir: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut server = Server::start(helper, kind, dir)?;
    // One untimed restart warms the page cache and the server's lazy paths.
    server.restart()?;
    (0..n).map(|_| server.restart()).collect()
}

struct LoadResult {
    ok: u64,
    failures: Vec<String>,
}

/// Hammers the server (new connections and keep-alive ones) while it restarts `restarts` times.
fn failures_under_load(helper: &Path, kind: Kind, dir: &Path, restarts: usize) -> anyhow::Result<LoadResult> {
    let mut server = Server::start(helper, kind, dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, addr) = (stop.clone(), ok.clone(), server.addr);
            std::thread::spawn(move || hammer(addr, i % 2 == 0, &stop, &ok))
        })
        .collect();
    let wait_progress = |n: u64| {
        let target = ok.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + TIMEOUT;
        while ok.load(Ordering::SeqCst) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_progress(50);
    for _ in 0..restarts {
        server.restart()?;
        wait_progress(50);
    }
    stop.store(true, Ordering::SeqCst);
    let failures = threads.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect();
    Ok(LoadResult { ok: ok.load(Ordering::SeqCst), failures })
}

fn hammer(addr: SocketAddr, new_connections: bool, stop: &AtomicBool, ok: &AtomicU64) -> Vec<String> {
    let mut failures = Vec::new();
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
        if conn.is_none() {
            match TcpStream::connect(addr).and_then(|c| {
                c.set_read_timeout(Some(TIMEOUT))?;
                let reader = BufReader::new(c.try_clone()?);
                Ok((c, reader))
            }) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    failures.push(format!("connect: {e}"));
                    // A refused connect returns at once; do not spin on it.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
        }
        let Some((c, reader)) = conn.as_mut() else { continue };
        let mut answer = String::new();
        match c.write_all(b"GET\n").and_then(|()| reader.read_line(&mut answer)) {
            Ok(n) if n > 0 => {
                ok.fetch_add(1, Ordering::SeqCst);
                if new_connections || answer.trim_end().ends_with(" close") {
                    conn = None;
                }
            }
            Ok(_) => {
                failures.push("closed without an answer".to_owned());
                conn = None;
            }
            Err(e) => {
                failures.push(format!("request: {e}"));
                conn = None;
            }
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------------
// The state-size curve.

/// A state that is one large blob, serialised as bytes (postcard writes a length and the bytes;
/// `Vec<u8>`'s own serde impl would go byte by byte).
struct Blob<'a>(&'a [u8]);

impl serde::Serialize for Blob<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Decoded in place from the frame's payload (postcard hands out borrowed bytes): the state the
/// new process holds is the payload buffer it read, as the bare pipe's reader holds its buffer.
impl<'de> serde::Deserialize<'de> for Blob<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Blob<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Blob<'de>, E> {
                Ok(Blob(v))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// The floor: `bytes` written into a bare pipe by one thread and read by another into a buffer
/// allocated for them (any receiver must hold the state).
fn bare_pipe(bytes: &Arc<Vec<u8>>) -> anyhow::Result<Duration> {
    let (rx, tx) = nix::unistd::pipe()?;
    let (mut rx, mut tx) = (std::fs::File::from(rx), std::fs::File::from(tx));
    let data = Arc::clone(bytes);
    let start = Instant::now();
    let writer = std::thread::spawn(move || tx.write_all(&data));
    let mut got = vec![0u8; bytes.len()];
    rx.read_exact(&mut got)?;
    let elapsed = start.elapsed();
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    std::hint::black_box(&got);
    Ok(elapsed)
}

/// handover's state pipe: `StateWriter::send` — a frame encoded (postcard), written into a pipe
/// on one thread; `StateReader::recv_frame` (the limit checked before allocating) and decoding on
/// another. With `raw`, `StateWriter::send_raw` instead: the header, then the bytes as they are.
fn frame_pipe(
    bytes: &Arc<Vec<u8>>,
    runtime: &tokio::runtime::Runtime,
    raw: bool,
) -> anyhow::Result<Duration> {
    let limit = 1 << 30;
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let data = Arc::clone(bytes);
    let start = Instant::now();
    let writer = runtime.spawn(async move {
        let tx = tokio::net::unix::pipe::Sender::from_owned_fd(tx)?;
        let mut writer = handover::StateWriter::over(tx, limit);
        if raw {
            writer.send_raw(1, &data).await?;
        } else {
            writer.send(1, &Blob(&data)).await?;
        }
        anyhow::Ok(())
    });
    let got = runtime.block_on(async move {
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rx)?;
        let frame = handover::StateReader::over(rx, limit).recv_frame().await?.context("no frame")?;
        let len = if raw { frame.payload.len() } else { frame.decode_borrowed::<Blob<'_>>(1)?.0.len() };
        anyhow::Ok(len)
    })?;
    let elapsed = start.elapsed();
    runtime.block_on(writer)??;
    anyhow::ensure!(got == bytes.len(), "short state");
    Ok(elapsed)
}

/// A sealed memfd: built in place (`SealedState::build`, the one copy of the state), its fd
/// passed over a unix socket (`SCM_RIGHTS`, as a connected successor gets it; a spawned one
/// inherits it) and mapped (`SealedState::map`). Returns (build + pass + map, pass + map alone).
/// Sending and receiving run on one thread: the figure is the kernel's work of passing and
/// mapping, without a thread's wake-up in it.
fn sealed_memfd(bytes: &Arc<Vec<u8>>) -> anyhow::Result<(Duration, Duration)> {
    use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let (a, b) = UnixStream::pair()?;
    let start = Instant::now();
    let fd = handover::SealedState::build("bench-state", 1, bytes.len(), |buf| buf.copy_from_slice(bytes))?;
    let built = Instant::now();
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        a.as_raw_fd(),
        &[std::io::IoSlice::new(b"S")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    drop(fd);
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(b.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let raw = msg
        .cmsgs()?
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .context("no fd")?;
    // SAFETY: the fd was just received and is ours alone.
    let received = unsafe { OwnedFd::from_raw_fd(raw) };
    let mapped = handover::SealedState::map(&received, 1 << 30)?;
    anyhow::ensure!(mapped.payload().len() == bytes.len(), "mapped the wrong size");
    let done = Instant::now();
    Ok((done.duration_since(start), done.duration_since(built)))
}

/// State sizes 1 KiB, 1 MiB, 64 MiB and 512 MiB (`--quick`: 1 KiB): the transfer throughput of
/// handover's state pipe and of a sealed memfd, each beside the same bytes through a bare pipe,
/// measured in the same run with the three interleaved.
fn state_size_curve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let sizes: &[(usize, &str, usize)] = if lifeline_bench::quick() {
        &[(1 << 10, "1 KiB", 5)]
    } else {
        &[(1 << 10, "1 KiB", 200), (1 << 20, "1 MiB", 50), (64 << 20, "64 MiB", 7), (512 << 20, "512 MiB", 3)]
    };
    let mut pass_times = Vec::new();
    for &(size, label, reps) in sizes {
        let bytes = Arc::new((0..size).map(|i| (i * 31) as u8).collect::<Vec<u8>>());
        // One untimed round: page cache, allocator, lazy paths.
        bare_pipe(&bytes)?;
        frame_pipe(&bytes, &runtime, false)?;
        sealed_memfd(&bytes)?;
        let (mut floor, mut frame, mut sealed, mut pass) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut raw = Vec::new();
        for _ in 0..reps {
            floor.push(bare_pipe(&bytes)?.as_secs_f64());
            frame.push(frame_pipe(&bytes, &runtime, false)?.as_secs_f64());
            raw.push(frame_pipe(&bytes, &runtime, true)?.as_secs_f64());
            let (all, passed) = sealed_memfd(&bytes)?;
            sealed.push(all.as_secs_f64());
            pass.push(passed.as_secs_f64());
        }
        let mib = size as f64 / 1_048_576.0;
        let (floor_s, frame_s, sealed_s, pass_s) =
            (median(&mut floor), median(&mut frame), median(&mut sealed), median(&mut pass));
        let raw_s = median(&mut raw);
        eprintln!(
            "bench-handover: state {label}: bare pipe {:.3} ms, state pipe frame {:.3} ms (raw {:.3} ms), sealed memfd build+pass+map {:.3} ms (pass+map {:.3} ms)",
            floor_s * 1e3,
            frame_s * 1e3,
            raw_s * 1e3,
            sealed_s * 1e3,
            pass_s * 1e3
        );
        let floor_name = format!("the same bytes through a bare pipe (median of {reps})");
        Row::new(
            MECHANISM,
            &format!("state transfer throughput through the state pipe, postcard frame (StateWriter::send: encode, write, read, decode in place), {label}"),
            mib / frame_s,
            "MiB/s",
            "informational: postcard's encoding is one more copy of the state",
        )
        .baseline(&floor_name, mib / floor_s)
        .point("state pipe throughput, postcard frame, vs state size", "state size (bytes)", size as f64)
        .emit();
        Row::new(
            MECHANISM,
            &format!(
                "state transfer throughput as a sealed memfd (build in place, pass the fd, map), {label}"
            ),
            mib / sealed_s,
            "MiB/s",
            "≥ 0.8× the pipe floor",
        )
        .baseline(&floor_name, mib / floor_s)
        .point("sealed-memfd throughput vs state size", "state size (bytes)", size as f64)
        .met(mib / sealed_s >= 0.8 * mib / floor_s)
        .emit();
        Row::new(
            MECHANISM,
            &format!("sealed memfd: passing the fd and mapping it, once built, {label}"),
            pass_s * 1e6,
            "µs",
            "O(1): flat in the state size",
        )
        .baseline("the same bytes through a bare pipe", floor_s * 1e6)
        .point("sealed memfd pass+map time vs state size", "state size (bytes)", size as f64)
        .emit();
        pass_times.push((label, pass_s));
    }
    if let (Some((small, first)), Some((large, last))) = (pass_times.first(), pass_times.last())
        && pass_times.len() > 1
    {
        Row::new(
            MECHANISM,
            &format!("sealed memfd: pass + map of {large} against {small}"),
            last * 1e6,
            "µs",
            "≤ 2× (O(1) in the state size)",
        )
        .baseline(&format!("pass + map of {small}"), first * 1e6)
        .met(*last <= 2.0 * first)
        .emit();
    }
    Ok(())
}
