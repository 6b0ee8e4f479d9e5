//! Tests of the registry and of the socket type checks, on real sockets.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};

use super::*;

fn tcp_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

#[test]
fn duplicate_names_are_rejected() {
    let mut reg = Registry::default();
    reg.insert("http", OwnedFd::from(tcp_listener())).unwrap();
    let err = reg.insert("http", OwnedFd::from(tcp_listener())).unwrap_err();
    assert!(matches!(&err, Error::DuplicateName { name } if name == "http"), "{err}");
    assert_eq!(err.to_string(), "a file descriptor named \"http\" is already registered");
    assert_eq!(reg.names().collect::<Vec<_>>(), ["http"]);
}

#[test]
fn invalid_names_are_rejected() {
    let mut reg = Registry::default();
    let err = reg.insert("a=b", OwnedFd::from(tcp_listener())).unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err}");
}

#[test]
fn registered_fds_are_close_on_exec() {
    let mut reg = Registry::default();
    let l = tcp_listener();
    let fd = l.as_raw_fd();
    // Clear the flag to see the registry set it again.
    fcntl(l.as_fd(), FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    reg.insert("http", OwnedFd::from(l)).unwrap();
    let (_, registered) = reg.iter().next().unwrap();
    assert_eq!(registered.as_raw_fd(), fd);
    let flags = fcntl(registered, FcntlArg::F_GETFD).unwrap();
    assert_ne!(flags & libc::FD_CLOEXEC, 0);
}

#[test]
fn type_checks_accept_the_right_socket() {
    let tcp = tcp_listener();
    check_kind("t", tcp.as_fd(), Kind::TcpListener).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    check_kind("u", udp.as_fd(), Kind::UdpSocket).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unix = UnixListener::bind(dir.path().join("s")).unwrap();
    check_kind("x", unix.as_fd(), Kind::UnixListener).unwrap();
}

#[test]
fn type_checks_reject_the_wrong_socket() {
    let tcp = tcp_listener();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unix = UnixListener::bind(dir.path().join("s")).unwrap();
    let unix_dgram = UnixDatagram::unbound().unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();

    let cases: [(BorrowedFd<'_>, Kind, &str); 6] = [
        (udp.as_fd(), Kind::TcpListener, "a UDP socket"),
        (stream.as_fd(), Kind::TcpListener, "a TCP stream socket (not listening)"),
        (unix.as_fd(), Kind::TcpListener, "a unix listener"),
        (tcp.as_fd(), Kind::UnixListener, "a TCP listener"),
        (unix_dgram.as_fd(), Kind::UdpSocket, "a unix datagram socket"),
        (file.as_fd(), Kind::UdpSocket, "not a socket"),
    ];
    for (fd, kind, found_text) in cases {
        let err = check_kind("n", fd, kind).unwrap_err();
        match &err {
            Error::WrongType { name, found, .. } => {
                assert_eq!(name, "n");
                assert_eq!(found, found_text);
            }
            other => panic!("unexpected error {other}"),
        }
    }
}

#[test]
fn inherited_take_leaves_a_rejected_fd_in_place() {
    let mut inherited = Inherited::default();
    inherited.push(
        "http".to_owned(),
        OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap()),
        Origin::Systemd,
    );
    let err = inherited.take_checked("http", |fd| check_kind("http", fd, Kind::TcpListener)).unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }));
    assert_eq!(inherited.len(), 1);
    let fd = inherited.take_checked("http", |fd| check_kind("http", fd, Kind::UdpSocket)).unwrap();
    assert!(fd.is_some());
    assert!(inherited.take_checked("http", |_| Ok(())).unwrap().is_none());
}
