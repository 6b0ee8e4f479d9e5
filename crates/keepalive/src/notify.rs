//! The `NOTIFY_SOCKET` server: a unix datagram socket that speaks systemd's `sd_notify` protocol.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt};
use tokio::io::unix::AsyncFd;

use crate::Error;
use crate::config::Notify;

/// systemd reads at most this much per message (`PIPE_BUF`); longer messages are refused.
const MAX_MESSAGE: usize = 4096;
/// `SCM_MAX_FD`: the kernel never passes more fds in one message, so a control buffer this big is
/// never truncated and every passed fd is received, then closed (none can leak).
const MAX_FDS: usize = 253;

/// One datagram received on the socket.
#[derive(Debug)]
pub(crate) struct Message {
    /// The sender's pid from `SCM_CREDENTIALS` (filled in by the kernel: `SO_PASSCRED` is on).
    pub(crate) pid: Option<i32>,
    /// The text (lossy UTF-8).
    pub(crate) text: String,
    /// How many fds came with it (all already closed: `BARRIER=1` waits for exactly that).
    pub(crate) fds: usize,
    /// The message was longer than [`MAX_MESSAGE`] and is ignored.
    pub(crate) truncated: bool,
}

/// The server side of `NOTIFY_SOCKET`.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: AsyncFd<UnixDatagram>,
    /// The `NOTIFY_SOCKET` value: a path, or `@name` for an abstract socket.
    address: String,
    /// For a path socket: the socket file and the private directory to remove when done.
    on_disk: Option<(PathBuf, PathBuf)>,
}

impl NotifySocket {
    /// Creates a fresh socket of the given kind.
    pub(crate) fn bind(kind: Notify) -> Result<NotifySocket, Error> {
        match kind {
            Notify::Abstract => {
                let name = format!("lifeline-notify/{}/{:016x}", std::process::id(), nonce());
                Self::bind_abstract(&name)
            }
            Notify::PrivateDir | Notify::Off => {
                let err = |source| Error::NotifySocket {
                    address: std::env::temp_dir().display().to_string(),
                    source,
                };
                // tempfile creates the directory with mode 0700: only our uid (and root) can reach it.
                let dir = tempfile::Builder::new().prefix("lifeline-notify-").tempdir().map_err(err)?.keep();
                Self::bind_path(dir.join("notify"), dir)
            }
        }
    }

    /// Binds again at an address a previous supervisor used (adoption), so that the adopted
    /// service's messages keep arriving.
    pub(crate) fn rebind(address: &str) -> Result<NotifySocket, Error> {
        if let Some(name) = address.strip_prefix('@') {
            return Self::bind_abstract(name);
        }
        let path = PathBuf::from(address);
        let err = |source| Error::NotifySocket { address: address.to_owned(), source };
        // The old supervisor left its socket file behind; replace it, but only if it is a socket.
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(&path).map_err(err)?,
            Ok(_) => return Err(err(io::Error::new(io::ErrorKind::AlreadyExists, "not a socket"))),
            Err(_) => {}
        }
        let dir = path.parent().map(PathBuf::from).unwrap_or_default();
        Self::bind_path(path, dir)
    }

    fn bind_path(path: PathBuf, dir: PathBuf) -> Result<NotifySocket, Error> {
        let address = path.display().to_string();
        let err = |source| Error::NotifySocket { address: address.clone(), source };
        let socket = UnixDatagram::bind(&path).map_err(err)?;
        Self::finish(socket, address.clone(), Some((path, dir))).map_err(err)
    }

    fn bind_abstract(name: &str) -> Result<NotifySocket, Error> {
        let address = format!("@{name}");
        let err = |source| Error::NotifySocket { address: address.clone(), source };
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?;
        let socket = UnixDatagram::bind_addr(&addr).map_err(err)?;
        Self::finish(socket, address.clone(), None).map_err(err)
    }

    fn finish(
        socket: UnixDatagram,
        address: String,
        on_disk: Option<(PathBuf, PathBuf)>,
    ) -> io::Result<NotifySocket> {
        // The kernel then attaches the sender's credentials to every datagram, whether or not the
        // sender sent them: that is how we know which process spoke.
        setsockopt(&socket, sockopt::PassCred, &true)?;
        socket.set_nonblocking(true)?;
        Ok(NotifySocket { socket: crate::sys::async_fd(socket)?, address, on_disk })
    }

    /// The value for the service's `NOTIFY_SOCKET`.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Closes the socket but leaves the socket file (detach: a later supervisor may bind it again).
    pub(crate) fn keep(mut self) -> String {
        self.on_disk = None;
        std::mem::take(&mut self.address)
    }

    /// Waits for the next message. Cancel-safe: a message is consumed only when returned.
    pub(crate) async fn recv(&self) -> io::Result<Message> {
        loop {
            let mut guard = self.socket.readable().await?;
            match guard.try_io(|inner| receive(inner.get_ref().as_raw_fd())) {
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }

    /// The next message if one is queued.
    pub(crate) fn try_recv(&self) -> io::Result<Option<Message>> {
        match receive(self.socket.get_ref().as_raw_fd()) {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some((path, dir)) = self.on_disk.take() {
            let _ = std::fs::remove_file(&path);
            // Only succeeds if empty: never removes anything but our own private directory.
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn receive(fd: RawFd) -> io::Result<Message> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; MAX_FDS]);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), flags)?;
    let mut pid = None;
    let mut fds = 0;
    if let Ok(cmsgs) = msg.cmsgs() {
        for cmsg in cmsgs {
            match cmsg {
                ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                ControlMessageOwned::ScmRights(received) => {
                    for raw in received {
                        fds += 1;
                        // SAFETY: the kernel just installed these fds in our table for us; we own
                        // them, and closing them is what the sender's BARRIER=1 waits for.
                        drop(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
                _ => {}
            }
        }
    }
    // With MSG_TRUNC, `bytes` is the datagram's real length even when it did not fit.
    let truncated = msg.bytes > MAX_MESSAGE || msg.flags.contains(MsgFlags::MSG_TRUNC);
    let len = msg.bytes.min(MAX_MESSAGE);
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    Ok(Message { pid, text, fds, truncated })
}

fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.finish()
}

/// The assignments of one notification message that the supervisor acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Notification {
    /// `READY=1`.
    pub(crate) ready: bool,
    /// `RELOADING=1`.
    pub(crate) reloading: bool,
    /// `STOPPING=1`.
    pub(crate) stopping: bool,
    /// `STATUS=...`.
    pub(crate) status: Option<String>,
    /// `MAINPID=...`: the pid, or the text that did not parse as one.
    pub(crate) main_pid: Option<Result<u32, String>>,
    /// `WATCHDOG=1` or `WATCHDOG=trigger`.
    pub(crate) watchdog: Option<Watchdog>,
    /// `WATCHDOG_USEC=...`: a new watchdog interval.
    pub(crate) watchdog_usec: Option<u64>,
    // `BARRIER=1` needs no field: its fd is closed on receipt, which is all the sender waits for.
}

/// A `WATCHDOG=` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watchdog {
    /// `WATCHDOG=1`: alive; the deadline moves.
    Ping,
    /// `WATCHDOG=trigger`: act as if the deadline had passed.
    Trigger,
}

impl Notification {
    /// Parses newline-separated `KEY=VALUE` assignments; unknown keys and malformed lines are
    /// ignored (as systemd does); the last assignment of a key wins.
    pub(crate) fn parse(text: &str) -> Notification {
        let mut n = Notification::default();
        for line in text.split('\n') {
            let Some((key, value)) = line.split_once('=') else { continue };
            match key {
                "READY" => n.ready = value == "1",
                "RELOADING" => n.reloading = value == "1",
                "STOPPING" => n.stopping = value == "1",
                "STATUS" => n.status = Some(value.to_owned()),
                "MAINPID" => {
                    n.main_pid = Some(match value.parse::<u32>() {
                        Ok(pid) if pid > 1 && i32::try_from(pid).is_ok() => Ok(pid),
                        _ => Err(value.to_owned()),
                    });
                }
                "WATCHDOG" => match value {
                    "1" => n.watchdog = Some(Watchdog::Ping),
                    "trigger" => n.watchdog = Some(Watchdog::Trigger),
                    _ => {}
                },
                "WATCHDOG_USEC" => n.watchdog_usec = value.parse().ok().filter(|usec| *usec > 0),
                _ => {}
            }
        }
        n
    }
}

#[cfg(test)]
mod tests;
