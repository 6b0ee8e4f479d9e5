//! `lifeline-demo`: the scenario behind `cargo xtask demo`. Starts the example HTTPS server under
//! `lifeline supervise --notify`, drives a live load against it, and walks through every
//! mechanism: dirlock, certwatch, three handovers over the restart socket, a refused upgrade,
//! a SIGKILL the supervisor recovers from, and a clean stop. Checks each expectation, prints a
//! line per phase, and writes `OUT/result.json` (phases, events and the per-request timeline)
//! for xtask to render as `report.md` and an SVG timeline. Exits 1 if any expectation failed.
//!
//! Usage: `lifeline-demo --lifeline PATH --server PATH --out DIR`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use lifeline_tests::certs::{Leaf, LeafSpec, TestCa};
use lifeline_tests::load::{Load, LoadConfig, Sample, parse_answer};
use lifeline_tests::{PATIENCE, wait_for};
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;

/// One phase of the walk-through, as reported.
#[derive(Debug, Serialize)]
struct Phase {
    name: String,
    /// Seconds since the load started.
    start: f64,
    end: f64,
    ok: u64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// What was seen, in words (pids, latencies, reasons).
    notes: Vec<String>,
    passed: bool,
}

/// A moment worth marking on the timeline.
#[derive(Debug, Serialize)]
struct Event {
    at: f64,
    label: String,
}

/// Everything xtask needs to render the report.
#[derive(Debug, Serialize)]
struct Result {
    phases: Vec<Phase>,
    events: Vec<Event>,
    /// (seconds since start, ok) per request.
    requests: Vec<(f64, bool)>,
    passed: bool,
}

struct Demo {
    lifeline: PathBuf,
    server_src: PathBuf,
    out: PathBuf,
    ca: TestCa,
    port: u16,
    start: Instant,
    events: Vec<Event>,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("lifeline-demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn arg(name: &str) -> anyhow::Result<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next().map(PathBuf::from).with_context(|| format!("{name} needs a value"));
        }
    }
    bail!("usage: lifeline-demo --lifeline PATH --server PATH --out DIR (missing {name})")
}

fn run() -> anyhow::Result<bool> {
    let out = arg("--out")?;
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clear {}", out.display()))?;
    }
    std::fs::create_dir_all(out.join("bin"))?;
    std::fs::create_dir_all(out.join("state"))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut demo = Demo {
        lifeline: arg("--lifeline")?,
        server_src: arg("--server")?,
        out,
        ca: TestCa::new("lifeline demo CA"),
        port: free_port(),
        start: Instant::now(),
        events: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(demo.walk())
}

impl Demo {
    fn p(&self, rel: &str) -> PathBuf {
        self.out.join(rel)
    }

    fn mark(&mut self, label: impl Into<String>) {
        self.events.push(Event { at: self.start.elapsed().as_secs_f64(), label: label.into() });
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn server_args(&self) -> Vec<String> {
        vec![
            "--listen".into(),
            self.addr().to_string(),
            "--cert".into(),
            path_str(&self.p("certs/tls.crt")),
            "--key".into(),
            path_str(&self.p("certs/tls.key")),
            "--state-dir".into(),
            path_str(&self.p("state")),
            "--control".into(),
            path_str(&self.p("control.sock")),
            "--ready-timeout".into(),
            "10s".into(),
            "--drain-timeout".into(),
            "10s".into(),
        ]
    }

    async fn walk(&mut self) -> anyhow::Result<bool> {
        println!("demo: building the stage in {}", self.out.display());
        // The executable the supervisor starts is a copy, so that phase 4 can break it.
        let server = self.p("bin/https-server");
        std::fs::copy(&self.server_src, &server).context("copy the example server")?;
        self.ca.write(&self.p("ca.pem"));
        let v1 = self.ca.issue(&LeafSpec::new(1).sans(&["localhost"]));
        let v2 = self.ca.issue(&LeafSpec::new(2).sans(&["localhost"]));
        k8s_secret(&self.p("certs"), "..2026_11_24_v1", &v1)?;

        let log = std::fs::File::create(self.p("server.log"))?;
        let mut supervisor = Command::new(&self.lifeline)
            .args(["supervise", "--notify", "--grace", "10s", "--pidfile"])
            .arg(self.p("server.pid"))
            .arg("--")
            .arg(&server)
            .args(self.server_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start lifeline supervise")?;
        let first_pid = wait_for("the pid file", || read_pid(&self.p("server.pid")));
        let roots = vec![CertificateDer::from(self.ca.cert_der.clone())];
        wait_for_answer(self.addr(), &roots).await?;
        println!(
            "demo: https-server pid {first_pid} serving on https://localhost:{} under lifeline supervise",
            self.port
        );

        // Phases and events are timed from the same moment as the load's samples.
        self.start = Instant::now();
        let load = Load::start(&LoadConfig {
            addr: self.addr(),
            server_name: "localhost".into(),
            roots: roots.clone(),
            workers: 4,
            keep_alive: true,
            path: "/".into(),
            pause: Duration::from_millis(4),
        });
        let fresh = Load::start(&LoadConfig {
            addr: self.addr(),
            server_name: "localhost".into(),
            roots: roots.clone(),
            workers: 1,
            keep_alive: false,
            path: "/".into(),
            pause: Duration::from_millis(4),
        });
        load.wait_for_more(50).await;
        dwell().await;
        let mut phases = Vec::new();

        // 1. dirlock.
        let t = self.start.elapsed();
        let notes = self.second_instance_is_refused(&server, first_pid)?;
        phases.push(self.phase("1 dirlock: second instance refused", t, notes, true));
        dwell().await;

        // 2. certwatch.
        let t = self.start.elapsed();
        let (notes, ok) = self.rotate_certificate(&v1, &v2, &roots).await?;
        phases.push(self.phase("2 certwatch: certificate rotated", t, notes, ok));
        dwell().await;

        // 3. Three handovers.
        let t = self.start.elapsed();
        let (notes, ok) = self.three_handovers(&roots).await?;
        phases.push(self.phase("3 handover: three zero-downtime restarts", t, notes, ok));
        dwell().await;

        // 4. A broken upgrade is refused.
        let t = self.start.elapsed();
        let (notes, ok) = self.broken_upgrade(&server, &roots).await?;
        phases.push(self.phase("4 handover: broken upgrade refused", t, notes, ok));
        dwell().await;

        // 5. SIGKILL; keepalive brings it back.
        let t = self.start.elapsed();
        let (notes, ok) = self.kill_and_recover(&roots).await?;
        phases.push(self.phase("5 keepalive: SIGKILL recovered", t, notes, ok));
        dwell().await;

        // 6. Clean stop.
        let mut samples = stop_on_clock(load, self.start).await;
        samples.extend(stop_on_clock(fresh, self.start).await);
        samples.sort_by_key(|s| s.at);
        let t = self.start.elapsed();
        let (notes, ok) = self.clean_stop(&mut supervisor)?;
        phases.push(self.phase("6 clean stop", t, notes, ok));

        // Expectations on the load, per phase: zero failures except while the server was dead.
        // A phase's requests are those until the next phase starts (the steady run after it too).
        let starts: Vec<f64> = phases.iter().skip(1).map(|p| p.start).chain([f64::INFINITY]).collect();
        for (phase, until) in phases.iter_mut().zip(starts) {
            let (ok, failed, p50, p99) = tally(&samples, phase.start, until);
            phase.ok = ok;
            phase.failed = failed;
            phase.p50_ms = p50;
            phase.p99_ms = p99;
            if failed > 0 && !phase.name.starts_with('5') {
                phase.passed = false;
                phase.notes.push(format!("{failed} failed requests (expected 0)"));
            }
        }
        print_summary(&phases);
        let passed = phases.iter().all(|p| p.passed);
        let result = Result {
            requests: samples.iter().map(|s| (s.at.as_secs_f64(), s.outcome.is_ok())).collect(),
            phases,
            events: std::mem::take(&mut self.events),
            passed,
        };
        std::fs::write(self.p("result.json"), serde_json::to_vec_pretty(&result)?)?;
        println!("demo: {}", if passed { "every expectation held" } else { "SOME EXPECTATIONS FAILED" });
        Ok(passed)
    }

    fn phase(&mut self, name: &str, start: Duration, notes: Vec<String>, passed: bool) -> Phase {
        let end = self.start.elapsed();
        println!("demo: [{}] {name}", if passed { " ok " } else { "FAIL" });
        for note in &notes {
            println!("demo:        {note}");
        }
        Phase {
            name: name.into(),
            start: start.as_secs_f64(),
            end: end.as_secs_f64(),
            ok: 0,
            failed: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            notes,
            passed,
        }
    }

    fn second_instance_is_refused(&mut self, server: &Path, holder: u32) -> anyhow::Result<Vec<String>> {
        self.mark("second instance");
        let mut args = self.server_args();
        args[1] = "127.0.0.1:0".into();
        args.truncate(8); // no control socket for the intruder
        let out = Command::new(server).args(&args).stdin(Stdio::null()).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().rfind(|l| l.contains("locked")).unwrap_or("").trim().to_owned();
        ensure!(
            out.status.code() == Some(75),
            "second instance exited with {} (expected 75): {stderr}",
            out.status
        );
        ensure!(line.contains(&holder.to_string()), "the refusal does not name holder pid {holder}: {line}");
        Ok(vec![format!("exit 75: {line}")])
    }

    async fn rotate_certificate(
        &mut self,
        v1: &Leaf,
        v2: &Leaf,
        roots: &[CertificateDer<'static>],
    ) -> anyhow::Result<(Vec<String>, bool)> {
        let before = presented(self.addr(), roots).await?;
        ensure!(before == v1.der, "the server does not present certificate v1 at start");
        // Kubernetes-style: the new pair lands in a new directory, then `..data` flips to it.
        let dir = self.p("certs");
        let new = dir.join("..2026_11_24_v2");
        std::fs::create_dir_all(&new)?;
        v2.write(&new.join("tls.crt"), &new.join("tls.key"));
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink("..2026_11_24_v2", &tmp)?;
        self.mark("cert rotated");
        let swapped = Instant::now();
        std::fs::rename(&tmp, dir.join("..data"))?;
        let deadline = swapped + PATIENCE;
        loop {
            if presented(self.addr(), roots).await? == v2.der {
                break;
            }
            ensure!(Instant::now() < deadline, "certificate v2 not served {PATIENCE:?} after the swap");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let latency = swapped.elapsed();
        Ok((
            vec![format!(
                "serial {} -> {} presented {:.0} ms after the ..data swap (debounce 150 ms)",
                v1.serial,
                v2.serial,
                latency.as_secs_f64() * 1e3
            )],
            true,
        ))
    }

    async fn three_handovers(
        &mut self,
        roots: &[CertificateDer<'static>],
    ) -> anyhow::Result<(Vec<String>, bool)> {
        let mut notes = Vec::new();
        let mut ok = true;
        let (_, mut generation, mut served) = answer(self.addr(), roots).await?;
        for round in 1..=3 {
            self.mark(format!("restart {round}"));
            let began = Instant::now();
            let out = self.lifeline(&["restart", "--socket", &path_str(&self.p("control.sock"))])?;
            let took = began.elapsed();
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !out.status.success() {
                ok = false;
                notes
                    .push(format!("restart {round} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
                continue;
            }
            let pid: u32 = stdout.parse().with_context(|| format!("lifeline restart printed {stdout:?}"))?;
            let (now_pid, now_generation, now_served) = answer(self.addr(), roots).await?;
            let follows = wait_for_pid_file(&self.p("server.pid"), pid);
            let good = now_pid == pid && now_generation == generation + 1 && now_served > served && follows;
            ok &= good;
            notes.push(format!(
                "restart {round}: new pid {pid} in {:.0} ms, generation {now_generation}, served {served} -> {now_served}, pid file {}",
                took.as_secs_f64() * 1e3,
                if follows { "follows" } else { "DID NOT FOLLOW" }
            ));
            generation = now_generation;
            served = now_served;
            if round < 3 {
                dwell().await;
            }
        }
        Ok((notes, ok))
    }

    async fn broken_upgrade(
        &mut self,
        server: &Path,
        roots: &[CertificateDer<'static>],
    ) -> anyhow::Result<(Vec<String>, bool)> {
        let (pid_before, _, _) = answer(self.addr(), roots).await?;
        // A broken build lands at the executable's path (atomically, as package managers do).
        let good = self.p("bin/https-server.good");
        std::fs::rename(server, &good)?;
        let broken = self.p("bin/broken.tmp");
        std::fs::write(&broken, "#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n")?;
        std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::rename(&broken, server)?;
        self.mark("broken upgrade");
        let out = self.lifeline(&["restart", "--socket", &path_str(&self.p("control.sock"))])?;
        std::fs::rename(&good, server)?;
        let reason = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let (pid_after, _, _) = answer(self.addr(), roots).await?;
        let ok = out.status.code() == Some(1) && pid_after == pid_before;
        Ok((
            vec![
                format!("lifeline restart exited {}: {reason}", out.status.code().unwrap_or(-1)),
                format!("pid {pid_before} still serving: {}", pid_after == pid_before),
            ],
            ok,
        ))
    }

    async fn kill_and_recover(
        &mut self,
        roots: &[CertificateDer<'static>],
    ) -> anyhow::Result<(Vec<String>, bool)> {
        let pid = read_pid(&self.p("server.pid")).context("no pid file")?;
        self.mark("SIGKILL");
        let killed = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)?;
        let deadline = killed + PATIENCE;
        let (new_pid, generation) = loop {
            if let Ok((p, g, _)) = answer(self.addr(), roots).await
                && p != pid
            {
                break (p, g);
            }
            ensure!(Instant::now() < deadline, "the server did not come back within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let downtime = killed.elapsed();
        self.mark("back");
        let follows = wait_for_pid_file(&self.p("server.pid"), new_pid);
        Ok((
            vec![format!(
                "pid {pid} killed; pid {new_pid} (generation {generation}, state lost with the process) answered {:.0} ms later; pid file {}",
                downtime.as_secs_f64() * 1e3,
                if follows { "follows" } else { "DID NOT FOLLOW" }
            )],
            follows,
        ))
    }

    fn clean_stop(&mut self, supervisor: &mut Child) -> anyhow::Result<(Vec<String>, bool)> {
        self.mark("stop");
        let pid = supervisor.id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)?;
        let status = wait_for("lifeline supervise to exit", || supervisor.try_wait().ok().flatten());
        let leftovers: Vec<&str> = ["server.pid", "control.sock", "state/.lifeline.lock"]
            .into_iter()
            .filter(|f| self.p(f).exists())
            .collect();
        let ok = status.success() && leftovers.is_empty();
        Ok((
            vec![format!(
                "lifeline supervise exited {}; left behind: {}",
                status.code().unwrap_or(-1),
                if leftovers.is_empty() { "nothing".to_owned() } else { leftovers.join(", ") }
            )],
            ok,
        ))
    }

    fn lifeline(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(&self.lifeline).args(args).stdin(Stdio::null()).output().context("run lifeline")
    }
}

/// Lays out a Kubernetes secret volume: `DIR/<version>/tls.{crt,key}`, `..data -> <version>`,
/// `tls.crt -> ..data/tls.crt`, `tls.key -> ..data/tls.key`.
fn k8s_secret(dir: &Path, version: &str, leaf: &Leaf) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join(version))?;
    leaf.write(&dir.join(version).join("tls.crt"), &dir.join(version).join("tls.key"));
    std::os::unix::fs::symlink(version, dir.join("..data"))?;
    std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt"))?;
    std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key"))?;
    Ok(())
}

/// Lets the load run on its own for a moment, so that the timeline shows the service steady
/// between the events (pacing for the viewer, not synchronisation: every check waits on its
/// own condition).
async fn dwell() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Stops `load` and returns its samples timed from `origin`. Each load counts from its own start,
/// a few ms after the demo's (building its TLS client takes that long): without rebasing, a request
/// failed by the SIGKILL could be tallied in the phase before it.
async fn stop_on_clock(load: Load, origin: Instant) -> Vec<Sample> {
    let offset = load.origin().saturating_duration_since(origin);
    let mut samples = load.stop().await;
    for s in &mut samples {
        s.at += offset;
    }
    samples
}

fn tally(samples: &[Sample], from: f64, to: f64) -> (u64, u64, f64, f64) {
    let mut latencies = Vec::new();
    let (mut ok, mut failed) = (0, 0);
    // By completion: a request in flight when the server is killed fails after the kill.
    for s in samples.iter().filter(|s| (from..to).contains(&(s.at + s.latency).as_secs_f64())) {
        if s.outcome.is_ok() {
            ok += 1;
            latencies.push(s.latency.as_secs_f64() * 1e3);
        } else {
            failed += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1]
        }
    };
    (ok, failed, pct(0.5), pct(0.99))
}

fn print_summary(phases: &[Phase]) {
    println!("\n{:<44} {:>8} {:>7} {:>9} {:>9}  result", "phase", "ok", "failed", "p50 ms", "p99 ms");
    for p in phases {
        println!(
            "{:<44} {:>8} {:>7} {:>9.2} {:>9.2}  {}",
            p.name,
            p.ok,
            p.failed,
            p.p50_ms,
            p.p99_ms,
            if p.passed { "ok" } else { "FAIL" }
        );
    }
    println!();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

use lifeline_tests::proc::read_pid;

fn wait_for_pid_file(path: &Path, pid: u32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if read_pid(path) == Some(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn tls_config(roots: &[CertificateDer<'static>]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    Ok(Arc::new(rustls::ClientConfig::builder().with_root_certificates(store).with_no_client_auth()))
}

/// The leaf certificate the server presents, from a real handshake.
async fn presented(addr: SocketAddr, roots: &[CertificateDer<'static>]) -> anyhow::Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(tls_config(roots)?)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().and_then(|c| c.first()).context("no certificate presented")?;
    Ok(leaf.to_vec())
}

/// One `GET /` on a new connection: (pid, generation, served).
async fn answer(addr: SocketAddr, roots: &[CertificateDer<'static>]) -> anyhow::Result<(u32, u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(tls_config(roots)?)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await.or_else(|e| {
        // A TLS close_notify missing after `Connection: close` is harmless here.
        if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(0) } else { Err(e) }
    })?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    parse_answer(body).with_context(|| format!("unexpected answer: {response:?}"))
}

async fn wait_for_answer(addr: SocketAddr, roots: &[CertificateDer<'static>]) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match answer(addr, roots).await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() > deadline => return Err(err.context("the server never answered")),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
