//! A unix control socket through which an operator (or `lifeline restart`) asks a running service
//! to restart itself, and learns the outcome: the new pid, or exactly why it failed.
//!
//! The service binds a [`Server`] at a path, gives it a [`RestartHandler`] (usually a
//! zero-downtime handover to a new process) and a [`StatusProvider`], and serves until a
//! [`CancellationToken`] is cancelled. Operators and tests
//! use a [`Client`]. The protocol: `u32` little-endian length + postcard payload, a protocol
//! version ([`PROTOCOL_VERSION`]) in every frame, at most [`MAX_FRAME_LEN`] (64 KiB) per frame;
//! the messages are [`Request`] and [`Response`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use restart_socket::{CancellationToken, Client, Server, ServerConfig, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), restart_socket::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("control.sock");
//!
//! // The service: bind (mode 0600), then serve with two closures.
//! let server = Server::bind(&path, ServerConfig::default())?;
//! let listener = server.listener(); // to export the listening fd during a handover
//! let restart = move || {
//!     let _listener = listener.clone();
//!     async move {
//!         // A real handler exports `_listener.export()?` to a new process, waits until it is
//!         // ready and returns its pid. Here it only pretends.
//!         Ok::<u32, String>(4242)
//!     }
//! };
//! let status = || async {
//!     Status { pid: std::process::id(), generation: 1, started_at: 0, last_restart: None }
//! };
//! let shutdown = CancellationToken::new();
//! let serving = tokio::spawn(server.serve(restart, status, shutdown.clone()));
//!
//! // The operator's side.
//! let mut client = Client::connect(&path).await?;
//! assert_eq!(client.status().await?.pid, std::process::id());
//! assert_eq!(client.restart(Duration::from_secs(30)).await?, 4242);
//!
//! // Clean shutdown removes the socket file.
//! shutdown.cancel();
//! serving.await.unwrap()?;
//! assert!(!path.exists());
//! # Ok(())
//! # }
//! ```
//!
//! A successor process continues on the same socket with [`Server::adopt`]: the predecessor's
//! [`ListenerHandle::export`] gives an `OwnedFd` (close-on-exec; clear it in the child only),
//! the child passes it, with the path, to `Server::adopt(fd, path, config)` and, once it has
//! taken over for good, [`ListenerHandle::claim`]s the file. The socket path never disappears:
//! the exporting process no longer removes the file, and a successor removes it only after it
//! claimed it — one that fails while starting leaves it to the predecessor still serving on it.
//!
//! # Ordering and safety
//!
//! - Bind (or adopt) before dropping privileges or entering a sandbox: the socket file is
//!   created, chmod-ed and renamed under the service's own identity, and a handover needs the
//!   fd inherited across `execve`.
//! - The socket file is bound and set to mode 0600 inside a private directory (0700, random name)
//!   created beside the final path, and only then moved into place, so it is never reachable
//!   with wider permissions, and nothing another user plants in a shared directory (a file or
//!   symlink at a predictable name) can block the bind or redirect its `chmod`. A stale socket
//!   (connecting is refused: its server died) is replaced; a live one is [`Error::InUse`]; a path
//!   that is not a socket is never deleted ([`Error::NotASocket`]).
//! - Every connection's `SO_PEERCRED` uid is checked before a byte is read: only the server's
//!   effective uid and [`ServerConfig::allowed_uids`] are served; others get one
//!   [`ErrorKind::PermissionDenied`] frame and are logged.
//! - A [`Client`] checks the *server's* `SO_PEERCRED` uid before sending a byte: our effective
//!   uid or root by default, or the uids of a [`ClientConfig`]; anything else is
//!   [`Error::UntrustedServer`].
//! - Peers cannot stall the server: each frame must arrive within
//!   [`ServerConfig::read_timeout`], connections are capped at
//!   [`ServerConfig::max_connections`], frames over [`MAX_FRAME_LEN`] are refused before
//!   allocation, and anything undecodable gets an error frame and a closed connection.
//! - One restart at a time: a concurrent request (or SIGUSR1) gets
//!   [`RESTART_IN_PROGRESS`] at once. A restart that has begun always runs to completion.
//! - Export the listener ([`ListenerHandle::export`]) only when handing it on: from then on this
//!   process leaves the socket file in place at shutdown. If the handover fails, call
//!   [`ListenerHandle::reclaim`].
//!
//! # Platforms
//!
//! Linux only: peers are identified with `SO_PEERCRED`, and the socket file is placed through
//! `/proc/self/fd`. Elsewhere the crate does not compile (a `compile_error!` says why).
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "restart-socket supports Linux only: it checks peers with SO_PEERCRED and places the socket file through /proc/self/fd"
);

mod client;
mod error;
mod handler;
pub mod metrics;
mod server;
mod sys;
// The frame codec is not part of the API (a client is `Client`); it stays reachable, hidden,
// for this crate's own black-box tests of the server, which send hand-made and broken frames.
#[doc(hidden)]
pub mod wire;

pub use client::{Client, ClientConfig, DEFAULT_TIMEOUT, Details};
pub use error::Error;
pub use handler::{BoxFuture, RestartHandler, StatusProvider, SupervisorHandler};
pub use server::{ListenerHandle, RESTART_IN_PROGRESS, Server, ServerConfig};
pub use wire::{
    ErrorKind, MAX_FRAME_LEN, MAX_MESSAGE_LEN, PROTOCOL_VERSION, Request, Response, Status, SupervisorState,
    SupervisorStatus, unix_millis,
};

/// Re-exported so that a server can be stopped without a direct `tokio-util` dependency.
pub use tokio_util::sync::CancellationToken;
