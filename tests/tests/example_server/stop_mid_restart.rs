//! The server under `lifeline supervise --notify`, stopped while a restart is in flight: the
//! successor has started (it holds the listener, the state-dir lock and the control socket it
//! inherited) but is not ready. SIGTERM to the supervisor must stop it too: nothing of the service
//! is left running, the port, the lock and the control socket are free, and a new
//! `lifeline supervise` of the same service starts.

use std::process::{Child, Command, Stdio};

use lifeline_tests::{lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{
    Lines, Options, copy_of_the_binary, field, flock_says_locked, install, install_the_real_binary, is_dead,
    read_pid,
};

/// SIGKILLs the listed processes if the test fails half-way (the supervisor, strays).
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

/// `lifeline supervise --notify -- <exe> <server args>`, its output read line by line.
fn supervise(options: &Options, exe: &std::path::Path) -> (Child, Lines, Lines) {
    let mut cmd = Command::new(lifeline_bin());
    cmd.args(["supervise", "--notify", "--"]).arg(exe).args(options.server_args("127.0.0.1:0"));
    options.environment(&mut cmd);
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = Lines::new(child.stdout.take().unwrap());
    let stderr = Lines::new(child.stderr.take().unwrap());
    (child, stdout, stderr)
}

#[test]
fn sigterm_to_the_supervisor_during_a_restart_stops_the_successor_that_is_not_ready() {
    let options = Options::new().arg("--ready-timeout").arg("60s");
    let exe = copy_of_the_binary(options.dir());
    let (mut supervisor, stdout, stderr) = supervise(&options, &exe);
    let mut guard = KillOnDrop(vec![supervisor.id()]);
    let line = stdout.wait("https-server: pid=");
    let first: u32 = field(&line, "pid").parse().unwrap();
    let addr: std::net::SocketAddr = line.rsplit_once("listening on ").unwrap().1.parse().unwrap();
    stderr.wait(&format!("service is ready pid={first}"));
    guard.0.push(first);

    // The successor: records its pid, then never becomes ready. `exec` keeps every descriptor it
    // inherited (listener, lock, control socket), as a real successor holds them while starting.
    let marker = options.dir().join("successor.pid");
    let script =
        format!("#!/bin/sh\necho $$ > {m}.tmp && mv {m}.tmp {m}\nexec sleep 1000\n", m = marker.display());
    install(&exe, script.as_bytes(), 0o755);
    let mut restart = Command::new(lifeline_bin())
        .args(["restart", "--socket"])
        .arg(options.dir().join("control"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let successor = wait_for("the successor to start", || marker.exists().then(|| read_pid(&marker)));
    guard.0.push(successor);
    assert!(!is_dead(successor), "the successor is running");
    assert!(restart.try_wait().unwrap().is_none(), "the restart is still waiting for the successor");

    kill(Pid::from_raw(supervisor.id() as i32), Signal::SIGTERM).unwrap();
    let exit = wait_for("the supervisor to exit after SIGTERM", || supervisor.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0), "a clean stop: {:#?}", stderr.all());
    assert!(is_dead(first), "the old server {first} survived the stop");
    assert!(is_dead(successor), "the successor {successor} survived the stop, unsupervised");
    let answered = wait_for("`lifeline restart` to be answered", || restart.try_wait().unwrap());
    assert!(!answered.success(), "the restart cannot have succeeded: {answered}");

    // Everything the service held is free again.
    std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("port {addr} still taken: {e}"));
    let lock = options.dir().join("state").join(".lifeline.lock");
    assert!(!lock.exists() || !flock_says_locked(&lock), "the state-dir lock is still held");
    assert!(!options.dir().join("control").exists(), "the control socket file is left behind");

    // And the same service starts again under a new supervisor.
    install_the_real_binary(&exe);
    let (mut again, stdout, stderr) = supervise(&options, &exe);
    guard.0.push(again.id());
    let line = stdout.wait("https-server: pid=");
    let pid: u32 = field(&line, "pid").parse().unwrap();
    guard.0.push(pid);
    stderr.wait(&format!("service is ready pid={pid}"));
    kill(Pid::from_raw(again.id() as i32), Signal::SIGTERM).unwrap();
    let exit = wait_for("the second supervisor to exit", || again.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0), "{:#?}", stderr.all());
    assert!(is_dead(pid));
    guard.0.clear();
}
