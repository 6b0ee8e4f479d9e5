//! Connection tracking for a race-free drain, for any `AsyncRead + AsyncWrite` stream.
//!
//! A connection that looks idle to the server may already carry the client's next request on
//! the wire: closing idle connections the moment a drain starts (what most servers' graceful
//! shutdown does) fails that request with a clean EOF. So during a drain a connection is closed
//! only once it has been *quiet* — no byte moved either way and no request in progress — for a
//! quiet period (500 ms by default); one in the middle of a request finishes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio_util::task::TaskTracker;

/// The start of the drain, shared by every connection: a flag read on the hot path (each
/// response, each wake of a connection task) and a [`Notify`] for the connections waiting on it.
/// Not a `CancellationToken`, whose every check takes a lock all connections share.
#[derive(Debug, Default)]
pub(crate) struct DrainSignal {
    flag: AtomicBool,
    notify: Arc<Notify>,
}

impl DrainSignal {
    pub(crate) fn start(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// Resolves once the drain has started. It registers with the [`Notify`] on its first poll (and
/// again only if polled from another task); every later poll reads the flag alone.
struct Started {
    signal: Arc<DrainSignal>,
    notified: Option<Pin<Box<OwnedNotified>>>,
    waker: Option<Waker>,
}

impl Future for Started {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_set() {
            return Poll::Ready(());
        }
        let registered = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if registered {
            return Poll::Pending;
        }
        let this = &mut *self;
        let notified = this.notified.get_or_insert_with(|| {
            let mut notified = Box::pin(Arc::clone(&this.signal.notify).notified_owned());
            // Registered before the flag is read again: a start in between wakes us.
            notified.as_mut().enable();
            notified
        });
        if this.signal.is_set() || notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The protocol a connection turned out to speak, as far as draining it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// Not known (yet): drained like HTTP/1.1, by waiting for a quiet connection.
    Unknown,
    /// HTTP/1.x: during a drain, responses carry `Connection: close`; an idle connection is
    /// closed after the quiet period.
    Http1,
    /// HTTP/2: drained with GOAWAY (the protocol tells the client which streams were processed,
    /// so nothing races) once the connection is quiet, or after [`Connection::patience`].
    Http2,
}

/// Whether a connection moves bytes, how many requests it has in progress, what it speaks.
///
/// Activity is a counter of reads, writes and finished requests, not a clock: reading the clock
/// on every read and write cost about 2 % of a busy server's CPU. Quiet means the counter did not
/// move during a whole quiet period (sampled only while draining).
#[derive(Debug)]
pub(crate) struct Activity {
    moves: AtomicU64,
    busy: AtomicUsize,
    protocol: AtomicU8,
}

impl Activity {
    fn new() -> Activity {
        Activity { moves: AtomicU64::new(0), busy: AtomicUsize::new(0), protocol: AtomicU8::new(0) }
    }

    fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_protocol(&self, protocol: Protocol) {
        let value = match protocol {
            Protocol::Unknown => 0,
            Protocol::Http1 => 1,
            Protocol::Http2 => 2,
        };
        self.protocol.store(value, Ordering::Relaxed);
    }

    fn protocol(&self) -> Protocol {
        match self.protocol.load(Ordering::Relaxed) {
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            _ => Protocol::Unknown,
        }
    }
}

/// A tracked connection's view of the drain: whether it has begun, and when this connection may
/// be closed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Connection {
    activity: Arc<Activity>,
    draining: Arc<DrainSignal>,
    quiet: Duration,
    patience: Duration,
}

impl Connection {
    /// Marks a request in progress until the guard is dropped: the connection is not quiet
    /// while any guard lives, however long the request takes without moving a byte.
    pub fn busy(&self) -> Busy {
        self.activity.busy.fetch_add(1, Ordering::AcqRel);
        Busy { activity: Arc::clone(&self.activity) }
    }

    /// Whether the service is draining (stopping, or handed over).
    pub fn is_draining(&self) -> bool {
        self.draining.is_set()
    }

    /// Resolves once the service starts draining. Cheap to poll on every wake of a connection
    /// task: after its first poll it reads an atomic flag.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        Started { signal: Arc::clone(&self.draining), notified: None, waker: None }
    }

    /// Resolves once the service is draining and this connection has then been quiet — no byte
    /// moved, no [`busy`](Connection::busy) guard alive — for a whole quiet period: the moment it
    /// can be closed without failing a request.
    pub async fn idle_while_draining(&self) {
        self.draining().await;
        loop {
            let before = self.activity.moves.load(Ordering::Relaxed);
            tokio::time::sleep(self.quiet).await;
            if self.activity.busy.load(Ordering::Acquire) == 0
                && self.activity.moves.load(Ordering::Relaxed) == before
            {
                return;
            }
        }
    }

    /// How long after the drain began a connection that never goes quiet is asked to leave
    /// anyway (the HTTP helpers send HTTP/2 GOAWAY then): half the drain timeout, so that its
    /// client moves to the new process well before this one exits.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// Records what protocol the connection speaks (the HTTP helpers do this).
    pub fn set_protocol(&self, protocol: Protocol) {
        self.activity.set_protocol(protocol);
    }

    /// The protocol recorded with [`set_protocol`](Connection::set_protocol).
    pub fn protocol(&self) -> Protocol {
        self.activity.protocol()
    }
}

/// A request in progress ([`Connection::busy`]); the quiet period starts when the last one drops.
#[derive(Debug)]
pub struct Busy {
    activity: Arc<Activity>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An I/O stream that records when bytes move, for the drain's quiet period.
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    /// The stream inside.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The stream inside, mutably (bytes moved through it directly are not recorded).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The service's connections: spawns each on a task the drain waits for. Cheap to clone; get it
/// from [`Running::connections`](super::Running::connections).
#[derive(Debug, Clone)]
pub struct Connections {
    pub(crate) tracker: TaskTracker,
    /// Connections tracked since the service started.
    pub(crate) accepted: Arc<AtomicU64>,
    /// The same count, as a metric (see [`super::metrics`]).
    pub(crate) counted: super::metrics::ConnectionCounter,
    pub(crate) draining: Arc<DrainSignal>,
    pub(crate) quiet: Duration,
    pub(crate) patience: Duration,
}

impl Connections {
    /// Wraps `io` to record its activity, and returns the connection's view of the drain.
    pub fn track<T>(&self, io: T) -> (Tracked<T>, Connection) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.counted.increment();
        let activity = Arc::new(Activity::new());
        let connection = Connection {
            activity: Arc::clone(&activity),
            draining: Arc::clone(&self.draining),
            quiet: self.quiet,
            patience: self.patience,
        };
        (Tracked { inner: io, activity }, connection)
    }

    /// Serves one connection of any protocol on a tracked task: `serve` gets the tracked stream;
    /// once the service drains and the connection has been quiet for the quiet period, the task
    /// is dropped, which closes the connection. Use [`Connection::busy`] (through
    /// [`spawn_with`](Connections::spawn_with)) for requests that take long without moving bytes.
    pub fn spawn<T, F, Fut>(&self, io: T, serve: F)
    where
        T: Send + 'static,
        F: FnOnce(Tracked<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_with(io, |io, _connection| serve(io));
    }

    /// Like [`spawn`](Connections::spawn), with the [`Connection`] handed to `serve` too (to mark
    /// requests [`busy`](Connection::busy), or to end the connection itself when
    /// [`draining`](Connection::draining)).
    pub fn spawn_with<T, F, Fut>(&self, io: T, serve: F)
    where
        T: Send + 'static,
        F: FnOnce(Tracked<T>, Connection) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (io, connection) = self.track(io);
        let watch = connection.clone();
        let work = serve(io, connection);
        self.tracker.spawn(async move {
            tokio::select! {
                () = work => {}
                () = watch.idle_while_draining() => tracing::debug!("closed a quiet connection while draining"),
            }
        });
    }

    /// Runs `task` as in-flight work the drain waits for (up to the drain timeout).
    pub fn spawn_task<Fut>(&self, task: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// How many connections were tracked since the service started.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// How many tracked tasks are running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no tracked task runs.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

/// A listener [`Running::accept`](super::Running::accept) can accept on.
pub trait Accept {
    /// What one accept yields.
    type Connection;

    /// Accepts one connection.
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Connection>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Connection = (tokio::net::TcpStream, std::net::SocketAddr);

    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Connection>> + Send {
        self.accept()
    }
}

impl Accept for tokio::net::UnixListener {
    type Connection = (tokio::net::UnixStream, tokio::net::unix::SocketAddr);

    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Connection>> + Send {
        self.accept()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn connections(quiet: Duration) -> Connections {
        Connections {
            tracker: TaskTracker::new(),
            accepted: Arc::default(),
            counted: super::super::metrics::ConnectionCounter::default(),
            draining: Arc::default(),
            quiet,
            patience: quiet * 4,
        }
    }

    #[tokio::test]
    async fn a_busy_connection_is_not_quiet_and_one_that_moves_bytes_is_not_either() {
        let conns = connections(Duration::from_millis(50));
        let (client, server) = tokio::io::duplex(64);
        let (mut io, connection) = conns.track(server);
        let guard = connection.busy();
        conns.draining.start();
        let mut idle = std::pin::pin!(connection.idle_while_draining());
        // A request in progress keeps it open however long it is quiet.
        assert!(tokio::time::timeout(Duration::from_millis(200), &mut idle).await.is_err());
        drop(guard);
        // Bytes moving keep it open too: each write restarts the quiet period.
        let mut client = client;
        for _ in 0..5 {
            client.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            io.read_exact(&mut byte).await.unwrap();
            assert!(tokio::time::timeout(Duration::from_millis(10), &mut idle).await.is_err());
        }
        tokio::time::timeout(Duration::from_secs(20), idle).await.expect("quiet at last");
    }

    #[tokio::test]
    async fn spawned_connections_are_closed_once_quiet_and_the_tracker_empties() {
        let conns = connections(Duration::from_millis(20));
        let (mut client, server) = tokio::io::duplex(64);
        conns.spawn(server, |mut io| async move {
            let mut buf = [0u8; 8];
            // A server that would wait for ever for the next request.
            while io.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        assert_eq!(conns.len(), 1);
        conns.draining.start();
        conns.tracker.close();
        tokio::time::timeout(Duration::from_secs(20), conns.tracker.wait()).await.expect("drained");
        // The server's end is gone: the client reads EOF.
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    }
}
