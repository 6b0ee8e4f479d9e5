//! Benchmark of the systemd units of `deploy/systemd/` under a real systemd (`systemd-sandbox`,
//! the units prepared as the tests prepare them: `lifeline_tests::systemd::Prepared`).
//!
//! - `systemctl reload` latency — command start → the new main process answers a request on a
//!   new connection — beside the same handover through `lifeline restart --socket` directly,
//!   same server, same sandbox, rounds interleaved. Target: ≤ 1.5× the baseline. Beside them,
//!   what systemd adds to any reload: `systemctl reload` of a unit whose `ExecReload=` is
//!   `/bin/true`.
//! - `systemctl restart` of the standalone unit as shipped (listener and state in the fd store)
//!   under load (keep-alive and new-connection clients, never retrying): requests refused (must
//!   be 0) and the gap in service around each restart (the longest time without a completed
//!   request), beside the same unit without the fd store (`--fd-store` and
//!   `FileDescriptorStoreMax=` taken out).
//!
//! It runs itself inside the sandbox (`--inside DEPLOYMENT.json`), where the rows are measured and
//! printed. The sandbox needs root: as another user, or where it cannot boot, one row says so
//! (skipped, `met: None`) and the run goes on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use lifeline_bench::{Row, iterations, median, ms, percentile, quick};
use lifeline_tests::load::{Load, LoadConfig, Sample, parse_answer};
use lifeline_tests::systemd::{
    self, Binaries, CANNOT_BOOT, CONTROL, Deployment, Prepared, SERVICE, SOCKET, STANDALONE, is_dead,
    main_pid, systemctl_ok, wait_running, wait_until,
};
use lifeline_tests::{PATIENCE, https};

const MECHANISM: &str = "systemd";
/// The baseline of the restart figures: the standalone unit without the fd store.
const NO_STORE: &str = "https-server-nostore.service";
/// systemd's own part of a reload: a unit whose `ExecReload=` does nothing.
const FLOOR: &str = "reload-floor.service";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--inside") {
        let config = args.get(at + 1).context("--inside DEPLOYMENT.json")?;
        return inside(Path::new(config));
    }
    outside()
}

/// The one row of a run that could not measure anything, and why.
fn skipped(why: &str) {
    eprintln!("bench-systemd: skipped: {why}");
    Row::new(MECHANISM, &format!("skipped: {why}"), 0.0, "—", "—").emit();
}

/// Prepares the units, adds the baseline unit, and runs the measurements inside a sandbox.
fn outside() -> anyhow::Result<()> {
    if !systemd::is_root() {
        skipped("needs root (systemd-sandbox boots systemd in new namespaces)");
        return Ok(());
    }
    if let Err(err) = systemd::sandbox() {
        skipped(&format!("{err:#}"));
        return Ok(());
    }
    let (server, lifeline) = binaries()?;
    let prepared = Prepared::new(&Binaries { server, lifeline, notify_program: None })?;
    add_baseline_unit(&prepared.deployment)?;
    let exe = std::env::current_exe()?;
    let mut args = vec![std::ffi::OsStr::new("--inside"), prepared.config.as_os_str()];
    if quick() {
        args.push(std::ffi::OsStr::new("--quick"));
    }
    let out = prepared.run(&exe, &args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    if out.status.code() == Some(CANNOT_BOOT) {
        skipped(
            stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("systemd-sandbox cannot boot here"),
        );
        return Ok(());
    }
    if !out.status.success() {
        eprintln!("{}", prepared.deployment.logs(40));
        bail!("the measurements inside the sandbox failed: {}", out.status);
    }
    // The rows, as measured inside.
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// The example server and the `lifeline` CLI that `cargo xtask bench` built beside this program
/// (release; the debug build for `--quick`).
fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = std::env::current_exe()?.parent().context("exe dir")?.to_path_buf();
    let (server, lifeline) = (dir.join("examples/https-server"), dir.join("lifeline"));
    for path in [&server, &lifeline] {
        ensure!(
            path.exists(),
            "{} is missing: run through `cargo xtask bench`, or `cargo build --release -p lifeline-kit --features cli,full --bin lifeline --example https-server`",
            path.display()
        );
    }
    Ok((server, lifeline))
}

/// `https-server-nostore.service`: the standalone unit as shipped, without `--fd-store` and
/// without `FileDescriptorStoreMax=` (the one difference the restart figures are about).
fn add_baseline_unit(d: &Deployment) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(d.units.join(STANDALONE))?;
    let mut edited = text.clone();
    for (from, to) in
        [(" \\\n    --fd-store\n", "\n"), ("FileDescriptorStoreMax=4\n", "FileDescriptorStoreMax=0\n")]
    {
        ensure!(edited.contains(from), "{STANDALONE} has no {from:?}");
        edited = edited.replace(from, to);
    }
    std::fs::write(d.units.join(NO_STORE), edited)?;
    let dropin = d.units.join(format!("{NO_STORE}.d"));
    std::fs::create_dir_all(&dropin)?;
    let log = d.dir.join(format!("{NO_STORE}.log"));
    std::fs::write(
        dropin.join("sandbox-output.conf"),
        format!("[Service]\nStandardOutput=append:{0}\nStandardError=append:{0}\n", log.display()),
    )?;
    std::fs::write(
        d.units.join(FLOOR),
        "[Unit]\nDescription=systemd's part of a reload\n\n[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/true\n",
    )?;
    Ok(())
}

/// The measurements, inside the sandbox.
fn inside(config: &Path) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let d = Deployment::read(config)?;
    let ca = d.ca_der()?;
    let client = https::client_config(&ca);
    reload_rows(&d, &client)?;
    restart_rows(&d, &ca)
}

/// Reload latency: `systemctl reload` against `lifeline restart`, and systemd's own part.
fn reload_rows(d: &Deployment, client: &Arc<rustls::ClientConfig>) -> anyhow::Result<()> {
    // Reload latency: systemctl reload and lifeline restart, interleaved, on the socket-activated
    // pair; one untimed round of each first (page cache, lazy paths).
    systemctl_ok(&["start", SOCKET, SERVICE, FLOOR])?;
    wait_running(SERVICE, PATIENCE)?;
    wait_running(FLOOR, PATIENCE)?;
    reload_with_systemctl(d, client)?;
    reload_with_lifeline(d, client)?;
    let mut via_systemctl = Vec::new();
    let mut via_lifeline = Vec::new();
    let mut floor = Vec::new();
    for _ in 0..iterations(15, 1) {
        via_systemctl.push(ms(reload_with_systemctl(d, client)?));
        via_lifeline.push(ms(reload_with_lifeline(d, client)?));
        let start = Instant::now();
        systemctl_ok(&["reload", FLOOR])?;
        floor.push(ms(start.elapsed()));
    }
    systemctl_ok(&["stop", SERVICE, SOCKET, FLOOR])?;
    let (p50, baseline) = (median(&mut via_systemctl.clone()), median(&mut via_lifeline.clone()));
    Row::new(
        MECHANISM,
        "`systemctl reload` latency p50 (command start → new MainPID serving)",
        p50,
        "ms",
        "≤ 1.5× baseline",
    )
    .baseline("`lifeline restart --socket`, same handover, same sandbox (p50)", baseline)
    .met(p50 <= 1.5 * baseline)
    .samples(via_systemctl.clone())
    .baseline_samples(via_lifeline.clone())
    .emit();
    Row::new(
        MECHANISM,
        "`systemctl reload` latency max",
        percentile(&mut via_systemctl, 100.0),
        "ms",
        "informational",
    )
    .baseline("`lifeline restart --socket` max", percentile(&mut via_lifeline, 100.0))
    .emit();
    // What systemd adds to any reload: systemctl, the job, a control process.
    Row::new(
        MECHANISM,
        "systemd's part: `systemctl reload` of a unit whose ExecReload= is /bin/true (p50)",
        median(&mut floor.clone()),
        "ms",
        "informational",
    )
    .baseline("`lifeline restart --socket` (p50)", baseline)
    .samples(floor)
    .emit();

    Ok(())
}

/// Restarts under load, with the fd store and without.
fn restart_rows(d: &Deployment, ca: &[u8]) -> anyhow::Result<()> {
    let restarts = iterations(5, 1);
    let with = restarts_under_load(d, ca, STANDALONE, restarts)?;
    let without = restarts_under_load(d, ca, NO_STORE, restarts)?;
    for (name, run) in [("with the fd store", &with), ("without the fd store", &without)] {
        eprintln!(
            "bench-systemd: {restarts} restarts {name}: {} answered, {} refused, {} failed (first: {:?}); gaps {:?} ms",
            run.ok,
            run.refused,
            run.failed.len(),
            run.failed.first(),
            run.gaps_ms
        );
    }
    Row::new(
        MECHANISM,
        &format!("requests refused over {restarts} `systemctl restart` under load (fd store)"),
        with.refused as f64,
        "count",
        "0",
    )
    .baseline("the same unit without the fd store", without.refused as f64)
    .met(with.refused == 0)
    .emit();
    Row::new(
        MECHANISM,
        &format!("requests failed (any error) over {restarts} `systemctl restart` (fd store)"),
        with.failed.len() as f64,
        "count",
        "informational",
    )
    .baseline("the same unit without the fd store", without.failed.len() as f64)
    .emit();
    let (mut gaps, mut base_gaps) = (with.gaps_ms.clone(), without.gaps_ms.clone());
    Row::new(
        MECHANISM,
        "gap in service at a `systemctl restart`, max (longest time without a completed request; fd store)",
        percentile(&mut gaps, 100.0),
        "ms",
        "informational",
    )
    .baseline("the same unit without the fd store (max)", percentile(&mut base_gaps, 100.0))
    .samples(with.gaps_ms.clone())
    .baseline_samples(without.gaps_ms.clone())
    .emit();
    Row::new(
        MECHANISM,
        "gap in service at a `systemctl restart`, p50 (fd store)",
        median(&mut gaps),
        "ms",
        "informational",
    )
    .baseline("the same unit without the fd store (p50)", median(&mut base_gaps))
    .emit();
    Ok(())
}

/// Waits until a request on a new connection is answered by a process other than `old`;
/// returns that process.
fn answered_by_another(d: &Deployment, client: &Arc<rustls::ClientConfig>, old: u32) -> anyhow::Result<u32> {
    // An accept the old process made just before it stopped accepting is answered by it (with
    // `Connection: close`): ask again, on a new connection.
    wait_until_now(&format!("an answer from a process other than {old}"), || {
        let body = https::get(d.addr(), client, "/")?;
        let (pid, _, _) = parse_answer(&body).with_context(|| format!("unexpected answer {body:?}"))?;
        Ok((pid != old).then_some(pid))
    })
}

/// [`wait_until`] without the pause between tries: each try is a real request.
fn wait_until_now<T>(what: &str, mut check: impl FnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}");
    }
}

/// One `systemctl reload`, timed from the command's start until the new main process answers.
fn reload_with_systemctl(d: &Deployment, client: &Arc<rustls::ClientConfig>) -> anyhow::Result<Duration> {
    let old = main_pid(SERVICE)?;
    let start = Instant::now();
    systemctl_ok(&["reload", SERVICE])?;
    let new = answered_by_another(d, client, old)?;
    let took = start.elapsed();
    let main = main_pid(SERVICE)?;
    ensure!(main == new, "answered by {new}, but MainPID={main}");
    settle(old)?;
    Ok(took)
}

/// The same handover through `lifeline restart --socket`, timed the same way.
fn reload_with_lifeline(d: &Deployment, client: &Arc<rustls::ClientConfig>) -> anyhow::Result<Duration> {
    let old = main_pid(SERVICE)?;
    let start = Instant::now();
    let out =
        Command::new(&d.lifeline).args(["restart", "--socket", CONTROL]).stdin(Stdio::null()).output()?;
    ensure!(out.status.success(), "lifeline restart: {}", String::from_utf8_lossy(&out.stderr).trim());
    let new = answered_by_another(d, client, old)?;
    let took = start.elapsed();
    let printed: u32 =
        String::from_utf8_lossy(&out.stdout).trim().parse().context("lifeline restart's pid")?;
    ensure!(printed == new, "lifeline restart printed {printed}, answered by {new}");
    // systemd follows this handover too (MAINPID= from the old main process).
    wait_until(&format!("MainPID={new}"), PATIENCE, || Ok((main_pid(SERVICE)? == new).then_some(())))?;
    settle(old)?;
    Ok(took)
}

/// Untimed, between rounds: the old process has drained and exited.
fn settle(old: u32) -> anyhow::Result<()> {
    wait_until(&format!("pid {old} to exit"), PATIENCE, || Ok(is_dead(old).then_some(())))
}

/// What the restarts under load saw.
struct RestartRun {
    ok: usize,
    refused: usize,
    failed: Vec<String>,
    /// Per restart: the longest time without a completed request, ms.
    gaps_ms: Vec<f64>,
}

/// Starts `unit`, runs the load, restarts `unit` `restarts` times (each time until both kinds of
/// client were answered again), stops it; counts refused and failed requests and measures the
/// gap in completions around each restart.
fn restarts_under_load(d: &Deployment, ca: &[u8], unit: &str, restarts: usize) -> anyhow::Result<RestartRun> {
    systemctl_ok(&["start", unit])?;
    wait_running(unit, PATIENCE)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let load = |keep_alive: bool| {
        let _runtime = rt.enter();
        Load::start(&LoadConfig {
            addr: d.addr(),
            server_name: "localhost".to_owned(),
            roots: vec![rustls::pki_types::CertificateDer::from(ca.to_vec())],
            workers: 2,
            keep_alive,
            path: "/".to_owned(),
            // A refused connection fails at once: without a pause its client would spin.
            pause: if keep_alive { Duration::ZERO } else { Duration::from_millis(1) },
        })
    };
    let (keep_alive, fresh) = (load(true), load(false));
    let progress = || {
        rt.block_on(async {
            keep_alive.wait_for_more(20).await;
            fresh.wait_for_more(20).await;
        });
    };
    progress();
    let mut windows = Vec::new();
    for _ in 0..restarts {
        // Untimed: systemd refuses a sixth start within 10 s (StartLimitBurst=); this resets the
        // count, as an operator would.
        systemctl_ok(&["reset-failed", unit])?;
        let start = Instant::now();
        systemctl_ok(&["restart", unit])?;
        wait_running(unit, PATIENCE)?;
        progress();
        windows.push((start, Instant::now()));
    }
    let origins = (keep_alive.origin(), fresh.origin());
    let (a, b) = rt.block_on(async { (keep_alive.stop().await, fresh.stop().await) });
    systemctl_ok(&["stop", unit])?;

    let completed = |origin: Instant, samples: &[Sample]| -> Vec<Instant> {
        samples.iter().filter(|s| s.outcome.is_ok()).map(|s| origin + s.at + s.latency).collect()
    };
    let mut completions = completed(origins.0, &a);
    completions.extend(completed(origins.1, &b));
    completions.sort_unstable();
    let failed: Vec<String> = a.iter().chain(&b).filter_map(|s| s.outcome.as_ref().err().cloned()).collect();
    let refused = failed.iter().filter(|e| e.contains("Connection refused")).count();
    let gaps_ms = windows
        .iter()
        .map(|&(start, end)| {
            completions
                .windows(2)
                .filter(|pair| pair[1] >= start && pair[0] <= end)
                .map(|pair| ms(pair[1] - pair[0]))
                .fold(0.0, f64::max)
        })
        .collect();
    Ok(RestartRun { ok: completions.len(), refused, failed, gaps_ms })
}
