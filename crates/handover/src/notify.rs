//! The service manager's side channel: `READY=1`, `MAINPID=`, and the fd store over `NOTIFY_SOCKET`.

use sd_notify::NotifyState;

use crate::Error;
use crate::fds::Registry;

fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// `READY=1`, then (when asked) every registered fd into the fd store under its name.
pub(crate) fn ready(registry: &Registry, fd_store: bool) -> Result<(), Error> {
    if !enabled() {
        return Ok(());
    }
    sd_notify::notify(&[NotifyState::Ready]).map_err(|source| Error::Notify { source })?;
    tracing::debug!("sent READY=1");
    if fd_store {
        for (name, fd) in registry.iter() {
            sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
                .map_err(|source| Error::Notify { source })?;
            tracing::debug!(name, "stored in the fd store");
        }
    }
    Ok(())
}

/// `MAINPID=<pid>`: sent by the old process, still the main one, once its successor is ready.
pub(crate) fn main_pid(pid: u32) -> Result<(), Error> {
    if !enabled() {
        return Ok(());
    }
    sd_notify::notify(&[NotifyState::MainPid(pid)]).map_err(|source| Error::Notify { source })?;
    tracing::debug!(pid, "sent MAINPID");
    Ok(())
}
