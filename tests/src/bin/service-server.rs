//! Fixture: a service on `lifeline::service` with every kind of listener, a pid file and knobs to
//! make the *next* process misbehave, for the commit-protocol tests.
//!
//! ```text
//! service-server --state-dir DIR --control SOCKET --cert FILE --key FILE --mode-file FILE
//!                [--pid-file FILE] [--unix PATH] [--udp] [--drain-ms N] [--ready-timeout-ms N]
//!                [--fd-store] [--rollback-window-ms N] [--max-retired N] [--exe-watch]
//!                [--ready-fd N]
//! ```
//!
//! HTTPS on 127.0.0.1 (`GET /` answers `pid=<pid> generation=<g> served=<n>`); with `--unix`, the
//! same over plain HTTP on a unix socket; with `--udp`, a UDP echo of `pid=<pid>`. The mode file is
//! read at start-up: `fail-at=<step>` (sets `LIFELINE_FAIL_AT`, so this process fails at that
//! start-up step if it is a successor), `state-version=<n>` (reads state of version n), `hang`
//! (never becomes ready; writes `pid=<pid>` to `FILE.hung`), `crash-after-ready-ms=<n>` (aborts n
//! ms after it is ready), anything else: behave. `GET /delay?ms=N` answers after N ms. Prints
//! `ready pid=<pid> generation=<g> https=<addr> udp=<addr>` once ready, `exit pid=<pid> <how>` at
//! the end.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use lifeline::service::{Builder, ServiceState, http};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Served {
    served: u64,
}

impl ServiceState for Served {
    const VERSION: u32 = 1;
}

/// The same state under another version number, for a successor that cannot read it.
#[derive(Serialize, Deserialize)]
struct Served2 {
    served: u64,
}

impl ServiceState for Served2 {
    const VERSION: u32 = 2;
}

#[derive(Default)]
struct Args {
    state_dir: PathBuf,
    control: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    mode_file: PathBuf,
    pid_file: Option<PathBuf>,
    unix: Option<PathBuf>,
    udp: bool,
    drain_ms: Option<u64>,
    ready_timeout_ms: Option<u64>,
    fd_store: bool,
    rollback_window_ms: Option<u64>,
    max_retired: Option<usize>,
    exe_watch: bool,
    ready_fd: Option<i32>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--state-dir" => args.state_dir = value()?.into(),
            "--control" => args.control = value()?.into(),
            "--cert" => args.cert = value()?.into(),
            "--key" => args.key = value()?.into(),
            "--mode-file" => args.mode_file = value()?.into(),
            "--pid-file" => args.pid_file = Some(value()?.into()),
            "--unix" => args.unix = Some(value()?.into()),
            "--udp" => args.udp = true,
            "--fd-store" => args.fd_store = true,
            "--rollback-window-ms" => args.rollback_window_ms = Some(value()?.parse()?),
            "--max-retired" => args.max_retired = Some(value()?.parse()?),
            "--exe-watch" => args.exe_watch = true,
            "--ready-fd" => args.ready_fd = Some(value()?.parse()?),
            "--drain-ms" => args.drain_ms = Some(value()?.parse()?),
            "--ready-timeout-ms" => args.ready_timeout_ms = Some(value()?.parse()?),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("service-server: {err:#}");
            return ExitCode::from(2);
        }
    };
    let mode = std::fs::read_to_string(&args.mode_file).unwrap_or_default().trim().to_owned();
    if let Some(step) = mode.strip_prefix("fail-at=") {
        // SAFETY: no other thread exists yet (the runtime starts below), so nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var("LIFELINE_FAIL_AT", step) };
    }
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let result = match runtime {
        Ok(runtime) => match mode.strip_prefix("state-version=") {
            Some("2") => runtime.block_on(run::<Served2>(args, &mode)),
            _ => runtime.block_on(run::<Served>(args, &mode)),
        },
        Err(err) => Err(err.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("service-server: {err:#}");
            ExitCode::from(
                if err
                    .downcast_ref::<lifeline::service::Error>()
                    .is_some_and(lifeline::service::Error::is_locked)
                {
                    75
                } else {
                    1
                },
            )
        }
    }
}

/// The state's served count, whatever its version.
trait Count: ServiceState {
    fn count(&self) -> u64;
    fn of(served: u64) -> Self;
}

impl Count for Served {
    fn count(&self) -> u64 {
        self.served
    }
    fn of(served: u64) -> Self {
        Served { served }
    }
}

impl Count for Served2 {
    fn count(&self) -> u64 {
        self.served
    }
    fn of(served: u64) -> Self {
        Served2 { served }
    }
}

/// The builder as the arguments say.
fn builder(args: &Args) -> anyhow::Result<Builder> {
    let mut builder = Builder::new()
        .state_dir(&args.state_dir)
        .tcp("https", "127.0.0.1:0".parse()?)
        .tls(&args.cert, &args.key)
        .control_socket(&args.control)
        .fd_store(args.fd_store);
    if let Some(path) = &args.pid_file {
        builder = builder.pid_file(path);
    }
    if let Some(path) = &args.unix {
        builder = builder.unix("plain", path);
    }
    if args.udp {
        builder = builder.udp("echo", "127.0.0.1:0".parse()?);
    }
    if let Some(ms) = args.drain_ms {
        builder = builder.drain_timeout(std::time::Duration::from_millis(ms));
    }
    if let Some(ms) = args.ready_timeout_ms {
        builder = builder.ready_timeout(std::time::Duration::from_millis(ms));
    }
    if let Some(ms) = args.rollback_window_ms {
        builder = builder.rollback_window(std::time::Duration::from_millis(ms));
    }
    if let Some(limit) = args.max_retired {
        builder = builder.max_retired(limit);
    }
    if let Some(fd) = args.ready_fd {
        builder = builder.ready_fd(fd);
    }
    builder = builder.restart_on_exe_change(args.exe_watch);
    Ok(builder)
}

async fn run<S: Count>(args: Args, mode: &str) -> anyhow::Result<()> {
    let mut starting = builder(&args)?.start::<S>().await?;
    if mode == "hang" {
        let mut record = args.mode_file.clone().into_os_string();
        record.push(".hung");
        std::fs::write(record, format!("pid={}\n", std::process::id()))?;
        std::future::pending::<()>().await;
    }
    let served = Arc::new(AtomicU64::new(starting.take_state().map_or(0, |s| s.count())));
    let generation = starting.generation();
    let https = starting.tcp("https")?;
    let tls = starting.tls_acceptor().context("no TLS")?;
    let plain = args.unix.as_ref().map(|_| starting.unix("plain")).transpose()?;
    let udp = if args.udp { Some(starting.udp("echo")?) } else { None };
    let snapshot = served.clone();
    let running = starting.ready(move || S::of(snapshot.load(Ordering::SeqCst))).await?;

    let pid = std::process::id();
    let udp_addr = udp.as_ref().map(tokio::net::UdpSocket::local_addr).transpose()?;
    println!(
        "ready pid={pid} generation={generation} https={} udp={}",
        https.local_addr()?,
        udp_addr.map_or_else(|| "-".to_owned(), |a| a.to_string())
    );
    if let Some(ms) = mode.strip_prefix("crash-after-ready-ms=") {
        let ms: u64 = ms.parse()?;
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            eprintln!("service-server: crashing as the mode file says");
            std::process::abort();
        });
    }
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let served = served.clone();
        let delay = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|ms| ms.parse().ok())
            .filter(|_| req.uri().path() == "/delay")
            .map(std::time::Duration::from_millis);
        async move {
            if let Some(delay) = delay {
                // The test waits for this line: the request is in progress here.
                println!("delay pid={} ms={}", std::process::id(), delay.as_millis());
                tokio::time::sleep(delay).await;
            }
            let n = served.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "pid={} generation={generation} served={n}\n",
                std::process::id()
            )))))
        }
    });
    if let Some(udp) = udp {
        let running = running.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    _ = running.stopped() => return,
                    received = udp.recv_from(&mut buf) => if let Ok((_, from)) = received {
                        let _ = udp.send_to(format!("pid={}", std::process::id()).as_bytes(), from).await;
                    },
                }
            }
        });
    }
    match plain {
        Some(unix) => {
            let on_unix = serve_unix(&running, unix, service.clone());
            let (stop, ()) = tokio::join!(http::serve_tls(&running, https, tls, service), on_unix);
            let _ = stop;
        }
        None => {
            http::serve_tls(&running, https, tls, service).await;
        }
    }
    let finished = running.drain().await;
    println!("exit pid={pid} {} drained={:?}", finished.reason, finished.drained);
    Ok(())
}

/// Plain HTTP/1.1 on the unix listener until the service stops.
async fn serve_unix<S>(running: &lifeline::service::Running, listener: tokio::net::UnixListener, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let connections = running.connections();
    let stopped = running.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                let service = service.clone();
                connections.spawn(stream, move |io| async move {
                    let io = hyper_util::rt::TokioIo::new(io);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            },
        }
    }
}
