//! Fixture for keepalive: ignores SIGTERM and starts children that ignore it too, so only SIGKILL
//! to the whole process group ends them.
//!
//! `keepalive-stubborn --pids FILE [--children N]`: writes its own pid and its children's pids, one
//! per line, to FILE (atomically, once all are running), then waits forever.

use std::time::Duration;

fn main() {
    // SIG_IGN survives fork and exec: the children ignore SIGTERM as well.
    // SAFETY: installing SIG_IGN for SIGTERM before any thread exists.
    unsafe {
        nix::sys::signal::signal(nix::sys::signal::Signal::SIGTERM, nix::sys::signal::SigHandler::SigIgn)
            .expect("ignore SIGTERM");
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        sleep_forever();
    }
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let file = opt("--pids").expect("--pids FILE");
    let n: usize = opt("--children").and_then(|n| n.parse().ok()).unwrap_or(2);
    let exe = std::env::current_exe().expect("current_exe");
    let mut pids = vec![std::process::id()];
    for _ in 0..n {
        pids.push(std::process::Command::new(&exe).arg("--child").spawn().expect("spawn child").id());
    }
    let text: String = pids.iter().map(|p| p.to_string() + "\n").collect();
    let tmp = format!("{file}.tmp");
    std::fs::write(&tmp, text).expect("write pids");
    std::fs::rename(&tmp, &file).expect("rename pids");
    sleep_forever();
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
