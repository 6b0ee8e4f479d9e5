//! Named file descriptors: the outgoing registry, the inherited set, and socket type checks.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
};

use crate::Error;
use crate::env::validate_name;

/// The file descriptors this process hands to its successor, by name.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: Vec<(String, OwnedFd)>,
}

impl Registry {
    /// Adds `fd` under `name`. The fd is kept at a number ≥ 3 with `FD_CLOEXEC` set, so that no
    /// other child of this process inherits it and it never lands on a standard stream.
    pub(crate) fn insert(&mut self, name: &str, fd: OwnedFd) -> Result<(), Error> {
        validate_name(name)?;
        if self.contains(name) {
            return Err(Error::DuplicateName { name: name.to_owned() });
        }
        let fd = if fd.as_raw_fd() < 3 {
            // `try_clone` is `F_DUPFD_CLOEXEC` from 3 on.
            fd.try_clone().map_err(Error::io("duplicate a registered file descriptor"))?
        } else {
            set_cloexec(fd.as_fd()).map_err(Error::io("set FD_CLOEXEC on a registered file descriptor"))?;
            fd
        };
        self.entries.push((name.to_owned(), fd));
        Ok(())
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|(n, _)| n == name)
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<OwnedFd> {
        let at = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(at).1)
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.entries.iter().map(|(n, fd)| (n.as_str(), fd.as_fd()))
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Where an inherited file descriptor came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// From the old process, through `LIFELINE_FDS` or the handover socket.
    Predecessor,
    /// From systemd (or `systemd-socket-activate`), through `LISTEN_FDS`.
    Systemd,
}

/// File descriptors inherited by name, waiting to be claimed.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    entries: Vec<(String, OwnedFd, Origin)>,
}

/// Set once raw fd numbers from the environment have been wrapped in `OwnedFd`s: wrapping them a
/// second time would give two owners to one descriptor.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Claims the right to adopt fd numbers from the environment; only the first caller gets it.
pub(crate) fn claim_adoption() -> Result<(), Error> {
    if ADOPTED.swap(true, Ordering::SeqCst) { Err(Error::AlreadyAdopted) } else { Ok(()) }
}

/// Takes ownership of an inherited fd number after checking it is open; sets `FD_CLOEXEC`.
///
/// Callers hold the adoption claim ([`claim_adoption`]) and pass each number once.
pub(crate) fn adopt_raw(name: &str, fd: RawFd) -> Result<OwnedFd, Error> {
    // SAFETY: F_GETFD only reads the descriptor flags of `fd`; an unopened number yields EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(Error::NotOpen { name: name.to_owned(), fd, source: std::io::Error::last_os_error() });
    }
    // SAFETY: `fd` is open (checked above) and the protocol that named it (LIFELINE_FDS from our
    // parent, LISTEN_FDS for our pid) hands it to this process to own. The process-wide adoption
    // claim and the duplicate check of the parsers guarantee each number is wrapped only once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd()).map_err(Error::io("set FD_CLOEXEC on an inherited file descriptor"))?;
    Ok(owned)
}

impl Inherited {
    pub(crate) fn push(&mut self, name: String, fd: OwnedFd, origin: Origin) {
        self.entries.push((name, fd, origin));
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = (&str, Origin)> {
        self.entries.iter().map(|(n, _, o)| (n.as_str(), *o))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Removes and returns the first fd named `name`, if `check` accepts it (else leaves it).
    pub(crate) fn take_checked(
        &mut self,
        name: &str,
        check: impl FnOnce(BorrowedFd<'_>) -> Result<(), Error>,
    ) -> Result<Option<OwnedFd>, Error> {
        let Some(at) = self.entries.iter().position(|(n, _, _)| n == name) else { return Ok(None) };
        check(self.entries[at].1.as_fd())?;
        Ok(Some(self.entries.remove(at).1))
    }

    /// Closes every unclaimed fd; returns their names.
    pub(crate) fn close_all(&mut self) -> Vec<String> {
        self.entries.drain(..).map(|(n, _, _)| n).collect()
    }
}

/// The socket kinds the typed `take_*` helpers accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    TcpListener,
    UnixListener,
    UdpSocket,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::TcpListener => "a TCP listener",
            Kind::UnixListener => "a unix stream listener",
            Kind::UdpSocket => "a UDP socket",
        }
    }
}

/// What `fd` is, in words, for error messages: `a TCP listener`, `a connected TCP socket`, ...
pub(crate) fn describe(fd: BorrowedFd<'_>) -> String {
    let ty = match getsockopt(&fd, sockopt::SockType) {
        Ok(ty) => ty,
        Err(nix::errno::Errno::ENOTSOCK) => return "not a socket".to_owned(),
        Err(e) => return format!("unreadable ({e})"),
    };
    let family = getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok().and_then(|a| a.family());
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
    let family = match family {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => match ty {
            SockType::Stream => "TCP",
            SockType::Datagram => "UDP",
            _ => "IP",
        },
        Some(AddressFamily::Unix) => "unix",
        Some(other) => return format!("a socket of family {other:?}"),
        None => "unknown-family",
    };
    let kind = match ty {
        SockType::Stream if listening => "listener",
        SockType::Stream => "stream socket (not listening)",
        SockType::Datagram => "datagram socket",
        SockType::SeqPacket if listening => "seqpacket listener",
        _ => "socket",
    };
    if family == "UDP" { "a UDP socket".to_owned() } else { format!("a {family} {kind}") }
}

/// Checks that `fd` is the kind of socket asked for: `SO_TYPE`, `SO_ACCEPTCONN` and the family.
pub(crate) fn check_kind(name: &str, fd: BorrowedFd<'_>, kind: Kind) -> Result<(), Error> {
    let ty = getsockopt(&fd, sockopt::SockType).ok();
    let family = getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok().and_then(|a| a.family());
    let ip = matches!(family, Some(AddressFamily::Inet | AddressFamily::Inet6));
    let ok = match kind {
        Kind::TcpListener => {
            ty == Some(SockType::Stream) && ip && getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false)
        }
        Kind::UnixListener => {
            ty == Some(SockType::Stream)
                && family == Some(AddressFamily::Unix)
                && getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false)
        }
        Kind::UdpSocket => ty == Some(SockType::Datagram) && ip,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::WrongType { name: name.to_owned(), expected: kind.describe(), found: describe(fd) })
    }
}

#[cfg(test)]
mod tests;
