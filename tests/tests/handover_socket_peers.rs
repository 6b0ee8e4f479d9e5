//! The handover socket (`serve_successors` / `from_socket`) hands listening sockets and state
//! only between processes of one user (or root), checked with `SO_PEERCRED` on both sides before
//! anything is sent: a successor of another user is refused by the running process, and a
//! "running process" of another user is refused by the successor. Real processes: the
//! `handover-server` fixture, one side run as `nobody` with `setpriv`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use lifeline_tests::wait_for;

const FIXTURE: &str = env!("CARGO_BIN_EXE_handover-server");
const NOBODY: &str = "65534";

/// `handover-server ARGS`, as `nobody` when `as_nobody`; its first stdout line.
fn start(as_nobody: bool, args: &[&std::ffi::OsStr]) -> (Child, String) {
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", FIXTURE]);
        c
    } else {
        Command::new(FIXTURE)
    };
    let mut child = command
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

/// A process killed (and reaped) when dropped, also when an assertion fails first.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running fixture with a handover socket in `dir` that other users may connect to.
fn running(dir: &Path, as_nobody: bool) -> Killed {
    let socket = dir.join("handover");
    let (child, ready) = start(
        as_nobody,
        &["--listen".as_ref(), "127.0.0.1:0".as_ref(), "--successor-socket".as_ref(), socket.as_os_str()],
    );
    assert!(ready.starts_with("ready "), "the running process did not start: {ready:?}");
    wait_for("the handover socket", || socket.exists().then_some(()));
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    Killed(child)
}

/// A successor started with `--from-socket`: it must fail; its exit code and stderr.
fn refused_successor(dir: &Path, as_nobody: bool) -> (Option<i32>, String) {
    let socket = dir.join("handover");
    let (child, line) = start(as_nobody, &["--from-socket".as_ref(), socket.as_os_str()]);
    let mut child = Killed(child);
    assert!(!line.starts_with("ready "), "a successor of another user took over: {line}");
    let out = child.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    (out.code(), stderr)
}

#[test]
#[ignore = "needs root"]
fn a_successor_of_another_user_gets_nothing() {
    assert!(nix::unistd::geteuid().is_root(), "needs root (setpriv to another uid)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut server = running(dir.path(), false);
    let (code, stderr) = refused_successor(dir.path(), true);
    assert_eq!(code, Some(2), "{stderr}");
    // It could connect (the socket is open to all): the running process cut it off unanswered.
    let cut_off = stderr.contains("the handover request") || stderr.contains("the handover offer");
    assert!(cut_off && !stderr.contains("ermission denied"), "{stderr}");
    // The running process is untouched: still there, and a successor of its own user takes over.
    assert!(server.0.try_wait().unwrap().is_none(), "the running process exited");
    let (own, ready) = start(false, &["--from-socket".as_ref(), dir.path().join("handover").as_os_str()]);
    let _own = Killed(own);
    assert!(ready.starts_with("ready "), "{ready}");
}

#[test]
#[ignore = "needs root"]
fn a_running_process_of_another_user_is_not_taken_over_from() {
    assert!(nix::unistd::geteuid().is_root(), "needs root (setpriv to another uid)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut server = running(dir.path(), true);
    let (code, stderr) = refused_successor(dir.path(), false);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("runs as uid 65534"), "{stderr}");
    assert!(server.0.try_wait().unwrap().is_none(), "the running process exited");
}
