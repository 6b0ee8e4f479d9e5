//! The example HTTPS server (`crates/lifeline/examples/https-server.rs`, and the axum example
//! `axum-server.rs` built on the same `lifeline::service` API) end to end: real
//! processes driven through the `lifeline` CLI, real TLS on 127.0.0.1, real files, sockets and
//! signals, `flock(1)` and `systemd-socket-activate` as outside peers, and `lifeline supervise`
//! following its handovers.
//!
//! Build the binaries first (`cargo build -p lifeline-kit --features cli,full --bins --examples`), or let
//! `lifeline_tests::workspace_binary` build them.

mod args;
mod axum;
mod certs;
mod control;
mod handover;
mod http2;
mod locked;
mod metrics;
mod serving;
mod stop_mid_restart;
mod supervised;
mod support;
mod systemd;
mod upgrades;
