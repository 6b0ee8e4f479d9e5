//! The `NOTIFY_SOCKET` server: a unix datagram socket that speaks systemd's `sd_notify` protocol.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt};
use tokio::io::unix::AsyncFd;

use crate::Error;
use crate::config::NotifyAddress;

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

/// The prefix of the private directory a path socket lives in (under the temporary directory).
const DIR_PREFIX: &str = "lifeline-notify-";
/// The socket's name in that directory.
const SOCKET_NAME: &str = "notify";

/// The server side of `NOTIFY_SOCKET`.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: AsyncFd<UnixDatagram>,
    /// The `NOTIFY_SOCKET` value: a path, or `@name` for an abstract socket.
    address: String,
    /// For a path socket: what to remove when done — only ever what we created (or verified to
    /// be what a supervisor before us created).
    on_disk: Option<OnDisk>,
}

/// A socket file we bound, in a private directory of ours.
#[derive(Debug)]
struct OnDisk {
    path: PathBuf,
    dir: PathBuf,
    /// The socket file's device and inode once bound: a file at the path that is not this one is
    /// not ours to remove.
    id: (u64, u64),
}

impl NotifySocket {
    /// Creates a fresh socket of the given kind.
    pub(crate) fn bind(kind: NotifyAddress) -> Result<NotifySocket, Error> {
        match kind {
            NotifyAddress::Abstract => {
                let name = format!("lifeline-notify/{}/{:016x}", std::process::id(), nonce());
                Self::bind_abstract(&name)
            }
            NotifyAddress::PrivateDir => {
                let err = |source| Error::NotifySocket {
                    address: std::env::temp_dir().display().to_string(),
                    source,
                };
                // Mode 0700 from the start (tempfile's default is 0777 minus the umask): only our
                // uid (and root) can reach the socket. Set again after creation, in case the umask
                // took bits we need; nobody else can have reached the directory meanwhile.
                let dir = tempfile::Builder::new()
                    .prefix(DIR_PREFIX)
                    .permissions(std::fs::Permissions::from_mode(0o700))
                    .tempdir()
                    .map_err(err)?
                    .keep();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
                Self::bind_path(dir.join(SOCKET_NAME), dir)
            }
        }
    }

    /// Binds again at an address a previous supervisor used (adoption), so that the adopted
    /// service's messages keep arriving.
    ///
    /// The address comes from a snapshot, which may be stale or tampered with: a path is replaced
    /// only if it is verifiably a socket a lifeline supervisor created (see [`created_by_lifeline`]);
    /// otherwise nothing is touched and the error says why.
    pub(crate) fn rebind(address: &str) -> Result<NotifySocket, Error> {
        if let Some(name) = address.strip_prefix('@') {
            return Self::bind_abstract(name);
        }
        let path = PathBuf::from(address);
        let err = |source| Error::NotifySocket { address: address.to_owned(), source };
        let dir = created_by_lifeline(&path, nix::unistd::geteuid().as_raw()).map_err(|reason| {
            err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("not a notify socket lifeline created: {reason}"),
            ))
        })?;
        // The old supervisor left its socket file behind, in its private directory: replace it.
        std::fs::remove_file(&path).map_err(err)?;
        Self::bind_path(path, dir)
    }

    fn bind_path(path: PathBuf, dir: PathBuf) -> Result<NotifySocket, Error> {
        let address = path.display().to_string();
        let err = |source| Error::NotifySocket { address: address.clone(), source };
        let socket = UnixDatagram::bind(&path).map_err(err)?;
        let meta = std::fs::symlink_metadata(&path).map_err(err)?;
        let on_disk = OnDisk { path, dir, id: (meta.dev(), meta.ino()) };
        Self::finish(socket, address.clone(), Some(on_disk)).map_err(err)
    }

    fn bind_abstract(name: &str) -> Result<NotifySocket, Error> {
        let address = format!("@{name}");
        let err = |source| Error::NotifySocket { address: address.clone(), source };
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?;
        let socket = UnixDatagram::bind_addr(&addr).map_err(err)?;
        Self::finish(socket, address.clone(), None).map_err(err)
    }

    fn finish(socket: UnixDatagram, address: String, on_disk: Option<OnDisk>) -> io::Result<NotifySocket> {
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
        if let Some(OnDisk { path, dir, id }) = self.on_disk.take() {
            // Only the file we bound (the directory is ours, mode 0700: nobody else but root could
            // have replaced it, but a file that is not ours is left alone all the same).
            if std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == id) {
                let _ = std::fs::remove_file(&path);
            }
            // Only succeeds if empty: never removes anything but our own private directory.
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Whether `path` is a notify socket a lifeline supervisor running as `euid` created: a socket
/// named `notify`, owned by `euid`, alone in a directory named `lifeline-notify-*` that is a real
/// directory (not a symlink) owned by `euid` with mode 0700. Returns that directory, or why not.
pub(crate) fn created_by_lifeline(path: &Path, euid: u32) -> Result<PathBuf, String> {
    if path.file_name().and_then(|n| n.to_str()) != Some(SOCKET_NAME) {
        return Err(format!("not named {SOCKET_NAME}"));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).ok_or("no directory")?;
    if !dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(DIR_PREFIX)) {
        return Err(format!("its directory is not named {DIR_PREFIX}*"));
    }
    let dir_meta = std::fs::symlink_metadata(dir).map_err(|e| format!("its directory: {e}"))?;
    if !dir_meta.file_type().is_dir() {
        return Err("its directory is not a directory".to_owned());
    }
    if dir_meta.uid() != euid || dir_meta.mode() & 0o7777 != 0o700 {
        return Err(format!(
            "its directory is owned by uid {} with mode {:04o} (not uid {euid}, 0700)",
            dir_meta.uid(),
            dir_meta.mode() & 0o7777
        ));
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_socket() || meta.uid() != euid {
        return Err(format!("not a socket of uid {euid}"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("its directory: {e}"))?;
    let mut names = Vec::new();
    for entry in entries.take(2) {
        names.push(entry.map_err(|e| format!("its directory: {e}"))?.file_name());
    }
    if names != [std::ffi::OsString::from(SOCKET_NAME)] {
        return Err("its directory holds other files".to_owned());
    }
    Ok(dir.to_path_buf())
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
