//! The server under `lifeline supervise --notify --pidfile`: five handovers through
//! `lifeline restart` are followed (`MAINPID=` from the old process), never counted as restarts;
//! the pid file follows each new pid; SIGTERM to the supervisor then stops the *current* server.

use std::path::Path;
use std::process::{Command, Stdio};

use lifeline_tests::{https_server_bin, lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{Lines, Options, Server, field, is_dead};

fn pid_in(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// SIGKILLs the supervisor if the test fails before it exited (declared after the [`Server`], so
/// dropped first: the server's own cleanup then waits for a supervisor that is gone).
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// The supervisor's own log lines containing `needle` (the server logs to the same stderr).
fn count(lines: &Lines, needle: &str) -> usize {
    lines.all().iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_handovers_under_lifeline_supervise_are_followed_not_restarted_and_a_stop_ends_the_current_server()
 {
    let options = Options::new();
    let pid_file = options.dir().join("server.pid");
    let mut cmd = Command::new(lifeline_bin());
    cmd.args(["supervise", "--notify", "--pidfile"]).arg(&pid_file).arg("--").arg(https_server_bin());
    cmd.args(options.server_args("127.0.0.1:0"));
    // The server inherits the supervisor's environment (RUST_LOG=info: the supervisor logs too).
    options.environment(&mut cmd);
    let mut supervisor =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let supervisor_pid = supervisor.id();
    // Every server of the chain writes to the supervisor's stdout and stderr.
    let stdout = Lines::new(supervisor.stdout.take().unwrap());
    let stderr = Lines::new(supervisor.stderr.take().unwrap());
    let line = stdout.wait("https-server: pid=");
    let first: u32 = field(&line, "pid").parse().unwrap();
    assert_eq!(field(&line, "generation"), "1", "{line}");
    let addr = line.rsplit_once("listening on ").unwrap().1.parse().unwrap();
    let mut server =
        Server { options, first: supervisor, stdout, stderr, addr, pid: first, pids: vec![first] };
    let mut guard = KillOnDrop(Some(supervisor_pid));

    wait_for("the pid file", || (pid_in(&pid_file) == Some(first)).then_some(()));
    server.stderr.wait(&format!("service is ready pid={first}"));
    let (_, _, mut requests) = server.answer().await;
    for handover in 1..=5 {
        let old = server.pid;
        let new = server.restart().unwrap();
        wait_for(&format!("the pid file to follow handover {handover}"), || {
            (pid_in(&pid_file) == Some(new)).then_some(())
        });
        wait_for("the supervisor to follow the new main pid", || {
            (count(&server.stderr, "following the new main pid") == handover).then_some(())
        });
        // The old process may still answer a connection it accepted just before it stopped.
        let (generation, count_now) = loop {
            let (answered_by, generation, count_now) = server.answer().await;
            if answered_by == new {
                break (generation, count_now);
            }
            assert_eq!(answered_by, old, "answered by neither the new nor the old process");
        };
        assert_eq!(generation, handover as u64 + 1);
        assert!(count_now > requests, "the request counter went from {requests} to {count_now}");
        requests = count_now;
        wait_for("the old process to exit after draining", || is_dead(old).then_some(()));
    }
    let current = server.pid;
    let status = server.status();
    assert_eq!(status["pid"], current);
    assert_eq!(status["generation"], 6);
    assert!(!is_dead(current));

    // Each old process's exit is seen (as a retired main process, not a crash), when it is seen.
    wait_for("the supervisor to see the five old processes exit", || {
        (count(&server.stderr, "previous main process exited") == 5).then_some(())
    });
    // Not one handover looked like a crash: no exit, no backoff, no restart.
    for needle in ["service exited", "restarting after a delay", "ignoring MAINPID"] {
        assert_eq!(count(&server.stderr, needle), 0, "the supervisor logged {needle:?}");
    }

    kill(Pid::from_raw(supervisor_pid as i32), Signal::SIGTERM).unwrap();
    let exit = wait_for("the supervisor to exit after SIGTERM", || server.first.try_wait().unwrap());
    guard.0 = None;
    assert_eq!(exit.code(), Some(0), "the supervisor exits 0 after a clean stop");
    assert!(is_dead(current), "the current server was stopped");
    // Gracefully, by the stop signal (each server logs `stopped` when it has drained and exits).
    wait_for("six graceful stops in the log", || {
        (count(&server.stderr, "stopped reason=") == 6).then_some(())
    });
    for pid in &server.pids {
        assert!(is_dead(*pid), "server {pid} survived");
    }
    assert!(!pid_file.exists(), "the pid file is removed");
    assert!(!server.control_path().exists(), "the control socket is removed");
    assert!(!server.lock_path().exists(), "the lock file is removed");
}
