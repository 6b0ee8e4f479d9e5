//! Keep long-running Unix services alive and serving while everything around them changes.
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
//!
//! The `cli` feature builds the `lifeline` command-line tool.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "dirlock")]
#[cfg_attr(docsrs, doc(cfg(feature = "dirlock")))]
#[doc(inline)]
pub use dirlock;

#[cfg(feature = "certwatch")]
#[cfg_attr(docsrs, doc(cfg(feature = "certwatch")))]
#[doc(inline)]
pub use certwatch;

#[cfg(feature = "restart-socket")]
#[cfg_attr(docsrs, doc(cfg(feature = "restart-socket")))]
#[doc(inline)]
pub use restart_socket;

#[cfg(feature = "handover")]
#[cfg_attr(docsrs, doc(cfg(feature = "handover")))]
#[doc(inline)]
pub use handover;

#[cfg(feature = "keepalive")]
#[cfg_attr(docsrs, doc(cfg(feature = "keepalive")))]
#[doc(inline)]
pub use keepalive;

#[cfg(feature = "service")]
#[cfg_attr(docsrs, doc(cfg(feature = "service")))]
pub mod service;
