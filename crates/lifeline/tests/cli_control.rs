//! `lifeline restart` and `lifeline status` against a real restart socket served in-process:
//! output, exit codes 0/1/69 (and 2 for a usage error), the text format of `status`, and a
//! refused peer of another uid (via `setpriv`).
#![cfg(feature = "cli")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use lifeline::restart_socket::{RestartHandler, Server, ServerConfig, Status};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);

const STATUS: Status = Status { pid: 4321, generation: 3, started_at: 1_700_000_000_123, last_restart: None };

struct Running {
    dir: tempfile::TempDir,
    path: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), lifeline::restart_socket::Error>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        drop(self.dir);
    }
}

fn serve(config: ServerConfig, restart: impl RestartHandler) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let server = Server::bind(&path, config).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(restart, || async { STATUS }, shutdown.clone()));
    Running { dir, path, shutdown, task }
}

async fn lifeline(args: &[&str], socket: &Path) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PATIENCE, child).await.expect("lifeline finishes").expect("run lifeline")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn status_prints_one_json_object_and_exits_0() {
    let server = serve(ServerConfig::default(), || async { Ok::<u32, String>(1) });
    let out = lifeline(&["status"], &server.path).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"pid": 4321, "generation": 3, "started_at": 1_700_000_000_123_u64, "last_restart": null})
    );
    server.stop().await;
}

#[tokio::test]
async fn restart_prints_the_new_pid_and_exits_0() {
    let server = serve(ServerConfig::default(), || async { Ok::<u32, String>(98765) });
    let out = lifeline(&["restart", "--timeout", "10s"], &server.path).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "98765\n");
    server.stop().await;
}

#[tokio::test]
async fn a_failed_restart_prints_the_reason_on_one_line_and_exits_1() {
    let server = serve(ServerConfig::default(), || async {
        Err::<u32, String>("successor crashed\nexit status 3".to_owned())
    });
    let out = lifeline(&["restart"], &server.path).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "lifeline: restart failed: successor crashed exit status 3\n");
    server.stop().await;
}

#[tokio::test]
async fn a_restart_that_outlasts_the_timeout_exits_1() {
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<oneshot::Sender<u32>>();
    let server = serve(ServerConfig::default(), move || {
        let entered = entered_tx.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            entered.send(tx).map_err(|_| "test gone".to_owned())?;
            rx.await.map_err(|_| "dropped".to_owned())
        }
    });
    let out = lifeline(&["restart", "--timeout", "200ms"], &server.path).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("lifeline: no answer within") && stderr.lines().count() == 1, "{stderr}");
    // The handler did start, and is released so the server can stop.
    entered.recv().await.unwrap().send(1).unwrap();
    server.stop().await;
}

#[tokio::test]
async fn status_in_text_format_prints_one_field_per_line() {
    let server = serve(ServerConfig::default(), || async { Ok::<u32, String>(1) });
    let out = lifeline(&["status", "--format", "text"], &server.path).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "pid:          4321");
    assert_eq!(lines[1], "generation:   3");
    assert!(
        lines[2].starts_with("started_at:   2023-11-14T22:13:20Z (") && lines[2].ends_with(" ago)"),
        "{stdout}"
    );
    assert_eq!(lines[3], "last_restart: never");
    // JSON stays the default, and can be asked for by name.
    let out = lifeline(&["status", "--format", "json"], &server.path).await;
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok(), "{}", text(&out.stdout));
    server.stop().await;
}

/// "No service there" (69) and "called wrongly" (2, clap's usage errors) are different exit
/// statuses: a script can tell a down service from a broken invocation.
#[tokio::test]
async fn a_usage_error_exits_2_and_never_69() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    for args in [
        &["status", "--format", "yaml"][..],
        &["restart", "--timeout", "soon"][..],
        &["status", "--bogus"][..],
    ] {
        let out = lifeline(args, &missing).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "");
    }
    for subcommand in ["status", "restart"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .arg(subcommand)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{subcommand} without --socket: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("--socket"), "{}", text(&out.stderr));
    }
}

#[tokio::test]
async fn a_missing_or_dead_socket_exits_69() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    for socket in [&missing, &dead] {
        for args in [&["restart"][..], &["status"][..]] {
            let out = lifeline(args, socket).await;
            assert_eq!(out.status.code(), Some(69), "{args:?} {}", socket.display());
            let stderr = text(&out.stderr);
            assert!(stderr.starts_with("lifeline: no server at ") && stderr.lines().count() == 1, "{stderr}");
            assert_eq!(text(&out.stdout), "");
        }
    }
}

#[tokio::test]
#[ignore = "needs root"]
async fn a_peer_with_another_uid_is_refused() {
    assert!(nix::unistd::geteuid().is_root(), "needs root (setpriv to another uid)");
    let server = serve(ServerConfig::default(), || async { Ok::<u32, String>(1) });
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&server.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    for subcommand in ["status", "restart"] {
        let child = tokio::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_lifeline"))
            .args([subcommand, "--socket"])
            .arg(&server.path)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(PATIENCE, child).await.unwrap().unwrap();
        assert_eq!(out.status.code(), Some(1), "{subcommand}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("permission denied") && stderr.contains("uid 65534"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    server.stop().await;
}

/// A unix stream server in perl: prints `ready`, then `got N` (bytes received) per connection.
const SERVER: &str = r#"
    use IO::Socket::UNIX; use Socket; $| = 1;
    my $l = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $ARGV[0], Listen => 8) or die "$!\n";
    print "ready\n";
    while (my $c = $l->accept) { my $n = 0; while (my $r = $c->sysread(my $b, 4096)) { $n += $r } print "got $n\n" }
"#;

/// A control socket served by another user (perl as `nobody`): `lifeline status` and `lifeline
/// restart` refuse to talk to it — one line naming its uid, exit 1 — and send it nothing.
#[tokio::test]
#[ignore = "needs root"]
async fn a_server_of_another_user_is_not_talked_to() {
    assert!(nix::unistd::geteuid().is_root(), "needs root (setpriv to another uid)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("control.sock");
    let mut perl = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "perl", "-e", SERVER])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(perl.stdout.take().unwrap()));
    let next = async |lines: &mut tokio::io::Lines<_>| {
        tokio::time::timeout(PATIENCE, lines.next_line()).await.expect("perl answers").unwrap()
    };
    assert_eq!(next(&mut lines).await.as_deref(), Some("ready"));
    for subcommand in ["status", "restart"] {
        let out = lifeline(&[subcommand], &socket).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{subcommand}: {stderr}");
        assert!(stderr.contains("runs as uid 65534") && stderr.lines().count() == 1, "{stderr}");
        assert_eq!(next(&mut lines).await.as_deref(), Some("got 0"), "{subcommand} sent bytes");
    }
    perl.kill().await.unwrap();
}
