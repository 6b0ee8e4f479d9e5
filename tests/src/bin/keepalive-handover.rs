//! Fixture for keepalive: does on the wire what a zero-downtime handover does.
//!
//! `keepalive-handover --log FILE [--own-group] [--drain-ms MS] [--successor-never-ready]`
//!
//! Appends `gen=<n> pid=<pid> pgid=<pgid>` to FILE when it starts (generation 0 is the process the
//! supervisor started). On SIGUSR2 it hands over: spawns its successor (generation n+1; in its own
//! process group with `--own-group`, else in ours), waits until the successor says it is ready
//! (a byte on an inherited pipe), sends `MAINPID=<successor>` to `NOTIFY_SOCKET` with the
//! sd-notify crate, drains for MS ms (default 50) and exits 0. SIGTERM/SIGINT: exit 0, also while
//! waiting for the successor (which is then left behind, as a real server stopped mid-restart
//! leaves it). A successor that exits before it is ready makes the waiting process exit 1.
//!
//! With `--successor-never-ready` a successor logs itself and never says it is ready: it stays
//! running, provably started and not ready, until a signal ends it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sd_notify::NotifyState;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let log_path = opt("--log").expect("--log FILE");
    let own_group = args.iter().any(|a| a == "--own-group");
    let never_ready = args.iter().any(|a| a == "--successor-never-ready");
    let drain = Duration::from_millis(opt("--drain-ms").and_then(|m| m.parse().ok()).unwrap_or(50));
    let generation: u32 = std::env::var("HANDOVER_GENERATION").ok().and_then(|g| g.parse().ok()).unwrap_or(0);

    let mut set = SigSet::empty();
    for s in [Signal::SIGUSR2, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    set.thread_block().expect("block signals");

    let pgid = nix::unistd::getpgrp();
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("open log");
    log.write_all(format!("gen={generation} pid={} pgid={pgid}\n", std::process::id()).as_bytes())
        .expect("log");

    if let Some(fd) = std::env::var("HANDOVER_READY_FD").ok().and_then(|f| f.parse::<i32>().ok())
        && !never_ready
    {
        // SAFETY: our parent passed us the write end of a pipe under this number; we own it now.
        let mut ready = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        ready.write_all(b"R").expect("signal readiness");
    }

    // Every signal ends this process: SIGUSR2 after handing over, the others at once.
    match set.wait().expect("sigwait") {
        Signal::SIGUSR2 => {
            let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
            let mut cmd = std::process::Command::new(std::env::current_exe().expect("current_exe"));
            cmd.args(&args[1..])
                .env("HANDOVER_GENERATION", (generation + 1).to_string())
                .env("HANDOVER_READY_FD", write_end.as_raw_fd().to_string());
            if own_group {
                cmd.process_group(0);
            }
            // nix's pipe() fds are not close-on-exec: the successor inherits the write end.
            let child = cmd.spawn().expect("spawn successor");
            drop(write_end);
            // Wait for the successor's readiness or for a stop signal, whichever comes first.
            let mut stop = SigSet::empty();
            stop.add(Signal::SIGTERM);
            stop.add(Signal::SIGINT);
            let signals = SignalFd::with_flags(&stop, SfdFlags::SFD_CLOEXEC).expect("signalfd");
            let mut fds = [
                libc::pollfd { fd: read_end.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: signals.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: two pollfds that live across the call; no timeout.
            while unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                assert_eq!(std::io::Error::last_os_error().kind(), std::io::ErrorKind::Interrupted, "poll");
            }
            if fds[1].revents != 0 {
                // Stopped mid-restart: the successor is left behind, not ready.
                std::process::exit(0);
            }
            let mut byte = [0u8; 1];
            if std::fs::File::from(read_end).read_exact(&mut byte).is_err() {
                // The successor exited before it was ready.
                std::process::exit(1);
            }
            sd_notify::notify(&[NotifyState::MainPid(child.id())]).expect("MAINPID=");
            std::thread::sleep(drain);
            std::process::exit(0);
        }
        _ => std::process::exit(0),
    }
}
