//! `keepalive`: keep a process running — restart it with backoff when it crashes, stop it
//! gracefully, re-adopt it after the supervisor restarts, and follow it through zero-downtime
//! handovers instead of mistaking them for crashes. Linux only (pidfds, `/proc`, `prctl`).
//!
//! # What it solves
//!
//! A service must come back when it crashes, but not in a tight loop; it must stop cleanly
//! (its whole process group, with a grace period); and a supervisor that restarts must be able to
//! pick a running service back up without ever signalling a process that merely inherited its pid.
//! Services that restart themselves without downtime (see the `handover` crate) replace their main
//! process: the old one announces the new one with `MAINPID=` on systemd's `NOTIFY_SOCKET` and
//! exits. A supervisor that sees only "main process exited" would restart a healthy service;
//! this one follows the new pid.
//!
//! - [`Supervisor`] starts a [`Command`] in its own session and process group, watches it through a
//!   pidfd (exit detection is an event, never a polling loop), and restarts it as a
//!   [`RestartPolicy`] decides — by default [`Backoff`], the Consul daemon's schedule: three starts
//!   without delay, then 2, 4, 8 … s capped at 60 s, reset after 10 s of healthy running.
//! - [`Supervised`] is the running supervisor: an [`Events`] stream, [`Status`],
//!   [`stop`](Supervised::stop) (signal to the group, `SIGKILL` after the grace period),
//!   [`detach`](Supervised::detach) (returns a serde [`Snapshot`]) and
//!   [`signal`](Supervised::signal).
//! - [`Supervisor::adopt`] resumes from a snapshot, refusing a pid whose start time changed.
//!   With [`Config::state_file`] the supervisor keeps the current snapshot on disk, so a new
//!   supervisor can adopt the service even after this one was `SIGKILL`ed.
//! - With [`Config::notify`] the supervisor serves `NOTIFY_SOCKET` like systemd (`READY=1`,
//!   `MAINPID=`, `WATCHDOG=1`, `STATUS=`, `BARRIER=1`); `systemd-notify`, libsystemd's `sd_notify`
//!   and the sd-notify crate all work against it.
//! - Previous main processes still draining after a handover are kept under control
//!   ([`Config::drain_deadline`], [`Config::max_retired`]), and one that takes the service back
//!   (`MAINPID=` naming itself: a rollback) is followed instead of counting a crash
//!   ([`Config::rollback_grace`]).
//! - [`Probe`]s (startup, readiness, liveness; HTTP(S), TCP, command) watch services that speak
//!   no notify protocol ([`Config::probes`]).
//! - [`Supervised::restart`] (stop and start, or a handover on a signal), [`Supervised::controller`]
//!   and [`Supervised::status_watch`] let a control socket or a service manager act and follow.
//! - [`PidFile`] (and the state file) is replaced atomically, so readers never see it empty or
//!   partial; a failed write (a full disk) keeps the previous file and is retried.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use keepalive::{Backoff, Command, Config, EventKind, StopOutcome, Supervisor};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keepalive::Error> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let pid_file = dir.path().join("sleeper.pid");
//! let supervised = Supervisor::new(Command::new("sleep").arg("600"))
//!     .config(Config::default().grace(Duration::from_secs(2)).pid_file(&pid_file))
//!     .policy(Backoff::default().with_give_up(5, Duration::from_secs(60)))
//!     .spawn()?;
//! let mut events = supervised.events();
//! let Some(first) = events.next().await else { unreachable!("the supervisor emits Started first") };
//! assert!(matches!(first.kind, EventKind::Started { attempt: 1, .. }));
//! assert_eq!(std::fs::read_to_string(&pid_file).ok(), supervised.pid().map(|p| format!("{p}\n")));
//!
//! // SIGTERM to the process group; SIGKILL only if it were still there after the grace period.
//! let outcome = supervised.stop().await?;
//! assert!(matches!(outcome, StopOutcome::Exited { .. }));
//! assert!(!pid_file.exists(), "a clean stop removes the pid file");
//! # Ok(())
//! # }
//! ```
//!
//! # Ordering and safety
//!
//! - The supervisor runs as a tokio task: create it inside a runtime with I/O and time enabled
//!   (`lifeline supervise` uses a current-thread runtime). Nothing blocks the runtime except short
//!   `/proc` reads and the pid file's rename.
//! - [`Config::subreaper`] (`PR_SET_CHILD_SUBREAPER`) is process-wide and set when the first such
//!   supervisor starts, *before* the service can fork a successor, so that orphans and successors
//!   are re-parented to us. The supervisor then reaps only processes in the service's own process
//!   groups and sessions; other children of the process are left to whoever started them. A
//!   process that exists only for one service (as `lifeline supervise` does) sets
//!   [`Config::dedicated`]: every child is then the service's, reaped (also orphans that called
//!   `setsid()`) and stopped with it.
//! - A stop reaches everything of the service, not only the main process's group: previous main
//!   processes still draining, everything in their sessions and everything descending from them
//!   (a handover successor that is not ready yet, in a process group of its own), and
//!   (dedicated) every descendant of the supervisor; it ends only when none is left.
//! - A handover is recognised by the *old* main process sending `MAINPID=<new pid>` before it
//!   exits. The supervisor reads all queued notifications before it decides that the main process
//!   crashed, so the order "send, then exit" is enough; the new pid must be alive and belong to the
//!   service *now*: descend from the current main process or share its session (or, dedicated, be
//!   a child of the supervisor) — never merely share a session an earlier main process had.
//!   Only the current main pid is listened to (systemd's `NotifyAccess=main`); note that an
//!   unprivileged `systemd-notify` sends as itself, not as its parent.
//! - Pids are never trusted alone: every watched process is held by a pidfd (signals go through
//!   it; what `/proc` says about it is believed only if the pidfd's process is still running
//!   after the read), and adoption compares the boot id, the process start time and its uid.
//! - A state file ([`Snapshot::read`]) is read only if it is a regular file of this user or root
//!   that nobody else can write; a snapshot's notify socket is bound again (and later removed)
//!   only if it is verifiably one lifeline created. Nothing lifeline did not create is ever
//!   signalled, unlinked or removed.
//! - Durations from the configuration or from the service (`WATCHDOG_USEC=`) too long to add to
//!   the clock mean "never"; nothing overflows.
//! - After a crash, what is left of the crashed process group is stopped before the restart;
//!   the supervisor never signals its own process group.
//! - [`Lifetime::DieWithSupervisor`] uses `PR_SET_PDEATHSIG`, which fires when the *thread* that
//!   started the process exits: keep the runtime's threads alive as long as the service.

mod config;
mod error;
mod event;
mod exit;
mod group;
pub mod metrics;
mod notify;
mod pidfile;
mod policy;
mod probe;
mod signal;
mod snapshot;
mod spawn;
mod supervisor;
mod sys;

pub use config::{Command, Config, Lifetime, Notify, NotifyAddress, NotifyConfig, Readiness};
pub use error::Error;
pub use event::{Event, EventKind, Events, RetiredStop};
pub use exit::{Exit, ExitCause, ExitStatus};
pub use pidfile::PidFile;
pub use policy::{Backoff, Decision, GiveUpAfter, RestartOn, RestartPolicy};
pub use probe::{
    Check, HttpCheck, MAX_PROBE_DURATION, MAX_PROBE_FAILURES, Probe, ProbeRole, ProbeSyntaxError,
};
pub use signal::Signal;
pub use snapshot::{SNAPSHOT_VERSION, Snapshot};
pub use supervisor::{
    Controller, Finished, RestartMethod, State, Status, StatusWatch, StopOutcome, Supervised, Supervisor,
};
