//! An application on rustls' default features (the `aws-lc-rs` provider) that adds certwatch.
//!
//! Adding certwatch must not change which crypto provider rustls picks: its test builds a
//! `ServerConfig` with `ServerConfig::builder()` and certwatch's resolver, and serves a real
//! handshake. Built and tested alone (`cargo test -p lifeline-app-aws-lc-rs`, as `cargo xtask ci`
//! does): in a whole-workspace build cargo unifies rustls' features with the `ring` the other
//! members enable, which is exactly the situation this crate guards against.

#[path = "../../app-common.rs"]
mod app;

pub use app::server_config;
