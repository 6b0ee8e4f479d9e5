//! [`LockSet`]: several directories locked all-or-nothing, in one global order.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::lock::DirLock;
use crate::options::LockOptions;

/// The order a [`LockSet`] locks `dirs` in: each canonicalised (symlinks, `.` and `..`
/// resolved), duplicates removed, sorted.
///
/// Every process that locks overlapping sets takes the common directories in this same order, so
/// two of them can never each hold what the other waits for (no deadlock).
pub fn lock_order<I, P>(dirs: I) -> Result<Vec<PathBuf>>
where
    I: IntoIterator<Item = P>,
    P: AsRef<Path>,
{
    let mut order = dirs.into_iter().map(|dir| canonical_dir(dir.as_ref())).collect::<Result<Vec<_>>>()?;
    order.sort();
    order.dedup();
    Ok(order)
}

fn canonical_dir(dir: &Path) -> Result<PathBuf> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NoSuchDirectory { path: dir.to_path_buf() },
        io::ErrorKind::NotADirectory => Error::NotADirectory { path: dir.to_path_buf() },
        _ => Error::io("resolve directory", dir, e),
    })?;
    let meta = std::fs::metadata(&canonical).map_err(|e| Error::io("stat", &canonical, e))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory { path: dir.to_path_buf() });
    }
    Ok(canonical)
}

/// Locks on several directories, taken all-or-nothing in [`lock_order`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use dirlock::{LockOptions, LockSet};
///
/// let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
/// // Duplicates and spelling variants collapse to one lock per directory.
/// let set = LockSet::acquire([a.path(), b.path(), a.path()], &LockOptions::new())?;
/// assert_eq!(set.locks().len(), 2);
/// set.release()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LockSet {
    locks: Vec<DirLock>,
}

impl LockSet {
    /// Canonicalises and de-duplicates `dirs`, then locks them one by one in sorted order.
    ///
    /// All directories are resolved before any lock is taken (a missing one fails with nothing
    /// locked). If any lock cannot be taken, those already taken are released before the error is
    /// returned. With [`LockOptions::lock_timeout`] the timeout covers the whole set, not each
    /// directory.
    pub fn acquire<I, P>(dirs: I, options: &LockOptions) -> Result<LockSet>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let order = lock_order(dirs)?;
        let deadline = options.deadline_from(Instant::now());
        let mut locks = Vec::with_capacity(order.len());
        for dir in &order {
            match DirLock::acquire_until(dir, options, deadline) {
                Ok(lock) => locks.push(lock),
                Err(err) => {
                    // All-or-nothing: give back what we took, newest first.
                    while let Some(lock) = locks.pop() {
                        drop(lock);
                    }
                    return Err(err);
                }
            }
        }
        Ok(LockSet { locks })
    }

    /// The held locks, in lock order.
    pub fn locks(&self) -> &[DirLock] {
        &self.locks
    }

    /// The canonical directories, in lock order.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.locks.iter().map(DirLock::dir)
    }

    /// Releases every lock, newest first, and reports the first error (all are released
    /// regardless: see [`DirLock::release`]).
    pub fn release(mut self) -> Result<()> {
        let mut first_error = None;
        while let Some(lock) = self.locks.pop() {
            if let Err(err) = lock.release() {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The individual locks, in lock order (e.g. to [`export`](DirLock::export) each).
    pub fn into_locks(self) -> Vec<DirLock> {
        self.locks
    }
}
