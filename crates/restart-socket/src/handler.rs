//! The narrow traits a service implements: how to restart, and what to report as its status.

use std::future::Future;
use std::pin::Pin;

use crate::wire::{Status, SupervisorStatus};

/// Performs a restart when asked over the socket (or by SIGUSR1): typically a zero-downtime
/// handover to a new process.
///
/// Returns the new process's pid, or a one-line reason why the restart failed (the old process
/// keeps serving). Any closure `Fn() -> impl Future<Output = Result<u32, String>>` is a handler:
///
/// ```
/// use restart_socket::RestartHandler;
///
/// fn assert_handler(_: impl RestartHandler) {}
/// assert_handler(|| async { Ok::<u32, String>(4242) });
/// assert_handler(|| async { Err::<u32, String>("handover not available".into()) });
/// ```
///
/// The server runs at most one restart at a time and lets a started restart finish even if the
/// client that asked for it goes away or the server is shutting down.
pub trait RestartHandler: Send + Sync + 'static {
    /// Restarts the service; resolves to the new pid or the reason it failed.
    fn restart(&self) -> impl Future<Output = Result<u32, String>> + Send;
}

impl<F, Fut> RestartHandler for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u32, String>> + Send,
{
    fn restart(&self) -> impl Future<Output = Result<u32, String>> + Send {
        self()
    }
}

/// Reports the service's [`Status`] for `Status` requests. Any closure
/// `Fn() -> impl Future<Output = Status>` is a provider:
///
/// ```
/// use restart_socket::{Status, StatusProvider};
///
/// fn assert_provider(_: impl StatusProvider) {}
/// assert_provider(|| async {
///     Status { pid: std::process::id(), generation: 1, started_at: 0, last_restart: None }
/// });
/// ```
///
/// It is called on the connection's task for every request: keep it cheap (read atomics or a
/// lock held briefly).
pub trait StatusProvider: Send + Sync + 'static {
    /// The current status.
    fn status(&self) -> impl Future<Output = Status> + Send;
}

impl<F, Fut> StatusProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Status> + Send,
{
    fn status(&self) -> impl Future<Output = Status> + Send {
        self()
    }
}

/// A boxed future, for [`SupervisorHandler`] (which is used as a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a supervisor serves beyond restarts and the plain status
/// ([`Server::serve_supervisor`](crate::Server::serve_supervisor)): its detailed status
/// ([`Request::Details`](crate::Request::Details)) and stops
/// ([`Request::Stop`](crate::Request::Stop)).
pub trait SupervisorHandler: Send + Sync + 'static {
    /// The detailed status.
    fn details(&self) -> BoxFuture<'_, SupervisorStatus>;
    /// Stops the service; resolves once it has stopped, with the main pid that was stopped
    /// (`None` if none ran), or why it cannot.
    fn stop(&self) -> BoxFuture<'_, Result<Option<u32>, String>>;
}
