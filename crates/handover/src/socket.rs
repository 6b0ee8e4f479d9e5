//! The second mode: an independently started successor fetches fds (`SCM_RIGHTS`) and state
//! from the running process over a unix socket.
//!
//! Wire: successor → `LLho` + version byte; old → `u32` LE length + postcard [`Offer`], with the
//! fds attached (`SCM_RIGHTS`) to its first byte; old → the state, then end of stream;
//! successor → the readiness message (`R` + pid).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::fds::Origin;
use crate::handover::{Handover, ReadySink, Start, StateSource};
use crate::spawn::read_ready;
use crate::upgrader::Upgrader;
use crate::{Config, Error, StateWriter};

const REQUEST: [u8; 5] = [b'L', b'L', b'h', b'o', 1];
/// Offers larger than this are refused before allocating.
const MAX_OFFER: usize = 64 * 1024;
/// The kernel's limit on fds in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// The old process's answer to a successor's request.
#[derive(Debug, Serialize, Deserialize)]
enum Offer {
    /// Here are the fds (attached, in this order) and then the state.
    Accept { pid: u32, names: Vec<String> },
    /// No handover now (one is running, or this process already handed over).
    Refuse { reason: String },
}

fn protocol(reason: impl Into<String>) -> Error {
    Error::Protocol { reason: reason.into() }
}

impl Handover {
    /// Sets up the handover of a process started independently of the running one (another
    /// unit, another container sharing a directory): connects to the running process's handover
    /// socket at `path` (served by [`Upgrader::serve_successors`]) and receives its named file
    /// descriptors (`SCM_RIGHTS`) and then, through [`Handover::read_state`], its state.
    /// [`Handover::ready`] tells the old process, which then drains and exits.
    ///
    /// Fails with [`Error::Connect`] when nothing listens at `path`, and [`Error::Protocol`] when
    /// the running process refuses (an upgrade is already running) or misbehaves.
    pub async fn from_socket(config: Config, path: impl AsRef<Path>) -> Result<Handover, Error> {
        let path = path.as_ref();
        let timeout = config.ready_timeout;
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|source| Error::Connect { path: path.to_owned(), source })?;
        // Only a process of our own user (or root) may hand us sockets and state.
        let cred = stream.peer_cred().map_err(Error::io("read the peer's credentials"))?;
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid() != me && cred.uid() != 0 {
            return Err(protocol(format!(
                "the process at {} runs as uid {}, not {me}",
                path.display(),
                cred.uid()
            )));
        }
        let offer = tokio::time::timeout(timeout, async {
            stream.write_all(&REQUEST).await.map_err(Error::io("send the handover request"))?;
            recv_offer(&mut stream).await
        })
        .await
        .map_err(|_| protocol(format!("no answer within {}", crate::error::Secs(timeout))))??;
        let (predecessor, fds) = offer;
        let mut handover = Handover::bare(config, Start::Connected { predecessor })?;
        for (name, fd) in fds {
            handover.inherited.push(name, fd, Origin::Predecessor);
        }
        let (read, write) = stream.into_split();
        handover.state = Some(StateSource::Socket(read));
        handover.ready = Some(ReadySink::Socket(write));
        tracing::info!(predecessor, fds = handover.inherited.len(), "connected to the running process");
        Ok(handover)
    }
}

async fn recv_offer(stream: &mut UnixStream) -> Result<(u32, Vec<(String, OwnedFd)>), Error> {
    let mut len = [0u8; 4];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < len.len() {
        stream.readable().await.map_err(Error::io("wait for the handover offer"))?;
        let raw = stream.as_raw_fd();
        match stream.try_io(Interest::READABLE, || recv_with_fds(raw, &mut len[got..], &mut fds)) {
            Ok(0) => return Err(protocol("the running process closed the connection")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(source) => return Err(Error::Io { op: "receive the handover offer", source }),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_OFFER {
        return Err(protocol(format!("offer of {len} bytes exceeds {MAX_OFFER}")));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.map_err(Error::io("receive the handover offer"))?;
    let offer: Offer =
        postcard::from_bytes(&payload).map_err(|e| protocol(format!("malformed offer: {e}")))?;
    match offer {
        Offer::Refuse { reason } => Err(protocol(format!("the running process refused: {reason}"))),
        Offer::Accept { pid, names } => {
            if names.len() != fds.len() {
                return Err(protocol(format!("{} names for {} file descriptors", names.len(), fds.len())));
            }
            for name in &names {
                crate::env::validate_name(name)?;
            }
            Ok((pid, names.into_iter().zip(fds).collect()))
        }
    }
}

/// One `recvmsg` into `buf`, collecting any passed fds (close-on-exec) into `fds`.
fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel just installed `r` in this process's table for this
                // message; nothing else knows the number, so this is its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok(msg.bytes)
}

async fn send_offer(stream: &mut UnixStream, offer: &Offer, fds: &[OwnedFd]) -> Result<(), Error> {
    let payload =
        postcard::to_stdvec(offer).map_err(|e| protocol(format!("cannot encode the offer: {e}")))?;
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = loop {
        stream.writable().await.map_err(Error::io("send the handover offer"))?;
        let sock = stream.as_raw_fd();
        let result = stream.try_io(Interest::WRITABLE, || {
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
            Ok(sendmsg::<UnixAddr>(sock, &[IoSlice::new(&bytes)], cmsgs, MsgFlags::MSG_NOSIGNAL, None)?)
        });
        match result {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(source) => return Err(Error::Io { op: "send the handover offer", source }),
        }
    };
    // The fds travelled with the first byte; the rest of a short send is plain data.
    stream.write_all(&bytes[sent..]).await.map_err(Error::io("send the handover offer"))
}

impl Upgrader {
    /// Serves independently started successors ([`Handover::from_socket`]) on `listener`, one
    /// at a time, until one of them takes over; returns its pid.
    ///
    /// Each connecting peer must run as this process's effective uid (or root). It gets the
    /// registered fds and the state, and has [`Config::ready_timeout`] to call `ready()`. A peer
    /// that fails is logged and this process keeps serving (an independent successor is not this
    /// process's child and is not killed). A peer arriving while an upgrade runs is refused with
    /// "restart already in progress". Returns [`Error::AlreadyUpgraded`] once this process handed
    /// over by any path, and an I/O error if `accept` fails.
    ///
    /// Register the listener itself (for instance as `handover`) so that the successor serves the
    /// next one on the same path.
    pub async fn serve_successors(&self, listener: std::os::unix::net::UnixListener) -> Result<u32, Error> {
        listener.set_nonblocking(true).map_err(Error::io("set the handover socket non-blocking"))?;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(Error::io("register the handover socket"))?;
        let upgraded = self.upgraded();
        loop {
            let stream = tokio::select! {
                () = upgraded.cancelled() => {
                    return Err(Error::AlreadyUpgraded { pid: self.successor().unwrap_or_default() });
                }
                accepted = listener.accept() => accepted.map_err(Error::io("accept on the handover socket"))?.0,
            };
            match self.hand_over_on(stream).await {
                Ok(pid) => return Ok(pid),
                Err(Error::AlreadyUpgraded { pid }) => return Err(Error::AlreadyUpgraded { pid }),
                Err(err) => tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "a successor on the handover socket failed"
                ),
            }
        }
    }

    async fn hand_over_on(&self, mut stream: UnixStream) -> Result<u32, Error> {
        let timeout = self.shared.config.ready_timeout;
        let deadline = crate::config::deadline_after(Instant::now(), timeout);
        let cred = stream.peer_cred().map_err(Error::io("read the peer's credentials"))?;
        let peer = cred.pid().unwrap_or_default() as u32;
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid() != me && cred.uid() != 0 {
            return Err(protocol(format!("peer pid {peer} runs as uid {}, not {me}", cred.uid())));
        }
        let mut request = [0u8; REQUEST.len()];
        tokio::time::timeout_at(deadline, stream.read_exact(&mut request))
            .await
            .map_err(|_| protocol(format!("peer pid {peer} sent no request")))?
            .map_err(Error::io("read the handover request"))?;
        if request != REQUEST {
            return Err(protocol(format!("peer pid {peer} sent {request:?}, not a handover request")));
        }
        let started = std::time::Instant::now();
        let mut lifecycle = match self.begin() {
            Ok(guard) => guard,
            Err(err) => {
                // Best effort: the peer learns why before the connection closes.
                let _ =
                    send_offer(&mut stream, &Offer::Refuse { reason: crate::error::chain(&err) }, &[]).await;
                return Err(err);
            }
        };
        tracing::info!(peer, "handing over to a connected successor");
        self.announce_reload();
        let result = self.offer_and_wait(stream, peer, deadline, &mut **lifecycle).await;
        self.finish(result, &mut **lifecycle, started).await
    }

    async fn offer_and_wait(
        &self,
        mut stream: UnixStream,
        peer: u32,
        deadline: Instant,
        lifecycle: &mut dyn crate::lifecycle::DynLifecycle,
    ) -> Result<u32, Error> {
        let extra = lifecycle.upgrade_fds().await.map_err(|source| Error::SendState { source })?;
        let (names, fds) = {
            let registry = self.shared.registry();
            let mut names = Vec::new();
            let mut fds = Vec::new();
            for (name, fd) in registry.iter() {
                names.push(name.to_owned());
                fds.push(
                    fd.try_clone_to_owned().map_err(Error::io("duplicate a registered file descriptor"))?,
                );
            }
            // This upgrade's own fds (see `LifecycleHandler::upgrade_fds`), after the registered.
            for (name, fd) in extra {
                crate::env::validate_name(&name)?;
                if names.contains(&name) {
                    return Err(Error::DuplicateName { name });
                }
                names.push(name);
                fds.push(fd);
            }
            (names, fds)
        };
        if fds.len() > MAX_FDS {
            return Err(protocol(format!(
                "{} file descriptors exceed the {MAX_FDS} one message carries",
                fds.len()
            )));
        }
        send_offer(&mut stream, &Offer::Accept { pid: std::process::id(), names }, &fds).await?;
        drop(fds);
        let (read, write) = stream.into_split();
        let mut writer = StateWriter::new(write, self.shared.config.state_limit);
        let send = async move {
            let result = lifecycle.send_state(&mut writer).await;
            // Dropping the write half shuts the stream down for writing: the end of the state.
            drop(writer);
            result
        };
        let wait = async {
            tokio::pin!(send);
            let read = read_ready(read);
            tokio::pin!(read);
            let mut sending = true;
            loop {
                tokio::select! {
                    result = &mut read => return match result? {
                        Some(pid) => Ok(pid),
                        None => Err(Error::ClosedWithoutReady { pid: peer }),
                    },
                    result = &mut send, if sending => {
                        sending = false;
                        match result {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                            Err(source) => return Err(Error::SendState { source }),
                        }
                    }
                }
            }
        };
        tokio::select! {
            biased;
            waited = tokio::time::timeout_at(deadline, wait) => {
                waited.unwrap_or(Err(Error::NotReady { pid: peer, timeout: self.shared.config.ready_timeout }))
            }
            // An independent successor is not our child: it is told (the connection closes), not killed.
            () = self.shared.stopping.cancelled() => Err(Error::Aborted { pid: peer }),
        }
    }
}
