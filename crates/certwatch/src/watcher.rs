//! The certificate watcher handle, [`CertWatcher`], and its lock-free resolver, [`CertResolver`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::broadcast;

use crate::check::{CertInfo, check};
use crate::config::WatchConfig;
use crate::engine::{Engine, Loader, Meta, Trigger};
use crate::error::Error;
use crate::event::{Outcome, ReloadEvent, Stats};
use crate::source::CertSource;

/// Serves the certificate of a [`CertSource`] and follows it as the files change.
///
/// Created with the first pair loaded and validated ([`new`](CertWatcher::new) fails
/// otherwise); [`start`](CertWatcher::start) spawns the watch task. Dropping the watcher stops
/// the task; resolvers already handed to rustls keep serving the last good pair.
pub struct CertWatcher {
    engine: Engine<CertLoader>,
}

struct CertLoader {
    source: Box<dyn CertSource>,
}

impl Loader for CertLoader {
    type Value = CertifiedKey;
    type Info = CertInfo;

    fn paths(&self) -> Vec<PathBuf> {
        self.source.paths()
    }

    fn describe(&self) -> String {
        self.source.describe()
    }

    fn load(&self) -> Result<(Arc<CertifiedKey>, CertInfo), Error> {
        let checked = check(&*self.source)?;
        Ok((checked.certified_key, checked.info))
    }
}

impl Meta for CertInfo {
    fn same(&self, other: &Self) -> bool {
        self.chain_digest == other.chain_digest
    }

    fn not_after(&self) -> SystemTime {
        self.not_after
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn summary(&self) -> String {
        format!("certificate {} (serial {}, sha256 {})", self.subject, self.serial, self.fingerprint)
    }
}

impl CertWatcher {
    /// Loads and validates the first pair (see [`check`](crate::check)). Needs no runtime;
    /// nothing is watched until [`start`](CertWatcher::start).
    ///
    /// An expired or not-yet-valid certificate is accepted and logged; see
    /// [`CertInfo::validity`].
    pub fn new(source: impl CertSource, config: WatchConfig) -> Result<Self, Error> {
        Ok(CertWatcher { engine: Engine::new(CertLoader { source: Box::new(source) }, config)? })
    }

    /// [`new`](CertWatcher::new) then [`start`](CertWatcher::start).
    pub fn watch(source: impl CertSource, config: WatchConfig) -> Result<Self, Error> {
        let watcher = Self::new(source, config)?;
        watcher.start()?;
        Ok(watcher)
    }

    /// Spawns the watch task on the current tokio runtime. Does nothing if it is already
    /// running; starts it again after [`stop`](CertWatcher::stop).
    pub fn start(&self) -> Result<(), Error> {
        self.engine.start()
    }

    /// Stops watching (idempotent). The last good pair keeps being served.
    pub fn stop(&self) {
        self.engine.stop();
    }

    /// Whether the watch task is running.
    pub fn is_running(&self) -> bool {
        self.engine.is_running()
    }

    /// The resolver to give rustls: `ServerConfig::builder()…with_cert_resolver(w.resolver())`
    /// or, for a client certificate, `ClientConfig::builder()…with_client_cert_resolver(…)`.
    pub fn resolver(&self) -> Arc<CertResolver> {
        Arc::new(CertResolver { current: Arc::clone(&self.engine.shared.value) })
    }

    /// Reload events from now on: every reload, refusal, expiry warning and fallback to polling.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.engine.shared.subscribe()
    }

    /// What the served certificate is.
    pub fn current(&self) -> Arc<CertInfo> {
        self.engine.shared.info()
    }

    /// The served pair itself.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.engine.shared.value.load_full()
    }

    /// Counters since creation.
    pub fn stats(&self) -> Stats {
        self.engine.shared.stats()
    }

    /// Reloads now (on `SIGHUP`, say), whether or not the watch task runs; reports like any
    /// other reload. `Err` means the pair was refused and the previous one is still served.
    pub async fn reload(&self) -> Result<Outcome, Arc<Error>> {
        self.engine.shared.attempt(Trigger::Manual).await
    }
}

impl fmt::Debug for CertWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertWatcher")
            .field("source", &self.engine.shared.loader.source.describe())
            .field("current", &self.current().fingerprint)
            .field("running", &self.is_running())
            .finish()
    }
}

/// Hands rustls the current pair: one atomic load and one reference-count increment, no lock.
///
/// Implements [`ResolvesServerCert`] (a server's certificate) and [`ResolvesClientCert`] (a
/// client certificate for mTLS). Cloning it is cheap; every clone follows the same watcher.
#[derive(Clone)]
pub struct CertResolver {
    current: Arc<ArcSwap<CertifiedKey>>,
}

impl CertResolver {
    /// The pair a handshake starting now would get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
