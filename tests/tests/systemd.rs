//! The shipped unit files (`deploy/systemd/`) under a real systemd: each test prepares a unit
//! directory from them (only paths, port and user rewritten: `lifeline_tests::systemd`), boots
//! `systemd-sandbox` on it and runs one scenario of the `systemd-scenario` driver inside.
//!
//! The sandbox needs root: the scenarios are `#[ignore = "needs root"]` (reported as skipped by
//! nextest as another user; `cargo xtask ci` runs them as root) and assert root when run. As root
//! a sandbox that cannot boot (exit 77) fails the test with its reason — CI runs as root and has
//! systemd.

use std::ffi::OsStr;
use std::path::PathBuf;

use lifeline_tests::systemd::{Binaries, CANNOT_BOOT, Prepared, is_root};

/// Runs `scenario` in a fresh sandbox; panics with the driver's output and the services' logs
/// unless it passed.
fn scenario(scenario: &str) {
    let binaries = Binaries {
        server: lifeline_tests::https_server_bin(),
        lifeline: lifeline_tests::lifeline_bin(),
        notify_program: Some(PathBuf::from(env!("CARGO_BIN_EXE_keepalive-notify"))),
    };
    let prepared = Prepared::new(&binaries).expect("prepare the units");
    let driver = PathBuf::from(env!("CARGO_BIN_EXE_systemd-scenario"));
    let out = prepared
        .run(&driver, &[prepared.config.as_os_str(), OsStr::new(scenario)])
        .expect("run systemd-sandbox");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert_ne!(
        out.status.code(),
        Some(CANNOT_BOOT),
        "systemd-sandbox could not boot systemd although this runs as root: {}",
        stderr.trim()
    );
    assert!(
        out.status.success(),
        "scenario `{scenario}` failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n{}",
        out.status,
        prepared.deployment.logs(60)
    );
}

#[test]
#[ignore = "needs root: systemd-sandbox boots systemd in new namespaces"]
fn start_serves_https_as_systemds_main_pid() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    scenario("start");
}

#[test]
#[ignore = "needs root: systemd-sandbox boots systemd in new namespaces"]
fn ten_reloads_under_load_fail_no_request_and_main_pid_follows_each() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    scenario("reload");
}

#[test]
#[ignore = "needs root: systemd-sandbox boots systemd in new namespaces"]
fn restarts_with_the_socket_unit_refuse_nothing_and_continue_the_state() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    scenario("restart");
}

#[test]
#[ignore = "needs root: systemd-sandbox boots systemd in new namespaces"]
fn restarts_without_socket_activation_keep_the_listener_and_the_state_in_the_fd_store() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    scenario("restart-standalone");
}

#[test]
#[ignore = "needs root: systemd-sandbox boots systemd in new namespaces"]
fn a_broken_binary_fails_the_reload_and_the_old_main_pid_serves_on() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    scenario("broken-upgrade");
}

#[test]
#[ignore = "needs root: systemd-sandbox boots systemd in new namespaces"]
fn a_server_that_stops_feeding_the_watchdog_is_restarted() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    scenario("watchdog");
}

#[test]
#[ignore = "needs root: systemd-sandbox boots systemd in new namespaces"]
fn stop_leaves_no_process_lock_file_or_control_socket() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    scenario("stop");
}

#[test]
#[ignore = "needs root: systemd-sandbox boots systemd in new namespaces"]
fn a_plain_program_under_lifeline_supervise_is_active_with_the_supervisor_as_main_pid() {
    assert!(is_root(), "run as root (cargo xtask ci does, with --run-ignored)");
    scenario("supervise");
}

/// "Each line commented": every setting of the shipped units has a comment line right above it
/// (a setting continued with `\` counts once). Needs no root.
#[test]
fn every_setting_of_the_shipped_units_has_a_comment_above_it() {
    let dir = lifeline_tests::systemd::workspace_root().join("deploy/systemd");
    let mut offenders = Vec::new();
    let mut units = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        units += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let (mut previous, mut continued) = (String::new(), false);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if continued {
                continued = line.ends_with('\\');
                continue;
            }
            let setting = !(line.is_empty() || line.starts_with('#') || line.starts_with('['));
            if setting && !previous.starts_with('#') {
                offenders.push(format!("{}:{}: {line}", path.display(), i + 1));
            }
            continued = setting && line.ends_with('\\');
            line.clone_into(&mut previous);
        }
    }
    assert!(units >= 4, "only {units} files in {}", dir.display());
    assert!(offenders.is_empty(), "settings without a comment above them: {offenders:#?}");
}
