//! `lifeline lock` end to end: real processes, real signals, real `flock(1)` on the same files.
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long to wait for something that should happen at once (generous: loaded CI machines).
const PATIENCE: Duration = Duration::from_secs(20);

fn lifeline() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn lock_file(dir: &Path) -> PathBuf {
    dir.join(".lifeline.lock")
}

/// The canonical form of a temp dir: what `lifeline lock` names in its messages.
fn canonical(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap()
}

/// `lifeline lock DIR -- sh -c 'echo ready; read x'`: holds DIR until its stdin is closed.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    fn start(mut command: Command) -> Holder {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n", "holder did not start: {:?}", child.wait_with_output());
        Holder { child, stdin }
    }

    fn lifeline(dir: &Path) -> Holder {
        let mut command = lifeline();
        command.arg("lock").arg(dir).args(["--", "sh", "-c", "echo ready; read x || :"]);
        Holder::start(command)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the held command finish and returns the holder's exit code.
    fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        self.child.wait().unwrap().code().unwrap()
    }
}

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap()
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr).lines().map(str::to_owned).collect()
}

#[test]
fn the_command_runs_holding_the_lock_and_its_exit_status_is_ours() {
    let dir = tempfile::tempdir().unwrap();
    let file = lock_file(dir.path());
    // Inside CMD: the lock file exists, holds lifeline's pid, and flock(1) cannot take it.
    let script = r#"printf 'pid=%s' "$(cat "$1")"; flock -n "$1" true; echo " flock=$?"; exit 3"#;
    let child = lifeline()
        .arg("lock")
        .arg(dir.path())
        .args(["--", "sh", "-c", script, "sh"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("pid={pid} flock=1\n"));
    assert!(output.stderr.is_empty(), "{output:?}");
    assert!(!file.exists(), "the lock file outlived lifeline lock");
}

#[test]
fn a_command_killed_by_a_signal_gives_128_plus_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    for (signal, code) in [("KILL", 137), ("TERM", 143), ("SEGV", 139)] {
        let output = run(lifeline()
            .arg("lock")
            .arg(dir.path())
            .args(["--", "sh", "-c"])
            .arg(format!("kill -{signal} $$")));
        assert_eq!(output.status.code(), Some(code), "{signal}: {output:?}");
        assert!(!lock_file(dir.path()).exists());
    }
}

#[test]
fn a_lock_held_by_another_lifeline_exits_75_with_one_line_naming_the_dir_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let holder = Holder::lifeline(dir.path());
    let output = run(lifeline().arg("lock").arg(dir.path()).arg("--").arg("touch").arg(&marker));
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    let lines = stderr_lines(&output);
    assert_eq!(
        lines,
        [format!("lifeline: {} is locked by pid {}", canonical(dir.path()).display(), holder.pid())]
    );
    assert!(!marker.exists(), "CMD ran without the lock");
    assert_eq!(holder.finish(), 0);
    assert!(!lock_file(dir.path()).exists());
}

#[test]
fn a_lock_held_by_flock_1_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let file = lock_file(dir.path());
    let mut flock = Command::new("flock");
    flock.arg(&file).args(["-c", "echo ready; read x || :"]);
    let holder = Holder::start(flock);
    let output = run(lifeline().arg("lock").arg(dir.path()).args(["--", "true"]));
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    // flock(1) writes no pid into the file.
    assert_eq!(
        stderr_lines(&output),
        [format!("lifeline: {} is locked by another process", canonical(dir.path()).display())]
    );
    assert_eq!(holder.finish(), 0);
    // flock(1) does not unlink; the file it leaves is simply locked next time.
    let output = run(lifeline().arg("lock").arg(dir.path()).args(["--", "true"]));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn flock_1_cannot_take_a_lock_held_by_lifeline() {
    let dir = tempfile::tempdir().unwrap();
    let holder = Holder::lifeline(dir.path());
    let status = Command::new("flock").arg("-n").arg(lock_file(dir.path())).arg("true").status().unwrap();
    assert_eq!(status.code(), Some(1), "flock -n got a lock lifeline holds");
    assert_eq!(holder.finish(), 0);
}

#[test]
fn several_directories_are_all_or_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let marker = root.path().join("ran");
    let holder = Holder::lifeline(&b);
    let output = run(lifeline().arg("lock").arg(&a).arg(&b).arg("--").arg("touch").arg(&marker));
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    assert_eq!(
        stderr_lines(&output),
        [format!("lifeline: {} is locked by pid {}", canonical(&b).display(), holder.pid())]
    );
    assert!(!marker.exists());
    assert!(!lock_file(&a).exists(), "the lock on a was not given back");
    assert_eq!(holder.finish(), 0);

    // Both free: both held while CMD runs.
    let script = r#"test -f "$1/.lifeline.lock" && test -f "$2/.lifeline.lock""#;
    let output =
        run(lifeline().arg("lock").arg(&b).arg(&a).args(["--", "sh", "-c", script, "sh"]).arg(&a).arg(&b));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn the_command_inherits_no_lock_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(lifeline().arg("lock").arg(dir.path()).args(["--", "ls", "-l", "/proc/self/fd/"]));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(listing.contains("0 ->"), "unexpected listing: {listing}");
    assert!(!listing.contains(".lifeline.lock"), "CMD inherited the lock: {listing}");
    assert!(!listing.contains("signalfd"), "CMD inherited lifeline's signalfd: {listing}");
}

#[test]
fn sigterm_and_sigint_are_forwarded_to_the_command() {
    let dir = tempfile::tempdir().unwrap();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let script = concat!(
            r#"trap 'echo "got $1"; kill $! 2>/dev/null; exit 7' TERM INT HUP; echo ready; "#,
            // The background sleep is killed on the way out and holds none of the test's pipes.
            "while :; do sleep 5 >/dev/null 2>&1 & wait $!; done"
        );
        let mut child = lifeline()
            .arg("lock")
            .arg(dir.path())
            .args(["--", "sh", "-c", script, "sh", signal.as_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, format!("got {}\n", signal.as_str()));
        assert_eq!(child.wait().unwrap().code(), Some(7), "{signal}");
        assert!(!lock_file(dir.path()).exists());
    }
}

#[test]
fn the_command_does_not_outlive_a_killed_lifeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = lifeline()
        .arg("lock")
        .arg(dir.path())
        .args(["--", "sh", "-c", "echo $$; exec sleep 1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let cmd_pid: i32 = line.trim().parse().unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    // The pipe reaches EOF only once CMD (the last writer) is gone too.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        tx.send(stdout.read_to_end(&mut rest).map(|_| ())).unwrap();
    });
    let gone = rx.recv_timeout(PATIENCE);
    if gone.is_err() {
        let _ = kill(Pid::from_raw(cmd_pid), Signal::SIGKILL);
    }
    assert!(gone.is_ok(), "CMD kept running after lifeline lock was killed");
    // The kernel released the lock with lifeline's death: the next acquirer gets it at once.
    let output = run(lifeline().arg("lock").arg(dir.path()).args(["--", "true"]));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn wait_succeeds_once_the_holder_exits() {
    let dir = tempfile::tempdir().unwrap();
    let holder = Holder::lifeline(dir.path());
    let mut waiter = lifeline()
        .env("RUST_LOG", "info")
        .args(["lock", "--wait", "20s"])
        .arg(dir.path())
        .args(["--", "sh", "-c", r#"echo "got it, holder $(cat "$1")""#, "sh"])
        .arg(lock_file(dir.path()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The waiter says it is waiting (after its first, failed, attempt): only then release.
    let mut stderr = BufReader::new(waiter.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("waiting for lock on"), "{line}");
    assert_eq!(holder.finish(), 0);
    let mut stdout = String::new();
    waiter.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert_eq!(waiter.wait().unwrap().code(), Some(0));
    assert_eq!(stdout, format!("got it, holder {}\n", waiter.id()));
}

#[test]
fn wait_gives_up_with_75_when_the_holder_stays() {
    let dir = tempfile::tempdir().unwrap();
    let holder = Holder::lifeline(dir.path());
    let output = run(lifeline().args(["lock", "--wait", "50ms"]).arg(dir.path()).args(["--", "true"]));
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("lifeline: timed out after "), "{lines:?}");
    assert!(lines[0].ends_with(&format!("held by pid {}", holder.pid())), "{lines:?}");
    assert_eq!(holder.finish(), 0);
}

#[test]
fn a_custom_lock_file_name_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(lifeline()
        .args(["lock", "--name", "custom.lock"])
        .arg(dir.path())
        .args(["--", "sh", "-c", r#"test -f "$1/custom.lock" && test ! -e "$1/.lifeline.lock""#, "sh"])
        .arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!dir.path().join("custom.lock").exists());
}

#[test]
fn setup_failures_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let output = run(lifeline().arg("lock").arg(&missing).args(["--", "true"]));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stderr_lines(&output), [format!("lifeline: directory {} does not exist", missing.display())]);

    let target = dir.path().join("target");
    std::fs::write(&target, "keep").unwrap();
    std::os::unix::fs::symlink(&target, lock_file(dir.path())).unwrap();
    let output = run(lifeline().arg("lock").arg(dir.path()).args(["--", "true"]));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("is a symbolic link"), "{lines:?}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    std::fs::remove_file(lock_file(dir.path())).unwrap();

    let output = run(lifeline().arg("lock").arg(dir.path()).args(["--", "/nonexistent/command"]));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("lifeline: cannot run /nonexistent/command"), "{lines:?}");
    assert!(!lock_file(dir.path()).exists());
}

#[test]
fn the_command_line_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    // No command, no directory: usage errors (clap's exit code 2), nothing locked.
    let output = run(lifeline().arg("lock").arg(dir.path()));
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let output = run(lifeline().args(["lock", "--", "true"]));
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let output = run(lifeline().args(["lock", "--wait", "soon"]).arg(dir.path()).args(["--", "true"]));
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(!lock_file(dir.path()).exists());
}

/// Polls `check` every few ms until it holds (for conditions with no event to wait on, like a
/// process being re-parented), or panics naming `what` after [`PATIENCE`].
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads one line from a child's piped stdout.
fn read_line(stdout: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    line
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for `child` to exit (a blocking wait on a helper thread: the exit is the event).
fn exit_code(mut child: Child) -> Option<i32> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait().unwrap().code()).unwrap());
    rx.recv_timeout(PATIENCE).expect("lifeline lock exits in time")
}

#[test]
fn the_lock_is_held_until_every_descendant_that_outlived_the_command_has_exited() {
    let dir = tempfile::tempdir().unwrap();
    // CMD leaves a process behind (its pid on stdout) and exits 3.
    let mut child = lifeline()
        .arg("lock")
        .arg(dir.path())
        .args(["--", "sh", "-c", "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!; exit 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let left: i32 = read_line(&mut stdout).trim().parse().unwrap();
    // Once CMD has exited, what it left is re-parented to `lifeline lock` (a child subreaper).
    wait_for("the leftover to be re-parented to lifeline lock", || ppid(left) == Some(child.id() as i32));
    for _ in 0..3 {
        let output = run(lifeline().arg("lock").arg(dir.path()).args(["--", "true"]));
        assert_eq!(output.status.code(), Some(75), "the lock lapsed while {left} runs: {output:?}");
    }
    kill(Pid::from_raw(left), Signal::SIGKILL).unwrap();
    assert_eq!(exit_code(child), Some(3), "CMD's status, once nothing is left");
    assert!(!lock_file(dir.path()).exists());
    let output = run(lifeline().arg("lock").arg(dir.path()).args(["--", "true"]));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn once_the_command_has_exited_signals_are_forwarded_to_what_it_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    // The leftover records SIGTERM and exits 0; CMD exits 5 at once.
    let leftover = dir.path().join("leftover.sh");
    let text = format!(
        "trap 'echo TERM > {log}; kill $! 2>/dev/null; exit 0' TERM\n\
         while :; do sleep 5 </dev/null >/dev/null 2>&1 & wait $!; done\n",
        log = log.display()
    );
    std::fs::write(&leftover, text).unwrap();
    let script = format!("sh {} </dev/null >/dev/null 2>&1 & echo $!; exit 5", leftover.display());
    let mut child = lifeline()
        .arg("lock")
        .arg(dir.path())
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let left: i32 = read_line(&mut stdout).trim().parse().unwrap();
    wait_for("the leftover to be re-parented to lifeline lock", || ppid(left) == Some(child.id() as i32));
    // The trap is set once the shell runs its loop: its `sleep` child is there.
    wait_for("the leftover shell to run its loop", || {
        std::fs::read_to_string(format!("/proc/{left}/task/{left}/children"))
            .is_ok_and(|c| !c.trim().is_empty())
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(child), Some(5), "CMD's status, once the leftover has gone");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "TERM\n", "the leftover got the forwarded SIGTERM");
    assert!(!lock_file(dir.path()).exists());
}

#[test]
fn a_stop_signal_reaches_processes_re_parented_after_it_came() {
    // CMD leaves L behind; L has a child G. SIGTERM to lifeline lock reaches L, which exits
    // without stopping G: G is re-parented to lifeline lock only then, and must be told too, or
    // the lock would be held for ever.
    let dir = tempfile::tempdir().unwrap();
    let (log, g_pid_file) = (dir.path().join("log"), dir.path().join("g.pid"));
    let g = dir.path().join("g.sh");
    std::fs::write(
        &g,
        format!(
            "trap 'echo G >> {log}; kill $! 2>/dev/null; exit 0' TERM\n\
             echo $$ > {g_pid}.tmp && mv {g_pid}.tmp {g_pid}\n\
             while :; do sleep 5 </dev/null >/dev/null 2>&1 & wait $!; done\n",
            log = log.display(),
            g_pid = g_pid_file.display()
        ),
    )
    .unwrap();
    let l = dir.path().join("l.sh");
    std::fs::write(
        &l,
        format!(
            "sh {g} &\n\
             trap 'echo L >> {log}; exit 0' TERM\n\
             while :; do sleep 5 </dev/null >/dev/null 2>&1 & wait $!; done\n",
            g = g.display(),
            log = log.display()
        ),
    )
    .unwrap();
    let script = format!("sh {} </dev/null >/dev/null 2>&1 & echo $!; exit 5", l.display());
    let mut child = lifeline()
        .arg("lock")
        .arg(dir.path())
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let l_pid: i32 = read_line(&mut stdout).trim().parse().unwrap();
    wait_for("L to be re-parented to lifeline lock", || ppid(l_pid) == Some(child.id() as i32));
    wait_for("G to start", || g_pid_file.exists());
    let g_pid: i32 = std::fs::read_to_string(&g_pid_file).unwrap().trim().parse().unwrap();
    assert_eq!(ppid(g_pid), Some(l_pid), "G is L's child, not ours, when the signal comes");
    // Both traps are set once each shell runs its loop (its `sleep` child is there).
    for pid in [l_pid, g_pid] {
        wait_for("the shell to run its loop", || {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c != g_pid.to_string())
        });
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(child), Some(5), "CMD's status, once L and G have gone");
    let mut got: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
    got.sort();
    assert_eq!(got, ["G", "L"], "each got the SIGTERM once");
    assert!(!lock_file(dir.path()).exists());
}
