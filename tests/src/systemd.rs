//! The unit files of `deploy/systemd/` under a real systemd.
//!
//! [`Prepared::new`] copies the shipped units into a temporary unit directory and rewrites only
//! what must differ on a test machine — binary paths, certificate paths, the port, the service
//! user, the state directory's name (`/var/lib` is the machine's own) — and checks that every
//! rewrite applied and that no line still points at an installed path, so the units under test
//! cannot drift from the shipped ones. The only addition is a drop-in per service sending its
//! output to a file in the temporary directory (the sandbox has no journal).
//! [`Prepared::run`] runs a program inside `systemd-sandbox` (`../shared/tools/`), which boots
//! the machine's systemd as PID 1 of private namespaces knowing only those units; the program
//! (a driver: `systemd-scenario`, `bench-systemd --inside`) reads the [`Deployment`] and talks
//! to that systemd with the helpers here ([`systemctl`], [`show`], [`unit_processes`]).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::certs::{LeafSpec, TestCa};

/// Exit status of `systemd-sandbox` when it cannot boot here (not root, no systemd, ...).
pub const CANNOT_BOOT: i32 = 77;
/// The socket unit of the socket-activated pair.
pub const SOCKET: &str = "https-server.socket";
/// The service of the socket-activated pair.
pub const SERVICE: &str = "https-server.service";
/// The variant that binds its port itself.
pub const STANDALONE: &str = "https-server-standalone.service";
/// A program that knows nothing of lifeline, under `lifeline supervise --notify`.
pub const SUPERVISED: &str = "my-daemon.service";
/// The control socket the units give the server (`${RUNTIME_DIRECTORY}`): `/run` is private to
/// each sandbox, so it needs no rewriting.
pub const CONTROL: &str = "/run/https-server/control.sock";
/// The supervised program's pid file (`${RUNTIME_DIRECTORY}` of [`SUPERVISED`]).
pub const DAEMON_PIDFILE: &str = "/run/my-daemon/my-daemon.pid";
/// How often a wait re-checks what `systemctl` says.
const POLL: Duration = Duration::from_millis(20);

/// The workspace root (the parent of the `tests` package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Where `systemd-sandbox` is: `$LIFELINE_SYSTEMD_SANDBOX`, else `shared/tools/systemd-sandbox`
/// in the workspace root's parent (`../shared/tools/` of a checkout) or, for a worktree kept
/// deeper, in one of that directory's ancestors.
pub fn sandbox() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("LIFELINE_SYSTEMD_SANDBOX") {
        return Ok(PathBuf::from(path));
    }
    let root = workspace_root();
    root.parent()
        .into_iter()
        .flat_map(Path::ancestors)
        .map(|dir| dir.join("shared/tools/systemd-sandbox"))
        .find(|path| path.is_file())
        .with_context(|| format!("no shared/tools/systemd-sandbox beside {} or above it", root.display()))
}

/// Whether this process runs as root (the sandbox needs it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The programs a deployment runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The example server (`examples/https-server`): linked (or copied) to the unit's
    /// `ExecStart=` path, which a test may replace.
    pub server: PathBuf,
    /// The `lifeline` CLI.
    pub lifeline: PathBuf,
    /// A program that sends `READY=1` through libsystemd and waits (`keepalive-notify`), run as
    /// `my-daemon`; `None` leaves `my-daemon.service` out.
    pub notify_program: Option<PathBuf>,
}

/// What a driver inside the sandbox needs to know about a prepared deployment; written as JSON
/// to `deployment.json` in the temporary directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    /// The temporary directory: `units/`, `bin/`, `etc/`, the services' logs.
    pub dir: PathBuf,
    /// The unit directory the sandbox's systemd reads.
    pub units: PathBuf,
    /// The port the units serve on (127.0.0.1 reaches it).
    pub port: u16,
    /// The CA that issued the served certificate (DER).
    pub ca: PathBuf,
    /// `ExecStart=`'s binary: replace it (by rename) to install a new version.
    pub server: PathBuf,
    /// The real example server, to install again.
    pub server_source: PathBuf,
    /// The `lifeline` CLI.
    pub lifeline: PathBuf,
    /// The server's state directory (`StateDirectory=`, under `/var/lib`).
    pub state_dir: PathBuf,
    /// Where the supervised program writes `ok` once its `READY=1` went through.
    pub daemon_done: PathBuf,
    /// Where the supervised program writes `ready` just before it sends `READY=1`.
    pub daemon_started: PathBuf,
}

impl Deployment {
    /// Reads the deployment a [`Prepared`] wrote.
    pub fn read(path: &Path) -> anyhow::Result<Deployment> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// The address to send requests to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The state directory's lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join(".lifeline.lock")
    }

    /// The CA certificate, DER, as a trust root.
    pub fn ca_der(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&self.ca).with_context(|| format!("read {}", self.ca.display()))
    }

    /// Replaces the text `from` by `to` in the prepared unit `unit` (a benchmark's baseline
    /// variant); fails if `from` is not there.
    pub fn edit_unit(&self, unit: &str, from: &str, to: &str) -> anyhow::Result<()> {
        let path = self.units.join(unit);
        let text = std::fs::read_to_string(&path)?;
        ensure!(text.contains(from), "{unit} has no {from:?}");
        std::fs::write(&path, text.replace(from, to))?;
        Ok(())
    }

    /// The last `lines` lines of every service's output, for a failure report.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return out };
        let mut logs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            let _ = writeln!(out, "--- {} (last {} lines)\n{}", log.display(), tail.len(), tail.join("\n"));
        }
        out
    }
}

/// A deployment of `deploy/systemd/` in a temporary directory; removes the state directory it
/// gave the units (under the machine's `/var/lib`) when dropped.
#[derive(Debug)]
pub struct Prepared {
    /// What the driver reads.
    pub deployment: Deployment,
    /// `deployment.json`.
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prepared {
    /// Copies `deploy/systemd/*` into a new temporary unit directory, rewriting paths, port and
    /// user (see the module docs); writes a CA and a served certificate, links the binaries
    /// into place and writes `deployment.json`.
    pub fn new(binaries: &Binaries) -> anyhow::Result<Prepared> {
        let dir = tempfile::Builder::new().prefix("lifeline-systemd-").tempdir()?;
        let root = dir.path().to_path_buf();
        let (units, bin, etc) = (root.join("units"), root.join("bin"), root.join("etc"));
        for d in [&units, &bin, &etc] {
            std::fs::create_dir(d)?;
        }
        let ca = TestCa::new("lifeline systemd test CA");
        let leaf = ca.issue(&LeafSpec::new(1));
        leaf.write(&etc.join("cert.pem"), &etc.join("key.pem"));
        std::fs::write(etc.join("ca.der"), &ca.cert_der)?;

        let server = bin.join("https-server");
        link_or_copy(&binaries.server, &server)?;
        let daemon = bin.join("my-daemon");
        let daemon_done = root.join("daemon-done");
        let daemon_started = root.join("daemon-started");
        if let Some(program) = &binaries.notify_program {
            // A program that knows nothing of lifeline: READY=1 through libsystemd's sd_notify
            // (exec: same pid), then it waits.
            let script = format!(
                "#!/bin/sh\nexec '{}' --via libsystemd --status serving --started '{}' --done '{}'\n",
                program.display(),
                daemon_started.display(),
                daemon_done.display()
            );
            std::fs::write(&daemon, script)?;
            std::fs::set_permissions(&daemon, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }

        let port = free_port()?;
        // Unique: /var/lib is the machine's own, shared by sandboxes running side by side.
        let state_name = format!(
            "lifeline-systemd-test-{}-{}",
            std::process::id(),
            root.file_name().and_then(OsStr::to_str).unwrap_or("x").trim_start_matches("lifeline-systemd-")
        );
        let rules: Vec<(String, String)> = vec![
            ("/usr/local/bin/https-server".into(), path_str(&server)?),
            ("/usr/local/bin/lifeline".into(), path_str(&binaries.lifeline)?),
            ("/usr/local/bin/my-daemon".into(), path_str(&daemon)?),
            ("/etc/https-server/".into(), format!("{}/", path_str(&etc)?)),
            (":8443".into(), format!(":{port}")),
            ("StateDirectory=https-server".into(), format!("StateDirectory={state_name}")),
            ("User=https-server".into(), "User=root".into()),
            ("Group=https-server".into(), "Group=root".into()),
            ("User=my-daemon".into(), "User=root".into()),
            ("Group=my-daemon".into(), "Group=root".into()),
        ];
        let mut used = vec![false; rules.len()];
        let shipped = workspace_root().join("deploy/systemd");
        let mut names: Vec<String> = std::fs::read_dir(&shipped)
            .with_context(|| format!("read {}", shipped.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".service") || n.ends_with(".socket"))
            .collect();
        names.sort();
        ensure!(names.len() >= 4, "deploy/systemd has only {names:?}");
        for name in &names {
            if name == SUPERVISED && binaries.notify_program.is_none() {
                continue;
            }
            let text = std::fs::read_to_string(shipped.join(name))?;
            let text = rewrite(&text, &rules, &mut used);
            check_rewritten(name, &text)?;
            std::fs::write(units.join(name), text)?;
            if name.ends_with(".service") {
                // The one addition: output to a file (no journal in the sandbox).
                let dropin = units.join(format!("{name}.d"));
                std::fs::create_dir(&dropin)?;
                let log = root.join(format!("{name}.log"));
                std::fs::write(
                    dropin.join("sandbox-output.conf"),
                    format!(
                        "[Service]\nStandardOutput=append:{0}\nStandardError=append:{0}\n",
                        log.display()
                    ),
                )?;
            }
        }
        let unused: Vec<&str> =
            rules.iter().zip(&used).filter(|(_, used)| !**used).map(|((from, _), _)| from.as_str()).collect();
        let unused: Vec<&str> = unused
            .into_iter()
            .filter(|from| binaries.notify_program.is_some() || !from.contains("my-daemon"))
            .collect();
        ensure!(
            unused.is_empty(),
            "the shipped units no longer contain {unused:?}: update the rewrite rules"
        );

        let deployment = Deployment {
            dir: root.clone(),
            units,
            port,
            ca: etc.join("ca.der"),
            server,
            server_source: binaries.server.clone(),
            lifeline: binaries.lifeline.clone(),
            state_dir: Path::new("/var/lib").join(state_name),
            daemon_done,
            daemon_started,
        };
        let config = root.join("deployment.json");
        std::fs::write(&config, serde_json::to_string_pretty(&deployment)?)?;
        Ok(Prepared { deployment, config, _dir: dir })
    }

    /// Runs `program args` inside a `systemd-sandbox` that knows only these units, and returns
    /// its output. Status [`CANNOT_BOOT`] means the sandbox could not boot (its reason is on
    /// stderr).
    pub fn run(&self, program: &Path, args: &[&OsStr]) -> anyhow::Result<Output> {
        let sandbox = sandbox()?;
        Command::new(&sandbox)
            .arg(&self.deployment.units)
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", sandbox.display()))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.deployment.state_dir);
    }
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?;
    ensure!(!text.contains(char::is_whitespace), "{text} contains white space: cannot go in a unit");
    Ok(text.to_owned())
}

/// Applies every rule to every line, recording which ones applied.
fn rewrite(text: &str, rules: &[(String, String)], used: &mut [bool]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut line = line.to_owned();
        for ((from, to), used) in rules.iter().zip(used.iter_mut()) {
            if line.contains(from.as_str()) {
                line = line.replace(from.as_str(), to);
                *used = true;
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// No setting of a rewritten unit may still point at an installed path, the shipped port or
/// user.
fn check_rewritten(name: &str, text: &str) -> anyhow::Result<()> {
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for installed in [
            "/usr/local/",
            "/etc/https-server",
            "/var/lib/",
            ":8443",
            "StateDirectory=https-server",
            "User=https-server",
            "Group=https-server",
            "User=my-daemon",
            "Group=my-daemon",
        ] {
            ensure!(!line.contains(installed), "{name}: {line:?} was not rewritten");
        }
    }
    Ok(())
}

/// Hard-links `from` to `to` (copies it where a link is impossible), so that a test can
/// replace `to` by rename without touching `from`.
fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    // `install(1)` in a child: a file this process had open for writing could be inherited by a
    // child another thread forks, and an exec of it would fail with "Text file busy".
    let status = Command::new("install").arg("-m").arg("755").arg(from).arg(to).status()?;
    ensure!(status.success(), "install {} {}: {status}", from.display(), to.display());
    Ok(())
}

/// A port that was free a moment ago (bind port 0, close).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `systemctl ARGS`; its output, whatever the status.
pub fn systemctl(args: &[&str]) -> anyhow::Result<Output> {
    Command::new("systemctl").args(args).stdin(Stdio::null()).output().context("run systemctl")
}

/// `systemctl ARGS`, which must succeed; its stdout.
pub fn systemctl_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = systemctl(args)?;
    ensure!(
        out.status.success(),
        "systemctl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemctl show -p P1,P2,... UNIT` as a map.
pub fn show(unit: &str, properties: &[&str]) -> anyhow::Result<BTreeMap<String, String>> {
    let text = systemctl_ok(&["show", "-p", &properties.join(","), unit])?;
    Ok(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

/// One property of `unit`.
pub fn property(unit: &str, name: &str) -> anyhow::Result<String> {
    show(unit, &[name])?.remove(name).with_context(|| format!("systemctl show has no {name} for {unit}"))
}

/// `MainPID` of `unit` (0: none).
pub fn main_pid(unit: &str) -> anyhow::Result<u32> {
    let text = property(unit, "MainPID")?;
    text.parse().with_context(|| format!("MainPID={text}"))
}

/// Polls `check` (every 20 ms) until it returns `Some`, for at most `patience`.
pub fn wait_until<T>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {patience:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `unit` is `active`/`running`; returns its `MainPID`.
pub fn wait_running(unit: &str, patience: Duration) -> anyhow::Result<u32> {
    wait_until(&format!("{unit} to be active and running"), patience, || {
        let props = show(unit, &["ActiveState", "SubState", "MainPID"])?;
        let running = props.get("ActiveState").is_some_and(|s| s == "active")
            && props.get("SubState").is_some_and(|s| s == "running");
        let pid: u32 = props.get("MainPID").and_then(|p| p.parse().ok()).unwrap_or(0);
        Ok((running && pid != 0).then_some(pid))
    })
}

/// The processes (pids as this namespace sees them) whose cgroup is `control_group` (the
/// unit's `ControlGroup`, e.g. `/system.slice/https-server.service`), in any hierarchy: read
/// from `/proc/*/cgroup`, which works on cgroup v1 and v2 alike.
pub fn unit_processes(control_group: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path().join("cgroup")) else { continue };
        let member = text.lines().any(|line| {
            line.splitn(3, ':')
                .nth(2)
                .is_some_and(|path| path == control_group || path.ends_with(control_group))
        });
        if member && !is_dead(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

pub use crate::proc::is_dead;

/// `lifeline status --socket CONTROL`: the pid and generation the server reports.
pub fn lifeline_status(lifeline: &Path) -> anyhow::Result<(u32, u64)> {
    let out = Command::new(lifeline).args(["status", "--socket", CONTROL]).stdin(Stdio::null()).output()?;
    ensure!(out.status.success(), "lifeline status: {}", String::from_utf8_lossy(&out.stderr).trim());
    let value: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("lifeline status: not JSON")?;
    let pid = value["pid"].as_u64().context("lifeline status: no pid")?;
    let generation = value["generation"].as_u64().context("lifeline status: no generation")?;
    Ok((pid as u32, generation))
}

/// The inode of the socket listening on `port` (IPv4, any address), from `/proc/net/tcp`.
pub fn listener_inode(port: u16) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|row| {
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...; st 0A = LISTEN.
        let cols: Vec<&str> = row.split_whitespace().collect();
        let local_port = cols.get(1)?.rsplit_once(':')?.1;
        let listening = cols.get(3) == Some(&"0A");
        (listening && u16::from_str_radix(local_port, 16).ok()? == port).then(|| cols.get(9)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_records_which_rules_applied() {
        let rules = vec![("/a".to_owned(), "/b".to_owned()), ("/nowhere".to_owned(), "/z".to_owned())];
        let mut used = vec![false; 2];
        assert_eq!(rewrite("ExecStart=/a/c\n# z\n", &rules, &mut used), "ExecStart=/b/c\n# z\n");
        assert_eq!(used, [true, false]);
    }

    #[test]
    fn an_installed_path_left_in_a_setting_is_refused() {
        assert!(check_rewritten("u", "ExecStart=/usr/local/bin/x\n").is_err());
        assert!(
            check_rewritten("u", "# ExecStart=/usr/local/bin/x\nUser=root\nRuntimeDirectory=https-server\n")
                .is_ok()
        );
        assert!(check_rewritten("u", "StateDirectory=https-server\n").is_err());
    }
}
