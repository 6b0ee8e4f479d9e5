//! `deploy/container/`: no container engine runs here, so this reads the Dockerfile and the
//! Kubernetes manifest and runs their exact command lines on this machine — the ENTRYPOINT
//! (`lifeline supervise --init …`) with the manifest's container args (which must be the
//! Dockerfile's CMD), the readiness probe's and the HEALTHCHECK's commands, a cert-manager-style
//! secret volume (`..data` symlink swaps) — with only the installed paths and the port rewritten,
//! and checks the numbers that must agree (`terminationGracePeriodSeconds`, preStop, `--grace`,
//! the drain timeout). What ships is what is tested.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lifeline_tests::certs::{Leaf, LeafSpec, TestCa};
use lifeline_tests::lines::Lines;
use lifeline_tests::systemd::workspace_root;
use lifeline_tests::{https_server_bin, lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The server's hard drain deadline after its drain timeout (the example's `--drain-deadline`
/// default), which the grace periods must leave room for.
const HARD_DEADLINE: Duration = Duration::from_secs(10);

fn read(name: &str) -> String {
    std::fs::read_to_string(workspace_root().join("deploy/container").join(name))
        .expect("read the deploy file")
}

/// The JSON array after `prefix` on the first line (trimmed) that starts with it.
fn array_after(text: &str, prefix: &str) -> Vec<String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}"));
    let json = line[prefix.len()..].trim();
    let json = &json[json.find('[').unwrap_or_else(|| panic!("no array on {line:?}"))..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{line:?}: not a JSON array ({e})"))
}

/// The part of `text` from the first line containing `marker` on.
fn from<'a>(text: &'a str, marker: &str) -> &'a str {
    &text[text.find(marker).unwrap_or_else(|| panic!("no {marker:?}"))..]
}

/// The value of `--flag VALUE` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let at = args.iter().position(|a| a == name).unwrap_or_else(|| panic!("no {name} in {args:?}"));
    &args[at + 1]
}

/// `40s` (the deploy files write whole seconds).
fn seconds(text: &str) -> Duration {
    Duration::from_secs(
        text.strip_suffix('s').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{text:?}: not N s")),
    )
}

/// Installed paths and the port → this machine's. Every rule must apply somewhere, and no
/// argument may still name an installed path afterwards.
struct Rewrite {
    rules: Vec<(String, String)>,
}

impl Rewrite {
    fn apply(&self, lines: &[&[String]]) -> Vec<Vec<String>> {
        let mut used = vec![false; self.rules.len()];
        let out: Vec<Vec<String>> = lines
            .iter()
            .map(|args| {
                args.iter()
                    .map(|arg| {
                        let mut arg = arg.clone();
                        for (i, (from, to)) in self.rules.iter().enumerate() {
                            if arg.contains(from.as_str()) {
                                arg = arg.replace(from.as_str(), to);
                                used[i] = true;
                            }
                        }
                        arg
                    })
                    .collect()
            })
            .collect();
        for (i, (from, _)) in self.rules.iter().enumerate() {
            assert!(used[i], "the rewrite of {from:?} no longer applies: update this test with the files");
        }
        for arg in out.iter().flatten() {
            for installed in
                ["/usr/local/", "/etc/https-server", "/var/lib/https-server", "/run/https-server", ":8443"]
            {
                assert!(!arg.contains(installed), "{arg:?} still names {installed}");
            }
        }
        out
    }
}

/// A Kubernetes secret volume: `tls.crt` → `..data/tls.crt`, `..data` → `..<version>`.
fn secret_volume(volume: &Path, version: &str, leaf: &Leaf) {
    let data = volume.join(format!("..{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(data.join("tls.key"), &leaf.key_pem).unwrap();
    let tmp = volume.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        let link = volume.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

fn run(command: &[String]) -> std::process::Output {
    Command::new(&command[0]).args(&command[1..]).output().expect("run the command")
}

#[test]
fn the_dockerfile_and_the_kubernetes_manifest_run_here_as_written() {
    let dockerfile = read("Dockerfile");
    let manifest = read("kubernetes.yaml");
    let entrypoint = array_after(&dockerfile, "ENTRYPOINT ");
    let cmd = array_after(&dockerfile, "CMD ");
    let healthcheck = array_after(from(&dockerfile, "\nHEALTHCHECK "), "HEALTHCHECK ");
    let args = array_after(&manifest, "args:");
    let readiness = array_after(from(&manifest, "readinessProbe:"), "command:");
    let pre_stop = array_after(from(&manifest, "preStop:"), "command:");
    let grace_period: u64 = from(&manifest, "terminationGracePeriodSeconds:")
        .lines()
        .next()
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .expect("terminationGracePeriodSeconds: N");

    // The shape: a non-root user, lifeline in init mode as the entrypoint, the manifest running
    // the image's own command.
    let user = from(&dockerfile, "\nUSER ")
        .lines()
        .nth(1)
        .expect("USER line")
        .trim_start_matches("USER ")
        .to_owned();
    assert!(!user.starts_with("root") && !user.starts_with("0:") && user != "0", "USER {user}");
    assert_eq!(entrypoint[1..4], ["supervise", "--init", "--notify"], "{entrypoint:?}");
    assert_eq!(entrypoint.last().map(String::as_str), Some("--"));
    assert_eq!(args, cmd, "the manifest's container args are the Dockerfile's CMD");
    assert!(manifest.contains("readOnly: true") && manifest.contains("secretName: https-server-tls"));

    // The numbers agree: Kubernetes' SIGKILL comes only after the preStop hook and lifeline's
    // whole grace period, and lifeline's grace covers the server's drain and hard deadline.
    let lifeline_grace = seconds(flag(&entrypoint, "--grace"));
    let drain = seconds(flag(&cmd, "--drain-timeout"));
    assert_eq!(pre_stop[0], "/bin/sleep", "{pre_stop:?}");
    let pre_stop_time = Duration::from_secs(pre_stop[1].parse().expect("preStop: sleep N"));
    assert!(
        lifeline_grace >= drain + HARD_DEADLINE,
        "--grace {lifeline_grace:?} < drain {drain:?} + {HARD_DEADLINE:?}"
    );
    assert!(
        Duration::from_secs(grace_period) >= pre_stop_time + lifeline_grace,
        "terminationGracePeriodSeconds {grace_period} < preStop {pre_stop_time:?} + --grace {lifeline_grace:?}"
    );

    // Run them: the secret volume, the state and runtime directories, a free port.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("container CA");
    let first = ca.issue(&LeafSpec::new(1));
    let volume = dir.path().join("tls");
    secret_volume(&volume, "2026_01_01_00_00_00.1", &first);
    for sub in ["state", "run"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = |p: &str| dir.path().join(p).display().to_string();
    let rewrite = Rewrite {
        rules: vec![
            ("/usr/local/bin/lifeline".into(), lifeline_bin().display().to_string()),
            ("/usr/local/bin/https-server".into(), https_server_bin().display().to_string()),
            ("/etc/https-server/tls".into(), path("tls")),
            ("/var/lib/https-server".into(), path("state")),
            ("/run/https-server".into(), path("run")),
            ("0.0.0.0:8443".into(), format!("127.0.0.1:{port}")),
        ],
    };
    let lines = rewrite.apply(&[&entrypoint, &args, &readiness, &healthcheck]);
    let (container, readiness, healthcheck) =
        (lines[0].iter().chain(&lines[1]).cloned().collect::<Vec<_>>(), &lines[2], &lines[3]);
    let mut init = Command::new(&container[0])
        .args(&container[1..])
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Lines::new(init.stderr.take().unwrap());

    // The readiness probe and Docker's health check say up once the server is ready.
    wait_for("the readiness probe to pass", || run(readiness).status.success().then_some(()));
    assert!(run(healthcheck).status.success());
    // The liveness probe: HTTPS on the port.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = lifeline_tests::https::client_config(&ca.cert_der);
    let answer = lifeline_tests::https::get(addr, &config, "/").expect("the server answers HTTPS");
    assert!(answer.contains("generation=1"), "{answer}");
    assert_eq!(lifeline_tests::https::presented(addr, &config).unwrap(), first.der);

    // cert-manager renews: the secret volume's ..data swap, followed without a restart.
    let second = ca.issue(&LeafSpec::new(2));
    secret_volume(&volume, "2026_02_01_00_00_00.2", &second);
    wait_for("the renewed certificate to be served", || {
        (lifeline_tests::https::presented(addr, &config).ok()? == second.der).then_some(())
    });

    // A handover through the supervisor's socket (its --handover-signal), still ready after it.
    let socket = PathBuf::from(path("run")).join("supervisor.sock");
    let out = Command::new(lifeline_bin()).arg("restart").arg("--socket").arg(&socket).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run(readiness).status.success());
    let answer = lifeline_tests::https::get(addr, &config, "/").unwrap();
    assert!(answer.contains("generation=2"), "{answer}");

    // Kubernetes stops the pod: SIGTERM to PID 1; the server drains and lifeline exits with its
    // status (0), leaving no socket behind.
    kill(Pid::from_raw(init.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_for("the container's init to exit", || init.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "stderr: {:?}", stderr.all());
    assert!(!socket.exists(), "the supervisor's socket is removed");
    assert!(!PathBuf::from(path("run")).join("control.sock").exists(), "the server's socket is removed");
}
