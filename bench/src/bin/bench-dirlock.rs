//! Benchmark of `dirlock`: the uncontended acquire+release cycle against the raw system calls of
//! the same protocol and against a bare `open+flock+close`, on disk and on tmpfs; and the curve
//! of hand-off latency and waiter CPU as 1, 8 and 64 processes wait on one lock, for both wait
//! modes (inotify wake-ups, and the backoff they replace), against waiters blocked in `flock(2)`.
//!
//! `bench-dirlock [--quick]` prints one JSON row per figure. The hand-off part re-executes this
//! program as its waiting processes (`--handoff-child`, not for humans).

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dirlock::{DirLock, LockOptions, WaitMode};
use lifeline_bench::{Row, iterations, median, percentile, quick};

const MECHANISM: &str = "dirlock";
/// How long each holder keeps the lock: long enough for waiters to reach the backoff cap.
const HOLD: Duration = Duration::from_millis(10);
/// How long a process rests after releasing before it queues again (so the hand-off goes to a
/// process that was waiting, not back to the releaser).
const COOL_DOWN: Duration = Duration::from_millis(10);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--handoff-child") {
        return handoff_child(&args[2..]);
    }

    let disk = disk_dir()?;
    let tmpfs = tempfile::tempdir_in("/dev/shm").context("tempdir on /dev/shm")?;
    for (label, dir) in [("disk", disk.path()), ("tmpfs", tmpfs.path())] {
        cycle_rows(label, dir)?;
    }
    handoff_rows(disk.path())?;
    Ok(())
}

/// A temp dir on the real disk: under the project's `target/` (beside this binary), else
/// `/var/tmp`.
fn disk_dir() -> Result<tempfile::TempDir> {
    let exe = std::env::current_exe()?;
    let target = exe.parent().and_then(Path::parent).filter(|p| p.ends_with("target"));
    let base = target.map_or_else(|| PathBuf::from("/var/tmp"), Path::to_path_buf);
    tempfile::tempdir_in(&base).with_context(|| format!("tempdir in {}", base.display()))
}

fn c_path(path: &Path) -> Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

/// The dirlock protocol issued as bare libc calls, with nothing around them: the floor.
fn raw_protocol_cycle(path: &CString, pid_text: &[u8]) {
    // SAFETY: plain system calls on a NUL-terminated path we own, a descriptor we just opened and
    // stack buffers of the right types; every descriptor opened here is closed here.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600,
        );
        assert!(fd >= 0, "raw open failed");
        let locked = libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB);
        assert_eq!(locked, 0, "raw flock failed");
        let mut held: libc::stat = std::mem::zeroed();
        let mut at_path: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &raw mut held);
        libc::lstat(path.as_ptr(), &raw mut at_path);
        assert!(held.st_ino == at_path.st_ino && held.st_dev == at_path.st_dev);
        libc::pwrite(fd, pid_text.as_ptr().cast(), pid_text.len(), 0);
        libc::unlink(path.as_ptr());
        libc::close(fd);
    }
}

/// What a lock without the unlink/re-check protocol costs: lock an existing file and let go.
fn bare_flock_cycle(path: &CString) {
    // SAFETY: as above; the descriptor is closed before returning.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(fd >= 0, "bare open failed");
        let locked = libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB);
        assert_eq!(locked, 0, "bare flock failed");
        libc::close(fd);
    }
}

fn cycle_rows(label: &str, dir: &Path) -> Result<()> {
    let options = LockOptions::new();
    let raw_dir = dir.join("raw");
    let lib_dir = dir.join("lib");
    std::fs::create_dir(&raw_dir)?;
    std::fs::create_dir(&lib_dir)?;
    let raw_path = c_path(&raw_dir.join(".lifeline.lock"))?;
    let bare_file = dir.join("bare.lock");
    std::fs::write(&bare_file, "")?;
    let bare_path = c_path(&bare_file)?;
    let pid_text = format!("{}\n", std::process::id());

    let batches = iterations(200, 30);
    let per_batch = iterations(200, 50);
    let mut lib = Vec::with_capacity(batches);
    let mut raw = Vec::with_capacity(batches);
    let mut bare = Vec::with_capacity(batches);
    let mut lib_cycle = || {
        let lock = DirLock::acquire_with(&lib_dir, &options).expect("uncontended acquire");
        lock.release().expect("release");
    };
    // Warm up, then interleave the three so drift (page cache, journal, other load) hits all
    // of them alike.
    for _ in 0..per_batch {
        lib_cycle();
        raw_protocol_cycle(&raw_path, pid_text.as_bytes());
        bare_flock_cycle(&bare_path);
    }
    for _ in 0..batches {
        lib.push(time_per_call(per_batch, &mut lib_cycle));
        raw.push(time_per_call(per_batch, || raw_protocol_cycle(&raw_path, pid_text.as_bytes())));
        bare.push(time_per_call(per_batch, || bare_flock_cycle(&bare_path)));
    }
    let (lib_median, raw_median, bare_median) = (median(&mut lib), median(&mut raw), median(&mut bare));
    let ratio = lib_median / raw_median;
    eprintln!(
        "dirlock {label}: cycle {lib_median:.0} ns, raw protocol {raw_median:.0} ns ({ratio:.2}x), \
         bare open+flock+close {bare_median:.0} ns ({:.2}x)",
        lib_median / bare_median
    );
    Row::new(MECHANISM, &format!("acquire+release cycle ({label})"), lib_median, "ns", "≤ 1.3× baseline")
        .baseline("raw syscalls of the same protocol", raw_median)
        .met(ratio <= 1.3)
        .samples(lib.clone())
        .emit();
    Row::new(
        MECHANISM,
        &format!("acquire+release cycle vs a lock without unlink/re-check ({label})"),
        lib_median,
        "ns",
        "informational: the cost of the safe-unlink protocol",
    )
    .baseline("bare open+flock+close of an existing file", bare_median)
    .samples(bare)
    .emit();
    Ok(())
}

fn time_per_call(n: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable across processes (unlike `Instant`'s opaque
/// values).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) this process has used so far, from the scheduler's own accounting
/// (`CLOCK_PROCESS_CPUTIME_ID`: precise, where `getrusage` counts in ticks and misses the
/// short wake-ups a waiter is made of).
fn own_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid, writable timespec; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `--handoff-child MODE DIR TURNS`: take the lock TURNS times, printing `W|A|R <ns>` events
/// (started waiting, acquired, about to release), `D <ns>` when done and `C <ns>` for the CPU
/// time spent waiting (inside the acquire calls: the cost of being a waiter).
fn handoff_child(args: &[String]) -> Result<()> {
    let [mode, dir, turns] = args else { bail!("usage: --handoff-child MODE DIR TURNS") };
    let dir = PathBuf::from(dir);
    let turns: usize = turns.parse()?;
    let mut events = String::new();
    let options = LockOptions::new().lock_timeout(Duration::from_secs(600));
    let blocking_path = c_path(&dir.join("blocking.lock"))?;
    let mut waiting_cpu = Duration::ZERO;
    for _ in 0..turns {
        push_event(&mut events, 'W', monotonic_ns());
        let cpu_before = own_cpu();
        match mode.as_str() {
            "dirlock" | "dirlock-poll" => {
                let options = if mode == "dirlock-poll" {
                    options.clone().wait_mode(WaitMode::Poll)
                } else {
                    options.clone().wait_mode(WaitMode::Notify)
                };
                let lock = DirLock::acquire_with(&dir, &options)?;
                push_event(&mut events, 'A', monotonic_ns());
                waiting_cpu += own_cpu().saturating_sub(cpu_before);
                std::thread::sleep(HOLD);
                push_event(&mut events, 'R', monotonic_ns());
                lock.release()?;
            }
            "blocking-flock" => {
                // SAFETY: open/flock/close on a NUL-terminated path and the descriptor just
                // opened, which is closed below.
                let fd = unsafe { libc::open(blocking_path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
                // SAFETY: as above.
                if fd < 0 || unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                    bail!("blocking flock failed");
                }
                push_event(&mut events, 'A', monotonic_ns());
                waiting_cpu += own_cpu().saturating_sub(cpu_before);
                std::thread::sleep(HOLD);
                push_event(&mut events, 'R', monotonic_ns());
                // SAFETY: `fd` is ours and open.
                unsafe { libc::close(fd) };
            }
            other => bail!("unknown mode {other}"),
        }
        std::thread::sleep(COOL_DOWN);
    }
    push_event(&mut events, 'D', monotonic_ns());
    push_event(&mut events, 'C', waiting_cpu.as_nanos());
    print!("{events}");
    Ok(())
}

/// Appends one `KIND value` line (writing to a `String` cannot fail).
fn push_event(events: &mut String, kind: char, value: impl std::fmt::Display) {
    use std::fmt::Write as _;
    let _ = writeln!(events, "{kind} {value}");
}

struct Handoffs {
    latencies_ms: Vec<f64>,
    waiters: Vec<f64>,
    cpu_percent: f64,
}

/// Runs `processes` children in `mode` and measures each hand-off: from the holder's release to
/// the acquisition by a process that was already waiting at that moment, counted only while
/// every process is still taking turns.
fn measure_handoffs(mode: &str, dir: &Path, turns: usize, processes: usize) -> Result<Handoffs> {
    let exe = std::env::current_exe()?;
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(&exe)
                .args(["--handoff-child", mode])
                .arg(dir)
                .arg(turns.to_string())
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut events: Vec<(u64, char, usize)> = Vec::new();
    for (id, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!("hand-off child failed: {}", output.status);
        }
        for line in BufReader::new(&output.stdout[..]).lines() {
            let line = line?;
            let (kind, t) = line.split_once(' ').context("event line")?;
            events.push((t.parse()?, kind.chars().next().context("event kind")?, id));
        }
    }
    // CPU spent waiting, over the whole run (first W to last D).
    let cpu_ns: u64 = events.iter().filter(|e| e.1 == 'C').map(|e| e.0).sum();
    events.retain(|e| e.1 != 'C');
    events.sort_unstable();
    let first_wait = events.first().map(|e| e.0).context("no events")?;
    let last_done = events.iter().filter(|e| e.1 == 'D').map(|e| e.0).max().context("no D event")?;
    let wall_ns = last_done.saturating_sub(first_wait).max(1);
    let first_done = events.iter().filter(|e| e.1 == 'D').map(|e| e.0).min().context("no D event")?;
    let mut waiting_since = vec![None::<u64>; processes];
    let mut last_release: Option<(u64, usize)> = None; // (time, waiters at that moment)
    let mut latencies_ms = Vec::new();
    let mut waiters = Vec::new();
    for &(t, kind, id) in &events {
        match kind {
            'W' => waiting_since[id] = Some(t),
            'R' => last_release = Some((t, waiting_since.iter().filter(|w| w.is_some()).count())),
            'A' => {
                let since = waiting_since[id].take();
                if let (Some(since), Some((released, n))) = (since, last_release)
                    && since < released
                    && t < first_done
                {
                    latencies_ms.push((t - released) as f64 / 1e6);
                    waiters.push(n as f64);
                }
            }
            _ => {}
        }
    }
    Ok(Handoffs { latencies_ms, waiters, cpu_percent: 100.0 * cpu_ns as f64 / wall_ns as f64 })
}

/// The lock-waiter curve: 1, 8 and 64 processes waiting on one lock (`--quick`: 1), each a
/// holder in turn; hand-off latency and the waiters' CPU for dirlock's two wait modes against
/// waiters blocked in `flock(2)` (the kernel queues them and wakes one per release), in the same
/// run. The modes alternate at each point so that drift falls on all three alike.
fn handoff_rows(disk: &Path) -> Result<()> {
    let points: &[usize] = if quick() { &[1] } else { &[1, 8, 64] };
    for &waiting in points {
        // Enough hand-offs at each point for a p99, the same wall time order at every point.
        let turns = if quick() { 8 } else { (600 / (waiting + 1)).clamp(8, 120) };
        let mut results = Vec::new();
        for mode in ["blocking-flock", "dirlock", "dirlock-poll"] {
            let dir = disk.join(format!("handoff-{mode}-{waiting}"));
            std::fs::create_dir(&dir)?;
            results.push(measure_handoffs(mode, &dir, turns, waiting + 1)?);
        }
        let [mut flock, mut notify, mut poll] =
            <[Handoffs; 3]>::try_from(results).map_err(|_| anyhow::anyhow!("3 modes"))?;
        if notify.latencies_ms.is_empty() || flock.latencies_ms.is_empty() || poll.latencies_ms.is_empty() {
            bail!("no hand-offs measured with {waiting} waiters");
        }
        let seen = median(&mut notify.waiters);
        let (b50, b99) = (median(&mut flock.latencies_ms), percentile(&mut flock.latencies_ms, 99.0));
        eprintln!(
            "dirlock hand-off, {waiting} waiting (median {seen} at a release): blocked flock p50 {b50:.3} ms p99 {b99:.3} ms CPU {:.3}%",
            flock.cpu_percent
        );
        let quick_note = if quick() { " (--quick)" } else { "" };
        for (label, run, judged) in
            [("notify (default)", &mut notify, true), ("poll (backoff, as before)", &mut poll, false)]
        {
            let (p50, p99) = (median(&mut run.latencies_ms), percentile(&mut run.latencies_ms, 99.0));
            eprintln!(
                "dirlock hand-off, {waiting} waiting, {label}: {} hand-offs, p50 {p50:.2} ms, p99 {p99:.2} ms, CPU {:.3}%",
                run.latencies_ms.len(),
                run.cpu_percent
            );
            let target = "≤ 20 ms";
            let row = Row::new(
                MECHANISM,
                &format!("hand-off latency p99, {waiting} waiting, wait mode {label}{quick_note}"),
                p99,
                "ms",
                target,
            )
            .baseline("waiters blocked in flock(2), no unlink protocol (p99)", b99)
            .point(
                &format!("hand-off p99 vs waiting processes, wait mode {label}"),
                "waiting processes",
                waiting as f64,
            )
            .samples(run.latencies_ms.clone())
            .baseline_samples(flock.latencies_ms.clone());
            if judged {
                row.met(p99 <= 20.0).emit();
            } else {
                row.emit();
            }
            let cpu_target = if waiting == 64 { "≤ 5× baseline" } else { "informational (target at 64)" };
            let row = Row::new(
                MECHANISM,
                &format!(
                    "CPU of the waiting processes together, {waiting} waiting, wait mode {label}{quick_note}"
                ),
                run.cpu_percent,
                "% of a core",
                cpu_target,
            )
            .baseline("waiters blocked in flock(2)", flock.cpu_percent)
            .point(
                &format!("waiter CPU vs waiting processes, wait mode {label}"),
                "waiting processes",
                waiting as f64,
            );
            if judged && waiting == 64 {
                row.met(run.cpu_percent <= 5.0 * flock.cpu_percent).emit();
            } else {
                row.emit();
            }
        }
    }
    Ok(())
}
