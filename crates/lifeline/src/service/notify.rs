//! The service manager's notify socket (`NOTIFY_SOCKET`), reached before the commit.

use std::os::unix::net::UnixDatagram;

use super::Error;

/// Connects a datagram socket to `NOTIFY_SOCKET` when it is set (a path, or `@name` for the
/// abstract namespace): a successor that cannot reach the service manager cannot take over.
pub(crate) fn connect() -> Result<Option<UnixDatagram>, Error> {
    let Some(address) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(None) };
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
    Ok(Some(socket))
}
