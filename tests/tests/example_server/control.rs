//! The restart socket through the server: `lifeline status`, the socket file's mode, and a clean
//! stop on SIGTERM that removes the socket file and the lock file.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use lifeline_tests::wait_for;

use crate::support::{Conn, Options, field, flock_says_locked, is_dead, socket_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_one_json_object_and_the_socket_is_private() {
    let mut server = Options::new().start();
    let status = server.status();
    assert_eq!(status["pid"], server.pid, "{status}");
    assert_eq!(status["generation"], 1, "{status}");
    assert!(status["started_at"].as_u64().is_some_and(|t| t > 0), "{status}");
    assert!(status["last_restart"].is_null(), "{status}");

    let (mode, _) = socket_file(&server.control_path()).expect("the control socket file");
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");

    // After a handover the successor answers on the same socket file, which stays private.
    let (_, inode) = socket_file(&server.control_path()).unwrap();
    let new_pid = server.restart().unwrap();
    let status = server.status();
    assert_eq!(status["pid"], new_pid, "{status}");
    assert_eq!(status["generation"], 2, "{status}");
    assert!(status["last_restart"].as_u64().is_some_and(|t| t > 0), "{status}");
    assert_eq!(socket_file(&server.control_path()), Some((0o600, inode)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_stops_cleanly_and_removes_the_socket_and_the_lock_file() {
    let mut server = Options::new().start();
    let (control, lock) = (server.control_path(), server.lock_path());
    assert!(socket_file(&control).is_some() && lock.exists());

    // A request in flight when SIGTERM arrives is answered before the process exits.
    let mut conn = Conn::open(server.addr, &server.pki().roots()).await.unwrap();
    assert_eq!(conn.get("/").await.unwrap(), format!("pid={} generation=1 served=1", server.pid));
    let began = Instant::now();
    conn.send("/delay?ms=1000").await.unwrap();
    kill(Pid::from_raw(server.pid as i32), Signal::SIGTERM).unwrap();
    let response = conn.response().await.unwrap();
    assert_eq!(response.body, format!("pid={} generation=1 served=2", server.pid));
    assert!(began.elapsed() >= Duration::from_secs(1));

    let status = server.first.wait().unwrap();
    assert!(status.success(), "SIGTERM: {status}");
    assert!(!control.exists(), "the control socket file is left behind");
    assert!(!lock.exists(), "the lock file is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_handover_only_the_successor_removes_the_socket_and_the_lock_file() {
    let mut server = Options::new().start();
    let (control, lock) = (server.control_path(), server.lock_path());
    let first_pid = server.pid;
    let new_pid = server.restart().unwrap();

    // The old process exits 0 and leaves both files to its successor.
    let status = server.first.wait().unwrap();
    assert!(status.success(), "the old process after the handover: {status}");
    assert!(socket_file(&control).is_some(), "the old process removed the control socket file");
    assert!(flock_says_locked(&lock), "the lock was not passed on");
    assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), new_pid.to_string());
    assert_eq!(server.status()["pid"], new_pid);
    assert_ne!(first_pid, new_pid);

    // The successor (not the test's child: its status is its parent's business) cleans up.
    kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM).unwrap();
    wait_for("the successor to stop", || is_dead(new_pid).then_some(()));
    assert!(!control.exists(), "the control socket file is left behind");
    assert!(!lock.exists(), "the lock file is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_the_start_line_still_stops_cleanly() {
    let mut server = Options::new().start();
    kill(Pid::from_raw(server.pid as i32), Signal::SIGTERM).unwrap();
    let status = server.first.wait().unwrap();
    assert!(status.success(), "SIGTERM: {status}");
    assert!(!server.control_path().exists(), "the control socket file is left behind");
    assert!(!server.lock_path().exists(), "the lock file is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_right_after_the_start_line_triggers_a_handover() {
    let mut server = Options::new().start();
    let old_pid = server.pid;
    // At once: the server has announced itself, so it must not die of the signal.
    kill(Pid::from_raw(old_pid as i32), Signal::SIGUSR1).unwrap();
    // The result is only logged; the new process announces itself on stdout.
    let line = server.stdout.wait("generation=2 ");
    let new_pid: u32 = field(&line, "pid").parse().unwrap();
    server.started(new_pid);
    assert_eq!(server.answer().await.0, new_pid);
    assert_eq!(server.status()["pid"], new_pid);
    assert!(server.first.wait().unwrap().success());
}
