//! Multi-process tests of `handover` with the `handover-server` fixture: real processes, real
//! sockets, real signals; successful handovers under load, every failure path, systemd socket
//! activation and notification, and the `SCM_RIGHTS` mode.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use lifeline_tests::{PATIENCE, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const FIXTURE: &str = env!("CARGO_BIN_EXE_handover-server");

/// Lines a process tree printed on one pipe, collected by a reader thread.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(pipe: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { rx, seen: Vec::new() }
    }

    /// Waits for a line starting with `prefix` (already seen or still to come); returns it.
    fn wait(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(at) = self.seen.iter().position(|l| l.starts_with(prefix)) {
                return self.seen.remove(at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line starting with {prefix:?} within {PATIENCE:?}; seen: {:?}", self.seen),
            }
        }
    }

    /// Waits for the end of the pipe (every writer exited); returns the unclaimed lines.
    fn wait_closed(&mut self) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return std::mem::take(&mut self.seen),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("pipe still open after {PATIENCE:?}"),
            }
        }
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// A running fixture server (and its successors), cleaned up on drop.
struct Server {
    dir: tempfile::TempDir,
    first: Child,
    stdout: Lines,
    addr: SocketAddr,
    pid: u32,
    pids: Vec<u32>,
}

impl Server {
    /// Starts the fixture with a control socket and a mode file in a new temp dir; `extra`
    /// gets that dir and adds arguments and environment.
    fn start(extra: impl FnOnce(&Path, &mut Command)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(FIXTURE);
        cmd.arg("--control").arg(dir.path().join("control"));
        cmd.arg("--mode-file").arg(dir.path().join("mode"));
        extra(dir.path(), &mut cmd);
        Server::spawn(dir, cmd)
    }

    fn spawn(dir: tempfile::TempDir, mut cmd: Command) -> Server {
        let mut first = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdout = Lines::new(first.stdout.take().unwrap());
        let ready = stdout.wait("ready ");
        let pid: u32 = field(&ready, "pid").parse().unwrap();
        assert_eq!(pid, first.id());
        let addr = field(&ready, "addr").parse().unwrap();
        Server { dir, first, stdout, addr, pid, pids: vec![pid] }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.path("mode"), mode).unwrap();
    }

    /// Sends one control command; returns the answer line.
    fn control(&self, command: &str) -> String {
        control(&self.path("control"), command)
    }

    /// Asks for a handover; on success waits for the new process's ready line.
    fn restart(&mut self) -> Result<u32, String> {
        let answer = self.control("restart");
        if let Some(pid) = answer.strip_prefix("ok ") {
            let pid: u32 = pid.parse().unwrap();
            let ready = self.stdout.wait(&format!("ready pid={pid} "));
            assert_eq!(field(&ready, "addr").parse::<SocketAddr>().unwrap(), self.addr);
            self.pid = pid;
            self.pids.push(pid);
            Ok(pid)
        } else {
            Err(answer.strip_prefix("err ").unwrap_or(&answer).to_owned())
        }
    }

    fn get(&self) -> String {
        request(self.addr, "GET")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        let _ = self.first.wait();
    }
}

fn control(path: &Path, command: &str) -> String {
    let mut conn = UnixStream::connect(path).unwrap();
    conn.set_read_timeout(Some(PATIENCE * 2)).unwrap();
    writeln!(conn, "{command}").unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

/// One request on a new connection; returns the answer line.
fn request(addr: SocketAddr, line: &str) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    writeln!(conn, "{line}").unwrap();
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer).unwrap();
    assert!(!answer.is_empty(), "connection closed without an answer to {line}");
    answer.trim_end().to_owned()
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: dead all the same).
fn is_dead(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Clients hammering the server on new and keep-alive connections, counting failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..3)
            .map(|i| {
                let (stop, ok) = (stop.clone(), ok.clone());
                std::thread::spawn(move || hammer(addr, i == 0, &stop, &ok))
            })
            .collect();
        Load { stop, ok, threads }
    }

    /// Waits until `n` more requests succeeded (the load really runs).
    fn wait_progress(&self, n: u64) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        wait_for("load progress", || (self.ok.load(Ordering::SeqCst) >= target).then_some(()));
    }

    /// Stops the clients; returns every failure they saw.
    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

fn hammer(addr: SocketAddr, new_connections: bool, stop: &AtomicBool, ok: &AtomicU64) -> Vec<String> {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    // Bounded whatever happens to the test.
    while !stop.load(Ordering::SeqCst) && started.elapsed() < PATIENCE * 6 {
        if conn.is_none() {
            match TcpStream::connect(addr) {
                Ok(c) => {
                    c.set_read_timeout(Some(PATIENCE)).unwrap();
                    let reader = BufReader::new(c.try_clone().unwrap());
                    conn = Some((c, reader));
                }
                Err(e) => {
                    failures.push(format!("connect: {e}"));
                    continue;
                }
            }
        }
        let (c, reader) = conn.as_mut().unwrap();
        let mut answer = String::new();
        let result = c.write_all(b"GET\n").and_then(|()| reader.read_line(&mut answer));
        match result {
            Ok(n) if n > 0 && answer.starts_with("pid=") => {
                ok.fetch_add(1, Ordering::SeqCst);
                if new_connections || answer.trim_end().ends_with(" close") {
                    conn = None;
                }
            }
            Ok(_) => {
                failures.push(format!("bad answer {answer:?}"));
                conn = None;
            }
            Err(e) => {
                failures.push(format!("request: {e}"));
                conn = None;
            }
        }
    }
    failures
}


#[test]
fn twenty_handovers_under_load_drop_nothing_pass_state_and_leak_no_fds() {
    let mut server = Server::start(|dir, cmd| {
        cmd.arg("--lock").arg(dir.join("lock"));
    });
    let first_pid = server.pid;
    // At rest, before any client: the reference fd count.
    let fds_before = fd_count(first_pid);

    // Keep-alive clients connected before each handover, and clients connecting during it.
    let load = Load::start(server.addr);
    load.wait_progress(20);
    let mut last_served = 0;
    for round in 0..20 {
        // A slow request in flight across the handover completes on the old process: its
        // connection is the old one's (the first answer says so) when the restart starts.
        let old_pid = server.pid;
        let (in_flight_tx, in_flight) = mpsc::channel();
        let slow = std::thread::spawn({
            let addr = server.addr;
            move || {
                let mut conn = TcpStream::connect(addr).unwrap();
                conn.set_read_timeout(Some(PATIENCE)).unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                conn.write_all(b"GET\n").unwrap();
                reader.read_line(&mut first).unwrap();
                conn.write_all(b"DELAY 300\n").unwrap();
                in_flight_tx.send(first).unwrap();
                let mut answer = String::new();
                reader.read_line(&mut answer).unwrap();
                answer
            }
        });
        let first = in_flight.recv_timeout(PATIENCE).unwrap();
        assert!(first.starts_with(&format!("pid={old_pid} ")), "{first}");
        let new_pid = server.restart().unwrap_or_else(|e| panic!("handover {round} failed: {e}"));
        assert_ne!(new_pid, old_pid);
        let slow_answer = slow.join().unwrap();
        assert!(slow_answer.starts_with(&format!("pid={old_pid} ")), "{slow_answer:?}");
        let exit = server.stdout.wait(&format!("exit pid={old_pid} "));
        assert_eq!(field(&exit, "drained"), "complete");
        load.wait_progress(5);
        let status = server.control("status");
        assert_eq!(field(&status, "pid"), new_pid.to_string());
        assert_eq!(field(&status, "generation"), (round + 1).to_string());
        let served: u64 = field(&status, "served").parse().unwrap();
        assert!(served > last_served, "served went from {last_served} to {served}: state lost");
        last_served = served;
    }
    let (ok, failures) = load.stop();
    assert!(failures.is_empty(), "{} failed requests (of {}): {failures:?}", failures.len(), ok + failures.len() as u64);
    assert!(ok > 100, "only {ok} requests during the handovers");

    // Every old process exited; the first one with status 0.
    let status = server.first.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in &server.pids[..server.pids.len() - 1] {
        wait_for("an old process to be gone", || is_dead(*pid).then_some(()));
    }
    // The directory lock passed along and is still held.
    let flock = Command::new("flock").args(["-n", "-E", "75"]).arg(server.path("lock")).arg("true").status().unwrap();
    assert_eq!(flock.code(), Some(75), "the lock was not held across the handovers");

    wait_for("the serving process to settle at the first one's fd count", || {
        (fd_count(server.pid) == fds_before).then_some(())
    });
}

/// Makes the next process misbehave with `mode`; the upgrade must fail with `reason`, and the
/// old process must serve on without a failed request and upgrade fine afterwards.
fn failed_upgrade_leaves_the_old_one_serving(mode: &str, reason: &str) {
    let mut server = Server::start(|_, cmd| {
        cmd.args(["--ready-timeout-ms", "1500"]);
    });
    let old_pid = server.pid;
    let load = Load::start(server.addr);
    load.wait_progress(5);

    server.set_mode(mode);
    let err = server.restart().expect_err("the upgrade should fail");
    assert_eq!(err, reason);

    // The failed process and everything it started are gone.
    if mode == "hang" {
        let record = std::fs::read_to_string(server.path("mode.pids")).expect("the hung child's pids");
        let child: u32 = field(&record, "child").parse().unwrap();
        let grandchild: u32 = field(&record, "grandchild").parse().unwrap();
        assert!(is_dead(child), "the hung child {child} survived");
        wait_for("the grandchild to be killed", || is_dead(grandchild).then_some(()));
    }
    // The old process serves on as if nothing happened.
    assert!(server.get().starts_with(&format!("pid={old_pid} ")));
    load.wait_progress(5);
    let status = server.control("status");
    assert_eq!(field(&status, "generation"), "0");

    server.set_mode("ok");
    let new_pid = server.restart().expect("a good successor takes over");
    assert!(server.get().starts_with(&format!("pid={new_pid} generation=1 ")));
    let (_, failures) = load.stop();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}

#[test]
fn successor_crashing_at_start_is_reported_with_its_signal() {
    failed_upgrade_leaves_the_old_one_serving("crash", "new process was killed by signal SIGABRT before becoming ready");
}

#[test]
fn successor_exiting_after_reading_the_state_is_reported_with_its_status() {
    failed_upgrade_leaves_the_old_one_serving(
        "exit-after-state",
        "new process exited with status 1 before becoming ready",
    );
}

#[test]
fn successor_rejecting_the_state_version_fails_the_upgrade() {
    failed_upgrade_leaves_the_old_one_serving(
        "reject-version",
        "new process exited with status 3 before becoming ready",
    );
}

#[test]
fn successor_never_ready_is_killed_with_its_children() {
    failed_upgrade_leaves_the_old_one_serving("hang", "not ready after 1500 ms");
}

#[test]
fn the_binary_now_at_the_path_is_what_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("server");
    std::fs::copy(FIXTURE, &exe).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.arg("--control").arg(dir.path().join("control"));
    let mut server = Server::spawn(dir, cmd);
    let first_pid = server.pid;

    // Install a "new version" that crashes, the way package managers do: write, then rename.
    let staged = bin.join("server.new");
    std::fs::write(&staged, "#!/bin/sh\nkill -SEGV $$\n").unwrap();
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &exe).unwrap();
    let err = server.restart().expect_err("the crashing binary must not take over");
    assert_eq!(err, "new process was killed by signal SIGSEGV before becoming ready");
    assert!(server.get().starts_with(&format!("pid={first_pid} ")));

    // Install a good one: it is what starts (not the old inode /proc/self/exe points at).
    std::fs::copy(FIXTURE, &staged).unwrap();
    std::fs::rename(&staged, &exe).unwrap();
    let new_pid = server.restart().unwrap();
    assert_eq!(std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap(), exe);
    assert!(server.get().starts_with(&format!("pid={new_pid} generation=1 ")));
}

#[test]
fn concurrent_restart_requests_get_restart_already_in_progress() {
    let mut server = Server::start(|_, cmd| {
        cmd.args(["--ready-timeout-ms", "3000"]);
    });
    server.set_mode("hang");
    let first = std::thread::spawn({
        let control_path = server.path("control");
        move || control(&control_path, "restart")
    });
    // The hanging successor is running: the first upgrade is in progress.
    wait_for("the successor to start", || server.path("mode.pids").exists().then_some(()));
    assert_eq!(server.control("restart"), "err restart already in progress");
    assert_eq!(first.join().unwrap(), "err not ready after 3 s");

    server.set_mode("ok");
    let pid = server.restart().unwrap();
    assert!(server.get().starts_with(&format!("pid={pid} ")));
}
