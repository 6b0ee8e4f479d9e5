//! The pid file: replaced atomically (temporary file in the same directory, then rename), in two
//! phases when a successor takes over (prepared before it tells its predecessor, renamed after).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::Error;

/// Writes `pid` and a newline to `path` so that a reader sees the old content or the new one,
/// never a torn file.
pub(crate) fn write(path: &Path, pid: u32) -> Result<(), Error> {
    Prepared::new(path, pid)?.persist()
}

/// A pid file written and synced under a temporary name in the same directory, not yet in place.
/// Everything that can fail for lack of space or permission has happened; dropping it removes the
/// temporary file and leaves the current pid file as it was.
pub(crate) struct Prepared {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
    pid: u32,
}

impl Prepared {
    pub(crate) fn new(path: &Path, pid: u32) -> Result<Prepared, Error> {
        let err = |source| Error::PidFile { path: path.to_owned(), source };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new().prefix(".pid-").tempfile_in(dir).map_err(err)?;
        // Readable by everybody, like the pid files of most daemons (tempfile creates 0600).
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(err)?;
        writeln!(tmp, "{pid}").map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        Ok(Prepared { tmp, path: path.to_owned(), pid })
    }

    /// Renames the prepared file into place.
    pub(crate) fn persist(self) -> Result<(), Error> {
        let Prepared { tmp, path, pid } = self;
        tmp.persist(&path).map_err(|e| Error::PidFile { path: path.clone(), source: e.error })?;
        tracing::debug!(path = %path.display(), pid, "pid file written");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pid");
        super::write(&path, 12).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "12\n");
        super::write(&path, 345).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "345\n");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_prepared_pid_file_dropped_unpersisted_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pid");
        super::write(&path, 12).unwrap();
        let prepared = super::Prepared::new(&path, 345).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "12\n");
        drop(prepared);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "12\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file stayed");
        super::Prepared::new(&path, 345).unwrap().persist().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "345\n");
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/server.pid");
        let err = super::write(&path, 1).unwrap_err();
        assert!(err.to_string().starts_with("cannot write pid file"), "{err}");
    }
}
