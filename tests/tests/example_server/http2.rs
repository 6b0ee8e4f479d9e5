//! HTTP/2 across restarts: clients multiplexing streams on long-lived connections. The old
//! process sends GOAWAY (graceful: the client learns which streams were processed) once its
//! patience runs out, the clients open new connections to the new process as every HTTP/2 client
//! does, and no stream fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lifeline_tests::load::parse_answer;
use rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

use crate::support::{Options, is_dead};

/// What a worker saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Streams the server refused with GOAWAY before processing them: every HTTP/2 client
    /// retries those on a new connection (RFC 9113 §6.8).
    refused: AtomicU64,
    connections: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

/// Whether the request was never processed: refused by the server's GOAWAY, or never sent because
/// the connection was closing (hyper's `Canceled`). Both are what HTTP/2 clients retry on a new
/// connection (hyper-util's client does so by default).
fn refused_by_goaway(err: &hyper::Error) -> bool {
    if err.is_canceled() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

async fn worker(
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    stop: CancellationToken,
    tally: Arc<Tally>,
) {
    'connect: while !stop.is_cancelled() {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream = tls.connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the server negotiates HTTP/2");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2");
        tokio::spawn(conn);
        tally.connections.fetch_add(1, Ordering::Relaxed);
        while !stop.is_cancelled() {
            // Ready fails once the server said GOAWAY: a new connection, as any client would.
            if sender.ready().await.is_err() {
                continue 'connect;
            }
            let request = hyper::Request::get("https://localhost/").body(Empty::<Bytes>::new()).unwrap();
            let outcome = match sender.send_request(request).await {
                Ok(response) => match response.into_body().collect().await {
                    Ok(body) => Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned()),
                    Err(err) => Err(format!("body: {err}")),
                },
                Err(err) if refused_by_goaway(&err) => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    continue 'connect;
                }
                Err(err) => Err(format!("request: {err:?}")),
            };
            match outcome {
                Ok(body) if parse_answer(&body).is_some() => drop(tally.ok.fetch_add(1, Ordering::Relaxed)),
                Ok(body) => tally.failures.lock().unwrap().push(format!("unexpected answer {body:?}")),
                Err(err) => tally.failures.lock().unwrap().push(err),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_follow_ten_restarts_through_goaway_and_no_stream_fails() {
    // A 2 s drain: busy HTTP/2 connections get GOAWAY after 1 s (half of it).
    let mut server = Options::new().arg("--drain-timeout").arg("2s").start();
    let mut roots = rustls::RootCertStore::empty();
    for root in server.pki().roots() {
        roots.add(root).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stop = CancellationToken::new();
    let tally = Arc::new(Tally::default());
    // Several workers share nothing: each has its own connection, several streams in flight
    // across the workers.
    let workers: Vec<_> =
        (0..4).map(|_| tokio::spawn(worker(server.addr, tls.clone(), stop.clone(), tally.clone()))).collect();
    let wait_ok = |n: u64| {
        let tally = tally.clone();
        async move {
            let target = tally.ok.load(Ordering::Relaxed) + n;
            lifeline_tests::wait_until("more answers", || tally.ok.load(Ordering::Relaxed) >= target).await;
        }
    };
    wait_ok(50).await;
    for _ in 0..10 {
        let old = server.pid;
        server.restart().unwrap();
        // The old process leaves only when its busy HTTP/2 connections have moved on.
        lifeline_tests::wait_until("the old process to exit", || is_dead(old)).await;
        wait_ok(20).await;
    }
    stop.cancel();
    for worker in workers {
        worker.await.unwrap();
    }
    let failures = tally.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} streams failed: {failures:#?}", failures.len());
    assert!(
        tally.connections.load(Ordering::Relaxed) >= 4 * 10,
        "the clients did not move to each new process: {} connections",
        tally.connections.load(Ordering::Relaxed)
    );
}
