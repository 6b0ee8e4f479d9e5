//! `lifeline-fault`: the cross-crate fault-injection suite behind `cargo xtask fault`.
//!
//! Each scenario attacks the real binaries (the `lifeline` CLI, the example HTTPS server) with a
//! real fault — a full disk, a read-only directory, too few file descriptors, a successor that
//! is stopped mid-start, a killed supervisor, an orphan holding a lock, broken certificate files —
//! and checks that what must survive does. One line per scenario: PASS, FAIL (with why) or SKIP
//! (with why: e.g. mounting a tmpfs needs root). Exits 1 if any scenario failed.
//!
//! Usage: `lifeline-fault --lifeline PATH --server PATH [--only NAME]`

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
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let (Some(lifeline), Some(server)) = (value("--lifeline"), value("--server")) else {
        eprintln!("usage: lifeline-fault --lifeline PATH --server PATH [--only NAME]");
        return ExitCode::from(2);
    };
    let only = value("--only");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let suite = Suite { lifeline: lifeline.into(), server: server.into() };

    let scenarios: &[(&str, Scenario)] = &[
        ("full disk while writing the lock file", Suite::full_disk_lock_file),
        ("read-only state directory", Suite::read_only_state_dir),
        ("fd limit too low for control connections", Suite::fd_limit),
        ("successor SIGSTOPped mid-start", Suite::stopped_successor),
        ("cert file replaced by a directory, a dangling symlink, 10 MB of garbage", Suite::broken_cert_files),
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
        let dir = tempfile::tempdir()?;
        let binary = dir.path().join("https-server");
        std::fs::copy(&suite.server, &binary)?;
        let ca = TestCa::new("fault CA");
        let leaf = ca.issue(&LeafSpec::new(1).sans(&["localhost"]));
        leaf.write(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
        std::fs::create_dir(dir.path().join("state"))?;
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
            .arg(dir.path().join("state"))
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .context("start the example server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
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

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
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
