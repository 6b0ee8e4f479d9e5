//! Keep long-running Unix services alive and serving while everything around them changes:
//! zero-downtime restarts, a state directory that only one instance holds, TLS certificates
//! that follow their files, a control socket, and a supervisor that follows it all.
//!
//! # A zero-downtime axum service, complete
//!
//! With the `service`, `tls` and `http` features (all in `full`), this is a whole production
//! server: `lifeline restart --socket /run/app.sock` (or SIGHUP, or SIGUSR1) starts a new process
//! of the binary now at the executable's path, hands it the listening socket, the lock, the
//! control socket and the state, waits until it is ready, and only then lets this one drain
//! and exit — without failing a request, HTTP/1.1 or HTTP/2. A new process that fails to start
//! changes nothing. SIGTERM drains and stops.
//!
//! ```no_run
//! # #[cfg(all(feature = "service", feature = "tls", feature = "http"))]
//! # mod example {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
//!
//! use axum::{Router, extract::State, routing::get};
//! use lifeline::service::{Builder, ServiceState, http};
//! use serde::{Deserialize, Serialize};
//!
//! /// What a new process continues from (it refuses a version it cannot read).
//! #[derive(Serialize, Deserialize)]
//! struct Hits { served: u64 }
//! impl ServiceState for Hits { const VERSION: u32 = 1; }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     // The application chooses the crypto provider; lifeline never does.
//!     let _ = rustls::crypto::ring::default_provider().install_default();
//!     let mut starting = Builder::new()
//!         .state_dir("/var/lib/app")                  // locked; a second instance is refused
//!         .tcp("https", "0.0.0.0:8443".parse()?)     // or inherited: predecessor, systemd
//!         .tls("/etc/app/cert.pem", "/etc/app/key.pem") // followed as they are rotated
//!         .control_socket("/run/app.sock")            // lifeline status / lifeline restart
//!         .start::<Hits>()
//!         .await?;                                    // every fallible step happens here
//!     let hits = Arc::new(AtomicU64::new(starting.take_state().map_or(0, |h| h.served)));
//!     let listener = starting.tcp("https")?;
//!     let tls = starting.tls_acceptor().expect("TLS is configured");
//!     let snapshot = hits.clone();
//!     // The commit: from here on this process serves (a predecessor drains and exits).
//!     let running = starting.ready(move || Hits { served: snapshot.load(SeqCst) }).await?;
//!
//!     let app = Router::new().route("/", get(hello)).with_state(hits);
//!     http::serve_tls(&running, listener, tls, http::TowerToHyperService::new(app)).await;
//!     running.drain().await; // handed over, or stopped: in-flight requests finish
//!     Ok(())
//! }
//!
//! async fn hello(State(hits): State<Arc<AtomicU64>>) -> String {
//!     format!("request #{}\n", hits.fetch_add(1, SeqCst) + 1)
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! Run it under `lifeline supervise --notify -- app` (or a systemd unit with `Type=notify`):
//! each handover sends `MAINPID=` and the supervisor follows it instead of restarting.
//! [`service`] documents the commit protocol and every builder option with its default;
//! `examples/axum-server.rs` and `examples/https-server.rs` are runnable versions.
//!
//! # The mechanisms, à la carte
//!
//! `lifeline` is a facade over five small crates, each usable on its own. Enable the mechanisms you
//! need as features (`default = []`), or `full` for all of them:
//!
//! | feature | crate | what it does |
//! |---|---|---|
//! | `dirlock` | [`dirlock`](https://docs.rs/dirlock) | exclusive lock files for directories |
//! | `certwatch` | [`certwatch`](https://docs.rs/certwatch) | the served TLS certificate follows the files |
//! | `restart-socket` | [`restart-socket`](https://docs.rs/restart-socket) | ask a running service to restart |
//! | `handover` | [`handover`](https://docs.rs/handover) | zero-downtime restart |
//! | `keepalive` | [`keepalive`](https://docs.rs/keepalive) | supervise a process |
//! | `service` | this crate's [`service`] module | the mechanisms composed for any tokio server |
//! | `tls`, `http` | [`service`] | TLS that follows its files; HTTP/1.1 + HTTP/2 for hyper and tower |
//!
//! The `cli` feature builds the `lifeline` command-line tool.
//!
//! # Crypto provider
//!
//! Nothing here chooses rustls' crypto provider: an application on rustls' default features
//! gets `aws-lc-rs`, one that enables `ring` gets `ring`, and `tls` uses whichever is the
//! process default (or the one given to the builder).
//!
//! # Platforms
//!
//! `dirlock` and `certwatch` work on any Unix; `restart-socket`, `handover`, `keepalive`,
//! `service` and `cli` are Linux only (pidfds, memfd seals, `SO_PEERCRED`, `/proc`). Enabling
//! one of those elsewhere stops the build with a `compile_error!` that says so.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(unix))]
compile_error!("lifeline needs a Unix system (and Linux for every mechanism but dirlock and certwatch)");

#[cfg(all(
    unix,
    not(target_os = "linux"),
    any(
        feature = "restart-socket",
        feature = "handover",
        feature = "keepalive",
        feature = "service",
        feature = "cli"
    )
))]
compile_error!(
    "lifeline's restart-socket, handover, keepalive, service and cli features support Linux only; on other Unix systems enable only dirlock and certwatch"
);

#[cfg(feature = "dirlock")]
#[cfg_attr(docsrs, doc(cfg(feature = "dirlock")))]
#[doc(inline)]
pub use dirlock;

#[cfg(feature = "certwatch")]
#[cfg_attr(docsrs, doc(cfg(feature = "certwatch")))]
#[doc(inline)]
pub use certwatch;

#[cfg(feature = "restart-socket")]
#[cfg_attr(docsrs, doc(cfg(all(feature = "restart-socket", target_os = "linux"))))]
#[doc(inline)]
pub use restart_socket;

#[cfg(feature = "handover")]
#[cfg_attr(docsrs, doc(cfg(all(feature = "handover", target_os = "linux"))))]
#[doc(inline)]
pub use handover;

#[cfg(feature = "keepalive")]
#[cfg_attr(docsrs, doc(cfg(all(feature = "keepalive", target_os = "linux"))))]
#[doc(inline)]
pub use keepalive;

#[cfg(feature = "service")]
#[cfg_attr(docsrs, doc(cfg(all(feature = "service", target_os = "linux"))))]
pub mod service;
