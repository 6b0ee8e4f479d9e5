//! The server: owns the socket file, admits peers, answers requests, runs one restart at a time.

use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::handler::{RestartHandler, StatusProvider, SupervisorHandler};
use crate::sys::{self, FileId};
use crate::wire::{self, ErrorKind, ReadError, Request, Response};

/// The answer a second, concurrent restart request gets.
pub const RESTART_IN_PROGRESS: &str = "restart already in progress";

/// How a [`Server`] treats its peers. `Default` gives sensible values; adjust with the `with_*`
/// methods or by assigning the fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Uids allowed to send requests besides the server's own effective uid (which is always
    /// allowed). Root is not implicitly allowed. Default: none.
    pub allowed_uids: Vec<u32>,
    /// How long a peer may take to send a complete request frame; also how long an idle
    /// connection is kept between requests. Default: 5 s. [`Duration::MAX`] is no timeout.
    pub read_timeout: Duration,
    /// How long writing an answer may take before the connection is dropped. Default: 5 s.
    /// [`Duration::MAX`] is no timeout.
    pub write_timeout: Duration,
    /// How many connections are served at once; a connection beyond that gets one
    /// [`ErrorKind::Busy`] frame and is closed. Each costs a file descriptor: keep it below the
    /// process's `RLIMIT_NOFILE`. Default: 1024.
    pub max_connections: usize,
    /// Whether SIGUSR1 triggers a restart too (the result is only logged). Default: off.
    ///
    /// The signal is caught from [`Server::bind`] / [`Server::adopt`] on (which must then run
    /// inside a tokio runtime); a SIGUSR1 that arrives before [`Server::serve`] runs is handled
    /// once it does. Once installed, tokio's handler stays for the life of the process: after
    /// the server stops SIGUSR1 is ignored instead of terminating the process.
    pub restart_on_sigusr1: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            allowed_uids: Vec::new(),
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 1024,
            restart_on_sigusr1: false,
        }
    }
}

impl ServerConfig {
    /// Also allows `uid` to send requests.
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.allowed_uids.push(uid);
        self
    }

    /// Sets [`read_timeout`](Self::read_timeout).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Sets [`write_timeout`](Self::write_timeout).
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets [`max_connections`](Self::max_connections) (at least 1).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets [`restart_on_sigusr1`](Self::restart_on_sigusr1).
    pub fn with_restart_on_sigusr1(mut self, on: bool) -> Self {
        self.restart_on_sigusr1 = on;
        self
    }
}

/// The listening socket and who owns its file; shared by the [`Server`] and its
/// [`ListenerHandle`]s.
#[derive(Debug)]
struct Listener {
    socket: StdListener,
    path: PathBuf,
    /// The socket file we may remove: `None` when there is nothing we recognise as ours.
    file: Option<FileId>,
    /// Whether the socket file is this process's to remove: set at once for a bound socket, only
    /// by [`ListenerHandle::claim`] for an adopted one (its predecessor still serves on it until
    /// this process has taken over for good).
    claimed: AtomicBool,
    /// Set once the listener was exported to a successor: the file is theirs to remove.
    handed_on: AtomicBool,
    removed: AtomicBool,
}

impl Listener {
    fn remove_file(&self) {
        if !self.claimed.load(Ordering::SeqCst) {
            tracing::debug!(path = %self.path.display(), "adopted listener never claimed; leaving the socket file");
            return;
        }
        if self.handed_on.load(Ordering::SeqCst) {
            tracing::debug!(path = %self.path.display(), "listener handed on; leaving the socket file");
            return;
        }
        if let Some(id) = self.file
            && !self.removed.swap(true, Ordering::SeqCst)
        {
            sys::remove_if_same(&self.path, id);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove_file();
    }
}

/// After shutdown, how long an accepted connection may stay quiet before it is closed unanswered.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// A handle on a server's listening socket, to pass it to a successor process.
///
/// Obtained with [`Server::listener`] before serving; typically moved into the restart closure.
#[derive(Debug, Clone)]
pub struct ListenerHandle {
    inner: Arc<Listener>,
}

impl ListenerHandle {
    /// Duplicates the listening socket for a successor (the new fd is close-on-exec: clear that
    /// in the child only) and marks the listener handed on, so that this process never removes
    /// the socket file: the successor, after [`Server::adopt`], owns it.
    pub fn export(&self) -> Result<OwnedFd, Error> {
        let fd = self.inner.socket.try_clone().map_err(|source| Error::Dup { source })?;
        self.inner.handed_on.store(true, Ordering::SeqCst);
        tracing::debug!(path = %self.inner.path.display(), fd = fd.as_raw_fd(), "exported the listening socket");
        Ok(fd.into())
    }

    /// Takes ownership of the socket file back after a handover failed: this process removes it
    /// again on clean shutdown.
    pub fn reclaim(&self) {
        self.inner.handed_on.store(false, Ordering::SeqCst);
    }

    /// Makes the socket file of an adopted listener ([`Server::adopt`]) this process's to remove
    /// on clean shutdown. Call it once this process has taken over for good (its predecessor was
    /// told, and stops serving): until then a failing successor must leave the file, which its
    /// predecessor still serves on. A bound listener is claimed from the start.
    pub fn claim(&self) {
        self.inner.claimed.store(true, Ordering::SeqCst);
    }

    /// Whether the socket file is this process's to remove (bound here, or adopted and claimed).
    pub fn is_claimed(&self) -> bool {
        self.inner.claimed.load(Ordering::SeqCst)
    }

    /// Whether the listener was exported and not reclaimed.
    pub fn is_handed_on(&self) -> bool {
        self.inner.handed_on.load(Ordering::SeqCst)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// A restart-socket server: bound (or adopted), ready to [`serve`](Server::serve).
#[derive(Debug)]
pub struct Server {
    inner: Arc<Listener>,
    config: ServerConfig,
    /// SIGUSR1, caught from bind/adopt on when [`ServerConfig::restart_on_sigusr1`] is set.
    sigusr1: Option<Signal>,
}

impl Server {
    /// Creates the socket file at `path` (mode 0600) and listens on it.
    ///
    /// A stale socket left by a dead process is replaced; a live one is an [`Error::InUse`];
    /// anything that is not a socket is an [`Error::NotASocket`] and is left alone. With
    /// [`ServerConfig::restart_on_sigusr1`], call it inside a tokio runtime.
    pub fn bind(path: impl AsRef<Path>, config: ServerConfig) -> Result<Server, Error> {
        let path = path.as_ref();
        let sigusr1 = catch_sigusr1(&config)?;
        let (socket, id) = sys::bind(path)?;
        socket.set_nonblocking(true).map_err(|source| Error::Bind { path: path.to_owned(), source })?;
        tracing::info!(path = %path.display(), "restart socket listening");
        Ok(Server::new(socket, path, Some(id), true, config, sigusr1))
    }

    /// Serves on an inherited listening socket (exported by a predecessor with
    /// [`ListenerHandle::export`]) whose file is at `path`. The socket file is left as it is, and
    /// stays the predecessor's until this process [claims](ListenerHandle::claim) it: a
    /// successor that fails before it has taken over (and so never claims) leaves the file its
    /// predecessor still serves on. With [`ServerConfig::restart_on_sigusr1`], call it inside a
    /// tokio runtime.
    pub fn adopt(fd: OwnedFd, path: impl AsRef<Path>, config: ServerConfig) -> Result<Server, Error> {
        let path = path.as_ref();
        let raw = fd.as_raw_fd();
        let sigusr1 = catch_sigusr1(&config)?;
        sys::check_listener(&fd).map_err(|reason| Error::NotAListener { fd: raw, reason })?;
        let socket = StdListener::from(fd);
        socket
            .set_nonblocking(true)
            .map_err(|source| Error::NotAListener { fd: raw, reason: source.to_string() })?;
        let id = sys::socket_file_id(path);
        if id.is_none() {
            tracing::warn!(path = %path.display(), "adopted listener has no socket file at its path");
        }
        tracing::info!(path = %path.display(), fd = raw, "restart socket adopted");
        Ok(Server::new(socket, path, id, false, config, sigusr1))
    }

    /// A new server on the listening socket of `handle`, whose previous server has stopped —
    /// typically after a handover was rolled back and this process serves again. The socket
    /// file is this process's again ([`ListenerHandle::reclaim`] is implied).
    pub fn resume(handle: &ListenerHandle, config: ServerConfig) -> Result<Server, Error> {
        let sigusr1 = catch_sigusr1(&config)?;
        handle.reclaim();
        tracing::info!(path = %handle.inner.path.display(), "restart socket resumed");
        Ok(Server { inner: Arc::clone(&handle.inner), config, sigusr1 })
    }

    fn new(
        socket: StdListener,
        path: &Path,
        file: Option<FileId>,
        claimed: bool,
        config: ServerConfig,
        sigusr1: Option<Signal>,
    ) -> Server {
        let listener = Listener {
            socket,
            path: path.to_owned(),
            file,
            claimed: AtomicBool::new(claimed),
            handed_on: AtomicBool::new(false),
            removed: AtomicBool::new(false),
        };
        Server { inner: Arc::new(listener), config, sigusr1 }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A handle to export the listening socket to a successor (see [`ListenerHandle::export`]).
    pub fn listener(&self) -> ListenerHandle {
        ListenerHandle { inner: Arc::clone(&self.inner) }
    }

    /// Serves requests until `shutdown` is cancelled, then stops accepting, answers what the
    /// connections already accepted send within a short quiet period (500 ms: a request that
    /// raced a handover is answered, not dropped), lets a running restart finish, and removes the
    /// socket file if it is this process's (bound here, or adopted and
    /// [claimed](ListenerHandle::claim)) and the listener was not handed on.
    ///
    /// Must run inside a tokio runtime (the `net` and `time` drivers enabled).
    pub async fn serve<R, S>(self, restart: R, status: S, shutdown: CancellationToken) -> Result<(), Error>
    where
        R: RestartHandler,
        S: StatusProvider,
    {
        self.serve_inner(restart, status, None, shutdown).await
    }

    /// [`serve`](Server::serve) for a supervisor (`lifeline supervise --control`): besides
    /// restarts and the plain status, `supervisor` answers [`Request::Details`] with a
    /// [`SupervisorStatus`](crate::SupervisorStatus) and takes [`Request::Stop`].
    /// (A server started with [`serve`](Server::serve) answers `Details` with its plain
    /// status and refuses `Stop` with [`ErrorKind::Unsupported`].)
    pub async fn serve_supervisor<R, S>(
        self,
        restart: R,
        status: S,
        supervisor: impl SupervisorHandler,
        shutdown: CancellationToken,
    ) -> Result<(), Error>
    where
        R: RestartHandler,
        S: StatusProvider,
    {
        self.serve_inner(restart, status, Some(Arc::new(supervisor)), shutdown).await
    }

    async fn serve_inner<R, S>(
        self,
        restart: R,
        status: S,
        supervisor: Option<Arc<dyn SupervisorHandler>>,
        shutdown: CancellationToken,
    ) -> Result<(), Error>
    where
        R: RestartHandler,
        S: StatusProvider,
    {
        let socket = self.inner.socket.try_clone().map_err(|source| Error::Dup { source })?;
        let listener = UnixListener::from_std(socket).map_err(|source| Error::Dup { source })?;
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            restart: Arc::new(restart),
            status,
            supervisor,
            restarting: Arc::new(AtomicBool::new(false)),
            config: self.config.clone(),
            own_uid: nix::unistd::geteuid().as_raw(),
            tracker: tracker.clone(),
        });

        if let Some(mut signal) = self.sigusr1 {
            let shared = Arc::clone(&shared);
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        got = signal.recv() => if got.is_none() { break },
                    }
                    tracing::info!("SIGUSR1: restarting");
                    // The outcome is logged by `restart`.
                    let _ = shared.restart("SIGUSR1").await;
                }
            });
        }

        let slots = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    if let Some((stream, permit)) = shared.admit(stream, &slots) {
                        tracker.spawn(Arc::clone(&shared).connection(stream, permit, shutdown.clone()));
                    }
                }
                Err(err) => {
                    tracing::warn!(error = &err as &dyn std::error::Error, "accept failed");
                    // Out of descriptors or memory: the pending connection stays queued; give the
                    // process a moment instead of spinning on the same error.
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
        self.inner.remove_file();
        tracing::info!(path = %self.inner.path.display(), "restart socket stopped");
        Ok(())
    }
}

/// Starts catching SIGUSR1 if the config asks for it; needs a tokio runtime.
fn catch_sigusr1(config: &ServerConfig) -> Result<Option<Signal>, Error> {
    if !config.restart_on_sigusr1 {
        return Ok(None);
    }
    if tokio::runtime::Handle::try_current().is_err() {
        let source =
            std::io::Error::other("restart_on_sigusr1 needs a tokio runtime when binding or adopting");
        return Err(Error::Signal { source });
    }
    tokio::signal::unix::signal(SignalKind::user_defined1())
        .map(Some)
        .map_err(|source| Error::Signal { source })
}

/// What every connection task needs.
struct Shared<R, S> {
    restart: Arc<R>,
    status: S,
    supervisor: Option<Arc<dyn SupervisorHandler>>,
    restarting: Arc<AtomicBool>,
    config: ServerConfig,
    own_uid: u32,
    tracker: TaskTracker,
}

/// Clears the "restart in progress" flag however the restart ends.
struct RestartGuard(Arc<AtomicBool>);

impl Drop for RestartGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl<R: RestartHandler, S: StatusProvider> Shared<R, S> {
    /// Checks the peer's credentials and takes a connection slot; refused peers get one error
    /// frame, written without waiting (it fits the fresh socket's buffer), and are dropped.
    fn admit(
        &self,
        stream: UnixStream,
        slots: &Arc<Semaphore>,
    ) -> Option<(UnixStream, OwnedSemaphorePermit)> {
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "cannot read peer credentials; closing the connection"
                );
                crate::metrics::refused("credentials");
                return None;
            }
        };
        let uid = cred.uid();
        if uid != self.own_uid && !self.config.allowed_uids.contains(&uid) {
            tracing::warn!(uid, pid = ?cred.pid(), "refused a peer whose uid is not allowed");
            crate::metrics::refused("uid");
            let message = format!("uid {uid} is not allowed on this socket");
            refuse(stream, ErrorKind::PermissionDenied, message);
            return None;
        }
        if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
            return Some((stream, permit));
        }
        let max = self.config.max_connections;
        tracing::warn!(uid, max, "too many connections; refusing one");
        crate::metrics::refused("busy");
        refuse(stream, ErrorKind::Busy, format!("too many connections (limit {max})"));
        None
    }

    /// Serves one connection: requests one after another until the peer closes, errs, idles too
    /// long, or the server shuts down between requests.
    async fn connection(
        self: Arc<Self>,
        mut stream: UnixStream,
        _permit: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let mut buf = Vec::new();
        loop {
            let read = {
                let reading =
                    tokio::time::timeout(self.config.read_timeout, wire::read_frame(&mut stream, &mut buf));
                tokio::pin!(reading);
                tokio::select! {
                    read = &mut reading => read,
                    () = shutdown.cancelled() => {
                        // Shutting down (typically: a successor took over the socket). A request
                        // this connection already carries, or sends within a short quiet period,
                        // is still answered — dropping it would fail a client whose connection
                        // merely raced the handover. The read in progress is kept, not restarted,
                        // so no byte of a frame is lost.
                        match tokio::time::timeout(SHUTDOWN_GRACE, &mut reading).await {
                            Ok(read) => read,
                            Err(_quiet) => return,
                        }
                    }
                }
            };
            let refusal = match read {
                Ok(Ok(())) => match wire::decode_request(&buf) {
                    Ok(request) => {
                        let response = self.answer(request).await;
                        if self.send(&mut stream, &response).await {
                            continue;
                        }
                        return;
                    }
                    Err(Error::UnsupportedVersion { got, expected }) => (
                        ErrorKind::UnsupportedVersion,
                        format!("protocol version {got} is not supported (server speaks {expected})"),
                    ),
                    Err(err) => (ErrorKind::Malformed, crate::error::chain(&err)),
                },
                Ok(Err(ReadError::Eof)) => return,
                Ok(Err(ReadError::Truncated)) => {
                    tracing::debug!("peer closed the connection inside a frame");
                    return;
                }
                Ok(Err(ReadError::Io(err))) => {
                    tracing::debug!(error = &err as &dyn std::error::Error, "read failed");
                    return;
                }
                Ok(Err(ReadError::TooLarge(len))) => (
                    ErrorKind::FrameTooLarge,
                    format!("frame of {len} bytes exceeds the limit of {} bytes", wire::MAX_FRAME_LEN),
                ),
                Err(_elapsed) => {
                    (ErrorKind::Timeout, format!("no complete request within {:?}", self.config.read_timeout))
                }
            };
            tracing::debug!(kind = %refusal.0, message = %refusal.1, "bad request; closing the connection");
            crate::metrics::bad_request(refusal.0);
            self.send(&mut stream, &Response::Error { kind: refusal.0, message: refusal.1 }).await;
            return;
        }
    }

    /// Writes one answer; false if the connection is unusable.
    async fn send(&self, stream: &mut UnixStream, response: &Response) -> bool {
        let frame = wire::encode_response(response);
        match tokio::time::timeout(self.config.write_timeout, stream.write_all(&frame)).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::debug!(error = &err as &dyn std::error::Error, "cannot write the answer");
                false
            }
            Err(_) => {
                tracing::debug!("peer does not read its answer; closing the connection");
                false
            }
        }
    }

    async fn answer(&self, request: Request) -> Response {
        crate::metrics::request(request);
        match request {
            Request::Status => Response::Status(self.status.status().await),
            Request::Details => match &self.supervisor {
                Some(supervisor) => Response::Supervisor(supervisor.details().await),
                None => Response::Status(self.status.status().await),
            },
            Request::Stop => match &self.supervisor {
                Some(supervisor) => match supervisor.stop().await {
                    Ok(pid) => Response::Stopped { pid },
                    Err(message) => Response::Error { kind: ErrorKind::Unsupported, message },
                },
                None => Response::Error {
                    kind: ErrorKind::Unsupported,
                    message: "this server takes no stop requests (stop the service itself)".to_owned(),
                },
            },
            Request::Restart => match self.restart("control socket").await {
                Ok(pid) => Response::RestartComplete { pid },
                Err(reason) => Response::RestartFailed { reason },
            },
        }
    }

    /// Runs the handler unless a restart is already running. The handler runs on its own task,
    /// so it finishes even if the asking connection goes away, and a panic becomes a reason.
    async fn restart(&self, trigger: &'static str) -> Result<u32, String> {
        if self.restarting.swap(true, Ordering::SeqCst) {
            tracing::warn!(trigger, "restart refused: {RESTART_IN_PROGRESS}");
            return Err(RESTART_IN_PROGRESS.to_owned());
        }
        let guard = RestartGuard(Arc::clone(&self.restarting));
        let handler = Arc::clone(&self.restart);
        let task = self.tracker.spawn(async move {
            let _guard = guard;
            handler.restart().await
        });
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(err) if err.is_panic() => Err("restart handler panicked".to_owned()),
            Err(_) => Err("restart was cancelled".to_owned()),
        };
        match &outcome {
            Ok(pid) => tracing::info!(trigger, pid, "restart complete"),
            Err(reason) => tracing::warn!(trigger, %reason, "restart failed"),
        }
        outcome
    }
}

/// Sends one error frame without waiting and drops the connection.
fn refuse(stream: UnixStream, kind: ErrorKind, message: String) {
    let frame = wire::encode_response(&Response::Error { kind, message });
    match stream.into_std() {
        Ok(mut std) => {
            if let Err(err) = std.write_all(&frame) {
                tracing::debug!(error = &err as &dyn std::error::Error, "cannot send the refusal");
            }
        }
        Err(err) => tracing::debug!(error = &err as &dyn std::error::Error, "cannot send the refusal"),
    }
}
