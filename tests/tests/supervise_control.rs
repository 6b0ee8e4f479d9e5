//! The supervisor's own control socket (`lifeline supervise --control`) for a program that
//! knows nothing of lifeline: `lifeline status` (exit 0 when up, 3 when not: a health check),
//! `lifeline restart` (a stop and a start), `lifeline stop --socket`; and s6/dinit readiness
//! (`--ready-fd`).

use std::io::Read as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use lifeline_tests::lines::Lines;
use lifeline_tests::{lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SERVICE: &str = env!("CARGO_BIN_EXE_restart-socket-service");

fn supervise(args: &[&str], service: &[&str]) -> (Child, Lines) {
    let mut child = Command::new(lifeline_bin())
        .arg("supervise")
        .args(args)
        .arg("--")
        .args(service)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lifeline supervise");
    let stderr = Lines::new(child.stderr.take().unwrap());
    (child, stderr)
}

fn lifeline(args: &[&str]) -> Output {
    Command::new(lifeline_bin()).args(args).output().expect("run lifeline")
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

fn status(socket: &Path) -> (Option<i32>, serde_json::Value) {
    let out = lifeline(&["status", "--socket", &socket.display().to_string()]);
    (out.status.code(), json(&out))
}

fn is_dead(pid: u64) -> bool {
    u32::try_from(pid).map_or(true, lifeline_tests::proc::is_dead)
}

#[test]
fn status_restart_and_stop_work_for_any_program_through_the_supervisors_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let (mut sup, _stderr) = supervise(&["--control", &socket.display().to_string()], &["sleep", "600"]);
    let (code, first) = wait_for("the control socket", || {
        socket.exists().then(|| status(&socket)).filter(|(_, s)| s["ready"] == true)
    });
    assert_eq!(code, Some(0), "up: exit 0 ({first})");
    assert_eq!(first["state"], "running");
    assert_eq!(first["restarts"], 0);
    assert_eq!(first["generation"], 1);
    assert_eq!(first["supervisor_pid"], sup.id());
    assert!(first["uptime_ms"].is_u64() && first["started_at"].is_u64(), "{first}");
    let old = first["pid"].as_u64().expect("a main pid");

    // A restart of a program that cannot hand over: stop, then start (as `systemctl restart`).
    let out = lifeline(&["restart", "--socket", &socket.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the new pid");
    assert_ne!(new, old);
    assert!(is_dead(old), "the old process was stopped first");
    let (code, after) = status(&socket);
    assert_eq!(code, Some(0));
    assert_eq!((after["pid"].as_u64(), after["restarts"].as_u64()), (Some(new), Some(1)), "{after}");
    assert!(after["last_exit"].as_str().is_some_and(|e| e.contains("SIGTERM")), "{after}");

    // Stop through the socket: answered once the program is gone; the supervisor exits 0.
    let out = lifeline(&["stop", "--socket", &socket.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_dead(new), "stopped before the answer");
    let exit = wait_for("the supervisor to exit", || sup.try_wait().unwrap());
    assert!(exit.success());
    assert!(!socket.exists(), "the socket is removed");
}

#[test]
fn a_service_that_is_not_up_makes_status_exit_3_for_a_health_check() {
    let dir = tempfile::tempdir().unwrap();
    // With --notify a program that never sends READY=1 is running but not ready.
    let socket = dir.path().join("notready.sock");
    let (mut sup, _stderr) =
        supervise(&["--notify", "--control", &socket.display().to_string()], &["sleep", "600"]);
    let (code, s) = wait_for("the control socket", || socket.exists().then(|| status(&socket)));
    assert_eq!((code, &s["state"], &s["ready"]), (Some(3), &"running".into(), &false.into()), "{s}");
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_for("exit", || sup.try_wait().unwrap()).success());

    // A program that keeps failing: backing off, not up, with its last exit.
    let socket = dir.path().join("failing.sock");
    let (mut sup, _stderr) =
        supervise(&["--control", &socket.display().to_string()], &["sh", "-c", "exit 9"]);
    let (code, s) = wait_for("the supervisor to back off", || {
        socket.exists().then(|| status(&socket)).filter(|(_, s)| s["state"] == "backing_off")
    });
    assert_eq!(code, Some(3), "{s}");
    assert!(s["pid"].is_null() && s["backoff_until"].is_u64(), "{s}");
    assert_eq!(s["last_exit"], "exited with code 9");
    // A restart asked for while nothing runs is refused in one line.
    let out = lifeline(&["restart", "--socket", &socket.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process is running"));
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_for("exit", || sup.try_wait().unwrap()).success());
}

#[test]
fn a_services_own_socket_refuses_a_stop_and_still_answers_status_in_the_old_shape() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("service.sock");
    let mut service = Command::new(SERVICE)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the service's socket", || socket.exists().then_some(()));
    let (code, s) = status(&socket);
    assert_eq!(code, Some(0));
    assert!(s.get("state").is_none() && s["pid"].is_u64(), "the plain status: {s}");
    let out = lifeline(&["stop", "--socket", &socket.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("takes no stop requests"), "{out:?}");
    let _ = service.kill();
    let _ = service.wait();
}

/// Runs `lifeline supervise ARGS -- SERVICE` with the write end of a pipe as fd 3; returns the
/// supervisor and the read end.
fn with_ready_pipe(args: &[&str], service: &[&str]) -> (Child, std::fs::File) {
    // Close-on-exec: only the dup2'ed copy at fd 3 reaches the supervisor (and the reader must
    // see EOF once the supervisor closed it).
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let raw = write.as_raw_fd();
    let mut cmd = Command::new(lifeline_bin());
    cmd.arg("supervise").args(args).arg("--").args(service).env_remove("NOTIFY_SOCKET");
    // SAFETY: dup2 is async-signal-safe and allocates nothing; it puts the pipe at fd 3 (without
    // close-on-exec) in the child only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    drop(write);
    (child, std::fs::File::from(read))
}

#[test]
fn ready_fd_gets_one_newline_at_readiness_and_the_service_does_not_inherit_it() {
    // Without --notify the program is ready once started.
    let (mut sup, mut ready) = with_ready_pipe(&["--ready-fd", "3"], &["sleep", "600"]);
    let mut got = Vec::new();
    // EOF after the newline: the supervisor closed it, and the program never had it.
    ready.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"\n");
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_for("exit", || sup.try_wait().unwrap()).success());

    // With --notify: the newline waits for the program's READY=1.
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let notify = env!("CARGO_BIN_EXE_keepalive-notify");
    let (mut sup, mut ready) = with_ready_pipe(
        &["--notify", "--ready-fd", "3"],
        &[notify, "--via", "sd-notify", "--done", &done.display().to_string()],
    );
    let mut got = Vec::new();
    ready.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"\n");
    let said = wait_for("the program to record its READY=1", || std::fs::read_to_string(&done).ok());
    assert_eq!(said.trim(), "ok");
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_for("exit", || sup.try_wait().unwrap()).success());
}

#[test]
fn a_ready_fd_that_is_not_usable_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let touch = format!("touch {}; sleep 600", marker.display());
    for fd in ["1", "57"] {
        let out = Command::new(lifeline_bin())
            .args(["supervise", "--ready-fd", fd, "--", "sh", "-c", &touch])
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--ready-fd {fd}: {out:?}");
        assert!(stderr.contains("--ready-fd"), "--ready-fd {fd}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(!marker.exists(), "--ready-fd {fd}: the command was started");
    }
}

/// The next datagram on a fake service manager's socket that contains `needle`.
fn manager_message(socket: &std::os::unix::net::UnixDatagram, needle: &str) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).expect("a notification (the socket has a read timeout)");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.contains(needle) {
            return text;
        }
    }
}

#[test]
fn under_a_service_manager_it_says_ready_status_stopping_and_feeds_the_watchdog_which_the_service_never_sees()
{
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("manager.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    manager.set_read_timeout(Some(lifeline_tests::PATIENCE)).unwrap();
    let env_file = dir.path().join("env");
    let script = format!("env > {}.tmp && mv {0}.tmp {0}; exec sleep 600", env_file.display());
    let mut sup = Command::new(lifeline_bin())
        .args(["supervise", "--", "sh", "-c", &script])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = manager_message(&manager, "READY=1");
    assert!(ready.contains("STATUS=pid ") && ready.contains(" ready"), "{ready:?}");
    assert!(!ready.contains("MAINPID="), "the supervisor stays the main process: {ready:?}");
    // Half the interval: several pings arrive while the supervisor idles.
    for _ in 0..3 {
        manager_message(&manager, "WATCHDOG=1");
    }
    let env = wait_for("the service's environment", || std::fs::read_to_string(&env_file).ok());
    for var in ["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="] {
        assert!(!env.lines().any(|l| l.starts_with(var)), "the service got {var}: {env}");
    }
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    manager_message(&manager, "STOPPING=1");
    assert!(wait_for("exit", || sup.try_wait().unwrap()).success());
}
