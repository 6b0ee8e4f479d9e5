//! The public handle: [`Supervisor`] (what to run, how), [`Supervised`] (events, status,
//! stop, detach, signal, restart), [`Controller`] and [`StatusWatch`] for other tasks, and the
//! types they report ([`Status`], [`State`], [`StopOutcome`], [`Finished`]).

use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::config::{Command, Config};
use crate::event::{Event, EventKind, Events};
use crate::exit::ExitStatus;
use crate::policy::{Backoff, RestartPolicy};
use crate::signal::Signal;
use crate::snapshot::{SNAPSHOT_VERSION, Snapshot};
use crate::sys;

use super::task::{Proc, Task};

/// Builds a supervised service: what to run ([`Command`]), how ([`Config`]), and when to restart
/// ([`RestartPolicy`], default [`Backoff`]). Then [`spawn`](Supervisor::spawn) it, or
/// [`adopt`](Supervisor::adopt) one that is already running.
pub struct Supervisor {
    pub(super) command: Command,
    pub(super) config: Config,
    pub(super) policy: Box<dyn RestartPolicy>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("command", &self.command)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Supervises `command` with the default [`Config`] and [`Backoff`] policy.
    pub fn new(command: Command) -> Supervisor {
        Supervisor { command, config: Config::default(), policy: Box::new(Backoff::default()) }
    }

    /// Sets the configuration.
    pub fn config(mut self, config: Config) -> Supervisor {
        self.config = config;
        self
    }

    /// Sets the restart policy.
    pub fn policy(mut self, policy: impl RestartPolicy) -> Supervisor {
        self.policy = Box::new(policy);
        self
    }

    /// Starts the command and supervises it from a new tokio task.
    ///
    /// Fails if the command cannot be started at all (later restarts that fail to start are
    /// exits the policy decides about), or if the pid file or notify socket cannot be set up.
    pub fn spawn(self) -> Result<Supervised, Error> {
        let mut task = Task::new(self)?;
        if let Err(err) = task.start_main() {
            if let Some(main) = task.main.take() {
                // Started, but the pid file or state file cannot be kept: do not leave it running
                // unsupervised.
                let _ = sys::pidfd_send_signal(main.fd.as_fd(), Signal::KILL);
                let _ = sys::kill_group(main.pgid, Signal::KILL);
                // Blocking is fine here: SIGKILL was just sent and the child is ours.
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(main.pid), None);
                task.remove_files();
            }
            return Err(err);
        }
        Ok(task.launch())
    }

    /// Resumes supervising the process a [`Snapshot`] describes.
    ///
    /// The pid must still name the same process: the snapshot must come from this boot
    /// ([`Error::OtherBoot`]), the process's start time must match the snapshot's (otherwise the
    /// pid was reused: [`Error::PidReused`]) and so must its uid ([`Error::OtherUid`]). These are
    /// checked first: a refused snapshot leaves everything as it was (nothing is signalled,
    /// unlinked or bound). The snapshot's notify socket is bound again only if it is verifiably
    /// one lifeline created (a socket named `notify` alone in a `lifeline-notify-*` directory of
    /// ours with mode 0700); otherwise a fresh one is served and the named path is left alone.
    /// The process is watched through a pidfd; when it is not our child its exit status is
    /// unknowable and is reported as [`ExitStatus::Unknown`]. With notification on, the
    /// snapshot's `NOTIFY_SOCKET` is served again so the service's messages keep arriving.
    pub fn adopt(self, snapshot: &Snapshot) -> Result<Supervised, Error> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(Error::Snapshot { reason: format!("version {}", snapshot.version) });
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        // Everything the snapshot claims is checked before anything it names is touched.
        let pid = snapshot.pid;
        let boot_id = sys::boot_id().map_err(|source| Error::BootId { source })?;
        if snapshot.boot_id != boot_id {
            return Err(Error::OtherBoot { pid, expected: snapshot.boot_id.clone(), found: boot_id });
        }
        let Ok(raw_pid) = i32::try_from(pid) else { return Err(Error::NotRunning { pid }) };
        let mut proc = Proc::open(raw_pid, Instant::now(), false)?;
        if proc.start_time != snapshot.start_time {
            return Err(Error::PidReused { pid, expected: snapshot.start_time, found: proc.start_time });
        }
        if proc.uid != snapshot.uid {
            return Err(Error::OtherUid { pid, expected: snapshot.uid, found: proc.uid });
        }
        let notify_address = snapshot.notify_socket.clone();
        let mut task = Task::new_with_notify(self, notify_address.as_deref())?;
        proc.since_wall = std::time::UNIX_EPOCH
            .checked_add(Duration::from_millis(snapshot.since_unix_ms))
            .unwrap_or_else(SystemTime::now);
        if snapshot.ready || task.ready_at_start() {
            proc.ready_at = Some(proc.since);
        }
        task.status_text.clone_from(&snapshot.status_text);
        task.install_main(proc)?;
        task.emit(EventKind::Adopted { pid });
        Ok(task.launch())
    }
}

/// How a requested stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopOutcome {
    /// Nothing was running (the supervisor was waiting to restart, or had finished).
    NotRunning,
    /// The main process and its group exited within the grace period after the stop signal.
    Exited {
        /// The main pid.
        pid: u32,
        /// Its exit status ([`ExitStatus::Unknown`] if it was not our child).
        status: ExitStatus,
        /// How long the stop took.
        after: Duration,
    },
    /// Something was still running after the grace period; the groups were `SIGKILL`ed.
    Killed {
        /// The main pid.
        pid: u32,
        /// Its exit status ([`ExitStatus::Unknown`] if it was not our child).
        status: ExitStatus,
        /// How long the stop took.
        after: Duration,
    },
    /// Processes of the service were still there 10 s after `SIGKILL` (uninterruptible sleep,
    /// usually on a hung file system): the stop could not finish. They are named; nothing more
    /// is done about them.
    Stuck {
        /// The main pid, if there was a main process.
        pid: Option<u32>,
        /// The pids still there.
        survivors: Vec<u32>,
        /// How long the stop took.
        after: Duration,
    },
}

/// Why a supervisor finished.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finished {
    /// It was stopped on request.
    Stopped(StopOutcome),
    /// It was detached; the service keeps running.
    Detached(Box<Snapshot>),
    /// The service exited successfully and the policy does not restart it.
    Done {
        /// The last exit status.
        last: ExitStatus,
    },
    /// The policy gave up.
    GaveUp {
        /// Why, e.g. `5 failures within 10s`.
        reason: String,
        /// The last exit status.
        last: ExitStatus,
    },
    /// Every [`Supervised`] handle was dropped: the service was left running
    /// ([`Lifetime::OutliveSupervisor`](crate::Lifetime::OutliveSupervisor)) or stopped ([`Lifetime::DieWithSupervisor`](crate::Lifetime::DieWithSupervisor)).
    Abandoned,
}

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// The main process is running.
    Running,
    /// Waiting out a restart delay.
    BackingOff,
    /// Stopping the service.
    Stopping,
    /// Finished (see [`Finished`]).
    Finished,
}

/// A point-in-time view of the service, for status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The current main pid (`None` while waiting to restart, or after finishing).
    pub pid: Option<u32>,
    /// What the supervisor is doing.
    pub state: State,
    /// Whether the main process is ready (`READY=1`, or notification is off).
    pub ready: bool,
    /// The last `STATUS=` text.
    pub text: Option<String>,
    /// How many times the command has been started.
    pub starts: u32,
    /// How many times the main pid moved to a successor (`MAINPID=`).
    pub main_pid_changes: u32,
    /// The status of the last exit, if any.
    pub last_exit: Option<ExitStatus>,
    /// Since when the current main process has been supervised (its start, adoption, or
    /// becoming the main process); `None` while nothing runs.
    pub since: Option<SystemTime>,
    /// When the next start is due, while waiting out a restart delay ([`State::BackingOff`]);
    /// `None` for a delay too long to name (for ever, until a stop).
    pub backoff_until: Option<SystemTime>,
    /// Previous main processes still running (draining after a handover), oldest first.
    pub retired: Vec<u32>,
    /// How many times a retired process took the service back ([`EventKind::RolledBack`]).
    pub rollbacks: u32,
}

pub(super) enum Request {
    /// Stop, with this signal instead of the configured one.
    Stop(Option<Signal>),
    Detach(oneshot::Sender<Result<(), Error>>),
    Signal(Signal, oneshot::Sender<Result<(), Error>>),
    Restart(RestartMethod, Duration, oneshot::Sender<Result<u32, Error>>),
}

/// How [`Supervised::restart`] restarts the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartMethod {
    /// Stop the main process (the stop signal to it, its group, its session and its
    /// descendants; `SIGKILL` after the grace period) and start the command again at once: no
    /// backoff, not a failure for the restart policy. What systemd's `systemctl restart` does.
    StopStart,
    /// Send this signal to the main process and wait for its zero-downtime handover: a
    /// `MAINPID=` naming a successor, which must then be ready. The main process sending
    /// `READY=1` again without naming a successor (a failed handover: `RELOADING=1` … `READY=1`)
    /// fails the restart, and so does its exit. For services that restart themselves on a
    /// signal, as `lifeline::service` does on SIGHUP (needs [`Config::notify`]).
    Handover(Signal),
}

/// A cloneable remote control of a running supervisor ([`Supervised::controller`]): status,
/// restarts and signals from other tasks (a control socket's), while the [`Supervised`] handle
/// stays with whoever decides about stopping.
#[derive(Debug, Clone)]
pub struct Controller {
    /// Weak: the task sees every [`Supervised`] handle dropped even while controllers remain.
    pub(super) requests: mpsc::WeakSender<Request>,
    pub(super) status: watch::Receiver<Status>,
}

impl Controller {
    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// [`Supervised::restart`].
    pub async fn restart(&self, method: RestartMethod, timeout: Duration) -> Result<u32, Error> {
        let (tx, rx) = oneshot::channel();
        let requests = self.requests.upgrade().ok_or(Error::Finished)?;
        requests.send(Request::Restart(method, timeout, tx)).await.map_err(|_| Error::Finished)?;
        drop(requests);
        rx.await.map_err(|_| Error::Finished)?
    }

    /// [`Supervised::signal`].
    pub async fn signal(&self, signal: Signal) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let requests = self.requests.upgrade().ok_or(Error::Finished)?;
        requests.send(Request::Signal(signal, tx)).await.map_err(|_| Error::Finished)?;
        drop(requests);
        rx.await.map_err(|_| Error::Finished)?
    }
}

/// Watches a supervisor's [`Status`] change ([`Supervised::status_watch`]).
#[derive(Debug, Clone)]
pub struct StatusWatch {
    pub(super) rx: watch::Receiver<Status>,
}

impl StatusWatch {
    /// Waits until the status changes and returns the new one; `None` once the supervisor has
    /// finished (the last status stays readable through [`current`](StatusWatch::current)).
    /// Cancel-safe.
    pub async fn changed(&mut self) -> Option<Status> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// The current status.
    pub fn current(&self) -> Status {
        self.rx.borrow().clone()
    }
}

/// A running supervisor: its events, status and controls.
///
/// Dropping it abandons the service: with [`Lifetime::OutliveSupervisor`](crate::Lifetime::OutliveSupervisor) it keeps running
/// unsupervised, with [`Lifetime::DieWithSupervisor`](crate::Lifetime::DieWithSupervisor) it is stopped. Call
/// [`stop`](Supervised::stop) or [`detach`](Supervised::detach) to choose explicitly.
#[derive(Debug)]
pub struct Supervised {
    pub(super) requests: mpsc::Sender<Request>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) first_events: Mutex<Option<broadcast::Receiver<Event>>>,
    pub(super) status: watch::Receiver<Status>,
    pub(super) task: JoinHandle<Finished>,
    pub(super) finished: Option<Finished>,
}

impl Supervised {
    /// Subscribes to events. The first call receives every event since the start (including
    /// `Started`/`Adopted`); later calls receive events from now on.
    pub fn events(&self) -> Events {
        let first = self.first_events.lock().ok().and_then(|mut f| f.take());
        Events { rx: first.unwrap_or_else(|| self.events.subscribe()) }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A cloneable remote control (status, restart, signal) for other tasks. It does not keep
    /// the supervisor alive: once every [`Supervised`] handle is gone, the service is abandoned
    /// as usual and the controller's calls fail with [`Error::Finished`].
    pub fn controller(&self) -> Controller {
        Controller { requests: self.requests.downgrade(), status: self.status.clone() }
    }

    /// A watch on the status: wakes up whenever it changes (a start, readiness, a handover, an
    /// exit, a backoff…).
    pub fn status_watch(&self) -> StatusWatch {
        StatusWatch { rx: self.status.clone() }
    }

    /// Restarts the service now, as `method` says, and returns the new main pid once it is
    /// ready; fails ([`Error::RestartFailed`]) if it is not ready within `timeout` (the service
    /// keeps being supervised: a process that is late is not stopped for it), if the handover
    /// fails, or while nothing runs ([`Error::NothingRunning`]). One restart at a time: a second
    /// one while the first is under way is refused.
    pub async fn restart(&self, method: RestartMethod, timeout: Duration) -> Result<u32, Error> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Restart(method, timeout, tx)).await.map_err(|_| Error::Finished)?;
        rx.await.map_err(|_| Error::Finished)?
    }

    /// The current main pid (`None` while waiting to restart or after finishing).
    pub fn pid(&self) -> Option<u32> {
        self.status.borrow().pid
    }

    /// Sends `signal` to the current main process (not its group) through its pidfd.
    pub async fn signal(&self, signal: Signal) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Signal(signal, tx)).await.map_err(|_| Error::Finished)?;
        rx.await.map_err(|_| Error::Finished)?
    }

    /// Waits until the supervisor finishes on its own (it gave up, or the service is done) and
    /// says why. Cancel-safe.
    pub async fn wait(&mut self) -> Finished {
        if let Some(finished) = &self.finished {
            return finished.clone();
        }
        let finished = (&mut self.task).await.unwrap_or(Finished::Abandoned);
        self.finished = Some(finished.clone());
        finished
    }

    /// Stops the service: the stop signal to its process group, to any previous main process
    /// still draining after a handover, to everything in their sessions and to everything that
    /// descends from them (a successor that is not ready yet), and with [`Config::dedicated`] to
    /// every descendant of this process; `SIGKILL` after the grace period. Processes that appear
    /// meanwhile are stopped too. Removes the pid file and the state file.
    ///
    /// It returns once none of them is left ([`StopOutcome::Exited`] or
    /// [`StopOutcome::Killed`]), or once some have survived `SIGKILL` for 10 s
    /// ([`StopOutcome::Stuck`]).
    pub async fn stop(self) -> Result<StopOutcome, Error> {
        self.stop_inner(None).await
    }

    /// [`stop`](Supervised::stop) with `signal` instead of [`Config::stop_signal`] (a container
    /// init forwards the signal it got: `SIGINT` stays `SIGINT`).
    pub async fn stop_with(self, signal: Signal) -> Result<StopOutcome, Error> {
        self.stop_inner(Some(signal)).await
    }

    async fn stop_inner(mut self, signal: Option<Signal>) -> Result<StopOutcome, Error> {
        // If the task has already finished, the send fails and `wait` reports why.
        let _ = self.requests.send(Request::Stop(signal)).await;
        Ok(match self.wait().await {
            Finished::Stopped(outcome) => outcome,
            _ => StopOutcome::NotRunning,
        })
    }

    /// Stops supervising and leaves the service running; returns what [`Supervisor::adopt`] needs
    /// to resume. The pid file stays; the notify socket file stays for the adopter.
    ///
    /// Refused ([`Error::DetachRefused`]) for a service started with
    /// [`Lifetime::DieWithSupervisor`](crate::Lifetime::DieWithSupervisor), and while nothing runs ([`Error::NothingRunning`]); after a
    /// refusal supervision simply goes on. After a successful detach the handle is finished
    /// ([`wait`](Supervised::wait) returns [`Finished::Detached`]).
    pub async fn detach(&mut self) -> Result<Snapshot, Error> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Detach(tx)).await.map_err(|_| Error::Finished)?;
        rx.await.map_err(|_| Error::Finished)??;
        match self.wait().await {
            Finished::Detached(snapshot) => Ok(*snapshot),
            _ => Err(Error::Finished),
        }
    }
}
