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
    /// Another open file description holds the lock.
    Held { holder_pid: Option<u32> },
    /// The file vanished or was replaced between opening and verifying: try again.
    Replaced,
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
/// file is still the one at the path, write our pid.
pub(crate) fn attempt(dir: &Path, path: &Path, primitive: &dyn LockPrimitive, pid: u32) -> Result<Attempt> {
    let Some((fd, created)) = open_lock_file(dir, path)? else {
        return Ok(Attempt::Replaced);
    };
    match primitive.try_lock_exclusive(fd.as_fd()) {
        Ok(true) => {}
        Ok(false) => return Ok(Attempt::Held { holder_pid: read_holder_pid(fd.as_fd()) }),
        Err(err) => return Err(lock_error(path, err)),
    }
    let stat = nix::sys::stat::fstat(&fd).map_err(|e| Error::io("stat", path, e))?;
    if !is_regular(&stat) {
        return Err(Error::NotRegularFile { path: path.to_path_buf() });
    }
    if !still_at_path(path, &stat)? {
        // Unlinked (a holder released it) or replaced after we opened it: the lock we hold is on
        // a file nobody else will ever look at. Closing drops it.
        return Ok(Attempt::Replaced);
    }
    if created && stat.st_mode & 0o7777 != LOCK_FILE_MODE {
        // The umask took bits away (or added nothing we want): fix it on the fd, no path race.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(LOCK_FILE_MODE))
            .map_err(|e| Error::io("set permissions of", path, e))?;
    }
    write_pid(fd.as_fd(), path, pid, stat.st_size > 0)?;
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
