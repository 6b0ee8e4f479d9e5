//! Helper of `bench-service` (not a benchmark: run alone, or with only `--quick`, it exits 0 and
//! prints nothing): one HTTPS server — same handler, same TLS settings, same runtime — built two
//! ways, so that the only difference between them is what lifeline adds.
//!
//! - `--bare --listen ADDR --cert FILE --key FILE`: hyper-util's auto builder (HTTP/1.1 and
//!   HTTP/2) over tokio-rustls with a static `with_single_cert` config, one `tokio::spawn` per
//!   connection. What a hand-written hyper server does; it stops on SIGTERM at once.
//! - `--service --listen ADDR --cert FILE --key FILE --state-dir DIR --control PATH`:
//!   `lifeline::service` — the state directory locked, the control socket, certwatch's
//!   resolver (`Builder::tls`), connection tracking and the drain (`http::serve_tls`), the served
//!   count passed to each successor. `restart` on the control socket starts a successor.
//! - `--floor`: writes one byte on stdout and exits (the floor of a restart: spawn + one
//!   readiness byte).
//!
//! Both servers print `bench-service-server: pid=<pid> generation=<g> listening on <addr>` once
//! serving, and answer every request with `pid=<pid> served=<n>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use lifeline::service::{Builder, ServiceState, http};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// What passes to a successor: the restart carries a state, as a real service's does.
#[derive(Serialize, Deserialize)]
struct Served {
    served: u64,
}

impl ServiceState for Served {
    const VERSION: u32 = 1;
}

/// The command line: a mode and `--flag value` pairs.
struct Args(Vec<String>);

impl Args {
    fn value(&self, flag: &str) -> anyhow::Result<&str> {
        let at = self.0.iter().position(|a| a == flag).with_context(|| format!("{flag} is required"))?;
        self.0.get(at + 1).map(String::as_str).with_context(|| format!("{flag} needs a value"))
    }

    fn path(&self, flag: &str) -> anyhow::Result<PathBuf> {
        self.value(flag).map(PathBuf::from)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args(std::env::args().skip(1).filter(|a| a != "--quick").collect());
    let Some(mode) = args.0.first().cloned() else { return Ok(()) };
    if mode == "--floor" {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        out.write_all(b"R")?;
        return Ok(out.flush()?);
    }
    // The application picks the crypto provider (lifeline never does); both servers use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The examples' runtime: two workers, the machine's cores.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match mode.as_str() {
        "--bare" => runtime.block_on(bare(&args)),
        "--service" => runtime.block_on(service(&args)),
        other => bail!("unknown mode {other}"),
    }
}

/// The one handler both servers run.
fn hello(served: &AtomicU64) -> Response<Full<Bytes>> {
    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
    Response::new(Full::new(Bytes::from(format!("pid={} served={n}\n", std::process::id()))))
}

fn announce(generation: u64, addr: SocketAddr) {
    println!("bench-service-server: pid={} generation={generation} listening on {addr}", std::process::id());
}

/// The baseline: no connection tracking, no resolver, no drain.
async fn bare(args: &Args) -> anyhow::Result<()> {
    let certs = CertificateDer::pem_file_iter(args.path("--cert")?)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(args.path("--key")?)?;
    // What `Builder::tls` configures, with a fixed certificate instead of certwatch's resolver.
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(args.value("--listen")?.parse::<SocketAddr>()?).await?;
    announce(0, listener.local_addr()?);
    let served = Arc::new(AtomicU64::new(0));
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("bench-service-server: accept: {err}");
                continue;
            }
        };
        // As `http::serve_tls` does: the socket options are not what the figure is about.
        let _ = stream.set_nodelay(true);
        let (acceptor, builder, served) = (acceptor.clone(), builder.clone(), served.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let served = served.clone();
                async move { Ok::<_, Infallible>(hello(&served)) }
            });
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

/// The figure: the same server through `lifeline::service`.
async fn service(args: &Args) -> anyhow::Result<()> {
    let mut starting = Builder::new()
        .state_dir(args.path("--state-dir")?)
        .tcp("https", args.value("--listen")?.parse()?)
        .tls(args.path("--cert")?, args.path("--key")?)
        .control_socket(args.path("--control")?)
        .start::<Served>()
        .await?;
    let served = Arc::new(AtomicU64::new(starting.take_state().map_or(0, |s| s.served)));
    let generation = starting.generation();
    let listener = starting.tcp("https")?;
    let acceptor = starting.tls_acceptor().context("TLS is not configured")?;
    let running = starting
        .ready({
            let served = served.clone();
            move || Served { served: served.load(Ordering::Relaxed) }
        })
        .await?;
    announce(generation, listener.local_addr()?);
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let served = served.clone();
        async move { Ok::<_, Infallible>(hello(&served)) }
    });
    http::serve_tls(&running, listener, acceptor, service).await;
    running.drain().await;
    Ok(())
}
