//! `lifeline supervise` benchmark (issue 16), each figure beside a baseline from the same run:
//!
//! 1. **Probe overhead**: the CPU time of `lifeline supervise` with one HTTP liveness probe per
//!    second (against an HTTP endpoint this program serves), beside the same supervisor without
//!    a probe, over the same window. Target: at most 1 % of a core.
//! 2. **Rollback latency**: the example server under `lifeline supervise --notify` with
//!    `--rollback-window`; its successor killed (`SIGKILL`) once ready → the old generation answers again
//!    (the supervisor follows it). Beside the restart latency: the same server without a rollback
//!    window, its main process killed (`SIGKILL`) → the supervisor's restart answers. Target: ≤ 2×.
//!
//! CPU time is read from `/proc/<pid>/task/*/schedstat` (nanoseconds on a CPU).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lifeline_bench::{Row, iterations, median, ms, quick};
use lifeline_tests::certs::{LeafSpec, TestCa};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const MECHANISM: &str = "keepalive";

fn main() -> anyhow::Result<()> {
    probe_overhead()?;
    rollback_latency()?;
    Ok(())
}

/// The binaries `cargo xtask bench` built beside this program.
fn beside(relative: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.parent().context("exe dir")?.join(relative);
    if !path.exists() {
        bail!("{} is missing: run through `cargo xtask bench`", path.display());
    }
    Ok(path)
}

/// CPU time (user + system) every thread of `pid` has had so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += text.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).context("schedstat")?;
    }
    Ok(Duration::from_nanos(total))
}

/// An HTTP endpoint answering 200 to everything, on a thread of this process.
fn health_endpoint() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ =
                (&stream).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
        }
    });
    Ok(addr)
}

fn supervise(lifeline: &Path, args: &[String], service: &[&str]) -> anyhow::Result<Child> {
    Ok(Command::new(lifeline)
        .arg("supervise")
        .args(args)
        .arg("--")
        .args(service)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?)
}

fn stop(mut child: Child) -> anyhow::Result<()> {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
    child.wait()?;
    Ok(())
}

fn probe_overhead() -> anyhow::Result<()> {
    let lifeline = beside("lifeline")?;
    let health = health_endpoint()?;
    let probe = format!("liveness,interval=1s,timeout=1s:http://{health}/healthz");
    let window = if quick() { Duration::from_secs(3) } else { Duration::from_secs(30) };
    eprintln!(
        "bench-supervise: CPU of lifeline supervise over {window:?}, with and without a 1/s HTTP probe"
    );
    // Both side by side over the same window: whatever else the machine does touches both.
    let probed = supervise(&lifeline, &["--probe".into(), probe], &["sleep", "600"])?;
    let idle = supervise(&lifeline, &[], &["sleep", "600"])?;
    // Start-up settles (the first probe, the runtime's threads) before counting.
    std::thread::sleep(Duration::from_millis(1500));
    let (probed_before, idle_before) = (cpu_time(probed.id())?, cpu_time(idle.id())?);
    let started = Instant::now();
    std::thread::sleep(window);
    let elapsed = started.elapsed();
    let (probed_after, idle_after) = (cpu_time(probed.id())?, cpu_time(idle.id())?);
    stop(probed)?;
    stop(idle)?;
    let share = |d: Duration| 100.0 * d.as_secs_f64() / elapsed.as_secs_f64();
    let with_probe = share(probed_after.saturating_sub(probed_before));
    let without = share(idle_after.saturating_sub(idle_before));
    Row::new(
        MECHANISM,
        "lifeline supervise CPU with one HTTP probe per second",
        with_probe,
        "% of a core",
        "≤ 1 %",
    )
    .baseline("the same supervisor without a probe, same window", without)
    .met(with_probe <= 1.0)
    .emit();
    Ok(())
}

/// One supervised example server with its files.
struct Server {
    dir: tempfile::TempDir,
    supervisor: Child,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl Server {
    fn start(lifeline: &Path, server: &Path, ca: &TestCa, extra: &[&str]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        ca.issue(&LeafSpec::new(1)).write(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
        std::fs::create_dir(dir.path().join("state"))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let path = |p: &str| dir.path().join(p).display().to_string();
        let mut service = vec![
            server.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--cert".into(),
            path("cert.pem"),
            "--key".into(),
            path("key.pem"),
            "--state-dir".into(),
            path("state"),
            "--control".into(),
            path("control.sock"),
        ];
        service.extend(extra.iter().map(|s| (*s).to_owned()));
        let service: Vec<&str> = service.iter().map(String::as_str).collect();
        let supervisor =
            supervise(lifeline, &["--notify".into(), "--pidfile".into(), path("main.pid")], &service)?;
        let config = lifeline_tests::https::client_config(&ca.cert_der);
        let server = Server { dir, supervisor, addr, config };
        server.wait_answer(|_| true, Duration::from_secs(20))?;
        Ok(server)
    }

    /// Polls with new connections until an answer from a process `accept` accepts; its pid.
    fn wait_answer(&self, accept: impl Fn(u32) -> bool, patience: Duration) -> anyhow::Result<u32> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(body) = lifeline_tests::https::get(self.addr, &self.config, "/")
                && let Some((pid, _, _)) = lifeline_tests::load::parse_answer(&body)
                && accept(pid)
            {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                bail!("no answer from the server in time");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn main_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("main.pid")).ok()?.trim().parse().ok()
    }

    fn handover(&self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<u32> {
        let socket = self.dir.path().join("control.sock");
        Ok(runtime.block_on(async {
            restart_socket::Client::connect(&socket).await?.restart(Duration::from_secs(30)).await
        })?)
    }
}

fn rollback_latency() -> anyhow::Result<()> {
    let lifeline = beside("lifeline")?;
    let server = beside("examples/https-server")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ca = TestCa::new("bench-supervise CA");
    let n = iterations(10, 2);

    eprintln!("bench-supervise: rollback latency, {n} samples");
    let mut rollbacks = Vec::with_capacity(n);
    let standby = Server::start(&lifeline, &server, &ca, &["--rollback-window", "10m"])?;
    for _ in 0..n {
        let old = standby.wait_answer(|_| true, Duration::from_secs(20))?;
        let new = standby.handover(&runtime)?;
        standby.wait_answer(|pid| pid == new, Duration::from_secs(20))?;
        let t0 = Instant::now();
        kill(Pid::from_raw(new as i32), Signal::SIGKILL)?;
        standby.wait_answer(|pid| pid == old, Duration::from_secs(20))?;
        rollbacks.push(ms(t0.elapsed()));
        // The supervisor follows the rollback before the next round.
        let deadline = Instant::now() + Duration::from_secs(20);
        while standby.main_pid() != Some(old) {
            if Instant::now() > deadline {
                bail!("the supervisor did not follow the rollback to {old}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stop(standby.supervisor)?;

    eprintln!("bench-supervise: restart latency (no rollback window), {n} samples");
    // A fresh supervisor for each sample: its first restart is immediate (Backoff's free starts),
    // so the figure is the restart itself, never a backoff delay.
    let mut restarts = Vec::with_capacity(n);
    for _ in 0..n {
        let plain = Server::start(&lifeline, &server, &ca, &[])?;
        let old = plain.wait_answer(|_| true, Duration::from_secs(20))?;
        let t0 = Instant::now();
        kill(Pid::from_raw(old as i32), Signal::SIGKILL)?;
        plain.wait_answer(|pid| pid != old, Duration::from_secs(60))?;
        restarts.push(ms(t0.elapsed()));
        stop(plain.supervisor)?;
    }

    let rollback = median(&mut rollbacks.clone());
    let restart = median(&mut restarts.clone());
    Row::new(
        MECHANISM,
        "rollback latency p50 (successor SIGKILLed → the old generation answers, supervisor follows)",
        rollback,
        "ms",
        "≤ 2× restart",
    )
    .baseline("restart latency p50 (main SIGKILLed → lifeline supervise's restart answers)", restart)
    .met(rollback <= 2.0 * restart)
    .samples(rollbacks)
    .baseline_samples(restarts)
    .emit();
    Ok(())
}
