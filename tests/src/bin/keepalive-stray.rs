//! Fixture for keepalive: a service whose earlier instance left a process behind in its (old)
//! session, and whose current instance names that process with `MAINPID=`.
//!
//! `keepalive-stray --dir DIR`: start number n is counted by the lines of `DIR/starts`. The first
//! start spawns a process that sleeps until killed, in its own process group but in this
//! session, writes its pid to `DIR/stray` (atomically) and exits 3: the supervisor restarts the
//! service in a new session and stops only the crashed process group, so the stray lives on in a
//! session that is no longer the service's. Every later start sends `MAINPID=<stray>`, then
//! `STATUS=sent`, and waits until killed.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use sd_notify::NotifyState;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--linger") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let dir = std::path::PathBuf::from(opt("--dir").expect("--dir DIR"));
    let starts = dir.join("starts");
    let previous = std::fs::read_to_string(&starts).map_or(0, |s| s.lines().count());
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&starts).expect("open starts");
    log.write_all(format!("{}\n", std::process::id()).as_bytes()).expect("append start");
    let stray = dir.join("stray");
    if previous == 0 {
        let exe = std::env::current_exe().expect("current_exe");
        // Never waited for on purpose: it is the stray the test names with MAINPID=.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new(exe).arg("--linger").process_group(0).spawn().expect("spawn");
        let tmp = dir.join("stray.tmp");
        std::fs::write(&tmp, format!("{}\n", child.id())).expect("write stray");
        std::fs::rename(&tmp, &stray).expect("rename stray");
        std::process::exit(3);
    }
    let pid: u32 = std::fs::read_to_string(&stray).expect("read stray").trim().parse().expect("stray pid");
    sd_notify::notify(&[NotifyState::MainPid(pid)]).expect("MAINPID=");
    sd_notify::notify(&[NotifyState::Status("sent")]).expect("STATUS=");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
