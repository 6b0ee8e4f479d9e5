//! keepalive following handovers as a child subreaper (this whole test process becomes one):
//! five `MAINPID=` handovers in a row with the successor in the old process group or in its own,
//! no restart, the pid file following each new pid, and a stop that ends the current process with
//! a *known* exit status (the successor became our child when its parent exited). Also: orphans
//! re-parented to us are reaped.

mod keepalive_common;

use std::path::Path;
use std::time::Duration;

use keepalive::{Backoff, Command, Config, EventKind, ExitStatus, Notify, Signal, StopOutcome, Supervisor};
use keepalive_common::{is_gone, next, read_pids, started_pid, until, wait_gone};
use lifeline_tests::wait_for;

const HANDOVER: &str = env!("CARGO_BIN_EXE_keepalive-handover");
const CRASH_LOOPER: &str = env!("CARGO_BIN_EXE_keepalive-crash-looper");

fn subreaper_config(pid_file: &Path) -> Config {
    Config {
        notify: Notify::PrivateDir,
        pid_file: Some(pid_file.to_path_buf()),
        subreaper: true,
        ..Config::default()
    }
}

fn log_has(log: &Path, generation: u32, pid: u32) {
    wait_for(&format!("generation {generation} (pid {pid}) to start"), || {
        std::fs::read_to_string(log).ok().filter(|t| t.contains(&format!("gen={generation} pid={pid} ")))
    });
}

async fn five_handovers(own_group: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let pid_file = dir.path().join("svc.pid");
    let mut args = vec!["--log".to_owned(), log.display().to_string()];
    if own_group {
        args.push("--own-group".to_owned());
    }
    let supervised = Supervisor::new(Command::new(HANDOVER).args(args))
        .config(subreaper_config(&pid_file))
        .spawn()
        .expect("spawn");
    let mut events = supervised.events();
    let first = started_pid(&next(&mut events).await.kind).expect("Started");
    let mut pid = first;
    for generation in 0..5 {
        log_has(&log, generation, pid);
        supervised.signal(Signal::USR2).await.expect("ask for a handover");
        let seen = until(&mut events, |k| matches!(k, EventKind::MainPidChanged { .. })).await;
        assert!(
            seen.iter().all(|e| !matches!(e.kind, EventKind::Exited { .. } | EventKind::Started { .. })),
            "{seen:?}"
        );
        let Some(EventKind::MainPidChanged { old, new }) = seen.last().map(|e| e.kind.clone()) else {
            unreachable!()
        };
        assert_eq!(old, pid);
        assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file"), format!("{new}\n"));
        assert_eq!(supervised.pid(), Some(new));
        wait_gone(old);
        pid = new;
    }
    log_has(&log, 5, pid);
    let text = std::fs::read_to_string(&log).expect("log");
    let pgids: Vec<&str> = text.lines().filter_map(|l| l.split("pgid=").nth(1)).collect();
    if own_group {
        assert!(text.lines().skip(1).all(|l| !l.ends_with(&format!("pgid={first}"))), "{text}");
    } else {
        assert!(pgids.iter().all(|g| *g == first.to_string()), "all in the first group: {text}");
    }
    let status = supervised.status();
    assert_eq!((status.starts, status.main_pid_changes), (1, 5), "no restart was counted");

    match supervised.stop().await.expect("stop") {
        StopOutcome::Exited { pid: p, status, .. } => {
            assert_eq!(p, pid);
            // As subreaper we inherited the successor when its parent exited: its status is known.
            assert_eq!(status, ExitStatus::Code(0));
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    assert!(is_gone(pid), "stopping the supervisor stops the current main process");
    assert!(!pid_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_handovers_with_the_successor_in_the_old_process_group() {
    five_handovers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_handovers_with_the_successor_in_its_own_process_group() {
    five_handovers(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_reparented_to_the_subreaper_are_reaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orphan_file = dir.path().join("orphan");
    let command = Command::new(CRASH_LOOPER).args([
        "--starts",
        &dir.path().join("starts").display().to_string(),
        "--orphan-on",
        "0",
        "--orphan",
        &orphan_file.display().to_string(),
        "--plan",
        "0,60000",
    ]);
    let config = Config { subreaper: true, ..Config::default() };
    let supervised = Supervisor::new(command)
        .config(config)
        .policy(Backoff::scaled(Duration::from_millis(10)))
        .spawn()
        .expect("spawn");
    let mut events = supervised.events();
    until(&mut events, |k| matches!(k, EventKind::Started { attempt: 2, .. })).await;
    let orphan = read_pids(&orphan_file)[0];
    // Killed with the leftovers of the crashed group, and reaped by us: no zombie remains.
    assert!(!Path::new(&format!("/proc/{orphan}")).exists(), "pid {orphan} is still a zombie or running");
    supervised.stop().await.expect("stop");
}
