//! [`DirLock`]: one held directory lock; acquiring, waiting, releasing, exporting and adopting.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{FcntlArg, FdFlag};

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::lockfile::{self, Attempt, FileId, Kept};
use crate::options::{LockOptions, WaitMode};
use crate::wake::Pooled;

/// With [`WaitMode::Notify`], the backoff's delays (up to 16 ms) are multiplied by this to give
/// the longest sleep between two tries when no event comes (up to about 256 ms): only a release
/// that makes no inotify event waits that long.
const NOTIFY_FALLBACK_FACTOR: u32 = 16;

/// How many times in a row the locked file may turn out to have been replaced before giving up
/// with [`Error::Replaced`]. Each replacement needs a holder to release in the microseconds
/// between our `open` and our lock, so even a storm of competitors rarely causes two in a row.
const MAX_REPLACED: u32 = 64;

/// An exclusive lock on a directory, held until it is dropped or [released](DirLock::release).
///
/// It owns the lock file's descriptor; the kernel lock belongs to that descriptor's open file
/// description. Dropping it unlinks the lock file while the lock is still held, then closes the
/// descriptor (which releases the lock). If the process dies instead, the kernel releases the
/// lock and the file stays behind, empty of meaning: the next acquirer locks it at once.
#[derive(Debug)]
pub struct DirLock {
    // Field order is drop order: `unlink` removes the path while `fd` still holds the lock; only
    // then does `fd` close. This is what makes "locked file == file at the path" hold for
    // everybody who verifies it.
    unlink: UnlinkOnDrop,
    fd: OwnedFd,
    dir: PathBuf,
}

/// Unlinks the lock file on drop, unless disarmed (release done explicitly, or exported), only
/// in the process that armed it (a `fork`ed child dropping its copy must not unlink the parent's
/// lock file), and only if the path still names the locked file (`held`: removed under us and
/// re-created, it is the next holder's).
#[derive(Debug)]
struct UnlinkOnDrop {
    path: PathBuf,
    /// The locked file's identity; `None` if it could not be learnt (then nothing is unlinked).
    held: Option<FileId>,
    owner_pid: u32,
    armed: bool,
}

impl UnlinkOnDrop {
    fn unlink(&self) -> Result<()> {
        match self.held {
            Some(held) => lockfile::unlink_if_same(&self.path, held).map(drop),
            None => Ok(()),
        }
    }
}

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        if !self.armed || std::process::id() != self.owner_pid {
            return;
        }
        if let Err(err) = self.unlink() {
            tracing::warn!(path = %self.path.display(), error = &err as &dyn std::error::Error, "cannot unlink lock file on release");
        }
    }
}

impl DirLock {
    /// Locks `dir` with the default [`LockOptions`]: `dir/.lifeline.lock`, fail at once if held.
    pub fn acquire(dir: impl AsRef<Path>) -> Result<DirLock> {
        Self::acquire_with(dir, &LockOptions::default())
    }

    /// Locks `dir` as `options` say (lock file name, wait, primitive).
    pub fn acquire_with(dir: impl AsRef<Path>, options: &LockOptions) -> Result<DirLock> {
        let deadline = options.deadline_from(Instant::now());
        Self::acquire_until(dir.as_ref(), options, deadline)
    }

    /// The acquisition loop, with an absolute deadline so a [`LockSet`](crate::LockSet) can share
    /// one wait across its directories. `None` = one try.
    pub(crate) fn acquire_until(
        dir: &Path,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<DirLock> {
        let started = Instant::now();
        let result = Self::acquire_loop(dir, options, deadline, started);
        crate::metrics::record_wait(&result, started.elapsed());
        result
    }

    fn acquire_loop(
        dir: &Path,
        options: &LockOptions,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<DirLock> {
        let path = lockfile::lock_path(dir, options.name())?;
        let pid = std::process::id();
        let mut backoff: Option<Backoff> = None;
        let mut replaced_in_a_row = 0;
        let mut kept: Option<Kept> = None;
        let mut holder_pid = None;
        let mut waker: Option<Pooled> = None;
        // Whether the last wait ended with an event (rather than its timeout).
        let mut woken_by_event = false;
        loop {
            let primitive = options.lock_primitive();
            let outcome = match kept.take() {
                Some(file) => lockfile::retry(file, &path, primitive, pid)?,
                None => lockfile::attempt(dir, &path, primitive, pid, deadline.is_some())?,
            };
            match outcome {
                Attempt::Locked(fd) => {
                    if backoff.is_some() {
                        let waited = started.elapsed();
                        tracing::debug!(path = %path.display(), ?waited, "acquired lock after waiting");
                    }
                    return Ok(DirLock::from_parts(fd, dir.to_path_buf(), path, pid));
                }
                Attempt::Replaced => {
                    replaced_in_a_row += 1;
                    tracing::trace!(
                        path = %path.display(),
                        attempt = replaced_in_a_row,
                        "lock file replaced while locking; retrying"
                    );
                    if replaced_in_a_row >= MAX_REPLACED {
                        return Err(Error::Replaced { path, attempts: replaced_in_a_row });
                    }
                }
                Attempt::Held { holder_pid: pid_read, kept: file } => {
                    replaced_in_a_row = 0;
                    if pid_read.is_some() {
                        holder_pid = pid_read;
                    }
                    let now = Instant::now();
                    let Some(remaining) =
                        deadline.and_then(|d| d.checked_duration_since(now)).filter(|r| !r.is_zero())
                    else {
                        return Err(if deadline.is_none() {
                            Error::HeldElsewhere { path, holder_pid }
                        } else {
                            // The holder may have changed while we waited: read it once more.
                            let holder_pid = file.as_ref().and_then(Kept::holder_pid).or(holder_pid);
                            Error::TimedOut { path, holder_pid, waited: started.elapsed() }
                        });
                    };
                    let backoff = backoff.get_or_insert_with(|| {
                        // Try first, and only when contended say so (cargo's flock.rs).
                        tracing::info!(path = %path.display(), holder_pid, "waiting for lock on {}", dir.display());
                        if options.waiting() == WaitMode::Notify {
                            waker = Pooled::take();
                        }
                        Backoff::new()
                    });
                    // Event-driven: watch the file we keep open; a new watch missed what came
                    // before it, so the lock is tried once more at once.
                    if let Some(w) = waker.as_mut()
                        && let Some(k) = file.as_ref()
                        && w.arm(k.fd(), &path)
                    {
                        kept = file;
                        continue;
                    }
                    let delay = backoff.next_delay();
                    kept = file;
                    match waker.as_mut().filter(|w| w.is_armed()) {
                        Some(w) => {
                            let mut remaining = remaining;
                            if woken_by_event {
                                // The last event was not the release (the try after it failed):
                                // another process opened and closed the file. Waking at each
                                // such event would make a storm of them (a process trying
                                // without waiting, in a loop) cost the waiters, and the holder
                                // they starve, more than polling does: so the next wait begins
                                // after the backoff's delay, and an event that came meanwhile
                                // ends it at once. Never slower than `WaitMode::Poll`.
                                std::thread::sleep(delay.min(remaining));
                                match deadline.and_then(|d| d.checked_duration_since(Instant::now())) {
                                    Some(r) if !r.is_zero() => remaining = r,
                                    // Out of time: the next try says so.
                                    _ => continue,
                                }
                            }
                            // The delays only back the events up (a holder on another machine
                            // of a network file system makes none): scaled up to a cap of about
                            // 256 ms.
                            woken_by_event = w.wait((delay * NOTIFY_FALLBACK_FACTOR).min(remaining));
                        }
                        None => std::thread::sleep(delay.min(remaining)),
                    }
                }
            }
        }
    }

    fn from_parts(fd: OwnedFd, dir: PathBuf, path: PathBuf, pid: u32) -> DirLock {
        let held = match nix::sys::stat::fstat(&fd) {
            Ok(st) => Some(FileId::of(&st)),
            Err(err) => {
                // Not seen in practice (the fd was just used); the file is then left behind on
                // release, which is harmless, rather than unlinked unchecked.
                tracing::warn!(path = %path.display(), error = &err as &dyn std::error::Error, "cannot stat the lock file; it will not be unlinked");
                None
            }
        };
        DirLock { unlink: UnlinkOnDrop { path, held, owner_pid: pid, armed: true }, fd, dir }
    }

    /// The locked directory, as it was given.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file (`dir` joined with the lock file name).
    pub fn path(&self) -> &Path {
        &self.unlink.path
    }

    /// Releases the lock now and reports what went wrong, which dropping cannot: unlinks the lock
    /// file while still holding the lock, then closes the descriptor.
    ///
    /// Only the locked file is unlinked: if it was removed behind our back and the path now
    /// names another file (the next holder's), that file is left alone.
    ///
    /// The lock is released even when this returns an error (closing always releases it); the
    /// error says the file may have been left behind, which is harmless to the next acquirer.
    pub fn release(self) -> Result<()> {
        let DirLock { mut unlink, fd, dir: _ } = self;
        unlink.armed = false;
        let unlinked = unlink.unlink();
        let closed = nix::unistd::close(fd).map_err(|e| Error::io("close", &unlink.path, e));
        unlinked.and(closed)
    }

    /// Checks that the lock file at the path is still the one this lock holds and writes this
    /// process's pid into it again — for a process that takes a lock back after a successor it
    /// handed over to died (the file may name the dead one). [`Error::NotTheLockFile`] if the
    /// file was unlinked or replaced meanwhile: the lock no longer guards the directory.
    pub fn reassert(&mut self) -> Result<()> {
        let stat = nix::sys::stat::fstat(&self.fd).map_err(|e| Error::io("stat", &self.unlink.path, e))?;
        if !lockfile::still_at_path(&self.unlink.path, &stat)? {
            return Err(Error::NotTheLockFile { path: self.unlink.path.clone() });
        }
        let pid = std::process::id();
        lockfile::write_pid(self.fd.as_fd(), &self.unlink.path, pid, true)?;
        self.unlink.owner_pid = pid;
        Ok(())
    }

    /// Gives up ownership of the lock *without* releasing it or unlinking the lock file, and
    /// returns its descriptor, for handing to a successor process that will
    /// [`adopt`](DirLock::adopt) it.
    ///
    /// The lock stays held for as long as any duplicate of the descriptor stays open (here, in a
    /// child that inherited it, ...). The descriptor is still close-on-exec: whoever passes it on
    /// clears `FD_CLOEXEC` in the child only (between `fork` and `exec`).
    pub fn export(self) -> OwnedFd {
        let DirLock { mut unlink, fd, dir: _ } = self;
        unlink.armed = false;
        fd
    }

    /// Takes over a lock exported by a predecessor ([`DirLock::export`]) and passed to this
    /// process as `fd` — in two phases, so that a successor that fails while starting can never
    /// unlink the file its predecessor still holds.
    ///
    /// This first phase checks, in this order, that `fd` is a regular file; that it holds the
    /// lock (a non-blocking lock request on `fd` itself succeeds, since the lock belongs to the
    /// very open file description `fd` refers to, while a lock held through any other description
    /// refuses it: [`Error::HeldElsewhere`]); and that it is still the file at `dir/<name>`
    /// (device and inode, else [`Error::NotTheLockFile`]). It sets close-on-exec again and
    /// returns an [`Adopted`] lock, which changes nothing on disk: dropping it only closes this
    /// process's descriptor (the predecessor's keeps the lock). Once this process has taken over
    /// for good, [`Adopted::commit`] makes it an ordinary [`DirLock`] (its pid in the file,
    /// unlinked on release). `options` supplies the lock file name and the primitive (it must be
    /// the one the lock was taken with); its wait is ignored.
    ///
    /// If the lock had been lost meanwhile and nobody else took it, this takes it anew, which is
    /// just as good: the file is verified to be the one at the path *after* locking.
    ///
    /// ```
    /// # fn main() -> Result<(), dirlock::Error> {
    /// use dirlock::{DirLock, LockOptions};
    /// let dir = tempfile::tempdir().unwrap();
    /// // The predecessor exports its lock (a successor process would inherit the descriptor).
    /// let fd = DirLock::acquire(dir.path())?.export();
    /// // The successor verifies it while it starts; nothing is written yet.
    /// let adopted = DirLock::adopt(fd, dir.path(), &LockOptions::new())?;
    /// // ... everything else that can fail ...
    /// let lock: DirLock = adopted.commit(); // now it is ours to release
    /// lock.release()?;
    /// # Ok(()) }
    /// ```
    pub fn adopt(fd: OwnedFd, dir: impl AsRef<Path>, options: &LockOptions) -> Result<Adopted> {
        let dir = dir.as_ref();
        let path = lockfile::lock_path(dir, options.name())?;
        let stat =
            nix::sys::stat::fstat(&fd).map_err(|e| Error::io("stat inherited descriptor for", &path, e))?;
        if !lockfile::is_regular(&stat) {
            return Err(Error::NotTheLockFile { path });
        }
        match options.lock_primitive().try_lock_exclusive(fd.as_fd()) {
            Ok(true) => {}
            Ok(false) => {
                let holder_pid = lockfile::read_holder_pid(fd.as_fd());
                return Err(Error::HeldElsewhere { path, holder_pid });
            }
            Err(err) => return Err(lockfile::lock_error(&path, err)),
        }
        if !lockfile::still_at_path(&path, &stat)? {
            return Err(Error::NotTheLockFile { path });
        }
        nix::fcntl::fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| Error::io("set close-on-exec on", &path, e))?;
        Ok(Adopted { fd, dir: dir.to_path_buf(), path })
    }
}

/// A lock inherited from a predecessor and verified by [`DirLock::adopt`], not yet this
/// process's own: dropping it closes this process's descriptor and touches nothing else (the
/// lock file stays, and the lock stays held through the predecessor's descriptor).
///
/// [`commit`](Adopted::commit) it once this process has taken over.
#[derive(Debug)]
pub struct Adopted {
    fd: OwnedFd,
    dir: PathBuf,
    path: PathBuf,
}

impl Adopted {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the lock this process's own: writes this process's pid into the lock file and
    /// returns a [`DirLock`] that unlinks the file when released or dropped.
    ///
    /// It cannot fail: the pid in the file is informative only, so a failed write is logged
    /// (`tracing` warning) and the lock is held all the same.
    pub fn commit(self) -> DirLock {
        let Adopted { fd, dir, path } = self;
        let pid = std::process::id();
        if let Err(err) = lockfile::write_pid(fd.as_fd(), &path, pid, true) {
            tracing::warn!(path = %path.display(), error = &err as &dyn std::error::Error, "cannot write our pid into the adopted lock file");
        }
        DirLock::from_parts(fd, dir, path, pid)
    }

    /// Gives the descriptor back without committing (e.g. to pass the lock on unchanged).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Adopted {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsFd for DirLock {
    /// The lock file's descriptor, e.g. to pass to a successor process while this process keeps
    /// ownership until the hand-over is confirmed (then [`DirLock::export`] it).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
