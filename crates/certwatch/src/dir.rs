//! A folder of certificate/key pairs served by SNI: [`CertDir`], [`PemDir`], [`CertDirResolver`].
//!
//! Every `NAME.crt` with a `NAME.key` beside it is one pair (the suffixes are configurable); the
//! names a pair serves are its certificate's DNS subject alternative names. Pairs are added,
//! replaced and removed as their files appear, change and go. One watch covers the folder, and a
//! change reloads only the pairs whose files changed: rotating one of a thousand pairs reads,
//! parses and validates one pair.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::check::{CertInfo, check};
use crate::config::{WatchConfig, WatchMode};
use crate::error::Error;
use crate::event::ReloadEvent;
use crate::source::{DEFAULT_MAX_FILE_SIZE, PemFiles};

/// Where a [`CertDir`] finds its pairs: a directory, and how pairs are named in it.
#[derive(Clone)]
pub struct PemDir {
    dir: PathBuf,
    cert_suffix: String,
    key_suffix: String,
    provider: Option<Arc<CryptoProvider>>,
    max_file_size: u64,
    default_pair: Option<String>,
}

impl PemDir {
    /// The pairs in `dir`: `NAME.crt` (the chain, leaf first) with `NAME.key` (its key), PEM.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PemDir {
            dir: dir.into(),
            cert_suffix: ".crt".to_owned(),
            key_suffix: ".key".to_owned(),
            provider: None,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            default_pair: None,
        }
    }

    /// Other file name endings for the certificate and the key (default `.crt` and `.key`).
    pub fn suffixes(mut self, cert: &str, key: &str) -> Self {
        cert.clone_into(&mut self.cert_suffix);
        key.clone_into(&mut self.key_suffix);
        self
    }

    /// Loads keys with this crypto provider instead of the process-wide default.
    pub fn with_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Refuses files larger than `bytes` (default [`DEFAULT_MAX_FILE_SIZE`]).
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Serves the pair `NAME` (its files `NAME.crt` and `NAME.key`) to clients that send no
    /// server name or one no pair serves. Without it such handshakes fail.
    pub fn default_pair(mut self, name: &str) -> Self {
        self.default_pair = Some(name.to_owned());
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pair name a file of the directory belongs to, if it is a certificate or key file.
    fn stem_of(&self, file_name: &str) -> Option<String> {
        [&self.cert_suffix, &self.key_suffix]
            .into_iter()
            .find_map(|suffix| file_name.strip_suffix(suffix.as_str()))
            .filter(|stem| !stem.is_empty() && !stem.starts_with('.'))
            .map(str::to_owned)
    }

    fn files(&self, stem: &str) -> PemFiles {
        let files = PemFiles::new(
            self.dir.join(format!("{stem}{}", self.cert_suffix)),
            self.dir.join(format!("{stem}{}", self.key_suffix)),
        )
        .max_file_size(self.max_file_size);
        match &self.provider {
            Some(p) => files.with_provider(Arc::clone(p)),
            None => files,
        }
    }

    /// Every pair name with a certificate file in the directory now.
    fn list(&self) -> Result<Vec<String>, Error> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|source| Error::Read { path: self.dir.clone(), source })?;
        let mut stems: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name().to_str()?.strip_suffix(self.cert_suffix.as_str()).map(str::to_owned)
            })
            .filter(|stem| !stem.is_empty() && !stem.starts_with('.'))
            .collect();
        stems.sort();
        Ok(stems)
    }
}

impl fmt::Debug for PemDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemDir")
            .field("dir", &self.dir)
            .field("cert_suffix", &self.cert_suffix)
            .field("key_suffix", &self.key_suffix)
            .field("default_pair", &self.default_pair)
            .finish_non_exhaustive()
    }
}

/// The identity and change times of a pair's two files: what says "changed, reload it".
type PairSig = [crate::watch::FileSig; 2];

fn pair_sig(files: &PemFiles) -> PairSig {
    let sig = crate::watch::signature(&[files.cert_path().to_path_buf(), files.key_path().to_path_buf()]);
    let mut it = sig.into_iter();
    let missing = crate::watch::FileSig::Unavailable(std::io::ErrorKind::NotFound);
    [it.next().unwrap_or_else(|| missing.clone()), it.next().unwrap_or(missing)]
}

fn present(sig: &PairSig) -> bool {
    sig.iter().all(|s| matches!(s, crate::watch::FileSig::Present { .. }))
}

/// One loaded pair.
#[derive(Clone)]
struct Pair {
    sig: PairSig,
    key: Arc<CertifiedKey>,
    info: CertInfo,
    /// Normalised DNS names (and `*.` wildcards) it serves.
    names: Vec<String>,
}

/// A fast hash for the name index: a name is hashed on every handshake, so `SipHash`'s
/// resistance to flooding would be paid for nothing — the keys are the certificates' names, fixed by whoever
/// writes the folder, and a client's name can only miss or hit them. A word at a time: multiply,
/// fold the high half down (names that differ only in a word's high bytes, `host-0123`, must not
/// cancel out in the next word), and a final avalanche (murmur3's `fmix64`) so that the low bits
/// the table indexes with depend on every byte.
#[derive(Default, Clone, Copy)]
struct NameHasher(u64);

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

impl NameHasher {
    fn mix(&mut self, word: u64) {
        let h = (self.0 ^ word).wrapping_mul(SEED);
        self.0 = h ^ (h >> 29);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.mix(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            // The length goes in too: "ab" and "ab\0" must differ.
            self.mix(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
        }
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

type NameMap = HashMap<Arc<str>, Arc<CertifiedKey>, BuildHasherDefault<NameHasher>>;

/// What the handshake path reads: name → pair, immutable, swapped whole.
#[derive(Default)]
struct Index {
    exact: NameMap,
    /// Keyed by the part after `*.`.
    wildcard: NameMap,
    default: Option<Arc<CertifiedKey>>,
}

impl Index {
    fn select(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        crate::sni::by_name(&self.exact, &self.wildcard, self.default.as_ref(), server_name)
    }
}

/// State shared by the handle, the resolver and the watch task.
struct Shared {
    source: PemDir,
    config: WatchConfig,
    pairs: Mutex<BTreeMap<String, Pair>>,
    index: Arc<ArcSwap<Index>>,
    events: broadcast::Sender<ReloadEvent>,
    /// Pairs read, parsed and validated since creation (the first load included).
    loads: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    removed: AtomicU64,
    polling: AtomicBool,
}

/// What a load of some pairs found.
enum Found {
    Loaded(Box<Pair>),
    Failed(Error),
    Gone,
}

impl Shared {
    /// Reads, parses and validates the pairs `stems` (a missing pair is `Gone`). Blocking: runs
    /// off the runtime.
    fn load(&self, stems: &[String]) -> Vec<(String, Found)> {
        stems
            .iter()
            .map(|stem| {
                let files = self.source.files(stem);
                let sig = pair_sig(&files);
                if !present(&sig) {
                    return (stem.clone(), Found::Gone);
                }
                self.loads.fetch_add(1, Ordering::Relaxed);
                let found = match check(&files) {
                    Ok(checked) => Found::Loaded(Box::new(Pair {
                        sig,
                        names: served_names(stem, &checked.info),
                        key: checked.certified_key,
                        info: checked.info,
                    })),
                    Err(err) => Found::Failed(err),
                };
                (stem.clone(), found)
            })
            .collect()
    }

    /// Applies what a load found; rebuilds and swaps the index if anything changed.
    fn apply(&self, found: Vec<(String, Found)>, initial: bool) {
        let mut pairs = self.pairs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = false;
        for (stem, found) in found {
            match found {
                Found::Loaded(pair) => {
                    if pairs.get(&stem).is_some_and(|old| old.info.chain_digest == pair.info.chain_digest) {
                        // Same certificate (files touched, or rewritten with the same content).
                        if let Some(old) = pairs.get_mut(&stem) {
                            old.sig = pair.sig;
                        }
                        continue;
                    }
                    if !initial {
                        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!(pair = %stem, names = ?pair.names, "serving {}", pair.info.subject);
                    let _ = self.events.send(ReloadEvent::Reloaded(pair.info.clone()));
                    pairs.insert(stem, *pair);
                    changed = true;
                }
                Found::Failed(err) => {
                    self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pair = %stem, "refused, keeping what was served: {}", crate::error::chain(&err));
                    let _ = self.events.send(ReloadEvent::Failed(Arc::new(err)));
                }
                Found::Gone => {
                    if pairs.remove(&stem).is_some() {
                        self.removed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(pair = %stem, "files gone; no longer served");
                        changed = true;
                    }
                }
            }
        }
        if changed || initial {
            self.index.store(Arc::new(build_index(&pairs, self.source.default_pair.as_deref())));
        }
    }

    /// Which known or present pairs changed since they were loaded (by their files' metadata).
    fn changed_stems(&self) -> Result<Vec<String>, Error> {
        let mut stems: HashSet<String> = self.source.list()?.into_iter().collect();
        let pairs = self.pairs.lock().unwrap_or_else(PoisonError::into_inner);
        stems.extend(pairs.keys().cloned());
        Ok(stems
            .into_iter()
            .filter(|stem| pairs.get(stem).is_none_or(|p| p.sig != pair_sig(&self.source.files(stem))))
            .collect())
    }
}

/// The names a pair serves: its DNS SANs, else its file name if that is a DNS name.
fn served_names(stem: &str, info: &CertInfo) -> Vec<String> {
    let mut names: Vec<String> =
        info.sans.iter().filter_map(|s| s.strip_prefix("DNS:")).filter_map(crate::sni::normalize).collect();
    if names.is_empty()
        && let Some(name) = crate::sni::normalize(stem)
    {
        names.push(name);
    }
    names.sort();
    names.dedup();
    names
}

/// The index of `pairs`: a name two pairs claim goes to the one valid longest (a renewed
/// certificate beside the old one), then to the first by pair name.
fn build_index(pairs: &BTreeMap<String, Pair>, default: Option<&str>) -> Index {
    let mut index = Index::default();
    let mut chosen: HashMap<&str, (&str, SystemTime)> = HashMap::new();
    for (stem, pair) in pairs {
        for name in &pair.names {
            let better = match chosen.get(name.as_str()) {
                None => true,
                Some((_, not_after)) => pair.info.not_after > *not_after,
            };
            if better {
                chosen.insert(name, (stem, pair.info.not_after));
            }
        }
    }
    for (name, (stem, _)) in chosen {
        let Some(pair) = pairs.get(stem) else { continue };
        let key = Arc::clone(&pair.key);
        match name.strip_prefix("*.") {
            Some(suffix) => index.wildcard.insert(Arc::from(suffix), key),
            None => index.exact.insert(Arc::from(name), key),
        };
    }
    index.default = default.and_then(|d| pairs.get(d)).map(|p| Arc::clone(&p.key));
    index
}

/// A folder of certificate/key pairs, served by SNI, following the files.
///
/// [`CertDir::new`] loads every pair present (a bad pair is reported and skipped, not fatal: one
/// broken name must not take the others down); [`CertDir::start`] spawns the watch task; the
/// [`CertDirResolver`] it hands out is what rustls calls. Names are added, changed and removed
/// as files appear, change and go; a change reloads only the pairs whose files changed, after
/// the [debounce](WatchConfig::debounce). A pair that fails [`check`](crate::check) never
/// replaces the one being served. Dropping the handle stops the watching; resolvers keep serving
/// the last index.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # for name in ["a.example.com", "b.example.com"] {
/// #     let c = rcgen::generate_simple_self_signed(vec![name.into()])?;
/// #     std::fs::write(dir.path().join(format!("{name}.crt")), c.cert.pem())?;
/// #     std::fs::write(dir.path().join(format!("{name}.key")), c.signing_key.serialize_pem())?;
/// # }
/// use certwatch::{CertDir, PemDir, WatchConfig};
/// let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
/// let certs = CertDir::new(PemDir::new(dir.path()).with_provider(provider.clone()), WatchConfig::default())?;
/// assert_eq!(certs.names(), ["a.example.com", "b.example.com"]);
/// let tls = rustls::ServerConfig::builder_with_provider(provider)
///     .with_safe_default_protocol_versions()?
///     .with_no_client_auth()
///     .with_cert_resolver(certs.resolver());
/// # let _ = tls; Ok(()) }
/// ```
pub struct CertDir {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl CertDir {
    /// Loads every pair in the directory now. Fails only if the directory cannot be read. Needs
    /// no runtime; nothing is watched until [`start`](CertDir::start).
    pub fn new(source: PemDir, config: WatchConfig) -> Result<CertDir, Error> {
        let config = config.sanitized();
        let stems = source.list()?;
        let (events, _) = broadcast::channel(config.event_capacity);
        let shared = Arc::new(Shared {
            source,
            config,
            pairs: Mutex::new(BTreeMap::new()),
            index: Arc::new(ArcSwap::from_pointee(Index::default())),
            events,
            loads: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            polling: AtomicBool::new(false),
        });
        let found = shared.load(&stems);
        shared.apply(found, true);
        tracing::info!(dir = %shared.source.dir.display(), pairs = shared.pairs.lock().unwrap_or_else(PoisonError::into_inner).len(), "loaded");
        Ok(CertDir { shared, task: Mutex::new(None) })
    }

    /// [`new`](CertDir::new) then [`start`](CertDir::start).
    pub fn watch(source: PemDir, config: WatchConfig) -> Result<CertDir, Error> {
        let dir = Self::new(source, config)?;
        dir.start()?;
        Ok(dir)
    }

    /// Spawns the watch task on the current tokio runtime (idempotent).
    pub fn start(&self) -> Result<(), Error> {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        *task = Some(handle.spawn(run(Arc::clone(&self.shared))));
        Ok(())
    }

    /// Stops watching (idempotent); the last index keeps being served.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }

    /// The resolver to give rustls.
    pub fn resolver(&self) -> Arc<CertDirResolver> {
        Arc::new(CertDirResolver { index: Arc::clone(&self.shared.index) })
    }

    /// Reload events: every pair served anew, and every refusal.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.shared.events.subscribe()
    }

    /// The names served now, sorted (wildcards as `*.example.com`).
    pub fn names(&self) -> Vec<String> {
        let index = self.shared.index.load();
        let mut names: Vec<String> = index.exact.keys().map(ToString::to_string).collect();
        names.extend(index.wildcard.keys().map(|k| format!("*.{k}")));
        names.sort();
        names
    }

    /// What each pair (by its file name) serves now.
    pub fn pairs(&self) -> Vec<(String, CertInfo)> {
        let pairs = self.shared.pairs.lock().unwrap_or_else(PoisonError::into_inner);
        pairs.iter().map(|(stem, p)| (stem.clone(), p.info.clone())).collect()
    }

    /// Pairs read, parsed and validated since creation, the first load included: a rotation of
    /// one pair adds one, whatever the number of pairs.
    pub fn loads(&self) -> u64 {
        self.shared.loads.load(Ordering::Relaxed)
    }

    /// Counters since creation: pairs served anew, refused; pairs removed; whether polling.
    pub fn stats(&self) -> DirStats {
        DirStats {
            reloads_ok: self.shared.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.shared.reloads_failed.load(Ordering::Relaxed),
            removed: self.shared.removed.load(Ordering::Relaxed),
            polling: self.shared.polling.load(Ordering::Relaxed),
        }
    }

    /// Looks at every pair now (on `SIGHUP`, say): reloads those whose files changed, adds new
    /// ones, removes those whose files are gone.
    pub async fn rescan(&self) -> Result<(), Error> {
        rescan(&self.shared).await
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for CertDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let running = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|t| !t.is_finished());
        f.debug_struct("CertDir")
            .field("source", &self.shared.source)
            .field("names", &self.names().len())
            .field("running", &running)
            .finish()
    }
}

/// Counters of a [`CertDir`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirStats {
    /// Pairs served anew after the first load (added or changed).
    pub reloads_ok: u64,
    /// Pairs refused (each kept what was served under its names, if anything).
    pub reloads_failed: u64,
    /// Pairs removed because their files went away.
    pub removed: u64,
    /// Whether the folder is being polled right now.
    pub polling: bool,
}

/// Hands rustls the pair for the client's server name, without a lock: a pointer comparison
/// against this thread's cached index (or one `ArcSwap` load when it changed), one hash lookup,
/// one `Arc` clone.
#[derive(Clone)]
pub struct CertDirResolver {
    index: Arc<ArcSwap<Index>>,
}

type IndexCache = arc_swap::Cache<Arc<ArcSwap<Index>>, Arc<Index>>;

thread_local! {
    static INDEX_CACHE: std::cell::RefCell<Vec<IndexCache>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl CertDirResolver {
    /// The pair a handshake for `server_name` gets now.
    pub fn select(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        INDEX_CACHE
            .try_with(|cell| {
                let mut caches = cell.try_borrow_mut().ok()?;
                let mine: &ArcSwap<Index> = &self.index;
                let at = if let Some(i) = caches.iter().position(|c| std::ptr::eq(c.arc_swap(), mine)) {
                    i
                } else {
                    if caches.len() >= crate::watcher::THREAD_CACHE_ENTRIES {
                        caches.remove(0);
                    }
                    caches.push(arc_swap::Cache::new(Arc::clone(&self.index)));
                    caches.len() - 1
                };
                Some(caches[at].load().select(server_name).cloned())
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| self.index.load().select(server_name).cloned())
    }
}

impl fmt::Debug for CertDirResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertDirResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertDirResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(client_hello.server_name())
    }
}

/// Loads `stems` off the runtime and applies the result.
async fn reload(shared: &Arc<Shared>, stems: Vec<String>) {
    if stems.is_empty() {
        return;
    }
    let me = Arc::clone(shared);
    match crate::load::run(shared.config.load_on, move || Ok(me.load(&stems))).await {
        Ok(found) => shared.apply(found, false),
        Err(err) => tracing::warn!("reload failed: {}", crate::error::chain(&err)),
    }
}

async fn rescan(shared: &Arc<Shared>) -> Result<(), Error> {
    let me = Arc::clone(shared);
    let stems = crate::load::run(shared.config.load_on, move || me.changed_stems()).await?;
    reload(shared, stems).await;
    Ok(())
}

/// What the notification thread leaves for the task (see `watch::Signal`: one message per
/// quiet period, not per event).
#[derive(Default)]
struct Dirty {
    sent: AtomicBool,
    last: AtomicU64,
    /// Pair names whose files had events; `None`: something unattributable happened (overflow,
    /// the directory itself), look at everything.
    stems: Mutex<Option<HashSet<String>>>,
}

/// The watch task: one inotify watch on the folder; the pairs whose files changed are reloaded
/// after the debounce; everything is re-checked every `recheck_interval` (and polled every
/// `poll_interval` while notifications do not work).
#[allow(clippy::too_many_lines)]
async fn run(shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let dirty = Arc::new(Dirty { stems: Mutex::new(Some(HashSet::new())), ..Dirty::default() });
    let base = std::time::Instant::now();
    let watcher = match shared.config.mode {
        WatchMode::Poll => None,
        WatchMode::Auto => {
            let seen = Arc::clone(&dirty);
            let source = shared.source.clone();
            let mut first_call = true;
            let handler = move |res: notify::Result<notify::Event>| {
                if first_call {
                    first_call = false;
                    crate::load::lower_own_priority();
                }
                if res.as_ref().is_ok_and(|event| !crate::watch::is_relevant(event.kind)) {
                    // Our own reads of the files.
                    return;
                }
                {
                    let mut stems = seen.stems.lock().unwrap_or_else(PoisonError::into_inner);
                    match &res {
                        Ok(event) if !event.paths.is_empty() && !event.need_rescan() => {
                            let names = event
                                .paths
                                .iter()
                                .filter_map(|p| source.stem_of(p.file_name()?.to_str()?))
                                .collect::<Vec<_>>();
                            if names.is_empty() {
                                // A temporary file, a file of another kind: nothing to reload.
                                return;
                            }
                            if let Some(set) = stems.as_mut() {
                                set.extend(names);
                            }
                        }
                        _ => *stems = None,
                    }
                }
                let nanos = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
                seen.last.fetch_max(nanos, Ordering::SeqCst);
                if !seen.sent.swap(true, Ordering::SeqCst) {
                    let _ = tx.send(());
                }
            };
            match notify::recommended_watcher(handler) {
                Ok(mut w) => match w.watch(&shared.source.dir, RecursiveMode::NonRecursive) {
                    Ok(()) => Some(w),
                    Err(err) => {
                        tracing::warn!("cannot watch {}, polling: {err}", shared.source.dir.display());
                        None
                    }
                },
                Err(err) => {
                    tracing::warn!("cannot start file notifications, polling: {err}");
                    None
                }
            }
        }
    };
    let polling = watcher.is_none();
    shared.polling.store(polling, Ordering::Relaxed);
    // Changes between the first load and the watch.
    let _ = rescan(&shared).await;

    let quiet = shared.config.debounce;
    let mut poll =
        tokio::time::interval_at(Instant::now() + shared.config.poll_interval, shared.config.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut recheck = tokio::time::interval_at(
        Instant::now() + shared.config.recheck_interval,
        shared.config.recheck_interval,
    );
    recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first: Option<Instant> = None;
    let mut deadline: Option<Instant> = None;
    let last_event = |dirty: &Dirty| match dirty.last.load(Ordering::SeqCst) {
        0 => Instant::now(),
        nanos => Instant::from_std(base + Duration::from_nanos(nanos)),
    };
    loop {
        tokio::select! {
            msg = rx.recv(), if watcher.is_some() => {
                if msg.is_none() {
                    return;
                }
                let at = last_event(&dirty);
                let start = *first.get_or_insert(at);
                deadline = Some((at + quiet).min(start + quiet * 4));
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                let start = first.unwrap_or_else(Instant::now);
                let due = (last_event(&dirty) + quiet).min(start + quiet * 4);
                if due > Instant::now() {
                    deadline = Some(due);
                    continue;
                }
                (first, deadline) = (None, None);
                dirty.sent.store(false, Ordering::SeqCst);
                let stems = dirty.stems.lock().unwrap_or_else(PoisonError::into_inner).replace(HashSet::new());
                match stems {
                    Some(stems) => reload(&shared, stems.into_iter().collect()).await,
                    None => {
                        let _ = rescan(&shared).await;
                    }
                }
            }
            _ = poll.tick(), if polling => {
                let _ = rescan(&shared).await;
            }
            _ = recheck.tick() => {
                let _ = rescan(&shared).await;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_hasher_spreads_similar_names() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<NameHasher>::default();
        let names: Vec<String> = (0..100_000).map(|i| format!("host-{i:06}.example.test")).collect();
        let hashes: HashSet<u64> = names.iter().map(|n| build.hash_one(n.as_str())).collect();
        assert_eq!(hashes.len(), names.len());
        // The low bits, which pick the bucket, are spread too.
        let buckets: HashSet<u64> =
            names.iter().take(1000).map(|n| build.hash_one(n.as_str()) & 0xfff).collect();
        assert!(buckets.len() > 700, "{} distinct buckets of 4096 for 1000 names", buckets.len());
        assert_ne!(build.hash_one("ab"), build.hash_one("ab\0"));
    }

    #[test]
    fn pair_names_come_from_the_certificate_files_of_the_configured_suffixes() {
        let dir = PemDir::new("/nonexistent");
        assert_eq!(dir.stem_of("a.example.com.crt").as_deref(), Some("a.example.com"));
        assert_eq!(dir.stem_of("a.example.com.key").as_deref(), Some("a.example.com"));
        assert_eq!(dir.stem_of("a.example.com.crt.tmp"), None);
        assert_eq!(dir.stem_of(".crt"), None);
        assert_eq!(dir.stem_of(".hidden.crt"), None);
        let pem = PemDir::new("/x").suffixes("-cert.pem", "-key.pem");
        assert_eq!(pem.stem_of("site-cert.pem").as_deref(), Some("site"));
        assert_eq!(pem.stem_of("site.crt"), None);
    }
}
