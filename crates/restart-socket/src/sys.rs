//! Unix specifics: placing the socket file safely, probing for a live owner, checking inherited fds.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr, sockopt,
};
use nix::sys::stat::{FchmodatFlags, Mode};
use nix::unistd::UnlinkatFlags;

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

/// A directory only this process's user can enter, created with an unpredictable name beside
/// the socket's final path: the socket is bound and chmodded in there, where nobody else can
/// plant, swap or race anything, and then moved into place. Removed (with whatever is left in
/// it) on drop.
struct PrivateDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// The socket's name inside its [`PrivateDir`].
const TEMP_NAME: &str = "s";

impl PrivateDir {
    fn create(beside: &Path) -> io::Result<PrivateDir> {
        let parent = match beside.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        // mkdtemp: mode 0700, a random name, O_EXCL semantics: a squatter at one name costs a
        // retry inside libc, never a failure or a followed symlink.
        let path = nix::unistd::mkdtemp(&parent.join(".rs-XXXXXX"))?;
        let dir = PrivateDir::open(path.clone());
        if dir.is_err() {
            // Not ours after all (swapped in a directory where others may rename): leave it.
            tracing::warn!(path = %path.display(), "the private directory changed before it was opened");
        }
        dir
    }

    fn open(path: PathBuf) -> io::Result<PrivateDir> {
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = nix::sys::stat::fstat(&fd)?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(io::Error::other(format!("{} is not a private directory of ours", path.display())));
        }
        // An umask of 0777 would leave it unusable to ourselves.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700))?;
        Ok(PrivateDir { path, fd })
    }

    /// Binds a listening socket at `TEMP_NAME` inside, through the directory's descriptor when
    /// `/proc` is there (no path to race at all, and a short address whatever the real path's
    /// length), else through its path (which nobody else can enter).
    fn bind(&self) -> io::Result<UnixListener> {
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}/{TEMP_NAME}", self.fd.as_raw_fd()));
        match UnixListener::bind(&by_fd) {
            Err(err) if err.kind() == io::ErrorKind::NotFound && !Path::new("/proc/self/fd").exists() => {
                UnixListener::bind(self.path.join(TEMP_NAME))
            }
            other => other,
        }
    }

    /// The socket inside, chmodded to 0600 and checked to be the socket we bound.
    fn seal(&self) -> io::Result<FileId> {
        nix::sys::stat::fchmodat(
            &self.fd,
            TEMP_NAME,
            Mode::from_bits_truncate(0o600),
            FchmodatFlags::FollowSymlink,
        )?;
        let st = nix::sys::stat::fstatat(&self.fd, TEMP_NAME, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_mode & 0o7777 != 0o600 {
            return Err(io::Error::other("the bound socket file is not a 0600 socket"));
        }
        Ok(FileId { dev: st.st_dev, ino: st.st_ino })
    }

    /// Hard-links the socket to `path`; fails with `EEXIST` if anything is there.
    fn link_to(&self, path: &Path) -> io::Result<()> {
        Ok(nix::unistd::linkat(&self.fd, TEMP_NAME, AT_FDCWD, path, AtFlags::empty())?)
    }

    /// Renames the socket over `path` (atomically replacing a stale socket).
    fn rename_to(&self, path: &Path) -> io::Result<()> {
        Ok(nix::fcntl::renameat(&self.fd, TEMP_NAME, AT_FDCWD, path)?)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        match nix::unistd::unlinkat(&self.fd, TEMP_NAME, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = &err as &dyn std::error::Error, "cannot remove the temporary socket");
            }
        }
        // Removed by path only while the path still names our directory (it is empty by now:
        // `rmdir` removes nothing else).
        let ours = nix::sys::stat::fstat(&self.fd).ok().map(|st| (st.st_dev, st.st_ino));
        let there = nix::sys::stat::lstat(&self.path).ok().map(|st| (st.st_dev, st.st_ino));
        if ours.is_some()
            && ours == there
            && let Err(err) = std::fs::remove_dir(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = &err as &dyn std::error::Error, "cannot remove the private directory");
        }
    }
}

/// How many times placing the socket is retried when the path changes under us.
const PLACE_ATTEMPTS: usize = 5;

/// Binds a listening socket at `path` with mode 0600, never reachable with a wider mode: bind
/// and chmod inside a private directory created beside `path` ([`PrivateDir`]), then move it
/// into place — with `link` (fails if the path reappeared) when the path is free, with `rename`
/// (atomic replace) over a stale socket. A live socket or anything that is not a socket is never
/// touched; nothing at a predictable name can block or redirect the bind.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, FileId), Error> {
    let bind_err = |source| Error::Bind { path: path.to_owned(), source };
    // The final path must be short enough, or no client could ever connect to it.
    UnixAddr::new(path).map_err(|errno| bind_err(errno.into()))?;
    let private = PrivateDir::create(path).map_err(bind_err)?;
    let listener = private.bind().map_err(bind_err)?;
    let id = private.seal().map_err(bind_err)?;

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
            private.rename_to(path).map_err(bind_err)?;
            return Ok((listener, id));
        }
        match private.link_to(path) {
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
        Err(err) => {
            tracing::warn!(path = %path.display(), error = &err as &dyn std::error::Error, "cannot remove socket file");
        }
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
