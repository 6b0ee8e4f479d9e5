//! Fixture for keepalive: a service with a watchdog that pings a few times, then hangs.
//!
//! `keepalive-watchdog --log FILE [--pings N]`: appends `start pid=<pid> usec=<WATCHDOG_USEC>
//! wdpid=<WATCHDOG_PID> enabled=<bool>` to FILE, sends `READY=1`, sends `WATCHDOG=1` N times
//! (default 3) at a quarter of the interval, then stops pinging and waits forever (hung).

use std::io::Write;
use std::time::Duration;

use sd_notify::NotifyState;

fn main() {
    // A watchdog kill sends SIGABRT; no core files in the test's directory.
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit reads the struct we pass; failure only means core files stay possible.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &raw const no_core) };
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let log_path = opt("--log").expect("--log FILE");
    let pings: u32 = opt("--pings").and_then(|n| n.parse().ok()).unwrap_or(3);
    let interval = sd_notify::watchdog_enabled();
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let line = format!(
        "start pid={} usec={} wdpid={} enabled={}\n",
        std::process::id(),
        env("WATCHDOG_USEC"),
        env("WATCHDOG_PID"),
        interval.is_some()
    );
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("open log");
    log.write_all(line.as_bytes()).expect("log start");
    sd_notify::notify(&[NotifyState::Ready]).expect("READY=1");
    let interval = interval.unwrap_or(Duration::from_secs(1));
    for _ in 0..pings {
        std::thread::sleep(interval / 4);
        sd_notify::notify(&[NotifyState::Watchdog]).expect("WATCHDOG=1");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
