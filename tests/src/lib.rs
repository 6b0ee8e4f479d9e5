//! Shared helpers for lifeline's cross-crate integration tests: locating the binaries under test,
//! waiting on real conditions with generous timeouts, and generating test certificates.

pub mod certs;
pub mod fixture;
pub mod https;
pub mod lines;
pub mod load;
pub mod proc;
pub mod systemd;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen "at once" before it fails.
/// Generous on purpose: CI machines are slow and loaded; a passing test never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The cargo target directory the running test binary was built into (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test-binary>
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a binary of another workspace package (`lifeline`) or an example (`examples/NAME`).
///
/// `cargo test --workspace` (and `cargo xtask ci`) builds them beside the test binaries. When only
/// this package is tested they are missing: then they are built once into a separate target
/// directory (the outer cargo may still hold the lock on this one).
pub fn workspace_binary(relative: &str) -> PathBuf {
    let path = target_dir().join(relative);
    if path.exists() {
        return path;
    }
    let nested = target_dir().join("nested-build");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", "lifeline-kit", "--features", "cli,full", "--bins", "--examples"])
        .env("CARGO_TARGET_DIR", &nested)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of the lifeline binaries failed");
    let path = nested.join("debug").join(relative);
    assert!(path.exists(), "{} not found after building", path.display());
    path
}

/// The `lifeline` CLI binary.
pub fn lifeline_bin() -> PathBuf {
    workspace_binary("lifeline")
}

/// The example HTTPS server (`crates/lifeline/examples/https-server.rs`).
pub fn https_server_bin() -> PathBuf {
    workspace_binary("examples/https-server")
}

/// Polls `check` until it returns `Some`, or panics naming `what` after [`PATIENCE`].
///
/// For conditions that have no event to wait on (a file appearing, a port answering), checked
/// every few milliseconds; the wait ends as soon as the condition holds.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// [`wait_for`] for async tests: polls `check` on the tokio timer until it holds, or panics
/// naming `what` after [`PATIENCE`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
