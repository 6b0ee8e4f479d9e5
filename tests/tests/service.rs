//! `lifeline::service` end to end with the `service-server` fixture: the commit protocol (a
//! successor failing or crashing at each step of its start changes nothing, under load), a stop
//! during a restart, and unix and UDP listeners passed on and cleaned up.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use lifeline_tests::fixture::{ServerFiles, failures, field};
use lifeline_tests::lines::Lines;
use lifeline_tests::load::{Load, Sample};
use lifeline_tests::{PATIENCE, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use restart_socket::Client;

const FIXTURE: &str = env!("CARGO_BIN_EXE_service-server");

use lifeline_tests::proc::is_dead;

/// Whether somebody holds the lock on `path` (`flock -n` fails).
fn locked(path: &Path) -> bool {
    let file = std::fs::File::open(path).expect("the lock file exists");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
}

/// The fixture, its successors, its files.
struct Fixture {
    files: ServerFiles,
    first: Child,
    stdout: Lines,
    stderr: Lines,
    https: SocketAddr,
    udp: Option<SocketAddr>,
    pid: u32,
    pids: Vec<u32>,
}

impl std::ops::Deref for Fixture {
    type Target = ServerFiles;
    fn deref(&self) -> &ServerFiles {
        &self.files
    }
}

impl Fixture {
    fn start(configure: impl FnOnce(&Path, &mut Command)) -> Fixture {
        Fixture::start_exe(Path::new(FIXTURE), configure)
    }

    /// [`Fixture::start`] with another copy of the fixture binary.
    fn start_exe(exe: &Path, configure: impl FnOnce(&Path, &mut Command)) -> Fixture {
        let files = ServerFiles::new("service test CA");
        let mut cmd = Command::new(exe);
        cmd.args(files.server_args("control"));
        lifeline_tests::fixture::clean_env(&mut cmd);
        configure(files.dir.path(), &mut cmd);
        let mut first =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = Lines::new(first.stdout.take().unwrap());
        let stderr = Lines::new(first.stderr.take().unwrap());
        let line = stdout.wait("ready pid=");
        let pid: u32 = field(&line, "pid").parse().unwrap();
        assert_eq!(pid, first.id());
        assert_eq!(field(&line, "generation"), "1");
        let https = field(&line, "https").parse().unwrap();
        let udp = field(&line, "udp").parse().ok();
        Fixture { files, first, stdout, stderr, https, udp, pid, pids: vec![pid] }
    }

    fn load(&self, keep_alive: bool) -> Load {
        self.files.load(self.https, keep_alive)
    }

    async fn restart(&mut self) -> Result<u32, String> {
        let mut client = Client::connect(self.path("control")).await.map_err(|e| e.to_string())?;
        match client.restart(PATIENCE).await {
            Ok(pid) => {
                let line = self.stdout.wait(&format!("ready pid={pid} "));
                assert_eq!(field(&line, "generation"), (self.pids.len() + 1).to_string());
                self.pid = pid;
                self.pids.push(pid);
                Ok(pid)
            }
            Err(err) => Err(err.to_string()),
        }
    }

    async fn status_pid(&self) -> u32 {
        Client::connect(self.path("control")).await.unwrap().status().await.unwrap().pid
    }

    fn answered_by(&self) -> u32 {
        self.try_answered_by().expect("an answer")
    }

    /// Which process answers a new connection; `None` if the request failed (a crashing process).
    fn try_answered_by(&self) -> Option<u32> {
        let config = lifeline_tests::https::client_config(&self.ca.cert_der);
        let body = lifeline_tests::https::get(self.https, &config, "/").ok()?;
        field(&body, "pid").parse().ok()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        let _ = self.first.wait();
        lifeline_tests::fixture::echo_if_panicking(&self.stdout, &self.stderr);
    }
}

/// The next datagram on the fake service manager's socket that starts with `prefix` (status
/// refreshes and the notifications of failed reloads in between are skipped).
fn wait_notification(socket: &UnixDatagram, prefix: &str) -> String {
    let mut buf = [0u8; 512];
    loop {
        let n = socket.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..n]).unwrap().trim_end().to_owned();
        if msg.starts_with(prefix) {
            return msg;
        }
    }
}

/// A way to make the next successor fail, and how to undo it.
struct Fault {
    step: &'static str,
    /// What the failed successor says on stderr.
    says: &'static str,
    apply: Box<dyn Fn(&Fixture)>,
    undo: Box<dyn Fn(&Fixture)>,
}

fn mode_fault(step: &'static str, mode: &'static str, says: &'static str) -> Fault {
    Fault {
        step,
        says,
        apply: Box::new(move |f: &Fixture| f.set_mode(mode)),
        undo: Box::new(|f: &Fixture| f.set_mode("ok")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_failing_at_any_step_of_its_start_leaves_the_old_process_serving_and_owning_everything() {
    // A service manager's notify socket, so that the successor's "notify" step is real.
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let mut manager = UnixDatagram::bind(&notify_path).unwrap();
    let mut fixture = Fixture::start(|dir, cmd| {
        std::fs::create_dir(dir.join("run")).unwrap();
        cmd.arg("--pid-file").arg(dir.join("run/service.pid"));
        cmd.env("NOTIFY_SOCKET", &notify_path);
    });
    assert_eq!(wait_notification(&manager, "READY=1"), "READY=1");
    let (lock, control, pid_file) =
        (fixture.path("state/.lifeline.lock"), fixture.path("control"), fixture.path("run/service.pid"));
    let control_inode = std::fs::metadata(&control).unwrap().ino();
    let keep_alive = fixture.load(true);
    let new_connections = fixture.load(false);
    keep_alive.wait_for_more(10).await;

    let faults = vec![
        mode_fault("lock", "fail-at=lock", "injected failure at start-up step \"lock\""),
        mode_fault("listeners", "fail-at=listeners", "injected failure at start-up step \"listeners\""),
        mode_fault("control", "fail-at=control", "injected failure at start-up step \"control\""),
        mode_fault("tls", "fail-at=tls", "injected failure at start-up step \"tls\""),
        // A successor that cannot read the state (a real version mismatch).
        mode_fault(
            "state",
            "state-version=2",
            "the predecessor's state is version 1; this program reads version 2",
        ),
        mode_fault("register", "fail-at=register", "injected failure at start-up step \"register\""),
        // The service manager's socket is gone (real).
        Fault {
            step: "notify",
            says: "cannot reach the service manager's notify socket",
            // Done below: the test holds the socket.
            apply: Box::new(|f: &Fixture| f.set_mode("ok")),
            undo: Box::new(|_| {}),
        },
        // The pid file's directory is gone (real).
        Fault {
            step: "pidfile",
            says: "cannot write pid file",
            apply: Box::new(|f: &Fixture| std::fs::rename(f.path("run"), f.path("run.away")).unwrap()),
            undo: Box::new(|f: &Fixture| std::fs::rename(f.path("run.away"), f.path("run")).unwrap()),
        },
        // An error, and a crash, right before telling the predecessor: everything adopted,
        // nothing committed.
        mode_fault("commit", "fail-at=commit", "injected failure at start-up step \"commit\""),
        mode_fault("commit", "fail-at=commit:abort", "injected crash"),
    ];
    let old = fixture.pid;
    for fault in &faults {
        let mark = fixture.stderr.mark();
        (fault.apply)(&fixture);
        if fault.step == "notify" {
            drop(std::mem::replace(&mut manager, UnixDatagram::unbound().unwrap()));
            std::fs::remove_file(&notify_path).unwrap();
        }
        let err = fixture.restart().await.expect_err(fault.step);
        assert!(err.contains("before becoming ready"), "{}: {err}", fault.step);
        fixture.stderr.wait_after(mark, fault.says);
        if fault.step == "notify" {
            manager = UnixDatagram::bind(&notify_path).unwrap();
        }
        (fault.undo)(&fixture);

        // The old process serves, and still owns every resource.
        assert_eq!(fixture.answered_by(), old, "after a failure at {}", fault.step);
        assert_eq!(fixture.status_pid().await, old, "the control socket answers (after {})", fault.step);
        assert_eq!(std::fs::metadata(&control).unwrap().ino(), control_inode, "control socket replaced");
        assert!(locked(&lock), "the lock is free after a failure at {}", fault.step);
        assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), old.to_string());
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), old.to_string());
        keep_alive.wait_for_more(5).await;
        new_connections.wait_for_more(5).await;
    }
    // Everything in place: the next successor takes over, and owns it all.
    fixture.set_mode("ok");
    let new = fixture.restart().await.expect("a good successor takes over");
    assert_eq!(wait_notification(&manager, "MAINPID="), format!("MAINPID={new}\nREADY=1"));
    wait_for("the old process to exit", || is_dead(old).then_some(()));
    assert_eq!(fixture.answered_by(), new);
    assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), new.to_string());
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), new.to_string());
    assert!(locked(&lock));
    keep_alive.wait_for_more(5).await;
    let samples: Vec<Sample> =
        keep_alive.stop().await.into_iter().chain(new_connections.stop().await).collect();
    let failed = failures(&samples);
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:#?}", failed.len(), samples.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_restart_kills_the_successor_and_releases_everything() {
    let mut fixture = Fixture::start(|_, cmd| {
        cmd.args(["--ready-timeout-ms", "60000"]);
    });
    fixture.set_mode("hang");
    let control = fixture.path("control");
    let restart =
        tokio::spawn(async move { Client::connect(control).await.unwrap().restart(PATIENCE * 3).await });
    wait_for("the successor to hang", || std::fs::read_to_string(fixture.path("mode.hung")).ok());
    let hung: u32 =
        field(&std::fs::read_to_string(fixture.path("mode.hung")).unwrap(), "pid").parse().unwrap();
    assert!(!is_dead(hung));

    kill(Pid::from_raw(fixture.pid as i32), Signal::SIGTERM).unwrap();
    let err = restart.await.unwrap().expect_err("the restart is aborted");
    assert!(err.to_string().contains("restart aborted: the service is stopping"), "{err}");
    fixture.stdout.wait(&format!("exit pid={} stopped by signal SIGTERM", fixture.pid));
    assert!(fixture.first.wait().unwrap().success());
    assert!(is_dead(hung), "the successor outlived the stop");
    assert!(!fixture.path("state/.lifeline.lock").exists(), "the lock file is left behind");
    assert!(!fixture.path("control").exists(), "the control socket is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_and_udp_listeners_pass_to_the_successor_and_only_a_stop_removes_the_socket_file() {
    let mut fixture = Fixture::start(|dir, cmd| {
        cmd.arg("--unix").arg(dir.join("plain.sock")).arg("--udp");
    });
    let plain = fixture.path("plain.sock");
    let inode = std::fs::metadata(&plain).unwrap().ino();
    let udp_addr = fixture.udp.unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(PATIENCE)).unwrap();
    let echo = |udp: &std::net::UdpSocket| {
        udp.send_to(b"ping", udp_addr).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = udp.recv_from(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let get_unix = |path: &Path| {
        use std::io::{Read as _, Write as _};
        let mut conn = std::os::unix::net::UnixStream::connect(path).unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    };
    assert_eq!(echo(&udp), format!("pid={}", fixture.pid));
    assert!(get_unix(&plain).contains(&format!("pid={} ", fixture.pid)));

    for _ in 0..3 {
        let old = fixture.pid;
        let new = fixture.restart().await.unwrap();
        wait_for("the old process to exit", || is_dead(old).then_some(()));
        // The same socket file (never removed, never rebound) and the same UDP port.
        assert_eq!(std::fs::metadata(&plain).unwrap().ino(), inode, "the unix socket file was replaced");
        assert!(get_unix(&plain).contains(&format!("pid={new} ")));
        assert_eq!(echo(&udp), format!("pid={new}"));
    }
    kill(Pid::from_raw(fixture.pid as i32), Signal::SIGTERM).unwrap();
    fixture.stdout.wait(&format!("exit pid={} stopped", fixture.pid));
    wait_for("the last process to exit", || is_dead(fixture.pid).then_some(()));
    assert!(!plain.exists(), "a stop leaves the unix socket file behind");
}

/// One message on the fake service manager's socket, with the descriptors it carried.
fn recv_with_fds(socket: &UnixDatagram) -> (String, Vec<std::os::fd::OwnedFd>) {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 16]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg =
        recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).unwrap();
    let mut fds = Vec::new();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors for this message; nothing else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { std::os::fd::OwnedFd::from_raw_fd(r) }));
        }
    }
    let len = msg.bytes;
    (String::from_utf8_lossy(&buf[..len]).into_owned(), fds)
}

/// Starts the fixture as systemd would with a non-empty fd store: `fds` at 3, 4, ... under
/// `names`, `LISTEN_PID` set to the new process's own pid (by a shell that then execs it).
fn start_with_fd_store(dir: &Path, notify: &Path, fds: &[&std::os::fd::OwnedFd], names: &str) -> Child {
    use std::os::unix::process::CommandExt as _;
    // Copies far above 3 + fds.len() first, so that moving one into place never overwrites another.
    let high: Vec<std::os::fd::OwnedFd> = fds
        .iter()
        .map(|fd| {
            nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).map(|raw| {
                // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
                unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) }
            })
        })
        .collect::<Result<_, _>>()
        .unwrap();
    let raw: Vec<i32> = high.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", FIXTURE]);
    cmd.arg("--state-dir").arg(dir.join("state"));
    cmd.arg("--control").arg(dir.join("control"));
    cmd.arg("--cert").arg(dir.join("cert.pem"));
    cmd.arg("--key").arg(dir.join("key.pem"));
    cmd.arg("--mode-file").arg(dir.join("mode"));
    cmd.arg("--fd-store");
    cmd.env("NOTIFY_SOCKET", notify).env("LISTEN_FDS", fds.len().to_string()).env("LISTEN_FDNAMES", names);
    cmd.env("RUST_LOG", "info").env_remove("LIFELINE_FAIL_AT");
    // SAFETY: only dup2(2) between fork and exec (async-signal-safe, no allocation): the stored
    // descriptors land on 3, 4, ... without FD_CLOEXEC, as systemd passes them. The numbers were
    // collected before the fork, all at 100 or above, so no dup2 overwrites a later source.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(high);
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fd_store_keeps_the_listener_and_the_state_across_a_stop_and_start() {
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let manager = UnixDatagram::bind(&notify_path).unwrap();
    manager.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut fixture = Fixture::start(|_, cmd| {
        cmd.arg("--fd-store").env("NOTIFY_SOCKET", &notify_path);
    });
    // READY=1, then the listener into the store under its name (never the lock, never the
    // control socket).
    let mut stored = Vec::new();
    loop {
        let (msg, fds) = recv_with_fds(&manager);
        if msg.starts_with("FDSTORE=1") {
            assert_eq!(msg, "FDSTORE=1\nFDNAME=https\n");
            stored.extend(fds);
            break;
        }
    }
    for _ in 0..5 {
        fixture.answered_by();
    }
    kill(Pid::from_raw(fixture.pid as i32), Signal::SIGTERM).unwrap();
    let state = loop {
        let (msg, mut fds) = recv_with_fds(&manager);
        if msg.starts_with("FDSTORE=1") {
            assert_eq!(msg, "FDSTORE=1\nFDNAME=lifeline-state\n");
            break fds.pop().unwrap();
        }
    };
    assert!(fixture.first.wait().unwrap().success());
    // Down, but the kept listener still queues connections: this one is served by the next start.
    let config = lifeline_tests::https::client_config(&fixture.ca.cert_der);
    let https = fixture.https;
    let waiting = std::thread::spawn(move || lifeline_tests::https::get(https, &config, "/"));

    let mut next =
        start_with_fd_store(fixture.dir.path(), &notify_path, &[&stored[0], &state], "https:lifeline-state");
    let stdout = Lines::new(next.stdout.take().unwrap());
    let _stderr = Lines::new(next.stderr.take().unwrap());
    let line = stdout.wait("ready pid=");
    assert_eq!(field(&line, "generation"), "2", "the generation continues: {line}");
    assert_eq!(field(&line, "https"), fixture.https.to_string(), "the same listener");
    let answer = waiting.join().unwrap().expect("the connection made while down is served");
    assert!(answer.contains("generation=2 served=6"), "the count continues: {answer}");
    // The state is the new process's now: out of the store.
    loop {
        let (msg, _) = recv_with_fds(&manager);
        if msg.starts_with("FDSTOREREMOVE=1") {
            assert_eq!(msg, "FDSTOREREMOVE=1\nFDNAME=lifeline-state\n");
            break;
        }
    }
    kill(Pid::from_raw(next.id() as i32), Signal::SIGKILL).unwrap();
    next.wait().unwrap();

    // A stored "state" that is not a sealed memfd is never trusted: dropped, generation 1.
    let forged = std::fs::File::create(fixture.path("forged")).unwrap();
    let forged: std::os::fd::OwnedFd = forged.into();
    let mut next =
        start_with_fd_store(fixture.dir.path(), &notify_path, &[&stored[0], &forged], "https:lifeline-state");
    let stdout = Lines::new(next.stdout.take().unwrap());
    let stderr = Lines::new(next.stderr.take().unwrap());
    assert_eq!(field(&stdout.wait("ready pid="), "generation"), "1");
    stderr.wait("dropping the state kept in the fd store");
    kill(Pid::from_raw(next.id() as i32), Signal::SIGKILL).unwrap();
    next.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_crashes_in_the_rollback_window_hands_the_service_back_to_its_predecessor() {
    let mut fixture = Fixture::start(|dir, cmd| {
        cmd.args(["--rollback-window-ms", "60000"]).arg("--pid-file").arg(dir.join("service.pid"));
    });
    let (old, lock, pid_file) =
        (fixture.pid, fixture.path("state/.lifeline.lock"), fixture.path("service.pid"));
    let keep_alive = fixture.load(true);
    let new_connections = fixture.load(false);
    keep_alive.wait_for_more(20).await;
    new_connections.wait_for_more(20).await;

    fixture.set_mode("crash-after-ready-ms=1000");
    let new = fixture.restart().await.expect("the successor becomes ready");
    // The successor serves alone (the predecessor stands by and accepts nothing)...
    lifeline_tests::wait_until("the successor to answer", || fixture.try_answered_by() == Some(new)).await;
    // ... crashes a second after it became ready, and the predecessor serves again.
    lifeline_tests::wait_until("the successor to crash", || is_dead(new)).await;
    lifeline_tests::wait_until("the predecessor to serve again", || fixture.try_answered_by() == Some(old))
        .await;
    fixture.stderr.wait("rolled back: the successor died, this process serves again");
    assert_eq!(fixture.status_pid().await, old, "the control socket is the predecessor's again");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), old.to_string());
    assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), old.to_string());
    assert!(locked(&lock));
    keep_alive.wait_for_more(20).await;
    new_connections.wait_for_more(20).await;

    // It can hand over again later.
    fixture.set_mode("ok");
    let next = fixture.restart().await.expect("a good successor takes over after the rollback");
    lifeline_tests::wait_until("the next successor to answer", || fixture.answered_by() == next).await;
    keep_alive.wait_for_more(20).await;
    let samples: Vec<Sample> =
        keep_alive.stop().await.into_iter().chain(new_connections.stop().await).collect();
    // Only requests in flight on the crashed process may fail: at most one per client (4).
    let failed = failures(&samples);
    assert!(failed.len() <= 4, "{} of {} requests failed: {failed:#?}", failed.len(), samples.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_rollback_window_the_predecessor_drains_and_exits() {
    let mut fixture = Fixture::start(|_, cmd| {
        cmd.args(["--rollback-window-ms", "1000"]);
    });
    let old = fixture.pid;
    let new = fixture.restart().await.unwrap();
    // Standing by: alive, but every new connection goes to the successor.
    for _ in 0..20 {
        assert_eq!(fixture.answered_by(), new);
    }
    fixture.stdout.wait(&format!("exit pid={old} handed over to pid {new}"));
    lifeline_tests::wait_until("the predecessor to exit", || is_dead(old)).await;
    assert_eq!(fixture.answered_by(), new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_generations_are_capped_and_a_drain_that_never_ends_is_cut_at_its_deadline() {
    let mut fixture = Fixture::start(|_, cmd| {
        cmd.args(["--max-retired", "2", "--drain-ms", "60000"]);
    });
    let config = lifeline_tests::https::client_config(&fixture.ca.cert_der);
    let mut holders = Vec::new();
    let mut refused = Vec::new();
    for round in 0..5 {
        // A request that keeps the current process draining for a minute once it hands over.
        let (addr, config) = (fixture.https, config.clone());
        let mark = fixture.stdout.mark();
        holders
            .push(std::thread::spawn(move || lifeline_tests::https::get(addr, &config, "/delay?ms=60000")));
        fixture.stdout.wait_after(mark, &format!("delay pid={}", fixture.pid));
        match fixture.restart().await {
            Ok(_) => {}
            Err(reason) => refused.push((round, reason)),
        }
        let alive = fixture.pids[..fixture.pids.len() - 1].iter().filter(|pid| !is_dead(**pid)).count();
        assert!(alive <= 2, "{alive} retired generations alive after restart {round}");
    }
    assert_eq!(fixture.pids.len(), 3, "two restarts went through: {:?}", fixture.pids);
    assert_eq!(refused.len(), 3, "{refused:?}");
    for (_, reason) in &refused {
        assert!(
            reason.ends_with("restart refused: 2 earlier generations are still draining (limit 2)"),
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_executable_installed_at_the_path_takes_over_and_a_broken_one_is_refused() {
    let bin = tempfile::tempdir().unwrap();
    let exe = bin.path().join("service-server");
    std::fs::copy(FIXTURE, &exe).unwrap();
    let install = |source: &Path| {
        let staged = bin.path().join(".staged");
        std::fs::copy(source, &staged).unwrap();
        std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::rename(&staged, &exe).unwrap();
    };
    let mut fixture = Fixture::start_exe(&exe, |_, cmd| {
        cmd.arg("--exe-watch");
    });
    fixture.stderr.wait("restarting when the executable changes");
    install(Path::new(FIXTURE));
    let line = fixture.stdout.wait("generation=2");
    let second: u32 = field(&line, "pid").parse().unwrap();
    assert_eq!(std::fs::read_link(format!("/proc/{second}/exe")).unwrap(), exe);
    fixture.pids.push(second);

    let broken = bin.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").unwrap();
    let mark = fixture.stderr.mark();
    install(&broken);
    fixture.stderr.wait_after(mark, "the new executable did not take over");
    assert_eq!(fixture.answered_by(), second, "the running generation serves on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_fd_gets_a_newline_once_ready_and_is_closed() {
    use std::io::Read as _;
    let (read, write) = nix::unistd::pipe().unwrap();
    let write_fd = std::os::fd::AsRawFd::as_raw_fd(&write);
    let mut fixture = Fixture::start(|_, cmd| {
        cmd.arg("--ready-fd").arg(write_fd.to_string());
    });
    drop(write);
    let mut got = Vec::new();
    std::fs::File::from(read).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"\n", "one newline, then the descriptor is closed");
    // A successor (which s6 and dinit do not know) does not need it.
    fixture.restart().await.unwrap();
}
