//! keepalive benchmark: exit detection latency (SIGKILL → exit event) for a child and for an
//! adopted non-child, against the floor (a bare pidfd becoming readable) and the polling designs
//! it replaces (a 1 s liveness loop — the seed's design for adopted processes — and a `try_wait`
//! loop at 10 ms); the idle cost of `lifeline supervise` (voluntary context switches of a quiet
//! supervisor, against a 1 s polling thread over the same window) and its resident memory.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keepalive::{Command, Decision, EventKind, Exit, Snapshot, Supervisor};
use lifeline_bench::{Row, iterations, percentile, quick, us};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const MECHANISM: &str = "keepalive";

fn main() -> anyhow::Result<()> {
    let n = iterations(300, 30);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    eprintln!("bench-keepalive: floor (bare pidfd), {n} samples");
    let mut floor = floor_samples(n)?;
    eprintln!("bench-keepalive: supervised child, {n} samples");
    let mut child = runtime.block_on(child_samples(n))?;
    eprintln!("bench-keepalive: adopted non-child, {n} samples");
    let mut adopted = runtime.block_on(adopted_samples(n))?;
    let n_try = iterations(100, 10);
    eprintln!("bench-keepalive: try_wait loop at 10 ms, {n_try} samples");
    let mut try_wait = poll_samples(n_try, Duration::from_millis(10), Poller::TryWait)?;
    let n_seed = iterations(10, 3);
    eprintln!("bench-keepalive: 1 s polling loop, {n_seed} samples (up to {n_seed} s)");
    let mut seed = poll_samples(n_seed, Duration::from_secs(1), Poller::Liveness)?;

    let floor_p50 = percentile(&mut floor, 50.0);
    let child_p50 = percentile(&mut child, 50.0);
    let adopted_p50 = percentile(&mut adopted, 50.0);
    Row::new(
        MECHANISM,
        "exit detection p50, supervised child (SIGKILL → Exited event emitted)",
        child_p50,
        "µs",
        "≤ 1 ms",
    )
    .baseline("bare pidfd readable (floor)", floor_p50)
    .met(child_p50 <= 1000.0)
    .samples(child.clone())
    .emit();
    Row::new(
        MECHANISM,
        "exit detection p99, supervised child",
        percentile(&mut child, 99.0),
        "µs",
        "informational",
    )
    .baseline("bare pidfd readable p99", percentile(&mut floor, 99.0))
    .emit();
    Row::new(
        MECHANISM,
        "exit detection p50, adopted non-child (pidfd, status unknown)",
        adopted_p50,
        "µs",
        "≤ 1 ms",
    )
    .baseline("bare pidfd readable (floor)", floor_p50)
    .met(adopted_p50 <= 1000.0)
    .samples(adopted.clone())
    .emit();
    Row::new(
        MECHANISM,
        "exit detection p99, adopted non-child",
        percentile(&mut adopted, 99.0),
        "µs",
        "informational",
    )
    .baseline("bare pidfd readable p99", percentile(&mut floor, 99.0))
    .emit();
    Row::new(
        MECHANISM,
        "exit detection p50, try_wait loop at 10 ms",
        percentile(&mut try_wait, 50.0),
        "µs",
        "informational",
    )
    .baseline("keepalive, supervised child", child_p50)
    .samples(try_wait)
    .emit();
    Row::new(
        MECHANISM,
        "exit detection p50, 1 s liveness polling loop (the seed's adopted-process design)",
        percentile(&mut seed, 50.0),
        "µs",
        "informational",
    )
    .baseline("keepalive, adopted non-child", adopted_p50)
    .samples(seed)
    .emit();

    idle_rows()?;
    supervisors_curve()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The curve: many supervisors in one process.

/// Resident memory of this process, in KiB.
fn own_rss_kib() -> anyhow::Result<u64> {
    status_field(Path::new("/proc/self/status"), "VmRSS:")
}

/// Voluntary context switches of every thread of this process.
fn own_switches() -> anyhow::Result<u64> {
    voluntary_switches(std::process::id())
}

/// The floor of supervising: the child held by a pidfd that tokio watches, one task each.
struct Bare {
    children: Vec<std::process::Child>,
    exited: tokio::sync::mpsc::UnboundedReceiver<(u32, Instant)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

// `AsyncFd::new` is deprecated in newer tokio for types whose fd may change; an `OwnedFd` owns
// one fd for its whole life (keepalive's own `sys::async_fd` says the same).
#[allow(deprecated)]
fn bare_watchers(n: usize) -> anyhow::Result<Bare> {
    let (tx, exited) = tokio::sync::mpsc::unbounded_channel();
    let mut children = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let child = sleeper()?;
        let pid = child.id();
        let fd = tokio::io::unix::AsyncFd::new(pidfd_open(pid)?)?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            if fd.readable().await.is_ok() {
                let _ = tx.send((pid, Instant::now()));
            }
        }));
        children.push(child);
    }
    Ok(Bare { children, exited, tasks })
}

/// 1, 100 and 1 000 `keepalive::Supervisor`s in one process (`--quick`: 1), each supervising a
/// `sleep`: resident memory per supervised service, exit detection latency (SIGKILL of one of
/// them → its `Exited` event), and wake-ups while every one of them is idle — each beside the
/// floor measured in the same run: the same number of children held by bare pidfds watched by
/// tokio, one task each.
fn supervisors_curve() -> anyhow::Result<()> {
    lifeline_bench::raise_fd_limit(16_384)?;
    let points: &[usize] = if quick() { &[1] } else { &[1, 100, 1000] };
    let idle = if quick() { Duration::from_millis(500) } else { Duration::from_secs(5) };
    for &n in points {
        let kills = if quick() { 3 } else { 30 };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // The floor first, in its own runtime and dropped before the figure: the memory of each
        // is measured from the same starting point.
        let (floor_kib, floor_detect, floor_wakes) = runtime.block_on(async {
            let before = own_rss_kib()?;
            let mut bare = bare_watchers(n)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let kib = own_rss_kib()?.saturating_sub(before) as f64 / n as f64;
            let switches = own_switches()?;
            tokio::time::sleep(idle).await;
            let wakes = own_switches()?.saturating_sub(switches);
            let mut detect = Vec::new();
            for i in 0..kills.min(n) {
                let pid = bare.children[i * n / kills.min(n)].id();
                let t0 = Instant::now();
                sigkill(pid)?;
                loop {
                    let (seen, at) = bare.exited.recv().await.context("bare watcher")?;
                    if seen == pid {
                        detect.push(us(at.duration_since(t0)));
                        break;
                    }
                }
            }
            for child in &mut bare.children {
                let _ = child.kill();
                let _ = child.wait();
            }
            for task in bare.tasks.drain(..) {
                task.abort();
            }
            anyhow::Ok((kib, detect, wakes))
        })?;
        drop(runtime);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (kib, detect, wakes) = runtime.block_on(async {
            let before = own_rss_kib()?;
            let restart = |_: &Exit| Decision::Restart { after: Duration::ZERO };
            let mut supervised = Vec::with_capacity(n);
            for _ in 0..n {
                supervised.push(Supervisor::new(Command::new("sleep").arg("600")).policy(restart).spawn()?);
            }
            let mut events: Vec<keepalive::Events> =
                supervised.iter().map(keepalive::Supervised::events).collect();
            // Every service started (its Started event), then let the supervisors settle.
            let mut pids = Vec::with_capacity(n);
            for ev in &mut events {
                loop {
                    match ev.next().await.map(|e| e.kind) {
                        Some(EventKind::Started { pid, .. }) => break pids.push(pid),
                        Some(_) => {}
                        None => bail!("a supervisor ended"),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let kib = own_rss_kib()?.saturating_sub(before) as f64 / n as f64;
            let switches = own_switches()?;
            tokio::time::sleep(idle).await;
            let wakes = own_switches()?.saturating_sub(switches);
            let mut detect = Vec::new();
            for i in 0..kills.min(n) {
                let k = i * n / kills.min(n);
                let t0 = Instant::now();
                sigkill(pids[k])?;
                detect.push(us(exited_at(&mut events[k]).await?.duration_since(t0)));
                // Its restart, before the next sample.
                loop {
                    match events[k].next().await.map(|e| e.kind) {
                        Some(EventKind::Started { pid, .. }) => break pids[k] = pid,
                        Some(_) => {}
                        None => bail!("a supervisor ended"),
                    }
                }
            }
            let stops: Vec<_> = supervised.into_iter().map(|s| tokio::spawn(s.stop())).collect();
            for stop in stops {
                stop.await??;
            }
            anyhow::Ok((kib, detect, wakes))
        })?;
        drop(runtime);
        report_curve_point(n, idle, (kib, detect, wakes), (floor_kib, floor_detect, floor_wakes));
    }
    Ok(())
}

fn report_curve_point(n: usize, idle: Duration, figure: (f64, Vec<f64>, u64), floor: (f64, Vec<f64>, u64)) {
    let (kib, mut detect, wakes) = figure;
    let (floor_kib, mut floor_detect, floor_wakes) = floor;
    let (p50, floor_p50) = (percentile(&mut detect, 50.0), percentile(&mut floor_detect, 50.0));
    eprintln!(
        "bench-keepalive: {n} supervisors: {kib:.1} KiB each (floor {floor_kib:.1}), exit detection p50 {p50:.0} µs \
         (floor {floor_p50:.0}), {wakes} wake-ups in {idle:?} idle (floor {floor_wakes})"
    );
    let at_max = n == 1000;
    Row::new(
        MECHANISM,
        &format!("resident memory per supervised service, {n} supervisors in one process"),
        kib,
        "KiB",
        "≤ 64 KiB",
    )
    .baseline("a child held by a bare pidfd watched by tokio, one task each", floor_kib)
    .point("memory per supervised service vs supervisors", "supervisors in one process", n as f64)
    .met(kib <= 64.0)
    .emit();
    Row::new(
        MECHANISM,
        &format!("exit detection p50 with {n} supervisors in one process (SIGKILL → Exited event)"),
        p50,
        "µs",
        if at_max { "≤ 1 ms" } else { "informational (target at 1000)" },
    )
    .baseline("bare pidfd watched by tokio among as many (floor)", floor_p50)
    .point("exit detection p50 vs supervisors", "supervisors in one process", n as f64)
    .met_if(at_max, p50 <= 1000.0)
    .emit();
    Row::new(
        MECHANISM,
        &format!("wake-ups of the whole process while {n} supervisors are idle, over {} s (voluntary context switches)", idle.as_secs_f64()),
        wakes as f64,
        "count",
        "≤ floor: no wake-up of its own (the timed sleep that opens the window is one)",
    )
    .baseline("the same number of bare pidfd watchers, same window", floor_wakes as f64)
    .point("idle wake-ups vs supervisors", "supervisors in one process", n as f64)
    .met(wakes <= floor_wakes)
    .emit();
}

fn pidfd_open(pid: u32) -> anyhow::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        bail!("pidfd_open({pid}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: the fd is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn sigkill(pid: u32) -> anyhow::Result<()> {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).context("SIGKILL")
}

fn sleeper() -> anyhow::Result<std::process::Child> {
    Process::new("sleep").arg("600").stdout(Stdio::null()).spawn().context("spawn sleep")
}

/// The floor: SIGKILL, then block in poll(2) on the process's pidfd until it is readable.
fn floor_samples(n: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let mut child = sleeper()?;
        let fd = pidfd_open(child.id())?;
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let t0 = Instant::now();
        sigkill(child.id())?;
        // SAFETY: one pollfd that lives across the call.
        if unsafe { libc::poll(&raw mut pfd, 1, 10_000) } != 1 {
            bail!("pidfd did not become readable");
        }
        samples.push(us(t0.elapsed()));
        child.wait()?;
    }
    Ok(samples)
}

/// A supervised child, restarted at once after each kill: SIGKILL → `Exited` received.
async fn child_samples(n: usize) -> anyhow::Result<Vec<f64>> {
    let restart = |_: &Exit| Decision::Restart { after: Duration::ZERO };
    let supervised = Supervisor::new(Command::new("sleep").arg("600")).policy(restart).spawn()?;
    let mut events = supervised.events();
    let mut samples = Vec::with_capacity(n);
    while samples.len() < n {
        let pid = loop {
            match events.next().await.map(|e| e.kind) {
                Some(EventKind::Started { pid, .. }) => break pid,
                Some(_) => {}
                None => bail!("supervisor ended"),
            }
        };
        let t0 = Instant::now();
        sigkill(pid)?;
        samples.push(us(exited_at(&mut events).await?.duration_since(t0)));
    }
    supervised.stop().await?;
    Ok(samples)
}

/// When the supervisor emitted the next `Exited` event (its timestamp: on a current-thread runtime
/// this task only runs once the supervisor yields, after it has also restarted the service).
async fn exited_at(events: &mut keepalive::Events) -> anyhow::Result<Instant> {
    loop {
        match events.next().await {
            Some(event) if matches!(event.kind, EventKind::Exited { .. }) => return Ok(event.at),
            Some(_) => {}
            None => bail!("supervisor ended"),
        }
    }
}

/// A process that is not our child: `sleep` started by a shell that waits for (and reaps) it.
fn grandchild() -> anyhow::Result<(std::process::Child, u32)> {
    let mut shell = Process::new("sh")
        .args(["-c", "sleep 600 & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn sh")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(shell.stdout.take().context("stdout")?),
        &mut line,
    )?;
    Ok((shell, line.trim().parse().context("grandchild pid")?))
}

/// Adopted from a snapshot each time: SIGKILL → `Exited { status: Unknown }` received.
async fn adopted_samples(n: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut shell, pid) = grandchild()?;
        let snapshot = Snapshot::of_process(pid, Command::new("sleep").arg("600"))?;
        let give_up = |_: &Exit| Decision::GiveUp { reason: "bench".into() };
        let mut supervised = Supervisor::new(snapshot.command.clone()).policy(give_up).adopt(&snapshot)?;
        let mut events = supervised.events();
        let t0 = Instant::now();
        sigkill(pid)?;
        samples.push(us(exited_at(&mut events).await?.duration_since(t0)));
        supervised.wait().await;
        shell.wait()?;
    }
    Ok(samples)
}

#[derive(Clone, Copy)]
enum Poller {
    /// `Child::try_wait` (waitpid WNOHANG) on our child.
    TryWait,
    /// `kill(pid, 0)` on a non-child until it fails: how a supervisor without pidfds watches an
    /// adopted process (the seed polled once a second).
    Liveness,
}

/// A polling loop running with period `period`; the kill lands at a pseudo-random phase of it.
fn poll_samples(n: usize, period: Duration, poller: Poller) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    let mut phase_seed = u64::from(std::process::id()) | 1;
    for _ in 0..n {
        let (mut process, pid, mut shell) = match poller {
            Poller::TryWait => {
                let child = sleeper()?;
                let pid = child.id();
                (Some(child), pid, None)
            }
            Poller::Liveness => {
                let (shell, pid) = grandchild()?;
                (None, pid, Some(shell))
            }
        };
        let (tx, rx) = mpsc::channel();
        let watcher = std::thread::spawn(move || {
            loop {
                let gone = match process.as_mut() {
                    Some(child) => child.try_wait().map_or(true, |s| s.is_some()),
                    None => kill(Pid::from_raw(pid as i32), None).is_err(),
                };
                if gone {
                    let _ = tx.send(Instant::now());
                    return;
                }
                std::thread::sleep(period);
            }
        });
        phase_seed ^= phase_seed << 13;
        phase_seed ^= phase_seed >> 7;
        phase_seed ^= phase_seed << 17;
        std::thread::sleep(period.mul_f64((phase_seed % 1000) as f64 / 1000.0));
        let t0 = Instant::now();
        sigkill(pid)?;
        let seen = rx.recv_timeout(period * 3 + Duration::from_secs(5)).context("poller saw the exit")?;
        samples.push(us(seen.duration_since(t0)));
        let _ = watcher.join();
        if let Some(shell) = shell.as_mut() {
            shell.wait()?;
        }
    }
    Ok(samples)
}

/// Voluntary context switches of every thread of `pid`.
fn voluntary_switches(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        total += status_field(&task?.path().join("status"), "voluntary_ctxt_switches:")?;
    }
    Ok(total)
}

fn status_field(path: &Path, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{key} in {}", path.display()))
}

/// The `lifeline` binary `cargo xtask bench` built beside this program, with the same profile
/// (release for a real run; the debug build for `--quick`, whose numbers mean nothing anyway).
fn lifeline_binary() -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()?.parent().context("exe dir")?.join("lifeline");
    if !beside.exists() {
        bail!(
            "{} is missing: run through `cargo xtask bench`, or `cargo build --release -p lifeline-kit --features cli`",
            beside.display()
        );
    }
    Ok(beside)
}

/// `lifeline supervise -- sleep 600` left alone: how often does it wake up, how much memory?
fn idle_rows() -> anyhow::Result<()> {
    let lifeline = lifeline_binary()?;
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("svc.pid");
    let mut supervisor = Process::new(&lifeline)
        .arg("supervise")
        .arg("--pidfile")
        .arg(&pid_file)
        .args(["--", "sleep", "600"])
        .stdout(Stdio::null())
        .env_remove("RUST_LOG")
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let service: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse().ok()) {
            break pid;
        }
        if Instant::now() > deadline {
            bail!("lifeline supervise did not write its pid file");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Let start-up settle before counting.
    std::thread::sleep(Duration::from_millis(500));
    let window = if quick() { Duration::from_secs(2) } else { Duration::from_secs(10) };
    eprintln!("bench-keepalive: idle wake-ups over {window:?}");

    // Baseline in the same window: a thread that checks a pid once a second (the seed's loop).
    let (tid_tx, tid_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let poller = std::thread::spawn(move || {
        // SAFETY: gettid has no memory effects.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(Duration::from_secs(1)) {
            let _ = kill(Pid::from_raw(service as i32), None);
        }
    });
    let tid = tid_rx.recv()?;
    let poller_status = PathBuf::from(format!("/proc/self/task/{tid}/status"));
    let poller_before = status_field(&poller_status, "voluntary_ctxt_switches:")?;
    let before = voluntary_switches(supervisor.id())?;
    std::thread::sleep(window);
    let after = voluntary_switches(supervisor.id())?;
    let poller_after = status_field(&poller_status, "voluntary_ctxt_switches:")?;
    drop(stop_tx);
    let _ = poller.join();
    let rss_kib = status_field(Path::new(&format!("/proc/{}/status", supervisor.id())), "VmRSS:")?;
    let service_rss_kib = status_field(Path::new(&format!("/proc/{service}/status")), "VmRSS:")?;

    kill(Pid::from_raw(supervisor.id() as i32), Signal::SIGTERM)?;
    let status = supervisor.wait()?;
    if !status.success() {
        bail!("lifeline supervise exited with {status} on SIGTERM");
    }

    let scale = 10.0 / window.as_secs_f64();
    let wakeups = (after - before) as f64 * scale;
    let baseline = (poller_after - poller_before) as f64 * scale;
    Row::new(
        MECHANISM,
        "idle wake-ups of lifeline supervise per 10 s (voluntary context switches)",
        wakeups,
        "count",
        "≤ 3",
    )
    .baseline("a 1 s polling thread, same window", baseline)
    .met(wakeups <= 3.0)
    .emit();
    let rss = rss_kib as f64 / 1024.0;
    Row::new(MECHANISM, "lifeline supervise resident memory (VmRSS)", rss, "MiB", "≤ 8 MiB")
        .baseline("the supervised sleep(1)", service_rss_kib as f64 / 1024.0)
        .met(rss <= 8.0)
        .emit();
    Ok(())
}
