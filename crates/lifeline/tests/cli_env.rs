//! The CLI's environment as an input: a malformed `RUST_LOG` (anyone who can set our environment
//! can write one) falls back to the default filter instead of failing or panicking.
#![cfg(feature = "cli")]

use std::process::Command;

#[test]
fn a_malformed_rust_log_falls_back_to_the_default_filter() {
    let dir = tempfile::tempdir().unwrap();
    for filter in ["[[[", "lifeline=nonsense", "\u{1}\u{2}", &"x=".repeat(10_000)] {
        let out = Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .args(["lock", dir.path().to_str().unwrap(), "--", "true"])
            .env("RUST_LOG", filter)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "RUST_LOG={filter:.20?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
