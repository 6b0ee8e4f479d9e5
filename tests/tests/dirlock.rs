//! `dirlock` between real processes: contention (also against `flock(1)`), a holder killed with
//! `SIGKILL`, the lock file's mode under any umask, and handing a held lock to a successor across
//! `exec`.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use dirlock::{DirLock, Error, LockOptions, OfdLock};
use lifeline_tests::wait_for;
use nix::fcntl::{FcntlArg, FdFlag};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn lock_file(dir: &Path) -> PathBuf {
    dir.join(".lifeline.lock")
}

/// A fixture process with its stdin (closing it ends the hold) and line-read stdout.
struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Fixture {
    fn spawn(mut command: Command) -> Fixture {
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Fixture { child, stdin, stdout }
    }

    /// `dirlock-hold ARGS...`
    fn hold(args: &[&str], dirs: &[&Path]) -> Fixture {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dirlock-hold"));
        command.args(args).args(dirs);
        Fixture::spawn(command)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes stdin (the holder releases) and returns its last line and exit code.
    fn finish(mut self) -> (String, Option<i32>) {
        drop(self.stdin.take());
        let line = self.line();
        let code = self.child.wait().unwrap().code();
        (line, code)
    }
}

fn primitives() -> [(&'static [&'static str], LockOptions); 2] {
    [(&[], LockOptions::new()), (&["--ofd"], LockOptions::new().primitive(OfdLock))]
}

#[test]
fn a_second_process_is_refused_and_told_the_holder_pid() {
    for (flag, _) in primitives() {
        let dir = tempfile::tempdir().unwrap();
        let mut holder = Fixture::hold(flag, &[dir.path()]);
        assert_eq!(holder.line(), format!("locked {}", holder.pid()));
        let mut second = Fixture::hold(flag, &[dir.path()]);
        assert_eq!(second.line(), format!("held {}", holder.pid()), "{flag:?}");
        assert_eq!(second.child.wait().unwrap().code(), Some(75));
        assert_eq!(holder.finish(), ("released".to_owned(), Some(0)));
        assert!(!lock_file(dir.path()).exists(), "lock file left after release");
        // Free again: the next process gets it at once.
        let mut third = Fixture::hold(flag, &[dir.path()]);
        assert_eq!(third.line(), format!("locked {}", third.pid()));
        assert_eq!(third.finish(), ("released".to_owned(), Some(0)));
    }
}

#[test]
fn a_waiting_process_gets_the_lock_when_the_holder_releases() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = Fixture::hold(&[], &[dir.path()]);
    assert!(holder.line().starts_with("locked "));
    let mut waiter = Fixture::hold(&["--wait-ms", "20000"], &[dir.path()]);
    // Release only once the waiter has been refused and started waiting.
    assert_eq!(waiter.line(), format!("waiting {}", holder.pid()));
    assert_eq!(holder.finish(), ("released".to_owned(), Some(0)));
    assert_eq!(waiter.line(), format!("locked {}", waiter.pid()));
    assert_eq!(waiter.finish(), ("released".to_owned(), Some(0)));
}

#[test]
fn flock_1_is_refused_while_a_dirlock_holder_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = Fixture::hold(&[], &[dir.path()]);
    assert!(holder.line().starts_with("locked "));
    let status = Command::new("flock").arg("-n").arg(lock_file(dir.path())).arg("true").status().unwrap();
    assert_eq!(status.code(), Some(1), "flock -n took a lock dirlock holds");
    assert_eq!(holder.finish(), ("released".to_owned(), Some(0)));
    let status = Command::new("flock").arg("-n").arg(lock_file(dir.path())).arg("true").status().unwrap();
    assert_eq!(status.code(), Some(0), "flock -n refused after release");
}

#[test]
fn a_dirlock_acquirer_is_refused_while_flock_1_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("flock");
    command.arg(lock_file(dir.path())).args(["-c", "echo ready; read x || :"]);
    let mut flock = Fixture::spawn(command);
    assert_eq!(flock.line(), "ready");
    let mut second = Fixture::hold(&[], &[dir.path()]);
    // flock(1) writes no pid.
    assert_eq!(second.line(), "held -");
    assert_eq!(second.child.wait().unwrap().code(), Some(75));
    let err = DirLock::acquire(dir.path()).unwrap_err();
    assert!(matches!(err, Error::HeldElsewhere { holder_pid: None, .. }), "{err:?}");
    drop(flock.stdin.take());
    assert_eq!(flock.child.wait().unwrap().code(), Some(0));
    DirLock::acquire(dir.path()).unwrap().release().unwrap();
}

#[test]
fn a_waiter_takes_over_the_same_file_when_flock_1_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("flock");
    command.arg(lock_file(dir.path())).args(["-c", "echo ready; read x || :"]);
    let mut flock = Fixture::spawn(command);
    assert_eq!(flock.line(), "ready");
    let inode = std::fs::metadata(lock_file(dir.path())).unwrap().ino();
    let mut waiter = Fixture::hold(&["--wait-ms", "20000"], &[dir.path()]);
    assert_eq!(waiter.line(), "waiting -");
    // flock(1) releases without unlinking: the waiter's retry on the file it kept open succeeds,
    // and the file is still the one at the path.
    drop(flock.stdin.take());
    assert_eq!(flock.child.wait().unwrap().code(), Some(0));
    assert_eq!(waiter.line(), format!("locked {}", waiter.pid()));
    assert_eq!(std::fs::metadata(lock_file(dir.path())).unwrap().ino(), inode);
    assert_eq!(std::fs::read_to_string(lock_file(dir.path())).unwrap(), format!("{}\n", waiter.pid()));
    assert_eq!(waiter.finish(), ("released".to_owned(), Some(0)));
}

#[test]
fn a_holder_killed_with_sigkill_frees_the_lock_at_once() {
    for (flag, options) in primitives() {
        let dir = tempfile::tempdir().unwrap();
        let mut holder = Fixture::hold(flag, &[dir.path()]);
        assert_eq!(holder.line(), format!("locked {}", holder.pid()));
        kill(Pid::from_raw(holder.pid() as i32), Signal::SIGKILL).unwrap();
        holder.child.wait().unwrap();
        // The dead holder could not unlink: its file, with its pid, is still there.
        assert_eq!(std::fs::read_to_string(lock_file(dir.path())).unwrap(), format!("{}\n", holder.pid()));
        // No waiting: the kernel released the lock with the process.
        let lock = DirLock::acquire_with(dir.path(), &options).unwrap();
        assert_eq!(std::fs::read_to_string(lock.path()).unwrap(), format!("{}\n", std::process::id()));
        lock.release().unwrap();
    }
}

#[test]
fn the_lock_file_is_0600_whatever_the_umask() {
    for umask in ["0000", "0022", "0077", "0277", "0777"] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$1\""))
            .arg(env!("CARGO_BIN_EXE_dirlock-hold"))
            .arg(dir.path());
        let mut holder = Fixture::spawn(command);
        assert!(holder.line().starts_with("locked "), "umask {umask}");
        let mode = std::fs::metadata(lock_file(dir.path())).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "umask {umask}: mode {mode:o}");
        assert_eq!(holder.finish(), ("released".to_owned(), Some(0)));
        assert!(!lock_file(dir.path()).exists());
    }
}

#[test]
fn a_planted_symlink_or_non_regular_file_is_refused_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    std::fs::write(&target, "keep").unwrap();
    std::os::unix::fs::symlink(&target, lock_file(dir.path())).unwrap();
    let mut holder = Fixture::hold(&[], &[dir.path()]);
    let line = holder.line();
    assert!(line.starts_with("error ") && line.contains("symbolic link"), "{line}");
    assert_eq!(holder.child.wait().unwrap().code(), Some(1));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o644);

    std::fs::remove_file(lock_file(dir.path())).unwrap();
    nix::unistd::mkfifo(&lock_file(dir.path()), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut holder = Fixture::hold(&[], &[dir.path()]);
    let line = holder.line();
    assert!(line.starts_with("error ") && line.contains("not a regular file"), "{line}");
    assert_eq!(holder.child.wait().unwrap().code(), Some(1));
}

/// Spawns `dirlock-adopt` with `fd` inherited (close-on-exec cleared in the child only).
fn spawn_adopter(fd: &impl AsFd, dir: &Path, extra: &[&str]) -> Fixture {
    let raw = fd.as_fd().as_raw_fd();
    let mut command = Command::new(env!("CARGO_BIN_EXE_dirlock-adopt"));
    command.args(extra).arg(raw.to_string()).arg(dir);
    // SAFETY: runs in the child between fork and exec; fcntl(2) is async-signal-safe and
    // allocates nothing. `raw` stays open in the parent until after spawn returns.
    unsafe {
        command.pre_exec(move || {
            // SAFETY: `raw` is open in the child (inherited across fork) for the rest of its life.
            let fd = std::os::fd::BorrowedFd::borrow_raw(raw);
            nix::fcntl::fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            Ok(())
        });
    }
    Fixture::spawn(command)
}

#[test]
fn a_lock_is_handed_to_a_successor_across_exec_without_a_gap() {
    for (flag, options) in primitives() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire_with(dir.path(), &options).unwrap();
        let mut successor = spawn_adopter(&lock, dir.path(), flag);
        let line = successor.line();
        assert_eq!(line, format!("adopted {} cloexec=true", successor.pid()), "{flag:?}");
        // The successor wrote its pid, and the lock is held throughout.
        assert_eq!(std::fs::read_to_string(lock_file(dir.path())).unwrap(), format!("{}\n", successor.pid()));
        // Our copy goes away without releasing or unlinking: the successor still holds the lock.
        drop(lock.export());
        assert!(lock_file(dir.path()).exists());
        match DirLock::acquire_with(dir.path(), &options) {
            Err(Error::HeldElsewhere { holder_pid, .. }) => assert_eq!(holder_pid, Some(successor.pid())),
            other => panic!("expected the successor to hold the lock, got {other:?}"),
        }
        assert_eq!(successor.finish(), ("released".to_owned(), Some(0)));
        assert!(!lock_file(dir.path()).exists());
        DirLock::acquire_with(dir.path(), &options).unwrap().release().unwrap();
    }
}

#[test]
fn a_successor_given_a_descriptor_that_does_not_hold_the_lock_refuses_to_adopt() {
    let dir = tempfile::tempdir().unwrap();
    let lock = DirLock::acquire(dir.path()).unwrap();
    // The same file, opened separately: a different open file description, not holding the lock.
    let unlocked: OwnedFd =
        std::fs::OpenOptions::new().read(true).write(true).open(lock.path()).unwrap().into();
    let mut successor = spawn_adopter(&unlocked, dir.path(), &[]);
    assert_eq!(successor.line(), format!("held {}", std::process::id()));
    assert_eq!(successor.child.wait().unwrap().code(), Some(75));
    // Our lock and file are untouched.
    assert_eq!(std::fs::read_to_string(lock.path()).unwrap(), format!("{}\n", std::process::id()));
    lock.release().unwrap();
}

#[test]
fn a_successor_refuses_a_lock_whose_file_was_replaced_after_export() {
    let dir = tempfile::tempdir().unwrap();
    let fd = DirLock::acquire(dir.path()).unwrap().export();
    std::fs::remove_file(lock_file(dir.path())).unwrap();
    let mut successor = spawn_adopter(&fd, dir.path(), &[]);
    let line = successor.line();
    assert!(line.starts_with("error ") && line.contains("not the lock file"), "{line}");
    assert_eq!(successor.child.wait().unwrap().code(), Some(1));
}

#[test]
fn a_successor_that_dies_does_not_take_the_lock_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let lock = DirLock::acquire(dir.path()).unwrap();
    let mut successor = spawn_adopter(&lock, dir.path(), &[]);
    assert!(successor.line().starts_with("adopted "));
    kill(Pid::from_raw(successor.pid() as i32), Signal::SIGKILL).unwrap();
    wait_for("the successor to die", || successor.child.try_wait().unwrap());
    // We never gave up our descriptor: the lock is still ours (same open file description).
    let err = DirLock::acquire(dir.path()).unwrap_err();
    assert!(matches!(err, Error::HeldElsewhere { .. }), "{err:?}");
    // Take it back formally: the file is still the one at the path.
    let lock = DirLock::adopt(lock.export(), dir.path(), &LockOptions::new()).unwrap().commit();
    lock.release().unwrap();
    assert!(!lock_file(dir.path()).exists());
}

/// An operator or a tmp cleaner removes the lock file under holder A; B then locks a new file at
/// the path. When A lets go (released or dropped), it must not unlink B's file: that would let a
/// third process C lock yet another new file while B still holds the directory.
#[test]
fn a_holder_whose_file_was_removed_never_unlinks_the_next_holders_file() {
    for (flag, _) in primitives() {
        for release in [&[][..], &["--drop"][..]] {
            let args: Vec<&str> = flag.iter().chain(release).copied().collect();
            let dir = tempfile::tempdir().unwrap();
            let path = lock_file(dir.path());
            let mut a = Fixture::hold(&args, &[dir.path()]);
            assert_eq!(a.line(), format!("locked {}", a.pid()));
            std::fs::remove_file(&path).unwrap();
            let mut b = Fixture::hold(&args, &[dir.path()]);
            assert_eq!(b.line(), format!("locked {}", b.pid()), "{args:?}");
            let b_file = std::fs::metadata(&path).unwrap().ino();

            assert_eq!(a.finish(), ("released".to_owned(), Some(0)), "{args:?}");
            let meta = std::fs::metadata(&path).expect("A unlinked B's lock file");
            assert_eq!(meta.ino(), b_file, "{args:?}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", b.pid()));
            let mut c = Fixture::hold(&args, &[dir.path()]);
            assert_eq!(c.line(), format!("held {}", b.pid()), "{args:?}: a third process got in");
            assert_eq!(c.child.wait().unwrap().code(), Some(75));
            if flag.is_empty() {
                // flock(1), a real outside peer, agrees that B holds the file at the path.
                let status = Command::new("flock").arg("-n").arg(&path).arg("true").status().unwrap();
                assert_eq!(status.code(), Some(1), "flock -n took the lock B holds");
            }

            assert_eq!(b.finish(), ("released".to_owned(), Some(0)));
            assert!(!path.exists(), "{args:?}: B's own release must still unlink its file");
        }
    }
}
