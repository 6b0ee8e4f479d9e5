//! The application's hooks into an upgrade: what state to send, what to do when it fails.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;

use crate::StateWriter;

/// The old process's side of an upgrade (shellflip's `LifecycleHandler`).
///
/// [`Upgrader::upgrade`](crate::Upgrader::upgrade) calls [`send_state`](Self::send_state) once the
/// new process is started, while waiting for it to become ready; if the new process fails,
/// [`new_process_failed`](Self::new_process_failed) runs before `upgrade` returns the error.
///
/// `()` is the handler that sends no state.
pub trait LifecycleHandler: Send + 'static {
    /// Writes the state the new process needs (counters, session tickets, ...) to `writer`.
    ///
    /// Use [`StateWriter::send`] for a version-tagged postcard frame, or write any bytes. The
    /// writer is closed when this returns. A new process that does not read the state and exits
    /// makes the write fail with `BrokenPipe`: that is not an error of the upgrade, which reports
    /// how the new process ended instead. Any other error fails the upgrade.
    fn send_state(&mut self, writer: &mut StateWriter) -> impl Future<Output = io::Result<()>> + Send;

    /// File descriptors to pass to the new process of *this* upgrade only, by name, beside the
    /// registered ones; called before it is started. The new process takes them like any
    /// inherited fd ([`Handover::take_fd`](crate::Handover::take_fd)); nothing is kept for later
    /// upgrades.
    ///
    /// This is the way to pass a large state at a cost independent of its size: a
    /// [`SealedState`](crate::SealedState) (built in place with
    /// [`SealedState::build`](crate::SealedState::build)) that the new process maps with
    /// [`SealedState::map`](crate::SealedState::map) — one descriptor and a mapping, where the
    /// state pipe copies every byte twice. Names follow the rules of registered names and must
    /// not collide with them ([`Error::DuplicateName`](crate::Error::DuplicateName) fails the
    /// upgrade). By default: none.
    fn upgrade_fds(&mut self) -> impl Future<Output = io::Result<Vec<(String, OwnedFd)>>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Called when the new process failed (it was killed and reaped; this process keeps serving).
    /// Undo here what [`send_state`](Self::send_state) changed, if anything.
    fn new_process_failed(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl LifecycleHandler for () {
    async fn send_state(&mut self, _writer: &mut StateWriter) -> io::Result<()> {
        Ok(())
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe form of [`LifecycleHandler`], so that [`Upgrader`](crate::Upgrader) is not generic.
pub(crate) trait DynLifecycle: Send {
    fn send_state<'a>(&'a mut self, writer: &'a mut StateWriter) -> BoxFuture<'a, io::Result<()>>;
    fn upgrade_fds(&mut self) -> BoxFuture<'_, io::Result<Vec<(String, OwnedFd)>>>;
    fn new_process_failed(&mut self) -> BoxFuture<'_, ()>;
}

impl<L: LifecycleHandler> DynLifecycle for L {
    fn send_state<'a>(&'a mut self, writer: &'a mut StateWriter) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(LifecycleHandler::send_state(self, writer))
    }

    fn new_process_failed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(LifecycleHandler::new_process_failed(self))
    }

    fn upgrade_fds(&mut self) -> BoxFuture<'_, io::Result<Vec<(String, OwnedFd)>>> {
        Box::pin(LifecycleHandler::upgrade_fds(self))
    }
}
