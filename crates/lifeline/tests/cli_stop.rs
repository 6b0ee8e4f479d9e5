//! `lifeline stop` end to end: a real process that handles its stop signal, one that ignores
//! it, one that is already gone, and the empty `$MAINPID` of a unit without a main process.
#![cfg(feature = "cli")]

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Output, Stdio};

fn lifeline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `sh -c SCRIPT` that prints `ready` once its traps are set; returns when it did. It waits on
/// a `sleep` in the background (so that a trap runs at once), whose output goes nowhere: a trap
/// that ends the shell kills it (`kill $!`), and the process group is the shell's own.
fn shell(script: &str) -> Child {
    let mut child = Command::new("sh")
        .args(["-c", &format!("{script}; echo ready; while :; do sleep 1 >/dev/null 2>&1 & wait $!; done")])
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    child
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn returns_only_once_the_process_has_exited_after_its_stop_signal() {
    let mut child = shell("trap 'kill $!; exit 3' TERM");
    let out = lifeline(&["stop", &child.id().to_string()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "");
    // Already exited (a zombie waiting for us): no wait needed, and it was SIGTERM's doing.
    let status = child.try_wait().unwrap().expect("the process had exited when lifeline stop returned");
    assert_eq!(status.code(), Some(3));
}

#[test]
fn sends_the_signal_it_is_given() {
    let mut child = shell("trap 'kill $!; exit 4' INT; trap 'kill $!; exit 5' TERM");
    let out = lifeline(&["stop", "--signal", "SIGINT", &child.id().to_string()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(child.try_wait().unwrap().and_then(|s| s.code()), Some(4));
}

#[test]
fn a_process_that_outlives_the_timeout_exits_1_with_one_line() {
    let mut child = shell("trap '' TERM");
    let pid = child.id();
    let out = lifeline(&["stop", "--timeout", "300ms", &pid.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr, format!("lifeline: pid {pid} still runs 300ms after SIGTERM\n"));
    assert!(child.try_wait().unwrap().is_none(), "the process ignoring SIGTERM is gone");
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
}

#[test]
fn nothing_to_stop_is_success() {
    // `ExecStop=lifeline stop $MAINPID` without a main process: no argument at all.
    let out = lifeline(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    // A process that has exited and been reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let out = lifeline(&["stop", &pid.to_string()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
fn pid_1_is_refused() {
    let out = lifeline(&["stop", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "lifeline: refusing to stop pid 1\n");
}
