//! `lifeline supervise` and the generations of a service that hands over: retired processes
//! under control (`--drain-deadline`, `--max-retired`), a rollback followed (`--rollback-grace`),
//! and restarts through the supervisor's own control socket (`--control`, `--handover-signal`),
//! with the `service-server` fixture (a real `lifeline::service` server) and `keepalive-handover`.

use std::process::{Child, Command, ExitStatus, Stdio};

use lifeline_tests::fixture::{ServerFiles, failures, field};
use lifeline_tests::lines::Lines;
use lifeline_tests::load::{Load, Sample};
use lifeline_tests::{PATIENCE, lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use restart_socket::{Client, Details};

const SERVER: &str = env!("CARGO_BIN_EXE_service-server");
const HANDOVER: &str = env!("CARGO_BIN_EXE_keepalive-handover");

use lifeline_tests::proc::{is_dead, read_pid};

/// `lifeline supervise [sup_args] -- service-server …` with its files in a temporary directory
/// (`{dir}` in `sup_args` names it).
struct Supervised {
    files: ServerFiles,
    child: Option<Child>,
    stdout: Lines,
    stderr: Lines,
    https: std::net::SocketAddr,
    /// The first service process.
    first: u32,
}

impl std::ops::Deref for Supervised {
    type Target = ServerFiles;
    fn deref(&self) -> &ServerFiles {
        &self.files
    }
}

impl Supervised {
    fn start(sup_args: &[&str], server_args: &[&str]) -> Supervised {
        let files = ServerFiles::new("supervise test CA");
        let mut cmd = Command::new(lifeline_bin());
        let dir_text = files.dir.path().display().to_string();
        cmd.arg("supervise").arg("--pidfile").arg(files.path("service.pid"));
        cmd.args(sup_args.iter().map(|a| a.replace("{dir}", &dir_text))).arg("--").arg(SERVER);
        cmd.args(files.server_args("service.sock"));
        cmd.args(server_args);
        lifeline_tests::fixture::clean_env(&mut cmd);
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        let line = stdout.wait("ready pid=");
        let first: u32 = field(&line, "pid").parse().unwrap();
        let https = field(&line, "https").parse().unwrap();
        Supervised { files, child: Some(child), stdout, stderr, https, first }
    }

    fn load(&self, keep_alive: bool) -> Load {
        self.files.load(self.https, keep_alive)
    }

    /// Which process answers a new connection; `None` if the request failed.
    fn try_answered_by(&self) -> Option<u32> {
        let config = lifeline_tests::https::client_config(&self.ca.cert_der);
        let body = lifeline_tests::https::get(self.https, &config, "/").ok()?;
        field(&body, "pid").parse().ok()
    }

    /// A restart through the service's own control socket: the new pid.
    async fn restart_service(&self) -> Result<u32, String> {
        let mut client = Client::connect(self.path("service.sock")).await.map_err(|e| e.to_string())?;
        client.restart(PATIENCE).await.map_err(|e| e.to_string())
    }

    fn pid_file(&self) -> Option<u32> {
        read_pid(&self.path("service.pid"))
    }

    /// SIGTERM to the supervisor; its exit status.
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        wait_exit(&mut child)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
        lifeline_tests::fixture::echo_if_panicking(&self.stdout, &self.stderr);
    }
}

/// Waits for `child` to exit, at most [`PATIENCE`].
fn wait_exit(child: &mut Child) -> ExitStatus {
    wait_for("the process to exit", || child.try_wait().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_never_finishes_is_ended_at_the_drain_deadline() {
    // The service would drain for ten minutes; the supervisor allows its retired process 1 s.
    let mut sup = Supervised::start(
        &["--notify", "--drain-deadline", "1s", "--grace", "2s"],
        &["--drain-ms", "600000"],
    );
    let old = sup.first;
    // A client holding a request open for ever on the first process.
    let (addr, config) = (sup.https, lifeline_tests::https::client_config(&sup.ca.cert_der));
    let mark = sup.stdout.mark();
    let holder = std::thread::spawn(move || lifeline_tests::https::get(addr, &config, "/delay?ms=600000"));
    sup.stdout.wait_after(mark, &format!("delay pid={old}"));

    let new = sup.restart_service().await.expect("the handover succeeds");
    wait_for("the supervisor to follow the handover", || sup.pid_file().filter(|p| *p == new));
    // The old process drains the held request... until the drain deadline ends it.
    sup.stderr.wait(&format!("stopping a retired main process pid={old}"));
    wait_for("the retired process to be gone", || is_dead(old).then_some(()));
    let held = holder.join().unwrap();
    assert!(held.is_err(), "the held request was cut, not answered: {held:?}");
    // The service itself serves on, under the new process.
    assert_eq!(sup.try_answered_by(), Some(new));
    assert!(!is_dead(new));
    assert!(sup.stop().success());
}

#[test]
fn five_rapid_handovers_with_a_cap_of_two_leave_at_most_two_retired_processes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pid_file = dir.path().join("svc.pid");
    // Each retired generation would drain for ten minutes.
    let mut sup = Command::new(lifeline_bin())
        .args(["supervise", "--notify", "--max-retired", "2", "--grace", "2s", "--pidfile"])
        .arg(&pid_file)
        .args(["--", HANDOVER, "--own-group", "--drain-ms", "600000", "--log"])
        .arg(&log)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Lines::new(sup.stderr.take().unwrap());
    let mut generations = vec![wait_for("the pid file", || read_pid(&pid_file))];
    for generation in 0..5 {
        let pid = *generations.last().unwrap();
        // Its signal mask is in place once it has logged itself.
        wait_for(&format!("generation {generation}"), || {
            std::fs::read_to_string(&log).ok().filter(|t| t.contains(&format!("gen={generation} pid={pid} ")))
        });
        kill(Pid::from_raw(sup.id() as i32), Signal::SIGUSR2).unwrap(); // forwarded: a handover
        let new = wait_for("the handover to be followed", || read_pid(&pid_file).filter(|p| *p != pid));
        generations.push(new);
        let retired = &generations[..generations.len() - 1];
        if retired.len() > 2 {
            // The oldest beyond the cap is stopped at once.
            let oldest = retired[retired.len() - 3];
            stderr.wait(&format!("stopping a retired main process pid={oldest}"));
            wait_for("the oldest retired process to be gone", || is_dead(oldest).then_some(()));
        }
        let alive: Vec<u32> = retired.iter().copied().filter(|p| !is_dead(*p)).collect();
        assert!(alive.len() <= 2, "after handover {generation}: retired processes alive: {alive:?}");
        assert!(!is_dead(new));
    }
    // 6 generations: the current one, the two youngest retired draining, the three oldest stopped.
    let alive: Vec<u32> = generations.iter().copied().filter(|p| !is_dead(*p)).collect();
    assert_eq!(alive, generations[3..], "exactly the current process and the two youngest retired run");
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut sup).success());
    assert!(generations.iter().all(|p| is_dead(*p)), "a stop ends the retired processes too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_followed_instead_of_counted_as_a_crash_and_no_request_fails_beyond_those_in_flight() {
    let mut sup = Supervised::start(&["--notify"], &["--rollback-window-ms", "60000"]);
    let old = sup.first;
    let keep_alive = sup.load(true);
    let new_connections = sup.load(false);
    keep_alive.wait_for_more(20).await;
    new_connections.wait_for_more(20).await;

    // The successor becomes ready, serves alone, and crashes a second later.
    sup.set_mode("crash-after-ready-ms=1000");
    let new = sup.restart_service().await.expect("the successor becomes ready");
    wait_for("the supervisor to follow the handover", || sup.pid_file().filter(|p| *p == new));
    lifeline_tests::wait_until("the successor to crash", || is_dead(new)).await;
    // The old generation serves again, and the supervisor follows it: no restart of the command.
    lifeline_tests::wait_until("the old generation to serve again", || sup.try_answered_by() == Some(old))
        .await;
    sup.stderr.wait("rolled back: a previous main process took the service back");
    wait_for("the pid file to name the old generation again", || sup.pid_file().filter(|p| *p == old));
    keep_alive.wait_for_more(20).await;
    new_connections.wait_for_more(20).await;
    let samples: Vec<Sample> =
        keep_alive.stop().await.into_iter().chain(new_connections.stop().await).collect();
    // Only requests in flight on the crashed process may fail: at most one per client (4).
    let failed = failures(&samples);
    assert!(failed.len() <= 4, "{} of {} requests failed: {failed:#?}", failed.len(), samples.len());
    // Exactly two processes ever said they were ready: the command was not started again.
    let started: Vec<String> = sup.stdout.all().into_iter().filter(|l| l.starts_with("ready pid=")).collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(!sup.stderr.all().iter().any(|l| l.contains("service exited")), "counted as a crash");
    assert!(sup.stop().success());
    assert!(is_dead(old));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisors_control_socket_restarts_through_a_handover_and_reports_a_failed_one() {
    let mut sup = Supervised::start(
        &["--notify", "--control", "{dir}/supervisor.sock", "--handover-signal", "SIGHUP"],
        &[],
    );
    let socket = sup.path("supervisor.sock");
    let old = sup.first;
    let keep_alive = sup.load(true);
    keep_alive.wait_for_more(20).await;

    let new = Client::connect(&socket).await.unwrap().restart(PATIENCE).await.expect("a handover");
    assert_ne!(new, old);
    assert_eq!(sup.pid_file(), Some(new), "answered once the supervisor follows the new main process");
    let Details::Supervisor(status) = Client::connect(&socket).await.unwrap().details().await.unwrap() else {
        panic!("a supervisor answers in detail")
    };
    assert_eq!((status.pid, status.restarts, status.generation), (Some(new), 0, 2), "{status:?}");
    assert!(status.is_up());

    // A successor that cannot start: the handover fails, the old process serves on.
    sup.set_mode("fail-at=lock");
    let failed = Client::connect(&socket).await.unwrap().restart(PATIENCE).await.unwrap_err();
    assert!(failed.to_string().contains("handover failed"), "{failed}");
    assert_eq!(sup.pid_file(), Some(new));
    keep_alive.wait_for_more(20).await;
    let samples = keep_alive.stop().await;
    assert!(failures(&samples).is_empty(), "{:#?}", failures(&samples));
    assert!(sup.stop().success());
    assert!(!socket.exists(), "the control socket is removed at the stop");
}
