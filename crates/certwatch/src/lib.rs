//! The TLS certificate a rustls server presents follows the certificate and key files on disk.
//!
//! Certificates are renewed by tools that know nothing about your server: certbot replaces
//! symlinks, cert-manager swaps a Kubernetes secret's `..data` symlink, an operator runs
//! `mv new.pem cert.pem`. `certwatch` notices each of these, waits for the writer to finish
//! (debounce), validates the new pair, and only then swaps it in — atomically and without a
//! lock on the handshake path. A torn, truncated, mismatched or missing pair never replaces a
//! good one: the server keeps presenting the last good certificate, and the failure is logged
//! and reported as an event.
//!
//! # Serving a certificate that follows its files
//!
//! ```
//! use std::sync::Arc;
//! use certwatch::{CertWatcher, PemFiles, ReloadEvent, WatchConfig};
//!
//! # fn write_pair(dir: &std::path::Path) {
//! #     let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! #     std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
//! #     std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # write_pair(dir.path());
//! # let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
//! let provider = Arc::new(rustls::crypto::ring::default_provider());
//! let source = PemFiles::new(&cert_path, &key_path).with_provider(provider.clone());
//! // Loads and validates the pair now: a bad pair is an error before anything is served.
//! let certs = CertWatcher::watch(source, WatchConfig::default())?;
//! let tls = rustls::ServerConfig::builder_with_provider(provider)
//!     .with_safe_default_protocol_versions()?
//!     .with_no_client_auth()
//!     .with_cert_resolver(certs.resolver());
//! // Hand `Arc::new(tls)` to tokio-rustls' TlsAcceptor; log what happens to the files:
//! let mut events = certs.subscribe();
//! tokio::spawn(async move {
//!     while let Ok(event) = events.recv().await {
//!         match event {
//!             ReloadEvent::Failed(_) => tracing::error!("{event}"),
//!             _ => tracing::info!("{event}"),
//!         }
//!     }
//! });
//! println!("serving {} (serial {})", certs.current().subject, certs.current().serial);
//! # Ok(())
//! # }
//! ```
//!
//! Keep the [`CertWatcher`] alive as long as the server runs: dropping it stops the watching
//! (the resolver keeps serving the last pair).
//!
//! # Crypto provider
//!
//! certwatch never chooses rustls' crypto provider: it depends on rustls without `ring` or
//! `aws-lc-rs`, so adding it changes nothing about the provider your application gets (rustls'
//! default features give `aws-lc-rs`). Keys are loaded with the provider given to
//! [`PemFiles::with_provider`], else with the process default — installed by
//! `CryptoProvider::install_default`, or by the first `ServerConfig::builder()` when rustls'
//! features select exactly one provider; without either, loading fails with
//! [`Error::NoCryptoProvider`]. The `ring` and `aws-lc-rs` features add only constructors that
//! name one ([`PemFiles::ring`], [`PemFiles::aws_lc_rs`], and the same on [`ClientCaFile`]);
//! fingerprints are computed with `sha2`, whatever the provider.
//!
//! ```
//! # fn pair(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
//! #     let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! #     std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
//! #     std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
//! #     (dir.join("cert.pem"), dir.join("key.pem"))
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let (cert, key) = pair(dir.path());
//! // The application's choice, made once in `main`; certwatch follows it.
//! let _ = rustls::crypto::ring::default_provider().install_default();
//! let certs = certwatch::CertWatcher::new(certwatch::PemFiles::new(&cert, &key), certwatch::WatchConfig::default())?;
//! let tls = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(certs.resolver());
//! # drop(tls);
//! # Ok(())
//! # }
//! ```
//!
//! # What else is here
//!
//! - [`check`] validates a pair exactly as the watcher does; `lifeline cert check` is built on
//!   it, so operators can test a pair before they rotate it in.
//! - [`CertSource`] is the narrow trait a watcher loads from; [`PemFiles`] is the PEM
//!   implementation (PKCS#8, PKCS#1 and SEC1 keys; any rustls `CryptoProvider`).
//! - [`SniResolver`] serves several watched certificates by server name (exact and
//!   `*.example.com`, plus a default).
//! - [`CertDir`] serves a whole folder of pairs by server name (`NAME.crt` + `NAME.key`, the
//!   names from each certificate's SANs), adding, replacing and removing pairs as their files
//!   come and go, with one watch for the folder and a reload of only the pairs that changed.
//! - [`ClientCaWatcher`] does the same for the CA bundle of an mTLS server: its
//!   [`ReloadingClientVerifier`] is rebuilt with rustls' `WebPkiClientVerifier` on change.
//! - [`CertResolver`] also implements `ResolvesClientCert`, for an mTLS *client* whose
//!   certificate rotates.
//!
//! # How changes are noticed
//!
//! The *parent directories* of the files — and of every hop of their symlinks — are watched
//! (inotify, non-recursive), not the files: an atomic `rename` over a file, delete-then-create,
//! an in-place rewrite and a Kubernetes `..data` symlink swap all show up as events there.
//! Any event in a watched directory starts the debounce ([`WatchConfig::debounce`], 150 ms);
//! when it ends, the pair is loaded and compared with the served one: a different valid pair
//! is swapped in, the same one is ignored, an invalid one is reported. A slow re-check
//! ([`WatchConfig::recheck_interval`], 60 s) reloads anyway, so a fix whose event was missed
//! is still picked up. When notifications cannot be used (inotify limits, a missing directory)
//! or [`WatchMode::Poll`] is chosen, the files' metadata is polled instead.
//!
//! # Ordering and safety
//!
//! - [`CertWatcher::new`] loads and validates synchronously and fails with a typed [`Error`]
//!   if the first pair is bad, so a server refuses to start rather than serve nothing.
//!   [`start`](CertWatcher::start) must run inside a tokio runtime; it and
//!   [`stop`](CertWatcher::stop) are idempotent.
//! - Before a swap: the files are read (at most [`DEFAULT_MAX_FILE_SIZE`] each), the chain must
//!   be non-empty and its leaf a parseable X.509 certificate, and the key must match the leaf
//!   (`CertifiedKey::keys_match`). An expired or not-yet-valid leaf is *reported* (log, event,
//!   [`CertInfo::validity`]), not refused: the alternative is serving an older one.
//! - The served pair is swapped first and its metadata second, so [`CertWatcher::current`]
//!   never describes a pair that is not yet served.
//! - Each thread that resolves keeps the pair it last served (see [`CertResolver`]): a thread
//!   that stops doing handshakes holds the previous key in memory until it resolves again or
//!   exits. Nothing is *served* from that cache without first checking it is still current.
//! - Subscribe before you expect an event: events are broadcast to current subscribers only.
//!   The initial load produces no event.
//! - Writers should still replace files atomically (write elsewhere, then `rename`): a
//!   truncated write that happens to leave a complete leaf and a matching key is a valid pair.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(unix))]
compile_error!(
    "certwatch needs a Unix system: it reads certificate files through O_NONBLOCK descriptors checked with fstat"
);

mod check;
mod client_ca;
mod config;
mod dir;
mod engine;
mod error;
mod event;
mod load;
pub mod metrics;
mod sni;
mod source;
mod watch;
mod watcher;

pub use check::{CertInfo, Checked, Validity, check};
pub use client_ca::{CaInfo, ClientCaFile, ClientCaWatcher, ReloadingClientVerifier};
pub use config::{MAX_INTERVAL, WatchConfig, WatchMode};
pub use dir::{CertDir, CertDirResolver, DirStats, PemDir};
pub use error::Error;
pub use event::{Outcome, ReloadEvent, Stats};
pub use load::{LOAD_NICENESS, LoadOn};
pub use sni::SniResolver;
pub use source::{CertSource, DEFAULT_MAX_FILE_SIZE, PemFiles};
pub use watcher::{CertResolver, CertWatcher, THREAD_CACHE_ENTRIES};
