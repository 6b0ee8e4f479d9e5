//! The supervisor: one tokio task per service that starts, watches, restarts, follows and stops it.
//!
//! - `handle.rs` — the public handle ([`Supervisor`], [`Supervised`], [`Controller`], [`StatusWatch`]).
//! - `task.rs` — the task loop, starting, restarts on request, reporting.
//! - `follow.rs` — notifications, following `MAINPID=`, rollbacks, retired processes.
//! - `stopping.rs` — reaping and stopping.
//! - `probes.rs` — startup, readiness and liveness probes of the main process.

mod follow;
mod handle;
mod probes;
mod stopping;
mod task;

pub use handle::{
    Controller, Finished, RestartMethod, State, Status, StatusWatch, StopOutcome, Supervised, Supervisor,
};
