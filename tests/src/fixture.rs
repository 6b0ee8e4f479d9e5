//! What the tests that start the `service-server` fixture share (directly: `service.rs`; under
//! `lifeline supervise`: `supervise_generations.rs`): its files, its arguments, its environment,
//! load against it, and what its output says.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::certs::{LeafSpec, TestCa};
use crate::lines::Lines;
use crate::load::{Load, LoadConfig, Sample};

/// The value of `key=` in a line of `key=value` words (the fixtures' and the example server's
/// start lines); panics naming the line when it has none.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// The failed samples of a load, one line each.
pub fn failures(samples: &[Sample]) -> Vec<String> {
    samples.iter().filter_map(|s| s.outcome.as_ref().err().map(|e| format!("at {:?}: {e}", s.at))).collect()
}

/// Prints what a process said, for a test that is failing (call from `Drop`).
pub fn echo_if_panicking(stdout: &Lines, stderr: &Lines) {
    if std::thread::panicking() {
        eprintln!("--- stdout:\n{}", stdout.all().join("\n"));
        eprintln!("--- stderr:\n{}", stderr.all().join("\n"));
    }
}

/// Removes what the test runner's own environment could pass to a server started under test
/// (a service manager's sockets, an injected fault) and logs at `info`.
pub fn clean_env(cmd: &mut Command) {
    for var in ["NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LIFELINE_FAIL_AT"] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info");
}

/// The files of a `service-server`: a temporary directory with a pair from a CA of its own
/// (`cert.pem`, `key.pem`), an empty `state/`, and the `mode` file it reads.
pub struct ServerFiles {
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The CA that issued the pair.
    pub ca: TestCa,
}

impl ServerFiles {
    /// A new directory and pair (CA named `ca_name`).
    pub fn new(ca_name: &str) -> ServerFiles {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = TestCa::new(ca_name);
        ca.issue(&LeafSpec::new(1)).write(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
        std::fs::create_dir(dir.path().join("state")).expect("the state directory");
        ServerFiles { dir, ca }
    }

    /// `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The fixture's arguments for these files, with the control socket `control` (a name in
    /// the directory).
    pub fn server_args(&self, control: &str) -> Vec<OsString> {
        let mut args = Vec::new();
        for (flag, name) in [
            ("--state-dir", "state"),
            ("--control", control),
            ("--cert", "cert.pem"),
            ("--key", "key.pem"),
            ("--mode-file", "mode"),
        ] {
            args.push(flag.into());
            args.push(self.path(name).into_os_string());
        }
        args
    }

    /// Makes the next process of the fixture misbehave with `mode` (read at its start).
    pub fn set_mode(&self, mode: &str) {
        std::fs::write(self.path("mode"), mode).expect("the mode file");
    }

    /// The roots a client trusts.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.ca.cert_der.clone())]
    }

    /// Two workers of HTTPS load on `addr` (`localhost`), on keep-alive connections or new ones.
    pub fn load(&self, addr: std::net::SocketAddr, keep_alive: bool) -> Load {
        Load::start(&LoadConfig {
            addr,
            server_name: "localhost".to_owned(),
            roots: self.roots(),
            workers: 2,
            keep_alive,
            path: "/".to_owned(),
            pause: Duration::ZERO,
        })
    }
}
