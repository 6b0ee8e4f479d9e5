//! The application's hooks into an upgrade: what state to send, what to do when it fails.

use std::future::Future;
use std::io;
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
    fn new_process_failed(&mut self) -> BoxFuture<'_, ()>;
}

impl<L: LifecycleHandler> DynLifecycle for L {
    fn send_state<'a>(&'a mut self, writer: &'a mut StateWriter) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(LifecycleHandler::send_state(self, writer))
    }

    fn new_process_failed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(LifecycleHandler::new_process_failed(self))
    }
}
