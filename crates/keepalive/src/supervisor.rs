//! The supervisor: one tokio task per service that starts, watches, restarts, follows and stops it.

use std::collections::{BTreeSet, HashMap};
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::config::{Command, Config, Lifetime, Readiness};
use crate::event::{Event, EventKind, Events, RetiredStop};
use crate::exit::{Exit, ExitCause, ExitStatus};
use crate::group;
use crate::notify::{Message, Notification, NotifySocket, Watchdog};
use crate::pidfile::PidFile;
use crate::policy::{Backoff, Decision, RestartPolicy, humanize};
use crate::probe::{ProbeRole, run as probes};
use crate::signal::Signal;
use crate::snapshot::{SNAPSHOT_VERSION, Snapshot, unix_ms};
use crate::spawn::{SpawnOptions, spawn};
use crate::sys::{self, Reaped};

/// How many queued notifications are handled before deciding about an exit or a stop.
const DRAIN_LIMIT: usize = 1024;
/// A pid file or state file that could not be written is tried again after this long, doubling
/// up to [`RETRY_FILES_MAX`].
const RETRY_FILES_FIRST: Duration = Duration::from_secs(1);
const RETRY_FILES_MAX: Duration = Duration::from_secs(30);
const EVENT_CAPACITY: usize = 256;

/// Builds a supervised service: what to run ([`Command`]), how ([`Config`]), and when to restart
/// ([`RestartPolicy`], default [`Backoff`]). Then [`spawn`](Supervisor::spawn) it, or
/// [`adopt`](Supervisor::adopt) one that is already running.
pub struct Supervisor {
    command: Command,
    config: Config,
    policy: Box<dyn RestartPolicy>,
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
    /// ([`Lifetime::OutliveSupervisor`]) or stopped ([`Lifetime::DieWithSupervisor`]).
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

enum Request {
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
    requests: mpsc::WeakSender<Request>,
    status: watch::Receiver<Status>,
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
    rx: watch::Receiver<Status>,
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
/// Dropping it abandons the service: with [`Lifetime::OutliveSupervisor`] it keeps running
/// unsupervised, with [`Lifetime::DieWithSupervisor`] it is stopped. Call
/// [`stop`](Supervised::stop) or [`detach`](Supervised::detach) to choose explicitly.
#[derive(Debug)]
pub struct Supervised {
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<Event>,
    first_events: Mutex<Option<broadcast::Receiver<Event>>>,
    status: watch::Receiver<Status>,
    task: JoinHandle<Finished>,
    finished: Option<Finished>,
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
    /// [`Lifetime::DieWithSupervisor`], and while nothing runs ([`Error::NothingRunning`]); after a
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

/// One process the supervisor watches: the main process, or a previous one still draining.
struct Proc {
    pid: i32,
    fd: AsyncFd<OwnedFd>,
    pgid: i32,
    session: i32,
    start_time: u64,
    /// Its real uid, when last looked at (for the snapshot).
    uid: u32,
    /// When supervision of this process began (start, adoption, or becoming main).
    since: Instant,
    since_wall: SystemTime,
    ready_at: Option<Instant>,
    /// When it stopped being the main process (a `MAINPID=` handover); `None` while it is.
    retired_at: Option<Instant>,
    /// A retired process being stopped (drain deadline, cap): when `SIGKILL` is due, and whether
    /// its process group is signalled too. `kill_at` is `None` once `SIGKILL` was sent.
    ending: Option<Ending>,
}

/// A retired process on its way out.
#[derive(Debug, Clone, Copy)]
struct Ending {
    kill_at: Option<Instant>,
    whole_group: bool,
}

impl Proc {
    /// Opens a pidfd first, then reads `/proc`, then checks that the pidfd's process is still
    /// running: so what was read is that of the process the pidfd refers to, never of a process
    /// that reused the pid. A zombie is refused unless `zombie_ok` (our own fresh child, whose pid
    /// nobody else can reap and so nobody can reuse).
    fn open(pid: i32, since: Instant, zombie_ok: bool) -> Result<Proc, Error> {
        Self::open_stat(pid, since, zombie_ok).map(|(proc, _)| proc)
    }

    /// [`Proc::open`], also returning what `/proc/<pid>/stat` said.
    fn open_stat(pid: i32, since: Instant, zombie_ok: bool) -> Result<(Proc, sys::ProcStat), Error> {
        let upid = pid as u32;
        let not_running = |source: io::Error| match source.kind() {
            io::ErrorKind::NotFound => Error::NotRunning { pid: upid },
            _ => Error::ProcStat { pid: upid, source },
        };
        let fd = sys::pidfd_open(pid).map_err(|source| match source.raw_os_error() {
            Some(libc::ESRCH) => Error::NotRunning { pid: upid },
            _ => Error::Pidfd { pid: upid, source },
        })?;
        let stat = sys::read_stat(pid).map_err(not_running)?;
        let real_uid = sys::read_uid(pid).map_err(not_running)?;
        if !zombie_ok && (stat.is_zombie() || sys::pidfd_exited(fd.as_fd())) {
            return Err(Error::NotRunning { pid: upid });
        }
        let fd = sys::async_fd(fd).map_err(|source| Error::Pidfd { pid: upid, source })?;
        let proc = Proc {
            pid,
            fd,
            pgid: stat.pgrp,
            session: stat.session,
            start_time: stat.start_time,
            uid: real_uid,
            since,
            since_wall: SystemTime::now(),
            ready_at: None,
            retired_at: None,
            ending: None,
        };
        Ok((proc, stat))
    }

    fn exited(&self) -> bool {
        sys::pidfd_exited(self.fd.as_fd())
    }

    fn target(&self) -> group::Target<'_> {
        group::Target { pid: self.pid, pidfd: &self.fd, pgid: self.pgid }
    }
}

/// A restart asked for through [`Supervised::restart`], until its new main process is ready.
struct PendingRestart {
    reply: oneshot::Sender<Result<u32, Error>>,
    /// When to give up waiting (`None`: a timeout too long for the clock).
    deadline: Option<Instant>,
    /// The main pid when it began: a handover must name another one.
    from: Option<i32>,
    /// The main process said `RELOADING=1` since.
    reloading: bool,
    /// Why it failed, once it is known.
    failed: Option<String>,
}

/// What ended a stretch of supervising the main process.
enum Outcome {
    Exited {
        pid: i32,
        pgid: i32,
        exit: Exit,
    },
    /// Stop the main process and start the command again at once.
    Restart,
    Stop(Option<Signal>),
    Detach(oneshot::Sender<Result<(), Error>>),
    Abandoned,
}

/// How a restart delay ended.
enum BackoffEnd {
    /// Time to start again.
    Elapsed,
    /// A stop, or every handle dropped.
    Finished(Finished),
    /// A retired process took the service back (it is the main process now).
    RolledBack,
}

/// What woke the supervisor up.
enum Wake {
    Notify(io::Result<Message>),
    MainExited,
    RetiredExited(usize),
    RetiredDeadline,
    Child,
    Request(Option<Request>),
    Watchdog,
    StartTimeout,
    RetryFiles,
    RestartDeadline,
    Probe(probes::Report),
}

struct Task {
    command: Command,
    config: Config,
    policy: Box<dyn RestartPolicy>,
    events: broadcast::Sender<Event>,
    first_events: Option<broadcast::Receiver<Event>>,
    status: watch::Sender<Status>,
    requests: mpsc::Receiver<Request>,
    notify: Option<NotifySocket>,
    sigchld: Option<tokio::signal::unix::Signal>,
    pid_file: Option<PidFile>,
    own_pid: i32,
    own_pgid: i32,
    own_session: i32,
    /// This boot's id, for snapshots (empty if it cannot be read: no snapshot is then adoptable).
    boot_id: String,
    /// Process groups and sessions of main processes so far, forgotten once nobody is left in
    /// them: where orphans are reaped (without [`Config::dedicated`]). Not where leftovers are
    /// stopped, nor what `MAINPID=` may name: those look only at the current processes.
    pgids: BTreeSet<i32>,
    sessions: BTreeSet<i32>,
    /// Exit statuses collected while reaping orphans, for processes we also watch by pidfd.
    reaped: HashMap<i32, ExitStatus>,
    main: Option<Proc>,
    retired: Vec<Proc>,
    status_text: Option<String>,
    watchdog_interval: Option<Duration>,
    watchdog_deadline: Option<Instant>,
    /// When the current main process must have sent `READY=1` (set on a start, cleared by
    /// `READY=1` or when another process becomes the main one).
    start_deadline: Option<Instant>,
    /// When to try again to write the pid file and state file, and the delay after that.
    retry_files: Option<(Instant, Duration)>,
    starts: u32,
    main_pid_changes: u32,
    rollbacks: u32,
    last_exit: Option<ExitStatus>,
    /// While backing off: when the next start is due.
    backoff_until: Option<SystemTime>,
    /// A restart on request, until it is answered.
    pending_restart: Option<PendingRestart>,
    /// The probes of the current main process.
    probes: ProbeRound,
}

/// The probes of one main process: their tasks, their counts, what they decided.
struct ProbeRound {
    /// Bumped for each main process: reports of an earlier one are dropped.
    round: u64,
    tasks: Vec<JoinHandle<()>>,
    reports_tx: mpsc::UnboundedSender<probes::Report>,
    reports: mpsc::UnboundedReceiver<probes::Report>,
    children: std::sync::Arc<probes::Children>,
    /// Consecutive failures by role (startup, readiness, liveness).
    failures: [u32; 3],
    /// The startup probe passed (or there is none, or this process needs none).
    started: bool,
    /// What the readiness probe says: `None` before its first check.
    ready: Option<bool>,
}

impl ProbeRound {
    fn new() -> ProbeRound {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        ProbeRound {
            round: 0,
            tasks: Vec::new(),
            reports_tx,
            reports,
            children: std::sync::Arc::default(),
            failures: [0; 3],
            started: true,
            ready: None,
        }
    }
}

fn role_index(role: ProbeRole) -> usize {
    match role {
        ProbeRole::Startup => 0,
        ProbeRole::Readiness => 1,
        _ => 2,
    }
}

impl Task {
    fn new(sup: Supervisor) -> Result<Task, Error> {
        Self::new_with_notify(sup, None)
    }

    fn new_with_notify(sup: Supervisor, adopt_notify: Option<&str>) -> Result<Task, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let Supervisor { command, config, policy } = sup;
        if config.watchdog.is_some() && !config.notify.is_on() {
            return Err(Error::WatchdogWithoutNotify);
        }
        if config.start_timeout.is_some()
            && (!config.notify.is_on() || config.readiness != Readiness::Notified)
        {
            return Err(Error::StartTimeoutWithoutReadiness);
        }
        check_probes(&config)?;
        if config.subreaper {
            sys::set_child_subreaper().map_err(|source| Error::Subreaper { source })?;
        }
        let notify = if config.notify.is_on() {
            Some(match adopt_notify {
                Some(address) => NotifySocket::rebind(address).or_else(|err| {
                    tracing::warn!(%err, "cannot serve the adopted service's notify socket again; using a new one");
                    NotifySocket::bind(config.notify)
                })?,
                None => NotifySocket::bind(config.notify)?,
            })
        } else {
            None
        };
        let sigchld = if config.subreaper || config.dedicated {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGCHLD; orphans will not be reaped");
                    None
                }
            }
        } else {
            None
        };
        let (events, first_events) = broadcast::channel(EVENT_CAPACITY);
        // Replaced in `launch`; until then nothing can send.
        let (_, requests) = mpsc::channel(1);
        let status = watch::Sender::new(Status {
            pid: None,
            state: State::Running,
            ready: false,
            text: None,
            starts: 0,
            main_pid_changes: 0,
            last_exit: None,
            since: None,
            backoff_until: None,
            retired: Vec::new(),
            rollbacks: 0,
        });
        Ok(Task {
            command,
            pid_file: config.pid_file.clone().map(PidFile::new),
            watchdog_interval: config.watchdog,
            config,
            policy,
            events,
            first_events: Some(first_events),
            status,
            requests,
            notify,
            sigchld,
            own_pid: std::process::id() as i32,
            own_pgid: nix::unistd::getpgrp().as_raw(),
            own_session: nix::unistd::getsid(None).map_or(-1, nix::unistd::Pid::as_raw),
            boot_id: sys::boot_id().unwrap_or_else(|err| {
                tracing::warn!(%err, "cannot read the boot id; snapshots of this service cannot be adopted");
                String::new()
            }),
            pgids: BTreeSet::new(),
            sessions: BTreeSet::new(),
            reaped: HashMap::new(),
            main: None,
            retired: Vec::new(),
            status_text: None,
            watchdog_deadline: None,
            start_deadline: None,
            retry_files: None,
            starts: 0,
            main_pid_changes: 0,
            rollbacks: 0,
            last_exit: None,
            backoff_until: None,
            pending_restart: None,
            probes: ProbeRound::new(),
        })
    }

    fn launch(mut self) -> Supervised {
        // The task must not hold a sender itself, or it would never see every handle dropped.
        let (requests, receiver) = mpsc::channel(16);
        self.requests = receiver;
        let events = self.events.clone();
        let status = self.status.subscribe();
        // Subscribed when the channel was made: it holds the Started/Adopted event already sent.
        let first_events = self.first_events.take();
        let task = tokio::spawn(self.run());
        Supervised { requests, events, first_events: Mutex::new(first_events), status, task, finished: None }
    }

    // ---- starting ---------------------------------------------------------------------------

    /// Starts the command as the new main process. An [`Error::PidFile`] means it *was* started
    /// (and is the main process) but the pid file could not be written.
    fn start_main(&mut self) -> Result<(), Error> {
        let death_signal = match self.config.lifetime {
            Lifetime::DieWithSupervisor { signal } => Some(signal),
            Lifetime::OutliveSupervisor => None,
        };
        let options = SpawnOptions {
            notify_socket: self.notify.as_ref().map(NotifySocket::address),
            watchdog: self.watchdog_interval,
            death_signal,
        };
        // Taken before the fork: a runtime is never shorter than the process really lived.
        let started = Instant::now();
        let pid = spawn(&self.command, &options)
            .map_err(|source| Error::Spawn { program: self.command.program.clone(), source })?;
        // Our child cannot be reaped by anyone else, so even if it already exited its pid is still
        // its own (a zombie) and the pidfd reports the exit at once.
        let mut proc = Proc::open(pid as i32, started, true)?;
        // A startup probe decides when it has started.
        if self.ready_at_start() && !self.has_probe(ProbeRole::Startup) {
            proc.ready_at = Some(proc.since);
        }
        self.starts += 1;
        let awaits_ready = proc.ready_at.is_none();
        let installed = self.install_main(proc);
        // After install_main, which clears it for whichever process becomes the main one.
        if awaits_ready {
            // A timeout too long to add to the clock never expires.
            self.start_deadline = self.config.start_timeout.and_then(|timeout| started.checked_add(timeout));
        }
        self.emit(EventKind::Started { pid, attempt: self.starts });
        installed
    }

    /// Whether a new main process counts as ready at once (no `READY=1` awaited).
    fn ready_at_start(&self) -> bool {
        !self.config.notify.is_on() || self.config.readiness == Readiness::Started
    }

    /// Makes `proc` the main process: groups, pid file, state file, watchdog, status. It is
    /// installed even if a file cannot be written (that error is returned; the write is retried).
    fn install_main(&mut self, proc: Proc) -> Result<(), Error> {
        if proc.pgid != self.own_pgid {
            self.pgids.insert(proc.pgid);
        }
        self.sessions.insert(proc.session);
        self.watchdog_deadline =
            self.watchdog_interval.and_then(|interval| Instant::now().checked_add(interval));
        self.start_deadline = None;
        // A process that is not ready yet is probed for its start; one that is (adopted ready,
        // followed from a ready predecessor) only for readiness and liveness.
        let needs_start = proc.ready_at.is_none();
        self.main = Some(proc);
        self.start_probes(needs_start);
        let written = self.write_files(true);
        self.publish(State::Running);
        written
    }

    // ---- probes -----------------------------------------------------------------------------

    fn has_probe(&self, role: ProbeRole) -> bool {
        self.config.probes.iter().any(|p| p.role == role)
    }

    /// Starts a new round of probes for the new main process: the startup probe if it needs
    /// one, else readiness and liveness.
    fn start_probes(&mut self, needs_start: bool) {
        self.stop_probes();
        self.probes.round += 1;
        self.probes.failures = [0; 3];
        self.probes.ready = None;
        self.probes.started = !(needs_start && self.has_probe(ProbeRole::Startup));
        let roles: &[ProbeRole] = if self.probes.started {
            &[ProbeRole::Readiness, ProbeRole::Liveness]
        } else {
            &[ProbeRole::Startup]
        };
        self.spawn_probes(roles);
    }

    fn spawn_probes(&mut self, roles: &[ProbeRole]) {
        for probe in self.config.probes.iter().filter(|p| roles.contains(&p.role)) {
            let tls = probes::Tls {
                #[cfg(feature = "tls")]
                provider: self.config.probe_tls_provider.clone(),
            };
            self.probes.tasks.push(probes::spawn(
                probe.clone(),
                self.probes.round,
                self.probes.reports_tx.clone(),
                self.probes.children.clone(),
                tls,
            ));
        }
    }

    /// No main process to probe (it exited, is being stopped or detached).
    fn stop_probes(&mut self) {
        for task in self.probes.tasks.drain(..) {
            task.abort();
        }
        // Reports already queued belong to the round that just ended.
        self.probes.round += 1;
    }

    /// Whether the main process is ready: its own word (`READY=1`, or at once) and its probes'.
    fn is_ready(&self) -> bool {
        let probes_say = self.probes.started
            && (self.probes.ready == Some(true)
                || (self.probes.ready.is_none() && !self.has_probe(ProbeRole::Readiness)));
        self.main.as_ref().is_some_and(|m| m.ready_at.is_some()) && probes_say
    }

    /// One check's outcome. `Some` when the main process must be stopped (a startup or liveness
    /// probe failed too often): which probe, and its last failure.
    fn on_probe(&mut self, report: probes::Report) -> Option<(ProbeRole, String)> {
        if report.round != self.probes.round {
            return None;
        }
        let pid = self.main.as_ref()?.pid as u32;
        let role = report.role;
        let index = role_index(role);
        let threshold = self.config.probes.iter().find(|p| p.role == role).map_or(1, |p| p.failures);
        match report.outcome {
            Ok(()) => {
                let was_failing = self.probes.failures[index] > 0;
                self.probes.failures[index] = 0;
                let passed = match role {
                    ProbeRole::Startup => {
                        self.probes.started = true;
                        for task in self.probes.tasks.drain(..) {
                            task.abort();
                        }
                        if self.ready_at_start()
                            && let Some(main) = self.main.as_mut()
                            && main.ready_at.is_none()
                        {
                            main.ready_at = Some(Instant::now());
                            self.start_deadline = None;
                        }
                        self.spawn_probes(&[ProbeRole::Readiness, ProbeRole::Liveness]);
                        tracing::info!(pid, "startup probe passed");
                        true
                    }
                    ProbeRole::Readiness => self.probes.ready.replace(true) != Some(true),
                    _ => was_failing,
                };
                if passed {
                    self.emit(EventKind::ProbePassed { pid, role });
                    if role != ProbeRole::Liveness {
                        self.after_readiness_change(pid);
                    }
                }
                None
            }
            Err(reason) => {
                let count = self.probes.failures[index].saturating_add(1);
                self.probes.failures[index] = count;
                tracing::warn!(pid, %role, %reason, consecutive = count, of = threshold, "probe failed");
                self.emit(EventKind::ProbeFailed { pid, role, reason: reason.clone(), consecutive: count });
                if count < threshold {
                    return None;
                }
                match role {
                    ProbeRole::Readiness => {
                        if self.probes.ready.replace(false) != Some(false) {
                            tracing::warn!(pid, "not ready: the readiness probe keeps failing");
                            self.publish(State::Running);
                        }
                        None
                    }
                    _ => Some((role, reason)),
                }
            }
        }
    }

    /// The service became ready through a probe: files, event, status.
    fn after_readiness_change(&mut self, pid: u32) {
        if self.is_ready() {
            tracing::info!(pid, "service is ready");
            if self.config.state_file.is_some()
                && let Err(err) = self.write_files(false)
            {
                tracing::error!(%err, "cannot update the state file; keeping the previous one");
            }
            self.emit(EventKind::Ready { pid });
        }
        self.publish(State::Running);
    }

    /// Writes the pid file (if `pid_file_too`) and the state file for the current main process.
    /// A failure leaves the previous files intact and schedules another try.
    fn write_files(&mut self, pid_file_too: bool) -> Result<(), Error> {
        if let Some(main) = self.main.as_mut()
            && let Ok(uid) = sys::read_uid(main.pid)
            && !main.exited()
        {
            // The uid it runs as now (a service may drop privileges after its start).
            main.uid = uid;
        }
        let Some(main) = &self.main else { return Ok(()) };
        let mut result = Ok(());
        if pid_file_too && let Some(pid_file) = &self.pid_file {
            result = pid_file.write(main.pid as u32);
        }
        if let Some(path) = &self.config.state_file {
            let notify_socket = self.notify.as_ref().map(|n| n.address().to_owned());
            let written = self.snapshot_of(main, notify_socket).write(path);
            result = result.and(written);
        }
        if result.is_ok() {
            if self.retry_files.take().is_some() {
                tracing::info!("pid file and state file are up to date again");
            }
        } else {
            // One schedule for both files: the next try writes both again.
            let delay = self.retry_files.map_or(RETRY_FILES_FIRST, |(_, d)| (d * 2).min(RETRY_FILES_MAX));
            self.retry_files = Some((Instant::now() + delay, delay));
        }
        result
    }

    /// What [`Supervisor::adopt`] needs to resume supervising `main`.
    fn snapshot_of(&self, main: &Proc, notify_socket: Option<String>) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            pid: main.pid as u32,
            pgid: main.pgid as u32,
            start_time: main.start_time,
            boot_id: self.boot_id.clone(),
            uid: main.uid,
            since_unix_ms: unix_ms(main.since_wall),
            command: self.command.clone(),
            ready: main.ready_at.is_some(),
            status_text: self.status_text.clone(),
            notify_socket,
            pid_file: self.config.pid_file.clone(),
        }
    }

    // ---- the loop ---------------------------------------------------------------------------

    async fn run(mut self) -> Finished {
        loop {
            let finished = match self.supervise_main().await {
                Outcome::Exited { pid, pgid, exit } => match self.after_exit(pid, pgid, exit).await {
                    Some(finished) => finished,
                    None => continue,
                },
                Outcome::Restart => match self.restart_now().await {
                    None => continue,
                    // The command could not be started again: the policy decides, as after any
                    // failed start.
                    Some(exit) => match self.after_exit(0, 0, exit).await {
                        Some(finished) => finished,
                        None => continue,
                    },
                },
                Outcome::Stop(signal) => {
                    self.fail_restart("the service was stopped");
                    let outcome = self.stop(signal).await;
                    self.emit(EventKind::Stopped { outcome: outcome.clone() });
                    Finished::Stopped(outcome)
                }
                Outcome::Detach(reply) => match self.detach() {
                    Ok(snapshot) => {
                        let _ = reply.send(Ok(()));
                        Finished::Detached(Box::new(snapshot))
                    }
                    Err(err) => {
                        let _ = reply.send(Err(err));
                        continue;
                    }
                },
                Outcome::Abandoned => self.abandon().await,
            };
            self.publish(State::Finished);
            return finished;
        }
    }

    /// Watches the main process until it exits or a request ends supervision.
    async fn supervise_main(&mut self) -> Outcome {
        loop {
            let wake = self.next_wake().await;
            if let Some(outcome) = self.on_wake(wake).await {
                return outcome;
            }
            self.check_restart();
        }
    }

    /// Acts on one wake-up; `Some` ends this stretch of supervising the main process.
    async fn on_wake(&mut self, wake: Wake) -> Option<Outcome> {
        {
            match wake {
                Wake::Notify(Ok(message)) => self.on_message(&message),
                Wake::Notify(Err(err)) => tracing::warn!(%err, "notify socket receive failed"),
                Wake::MainExited => {
                    // A MAINPID= sent just before the old main exited is already queued: handle
                    // it first, or a handover would look like a crash.
                    let before = self.main.as_ref().map(|m| m.pid);
                    self.drain_notify();
                    if self.main.as_ref().map(|m| m.pid) != before {
                        return None;
                    }
                    // A predecessor in its rollback window takes the service back by naming
                    // itself: give it a moment before this exit counts as a crash.
                    if self.await_rollback().await {
                        return None;
                    }
                    if let Some(main) = self.main.take() {
                        let status = self.collect_status(main.pid);
                        return Some(Outcome::Exited {
                            pid: main.pid,
                            pgid: main.pgid,
                            exit: exit_of(&main, status, ExitCause::OnItsOwn),
                        });
                    }
                }
                Wake::RetiredExited(index) => self.retired_exited(index),
                Wake::RetiredDeadline => self.retired_deadlines(),
                Wake::Child => self.reap_orphans(),
                Wake::Request(Some(Request::Signal(signal, reply))) => {
                    let _ = reply.send(self.signal_main(signal));
                }
                Wake::Request(Some(Request::Restart(method, timeout, reply))) => {
                    return self.begin_restart(method, timeout, reply);
                }
                Wake::Request(Some(Request::Stop(signal))) => return Some(Outcome::Stop(signal)),
                Wake::Request(Some(Request::Detach(reply))) => return Some(Outcome::Detach(reply)),
                Wake::Request(None) => return Some(Outcome::Abandoned),
                Wake::Watchdog => {
                    if let Some(outcome) = self.watchdog_expired().await {
                        return Some(outcome);
                    }
                }
                Wake::StartTimeout => {
                    // READY=1 may be queued behind the deadline: it counts if it was sent in time.
                    self.drain_notify();
                    if self.start_deadline.is_some()
                        && let Some(outcome) = self.start_timed_out().await
                    {
                        return Some(outcome);
                    }
                }
                Wake::Probe(report) => {
                    if let Some((role, reason)) = self.on_probe(report) {
                        let pid = self.main.as_ref().map_or(0, |m| m.pid);
                        tracing::warn!(pid, %role, %reason, "stopping the service: its {role} probe failed");
                        return self
                            .terminate_main(self.config.stop_signal, ExitCause::ProbeFailed { role, reason })
                            .await;
                    }
                }
                Wake::RestartDeadline => {
                    // Messages queued behind the deadline count.
                    self.drain_notify();
                    self.check_restart();
                    if let Some(pending) = &mut self.pending_restart {
                        pending
                            .failed
                            .get_or_insert_with(|| "no new main process was ready in time".to_owned());
                    }
                }
                Wake::RetryFiles => {
                    if let Err(err) = self.write_files(true) {
                        let delay = self.retry_files.map_or(RETRY_FILES_FIRST, |(_, d)| d);
                        tracing::warn!(%err, retry_in = %humanize(delay), "still cannot update the files; keeping the previous ones");
                    }
                }
            }
        }
        None
    }

    // ---- restarts on request ----------------------------------------------------------------

    /// A restart request: refused, begun here (a handover), or handed to the loop (stop+start).
    fn begin_restart(
        &mut self,
        method: RestartMethod,
        timeout: Duration,
        reply: oneshot::Sender<Result<u32, Error>>,
    ) -> Option<Outcome> {
        let refuse = |reason: &str| Err(Error::RestartFailed { reason: reason.to_owned() });
        if self.pending_restart.is_some() {
            let _ = reply.send(refuse("a restart is already in progress"));
            return None;
        }
        let Some(main) = &self.main else {
            let _ = reply.send(Err(Error::NothingRunning));
            return None;
        };
        let from = Some(main.pid);
        if let RestartMethod::Handover(signal) = method {
            if self.notify.is_none() {
                let _ = reply.send(refuse("a handover restart needs the notify socket (MAINPID=)"));
                return None;
            }
            if let Err(err) = self.signal_main(signal) {
                let _ = reply.send(Err(err));
                return None;
            }
            tracing::info!(pid = main.pid, %signal, "restart: asked the service for a handover");
        }
        self.pending_restart = Some(PendingRestart {
            reply,
            deadline: Instant::now().checked_add(timeout),
            from,
            reloading: false,
            failed: None,
        });
        (method == RestartMethod::StopStart).then_some(Outcome::Restart)
    }

    /// Stop+start on request: the main process and what belongs to it stopped, the command started
    /// again at once (no backoff, not a failure for the policy).
    async fn restart_now(&mut self) -> Option<Exit> {
        self.stop_probes();
        if let Some(main) = self.main.take() {
            self.watchdog_deadline = None;
            self.start_deadline = None;
            tracing::info!(pid = main.pid, signal = %self.config.stop_signal, "restart: stopping the service");
            let scope = group::Scope {
                groups: self.signalable(&[main.pgid]),
                sessions: [main.session].into_iter().filter(|s| *s != self.own_session && *s > 1).collect(),
                target_descendants: true,
                our_descendants: false,
            };
            group::terminate(&[main.target()], &scope, self.config.stop_signal, Some(self.config.grace))
                .await;
            let status = self.collect_status(main.pid);
            let exit = exit_of(&main, status, ExitCause::Restarted);
            self.last_exit = Some(status);
            self.emit(EventKind::Exited { pid: main.pid as u32, status, runtime: exit.runtime });
        }
        match self.start_main() {
            Ok(()) => {}
            Err(err @ (Error::PidFile { .. } | Error::StateFile { .. })) => {
                tracing::error!(%err, "restarted, but cannot update the file; keeping the previous one");
            }
            Err(err) => {
                tracing::error!(%err, "restart failed");
                self.fail_restart(&err.to_string());
                return Some(Exit {
                    status: ExitStatus::Unknown,
                    cause: ExitCause::SpawnFailed { reason: err.to_string() },
                    runtime: Duration::ZERO,
                    healthy: Duration::ZERO,
                    at: Instant::now(),
                });
            }
        }
        self.check_restart();
        None
    }

    /// Answers the pending restart if its outcome is known.
    fn check_restart(&mut self) {
        let Some(pending) = &self.pending_restart else { return };
        let outcome = if let Some(reason) = &pending.failed {
            Err(Error::RestartFailed { reason: reason.clone() })
        } else if let Some(main) = &self.main
            && main.pid != pending.from.unwrap_or_default()
            && self.is_ready()
        {
            Ok(main.pid as u32)
        } else if pending.deadline.is_some_and(|d| d <= Instant::now()) {
            Err(Error::RestartFailed { reason: "no new main process was ready in time".to_owned() })
        } else {
            return;
        };
        if let Some(pending) = self.pending_restart.take() {
            match &outcome {
                Ok(pid) => tracing::info!(pid, "restart complete"),
                Err(err) => tracing::warn!(%err, "restart on request failed"),
            }
            let _ = pending.reply.send(outcome);
        }
    }

    /// Fails the pending restart (if any) with `reason`, at once.
    fn fail_restart(&mut self, reason: &str) {
        if let Some(pending) = &mut self.pending_restart {
            pending.failed.get_or_insert_with(|| reason.to_owned());
        }
        self.check_restart();
    }

    async fn next_wake(&mut self) -> Wake {
        let deadline = self.watchdog_deadline;
        let retry = self.retry_files.map(|(at, _)| at);
        let start = self.start_deadline;
        let retired = self.next_retired_deadline();
        let restart = self.pending_restart.as_ref().and_then(|p| p.deadline);
        tokio::select! {
            message = recv_notify(self.notify.as_ref()) => Wake::Notify(message),
            () = sleep_until(restart) => Wake::RestartDeadline,
            Some(report) = self.probes.reports.recv() => Wake::Probe(report),
            () = exited(self.main.as_ref().map(|m| &m.fd)) => Wake::MainExited,
            index = any_exited(&self.retired) => Wake::RetiredExited(index),
            () = sleep_until(retired) => Wake::RetiredDeadline,
            () = next_signal(self.sigchld.as_mut()) => Wake::Child,
            request = self.requests.recv() => Wake::Request(request),
            () = sleep_until(deadline) => Wake::Watchdog,
            () = sleep_until(start) => Wake::StartTimeout,
            () = sleep_until(retry) => Wake::RetryFiles,
        }
    }

    /// After an exit: stop leftovers, ask the policy, wait, restart. `None` means "running again".
    async fn after_exit(&mut self, pid: i32, group: i32, mut exit: Exit) -> Option<Finished> {
        self.stop_probes();
        self.fail_restart("the main process exited before a new one was ready");
        loop {
            self.last_exit = Some(exit.status);
            if !matches!(exit.cause, ExitCause::SpawnFailed { .. }) {
                tracing::warn!(pid, status = %exit.status, runtime = %humanize(exit.runtime), "service exited");
                self.emit(EventKind::Exited { pid: pid as u32, status: exit.status, runtime: exit.runtime });
            }
            if exit.cause == ExitCause::OnItsOwn && self.config.stop_group_on_crash {
                self.stop_leftovers(group).await;
            }
            if self.config.subreaper {
                self.reap_orphans();
            }
            match self.policy.decide(&exit) {
                Decision::Restart { after } => {
                    if !after.is_zero() {
                        let attempt = self.starts + 1;
                        tracing::info!(delay = %humanize(after), attempt, "restarting after a delay");
                        self.emit(EventKind::Backoff { delay: after, attempt });
                        match self.backoff(after).await {
                            BackoffEnd::Elapsed => {}
                            BackoffEnd::Finished(finished) => return Some(finished),
                            // A retired process took the service back meanwhile.
                            BackoffEnd::RolledBack => return None,
                        }
                    }
                    match self.start_main() {
                        Ok(()) => return None,
                        Err(err @ (Error::PidFile { .. } | Error::StateFile { .. })) => {
                            // Started and supervised all the same; the write is retried.
                            tracing::error!(%err, "restarted, but cannot update the file; keeping the previous one");
                            return None;
                        }
                        Err(err) => {
                            tracing::error!(%err, "restart failed");
                            let now = Instant::now();
                            exit = Exit {
                                status: ExitStatus::Unknown,
                                cause: ExitCause::SpawnFailed { reason: err.to_string() },
                                runtime: Duration::ZERO,
                                healthy: Duration::ZERO,
                                at: now,
                            };
                        }
                    }
                }
                Decision::Done => {
                    self.stop_remaining().await;
                    self.remove_files();
                    self.emit(EventKind::Done { last: exit.status });
                    return Some(Finished::Done { last: exit.status });
                }
                Decision::GiveUp { reason } => {
                    tracing::error!(%reason, last = %exit.status, "giving up");
                    self.stop_remaining().await;
                    self.remove_files();
                    self.emit(EventKind::GaveUp { reason: reason.clone(), last: exit.status });
                    return Some(Finished::GaveUp { reason, last: exit.status });
                }
            }
        }
    }

    /// Waits `delay` before a restart, still answering requests and reaping.
    async fn backoff(&mut self, delay: Duration) -> BackoffEnd {
        // A delay too long to add to the clock is waited out for ever (until a stop).
        let until = Instant::now().checked_add(delay);
        self.backoff_until = SystemTime::now().checked_add(delay);
        self.publish(State::BackingOff);
        let end = loop {
            let retired = self.next_retired_deadline();
            tokio::select! {
                () = sleep_until(until) => break BackoffEnd::Elapsed,
                request = self.requests.recv() => match request {
                    Some(Request::Stop(signal)) => {
                        // Nothing is the main process, but previous ones may still drain, and
                        // (dedicated) orphans may be left: the stop covers them.
                        self.backoff_until = None;
                        let outcome = self.stop(signal).await;
                        self.emit(EventKind::Stopped { outcome: outcome.clone() });
                        break BackoffEnd::Finished(Finished::Stopped(outcome));
                    }
                    Some(Request::Detach(reply) | Request::Signal(_, reply)) => {
                        let _ = reply.send(Err(Error::NothingRunning));
                    }
                    Some(Request::Restart(_, _, reply)) => {
                        let _ = reply.send(Err(Error::NothingRunning));
                    }
                    None => break BackoffEnd::Finished(Finished::Abandoned),
                },
                // Nobody is the main process: every message is refused (fds closed) except a
                // retired process taking the service back.
                message = recv_notify(self.notify.as_ref()) => if let Ok(message) = message {
                    self.on_message(&message);
                    if self.main.is_some() {
                        break BackoffEnd::RolledBack;
                    }
                },
                index = any_exited(&self.retired) => self.retired_exited(index),
                () = sleep_until(retired) => self.retired_deadlines(),
                () = next_signal(self.sigchld.as_mut()) => self.reap_orphans(),
            }
        };
        self.backoff_until = None;
        end
    }

    /// After the main process exited: while a retired process still runs, wait up to
    /// [`Config::rollback_grace`] for it to take the service back (`MAINPID=` naming itself).
    /// `true` if one did.
    async fn await_rollback(&mut self) -> bool {
        if self.retired.iter().all(|p| p.ending.is_some() || p.exited())
            || self.config.rollback_grace.is_zero()
        {
            return false;
        }
        let Some(main_pid) = self.main.as_ref().map(|m| m.pid) else { return false };
        let until = Instant::now().checked_add(self.config.rollback_grace);
        tracing::debug!(pid = main_pid, grace = %humanize(self.config.rollback_grace), "main process exited; waiting for a rollback");
        loop {
            tokio::select! {
                () = sleep_until(until) => return false,
                message = recv_notify(self.notify.as_ref()) => match message {
                    Ok(message) => {
                        self.on_message(&message);
                        if self.main.as_ref().map(|m| m.pid) != Some(main_pid) {
                            return true;
                        }
                    }
                    Err(err) => tracing::warn!(%err, "notify socket receive failed"),
                },
                index = any_exited(&self.retired) => {
                    self.retired_exited(index);
                    if self.retired.iter().all(|p| p.ending.is_some()) {
                        return false;
                    }
                }
                () = next_signal(self.sigchld.as_mut()) => self.reap_orphans(),
            }
        }
    }

    // ---- notifications ----------------------------------------------------------------------

    fn drain_notify(&mut self) {
        for _ in 0..DRAIN_LIMIT {
            let Some(socket) = &self.notify else { return };
            match socket.try_recv() {
                Ok(Some(message)) => self.on_message(&message),
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(%err, "notify socket receive failed");
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, message: &Message) {
        if message.truncated {
            tracing::warn!(pid = ?message.pid, "ignoring an oversized notification");
            return;
        }
        let Some(main_pid) = self.main.as_ref().map(|m| m.pid) else {
            // Backing off after a crash: a retired process may still take the service back.
            if let Some(index) = self.retired.iter().position(|p| Some(p.pid) == message.pid) {
                self.message_from_retired(index, message);
                return;
            }
            tracing::debug!(sender = ?message.pid, "ignoring a notification: no main process");
            return;
        };
        if message.pid != Some(main_pid) {
            if let Some(index) = self.retired.iter().position(|p| Some(p.pid) == message.pid) {
                self.message_from_retired(index, message);
                return;
            }
            // systemd's NotifyAccess=main: only the main process speaks for the service.
            tracing::debug!(sender = ?message.pid, main_pid, "ignoring a notification from a process that is not the main pid");
            return;
        }
        let note = Notification::parse(&message.text);
        tracing::debug!(pid = main_pid, fds = message.fds, text = %message.text.trim_end(), "notification");
        // systemd applies MAINPID= before READY=1 of the same message.
        match note.main_pid {
            Some(Ok(new)) => self.follow(new as i32),
            Some(Err(ref text)) => tracing::warn!(%text, "ignoring an invalid MAINPID="),
            None => {}
        }
        let now = Instant::now();
        if let Some(pending) = &mut self.pending_restart
            && pending.from == Some(main_pid)
            && self.main.as_ref().is_some_and(|m| m.pid == main_pid)
        {
            if note.reloading {
                pending.reloading = true;
            } else if note.ready && pending.reloading && note.main_pid.is_none() {
                // RELOADING=1 … READY=1 from the same process: it is serving on, without a
                // successor (lifeline::service says so after a failed handover).
                pending.failed = Some(format!(
                    "pid {main_pid} is ready again without naming a successor (its handover failed)"
                ));
            }
        }
        if note.ready
            && let Some(main) = self.main.as_mut()
            && main.ready_at.is_none()
        {
            main.ready_at = Some(now);
            self.start_deadline = None;
            let pid = main.pid as u32;
            tracing::info!(pid, "service is ready");
            // The file first: whoever sees the event finds it up to date.
            if self.config.state_file.is_some()
                && let Err(err) = self.write_files(false)
            {
                tracing::error!(%err, "cannot update the state file; keeping the previous one");
            }
            self.emit(EventKind::Ready { pid });
        }
        if let Some(text) = note.status {
            self.status_text = Some(text.clone());
            self.emit(EventKind::Status { pid: main_pid as u32, text });
        }
        if let Some(usec) = note.watchdog_usec {
            // From the service: an interval too long to add to the clock never expires.
            self.watchdog_interval = Some(Duration::from_micros(usec));
            self.watchdog_deadline = now.checked_add(Duration::from_micros(usec));
        }
        match note.watchdog {
            Some(Watchdog::Ping) => {
                if let Some(interval) = self.watchdog_interval {
                    self.watchdog_deadline = now.checked_add(interval);
                }
            }
            Some(Watchdog::Trigger) => self.watchdog_deadline = Some(now),
            None => {}
        }
        if note.stopping {
            tracing::info!(pid = main_pid, "service is stopping");
        }
        if note.reloading {
            tracing::info!(pid = main_pid, "service is reloading");
        }
        self.publish(State::Running);
    }

    /// `MAINPID=new` from the current main process: supervision moves to `new`. No restart, no
    /// backoff; the previous main process may keep running a while to drain.
    fn follow(&mut self, new: i32) {
        let Some(old) = self.main.as_ref() else { return };
        if new == old.pid {
            return;
        }
        let old_ready = old.ready_at.is_some();
        // The pidfd first: from here on `new` cannot come to mean another process unnoticed.
        let (mut proc, stat) = match Proc::open_stat(new, Instant::now(), false) {
            Ok(opened) => opened,
            Err(err) => {
                tracing::warn!(new, %err, "ignoring MAINPID=: not a running process");
                return;
            }
        };
        // Like systemd's cgroup check, the new main pid must belong to the service *now*.
        let belongs = self.is_successor(old, &stat);
        // What /proc said was about the process the pidfd holds only if it is still running.
        if !belongs || proc.exited() {
            tracing::warn!(new, "ignoring MAINPID=: that process does not belong to the service");
            return;
        }
        if old_ready || self.ready_at_start() {
            proc.ready_at = Some(proc.since);
        }
        let old_pid = old.pid;
        if let Some(mut previous) = self.main.take() {
            previous.retired_at = Some(Instant::now());
            self.retired.push(previous);
        }
        self.main_pid_changes += 1;
        tracing::info!(old = old_pid, new, "following the new main pid");
        if let Err(err) = self.install_main(proc) {
            tracing::error!(%err, "cannot update the file; keeping the previous one");
        }
        self.emit(EventKind::MainPidChanged { old: old_pid as u32, new: new as u32 });
        self.enforce_max_retired();
    }

    /// A notification from a retired process. Only one thing is accepted from it: `MAINPID=`
    /// naming itself once the main process has exited (or nothing is the main process) — a
    /// predecessor in its rollback window taking the service back after its successor died.
    /// Anything else from it is ignored, as systemd ignores what is not the main pid's.
    fn message_from_retired(&mut self, index: usize, message: &Message) {
        let Some(sender) = message.pid else { return };
        let note = Notification::parse(&message.text);
        let names_itself = matches!(note.main_pid, Some(Ok(pid)) if pid as i32 == sender);
        let main_gone = self.main.as_ref().is_none_or(Proc::exited);
        if !names_itself || !main_gone || self.retired[index].ending.is_some() || self.retired[index].exited()
        {
            tracing::debug!(sender, main_gone, "ignoring a notification from a retired process");
            return;
        }
        let mut proc = self.retired.remove(index);
        proc.retired_at = None;
        let now = Instant::now();
        proc.since = now;
        proc.since_wall = SystemTime::now();
        proc.ready_at = (note.ready || self.ready_at_start()).then_some(now);
        let (from, status) = match self.main.take() {
            Some(crashed) => {
                let status = self.collect_status(crashed.pid);
                (Some(crashed.pid as u32), status)
            }
            None => (None, ExitStatus::Unknown),
        };
        if from.is_some() {
            self.last_exit = Some(status);
        }
        self.rollbacks += 1;
        self.main_pid_changes += 1;
        tracing::warn!(from = ?from, to = sender, %status, "rolled back: a previous main process took the service back");
        if let Err(err) = self.install_main(proc) {
            tracing::error!(%err, "cannot update the file; keeping the previous one");
        }
        if let Some(text) = note.status {
            self.status_text = Some(text);
        }
        self.emit(EventKind::RolledBack { from, status, to: sender as u32 });
        if note.ready {
            self.emit(EventKind::Ready { pid: sender as u32 });
        }
        self.publish(State::Running);
    }

    // ---- retired processes ------------------------------------------------------------------

    /// A retired process exited: forget it.
    fn retired_exited(&mut self, index: usize) {
        // `remove`, not `swap_remove`: the list stays oldest first, for the cap.
        let old = self.retired.remove(index);
        let status = self.collect_status(old.pid);
        tracing::info!(pid = old.pid, %status, "previous main process exited");
        self.publish(if self.main.is_some() { State::Running } else { State::BackingOff });
    }

    /// More retired processes than [`Config::max_retired`] run: stop the oldest ones.
    fn enforce_max_retired(&mut self) {
        let Some(max) = self.config.max_retired else { return };
        loop {
            let running: Vec<usize> = (0..self.retired.len())
                .filter(|&i| self.retired[i].ending.is_none() && !self.retired[i].exited())
                .collect();
            if running.len() <= max {
                return;
            }
            self.end_retired(running[0], RetiredStop::MaxRetired);
        }
    }

    /// Stops retired process `index`: the stop signal now, `SIGKILL` after the grace period.
    /// Its process group is signalled too unless another process the supervisor watches (the
    /// main process, a retired one not being stopped) is in it: a successor started in its
    /// predecessor's group must not be caught.
    fn end_retired(&mut self, index: usize, reason: RetiredStop) {
        let pgid = self.retired[index].pgid;
        let shared = self.main.iter().any(|m| m.pgid == pgid)
            || self
                .retired
                .iter()
                .enumerate()
                .any(|(i, p)| i != index && p.pgid == pgid && p.ending.is_none());
        let whole_group = !shared && pgid != self.own_pgid && pgid > 1;
        let signal = self.config.stop_signal;
        let proc = &mut self.retired[index];
        let retired_pid = proc.pid as u32;
        tracing::warn!(pid = retired_pid, %reason, %signal, "stopping a retired main process");
        let _ = sys::pidfd_send_signal(proc.fd.as_fd(), signal);
        if whole_group {
            let _ = sys::kill_group(pgid, signal);
        }
        proc.ending = Some(Ending { kill_at: Instant::now().checked_add(self.config.grace), whole_group });
        self.emit(EventKind::RetiredStopped { pid: retired_pid, reason });
    }

    /// The next drain deadline or `SIGKILL` due among the retired processes.
    fn next_retired_deadline(&self) -> Option<Instant> {
        self.retired
            .iter()
            .filter_map(|p| match p.ending {
                Some(ending) => ending.kill_at,
                None => self.config.drain_deadline.and_then(|d| p.retired_at?.checked_add(d)),
            })
            .min()
    }

    /// Acts on every drain deadline and `SIGKILL` that is due.
    fn retired_deadlines(&mut self) {
        let now = Instant::now();
        for index in 0..self.retired.len() {
            let proc = &self.retired[index];
            match proc.ending {
                Some(Ending { kill_at: Some(at), whole_group }) if at <= now => {
                    let pid = proc.pid as u32;
                    tracing::warn!(pid, "a retired main process outlived its grace period: SIGKILL");
                    let _ = sys::pidfd_send_signal(proc.fd.as_fd(), Signal::KILL);
                    if whole_group {
                        let _ = sys::kill_group(proc.pgid, Signal::KILL);
                    }
                    self.retired[index].ending = Some(Ending { kill_at: None, whole_group });
                    self.emit(EventKind::RetiredKilled { pid });
                }
                None if self
                    .config
                    .drain_deadline
                    .and_then(|d| proc.retired_at?.checked_add(d))
                    .is_some_and(|at| at <= now) =>
                {
                    self.end_retired(index, RetiredStop::DrainDeadline);
                }
                _ => {}
            }
        }
    }

    /// Whether the process `stat` describes may become the main process after `old`: it descends
    /// from `old` (while `old`'s pid is still `old`'s), or it is in `old`'s session (a session id
    /// held by a running or unreaped process cannot be reused), or — a dedicated subreaper — it
    /// is our child, which every child of a dedicated supervisor is the service's. Sessions of
    /// earlier main processes do not count: they may be empty and their ids reused by anyone.
    fn is_successor(&self, old: &Proc, stat: &sys::ProcStat) -> bool {
        if stat.pid <= 1
            || stat.pid == self.own_pid
            || stat.pgrp == self.own_pgid
            || stat.session == self.own_session
        {
            return false;
        }
        let old_holds_its_pid = !old.exited() || sys::is_unreaped_child(old.pid);
        if old_holds_its_pid && sys::descends_from(stat.pid, &[old.pid]) {
            return true;
        }
        if stat.session == old.session {
            return true;
        }
        self.config.subreaper && self.config.dedicated && stat.ppid == self.own_pid
    }

    // ---- exits, reaping, stopping -----------------------------------------------------------

    /// The exit status of a process whose pidfd fired.
    fn collect_status(&mut self, pid: i32) -> ExitStatus {
        if let Some(status) = self.reaped.remove(&pid) {
            return status;
        }
        match sys::try_reap(pid) {
            Reaped::Exited(status) => status,
            Reaped::NotOurChild => ExitStatus::Unknown,
            Reaped::Running => {
                tracing::debug!(pid, "pidfd fired but the child is not reapable yet");
                ExitStatus::Unknown
            }
        }
    }

    /// Reaps the service's exited orphans, keeping the statuses of processes we also watch.
    ///
    /// A dedicated supervisor reaps every child (all are the service's). Otherwise only children
    /// it can attribute to the service: in one of its process groups or sessions (the library
    /// user's other children are left alone).
    fn reap_orphans(&mut self) {
        let watched: Vec<i32> = self.main.iter().chain(&self.retired).map(|p| p.pid).collect();
        let mut found = Vec::new();
        if self.config.dedicated {
            // Under the probes' lock: a probe command's status goes to its probe.
            found = self.probes.children.reaping(|| {
                let mut all = Vec::new();
                sys::reap_any(|pid, status| all.push((pid, status)));
                all
            });
        } else {
            for &pgid in &self.pgids {
                sys::reap_group(pgid, |pid, status| found.push((pid, status)));
            }
            // Orphans that moved to a group of their own but stayed in a session of the service.
            for child in sys::own_children().unwrap_or_default() {
                if let Ok(stat) = sys::read_stat(child)
                    && stat.is_zombie()
                    && self.sessions.contains(&stat.session)
                    && let Reaped::Exited(status) = sys::try_reap(child)
                {
                    found.push((child, status));
                }
            }
        }
        for (pid, status) in found {
            if watched.contains(&pid) {
                self.reaped.insert(pid, status);
            } else {
                tracing::debug!(pid, %status, "reaped an orphan");
            }
        }
        // Forget groups and sessions that are empty and belong to nobody we watch: once empty, their
        // ids can be reused by anyone.
        let keep_groups: BTreeSet<i32> = self.main.iter().chain(&self.retired).map(|p| p.pgid).collect();
        self.pgids
            .retain(|pgid| keep_groups.contains(pgid) || sys::kill_group(*pgid, Signal::from_raw(0)).is_ok());
        let keep_sessions: BTreeSet<i32> = self.main.iter().chain(&self.retired).map(|p| p.session).collect();
        if self.sessions.iter().any(|s| !keep_sessions.contains(s)) {
            let live: BTreeSet<i32> = sys::process_table().iter().map(|s| s.session).collect();
            self.sessions.retain(|s| keep_sessions.contains(s) || live.contains(s));
        }
    }

    /// Supervision ends without a main process (done, given up): a dedicated supervisor stops
    /// whatever of the service is still running — retired processes, orphans in sessions of
    /// their own — so that it leaves nothing behind (a container's init exits next).
    async fn stop_remaining(&mut self) {
        if !self.config.dedicated {
            return;
        }
        let retired = std::mem::take(&mut self.retired);
        let targets: Vec<group::Target<'_>> = retired.iter().map(Proc::target).collect();
        let scope = group::Scope {
            groups: self.signalable(&retired.iter().map(|p| p.pgid).collect::<Vec<_>>()),
            sessions: BTreeSet::new(),
            target_descendants: true,
            our_descendants: true,
        };
        if targets.is_empty() && group::members(&targets, &scope).is_empty() {
            return;
        }
        tracing::info!("stopping what the service left running");
        group::terminate(&targets, &scope, self.config.stop_signal, Some(self.config.grace)).await;
        for old in &retired {
            let _ = self.collect_status(old.pid);
        }
        self.reap_orphans();
    }

    /// After a crash: stop what is left of the crashed main process's group.
    async fn stop_leftovers(&mut self, pgid: i32) {
        if pgid == self.own_pgid || pgid <= 1 {
            return;
        }
        let groups = BTreeSet::from([pgid]);
        if sys::group_members(&groups).iter().all(sys::ProcStat::is_zombie) {
            return;
        }
        tracing::info!(pgid, "stopping what is left of the crashed process group");
        let ended = group::terminate(
            &[],
            &group::Scope::groups(groups),
            self.config.stop_signal,
            Some(self.config.grace),
        )
        .await;
        self.emit(EventKind::LeftoversStopped { pgid: pgid as u32, killed: ended.killed });
    }

    /// The main process missed its watchdog deadline: `watchdog_signal` to its group (a core
    /// dump is wanted), then its exit goes to the policy.
    async fn watchdog_expired(&mut self) -> Option<Outcome> {
        let Some(pid) = self.main.as_ref().map(|m| m.pid) else {
            self.watchdog_deadline = None;
            return None;
        };
        tracing::warn!(pid, "watchdog timeout: the service stopped sending WATCHDOG=1");
        self.emit(EventKind::WatchdogTimeout { pid: pid as u32 });
        self.terminate_main(self.config.watchdog_signal, ExitCause::WatchdogTimeout).await
    }

    /// The main process missed its start timeout: stop it like a stop (the service may be busy
    /// starting, not hung), then its exit goes to the policy.
    async fn start_timed_out(&mut self) -> Option<Outcome> {
        let Some(pid) = self.main.as_ref().map(|m| m.pid) else {
            self.start_deadline = None;
            return None;
        };
        let after = self.config.start_timeout.unwrap_or_default();
        tracing::warn!(pid, timeout = %humanize(after), "start timeout: the service did not send READY=1");
        self.emit(EventKind::StartTimeout { pid: pid as u32, after });
        self.terminate_main(self.config.stop_signal, ExitCause::StartTimeout).await
    }

    /// Ends the main process on the supervisor's initiative: `signal` to its group, `SIGKILL`
    /// after the grace period; its exit is reported with `cause`.
    async fn terminate_main(&mut self, signal: Signal, cause: ExitCause) -> Option<Outcome> {
        let main = self.main.take()?;
        self.stop_probes();
        self.watchdog_deadline = None;
        self.start_deadline = None;
        let scope = group::Scope::groups(self.signalable(&[main.pgid]));
        group::terminate(&[main.target()], &scope, signal, Some(self.config.grace)).await;
        let status = self.collect_status(main.pid);
        Some(Outcome::Exited { pid: main.pid, pgid: main.pgid, exit: exit_of(&main, status, cause) })
    }

    /// Stops the service: the main process, previous ones still draining, their process groups,
    /// everything in their sessions and everything that descends from them (a successor not ready
    /// yet, in a group of its own) — and, dedicated, every descendant of this process. Processes
    /// that join while it waits (forks, orphans re-parented to us) are stopped too; it ends only
    /// when none is left (or they survived `SIGKILL`).
    async fn stop(&mut self, signal: Option<Signal>) -> StopOutcome {
        let stop_signal = signal.unwrap_or(self.config.stop_signal);
        self.stop_probes();
        self.drain_notify();
        self.publish(State::Stopping);
        self.watchdog_deadline = None;
        self.start_deadline = None;
        let main = self.main.take();
        let retired = std::mem::take(&mut self.retired);
        let procs: Vec<&Proc> = main.iter().chain(&retired).collect();
        let scope = group::Scope {
            groups: self.signalable(&procs.iter().map(|p| p.pgid).collect::<Vec<_>>()),
            sessions: procs.iter().map(|p| p.session).filter(|s| *s != self.own_session && *s > 1).collect(),
            target_descendants: true,
            our_descendants: self.config.dedicated,
        };
        let targets: Vec<group::Target<'_>> = procs.iter().map(|p| p.target()).collect();
        let anything = !targets.is_empty() || !group::members(&targets, &scope).is_empty();
        let began = Instant::now();
        let ended = if anything {
            if let Some(main) = &main {
                tracing::info!(pid = main.pid, signal = %stop_signal, "stopping the service");
            } else {
                tracing::info!(signal = %stop_signal, "stopping what is left of the service");
            }
            group::terminate(&targets, &scope, stop_signal, Some(self.config.grace)).await
        } else {
            group::Ended::default()
        };
        let after = began.elapsed();
        // Our own processes first: reaping orphans would take (and drop) their statuses.
        let status = main.as_ref().map(|m| self.collect_status(m.pid));
        for old in &retired {
            let old_status = self.collect_status(old.pid);
            tracing::debug!(pid = old.pid, status = %old_status, "previous main process stopped");
        }
        if self.config.subreaper || self.config.dedicated {
            self.reap_orphans();
        }
        self.remove_files();
        let pid = main.as_ref().map(|m| m.pid as u32);
        match (pid, status) {
            _ if !ended.survivors.is_empty() => StopOutcome::Stuck { pid, survivors: ended.survivors, after },
            (Some(pid), Some(status)) if ended.killed => StopOutcome::Killed { pid, status, after },
            (Some(pid), Some(status)) => StopOutcome::Exited { pid, status, after },
            _ => StopOutcome::NotRunning,
        }
    }

    fn detach(&mut self) -> Result<Snapshot, Error> {
        if matches!(self.config.lifetime, Lifetime::DieWithSupervisor { .. }) {
            return Err(Error::DetachRefused);
        }
        self.drain_notify();
        let main = self.main.as_ref().ok_or(Error::NothingRunning)?;
        let notify_socket = self.notify.take().map(NotifySocket::keep);
        let snapshot = self.snapshot_of(main, notify_socket);
        if let Some(path) = &self.config.state_file
            && let Err(err) = snapshot.write(path)
        {
            tracing::error!(%err, "cannot write the detached snapshot to the state file");
        }
        self.emit(EventKind::Detached { pid: snapshot.pid });
        self.stop_probes();
        self.main = None;
        Ok(snapshot)
    }

    /// Every handle is gone: leave the service running, or stop it if it was meant to die with us.
    async fn abandon(&mut self) -> Finished {
        if matches!(self.config.lifetime, Lifetime::DieWithSupervisor { .. }) {
            let outcome = self.stop(None).await;
            self.emit(EventKind::Stopped { outcome });
        } else if let Some(main) = &self.main {
            tracing::info!(pid = main.pid, "supervisor handle dropped; leaving the service running");
        }
        Finished::Abandoned
    }

    fn signal_main(&self, signal: Signal) -> Result<(), Error> {
        let main = self.main.as_ref().ok_or(Error::NothingRunning)?;
        sys::pidfd_send_signal(main.fd.as_fd(), signal).map_err(|source| Error::Signal {
            pid: main.pid as u32,
            signal,
            source,
        })
    }

    /// The groups among `pgids` that may be signalled: never our own.
    fn signalable(&self, pgids: &[i32]) -> BTreeSet<i32> {
        pgids.iter().copied().filter(|g| *g != self.own_pgid && *g > 1).collect()
    }

    /// Removes the pid file and the state file (the service is gone for good).
    fn remove_files(&mut self) {
        self.retry_files = None;
        if let Some(pid_file) = &self.pid_file
            && let Err(err) = pid_file.remove()
        {
            tracing::warn!(%err, "cannot remove the pid file");
        }
        if let Some(path) = &self.config.state_file {
            match std::fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(%err, path = %path.display(), "cannot remove the state file");
                }
                _ => {}
            }
        }
    }

    // ---- reporting --------------------------------------------------------------------------

    fn emit(&self, kind: EventKind) {
        tracing::debug!(?kind, "event");
        // No subscriber is fine: events are also logged.
        let _ = self.events.send(Event { at: Instant::now(), kind });
    }

    fn publish(&self, state: State) {
        let main = self.main.as_ref();
        self.status.send_replace(Status {
            pid: main.map(|m| m.pid as u32),
            state,
            ready: self.is_ready(),
            text: self.status_text.clone(),
            starts: self.starts,
            main_pid_changes: self.main_pid_changes,
            last_exit: self.last_exit,
            since: main.map(|m| m.since_wall),
            backoff_until: if state == State::BackingOff { self.backoff_until } else { None },
            retired: self.retired.iter().map(|p| p.pid as u32).collect(),
            rollbacks: self.rollbacks,
        });
    }
}

/// At most one probe of each role.
fn check_probes(config: &Config) -> Result<(), Error> {
    for (i, probe) in config.probes.iter().enumerate() {
        if config.probes[..i].iter().any(|p| p.role == probe.role) {
            return Err(Error::ProbeConflict { role: probe.role });
        }
    }
    Ok(())
}

fn exit_of(proc: &Proc, status: ExitStatus, cause: ExitCause) -> Exit {
    let at = Instant::now();
    Exit {
        status,
        cause,
        runtime: at.saturating_duration_since(proc.since),
        healthy: proc.ready_at.map_or(Duration::ZERO, |ready| at.saturating_duration_since(ready)),
        at,
    }
}

/// Resolves when the pidfd is readable (the process exited); never if there is none.
async fn exited(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        // An error from the reactor means the fd is unusable; treat it like an exit so the
        // supervisor looks (waitpid tells the truth) rather than hanging.
        Some(fd) => drop(fd.readable().await),
        None => std::future::pending().await,
    }
}

/// Resolves with the index of a process in `procs` that has exited.
fn any_exited(procs: &[Proc]) -> impl Future<Output = usize> + '_ {
    poll_fn(move |cx| {
        for (index, proc) in procs.iter().enumerate() {
            if proc.fd.poll_read_ready(cx).is_ready() {
                return Poll::Ready(index);
            }
        }
        Poll::Pending
    })
}

async fn recv_notify(socket: Option<&NotifySocket>) -> io::Result<Message> {
    match socket {
        Some(socket) => socket.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_signal(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
