//! `handover`: replace a running server with a new process — a new binary, a new configuration —
//! without refusing or dropping a connection, and without risk: if the new process fails, the old
//! one keeps serving as if nothing happened.
//!
//! The old process starts the executable it was started from (resolved at start-up, so a binary
//! newly installed at that path is what starts) with its listening sockets and any other file
//! descriptor it names (a control socket, a held directory lock) inherited by name, sends it its
//! state through a pipe, and waits until the new process says it is ready. Only then does it
//! answer "restart complete", stop accepting, drain and exit. The listening sockets are never
//! closed: a client connecting in the middle of the handover waits in the same accept queue and
//! is served by whichever process accepts first.
//!
//! # How a server uses it
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::time::Duration;
//!
//! use handover::{Config, Handover, LifecycleHandler, StateWriter};
//! use serde::{Deserialize, Serialize};
//!
//! /// What passes from one generation to the next (version 1 of it).
//! #[derive(Serialize, Deserialize)]
//! struct State { served: u64, generation: u64 }
//! const STATE_VERSION: u32 = 1;
//!
//! /// The old process's side: what to send.
//! struct Lifecycle { served: Arc<AtomicU64>, generation: u64 }
//!
//! impl LifecycleHandler for Lifecycle {
//!     async fn send_state(&mut self, writer: &mut StateWriter) -> std::io::Result<()> {
//!         let state = State { served: self.served.load(Ordering::SeqCst), generation: self.generation };
//!         writer.send(STATE_VERSION, &state).await
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // 1. At start-up: adopt what the predecessor (or systemd) passed.
//!     let mut handover = Handover::from_env(Config::default().ready_timeout(Duration::from_secs(30)))?;
//!     let listener = match handover.take_tcp_listener("http")? {
//!         Some(inherited) => inherited,
//!         None => std::net::TcpListener::bind("127.0.0.1:8080")?,
//!     };
//!     // 2. Read the state; an error here means "cannot take over": exit before ready().
//!     let state: Option<State> = handover.read_state(STATE_VERSION).await?;
//!     let served = Arc::new(AtomicU64::new(state.as_ref().map_or(0, |s| s.served)));
//!     let generation = state.map_or(0, |s| s.generation + 1);
//!
//!     // 3. Register what the successor gets, then declare readiness.
//!     handover.register_dup("http", &listener)?;
//!     let upgrader = handover.ready(Lifecycle { served: served.clone(), generation }).await?;
//!
//!     // 4. A restart request (restart-socket handler, signal, ...) calls `upgrade`:
//!     let restart = {
//!         let upgrader = upgrader.clone();
//!         move || {
//!             let upgrader = upgrader.clone();
//!             // The whole chain: the message does not repeat its cause (the OS error).
//!             async move { upgrader.upgrade().await.map_err(|e| format!("{:#}", anyhow::Error::from(e))) }
//!         }
//!     };
//!     # let _ = restart;
//!
//!     // 5. Serve until handed over, then drain and exit 0.
//!     listener.set_nonblocking(true)?;
//!     let listener = tokio::net::TcpListener::from_std(listener)?;
//!     let tracker = tokio_util::task::TaskTracker::new();
//!     let upgraded = upgrader.upgraded();
//!     loop {
//!         tokio::select! {
//!             () = upgraded.cancelled() => break,
//!             accepted = listener.accept() => {
//!                 let (_conn, _) = accepted?;
//!                 served.fetch_add(1, Ordering::SeqCst);
//!                 tracker.spawn(async move { /* serve the connection */ });
//!             }
//!         }
//!     }
//!     drop(listener);
//!     handover::drain(&tracker, Duration::from_secs(30)).await;
//!     Ok(())
//! }
//! ```
//!
//! The same server can be taken over by a process started independently (another unit, another
//! container): the old one serves [`Upgrader::serve_successors`] on a unix socket, the new one
//! starts with [`Handover::from_socket`] instead of [`Handover::from_env`]; everything else is the
//! same. Started by `systemd` or `systemd-socket-activate`, [`Handover::from_env`] adopts the
//! `LISTEN_FDS` sockets under their `LISTEN_FDNAMES`.
//!
//! # Ordering and safety
//!
//! - Create the [`Handover`] once, early in `main`, before dropping privileges or installing
//!   seccomp filters: successors need `execve` and the inherited fds. Only the first call in a
//!   process adopts inherited fds ([`Error::AlreadyAdopted`] after).
//! - Take the inherited sockets, read the state, register, then call [`Handover::ready`]: it
//!   closes the inherited fds nobody took, then tells the old process (or systemd: `READY=1`).
//!   A new process that cannot read the state returns the error without calling `ready()`;
//!   the old one sees it exit and keeps serving.
//! - Registered fds keep `FD_CLOEXEC` in this process; the successor gets copies without it,
//!   made in the child by `posix_spawn`'s file actions (a vfork: no page tables copied, however
//!   large this process). Other children never inherit them.
//! - The successor runs in its own process group: when it fails (exits, crashes, or is not
//!   ready within [`Config::ready_timeout`]), the group is killed (`SIGKILL`) and the successor reaped
//!   (waiting at most 5 s: one stuck in uninterruptible sleep is reaped in the background later).
//! - One upgrade at a time ([`Error::InProgress`]); after a success the old process answers
//!   [`Error::AlreadyUpgraded`], sends `MAINPID=<new pid>` when `NOTIFY_SOCKET` is set (it is
//!   still the main process, so `NotifyAccess=main` accepts it), updates the pid file, and
//!   cancels [`Upgrader::upgraded`]: stop accepting, [`drain`], exit.
//! - The environment is never modified (that is unsafe once threads run): the variables name
//!   the process they are meant for (`LISTEN_PID`, `LIFELINE_PARENT_PID`), so descendants
//!   ignore them, and successors are started without `LISTEN_*`.
//!
//! # Platforms
//!
//! Linux only: the state can be sealed in a `memfd`, peers are checked with `SO_PEERCRED`, and
//! `/proc` tells which descriptors are open. Elsewhere the crate does not compile (a
//! `compile_error!` says why).
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "handover supports Linux only: it uses memfd seals, SO_PEERCRED and /proc for the descriptors it passes on"
);

mod config;
mod drain;
mod env;
mod error;
mod fds;
mod handover;
mod lifecycle;
pub mod metrics;
mod notify;
mod pidfile;
mod sealed;
mod socket;
mod spawn;
mod state;
mod upgrader;

#[cfg(test)]
mod tests;

pub use config::Config;
pub use drain::{Drained, drain};
pub use env::{MAX_NAME_LEN, validate_name};
pub use error::{Error, ExitReason};
pub use fds::Origin;
pub use handover::{Handover, Start};
pub use lifecycle::LifecycleHandler;
pub use sealed::{MappedState, SealedState};
pub use state::{DEFAULT_STATE_LIMIT, StateFrame, StateReader, StateWriter};
pub use upgrader::Upgrader;
