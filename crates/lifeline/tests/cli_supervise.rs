//! `lifeline supervise` end to end with shell services and real `systemd-notify(1)`: exit codes,
//! the one-line give-up message, graceful stop on SIGTERM/SIGINT, the stop signal, the grace
//! period, the pid file, readiness and `MAINPID=` from `systemd-notify`, `--watchdog` without
//! `--notify`, `--state` (adoption after a `SIGKILL` of the supervisor, stale snapshots, one
//! supervisor per state file) and `--die-with-supervisor`.
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lifeline::keepalive::Snapshot;
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
    // The warnings before it are logged too, in plain text: stderr is not a terminal here.
    assert!(stderr.lines().count() > 1 && stderr.contains("service exited"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "no ANSI escapes in a pipe: {stderr:?}");
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
    // The supervisor writes the pid file after the start; the service may be quicker.
    let pid = wait_for("the pid file", || read_pid(&pid_file));
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
#[ignore = "needs root"]
fn systemd_notify_ready_and_mainpid_are_accepted_from_the_main_process() {
    // systemd-notify speaks for its parent (our main process) only with CAP_SYS_ADMIN; otherwise it
    // sends as itself, and like systemd with NotifyAccess=main the supervisor must ignore it.
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: systemd-notify can only speak for its parent as root"
    );
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

/// A supervisor's stderr, read line by line on a helper thread while it runs.
struct Stderr {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Stderr {
    fn of(child: &mut Child) -> Stderr {
        let pipe: ChildStderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Stderr { lines, seen: Vec::new() }
    }

    /// Waits for a line containing `needle` (the line is the event); returns it.
    fn wait(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(err) => panic!("no stderr line containing {needle:?} ({err}); seen: {:#?}", self.seen),
            }
        }
    }

    /// Everything, once the supervisor has exited (the pipe is closed).
    fn rest(mut self) -> String {
        self.seen.extend(self.lines.iter());
        self.seen.join("\n")
    }
}

fn supervise(args: &[&str], state: &Path, pid_file: &Path, service: &[&str]) -> Child {
    lifeline()
        .arg("supervise")
        .args(args)
        .arg("--state")
        .arg(state)
        .arg("--pidfile")
        .arg(pid_file)
        .arg("--")
        .args(service)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lifeline supervise")
}

/// SIGKILLs the supervisor and reaps it; what it supervised is left as it is.
fn sigkill(mut sup: Child) {
    signal(sup.id(), Signal::SIGKILL);
    sup.wait().expect("reap the killed supervisor");
}

/// The children of `pid`, from `/proc/<pid>/task/*/children`.
fn children(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let path = task.expect("task").path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    out
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Stops the supervisor with SIGTERM and checks the clean-stop contract: exit 0, the pid file
/// and the state file removed, `pid` gone. Returns its stderr.
fn stop_cleanly(sup: Child, stderr: Stderr, pid_file: &Path, state: &Path, pid: i32) -> String {
    signal(sup.id(), Signal::SIGTERM);
    let (status, _, _) = finish(sup);
    let text = stderr.rest();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(!pid_file.exists(), "the pid file is removed");
    assert!(!state.exists(), "the state file is removed on a clean stop");
    assert!(!alive(pid), "the service is stopped");
    text
}

#[test]
fn a_watchdog_without_notify_serves_notify_socket_and_restarts_a_silent_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    // Never sends WATCHDOG=1 (nor READY=1). No core file from the watchdog's SIGABRT.
    let script = format!(
        "ulimit -c 0; echo \"$$ $NOTIFY_SOCKET $WATCHDOG_USEC $WATCHDOG_PID\" >> {}; exec sleep 600",
        log.display()
    );
    let sup = lifeline()
        .args(["supervise", "--watchdog", "300ms", "--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let starts = wait_for("a restart after the watchdog timeout", || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.lines().count() >= 2).then_some(text)
    });
    for line in starts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert!(fields[1].starts_with('/'), "NOTIFY_SOCKET is a socket path: {line}");
        assert_eq!(fields[2], "300000", "WATCHDOG_USEC: {line}");
        assert_eq!(fields[3], fields[0], "WATCHDOG_PID is the service's own pid: {line}");
    }
    signal(sup.id(), Signal::SIGTERM);
    let (status, _, stderr) = finish(sup);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("watchdog timeout"), "{stderr}");
}

#[test]
#[ignore = "needs root"]
fn a_watchdog_without_notify_accepts_pings_from_systemd_notify() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: systemd-notify can only speak for its parent as root"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    // Pings ten times a second and never sends READY=1: without --notify nobody waits for it.
    let script = format!(
        "echo start >> {log}; while :; do systemd-notify WATCHDOG=1 || exit 9; echo ping >> {log}; sleep 0.1; done",
        log = log.display()
    );
    let sup = lifeline()
        .args(["supervise", "--watchdog", "2s", "--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // 25 pings take at least 2.5 s: had they been ignored, the 2 s watchdog would have fired.
    let text = wait_for("25 pings", || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.lines().filter(|l| *l == "ping").count() >= 25).then_some(text)
    });
    assert_eq!(text.lines().filter(|l| *l == "start").count(), 1, "restarted: {text}");
    signal(sup.id(), Signal::SIGTERM);
    let (status, _, stderr) = finish(sup);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("watchdog timeout"), "{stderr}");
}

#[test]
fn after_a_sigkill_of_the_supervisor_a_new_one_adopts_the_service_from_the_state_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, pid_file) = (dir.path().join("svc.state"), dir.path().join("svc.pid"));
    let first = supervise(&[], &state, &pid_file, &["sleep", "600"]);
    let pid = wait_for("the pid file", || read_pid(&pid_file));
    let snapshot = wait_for("the state file", || Snapshot::read(&state).ok());
    assert_eq!(snapshot.pid, pid as u32, "{snapshot:?}");
    assert_eq!(snapshot.command.display(), "sleep 600");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).expect("stat").permissions());
    assert_eq!(mode & 0o777, 0o600, "the snapshot may carry secrets in the environment");

    // By default the service outlives its supervisor, even a SIGKILLed one.
    sigkill(first);
    assert!(alive(pid), "the service died with its supervisor");

    let mut second = supervise(&[], &state, &pid_file, &["sleep", "600"]);
    let mut stderr = Stderr::of(&mut second);
    let line = stderr.wait("adopted");
    assert_eq!(line, format!("lifeline: adopted the running service (pid {pid}) from {}", state.display()));
    assert_eq!(read_pid(&pid_file), Some(pid));
    assert!(children(second.id()).is_empty(), "nothing was started: {:?}", children(second.id()));

    // The adopted process is watched through a pidfd: its death is seen and the command restarted.
    signal(pid as u32, Signal::SIGKILL);
    let new = wait_for("a restart", || read_pid(&pid_file).filter(|p| *p != pid));
    assert_eq!(ppid(new), Some(second.id() as i32), "the restarted service is the new supervisor's child");
    let exited = stderr.wait("service exited");
    assert!(exited.contains("unknown status"), "a non-child's status cannot be known: {exited}");
    wait_for("the state file to follow", || Snapshot::read(&state).ok().filter(|s| s.pid == new as u32));
    stop_cleanly(second, stderr, &pid_file, &state, new);
}

#[test]
fn a_stale_state_file_is_ignored_with_a_message_and_the_command_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, pid_file) = (dir.path().join("svc.state"), dir.path().join("svc.pid"));
    let command = lifeline::keepalive::Command::new("sleep").arg("600");

    // A process that has exited since.
    let mut gone = Command::new("sleep").arg("600").spawn().expect("spawn sleep");
    let dead = Snapshot::of_process(gone.id(), command.clone()).expect("snapshot");
    gone.kill().expect("kill");
    gone.wait().expect("reap");
    // A live process with the snapshot's pid but another start time: the pid was reused. It
    // must not be adopted, nor signalled.
    let mut stranger = Command::new("sleep").arg("600").spawn().expect("spawn sleep");
    let mut reused = Snapshot::of_process(stranger.id(), command).expect("snapshot");
    reused.start_time += 1;

    let cases = [
        (dead.to_json(), format!("pid {} is not running", dead.pid)),
        (reused.to_json(), format!("pid {} now belongs to another process", reused.pid)),
        ("{\"version\":1,\"pid\":".to_owned(), "invalid snapshot".to_owned()),
    ];
    for (content, reason) in cases {
        std::fs::write(&state, content).expect("write state");
        let mut sup = supervise(&[], &state, &pid_file, &["sleep", "600"]);
        let mut stderr = Stderr::of(&mut sup);
        let line = stderr.wait("ignoring");
        assert!(line.starts_with("lifeline: ignoring "), "{line}");
        assert!(line.contains(&state.display().to_string()), "names the file: {line}");
        assert!(line.contains(&reason), "says why ({reason}): {line}");
        assert!(line.ends_with("; starting the command"), "{line}");
        let pid = wait_for("the pid file", || read_pid(&pid_file));
        assert_eq!(ppid(pid), Some(sup.id() as i32), "the command was started");
        wait_for("the new snapshot", || Snapshot::read(&state).ok().filter(|s| s.pid == pid as u32));
        stop_cleanly(sup, stderr, &pid_file, &state, pid);
        assert!(alive(stranger.id() as i32), "the process that reused the pid was left alone");
    }
    stranger.kill().expect("kill");
    stranger.wait().expect("reap");
}

#[test]
fn a_second_supervisor_on_the_same_state_file_exits_75_naming_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, pid_file) = (dir.path().join("svc.state"), dir.path().join("svc.pid"));
    let mut first = supervise(&[], &state, &pid_file, &["sleep", "600"]);
    let stderr = Stderr::of(&mut first);
    let pid = wait_for("the pid file", || read_pid(&pid_file));
    let other = dir.path().join("other.pid");
    let out = lifeline()
        .args(["supervise", "--state"])
        .arg(&state)
        .arg("--pidfile")
        .arg(&other)
        .args(["--", "sleep", "600"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "lifeline: state file {} is in use by another supervisor (pid {})",
            state.display(),
            first.id()
        )
    );
    assert!(!other.exists(), "nothing was started");
    assert!(alive(pid));
    stop_cleanly(first, stderr, &pid_file, &state, pid);
}

#[test]
fn with_die_with_supervisor_a_sigkill_of_the_supervisor_sends_the_service_the_stop_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ready, got) = (dir.path().join("ready"), dir.path().join("got"));
    let pid_file = dir.path().join("svc.pid");
    let script = format!(
        "trap 'echo USR1 > {got}; exit 0' USR1; touch {ready}; while :; do sleep 0.1; done",
        got = got.display(),
        ready = ready.display()
    );
    let sup = lifeline()
        .args(["supervise", "--die-with-supervisor", "--stop-signal", "SIGUSR1", "--pidfile"])
        .arg(&pid_file)
        .args(["--", "sh", "-c", &script])
        .spawn()
        .expect("spawn");
    wait_for("the trap", || ready.exists().then_some(()));
    // The supervisor writes the pid file after the start; the service may be quicker.
    let pid = wait_for("the pid file", || read_pid(&pid_file));
    sigkill(sup);
    wait_for("the service to die with its supervisor", || (!alive(pid)).then_some(()));
    assert_eq!(std::fs::read_to_string(&got).expect("the service got a signal").trim(), "USR1");
}

#[test]
#[ignore = "needs root"]
fn an_adopted_service_keeps_its_notify_socket_and_its_handover_is_followed() {
    // systemd-notify speaks for its parent (our main process) only with CAP_SYS_ADMIN.
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: systemd-notify can only speak for its parent as root"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, pid_file) = (dir.path().join("svc.state"), dir.path().join("svc.pid"));
    let (go, successor) = (dir.path().join("go"), dir.path().join("successor"));
    // Ready at once; once `go` exists, starts a successor and announces it, then exits.
    let script = format!(
        "systemd-notify --ready || exit 9; while [ ! -e {go} ]; do sleep 0.05; done; \
         sleep 600 & echo $! > {succ}.tmp && mv {succ}.tmp {succ}; \
         systemd-notify MAINPID=$! || exit 9; exit 0",
        go = go.display(),
        succ = successor.display()
    );
    let service = ["sh", "-c", &script];
    let first = supervise(&["--notify"], &state, &pid_file, &service);
    let pid = wait_for("the pid file", || read_pid(&pid_file));
    let snapshot = wait_for("READY=1 in the state file", || Snapshot::read(&state).ok().filter(|s| s.ready));
    assert!(snapshot.notify_socket.is_some(), "{snapshot:?}");
    sigkill(first);

    let mut second =
        supervise(&["--notify", "--max-failures", "1", "--within", "1m"], &state, &pid_file, &service);
    let mut stderr = Stderr::of(&mut second);
    stderr.wait(&format!("adopted the running service (pid {pid})"));
    std::fs::write(&go, "").expect("go");
    let new = wait_for("the successor's pid", || read_pid(&successor));
    wait_for("the pid file to follow MAINPID=", || (read_pid(&pid_file) == Some(new)).then_some(()));
    wait_for("the state file to follow MAINPID=", || {
        Snapshot::read(&state).ok().filter(|s| s.pid == new as u32)
    });
    // Had the old main process's exit counted as a crash, the supervisor would have given up.
    let text = stop_cleanly(second, stderr, &pid_file, &state, new);
    assert!(!text.contains("service exited"), "{text}");
}

#[test]
fn an_orphan_that_moved_to_a_session_of_its_own_is_reaped() {
    // `lifeline supervise` is a process of its own: every child it has is the service's, also an
    // orphan that called setsid() (no group or session ties it to the service any more).
    let dir = tempfile::tempdir().expect("tempdir");
    let (orphan_file, pid_file) = (dir.path().join("orphan"), dir.path().join("svc.pid"));
    let script = format!(
        "(setsid sleep 600 & echo $! > {o}.tmp && mv {o}.tmp {o}); exec sleep 600",
        o = orphan_file.display()
    );
    let mut sup = lifeline()
        .args(["supervise", "--pidfile"])
        .arg(&pid_file)
        .args(["--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = Stderr::of(&mut sup);
    let main = wait_for("the pid file", || read_pid(&pid_file));
    let orphan = wait_for("the orphan's pid", || read_pid(&orphan_file));
    let session = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.split_whitespace().nth(3)?.parse().ok()
    };
    wait_for("the orphan to lead a session of its own and be re-parented to the supervisor", || {
        (session(orphan) == Some(orphan) && ppid(orphan) == Some(sup.id() as i32)).then_some(())
    });
    signal(orphan as u32, Signal::SIGKILL);
    wait_for("the orphan to be reaped (not left a zombie)", || {
        (!Path::new(&format!("/proc/{orphan}")).exists()).then_some(())
    });
    stop_cleanly(sup, stderr, &pid_file, &dir.path().join("no-state"), main);
}

/// A state file holding a snapshot of `pid` (a live process of ours) with `edit` applied to its
/// JSON: what a stale or tampered file looks like.
fn tampered_snapshot(pid: u32, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let snapshot =
        Snapshot::of_process(pid, lifeline::keepalive::Command::new("sleep").arg("600")).expect("snapshot");
    let mut value: serde_json::Value = serde_json::from_str(&snapshot.to_json()).expect("json");
    edit(&mut value);
    value.to_string()
}

/// A directory that is nobody's business of lifeline's: a socket file bound by the test and
/// another file. Returns the socket (keep it open) and the socket's path.
fn victim(dir: &Path) -> (std::os::unix::net::UnixDatagram, std::path::PathBuf) {
    let victim = dir.join("some/dir");
    std::fs::create_dir_all(&victim).expect("mkdir");
    std::fs::write(victim.join("keep"), "precious").expect("write");
    let path = victim.join("x.sock");
    (std::os::unix::net::UnixDatagram::bind(&path).expect("bind"), path)
}

fn assert_untouched(socket: &Path) {
    assert!(socket.exists(), "{} was unlinked", socket.display());
    let dir = socket.parent().expect("dir");
    assert_eq!(std::fs::read_to_string(dir.join("keep")).expect("the other file"), "precious");
}

#[test]
fn a_tampered_state_file_never_makes_the_supervisor_remove_what_it_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, pid_file) = (dir.path().join("svc.state"), dir.path().join("svc.pid"));
    let (_socket, victim_socket) = victim(dir.path());
    let content = tampered_snapshot(std::process::id(), |v| {
        v["pid"] = 1.into();
        v["start_time"] = 0.into();
        v["notify_socket"] = victim_socket.display().to_string().into();
    });
    std::fs::write(&state, content).expect("write state");
    let mut sup = supervise(&["--notify"], &state, &pid_file, &["sleep", "600"]);
    let mut stderr = Stderr::of(&mut sup);
    let line = stderr.wait("ignoring");
    assert!(line.contains("pid 1 now belongs to another process"), "{line}");
    let pid = wait_for("the pid file", || read_pid(&pid_file));
    assert_eq!(ppid(pid), Some(sup.id() as i32), "the command was started");
    assert_untouched(&victim_socket);
    stop_cleanly(sup, stderr, &pid_file, &state, pid);
    assert_untouched(&victim_socket);
    assert!(alive(1), "init");
}

#[test]
fn an_adopted_snapshot_naming_a_foreign_notify_socket_leaves_it_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, pid_file) = (dir.path().join("svc.state"), dir.path().join("svc.pid"));
    let (_socket, victim_socket) = victim(dir.path());
    let mut service = Command::new("sleep").arg("600").spawn().expect("spawn sleep");
    let content = tampered_snapshot(service.id(), |v| {
        v["notify_socket"] = victim_socket.display().to_string().into();
    });
    std::fs::write(&state, content).expect("write state");
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let mut sup = supervise(&["--notify"], &state, &pid_file, &["sleep", "600"]);
    let mut stderr = Stderr::of(&mut sup);
    stderr.wait(&format!("adopted the running service (pid {})", service.id()));
    assert_untouched(&victim_socket);
    let snapshot = wait_for("the rewritten state file", || {
        Snapshot::read(&state)
            .ok()
            .filter(|s| s.notify_socket.as_deref() != Some(&*victim_socket.to_string_lossy()))
    });
    assert!(snapshot.notify_socket.is_some(), "a socket of our own is served instead: {snapshot:?}");
    let text = stop_cleanly(sup, stderr, &pid_file, &state, service.id() as i32);
    service.wait().expect("reap the adopted service");
    assert_untouched(&victim_socket);
    assert!(text.contains("not a notify socket lifeline created"), "{text}");
}

/// Runs `lifeline supervise --state STATE -- sleep 600` on a state file that must be refused:
/// exit 1, one line naming the file and `reason`, nothing started.
fn refused(state: &Path, reason: &str) {
    let dir = state.parent().expect("dir");
    let pid_file = dir.join("refused.pid");
    let out = lifeline()
        .args(["supervise", "--state"])
        .arg(state)
        .arg("--pidfile")
        .arg(&pid_file)
        .args(["--", "sleep", "600"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with(&format!("lifeline: refusing state file {}: ", state.display())), "{stderr}");
    assert!(stderr.contains(reason), "says why ({reason}): {stderr}");
    assert!(!pid_file.exists(), "nothing was started");
}

#[test]
fn a_state_file_others_can_write_or_a_symlink_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut service = Command::new("sleep").arg("600").spawn().expect("spawn sleep");
    let content = tampered_snapshot(service.id(), |_| {});
    let state = dir.path().join("svc.state");
    for mode in [0o620, 0o602, 0o666] {
        std::fs::write(&state, &content).expect("write state");
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod");
        refused(&state, &format!("writable by group or others (mode {mode:04o})"));
    }
    let target = dir.path().join("real.state");
    std::fs::write(&target, &content).expect("write");
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let link = dir.path().join("link.state");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    refused(&link, "a symbolic link");
    assert!(service.try_wait().expect("try_wait").is_none(), "the process the file names was left alone");
    service.kill().expect("kill");
    service.wait().expect("reap");
}

#[test]
#[ignore = "needs root"]
fn a_state_file_owned_by_another_user_is_refused() {
    assert!(nix::unistd::geteuid().is_root(), "needs root: files of other users, setpriv");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut service = Command::new("sleep").arg("600").spawn().expect("spawn sleep");
    let state = dir.path().join("svc.state");
    std::fs::write(&state, tampered_snapshot(service.id(), |_| {})).expect("write state");
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown to nobody");
    refused(&state, "owned by uid 65534");
    // A file of our own, read by a supervisor running as someone else (nobody), is refused too.
    std::os::unix::fs::chown(&state, Some(0), Some(0)).expect("chown back");
    let nobody_dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(nobody_dir.path(), Some(65534), Some(65534)).expect("chown dir");
    let theirs = nobody_dir.path().join("svc.state");
    std::fs::copy(&state, &theirs).expect("copy");
    std::os::unix::fs::chown(&theirs, Some(1), Some(1)).expect("chown to daemon");
    // Readable by nobody: the owner is what is wrong with it.
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_lifeline"))
        .args(["supervise", "--state"])
        .arg(&theirs)
        .args(["--", "sleep", "600"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("owned by uid 1"), "{stderr}");
    assert!(service.try_wait().expect("try_wait").is_none(), "the process the file names was left alone");
    service.kill().expect("kill");
    service.wait().expect("reap");
}

/// An edit of a snapshot's JSON.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn a_snapshot_from_another_boot_or_of_another_uid_is_stale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, pid_file) = (dir.path().join("svc.state"), dir.path().join("svc.pid"));
    // A live process whose pid and start time match: only the boot id or the uid tell it apart.
    let mut service = Command::new("sleep").arg("600").spawn().expect("spawn sleep");
    let uid = nix::unistd::getuid().as_raw();
    let cases: [(&str, Edit); 2] = [
        ("another boot", Box::new(|v| v["boot_id"] = "00000000-0000-4000-8000-000000000000".into())),
        ("uid", Box::new(move |v| v["uid"] = (uid + 4242).into())),
    ];
    for (reason, edit) in cases {
        std::fs::write(&state, tampered_snapshot(service.id(), edit)).expect("write state");
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let mut sup = supervise(&[], &state, &pid_file, &["sleep", "600"]);
        let mut stderr = Stderr::of(&mut sup);
        let line = stderr.wait("ignoring");
        assert!(line.starts_with("lifeline: ignoring stale state file"), "{line}");
        assert!(line.contains(reason), "says why ({reason}): {line}");
        let pid = wait_for("the pid file", || read_pid(&pid_file));
        assert_ne!(pid, service.id() as i32);
        stop_cleanly(sup, stderr, &pid_file, &state, pid);
        assert!(service.try_wait().expect("try_wait").is_none(), "the process the file names was left alone");
    }
    service.kill().expect("kill");
    service.wait().expect("reap");
}

#[test]
fn the_pid_file_and_the_state_file_are_fsynced_before_the_rename_and_their_directory_after() {
    // strace(1) as the real peer: it sees the system calls, in order. A rename that reaches the
    // disk before the file's data leaves a zero-length file after a power loss.
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, pid_file, trace) =
        (dir.path().join("svc.state"), dir.path().join("svc.pid"), dir.path().join("trace"));
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_lifeline"))
        .args(["supervise", "--restart", "on-failure", "--pidfile"])
        .arg(&pid_file)
        .arg("--state")
        .arg(&state)
        .args(["--", "true"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run strace (installed by .ci/run)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&trace).expect("trace");
    let lines: Vec<&str> = text.lines().collect();
    let dir_shown = format!("<{}>", dir.path().display());
    for file in [&pid_file, &state] {
        let shown = format!("\"{}\"", file.display());
        let renamed = lines
            .iter()
            .position(|l| l.contains("rename") && l.trim_end().ends_with("= 0") && l.contains(&shown))
            .unwrap_or_else(|| panic!("no rename onto {}:\n{text}", file.display()));
        // renameat2(AT_FDCWD<...>, "/dir/.svc.pid.XXXX.tmp", AT_FDCWD<...>, "/dir/svc.pid", ...)
        let temp = lines[renamed].split('"').nth(1).expect("the temporary file's name");
        let synced = lines[..renamed]
            .iter()
            .any(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(&format!("<{temp}>)")));
        assert!(synced, "{temp} was not fsynced before it was renamed onto {}:\n{text}", file.display());
        let dir_synced =
            lines[renamed..].iter().any(|l| l.contains("fsync(") && l.contains(&format!("{dir_shown})")));
        assert!(
            dir_synced,
            "the directory was not fsynced after the rename onto {}:\n{text}",
            file.display()
        );
    }
}

#[test]
fn a_closed_stderr_does_not_stop_the_supervisor_from_stopping_the_service() {
    // Whoever read our stderr is gone (a pipeline that ended, a log collector restarted): a line
    // that cannot be written must not end supervision half-way through a stop.
    let dir = tempfile::tempdir().expect("tempdir");
    let (pid_file, ready) = (dir.path().join("svc.pid"), dir.path().join("ready"));
    let script = format!("trap '' TERM; touch {}; while :; do sleep 1; done", ready.display());
    let mut sup = lifeline()
        .args(["supervise", "--grace", "200ms", "--pidfile"])
        .arg(&pid_file)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = wait_for("the pid file", || read_pid(&pid_file));
    wait_for("the trap", || ready.exists().then_some(()));
    drop(sup.stdout.take());
    drop(sup.stderr.take());
    // The stop needs SIGKILL after the grace period, which is logged: to a closed pipe.
    signal(sup.id(), Signal::SIGTERM);
    let (status, _, _) = finish(sup);
    assert_eq!(status.code(), Some(0));
    assert!(!alive(pid), "the service was left running");
    assert!(!pid_file.exists());
}
