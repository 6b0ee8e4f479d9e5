//! The service manager's notify socket (`NOTIFY_SOCKET`): reached before the commit; `STATUS=`,
//! `WATCHDOG=1`, `STOPPING=1` and `EXTEND_TIMEOUT_USEC=` from the running service. (`READY=1`,
//! `RELOADING=1` and `MAINPID=` around a handover come from `handover`.)

use std::os::unix::net::UnixDatagram;

use super::Error;

/// Checks that `NOTIFY_SOCKET`, when set (a path, or `@name` for the abstract namespace), can be
/// reached: a successor that cannot talk to the service manager cannot take over.
pub(crate) fn check() -> Result<(), Error> {
    let Some(address) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let notify = |source| Error::Notify { source };
    let socket = UnixDatagram::unbound().map_err(notify)?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(address.as_os_str());
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(notify)?;
        socket.connect_addr(&addr).map_err(notify)?;
    } else {
        socket.connect(&address).map_err(notify)?;
    }
    Ok(())
}

/// Sends `states` in one datagram when `NOTIFY_SOCKET` is set; a failure is logged (the service
/// manager going away must not take the service down).
pub(crate) fn send(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = &err as &dyn std::error::Error, "cannot notify the service manager");
    }
}

/// `EXTEND_TIMEOUT_USEC=` for `d` (saturating at what the message can carry).
pub(crate) fn extend_timeout(d: std::time::Duration) -> sd_notify::NotifyState<'static> {
    sd_notify::NotifyState::ExtendTimeoutUsec(u32::try_from(d.as_micros()).unwrap_or(u32::MAX))
}
