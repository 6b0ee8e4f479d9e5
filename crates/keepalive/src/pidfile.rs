//! The pid file: always a complete pid, replaced atomically (temp file in the same directory + rename).

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// A pid file that readers can trust: every read sees either the previous complete content or
/// the new complete content, never an empty or partial file.
///
/// Each write goes to a temporary file in the same directory, which is then renamed over the
/// path (`rename(2)` is atomic within a filesystem).
#[derive(Debug, Clone)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// A pid file at `path` (nothing is written yet).
    pub fn new(path: impl Into<PathBuf>) -> PidFile {
        PidFile { path: path.into() }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Atomically replaces the content with `pid` and a newline (mode 0644), `fsync`ed before the
    /// rename and the directory after it. If that fails (no space left, for instance), the
    /// previous file is left as it was.
    pub fn write(&self, pid: u32) -> Result<(), Error> {
        replace(&self.path, format!("{pid}\n").as_bytes(), 0o644)
            .map_err(|source| Error::PidFile { path: self.path.clone(), source })
    }

    /// Reads the pid (`None` if the file is missing or does not hold a pid).
    pub fn read(&self) -> Option<u32> {
        std::fs::read_to_string(&self.path).ok()?.trim().parse().ok()
    }

    /// Removes the file; a missing file is fine.
    pub fn remove(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(Error::PidFile { path: self.path.clone(), source: e })
            }
            _ => Ok(()),
        }
    }
}

/// Replaces the file at `path` with `contents` (and `mode`) atomically and durably: a temporary
/// file in the same directory, written and `fsync`ed, renamed over the path, then the directory
/// `fsync`ed. On failure the temporary file is removed and `path` keeps its previous content.
///
/// Without the first `fsync` a power loss can leave the renamed file empty (the rename reached
/// the disk before the data); without the second, the rename itself can be lost.
pub(crate) fn replace(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// `fsync`s a directory, so that a rename in it is on disk. A file system that cannot sync
/// directories (`EINVAL`) has nothing more to offer and is not an error.
fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = std::fs::File::open(dir)?;
    match dir.sync_all() {
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = PidFile::new(dir.path().join("svc.pid"));
        assert_eq!(file.read(), None);
        file.write(42).expect("write");
        assert_eq!(std::fs::read_to_string(file.path()).expect("read"), "42\n");
        file.write(43).expect("rewrite");
        assert_eq!(file.read(), Some(43));
        let mode = std::fs::metadata(file.path()).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
        file.remove().expect("remove");
        file.remove().expect("removing twice is fine");
        assert!(!file.path().exists());
    }

    #[test]
    fn a_missing_directory_is_a_typed_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = PidFile::new(dir.path().join("missing/svc.pid"));
        assert!(matches!(file.write(1), Err(Error::PidFile { .. })));
    }
}
