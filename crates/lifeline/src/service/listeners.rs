//! Named listeners: taken from the predecessor, from systemd socket activation, or bound fresh.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use handover::{Handover, Origin};

use super::Error;
use super::builder::{CONTROL_FD, LOCK_FD};

/// What a listener is and where it binds when nothing is inherited.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Udp(SocketAddr),
}

impl Kind {
    fn address(&self) -> String {
        match self {
            Kind::Tcp(addr) | Kind::Udp(addr) => addr.to_string(),
            Kind::Unix(path) => path.display().to_string(),
        }
    }
}

/// A configured listener.
#[derive(Debug, Clone)]
pub(crate) struct ListenerSpec {
    pub(crate) name: String,
    pub(crate) kind: Kind,
}

/// Where a listener came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Predecessor,
    Systemd,
    Bound,
}

/// A listener made ready for tokio.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
    Udp(tokio::net::UdpSocket),
}

impl Socket {
    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
            Socket::Udp(s) => s.as_fd(),
        }
    }
}

/// A unix socket file the service may remove when it stops: only the very file it bound or
/// adopted (device and inode), and — for an adopted one — only once this process has taken over.
#[derive(Debug, Clone)]
pub(crate) struct SocketFile {
    pub(crate) path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    fn of(path: &Path) -> Option<SocketFile> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.file_type()
            .is_socket()
            .then(|| SocketFile { path: path.to_owned(), id: (meta.dev(), meta.ino()) })
    }

    /// Removes the file if it is still the one recorded.
    pub(crate) fn remove(&self) {
        match SocketFile::of(&self.path) {
            Some(now) if now.id == self.id => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = &err as &dyn std::error::Error, "cannot remove the socket file");
                }
            }
            _ => tracing::debug!(path = %self.path.display(), "socket file replaced or gone; leaving it"),
        }
    }
}

/// One configured listener, set up.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) name: String,
    pub(crate) socket: Socket,
    pub(crate) source: Source,
    /// For a unix listener: its file.
    pub(crate) file: Option<SocketFile>,
}

/// Sets up every configured listener, in the order: the predecessor's fd of that name, systemd's
/// fd of that name, an unclaimed systemd fd whose name matches no listener (in `LISTEN_FDS`
/// order, of the right kind), a fresh bind.
pub(crate) fn open_all(handover: &mut Handover, specs: &[ListenerSpec]) -> Result<Vec<Opened>, Error> {
    let mut taken: Vec<Option<(std::os::fd::OwnedFd, Source)>> = Vec::with_capacity(specs.len());
    for spec in specs {
        let origin = handover.inherited().into_iter().find(|(n, _)| *n == spec.name).map(|(_, o)| o);
        let fd = take_kind(handover, &spec.name, &spec.kind)?;
        let source = if origin == Some(Origin::Predecessor) { Source::Predecessor } else { Source::Systemd };
        taken.push(fd.map(|fd| (fd, source)));
    }
    // Systemd sockets whose names match no listener (no FileDescriptorName=, `unknown`, the
    // socket unit's name): handed out by kind, in order.
    for (spec, slot) in specs.iter().zip(taken.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let unnamed: Vec<String> = handover
            .inherited()
            .into_iter()
            .filter(|(name, origin)| {
                *origin == Origin::Systemd
                    && !specs.iter().any(|s| &s.name == name)
                    && name != LOCK_FD
                    && name != CONTROL_FD
            })
            .map(|(name, _)| name)
            .collect();
        for name in unnamed {
            if let Ok(Some(fd)) = take_kind(handover, &name, &spec.kind) {
                tracing::info!(listener = %spec.name, systemd_name = %name, "adopting a socket-activated socket");
                *slot = Some((fd, Source::Systemd));
                break;
            }
        }
    }
    specs
        .iter()
        .zip(taken)
        .map(|(spec, inherited)| match inherited {
            Some((fd, source)) => convert(spec, fd, source),
            None => bind(spec),
        })
        .collect()
}

/// Takes the inherited fd `name` if it is of `kind` (left in place otherwise, with an error).
fn take_kind(
    handover: &mut Handover,
    name: &str,
    kind: &Kind,
) -> Result<Option<std::os::fd::OwnedFd>, Error> {
    Ok(match kind {
        Kind::Tcp(_) => handover.take_tcp_listener(name)?.map(Into::into),
        Kind::Unix(_) => handover.take_unix_listener(name)?.map(Into::into),
        Kind::Udp(_) => handover.take_udp_socket(name)?.map(Into::into),
    })
}

fn register_error(name: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Register { name: name.to_owned(), source }
}

/// Makes an inherited socket ready for tokio.
fn convert(spec: &ListenerSpec, fd: std::os::fd::OwnedFd, source: Source) -> Result<Opened, Error> {
    let name = spec.name.as_str();
    let (socket, file) = match &spec.kind {
        Kind::Tcp(_) => {
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true).map_err(register_error(name))?;
            (Socket::Tcp(tokio::net::TcpListener::from_std(std).map_err(register_error(name))?), None)
        }
        Kind::Unix(path) => {
            let std = std::os::unix::net::UnixListener::from(fd);
            std.set_nonblocking(true).map_err(register_error(name))?;
            let file = SocketFile::of(path);
            (Socket::Unix(tokio::net::UnixListener::from_std(std).map_err(register_error(name))?), file)
        }
        Kind::Udp(_) => {
            let std = std::net::UdpSocket::from(fd);
            std.set_nonblocking(true).map_err(register_error(name))?;
            (Socket::Udp(tokio::net::UdpSocket::from_std(std).map_err(register_error(name))?), None)
        }
    };
    tracing::debug!(listener = name, ?source, "listener inherited");
    Ok(Opened { name: name.to_owned(), socket, source, file })
}

/// Binds a listener nobody passed us.
fn bind(spec: &ListenerSpec) -> Result<Opened, Error> {
    let name = spec.name.as_str();
    let listen = |source| Error::Listen { name: name.to_owned(), address: spec.kind.address(), source };
    let (socket, file) = match &spec.kind {
        Kind::Tcp(addr) => {
            let std = std::net::TcpListener::bind(addr).map_err(listen)?;
            std.set_nonblocking(true).map_err(register_error(name))?;
            (Socket::Tcp(tokio::net::TcpListener::from_std(std).map_err(register_error(name))?), None)
        }
        Kind::Unix(path) => {
            replace_stale(path).map_err(listen)?;
            let std = std::os::unix::net::UnixListener::bind(path).map_err(listen)?;
            let file = SocketFile::of(path);
            std.set_nonblocking(true).map_err(register_error(name))?;
            (Socket::Unix(tokio::net::UnixListener::from_std(std).map_err(register_error(name))?), file)
        }
        Kind::Udp(addr) => {
            let std = std::net::UdpSocket::bind(addr).map_err(listen)?;
            std.set_nonblocking(true).map_err(register_error(name))?;
            (Socket::Udp(tokio::net::UdpSocket::from_std(std).map_err(register_error(name))?), None)
        }
    };
    tracing::debug!(listener = name, address = %spec.kind.address(), "listener bound");
    Ok(Opened { name: name.to_owned(), socket, source: Source::Bound, file })
}

/// Removes a stale socket file at `path` (nobody accepts on it); refuses a live one and anything
/// that is not a socket.
fn replace_stale(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "a live socket is at the path")),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale socket file");
            std::fs::remove_file(path)
        }
        Err(err) => Err(err),
    }
}
