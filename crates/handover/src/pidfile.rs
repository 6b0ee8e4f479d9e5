//! The pid file: replaced atomically (temporary file in the same directory, then rename).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::Error;

/// Writes `pid` and a newline to `path` so that a reader sees the old content or the new one,
/// never a torn file.
pub(crate) fn write(path: &Path, pid: u32) -> Result<(), Error> {
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
    tmp.persist(path).map_err(|e| err(e.error))?;
    tracing::debug!(path = %path.display(), pid, "pid file written");
    Ok(())
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
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/server.pid");
        let err = super::write(&path, 1).unwrap_err();
        assert!(err.to_string().starts_with("cannot write pid file"), "{err}");
    }
}
