//! A successor's environment is checked as a whole before any fd number in it is owned: one fd
//! named twice (`LIFELINE_STATE_FD` or `LIFELINE_READY_FD` also in `LIFELINE_FDS`, the two pipes
//! on one number, a `LIFELINE_FDS` entry that is also a `LISTEN_FDS` fd) would get two owners —
//! two `OwnedFd`s closing one descriptor, the second close hitting whatever reused the number.
//! Real processes: the `handover-server` fixture started with the variables naming it (its
//! parent is this test, `LISTEN_PID` is its pid) and the fds really open.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, fcntl};

const FIXTURE: &str = env!("CARGO_BIN_EXE_handover-server");

/// Runs the fixture with `env` and fds 3 to 7 open (on `/dev/null`); returns its exit code and stderr.
fn start_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    // Far above the numbers the child gets, so that `dup2` below always makes a new, inheritable fd.
    let null = fcntl(&null, FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap();
    let raw = null.as_raw_fd();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("sh");
    // `exec` keeps the pid: LISTEN_PID names the fixture, and its parent is this test process.
    command
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", FIXTURE, "--listen", "127.0.0.1:0", "--control"])
        .arg(dir.path().join("control"))
        .env("LIFELINE_PARENT_PID", std::process::id().to_string())
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: runs in the child between fork and exec; dup2 is async-signal-safe and nothing
    // is allocated.
    unsafe {
        command.pre_exec(move || {
            for fd in 3..=7 {
                if libc::dup2(raw, fd) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = command.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn one_fd_named_twice_in_the_environment_is_refused_before_it_is_owned() {
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("LIFELINE_FDS", "http=3"), ("LIFELINE_STATE_FD", "3"), ("LIFELINE_READY_FD", "4")],
            "LIFELINE_STATE_FD",
        ),
        (
            &[("LIFELINE_FDS", "http=3"), ("LIFELINE_STATE_FD", "4"), ("LIFELINE_READY_FD", "3")],
            "LIFELINE_READY_FD",
        ),
        (
            &[("LIFELINE_FDS", "http=3"), ("LIFELINE_STATE_FD", "5"), ("LIFELINE_READY_FD", "5")],
            "LIFELINE_READY_FD",
        ),
        (
            &[
                ("LIFELINE_FDS", "http=3"),
                ("LIFELINE_STATE_FD", "6"),
                ("LIFELINE_READY_FD", "7"),
                ("LISTEN_FDS", "1"),
                ("LISTEN_FDNAMES", "web"),
            ],
            "LISTEN_FDS",
        ),
        (
            &[
                ("LIFELINE_FDS", "http=6"),
                ("LIFELINE_STATE_FD", "3"),
                ("LIFELINE_READY_FD", "7"),
                ("LISTEN_FDS", "2"),
                ("LISTEN_FDNAMES", "web:admin"),
            ],
            "LISTEN_FDS",
        ),
    ];
    for (env, var) in cases {
        let (code, stderr) = start_with(env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        let line = stderr.trim();
        assert!(
            line.starts_with(&format!("handover-server: malformed {var}=")) && line.contains("also"),
            "{env:?}: {line}"
        );
        assert_eq!(line.lines().count(), 1, "{line}");
    }
}
