//! keepalive following handovers as a child subreaper (this whole test process becomes one):
//! five `MAINPID=` handovers in a row with the successor in the old process group or in its own,
//! no restart, the pid file following each new pid, and a stop that ends the current process with
//! a *known* exit status (the successor became our child when its parent exited). A stop while a
//! handover is in flight stops the successor that is not ready yet, too. Also: orphans
//! re-parented to us are reaped.

mod keepalive_common;

use std::path::Path;
use std::time::Duration;

use keepalive::{
    Backoff, Command, Config, EventKind, ExitStatus, NotifyConfig, Signal, StopOutcome, Supervisor,
};
use keepalive_common::{Held, is_gone, next, read_pids, started_pid, until, wait_gone};
use lifeline_tests::proc::session_members;
use lifeline_tests::wait_for;

const HANDOVER: &str = env!("CARGO_BIN_EXE_keepalive-handover");
const CRASH_LOOPER: &str = env!("CARGO_BIN_EXE_keepalive-crash-looper");
const NOTIFY: &str = env!("CARGO_BIN_EXE_keepalive-notify");

fn subreaper_config(pid_file: &Path) -> Config {
    Config::default().notify(NotifyConfig::new()).pid_file(pid_file.to_path_buf()).subreaper(true)
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
    let config = Config::default().subreaper(true);
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

/// The pid of generation `generation` in the handover fixture's log, once it has started.
fn generation_pid(log: &Path, generation: u32) -> u32 {
    wait_for(&format!("generation {generation} to start"), || {
        let text = std::fs::read_to_string(log).ok()?;
        let line = text.lines().find(|l| l.starts_with(&format!("gen={generation} ")))?;
        line.split(' ').find_map(|w| w.strip_prefix("pid="))?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_handover_stops_the_successor_that_is_not_ready_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let pid_file = dir.path().join("svc.pid");
    // The successor starts in a process group of its own (as handover's does) and never says it
    // is ready; its parent exits on SIGTERM without waiting for it.
    let command = Command::new(HANDOVER).args([
        "--log",
        &log.display().to_string(),
        "--own-group",
        "--successor-never-ready",
    ]);
    let supervised = Supervisor::new(command).config(subreaper_config(&pid_file)).spawn().expect("spawn");
    let mut events = supervised.events();
    let main = started_pid(&next(&mut events).await.kind).expect("Started");
    log_has(&log, 0, main);
    let main = Held::new(main);
    supervised.signal(Signal::USR2).await.expect("ask for a handover");
    let successor = Held::new(generation_pid(&log, 1));
    // Provably running and not ready: it has started, and supervision has not moved to it.
    assert!(!successor.has_exited());
    assert_eq!(supervised.pid(), Some(main.pid), "the successor never said it was ready");

    let outcome = supervised.stop().await.expect("stop");
    assert!(matches!(outcome, StopOutcome::Exited { pid, .. } if pid == main.pid), "{outcome:?}");
    assert!(main.has_exited(), "the main process survived the stop");
    assert!(successor.has_exited(), "the successor {} survived the stop: orphaned", successor.pid);
    assert_eq!(session_members(main.pid), Vec::<u32>::new(), "processes of the service's session are left");
    assert!(!pid_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mainpid_naming_an_unrelated_child_of_this_process_is_ignored() {
    // This process is a subreaper; its own child in a session of its own is not the service's,
    // although its parent is the supervisor's process. Following it would let the service make
    // the supervisor signal (watchdog, stop) a process it has nothing to do with.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stranger =
        std::process::Command::new("setsid").args(["sleep", "600"]).spawn().expect("spawn setsid sleep");
    let stranger_pid = stranger.id();
    wait_for("the stranger to be in a session of its own", || {
        let stat = std::fs::read_to_string(format!("/proc/{stranger_pid}/stat")).ok()?;
        let session: u32 = stat.rsplit_once(") ")?.1.split_whitespace().nth(3)?.parse().ok()?;
        (session == stranger_pid).then_some(())
    });
    let command = Command::new(NOTIFY).args([
        "--mainpid",
        &stranger_pid.to_string(),
        "--done",
        &dir.path().join("done").display().to_string(),
    ]);
    let config = Config::default().notify(NotifyConfig::new()).subreaper(true);
    let supervised = Supervisor::new(command).config(config).spawn().expect("spawn");
    let main = supervised.pid().expect("pid");
    let mut events = supervised.events();
    // Either the stray was followed (the bug) or the service's own next message arrives.
    let seen =
        until(&mut events, |k| matches!(k, EventKind::Status { .. } | EventKind::MainPidChanged { .. }))
            .await;
    assert!(!seen.iter().any(|e| matches!(e.kind, EventKind::MainPidChanged { .. })), "{seen:?}");
    assert_eq!(supervised.pid(), Some(main));
    supervised.stop().await.expect("stop");
    assert!(stranger.try_wait().expect("try_wait").is_none(), "the stranger was signalled");
    stranger.kill().expect("kill");
    stranger.wait().expect("reap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_of_this_process_that_is_not_the_services_is_never_reaped() {
    // Without Config::dedicated the supervisor shares its process with a library user's own
    // children: it reaps only what it can attribute to the service, never their statuses.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut unrelated = std::process::Command::new("sh").args(["-c", "exit 7"]).spawn().expect("spawn sh");
    let held = Held::new(unrelated.id());
    let command = Command::new(CRASH_LOOPER).args([
        "--starts",
        &dir.path().join("starts").display().to_string(),
        "--plan",
        "0,60000",
    ]);
    let supervised = Supervisor::new(command)
        .config(Config::default().subreaper(true))
        .policy(Backoff::scaled(Duration::from_millis(10)))
        .spawn()
        .expect("spawn");
    wait_for("the unrelated child to exit", || held.has_exited().then_some(()));
    // The first run crashes: the supervisor reaps after that exit, after the child's.
    let mut events = supervised.events();
    until(&mut events, |k| matches!(k, EventKind::Started { attempt: 2, .. })).await;
    let status = unrelated.wait().expect("its status is still ours to collect");
    assert_eq!(status.code(), Some(7));
    supervised.stop().await.expect("stop");
}
