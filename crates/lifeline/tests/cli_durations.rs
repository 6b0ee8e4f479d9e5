//! Every duration flag of the CLI refuses an absurd value at parse time: one clap error line
//! naming the flag, exit 2 (usage), nothing started. `300000000000y` used to reach
//! `Instant + Duration` and panic ("overflow when adding duration to instant"), after
//! `lifeline supervise` had already started its command, which was left running orphaned.
#![cfg(feature = "cli")]

use std::process::{Command, Output};

/// What an operator could type: parses as humantime, far beyond anything `Instant` can hold.
const ABSURD: &str = "300000000000y";

fn lifeline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run lifeline")
}

/// Exit 2, no panic, and the one error line names `flag` and the maximum.
fn assert_refused(args: &[&str], flag: &str) {
    let out = lifeline(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    assert!(errors[0].contains(flag) && errors[0].contains("at most 100y"), "{args:?}: {stderr}");
}

#[test]
fn absurd_durations_are_usage_errors_and_nothing_is_started() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let touch = format!("touch {}; sleep 3", marker.display());
    let d = dir.path().to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["lock", "--wait", ABSURD, d, "--", "sh", "-c", &touch], "--wait"),
        (&["supervise", "--watchdog", ABSURD, "--", "sh", "-c", &touch], "--watchdog"),
        (&["supervise", "--grace", ABSURD, "--", "sh", "-c", &touch], "--grace"),
        (&["supervise", "--notify", "--start-timeout", ABSURD, "--", "sh", "-c", &touch], "--start-timeout"),
        (&["supervise", "--max-failures", "3", "--within", ABSURD, "--", "sh", "-c", &touch], "--within"),
        (&["restart", "--socket", "/nonexistent/control.sock", "--timeout", ABSURD], "--timeout"),
        (&["lock", "--wait", "101y", d, "--", "sh", "-c", &touch], "--wait"),
    ];
    for (args, flag) in cases {
        assert_refused(args, flag);
        assert!(!marker.exists(), "{args:?} started its command");
    }
    // No lock file either: nothing was attempted.
    assert!(!dir.path().join(".lifeline.lock").exists());
}

#[test]
fn the_maximum_itself_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let out = lifeline(&["lock", "--wait", "100y", dir.path().to_str().unwrap(), "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
