//! `Upgrader`: the running process's handle that starts a successor and hands over to it.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::fds::Registry;
use crate::handover::Handover;
use crate::lifecycle::DynLifecycle;
use crate::{Config, Error, ExitReason, LifecycleHandler, notify};

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) executable: PathBuf,
    pub(crate) args: Vec<OsString>,
    registry: Mutex<Registry>,
    /// With [`Config::keep_for_rollback`]: the registry of the upgrade that succeeded, kept until
    /// [`Upgrader::release_retained`] (or given back by [`Upgrader::roll_back`]).
    retained: Mutex<Registry>,
    /// Held for the whole of an upgrade: `try_lock` failing means one is running.
    lifecycle: tokio::sync::Mutex<Box<dyn DynLifecycle>>,
    successor: Mutex<Option<u32>>,
    upgraded: Mutex<CancellationToken>,
    /// The exit of the spawned successor that took over (its pid and how it ended).
    pub(crate) successor_exit: tokio::sync::watch::Sender<Option<(u32, ExitReason)>>,
    /// Cancelled by [`Upgrader::stop_upgrades`]: no upgrade starts any more, and the one in
    /// flight is aborted.
    pub(crate) stopping: CancellationToken,
}

/// Locks `mutex`; a panic while holding one of these locks cannot leave its value half-updated
/// (every change is one assignment or one `Vec` operation), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }
}

/// The running process's handle for handing over to a successor; returned by
/// [`Handover::ready`]. Cheap to clone; every clone drives the same process.
///
/// After a successful upgrade the token of [`Upgrader::upgraded`] is cancelled: stop accepting,
/// drain in-flight work ([`drain`](crate::drain)), and exit 0.
#[derive(Clone)]
pub struct Upgrader {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrader")
            .field("executable", &self.shared.executable)
            .field("successor", &self.successor())
            .finish_non_exhaustive()
    }
}

/// The upgrade lock, held for the whole of one upgrade.
pub(crate) type UpgradeGuard<'a> = tokio::sync::MutexGuard<'a, Box<dyn DynLifecycle>>;

impl Upgrader {
    pub(crate) fn new<L: LifecycleHandler>(handover: Handover, lifecycle: L) -> Self {
        Upgrader {
            shared: Arc::new(Shared {
                config: handover.config,
                executable: handover.executable,
                args: handover.args,
                registry: Mutex::new(handover.registry),
                retained: Mutex::new(Registry::default()),
                lifecycle: tokio::sync::Mutex::new(Box::new(lifecycle)),
                successor: Mutex::new(None),
                upgraded: Mutex::new(CancellationToken::new()),
                successor_exit: tokio::sync::watch::Sender::new(None),
                stopping: CancellationToken::new(),
            }),
        }
    }

    /// Starts the executable this process was started from with the registered file
    /// descriptors, sends it the state, and waits until it calls `ready()`; returns its pid.
    ///
    /// On success this process is no longer the main one: [`Upgrader::upgraded`] is cancelled,
    /// `MAINPID=<new pid>` goes to the service manager and the new process moves the pid file
    /// (its own, prepared before it said it was ready) into place.
    /// Stop accepting and drain. On failure the new process and its process group are killed
    /// and reaped, [`LifecycleHandler::new_process_failed`] runs, and this process serves on as
    /// before: [`Error::Exited`], [`Error::NotReady`], [`Error::ClosedWithoutReady`],
    /// [`Error::SendState`], [`Error::Spawn`], [`Error::Aborted`]. One upgrade runs at a time: a
    /// concurrent call fails at once with [`Error::InProgress`], any call after a success with
    /// [`Error::AlreadyUpgraded`], and any call after [`Upgrader::stop_upgrades`] with
    /// [`Error::Stopping`].
    ///
    /// The error's `Display` is the reason to report (`RestartFailed { reason }`).
    pub async fn upgrade(&self) -> Result<u32, Error> {
        let started = std::time::Instant::now();
        let mut lifecycle = self.begin()?;
        self.announce_reload();
        let result = crate::spawn::spawn_successor(&self.shared, &mut **lifecycle).await;
        self.finish(result, &mut **lifecycle, started).await
    }

    /// Takes the upgrade lock if no upgrade runs and none succeeded yet.
    pub(crate) fn begin(&self) -> Result<UpgradeGuard<'_>, Error> {
        let begun = self.try_begin();
        if begun.is_err() {
            crate::metrics::refused();
        }
        begun
    }

    fn try_begin(&self) -> Result<UpgradeGuard<'_>, Error> {
        if let Some(pid) = self.successor() {
            return Err(Error::AlreadyUpgraded { pid });
        }
        if self.shared.stopping.is_cancelled() {
            return Err(Error::Stopping);
        }
        let guard = self.shared.lifecycle.try_lock().map_err(|_| Error::InProgress)?;
        // A previous holder may have succeeded (or a stop begun) between the checks and the lock.
        if let Some(pid) = self.successor() {
            return Err(Error::AlreadyUpgraded { pid });
        }
        if self.shared.stopping.is_cancelled() {
            return Err(Error::Stopping);
        }
        Ok(guard)
    }

    /// For a process that is stopping rather than handing over: refuses upgrades from now on
    /// ([`Error::Stopping`]) and aborts the one in flight — its new process is killed with its
    /// process group and reaped, and its `upgrade()` returns [`Error::Aborted`]. Returns once no
    /// upgrade runs any more, with the successor's pid if one had already taken over (the
    /// commit came first: this process has handed over and must drain, not stop the service).
    ///
    /// Without this, a process told to stop in the middle of a restart would exit and leave the
    /// new process running on its own.
    pub async fn stop_upgrades(&self) -> Option<u32> {
        self.shared.stopping.cancel();
        // Held for the whole of an upgrade: taking it waits for the abort to finish.
        drop(self.shared.lifecycle.lock().await);
        self.successor()
    }

    /// Tells the service manager an upgrade runs (`RELOADING=1`), for as long as a successor may
    /// take to become ready.
    pub(crate) fn announce_reload(&self) {
        if self.shared.config.notify {
            let may_take = self.shared.config.ready_timeout.saturating_add(Duration::from_secs(10));
            if let Err(err) = notify::reloading(may_take) {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "cannot tell the service manager an upgrade runs"
                );
            }
        }
    }

    pub(crate) async fn finish(
        &self,
        result: Result<u32, Error>,
        lifecycle: &mut dyn DynLifecycle,
        started: std::time::Instant,
    ) -> Result<u32, Error> {
        crate::metrics::restarted(result.is_ok(), started.elapsed());
        match result {
            Ok(pid) => {
                self.complete(pid);
                Ok(pid)
            }
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "upgrade failed; this process keeps serving"
                );
                if self.shared.config.notify
                    && let Err(err) = notify::still_ready()
                {
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "cannot tell the service manager the upgrade is over"
                    );
                }
                lifecycle.new_process_failed().await;
                Err(err)
            }
        }
    }

    fn complete(&self, pid: u32) {
        // `begin` holds the upgrade lock, so this is the only success.
        *lock(&self.shared.successor) = Some(pid);
        tracing::info!(pid, "handed over; draining");
        if self.shared.config.notify
            && let Err(err) = notify::handed_over(pid)
        {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "cannot tell the service manager about the new main pid"
            );
        }
        // The pid file is the successor's now: it moves its own into place after telling us.
        // The successor holds its own copies now; ours would only keep sockets open — unless this
        // process may have to take over again.
        let handed = std::mem::take(&mut *self.shared.registry());
        if self.shared.config.keep_for_rollback {
            *lock(&self.shared.retained) = handed;
        }
        lock(&self.shared.upgraded).cancel();
    }

    /// The exit of the successor this process handed over to (a spawned one; `None` while it
    /// runs). Lets a predecessor that keeps its resources for a rollback window notice that the
    /// new process died.
    pub fn successor_exit(&self) -> tokio::sync::watch::Receiver<Option<(u32, ExitReason)>> {
        self.shared.successor_exit.subscribe()
    }

    /// Takes over again after the successor this process handed over to has exited (a
    /// rollback): the registered file descriptors come back (with [`Config::keep_for_rollback`]),
    /// upgrades are possible again, a new [`Upgrader::upgraded`] token is armed, the service
    /// manager is told `MAINPID=<this pid>` and `READY=1`, and the pid file names this process
    /// again.
    ///
    /// [`Error::SuccessorRunning`] while the successor has not exited (a rollback would leave two
    /// main processes), and when nothing was kept for a rollback.
    pub fn roll_back(&self) -> Result<(), Error> {
        let Some(successor) = self.successor() else {
            return Err(Error::SuccessorRunning { pid: 0, reason: "no handover to roll back".to_owned() });
        };
        let exited = matches!(*self.shared.successor_exit.borrow(), Some((pid, _)) if pid == successor);
        if !exited {
            return Err(Error::SuccessorRunning { pid: successor, reason: "it is still running".to_owned() });
        }
        if !self.shared.config.keep_for_rollback {
            return Err(Error::SuccessorRunning {
                pid: successor,
                reason: "nothing was kept for a rollback (Config::keep_for_rollback)".to_owned(),
            });
        }
        let me = std::process::id();
        *self.shared.registry() = std::mem::take(&mut *lock(&self.shared.retained));
        *lock(&self.shared.upgraded) = CancellationToken::new();
        *lock(&self.shared.successor) = None;
        if self.shared.config.notify
            && let Err(err) = notify::rolled_back(me, successor)
        {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "cannot tell the service manager this process is the main one again"
            );
        }
        if let Some(path) = &self.shared.config.pid_file
            && let Err(err) = crate::pidfile::write(path, me)
        {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "cannot point the pid file back at this process"
            );
        }
        tracing::warn!(successor, "rolled back: this process serves again");
        Ok(())
    }

    /// Closes the file descriptors kept for a rollback ([`Config::keep_for_rollback`]): the
    /// rollback window is over.
    pub fn release_retained(&self) {
        lock(&self.shared.retained).clear();
    }

    /// Cancelled once an upgrade succeeded: the signal to stop accepting and drain. After a
    /// [`roll_back`](Upgrader::roll_back) a new token is armed: call this again.
    pub fn upgraded(&self) -> CancellationToken {
        lock(&self.shared.upgraded).clone()
    }

    /// The successor's pid, after a successful upgrade.
    pub fn successor(&self) -> Option<u32> {
        *lock(&self.shared.successor)
    }

    /// Registers `fd` under `name` for the next upgrades (see [`Handover::register`]).
    pub fn register(&self, name: &str, fd: impl Into<OwnedFd>) -> Result<(), Error> {
        self.shared.registry().insert(name, fd.into())
    }

    /// Registers a duplicate of `fd` under `name` (see [`Handover::register_dup`]).
    pub fn register_dup(&self, name: &str, fd: &impl AsFd) -> Result<(), Error> {
        let mut registry = self.shared.registry();
        if registry.contains(name) {
            return Err(Error::DuplicateName { name: name.to_owned() });
        }
        let dup = fd.as_fd().try_clone_to_owned().map_err(Error::io("duplicate a file descriptor"))?;
        registry.insert(name, dup)
    }

    /// Removes and returns the file descriptor registered under `name`.
    pub fn unregister(&self, name: &str) -> Option<OwnedFd> {
        self.shared.registry().remove(name)
    }

    /// The names of the registered file descriptors.
    pub fn registered(&self) -> Vec<String> {
        self.shared.registry().names().map(str::to_owned).collect()
    }
}
