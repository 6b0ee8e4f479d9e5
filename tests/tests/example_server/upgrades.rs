//! Failed upgrades: the server runs from a copy of its binary, and what is installed at that path
//! before `lifeline restart` exits, crashes, hangs or cannot be executed. Each time the restart
//! fails with the reason, the old process serves on without a failed request, and the real
//! binary put back takes over. Also: concurrent restarts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeline_tests::{https_server_bin, lifeline_bin, wait_for};
use nix::sys::stat::Mode;

use crate::support::{
    Options, Server, copy_of_the_binary, install, install_the_real_binary, is_dead, read_pid,
};

/// Starts the server from a copy of its binary (with `args`), installs `bad` at that path
/// (`mode`), and checks that `lifeline restart` fails with `reason` while the old process serves
/// on; then puts the real binary back and checks that a restart succeeds. Returns the server and
/// how long the failed restart took.
async fn failed_upgrade(
    args: &[&str],
    bad: impl FnOnce(&Path) -> Vec<u8>,
    mode: u32,
    reason: &str,
) -> Server {
    let options = Options::new();
    let exe = copy_of_the_binary(options.dir());
    let mut options = options.exe(exe.clone());
    for arg in args {
        options = options.arg(*arg);
    }
    let mut server = options.start();
    let old_pid = server.pid;
    let keep_alive = server.load(1, true);
    let new_connections = server.load(1, false);
    keep_alive.wait_for_more(10).await;
    new_connections.wait_for_more(10).await;

    install(&exe, &bad(server.options.dir()), mode);
    let err = server.restart().expect_err("the broken binary must not take over");
    let reason = reason.replace("{exe}", &exe.display().to_string());
    assert_eq!(err, format!("lifeline: restart failed: {reason}"));

    // The old process serves on as if nothing had happened.
    keep_alive.wait_for_more(10).await;
    new_connections.wait_for_more(10).await;
    assert_eq!(server.answer().await.0, old_pid);
    let status = server.status();
    assert_eq!((status["pid"].as_u64(), status["generation"].as_u64()), (Some(old_pid.into()), Some(1)));
    assert!(crate::support::flock_says_locked(&server.lock_path()));

    // The real binary back at the path: the restart works.
    install_the_real_binary(&exe);
    let new_pid = server.restart().expect("the real binary takes over");
    assert_eq!(std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap(), exe);
    let (pid, generation, _) = server.answer().await;
    assert_eq!((pid, generation), (new_pid, 2));
    keep_alive.wait_for_more(10).await;
    new_connections.wait_for_more(10).await;

    let samples: Vec<_> = keep_alive.stop().await.into_iter().chain(new_connections.stop().await).collect();
    let failed: Vec<_> = samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} failed requests of {}: {failed:#?}", failed.len(), samples.len());
    server
}

fn script(body: &str) -> Vec<u8> {
    format!("#!/bin/sh\n{body}\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_exits_1_fails_the_restart_with_its_status() {
    failed_upgrade(
        &[],
        |_| script("exit 1"),
        0o755,
        "new process exited with status 1 before becoming ready",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_crashes_fails_the_restart_with_its_signal() {
    failed_upgrade(
        &[],
        |_| script("kill -SEGV $$"),
        0o755,
        "new process was killed by signal SIGSEGV before becoming ready",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_hangs_is_killed_with_its_children_after_the_ready_timeout() {
    let began = Instant::now();
    let server = failed_upgrade(
        &["--ready-timeout", "2s"],
        |dir| {
            let dir = dir.display();
            script(&format!(
                "sleep 1000 >/dev/null 2>&1 &\necho $! > '{dir}/grandchild.pid'\necho $$ > '{dir}/child.pid'\nexec sleep 1000"
            ))
        },
        0o755,
        "not ready after 2 s",
    )
    .await;
    assert!(began.elapsed() >= Duration::from_secs(2));
    let child = read_pid(&server.path("child.pid"));
    let grandchild = read_pid(&server.path("grandchild.pid"));
    wait_for("the hung process to be gone", || is_dead(child).then_some(()));
    wait_for("the hung process's child to be gone", || is_dead(grandchild).then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_cannot_be_executed_fails_the_restart_with_the_exec_error() {
    failed_upgrade(
        &[],
        |_| b"\x7fELF? no: \x00\x01\x02 garbage\n".to_vec(),
        0o644,
        "cannot start {exe}: Permission denied (os error 13)",
    )
    .await;
}

fn spawn_restart(server: &Server) -> Child {
    Command::new(lifeline_bin())
        .arg("restart")
        .arg("--socket")
        .arg(server.control_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_restarts_exactly_one_succeeds() {
    // The binary at the path waits at a gate (a FIFO) before it becomes the real server, so the
    // first restart stays in progress until the test opens the gate.
    let options = Options::new();
    let exe = copy_of_the_binary(options.dir());
    let mut server = options.exe(exe.clone()).start();
    let old_pid = server.pid;
    let gate = server.path("gate");
    nix::unistd::mkfifo(&gate, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let gate_pid = server.path("gate.pid");
    let wrapper = format!(
        "echo $$ > '{}'\nread go < '{}'\nexec '{}' \"$@\"",
        gate_pid.display(),
        gate.display(),
        https_server_bin().display()
    );
    install(&exe, &script(&wrapper), 0o755);

    let mut restarts: Vec<Child> = (0..4).map(|_| spawn_restart(&server)).collect();
    // All but one are refused at once, while the one in progress waits at the gate.
    let mut refused = Vec::new();
    wait_for("three restarts to be refused", || {
        for i in (0..restarts.len()).rev() {
            if restarts[i].try_wait().unwrap().is_some() {
                refused.push(restarts.remove(i).wait_with_output().unwrap());
            }
        }
        (refused.len() >= 3).then_some(())
    });
    assert_eq!(refused.len(), 3, "more than three restarts ended before the gate opened");
    for out in &refused {
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "lifeline: restart failed: restart already in progress\n"
        );
    }
    assert_eq!(server.answer().await.0, old_pid);

    // Open the gate: the one in progress completes.
    wait_for("the new process to reach the gate", || gate_pid.exists().then_some(()));
    std::fs::write(&gate, "go\n").unwrap();
    let winner = restarts.pop().unwrap().wait_with_output().unwrap();
    assert!(winner.status.success(), "{}", String::from_utf8_lossy(&winner.stderr));
    let new_pid: u32 = String::from_utf8(winner.stdout).unwrap().trim().parse().unwrap();
    assert_eq!(new_pid, read_pid(&gate_pid), "the new process is the one that waited at the gate");
    server.started(new_pid);
    let (pid, generation, _) = server.answer().await;
    assert_eq!((pid, generation), (new_pid, 2));
    assert_eq!(server.status()["generation"], 2, "more than one handover happened");
}
