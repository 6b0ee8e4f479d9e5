//! `lifeline supervise --probe` against real servers: a liveness probe restarts a server that
//! answers 500, hangs, or stops answering; a failing startup probe fails the start (backoff
//! applies); a readiness probe (HTTP, HTTPS, TCP, command) gates readiness without restarting.
//! Readiness is read through the supervisor's control socket (`lifeline status`, exit 0 or 3).

use std::process::{Child, Command, Stdio};

use lifeline_tests::lines::Lines;
use lifeline_tests::{lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const TARGET: &str = env!("CARGO_BIN_EXE_probe-target");

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Probed {
    sup: Child,
    stderr: Lines,
    dir: tempfile::TempDir,
}

impl Probed {
    /// `lifeline supervise --control … ARGS -- SERVICE` (`{port}`, `{dir}` filled in).
    fn start(args: &[&str], service: &[&str], port: u16) -> Probed {
        let dir = tempfile::tempdir().unwrap();
        let fill = |a: &&str| {
            a.replace("{port}", &port.to_string()).replace("{dir}", &dir.path().display().to_string())
        };
        let mut sup = Command::new(lifeline_bin())
            .arg("supervise")
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .args(args.iter().map(fill))
            .arg("--")
            .args(service.iter().map(fill))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Lines::new(sup.stderr.take().unwrap());
        Probed { sup, stderr, dir }
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }

    /// `lifeline status`: its exit code and JSON (`None` before the socket exists).
    fn status(&self) -> Option<(i32, serde_json::Value)> {
        let socket = self.dir.path().join("control.sock");
        if !socket.exists() {
            return None;
        }
        let out = Command::new(lifeline_bin()).arg("status").arg("--socket").arg(&socket).output().unwrap();
        Some((out.status.code()?, serde_json::from_slice(&out.stdout).ok()?))
    }

    /// Waits until the service is up (`lifeline status` exits 0); its pid.
    fn wait_up(&self, what: &str) -> u64 {
        wait_for(what, || self.status().filter(|(code, _)| *code == 0).and_then(|(_, s)| s["pid"].as_u64()))
    }

    fn stop(mut self) {
        kill(Pid::from_raw(self.sup.id() as i32), Signal::SIGTERM).unwrap();
        let status = wait_for("the supervisor to exit", || self.sup.try_wait().unwrap());
        assert!(status.success(), "stderr: {:?}", self.stderr.all());
    }
}

#[test]
fn a_liveness_probe_restarts_a_server_that_answers_500_hangs_or_stops_answering() {
    let port = free_port();
    let probed = Probed::start(
        &["--probe", "liveness,interval=100ms,timeout=300ms,failures=2:http://127.0.0.1:{port}/healthz"],
        &[TARGET, "--port", "{port}", "--mode-file", "{dir}/mode"],
        port,
    );
    let mut pid = probed.wait_up("the server to be up");
    for (round, bad) in ["500", "hang", "refuse"].into_iter().enumerate() {
        let mark = probed.stderr.mark();
        probed.set_mode(bad);
        probed.stderr.wait_after(mark, "stopping the service: its liveness probe failed");
        probed.set_mode("ok");
        let new = wait_for(&format!("a new server after {bad}"), || {
            probed
                .status()
                .filter(|(code, s)| *code == 0 && s["pid"].as_u64() != Some(pid))
                .and_then(|(_, s)| s["pid"].as_u64())
        });
        let (_, s) = probed.status().unwrap();
        assert!(s["restarts"].as_u64() >= Some(round as u64 + 1), "after {bad}: {s}");
        pid = new;
    }
    let said = probed.stderr.all().join("\n");
    assert!(said.contains("answered 500"), "{said}");
    assert!(said.contains("no answer within 300ms"), "{said}");
    assert!(said.contains("Connection refused") || said.contains("closed without answering"), "{said}");
    probed.stop();
}

#[test]
fn a_failing_startup_probe_fails_the_start_and_backoff_applies() {
    let port = free_port();
    let probed = Probed::start(
        &["--probe", "startup,interval=100ms,timeout=300ms,failures=3:http://127.0.0.1:{port}/healthz"],
        &[TARGET, "--port", "{port}", "--mode-file", "{dir}/mode"],
        port,
    );
    probed.set_mode("500");
    // Three starts without delay fail their startup probe; the next waits: backing off, not up.
    let (code, s) = wait_for("the supervisor to back off", || {
        probed.status().filter(|(_, s)| s["state"] == "backing_off")
    });
    assert_eq!(code, 3, "{s}");
    assert!(s["restarts"].as_u64() >= Some(2) && s["backoff_until"].is_u64(), "{s}");
    assert_eq!(s["last_exit"], "killed by SIGTERM", "{s}");
    // Until it passes the service is never ready.
    probed.set_mode("ok");
    probed.wait_up("a start whose startup probe passes");
    probed.stop();
}

#[test]
fn readiness_probes_of_every_kind_gate_readiness_without_restarting() {
    let port = free_port();
    let probed = Probed::start(
        &["--probe", "readiness,interval=100ms,failures=1:http://127.0.0.1:{port}/ready"],
        &[TARGET, "--port", "{port}", "--mode-file", "{dir}/mode"],
        port,
    );
    let pid = probed.wait_up("ready");
    probed.set_mode("500");
    let (_, s) = wait_for("not ready", || probed.status().filter(|(code, _)| *code == 3));
    assert_eq!((s["pid"].as_u64(), &s["state"], &s["ready"]), (Some(pid), &"running".into(), &false.into()));
    probed.set_mode("ok");
    assert_eq!(probed.wait_up("ready again"), pid, "a readiness probe never restarts");
    probed.stop();

    // A command probe: ready once a file exists.
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    let probe = format!("readiness,interval=50ms:exec:test -e {}", flag.display());
    let probed = Probed::start(&["--probe", &probe], &["sleep", "600"], 0);
    let (code, _) = wait_for("a first status", || probed.status());
    assert_eq!(code, 3, "not ready before the file exists");
    std::fs::write(&flag, "").unwrap();
    probed.wait_up("ready once the command passes");
    probed.stop();

    // TCP and HTTPS (certificate not verified, as Kubernetes' probes) against the example server.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let ca = lifeline_tests::certs::TestCa::new("probe CA");
    ca.issue(&lifeline_tests::certs::LeafSpec::new(1))
        .write(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let server = lifeline_tests::https_server_bin().display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let service = [
        &server,
        "--listen",
        &listen,
        "--cert",
        &file("cert.pem"),
        "--key",
        &file("key.pem"),
        "--state-dir",
        &file("state"),
    ];
    for probe in [
        "readiness,interval=100ms:tcp:127.0.0.1:{port}",
        "readiness,interval=100ms:https://localhost:{port}/",
    ] {
        let probed = Probed::start(&["--probe", probe], &service, port);
        probed.wait_up(&format!("ready by {probe}"));
        probed.stop();
    }
}

#[test]
fn probes_that_make_no_sense_are_usage_errors_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let touch = format!("touch {}; sleep 600", marker.display());
    for (probes, says) in [
        (&["--probe", "liveness:http://127.0.0.1/\r\nX: y"][..], "the path contains"),
        (&["--probe", "sometimes:tcp:x:1"][..], "unknown role"),
        (&["--probe", "liveness:tcp:x:1", "--probe", "liveness:tcp:y:2"][..], "more than one liveness probe"),
    ] {
        let out = Command::new(lifeline_bin())
            .arg("supervise")
            .args(probes)
            .args(["--", "sh", "-c", &touch])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(matches!(out.status.code(), Some(1 | 2)), "{probes:?}: {out:?}");
        assert!(stderr.contains(says), "{probes:?}: {stderr}");
        assert!(!marker.exists(), "{probes:?}: the command was started");
    }
}
