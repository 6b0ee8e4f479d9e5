//! Fixture for keepalive: records each start, optionally leaves an orphan in its process group, runs
//! a planned time and exits with a chosen code — a crash loop on demand.
//!
//! `keepalive-crash-looper --starts FILE [--plan MS,MS,...] [--exit CODE] [--orphan-on N --orphan PIDFILE]`
//!
//! Start number n (counted by lines already in FILE) runs `plan[n]` ms (the last entry repeats;
//! default 0), then exits with CODE (default 1). On start number `--orphan-on` it first spawns a
//! child in its own process group that outlives it, and writes the child's pid to PIDFILE.

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--linger") {
        // The orphan: sleeps until killed.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let starts = opt("--starts").expect("--starts FILE");
    let previous = std::fs::read_to_string(&starts).map_or(0, |s| s.lines().count());
    let mut log =
        std::fs::OpenOptions::new().create(true).append(true).open(&starts).expect("open starts file");
    // One write(2) of a short line with O_APPEND: readers never see half a line.
    log.write_all(format!("{}\n", std::process::id()).as_bytes()).expect("append start");

    if let (Some(on), Some(file)) = (opt("--orphan-on"), opt("--orphan"))
        && on.parse::<usize>().ok() == Some(previous)
    {
        let exe = std::env::current_exe().expect("current_exe");
        // Never waited for on purpose: it is the orphan the supervisor must clean up.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new(exe).arg("--linger").spawn().expect("spawn orphan");
        write_atomic(&file, &format!("{}\n", child.id()));
    }

    let plan: Vec<u64> = opt("--plan")
        .map(|p| p.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
    let run_ms = plan.get(previous).or(plan.last()).copied().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(run_ms));
    let code = opt("--exit").and_then(|c| c.parse().ok()).unwrap_or(1);
    std::process::exit(code);
}

fn write_atomic(path: &str, content: &str) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, content).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}
