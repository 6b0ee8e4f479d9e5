//! Fixture for the restart-socket tests: a tiny service that serves the restart socket and whose
//! restart handler hands the listening fd to a new copy of itself across `execve`.
//!
//! `restart-socket-service --socket PATH [--generation N] [--fail REASON] [--gate] [--sigusr1]
//! [--successor-crashes]`
//!
//! - Prints `ready pid=P generation=N` once serving, `restart-begun pid=P` when its handler
//!   starts, and `stopped pid=P generation=N` after a clean shutdown (SIGTERM, or after handing
//!   over). Errors go to stderr; exit status 1.
//! - `--fail REASON`: the handler fails with REASON. `--gate`: the handler waits for a line on
//!   stdin before handing over. `--sigusr1`: SIGUSR1 restarts too. `--successor-crashes`: the
//!   successor exits before it is ready (the handler then reclaims the listener and fails).
//! - A successor finds its inherited listener in `RESTART_SOCKET_FD`, a readiness pipe in
//!   `RESTART_SOCKET_READY_FD`, and the time of the restart in `RESTART_SOCKET_LAST_RESTART`.

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use restart_socket::{ListenerHandle, Server, ServerConfig, Status, unix_millis};
use tokio_util::sync::CancellationToken;

/// What the restart handler (or this process) does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Mode {
    /// Hand over to a new copy of this program.
    #[default]
    HandOver,
    /// Fail every restart with this reason.
    Fail(String),
    /// Hand over to a successor that crashes before it is ready.
    SuccessorCrashes,
    /// Exit at once with status 3 (the crashing successor).
    CrashOnStart,
}

#[derive(Debug, Clone, Default)]
struct Opts {
    socket: PathBuf,
    generation: u64,
    mode: Mode,
    gate: bool,
    sigusr1: bool,
}

fn parse() -> anyhow::Result<Opts> {
    let mut opts = Opts { generation: 1, ..Opts::default() };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => opts.socket = args.next().context("--socket PATH")?.into(),
            "--generation" => opts.generation = args.next().context("--generation N")?.parse()?,
            "--fail" => opts.mode = Mode::Fail(args.next().context("--fail REASON")?),
            "--gate" => opts.gate = true,
            "--sigusr1" => opts.sigusr1 = true,
            "--successor-crashes" => opts.mode = Mode::SuccessorCrashes,
            "--crash-on-start" => opts.mode = Mode::CrashOnStart,
            other => bail!("unknown argument {other}"),
        }
    }
    if opts.socket.as_os_str().is_empty() {
        bail!("--socket PATH is required");
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let result = parse().and_then(|opts| {
        if opts.mode == Mode::CrashOnStart {
            std::process::exit(3);
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(opts))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("restart-socket-service: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: &str) {
    // The test may be gone (it reads our stdout); nothing to do about it then.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn env_fd(name: &str) -> anyhow::Result<Option<OwnedFd>> {
    let Ok(value) = std::env::var(name) else { return Ok(None) };
    let raw: i32 = value.parse().with_context(|| format!("{name}={value}"))?;
    // SAFETY: our predecessor passed this descriptor to us for exactly this purpose; nothing else
    // in this process knows it, so this is its only owner.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
}

struct Ctx {
    opts: Opts,
    listener: ListenerHandle,
    shutdown: CancellationToken,
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let config = ServerConfig::default().with_restart_on_sigusr1(opts.sigusr1);
    let server = match env_fd("RESTART_SOCKET_FD")? {
        Some(fd) => Server::adopt(fd, &opts.socket, config)?,
        None => Server::bind(&opts.socket, config)?,
    };
    let pid = std::process::id();
    let started_at = unix_millis(SystemTime::now());
    let last_restart = std::env::var("RESTART_SOCKET_LAST_RESTART").ok().and_then(|v| v.parse().ok());
    let generation = opts.generation;

    let shutdown = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let on_term = shutdown.clone();
    tokio::spawn(async move {
        term.recv().await;
        on_term.cancel();
    });

    let ctx_listener = server.listener();
    let ctx = Arc::new(Ctx { opts: opts.clone(), listener: server.listener(), shutdown: shutdown.clone() });
    let restart = move || handover(Arc::clone(&ctx));
    let status = move || async move { Status { pid, generation, started_at, last_restart } };
    // Announced before the predecessor learns we are ready, so that our line precedes its
    // "stopped" line on the shared stdout.
    say(&format!("ready pid={pid} generation={generation}"));
    if let Some(ready) = env_fd("RESTART_SOCKET_READY_FD")? {
        File::from(ready).write_all(b"ready\n").context("signal readiness")?;
    }
    // Taken over: the socket file is ours to remove from now on (bound ones are from the start).
    ctx_listener.claim();
    server.serve(restart, status, shutdown).await?;
    say(&format!("stopped pid={pid} generation={generation}"));
    Ok(())
}

/// The restart handler: a minimal handover to a new copy of this program.
async fn handover(ctx: Arc<Ctx>) -> Result<u32, String> {
    say(&format!("restart-begun pid={}", std::process::id()));
    if let Mode::Fail(reason) = &ctx.opts.mode {
        return Err(reason.clone());
    }
    if ctx.opts.gate {
        tokio::task::spawn_blocking(|| std::io::stdin().lock().lines().next())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("stdin closed before the gate opened")?
            .map_err(|e| e.to_string())?;
    }
    match spawn_successor(&ctx).await {
        Ok(pid) => {
            // Answered by the server before it stops; the successor owns the socket now.
            ctx.shutdown.cancel();
            Ok(pid)
        }
        Err(reason) => {
            ctx.listener.reclaim();
            Err(reason)
        }
    }
}

async fn spawn_successor(ctx: &Ctx) -> Result<u32, String> {
    let listener = ctx.listener.export().map_err(|e| e.to_string())?;
    let (ready_read, ready_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--socket").arg(&ctx.opts.socket).arg("--generation").arg((ctx.opts.generation + 1).to_string());
    if ctx.opts.sigusr1 {
        cmd.arg("--sigusr1");
    }
    if ctx.opts.mode == Mode::SuccessorCrashes {
        cmd.arg("--crash-on-start");
    }
    cmd.env("RESTART_SOCKET_FD", listener.as_raw_fd().to_string())
        .env("RESTART_SOCKET_READY_FD", ready_write.as_raw_fd().to_string())
        .env("RESTART_SOCKET_LAST_RESTART", unix_millis(SystemTime::now()).to_string())
        .stdin(std::process::Stdio::null());
    let inherited = [listener.as_raw_fd(), ready_write.as_raw_fd()];
    // SAFETY: the closure runs between fork and exec; it only calls fcntl(2), which is
    // async-signal-safe, on descriptors that stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for fd in inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start the successor: {e}"))?;
    drop(listener);
    drop(ready_write);
    let ready = tokio::task::spawn_blocking(move || {
        let mut said = String::new();
        File::from(ready_read).read_to_string(&mut said).map(|_| said)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if ready.starts_with("ready") {
        return Ok(child.id());
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    Err(format!("successor exited before it was ready ({status})"))
}
