//! The client against misbehaving servers, and the remaining ways binding or connecting fail.

use std::path::Path;

use restart_socket::wire::{self, PROTOCOL_VERSION, Request, Response};
use restart_socket::{Client, Error, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// A fake server that reads one request frame and answers with `answer` (raw bytes).
fn answer_once(path: &Path, answer: Vec<u8>) -> tokio::task::JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 4];
        conn.read_exact(&mut header).await.unwrap();
        let mut payload = vec![0; wire::payload_len(header).unwrap()];
        conn.read_exact(&mut payload).await.unwrap();
        conn.write_all(&answer).await.unwrap();
    })
}

/// Whether an error is the one a case expects.
type Expected = fn(&Error) -> bool;

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn bad_answers_from_a_server_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut other_version = postcard::to_stdvec(&(PROTOCOL_VERSION + 1)).unwrap();
    other_version.extend_from_slice(&wire::encode_response(&Response::RestartComplete { pid: 1 })[5..]);
    let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
        ("oversized", (1u32 << 20).to_le_bytes().to_vec(), |e| {
            matches!(e, Error::FrameTooLarge { len: 1_048_576, max: wire::MAX_FRAME_LEN })
        }),
        (
            "other version",
            frame(&other_version),
            |e| matches!(e, Error::UnsupportedVersion { got, expected: PROTOCOL_VERSION } if *got == PROTOCOL_VERSION + 1),
        ),
        ("garbage", frame(b"\x01\xff\xff"), |e| matches!(e, Error::Malformed { .. })),
        ("truncated", wire::encode_response(&Response::RestartComplete { pid: 1 })[..5].to_vec(), |e| {
            matches!(e, Error::Closed)
        }),
        ("wrong answer", wire::encode_response(&Response::RestartComplete { pid: 1 }), |e| {
            matches!(e, Error::UnexpectedResponse { request: "status", .. })
        }),
    ];
    for (i, (what, answer, expected)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.sock"));
        let server = answer_once(&path, answer);
        let err = Client::connect(&path).await.unwrap().status().await.unwrap_err();
        assert!(expected(&err), "{what}: {err:?}");
        server.await.unwrap();
    }
}

#[tokio::test]
async fn a_restart_answered_with_status_is_unexpected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let status = restart_socket::Status { pid: 1, generation: 1, started_at: 0, last_restart: None };
    let server = answer_once(&path, wire::encode_response(&Response::Status(status)));
    let err =
        Client::connect(&path).await.unwrap().restart(std::time::Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { request: "restart", .. }), "{err:?}");
    server.await.unwrap();
    assert_eq!(Request::Restart.name(), "restart");
}

#[test]
fn binding_in_a_missing_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("control.sock");
    let err = Server::bind(&path, ServerConfig::default()).unwrap_err();
    assert!(matches!(&err, Error::Bind { path: p, .. } if *p == path), "{err:?}");
}

#[test]
fn a_path_too_long_for_a_socket_fails_to_bind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x".repeat(120));
    let err = Server::bind(&path, ServerConfig::default()).unwrap_err();
    assert!(matches!(err, Error::Bind { .. }), "{err:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary file left");
}

#[tokio::test]
async fn a_datagram_socket_at_the_path_cannot_be_probed_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dgram.sock");
    let _dgram = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let err = Server::bind(&path, ServerConfig::default()).unwrap_err();
    assert!(matches!(&err, Error::Probe { path: p, .. } if *p == path), "{err:?}");
    assert!(path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    // A client gets a connect error that is not "no server".
    let err = Client::connect(&path).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

/// Timeouts too long for a deadline (`Duration::MAX`) mean "no timeout" on both sides: nothing
/// adds them to an `Instant` (tokio's `timeout` saturates), so nothing can overflow.
#[tokio::test]
async fn timeouts_too_long_for_an_instant_are_no_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let config = ServerConfig::default()
        .with_read_timeout(std::time::Duration::MAX)
        .with_write_timeout(std::time::Duration::MAX);
    let server = Server::bind(&path, config).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.serve(
        || async { Ok::<u32, String>(7) },
        || async { restart_socket::Status { pid: 1, generation: 1, started_at: 0, last_restart: None } },
        shutdown.clone(),
    ));
    let mut client = Client::connect(&path).await.unwrap();
    client.set_timeout(std::time::Duration::MAX);
    assert_eq!(client.status().await.unwrap().generation, 1);
    assert_eq!(client.restart(std::time::Duration::MAX).await.unwrap(), 7);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// The expected server uids can be narrowed: a server of our own uid is then refused too, before
/// anything is sent (it never sees a request).
#[tokio::test]
async fn a_server_outside_the_expected_uids_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.serve(
        || async { Err::<u32, String>("must not be asked".to_owned()) },
        || async { restart_socket::Status { pid: 1, generation: 1, started_at: 0, last_restart: None } },
        shutdown.clone(),
    ));
    let me = nix::unistd::geteuid().as_raw();
    let other = me.wrapping_add(4242);
    let config = restart_socket::ClientConfig::default().server_uid(other);
    let err = Client::connect_with(&path, &config).await.unwrap_err();
    assert!(matches!(err, Error::UntrustedServer { uid, .. } if uid == me), "{err:?}");
    // Our own uid, named: served.
    let config = restart_socket::ClientConfig::default().server_uid(me);
    assert_eq!(Client::connect_with(&path, &config).await.unwrap().status().await.unwrap().pid, 1);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
