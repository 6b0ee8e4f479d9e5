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
use crate::event::{Event, EventKind, Events};
use crate::exit::{Exit, ExitCause, ExitStatus};
use crate::group;
use crate::notify::{Message, Notification, NotifySocket, Watchdog};
use crate::pidfile::PidFile;
use crate::policy::{Backoff, Decision, RestartPolicy, humanize};
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
}

enum Request {
    Stop,
    Detach(oneshot::Sender<Result<(), Error>>),
    Signal(Signal, oneshot::Sender<Result<(), Error>>),
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
    pub async fn stop(mut self) -> Result<StopOutcome, Error> {
        // If the task has already finished, the send fails and `wait` reports why.
        let _ = self.requests.send(Request::Stop).await;
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

/// What ended a stretch of supervising the main process.
enum Outcome {
    Exited { pid: i32, pgid: i32, exit: Exit },
    Stop,
    Detach(oneshot::Sender<Result<(), Error>>),
    Abandoned,
}

/// What woke the supervisor up.
enum Wake {
    Notify(io::Result<Message>),
    MainExited,
    RetiredExited(usize),
    Child,
    Request(Option<Request>),
    Watchdog,
    StartTimeout,
    RetryFiles,
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
    last_exit: Option<ExitStatus>,
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
            last_exit: None,
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
        if self.ready_at_start() {
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
        self.main = Some(proc);
        let written = self.write_files(true);
        self.publish(State::Running);
        written
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
                Outcome::Stop => {
                    let outcome = self.stop().await;
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
            match self.next_wake().await {
                Wake::Notify(Ok(message)) => self.on_message(&message),
                Wake::Notify(Err(err)) => tracing::warn!(%err, "notify socket receive failed"),
                Wake::MainExited => {
                    // A MAINPID= sent just before the old main exited is already queued: handle
                    // it first, or a handover would look like a crash.
                    let before = self.main.as_ref().map(|m| m.pid);
                    self.drain_notify();
                    if self.main.as_ref().map(|m| m.pid) != before {
                        continue;
                    }
                    if let Some(main) = self.main.take() {
                        let status = self.collect_status(main.pid);
                        return Outcome::Exited {
                            pid: main.pid,
                            pgid: main.pgid,
                            exit: exit_of(&main, status, ExitCause::OnItsOwn),
                        };
                    }
                }
                Wake::RetiredExited(index) => {
                    let old = self.retired.swap_remove(index);
                    let status = self.collect_status(old.pid);
                    tracing::info!(pid = old.pid, %status, "previous main process exited");
                }
                Wake::Child => self.reap_orphans(),
                Wake::Request(Some(Request::Signal(signal, reply))) => {
                    let _ = reply.send(self.signal_main(signal));
                }
                Wake::Request(Some(Request::Stop)) => return Outcome::Stop,
                Wake::Request(Some(Request::Detach(reply))) => return Outcome::Detach(reply),
                Wake::Request(None) => return Outcome::Abandoned,
                Wake::Watchdog => {
                    if let Some(outcome) = self.watchdog_expired().await {
                        return outcome;
                    }
                }
                Wake::StartTimeout => {
                    // READY=1 may be queued behind the deadline: it counts if it was sent in time.
                    self.drain_notify();
                    if self.start_deadline.is_some()
                        && let Some(outcome) = self.start_timed_out().await
                    {
                        return outcome;
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
    }

    async fn next_wake(&mut self) -> Wake {
        let deadline = self.watchdog_deadline;
        let retry = self.retry_files.map(|(at, _)| at);
        let start = self.start_deadline;
        tokio::select! {
            message = recv_notify(self.notify.as_ref()) => Wake::Notify(message),
            () = exited(self.main.as_ref().map(|m| &m.fd)) => Wake::MainExited,
            index = any_exited(&self.retired) => Wake::RetiredExited(index),
            () = next_signal(self.sigchld.as_mut()) => Wake::Child,
            request = self.requests.recv() => Wake::Request(request),
            () = sleep_until(deadline) => Wake::Watchdog,
            () = sleep_until(start) => Wake::StartTimeout,
            () = sleep_until(retry) => Wake::RetryFiles,
        }
    }

    /// After an exit: stop leftovers, ask the policy, wait, restart. `None` means "running again".
    async fn after_exit(&mut self, pid: i32, group: i32, mut exit: Exit) -> Option<Finished> {
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
                        if let Some(finished) = self.backoff(after).await {
                            return Some(finished);
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
                    self.remove_files();
                    self.emit(EventKind::Done { last: exit.status });
                    return Some(Finished::Done { last: exit.status });
                }
                Decision::GiveUp { reason } => {
                    tracing::error!(%reason, last = %exit.status, "giving up");
                    self.remove_files();
                    self.emit(EventKind::GaveUp { reason: reason.clone(), last: exit.status });
                    return Some(Finished::GaveUp { reason, last: exit.status });
                }
            }
        }
    }

    /// Waits `delay` before a restart, still answering requests and reaping.
    async fn backoff(&mut self, delay: Duration) -> Option<Finished> {
        self.publish(State::BackingOff);
        // A delay too long to add to the clock is waited out for ever (until a stop).
        let until = Instant::now().checked_add(delay);
        loop {
            tokio::select! {
                () = sleep_until(until) => return None,
                request = self.requests.recv() => match request {
                    Some(Request::Stop) => {
                        // Nothing is the main process, but previous ones may still drain, and
                        // (dedicated) orphans may be left: the stop covers them.
                        let outcome = self.stop().await;
                        self.emit(EventKind::Stopped { outcome: outcome.clone() });
                        return Some(Finished::Stopped(outcome));
                    }
                    Some(Request::Detach(reply) | Request::Signal(_, reply)) => {
                        let _ = reply.send(Err(Error::NothingRunning));
                    }
                    None => return Some(Finished::Abandoned),
                },
                // Nobody is the main process: every message is refused, but fds must be closed.
                message = recv_notify(self.notify.as_ref()) => if let Ok(message) = message { self.on_message(&message) },
                index = any_exited(&self.retired) => {
                    let old = self.retired.swap_remove(index);
                    let status = self.collect_status(old.pid);
                    tracing::info!(pid = old.pid, %status, "previous main process exited");
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
            tracing::debug!(sender = ?message.pid, "ignoring a notification: no main process");
            return;
        };
        if message.pid != Some(main_pid) {
            // systemd's NotifyAccess=main: only the main process speaks for the service.
            tracing::debug!(sender = ?message.pid, main_pid, "ignoring a notification from a process that is not the main pid");
            return;
        }
        let note = Notification::parse(&message.text);
        tracing::debug!(pid = main_pid, fds = message.fds, text = %message.text.trim_end(), "notification");
        // systemd applies MAINPID= before READY=1 of the same message.
        match note.main_pid {
            Some(Ok(new)) => self.follow(new as i32),
            Some(Err(text)) => tracing::warn!(%text, "ignoring an invalid MAINPID="),
            None => {}
        }
        let now = Instant::now();
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
        if let Some(previous) = self.main.take() {
            self.retired.push(previous);
        }
        self.main_pid_changes += 1;
        tracing::info!(old = old_pid, new, "following the new main pid");
        if let Err(err) = self.install_main(proc) {
            tracing::error!(%err, "cannot update the file; keeping the previous one");
        }
        self.emit(EventKind::MainPidChanged { old: old_pid as u32, new: new as u32 });
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
            sys::reap_any(|pid, status| found.push((pid, status)));
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
    async fn stop(&mut self) -> StopOutcome {
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
                tracing::info!(pid = main.pid, signal = %self.config.stop_signal, "stopping the service");
            } else {
                tracing::info!(signal = %self.config.stop_signal, "stopping what is left of the service");
            }
            group::terminate(&targets, &scope, self.config.stop_signal, Some(self.config.grace)).await
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
        self.main = None;
        Ok(snapshot)
    }

    /// Every handle is gone: leave the service running, or stop it if it was meant to die with us.
    async fn abandon(&mut self) -> Finished {
        if matches!(self.config.lifetime, Lifetime::DieWithSupervisor { .. }) {
            let outcome = self.stop().await;
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
            ready: main.is_some_and(|m| m.ready_at.is_some()),
            text: self.status_text.clone(),
            starts: self.starts,
            main_pid_changes: self.main_pid_changes,
            last_exit: self.last_exit,
        });
    }
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
