//! Crate-level tests of the upgrade path that need crate internals: a fresh `Handover` without
//! adopting the process's fds (`Handover::bare`), and the seams of `spawn.rs`.

use std::time::Duration;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(20);

use crate::handover::{Handover, Start};
use crate::{Config, Error};

/// A handover of a fresh process whose successor is `sh -c SCRIPT`.
fn fresh(config: Config, script: &str) -> Handover {
    let config = config.notify(false).executable("/bin/sh").args(["-c", script]);
    Handover::bare(config, Start::Fresh).unwrap()
}

#[tokio::test]
async fn a_ready_timeout_too_long_for_an_instant_is_no_deadline_not_a_panic() {
    let upgrader = fresh(Config::default().ready_timeout(Duration::MAX), "exit 3").ready(()).await.unwrap();
    let err = upgrader.upgrade().await.unwrap_err();
    assert!(matches!(err, Error::Exited { .. }), "{err}");
    // The failed upgrade released the one-at-a-time lock.
    let err = upgrader.upgrade().await.unwrap_err();
    assert!(matches!(err, Error::Exited { .. }), "{err}");
}

#[test]
fn deadlines_saturate() {
    let now = tokio::time::Instant::now();
    assert!(crate::config::deadline_after(now, Duration::MAX) > now + Duration::from_secs(3_000_000_000));
    assert_eq!(crate::config::deadline_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
}

/// A successor in uninterruptible sleep (D state: stuck on a dead NFS server, a failing disk)
/// does not go away on `SIGKILL` until its I/O ends, and waiting for it without bound held the
/// upgrade lock: every later restart was refused as "already in progress". D state cannot be
/// produced on demand here, so — mocking only what cannot be had — the reap of such a process is
/// a future that never completes: the wait for it must end anyway, reporting it as not reaped.
#[tokio::test]
async fn the_wait_for_a_killed_successor_that_never_exits_is_bounded() {
    let never = std::future::pending::<std::io::Result<std::process::ExitStatus>>();
    let reaped =
        tokio::time::timeout(PATIENCE, crate::spawn::reap_within(never, 4242, Duration::from_millis(50)))
            .await
            .expect("the wait for a successor that never exits ends");
    assert!(!reaped);
}

/// A successor that does exit when killed is reaped within the bound, as before.
#[tokio::test]
async fn a_killed_successor_is_reaped() {
    let mut child = tokio::process::Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = child.id().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    assert!(crate::spawn::reap_within(child.wait(), pid, PATIENCE).await);
}

proptest::proptest! {
    /// The readiness message comes from the successor: any bytes are its pid (exactly what
    /// `ready_message` encodes), "closed" (fewer than 5 bytes) or a protocol error — never a panic.
    #[test]
    fn any_readiness_bytes_are_a_pid_closed_or_an_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        match runtime.block_on(crate::spawn::read_ready(&bytes[..])) {
            Ok(Some(pid)) => proptest::prop_assert_eq!(&crate::handover::ready_message(pid)[..], &bytes[..5]),
            Ok(None) => proptest::prop_assert!(bytes.len() < 5),
            Err(err) => proptest::prop_assert!(matches!(err, Error::Protocol { .. }) && bytes[0] != b'R', "{}", err),
        }
    }
}

/// Once it has written its readiness message a successor is committed: it serves, and on a
/// loaded machine it may even hand over in turn and exit before its predecessor looks. Such an
/// exit used to win over the readiness message ("new process exited with status 0 before
/// becoming ready"): the predecessor then served on beside its successor's successors — two
/// leaders on the same sockets, each starting restarts (found by `cargo xtask fault`'s 1000
/// concurrent restarts). Here the predecessor's only thread is held until the successor (perl)
/// has written its readiness and exited, so that both are there when it looks.
#[test]
fn a_successor_that_became_ready_and_then_exited_is_still_the_successor() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("exited");
    let script = r#"
        open(my $ready, ">&=", $ENV{LIFELINE_READY_FD}) or die "ready fd: $!";
        syswrite($ready, pack("A1 V", "R", $$)) == 5 or die "write: $!";
        open(my $m, ">", $ARGV[0]) or die "marker: $!"; print $m $$; close $m;
        exit 0;
    "#;
    let config =
        Config::default().notify(false).executable("perl").args(["-e", script, marker.to_str().unwrap()]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let upgrader = Handover::bare(config, Start::Fresh).unwrap().ready(()).await.unwrap();
        let hold = async {
            // No await in here: the runtime's thread, and with it the upgrade, waits for this.
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                let pid = std::fs::read_to_string(&marker).ok().and_then(|p| p.trim().parse::<u32>().ok());
                let state = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok());
                if let (Some(pid), Some(stat)) = (pid, state)
                    && stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
                {
                    break pid;
                }
                assert!(std::time::Instant::now() < deadline, "the successor did not exit");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let (result, pid) = tokio::join!(upgrader.upgrade(), hold);
        assert_eq!(result.unwrap(), pid);
        assert_eq!(upgrader.successor(), Some(pid));
    });
}
