//! Every crate's error messages leave their cause to `source()`: a chain printer (anyhow's `{:#}`,
//! the `lifeline` CLI's one line, tracing's `error.sources`) shows the OS error exactly once.

use std::path::Path;

use tempfile::TempDir;

/// The chain as anyhow prints it on one line; asserts that its innermost cause is an OS error and
/// that this error's text appears exactly once (and no cause repeats the one before it).
fn assert_os_error_once(err: impl Into<anyhow::Error>) -> String {
    let err: anyhow::Error = err.into();
    let line = format!("{err:#}");
    let root = err.chain().last().expect("a chain has at least one error");
    assert!(root.downcast_ref::<std::io::Error>().is_some(), "the root cause is not an OS error: {line}");
    let os = root.to_string();
    assert_eq!(line.matches(&os).count(), 1, "the OS error {os:?} is not there exactly once: {line}");
    let causes: Vec<String> = err.chain().map(ToString::to_string).collect();
    for pair in causes.windows(2) {
        assert!(!pair[0].contains(&pair[1]), "{:?} repeats its source {:?}", pair[0], pair[1]);
    }
    line
}

fn missing(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("missing")
}

#[test]
fn dirlock_errors_name_the_os_error_once() {
    // Nobody may create a file in /sys, root included (EACCES, or EROFS where it is read-only).
    let err = dirlock::DirLock::acquire("/sys").expect_err("/sys cannot hold a lock file");
    let line = assert_os_error_once(err);
    assert!(line.starts_with("cannot "), "{line}");
}

#[test]
fn certwatch_errors_name_the_os_error_once() {
    let dir = TempDir::new().unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let source = certwatch::PemFiles::new(missing(&dir), missing(&dir)).with_provider(provider);
    let err = certwatch::check(&source).expect_err("no such files");
    let line = assert_os_error_once(err);
    assert!(line.contains("No such file or directory"), "{line}");
}

#[tokio::test]
async fn restart_socket_errors_name_the_os_error_once() {
    let dir = TempDir::new().unwrap();
    let Err(err) = restart_socket::Client::connect(missing(&dir)).await else { panic!("nothing listens") };
    assert!(err.is_no_server(), "{err:?}");
    let line = assert_os_error_once(err);
    assert!(line.starts_with("no server at "), "{line}");
}

#[tokio::test]
async fn handover_errors_name_the_os_error_once() {
    let dir = TempDir::new().unwrap();
    let Err(err) = handover::Handover::from_socket(handover::Config::default(), missing(&dir)).await else {
        panic!("nothing listens")
    };
    assert!(matches!(err, handover::Error::Connect { .. }), "{err:?}");
    let line = assert_os_error_once(err);
    assert!(line.starts_with("cannot connect to the handover socket "), "{line}");
}

#[test]
fn keepalive_errors_name_the_os_error_once() {
    let dir = TempDir::new().unwrap();
    let err = keepalive::Snapshot::read(&missing(&dir)).expect_err("no such file");
    let line = assert_os_error_once(err);
    assert!(line.starts_with("cannot read snapshot file "), "{line}");
}

#[tokio::test]
async fn service_errors_name_the_os_error_once_through_two_crates() {
    let dir = TempDir::new().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let control: &Path = &dir.path().join("no-such-dir").join("control.sock");
    let started =
        lifeline::service::Builder::new().state_dir(&state).control_socket(control).start::<()>().await;
    let Err(err) = started else { panic!("the control socket's directory is missing") };
    let line = assert_os_error_once(err);
    assert!(line.starts_with("cannot set up the control socket "), "{line}");
}
