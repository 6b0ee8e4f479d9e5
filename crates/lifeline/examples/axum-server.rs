//! An axum application with zero-downtime restarts, TLS that follows its files, a locked state
//! directory and a control socket — all of it.
//!
//! ```text
//! axum-server --listen ADDR --cert FILE --key FILE --state-dir DIR --control SOCKET
//! lifeline restart --socket SOCKET     # a new process takes over; no request fails
//! ```
//!
//! `GET /` answers `pid=<pid> generation=<n> served=<count>`; the count survives restarts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use anyhow::Context as _;
use axum::{Router, extract::State, routing::get};
use clap::Parser;
use lifeline::service::{Builder, ServiceState, http};
use serde::{Deserialize, Serialize};

/// Command-line arguments.
#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long)]
    control: PathBuf,
}

/// What a successor continues from.
#[derive(Serialize, Deserialize)]
struct Hits {
    served: u64,
}

impl ServiceState for Hits {
    const VERSION: u32 = 1;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let mut starting = Builder::new()
        .state_dir(args.state_dir)
        .tcp("https", args.listen)
        .tls(args.cert, args.key)
        .control_socket(args.control)
        .start::<Hits>()
        .await?;
    let hits = Arc::new(AtomicU64::new(starting.take_state().map_or(0, |h| h.served)));
    let (listener, generation) = (starting.tcp("https")?, starting.generation());
    let tls = starting.tls_acceptor().context("no TLS")?;
    let snapshot = hits.clone();
    let running = starting.ready(move || Hits { served: snapshot.load(SeqCst) }).await?;

    let pid = std::process::id();
    println!("axum-server: pid={pid} generation={generation} listening on {}", listener.local_addr()?);
    let app = Router::new().route("/", get(hello)).with_state((hits, generation));
    http::serve_tls(&running, listener, tls, http::TowerToHyperService::new(app)).await;
    running.drain().await;
    Ok(())
}

async fn hello(State((hits, generation)): State<(Arc<AtomicU64>, u64)>) -> String {
    let served = hits.fetch_add(1, SeqCst) + 1;
    format!("pid={} generation={generation} served={served}\n", std::process::id())
}
