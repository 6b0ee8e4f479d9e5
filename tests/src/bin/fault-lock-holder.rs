//! Fixture for `lifeline-fault`: a service whose crash leaves an orphaned grandchild holding its
//! state-directory lock.
//!
//! `fault-lock-holder --dir DIR --marker FILE --log FILE`: locks DIR with dirlock (if it is held
//! elsewhere: logs `run=N pid=P locked-out: <error>` and exits 75), then starts `sleep 1000` with
//! the lock's descriptor inherited (close-on-exec cleared in the child only, between fork and
//! exec), checks that the running `sleep` really has the lock file open, and appends
//! `run=N pid=P grandchild=G holds=<bool>` to the log. On its first run (MARKER does not exist
//! yet) it creates MARKER and aborts: a crash that orphans the grandchild with the lock. On later
//! runs it stays up until a signal ends it.

use std::io::Write as _;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use dirlock::DirLock;

fn main() -> ExitCode {
    // The crash is SIGABRT: no core file in the caller's directory.
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit reads the struct we pass; failure only means core files stay possible.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &raw const no_core) };
    let args: Vec<String> = std::env::args().collect();
    let opt =
        |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let (Some(dir), Some(marker), Some(log)) = (opt("--dir"), opt("--marker"), opt("--log")) else {
        eprintln!("usage: fault-lock-holder --dir DIR --marker FILE --log FILE");
        return ExitCode::from(2);
    };
    let first_run = !marker.exists();
    let run = if first_run { 1 } else { 2 };
    let pid = std::process::id();

    let lock = match DirLock::acquire(&dir) {
        Ok(lock) => lock,
        Err(err) => {
            append(&log, &format!("run={run} pid={pid} locked-out: {err}"));
            return ExitCode::from(75);
        }
    };
    let fd = lock.as_fd().as_raw_fd();
    let mut sleep = Command::new("sleep");
    sleep.arg("1000").stdin(Stdio::null());
    // SAFETY: runs between fork and exec in the child; fcntl is async-signal-safe and touches only
    // the child's copy of the descriptor table.
    unsafe {
        sleep.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // `spawn` returns once the child has exec'd: from here on `sleep` itself holds the lock fd.
    let grandchild = match sleep.spawn() {
        Ok(child) => child.id(),
        Err(err) => {
            append(&log, &format!("run={run} pid={pid} cannot start the grandchild: {err}"));
            return ExitCode::from(1);
        }
    };
    let holds = holds_open(grandchild, lock.path());
    append(&log, &format!("run={run} pid={pid} grandchild={grandchild} holds={holds}"));
    if first_run {
        if let Err(err) = std::fs::write(&marker, "") {
            append(&log, &format!("run={run} cannot create the marker: {err}"));
        }
        std::process::abort();
    }
    // The lock lives as long as this process (and the grandchild).
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Whether `pid` has `path` open.
fn holds_open(pid: u32, path: &Path) -> bool {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    entries.filter_map(Result::ok).any(|e| std::fs::read_link(e.path()).is_ok_and(|target| target == path))
}

fn append(log: &Path, line: &str) {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log);
    if let Ok(mut file) = file {
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}
