//! `SO_PEERCRED` checks with a real peer of another uid: perl's `IO::Socket::UNIX` run under
//! `setpriv --reuid=65534` (root only: `#[ignore = "needs root"]`, run by `cargo xtask ci` as root).

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::{PATIENCE, fixed_status, parse_frames, start};
use restart_socket::ServerConfig;
use restart_socket::wire::{self, ErrorKind, Request, Response};

const NOBODY: u32 = 65534;

/// Connects, sends the hex-encoded bytes, prints everything received (hex) until the server
/// closes. SIGPIPE is ignored: the server may close before our write.
const PERL_CLIENT: &str = r#"
use IO::Socket::UNIX; use Socket;
$SIG{PIPE} = 'IGNORE';
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $ARGV[0]) or die "connect: $!\n";
$s->syswrite(pack("H*", $ARGV[1]));
shutdown($s, 1);
my $all = "";
while (1) { my $n = $s->sysread(my $chunk, 65536); last unless $n; $all .= $chunk; }
print unpack("H*", $all);
"#;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Makes the socket reachable by other users: the check under test is then the server's own.
fn open_up(dir: &Path, socket: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// Runs the perl client as `nobody` and returns the frames it received.
async fn as_nobody(socket: &Path, request: Request) -> Vec<Response> {
    let hex = wire::encode_request(request).iter().fold(String::new(), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    });
    let child = tokio::process::Command::new("setpriv")
        .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".to_owned()])
        .args(["perl", "-e", PERL_CLIENT])
        .arg(socket)
        .arg(hex)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn setpriv perl");
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output()).await.expect("perl finishes").unwrap();
    assert!(out.status.success(), "perl client failed: {}", String::from_utf8_lossy(&out.stderr));
    let hex = String::from_utf8(out.stdout).unwrap();
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    parse_frames(&bytes)
}

/// Collects every log line of this test binary.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).init();
        logs
    })
    .clone()
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_peer_with_another_uid_gets_one_error_frame_and_is_logged() {
    assert!(is_root(), "needs root (setpriv to another uid)");
    let logs = capture_logs();
    let server = start(ServerConfig::default(), || async { Ok::<u32, String>(1) }, fixed_status());
    open_up(server.dir.path(), &server.path);

    for request in [Request::Status, Request::Restart] {
        let answers = as_nobody(&server.path, request).await;
        assert!(
            matches!(&answers[..], [Response::Error { kind: ErrorKind::PermissionDenied, message }] if message.contains("uid 65534")),
            "{answers:?}"
        );
    }
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("refused a peer") && logged.contains("uid=65534"), "{logged}");
    // The server's own uid is still served.
    assert_eq!(
        restart_socket::Client::connect(&server.path).await.unwrap().status().await.unwrap(),
        common::status_of(1)
    );
    server.stop().await;
}

#[tokio::test]
#[ignore = "needs root"]
async fn an_allow_listed_uid_is_served() {
    assert!(is_root(), "needs root (setpriv to another uid)");
    let server =
        start(ServerConfig::default().allow_uid(NOBODY), || async { Ok::<u32, String>(77) }, fixed_status());
    open_up(server.dir.path(), &server.path);
    assert_eq!(as_nobody(&server.path, Request::Status).await, [Response::Status(common::status_of(1))]);
    assert_eq!(as_nobody(&server.path, Request::Restart).await, [Response::RestartComplete { pid: 77 }]);
    server.stop().await;
}

/// A server of another user, as `nobody`: perl listening on a unix socket, printing `ready`, then
/// for each connection the number of bytes the client sent.
const PERL_SERVER: &str = r#"
use IO::Socket::UNIX; use Socket;
$| = 1;
my $l = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $ARGV[0], Listen => 8) or die "listen: $!\n";
print "ready\n";
while (my $c = $l->accept) {
    my $all = "";
    while (1) { my $n = $c->sysread(my $chunk, 65536); last unless $n; $all .= $chunk; }
    print "got ", length($all), "\n";
}
"#;

/// `perl PERL_SERVER path` as uid 65534 in `dir` (made writable for it); its stdout lines.
struct ForeignServer {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl ForeignServer {
    async fn start(dir: &Path, socket: &Path) -> ForeignServer {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut child = tokio::process::Command::new("setpriv")
            .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".to_owned()])
            .args(["perl", "-e", PERL_SERVER])
            .arg(socket)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn setpriv perl");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let ready = tokio::time::timeout(PATIENCE, lines.next_line()).await.expect("perl starts").unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));
        ForeignServer { child, lines }
    }

    /// Bytes the last connection sent, once it is closed.
    async fn received(&mut self) -> usize {
        let line = tokio::time::timeout(PATIENCE, self.lines.next_line()).await.expect("a connection ends");
        line.unwrap().unwrap().strip_prefix("got ").unwrap().parse().unwrap()
    }
}

/// Anybody who can create a file where the client looks could answer in the service's name (a
/// stale path in a shared directory, a socket planted before the service started): the client
/// checks the server's `SO_PEERCRED` uid before sending a byte. By default it must be our own
/// effective uid or root; a server of another user is a typed error.
#[tokio::test]
#[ignore = "needs root"]
async fn a_server_of_another_user_is_refused_before_a_byte_is_sent() {
    assert!(is_root(), "needs root (setpriv to another uid)");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let mut server = ForeignServer::start(dir.path(), &socket).await;

    let err = restart_socket::Client::connect(&socket).await.unwrap_err();
    assert!(matches!(err, restart_socket::Error::UntrustedServer { uid: NOBODY, .. }), "{err:?}");
    assert!(err.to_string().contains("uid 65534"), "{err}");
    assert_eq!(server.received().await, 0, "a byte reached the foreign server");

    // Expected explicitly, it is talked to (and the request reaches it).
    let config = restart_socket::ClientConfig::default().server_uid(NOBODY);
    let mut client = restart_socket::Client::connect_with(&socket, &config).await.unwrap();
    client.set_timeout(std::time::Duration::from_millis(1));
    drop(client.status().await);
    drop(client);
    assert!(server.received().await > 0);
    server.child.kill().await.unwrap();
}
