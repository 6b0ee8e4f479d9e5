//! The service manager's side channel over `NOTIFY_SOCKET`: `READY=1`, `RELOADING=1` around an
//! upgrade, `MAINPID=` at its end, and the fd store.

use std::time::Duration;

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

/// `RELOADING=1` with `MONOTONIC_USEC=` (what `Type=notify-reload` needs on systemd ≥ 253; older
/// versions ignore it), and `EXTEND_TIMEOUT_USEC=` for the time a successor may take: sent by the
/// main process as an upgrade begins.
pub(crate) fn reloading(may_take: Duration) -> Result<(), Error> {
    if !enabled() {
        return Ok(());
    }
    let now = NotifyState::monotonic_usec_now().map_err(|source| Error::Notify { source })?;
    let extend = NotifyState::ExtendTimeoutUsec(u32::try_from(may_take.as_micros()).unwrap_or(u32::MAX));
    sd_notify::notify(&[NotifyState::Reloading, now, extend]).map_err(|source| Error::Notify { source })?;
    tracing::debug!("sent RELOADING=1");
    Ok(())
}

/// `MAINPID=<pid>` and `READY=1` in one message: sent by the old process, still the main one,
/// once its successor is ready. The service manager applies `MAINPID=` first, so the reload
/// ends with the new process as the main one.
pub(crate) fn handed_over(pid: u32) -> Result<(), Error> {
    if !enabled() {
        return Ok(());
    }
    let mut states = vec![NotifyState::MainPid(pid), NotifyState::Ready];
    // A watchdog ping in the same message: the new main process's own first ping may reach the
    // manager before this message and be refused as not from the main process.
    if sd_notify::watchdog_enabled().is_some() {
        states.push(NotifyState::Watchdog);
    }
    sd_notify::notify(&states).map_err(|source| Error::Notify { source })?;
    tracing::debug!(pid, "sent MAINPID and READY=1");
    Ok(())
}

/// `READY=1` again after a failed upgrade: the reload is over, this process serves on.
pub(crate) fn still_ready() -> Result<(), Error> {
    if !enabled() {
        return Ok(());
    }
    sd_notify::notify(&[NotifyState::Ready]).map_err(|source| Error::Notify { source })?;
    tracing::debug!("sent READY=1 after a failed upgrade");
    Ok(())
}

/// `MAINPID=<this pid>`, `READY=1` and a `STATUS=` saying why: this process takes over again
/// after its successor died (a rollback).
pub(crate) fn rolled_back(me: u32, successor: u32) -> Result<(), Error> {
    if !enabled() {
        return Ok(());
    }
    let status = format!("rolled back: successor pid {successor} died");
    sd_notify::notify(&[NotifyState::MainPid(me), NotifyState::Ready, NotifyState::Status(&status)])
        .map_err(|source| Error::Notify { source })?;
    tracing::debug!(me, "sent MAINPID (rollback)");
    Ok(())
}
