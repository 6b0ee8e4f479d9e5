//! Crate-level tests of the upgrade path that need crate internals: a fresh `Handover` without
//! adopting the process's fds (`Handover::bare`), and the seams of `spawn.rs`.

use std::time::Duration;

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
