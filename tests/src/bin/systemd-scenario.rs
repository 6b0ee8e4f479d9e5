//! `systemd-scenario`: one scenario of the systemd tests (`tests/tests/systemd.rs`), run *inside*
//! `systemd-sandbox`, where `systemctl` talks to a real systemd that knows only the units of
//! `deploy/systemd/` (prepared by `lifeline_tests::systemd::Prepared`).
//!
//! Usage: `systemd-scenario DEPLOYMENT.json SCENARIO`, SCENARIO one of `start`, `reload`,
//! `restart`, `restart-standalone`, `broken-upgrade`, `watchdog`, `stop`, `supervise`.
//!
//! It drives `systemctl`, runs a non-retrying HTTPS load (`lifeline_tests::load`: keep-alive and
//! new-connection clients), and checks what systemd, `lifeline status` and the answers say.
//! Every wait is on a condition (`systemctl show`, an answer, a file, a pid), never a sleep.
//! Pids are this namespace's, as are systemd's. Prints a line per step; exits 0 when every
//! check held, 1 with the reason on stderr otherwise.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use lifeline_tests::load::{Load, LoadConfig, Sample, parse_answer};
use lifeline_tests::systemd::{
    CONTROL, DAEMON_PIDFILE, Deployment, SERVICE, SOCKET, STANDALONE, SUPERVISED, is_dead, lifeline_status,
    listener_inode, main_pid, property, show, systemctl, systemctl_ok, unit_processes, wait_running,
    wait_until,
};
use lifeline_tests::{PATIENCE, https};
use rustls::pki_types::CertificateDer;

/// Reloads in the `reload` scenario.
const RELOADS: u64 = 10;
/// Restarts in the `restart` scenarios.
const RESTARTS: usize = 3;
/// Longer than the units' `WatchdogSec=` (10 s) plus a restart.
const WATCHDOG_PATIENCE: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, scenario] = args.as_slice() else {
        eprintln!("usage: systemd-scenario DEPLOYMENT.json SCENARIO");
        return ExitCode::from(2);
    };
    match run(Path::new(config), scenario) {
        Ok(()) => {
            println!("systemd-scenario {scenario}: passed");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("systemd-scenario {scenario}: FAILED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Path, scenario: &str) -> anyhow::Result<()> {
    let ctx = Ctx::new(Deployment::read(config)?)?;
    match scenario {
        "start" => start(&ctx),
        "reload" => reload(&ctx),
        "restart" => restart(&ctx, SERVICE),
        "restart-standalone" => restart(&ctx, STANDALONE),
        "broken-upgrade" => broken_upgrade(&ctx),
        "watchdog" => watchdog(&ctx),
        "stop" => stop(&ctx),
        "supervise" => supervise(&ctx),
        other => bail!("unknown scenario {other:?}"),
    }
}

/// An answer of the example server: `pid=… generation=… served=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    pid: u32,
    generation: u64,
    served: u64,
}

struct Ctx {
    d: Deployment,
    roots: Vec<CertificateDer<'static>>,
    client: Arc<rustls::ClientConfig>,
    /// Runs the load generators.
    rt: tokio::runtime::Runtime,
    /// Every answer the probes (not the load) got, for the served-count checks.
    probes: std::cell::RefCell<Vec<Answer>>,
}

/// Keep-alive and new-connection clients, started together.
struct Loads {
    keep_alive: Load,
    fresh: Load,
}

impl Ctx {
    fn new(d: Deployment) -> anyhow::Result<Ctx> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let der = d.ca_der()?;
        let client = https::client_config(&der);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        Ok(Ctx {
            d,
            roots: vec![CertificateDer::from(der)],
            client,
            rt,
            probes: std::cell::RefCell::default(),
        })
    }

    /// `GET /` on a new connection.
    fn answer(&self) -> anyhow::Result<Answer> {
        let body = https::get(self.d.addr(), &self.client, "/").context("GET /")?;
        let (pid, generation, served) =
            parse_answer(&body).with_context(|| format!("unexpected answer {body:?}"))?;
        let answer = Answer { pid, generation, served };
        self.probes.borrow_mut().push(answer);
        Ok(answer)
    }

    fn load(&self, keep_alive: bool) -> Load {
        let _runtime = self.rt.enter();
        Load::start(&LoadConfig {
            addr: self.d.addr(),
            server_name: "localhost".to_owned(),
            roots: self.roots.clone(),
            workers: 2,
            keep_alive,
            path: "/".to_owned(),
            pause: Duration::ZERO,
        })
    }

    fn start_loads(&self) -> Loads {
        let loads = Loads { keep_alive: self.load(true), fresh: self.load(false) };
        self.progress(&loads);
        loads
    }

    /// Waits until both loads got more answers: the service serves them.
    fn progress(&self, loads: &Loads) {
        self.rt.block_on(async {
            loads.keep_alive.wait_for_more(10).await;
            loads.fresh.wait_for_more(10).await;
        });
    }

    /// Stops the loads; fails if any request failed (refused, reset, cut short, not 200).
    fn stop_loads(&self, loads: Loads) -> anyhow::Result<Vec<Sample>> {
        let (mut samples, fresh) =
            self.rt.block_on(async { (loads.keep_alive.stop().await, loads.fresh.stop().await) });
        samples.extend(fresh);
        let failed: Vec<String> = samples
            .iter()
            .filter_map(|s| s.outcome.as_ref().err().map(|e| format!("at {:?}: {e}", s.at)))
            .collect();
        println!("load: {} requests answered, {} failed", samples.len() - failed.len(), failed.len());
        ensure!(
            failed.is_empty(),
            "{} requests failed, the first: {:#?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        Ok(samples)
    }

    /// Every answer seen (load and probes).
    fn answers(&self, samples: &[Sample]) -> Vec<Answer> {
        let mut all: Vec<Answer> = samples
            .iter()
            .filter_map(|s| s.outcome.as_ref().ok())
            .filter_map(|body| parse_answer(body))
            .map(|(pid, generation, served)| Answer { pid, generation, served })
            .collect();
        all.extend(self.probes.borrow().iter().copied());
        all
    }

    /// `systemctl start UNITS`, then the service's main pid once it runs.
    fn start(units: &[&str], service: &str) -> anyhow::Result<u32> {
        let mut args = vec!["start"];
        args.extend(units);
        systemctl_ok(&args)?;
        let pid = wait_running(service, PATIENCE)?;
        println!("{service} started: MainPID={pid}");
        Ok(pid)
    }

    /// `systemctl reload`, which must succeed and move `MainPID` to a new process that serves and
    /// that `lifeline status` names. Returns (old, new).
    fn reload(&self, service: &str, generation: u64) -> anyhow::Result<(u32, u32)> {
        let old = main_pid(service)?;
        systemctl_ok(&["reload", service])?;
        let new = wait_until("MainPID to change after the reload", PATIENCE, || {
            let pid = main_pid(service)?;
            Ok((pid != old && pid != 0).then_some(pid))
        })?;
        let props = show(service, &["ActiveState", "SubState"])?;
        ensure!(
            props["ActiveState"] == "active" && props["SubState"] == "running",
            "after a reload: {props:?}"
        );
        let (status_pid, status_generation) = lifeline_status(&self.d.lifeline)?;
        ensure!(status_pid == new, "MainPID={new} but lifeline status says pid {status_pid}");
        ensure!(
            status_generation == generation,
            "lifeline status: generation {status_generation}, expected {generation}"
        );
        let answer = self.answer()?;
        ensure!(
            answer.pid == new && answer.generation == generation,
            "after the reload to {new}: {answer:?}"
        );
        println!(
            "reload: MainPID {old} -> {new} (generation {generation}), lifeline status and the answers agree"
        );
        Ok((old, new))
    }

    /// Waits until `pid` has exited (an old process done draining).
    fn wait_gone(pid: u32) -> anyhow::Result<()> {
        wait_until(&format!("pid {pid} to exit"), PATIENCE, || Ok(is_dead(pid).then_some(())))
    }
}

/// start → the server answers over HTTPS as systemd's `MainPID`; `lifeline status` agrees; the
/// notify protocol reached systemd (READY=1: the start returned; STATUS=).
fn start(ctx: &Ctx) -> anyhow::Result<()> {
    let pid = Ctx::start(&[SOCKET, SERVICE], SERVICE)?;
    let answer = ctx.answer()?;
    ensure!(answer == Answer { pid, generation: 1, served: 1 }, "first answer: {answer:?}");
    ensure!(lifeline_status(&ctx.d.lifeline)? == (pid, 1), "lifeline status disagrees");
    let status = wait_until("STATUS= to reach systemd", PATIENCE, || {
        let text = property(SERVICE, "StatusText")?;
        Ok(text.starts_with("serving: generation 1").then_some(text))
    })?;
    println!("answered {answer:?}; StatusText={status:?}");
    Ok(())
}

/// 10 × `systemctl reload` under load: zero failed requests; `MainPID` changes every time, to a
/// process never seen before, which `lifeline status` and the answers name.
fn reload(ctx: &Ctx) -> anyhow::Result<()> {
    let first = Ctx::start(&[SOCKET, SERVICE], SERVICE)?;
    let control_group = property(SERVICE, "ControlGroup")?;
    let loads = ctx.start_loads();
    let mut seen = vec![first];
    for generation in 2..=RELOADS + 1 {
        let (_, new) = ctx.reload(SERVICE, generation)?;
        ensure!(!seen.contains(&new), "MainPID {new} served before: {seen:?}");
        seen.push(new);
        ctx.progress(&loads);
    }
    let samples = ctx.stop_loads(loads)?;
    let last = *seen.last().expect("pids");
    // The old processes drain and exit; the last one serves alone.
    let alone = wait_until("the old processes to exit", PATIENCE, || {
        let procs = unit_processes(&control_group);
        Ok((procs == [last]).then_some(procs))
    })?;
    let restarts = property(SERVICE, "NRestarts")?;
    ensure!(restarts == "0", "NRestarts={restarts}");
    println!("{RELOADS} reloads: MainPIDs {seen:?}; {} answers; unit processes now {alone:?}", samples.len());
    Ok(())
}

/// 3 × `systemctl restart` under load — the first of a process systemd started, the others
/// after a reload (then the main process is not systemd's child, as on any server that was ever
/// reloaded, and only `ExecStop=` makes systemd wait for its drain): zero failed requests (none
/// refused: the socket unit, or the listener in the fd store, queues connections meanwhile);
/// the generation and the served count go on exactly where the stopped process left them (the
/// state memfd in the fd store). For the standalone unit also: the same listening socket all
/// along.
fn restart(ctx: &Ctx, service: &str) -> anyhow::Result<()> {
    let units: &[&str] = if service == SERVICE { &[SOCKET, SERVICE] } else { &[STANDALONE] };
    Ctx::start(units, service)?;
    let listener = listener_inode(ctx.d.port).context("nothing listens on the port")?;
    let loads = ctx.start_loads();
    let mut generation = 1;
    let mut restarted_from = Vec::new();
    let mut new = main_pid(service)?;
    for round in 1..=RESTARTS {
        if round > 1 {
            generation += 1;
            let old;
            (old, new) = ctx.reload(service, generation)?;
            Ctx::wait_gone(old)?;
        }
        if service == STANDALONE {
            // What keeps its port open across the restart. (With the socket unit, the socket unit
            // does; the copy of its socket in the store is redundant.)
            let stored = property(service, "NFileDescriptorStore")?;
            ensure!(stored == "1", "before restart {round}: NFileDescriptorStore={stored} (the listener)");
        }
        systemctl_ok(&["restart", service])?;
        let next = wait_running(service, PATIENCE)?;
        ensure!(next != new && is_dead(new), "restart {round}: MainPID {new} -> {next}");
        restarted_from.push(generation);
        generation += 1;
        let answer = ctx.answer()?;
        ensure!(
            answer.pid == next && answer.generation == generation,
            "restart {round}: expected generation {generation} from {next}, got {answer:?}"
        );
        ensure!(lifeline_status(&ctx.d.lifeline)? == (next, generation), "restart {round}: lifeline status");
        let now = listener_inode(ctx.d.port);
        ensure!(
            now == Some(listener),
            "restart {round}: the listening socket changed ({listener} -> {now:?})"
        );
        println!(
            "restart {round}: MainPID {new} -> {next}, generation {} -> {generation}, same listener",
            generation - 1
        );
        ctx.progress(&loads);
    }
    let samples = ctx.stop_loads(loads)?;
    // The served count: every request the stopped generation answered, plus one.
    let answers = ctx.answers(&samples);
    let mut served: BTreeMap<u64, (u64, u64, usize)> = BTreeMap::new();
    for a in &answers {
        let entry = served.entry(a.generation).or_insert((u64::MAX, 0, 0));
        *entry = (entry.0.min(a.served), entry.1.max(a.served), entry.2 + 1);
    }
    for stopped in restarted_from {
        let (Some(before), Some(after)) = (served.get(&stopped), served.get(&(stopped + 1))) else {
            bail!("no answers from generation {stopped} or {}: {served:?}", stopped + 1);
        };
        ensure!(
            after.0 == before.1 + 1,
            "generation {} started counting at {} but generation {stopped} had answered {} requests",
            stopped + 1,
            after.0,
            before.1
        );
    }
    println!("{RESTARTS} restarts: served counts (min, max, answers) by generation {served:?}");
    Ok(())
}

/// A broken binary installed (a script that exits 1, renamed over `ExecStart=`'s path):
/// `systemctl reload` fails and the old `MainPID` serves on, under load, without a failed
/// request; the real binary installed again, the next reload succeeds.
fn broken_upgrade(ctx: &Ctx) -> anyhow::Result<()> {
    let old = Ctx::start(&[SOCKET, SERVICE], SERVICE)?;
    let loads = ctx.start_loads();
    let staged = ctx.d.server.with_extension("new");
    std::fs::write(&staged, "#!/bin/sh\necho 'broken build' >&2\nexit 1\n")?;
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&staged, &ctx.d.server)?;
    let out = systemctl(&["reload", SERVICE])?;
    ensure!(!out.status.success(), "systemctl reload succeeded with a broken binary");
    println!("reload with a broken binary failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    let props = show(SERVICE, &["MainPID", "ActiveState", "SubState", "ReloadResult"])?;
    ensure!(props["MainPID"] == old.to_string(), "MainPID changed: {props:?}");
    ensure!(props["ActiveState"] == "active" && props["SubState"] == "running", "{props:?}");
    ensure!(props["ReloadResult"] == "exit-code", "{props:?}");
    ensure!(lifeline_status(&ctx.d.lifeline)? == (old, 1), "lifeline status after the failed reload");
    let answer = ctx.answer()?;
    ensure!(answer.pid == old && answer.generation == 1, "after the failed reload: {answer:?}");
    ctx.progress(&loads);
    // The real binary again (by rename too): the next reload works.
    std::fs::hard_link(&ctx.d.server_source, &staged)
        .or_else(|_| std::fs::copy(&ctx.d.server_source, &staged).map(drop))?;
    std::fs::rename(&staged, &ctx.d.server)?;
    ctx.reload(SERVICE, 2)?;
    ctx.progress(&loads);
    ctx.stop_loads(loads)?;
    Ok(())
}

/// A server that stops answering its watchdog (SIGSTOP) is killed and restarted by systemd; the
/// new `MainPID` serves. Before that, a reload: the new process must keep the watchdog fed on its
/// own (systemd takes its WATCHDOG=1 once it is the main process).
fn watchdog(ctx: &Ctx) -> anyhow::Result<()> {
    Ctx::start(&[SOCKET, SERVICE], SERVICE)?;
    let (_, fed) = ctx.reload(SERVICE, 2)?;
    // The old process pinged for the last time before it named the new one (one socket, in
    // order): a newer ping than the one systemd shows now is the new main process's.
    let last = property(SERVICE, "WatchdogTimestampMonotonic")?;
    wait_until("a WATCHDOG=1 from the new main process", PATIENCE, || {
        Ok((property(SERVICE, "WatchdogTimestampMonotonic")? != last).then_some(()))
    })?;
    println!("pid {fed} feeds the watchdog; stopping it (SIGSTOP)");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(fed as i32), nix::sys::signal::Signal::SIGSTOP)?;
    let next = wait_until("systemd to restart the stopped server", WATCHDOG_PATIENCE, || {
        let props = show(SERVICE, &["MainPID", "ActiveState", "SubState", "NRestarts"])?;
        let pid: u32 = props["MainPID"].parse()?;
        let running = props["ActiveState"] == "active" && props["SubState"] == "running";
        Ok((running && pid != 0 && pid != fed && props["NRestarts"] == "1").then_some(pid))
    })?;
    ensure!(is_dead(fed), "the stopped server {fed} is still there");
    let answer = ctx.answer()?;
    ensure!(answer.pid == next, "after the watchdog restart: MainPID {next}, answered by {answer:?}");
    println!("watchdog: {fed} killed, NRestarts=1, {next} serves ({answer:?})");
    Ok(())
}

/// `systemctl stop` (after a reload, under load until just before): the server drains and
/// exits by itself — no process left in the unit's cgroup, the lock file and the control socket
/// gone (the server removes the lock file; SIGKILL would leave it).
fn stop(ctx: &Ctx) -> anyhow::Result<()> {
    Ctx::start(&[SOCKET, SERVICE], SERVICE)?;
    let control_group = property(SERVICE, "ControlGroup")?;
    let loads = ctx.start_loads();
    let (old, new) = ctx.reload(SERVICE, 2)?;
    Ctx::wait_gone(old)?;
    ctx.progress(&loads);
    // The load stops first: the socket unit would start the service again for a new connection.
    ctx.stop_loads(loads)?;
    let before = unit_processes(&control_group);
    ensure!(before == [new], "processes of {control_group} before the stop: {before:?}, expected [{new}]");
    ensure!(
        ctx.d.lock_file().exists() && Path::new(CONTROL).exists(),
        "no lock file or control socket before the stop"
    );
    systemctl_ok(&["stop", SERVICE])?;
    let props = show(SERVICE, &["ActiveState", "Result", "MainPID"])?;
    ensure!(
        props["ActiveState"] == "inactive" && props["Result"] == "success" && props["MainPID"] == "0",
        "{props:?}"
    );
    let left = unit_processes(&control_group);
    ensure!(left.is_empty(), "processes left in {control_group}: {left:?}");
    ensure!(!ctx.d.lock_file().exists(), "the lock file {} is still there", ctx.d.lock_file().display());
    ensure!(!Path::new(CONTROL).exists(), "the control socket {CONTROL} is still there");
    systemctl_ok(&["stop", SOCKET])?;
    ensure!(listener_inode(ctx.d.port).is_none(), "the port still listens after the socket unit stopped");
    println!(
        "stop: {new} drained and exited; nothing left in {control_group}; lock file and control socket gone"
    );
    Ok(())
}

/// A program that knows nothing of lifeline under `lifeline supervise --notify`, `Type=notify`:
/// `systemctl start` returns only once the program is ready (its READY=1 went through the
/// supervisor's notify socket, and the supervisor told systemd); systemd sees the supervisor as
/// `MainPID` and its `STATUS=`; the program runs as the supervisor's child in the unit's cgroup,
/// named by the pid file, without systemd's notify socket; a stop ends both.
fn supervise(ctx: &Ctx) -> anyhow::Result<()> {
    systemctl_ok(&["start", SUPERVISED])?;
    // `systemctl start` of a Type=notify unit returns after the supervisor's READY=1, which
    // comes after the program's: the program wrote its marker before it sent READY=1.
    let started = std::fs::read_to_string(&ctx.d.daemon_started).unwrap_or_default();
    ensure!(started.trim() == "ready", "systemctl start returned before the program was ready");
    // Its sd_notify (with libsystemd's BARRIER=1 handshake) returned fine; it says so after the
    // supervisor answered the barrier, which may be after systemctl returned.
    let done = wait_until("the program's notify result", PATIENCE, || {
        Ok(std::fs::read_to_string(&ctx.d.daemon_done).ok().filter(|t| t.ends_with('\n')))
    })?;
    ensure!(done.trim() == "ok", "the program's sd_notify failed: {done:?}");
    let supervisor = main_pid(SUPERVISED)?;
    let status = property(SUPERVISED, "StatusText")?;
    ensure!(status.contains("ready"), "the supervisor's STATUS= did not reach systemd: {status:?}");
    let control_group = property(SUPERVISED, "ControlGroup")?;
    let cmdline = std::fs::read(format!("/proc/{supervisor}/cmdline"))?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    ensure!(cmdline.contains(" supervise "), "MainPID {supervisor} is not the supervisor: {cmdline}");
    let program: u32 = wait_until("the pid file", PATIENCE, || {
        Ok(std::fs::read_to_string(DAEMON_PIDFILE).ok().and_then(|t| t.trim().parse().ok()))
    })?;
    let stat = std::fs::read_to_string(format!("/proc/{program}/stat"))?;
    let ppid: u32 = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .context("stat")?;
    ensure!(
        ppid == supervisor,
        "the program {program} is the child of {ppid}, not of the supervisor {supervisor}"
    );
    // systemd's NOTIFY_SOCKET is the supervisor's, never the program's: the program's is the
    // supervisor's own socket (a lifeline-notify-* directory).
    let environ = std::fs::read(format!("/proc/{program}/environ"))?;
    let socket = environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    ensure!(socket.contains("lifeline-notify-"), "the program's NOTIFY_SOCKET is {socket:?}");
    let members = unit_processes(&control_group);
    let mut expected = vec![supervisor, program];
    expected.sort_unstable();
    ensure!(members == expected, "processes of {control_group}: {members:?}, expected {expected:?}");
    let kind = property(SUPERVISED, "Type")?;
    ensure!(kind == "notify", "Type={kind}");
    println!(
        "supervise: Type={kind}, start waited for readiness, MainPID={supervisor} (the supervisor), \
         STATUS={status:?}, program {program} ready"
    );
    systemctl_ok(&["stop", SUPERVISED])?;
    let props = show(SUPERVISED, &["ActiveState", "Result"])?;
    ensure!(props["ActiveState"] == "inactive" && props["Result"] == "success", "{props:?}");
    let left = unit_processes(&control_group);
    ensure!(left.is_empty(), "processes left in {control_group}: {left:?}");
    ensure!(!Path::new(DAEMON_PIDFILE).exists(), "the pid file is still there");
    Ok(())
}
