//! `lifeline supervise --init` as PID 1 of a new PID namespace (`unshare --pid --fork
//! --mount-proc`), as a container's entrypoint: orphans and zombies reaped (also after
//! `setsid()`), nothing left running at the end, signals passed on, the service's exit status
//! passed through (128+N for a signal). Creating a PID namespace needs root: these tests are
//! `#[ignore = "needs root"]` and assert it.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use lifeline_tests::lines::Lines;
use lifeline_tests::systemd::is_root;
use lifeline_tests::{lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `unshare --pid --fork --mount-proc lifeline supervise [args] -- sh -c SCRIPT`.
fn as_pid1(args: &[&str], script: &str, dir: &Path) -> Child {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(lifeline_bin())
        .arg("supervise")
        .args(args)
        .args(["--", "sh", "-c", script])
        .env("DIR", dir)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unshare")
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    wait_for("the namespace's init to exit", || child.try_wait().unwrap())
}

use lifeline_tests::proc::children;

/// `pid` and everything below it, as the host sees them.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut at = 0;
    while at < all.len() {
        all.extend(children(all[at]));
        at += 1;
    }
    all
}

fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The supervisor: unshare's only child, PID 1 inside.
fn init_of(unshare: &Child) -> u32 {
    wait_for("unshare's child", || children(unshare.id()).first().copied())
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log")).unwrap_or_default()
}

#[test]
#[ignore = "needs root: a new PID namespace (unshare --pid)"]
fn exit_codes_pass_through_as_from_tini_also_when_pid_1_is_detected() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    let dir = tempfile::tempdir().unwrap();
    for (args, script, code) in [
        (&["--init"][..], "exit 7", 7),
        (&["--init"][..], "kill -KILL $$", 128 + 9),
        (&["--init"][..], "kill -TERM $$", 128 + 15),
        (&[][..], "exit 3", 3), // PID 1 without --init: init mode all the same
        (&["--init"][..], "exit 0", 0),
    ] {
        let mut init = as_pid1(args, script, dir.path());
        let status = wait_exit(&mut init);
        assert_eq!(status.code(), Some(code), "{args:?} {script:?}");
    }
}

#[test]
#[ignore = "needs root: a new PID namespace (unshare --pid)"]
fn signals_are_forwarded_and_sigterm_ends_with_the_services_status() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
        for sig in HUP USR1 USR2 WINCH INT; do trap "echo $sig >> $DIR/log" $sig; done
        trap 'echo TERM >> $DIR/log; exit 42' TERM
        echo ready >> $DIR/log
        while :; do sleep 1000 & wait $!; kill $! 2>/dev/null; done
    "#;
    let mut unshare = as_pid1(&["--init"], script, dir.path());
    let init = init_of(&unshare);
    wait_for("the service to start", || log(dir.path()).contains("ready").then_some(()));
    for (signal, name) in [
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
        (Signal::SIGWINCH, "WINCH"),
    ] {
        kill(Pid::from_raw(init as i32), signal).unwrap();
        wait_for(&format!("{name} to reach the service"), || log(dir.path()).contains(name).then_some(()));
    }
    kill(Pid::from_raw(init as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut unshare);
    assert!(log(dir.path()).contains("TERM"), "{}", log(dir.path()));
    assert_eq!(status.code(), Some(42), "the service's status passes through");

    // SIGINT is passed on as SIGINT (not turned into the stop signal): a shell that traps it and
    // goes on is then stopped... by nothing else; so this service exits on it.
    let script = r"
        trap 'echo INT >> $DIR/log2; exit 130' INT
        echo ready >> $DIR/log2
        while :; do sleep 1000 & wait $!; kill $! 2>/dev/null; done
    ";
    let mut unshare = as_pid1(&["--init"], script, dir.path());
    let init = init_of(&unshare);
    let log2 = || std::fs::read_to_string(dir.path().join("log2")).unwrap_or_default();
    wait_for("the service to start", || log2().contains("ready").then_some(()));
    kill(Pid::from_raw(init as i32), Signal::SIGINT).unwrap();
    assert_eq!(wait_exit(&mut unshare).code(), Some(130));
    assert!(log2().contains("INT"));
}

#[test]
#[ignore = "needs root: a new PID namespace (unshare --pid)"]
fn orphans_and_zombies_are_reaped_and_nothing_survives_the_service() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(&dir.path().join("go"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // An orphan in a session of its own (it stops cleanly on SIGTERM and says so), a zombie left
    // under a process that never waits, orphans that exit at once (zombies re-parented to PID 1),
    // then the service waits for the test and exits 5.
    let script = r#"
        setsid sh -c 'trap "echo orphan-stopped >> $DIR/log; exit 0" TERM; while :; do sleep 1000 & wait $!; done' &
        sh -c 'true & exec sleep 1000' &
        for i in 1 2 3 4 5; do sh -c 'sleep 0 & exit 0'; setsid sh -c 'exit 0' & done
        echo started >> $DIR/log
        read go < $DIR/go
        exit 5
    "#;
    let mut unshare = as_pid1(&["--init", "--grace", "10s"], script, dir.path());
    let stderr = Lines::new(unshare.stderr.take().unwrap());
    let init = init_of(&unshare);
    wait_for("the service to start", || log(dir.path()).contains("started").then_some(()));
    // Every orphan that exited is reaped: no zombie child of PID 1 stays.
    wait_for("no zombie left under PID 1", || {
        children(init).into_iter().all(|c| state(c) != Some('Z')).then_some(())
    });
    let everything = tree(init);
    assert!(everything.len() >= 5, "the service, its orphan, the sleeper and its zombie: {everything:?}");
    std::fs::write(dir.path().join("go"), "go\n").unwrap();
    let status = wait_exit(&mut unshare);
    assert_eq!(status.code(), Some(5), "stderr: {:?}", stderr.all());
    // lifeline stopped the orphan itself (SIGTERM, which it answered): it was not left to the
    // kernel's SIGKILL when the namespace ended.
    assert!(log(dir.path()).contains("orphan-stopped"), "{}", log(dir.path()));
    for pid in everything {
        assert!(state(pid).is_none(), "pid {pid} survived: {:?}", state(pid));
    }
}
