//! `lifeline-fault`: the cross-crate fault-injection suite behind `cargo xtask fault`.
//!
//! Each scenario attacks the real binaries (the `lifeline` CLI, the example HTTPS server) with a
//! real fault — a full disk, a read-only directory, too few file descriptors, a successor that
//! is stopped mid-start, a killed supervisor, an orphan holding a lock, broken certificate files —
//! and checks that what must survive does. One line per scenario: PASS, FAIL (with why) or SKIP
//! (with why: e.g. mounting a tmpfs needs root). Exits 1 if any scenario failed, or if one was
//! skipped while the `CI` environment variable is set (CI runs as root with every tool installed).
//!
//! Usage: `lifeline-fault --lifeline PATH --server PATH [--only NAME]`. The fixture
//! `fault-lock-holder` is expected next to this program's own executable (`cargo xtask fault`
//! builds both). The keepalive scenarios run this program itself in a few roles (a service that
//! floods `NOTIFY_SOCKET`, one that names a stranger with `MAINPID=`, a bystander that records
//! every signal it gets): see `roles`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use lifeline_tests::certs::{Leaf, LeafSpec, TestCa};
use lifeline_tests::https::{KeepAlive, client_config, get, presented};
use lifeline_tests::load::{Load, LoadConfig};
use lifeline_tests::proc::session_members;
use lifeline_tests::{PATIENCE, load::parse_answer};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rustls::ClientConfig;

/// Why a scenario did not run.
struct Skip(String);

type Outcome = anyhow::Result<Result<String, Skip>>;
type Scenario = fn(&Suite) -> Outcome;
/// Replaces a file with something broken.
type Attack = dyn Fn(&Path) -> std::io::Result<()>;

struct Suite {
    lifeline: PathBuf,
    server: PathBuf,
    /// The `fault-lock-holder` fixture.
    lock_holder: PathBuf,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The roles this program plays inside its own scenarios (a service, a bystander).
    if let Some(code) = roles::run(&args) {
        return code;
    }
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let (Some(lifeline), Some(server)) = (value("--lifeline"), value("--server")) else {
        eprintln!("usage: lifeline-fault --lifeline PATH --server PATH [--only NAME]");
        return ExitCode::from(2);
    };
    let only = value("--only");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lock_holder =
        std::env::current_exe().map(|exe| exe.with_file_name("fault-lock-holder")).unwrap_or_default();
    let suite = Suite { lifeline: lifeline.into(), server: server.into(), lock_holder };

    let scenarios: &[(&str, Scenario)] = &[
        ("full disk while writing the lock file", Suite::full_disk_lock_file),
        ("full disk while writing the pid file", Suite::full_disk_pid_file),
        ("read-only state directory", Suite::read_only_state_dir),
        ("fd limit too low for control connections", Suite::fd_limit),
        ("successor SIGSTOPped mid-start", Suite::stopped_successor),
        ("SIGKILL of the supervisor: the service survives and is re-adopted", Suite::supervisor_killed),
        ("SIGKILL of the supervisor with --die-with-supervisor", Suite::supervisor_killed_service_dies),
        ("orphaned grandchild holding the state-dir lock", Suite::orphan_holds_lock),
        ("cert file replaced by a directory, a dangling symlink, 10 MB of garbage", Suite::broken_cert_files),
        ("a FIFO and a 2 GiB sparse file swapped in as the certificate", Suite::fifo_and_sparse_cert),
        ("the lock file deleted under its holder", Suite::lock_file_deleted_under_holder),
        ("1000 concurrent `lifeline restart` requests", Suite::restart_storm),
        ("SIGSTOP of the old process during its drain", Suite::old_process_stopped_while_draining),
        ("full disk during the state transfer", Suite::full_disk_during_state_transfer),
        ("a tampered state file", Suite::tampered_state_file),
        ("a notify-datagram flood", Suite::notify_flood),
        ("MAINPID= naming an unrelated process, then a watchdog timeout", Suite::mainpid_unrelated),
    ];
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, scenario) in scenarios {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let started = Instant::now();
        let outcome = scenario(&suite);
        let took = started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(detail)) => {
                passed += 1;
                println!("fault: PASS  {name} ({took:.1} s): {detail}");
            }
            Ok(Err(Skip(why))) => {
                skipped += 1;
                println!("fault: SKIP  {name}: {why}");
            }
            Err(err) => {
                failed += 1;
                println!("fault: FAIL  {name} ({took:.1} s): {err:#}");
            }
        }
    }
    println!("fault: {passed} passed, {failed} failed, {skipped} skipped");
    println!("fault: {passed} held / {} tried", passed + failed);
    // CI runs as root on a fresh machine with every tool installed: nothing may skip there, or a
    // scenario could stop running without anybody noticing.
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0");
    if skipped > 0 && in_ci {
        println!("fault: {skipped} scenario(s) skipped with CI set: every scenario must run in CI");
        return ExitCode::FAILURE;
    }
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A tmpfs mounted for one scenario, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> anyhow::Result<Result<Tmpfs, Skip>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Err(Skip("mounting a tmpfs needs root".into())));
        }
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Ok(Err(Skip("mount -t tmpfs is not permitted here".into())));
        }
        Ok(Ok(Tmpfs { dir }))
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system until writes fail with ENOSPC.
    fn fill(&self) -> anyhow::Result<()> {
        let status = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", self.path().join("filler").display()))
            .stderr(Stdio::null())
            .status()?;
        ensure!(!status.success(), "dd did not run out of space");
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// The example server, started from a copy of its binary (so a scenario can replace the file).
struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    tls: Arc<ClientConfig>,
    ca: TestCa,
    stderr: PathBuf,
}

impl Server {
    fn start(suite: &Suite, extra: &[&str], prlimit_nofile: Option<u32>) -> anyhow::Result<Server> {
        Server::start_in(suite, extra, prlimit_nofile, None)
    }

    /// [`Server::start`] with the state directory at `state` instead of in the server's temp dir.
    fn start_in(
        suite: &Suite,
        extra: &[&str],
        prlimit_nofile: Option<u32>,
        state: Option<&Path>,
    ) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let binary = dir.path().join("https-server");
        std::fs::copy(&suite.server, &binary)?;
        let ca = TestCa::new("fault CA");
        let leaf = ca.issue(&LeafSpec::new(1).sans(&["localhost"]));
        leaf.write(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
        let state = if let Some(state) = state {
            state.to_path_buf()
        } else {
            std::fs::create_dir(dir.path().join("state"))?;
            dir.path().join("state")
        };
        let stderr = dir.path().join("stderr.log");
        let mut command = match prlimit_nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--cert"])
            .arg(dir.path().join("cert.pem"))
            .arg("--key")
            .arg(dir.path().join("key.pem"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .context("start the example server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        // Kept open (and drained) for the successors, which print their own start line: a closed
        // pipe would make that print fail.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        // https-server: pid=<pid> generation=<n> listening on <addr>
        let addr: SocketAddr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("server did not start: {line:?}"))?;
        let tls = client_config(&ca.cert_der);
        let pid = child.id();
        Ok(Server { child, pid, addr, dir, tls, ca, stderr })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `GET /` on a new connection → (pid, generation).
    fn answer(&self) -> anyhow::Result<(u32, u64)> {
        let body = get(self.addr, &self.tls, "/")?;
        let (pid, generation, _) = parse_answer(&body).with_context(|| format!("bad answer {body:?}"))?;
        Ok((pid, generation))
    }

    fn control(&self) -> String {
        self.path("control.sock").display().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Replaces the executable at the server's path, atomically; returns the original's new name.
    fn replace_binary(&self, contents: &[u8]) -> anyhow::Result<PathBuf> {
        let binary = self.path("https-server");
        let saved = self.path("https-server.good");
        std::fs::rename(&binary, &saved)?;
        let tmp = self.path("https-server.tmp");
        std::fs::write(&tmp, contents)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &binary)?;
        Ok(saved)
    }

    fn restore_binary(&self, saved: &Path) -> anyhow::Result<()> {
        std::fs::rename(saved, self.path("https-server"))?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        ensure!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

use lifeline_tests::proc::{alive, children, ppid, read_pid};

/// The pid that holds the `flock` on `file`, from `/proc/locks`. Looking takes no lock: a probe
/// with `flock -n` would, for an instant, and a service acquiring the lock at that instant would
/// find it held and exit 75.
fn lock_holder(file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(file).ok()?;
    let id = format!("{:02x}:{:02x}:{}", libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino());
    // 1: FLOCK  ADVISORY  WRITE 12345 fe:00:10248354 0 EOF
    std::fs::read_to_string("/proc/locks").ok()?.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str()))
            .then(|| fields.get(4)?.parse().ok())?
    })
}

/// Tells a helper thread to stop when dropped (also when a scenario fails half-way).
#[derive(Default)]
struct StopFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `lifeline supervise ARGS -- CMD`, its stderr in a log file. When dropped, a supervisor still
/// running gets `SIGKILL`, and so does the process group of a service its pid file still names
/// (after a clean stop there is none: this is for scenarios that failed half-way).
struct Supervise {
    child: Child,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Supervise {
    fn start(
        suite: &Suite,
        log: &Path,
        pid_file: &Path,
        args: &[&str],
        cmd: &[&Path],
    ) -> anyhow::Result<Supervise> {
        let child = Command::new(&suite.lifeline)
            .arg("supervise")
            .arg("--pidfile")
            .arg(pid_file)
            .args(args)
            .arg("--")
            .args(cmd)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("start lifeline supervise")?;
        Ok(Supervise { child, log: log.to_path_buf(), pid_file: pid_file.to_path_buf() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a line of its stderr containing `needle`; returns it.
    fn wait_log(&self, needle: &str) -> anyhow::Result<String> {
        let mut found = None;
        wait_until(&format!("the supervisor to log {needle:?}"), || {
            found = self.log().lines().find(|l| l.contains(needle)).map(str::to_owned);
            found.is_some()
        })
        .with_context(|| format!("its stderr so far: {}", self.log()))?;
        found.context("found")
    }

    /// Waits for the pid file to name a live process other than `not`.
    fn wait_pid(&self, not: Option<u32>) -> anyhow::Result<u32> {
        let mut pid = None;
        wait_until("the pid file to name the service", || {
            pid = read_pid(&self.pid_file).filter(|p| Some(*p) != not && alive(*p));
            pid.is_some()
        })
        .with_context(|| format!("supervisor stderr: {}", self.log()))?;
        pid.context("pid")
    }

    /// SIGKILLs the supervisor alone (the service is left as the supervisor left it).
    fn sigkill(&mut self) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM: must exit 0 within [`PATIENCE`] having removed the pid file.
    fn stop(mut self) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM)?;
        let mut status = None;
        wait_until("the supervisor to exit after SIGTERM", || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        })?;
        ensure!(status.is_some_and(|s| s.success()), "exit status {status:?} after SIGTERM: {}", self.log());
        ensure!(!self.pid_file.exists(), "the pid file is still there after a clean stop");
        Ok(())
    }
}

impl Drop for Supervise {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // The service leads its own process group.
        if let Some(pid) = read_pid(&self.pid_file) {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

impl Suite {
    fn lifeline(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(&self.lifeline).args(args).stdin(Stdio::null()).output()?)
    }

    /// `lifeline lock` on a file system with no space left: a clear one-line error or success,
    /// never a panic, and no lock file left behind either way.
    fn full_disk_lock_file(&self) -> Outcome {
        let fs = match Tmpfs::mount("size=64k,nr_inodes=64")? {
            Ok(fs) => fs,
            Err(skip) => return Ok(Err(skip)),
        };
        let dir = fs.path().join("state");
        std::fs::create_dir(&dir)?;
        fs.fill()?;
        let out = self.lifeline(&["lock", &dir.display().to_string(), "--", "true"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!stderr.contains("panicked"), "lifeline lock panicked: {stderr}");
        ensure!(stderr.lines().count() <= 1, "more than one line on stderr: {stderr}");
        ensure!(!dir.join(".lifeline.lock").exists(), "a lock file was left behind");
        let code = out.status.code();
        ensure!(matches!(code, Some(0 | 1)), "unexpected exit status {:?}: {stderr}", out.status);
        Ok(Ok(match code {
            Some(0) => "the lock needs no data blocks: taken and released".to_owned(),
            _ => format!("refused in one line: {}", stderr.trim()),
        }))
    }

    /// `lifeline supervise --pidfile` on a full file system: the service is killed, the restart
    /// cannot write the new pid file. The old pid file must stay complete (a concurrent reader
    /// never sees it empty or partial), the supervisor must keep supervising the new process, and
    /// once space is freed its retry must bring the pid file up to date.
    fn full_disk_pid_file(&self) -> Outcome {
        let fs = match Tmpfs::mount("size=64k,nr_inodes=64")? {
            Ok(fs) => fs,
            Err(skip) => return Ok(Err(skip)),
        };
        let logs = tempfile::tempdir()?;
        let pid_file = fs.path().join("svc.pid");
        let sup = Supervise::start(
            self,
            &logs.path().join("supervise.log"),
            &pid_file,
            &[],
            &[Path::new("sleep"), Path::new("1000")],
        )?;
        let first = sup.wait_pid(None)?;
        let before = std::fs::read(&pid_file)?;
        fs.fill()?;
        let stop = StopFlag::default();
        let reader = std::thread::spawn({
            let (stop, pid_file) = (stop.0.clone(), pid_file.clone());
            move || {
                let (mut reads, mut seen) = (0u64, std::collections::BTreeSet::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    reads += 1;
                    seen.insert(std::fs::read(&pid_file).map_err(|e| e.to_string()));
                }
                (reads, seen)
            }
        });
        kill(Pid::from_raw(first as i32), Signal::SIGKILL)?;
        let logged = sup.wait_log("cannot write pid file")?;
        ensure!(logged.contains("No space left on device"), "another failure: {logged}");
        let second = children(sup.pid()).into_iter().find(|p| *p != first && alive(*p));
        let second = second.with_context(|| format!("the supervisor runs no service: {}", sup.log()))?;
        ensure!(alive(sup.pid()), "the supervisor died: {}", sup.log());
        ensure!(std::fs::read(&pid_file)? == before, "the old pid file changed");
        let mut names: Vec<String> = std::fs::read_dir(fs.path())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        ensure!(names == ["filler", "svc.pid"], "temporary files left behind: {names:?}");
        // Space comes back: the retry (1 s, then 2 s, ...) writes the current pid.
        std::fs::remove_file(fs.path().join("filler"))?;
        let expected = format!("{second}\n").into_bytes();
        wait_until("the retry to write the new pid", || {
            std::fs::read(&pid_file).is_ok_and(|c| c == expected)
        })
        .with_context(|| format!("supervisor stderr: {}", sup.log()))?;
        drop(stop);
        let (reads, seen) = reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))?;
        let allowed = [Ok(before.clone()), Ok(expected)];
        let bad: Vec<_> = seen.iter().filter(|c| !allowed.contains(c)).collect();
        ensure!(bad.is_empty(), "a reader saw {bad:?}");
        sup.stop()?;
        Ok(Ok(format!(
            "restart of {first} → {second} logged `cannot write pid file … No space left on device`; the old \
             file stayed `{first}` ({reads} concurrent reads, never empty or partial), no temp file left, \
             the new service supervised; after freeing space the retry wrote `{second}`"
        )))
    }

    /// `lifeline supervise --state F --pidfile P -- lifeline lock DIR -- sleep 1000`, then SIGKILL of
    /// the supervisor: the service survives; a second supervisor with the same files adopts it (a
    /// second instance would exit 75 on the lock); SIGKILL of the service: the new supervisor
    /// restarts it; SIGTERM: a clean stop.
    fn supervisor_killed(&self) -> Outcome {
        let dir = tempfile::tempdir()?;
        let (state, pid_file, data) =
            (dir.path().join("svc.state"), dir.path().join("svc.pid"), dir.path().join("data"));
        std::fs::create_dir(&data)?;
        let lock_file = data.join(".lifeline.lock");
        let service = [
            self.lifeline.as_path(),
            Path::new("lock"),
            &data,
            Path::new("--"),
            Path::new("sleep"),
            Path::new("1000"),
        ];
        let state_arg = ["--state", state.to_str().context("utf-8 path")?];

        let mut first =
            Supervise::start(self, &dir.path().join("first.log"), &pid_file, &state_arg, &service)?;
        let pid = first.wait_pid(None)?;
        wait_until("the state file to name the service", || {
            keepalive::Snapshot::read(&state).is_ok_and(|s| s.pid == pid)
        })?;
        wait_until("the service to hold the lock", || lock_holder(&lock_file) == Some(pid))?;
        first.sigkill()?;
        ensure!(alive(pid), "the service died with its supervisor");
        ensure!(lock_holder(&lock_file) == Some(pid), "the service lost its lock");

        let second = Supervise::start(self, &dir.path().join("second.log"), &pid_file, &state_arg, &service)?;
        let adopted = second.wait_log("adopted")?;
        ensure!(adopted.contains(&format!("(pid {pid})")), "adopted another pid: {adopted}");
        ensure!(children(second.pid()).is_empty(), "a second instance was started: {}", second.log());
        ensure!(read_pid(&pid_file) == Some(pid), "the pid file no longer names the adopted service");
        ensure!(!second.log().contains("service exited"), "{}", second.log());
        // What a second instance would have met:
        let contender = self.lifeline(&["lock", data.to_str().context("utf-8 path")?, "--", "true"])?;
        ensure!(
            contender.status.code() == Some(75),
            "a second `lifeline lock` was not refused: {contender:?}"
        );

        kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
        let exited = second.wait_log("service exited")?;
        let restarted = second.wait_pid(Some(pid))?;
        ensure!(
            ppid(restarted) == Some(second.pid()),
            "the restarted service is not the new supervisor's child"
        );
        wait_until("the restarted service to hold the lock", || lock_holder(&lock_file) == Some(restarted))?;
        ensure!(alive(restarted), "the restarted service did not stay up (locked out?): {}", second.log());
        second.stop()?;
        ensure!(!alive(restarted), "the service survived the clean stop");
        ensure!(!state.exists(), "the state file survived the clean stop");
        let status = exited.split("status=").nth(1).and_then(|r| r.split(" runtime=").next()).unwrap_or("?");
        Ok(Ok(format!(
            "service {pid} outlived the SIGKILLed supervisor; the next one adopted it (no second instance); \
             its SIGKILL was seen ({status}) and it was restarted as {restarted}; clean stop"
        )))
    }

    /// The same with `--die-with-supervisor`: SIGKILL of the supervisor takes the service down
    /// (it gets the stop signal); the next supervisor finds the state file stale, says so, and
    /// starts the service, which gets the lock.
    fn supervisor_killed_service_dies(&self) -> Outcome {
        let dir = tempfile::tempdir()?;
        let (state, pid_file, data) =
            (dir.path().join("svc.state"), dir.path().join("svc.pid"), dir.path().join("data"));
        std::fs::create_dir(&data)?;
        let lock_file = data.join(".lifeline.lock");
        let service = [
            self.lifeline.as_path(),
            Path::new("lock"),
            &data,
            Path::new("--"),
            Path::new("sleep"),
            Path::new("1000"),
        ];
        let state = state.to_str().context("utf-8 path")?;

        let mut first = Supervise::start(
            self,
            &dir.path().join("first.log"),
            &pid_file,
            &["--die-with-supervisor", "--state", state],
            &service,
        )?;
        let pid = first.wait_pid(None)?;
        wait_until("the service to hold the lock", || lock_holder(&lock_file) == Some(pid))?;
        first.sigkill()?;
        wait_until("the service to die with its supervisor", || !alive(pid))?;
        wait_until("the lock to be released", || lock_holder(&lock_file).is_none())?;

        let second =
            Supervise::start(self, &dir.path().join("second.log"), &pid_file, &["--state", state], &service)?;
        let ignored = second.wait_log("ignoring stale state file")?;
        ensure!(ignored.contains(&format!("pid {pid} is not running")), "{ignored}");
        let started = second.wait_pid(Some(pid))?;
        ensure!(ppid(started) == Some(second.pid()), "the new service is not the supervisor's child");
        wait_until("the new service to hold the lock", || lock_holder(&lock_file) == Some(started))?;
        second.stop()?;
        Ok(Ok(format!(
            "service {pid} died with its SIGKILLed supervisor; the next one ignored the stale state file and started {started}"
        )))
    }

    /// A service crashes (abort) leaving a grandchild that inherited its state-dir lock: the
    /// supervisor must stop the crashed process group before restarting, so the restart gets the
    /// lock instead of exiting 75 forever, and the grandchild is gone.
    fn orphan_holds_lock(&self) -> Outcome {
        ensure!(
            self.lock_holder.exists(),
            "fixture {} not found (cargo xtask fault builds it)",
            self.lock_holder.display()
        );
        let dir = tempfile::tempdir()?;
        let (data, marker, log) =
            (dir.path().join("state"), dir.path().join("crashed"), dir.path().join("runs.log"));
        std::fs::create_dir(&data)?;
        let service = [
            self.lock_holder.as_path(),
            Path::new("--dir"),
            &data,
            Path::new("--marker"),
            &marker,
            Path::new("--log"),
            &log,
        ];
        let sup = Supervise::start(
            self,
            &dir.path().join("supervise.log"),
            &dir.path().join("svc.pid"),
            &[],
            &service,
        )?;
        let runs = |n: usize| {
            let mut lines = Vec::new();
            wait_until(&format!("{n} runs of the service"), || {
                lines =
                    std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_owned).collect();
                lines.len() >= n
            })
            .map(|()| lines.clone())
        };
        let lines = runs(2).with_context(|| format!("supervisor stderr: {}", sup.log()))?;
        let field = |line: &str, key: &str| -> Option<u32> {
            line.split(' ').find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        ensure!(
            lines[0].starts_with("run=1 ") && lines[0].ends_with(" holds=true"),
            "first run: {}",
            lines[0]
        );
        let orphan = field(&lines[0], "grandchild").context("grandchild pid")?;
        ensure!(!lines[1].contains("locked-out"), "the restart was locked out: {}", lines[1]);
        ensure!(
            lines[1].starts_with("run=2 ") && lines[1].ends_with(" holds=true"),
            "second run: {}",
            lines[1]
        );
        let second = field(&lines[1], "pid").context("pid")?;
        ensure!(!alive(orphan), "the orphaned grandchild {orphan} is still running");
        ensure!(alive(second), "the restarted service is not running");
        let crash = sup.wait_log("service exited")?;
        ensure!(crash.contains("SIGABRT"), "{crash}");
        sup.stop()?;
        ensure!(!alive(second), "the service survived the clean stop");
        Ok(Ok(format!(
            "the crash left grandchild {orphan} holding the lock; it was stopped with the crashed group, \
             the restart ({second}) took the lock at once"
        )))
    }

    /// The example server on a read-only state directory: a clear error naming the directory,
    /// exit 1, no panic.
    fn read_only_state_dir(&self) -> Outcome {
        let fs = match Tmpfs::mount("size=64k,ro")? {
            Ok(fs) => fs,
            Err(skip) => return Ok(Err(skip)),
        };
        let dir = tempfile::tempdir()?;
        let ca = TestCa::new("fault CA");
        ca.issue(&LeafSpec::new(1).sans(&["localhost"]))
            .write(&dir.path().join("c.pem"), &dir.path().join("k.pem"));
        let out = Command::new(&self.server)
            .args(["--listen", "127.0.0.1:0", "--cert"])
            .arg(dir.path().join("c.pem"))
            .arg("--key")
            .arg(dir.path().join("k.pem"))
            .arg("--state-dir")
            .arg(fs.path())
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").to_owned();
        ensure!(!stderr.contains("panicked"), "the server panicked: {stderr}");
        ensure!(out.status.code() == Some(1), "exit status {:?} (expected 1): {last}", out.status);
        ensure!(
            last.contains(&fs.path().display().to_string()),
            "the error does not name the directory: {last}"
        );
        Ok(Ok(last))
    }

    /// Too few file descriptors for new control connections: the server keeps serving its
    /// HTTPS connections, does not crash, and recovers once descriptors are free again.
    fn fd_limit(&self) -> Outcome {
        let server = Server::start(self, &[], Some(48))?;
        let mut keep = KeepAlive::connect(server.addr, &server.tls)?;
        keep.get("/")?;
        let mut hogs = Vec::new();
        for _ in 0..100 {
            match std::os::unix::net::UnixStream::connect(server.path("control.sock")) {
                Ok(s) => hogs.push(s),
                Err(_) => break,
            }
        }
        wait_until("the server to run out of descriptors", || fd_count(server.pid) >= 48)?;
        for _ in 0..5 {
            keep.get("/").context("an established connection stopped being served")?;
        }
        ensure!(alive(server.pid), "the server died");
        drop(hogs);
        wait_until("`lifeline status` to work again", || {
            self.lifeline(&["status", "--socket", &server.control()]).is_ok_and(|o| o.status.success())
        })?;
        let (pid, _) = server.answer().context("no new connection after recovery")?;
        ensure!(pid == server.pid, "another process answered");
        Ok(Ok(format!("served throughout at {} fds; control socket recovered", 48)))
    }

    /// A successor that stops itself (SIGSTOP) before becoming ready: `lifeline restart` fails
    /// with "not ready", the stopped process is gone, the old one keeps serving and can then be
    /// restarted for real.
    fn stopped_successor(&self) -> Outcome {
        let server = Server::start(self, &["--ready-timeout", "2s"], None)?;
        let mut keep = KeepAlive::connect(server.addr, &server.tls)?;
        keep.get("/")?;
        let pid_file = server.path("successor.pid");
        let script = format!("#!/bin/sh\necho $$ > {}\nkill -STOP $$\n", pid_file.display());
        let saved = server.replace_binary(script.as_bytes())?;
        let out = self.lifeline(&["restart", "--socket", &server.control()])?;
        server.restore_binary(&saved)?;
        let reason = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        ensure!(out.status.code() == Some(1), "lifeline restart exited {:?}: {reason}", out.status);
        ensure!(reason.contains("not ready"), "the reason does not say 'not ready': {reason}");
        let stopped: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        wait_until("the stopped successor to be gone", || !alive(stopped))?;
        keep.get("/").context("the old process stopped serving its connection")?;
        ensure!(server.answer()?.0 == server.pid, "the old process no longer answers");
        let out = self.lifeline(&["restart", "--socket", &server.control()])?;
        ensure!(out.status.success(), "the next restart failed: {}", String::from_utf8_lossy(&out.stderr));
        // The new process is nobody's child here: stop it, or it outlives the suite.
        let new: u32 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        let _guard = KillOnDrop(vec![new]);
        kill(Pid::from_raw(new as i32), Signal::SIGTERM)?;
        wait_until("the new process to stop", || !alive(new))?;
        Ok(Ok(reason))
    }

    /// The cert file replaced by a directory, a dangling symlink and 10 MB of garbage: each is
    /// refused, the served certificate stays, and a good pair afterwards is picked up.
    fn broken_cert_files(&self) -> Outcome {
        let server = Server::start(self, &[], None)?;
        let cert = server.path("cert.pem");
        let original = presented(server.addr, &server.tls)?;
        let failures = |s: &Server| s.log().matches("certificate reload failed").count();
        let mut seen = failures(&server);
        let attacks: [(&str, &Attack); 3] = [
            ("a directory", &|p| std::fs::create_dir(p)),
            ("a dangling symlink", &|p| std::os::unix::fs::symlink("/nonexistent/cert.pem", p)),
            ("10 MB of garbage", &|p| std::fs::write(p, vec![b'A'; 10 << 20])),
        ];
        for (what, attack) in attacks {
            remove(&cert)?;
            attack(&cert)?;
            wait_until(&format!("the refusal of {what} to be logged"), || failures(&server) > seen)?;
            seen = failures(&server);
            ensure!(
                presented(server.addr, &server.tls)? == original,
                "after {what}, another certificate is served"
            );
            ensure!(alive(server.pid), "the server died after {what}");
        }
        let renewed: Leaf = server.ca.issue(&LeafSpec::new(2).sans(&["localhost"]));
        remove(&cert)?;
        renewed.write(&cert, &server.path("key.pem"));
        wait_until("the renewed certificate to be served", || {
            presented(server.addr, &server.tls).is_ok_and(|der| der == renewed.der)
        })?;
        Ok(Ok("each refused and logged; the old certificate served throughout; the fix picked up".into()))
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// SIGKILLs, when dropped, every process of a scenario still running (successors the driver did
/// not start itself), so that a scenario failing half-way leaves nothing behind.
#[derive(Default)]
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// The process's state letter from `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, ...), if it exists.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// `lifeline` with `args`, spawned with piped output (not waited for).
fn spawn_lifeline(suite: &Suite, args: &[&str]) -> anyhow::Result<Child> {
    Command::new(&suite.lifeline)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start lifeline")
}

/// Waits for `child` to exit (within [`PATIENCE`]).
fn wait_exit(child: &mut Child, what: &str) -> anyhow::Result<std::process::ExitStatus> {
    let mut status = None;
    wait_until(what, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    })?;
    status.context("exit status")
}

/// The inode of `path`, if it exists.
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

impl Suite {
    /// A FIFO and a 2 GiB sparse file swapped in as the certificate. Checked: each refusal is
    /// logged; the original certificate is presented throughout; the loader is not stuck (after
    /// a storm of FIFO/garbage swaps racing its type check, a renewed pair is picked up); the
    /// server still stops on SIGTERM, exit 0 (a loader blocked on a FIFO used to keep a draining
    /// process alive for ever), and leaves no process behind.
    fn fifo_and_sparse_cert(&self) -> Outcome {
        let mut server = Server::start(self, &[], None)?;
        let cert = server.path("cert.pem");
        let original = presented(server.addr, &server.tls)?;
        let failures = |s: &Server| s.log().matches("certificate reload failed").count();
        let mut seen = failures(&server);
        let spare = server.path("spare");
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);

        // A FIFO with a writer that holds it open and never writes.
        nix::unistd::mkfifo(&spare, mode)?;
        let writer = std::fs::OpenOptions::new().read(true).write(true).open(&spare)?;
        std::fs::rename(&spare, &cert)?;
        wait_until("the FIFO's refusal to be logged", || failures(&server) > seen)?;
        seen = failures(&server);
        ensure!(presented(server.addr, &server.tls)? == original, "after the FIFO, another certificate");
        drop(writer);

        // FIFOs without a writer and garbage files, swapped in turn as fast as possible while
        // the server reloads (every 0.6 s under a stream of changes): a load that looks at a
        // garbage file and then opens a FIFO must not block. If one did, the renewed pair below
        // is never picked up. (The race is provoked deterministically in certwatch's unit test;
        // here the real server meets it as an attacker would.)
        let garbage = server.path("garbage");
        // At least 15 000 swaps, and on until a logged refusal shows a reload met them: a fast
        // machine finishes 15 000 inside one reload interval, and a refusal that repeats the
        // last one (the FIFO's) is logged at debug only, so only a reload that met the garbage
        // shows.
        let mut swaps = 0;
        let met = |swaps: u32| swaps.is_multiple_of(1_000) && failures(&server) > seen;
        while swaps < 2_000_000 && (swaps < 15_000 || !met(swaps)) {
            nix::unistd::mkfifo(&spare, mode)?;
            std::fs::rename(&spare, &cert)?;
            std::fs::write(&garbage, "not a certificate")?;
            std::fs::rename(&garbage, &cert)?;
            swaps += 1;
        }
        ensure!(failures(&server) > seen, "no reload was refused during {swaps} swaps");
        ensure!(alive(server.pid), "the server died during the swaps");
        ensure!(presented(server.addr, &server.tls)? == original, "after the swaps, another certificate");
        seen = seen.max(failures(&server));

        // 2 GiB of nothing: refused from its size, neither read nor allocated.
        std::fs::File::create(&spare)?.set_len(2 << 30)?;
        std::fs::rename(&spare, &cert)?;
        wait_until("the sparse file's refusal to be logged", || {
            server.log().contains("larger than the limit")
        })?;
        ensure!(failures(&server) > seen, "the sparse file's refusal was not counted as a failed reload");
        ensure!(
            presented(server.addr, &server.tls)? == original,
            "after the sparse file, another certificate"
        );

        let renewed: Leaf = server.ca.issue(&LeafSpec::new(2).sans(&["localhost"]));
        remove(&cert)?;
        renewed.write(&cert, &server.path("key.pem"));
        wait_until("the renewed certificate to be served", || {
            presented(server.addr, &server.tls).is_ok_and(|der| der == renewed.der)
        })
        .with_context(|| format!("the loader is stuck; server log: {}", server.log()))?;

        kill(Pid::from_raw(server.pid as i32), Signal::SIGTERM)?;
        let status = wait_exit(&mut server.child, "the server to stop on SIGTERM")?;
        ensure!(status.success(), "exit status {status} after SIGTERM");
        ensure!(children(server.pid).is_empty(), "the server left processes behind");
        Ok(Ok(format!(
            "a FIFO with a writer, {swaps} FIFO/garbage swaps and a 2 GiB sparse file refused; the original \
             certificate served throughout; the renewed pair picked up; SIGTERM stopped it (exit 0)"
        )))
    }

    /// An operator (or a tmp cleaner) deletes the lock file under holder A (`lifeline lock DIR --
    /// sleep`); B locks a new file; A is stopped and releases. Checked: B's file is still there
    /// (same inode, B's pid), a third `lifeline lock` is refused with 75, `flock(1)` agrees B
    /// holds it, B's own release removes it, and no `sleep` is left running.
    fn lock_file_deleted_under_holder(&self) -> Outcome {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let lock = data.join(".lifeline.lock");
        let data_arg = data.to_str().context("utf-8 path")?;
        let holder = |name: &str| -> anyhow::Result<Child> {
            Command::new(&self.lifeline)
                .args(["lock", data_arg, "--", "sleep", "1000"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(name))?)
                .spawn()
                .context("start lifeline lock")
        };
        let mut guard = KillOnDrop::default();
        let mut a = holder("a.log")?;
        guard.0.push(a.id());
        wait_until("A to hold the lock", || lock_holder(&lock) == Some(a.id()))?;
        let a_sleep = children(a.id());
        guard.0.extend(&a_sleep);
        std::fs::remove_file(&lock)?;

        let mut b = holder("b.log")?;
        guard.0.push(b.id());
        wait_until("B to lock a new file", || lock_holder(&lock) == Some(b.id()))?;
        let b_file = inode(&lock).context("B's lock file")?;
        let b_sleep = children(b.id());
        guard.0.extend(&b_sleep);

        kill(Pid::from_raw(a.id() as i32), Signal::SIGTERM)?;
        let a_status = wait_exit(&mut a, "A to exit")?;
        ensure!(inode(&lock) == Some(b_file), "A's release unlinked B's lock file");
        ensure!(read_pid(&lock) == Some(b.id()), "the lock file no longer names B");
        let c = self.lifeline(&["lock", data_arg, "--", "true"])?;
        ensure!(c.status.code() == Some(75), "a third holder got in: {c:?}");
        let said = String::from_utf8_lossy(&c.stderr).trim().to_owned();
        ensure!(said.contains(&format!("pid {}", b.id())), "the refusal does not name B: {said}");
        let flock = Command::new("flock").arg("-n").arg(&lock).arg("true").status()?;
        ensure!(flock.code() == Some(1), "flock(1) got the lock B holds: {flock}");

        kill(Pid::from_raw(b.id() as i32), Signal::SIGTERM)?;
        wait_exit(&mut b, "B to exit")?;
        ensure!(!lock.exists(), "B's release left its lock file");
        for pid in a_sleep.iter().chain(&b_sleep) {
            wait_until("the locked commands to be gone", || !alive(*pid))?;
        }
        Ok(Ok(format!(
            "A ({a_status}) released without touching B's file; `lifeline lock` refused with 75 naming B ({said:?}); \
             flock(1) refused; B's release removed it; no command left"
        )))
    }

    /// 1000 `lifeline restart` processes at once against the example server under a keep-alive
    /// load. Checked: every request gets the new pid or one clear line (already in progress,
    /// already handed over, busy); the restarts that ran ran one at a time (the server's log
    /// alternates "started the new process" with its outcome) and each added exactly one
    /// generation; the load saw no failed request; the final process serves, holds no more fds
    /// than the first did at start, and stops cleanly; no process is left behind.
    fn restart_storm(&self) -> Outcome {
        const REQUESTS: usize = 1000;
        let server = Server::start(self, &[], None)?;
        let mut guard = KillOnDrop::default();
        // Once it has answered on both sockets, every descriptor it keeps is open.
        server.answer()?;
        ensure!(self.lifeline(&["status", "--socket", &server.control()])?.status.success(), "no status");
        let baseline = fd_count(server.pid);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let load = {
            let _entered = runtime.enter();
            Load::start(&LoadConfig {
                addr: server.addr,
                server_name: "localhost".to_owned(),
                roots: vec![server.ca.cert_der.clone().into()],
                workers: 4,
                keep_alive: true,
                path: "/".to_owned(),
                pause: Duration::from_millis(5),
            })
        };
        runtime.block_on(load.wait_for_more(10));

        let control = server.control();
        let mut clients = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            clients.push(spawn_lifeline(self, &["restart", "--socket", &control, "--timeout", "120s"])?);
        }
        let (pids, refused, other) = restart_outcomes(clients)?;
        guard.0.extend(&pids);
        let samples = runtime.block_on(load.stop());
        let failed: Vec<&String> = samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
        ensure!(
            other.is_empty(),
            "{} unclear outcomes, e.g. {:?}; {} succeeded, refusals {refused:?}; server log: {}",
            other.len(),
            &other[..other.len().min(3)],
            pids.len(),
            server.log()
        );
        ensure!(!pids.is_empty(), "no restart succeeded; refusals: {refused:?}");
        let distinct: std::collections::BTreeSet<u32> = pids.iter().copied().collect();
        ensure!(distinct.len() == pids.len(), "one new pid was reported twice: {pids:?}");
        ensure!(failed.is_empty(), "{} requests of the load failed, e.g. {:?}", failed.len(), failed.first());

        one_chain(&server.log(), server.pid, &distinct)?;

        let status = self.lifeline(&["status", "--socket", &control])?;
        let status: serde_json::Value = serde_json::from_slice(&status.stdout)
            .with_context(|| format!("status: {}", String::from_utf8_lossy(&status.stderr)))?;
        let final_pid = status["pid"].as_u64().context("status pid")? as u32;
        ensure!(distinct.contains(&final_pid), "status names {final_pid}, not a restarted process");
        ensure!(
            status["generation"].as_u64() == Some(pids.len() as u64 + 1),
            "generation {} after {} restarts",
            status["generation"],
            pids.len()
        );
        let (pid, _) = server.answer()?;
        ensure!(pid == final_pid, "GET / answered by {pid}, not the final process {final_pid}");
        wait_until("the final process's fds to settle", || fd_count(final_pid) <= baseline)
            .with_context(|| format!("{} fds, {baseline} at the first start", fd_count(final_pid)))?;
        let settled = fd_count(final_pid);
        for &old in pids.iter().filter(|p| **p != final_pid).chain([&server.pid]) {
            wait_until("every replaced process to exit", || !alive(old))?;
        }
        kill(Pid::from_raw(final_pid as i32), Signal::SIGTERM)?;
        wait_until("the final process to stop", || !alive(final_pid))?;
        let zombies: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| {
                proc_state(*p) == Some('Z') && ppid(*p).is_some_and(|parent| parent != 1 && alive(parent))
            })
            .collect();
        ensure!(zombies.is_empty(), "unreaped processes: {zombies:?}");
        Ok(Ok(format!(
            "{} restarts ran one at a time (generation {}), refusals {refused:?}; {} load requests, none \
             failed; {} fds at the end ({baseline} at the start)",
            pids.len(),
            pids.len() + 1,
            samples.len(),
            settled
        )))
    }

    /// SIGSTOP of the old process while it drains a slow request after a handover. What must
    /// hold, and is checked: while it is stopped, the new process answers new connections and
    /// `lifeline status` (the old one plays no part in serving any more); after SIGCONT the old
    /// process finishes the slow request (nothing lost) and exits 0; a final stop leaves nothing.
    fn old_process_stopped_while_draining(&self) -> Outcome {
        let mut server = Server::start(self, &["--drain-timeout", "60s"], None)?;
        let mut guard = KillOnDrop::default();
        let old = server.pid;
        let mut keep = KeepAlive::connect(server.addr, &server.tls).context("connect")?;
        let body = keep.get("/").context("first GET")?;
        ensure!(parse_answer(&body).is_some_and(|(pid, _, _)| pid == old), "{body}");
        // In flight on the old process's connection during the whole drain.
        let slow = std::thread::spawn(move || keep.get("/delay?ms=8000"));

        let out = self.lifeline(&["restart", "--socket", &server.control()])?;
        ensure!(out.status.success(), "restart failed: {}", String::from_utf8_lossy(&out.stderr));
        let new: u32 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        guard.0.push(new);
        ensure!(!slow.is_finished(), "the slow request ended before the old process could be stopped");
        kill(Pid::from_raw(old as i32), Signal::SIGSTOP)?;
        wait_until("the old process to be stopped", || proc_state(old) == Some('T'))?;

        for _ in 0..5 {
            let (pid, generation) = server.answer().context("GET / while the old process is stopped")?;
            ensure!(pid == new && generation == 2, "answered by {pid} (generation {generation})");
        }
        let status = self.lifeline(&["status", "--socket", &server.control()])?;
        let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
        ensure!(status["pid"].as_u64() == Some(u64::from(new)), "status: {status}");
        ensure!(proc_state(old) == Some('T'), "the old process was resumed by someone");

        kill(Pid::from_raw(old as i32), Signal::SIGCONT)?;
        let answer = slow.join().map_err(|_| anyhow::anyhow!("the slow client panicked"))?;
        let answer = answer.context("the slow request was lost")?;
        ensure!(parse_answer(&answer).is_some_and(|(pid, _, _)| pid == old), "slow answer: {answer}");
        let exited = wait_exit(&mut server.child, "the old process to finish its drain")?;
        ensure!(exited.success(), "the old process exited with {exited}");
        ensure!(server.answer().context("GET / at the end")?.0 == new, "the new process stopped serving");
        kill(Pid::from_raw(new as i32), Signal::SIGTERM)?;
        wait_until("the new process to stop", || !alive(new))?;
        Ok(Ok(format!(
            "old {old} stopped mid-drain: {new} answered 5 new connections and `lifeline status`; after SIGCONT \
             the slow request was answered by {old}, which exited 0"
        )))
    }

    /// A handover while the state directory's file system is full (the successor's pid goes
    /// into the lock file it adopts). Checked: the restart either succeeds — the successor serves
    /// with the counter carried over, holds the lock — or fails with one line while the old
    /// process serves on with its lock; the lock file is never lost while a process serves, and
    /// a clean stop removes it; no process is left behind.
    fn full_disk_during_state_transfer(&self) -> Outcome {
        let fs = match Tmpfs::mount("size=64k,nr_inodes=64")? {
            Ok(fs) => fs,
            Err(skip) => return Ok(Err(skip)),
        };
        let state = fs.path().join("state");
        std::fs::create_dir(&state)?;
        let server = Server::start_in(self, &[], None, Some(&state))?;
        let mut guard = KillOnDrop::default();
        let lock = state.join(".lifeline.lock");
        for _ in 0..3 {
            server.answer().with_context(|| format!("GET / before the fill: {}", server.log()))?;
        }
        fs.fill()?;
        let out = self.lifeline(&["restart", "--socket", &server.control()])?;
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let leader = match out.status.code() {
            Some(0) => String::from_utf8_lossy(&out.stdout).trim().parse::<u32>()?,
            Some(1) if said.lines().count() == 1 => server.pid,
            _ => anyhow::bail!("lifeline restart: {}: {said}", out.status),
        };
        guard.0.push(leader);
        let body = get(server.addr, &server.tls, "/")
            .with_context(|| format!("GET / after the restart ({said}): {}", server.log()))?;
        let (pid, generation, count) = parse_answer(&body).with_context(|| format!("bad answer {body:?}"))?;
        ensure!(pid == leader, "answered by {pid}, expected {leader}");
        ensure!(count >= 4, "the count counter was lost: {body}");
        ensure!(lock.exists(), "the lock file is gone while {leader} serves");
        let flock = Command::new("flock").arg("-n").arg(&lock).arg("true").status()?;
        ensure!(flock.code() == Some(1), "the state directory is not locked: flock -n {flock}");
        if leader != server.pid {
            wait_until("the old process to exit", || !alive(server.pid))?;
        }
        kill(Pid::from_raw(leader as i32), Signal::SIGTERM)?;
        wait_until("the leader process to stop", || !alive(leader))?;
        ensure!(!lock.exists(), "a clean stop left the lock file");
        Ok(Ok(if leader == server.pid {
            format!("refused in one line ({said}); the old process count on, locked")
        } else {
            format!("handed over to {leader} (generation {generation}, counter carried: {count}); locked")
        }))
    }
}

/// Restarts ran one at a time: every process that became ready names its predecessor in the log
/// (`ready pid=X start=Spawned { predecessor: P }`); each predecessor has at most one, and they
/// form one chain from `first` through exactly the `reported` pids.
fn one_chain(log: &str, first: u32, reported: &std::collections::BTreeSet<u32>) -> anyhow::Result<()> {
    let mut successor_of = std::collections::BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("start=Spawned")) {
        let number = |key: &str| -> Option<u32> {
            let rest = &line[line.find(key)? + key.len()..];
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        };
        let (Some(pid), Some(predecessor)) = (number("ready pid="), number("predecessor: ")) else {
            anyhow::bail!("unreadable log line {line}");
        };
        if let Some(other) = successor_of.insert(predecessor, pid) {
            anyhow::bail!("{predecessor} had two successors ready: {other} and {pid}");
        }
    }
    let mut chain = std::collections::BTreeSet::new();
    let mut at = first;
    while let Some(&next) = successor_of.get(&at) {
        chain.insert(next);
        at = next;
    }
    ensure!(
        &chain == reported && successor_of.len() == chain.len(),
        "the handovers do not form one chain through the reported pids: {successor_of:?}, reported {reported:?}"
    );
    Ok(())
}

/// New pids (exit 0), one-line refusals counted by kind, and anything else.
type RestartOutcomes = (Vec<u32>, std::collections::BTreeMap<&'static str, usize>, Vec<String>);

/// What the `lifeline restart` processes said.
fn restart_outcomes(clients: Vec<Child>) -> anyhow::Result<RestartOutcomes> {
    const REFUSALS: [(&str, &str); 3] = [
        ("restart already in progress", "already in progress"),
        ("already handed over", "already handed over"),
        ("(busy)", "busy"),
    ];
    let mut pids = Vec::new();
    let mut refused = std::collections::BTreeMap::new();
    let mut other = Vec::new();
    for child in clients {
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.trim();
        let refusal = REFUSALS.iter().find(|(text, _)| line.lines().count() == 1 && line.contains(text));
        match (out.status.code(), refusal) {
            (Some(0), _) => {
                pids.push(stdout.parse::<u32>().with_context(|| format!("not a pid: {stdout:?}"))?);
            }
            (Some(1), Some((_, kind))) => *refused.entry(*kind).or_default() += 1,
            _ => other.push(format!("{}: {line}", out.status)),
        }
    }
    Ok((pids, refused, other))
}

/// Children of `pid` that are zombies (exited, not reaped).
fn zombie_children(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|c| std::fs::read_to_string(format!("/proc/{c}/stat")).is_ok_and(|s| s.contains(") Z ")))
        .collect()
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Runs `command` to its end, but kills it after [`PATIENCE`] (a regression must fail the
/// scenario, not hang the suite).
fn output_within(command: &mut Command) -> anyhow::Result<std::process::Output> {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = child.wait();
            anyhow::bail!("still running after {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?)
}

/// A directory the scenario must never see touched: a socket file bound by us and another file.
struct Foreign {
    dir: PathBuf,
    socket: PathBuf,
    _bound: std::os::unix::net::UnixDatagram,
}

impl Foreign {
    fn new(root: &Path) -> anyhow::Result<Foreign> {
        let dir = root.join("not-lifelines/run");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("keep"), "precious")?;
        let socket = dir.join("x.sock");
        let bound = std::os::unix::net::UnixDatagram::bind(&socket)?;
        Ok(Foreign { dir, socket, _bound: bound })
    }

    fn untouched(&self) -> anyhow::Result<()> {
        ensure!(self.socket.exists(), "{} was unlinked", self.socket.display());
        ensure!(
            std::fs::read_to_string(self.dir.join("keep")).is_ok_and(|t| t == "precious"),
            "{} was changed or removed",
            self.dir.join("keep").display()
        );
        Ok(())
    }
}

/// Waits until the supervisor has no zombie child (it reaps them as they come).
fn no_zombies(sup: &Supervise) -> anyhow::Result<()> {
    wait_until("the supervisor to have no zombie child", || zombie_children(sup.pid()).is_empty())
        .with_context(|| format!("zombies: {:?}", zombie_children(sup.pid())))
}

impl Suite {
    /// A state file naming pid 1 (start time 0) and someone else's socket as its notify socket:
    /// the supervisor says the snapshot is stale and starts the service, and neither the socket
    /// nor its directory is touched. A state file others could write is refused in one line,
    /// exit 1, nothing started, and the running service it names is left alone.
    fn tampered_state_file(&self) -> Outcome {
        let dir = tempfile::tempdir()?;
        let foreign = Foreign::new(dir.path())?;
        let (state, pid_file) = (dir.path().join("svc.state"), dir.path().join("svc.pid"));
        let snapshot = keepalive::Snapshot::of_process(
            std::process::id(),
            keepalive::Command::new("sleep").arg("1000"),
        )?;
        let mut value: serde_json::Value = serde_json::from_str(&snapshot.to_json())?;
        value["pid"] = 1.into();
        value["start_time"] = 0.into();
        value["notify_socket"] = foreign.socket.display().to_string().into();
        std::fs::write(&state, value.to_string())?;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600))?;
        let state_arg = state.to_str().context("utf-8 path")?;
        let sup = Supervise::start(
            self,
            &dir.path().join("supervise.log"),
            &pid_file,
            &["--notify", "--state", state_arg],
            &[Path::new("sleep"), Path::new("1000")],
        )?;
        let ignored = sup.wait_log("ignoring stale state file")?;
        ensure!(ignored.contains("pid 1 now belongs to another process"), "{ignored}");
        let pid = sup.wait_pid(None)?;
        ensure!(ppid(pid) == Some(sup.pid()), "the service was not started by the supervisor");
        ensure!(alive(1), "init");
        foreign.untouched()?;

        // A state file others can write: refused, nothing started, the service it names untouched.
        let untrusted = dir.path().join("untrusted.state");
        let other_pid = dir.path().join("other.pid");
        std::fs::write(
            &untrusted,
            keepalive::Snapshot::of_process(pid, keepalive::Command::new("sleep"))?.to_json(),
        )?;
        std::fs::set_permissions(&untrusted, std::fs::Permissions::from_mode(0o666))?;
        let out = output_within(
            Command::new(&self.lifeline)
                .arg("supervise")
                .arg("--state")
                .arg(&untrusted)
                .arg("--pidfile")
                .arg(&other_pid)
                .args(["--", "sleep", "1000"])
                .env_remove("RUST_LOG"),
        )?;
        let refused = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        ensure!(out.status.code() == Some(1), "exit {:?}: {refused}", out.status);
        ensure!(refused.lines().count() == 1, "more than one line: {refused}");
        ensure!(refused.contains("refusing state file") && refused.contains("mode 0666"), "{refused}");
        ensure!(!other_pid.exists(), "a service was started from an untrusted state file");
        ensure!(alive(pid) && read_pid(&pid_file) == Some(pid), "the running service was touched");

        no_zombies(&sup)?;
        sup.stop()?;
        ensure!(!alive(pid), "the service survived the clean stop");
        ensure!(session_members(pid).is_empty(), "left in the service's session: {:?}", session_members(pid));
        foreign.untouched()?;
        Ok(Ok(format!("\"{ignored}\"; the socket and directory it named untouched; \"{refused}\"")))
    }

    /// The service floods `NOTIFY_SOCKET` from its main pid without pause (`STATUS=`, `WATCHDOG=1`,
    /// passed fds, oversized datagrams, bad `MAINPID=`), never stopping: the supervisor keeps up
    /// (the 2 s watchdog never fires, the service is never restarted), its memory and descriptors
    /// stay flat between 50 000 and 200 000 messages, and SIGTERM still stops everything at once.
    fn notify_flood(&self) -> Outcome {
        let dir = tempfile::tempdir()?;
        let (pid_file, marker) = (dir.path().join("svc.pid"), dir.path().join("flooded"));
        let me = std::env::current_exe()?;
        let sup = Supervise::start(
            self,
            &dir.path().join("supervise.log"),
            &pid_file,
            &["--notify", "--watchdog", "2s"],
            &[me.as_path(), Path::new("--flood-notify"), &marker],
        )?;
        let pid = sup.wait_pid(None)?;
        let flooded = |n: u64| {
            wait_until(&format!("{n} messages sent"), || {
                std::fs::read_to_string(&marker)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .is_some_and(|m| m >= n)
            })
        };
        // The fewest descriptors seen in a few looks (one may catch a received fd before it is closed).
        let fds = |pid: u32| (0..5).map(|_| fd_count(pid)).min().unwrap_or(0);
        flooded(50_000).with_context(|| sup.log())?;
        let (rss_before, fds_before) = (rss_kib(sup.pid()).context("VmRSS")?, fds(sup.pid()));
        flooded(200_000).with_context(|| sup.log())?;
        let (rss_after, fds_after) = (rss_kib(sup.pid()).context("VmRSS")?, fds(sup.pid()));
        ensure!(read_pid(&pid_file) == Some(pid) && alive(pid), "the service was restarted: {}", sup.log());
        ensure!(!sup.log().contains("watchdog timeout"), "the supervisor fell behind: {}", sup.log());
        ensure!(fds_after <= fds_before, "descriptors grew from {fds_before} to {fds_after}");
        ensure!(
            rss_after <= rss_before + 8 * 1024,
            "memory grew from {rss_before} KiB to {rss_after} KiB over 150 000 messages"
        );
        no_zombies(&sup)?;
        // Still flooding: a stop must get through.
        sup.stop()?;
        ensure!(!alive(pid), "the flooding service survived the stop");
        ensure!(session_members(pid).is_empty(), "left in the service's session: {:?}", session_members(pid));
        Ok(Ok(format!(
            "200 000+ messages: no restart, VmRSS {rss_before} → {rss_after} KiB, {fds_before} → {fds_after} fds; \
             stopped cleanly mid-flood"
        )))
    }

    /// The service names a stranger — a process in a session of its own that records every
    /// signal it gets — with `MAINPID=`, then stops sending `WATCHDOG=1`. The supervisor ignores
    /// the `MAINPID=`, the watchdog kills and restarts the *service*, a clean stop stops it, and
    /// the stranger never gets a signal (a real-time sentinel signal, delivered after any
    /// standard one still pending, is the only line it records).
    fn mainpid_unrelated(&self) -> Outcome {
        let dir = tempfile::tempdir()?;
        let (pid_file, record) = (dir.path().join("svc.pid"), dir.path().join("signals"));
        let me = std::env::current_exe()?;
        let mut stranger = Command::new(&me)
            .arg("--record-signals")
            .arg(&record)
            .stdin(Stdio::null())
            .spawn()
            .context("start the stranger")?;
        let stranger_pid = stranger.id();
        let result = (|| -> Outcome {
            wait_until("the stranger to record signals", || {
                std::fs::read_to_string(&record).is_ok_and(|t| t == "ready\n")
            })?;
            let stranger_arg = stranger_pid.to_string();
            let sup = Supervise::start(
                self,
                &dir.path().join("supervise.log"),
                &pid_file,
                &["--watchdog", "1s"],
                &[me.as_path(), Path::new("--send-mainpid"), Path::new(&stranger_arg)],
            )?;
            let first = sup.wait_pid(None)?;
            let ignored = sup.wait_log("ignoring MAINPID=")?;
            sup.wait_log("watchdog timeout")?;
            let second = sup.wait_pid(Some(first))?;
            ensure!(second != stranger_pid, "the pid file names the stranger");
            ensure!(!alive(first), "the hung service survived its watchdog timeout");
            no_zombies(&sup)?;
            sup.stop()?;
            ensure!(!alive(second), "the service survived the clean stop");
            ensure!(session_members(second).is_empty(), "left in the service's session");
            // Every signal the stranger got is logged before a real-time one sent after them.
            // (nix has no real-time signals.)
            // SAFETY: kill takes integers; the stranger is our unreaped child, its pid cannot be reused.
            let sent = unsafe { libc::kill(stranger_pid as i32, libc::SIGRTMIN() + 2) };
            ensure!(sent == 0, "cannot send the sentinel: {}", std::io::Error::last_os_error());
            wait_until("the stranger to log the sentinel", || {
                std::fs::read_to_string(&record).is_ok_and(|t| t.ends_with("sentinel\n"))
            })?;
            let got = std::fs::read_to_string(&record)?;
            ensure!(got == "ready\nsentinel\n", "the stranger was signalled: {got:?}");
            ensure!(alive(stranger_pid), "the stranger died");
            let ignored =
                ignored.find("ignoring").map_or(ignored.as_str(), |at| &ignored[at..]).trim().to_owned();
            Ok(Ok(format!(
                "`{ignored}`; the watchdog restarted the service ({first} → {second}); the stranger got no signal"
            )))
        })();
        let _ = stranger.kill();
        let _ = stranger.wait();
        result
    }
}

/// What this program does when it runs as a part of a scenario instead of the driver.
mod roles {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::process::ExitCode;

    use nix::sys::signal::{SigSet, Signal};

    /// Runs the role `args` name, if any (it never returns but by exiting or being killed).
    pub(crate) fn run(args: &[String]) -> Option<ExitCode> {
        match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("--flood-notify"), Some(marker)) => flood_notify(marker),
            (Some("--send-mainpid"), Some(pid)) => send_mainpid(pid),
            (Some("--record-signals"), Some(file)) => record_signals(file),
            _ => return None,
        }
        Some(ExitCode::FAILURE)
    }

    fn no_core_files() {
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: setrlimit reads the struct we pass; failing only leaves core files possible.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &raw const none) };
    }

    fn notify_socket() -> UnixDatagram {
        let path = std::env::var("NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
        let socket = UnixDatagram::unbound().expect("socket");
        socket.connect(path).expect("connect to NOTIFY_SOCKET");
        socket
    }

    fn write_atomic(path: &str, text: &str) {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    /// A service that sends `READY=1`, then datagrams without pause for ever: mostly
    /// `STATUS=…` with `WATCHDOG=1`; every 10th passes an fd, every 100th is oversized, every
    /// 1000th a `MAINPID=` that is not a pid. Writes how many it sent to MARKER every 10 000.
    fn flood_notify(marker: &str) {
        let socket = notify_socket();
        socket.send(b"READY=1").expect("READY=1");
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let fds = [null.as_raw_fd()];
        let oversized = vec![b'x'; 5000];
        for i in 1u64.. {
            let text = format!("STATUS=flood {i}\nWATCHDOG=1");
            let sent = if i % 1000 == 0 {
                socket.send(b"MAINPID=1")
            } else if i % 100 == 0 {
                socket.send(&oversized)
            } else if i % 10 == 0 {
                nix::sys::socket::sendmsg::<()>(
                    socket.as_raw_fd(),
                    &[std::io::IoSlice::new(text.as_bytes())],
                    &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            } else {
                socket.send(text.as_bytes())
            };
            sent.expect("send to NOTIFY_SOCKET");
            if i % 10_000 == 0 {
                write_atomic(marker, &format!("{i}\n"));
            }
        }
    }

    /// A service that names `pid` with `MAINPID=`, says `STATUS=sent`, and then hangs: it never
    /// sends `WATCHDOG=1`.
    fn send_mainpid(pid: &str) {
        no_core_files();
        let socket = notify_socket();
        socket.send(format!("MAINPID={pid}").as_bytes()).expect("MAINPID=");
        socket.send(b"STATUS=sent").expect("STATUS=");
        loop {
            std::thread::park();
        }
    }

    /// A bystander in a session of its own that appends the name of every signal it gets
    /// (all but SIGKILL and SIGSTOP, which it cannot catch: those show as death or a stopped
    /// state) to FILE; `SIGRTMIN+2` is logged as `sentinel`.
    fn record_signals(file: &str) {
        let _ = nix::unistd::setsid();
        let all = SigSet::all();
        all.thread_block().expect("block signals");
        let signals = nix::sys::signalfd::SignalFd::new(&all).expect("signalfd");
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(file).expect("open");
        std::io::Write::write_all(&mut log, b"ready\n").expect("log");
        loop {
            let Ok(Some(info)) = signals.read_signal() else { continue };
            let number = info.ssi_signo as i32;
            let name = if number == libc::SIGRTMIN() + 2 {
                "sentinel".to_owned()
            } else {
                Signal::try_from(number)
                    .map_or_else(|_| format!("signal {number}"), |s| s.as_str().to_owned())
            };
            std::io::Write::write_all(&mut log, format!("{name}\n").as_bytes()).expect("log");
        }
    }
}
