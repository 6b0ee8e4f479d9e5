//! Twenty handovers through `lifeline restart` while clients hammer the server: nothing fails,
//! in-flight requests finish, state and lock pass on, the control socket never disappears, and
//! no file descriptor leaks.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lifeline_tests::load::{Load, Sample, parse_answer};
use lifeline_tests::{PATIENCE, wait_for};
use nix::fcntl::{Flock, FlockArg};

use crate::support::{
    Conn, Options, Server, fds_at_rest, fds_without_connections, flock_says_locked, is_dead, socket_file,
};

/// The long request in flight across each handover.
const SLOW_MS: u64 = 1500;

/// Watches, as often as it can, that nobody but the server could take the lock and that the
/// control socket file is always there (the same file, still 0600).
struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Watch {
    fn start(lock: PathBuf, control: PathBuf) -> Watch {
        let lock_inode = std::fs::metadata(&lock).unwrap().ino();
        let control_file = socket_file(&control).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let (mut checks, mut violations) = (0, Vec::new());
                while !stop.load(Ordering::SeqCst) && violations.len() < 10 {
                    match std::fs::File::open(&lock) {
                        Ok(file) if file.metadata().unwrap().ino() != lock_inode => {
                            violations.push("the lock file was replaced".to_owned());
                        }
                        // Released at once if we got it: this is a probe.
                        Ok(file) => {
                            if Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok() {
                                violations.push(format!("the lock was free (check {checks})"));
                            }
                        }
                        Err(e) => violations.push(format!("the lock file is gone: {e}")),
                    }
                    let control_now = socket_file(&control);
                    if control_now != Some(control_file) {
                        violations.push(format!("control socket file {control_now:?}, was {control_file:?}"));
                    }
                    checks += 1;
                    // Pacing only: leave the CPU to the processes under test.
                    std::thread::sleep(Duration::from_millis(1));
                }
                (checks, violations)
            }
        });
        Watch { stop, thread }
    }

    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Fresh requests until one is answered by `pid`; the previous process may answer a connection
/// it accepted just before it stopped accepting. Returns (generation, served).
async fn answer_from(server: &Server, pid: u32, previous: u32) -> (u64, u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (answered_by, generation, count) = server.answer().await;
        if answered_by == pid {
            return (generation, count);
        }
        assert_eq!(answered_by, previous, "answered by neither the new nor the old process");
        assert!(Instant::now() < deadline, "pid {pid} never answered a new connection");
    }
}

fn failures(samples: &[Sample]) -> Vec<String> {
    samples.iter().filter_map(|s| s.outcome.as_ref().err().map(|e| format!("at {:?}: {e}", s.at))).collect()
}

fn answering_pids(samples: &[Sample]) -> BTreeSet<u32> {
    samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok().and_then(|b| parse_answer(b)))
        .map(|a| a.0)
        .collect()
}

/// Clients on keep-alive connections and clients opening a connection per request.
struct Clients {
    keep_alive: Load,
    new_connections: Load,
}

impl Clients {
    async fn start(server: &Server) -> Clients {
        let clients = Clients { keep_alive: server.load(2, true), new_connections: server.load(2, false) };
        clients.progress(20).await;
        clients
    }

    /// Waits until both kinds of client got `n` more answers.
    async fn progress(&self, n: u64) {
        self.keep_alive.wait_for_more(n).await;
        self.new_connections.wait_for_more(n).await;
    }

    /// Stops both; adds their samples to `kept` and `fresh`.
    async fn stop(self, kept: &mut Vec<Sample>, fresh: &mut Vec<Sample>) {
        kept.extend(self.keep_alive.stop().await);
        fresh.extend(self.new_connections.stop().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_handovers_under_load_fail_no_request_and_pass_everything_on() {
    let mut server = Options::new().start();
    let (lock, control) = (server.lock_path(), server.control_path());
    let roots = server.pki().roots();
    let watch = Watch::start(lock.clone(), control.clone());
    let (mut kept, mut fresh) = (Vec::new(), Vec::new());
    let mut clients = Clients::start(&server).await;

    let mut count_before = server.answer().await.2;
    let mut slow = Vec::new();
    let mut reference_fds: Option<Vec<String>> = None;
    for round in 1..=20_u64 {
        // A long request in flight on the old process: the connection is the old one's (its
        // first answer says so) and the request is on the wire before the restart begins.
        let old_pid = server.pid;
        let mut conn = Conn::open(server.addr, &roots).await.unwrap();
        let first = conn.get("/").await.unwrap();
        assert!(first.starts_with(&format!("pid={old_pid} ")), "{first}");
        let began = Instant::now();
        conn.send(&format!("/delay?ms={SLOW_MS}")).await.unwrap();
        let slow_request = tokio::spawn(async move { (conn.response().await, began.elapsed()) });

        let new_pid = server.restart().unwrap_or_else(|e| panic!("handover {round} failed: {e}"));
        let restarted_after = began.elapsed();
        slow.push((round, old_pid, restarted_after, slow_request));

        // The new process answers fresh requests, one generation on, and counts on.
        let (generation, count) = answer_from(&server, new_pid, old_pid).await;
        assert_eq!(generation, round + 1);
        assert!(count > count_before, "served went from {count_before} to {count} at round {round}");
        count_before = count;
        let status = server.status();
        assert_eq!(
            (status["pid"].as_u64(), status["generation"].as_u64()),
            (Some(new_pid.into()), Some(round + 1))
        );

        // The lock passed on: still held (by the new process, whose pid the file now names).
        assert!(flock_says_locked(&lock), "the lock is free after handover {round}");
        assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), new_pid.to_string());

        if let Some(reference) = &reference_fds {
            // Whatever the load, the descriptors that are not connections stay as many as
            // generation 2 had (the count may read high while a connection closes: retried).
            let mut now = Vec::new();
            let settled = wait_for_quietly(|| {
                now = fds_without_connections(new_pid);
                now.len() == reference.len()
            });
            assert!(settled, "generation {} has fds {now:#?}, generation 2 had {reference:#?}", round + 1);
            clients.progress(5).await;
        } else {
            // Generation 2 (a process started by a handover, like every later one) is the
            // reference: the clients pause once so that it can be seen at rest.
            clients.stop(&mut kept, &mut fresh).await;
            reference_fds = Some(fds_at_rest(new_pid));
            clients = Clients::start(&server).await;
        }
    }
    clients.stop(&mut kept, &mut fresh).await;

    let failed: Vec<String> = failures(&kept).into_iter().chain(failures(&fresh)).collect();
    assert!(
        failed.is_empty(),
        "{} failed requests of {}: {failed:#?}",
        failed.len(),
        kept.len() + fresh.len()
    );
    // Every generation served the clients that connected after it took over.
    let expected: BTreeSet<u32> = server.pids.iter().copied().collect();
    assert_eq!(answering_pids(&fresh), expected, "not every generation served new connections");
    assert!(answering_pids(&kept).len() > 10, "keep-alive clients did not follow the handovers");

    // Each long request completed on the process it was sent to, after its full delay; some of
    // them were still running when their handover completed, and those answers closed their
    // connections (counted, not required of each: the old process may notice the handover late).
    let (mut overlapped, mut closed) = (0, 0);
    for (round, old_pid, restarted_after, request) in slow {
        let (response, took) = request.await.unwrap();
        let response = response.unwrap_or_else(|e| panic!("slow request of round {round} failed: {e}"));
        let body = &response.body;
        assert!(response.head.starts_with("HTTP/1.1 200 "), "round {round}: {response:?}");
        assert!(body.starts_with(&format!("pid={old_pid} ")), "round {round}: {body}");
        assert!(took >= Duration::from_millis(SLOW_MS), "round {round}: answered after {took:?}");
        // The server started the delay after `began`: a handover that completed before the
        // delay was over found the request in flight, and the answer closes the connection.
        if restarted_after < Duration::from_millis(SLOW_MS) {
            overlapped += 1;
            closed += u32::from(response.closes());
        }
    }
    assert!(overlapped > 0, "no slow request was still in flight when its handover completed");
    assert!(closed > 0, "none of the {overlapped} answers during a drain closed its connection");

    // The lock stayed held and the control socket stayed in place the whole time.
    let (checks, violations) = watch.stop();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(checks > 20, "the watch ran only {checks} checks");

    // The old processes all drained and exited (the first with status 0).
    let status = server.first.wait().unwrap();
    assert!(status.success(), "generation 1 exited with {status}");
    for pid in &server.pids[..server.pids.len() - 1] {
        wait_for("an old generation to exit", || is_dead(*pid).then_some(()));
    }

    // At rest, generation 21 holds exactly as many descriptors as generation 2 did.
    let reference = reference_fds.unwrap();
    let now = fds_at_rest(server.pid);
    assert_eq!(
        now.len(),
        reference.len(),
        "generation 21 at rest has fds {now:#?}, generation 2 had {reference:#?}"
    );
}

/// Polls `check` until it holds or [`PATIENCE`] has passed; whether it held.
fn wait_for_quietly(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Control requests sent while handovers happen are all answered (by the old or the new
/// process): the control socket's counterpart of "no failed request".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_requests_during_handovers_are_all_answered() {
    let mut server = Options::new().start();
    let control = server.control_path();
    let stop = Arc::new(AtomicBool::new(false));
    let client = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (mut answered, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let status =
                    rt.block_on(async { restart_socket::Client::connect(&control).await?.status().await });
                match status {
                    Ok(_) => answered += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (answered, failed)
        }
    });
    for round in 1..=20 {
        server.restart().unwrap_or_else(|e| panic!("handover {round} failed: {e}"));
    }
    stop.store(true, Ordering::SeqCst);
    let (answered, failed) = client.join().unwrap();
    assert!(answered > 20, "only {answered} status requests");
    assert!(
        failed.is_empty(),
        "{} of {} status requests failed: {failed:?}",
        failed.len(),
        answered + failed.len()
    );
}
