//! The crate's error type: one variant per way a server or a client can fail.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::wire::ErrorKind;

/// Everything that can go wrong while serving or using a restart socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A live server already accepts connections on the socket path; it is never stolen.
    #[error("socket {path} is in use by a running server")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket (a file, a directory, a symlink) exists at the socket path;
    /// it is left alone.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// An existing socket file could not be probed (for instance, no permission to connect).
    #[error("cannot probe the existing socket {path}")]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// Why connecting to it failed.
        #[source]
        source: io::Error,
    },
    /// Creating, binding, restricting (0600) or moving the socket file into place failed.
    #[error("cannot create socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An inherited file descriptor is not a listening unix stream socket.
    #[error("fd {fd} is not a listening unix stream socket: {reason}")]
    NotAListener {
        /// The descriptor number.
        fd: i32,
        /// What is wrong with it.
        reason: String,
    },
    /// Duplicating the listening socket for a successor (or for serving) failed.
    #[error("cannot duplicate the listening socket")]
    Dup {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Installing the SIGUSR1 handler failed.
    #[error("cannot install the SIGUSR1 handler")]
    Signal {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// No server at the path: the socket file is missing (`ENOENT`) or nobody accepts on it
    /// (`ECONNREFUSED`, a stale socket of a dead process).
    #[error("no server at {path}")]
    NoServer {
        /// The socket path.
        path: PathBuf,
        /// `ENOENT` or `ECONNREFUSED`.
        #[source]
        source: io::Error,
    },
    /// The server at the path runs as a uid the client does not trust
    /// ([`ClientConfig`](crate::ClientConfig)); nothing was sent to it.
    #[error("the server at {path} runs as uid {uid}, which is not trusted; nothing was sent to it")]
    UntrustedServer {
        /// The socket path.
        path: PathBuf,
        /// The server's uid (`SO_PEERCRED`).
        uid: u32,
        /// The server's pid, when the kernel told it.
        pid: Option<u32>,
    },
    /// Connecting failed for another reason (permissions, path too long, ...).
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing a frame failed.
    #[error("i/o error on the control connection")]
    Io {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The peer closed the connection before a whole frame arrived.
    #[error("connection closed before a complete answer arrived")]
    Closed,
    /// No answer within the allowed time.
    #[error("no answer within {timeout:?}")]
    Timeout {
        /// How long we waited.
        timeout: Duration,
    },
    /// A frame announced a length over the limit; it was refused without being read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit ([`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN)).
        max: usize,
    },
    /// The frame carries a protocol version this side does not speak.
    #[error("unsupported protocol version {got} (this side speaks {expected})")]
    UnsupportedVersion {
        /// The version in the frame.
        got: u32,
        /// The version this side speaks ([`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION)).
        expected: u32,
    },
    /// The frame's payload could not be decoded.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
    /// The server answered the request with an error response (not allowed, bad request, busy).
    #[error("server refused the request ({kind}): {message}")]
    Refused {
        /// The kind of refusal.
        kind: ErrorKind,
        /// The server's explanation.
        message: String,
    },
    /// The server answered with a response that does not belong to the request.
    #[error("unexpected answer to {request}: {response}")]
    UnexpectedResponse {
        /// The request that was sent.
        request: &'static str,
        /// The answer, debug-formatted.
        response: String,
    },
    /// The server attempted the restart and it failed; the service keeps running as before.
    #[error("restart failed: {reason}")]
    RestartFailed {
        /// The restart handler's reason.
        reason: String,
    },
}

impl Error {
    /// Whether this error means "there is no server": the socket is missing or dead. The CLI
    /// exits 69 (`EX_UNAVAILABLE`) for these.
    pub fn is_no_server(&self) -> bool {
        matches!(self, Error::NoServer { .. })
    }
}

/// An error and each of its sources on one line, joined by `: `, for text that leaves the
/// process or is read by a person without a chain printer (a restart's failure reason, an event).
/// The messages never repeat their source, so each cause appears exactly once.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    use std::fmt::Write as _;
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let _ = write!(line, ": {cause}");
        next = cause.source();
    }
    line
}
