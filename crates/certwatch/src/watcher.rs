//! The certificate watcher handle, [`CertWatcher`], and its lock-free resolver, [`CertResolver`].

use std::cell::RefCell;
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
    const KIND: &'static str = "certificate";
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

/// Hands rustls the current pair without a lock.
///
/// Implements [`ResolvesServerCert`] (a server's certificate) and [`ResolvesClientCert`] (a
/// client certificate for mTLS). Cloning it is cheap; every clone follows the same watcher.
///
/// The handshake path costs one reference-count increment — the floor, since rustls takes an
/// `Arc` — plus a pointer comparison: each thread keeps the last pair it handed out (for up to
/// [`THREAD_CACHE_ENTRIES`] resolvers) and takes a fresh one from the `ArcSwap` only when the
/// pointer there changed. One consequence: a thread that stops doing handshakes keeps the pair
/// it last served in memory until it resolves again or exits.
#[derive(Clone)]
pub struct CertResolver {
    current: Arc<ArcSwap<CertifiedKey>>,
}

/// How many resolvers each thread caches the current pair of (more alternate without harm:
/// a miss costs one `ArcSwap::load_full`).
pub const THREAD_CACHE_ENTRIES: usize = 4;

type PairCache = arc_swap::Cache<Arc<ArcSwap<CertifiedKey>>, Arc<CertifiedKey>>;

thread_local! {
    static PAIR_CACHE: RefCell<Vec<PairCache>> = const { RefCell::new(Vec::new()) };
}

impl CertResolver {
    /// The pair a handshake starting now gets.
    pub fn current(&self) -> Arc<CertifiedKey> {
        PAIR_CACHE
            .try_with(|cell| {
                let mut caches = cell.try_borrow_mut().ok()?;
                let mine: &ArcSwap<CertifiedKey> = &self.current;
                let index = if let Some(i) = caches.iter().position(|c| std::ptr::eq(c.arc_swap(), mine)) {
                    i
                } else {
                    if caches.len() >= THREAD_CACHE_ENTRIES {
                        caches.remove(0);
                    }
                    caches.push(arc_swap::Cache::new(Arc::clone(&self.current)));
                    caches.len() - 1
                };
                // `load` compares the cached pointer with the swapped one and refreshes on change.
                Some(Arc::clone(caches[index].load()))
            })
            .ok()
            .flatten()
            // During thread teardown (or a re-entrant call) the cache is unavailable.
            .unwrap_or_else(|| self.current.load_full())
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
