//! Fixture for keepalive: records the signals it receives.
//!
//! `keepalive-signals --log FILE`: appends `ready <pid>` once its handlers are in place, then one
//! line per SIGHUP, SIGUSR1 or SIGUSR2 (`HUP`, `USR1`, `USR2`); exits 0 on SIGTERM or SIGINT.

use std::io::Write;

use nix::sys::signal::{SigSet, Signal};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let log_path = args.iter().position(|a| a == "--log").and_then(|i| args.get(i + 1)).expect("--log FILE");
    let mut set = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    // Blocked signals stay pending until sigwait takes them: none is lost, none kills us.
    set.thread_block().expect("block signals");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).expect("open log");
    log.write_all(format!("ready {}\n", std::process::id()).as_bytes()).expect("log ready");
    loop {
        match set.wait().expect("sigwait") {
            Signal::SIGTERM | Signal::SIGINT => std::process::exit(0),
            s => {
                let name = s.as_str().trim_start_matches("SIG");
                log.write_all(format!("{name}\n").as_bytes()).expect("log signal");
            }
        }
    }
}
