//! The client: connect to a service's socket, ask for its status or a restart.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::Error;
use crate::wire::{self, ErrorKind, ReadError, Request, Response, Status, SupervisorStatus};

/// How long [`Client::status`] waits by default (see [`Client::set_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which servers a [`Client`] talks to.
///
/// Whoever can create a file where the client looks could answer in the service's name (a path
/// in a shared directory, a socket planted before the service started). So before sending a
/// byte, the client reads the server's uid from the connection (`SO_PEERCRED`, set by the
/// kernel) and refuses a server outside the expected set with [`Error::UntrustedServer`].
///
/// ```
/// use restart_socket::ClientConfig;
///
/// // Default: the server runs as our effective uid or as root.
/// let default = ClientConfig::default();
/// assert!(default.server_uids.is_empty());
/// // Exactly these uids (root is then not implied).
/// let service = ClientConfig::default().server_uid(998);
/// assert_eq!(service.server_uids, [998]);
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The uids the server may run as. Empty (the default): this process's effective uid or root.
    pub server_uids: Vec<u32>,
}

impl ClientConfig {
    /// Expects the server to run as `uid` (or another uid added this way); our own uid and root
    /// are then trusted only if added too.
    pub fn server_uid(mut self, uid: u32) -> Self {
        self.server_uids.push(uid);
        self
    }

    /// Whether a server running as `uid` is trusted.
    fn trusts(&self, uid: u32) -> bool {
        if self.server_uids.is_empty() {
            uid == nix::unistd::geteuid().as_raw() || uid == 0
        } else {
            self.server_uids.contains(&uid)
        }
    }
}

/// A connection to a restart socket. Requests can be sent one after another on it.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    timeout: Duration,
    buf: Vec<u8>,
    /// What it was connected with, to connect again ([`Client::details`] with an old server).
    config: ClientConfig,
}

impl Client {
    /// Connects to the socket at `path`, whose server must run as our effective uid or root
    /// ([`ClientConfig::default`]).
    ///
    /// A missing socket file or one nobody accepts on is [`Error::NoServer`]; a server of another
    /// user is [`Error::UntrustedServer`] (nothing was sent to it).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        Self::connect_with(path, &ClientConfig::default()).await
    }

    /// Connects to the socket at `path`, whose server must run as a uid `config` trusts.
    pub async fn connect_with(path: impl AsRef<Path>, config: &ClientConfig) -> Result<Client, Error> {
        let path = path.as_ref().to_owned();
        let stream = match UnixStream::connect(&path).await {
            Ok(stream) => stream,
            Err(source)
                if matches!(source.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) =>
            {
                return Err(Error::NoServer { path, source });
            }
            Err(source) => return Err(Error::Connect { path, source }),
        };
        // The credentials the kernel recorded when the server called listen(): not forgeable.
        let cred = stream.peer_cred().map_err(|source| Error::Connect { path: path.clone(), source })?;
        if !config.trusts(cred.uid()) {
            return Err(Error::UntrustedServer { path, uid: cred.uid(), pid: cred.pid().map(|p| p as u32) });
        }
        Ok(Client { stream, path, timeout: DEFAULT_TIMEOUT, buf: Vec::new(), config: config.clone() })
    }

    /// Sets how long [`status`](Self::status) and [`request`](Self::request) wait for an answer.
    /// [`Duration::MAX`] (or anything too long for a deadline) waits for ever; nothing overflows.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks for the service's status.
    pub async fn status(&mut self) -> Result<Status, Error> {
        match self.request(Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(Request::Status, &other)),
        }
    }

    /// Asks for the detailed status: [`Details::Supervisor`] from a supervisor
    /// (`lifeline supervise --control`), [`Details::Service`] from any other server. A server
    /// that predates [`Request::Details`] refuses it (an error frame, connection closed): then
    /// this connects again and asks for the plain status.
    pub async fn details(&mut self) -> Result<Details, Error> {
        match self.request(Request::Details).await {
            Ok(Response::Supervisor(status)) => Ok(Details::Supervisor(status)),
            Ok(Response::Status(status)) => Ok(Details::Service(status)),
            Ok(other) => Err(unexpected(Request::Details, &other)),
            Err(Error::Refused { kind: ErrorKind::Malformed, .. }) => {
                let mut again = Client::connect_with(&self.path, &self.config).await?;
                again.set_timeout(self.timeout);
                again.status().await.map(Details::Service)
            }
            Err(err) => Err(err),
        }
    }

    /// Asks a supervisor to stop the service and waits up to `timeout` until it has: the main
    /// pid that was stopped (`None` if none ran). A service's own socket refuses
    /// ([`Error::Refused`] with [`ErrorKind::Unsupported`]).
    pub async fn stop(&mut self, timeout: Duration) -> Result<Option<u32>, Error> {
        match self.exchange(Request::Stop, timeout).await? {
            Response::Stopped { pid } => Ok(pid),
            other => Err(unexpected(Request::Stop, &other)),
        }
    }

    /// Asks the service to restart and waits up to `timeout` for the outcome: the new pid, or
    /// [`Error::RestartFailed`] with the server's reason.
    ///
    /// Giving up waiting does not stop a restart the server has begun.
    pub async fn restart(&mut self, timeout: Duration) -> Result<u32, Error> {
        match self.exchange(Request::Restart, timeout).await? {
            Response::RestartComplete { pid } => Ok(pid),
            Response::RestartFailed { reason } => Err(Error::RestartFailed { reason }),
            other => Err(unexpected(Request::Restart, &other)),
        }
    }

    /// Sends any request and returns the server's answer; an error response becomes
    /// [`Error::Refused`].
    pub async fn request(&mut self, request: Request) -> Result<Response, Error> {
        self.exchange(request, self.timeout).await
    }

    async fn exchange(&mut self, request: Request, timeout: Duration) -> Result<Response, Error> {
        match tokio::time::timeout(timeout, self.exchange_inner(request)).await {
            Ok(Ok(Response::Error { kind, message })) => Err(Error::Refused { kind, message }),
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { timeout }),
        }
    }

    async fn exchange_inner(&mut self, request: Request) -> Result<Response, Error> {
        let sent = self.stream.write_all(&wire::encode_request(request)).await;
        // A server that refuses us (not allowed, busy) writes its answer and closes at once, so
        // our write may fail with EPIPE while its answer waits in our receive buffer: read it.
        let read = wire::read_frame(&mut self.stream, &mut self.buf).await;
        match (read, sent) {
            (Ok(()), _) => wire::decode_response(&self.buf),
            // A server that closes while our request is still unread makes our read fail with
            // ECONNRESET rather than EOF: either way it closed without answering.
            (Err(ReadError::Io(err)), _) if err.kind() == io::ErrorKind::ConnectionReset => {
                Err(Error::Closed)
            }
            (Err(_), Err(source)) | (Err(ReadError::Io(source)), Ok(())) => Err(Error::Io { source }),
            (Err(ReadError::Eof | ReadError::Truncated), Ok(())) => Err(Error::Closed),
            (Err(ReadError::TooLarge(len)), Ok(())) => {
                Err(Error::FrameTooLarge { len, max: wire::MAX_FRAME_LEN })
            }
        }
    }
}

/// The answer to [`Client::details`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Details {
    /// A service's own socket: its plain status.
    Service(Status),
    /// A supervisor's socket.
    Supervisor(SupervisorStatus),
}

fn unexpected(request: Request, response: &Response) -> Error {
    Error::UnexpectedResponse { request: request.name(), response: format!("{response:?}") }
}
