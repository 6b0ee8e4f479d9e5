//! The system calls of the lock-file protocol: create-or-open safely, lock, verify, write the pid.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::error::{Error, Result};
use crate::primitive::{LockPrimitive, is_unsupported};

/// The lock file's permissions, whatever the umask.
const LOCK_FILE_MODE: u32 = 0o600;

/// The outcome of one attempt at the protocol that did not fail outright.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Locked, verified to be the file at the path, pid written.
    Locked(OwnedFd),
    /// Another open file description holds the lock. `holder_pid` is read only by a first
    /// attempt; `kept` is the open lock file, kept (when asked for) so that a waiter's next try
    /// costs two system calls instead of a full re-open.
    Held { holder_pid: Option<u32>, kept: Option<Kept> },
    /// The file vanished or was replaced between opening and verifying: try again at once.
    Replaced,
}

/// A lock file a waiter keeps open between tries.
#[derive(Debug)]
pub(crate) struct Kept {
    fd: OwnedFd,
    stat: FileStat,
    created: bool,
}

impl Kept {
    /// The pid the holder wrote into the kept file.
    pub(crate) fn holder_pid(&self) -> Option<u32> {
        read_holder_pid(self.fd.as_fd())
    }

    /// The kept file's descriptor (to watch it).
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// `dir/name`, after checking `name` is one plain file name (so the lock file really is *in* `dir`).
pub(crate) fn lock_path(dir: &Path, name: &OsStr) -> Result<PathBuf> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) if !name.as_encoded_bytes().contains(&b'/') => Ok(dir.join(name)),
        _ => Err(Error::InvalidFileName { name: name.to_os_string() }),
    }
}

/// One pass of the protocol: open (creating 0600 if missing), try the lock, check that the locked
/// file is still the one at the path, write our pid. With `keep`, a refused attempt keeps the
/// file open for [`retry`].
pub(crate) fn attempt(
    dir: &Path,
    path: &Path,
    primitive: &dyn LockPrimitive,
    pid: u32,
    keep: bool,
) -> Result<Attempt> {
    let Some((fd, created)) = open_lock_file(dir, path)? else {
        return Ok(Attempt::Replaced);
    };
    match primitive.try_lock_exclusive(fd.as_fd()) {
        Ok(true) => locked(fd, created, path, pid),
        Ok(false) => {
            let holder_pid = read_holder_pid(fd.as_fd());
            let kept = if keep {
                let stat = nix::sys::stat::fstat(&fd).map_err(|e| Error::io("stat", path, e))?;
                Some(Kept { fd, stat, created })
            } else {
                None
            };
            Ok(Attempt::Held { holder_pid, kept })
        }
        Err(err) => Err(lock_error(path, err)),
    }
}

/// A waiter's next try on the file it kept open: the lock, and if it is still refused, whether
/// the file is still the one at the path (if not, the holder released it: [`Attempt::Replaced`]
/// sends the caller straight back to [`attempt`], no sleep).
pub(crate) fn retry(kept: Kept, path: &Path, primitive: &dyn LockPrimitive, pid: u32) -> Result<Attempt> {
    match primitive.try_lock_exclusive(kept.fd.as_fd()) {
        Ok(true) => locked(kept.fd, kept.created, path, pid),
        Ok(false) if still_at_path(path, &kept.stat)? => {
            Ok(Attempt::Held { holder_pid: None, kept: Some(kept) })
        }
        Ok(false) => Ok(Attempt::Replaced),
        Err(err) => Err(lock_error(path, err)),
    }
}

/// The steps after the lock was granted on `fd`: verify it is the file at the path, fix its mode,
/// write our pid.
fn locked(fd: OwnedFd, created: bool, path: &Path, pid: u32) -> Result<Attempt> {
    let stat = nix::sys::stat::fstat(&fd).map_err(|e| Error::io("stat", path, e))?;
    if !is_regular(&stat) {
        return Err(Error::NotRegularFile { path: path.to_path_buf() });
    }
    if !still_at_path(path, &stat)? {
        // Unlinked (a holder released it) or replaced after we opened it: the lock we hold is on
        // a file nobody else will ever look at. Closing drops it.
        return Ok(Attempt::Replaced);
    }
    let finish = || -> Result<()> {
        if created && stat.st_mode & 0o7777 != LOCK_FILE_MODE {
            // The umask took bits away: fix it on the fd, no path race.
            nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(LOCK_FILE_MODE))
                .map_err(|e| Error::io("set permissions of", path, e))?;
        }
        write_pid(fd.as_fd(), path, pid, stat.st_size > 0)
    };
    if let Err(err) = finish() {
        // A full disk (ENOSPC on the pid) or similar: give the lock up the way a release does —
        // unlink while still holding it, then close — so that nothing is left behind.
        let _ = unlink_if_same(path, FileId::of(&stat));
        return Err(err);
    }
    Ok(Attempt::Locked(fd))
}

/// Opens the lock file, creating it (0600, `O_EXCL`) when missing. `Ok(None)` when it vanished
/// between the two steps (retry). Never follows a symlink and never opens a non-regular file.
fn open_lock_file(dir: &Path, path: &Path) -> Result<Option<(OwnedFd, bool)>> {
    let common = OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let mode = Mode::from_bits_truncate(LOCK_FILE_MODE);
    // The common case: the last holder unlinked it. O_CREAT|O_EXCL never follows a symlink, not
    // even a dangling one (EEXIST), so a planted link's target is never created or opened.
    match nix::fcntl::open(path, common | OFlag::O_CREAT | OFlag::O_EXCL, mode) {
        Ok(fd) => return Ok(Some((fd, true))),
        Err(Errno::EEXIST) => {}
        Err(Errno::ENOENT) => return Err(Error::NoSuchDirectory { path: dir.to_path_buf() }),
        Err(Errno::ENOTDIR) => return Err(Error::NotADirectory { path: dir.to_path_buf() }),
        Err(e) => return Err(Error::io("create lock file", path, e)),
    }
    // It exists: look before opening, so a FIFO or device is never opened (opening some devices
    // has side effects, and a FIFO would block).
    match nix::sys::stat::lstat(path) {
        Ok(st) if file_type(&st) == SFlag::S_IFLNK => {
            return Err(Error::Symlink { path: path.to_path_buf() });
        }
        Ok(st) if !is_regular(&st) => return Err(Error::NotRegularFile { path: path.to_path_buf() }),
        Ok(_) => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(Error::io("stat", path, e)),
    }
    // O_NONBLOCK: if it was swapped for a FIFO since the lstat, do not hang on it (the fstat
    // after locking refuses it).
    match nix::fcntl::open(path, common | OFlag::O_NONBLOCK, Mode::empty()) {
        Ok(fd) => Ok(Some((fd, false))),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP) => Err(Error::Symlink { path: path.to_path_buf() }),
        Err(e) => Err(Error::io("open lock file", path, e)),
    }
}

/// Whether `path` still names the file `held` describes (same device and inode).
pub(crate) fn still_at_path(path: &Path, held: &FileStat) -> Result<bool> {
    match nix::sys::stat::lstat(path) {
        Ok(st) => Ok(st.st_dev == held.st_dev && st.st_ino == held.st_ino),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// The identity of a file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(crate) fn of(st: &FileStat) -> FileId {
        FileId { dev: st.st_dev, ino: st.st_ino }
    }
}

/// Unlinks `path` only if it still names the file `held` identifies; `Ok(false)` when it names
/// another file (or none), which is then left alone.
///
/// A holder calls this while it still holds the lock on `held`. If someone removed the file
/// meanwhile (an operator, a tmp cleaner), the file now at the path may be the next holder's,
/// and unlinking it would let a third process in. While the path does name `held`, no dirlock
/// acquirer can put another file there (they open ours and are refused), so between the check
/// and the unlink only an outside remover could swap it.
pub(crate) fn unlink_if_same(path: &Path, held: FileId) -> Result<bool> {
    match nix::sys::stat::lstat(path) {
        Ok(st) if FileId::of(&st) == held => {}
        Ok(_) => {
            tracing::warn!(
                path = %path.display(),
                "the lock file was removed while held and another is at its path now; leaving that one"
            );
            return Ok(false);
        }
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(Error::io("stat", path, e)),
    }
    match nix::unistd::unlink(path) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(Error::io("unlink", path, e)),
    }
}

/// Replaces the file's content with `"<pid>\n"`.
pub(crate) fn write_pid(fd: BorrowedFd<'_>, path: &Path, pid: u32, truncate: bool) -> Result<()> {
    if truncate {
        nix::unistd::ftruncate(fd, 0).map_err(|e| Error::io("truncate", path, e))?;
    }
    let text = format!("{pid}\n");
    let mut written = 0;
    while written < text.len() {
        match nix::sys::uio::pwrite(fd, &text.as_bytes()[written..], written as i64) {
            Ok(0) => return Err(Error::io("write pid to", path, io::Error::from(io::ErrorKind::WriteZero))),
            Ok(n) => written += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("write pid to", path, e)),
        }
    }
    Ok(())
}

/// The pid a holder wrote into the lock file, if there is a valid one.
pub(crate) fn read_holder_pid(fd: BorrowedFd<'_>) -> Option<u32> {
    let mut buf = [0u8; 24];
    let n = nix::sys::uio::pread(fd, &mut buf, 0).ok()?;
    parse_pid(&buf[..n])
}

/// Parses `"<pid>\n"`; anything else (empty, half-written, foreign content) is `None`.
pub(crate) fn parse_pid(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.trim().parse::<u32>().ok().filter(|pid| *pid > 0)
}

/// Maps an error from the lock primitive to [`Error::Unsupported`] or [`Error::Io`].
pub(crate) fn lock_error(path: &Path, err: io::Error) -> Error {
    if is_unsupported(&err) {
        Error::Unsupported { path: path.to_path_buf(), source: err }
    } else {
        Error::io("lock", path, err)
    }
}

pub(crate) fn is_regular(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFREG
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}
