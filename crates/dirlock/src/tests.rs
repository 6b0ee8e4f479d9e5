//! Unit tests: the protocol against real files in temp dirs, within one process (a second
//! `DirLock` is a second open file description, so it contends exactly like another process).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag};

use crate::lockfile::{lock_path, parse_pid};
use crate::{
    DEFAULT_FILE_NAME, DirLock, Error, Flock, LockOptions, LockPrimitive, LockSet, OfdLock, WaitMode,
    lock_order,
};

fn lock_file(dir: &Path) -> std::path::PathBuf {
    dir.join(DEFAULT_FILE_NAME)
}

fn both_primitives() -> [LockOptions; 2] {
    [LockOptions::new().primitive(Flock), LockOptions::new().primitive(OfdLock)]
}

#[test]
fn acquire_creates_the_lock_file_with_our_pid_and_release_removes_it() {
    for options in both_primitives() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire_with(dir.path(), &options).unwrap();
        assert_eq!(lock.path(), lock_file(dir.path()));
        assert_eq!(lock.dir(), dir.path());
        assert_eq!(fs::read_to_string(lock.path()).unwrap(), format!("{}\n", std::process::id()));
        let meta = fs::symlink_metadata(lock.path()).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        lock.release().unwrap();
        assert!(!lock_file(dir.path()).exists());
    }
}

#[test]
fn dropping_the_lock_unlinks_the_file_and_frees_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    drop(DirLock::acquire(dir.path()).unwrap());
    assert!(!lock_file(dir.path()).exists());
    DirLock::acquire(dir.path()).unwrap().release().unwrap();
}

#[test]
fn a_second_acquirer_is_refused_and_told_the_holder_pid() {
    for options in both_primitives() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire_with(dir.path(), &options).unwrap();
        let err = DirLock::acquire_with(dir.path(), &options).unwrap_err();
        match &err {
            Error::HeldElsewhere { path, holder_pid } => {
                assert_eq!(path, &lock_file(dir.path()));
                assert_eq!(*holder_pid, Some(std::process::id()));
            }
            other => panic!("expected HeldElsewhere, got {other:?}"),
        }
        assert!(err.is_contention());
        assert_eq!(err.holder_pid(), Some(std::process::id()));
        assert_eq!(
            err.to_string(),
            format!("{} is locked by pid {}", dir.path().display(), std::process::id())
        );
        // The refused attempt did not disturb the holder's file.
        assert_eq!(fs::read_to_string(held.path()).unwrap(), format!("{}\n", std::process::id()));
        held.release().unwrap();
    }
}

#[test]
fn a_holder_that_wrote_no_pid_is_reported_as_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = lock_file(dir.path());
    let foreign = fs::File::create(&path).unwrap();
    assert!(Flock.try_lock_exclusive(foreign.as_fd()).unwrap());
    let err = DirLock::acquire(dir.path()).unwrap_err();
    assert!(matches!(err, Error::HeldElsewhere { holder_pid: None, .. }), "{err:?}");
    assert!(err.to_string().ends_with("is locked by another process"), "{err}");
}

#[test]
fn waiting_times_out_naming_the_holder_and_never_returns_early() {
    for options in both_primitives() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire_with(dir.path(), &options).unwrap();
        let wait = Duration::from_millis(60);
        let started = Instant::now();
        let err = DirLock::acquire_with(dir.path(), &options.clone().lock_timeout(wait)).unwrap_err();
        assert!(started.elapsed() >= wait);
        match err {
            Error::TimedOut { holder_pid, waited, .. } => {
                assert_eq!(holder_pid, Some(std::process::id()));
                assert!(waited >= wait);
            }
            other => panic!("expected TimedOut, got {other:?}"),
        }
        drop(held);
    }
}

#[test]
fn a_zero_timeout_tries_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let _held = DirLock::acquire(dir.path()).unwrap();
    let err =
        DirLock::acquire_with(dir.path(), &LockOptions::new().lock_timeout(Duration::ZERO)).unwrap_err();
    assert!(matches!(err, Error::TimedOut { .. }), "{err:?}");
}

#[test]
fn a_waiter_gets_the_lock_once_the_holder_releases() {
    let dir = tempfile::tempdir().unwrap();
    let held = DirLock::acquire(dir.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        tx.send(()).unwrap();
        DirLock::acquire_with(&path, &LockOptions::new().lock_timeout(Duration::from_secs(20)))
    });
    rx.recv().unwrap();
    held.release().unwrap();
    let lock = waiter.join().unwrap().unwrap();
    assert_eq!(fs::read_to_string(lock.path()).unwrap(), format!("{}\n", std::process::id()));
}

#[test]
fn a_leftover_file_from_a_crashed_holder_is_locked_and_its_content_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = lock_file(dir.path());
    fs::write(&path, "4294967295\nsomething else entirely\n").unwrap();
    let lock = DirLock::acquire(dir.path()).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
    lock.release().unwrap();
    assert!(!path.exists());
}

#[test]
fn a_planted_symlink_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    fs::write(&target, "do not touch").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    let before = fs::metadata(&target).unwrap();
    std::os::unix::fs::symlink(&target, lock_file(dir.path())).unwrap();

    let err = DirLock::acquire(dir.path()).unwrap_err();
    assert!(matches!(&err, Error::Symlink { path } if *path == lock_file(dir.path())), "{err:?}");
    assert!(err.to_string().contains("symbolic link"), "{err}");

    let after = fs::metadata(&target).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "do not touch");
    assert_eq!(after.mode(), before.mode());
    assert_eq!(after.mtime_nsec(), before.mtime_nsec());
    assert_eq!(after.ino(), before.ino());
    // The link is left as it was.
    assert_eq!(fs::read_link(lock_file(dir.path())).unwrap(), target);
}

#[test]
fn a_dangling_symlink_is_refused_and_its_target_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("would-be-created");
    std::os::unix::fs::symlink(&target, lock_file(dir.path())).unwrap();
    let err = DirLock::acquire(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err:?}");
    assert!(!target.exists());
}

#[test]
fn a_directory_at_the_lock_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(lock_file(dir.path())).unwrap();
    let err = DirLock::acquire(dir.path()).unwrap_err();
    assert!(matches!(err, Error::NotRegularFile { .. }), "{err:?}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn a_fifo_at_the_lock_path_is_refused_without_blocking_on_it() {
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(&lock_file(dir.path()), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = DirLock::acquire(dir.path()).unwrap_err();
    assert!(matches!(err, Error::NotRegularFile { .. }), "{err:?}");
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = DirLock::acquire(&missing).unwrap_err();
    assert!(matches!(&err, Error::NoSuchDirectory { path } if *path == missing), "{err:?}");
    assert_eq!(err.to_string(), format!("directory {} does not exist", missing.display()));
    assert!(!missing.exists());
}

#[test]
fn a_file_given_as_the_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let err = DirLock::acquire(&file).unwrap_err();
    assert!(matches!(&err, Error::NotADirectory { path } if *path == file), "{err:?}");
}

#[test]
fn lock_file_names_must_be_plain_names() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", ".", "..", "a/b", "../escape", "/abs", "x/"] {
        let err = DirLock::acquire_with(dir.path(), &LockOptions::new().file_name(bad)).unwrap_err();
        assert!(matches!(err, Error::InvalidFileName { .. }), "{bad:?}: {err:?}");
    }
    assert!(lock_path(dir.path(), OsStr::new("ok.lock")).is_ok());
    let lock = DirLock::acquire_with(dir.path(), &LockOptions::new().file_name("custom.lock")).unwrap();
    assert_eq!(lock.path(), dir.path().join("custom.lock"));
    assert!(dir.path().join("custom.lock").exists());
}

#[test]
fn other_system_call_failures_carry_the_operation_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(300); // NAME_MAX is 255
    let err = DirLock::acquire_with(dir.path(), &LockOptions::new().file_name(&long)).unwrap_err();
    match &err {
        Error::Io { op, path, source } => {
            assert_eq!(*op, "create lock file");
            assert_eq!(path, &dir.path().join(&long));
            assert_eq!(source.raw_os_error(), Some(libc::ENAMETOOLONG));
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(err.to_string().starts_with("cannot create lock file "), "{err}");
}

#[test]
fn release_reports_an_unlink_failure_and_still_releases_the_lock() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    fs::create_dir(&dir).unwrap();
    let lock = DirLock::acquire(&dir).unwrap();
    // Move the directory away and put a file in its place: looking at `state/.lifeline.lock`
    // (is it still the locked file?) before unlinking it now fails with ENOTDIR.
    let moved = parent.path().join("moved");
    fs::rename(&dir, &moved).unwrap();
    fs::write(&dir, "").unwrap();
    let err = lock.release().unwrap_err();
    assert!(matches!(&err, Error::Io { op: "stat", .. }), "{err:?}");
    // The lock itself is gone (closing released it).
    DirLock::acquire(&moved).unwrap().release().unwrap();
}

/// A primitive that cannot lock, like `flock` on some network file systems.
#[derive(Debug)]
struct Failing(i32);

impl LockPrimitive for Failing {
    fn try_lock_exclusive(&self, _fd: BorrowedFd<'_>) -> io::Result<bool> {
        Err(io::Error::from_raw_os_error(self.0))
    }
}

#[test]
fn a_file_system_that_cannot_lock_is_told_apart_from_contention_and_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    for errno in [libc::ENOLCK, libc::ENOTSUP, libc::EOPNOTSUPP] {
        let err =
            DirLock::acquire_with(dir.path(), &LockOptions::new().primitive(Failing(errno))).unwrap_err();
        assert!(matches!(&err, Error::Unsupported { .. }), "{errno}: {err:?}");
        assert!(!err.is_contention());
        assert!(err.to_string().contains("does not support locking"), "{err}");
    }
    let err =
        DirLock::acquire_with(dir.path(), &LockOptions::new().primitive(Failing(libc::EIO))).unwrap_err();
    assert!(matches!(&err, Error::Io { op: "lock", .. }), "{err:?}");
}

/// Locks for real, but first unlinks and re-creates the lock file `replacements` times, as a
/// holder releasing (and another creating) between our `open` and our lock would.
#[derive(Debug)]
struct ReplacedUnderUs {
    path: std::path::PathBuf,
    replacements: AtomicU32,
}

impl LockPrimitive for ReplacedUnderUs {
    fn try_lock_exclusive(&self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        if self.replacements.load(Ordering::SeqCst) > 0 {
            self.replacements.fetch_sub(1, Ordering::SeqCst);
            fs::remove_file(&self.path)?;
            fs::write(&self.path, "")?;
        }
        Flock.try_lock_exclusive(fd)
    }
}

#[test]
fn a_file_replaced_between_open_and_lock_is_detected_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = lock_file(dir.path());
    let primitive = ReplacedUnderUs { path: path.clone(), replacements: AtomicU32::new(3) };
    let lock = DirLock::acquire_with(dir.path(), &LockOptions::new().primitive(primitive)).unwrap();
    // We hold the file that is at the path now, not one of the replaced ones.
    let at_path = fs::symlink_metadata(&path).unwrap();
    let held = nix::sys::stat::fstat(lock.as_fd()).unwrap();
    assert_eq!((held.st_dev, held.st_ino), (at_path.dev(), at_path.ino()));
    assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
}

#[test]
fn endless_replacement_gives_up_after_a_bounded_number_of_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let path = lock_file(dir.path());
    let primitive = ReplacedUnderUs { path: path.clone(), replacements: AtomicU32::new(u32::MAX) };
    let err = DirLock::acquire_with(dir.path(), &LockOptions::new().primitive(primitive)).unwrap_err();
    match err {
        Error::Replaced { path: p, attempts } => {
            assert_eq!(p, path);
            assert_eq!(attempts, 64);
        }
        other => panic!("expected Replaced, got {other:?}"),
    }
}

#[test]
fn export_keeps_the_lock_and_the_file_and_adopt_takes_them_back() {
    for options in both_primitives() {
        let dir = tempfile::tempdir().unwrap();
        let fd: OwnedFd = DirLock::acquire_with(dir.path(), &options).unwrap().export();
        assert!(lock_file(dir.path()).exists());
        let err = DirLock::acquire_with(dir.path(), &options).unwrap_err();
        assert!(matches!(err, Error::HeldElsewhere { .. }), "{err:?}");
        // Cleared as a handing-over parent would in its child: adopt sets it again.
        nix::fcntl::fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        let adopted = DirLock::adopt(fd, dir.path(), &options).unwrap().commit();
        let flags = nix::fcntl::fcntl(adopted.as_fd(), FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
        assert_eq!(adopted.path(), lock_file(dir.path()));
        adopted.release().unwrap();
        assert!(!lock_file(dir.path()).exists());
        DirLock::acquire_with(dir.path(), &options).unwrap();
    }
}

#[test]
fn adopting_a_descriptor_that_does_not_hold_the_lock_is_refused() {
    for options in both_primitives() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire_with(dir.path(), &options).unwrap();
        // Same file, but a separate open file description: it does not hold the lock.
        let other: OwnedFd = fs::OpenOptions::new().read(true).write(true).open(held.path()).unwrap().into();
        let err = DirLock::adopt(other, dir.path(), &options).unwrap_err();
        assert!(
            matches!(err, Error::HeldElsewhere { holder_pid: Some(pid), .. } if pid == std::process::id()),
            "{err:?}"
        );
        assert!(held.path().exists());
    }
}

#[test]
fn adopting_a_descriptor_of_another_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stranger: OwnedFd = fs::File::create(dir.path().join("stranger")).unwrap().into();
    let err = DirLock::adopt(stranger, dir.path(), &LockOptions::new()).unwrap_err();
    assert!(matches!(err, Error::NotTheLockFile { .. }), "{err:?}");
    assert!(err.to_string().contains("not the lock file"), "{err}");
    let not_a_file: OwnedFd = fs::File::open(dir.path()).unwrap().into();
    let err = DirLock::adopt(not_a_file, dir.path(), &LockOptions::new()).unwrap_err();
    assert!(matches!(err, Error::NotTheLockFile { .. }), "{err:?}");
}

#[test]
fn adopting_after_the_lock_file_was_unlinked_or_replaced_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fd = DirLock::acquire(dir.path()).unwrap().export();
    fs::remove_file(lock_file(dir.path())).unwrap();
    let err = DirLock::adopt(fd, dir.path(), &LockOptions::new()).unwrap_err();
    assert!(matches!(err, Error::NotTheLockFile { .. }), "{err:?}");

    let fd = DirLock::acquire(dir.path()).unwrap().export();
    fs::remove_file(lock_file(dir.path())).unwrap();
    fs::write(lock_file(dir.path()), "").unwrap();
    let err = DirLock::adopt(fd, dir.path(), &LockOptions::new()).unwrap_err();
    assert!(matches!(err, Error::NotTheLockFile { .. }), "{err:?}");
}

#[test]
fn a_forked_child_dropping_its_copy_does_not_unlink_the_parents_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let lock = DirLock::acquire(dir.path()).unwrap();
    // SAFETY: the child only drops the lock (an unlink guard check plus close) and `_exit`s; it
    // does not allocate or take locks another thread might hold.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            // Drop runs the guard in the child: it must see it is not the owner.
            let code = i32::from(!lock.path().exists());
            drop(lock);
            // SAFETY: `_exit` is async-signal-safe and ends the forked child without running the
            // parent's atexit handlers or test harness.
            unsafe { libc::_exit(code) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            assert!(lock.path().exists(), "the child's drop unlinked the parent's lock file");
            let err = DirLock::acquire(dir.path()).unwrap_err();
            assert!(matches!(err, Error::HeldElsewhere { .. }), "{err:?}");
            lock.release().unwrap();
        }
    }
}

#[test]
fn flock_and_ofd_locks_agree_on_who_holds_through_the_same_description() {
    let dir = tempfile::tempdir().unwrap();
    let file = fs::File::create(dir.path().join("f")).unwrap();
    for primitive in [&Flock as &dyn LockPrimitive, &OfdLock] {
        assert!(primitive.try_lock_exclusive(file.as_fd()).unwrap());
        // Re-locking through the same description is a no-op, never a refusal.
        assert!(primitive.try_lock_exclusive(file.as_fd()).unwrap());
        let other = fs::OpenOptions::new().write(true).open(dir.path().join("f")).unwrap();
        assert!(!primitive.try_lock_exclusive(other.as_fd()).unwrap());
        // A duplicate descriptor shares the description, hence the lock.
        let dup = file.try_clone().unwrap();
        assert_ne!(dup.as_raw_fd(), file.as_raw_fd());
        assert!(primitive.try_lock_exclusive(dup.as_fd()).unwrap());
    }
}

#[test]
fn lock_set_locks_every_directory_once_in_sorted_canonical_order() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    let b = root.path().join("b");
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let b_again = a.join("..").join("b");
    let set = LockSet::acquire([&b, &a, &b_again, &a], &LockOptions::new()).unwrap();
    let canonical_root = fs::canonicalize(root.path()).unwrap();
    let dirs: Vec<&Path> = set.dirs().collect();
    assert_eq!(dirs, [canonical_root.join("a"), canonical_root.join("b")]);
    assert!(lock_file(&a).exists() && lock_file(&b).exists());
    set.release().unwrap();
    assert!(!lock_file(&a).exists() && !lock_file(&b).exists());
}

#[test]
fn lock_set_is_all_or_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, c) = (root.path().join("a"), root.path().join("b"), root.path().join("c"));
    for d in [&a, &b, &c] {
        fs::create_dir(d).unwrap();
    }
    let held_b = DirLock::acquire(&b).unwrap();
    let err = LockSet::acquire([&a, &b, &c], &LockOptions::new()).unwrap_err();
    assert!(
        matches!(&err, Error::HeldElsewhere { path, .. } if path.ends_with("b/.lifeline.lock")),
        "{err:?}"
    );
    // `a` was taken first and given back; `c` was never taken.
    assert!(!lock_file(&a).exists());
    assert!(!lock_file(&c).exists());
    DirLock::acquire(&a).unwrap();
    drop(held_b);
}

#[test]
fn lock_set_resolves_every_directory_before_locking_any() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    fs::create_dir(&a).unwrap();
    let missing = root.path().join("zz-missing");
    let err = LockSet::acquire([&a, &missing], &LockOptions::new()).unwrap_err();
    assert!(matches!(&err, Error::NoSuchDirectory { path } if *path == missing), "{err:?}");
    assert!(!lock_file(&a).exists());
    let file = root.path().join("file");
    fs::write(&file, "").unwrap();
    let err = lock_order([&a, &file]).unwrap_err();
    assert!(matches!(&err, Error::NotADirectory { path } if *path == file), "{err:?}");
}

#[test]
fn lock_set_shares_one_deadline_across_its_directories() {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| root.path().join(i.to_string())).collect();
    for d in &dirs {
        fs::create_dir(d).unwrap();
    }
    let _held: Vec<DirLock> = dirs[1..].iter().map(|d| DirLock::acquire(d).unwrap()).collect();
    let wait = Duration::from_millis(50);
    let started = Instant::now();
    let err = LockSet::acquire(&dirs, &LockOptions::new().lock_timeout(wait)).unwrap_err();
    assert!(matches!(err, Error::TimedOut { .. }), "{err:?}");
    // The first held directory used up the whole wait; the second did not get a fresh one.
    assert!(started.elapsed() < wait * 2 + Duration::from_millis(500), "{:?}", started.elapsed());
    assert!(!lock_file(&dirs[0]).exists());
}

#[test]
fn holder_pids_are_parsed_strictly() {
    assert_eq!(parse_pid(b"1234\n"), Some(1234));
    assert_eq!(parse_pid(b"  77 \n"), Some(77));
    assert_eq!(parse_pid(b""), None);
    assert_eq!(parse_pid(b"0\n"), None);
    assert_eq!(parse_pid(b"12a\n"), None);
    assert_eq!(parse_pid(b"1234\n5"), None);
    assert_eq!(parse_pid(b"99999999999\n"), None);
    assert_eq!(parse_pid(&[0xff, 0xfe]), None);
}

#[test]
fn options_have_meaningful_defaults() {
    let options = LockOptions::default();
    assert_eq!(options.name(), DEFAULT_FILE_NAME);
    assert_eq!(options.wait(), None);
    assert!(format!("{:?}", options.lock_primitive()).contains("Flock"));
    let options = options.lock_timeout(Duration::from_secs(1)).no_wait();
    assert_eq!(options.wait(), None);
}

/// `flock`, reporting the first refusal (the waiter has started waiting) on a channel.
#[derive(Debug)]
struct ReportsRefusal(std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>);

impl LockPrimitive for ReportsRefusal {
    fn try_lock_exclusive(&self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        let taken = Flock.try_lock_exclusive(fd)?;
        if !taken && let Some(tx) = self.0.lock().unwrap().take() {
            tx.send(()).unwrap();
        }
        Ok(taken)
    }
}

#[test]
fn a_waiter_follows_the_lock_file_when_it_is_replaced_and_names_the_new_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = lock_file(dir.path());
    let first = DirLock::acquire(dir.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let options = LockOptions::new()
        .primitive(ReportsRefusal(std::sync::Mutex::new(Some(tx))))
        .lock_timeout(Duration::from_secs(1));
    let waiter = {
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || DirLock::acquire_with(&dir, &options))
    };
    rx.recv().unwrap();
    // The waiter keeps the first file open. Replace it under both of them with a file held by
    // a "process" with another pid: locked first, then renamed into place in one step (a waiter
    // woken by the change must find it held, not a free file being set up).
    let staged = dir.path().join("staged");
    fs::write(&staged, "424242\n").unwrap();
    let second = fs::File::open(&staged).unwrap();
    assert!(Flock.try_lock_exclusive(second.as_fd()).unwrap());
    fs::rename(&staged, &path).unwrap();
    match waiter.join().unwrap() {
        Err(Error::TimedOut { holder_pid, .. }) => assert_eq!(holder_pid, Some(424_242)),
        other => panic!("expected a time-out naming the new holder, got {other:?}"),
    }
    // Its file is gone already: do not let it unlink the second one.
    drop(first.export());
}

#[test]
fn a_wait_too_long_for_an_instant_is_a_wait_for_ever_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let for_ever = LockOptions::new().lock_timeout(Duration::MAX);
    DirLock::acquire_with(dir.path(), &for_ever).unwrap().release().unwrap();
    LockSet::acquire([dir.path()], &for_ever).unwrap().release().unwrap();
    // Held: the waiter waits (no deadline to overflow) and gets it once the holder releases.
    let held = DirLock::acquire(dir.path()).unwrap();
    let path = dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || DirLock::acquire_with(&path, &for_ever));
    held.release().unwrap();
    waiter.join().unwrap().unwrap().release().unwrap();
}

proptest::proptest! {
    /// The holder pid is read from a file anybody who can write the directory may have filled:
    /// any content is a pid that reads back the same once written as the protocol writes it, or
    /// nothing — never a panic.
    #[test]
    fn any_lock_file_content_is_a_pid_or_nothing(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32)) {
        if let Some(pid) = parse_pid(&bytes) {
            proptest::prop_assert!(pid > 0);
            proptest::prop_assert_eq!(parse_pid(format!("{pid}\n").as_bytes()), Some(pid));
        }
    }

    #[test]
    fn every_pid_written_reads_back(pid in 1u32..) {
        proptest::prop_assert_eq!(parse_pid(format!("{pid}\n").as_bytes()), Some(pid));
    }
}

#[test]
fn an_adopted_lock_dropped_before_commit_leaves_the_file_and_the_lock_to_the_predecessor() {
    for options in both_primitives() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire_with(dir.path(), &options).unwrap();
        let inherited: OwnedFd = held.as_fd().try_clone_to_owned().unwrap();
        let adopted = DirLock::adopt(inherited, dir.path(), &options).unwrap();
        assert_eq!(adopted.path(), lock_file(dir.path()));
        // The successor fails before committing: its drop must not unlink or unlock anything.
        drop(adopted);
        assert!(lock_file(dir.path()).exists(), "a failed successor unlinked the lock file");
        assert_eq!(fs::read_to_string(lock_file(dir.path())).unwrap(), format!("{}\n", std::process::id()));
        let err = DirLock::acquire_with(dir.path(), &options).unwrap_err();
        assert!(matches!(err, Error::HeldElsewhere { .. }), "{err:?}");
        held.release().unwrap();
        assert!(!lock_file(dir.path()).exists());
    }
}

#[test]
fn reassert_rewrites_the_pid_and_refuses_a_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut lock = DirLock::acquire(dir.path()).unwrap();
    fs::write(lock_file(dir.path()), "999999\n").unwrap();
    lock.reassert().unwrap();
    assert_eq!(fs::read_to_string(lock_file(dir.path())).unwrap(), format!("{}\n", std::process::id()));
    fs::remove_file(lock_file(dir.path())).unwrap();
    let err = lock.reassert().unwrap_err();
    assert!(matches!(err, Error::NotTheLockFile { .. }), "{err:?}");
}

/// A waiter of either wait mode and either primitive gets the lock when the holder lets go in
/// each way a holder can: a release (unlink, then close), and a close without unlink (a crash,
/// or a lock handed on whose last copy closes).
#[test]
fn waiters_of_both_wait_modes_wake_on_a_release_and_on_a_bare_close() {
    for mode in [WaitMode::Notify, WaitMode::Poll] {
        for options in both_primitives() {
            let options = options.wait_mode(mode).lock_timeout(Duration::from_secs(60));
            for bare_close in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let held = DirLock::acquire_with(dir.path(), &options).unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                let (path, waiting) = (dir.path().to_path_buf(), options.clone());
                let waiter = std::thread::spawn(move || {
                    tx.send(()).unwrap();
                    DirLock::acquire_with(&path, &waiting)
                });
                rx.recv().unwrap();
                // Give the waiter time to find the lock held and go to sleep (not a
                // synchronisation: it gets the lock whenever it looks).
                std::thread::sleep(Duration::from_millis(50));
                if bare_close {
                    // What a crash leaves: the file stays, the kernel drops the lock on close.
                    drop(held.export());
                } else {
                    held.release().unwrap();
                }
                let lock = waiter.join().unwrap().unwrap_or_else(|e| panic!("{mode:?}: {e}"));
                assert_eq!(fs::read_to_string(lock.path()).unwrap(), format!("{}\n", std::process::id()));
                lock.release().unwrap();
            }
        }
    }
}

/// Many waiters, each woken by the same events: every one of them gets the lock in turn, and
/// never two at once.
#[test]
fn a_crowd_of_notified_waiters_takes_turns() {
    let dir = tempfile::tempdir().unwrap();
    let inside = std::sync::Arc::new(AtomicU32::new(0));
    let options = LockOptions::new().wait_mode(WaitMode::Notify).lock_timeout(Duration::from_secs(120));
    let waiters: Vec<_> = (0..12)
        .map(|_| {
            let (path, options, inside) = (dir.path().to_path_buf(), options.clone(), inside.clone());
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let lock = DirLock::acquire_with(&path, &options).unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                    std::thread::sleep(Duration::from_millis(1));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    lock.release().unwrap();
                }
            })
        })
        .collect();
    for waiter in waiters {
        waiter.join().unwrap();
    }
    assert!(!lock_file(dir.path()).exists());
}

#[test]
fn the_default_wait_mode_is_notify() {
    assert_eq!(LockOptions::new().waiting(), WaitMode::Notify);
    assert_eq!(LockOptions::new().wait_mode(WaitMode::Poll).waiting(), WaitMode::Poll);
}
