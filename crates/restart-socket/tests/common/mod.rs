//! Helpers shared by the in-process server tests: start a server in a temp dir, raw frames.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::time::Duration;

use restart_socket::wire::{self, HEADER_LEN, Response};
use restart_socket::{Error, RestartHandler, Server, ServerConfig, Status, StatusProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A server running on the current runtime, in its own temp dir.
pub struct Running {
    /// The temp dir holding the socket.
    pub dir: tempfile::TempDir,
    /// The socket path.
    pub path: PathBuf,
    /// Cancels `serve`.
    pub shutdown: CancellationToken,
    /// The task running `serve`.
    pub task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Cancels the server and waits until `serve` returned.
    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("serve returns")
            .expect("join")
            .expect("serve ok");
        self.dir
    }
}

/// The status every test server reports (generation varies).
pub fn status_of(generation: u64) -> Status {
    Status {
        pid: std::process::id(),
        generation,
        started_at: 1_700_000_000_000,
        last_restart: Some(1_700_000_100_000),
    }
}

/// A provider answering `status_of(1)`.
pub fn fixed_status() -> impl StatusProvider {
    || async { status_of(1) }
}

/// Starts a server with `config` at `<tmp>/control.sock`.
pub fn start(config: ServerConfig, restart: impl RestartHandler, status: impl StatusProvider) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("control.sock");
    let server = Server::bind(&path, config).expect("bind");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(restart, status, shutdown.clone()));
    Running { dir, path, shutdown, task }
}

/// Starts a server whose restart handler answers `Ok(4242)`.
pub fn start_default() -> Running {
    start(ServerConfig::default(), || async { Ok::<u32, String>(4242) }, fixed_status())
}

/// Sends `bytes` on a fresh connection, closes the sending side, and returns every response
/// frame the server sent before closing (panics if the server never closes).
pub async fn exchange_raw(path: &std::path::Path, bytes: &[u8]) -> Vec<Response> {
    let mut stream = UnixStream::connect(path).await.expect("connect");
    // The server may close early (after refusing an oversized header): ignore write errors.
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut out = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // The server closed with part of our bytes unread: that ends the stream too.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(err) => panic!("read: {err}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all).await.expect("the server closes the connection");
    parse_frames(&out)
}

/// Splits a byte stream into response frames, asserting each decodes.
pub fn parse_frames(mut bytes: &[u8]) -> Vec<Response> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= HEADER_LEN, "partial header from the server: {bytes:?}");
        let len =
            wire::payload_len(bytes[..HEADER_LEN].try_into().unwrap()).expect("server frame within limit");
        let payload = &bytes[HEADER_LEN..HEADER_LEN + len];
        frames.push(wire::decode_response(payload).expect("server frame decodes"));
        bytes = &bytes[HEADER_LEN + len..];
    }
    frames
}

/// A frame with the given payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}
