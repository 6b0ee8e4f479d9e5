//! The server run by `lifeline lock DIR -- https-server …`: `lifeline lock` holds DIR until the
//! command *and every descendant that outlived it* have exited, so through five handovers (each
//! successor outlives the process `lifeline lock` started) a second `lifeline lock DIR` is refused
//! with 75 every time; SIGTERM to `lifeline lock` reaches the current server; once the last one has
//! exited, the lock is free and its file gone.
//!
//! DIR is not the server's own `--state-dir` (the server locks that one itself, with dirlock, and
//! passes it on): it is a directory a deployment wraps around the whole service.

use std::process::{Command, Stdio};

use lifeline_tests::{https_server_bin, lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{Lines, Options, field, is_dead};

/// SIGKILLs the listed processes if the test fails half-way.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

/// `lifeline lock DIR -- true`: its exit code.
fn contender(dir: &std::path::Path) -> Option<i32> {
    let out = Command::new(lifeline_bin()).arg("lock").arg(dir).args(["--", "true"]).output().unwrap();
    out.status.code()
}

#[test]
fn lifeline_lock_holds_its_directory_through_five_handovers_of_the_server_it_runs() {
    let options = Options::new();
    let held = options.dir().join("held");
    std::fs::create_dir(&held).unwrap();
    let mut cmd = Command::new(lifeline_bin());
    cmd.arg("lock").arg(&held).arg("--").arg(https_server_bin());
    cmd.args(options.server_args("127.0.0.1:0"));
    options.environment(&mut cmd);
    let mut lock = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = Lines::new(lock.stdout.take().unwrap());
    let stderr = Lines::new(lock.stderr.take().unwrap());
    let line = stdout.wait("https-server: pid=");
    let mut pid: u32 = field(&line, "pid").parse().unwrap();
    let mut guard = KillOnDrop(vec![lock.id(), pid]);
    assert_eq!(contender(&held), Some(75), "refused while the first server runs");

    for handover in 1..=5 {
        let out = Command::new(lifeline_bin())
            .args(["restart", "--socket"])
            .arg(options.dir().join("control"))
            .output()
            .unwrap();
        assert!(out.status.success(), "restart {handover}: {}", String::from_utf8_lossy(&out.stderr));
        let new: u32 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
        stdout.wait(&format!("https-server: pid={new} "));
        wait_for(&format!("server {pid} to drain and exit"), || is_dead(pid).then_some(()));
        assert_eq!(
            contender(&held),
            Some(75),
            "handover {handover}: the lock lapsed while server {new} runs; stderr: {:#?}",
            stderr.all()
        );
        guard.0.push(new);
        pid = new;
    }
    assert!(lock.try_wait().unwrap().is_none(), "lifeline lock exited while server {pid} runs");

    // SIGTERM to `lifeline lock` is forwarded to what is left: the current server, now its child.
    kill(Pid::from_raw(lock.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_for("lifeline lock to exit", || lock.try_wait().unwrap());
    // The command (the first server) exited 0 after its handover: that is the status.
    assert_eq!(status.code(), Some(0), "{:#?}", stderr.all());
    for pid in &guard.0[1..] {
        assert!(is_dead(*pid), "server {pid} outlived lifeline lock");
    }
    assert!(!held.join(".lifeline.lock").exists(), "the lock file is left behind");
    assert_eq!(contender(&held), Some(0), "the lock is free once the last server has exited");
    guard.0.clear();
}
