//! Stress tests of `dirlock` between many real processes: the unlink/re-create race never lets two
//! holders in at once (a counter updated read-modify-write under the lock loses no update), and
//! lock sets taken in opposite orders never deadlock.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeline_tests::PATIENCE;

/// `dirlock-counter --iterations N --counter FILE EXTRA... DIRS...`
fn counter(iterations: u32, counter: &Path, extra: &[&str], dirs: &[&Path]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dirlock-counter"))
        .arg("--iterations")
        .arg(iterations.to_string())
        .arg("--counter")
        .arg(counter)
        .args(extra)
        .args(dirs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for every child (generous deadline: a deadlock fails here instead of hanging) and checks
/// each reports `done`.
fn expect_all_done(children: Vec<Child>, deadline: Duration) {
    let until = Instant::now() + deadline;
    for mut child in children {
        let status = lifeline_tests::wait_for("a counter process to finish", || {
            if Instant::now() > until {
                let _ = child.kill();
                panic!("counter process {} still running after {deadline:?}: deadlock?", child.id());
            }
            child.try_wait().unwrap()
        });
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(status.success() && out == "done\n", "counter process failed ({status}): {out}");
    }
}

fn read_counter(path: &Path) -> u64 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[test]
fn many_processes_hammering_one_directory_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    // Half wait with backoff, half spin on non-blocking attempts: the spinners open the file in
    // the instant a holder unlinks it, which is exactly the race the inode re-check closes.
    let (processes, iterations) = (8, 150);
    let children = (0..processes)
        .map(|i| counter(iterations, &count, if i % 2 == 0 { &["--spin"] } else { &[] }, &[dir.path()]))
        .collect();
    expect_all_done(children, PATIENCE * 3);
    assert_eq!(read_counter(&count), u64::from(processes * iterations));
    assert!(!dir.path().join(".lifeline.lock").exists());
}

#[test]
fn many_processes_hammering_with_ofd_locks_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let (processes, iterations) = (6, 100);
    let children = (0..processes)
        .map(|i| {
            counter(
                iterations,
                &count,
                if i % 2 == 0 { &["--ofd", "--spin"] } else { &["--ofd"] },
                &[dir.path()],
            )
        })
        .collect();
    expect_all_done(children, PATIENCE * 3);
    assert_eq!(read_counter(&count), u64::from(processes * iterations));
}

#[test]
fn lock_sets_in_opposite_orders_never_deadlock() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let count = root.path().join("count");
    let iterations = 200;
    let children = vec![
        counter(iterations, &count, &[], &[&a, &b]),
        counter(iterations, &count, &[], &[&b, &a]),
        counter(iterations, &count, &["--spin"], &[&b, &a]),
        counter(iterations, &count, &["--spin"], &[&a, &b]),
    ];
    expect_all_done(children, PATIENCE * 3);
    assert_eq!(read_counter(&count), u64::from(4 * iterations));
}
