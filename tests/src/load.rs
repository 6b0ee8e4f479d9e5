//! A non-retrying HTTPS load generator: the client side of "zero failed requests".
//!
//! Each worker sends `GET` requests back to back, over keep-alive connections or a new connection
//! per request. A request that was sent and did not get a complete response is a failure and is
//! never retried; a worker only opens a new connection when the server ended the previous one
//! with `Connection: close` (or a failure). That is how wrk behaves, and why a server that closes
//! idle keep-alive connections at once during a restart loses requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// How the load is driven.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server's address.
    pub addr: SocketAddr,
    /// The name to verify the server's certificate against.
    pub server_name: String,
    /// The CA certificate(s) to trust, DER.
    pub roots: Vec<CertificateDer<'static>>,
    /// Concurrent workers.
    pub workers: usize,
    /// Reuse connections (HTTP/1.1 keep-alive) or open one per request.
    pub keep_alive: bool,
    /// The request path, e.g. `/`.
    pub path: String,
    /// Pause between requests of one worker (`Duration::ZERO`: back to back).
    pub pause: Duration,
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was started, since the load began.
    pub at: Duration,
    /// Time to the complete response (or to the failure).
    pub latency: Duration,
    /// The response body (one line) or the failure.
    pub outcome: Result<String, String>,
}

/// Live counters, readable while the load runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered with a complete 200 response.
    pub ok: AtomicU64,
    /// Requests that were sent and failed.
    pub failed: AtomicU64,
}

/// A running load; [`Load::stop`] ends it and returns every sample.
#[derive(Debug)]
pub struct Load {
    start: Instant,
    stop: CancellationToken,
    counters: Arc<Counters>,
    workers: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts the workers on the current tokio runtime.
    pub fn start(config: &LoadConfig) -> Load {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for cert in &config.roots {
            roots.add(cert.clone()).expect("valid CA certificate");
        }
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(tls));
        let stop = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let start = Instant::now();
        let workers = (0..config.workers)
            .map(|_| {
                tokio::spawn(worker(config.clone(), connector.clone(), stop.clone(), counters.clone(), start))
            })
            .collect();
        Load { start, stop, counters, workers }
    }

    /// The moment every [`Sample::at`] of this load counts from (taken in [`Load::start`]).
    pub fn origin(&self) -> Instant {
        self.start
    }

    /// The live counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Requests answered so far.
    pub fn ok(&self) -> u64 {
        self.counters.ok.load(Ordering::Relaxed)
    }

    /// Requests failed so far.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more requests have succeeded (proof the server is serving).
    pub async fn wait_for_more(&self, n: u64) {
        let target = self.ok() + n;
        let deadline = Instant::now() + crate::PATIENCE;
        while self.ok() < target {
            assert!(
                Instant::now() < deadline,
                "load: fewer than {n} requests succeeded in {:?}",
                crate::PATIENCE
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops the workers (each finishes its current request) and returns all samples, by time.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        let mut all = Vec::new();
        for worker in self.workers {
            all.extend(worker.await.expect("load worker panicked"));
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn worker(
    config: LoadConfig,
    connector: TlsConnector,
    stop: CancellationToken,
    counters: Arc<Counters>,
    start: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut conn: Option<Sender> = None;
    while !stop.is_cancelled() {
        // A connection the server closed after its last response is not a failure: the request
        // below was never sent on it.
        if let Some(sender) = conn.as_mut()
            && (!config.keep_alive || sender.ready().await.is_err())
        {
            conn = None;
        }
        let began = Instant::now();
        let at = began - start;
        let outcome = request(&config, &connector, &mut conn).await;
        let latency = began.elapsed();
        if outcome.is_ok() {
            counters.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            conn = None;
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        samples.push(Sample { at, latency, outcome });
        if !config.pause.is_zero() {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(config.pause) => {}
            }
        }
    }
    samples
}

async fn request(
    config: &LoadConfig,
    connector: &TlsConnector,
    conn: &mut Option<Sender>,
) -> Result<String, String> {
    if conn.is_none() {
        *conn = Some(connect(config, connector).await?);
    }
    let sender = conn.as_mut().expect("connection just set");
    let req = hyper::Request::get(config.path.as_str())
        .header(hyper::header::HOST, config.server_name.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("build request: {e}"))?;
    let response = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    let body = String::from_utf8_lossy(&body).trim().to_owned();
    if status.is_success() { Ok(body) } else { Err(format!("status {status}: {body}")) }
}

async fn connect(config: &LoadConfig, connector: &TlsConnector) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(config.addr).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let name = ServerName::try_from(config.server_name.clone()).map_err(|e| format!("server name: {e}"))?;
    let tls = connector.connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("http: {e}"))?;
    tokio::spawn(async move {
        // Ends when the server closes the connection; errors show up on the next request.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Parses the example server's answer `pid=<pid> generation=<n> served=<count>`.
pub fn parse_answer(body: &str) -> Option<(u32, u64, u64)> {
    let mut pid = None;
    let mut generation = None;
    let mut served = None;
    for field in body.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        match key {
            "pid" => pid = value.parse().ok(),
            "generation" => generation = value.parse().ok(),
            "served" => served = value.parse().ok(),
            _ => {}
        }
    }
    Some((pid?, generation?, served?))
}
