//! The task loop: one `select!` over the notify socket, the main pidfd, retired processes,
//! `SIGCHLD`, requests, probes and the deadlines; then exit → leftovers stopped → policy →
//! backoff → restart. Also starting the command, restarts on request and reporting.

use std::collections::{BTreeSet, HashMap};
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::Error;
use crate::config::{Command, Config, Lifetime, Notify};
use crate::event::{Event, EventKind};
use crate::exit::{Exit, ExitCause, ExitStatus};
use crate::group;
use crate::notify::{Message, NotifySocket};
use crate::pidfile::PidFile;
use crate::policy::{Decision, RestartPolicy, humanize};
use crate::probe::{ProbeRole, run as probes};
use crate::signal::Signal;
use crate::snapshot::{SNAPSHOT_VERSION, Snapshot, unix_ms};
use crate::spawn::{SpawnOptions, spawn};
use crate::sys;

use super::handle::{Finished, Request, RestartMethod, State, Status, Supervised, Supervisor};
use super::probes::ProbeRound;

/// How many queued notifications are handled before deciding about an exit or a stop.
pub(super) const DRAIN_LIMIT: usize = 1024;
/// A pid file or state file that could not be written is tried again after this long, doubling
/// up to [`RETRY_FILES_MAX`].
pub(super) const RETRY_FILES_FIRST: Duration = Duration::from_secs(1);
pub(super) const RETRY_FILES_MAX: Duration = Duration::from_secs(30);
pub(super) const EVENT_CAPACITY: usize = 256;

/// One process the supervisor watches: the main process, or a previous one still draining.
pub(super) struct Proc {
    pub(super) pid: i32,
    pub(super) fd: AsyncFd<OwnedFd>,
    pub(super) pgid: i32,
    pub(super) session: i32,
    pub(super) start_time: u64,
    /// Its real uid, when last looked at (for the snapshot).
    pub(super) uid: u32,
    /// When supervision of this process began (start, adoption, or becoming main).
    pub(super) since: Instant,
    pub(super) since_wall: SystemTime,
    pub(super) ready_at: Option<Instant>,
    /// When it stopped being the main process (a `MAINPID=` handover); `None` while it is.
    pub(super) retired_at: Option<Instant>,
    /// A retired process being stopped (drain deadline, cap): when `SIGKILL` is due, and whether
    /// its process group is signalled too. `kill_at` is `None` once `SIGKILL` was sent.
    pub(super) ending: Option<Ending>,
}

/// A retired process on its way out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ending {
    pub(super) kill_at: Option<Instant>,
    pub(super) whole_group: bool,
}

impl Proc {
    /// Opens a pidfd first, then reads `/proc`, then checks that the pidfd's process is still
    /// running: so what was read is that of the process the pidfd refers to, never of a process
    /// that reused the pid. A zombie is refused unless `zombie_ok` (our own fresh child, whose pid
    /// nobody else can reap and so nobody can reuse).
    pub(super) fn open(pid: i32, since: Instant, zombie_ok: bool) -> Result<Proc, Error> {
        Self::open_stat(pid, since, zombie_ok).map(|(proc, _)| proc)
    }

    /// [`Proc::open`], also returning what `/proc/<pid>/stat` said.
    pub(super) fn open_stat(
        pid: i32,
        since: Instant,
        zombie_ok: bool,
    ) -> Result<(Proc, sys::ProcStat), Error> {
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

    pub(super) fn exited(&self) -> bool {
        sys::pidfd_exited(self.fd.as_fd())
    }

    pub(super) fn target(&self) -> group::Target<'_> {
        group::Target { pid: self.pid, pidfd: &self.fd, pgid: self.pgid }
    }
}

/// A restart asked for through [`Supervised::restart`], until its new main process is ready.
pub(super) struct PendingRestart {
    pub(super) reply: oneshot::Sender<Result<u32, Error>>,
    /// When to give up waiting (`None`: a timeout too long for the clock).
    pub(super) deadline: Option<Instant>,
    /// The main pid when it began: a handover must name another one.
    pub(super) from: Option<i32>,
    /// The main process said `RELOADING=1` since.
    pub(super) reloading: bool,
    /// Why it failed, once it is known.
    pub(super) failed: Option<String>,
}

/// What ended a stretch of supervising the main process.
pub(super) enum Outcome {
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
pub(super) enum BackoffEnd {
    /// Time to start again.
    Elapsed,
    /// A stop, or every handle dropped.
    Finished(Finished),
    /// A retired process took the service back (it is the main process now).
    RolledBack,
}

/// What woke the supervisor up.
pub(super) enum Wake {
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

pub(super) struct Task {
    pub(super) command: Command,
    pub(super) config: Config,
    pub(super) policy: Box<dyn RestartPolicy>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) first_events: Option<broadcast::Receiver<Event>>,
    pub(super) status: watch::Sender<Status>,
    pub(super) requests: mpsc::Receiver<Request>,
    pub(super) notify: Option<NotifySocket>,
    pub(super) sigchld: Option<tokio::signal::unix::Signal>,
    pub(super) pid_file: Option<PidFile>,
    pub(super) own_pid: i32,
    pub(super) own_pgid: i32,
    pub(super) own_session: i32,
    /// This boot's id, for snapshots (empty if it cannot be read: no snapshot is then adoptable).
    pub(super) boot_id: String,
    /// Process groups and sessions of main processes so far, forgotten once nobody is left in
    /// them: where orphans are reaped (without [`Config::dedicated`]). Not where leftovers are
    /// stopped, nor what `MAINPID=` may name: those look only at the current processes.
    pub(super) pgids: BTreeSet<i32>,
    pub(super) sessions: BTreeSet<i32>,
    /// Exit statuses collected while reaping orphans, for processes we also watch by pidfd.
    pub(super) reaped: HashMap<i32, ExitStatus>,
    pub(super) main: Option<Proc>,
    pub(super) retired: Vec<Proc>,
    pub(super) status_text: Option<String>,
    pub(super) watchdog_interval: Option<Duration>,
    pub(super) watchdog_deadline: Option<Instant>,
    /// When the current main process must have sent `READY=1` (set on a start, cleared by
    /// `READY=1` or when another process becomes the main one).
    pub(super) start_deadline: Option<Instant>,
    /// When to try again to write the pid file and state file, and the delay after that.
    pub(super) retry_files: Option<(Instant, Duration)>,
    pub(super) starts: u32,
    pub(super) main_pid_changes: u32,
    pub(super) rollbacks: u32,
    pub(super) last_exit: Option<ExitStatus>,
    /// While backing off: when the next start is due.
    pub(super) backoff_until: Option<SystemTime>,
    /// A restart on request, until it is answered.
    pub(super) pending_restart: Option<PendingRestart>,
    /// The probes of the current main process.
    pub(super) probes: ProbeRound,
}

impl Task {
    pub(super) fn new(sup: Supervisor) -> Result<Task, Error> {
        Self::new_with_notify(sup, None)
    }

    pub(super) fn new_with_notify(sup: Supervisor, adopt_notify: Option<&str>) -> Result<Task, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let Supervisor { command, config, policy } = sup;
        check_probes(&config)?;
        if config.subreaper {
            sys::set_child_subreaper().map_err(|source| Error::Subreaper { source })?;
        }
        let notify = if let Notify::On(on) = config.notify {
            Some(match adopt_notify {
                Some(address) => NotifySocket::rebind(address).or_else(|err| {
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "cannot serve the adopted service's notify socket again; using a new one"
                    );
                    NotifySocket::bind(on.address)
                })?,
                None => NotifySocket::bind(on.address)?,
            })
        } else {
            None
        };
        let sigchld = if config.subreaper || config.dedicated {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "cannot listen for SIGCHLD; orphans will not be reaped"
                    );
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
            watchdog_interval: config.notify.watchdog(),
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
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "cannot read the boot id; snapshots of this service cannot be adopted"
                );
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

    pub(super) fn launch(mut self) -> Supervised {
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

    /// Starts the command as the new main process. An [`Error::PidFile`] means it *was* started
    /// (and is the main process) but the pid file could not be written.
    pub(super) fn start_main(&mut self) -> Result<(), Error> {
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
            self.start_deadline =
                self.config.notify.start_timeout().and_then(|timeout| started.checked_add(timeout));
        }
        self.emit(EventKind::Started { pid, attempt: self.starts });
        installed
    }

    /// Whether a new main process counts as ready at once (no `READY=1` awaited).
    pub(super) fn ready_at_start(&self) -> bool {
        self.config.notify.ready_at_start()
    }

    /// Makes `proc` the main process: groups, pid file, state file, watchdog, status. It is
    /// installed even if a file cannot be written (that error is returned; the write is retried).
    pub(super) fn install_main(&mut self, proc: Proc) -> Result<(), Error> {
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

    /// Writes the pid file (if `pid_file_too`) and the state file for the current main process.
    /// A failure leaves the previous files intact and schedules another try.
    pub(super) fn write_files(&mut self, pid_file_too: bool) -> Result<(), Error> {
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
    pub(super) fn snapshot_of(&self, main: &Proc, notify_socket: Option<String>) -> Snapshot {
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

    pub(super) async fn run(mut self) -> Finished {
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
    pub(super) async fn supervise_main(&mut self) -> Outcome {
        loop {
            let wake = self.next_wake().await;
            if let Some(outcome) = self.on_wake(wake).await {
                return outcome;
            }
            self.check_restart();
        }
    }

    /// Acts on one wake-up; `Some` ends this stretch of supervising the main process.
    pub(super) async fn on_wake(&mut self, wake: Wake) -> Option<Outcome> {
        {
            match wake {
                Wake::Notify(Ok(message)) => self.on_message(&message),
                Wake::Notify(Err(err)) => {
                    tracing::warn!(error = &err as &dyn std::error::Error, "notify socket receive failed");
                }
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
                        tracing::warn!(error = &err as &dyn std::error::Error, retry_in = %humanize(delay), "still cannot update the files; keeping the previous ones");
                    }
                }
            }
        }
        None
    }

    pub(super) async fn next_wake(&mut self) -> Wake {
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
    pub(super) async fn after_exit(&mut self, pid: i32, group: i32, mut exit: Exit) -> Option<Finished> {
        self.stop_probes();
        self.fail_restart("the main process exited before a new one was ready");
        loop {
            self.last_exit = Some(exit.status);
            crate::metrics::exited(&exit.cause);
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
                            tracing::error!(
                                error = &err as &dyn std::error::Error,
                                "restarted, but cannot update the file; keeping the previous one"
                            );
                            return None;
                        }
                        Err(err) => {
                            tracing::error!(error = &err as &dyn std::error::Error, "restart failed");
                            let now = Instant::now();
                            exit = Exit {
                                status: ExitStatus::Unknown,
                                cause: ExitCause::SpawnFailed { reason: crate::error::chain(&err) },
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
    pub(super) async fn backoff(&mut self, delay: Duration) -> BackoffEnd {
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

    /// A restart request: refused, begun here (a handover), or handed to the loop (stop+start).
    pub(super) fn begin_restart(
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
    pub(super) async fn restart_now(&mut self) -> Option<Exit> {
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
            crate::metrics::exited(&exit.cause);
            self.last_exit = Some(status);
            self.emit(EventKind::Exited { pid: main.pid as u32, status, runtime: exit.runtime });
        }
        match self.start_main() {
            Ok(()) => {}
            Err(err @ (Error::PidFile { .. } | Error::StateFile { .. })) => {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "restarted, but cannot update the file; keeping the previous one"
                );
            }
            Err(err) => {
                tracing::error!(error = &err as &dyn std::error::Error, "restart failed");
                self.fail_restart(&crate::error::chain(&err));
                return Some(Exit {
                    status: ExitStatus::Unknown,
                    cause: ExitCause::SpawnFailed { reason: crate::error::chain(&err) },
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
    pub(super) fn check_restart(&mut self) {
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
                Err(err) => {
                    tracing::warn!(error = err as &dyn std::error::Error, "restart on request failed");
                }
            }
            let _ = pending.reply.send(outcome);
        }
    }

    /// Fails the pending restart (if any) with `reason`, at once.
    pub(super) fn fail_restart(&mut self, reason: &str) {
        if let Some(pending) = &mut self.pending_restart {
            pending.failed.get_or_insert_with(|| reason.to_owned());
        }
        self.check_restart();
    }

    pub(super) fn emit(&self, kind: EventKind) {
        tracing::debug!(?kind, "event");
        crate::metrics::event(&kind);
        // No subscriber is fine: events are also logged.
        let _ = self.events.send(Event { at: Instant::now(), kind });
    }

    pub(super) fn publish(&self, state: State) {
        let main = self.main.as_ref();
        if let Some(main) = main {
            crate::metrics::main_since(main.since_wall);
        }
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
pub(super) fn check_probes(config: &Config) -> Result<(), Error> {
    for (i, probe) in config.probes.iter().enumerate() {
        if config.probes[..i].iter().any(|p| p.role == probe.role) {
            return Err(Error::ProbeConflict { role: probe.role });
        }
    }
    Ok(())
}

pub(super) fn exit_of(proc: &Proc, status: ExitStatus, cause: ExitCause) -> Exit {
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
pub(super) async fn exited(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        // An error from the reactor means the fd is unusable; treat it like an exit so the
        // supervisor looks (waitpid tells the truth) rather than hanging.
        Some(fd) => drop(fd.readable().await),
        None => std::future::pending().await,
    }
}

/// Resolves with the index of a process in `procs` that has exited.
pub(super) fn any_exited(procs: &[Proc]) -> impl Future<Output = usize> + '_ {
    poll_fn(move |cx| {
        for (index, proc) in procs.iter().enumerate() {
            if proc.fd.poll_read_ready(cx).is_ready() {
                return Poll::Ready(index);
            }
        }
        Poll::Pending
    })
}

pub(super) async fn recv_notify(socket: Option<&NotifySocket>) -> io::Result<Message> {
    match socket {
        Some(socket) => socket.recv().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn next_signal(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
