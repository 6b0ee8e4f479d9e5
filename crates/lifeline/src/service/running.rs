//! [`Running`]: a ready service — restarts, stops, a rollback window, and the drain that ends it.

use std::os::fd::{AsFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use dirlock::DirLock;
use handover::{Drained, Upgrader};
use restart_socket::{ListenerHandle, Status};
use tokio::signal::unix::SignalKind;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::builder::{CONTROL_FD, STATE_FD};
use super::connection::Connections;
use super::listeners::SocketFile;
use super::retired::Retired;
use super::{Error, notify};

/// How long the control server may take to answer what it accepted before it stopped.
const CONTROL_GRACE: Duration = Duration::from_secs(5);
/// How often `STATUS=` is refreshed for the service manager (when there is one).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// After an accept error (out of descriptors), the pause before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The application's part of `STATUS=`.
type StatusText = Box<dyn Fn() -> String + Send + Sync>;
/// The state a successor (or the next start, through the fd store) continues from.
pub(crate) type EncodeState = Arc<dyn Fn() -> Result<super::state::Carried, postcard::Error> + Send + Sync>;

/// Why a service stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stop {
    /// A successor took over; this process drains and exits 0.
    HandedOver {
        /// The successor's pid.
        pid: u32,
    },
    /// One of the stop signals arrived.
    Signal(SignalKind),
    /// [`Running::stop`] was called.
    Requested,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::HandedOver { pid } => write!(f, "handed over to pid {pid}"),
            Stop::Signal(signal) => write!(f, "stopped by signal {}", signal_name(*signal)),
            Stop::Requested => f.write_str("stopped on request"),
        }
    }
}

fn signal_name(signal: SignalKind) -> String {
    match nix::sys::signal::Signal::try_from(signal.as_raw_value()) {
        Ok(sig) => sig.as_str().to_owned(),
        Err(_) => signal.as_raw_value().to_string(),
    }
}

/// How a service ended: why, and whether the drain finished in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finished {
    /// Why it stopped serving.
    pub reason: Stop,
    /// Whether every tracked connection finished within the drain timeout.
    pub drained: Drained,
}

impl Finished {
    /// Whether a successor took over.
    pub fn handed_over(&self) -> bool {
        matches!(self.reason, Stop::HandedOver { .. })
    }
}

/// Where a running service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The main process: accepting.
    Serving,
    /// Handed over, in the rollback window: accepting nothing, holding everything, ready to take
    /// over again if the successor dies.
    Standby { successor: u32 },
    /// Done serving, for this reason: drain.
    Done(Stop),
}

/// Settings carried from the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) drain_timeout: Duration,
    pub(crate) drain_deadline: Option<Duration>,
    pub(crate) quiet: Duration,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) restart_signals: Vec<SignalKind>,
    pub(crate) rollback_window: Option<Duration>,
    pub(crate) max_retired: Option<usize>,
    pub(crate) control_config: restart_socket::ServerConfig,
    pub(crate) watch_executable: Option<PathBuf>,
}

/// What [`Starting::ready`](super::Starting::ready) hands over.
pub(crate) struct Parts {
    pub(crate) upgrader: Upgrader,
    pub(crate) settings: Settings,
    pub(crate) generation: u64,
    pub(crate) predecessor: Option<u32>,
    pub(crate) lock: Option<DirLock>,
    pub(crate) socket_files: Vec<SocketFile>,
    pub(crate) control: Option<restart_socket::Server>,
    pub(crate) control_path: Option<PathBuf>,
    #[cfg(feature = "tls")]
    pub(crate) certificates: Option<Arc<certwatch::CertWatcher>>,
    pub(crate) signals: mpsc::UnboundedReceiver<SignalKind>,
    pub(crate) encode: EncodeState,
    pub(crate) lineage: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) fd_store: bool,
    pub(crate) retired: Vec<Retired>,
    pub(crate) totals: Arc<super::metrics::Totals>,
}

struct Inner {
    upgrader: Upgrader,
    settings: Settings,
    generation: u64,
    predecessor: Option<u32>,
    started_at: u64,
    phase: watch::Sender<Phase>,
    stop_requested: AtomicBool,
    /// Started when the drain begins.
    draining: Arc<super::connection::DrainSignal>,
    /// The control server stops accepting: at the handover (before the restart is answered) or
    /// at a stop. Renewed by a rollback.
    control_stop: Mutex<CancellationToken>,
    connections: Connections,
    /// The service's own tasks the drain waits for (the control server).
    internal: TaskTracker,
    /// One restart at a time (the control socket, the signals and [`Running::restart`]).
    restart_lock: tokio::sync::Mutex<()>,
    control: Option<ListenerHandle>,
    control_path: Option<PathBuf>,
    lock: Mutex<Option<DirLock>>,
    socket_files: Vec<SocketFile>,
    #[cfg(feature = "tls")]
    certificates: Option<Arc<certwatch::CertWatcher>>,
    /// The application's part of `STATUS=` ([`Running::set_status`]).
    status_text: Mutex<Option<StatusText>>,
    encode: EncodeState,
    /// The generation a successor counts from (see `Starting::ready`).
    lineage: Arc<std::sync::atomic::AtomicU64>,
    fd_store: bool,
    /// Earlier generations that may still be draining (checked by pid and start time).
    retired: Vec<Retired>,
    /// The totals that continue across generations (see [`super::metrics`]).
    totals: Arc<super::metrics::Totals>,
}

/// A ready service: its restarts, its stop, and its connections.
///
/// Serve until [`stopped`](Running::stopped) resolves, drop the listeners (stop accepting), then
/// call [`drain`](Running::drain). Cheap to clone; every clone is the same service.
#[derive(Clone)]
pub struct Running {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("generation", &self.inner.generation)
            .field("predecessor", &self.inner.predecessor)
            .field("upgrader", &self.inner.upgrader)
            .finish_non_exhaustive()
    }
}

/// Installs the stop and restart signal handlers; arrivals are queued for the running service.
pub(crate) fn install_signals(
    stop: &[SignalKind],
    restart: &[SignalKind],
) -> Result<mpsc::UnboundedReceiver<SignalKind>, Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    for &kind in stop.iter().chain(restart) {
        let mut signal = tokio::signal::unix::signal(kind)
            .map_err(|source| Error::Signals { signal: kind.as_raw_value(), source })?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while signal.recv().await.is_some() {
                if tx.send(kind).is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

impl Running {
    pub(crate) fn launch(parts: Parts) -> Running {
        let Parts {
            upgrader,
            settings,
            generation,
            predecessor,
            lock,
            socket_files,
            control,
            control_path,
            #[cfg(feature = "tls")]
            certificates,
            signals,
            encode,
            lineage,
            fd_store,
            retired,
            totals,
        } = parts;
        let draining: Arc<super::connection::DrainSignal> = Arc::default();
        let connections = Connections {
            tracker: TaskTracker::new(),
            accepted: totals.accepted(),
            counted: totals.publish(generation),
            draining: Arc::clone(&draining),
            quiet: settings.quiet,
            patience: settings.drain_timeout / 2,
        };
        let started_at = restart_socket::unix_millis(SystemTime::now());
        let inner = Arc::new(Inner {
            control_stop: Mutex::new(upgrader.upgraded().child_token()),
            upgrader,
            settings,
            generation,
            predecessor,
            started_at,
            phase: watch::Sender::new(Phase::Serving),
            stop_requested: AtomicBool::new(false),
            draining,
            connections,
            internal: TaskTracker::new(),
            restart_lock: tokio::sync::Mutex::new(()),
            control: control.as_ref().map(restart_socket::Server::listener),
            control_path,
            lock: Mutex::new(lock),
            socket_files,
            #[cfg(feature = "tls")]
            certificates,
            status_text: Mutex::new(None),
            encode,
            lineage,
            fd_store,
            retired,
            totals,
        });
        let running = Running { inner };
        #[cfg(feature = "tls")]
        if let Some(watcher) = &running.inner.certificates {
            super::tls::Tls::follow(watcher);
        }
        if let Some(server) = control {
            running.serve_control(server);
        }
        tokio::spawn(running.clone().lifecycle(signals));
        tokio::spawn(running.clone().report());
        if let Some(exe) = running.inner.settings.watch_executable.clone() {
            tokio::spawn(super::exe::watch(running.clone(), exe));
        }
        running
    }

    fn phase(&self) -> Phase {
        *self.inner.phase.borrow()
    }

    /// `STATUS=` every few seconds and `WATCHDOG=1` at half of `WATCHDOG_USEC`, from the runtime
    /// itself (a wedged runtime stops pinging, which is the point), until the service stops
    /// serving. Nothing runs without a service manager.
    async fn report(self) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        // WATCHDOG_PID names this process, or is unset (a successor is started without it).
        let watchdog = sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero());
        let period = watchdog.map_or(STATUS_INTERVAL, |interval| (interval / 2).min(STATUS_INTERVAL));
        let stopped = self.stopped();
        tokio::pin!(stopped);
        loop {
            // Only the main process speaks for the service; in a rollback window it is not.
            if self.phase() == Phase::Serving {
                let text = self.status_line("serving");
                let mut states = vec![sd_notify::NotifyState::Status(&text)];
                if watchdog.is_some() {
                    states.push(sd_notify::NotifyState::Watchdog);
                }
                notify::send(&states);
            }
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    }

    /// `<what>: generation N, M connections[, the application's text]`.
    fn status_line(&self, what: &str) -> String {
        let inner = &self.inner;
        let mut line =
            format!("{what}: generation {}, {} connections", inner.generation, inner.connections.accepted());
        if let Some(text) = inner.status_text.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            line.push_str(", ");
            line.push_str(&text());
        }
        line
    }

    /// Adds the application's own words to the `STATUS=` line the service manager shows
    /// (`systemctl status`): `text` is called each time the line is sent, every few seconds.
    pub fn set_status(&self, text: impl Fn() -> String + Send + Sync + 'static) {
        *self.inner.status_text.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(text));
    }

    /// The control socket: restart and status, until the handover or the stop.
    fn serve_control(&self, server: restart_socket::Server) {
        let restart = {
            let running = self.clone();
            move || {
                let running = running.clone();
                async move { running.restart().await.map_err(|err| super::error::chain(&err)) }
            }
        };
        let status = {
            let running = self.clone();
            move || {
                let inner = Arc::clone(&running.inner);
                async move {
                    Status {
                        pid: std::process::id(),
                        generation: inner.generation,
                        started_at: inner.started_at,
                        last_restart: (inner.generation > 1).then_some(inner.started_at),
                    }
                }
            }
        };
        let stop = self.inner.control_stop.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // Tracked, so that the answer to the restart that replaces us goes out before we exit.
        self.inner.internal.spawn(async move {
            if let Err(err) = server.serve(restart, status, stop).await {
                tracing::error!(error = &err as &dyn std::error::Error, "the control socket failed");
            }
        });
    }

    /// The service's own loop: signals, the handover, the rollback window.
    async fn lifecycle(self, mut signals: mpsc::UnboundedReceiver<SignalKind>) {
        let mut phases = self.inner.phase.subscribe();
        let mut exits = self.inner.upgrader.successor_exit();
        // `None`: a window too long for an instant, i.e. for ever.
        let mut window_end: Option<tokio::time::Instant> = None;
        loop {
            let phase = *phases.borrow_and_update();
            match phase {
                Phase::Done(_) => return,
                Phase::Serving => {
                    let upgraded = self.inner.upgrader.upgraded();
                    tokio::select! {
                        () = upgraded.cancelled() => {
                            let successor = self.inner.upgrader.successor().unwrap_or_default();
                            match self.inner.settings.rollback_window {
                                Some(window) if !self.inner.stop_requested.load(Ordering::SeqCst) => {
                                    tracing::info!(successor, ?window, "handed over; standing by for a rollback");
                                    window_end = tokio::time::Instant::now().checked_add(window);
                                    self.inner.phase.send_replace(Phase::Standby { successor });
                                }
                                _ => self.handed_over_for_good(successor),
                            }
                        }
                        kind = signals.recv() => match kind {
                            Some(kind) => self.on_signal(kind),
                            None => return,
                        },
                        _ = phases.changed() => {}
                    }
                }
                Phase::Standby { successor } => {
                    tokio::select! {
                        exit = exits.wait_for(|exit| exit.is_some_and(|(pid, _)| pid == successor)) => {
                            let failed = exit.ok().and_then(|exit| *exit).is_none_or(|(_, reason)| reason != handover::ExitReason::Code(0));
                            if failed {
                                self.roll_back(successor);
                            } else {
                                // The new process stopped cleanly: the service was stopped.
                                self.handed_over_for_good(successor);
                            }
                        }
                        () = sleep_until(window_end) => {
                            tracing::info!(successor, "rollback window over");
                            self.handed_over_for_good(successor);
                        }
                        kind = signals.recv() => match kind {
                            // Told to stop while standing by: the successor is the service now.
                            Some(kind) if !self.inner.settings.restart_signals.contains(&kind) => {
                                tracing::info!(signal = %signal_name(kind), "stopping the standby");
                                self.handed_over_for_good(successor);
                            }
                            Some(kind) => tracing::info!(signal = %signal_name(kind), "handed over; restart signal ignored"),
                            None => return,
                        },
                        _ = phases.changed() => {}
                    }
                }
            }
        }
    }

    fn on_signal(&self, kind: SignalKind) {
        if self.inner.stop_requested.load(Ordering::SeqCst) {
            tracing::info!(signal = %signal_name(kind), "already stopping; signal ignored");
            return;
        }
        // Installed for stop or restart only, and never both (the builder checks).
        if self.inner.settings.restart_signals.contains(&kind) {
            tracing::info!(signal = %signal_name(kind), "restarting");
            let running = self.clone();
            tokio::spawn(async move {
                match running.restart().await {
                    Ok(pid) => tracing::info!(pid, "handed over"),
                    Err(err) => tracing::warn!(error = &err as &dyn std::error::Error, "restart failed"),
                }
            });
        } else {
            tracing::info!(signal = %signal_name(kind), "stopping");
            tokio::spawn(self.clone().request_stop(Stop::Signal(kind)));
        }
    }

    /// The successor is the service for good: let go of the lock (the successor holds it through
    /// its own descriptor of the same open file description) and of what was kept for a rollback.
    fn handed_over_for_good(&self, successor: u32) {
        let lock = self.inner.lock.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(lock) = lock {
            drop(lock.export());
        }
        self.inner.upgrader.release_retained();
        self.inner.phase.send_replace(Phase::Done(Stop::HandedOver { pid: successor }));
    }

    /// The successor died in the rollback window: this process serves again.
    fn roll_back(&self, successor: u32) {
        let inner = &self.inner;
        if let Err(err) = inner.upgrader.roll_back() {
            tracing::error!(error = &err as &dyn std::error::Error, "cannot roll back; draining");
            self.handed_over_for_good(successor);
            return;
        }
        if let Some(lock) = inner.lock.lock().unwrap_or_else(PoisonError::into_inner).as_mut()
            && let Err(err) = lock.reassert()
        {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "the state directory's lock file changed while standing by"
            );
        }
        // The dead successor had the next generation number: the next one gets a new one.
        inner.lineage.fetch_add(1, Ordering::SeqCst);
        *inner.control_stop.lock().unwrap_or_else(PoisonError::into_inner) =
            inner.upgrader.upgraded().child_token();
        if let Some(handle) = &inner.control {
            drop(inner.upgrader.unregister(CONTROL_FD));
            match restart_socket::Server::resume(handle, inner.settings.control_config.clone()) {
                Ok(server) => self.serve_control(server),
                Err(err) => tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "cannot serve the control socket again"
                ),
            }
        }
        tracing::warn!(
            successor,
            generation = inner.generation,
            "rolled back: the successor died, this process serves again"
        );
        inner.phase.send_replace(Phase::Serving);
    }

    async fn request_stop(self, reason: Stop) {
        if self.inner.stop_requested.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Phase::Standby { successor } = self.phase() {
            self.handed_over_for_good(successor);
            return;
        }
        // A restart in flight is aborted and its new process killed; if it committed first, we
        // have handed over and drain as after any handover.
        if let Some(pid) = self.inner.upgrader.stop_upgrades().await {
            tracing::info!(pid, "a successor took over while stopping; draining");
            return;
        }
        let text = self.status_line(&format!("stopping ({reason})"));
        notify::send(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status(&text)]);
        self.inner.control_stop.lock().unwrap_or_else(PoisonError::into_inner).cancel();
        self.inner.phase.send_replace(Phase::Done(reason));
    }

    /// This process's generation (1 for a fresh start, one more at each handover).
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The predecessor's pid, when this process took over from one.
    pub fn predecessor(&self) -> Option<u32> {
        self.inner.predecessor
    }

    /// The connections to drain: spawn each on them.
    pub fn connections(&self) -> Connections {
        self.inner.connections.clone()
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_set()
    }

    /// The certificate watcher of the service's TLS (`None` without TLS).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn certificates(&self) -> Option<&certwatch::CertWatcher> {
        self.inner.certificates.as_deref()
    }

    /// Resolves when the service must stop serving for good: a successor took over (and, with a
    /// rollback window, the window passed without a rollback), or a stop was decided (a stop
    /// signal, [`Running::stop`]). Stop accepting then (drop the listeners) and
    /// [`drain`](Running::drain). The future borrows nothing: keep it pinned across an accept
    /// loop. With a rollback window, accept through [`Running::accept`] (or the HTTP helpers),
    /// which also pause during the window.
    pub fn stopped(&self) -> impl std::future::Future<Output = Stop> + Send + 'static {
        let mut phases = self.inner.phase.subscribe();
        async move {
            loop {
                if let Phase::Done(reason) = *phases.borrow_and_update() {
                    return reason;
                }
                if phases.changed().await.is_err() {
                    return Stop::Requested;
                }
            }
        }
    }

    /// Whether this process should accept connections now: true while it is the main process,
    /// false in a rollback window and once it must stop.
    pub fn is_accepting(&self) -> bool {
        self.phase() == Phase::Serving
    }

    /// The next connection on `listener` while this process serves; `None` once it must stop
    /// accepting for good (then drop the listener and [`drain`](Running::drain)). In a rollback
    /// window it waits without accepting, and goes on if the successor dies. Accept errors (out of
    /// file descriptors) are logged and retried after a short pause.
    ///
    /// ```no_run
    /// # async fn f(running: lifeline::service::Running, listener: tokio::net::TcpListener) {
    /// let connections = running.connections();
    /// while let Some((stream, _peer)) = running.accept(&listener).await {
    ///     connections.spawn(stream, |io| async move { /* serve the connection */ drop(io) });
    /// }
    /// drop(listener);
    /// running.drain().await;
    /// # }
    /// ```
    pub async fn accept<L: super::Accept>(&self, listener: &L) -> Option<L::Connection> {
        let mut phases = self.inner.phase.subscribe();
        loop {
            let phase = *phases.borrow_and_update();
            match phase {
                Phase::Done(_) => return None,
                Phase::Standby { .. } => {
                    if phases.changed().await.is_err() {
                        return None;
                    }
                }
                Phase::Serving => {
                    // Handed over, and the lifecycle task has not said so yet: a restart's
                    // requester may already have its answer, so whoever connects now is the
                    // successor's (the token is cancelled before the answer is sent).
                    let upgraded = self.inner.upgrader.upgraded();
                    if upgraded.is_cancelled() {
                        if phases.changed().await.is_err() {
                            return None;
                        }
                        continue;
                    }
                    tokio::select! {
                        biased;
                        _ = phases.changed() => {}
                        () = upgraded.cancelled() => {}
                        accepted = listener.accept_one() => match accepted {
                            Ok(connection) => return Some(connection),
                            Err(err) => {
                                tracing::warn!(error = &err as &dyn std::error::Error, "accept failed");
                                tokio::time::sleep(ACCEPT_BACKOFF).await;
                            }
                        },
                    }
                }
            }
        }
    }

    /// Asks the service to stop, as a stop signal does: a restart in flight is aborted, then
    /// [`stopped`](Running::stopped) resolves.
    pub fn stop(&self) {
        tokio::spawn(self.clone().request_stop(Stop::Requested));
    }

    /// Restarts the service: starts a new process of the executable (with the listeners, the
    /// lock, the control socket and the state), waits until it is ready, and returns its pid —
    /// after which this process must drain ([`stopped`](Running::stopped) resolves). A failed
    /// new process changes nothing. One restart runs at a time, whoever asks (the control
    /// socket, a restart signal, this method): the others get "restart already in progress".
    pub async fn restart(&self) -> Result<u32, Error> {
        let result = self.restart_once().await;
        let outcome = match &result {
            Ok(_) => super::metrics::Outcome::Ok,
            Err(
                Error::TooManyRetired { .. }
                | Error::Handover(
                    handover::Error::InProgress
                    | handover::Error::AlreadyUpgraded { .. }
                    | handover::Error::Stopping,
                ),
            ) => super::metrics::Outcome::Refused,
            Err(_) => super::metrics::Outcome::Failed,
        };
        self.inner.totals.restart(outcome);
        result
    }

    async fn restart_once(&self) -> Result<u32, Error> {
        let inner = &self.inner;
        let Ok(_one_at_a_time) = inner.restart_lock.try_lock() else {
            return Err(handover::Error::InProgress.into());
        };
        if let Some(pid) = inner.upgrader.successor() {
            return Err(handover::Error::AlreadyUpgraded { pid }.into());
        }
        if inner.stop_requested.load(Ordering::SeqCst) {
            return Err(handover::Error::Stopping.into());
        }
        if let Some(limit) = inner.settings.max_retired {
            let alive = inner.retired.iter().filter(|r| r.is_alive()).count();
            if alive >= limit {
                tracing::warn!(alive, limit, "restart refused: too many earlier generations still draining");
                return Err(Error::TooManyRetired { alive, limit });
            }
        }
        let result = self.hand_over().await;
        if result.is_err()
            && inner.upgrader.successor().is_none()
            && let Some(control) = &inner.control
        {
            // The socket file stays ours to remove, and the next attempt registers it anew.
            control.reclaim();
            drop(inner.upgrader.unregister(CONTROL_FD));
        }
        result
    }

    async fn hand_over(&self) -> Result<u32, Error> {
        let inner = &self.inner;
        if let Some(control) = &inner.control {
            let path = inner.control_path.clone().unwrap_or_default();
            let fd = control.export().map_err(|source| Error::Control { path, source })?;
            inner.upgrader.register(CONTROL_FD, fd)?;
        }
        Ok(inner.upgrader.upgrade().await?)
    }

    /// Drains and lets go: marks the service draining (HTTP/1 responses carry `Connection:
    /// close`, HTTP/2 connections get GOAWAY, quiet connections close), waits for the tracked
    /// connections up to the drain timeout, then — after a stop — releases the state directory
    /// and removes the lock file, the socket files and the pid file; after a handover it leaves
    /// all of them to the successor. Call it once [`stopped`](Running::stopped) resolved and the
    /// listeners are dropped; it waits for that itself otherwise.
    ///
    /// With a hard drain deadline ([`Builder::drain_deadline`](super::Builder::drain_deadline))
    /// the process exits when it passes, whatever still runs.
    pub async fn drain(self) -> Finished {
        let reason = self.stopped().await;
        let inner = &self.inner;
        inner.draining.start();
        inner.control_stop.lock().unwrap_or_else(PoisonError::into_inner).cancel();
        let handed_over = matches!(reason, Stop::HandedOver { .. });
        let hard_deadline =
            inner.settings.drain_deadline.map(|d| inner.settings.drain_timeout.saturating_add(d));
        if let Some(after) = hard_deadline {
            arm_hard_deadline(after, handed_over);
        }
        if !handed_over {
            // Still the main process: the stop may take the whole drain.
            let may_take =
                hard_deadline.unwrap_or(inner.settings.drain_timeout).saturating_add(CONTROL_GRACE);
            notify::send(&[notify::extend_timeout(may_take)]);
        }
        tracing::info!(%reason, connections = inner.connections.len(), "draining");
        let drained = handover::drain(&inner.connections.tracker, inner.settings.drain_timeout).await;
        inner.internal.close();
        if tokio::time::timeout(CONTROL_GRACE, inner.internal.wait()).await.is_err() {
            tracing::warn!("the control socket did not finish answering in time");
        }
        if !handed_over {
            if inner.fd_store {
                self.store_state();
            }
            self.let_go();
        }
        tracing::info!(%reason, ?drained, "stopped");
        Finished { reason, drained }
    }

    /// After a stop: the final state, in a sealed memfd, into systemd's fd store for the next start
    /// (kept across `systemctl restart`).
    fn store_state(&self) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        let sealed = (self.inner.encode)()
            .map_err(|e| handover::Error::StateCorrupt { reason: e.to_string() })
            .and_then(|carried| {
                handover::SealedState::create(
                    STATE_FD,
                    super::state::FRAME_VERSION,
                    &carried.versioned(),
                    usize::MAX,
                )
            });
        match sealed {
            Ok(fd) => {
                let states = [sd_notify::NotifyState::FdStore, sd_notify::NotifyState::FdName(STATE_FD)];
                match sd_notify::notify_with_fds(&states, &[fd.as_fd()]) {
                    Ok(()) => {
                        tracing::info!(generation = self.inner.generation, "state kept in the fd store");
                    }
                    Err(err) => tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "cannot keep the state in the fd store"
                    ),
                }
            }
            Err(err) => tracing::warn!(
                error = &err as &dyn std::error::Error,
                "cannot keep the state in the fd store"
            ),
        }
    }

    /// After a stop: the lock released (file unlinked while held), socket files and pid file
    /// removed — each only if it is still the one this process owns.
    fn let_go(&self) {
        let inner = &self.inner;
        let lock = inner.lock.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(lock) = lock
            && let Err(err) = lock.release()
        {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "cannot release the state directory cleanly"
            );
        }
        for file in &inner.socket_files {
            file.remove();
        }
        if let Some(path) = &inner.settings.pid_file {
            let ours = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
                .is_some_and(|pid| pid == std::process::id());
            if ours && let Err(err) = std::fs::remove_file(path) {
                tracing::warn!(error = &err as &dyn std::error::Error, path = %path.display(), "cannot remove the pid file");
            }
        }
    }
}

/// Sleeps until `deadline`; never returns for `None`.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Exits the process `after` from now if it is still running then (a stuck handler, a wedged
/// runtime): status 0 after a handover (the successor serves), 1 after a stop.
fn arm_hard_deadline(after: Duration, handed_over: bool) {
    let spawned = std::thread::Builder::new().name("lifeline-drain-deadline".into()).spawn(move || {
        std::thread::sleep(after);
        eprintln!("lifeline: the drain did not end within its hard deadline ({after:?}); exiting");
        let status = i32::from(!handed_over);
        // SAFETY: `_exit` ends the process at once without running destructors or atexit
        // handlers, which is the point: whatever wedged the runtime may hold their locks.
        unsafe { libc::_exit(status) }
    });
    if let Err(err) = spawned {
        tracing::warn!(error = &err as &dyn std::error::Error, "cannot arm the drain's hard deadline");
    }
}

/// Right after the commit of a fresh process with an fd store: its listeners into the store
/// (under their names), and the state it took from the store out of it (it is this process's now;
/// a crash must not bring it back).
pub(crate) fn fd_store_after_commit(listeners: &[(String, OwnedFd)], took_stored_state: bool) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    for (name, fd) in listeners {
        let states = [sd_notify::NotifyState::FdStore, sd_notify::NotifyState::FdName(name)];
        if let Err(err) = sd_notify::notify_with_fds(&states, &[fd.as_fd()]) {
            tracing::warn!(error = &err as &dyn std::error::Error, listener = %name, "cannot keep the listener in the fd store");
        }
    }
    if took_stored_state {
        notify::send(&[sd_notify::NotifyState::FdStoreRemove, sd_notify::NotifyState::FdName(STATE_FD)]);
    }
}
