//! Multi-process tests of `handover` with the `handover-server` fixture: real processes, real
//! sockets, real signals; successful handovers under load, every failure path, systemd socket
//! activation and notification, and the `SCM_RIGHTS` mode.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

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
                Err(e) => panic!("no line starting with {prefix:?} ({e}); seen: {:?}", self.seen),
            }
        }
    }
}

use lifeline_tests::fixture::field;

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
        // Never talk to a service manager the test run itself may be under.
        cmd.env_remove("NOTIFY_SOCKET");
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

use lifeline_tests::proc::is_dead;

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
        let count: u64 = field(&status, "served").parse().unwrap();
        assert!(count > last_served, "served went from {last_served} to {count}: state lost");
        last_served = count;
    }
    let (ok, failures) = load.stop();
    assert!(
        failures.is_empty(),
        "{} failed requests (of {}): {failures:?}",
        failures.len(),
        ok + failures.len() as u64
    );
    assert!(ok > 100, "only {ok} requests during the handovers");

    // Every old process exited; the first one with status 0.
    let status = server.first.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in &server.pids[..server.pids.len() - 1] {
        wait_for("an old process to be gone", || is_dead(*pid).then_some(()));
    }
    // The directory lock passed along and is still held.
    let flock =
        Command::new("flock").args(["-n", "-E", "75"]).arg(server.path("lock")).arg("true").status().unwrap();
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
    failed_upgrade_leaves_the_old_one_serving(
        "crash",
        "new process was killed by signal SIGABRT before becoming ready",
    );
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

#[test]
fn stopping_during_a_handover_kills_the_successor_and_its_children() {
    let mut server = Server::start(|_, cmd| {
        cmd.args(["--ready-timeout-ms", "60000"]);
    });
    server.set_mode("hang");
    let restart = std::thread::spawn({
        let control_path = server.path("control");
        move || control(&control_path, "restart")
    });
    // The successor and its grandchild run, and will not be ready within the test.
    wait_for("the successor to start", || server.path("mode.pids").exists().then_some(()));
    let record = std::fs::read_to_string(server.path("mode.pids")).unwrap();
    let child: u32 = field(&record, "child").parse().unwrap();
    let grandchild: u32 = field(&record, "grandchild").parse().unwrap();
    assert!(!is_dead(child) && !is_dead(grandchild));

    kill(Pid::from_raw(server.pid as i32), Signal::SIGTERM).unwrap();
    assert_eq!(restart.join().unwrap(), "err restart aborted: the service is stopping");
    server.stdout.wait(&format!("stopping pid={}", server.pid));
    server.stdout.wait(&format!("exit pid={}", server.pid));
    let status = server.first.wait().unwrap();
    assert!(status.success(), "{status}");
    // Reaped by the stopping process before it answered: nothing of the handover is left.
    assert!(is_dead(child), "the successor {child} outlived the stop");
    wait_for("the grandchild to be killed", || is_dead(grandchild).then_some(()));
}

/// A port that was free a moment ago (bind port 0, close).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

/// Runs `systemd-socket-activate -l 127.0.0.1:PORT --fdname=http [ssa_args] FIXTURE [args]`,
/// retrying with another port if the one picked was taken in between.
fn socket_activate(ssa_args: &[&str], args: &[&std::ffi::OsStr], udp: bool) -> (Child, Lines, Lines, u16) {
    for _ in 0..10 {
        let port = free_port(udp);
        let mut child = Command::new("systemd-socket-activate")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--fdname=http")
            .args(ssa_args)
            .arg(FIXTURE)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate must be installed (systemd package)");
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        let first = stderr.rx.recv_timeout(PATIENCE).unwrap_or_default();
        if first.starts_with("Listening on") {
            return (child, stdout, stderr, port);
        }
        // Most likely "Address already in use": somebody took the port in between.
        let _ = child.wait();
    }
    panic!("systemd-socket-activate could not listen on a free port in 10 tries");
}

#[test]
fn adopts_a_socket_from_systemd_socket_activate_and_hands_it_over() {
    let dir = tempfile::tempdir().unwrap();
    let control_path = dir.path().join("control");
    let (first, mut stdout, _stderr, port) =
        socket_activate(&[], &["--control".as_ref(), control_path.as_os_str()], false);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The first connection makes systemd-socket-activate exec the server (same pid) on fd 3.
    let answer = request(addr, "GET");
    assert!(answer.starts_with(&format!("pid={} ", first.id())), "{answer}");
    let ready = stdout.wait("ready ");
    assert_eq!(field(&ready, "addr"), addr.to_string());
    let mut server =
        Server { dir, first, stdout, addr, pid: field(&ready, "pid").parse().unwrap(), pids: vec![] };
    server.pids.push(server.pid);

    let new_pid = server.restart().unwrap();
    assert!(server.get().starts_with(&format!("pid={new_pid} generation=1 ")));
    // The successor was started without the socket-activation variables.
    let environ = std::fs::read(format!("/proc/{new_pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("LISTEN_FDS="), "{environ}");
    assert!(environ.contains("LIFELINE_FDS=http="), "{environ}");
}

#[test]
fn an_inherited_socket_of_the_wrong_type_is_rejected() {
    // A UDP socket named `http` where the server takes a TCP listener.
    let (mut child, _stdout, mut stderr, port) = socket_activate(&["--datagram"], &[], true);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"wake up", ("127.0.0.1", port)).unwrap();
    let line = stderr.wait("handover-server: ");
    assert_eq!(
        line,
        "handover-server: inherited file descriptor \"http\" is a UDP socket, not a TCP listener"
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
}

/// Receives one datagram from the fake `NOTIFY_SOCKET`, with the fds it carries.
fn recv_notify(sock: &UnixDatagram) -> (String, Vec<std::os::fd::OwnedFd>) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};

    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 16]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .expect("a notification within PATIENCE");
    let mut fds = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these fds in this process for this message.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let len = msg.bytes;
    (String::from_utf8_lossy(&buf[..len]).into_owned(), fds)
}

#[test]
fn notify_socket_gets_ready_fd_store_and_each_new_main_pid() {
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut server = Server::start(|dir, cmd| {
        cmd.env("NOTIFY_SOCKET", &notify_path).arg("--fd-store").arg("--pid-file").arg(dir.join("pid"));
    });
    let pid_file = server.path("pid");
    assert_eq!(recv_notify(&sock).0, "READY=1\n");
    // The registered fds went to the fd store under their names.
    let (msg, fds) = recv_notify(&sock);
    assert_eq!(msg, "FDSTORE=1\nFDNAME=http\n");
    let [fd] = <[_; 1]>::try_from(fds).unwrap();
    let stored = std::net::TcpListener::from(fd);
    assert_eq!(stored.local_addr().unwrap(), server.addr);
    let (msg, fds) = recv_notify(&sock);
    assert_eq!(msg, "FDSTORE=1\nFDNAME=control\n");
    assert_eq!(fds.len(), 1);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{}\n", server.pid));

    // A failed upgrade ends the reload with READY=1 from the old process.
    server.set_mode("crash");
    server.restart().expect_err("the successor crashes");
    assert!(recv_notify(&sock).0.starts_with("RELOADING=1\n"));
    assert_eq!(recv_notify(&sock).0, "READY=1\n");
    server.set_mode("ok");
    for _ in 0..2 {
        let new_pid = server.restart().unwrap();
        // From the old process, still the main one: the reload begins (what Type=notify-reload
        // needs: RELOADING=1 with the monotonic time, and time for the successor)...
        let (msg, _) = recv_notify(&sock);
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 3, "{msg:?}");
        assert_eq!(lines[0], "RELOADING=1");
        assert!(
            lines[1].strip_prefix("MONOTONIC_USEC=").is_some_and(|v| v.parse::<u64>().is_ok()),
            "{msg:?}"
        );
        assert!(
            lines[2].strip_prefix("EXTEND_TIMEOUT_USEC=").is_some_and(|v| v.parse::<u64>().is_ok()),
            "{msg:?}"
        );
        // ... and ends with the new main pid, ready; the successor sends no READY=1 of its own.
        let (msg, fds) = recv_notify(&sock);
        assert_eq!(msg, format!("MAINPID={new_pid}\nREADY=1\n"));
        assert!(fds.is_empty());
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{new_pid}\n"));
    }
}

#[test]
fn an_independent_successor_takes_over_through_scm_rights() {
    let mut server = Server::start(|dir, cmd| {
        cmd.arg("--successor-socket").arg(dir.join("handover"));
    });
    let socket = server.path("handover");
    let mode_file = server.path("successor-mode");
    let load = Load::start(server.addr);
    load.wait_progress(5);
    let successor = |mode: Option<&str>| {
        let mut cmd = Command::new(FIXTURE);
        cmd.arg("--from-socket").arg(&socket);
        if let Some(mode) = mode {
            let file = &mode_file;
            std::fs::write(file, mode).unwrap();
            cmd.arg("--mode-file").arg(file);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
        let lines = Lines::new(child.stdout.take().unwrap());
        (child, lines)
    };

    // A successor that fails after taking the fds and the state changes nothing.
    let (mut failed, _) = successor(Some("exit-after-state"));
    assert_eq!(failed.wait().unwrap().code(), Some(1));
    assert!(server.get().starts_with(&format!("pid={} generation=0 ", server.pid)));

    // Generation 1 takes over from the first process, then generation 2 from it, same socket.
    let mut old_pid = server.pid;
    let mut children = Vec::new();
    for generation in 1..=2 {
        let (child, mut lines) = successor(None);
        let ready = lines.wait("ready ");
        let pid: u32 = field(&ready, "pid").parse().unwrap();
        server.pids.push(pid);
        assert_eq!(field(&ready, "generation"), generation.to_string());
        assert_eq!(field(&ready, "addr"), server.addr.to_string());
        let exit = if generation == 1 {
            server.stdout.wait(&format!("exit pid={old_pid} "))
        } else {
            let (_, previous_lines): &mut (Child, Lines) = children.last_mut().unwrap();
            previous_lines.wait(&format!("exit pid={old_pid} "))
        };
        assert_eq!(field(&exit, "drained"), "complete");
        load.wait_progress(5);
        let status = server.control("status");
        assert_eq!(field(&status, "pid"), pid.to_string());
        old_pid = pid;
        children.push((child, lines));
    }
    let (_, failures) = load.stop();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(server.first.wait().unwrap().success());
    let (mut gen1, _) = children.remove(0);
    assert!(gen1.wait().unwrap().success());
    for (mut child, _) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A large state passed as a sealed memfd with the upgrade (`LifecycleHandler::upgrade_fds`,
/// `SealedState::build` / `map`): every successor, spawned or connected through the handover
/// socket, maps exactly the bytes its predecessor built, and the fds of one upgrade are not passed
/// again with the next.
#[test]
fn a_sealed_state_passes_with_each_upgrade_and_is_mapped_intact() {
    const BYTES: usize = 8 << 20;
    let mut server = Server::start(|dir, cmd| {
        cmd.arg("--sealed-state").arg(BYTES.to_string());
        cmd.arg("--successor-socket").arg(dir.join("handover"));
    });
    for _ in 0..3 {
        let previous = server.pid;
        let pid = server.restart().unwrap();
        let line = server.stdout.wait("sealed-state ");
        assert_eq!(field(&line, "bytes"), BYTES.to_string(), "{line}");
        assert!(line.ends_with(" intact"), "{line}");
        server.stdout.wait(&format!("exit pid={previous} "));
        // One sealed state per process: the successor holds only the one it was given.
        let memfds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .filter(|target| target.to_string_lossy().contains("memfd:sealed-state"))
            .count();
        assert!(memfds <= 1, "pid {pid} holds {memfds} sealed states");
    }
    // The same through the handover socket: an independently started successor.
    let mut cmd = Command::new(FIXTURE);
    cmd.arg("--from-socket").arg(server.path("handover"));
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let line = lines.wait("sealed-state ");
    assert!(line.ends_with(" intact"), "{line}");
    let ready = lines.wait("ready ");
    server.pids.push(field(&ready, "pid").parse().unwrap());
    let _ = child.kill();
    let _ = child.wait();
}
