//! `lifeline supervise` with the keepalive fixtures: five `MAINPID=` handovers in a row triggered
//! through the supervisor (SIGUSR2 is forwarded to the main process), with the successor in the
//! old process group or in its own; forwarded SIGHUP/SIGUSR1/SIGUSR2; a watchdog restart; a start
//! timeout restart (`--start-timeout`).

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use lifeline_tests::{PATIENCE, lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const HANDOVER: &str = env!("CARGO_BIN_EXE_keepalive-handover");
const SIGNALS: &str = env!("CARGO_BIN_EXE_keepalive-signals");
const WATCHDOG: &str = env!("CARGO_BIN_EXE_keepalive-watchdog");

fn supervise(args: &[&str], service: &[&str]) -> Child {
    Command::new(lifeline_bin())
        .arg("supervise")
        .args(args)
        .arg("--")
        .args(service)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lifeline supervise")
}

fn send(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("send signal");
}

use lifeline_tests::proc::{is_dead as gone, read_pid};

/// Waits (blocking `wait` in a helper thread) for the supervisor to exit; returns its stderr too.
fn finish(mut child: Child) -> (ExitStatus, String) {
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(PATIENCE).expect("lifeline supervise exits in time").expect("wait");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).expect("read stderr");
    (status, text)
}

fn five_handovers(own_group: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let pid_file = dir.path().join("svc.pid");
    let log_arg = log.display().to_string();
    let mut service = vec![HANDOVER, "--log", &log_arg];
    if own_group {
        service.push("--own-group");
    }
    let sup = supervise(&["--notify", "--pidfile", &pid_file.display().to_string()], &service);
    let mut pid = wait_for("the pid file", || read_pid(&pid_file));
    for generation in 0..5 {
        // Its signal mask is in place once it has logged itself; before, SIGUSR2 would kill it.
        wait_for(&format!("generation {generation}"), || {
            std::fs::read_to_string(&log).ok().filter(|t| t.contains(&format!("gen={generation} pid={pid} ")))
        });
        send(sup.id(), Signal::SIGUSR2); // forwarded to the main process, which hands over
        let new =
            wait_for("the pid file to follow the handover", || read_pid(&pid_file).filter(|p| *p != pid));
        let log_text = std::fs::read_to_string(&log).expect("log");
        assert!(
            log_text.contains(&format!("gen={} pid={new} ", generation + 1)),
            "pid file names the successor: {log_text}"
        );
        wait_for("the old main process to exit", || gone(pid).then_some(()));
        pid = new;
    }
    let log_text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(log_text.lines().filter(|l| l.starts_with("gen=0 ")).count(), 1, "no restart: {log_text}");
    assert_eq!(log_text.lines().count(), 6, "{log_text}");

    send(sup.id(), Signal::SIGTERM);
    let (status, stderr) = finish(sup);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("service exited"), "no exit was treated as a crash: {stderr}");
    assert!(gone(pid), "stopping the supervisor stopped the current main process");
    assert!(!pid_file.exists());
}

#[test]
fn five_handovers_under_lifeline_supervise_successor_in_the_old_group() {
    five_handovers(false);
}

#[test]
fn five_handovers_under_lifeline_supervise_successor_in_its_own_group() {
    five_handovers(true);
}

#[test]
fn sighup_sigusr1_sigusr2_are_forwarded_to_the_main_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let sup = supervise(&[], &[SIGNALS, "--log", &log.display().to_string()]);
    wait_for("the fixture's handlers", || {
        std::fs::read_to_string(&log).ok().filter(|t| t.starts_with("ready"))
    });
    for (sig, name) in [(Signal::SIGHUP, "HUP"), (Signal::SIGUSR1, "USR1"), (Signal::SIGUSR2, "USR2")] {
        send(sup.id(), sig);
        wait_for(&format!("{name} forwarded"), || {
            std::fs::read_to_string(&log).ok().filter(|t| t.lines().any(|l| l == name))
        });
    }
    send(sup.id(), Signal::SIGTERM);
    let (status, stderr) = finish(sup);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_start_timeout_restarts_a_service_that_never_sends_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let sup = supervise(
        &["--notify", "--start-timeout", "300ms", "--pidfile", &pidfile.display().to_string()],
        &["sleep", "600"],
    );
    let first = wait_for("the first pid", || read_pid(&pidfile));
    let second = wait_for("a restart after the start timeout", || read_pid(&pidfile).filter(|p| *p != first));
    wait_for("the first instance stopped", || gone(first).then_some(()));
    send(sup.id(), Signal::SIGTERM);
    let (status, stderr) = finish(sup);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("start timeout"), "{stderr}");
    assert!(gone(second), "stopped with the supervisor");
}

#[test]
fn a_start_timeout_needs_notify() {
    let out = Command::new(lifeline_bin())
        .args(["supervise", "--start-timeout", "1s", "--", "true"])
        .output()
        .expect("run lifeline supervise");
    assert_eq!(out.status.code(), Some(2), "usage error: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--notify"), "{stderr}");
}

#[test]
fn a_watchdog_timeout_restarts_the_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let sup = supervise(
        &["--notify", "--watchdog", "300ms"],
        &[WATCHDOG, "--log", &log.display().to_string(), "--pings", "2"],
    );
    let starts = wait_for("a restart after the watchdog timeout", || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.lines().count() >= 2).then_some(text)
    });
    for line in starts.lines() {
        let field = |key: &str| line.split(' ').find_map(|f| f.strip_prefix(key)).unwrap_or_default();
        assert_eq!(field("usec="), "300000", "{line}");
        assert_eq!(field("wdpid="), field("pid="), "WATCHDOG_PID is the service's own pid: {line}");
        assert_eq!(field("enabled="), "true", "{line}");
    }
    send(sup.id(), Signal::SIGTERM);
    let (status, stderr) = finish(sup);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("watchdog timeout"), "{stderr}");
}
