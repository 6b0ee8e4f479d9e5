//! An application on rustls with the `ring` provider (no default features) that adds certwatch.
//!
//! Adding certwatch must not change which crypto provider rustls picks: its test builds a
//! `ServerConfig` with `ServerConfig::builder()` and certwatch's resolver, and serves a real
//! handshake. Built and tested alone (`cargo test -p lifeline-app-ring`, as `cargo xtask ci`
//! does): in a whole-workspace build cargo unifies rustls' features with the `aws-lc-rs` of
//! `lifeline-app-aws-lc-rs`, and two providers are as ambiguous to rustls as none.

#[path = "../../app-common.rs"]
mod app;

pub use app::server_config;
