//! `lifeline supervise` end to end with shell services and real `systemd-notify(1)`: exit codes,
//! the one-line give-up message, graceful stop on SIGTERM/SIGINT, the stop signal, the grace
//! period, the pid file, readiness and `MAINPID=` from `systemd-notify`.
#![cfg(feature = "cli")]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long to wait for something that should happen at once (generous: loaded CI machines).
const PATIENCE: Duration = Duration::from_secs(20);

fn lifeline() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    cmd.env_remove("RUST_LOG").env_remove("NOTIFY_SOCKET");
    cmd
}

/// Polls `check` every few ms until it returns `Some` (for files appearing: there is no event).
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("send signal");
}

/// Waits for the supervisor to exit (a blocking `wait` in a helper thread: the exit is the event)
/// and returns its status with whatever it wrote to its piped stdout and stderr.
fn finish(mut child: Child) -> (ExitStatus, String, String) {
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(PATIENCE).expect("lifeline supervise exits in time").expect("wait");
    (status, read_all(stdout), read_all(stderr))
}

fn read_all(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_string(&mut text).expect("read pipe");
    }
    text
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie (nobody reaps it in some containers) counts as gone.
    kill(Pid::from_raw(pid), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

#[test]
fn giving_up_exits_1_with_the_last_status_in_one_line_and_removes_the_pid_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("svc.pid");
    let out = lifeline()
        .args(["supervise", "--pidfile"])
        .arg(&pid_file)
        .args(["--max-failures", "3", "--within", "1m", "--", "sh", "-c", "exit 3"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().expect("a message");
    assert!(last.starts_with("lifeline: gave up on `sh -c exit 3`: 3 failures within 1m"), "{stderr}");
    assert!(last.ends_with("last exit: exited with code 3"), "{stderr}");
    assert!(!pid_file.exists());
}

#[test]
fn a_killed_service_names_the_signal_when_giving_up() {
    let out = lifeline()
        .args(["supervise", "--max-failures", "1", "--within", "1m", "--", "sh", "-c", "kill -9 $$"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("last exit: killed by SIGKILL"));
}

fn stops_gracefully_on(sig: Signal) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("svc.pid");
    let sup = lifeline()
        .args(["supervise", "--pidfile"])
        .arg(&pid_file)
        .args(["--", "sleep", "600"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = wait_for("the pid file", || read_pid(&pid_file));
    assert!(alive(pid));
    signal(sup.id(), sig);
    let (status, stdout, _) = finish(sup);
    assert_eq!(status.code(), Some(0), "{sig} stops gracefully: exit 0");
    assert!(!pid_file.exists(), "the pid file is removed");
    assert!(!alive(pid), "the service is stopped");
    assert!(stdout.is_empty(), "nothing on stdout: {stdout:?}");
}

#[test]
fn sigterm_stops_the_service_removes_the_pid_file_and_exits_0() {
    stops_gracefully_on(Signal::SIGTERM);
}

#[test]
fn sigint_stops_the_service_removes_the_pid_file_and_exits_0() {
    stops_gracefully_on(Signal::SIGINT);
}

#[test]
fn the_stop_signal_is_configurable_and_sigkill_follows_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    let got = dir.path().join("got");
    // Exits on SIGINT (recording it); ignores SIGTERM.
    let script = format!(
        "trap 'echo INT > {got}; exit 0' INT; trap '' TERM; touch {ready}; while :; do sleep 1; done",
        got = got.display(),
        ready = ready.display()
    );
    let sup = lifeline()
        .args(["supervise", "--stop-signal", "SIGINT", "--", "sh", "-c", &script])
        .spawn()
        .expect("spawn");
    wait_for("the traps", || ready.exists().then_some(()));
    signal(sup.id(), Signal::SIGTERM);
    assert_eq!(finish(sup).0.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&got).expect("the service saw the stop signal").trim(), "INT");

    // Ignores the stop signal entirely: SIGKILL after --grace, still a clean exit 0.
    let ready = dir.path().join("ready2");
    let script = format!("trap '' TERM; touch {}; while :; do sleep 1; done", ready.display());
    let pid_file = dir.path().join("svc.pid");
    let grace = Duration::from_millis(500);
    let sup = lifeline()
        .args(["supervise", "--grace", "500ms", "--pidfile"])
        .arg(&pid_file)
        .args(["--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for("the trap", || ready.exists().then_some(()));
    let pid = read_pid(&pid_file).expect("pid file");
    let began = Instant::now();
    signal(sup.id(), Signal::SIGTERM);
    let (status, _, stderr) = finish(sup);
    assert_eq!(status.code(), Some(0));
    assert!(began.elapsed() >= grace, "SIGKILL before the grace period ended");
    assert!(!alive(pid));
    assert!(stderr.contains("SIGKILL"), "the forced stop is logged: {stderr}");
}

#[test]
fn usage_errors() {
    let bad_signal =
        lifeline().args(["supervise", "--stop-signal", "SIGNOPE", "--", "true"]).output().expect("run");
    assert_eq!(bad_signal.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&bad_signal.stderr).trim(), "lifeline: invalid signal \"SIGNOPE\"");
    // clap's usage errors exit 2.
    for args in [
        &["supervise"][..],
        &["supervise", "--watchdog", "1s", "--", "true"],
        &["supervise", "--max-failures", "3", "--", "true"],
        &["supervise", "--grace", "soon", "--", "true"],
    ] {
        let out = lifeline().args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let missing = lifeline().args(["supervise", "--", "/nonexistent/program"]).output().expect("run");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .starts_with("lifeline: cannot start \"/nonexistent/program\"")
    );
}

#[test]
fn restart_on_failure_finishes_with_0_when_the_service_succeeds() {
    let out = lifeline().args(["supervise", "--restart", "on-failure", "--", "true"]).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = lifeline().args(["supervise", "--restart", "never", "--", "false"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the restart policy is never; last exit: exited with code 1")
    );
}

#[test]
fn systemd_notify_ready_and_mainpid_are_accepted_from_the_main_process() {
    // systemd-notify speaks for its parent (our main process) only with CAP_SYS_ADMIN; otherwise it
    // sends as itself, and like systemd with NotifyAccess=main the supervisor must ignore it.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: systemd-notify can only speak for its parent as root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("svc.pid");
    let successor = dir.path().join("successor");
    // The main shell starts a successor, announces it with systemd-notify (which waits for the
    // BARRIER=1 handshake, so it fails unless its fd is received and closed), and exits 0.
    let script = format!(
        "systemd-notify --ready --status=starting || exit 9; \
         sleep 600 & echo $! > {succ}.tmp && mv {succ}.tmp {succ}; \
         systemd-notify MAINPID=$! || exit 9; exit 0",
        succ = successor.display()
    );
    let sup = lifeline()
        .args(["supervise", "--notify", "--max-failures", "1", "--within", "1m", "--pidfile"])
        .arg(&pid_file)
        .args(["--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let new = wait_for("the successor's pid", || read_pid(&successor));
    wait_for("the pid file to follow MAINPID=", || (read_pid(&pid_file) == Some(new)).then_some(()));
    assert!(alive(new));
    // Had the old main process's exit counted as a crash, the supervisor would have given up
    // (exit 1) instead of stopping gracefully (exit 0) here.
    signal(sup.id(), Signal::SIGTERM);
    let (status, _, stderr) = finish(sup);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!alive(new), "stopping the supervisor stopped the new main process");
    assert!(!pid_file.exists());
}
