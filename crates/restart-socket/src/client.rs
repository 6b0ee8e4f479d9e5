//! The client: connect to a service's socket, ask for its status or a restart.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::Error;
use crate::wire::{self, ReadError, Request, Response, Status};

/// How long [`Client::status`] waits by default (see [`Client::set_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a restart socket. Requests can be sent one after another on it.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    timeout: Duration,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to the socket at `path`.
    ///
    /// A missing socket file or one nobody accepts on is [`Error::NoServer`].
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref().to_owned();
        match UnixStream::connect(&path).await {
            Ok(stream) => Ok(Client { stream, path, timeout: DEFAULT_TIMEOUT, buf: Vec::new() }),
            Err(source)
                if matches!(source.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) =>
            {
                Err(Error::NoServer { path, source })
            }
            Err(source) => Err(Error::Connect { path, source }),
        }
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

fn unexpected(request: Request, response: &Response) -> Error {
    Error::UnexpectedResponse { request: request.name(), response: format!("{response:?}") }
}
