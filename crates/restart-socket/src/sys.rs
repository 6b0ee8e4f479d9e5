//! Unix specifics: placing the socket file safely, probing for a live owner, checking inherited fds.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr, sockopt,
};

use crate::Error;

/// Identity of a socket file (device + inode): the file is only removed while it is still ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> Self {
        FileId { dev: meta.dev(), ino: meta.ino() }
    }
}

/// What connecting to an existing socket file tells about its owner.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Someone accepts (or will accept: the backlog is full) on it.
    Live,
    /// Nobody listens: the process that bound it is gone.
    Stale,
    /// The file disappeared meanwhile.
    Gone,
}

/// Connects without blocking: a live server with a full backlog answers `EAGAIN` instead of
/// blocking us.
fn probe(path: &Path) -> io::Result<Probe> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => Ok(Probe::Live),
        Err(Errno::ECONNREFUSED) => Ok(Probe::Stale),
        Err(Errno::ENOENT) => Ok(Probe::Gone),
        Err(errno) => Err(errno.into()),
    }
}

/// The temporary name is short (sockets paths are limited to 107 bytes) and unique among
/// concurrent binders: pid plus a per-process counter.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(".rs{:x}.{n:x}", std::process::id());
    path.parent().map_or_else(|| PathBuf::from(&name), |dir| dir.join(&name))
}

/// Removes the temporary socket file unless it was moved into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// How many times placing the socket is retried when the path changes under us.
const PLACE_ATTEMPTS: usize = 5;

/// Binds a listening socket at `path` with mode 0600: bind under a temporary name in the same
/// directory, chmod, then move it into place — with `link` (fails if the path reappeared) when
/// the path is free, with `rename` (atomic replace) over a stale socket. A live socket or
/// anything that is not a socket is never touched.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, FileId), Error> {
    let bind_err = |source| Error::Bind { path: path.to_owned(), source };
    let temp = temp_path(path);
    let listener = UnixListener::bind(&temp).map_err(bind_err)?;
    let mut guard = TempFile(Some(temp.clone()));
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let id = FileId::of(&fs::symlink_metadata(&temp).map_err(bind_err)?);

    for _ in 0..PLACE_ATTEMPTS {
        let stale = match fs::symlink_metadata(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(bind_err(err)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(Error::NotASocket { path: path.to_owned() });
            }
            Ok(_) => match probe(path) {
                Ok(Probe::Live) => return Err(Error::InUse { path: path.to_owned() }),
                Ok(Probe::Gone) => false,
                Ok(Probe::Stale) => true,
                Err(source) => return Err(Error::Probe { path: path.to_owned(), source }),
            },
        };
        if stale {
            tracing::warn!(path = %path.display(), "replacing the stale socket of a dead server");
            fs::rename(&temp, path).map_err(bind_err)?;
            guard.0 = None;
            return Ok((listener, id));
        }
        match fs::hard_link(&temp, path) {
            Ok(()) => return Ok((listener, id)),
            // Someone created the path since we looked: look again.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(bind_err(err)),
        }
    }
    Err(bind_err(io::Error::other("the path kept changing while the socket was being placed")))
}

/// The identity of the socket file at `path`, if there is one.
pub(crate) fn socket_file_id(path: &Path) -> Option<FileId> {
    fs::symlink_metadata(path).ok().filter(|m| m.file_type().is_socket()).map(|m| FileId::of(&m))
}

/// Removes the socket file at `path` if it is still the one identified by `id`.
pub(crate) fn remove_if_same(path: &Path, id: FileId) {
    if socket_file_id(path) != Some(id) {
        tracing::debug!(path = %path.display(), "socket file replaced by someone else; leaving it");
        return;
    }
    match fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed socket file"),
        Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot remove socket file"),
    }
}

/// Checks that `fd` is a unix stream socket in the listening state.
pub(crate) fn check_listener(fd: &OwnedFd) -> Result<(), String> {
    let ty = socket::getsockopt(fd, sockopt::SockType).map_err(|e| format!("not a socket ({e})"))?;
    if ty != SockType::Stream {
        return Err(format!("socket type is {ty:?}, not a stream"));
    }
    let addr: SockaddrStorage =
        socket::getsockname(fd.as_fd().as_raw_fd()).map_err(|e| format!("getsockname: {e}"))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(format!("address family is {:?}, not unix", addr.family()));
    }
    if !socket::getsockopt(fd, sockopt::AcceptConn).map_err(|e| format!("SO_ACCEPTCONN: {e}"))? {
        return Err("the socket is not listening".to_owned());
    }
    Ok(())
}
