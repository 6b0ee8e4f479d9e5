//! The server over real unix sockets in temp dirs: round trips, bad input, limits, restarts,
//! socket-file ownership, export and adoption.

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{PATIENCE, exchange_raw, fixed_status, frame, start, start_default, status_of};
use restart_socket::wire::{self, ErrorKind, MAX_FRAME_LEN, PROTOCOL_VERSION, Request, Response};
use restart_socket::{Client, Error, RESTART_IN_PROGRESS, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn status_round_trips_repeatedly_on_one_connection() {
    let generation = Arc::new(AtomicU32::new(1));
    let seen = Arc::clone(&generation);
    let server = start(
        ServerConfig::default(),
        || async { Ok::<u32, String>(1) },
        move || {
            let generation = seen.fetch_add(1, Ordering::SeqCst);
            async move { status_of(u64::from(generation)) }
        },
    );
    let mut client = Client::connect(&server.path).await.unwrap();
    for expected in 1..=3 {
        assert_eq!(client.status().await.unwrap(), status_of(expected));
    }
    server.stop().await;
}

#[tokio::test]
async fn restart_answers_the_new_pid() {
    let server = start_default();
    let mut client = Client::connect(&server.path).await.unwrap();
    assert_eq!(client.restart(PATIENCE).await.unwrap(), 4242);
    // The connection stays usable after a restart answer.
    assert_eq!(client.status().await.unwrap(), status_of(1));
    server.stop().await;
}

#[tokio::test]
async fn restart_failure_carries_the_handlers_reason() {
    let server = start(
        ServerConfig::default(),
        || async { Err::<u32, String>("handover not available".to_owned()) },
        fixed_status(),
    );
    let mut client = Client::connect(&server.path).await.unwrap();
    let err = client.restart(PATIENCE).await.unwrap_err();
    assert!(matches!(&err, Error::RestartFailed { reason } if reason == "handover not available"), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_restart_and_the_next_one_runs() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let server = start(
        ServerConfig::default(),
        move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n > 0, "first restart panics on purpose");
                Ok::<u32, String>(7)
            }
        },
        fixed_status(),
    );
    let mut client = Client::connect(&server.path).await.unwrap();
    let err = client.restart(PATIENCE).await.unwrap_err();
    assert!(matches!(&err, Error::RestartFailed { reason } if reason.contains("panicked")), "{err:?}");
    assert_eq!(client.restart(PATIENCE).await.unwrap(), 7);
    server.stop().await;
}

/// A restart handler that reports when it starts and finishes only when told to.
fn gated_handler() -> (impl restart_socket::RestartHandler, mpsc::UnboundedReceiver<oneshot::Sender<u32>>) {
    let (entered_tx, entered_rx) = mpsc::unbounded_channel::<oneshot::Sender<u32>>();
    let handler = move || {
        let entered = entered_tx.clone();
        async move {
            let (release_tx, release_rx) = oneshot::channel();
            entered.send(release_tx).map_err(|_| "test gone".to_owned())?;
            release_rx.await.map_err(|_| "released without a pid".to_owned())
        }
    };
    (handler, entered_rx)
}

#[tokio::test]
async fn a_concurrent_restart_is_refused_at_once() {
    let (handler, mut entered) = gated_handler();
    let server = start(ServerConfig::default(), handler, fixed_status());

    let path = server.path.clone();
    let first = tokio::spawn(async move { Client::connect(&path).await.unwrap().restart(PATIENCE).await });
    let release = tokio::time::timeout(PATIENCE, entered.recv()).await.unwrap().unwrap();

    // While the first restart runs, a second one (and a third) fails immediately.
    for _ in 0..2 {
        let mut second = Client::connect(&server.path).await.unwrap();
        let err = second.restart(PATIENCE).await.unwrap_err();
        assert!(matches!(&err, Error::RestartFailed { reason } if reason == RESTART_IN_PROGRESS), "{err:?}");
        // Status is still answered during a restart.
        assert_eq!(second.status().await.unwrap(), status_of(1));
    }

    release.send(99).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), 99);

    // Once it is over, restarts are accepted again.
    let path = server.path.clone();
    let next = tokio::spawn(async move { Client::connect(&path).await.unwrap().restart(PATIENCE).await });
    tokio::time::timeout(PATIENCE, entered.recv()).await.unwrap().unwrap().send(100).unwrap();
    assert_eq!(next.await.unwrap().unwrap(), 100);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_gives_up_does_not_cancel_the_restart() {
    let (handler, mut entered) = gated_handler();
    let server = start(ServerConfig::default(), handler, fixed_status());
    let mut client = Client::connect(&server.path).await.unwrap();
    let (err, release) = tokio::join!(client.restart(Duration::from_millis(50)), async {
        tokio::time::timeout(PATIENCE, entered.recv()).await.unwrap().unwrap()
    });
    assert!(matches!(err, Err(Error::Timeout { .. })), "{err:?}");
    drop(client);
    // The handler is still running: another restart is refused until it finishes.
    let mut other = Client::connect(&server.path).await.unwrap();
    let busy = other.restart(PATIENCE).await.unwrap_err();
    assert!(matches!(&busy, Error::RestartFailed { reason } if reason == RESTART_IN_PROGRESS), "{busy:?}");
    release.send(5).unwrap();
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_running_restart_answer() {
    let (handler, mut entered) = gated_handler();
    let server = start(ServerConfig::default(), handler, fixed_status());
    let path = server.path.clone();
    let asking = tokio::spawn(async move { Client::connect(&path).await.unwrap().restart(PATIENCE).await });
    let release = tokio::time::timeout(PATIENCE, entered.recv()).await.unwrap().unwrap();
    server.shutdown.cancel();
    release.send(31).unwrap();
    assert_eq!(asking.await.unwrap().unwrap(), 31);
    tokio::time::timeout(PATIENCE, server.task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_wrong_version_gets_an_error_and_a_closed_connection() {
    let server = start_default();
    for version in [0u32, 2, 300, u32::MAX] {
        let mut payload = postcard::to_stdvec(&version).unwrap();
        payload.push(1); // Request::Status
        let answers = exchange_raw(&server.path, &frame(&payload)).await;
        assert!(
            matches!(&answers[..], [Response::Error { kind: ErrorKind::UnsupportedVersion, message }] if message.contains(&version.to_string())),
            "{answers:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn each_kind_of_bad_frame_gets_an_error_or_a_closed_connection() {
    let server = start_default();
    let valid = wire::encode_request(Request::Status);
    let malformed =
        |answers: &[Response]| matches!(answers, [Response::Error { kind: ErrorKind::Malformed, .. }]);
    let too_large =
        |answers: &[Response]| matches!(answers, [Response::Error { kind: ErrorKind::FrameTooLarge, .. }]);

    // Undecodable payloads.
    assert!(malformed(&exchange_raw(&server.path, &frame(&[])).await), "empty payload");
    assert!(
        malformed(&exchange_raw(&server.path, &frame(&[PROTOCOL_VERSION as u8, 9])).await),
        "unknown request"
    );
    assert!(malformed(&exchange_raw(&server.path, &frame(b"\xff\xff\xff\xff\xff\xff")).await), "bad varint");
    let mut trailing = valid[4..].to_vec();
    trailing.push(0);
    assert!(malformed(&exchange_raw(&server.path, &frame(&trailing)).await), "trailing bytes");

    // Oversized: refused from the header alone, with nothing else sent.
    for len in [MAX_FRAME_LEN as u32 + 1, u32::MAX] {
        assert!(too_large(&exchange_raw(&server.path, &len.to_le_bytes()).await), "length {len}");
    }
    // Exactly at the limit is read (and then found undecodable).
    let at_limit = vec![0xAB; MAX_FRAME_LEN];
    assert!(malformed(&exchange_raw(&server.path, &frame(&at_limit)).await), "frame at the limit");

    // Truncated header or payload: the connection is simply closed.
    assert_eq!(exchange_raw(&server.path, &valid[..2]).await, []);
    assert_eq!(exchange_raw(&server.path, &valid[..valid.len() - 1]).await, []);
    // A good request followed by garbage: the first is answered, then the error.
    let mut both = valid.clone();
    both.extend_from_slice(&frame(b"\x01garbage"));
    let answers = exchange_raw(&server.path, &both).await;
    assert!(
        matches!(&answers[..], [Response::Status(_), Response::Error { kind: ErrorKind::Malformed, .. }]),
        "{answers:?}"
    );

    // And the server still answers good clients.
    assert_eq!(Client::connect(&server.path).await.unwrap().status().await.unwrap(), status_of(1));
    server.stop().await;
}

#[tokio::test]
async fn a_slow_client_does_not_block_others() {
    // Far longer than PATIENCE: if the slow client held the server up, the good one would fail.
    let config = ServerConfig::default().with_read_timeout(PATIENCE * 3);
    let server = start(config, || async { Ok::<u32, String>(1) }, fixed_status());
    let mut stuck_in_header = UnixStream::connect(&server.path).await.unwrap();
    stuck_in_header.write_all(&[3, 0]).await.unwrap();
    let mut stuck_in_payload = UnixStream::connect(&server.path).await.unwrap();
    stuck_in_payload.write_all(&[200, 0, 0, 0, 1, 2, 3]).await.unwrap();
    let idle = UnixStream::connect(&server.path).await.unwrap();

    let mut good = Client::connect(&server.path).await.unwrap();
    good.set_timeout(PATIENCE);
    assert_eq!(good.status().await.unwrap(), status_of(1));
    assert_eq!(good.restart(PATIENCE).await.unwrap(), 1);
    drop((stuck_in_header, stuck_in_payload, idle));
    server.stop().await;
}

#[tokio::test]
async fn slow_clients_are_timed_out_with_an_error_frame() {
    let config = ServerConfig::default().with_read_timeout(Duration::from_millis(300));
    let server = start(config, || async { Ok::<u32, String>(1) }, fixed_status());
    // Half a header, then nothing.
    let mut slow = UnixStream::connect(&server.path).await.unwrap();
    slow.write_all(&[3, 0]).await.unwrap();
    // A byte-at-a-time client that keeps sending but never completes its frame in time.
    let mut trickle = UnixStream::connect(&server.path).await.unwrap();
    trickle.write_all(&[200, 0, 0, 0]).await.unwrap();
    let trickling = tokio::spawn(async move {
        let (mut rd, mut wr) = trickle.split();
        // The interval paces the trickle (one byte per tick); it synchronises nothing: the loop
        // ends when the server closes the connection.
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let (mut answer, mut buf, mut writing) = (Vec::new(), [0u8; 256], true);
        loop {
            tokio::select! {
                _ = tick.tick(), if writing => writing = wr.write_all(&[1]).await.is_ok(),
                read = rd.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
            }
        }
        answer
    });

    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, slow.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answers = common::parse_frames(&answer);
    assert!(matches!(&answers[..], [Response::Error { kind: ErrorKind::Timeout, .. }]), "{answers:?}");
    let trickled = tokio::time::timeout(PATIENCE, trickling).await.unwrap().unwrap();
    let answers = common::parse_frames(&trickled);
    assert!(matches!(&answers[..], [Response::Error { kind: ErrorKind::Timeout, .. }]), "{answers:?}");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_told_busy() {
    let config = ServerConfig::default().with_max_connections(2);
    let server = start(config, || async { Ok::<u32, String>(1) }, fixed_status());
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(&server.path).await.unwrap();
        client.status().await.unwrap(); // admitted and served: it holds a slot
        held.push(client);
    }
    let mut third = Client::connect(&server.path).await.unwrap();
    let err = third.status().await.unwrap_err();
    assert!(
        matches!(&err, Error::Refused { kind: ErrorKind::Busy, message } if message.contains("limit 2")),
        "{err:?}"
    );

    // Closing one frees its slot (once the server has seen the EOF).
    held.pop();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match Client::connect(&server.path).await.unwrap().status().await {
            Ok(status) => break assert_eq!(status, status_of(1)),
            Err(Error::Refused { kind: ErrorKind::Busy, .. }) if tokio::time::Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            Err(err) => panic!("{err:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_socket_file_is_created_with_mode_0600() {
    let server = start_default();
    let meta = std::fs::symlink_metadata(&server.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    // No temporary file is left beside it.
    let names: Vec<_> =
        std::fs::read_dir(server.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["control.sock"]);
    server.stop().await;
}

#[tokio::test]
async fn a_stale_socket_of_a_dead_server_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves the file, nobody listens
    let stale_ino = std::fs::symlink_metadata(&path).unwrap().ino();
    assert!(matches!(Client::connect(&path).await, Err(Error::NoServer { .. })));

    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_ne!(meta.ino(), stale_ino, "a new socket file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let shutdown = CancellationToken::new();
    let task =
        tokio::spawn(server.serve(|| async { Ok::<u32, String>(1) }, fixed_status(), shutdown.clone()));
    assert_eq!(Client::connect(&path).await.unwrap().status().await.unwrap(), status_of(1));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_live_socket_is_never_stolen() {
    // Someone else's listener (not even a restart-socket server).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let ino = std::fs::symlink_metadata(&path).unwrap().ino();
    let err = Server::bind(&path, ServerConfig::default()).unwrap_err();
    assert!(matches!(&err, Error::InUse { path: p } if *p == path), "{err:?}");
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino, "the file is untouched");
    live.set_nonblocking(true).unwrap();
    live.accept().expect("the probe reached the live listener, which still owns the path");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");

    // A running restart-socket server.
    let server = start_default();
    let err = Server::bind(&server.path, ServerConfig::default()).unwrap_err();
    assert!(matches!(err, Error::InUse { .. }), "{err:?}");
    assert_eq!(Client::connect(&server.path).await.unwrap().status().await.unwrap(), status_of(1));
    server.stop().await;
}

#[tokio::test]
async fn a_path_that_is_not_a_socket_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "precious").unwrap();
    let subdir = dir.path().join("dir");
    std::fs::create_dir(&subdir).unwrap();
    // A symlink to a stale socket: not followed, not replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&stale, &link).unwrap();

    for path in [&file, &subdir, &link] {
        let err = Server::bind(path, ServerConfig::default()).unwrap_err();
        assert!(matches!(&err, Error::NotASocket { path: p } if p == path), "{err:?}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    assert!(subdir.is_dir());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4, "nothing added or removed");
}

#[tokio::test]
async fn clean_shutdown_removes_the_socket_file() {
    let server = start_default();
    let path = server.path.clone();
    let _dir = server.stop().await;
    assert!(!path.exists());
}

#[tokio::test]
async fn dropping_an_unserved_server_removes_the_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let server = Server::bind(&path, ServerConfig::default()).unwrap();
    assert!(path.exists());
    drop(server);
    assert!(!path.exists());
}

#[tokio::test]
async fn a_socket_file_replaced_by_someone_else_is_not_removed() {
    let server = start_default();
    let path = server.path.clone();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "someone else's").unwrap();
    let _dir = server.stop().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
}

#[tokio::test]
async fn an_exported_listener_is_adopted_and_the_path_never_disappears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let old = Server::bind(&path, ServerConfig::default()).unwrap();
    let handle = old.listener();
    let old_shutdown = CancellationToken::new();
    let old_task = tokio::spawn(old.serve(
        || async { Ok::<u32, String>(1) },
        || async { status_of(1) },
        old_shutdown.clone(),
    ));

    let fd: OwnedFd = handle.export().unwrap();
    assert!(handle.is_handed_on());
    let new = Server::adopt(fd, &path, ServerConfig::default()).unwrap();
    new.listener().claim();
    old_shutdown.cancel();
    old_task.await.unwrap().unwrap();
    assert!(path.exists(), "the exporting server left the socket file");

    let new_shutdown = CancellationToken::new();
    let new_task = tokio::spawn(new.serve(
        || async { Ok::<u32, String>(2) },
        || async { status_of(2) },
        new_shutdown.clone(),
    ));
    assert_eq!(Client::connect(&path).await.unwrap().status().await.unwrap(), status_of(2));
    new_shutdown.cancel();
    new_task.await.unwrap().unwrap();
    assert!(!path.exists(), "the adopting server owns and removes the file");
}

#[tokio::test]
async fn a_reclaimed_listener_removes_its_file_again() {
    let server = start_default();
    let dir_path = server.path.clone();
    // Export for a handover that then fails.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("x.sock");
    let probe = Server::bind(&other, ServerConfig::default()).unwrap();
    let handle = probe.listener();
    drop(handle.export().unwrap());
    handle.reclaim();
    assert!(!handle.is_handed_on());
    drop(probe);
    drop(handle);
    assert!(!other.exists());
    let _dir = server.stop().await;
    assert!(!dir_path.exists());
}

#[tokio::test]
async fn adopting_something_that_is_not_a_listening_unix_stream_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let file = std::fs::File::create(dir.path().join("file")).unwrap();
    let datagram = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let candidates: [(&str, OwnedFd); 4] = [
        ("file", file.into()),
        ("datagram", datagram.into()),
        ("stream", stream.into()),
        ("tcp", tcp.into()),
    ];
    for (what, fd) in candidates {
        let err = Server::adopt(fd, &path, ServerConfig::default()).unwrap_err();
        assert!(matches!(err, Error::NotAListener { .. }), "{what}: {err:?}");
    }
}

#[tokio::test]
async fn a_missing_or_dead_socket_is_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let err = Client::connect(&missing).await.unwrap_err();
    assert!(err.is_no_server(), "{err:?}");
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let err = Client::connect(&dead).await.unwrap_err();
    assert!(err.is_no_server(), "{err:?}");
}

#[tokio::test]
async fn a_server_that_closes_without_answering_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mute.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let mute = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 4];
        conn.read_exact(&mut header).await.unwrap();
        // Closes without answering.
    });
    let err = Client::connect(&path).await.unwrap().status().await.unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
    mute.await.unwrap();
}

#[test]
fn catching_sigusr1_outside_a_runtime_is_an_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let err = Server::bind(&path, ServerConfig::default().with_restart_on_sigusr1(true)).unwrap_err();
    assert!(matches!(&err, Error::Signal { .. }), "{err:?}");
    assert!(!path.exists());
}

#[tokio::test]
async fn a_successor_that_fails_before_claiming_leaves_the_predecessors_socket_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let old = Server::bind(&path, ServerConfig::default()).unwrap();
    let handle = old.listener();
    let old_shutdown = CancellationToken::new();
    let old_task = tokio::spawn(old.serve(
        || async { Ok::<u32, String>(1) },
        || async { status_of(1) },
        old_shutdown.clone(),
    ));
    // A handover begins: the listener is exported and adopted by a successor...
    let fd: OwnedFd = handle.export().unwrap();
    let successor = Server::adopt(fd, &path, ServerConfig::default()).unwrap();
    assert!(!successor.listener().is_claimed());
    // ... which fails before it has taken over (dropped unserved, or served and stopped).
    drop(successor);
    handle.reclaim();
    assert!(path.exists(), "a failed successor removed its predecessor's socket file");
    assert_eq!(Client::connect(&path).await.unwrap().status().await.unwrap(), status_of(1));

    let fd: OwnedFd = handle.export().unwrap();
    let successor = Server::adopt(fd, &path, ServerConfig::default()).unwrap();
    let stop = CancellationToken::new();
    stop.cancel();
    successor.serve(|| async { Ok::<u32, String>(2) }, || async { status_of(2) }, stop).await.unwrap();
    handle.reclaim();
    assert!(path.exists(), "a successor that served without claiming removed the socket file");
    assert_eq!(Client::connect(&path).await.unwrap().status().await.unwrap(), status_of(1));

    old_shutdown.cancel();
    old_task.await.unwrap().unwrap();
    assert!(!path.exists(), "the predecessor owns the file again and removes it");
}
