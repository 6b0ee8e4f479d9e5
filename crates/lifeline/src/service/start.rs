//! [`Starting`]: a service between [`Builder::start`] and [`Starting::ready`] — everything that
//! can fail happens here, before the predecessor is told anything.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use dirlock::{Adopted, DirLock};
use handover::{Handover, LifecycleHandler, StateWriter};
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;

use super::builder::{CONTROL_FD, LOCK_FD, STATE_FD};
use super::listeners::{self, Socket, SocketFile, Source};
use super::running::{Running, Settings};
use super::state::{Carried, FRAME_VERSION};
use super::{Builder, Error, ServiceState, fault, notify};

/// The state directory's lock before the commit.
#[derive(Debug)]
pub(crate) enum StateLock {
    /// Acquired by this process (no predecessor held it): released if start-up fails.
    Held(DirLock),
    /// Inherited from the predecessor and verified; still the predecessor's until the commit
    /// (dropping it unlinks nothing).
    Inherited(Adopted),
}

impl StateLock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            StateLock::Held(lock) => lock.as_fd(),
            StateLock::Inherited(adopted) => adopted.as_fd(),
        }
    }

    fn commit(self) -> DirLock {
        match self {
            StateLock::Held(lock) => lock,
            StateLock::Inherited(adopted) => adopted.commit(),
        }
    }
}

/// Unix socket files this process bound itself: removed if start-up fails (nobody else serves
/// on them), handed to the [`Running`] service otherwise.
#[derive(Debug, Default)]
struct FreshFiles(Vec<SocketFile>);

impl Drop for FreshFiles {
    fn drop(&mut self) {
        for file in self.0.drain(..) {
            file.remove();
        }
    }
}

/// A listener set up by [`Builder::start`], until the application takes it.
#[derive(Debug)]
struct Slot {
    name: String,
    socket: Option<Socket>,
    source: Source,
}

/// A service that has set everything up and not yet told anyone it is ready.
///
/// Take the listeners ([`tcp`](Starting::tcp), [`unix`](Starting::unix),
/// [`udp`](Starting::udp)), the TLS acceptor and the predecessor's state, then call
/// [`ready`](Starting::ready). Dropping it (or returning an error from `main` before `ready`)
/// changes nothing for a predecessor: this process simply does not take over.
#[derive(Debug)]
pub struct Starting<S: ServiceState> {
    handover: Handover,
    settings: Settings,
    lock: Option<StateLock>,
    slots: Vec<Slot>,
    /// Socket files of unix listeners: the fresh ones removed on failure, the inherited ones not.
    fresh_files: FreshFiles,
    inherited_files: Vec<SocketFile>,
    control: Option<restart_socket::Server>,
    control_path: Option<PathBuf>,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::Tls>,
    state: Option<S>,
    generation: u64,
    signals: mpsc::UnboundedReceiver<SignalKind>,
    /// Duplicates of the listeners for systemd's fd store (fresh start with `fd_store`).
    to_store: Vec<(String, std::os::fd::OwnedFd)>,
    /// Whether a state was taken from systemd's fd store (removed from it after the commit).
    took_stored_state: bool,
    fd_store: bool,
    /// Earlier generations that may still be draining.
    retired: Vec<super::retired::Retired>,
    /// s6/dinit readiness: a newline once ready (fresh start only).
    ready_fd: Option<std::os::fd::OwnedFd>,
    /// The predecessor's metric totals (see [`super::metrics`]).
    counters: Vec<(String, u64)>,
}

impl<S: ServiceState> Starting<S> {
    pub(crate) async fn begin(builder: Builder) -> Result<Starting<S>, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        // 1. Adopt what a predecessor (or systemd) passed, before anything else touches fds.
        // The service keeps its own fd store entries (listeners, state; never the lock).
        // With a rollback window, what a successor gets is kept until the window is over.
        let config =
            builder.handover.clone().fd_store(false).keep_for_rollback(builder.rollback_window.is_some());
        let mut handover = Handover::from_env(config)?;
        let successor = handover.predecessor().is_some();
        let step = |name: &'static str| fault::check(name, successor);

        // 2. Signals: from `ready()` on a supervisor may stop or restart us at once, and a
        // signal without a handler would kill the process. Queued until then.
        let signals = super::running::install_signals(&builder.stop_signals, &builder.restart_signals)?;

        // 3. The state directory: the predecessor's lock, verified (still its own until the
        // commit), or a lock of our own.
        step("lock")?;
        let lock = lock_state_dir(&mut handover, &builder)?;

        // The state a stopped predecessor left in systemd's fd store, if any (read below, after
        // the predecessor's own; never taken for a listener).
        let stored_state = handover.take_fd(STATE_FD);

        // 4. The listeners, ready for tokio.
        step("listeners")?;
        let mut fresh_files = FreshFiles::default();
        let mut inherited_files = Vec::new();
        let mut slots = Vec::new();
        for opened in listeners::open_all(&mut handover, &builder.listeners)? {
            if let Some(file) = opened.file {
                if opened.source == Source::Bound {
                    fresh_files.0.push(file);
                } else {
                    inherited_files.push(file);
                }
            }
            slots.push(Slot { name: opened.name, socket: Some(opened.socket), source: opened.source });
        }

        // 5. The control socket: the predecessor's (its file stays the predecessor's until the
        // commit) or bound now.
        step("control")?;
        let control = control_socket(&mut handover, &builder)?;

        // 6. TLS: the first pair loaded and validated.
        step("tls")?;
        #[cfg(feature = "tls")]
        let tls = super::tls::start(&builder.tls)?;

        // 7. The predecessor's state: one we cannot read means we cannot take over.
        step("state")?;
        let mut carried = match handover.state_reader()? {
            Some(mut reader) => match reader.recv_frame().await? {
                Some(frame) => Some(Carried::from_frame(&frame)?),
                None => None,
            },
            None => None,
        };
        let took_stored_state = stored_state.is_some();
        if let Some(fd) = stored_state
            && carried.is_none()
        {
            carried = read_stored::<S>(&fd, builder.handover.state_limit);
        }
        let (generation, state, retired, counters) = match carried {
            Some(carried) => {
                let state = carried.decode::<S>()?;
                (carried.generation.saturating_add(1), Some(state), carried.retired, carried.counters)
            }
            None => (1, None, Vec::new(), Vec::new()),
        };

        // 8. What a successor will get.
        step("register")?;
        for slot in &slots {
            if let Some(socket) = &slot.socket {
                handover.register_dup(&slot.name, &socket.as_fd())?;
            }
        }
        if let Some(lock) = &lock {
            handover.register_dup(LOCK_FD, &lock.as_fd())?;
        }
        let to_store = if builder.fd_store && !successor { duplicates(&slots)? } else { Vec::new() };

        // 9. The service manager's notify socket, when there is one to talk to.
        step("notify")?;
        if builder.handover.notify {
            notify::check()?;
        }

        let ready_fd = match builder.ready_fd {
            Some(fd) if !successor => Some(adopt_ready_fd(fd)?),
            _ => None,
        };
        let settings = settings(&builder, &handover);
        tracing::debug!(generation, successor, "service set up; not ready yet");
        Ok(Starting {
            handover,
            settings,
            lock,
            slots,
            fresh_files,
            inherited_files,
            control,
            control_path: builder.control.map(|(path, _)| path),
            #[cfg(feature = "tls")]
            tls,
            state,
            generation,
            signals,
            to_store,
            took_stored_state,
            fd_store: builder.fd_store,
            retired,
            ready_fd,
            counters,
        })
    }

    /// This process's generation: 1 for a fresh start, the predecessor's plus one after a
    /// handover.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The predecessor's pid, when this process is taking over from one.
    pub fn predecessor(&self) -> Option<u32> {
        self.handover.predecessor()
    }

    /// The predecessor's state (`None` on a fresh start).
    pub fn state(&self) -> Option<&S> {
        self.state.as_ref()
    }

    /// Takes the predecessor's state (`None` on a fresh start, or once taken).
    pub fn take_state(&mut self) -> Option<S> {
        self.state.take()
    }

    fn take(&mut self, name: &str, kind: &'static str) -> Result<Socket, Error> {
        let slot = self.slots.iter_mut().find(|slot| slot.name == name);
        let matches = |socket: &Socket| {
            matches!(
                (socket, kind),
                (Socket::Tcp(_), "TCP") | (Socket::Unix(_), "unix") | (Socket::Udp(_), "UDP")
            )
        };
        match slot {
            Some(slot) if slot.socket.as_ref().is_some_and(matches) => {
                tracing::debug!(listener = name, source = ?slot.source, "listener taken");
                slot.socket.take().ok_or(Error::NoListener { name: name.to_owned(), kind })
            }
            _ => Err(Error::NoListener { name: name.to_owned(), kind }),
        }
    }

    /// Takes the TCP listener configured with [`Builder::tcp`] under `name`.
    pub fn tcp(&mut self, name: &str) -> Result<tokio::net::TcpListener, Error> {
        match self.take(name, "TCP")? {
            Socket::Tcp(listener) => Ok(listener),
            _ => Err(Error::NoListener { name: name.to_owned(), kind: "TCP" }),
        }
    }

    /// Takes the unix listener configured with [`Builder::unix`] under `name`.
    pub fn unix(&mut self, name: &str) -> Result<tokio::net::UnixListener, Error> {
        match self.take(name, "unix")? {
            Socket::Unix(listener) => Ok(listener),
            _ => Err(Error::NoListener { name: name.to_owned(), kind: "unix" }),
        }
    }

    /// Takes the UDP socket configured with [`Builder::udp`] under `name`.
    pub fn udp(&mut self, name: &str) -> Result<tokio::net::UdpSocket, Error> {
        match self.take(name, "UDP")? {
            Socket::Udp(socket) => Ok(socket),
            _ => Err(Error::NoListener { name: name.to_owned(), kind: "UDP" }),
        }
    }

    /// The TLS acceptor configured with [`Builder::tls`] (`None` without TLS); its certificate
    /// follows the files for as long as the service runs.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.as_ref().map(|tls| tls.acceptor.clone())
    }

    /// The certificate watcher behind the acceptor (current certificate, reload events, stats).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn certificates(&self) -> Option<&certwatch::CertWatcher> {
        self.tls.as_ref().map(|tls| &tls.watcher)
    }

    /// Declares the service ready: **the commit**. `snapshot` is called when a successor starts,
    /// for the state to hand it (the successor is this program, or a newer one).
    ///
    /// A fresh process sends `READY=1` (and writes the pid file); a successor tells its
    /// predecessor, which then drains and exits, and from here on owns what it adopted (the
    /// lock file, the control socket file, the unix socket files, the pid file). Only the tell
    /// itself can fail here ([`handover::Error::Ready`]: the predecessor gave up on us — exit).
    pub async fn ready<F>(self, snapshot: F) -> Result<Running, Error>
    where
        F: Fn() -> S + Send + Sync + 'static,
    {
        let Starting {
            handover,
            settings,
            lock,
            slots: _,
            mut fresh_files,
            inherited_files,
            control,
            control_path,
            #[cfg(feature = "tls")]
            tls,
            state: _,
            generation,
            signals,
            to_store,
            took_stored_state,
            fd_store,
            retired,
            ready_fd,
            counters,
        } = self;
        let predecessor = handover.predecessor();
        fault::check("commit", predecessor.is_some())?;
        let inherited = retired.clone();
        // The generation a successor counts from: ours, one more after each rollback (so that a
        // generation number never names two processes).
        let lineage = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(generation));
        let counted = lineage.clone();
        // Counts this process's own restart once the commit below succeeds (the totals are
        // published only then, by `Running::launch`).
        #[cfg(feature = "tls")]
        let (certificates, reloads) = match tls {
            Some(tls) => {
                let watcher = std::sync::Arc::new(tls.watcher);
                let stats = std::sync::Arc::clone(&watcher);
                let reloads = super::metrics::Reloads::new(tls.metrics_name, move || stats.stats());
                (Some(watcher), Some(reloads))
            }
            None => (None, None),
        };
        #[cfg(not(feature = "tls"))]
        let reloads = None;
        let totals = std::sync::Arc::new(super::metrics::Totals::continue_from(
            &counters,
            predecessor.is_some(),
            reloads,
        ));
        let carried_totals = totals.clone();
        let encode: super::running::EncodeState = std::sync::Arc::new(move || {
            // The successor's earlier generations: ours still alive, and this process.
            let mut retired: Vec<_> =
                inherited.iter().copied().filter(super::retired::Retired::is_alive).collect();
            retired.extend(super::retired::Retired::me());
            let generation = counted.load(std::sync::atomic::Ordering::SeqCst);
            Carried::encode(generation, &snapshot(), retired, carried_totals.carried())
        });
        let lifecycle = Lifecycle { encode: encode.clone() };
        let upgrader = handover.ready(lifecycle).await?;
        // Committed. Nothing below can fail: what was adopted is ours now.
        let lock = lock.map(StateLock::commit);
        if let Some(server) = &control {
            server.listener().claim();
        }
        super::running::fd_store_after_commit(&to_store, took_stored_state);
        if let Some(fd) = ready_fd {
            let mut pipe = std::fs::File::from(fd);
            if let Err(err) = std::io::Write::write_all(&mut pipe, b"\n") {
                tracing::warn!(error = &err as &dyn std::error::Error, "cannot write the readiness newline");
            }
        }
        drop(to_store);
        let mut socket_files = std::mem::take(&mut fresh_files.0);
        socket_files.extend(inherited_files);
        tracing::info!(pid = std::process::id(), generation, ?predecessor, "service ready");
        Ok(Running::launch(super::running::Parts {
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
        }))
    }
}

/// The state directory: the predecessor's lock, verified (still its own until the commit), or a
/// lock of our own.
fn lock_state_dir(handover: &mut Handover, builder: &Builder) -> Result<Option<StateLock>, Error> {
    let Some(dir) = &builder.state_dir else { return Ok(None) };
    let lock_error = |source| Error::Lock { dir: dir.clone(), source };
    Ok(Some(match handover.take_fd(LOCK_FD) {
        Some(fd) => StateLock::Inherited(DirLock::adopt(fd, dir, &builder.lock_options).map_err(lock_error)?),
        None => StateLock::Held(DirLock::acquire_with(dir, &builder.lock_options).map_err(lock_error)?),
    }))
}

/// The control socket: the predecessor's (its file stays the predecessor's until the commit) or
/// bound now.
fn control_socket(
    handover: &mut Handover,
    builder: &Builder,
) -> Result<Option<restart_socket::Server>, Error> {
    let Some((path, config)) = &builder.control else { return Ok(None) };
    // The service handles its restart signals itself.
    let mut config = config.clone();
    config.restart_on_sigusr1 = false;
    let control_error = |source| Error::Control { path: path.clone(), source };
    Ok(Some(match handover.take_fd(CONTROL_FD) {
        Some(fd) => restart_socket::Server::adopt(fd, path, config).map_err(control_error)?,
        None => restart_socket::Server::bind(path, config).map_err(control_error)?,
    }))
}

/// What the running service needs to know of the builder.
fn settings(builder: &Builder, handover: &Handover) -> Settings {
    Settings {
        drain_timeout: builder.drain_timeout,
        drain_deadline: builder.drain_deadline,
        quiet: builder.quiet_period,
        pid_file: builder.handover.pid_file.clone(),
        restart_signals: builder.restart_signals.clone(),
        rollback_window: builder.rollback_window,
        max_retired: builder.max_retired,
        control_config: builder
            .control
            .as_ref()
            .map(|(_, config)| config.clone().with_restart_on_sigusr1(false))
            .unwrap_or_default(),
        watch_executable: builder.restart_on_exe_change.then(|| handover.executable().to_owned()),
    }
}

/// Takes the s6/dinit readiness descriptor: it must be open; it is made close-on-exec so that no
/// child (a successor) inherits it.
fn adopt_ready_fd(fd: std::os::fd::RawFd) -> Result<std::os::fd::OwnedFd, Error> {
    let invalid = |reason: String| Error::Config { reason: format!("readiness fd {fd}: {reason}") };
    // SAFETY: F_GETFD only reads the descriptor flags; an unopened number yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(invalid(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: the number is open (checked above) and was handed to this process by its
    // supervisor for exactly this purpose; the builder takes it once, in `start`.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| invalid(e.to_string()))?;
    Ok(owned)
}

/// Duplicates of the listeners, for systemd's fd store.
fn duplicates(slots: &[Slot]) -> Result<Vec<(String, std::os::fd::OwnedFd)>, Error> {
    let mut dups = Vec::new();
    for slot in slots {
        if let Some(socket) = &slot.socket {
            let dup = socket
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| Error::Register { name: slot.name.clone(), source })?;
            dups.push((slot.name.clone(), dup));
        }
    }
    Ok(dups)
}

/// Reads the state a stopped predecessor left in systemd's fd store; anything unreadable (not a
/// sealed memfd, a corrupt frame, a version this program cannot read) is dropped with a warning.
fn read_stored<S: ServiceState>(fd: &std::os::fd::OwnedFd, limit: usize) -> Option<Carried> {
    let carried = handover::SealedState::read(fd, limit).and_then(|frame| Carried::from_frame(&frame));
    match carried {
        Ok(carried) => match carried.decode::<S>() {
            Ok(_) => {
                tracing::info!(
                    generation = carried.generation,
                    "continuing from the state kept in the fd store"
                );
                Some(carried)
            }
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "dropping the state kept in the fd store"
                );
                None
            }
        },
        Err(err) => {
            tracing::warn!(error = &err as &dyn std::error::Error, "dropping the state kept in the fd store");
            None
        }
    }
}

/// The old process's side of a handover: the generation and the application's snapshot.
struct Lifecycle {
    encode: super::running::EncodeState,
}

impl LifecycleHandler for Lifecycle {
    async fn send_state(&mut self, writer: &mut StateWriter) -> std::io::Result<()> {
        let carried = (self.encode)().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        writer.send(FRAME_VERSION, &carried.versioned()).await
    }

    async fn new_process_failed(&mut self) {
        tracing::warn!("the new process failed; this one keeps serving");
    }
}
