//! restart-socket across real processes: a handover across `execve` keeps the socket path alive,
//! failed restarts leave the old process serving, SIGUSR1 triggers the same handler, stale
//! sockets of services killed with SIGKILL are replaced and live ones are never stolen.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};

use lifeline_tests::{PATIENCE, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use restart_socket::{Client, Error, RESTART_IN_PROGRESS, Status};

const SERVICE: &str = env!("CARGO_BIN_EXE_restart-socket-service");

/// A running fixture service (and, through its stdout, every successor it starts).
struct Service {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Successor pids to SIGKILL if the test ends early.
    others: Vec<u32>,
}

impl Service {
    fn start(socket: &Path, args: &[&str]) -> Service {
        let mut child = Command::new(SERVICE)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn restart-socket-service");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Service { child, stdin, lines, others: Vec::new() }
    }

    /// Waits for the next stdout line (ours or a successor's) starting with `prefix`.
    fn expect(&self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(err) => panic!("no line starting with {prefix:?} from the service: {err}"),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the original process to exit; whether it succeeded.
    fn wait(&mut self) -> bool {
        wait_for("the service to exit", || self.child.try_wait().unwrap()).success()
    }

    /// Everything the process wrote on stderr. Only for a process that started no successor:
    /// successors inherit the pipe and keep it open.
    fn stderr(&mut self) -> String {
        let mut stderr = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        stderr
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &self.others {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn status(socket: &Path) -> Result<Status, Error> {
    block_on(async { Client::connect(socket).await?.status().await })
}

fn restart(socket: &Path) -> Result<u32, Error> {
    block_on(async { Client::connect(socket).await?.restart(PATIENCE).await })
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("control.sock")
}

fn pid_of(line: &str) -> u32 {
    line.split_whitespace().find_map(|w| w.strip_prefix("pid=")).unwrap().parse().unwrap()
}

#[test]
fn a_handover_across_exec_keeps_the_socket_path_and_moves_ownership() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let mut old = Service::start(&socket, &[]);
    assert_eq!(pid_of(&old.expect("ready")), old.pid());
    let before = status(&socket).unwrap();
    assert_eq!((before.pid, before.generation, before.last_restart), (old.pid(), 1, None));
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Watch the path for the whole handover: it must never be missing.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, socket) = (Arc::clone(&done), socket.clone());
        std::thread::spawn(move || {
            let (mut checks, deadline) = (0u64, std::time::Instant::now() + PATIENCE);
            while !done.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                assert!(
                    std::fs::symlink_metadata(&socket).is_ok(),
                    "socket path disappeared during the handover"
                );
                checks += 1;
            }
            checks
        })
    };

    let new_pid = restart(&socket).unwrap();
    old.others.push(new_pid);
    assert_ne!(new_pid, old.pid());
    let ready = old.expect("ready pid=");
    assert_eq!(pid_of(&ready), new_pid);
    assert!(ready.ends_with("generation=2"), "{ready}");

    // The old process stops without removing the file: it handed the listener on.
    let old_pid = old.pid();
    let stopped = old.expect(&format!("stopped pid={old_pid}"));
    assert!(stopped.ends_with("generation=1"));
    assert!(old.wait(), "the old process failed");
    done.store(true, Ordering::SeqCst);
    assert!(watcher.join().unwrap() > 0);

    assert!(socket.exists(), "the old process removed the socket file");
    let after = status(&socket).unwrap();
    assert_eq!((after.pid, after.generation), (new_pid, 2));
    assert!(after.last_restart.is_some_and(|t| t >= before.started_at));

    // The successor owns the file now: a clean shutdown removes it.
    kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM).unwrap();
    assert_eq!(old.expect("stopped"), format!("stopped pid={new_pid} generation=2"));
    wait_for("the successor to remove the socket file", || (!socket.exists()).then_some(()));
}

#[test]
fn a_failing_handler_leaves_the_old_process_serving() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let service = Service::start(&socket, &["--fail", "handover not available"]);
    service.expect("ready");
    let err = restart(&socket).unwrap_err();
    assert!(matches!(&err, Error::RestartFailed { reason } if reason == "handover not available"), "{err:?}");
    assert_eq!(status(&socket).unwrap().pid, service.pid());
}

#[test]
fn a_successor_that_dies_before_ready_fails_the_restart_and_the_listener_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let mut service = Service::start(&socket, &["--successor-crashes"]);
    service.expect("ready");
    let err = restart(&socket).unwrap_err();
    assert!(
        matches!(&err, Error::RestartFailed { reason } if reason.starts_with("successor exited before it was ready")),
        "{err:?}"
    );
    let still = status(&socket).unwrap();
    assert_eq!((still.pid, still.generation), (service.pid(), 1));
    // Having reclaimed the exported listener, the old process removes the file at shutdown.
    kill(Pid::from_raw(service.pid() as i32), Signal::SIGTERM).unwrap();
    service.expect("stopped");
    assert!(service.wait(), "{}", service.stderr());
    assert!(!socket.exists());
}

#[test]
fn concurrent_restarts_across_processes_get_restart_already_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let mut service = Service::start(&socket, &["--gate"]);
    service.expect("ready");
    let first = {
        let socket = socket.clone();
        std::thread::spawn(move || restart(&socket))
    };
    service.expect("restart-begun");
    let err = restart(&socket).unwrap_err();
    assert!(matches!(&err, Error::RestartFailed { reason } if reason == RESTART_IN_PROGRESS), "{err:?}");
    writeln!(service.stdin.as_mut().unwrap(), "go").unwrap();
    let new_pid = first.join().unwrap().unwrap();
    service.others.push(new_pid);
    assert_eq!(pid_of(&service.expect("ready pid=")), new_pid);
    service.expect(&format!("stopped pid={}", service.pid()));
    assert_eq!(status(&socket).unwrap().pid, new_pid);
}

#[test]
fn sigusr1_triggers_the_same_restart_handler() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let mut service = Service::start(&socket, &["--sigusr1"]);
    service.expect("ready");
    kill(Pid::from_raw(service.pid() as i32), Signal::SIGUSR1).unwrap();
    service.expect(&format!("restart-begun pid={}", service.pid()));
    let ready = service.expect("ready pid=");
    let new_pid = pid_of(&ready);
    service.others.push(new_pid);
    assert!(ready.ends_with("generation=2"), "{ready}");
    // Until the old process stops accepting, a new connection may still reach it.
    service.expect(&format!("stopped pid={}", service.pid()));
    let after = status(&socket).unwrap();
    assert_eq!((after.pid, after.generation), (new_pid, 2));
    // The successor took the option along: SIGUSR1 restarts it too.
    kill(Pid::from_raw(new_pid as i32), Signal::SIGUSR1).unwrap();
    service.expect(&format!("restart-begun pid={new_pid}"));
    let third = pid_of(&service.expect("ready pid="));
    service.others.push(third);
    service.expect(&format!("stopped pid={new_pid}"));
    assert_eq!(status(&socket).unwrap().generation, 3);
}

#[test]
fn the_stale_socket_of_a_killed_service_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let mut killed = Service::start(&socket, &[]);
    killed.expect("ready");
    killed.child.kill().unwrap(); // SIGKILL: no clean shutdown
    killed.child.wait().unwrap();
    assert!(
        std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket(),
        "the dead service's file remains"
    );
    assert!(status(&socket).unwrap_err().is_no_server());

    let fresh = Service::start(&socket, &[]);
    fresh.expect("ready");
    assert_eq!(status(&socket).unwrap().pid, fresh.pid());
}

#[test]
fn a_live_service_socket_is_not_stolen_by_a_second_one() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let first = Service::start(&socket, &[]);
    first.expect("ready");
    let mut second = Service::start(&socket, &[]);
    assert!(!second.wait());
    let stderr = second.stderr();
    assert!(stderr.contains("is in use by a running server"), "{stderr}");
    assert_eq!(status(&socket).unwrap().pid, first.pid());
}
