//! The mechanisms composed for any tokio server: zero-downtime restarts, a locked state
//! directory, a control socket, TLS that follows its files, versioned state, signals and a
//! race-free drain — with a commit protocol that makes a failed restart change nothing.
//!
//! # The shape of a service
//!
//! 1. [`Builder`] says what the service holds and serves; [`Builder::start`] sets it all up and
//!    returns [`Starting`]: take the listeners, the TLS acceptor and the predecessor's state.
//! 2. [`Starting::ready`] is **the commit**: the service serves from here on (a predecessor, if
//!    any, drains and exits). It returns [`Running`].
//! 3. Accept with [`Running::accept`] until it says `None` (a stop signal, or a successor took
//!    over), drop the listeners, then [`Running::drain`].
//!
//! The HTTP helpers ([`http::serve`], [`http::serve_tls`]) do step 3's accept loop and the
//! per-connection drain for hyper and tower (axum) services; for another protocol, spawn each
//! connection on [`Running::connections`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use lifeline::service::{Builder, ServiceState};
//! use serde::{Deserialize, Serialize};
//! use tokio::io::AsyncWriteExt;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Counter { served: u64 }
//! impl ServiceState for Counter { const VERSION: u32 = 1; }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), lifeline::service::Error> {
//!     let mut starting = Builder::new()
//!         .state_dir("/var/lib/greeter")
//!         .tcp("greeter", "127.0.0.1:7000".parse().unwrap())
//!         .control_socket("/run/greeter.sock")
//!         .start::<Counter>()
//!         .await?;
//!     let served = Arc::new(AtomicU64::new(starting.take_state().map_or(0, |s| s.served)));
//!     let listener = starting.tcp("greeter")?;
//!     let running = starting.ready({
//!         let served = served.clone();
//!         move || Counter { served: served.load(Ordering::SeqCst) }
//!     }).await?;
//!
//!     let connections = running.connections();
//!     // `None` once a successor took over for good, or a stop signal came.
//!     while let Some((stream, _peer)) = running.accept(&listener).await {
//!         let served = served.clone();
//!         connections.spawn(stream, move |mut io| async move {
//!             let n = served.fetch_add(1, Ordering::SeqCst) + 1;
//!             let _ = io.write_all(format!("hello #{n}\n").as_bytes()).await;
//!         });
//!     }
//!     drop(listener);
//!     running.drain().await;
//!     Ok(())
//! }
//! ```
//!
//! # The commit protocol
//!
//! A restart starts a new process of the same executable (a new binary at the same path is what
//! starts) with the listeners, the state-directory lock and the control socket inherited by
//! name, and the state sent through a pipe. Every resource that passes has exactly one owner at
//! every instant:
//!
//! - Everything fallible in the successor happens in [`Builder::start`], *before* it tells its
//!   predecessor it is ready: the lock is verified but not written, listeners are made ready for
//!   tokio, the control socket adopted, the certificate loaded, the state decoded (a version it
//!   cannot read is refused), the notify socket reached, the pid file written under a temporary
//!   name. A successor that fails there — error or crash — has changed nothing: its
//!   predecessor still owns the lock file, the control socket file, the unix socket files and
//!   the pid file, and serves on.
//! - [`Starting::ready`] tells the predecessor. From that instant the successor owns what it
//!   adopted: it writes its pid into the lock file, moves the pid file into place, and is the one
//!   that will remove the socket files. Nothing after the commit can fail.
//! - The predecessor lets go only after the commit: it stops accepting, closes its copy of the
//!   lock's descriptor at once (the successor's keeps it held), answers the restart request with
//!   the new pid, sends `MAINPID=` to the service manager, drains and exits 0 — never removing a
//!   file it handed over.
//! - A stop (SIGTERM) during a restart aborts it: the new process is killed with its process
//!   group and reaped before the stop proceeds, so no successor outlives a stopped service.
//!
//! ARCHITECTURE.md states these as invariants, with the tests that kill a successor at each
//! step.

mod builder;
mod connection;
mod error;
mod exe;
mod fault;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod listeners;
pub mod metrics;
mod notify;
mod retired;
mod running;
mod start;
mod state;
#[cfg(feature = "tls")]
mod tls;

pub use builder::Builder;
pub use connection::{Accept, Busy, Connection, Connections, Protocol, Tracked};
pub use error::Error;
pub use running::{Finished, Running, Stop};
pub use start::Starting;
pub use state::ServiceState;
