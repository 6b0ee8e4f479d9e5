//! Running the example server for a test: its own temp dir, certificates, output readers, the
//! `lifeline` CLI against its control socket, HTTPS requests and handshakes, process checks.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use lifeline_tests::certs::{Leaf, LeafSpec, TestCa};
pub(crate) use lifeline_tests::lines::Lines;
use lifeline_tests::load::{LoadConfig, parse_answer};
use lifeline_tests::{PATIENCE, https_server_bin, lifeline_bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The serial of leaf certificates the servers start with.
pub(crate) const FIRST_SERIAL: u64 = 0x1001;

pub(crate) use lifeline_tests::fixture::field;

/// A test CA and the files of the pair a server starts with.
pub(crate) struct Pki {
    /// Issues every certificate of the test.
    pub(crate) ca: TestCa,
    /// The pair the server starts with (serial [`FIRST_SERIAL`]).
    pub(crate) first: Leaf,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let ca = TestCa::new("example server test CA");
        let first = ca.issue(&LeafSpec::new(FIRST_SERIAL));
        Pki { ca, first }
    }

    /// The CA as a trust root.
    pub(crate) fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.ca.cert_der.clone())]
    }
}

/// How to start a server; [`Options::start`] starts it.
pub(crate) struct Options {
    dir: tempfile::TempDir,
    pki: Pki,
    exe: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    control: bool,
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, std::ffi::OsString)>,
    /// The program's name at the start of its start line (`https-server`, `axum-server`).
    banner: &'static str,
}

impl Options {
    /// The example binary, a fresh temp dir with the first pair in `cert.pem` + `key.pem`, the
    /// state directory `state/` and the control socket `control`.
    pub(crate) fn new() -> Options {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        pki.first.write(&cert, &key);
        std::fs::create_dir(dir.path().join("state")).unwrap();
        Options {
            dir,
            pki,
            exe: https_server_bin(),
            cert,
            key,
            control: true,
            args: vec![],
            env: vec![],
            banner: "https-server",
        }
    }

    /// The axum example (`examples/axum-server.rs`) instead: same flags, same answers.
    pub(crate) fn axum() -> Options {
        Options {
            exe: lifeline_tests::workspace_binary("examples/axum-server"),
            banner: "axum-server",
            ..Options::new()
        }
    }

    /// The test's temp dir.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn pki(&self) -> &Pki {
        &self.pki
    }

    /// Serve these files instead of `cert.pem` + `key.pem`.
    pub(crate) fn cert_files(mut self, cert: PathBuf, key: PathBuf) -> Options {
        self.cert = cert;
        self.key = key;
        self
    }

    /// Run this executable (a copy of the example, a wrapper) instead of the example binary.
    pub(crate) fn exe(mut self, exe: PathBuf) -> Options {
        self.exe = exe;
        self
    }

    /// No `--control` socket.
    pub(crate) fn without_control(mut self) -> Options {
        self.control = false;
        self
    }

    pub(crate) fn arg(mut self, arg: impl Into<std::ffi::OsString>) -> Options {
        self.args.push(arg.into());
        self
    }

    pub(crate) fn env(mut self, key: &str, value: impl Into<std::ffi::OsString>) -> Options {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// The command that starts the server with `listen` as `--listen`.
    pub(crate) fn command(&self, listen: &str) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(self.server_args(listen));
        self.environment(&mut cmd);
        cmd
    }

    /// The server's arguments (without the executable).
    pub(crate) fn server_args(&self, listen: &str) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--listen".into(), listen.into()];
        args.extend(["--cert".into(), self.cert.clone().into_os_string()]);
        args.extend(["--key".into(), self.key.clone().into_os_string()]);
        args.extend(["--state-dir".into(), self.dir.path().join("state").into_os_string()]);
        if self.control {
            args.extend(["--control".into(), self.dir.path().join("control").into_os_string()]);
        }
        args.extend(self.args.iter().cloned());
        args
    }

    /// A clean environment for the server: nothing inherited from a service manager the test
    /// run may itself be under, predictable logs.
    pub(crate) fn environment(&self, cmd: &mut Command) {
        for var in [
            "NOTIFY_SOCKET",
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "LIFELINE_FDS",
            "LIFELINE_STATE_FD",
            "LIFELINE_READY_FD",
            "LIFELINE_PARENT_PID",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
    }

    /// Starts the server on 127.0.0.1:0 and waits for its start line.
    pub(crate) fn start(self) -> Server {
        let mut cmd = self.command("127.0.0.1:0");
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Server::adopt(self, child)
    }
}

/// A running example server and its successors; every one of them is killed on drop.
pub(crate) struct Server {
    pub(crate) options: Options,
    /// The process the test started (generation 1).
    pub(crate) first: Child,
    pub(crate) stdout: Lines,
    pub(crate) stderr: Lines,
    pub(crate) addr: SocketAddr,
    /// The serving process.
    pub(crate) pid: u32,
    /// Every process that served, in order.
    pub(crate) pids: Vec<u32>,
}

impl Server {
    /// Takes over a spawned server (stdout and stderr piped) and waits for its start line.
    pub(crate) fn adopt(options: Options, mut first: Child) -> Server {
        let stdout = Lines::new(first.stdout.take().unwrap());
        let stderr = Lines::new(first.stderr.take().unwrap());
        Server::from_parts(options, first, stdout, stderr)
    }

    /// Takes over a spawned server whose output is already being read, and waits for its start
    /// line.
    pub(crate) fn from_parts(options: Options, first: Child, stdout: Lines, stderr: Lines) -> Server {
        let mut server =
            Server { options, first, stdout, stderr, addr: ([0, 0, 0, 0], 0).into(), pid: 0, pids: vec![] };
        let line = server.stdout.wait(&format!("{}: pid=", server.options.banner));
        let pid: u32 = field(&line, "pid").parse().unwrap();
        assert_eq!(pid, server.first.id(), "{line}");
        assert_eq!(field(&line, "generation"), "1", "{line}");
        server.addr = line.rsplit_once("listening on ").unwrap().1.parse().unwrap();
        server.pid = pid;
        server.pids.push(pid);
        server
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.options.dir().join(name)
    }

    pub(crate) fn control_path(&self) -> PathBuf {
        self.path("control")
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.path("state").join(".lifeline.lock")
    }

    pub(crate) fn pki(&self) -> &Pki {
        &self.options.pki
    }

    /// Runs the `lifeline` CLI with `args`.
    pub(crate) fn lifeline(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(lifeline_bin());
        cmd.args(args).arg("--socket").arg(self.control_path());
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    /// `lifeline restart`: on success (exit 0, the new pid on stdout) waits for the new
    /// process's start line, checks it and makes it the serving one. A failure must exit 1
    /// with one line on stderr, which is returned.
    pub(crate) fn restart(&mut self) -> Result<u32, String> {
        let out = self.lifeline(&["restart"]);
        let (stdout, stderr) =
            (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
        if out.status.success() {
            assert_eq!(stderr, "", "a successful restart prints nothing on stderr");
            let pid: u32 = stdout.strip_suffix('\n').and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                panic!("lifeline restart printed {stdout:?}, not one pid");
            });
            self.started(pid);
            Ok(pid)
        } else {
            assert_eq!(out.status.code(), Some(1), "lifeline restart: {}: {stderr}", out.status);
            assert_eq!(stdout, "", "a failed restart prints nothing on stdout");
            assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
            Err(stderr.trim_end().to_owned())
        }
    }

    /// Records `pid` as the serving process once its start line shows it took over.
    pub(crate) fn started(&mut self, pid: u32) {
        assert!(!self.pids.contains(&pid), "pid {pid} served before: {:?}", self.pids);
        let line = self.stdout.wait(&format!("{}: pid={pid} ", self.options.banner));
        let generation: usize = field(&line, "generation").parse().unwrap();
        assert_eq!(generation, self.pids.len() + 1, "{line}");
        assert!(line.ends_with(&format!("listening on {}", self.addr)), "{line}");
        self.pid = pid;
        self.pids.push(pid);
    }

    /// `lifeline status` as JSON; it must be one object on one line.
    pub(crate) fn status(&self) -> serde_json::Value {
        let out = self.lifeline(&["status"]);
        assert!(out.status.success(), "lifeline status: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
        let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!(value.is_object(), "{value}");
        value
    }

    /// `GET path` on a new connection: the answer's body, or what failed.
    pub(crate) async fn get(&self, path: &str) -> Result<String, String> {
        let mut conn = Conn::open(self.addr, &self.pki().roots()).await?;
        conn.get(path).await
    }

    /// `GET /` on a new connection, parsed: (pid, generation, served).
    pub(crate) async fn answer(&self) -> (u32, u64, u64) {
        let body = self.get("/").await.expect("GET /");
        parse_answer(&body).unwrap_or_else(|| panic!("unexpected answer {body:?}"))
    }

    /// The serial of the certificate the server presents in a real handshake.
    pub(crate) async fn presented_serial(&self) -> String {
        let conn = Conn::open(self.addr, &self.pki().roots()).await.expect("handshake");
        certwatch::CertInfo::from_der(&conn.leaf).unwrap().serial
    }

    /// A load generator against this server.
    pub(crate) fn load(&self, workers: usize, keep_alive: bool) -> lifeline_tests::load::Load {
        lifeline_tests::load::Load::start(&LoadConfig {
            addr: self.addr,
            server_name: "localhost".to_owned(),
            roots: self.pki().roots(),
            workers,
            keep_alive,
            path: "/".to_owned(),
            pause: std::time::Duration::ZERO,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for pid in &self.pids {
            if !is_dead(*pid) {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
        }
        let _ = self.first.wait();
        if std::thread::panicking() {
            eprintln!("--- server stdout:\n{}", self.stdout.all().join("\n"));
            let stderr = self.stderr.all();
            let tail = &stderr[stderr.len().saturating_sub(80)..];
            eprintln!("--- server stderr (last {} lines):\n{}", tail.len(), tail.join("\n"));
        }
    }
}

/// The serial of a leaf, as a handshake would show it.
pub(crate) fn serial_of(leaf: &Leaf) -> String {
    certwatch::CertInfo::from_der(&leaf.der).unwrap().serial
}

/// One HTTPS keep-alive connection to the server, speaking HTTP/1.1 by hand so that a test
/// knows when a request is on the wire.
pub(crate) struct Conn {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
    /// The leaf certificate the server presented.
    pub(crate) leaf: Vec<u8>,
}

/// A response: its head (status line and headers) and its body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) head: String,
    pub(crate) body: String,
}

impl Response {
    /// Whether the server announced it closes the connection after this response.
    pub(crate) fn closes(&self) -> bool {
        self.head.lines().any(|l| l.eq_ignore_ascii_case("connection: close"))
    }
}

impl Conn {
    /// Connects and completes the TLS handshake, trusting `roots`, as `localhost`.
    pub(crate) async fn open(addr: SocketAddr, roots: &[CertificateDer<'static>]) -> Result<Conn, String> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).map_err(|e| format!("root: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls config: {e}"))?
            .with_root_certificates(store)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
            tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
            let name = ServerName::try_from("localhost").map_err(|e| format!("name: {e}"))?;
            let tls = connector.connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
            Ok(Conn { tls, buf: Vec::new(), leaf: leaf.unwrap_or_default() })
        };
        tokio::time::timeout(PATIENCE, connect).await.map_err(|_| "connect timed out".to_owned())?
    }

    /// Writes `GET path` and flushes it to the socket: when this returns, the request is on the
    /// wire.
    pub(crate) async fn send(&mut self, path: &str) -> Result<(), String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.tls.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        self.tls.flush().await.map_err(|e| format!("flush: {e}"))
    }

    /// Reads the next response (the server always sends a `Content-Length`).
    pub(crate) async fn response(&mut self) -> Result<Response, String> {
        let read = async {
            let head_end = loop {
                if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at;
                }
                self.fill().await?;
            };
            let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| format!("no content-length in {head:?}"))?;
            while self.buf.len() < head_end + 4 + length {
                self.fill().await?;
            }
            let body = String::from_utf8_lossy(&self.buf[head_end + 4..head_end + 4 + length]).into_owned();
            self.buf.drain(..head_end + 4 + length);
            Ok(Response { head, body: body.trim_end().to_owned() })
        };
        tokio::time::timeout(PATIENCE, read).await.map_err(|_| "response timed out".to_owned())?
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        match self.tls.read(&mut chunk).await {
            Ok(0) => Err(format!("connection closed after {} bytes of a response", self.buf.len())),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// `GET path` on this connection: the body of a 200 answer, or what failed.
    pub(crate) async fn get(&mut self, path: &str) -> Result<String, String> {
        self.send(path).await?;
        let response = self.response().await?;
        let status = response.head.lines().next().unwrap_or_default();
        if status.starts_with("HTTP/1.1 200 ") {
            Ok(response.body)
        } else {
            Err(format!("{status}: {}", response.body))
        }
    }
}

pub(crate) use lifeline_tests::proc::is_dead;

/// Reads a pid a fixture script wrote to `path` (which must be there by now).
pub(crate) fn read_pid(path: &Path) -> u32 {
    lifeline_tests::proc::read_pid(path).unwrap_or_else(|| panic!("{} holds no pid", path.display()))
}

/// The open file descriptors of `pid`, as `/proc/<pid>/fd` lists them.
pub(crate) fn fds(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        // A descriptor closed between the listing and the readlink is not open.
        if let Ok(target) = std::fs::read_link(entry.path()) {
            out.push(format!("{} -> {}", entry.file_name().to_string_lossy(), target.display()));
        }
    }
    out.sort();
    out
}

/// The open file descriptors of `pid` that are not TCP connections: the part of the count that
/// does not depend on how many clients are connected at the moment.
///
/// A socket counts only when it is positively known to be something else: a unix socket or a
/// TCP listener (both long-lived, so the look-up cannot race with them), never by not being
/// found among the connections, which come and go by the thousand under load.
pub(crate) fn fds_without_connections(pid: u32) -> Vec<String> {
    let known = long_lived_socket_inodes();
    fds(pid).into_iter().filter(|fd| socket_inode(fd).is_none_or(|inode| known.contains(inode))).collect()
}

/// The open file descriptors of `pid` once it has no TCP connection open: every socket among
/// them is a unix socket or a listener, in two identical listings around the look-up.
pub(crate) fn fds_at_rest(pid: u32) -> Vec<String> {
    wait_for(&format!("pid {pid} to have no connection open"), || {
        let before = fds(pid);
        let known = long_lived_socket_inodes();
        let after = fds(pid);
        let idle = before.iter().all(|fd| socket_inode(fd).is_none_or(|inode| known.contains(inode)));
        (before == after && idle).then_some(after)
    })
}

/// The inode of a `N -> socket:[INODE]` entry.
fn socket_inode(fd: &str) -> Option<&str> {
    fd.split_once("-> socket:[").and_then(|(_, rest)| rest.strip_suffix(']'))
}

/// Inodes of unix sockets and of listening TCP sockets (IPv4 and IPv6).
fn long_lived_socket_inodes() -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    // Num RefCount Protocol Flags Type St Inode [Path]
    if let Ok(text) = std::fs::read_to_string("/proc/net/unix") {
        out.extend(text.lines().skip(1).filter_map(|row| row.split_whitespace().nth(6)).map(str::to_owned));
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for row in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...; st 0A = LISTEN.
            let cols: Vec<&str> = row.split_whitespace().collect();
            if cols.get(3) == Some(&"0A")
                && let Some(inode) = cols.get(9)
            {
                out.insert((*inode).to_owned());
            }
        }
    }
    out
}

/// Runs `flock -n -E 75 FILE true`: whether someone else holds the lock on `path`.
pub(crate) fn flock_says_locked(path: &Path) -> bool {
    let status = Command::new("flock").args(["-n", "-E", "75"]).arg(path).arg("true").status().unwrap();
    match status.code() {
        Some(75) => true,
        Some(0) => false,
        _ => panic!("flock {}: {status}", path.display()),
    }
}

/// The mode bits and inode of a unix socket file.
pub(crate) fn socket_file(path: &Path) -> Option<(u32, u64)> {
    use std::os::unix::fs::FileTypeExt as _;
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type().is_socket().then(|| (meta.permissions().mode() & 0o7777, meta.ino()))
}

/// Copies the example binary to `dir/bin/https-server` (a path the test may replace).
pub(crate) fn copy_of_the_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("https-server");
    write_executable(&https_server_bin(), &exe, 0o755);
    exe
}

/// Replaces the file at `path` the way package managers do: write a sibling, rename it over.
pub(crate) fn install(path: &Path, contents: &[u8], mode: u32) {
    let source = path.with_extension("source");
    std::fs::write(&source, contents).unwrap();
    let staged = path.with_extension("new");
    write_executable(&source, &staged, mode);
    std::fs::rename(&staged, path).unwrap();
}

/// Puts the real example binary back at `path` (atomically).
pub(crate) fn install_the_real_binary(path: &Path) {
    let staged = path.with_extension("new");
    write_executable(&https_server_bin(), &staged, 0o755);
    std::fs::rename(&staged, path).unwrap();
}

/// Copies `from` to `to` with `mode` in a child process (`install(1)`): a file this process had
/// open for writing could be inherited by a child another test thread is forking, and an `exec`
/// of it would fail with "Text file busy" until that child execs.
fn write_executable(from: &Path, to: &Path, mode: u32) {
    let status =
        Command::new("install").arg("-m").arg(format!("{mode:o}")).arg(from).arg(to).status().unwrap();
    assert!(status.success(), "install {} {}: {status}", from.display(), to.display());
}
