//! keepalive's `Supervisor` with real processes and signals: restart timing, graceful and forced
//! stops, detach and adoption, the pid file and state file (and retrying them after a failed
//! write), leftovers of a crashed group, the watchdog, readiness notification from real clients,
//! and following `MAINPID=` without a subreaper.
//!
//! Nothing here makes this test process a child subreaper (see `keepalive_handover.rs` for that):
//! the adoption tests rely on an orphan *not* becoming our child.

mod keepalive_common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keepalive::{
    Backoff, Command, Config, Decision, Error, EventKind, ExitStatus, Finished, Lifetime, NotifyAddress,
    NotifyConfig, Readiness, Signal, Snapshot, StopOutcome, Supervisor,
};
use keepalive_common::{Held, is_gone, kill, next, read_pids, started_pid, until, wait_gone};
use lifeline_tests::wait_for;

const CRASH_LOOPER: &str = env!("CARGO_BIN_EXE_keepalive-crash-looper");
const STUBBORN: &str = env!("CARGO_BIN_EXE_keepalive-stubborn");
const SIGNALS: &str = env!("CARGO_BIN_EXE_keepalive-signals");
const NOTIFY: &str = env!("CARGO_BIN_EXE_keepalive-notify");
const WATCHDOG: &str = env!("CARGO_BIN_EXE_keepalive-watchdog");
const HANDOVER: &str = env!("CARGO_BIN_EXE_keepalive-handover");
const DETACHER: &str = env!("CARGO_BIN_EXE_keepalive-detacher");
const STRAY: &str = env!("CARGO_BIN_EXE_keepalive-stray");

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read a line");
    line
}

fn crash_looper(starts: &Path, extra: &[&str]) -> Command {
    Command::new(CRASH_LOOPER).args(["--starts", &path(starts)]).args(extra.iter().copied())
}

/// Generous slack for "it should not take much longer than the delay" on a loaded CI machine.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_restart_timing_follows_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = Duration::from_millis(25);
    let supervised = Supervisor::new(crash_looper(&dir.path().join("starts"), &["--exit", "3"]))
        .policy(Backoff::scaled(unit))
        .spawn()
        .expect("spawn");
    let mut events = supervised.events();
    let seen = until(&mut events, |k| matches!(k, EventKind::Started { attempt: 7, .. })).await;
    supervised.stop().await.expect("stop");

    for attempt in 2..=7u32 {
        let start = seen
            .iter()
            .position(|e| matches!(e.kind, EventKind::Started { attempt: a, .. } if a == attempt))
            .expect("start recorded");
        let exit = seen[..start]
            .iter()
            .rposition(|e| matches!(e.kind, EventKind::Exited { .. }))
            .expect("exit before start");
        assert!(
            matches!(seen[exit].kind, EventKind::Exited { status: ExitStatus::Code(3), .. }),
            "{:?}",
            seen[exit].kind
        );
        let expected = if attempt <= 3 { Duration::ZERO } else { unit * (1 << (attempt - 3)) };
        let gap = seen[start].at - seen[exit].at;
        assert!(gap >= expected, "start {attempt}: waited {gap:?}, policy says {expected:?}");
        assert!(gap < expected + SLACK, "start {attempt}: waited {gap:?}, far beyond {expected:?}");
        let backoff = seen[exit..start].iter().find_map(|e| match e.kind {
            EventKind::Backoff { delay, attempt: a } => Some((delay, a)),
            _ => None,
        });
        if expected.is_zero() {
            assert_eq!(backoff, None, "start {attempt} is one of the three free starts");
        } else {
            assert_eq!(backoff, Some((expected, attempt)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_run_resets_the_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = Duration::from_millis(25); // healthy after 10 units = 250 ms
    // Starts 1-5 crash at once, start 6 runs 400 ms (healthy), then crashes at once again.
    let command = crash_looper(&dir.path().join("starts"), &["--plan", "0,0,0,0,0,400,0"]);
    let supervised = Supervisor::new(command).policy(Backoff::scaled(unit)).spawn().expect("spawn");
    let mut events = supervised.events();
    let seen = until(&mut events, |k| matches!(k, EventKind::Started { attempt: 10, .. })).await;
    supervised.stop().await.expect("stop");

    let backoffs: Vec<(u32, Duration)> = seen
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Backoff { delay, attempt } => Some((attempt, delay)),
            _ => None,
        })
        .collect();
    // Before the healthy run: starts 4, 5, 6 wait 2, 4, 8 units. After it the count starts over:
    // starts 7, 8, 9 are free again and start 10 waits 2 units.
    assert_eq!(backoffs, [(4, unit * 2), (5, unit * 4), (6, unit * 8), (10, unit * 2)]);
    let healthy_exit = seen
        .iter()
        .find_map(|e| match e.kind {
            EventKind::Exited { runtime, .. } if runtime >= unit * 10 => Some(runtime),
            _ => None,
        })
        .expect("the healthy run's exit");
    assert!(healthy_exit >= Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_ignoring_sigterm_is_killed_after_the_grace_period_with_its_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pids_file = dir.path().join("pids");
    let grace = Duration::from_millis(300);
    let supervised =
        Supervisor::new(Command::new(STUBBORN).args(["--pids", &path(&pids_file), "--children", "2"]))
            .config(Config::default().grace(grace))
            .spawn()
            .expect("spawn");
    let pids = read_pids(&pids_file);
    assert_eq!(pids.len(), 3);
    assert_eq!(Some(pids[0]), supervised.pid());

    let began = Instant::now();
    let outcome = supervised.stop().await.expect("stop");
    let took = began.elapsed();
    match outcome {
        StopOutcome::Killed { pid, status, after } => {
            assert_eq!(pid, pids[0]);
            assert_eq!(status, ExitStatus::Signaled { signal: Signal::KILL, core_dumped: false });
            assert!(after >= grace, "SIGKILL came after {after:?}, before the grace period");
        }
        other => panic!("expected Killed, got {other:?}"),
    }
    assert!(took >= grace);
    for pid in pids {
        assert!(is_gone(pid), "pid {pid} survived the stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooperative_service_stops_within_the_grace_period_and_the_pid_file_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("svc.pid");
    let config = Config::default().pid_file(pid_file.clone()).stop_signal(Signal::INT);
    let supervised = Supervisor::new(Command::new("sleep").arg("600")).config(config).spawn().expect("spawn");
    let pid = supervised.pid().expect("pid");
    assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file"), format!("{pid}\n"));
    match supervised.stop().await.expect("stop") {
        StopOutcome::Exited { pid: p, status, .. } => {
            assert_eq!(p, pid);
            assert_eq!(status, ExitStatus::Signaled { signal: Signal::INT, core_dumped: false });
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    assert!(!pid_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_signal_arrives_exactly_once() {
    // Many servers read a second SIGTERM as "stop now"; the group and the pidfd must not both get it.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let config = Config::default().stop_signal(Signal::USR1).grace(Duration::from_millis(300));
    let supervised = Supervisor::new(Command::new(SIGNALS).args(["--log", &path(&log)]))
        .config(config)
        .spawn()
        .expect("spawn");
    wait_for("the fixture's handlers", || {
        std::fs::read_to_string(&log).ok().filter(|t| t.starts_with("ready"))
    });
    // The fixture only records SIGUSR1, so the stop ends with SIGKILL after the grace period.
    assert!(matches!(supervised.stop().await.expect("stop"), StopOutcome::Killed { .. }));
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(text.lines().filter(|l| *l == "USR1").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_then_adopt_resumes_supervision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("svc.pid");
    let config = || Config::default().pid_file(pid_file.clone());
    let mut supervised =
        Supervisor::new(Command::new("sleep").arg("600")).config(config()).spawn().expect("spawn");
    let pid = supervised.pid().expect("pid");
    let snapshot = supervised.detach().await.expect("detach");
    assert!(matches!(supervised.wait().await, Finished::Detached(_)));
    assert!(matches!(supervised.detach().await, Err(Error::Finished)));
    assert_eq!(snapshot.pid, pid);
    assert_eq!(snapshot.pgid, pid, "the service leads its own process group");
    assert!(!is_gone(pid), "detach leaves it running");
    assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file stays"), format!("{pid}\n"));

    let snapshot = Snapshot::from_json(&snapshot.to_json()).expect("round trip");
    let never_restart = |_: &keepalive::Exit| Decision::GiveUp { reason: "test".into() };
    let mut adopted = Supervisor::new(snapshot.command.clone())
        .config(config())
        .policy(never_restart)
        .adopt(&snapshot)
        .expect("adopt");
    let mut events = adopted.events();
    assert_eq!(next(&mut events).await.kind, EventKind::Adopted { pid });
    kill(pid);
    match next(&mut events).await.kind {
        // Still our child (this process started it), so the status is known.
        EventKind::Exited { pid: p, status, .. } => {
            assert_eq!(p, pid);
            assert_eq!(status, ExitStatus::Signaled { signal: Signal::KILL, core_dumped: false });
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    assert!(matches!(adopted.wait().await, Finished::GaveUp { .. }));
    assert!(!pid_file.exists(), "giving up removes the pid file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopting_a_process_that_is_not_our_child_reports_an_unknown_exit_status() {
    let mut detacher = std::process::Command::new(DETACHER)
        .args(["--", "sleep", "600"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run detacher");
    // One line, not until EOF: the service inherited the pipe and keeps it open.
    let line = first_line(&mut detacher);
    assert!(detacher.wait().expect("wait detacher").success());
    let snapshot = Snapshot::from_json(line.trim()).expect("snapshot");
    assert!(!is_gone(snapshot.pid), "the service outlived its first supervisor");

    let give_up = |_: &keepalive::Exit| Decision::GiveUp { reason: "test".into() };
    let mut adopted =
        Supervisor::new(snapshot.command.clone()).policy(give_up).adopt(&snapshot).expect("adopt");
    let mut events = adopted.events();
    assert_eq!(next(&mut events).await.kind, EventKind::Adopted { pid: snapshot.pid });
    kill(snapshot.pid);
    match next(&mut events).await.kind {
        EventKind::Exited { pid, status, .. } => {
            assert_eq!(pid, snapshot.pid);
            assert_eq!(status, ExitStatus::Unknown, "a non-child's status is unknowable, never invented");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    match adopted.wait().await {
        Finished::GaveUp { last, .. } => assert_eq!(last, ExitStatus::Unknown),
        other => panic!("expected GaveUp, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_pid_now_belongs_to_another_process_is_refused() {
    let mut stranger = std::process::Command::new("sleep").arg("600").spawn().expect("spawn sleep");
    let mut snapshot = Snapshot::of_process(stranger.id(), Command::new("sleep")).expect("snapshot");
    // The same pid with another start time is exactly what a reused pid looks like.
    snapshot.start_time += 1;
    match Supervisor::new(Command::new("sleep")).adopt(&snapshot) {
        Err(Error::PidReused { pid, expected, found }) => {
            assert_eq!(pid, stranger.id());
            assert_eq!(expected, found + 1);
        }
        other => panic!("expected PidReused, got {other:?}"),
    }
    assert!(stranger.try_wait().expect("try_wait").is_none(), "the stranger was not signalled");
    stranger.kill().expect("kill");
    stranger.wait().expect("reap");
    // And once the process is gone entirely:
    match Supervisor::new(Command::new("sleep")).adopt(&snapshot) {
        Err(Error::NotRunning { pid }) => assert_eq!(pid, stranger.id()),
        other => panic!("expected NotRunning, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_under_rapid_restarts_is_never_seen_empty_or_partial() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("svc.pid");
    let immediately = |_: &keepalive::Exit| Decision::Restart { after: Duration::ZERO };
    let supervised = Supervisor::new(crash_looper(&dir.path().join("starts"), &[]))
        .config(Config::default().pid_file(pid_file.clone()))
        .policy(immediately)
        .spawn()
        .expect("spawn");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (stop, pid_file) = (stop.clone(), pid_file.clone());
        move || {
            let (mut reads, mut bad, mut distinct) = (0u64, Vec::new(), std::collections::BTreeSet::new());
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read_to_string(&pid_file) {
                    Ok(text) => {
                        reads += 1;
                        match text.strip_suffix('\n').and_then(|t| t.parse::<u32>().ok()) {
                            Some(pid) => {
                                distinct.insert(pid);
                            }
                            None => bad.push(text),
                        }
                    }
                    Err(e) => bad.push(format!("error: {e}")),
                }
            }
            (reads, bad, distinct.len())
        }
    });
    let mut events = supervised.events();
    until(&mut events, |k| matches!(k, EventKind::Started { attempt: 150, .. })).await;
    stop.store(true, Ordering::Relaxed);
    let (reads, bad, distinct) = reader.join().expect("reader");
    supervised.stop().await.expect("stop");
    assert!(bad.is_empty(), "the reader saw {} bad reads, e.g. {:?}", bad.len(), bad.first());
    assert!(reads > 100, "only {reads} reads");
    assert!(distinct > 1, "the reader saw only {distinct} pid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_follows_the_main_process_and_readiness_and_a_stop_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, go) = (dir.path().join("svc.state"), dir.path().join("go"));
    let config = Config::default().notify(NotifyConfig::new()).state_file(state.clone());
    // READY=1 only once `go` exists (exec: the same process, still the main pid, sends it).
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exec {NOTIFY} --via sd-notify --done {}",
        path(&go),
        path(&dir.path().join("done"))
    );
    let command = Command::new("sh").args(["-c", &script]);
    let supervised = Supervisor::new(command.clone()).config(config).spawn().expect("spawn");
    let pid = supervised.pid().expect("pid");
    let snapshot = Snapshot::read(&state).expect("the state file is written at the start");
    assert_eq!((snapshot.pid, snapshot.ready, &snapshot.command), (pid, false, &command));
    let address = snapshot.notify_socket.clone().expect("the notify socket, for an adopter");
    assert!(std::path::Path::new(&address).exists(), "{address}");
    std::fs::write(&go, "").expect("go");
    let mut events = supervised.events();
    until(&mut events, |k| *k == EventKind::Ready { pid }).await;
    let snapshot = Snapshot::read(&state).expect("state");
    assert!(snapshot.ready, "READY=1 is recorded: an adopter must not wait for it again");
    assert_eq!(snapshot.pid, pid);
    supervised.stop().await.expect("stop");
    assert!(!state.exists(), "a clean stop removes the state file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pid_file_write_keeps_supervising_and_is_retried_until_it_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    let (pid_file, state) = (run.join("svc.pid"), run.join("svc.state"));
    let config = Config::default().pid_file(pid_file.clone()).state_file(state.clone());
    let supervised = Supervisor::new(Command::new("sleep").arg("600")).config(config).spawn().expect("spawn");
    let first = supervised.pid().expect("pid");
    let mut events = supervised.events();
    // The directory disappears: the restart cannot write either file.
    std::fs::remove_dir_all(&run).expect("rm -r");
    kill(first);
    let seen = until(&mut events, |k| matches!(k, EventKind::Started { attempt: 2, .. })).await;
    let second = started_pid(&seen.last().expect("event").kind).expect("pid");
    assert_eq!(supervised.pid(), Some(second), "supervising the restarted process all the same");
    assert!(!run.exists());
    // Once the directory is back, the next retry (1 s after the failure) writes both.
    std::fs::create_dir(&run).expect("mkdir");
    wait_for("the pid file to be rewritten", || {
        (std::fs::read_to_string(&pid_file).ok()? == format!("{second}\n")).then_some(())
    });
    assert_eq!(wait_for("the state file", || Snapshot::read(&state).ok()).pid, second);
    supervised.stop().await.expect("stop");
    assert!(!pid_file.exists() && !state.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_started_counts_a_service_with_a_notify_socket_ready_at_once() {
    let notified = Config::default().notify(NotifyConfig::new());
    let started = Config::default().notify(NotifyConfig::new().readiness(Readiness::Started));
    let sleeper = || Supervisor::new(Command::new("sleep").arg("600"));
    let waiting = sleeper().config(notified).spawn().expect("spawn");
    assert!(!waiting.status().ready, "by default READY=1 is awaited when notify is on");
    waiting.stop().await.expect("stop");
    let ready = sleeper().config(started).spawn().expect("spawn");
    assert!(ready.status().ready, "Readiness::Started: ready as soon as it started");
    ready.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_crashed_process_group_are_stopped_before_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orphan_file = dir.path().join("orphan");
    let command = crash_looper(
        &dir.path().join("starts"),
        &["--orphan-on", "0", "--orphan", &path(&orphan_file), "--plan", "0,60000"],
    );
    let supervised =
        Supervisor::new(command).policy(Backoff::scaled(Duration::from_millis(10))).spawn().expect("spawn");
    let first = supervised.pid().expect("pid");
    let mut events = supervised.events();
    let seen = until(&mut events, |k| matches!(k, EventKind::Started { attempt: 2, .. })).await;
    let orphan = read_pids(&orphan_file)[0];
    assert!(is_gone(orphan), "the orphan was still running when the restart happened");
    assert!(
        seen.iter().any(|e| e.kind == EventKind::LeftoversStopped { pgid: first, killed: false }),
        "{seen:?}"
    );
    supervised.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_survive_when_group_cleanup_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orphan_file = dir.path().join("orphan");
    let command = crash_looper(
        &dir.path().join("starts"),
        &["--orphan-on", "0", "--orphan", &path(&orphan_file), "--plan", "0,60000"],
    );
    let supervised = Supervisor::new(command)
        .config(Config::default().stop_group_on_crash(false))
        .policy(Backoff::scaled(Duration::from_millis(10)))
        .spawn()
        .expect("spawn");
    let mut events = supervised.events();
    until(&mut events, |k| matches!(k, EventKind::Started { attempt: 2, .. })).await;
    let orphan = read_pids(&orphan_file)[0];
    assert!(!is_gone(orphan), "with cleanup off the orphan is left alone");
    kill(orphan);
    supervised.stop().await.expect("stop");
}

/// Supervises `command` (restarts 10 ms apart) until its second start, stops it, and returns the
/// events up to that start.
async fn events_until_the_second_start(command: Command, config: Config) -> Vec<keepalive::Event> {
    let supervised = Supervisor::new(command)
        .config(config)
        .policy(Backoff::scaled(Duration::from_millis(10)))
        .spawn()
        .expect("spawn");
    let mut events = supervised.events();
    let seen = until(&mut events, |k| matches!(k, EventKind::Started { attempt: 2, .. })).await;
    supervised.stop().await.expect("stop");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchdog_timeout_restarts_a_service_that_stops_pinging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let interval = Duration::from_millis(400);
    let config =
        Config::default().notify(NotifyConfig::new().watchdog(interval)).grace(Duration::from_secs(2));
    let seen = events_until_the_second_start(
        Command::new(WATCHDOG).args(["--log", &path(&log), "--pings", "3"]),
        config,
    )
    .await;

    let first = started_pid(&seen[0].kind).expect("first start");
    let at =
        |pred: &dyn Fn(&EventKind) -> bool| seen.iter().find(|e| pred(&e.kind)).map(|e| e.at).expect("event");
    let ready = at(&|k| *k == EventKind::Ready { pid: first });
    let timeout = at(&|k| *k == EventKind::WatchdogTimeout { pid: first });
    // Had the pings been ignored, the deadline set at the start would have passed less than one
    // interval after READY=1; three pings a quarter interval apart push it well beyond.
    assert!(timeout - ready > interval, "timed out {:?} after READY=1", timeout - ready);
    assert!(seen.iter().any(|e| matches!(
        e.kind,
        EventKind::Exited { pid, status: ExitStatus::Signaled { signal: Signal::ABRT, .. }, .. } if pid == first
    )));
    let line = std::fs::read_to_string(&log).expect("log").lines().next().expect("first line").to_owned();
    assert_eq!(line, format!("start pid={first} usec={} wdpid={first} enabled=true", interval.as_micros()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_sends_ready_is_stopped_and_restarted_after_the_start_timeout() {
    let timeout = Duration::from_millis(300);
    let config = Config::default().notify(NotifyConfig::new().start_timeout(timeout));
    // `sleep` never sends READY=1 and dies of the stop signal (SIGTERM).
    let seen = events_until_the_second_start(Command::new("sleep").arg("600"), config).await;

    let first = started_pid(&seen[0].kind).expect("first start");
    let at = |pred: &dyn Fn(&EventKind) -> bool| seen.iter().find(|e| pred(&e.kind)).map(|e| e.at);
    let timed_out =
        at(&|k| *k == EventKind::StartTimeout { pid: first, after: timeout }).expect("start timeout");
    // The timeout runs from just before the fork; the Started event is stamped a little later.
    assert!(timed_out - seen[0].at >= timeout / 2, "timed out after {:?}", timed_out - seen[0].at);
    assert!(
        seen.iter().any(|e| matches!(
            e.kind,
            EventKind::Exited { pid, status: ExitStatus::Signaled { signal: Signal::TERM, .. }, .. } if pid == first
        )),
        "stopped with the stop signal: {seen:?}"
    );
    assert!(!seen.iter().any(|e| matches!(e.kind, EventKind::Ready { .. })), "{seen:?}");
    wait_gone(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_sends_ready_in_time_is_not_timed_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout = Duration::from_millis(300);
    let config = Config::default().notify(NotifyConfig::new().start_timeout(timeout));
    let command =
        Command::new(NOTIFY).args(["--via", "sd-notify", "--done", &path(&dir.path().join("done"))]);
    let supervised = Supervisor::new(command).config(config).spawn().expect("spawn");
    let pid = supervised.pid().expect("pid");
    let mut events = supervised.events();
    until(&mut events, |k| *k == EventKind::Ready { pid }).await;
    // A negative check needs a window: three times the timeout after READY=1, nothing happened.
    tokio::time::sleep(timeout * 3).await;
    assert_eq!(supervised.pid(), Some(pid));
    while let Some(event) = events.try_next() {
        assert!(
            !matches!(event.kind, EventKind::StartTimeout { .. } | EventKind::Exited { .. }),
            "{event:?}"
        );
    }
    supervised.stop().await.expect("stop");
}

async fn ready_and_status_via(via: &str) {
    ready_and_status_over(via, NotifyAddress::PrivateDir).await;
}

async fn ready_and_status_over(via: &str, address: NotifyAddress) {
    let dir = tempfile::tempdir().expect("tempdir");
    let done = dir.path().join("done");
    let config = Config::default().notify(NotifyConfig::new().address(address));
    let command =
        Command::new(NOTIFY).args(["--via", via, "--status", "up and running", "--done", &path(&done)]);
    let supervised = Supervisor::new(command).config(config).spawn().expect("spawn");
    let pid = supervised.pid().expect("pid");
    let mut events = supervised.events();
    let seen = until(&mut events, |k| matches!(k, EventKind::Status { .. })).await;
    assert!(seen.iter().any(|e| e.kind == EventKind::Ready { pid }), "{seen:?}");
    assert_eq!(
        seen.last().map(|e| e.kind.clone()),
        Some(EventKind::Status { pid, text: "up and running".into() })
    );
    // The client's own verdict (for libsystemd: the BARRIER=1 handshake completed).
    let verdict = wait_for("the client's verdict", || std::fs::read_to_string(&done).ok());
    assert_eq!(verdict.trim(), "ok");
    let status = supervised.status();
    assert!(status.ready);
    assert_eq!(status.text.as_deref(), Some("up and running"));
    supervised.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_status_from_the_sd_notify_crate() {
    ready_and_status_via("sd-notify").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_and_barrier_from_libsystemd() {
    ready_and_status_via("libsystemd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_and_barrier_from_libsystemd_over_an_abstract_socket() {
    ready_and_status_over("libsystemd", NotifyAddress::Abstract).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn ready_status_and_barrier_from_systemd_notify() {
    // systemd-notify speaks for its parent (our main process) only with CAP_SYS_ADMIN; otherwise it
    // sends as itself and, like systemd with NotifyAccess=main, we must ignore it.
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: systemd-notify can only speak for its parent as root"
    );
    ready_and_status_via("systemd-notify").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_from_a_process_other_than_the_main_pid_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::default().notify(NotifyConfig::new());
    let command = Command::new(NOTIFY).args(["--from-child", "--done", &path(&dir.path().join("done"))]);
    let supervised = Supervisor::new(command).config(config).spawn().expect("spawn");
    let mut events = supervised.events();
    // The child's READY=1 was queued before the main process's STATUS= (it had exited by then).
    let seen = until(&mut events, |k| matches!(k, EventKind::Status { .. })).await;
    assert!(!seen.iter().any(|e| matches!(e.kind, EventKind::Ready { .. })), "{seen:?}");
    assert!(!supervised.status().ready);
    supervised.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mainpid_naming_a_process_outside_the_service_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Our child, but not the service's: following it would let the service make us kill it.
    let mut stranger = std::process::Command::new("sleep").arg("600").spawn().expect("spawn sleep");
    let config = Config::default().notify(NotifyConfig::new());
    let command = Command::new(NOTIFY).args([
        "--mainpid",
        &stranger.id().to_string(),
        "--done",
        &path(&dir.path().join("d")),
    ]);
    let supervised = Supervisor::new(command).config(config).spawn().expect("spawn");
    let main = supervised.pid().expect("pid");
    let mut events = supervised.events();
    let seen = until(&mut events, |k| matches!(k, EventKind::Status { .. })).await;
    assert!(!seen.iter().any(|e| matches!(e.kind, EventKind::MainPidChanged { .. })), "{seen:?}");
    assert_eq!(supervised.pid(), Some(main));
    supervised.stop().await.expect("stop");
    assert!(stranger.try_wait().expect("try_wait").is_none(), "the stranger was not signalled");
    stranger.kill().expect("kill");
    stranger.wait().expect("reap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mainpid_naming_a_process_of_an_earlier_session_of_the_service_is_ignored() {
    // Session ids of earlier main processes are no longer the service's (and can be reused by
    // anyone once empty): only the current main process's session, or its descendants, count.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::default().notify(NotifyConfig::new());
    let supervised = Supervisor::new(Command::new(STRAY).args(["--dir", &path(dir.path())]))
        .config(config)
        .policy(Backoff::scaled(Duration::from_millis(10)))
        .spawn()
        .expect("spawn");
    let mut events = supervised.events();
    // Either the stray was followed (the bug) or the service's own next message arrives.
    let seen =
        until(&mut events, |k| matches!(k, EventKind::Status { .. } | EventKind::MainPidChanged { .. }))
            .await;
    let stray = Held::new(read_pids(&dir.path().join("stray"))[0]);
    let second = seen.iter().rev().find_map(|e| started_pid(&e.kind)).expect("the second start");
    assert!(!seen.iter().any(|e| matches!(e.kind, EventKind::MainPidChanged { .. })), "{seen:?}");
    assert_eq!(supervised.pid(), Some(second), "supervision stayed with the service");
    assert!(
        matches!(supervised.stop().await.expect("stop"), StopOutcome::Exited { pid, .. } if pid == second)
    );
    assert!(!stray.has_exited(), "the stray of the old session was signalled");
    kill(stray.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_durations_from_the_config_and_the_service_never_overflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::default()
        .notify(NotifyConfig::new().watchdog(Duration::MAX).start_timeout(Duration::MAX))
        .grace(Duration::MAX);
    let restarts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let policy = {
        let restarts = restarts.clone();
        move |_: &keepalive::Exit| {
            restarts.fetch_add(1, Ordering::SeqCst);
            Decision::Restart { after: Duration::MAX }
        }
    };
    // The service asks for a watchdog interval of u64::MAX microseconds.
    let command = Command::new(NOTIFY).args([
        "--send",
        "READY=1\nWATCHDOG_USEC=18446744073709551615",
        "--done",
        &path(&dir.path().join("done")),
    ]);
    let supervised = Supervisor::new(command).config(config).policy(policy).spawn().expect("spawn");
    let pid = supervised.pid().expect("pid");
    let mut events = supervised.events();
    let seen = until(&mut events, |k| matches!(k, EventKind::Status { .. })).await;
    assert!(seen.iter().any(|e| e.kind == EventKind::Ready { pid }), "{seen:?}");
    // Still answering, and a crash waits out a "never ending" backoff without panicking.
    supervised.signal(Signal::from_raw(0)).await.expect("responsive");
    kill(pid);
    let seen = until(&mut events, |k| matches!(k, EventKind::Backoff { .. })).await;
    assert!(seen.iter().any(|e| matches!(e.kind, EventKind::Exited { pid: p, .. } if p == pid)), "{seen:?}");
    assert_eq!(restarts.load(Ordering::SeqCst), 1);
    assert_eq!(supervised.stop().await.expect("stop"), StopOutcome::NotRunning);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchdog_beyond_u64_microseconds_reaches_the_service_saturated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let config = Config::default().notify(NotifyConfig::new().watchdog(Duration::MAX));
    let command = Command::new(WATCHDOG).args(["--log", &path(&log), "--pings", "0"]);
    let supervised = Supervisor::new(command).config(config).spawn().expect("spawn");
    let pid = supervised.pid().expect("pid");
    let line = wait_for("the fixture's start line", || {
        std::fs::read_to_string(&log).ok().filter(|t| t.ends_with('\n'))
    });
    // sd_watchdog_enabled() (here: the sd-notify crate) parses a u64; a larger number disables it.
    assert_eq!(line.trim(), format!("start pid={pid} usec={} wdpid={pid} enabled=true", u64::MAX));
    supervised.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_grace_period_still_stops_a_cooperative_service() {
    let config = Config::default().grace(Duration::MAX);
    let supervised = Supervisor::new(Command::new("sleep").arg("600")).config(config).spawn().expect("spawn");
    let pid = supervised.pid().expect("pid");
    assert!(matches!(supervised.stop().await.expect("stop"), StopOutcome::Exited { pid: p, .. } if p == pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_main_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let supervised =
        Supervisor::new(Command::new(SIGNALS).args(["--log", &path(&log)])).spawn().expect("spawn");
    wait_for("the fixture's handlers", || {
        std::fs::read_to_string(&log).ok().filter(|t| t.starts_with("ready"))
    });
    for signal in [Signal::HUP, Signal::USR1, Signal::USR2] {
        supervised.signal(signal).await.expect("signal");
        let name = signal.name().expect("named");
        wait_for(&format!("{name} in the log"), || {
            std::fs::read_to_string(&log).ok().filter(|t| t.lines().any(|l| l == name))
        });
    }
    supervised.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_mainpid_without_a_subreaper() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let pid_file = dir.path().join("svc.pid");
    let config = Config::default().notify(NotifyConfig::new()).pid_file(pid_file.clone());
    let command = Command::new(HANDOVER).args(["--log", &path(&log), "--own-group"]);
    let supervised = Supervisor::new(command).config(config).spawn().expect("spawn");
    let mut events = supervised.events();
    let mut pid = started_pid(&next(&mut events).await.kind).expect("Started");
    for generation in 0..2 {
        // Its signal mask is in place once it has logged itself; before, SIGUSR2 would kill it.
        wait_for("the fixture to start", || {
            std::fs::read_to_string(&log).ok().filter(|t| t.contains(&format!("gen={generation} pid={pid} ")))
        });
        supervised.signal(Signal::USR2).await.expect("ask for a handover");
        let seen = until(&mut events, |k| matches!(k, EventKind::MainPidChanged { .. })).await;
        let Some(EventKind::MainPidChanged { old, new }) = seen.last().map(|e| e.kind.clone()) else {
            unreachable!()
        };
        assert_eq!(old, pid);
        assert!(
            seen.iter().all(|e| !matches!(e.kind, EventKind::Exited { .. } | EventKind::Started { .. })),
            "{seen:?}"
        );
        assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file"), format!("{new}\n"));
        wait_gone(old);
        pid = new;
    }
    assert_eq!(supervised.status().starts, 1);
    assert_eq!(supervised.status().main_pid_changes, 2);
    match supervised.stop().await.expect("stop") {
        // Without a subreaper the successor is init's child once its parent exits: status unknown.
        StopOutcome::Exited { pid: p, status, .. } => {
            assert_eq!(p, pid);
            assert_eq!(status, ExitStatus::Unknown);
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    assert!(is_gone(pid));
    assert!(!pid_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_dies_with_its_supervisor_cannot_be_detached_and_dies_when_it_is_killed() {
    let mut supervised = Supervisor::new(Command::new("sleep").arg("600"))
        .config(Config::default().lifetime(Lifetime::DieWithSupervisor { signal: Signal::TERM }))
        .spawn()
        .expect("spawn");
    let pid = supervised.pid().expect("pid");
    assert!(matches!(supervised.detach().await, Err(Error::DetachRefused)));
    assert_eq!(supervised.pid(), Some(pid), "a refused detach leaves it supervised");
    assert!(matches!(supervised.stop().await.expect("stop"), StopOutcome::Exited { pid: p, .. } if p == pid));

    // Another process supervises with DieWithSupervisor; SIGKILL it and its service follows.
    let mut detacher = std::process::Command::new(DETACHER)
        .args(["--die-with", "--", "sleep", "600"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn detacher");
    let line = first_line(&mut detacher);
    let service: u32 = line.trim().parse().expect("pid");
    assert!(!is_gone(service));
    detacher.kill().expect("kill the supervisor");
    detacher.wait().expect("reap");
    wait_gone(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_a_service_that_dies_with_its_supervisor() {
    let supervised = Supervisor::new(Command::new("sleep").arg("600"))
        .config(Config::default().lifetime(Lifetime::DieWithSupervisor { signal: Signal::TERM }))
        .spawn()
        .expect("spawn");
    let pid = supervised.pid().expect("pid");
    drop(supervised);
    wait_gone(pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_to_start_are_typed_errors() {
    let missing = Supervisor::new(Command::new("/nonexistent/keepalive-test-program")).spawn();
    assert!(matches!(missing, Err(Error::Spawn { .. })), "{missing:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_pid_file = Config::default().pid_file(dir.path().join("missing-dir/svc.pid"));
    let result = Supervisor::new(Command::new("sleep").arg("600")).config(bad_pid_file).spawn();
    assert!(matches!(result, Err(Error::PidFile { .. })), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_cannot_start_is_an_exit_the_policy_sees() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A symlink, not a copy: a freshly written executable can be ETXTBSY while another test's
    // fork still holds the write fd.
    let program = dir.path().join("vanishing");
    std::os::unix::fs::symlink(CRASH_LOOPER, &program).expect("link fixture");
    let causes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let policy = {
        let causes = causes.clone();
        move |exit: &keepalive::Exit| {
            causes.lock().expect("lock").push(exit.cause.clone());
            if causes.lock().expect("lock").len() < 2 {
                Decision::Restart { after: Duration::ZERO }
            } else {
                Decision::GiveUp { reason: "enough".into() }
            }
        }
    };
    let command = Command::new(path(&program)).args([
        "--starts",
        &path(&dir.path().join("starts")),
        "--plan",
        "600000",
    ]);
    let mut supervised = Supervisor::new(command).policy(policy).spawn().expect("spawn");
    std::fs::remove_file(&program).expect("remove the program while it runs");
    kill(supervised.pid().expect("pid"));
    assert!(matches!(supervised.wait().await, Finished::GaveUp { .. }));
    let causes = causes.lock().expect("lock").clone();
    assert_eq!(causes[0], keepalive::ExitCause::OnItsOwn);
    assert!(
        matches!(&causes[1], keepalive::ExitCause::SpawnFailed { reason } if reason.contains("No such file")),
        "{causes:?}"
    );
}
