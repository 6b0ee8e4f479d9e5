//! The wire protocol: `u32` little-endian length + postcard payload, versioned in every frame.
//!
//! A request frame's payload is `postcard((PROTOCOL_VERSION, Request))`, a response frame's is
//! `postcard((PROTOCOL_VERSION, Response))`. postcard writes the version first as a varint, so a
//! reader checks it before it interprets the rest: a peer speaking another version gets
//! [`Error::UnsupportedVersion`] even when the rest would not decode. Frames whose announced
//! length exceeds [`MAX_FRAME_LEN`] are refused before any buffer is allocated for them.
//!
//! Nothing read from the wire is trusted: every decoder returns an [`Error`] and never panics.

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::Error;

/// The protocol version this crate speaks; carried in every request and response.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest payload accepted, in bytes (64 KiB). Longer frames are refused unread.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Length of the frame header: the payload length as a little-endian `u32`.
pub const HEADER_LEN: usize = 4;

/// Longest restart-failure reason or error message the server sends; longer ones are cut (on a
/// character boundary) so that an answer always fits a frame.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Restart the service (typically a zero-downtime handover); answered with
    /// [`Response::RestartComplete`] or [`Response::RestartFailed`].
    Restart,
    /// Report the service's status; answered with [`Response::Status`].
    Status,
    /// Report the status in detail; a supervisor (`lifeline supervise --control`) answers
    /// [`Response::Supervisor`], any other server [`Response::Status`]. Added after version 1's
    /// first release, compatibly: a server that predates it answers an error frame
    /// ([`ErrorKind::Malformed`]), and a client then asks for [`Request::Status`].
    Details,
    /// Stop the service; answered with [`Response::Stopped`] once it has stopped, or
    /// [`ErrorKind::Unsupported`] by a server that takes no stop requests. Added compatibly like
    /// [`Request::Details`].
    Stop,
}

impl Request {
    /// The request's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Request::Restart => "restart",
            Request::Status => "status",
            Request::Details => "details",
            Request::Stop => "stop",
        }
    }
}

/// The state of a running service, as its status provider reports it.
///
/// Times are unix-epoch milliseconds ([`unix_millis`] converts a `SystemTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Status {
    /// The pid of the process serving the socket (the service's current main pid).
    pub pid: u32,
    /// How many processes have served so far: 1 for the first, +1 on every restart.
    pub generation: u64,
    /// When the current process started (unix-epoch milliseconds).
    pub started_at: u64,
    /// When the last restart completed (unix-epoch milliseconds); `None` before the first.
    pub last_restart: Option<u64>,
}

/// What a supervisor is doing, in [`SupervisorStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SupervisorState {
    /// The service's main process runs.
    Running,
    /// Waiting out a restart delay.
    BackingOff,
    /// Stopping the service.
    Stopping,
    /// Supervision has ended.
    Finished,
}

/// A supervisor's detailed status (`lifeline supervise --control`): the answer to
/// [`Request::Details`]. Times are unix-epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// The service's current main pid; `None` while none runs (backing off, stopped).
    pub pid: Option<u32>,
    /// How many processes have been the service's main process: starts, handovers and
    /// rollbacks each count one.
    pub generation: u64,
    /// When the current main process began (its start, adoption, or becoming the main one).
    pub since: Option<u64>,
    /// When the last restart or handover happened; `None` before the first.
    pub last_restart: Option<u64>,
    /// The supervisor's own pid.
    pub supervisor_pid: u32,
    /// When the supervisor started.
    pub supervisor_started_at: u64,
    /// What it is doing.
    pub state: SupervisorState,
    /// Whether the main process is ready (its `READY=1`, its probes).
    pub ready: bool,
    /// How many times the command was started again (starts after the first).
    pub restarts: u32,
    /// How the last main process ended, in words (`exited with code 1`, `killed by SIGKILL`).
    pub last_exit: Option<String>,
    /// While backing off: when the next start is due.
    pub backoff_until: Option<u64>,
    /// Previous main processes still draining after a handover.
    pub retired: Vec<u32>,
    /// How many times a previous main process took the service back (a rollback).
    pub rollbacks: u32,
    /// The service's last `STATUS=` text.
    pub text: Option<String>,
}

impl SupervisorStatus {
    /// Whether the service is up: running and ready. `lifeline status` exits 0 for it, 3 for a
    /// supervisor whose service is not (a health check's answer).
    pub fn is_up(&self) -> bool {
        self.state == SupervisorState::Running && self.ready && self.pid.is_some()
    }

    /// The plain [`Status`] for a [`Request::Status`]: the main pid (0 while none runs), the
    /// generation, since when it runs (or the supervisor's start), the last restart.
    pub fn plain(&self) -> Status {
        Status {
            pid: self.pid.unwrap_or(0),
            generation: self.generation,
            started_at: self.since.unwrap_or(self.supervisor_started_at),
            last_restart: self.last_restart,
        }
    }
}

/// Why the server refused a request; carried in [`Response::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request's protocol version is not the server's.
    UnsupportedVersion,
    /// The frame's payload could not be decoded.
    Malformed,
    /// The frame announced more than [`MAX_FRAME_LEN`] bytes.
    FrameTooLarge,
    /// The peer's uid is not allowed on this socket.
    PermissionDenied,
    /// The server already serves its maximum number of connections.
    Busy,
    /// The peer did not send a complete request in time.
    Timeout,
    /// This server does not take this request (a [`Request::Stop`] to a service's own socket).
    Unsupported,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::UnsupportedVersion => "unsupported version",
            ErrorKind::Malformed => "malformed request",
            ErrorKind::FrameTooLarge => "frame too large",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Busy => "busy",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unsupported => "unsupported request",
        })
    }
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The restart succeeded; `pid` is the new process (the service's new main pid).
    RestartComplete {
        /// The new process's pid.
        pid: u32,
    },
    /// The restart failed; the old process keeps serving.
    RestartFailed {
        /// Why, in one line.
        reason: String,
    },
    /// The answer to [`Request::Status`].
    Status(Status),
    /// The request was refused; the server closes the connection after sending this.
    Error {
        /// The kind of refusal.
        kind: ErrorKind,
        /// A one-line explanation.
        message: String,
    },
    /// The answer of a supervisor to [`Request::Details`].
    Supervisor(SupervisorStatus),
    /// The answer to [`Request::Stop`]: the service has stopped; `pid` was its main process.
    Stopped {
        /// The main pid that was stopped; `None` if none ran.
        pid: Option<u32>,
    },
}

/// Encodes a request as a complete frame (header included).
pub fn encode_request(request: Request) -> Vec<u8> {
    encode(&(PROTOCOL_VERSION, request))
}

/// Encodes a response as a complete frame (header included). Messages longer than
/// [`MAX_MESSAGE_LEN`] are cut.
pub fn encode_response(response: &Response) -> Vec<u8> {
    match response {
        Response::RestartFailed { reason } if reason.len() > MAX_MESSAGE_LEN => {
            encode(&(PROTOCOL_VERSION, Response::RestartFailed { reason: cut(reason) }))
        }
        Response::Error { kind, message } if message.len() > MAX_MESSAGE_LEN => {
            encode(&(PROTOCOL_VERSION, Response::Error { kind: *kind, message: cut(message) }))
        }
        _ => encode(&(PROTOCOL_VERSION, response)),
    }
}

/// Decodes a request frame's payload (the bytes after the header).
pub fn decode_request(payload: &[u8]) -> Result<Request, Error> {
    decode(payload)
}

/// Decodes a response frame's payload (the bytes after the header).
pub fn decode_response(payload: &[u8]) -> Result<Response, Error> {
    decode(payload)
}

/// Reads a frame header and returns the payload length it announces, refusing lengths over
/// [`MAX_FRAME_LEN`].
pub fn payload_len(header: [u8; HEADER_LEN]) -> Result<usize, Error> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(Error::FrameTooLarge { len, max: MAX_FRAME_LEN });
    }
    Ok(len)
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let frame = vec![0; HEADER_LEN];
    // Serialising plain enums, integers and strings into a Vec cannot fail: postcard's only
    // errors are for unsupported serde features and full fixed-size buffers, neither used here.
    match postcard::to_extend(value, frame) {
        Ok(mut frame) => {
            let len = (frame.len() - HEADER_LEN) as u32;
            frame[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
            frame
        }
        Err(err) => unreachable!("postcard cannot fail to encode into a Vec: {err}"),
    }
}

fn decode<T: Serialize + for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, Error> {
    let (version, rest): (u32, &[u8]) =
        postcard::take_from_bytes(payload).map_err(|err| Error::Malformed { reason: err.to_string() })?;
    if version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion { got: version, expected: PROTOCOL_VERSION });
    }
    let (value, rest) =
        postcard::take_from_bytes(rest).map_err(|err| Error::Malformed { reason: err.to_string() })?;
    if !rest.is_empty() {
        return Err(Error::Malformed { reason: format!("{} trailing bytes", rest.len()) });
    }
    // postcard's varint decoder accepts overlong forms (`[0x80, 0x00]` reads as 0). One value
    // has exactly one encoding on this wire: anything else is refused, so that a decoded frame
    // is always the frame its sender would have written.
    if postcard::to_stdvec(&(PROTOCOL_VERSION, &value)).ok().as_deref() != Some(payload) {
        return Err(Error::Malformed { reason: "non-canonical encoding (overlong integer)".to_owned() });
    }
    Ok(value)
}

fn cut(message: &str) -> String {
    let mut end = MAX_MESSAGE_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = message[..end].to_owned();
    cut.push('…');
    cut
}

/// How reading one frame ended, when it did not yield a payload.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream ended between frames: the peer is done.
    Eof,
    /// The stream ended inside a frame.
    Truncated,
    /// The header announced too many bytes.
    TooLarge(usize),
    /// The read failed.
    Io(std::io::Error),
}

/// Reads one frame's payload into `buf` (replacing its contents).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match reader.read(&mut header[filled..]).await {
            Ok(0) if filled == 0 => return Err(ReadError::Eof),
            Ok(0) => return Err(ReadError::Truncated),
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ReadError::Io(err)),
        }
    }
    let Ok(len) = payload_len(header) else {
        return Err(ReadError::TooLarge(u32::from_le_bytes(header) as usize));
    };
    buf.clear();
    buf.resize(len, 0);
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Err(ReadError::Truncated),
        Err(err) => Err(ReadError::Io(err)),
    }
}

/// Converts a `SystemTime` to unix-epoch milliseconds (0 for times before the epoch).
pub fn unix_millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn read(bytes: &[u8]) -> (Result<(), ReadError>, Vec<u8>) {
        let mut buf = Vec::new();
        let mut reader = bytes;
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let result = runtime.block_on(read_frame(&mut reader, &mut buf));
        (result, buf)
    }

    proptest! {
        /// What the frame reader makes of any byte stream: exactly the announced payload (never
        /// more than the limit), or a typed end — never a panic, never an allocation beyond it.
        #[test]
        fn any_stream_is_one_exact_frame_or_a_typed_end(
            len in prop_oneof![0u32..64, (MAX_FRAME_LEN as u32 - 2)..(MAX_FRAME_LEN as u32 + 2), any::<u32>()],
            body in proptest::collection::vec(any::<u8>(), 0..80),
            cut in 0usize..4,
        ) {
            let mut stream = len.to_le_bytes().to_vec();
            stream.extend_from_slice(&body);
            let header_only = &stream[..HEADER_LEN - cut];
            let (result, _) = read(if cut == 0 { &stream } else { header_only });
            match result {
                Ok(()) => {
                    let (_, buf) = read(&stream);
                    prop_assert_eq!(&buf[..], &body[..len as usize]);
                }
                Err(ReadError::Eof) => prop_assert!(cut == HEADER_LEN),
                Err(ReadError::Truncated) => {
                    prop_assert!(cut > 0 || len as usize > body.len());
                }
                Err(ReadError::TooLarge(n)) => {
                    prop_assert_eq!(n, len as usize);
                    prop_assert!(n > MAX_FRAME_LEN);
                }
                Err(ReadError::Io(err)) => prop_assert!(false, "{}", err),
            }
        }
    }
}
