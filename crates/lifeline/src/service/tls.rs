//! TLS for a service: a rustls acceptor whose certificate follows its files (certwatch).

use std::path::PathBuf;
use std::sync::Arc;

use certwatch::{CertSource, CertWatcher, PemFiles, ReloadEvent, WatchConfig};
use rustls::crypto::CryptoProvider;
use tokio_rustls::TlsAcceptor;

use super::{Builder, Error};

/// Where the certificate comes from.
#[derive(Clone)]
pub(crate) enum Source {
    Pem { cert: PathBuf, key: PathBuf },
    Custom(Arc<dyn CertSource>),
}

/// The TLS settings of a [`Builder`].
#[derive(Clone)]
pub(crate) struct TlsSpec {
    pub(crate) source: Option<Source>,
    watch: WatchConfig,
    alpn: Vec<Vec<u8>>,
    provider: Option<Arc<CryptoProvider>>,
}

impl std::fmt::Debug for TlsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Some(Source::Pem { cert, key }) => format!("{}, {}", cert.display(), key.display()),
            Some(Source::Custom(source)) => source.describe(),
            None => "none".to_owned(),
        };
        f.debug_struct("TlsSpec")
            .field("source", &source)
            .field("alpn", &self.alpn)
            .field("provider", &self.provider.as_ref().map(|_| "explicit"))
            .finish_non_exhaustive()
    }
}

impl Default for TlsSpec {
    fn default() -> TlsSpec {
        TlsSpec {
            source: None,
            watch: WatchConfig::default(),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            provider: None,
        }
    }
}

/// TLS options of the builder (feature `tls`).
impl Builder {
    /// Serves TLS with the PEM certificate chain `cert` and private key `key`, followed as they
    /// change ([`certwatch`]: renames, symlink swaps, Kubernetes `..data`; a bad pair is never
    /// served). The pair is loaded and validated by [`start`](Builder::start), which fails if
    /// it is bad. Take the acceptor with [`Starting::tls_acceptor`](super::Starting::tls_acceptor).
    /// ALPN offers `h2` and `http/1.1` unless [`tls_alpn`](Builder::tls_alpn) says otherwise.
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.source = Some(Source::Pem { cert: cert.into(), key: key.into() });
        self
    }

    /// Serves TLS with a certificate from any [`CertSource`], followed as it changes.
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_source(mut self, source: impl CertSource) -> Self {
        self.tls.source = Some(Source::Custom(Arc::new(source)));
        self
    }

    /// How the certificate files are watched (default [`WatchConfig::default`]).
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_watch(mut self, config: WatchConfig) -> Self {
        self.tls.watch = config;
        self
    }

    /// The ALPN protocols offered, most preferred first (default `h2`, `http/1.1`).
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_alpn(mut self, protocols: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.tls.alpn = protocols.into_iter().collect();
        self
    }

    /// The rustls crypto provider for the handshakes and the keys (default: the process-wide one,
    /// [`CryptoProvider::get_default`]; the service never picks one itself — install one in
    /// `main`, e.g. `rustls::crypto::ring::default_provider().install_default()`, or pass it
    /// here).
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.tls.provider = Some(provider);
        self
    }
}

/// A started TLS setup: the watcher (kept alive while the service runs) and the acceptor.
pub(crate) struct Tls {
    pub(crate) watcher: CertWatcher,
    pub(crate) acceptor: TlsAcceptor,
    /// The `name` label of the watcher's metrics.
    pub(crate) metrics_name: String,
}

impl Tls {
    /// Starts following the files (after the commit).
    pub(crate) fn follow(watcher: &CertWatcher) {
        if let Err(err) = watcher.start() {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "cannot follow the certificate files; serving the loaded pair"
            );
        }
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("watcher", &self.watcher).finish_non_exhaustive()
    }
}

/// Loads and validates the pair and builds the acceptor; logs reload events. The watch starts
/// with [`Tls::follow`].
/// `None` when no certificate source was configured.
pub(crate) fn start(spec: &TlsSpec) -> Result<Option<Tls>, Error> {
    let Some(source) = &spec.source else { return Ok(None) };
    let provider = match &spec.provider {
        Some(provider) => Arc::clone(provider),
        None => CryptoProvider::get_default()
            .cloned()
            .ok_or(Error::Tls { source: certwatch::Error::NoCryptoProvider })?,
    };
    let source: Arc<dyn CertSource> = match source {
        Source::Pem { cert, key } => Arc::new(PemFiles::new(cert, key).with_provider(Arc::clone(&provider))),
        Source::Custom(source) => Arc::clone(source),
    };
    // Loaded and validated now; watched only once the service is ready (`Running::launch`): a
    // successor's time to readiness is its predecessor's restart latency, and the watch (a
    // thread, inotify) is not needed to take over — a change in between is caught when the watch
    // starts, which compares the files with what was loaded.
    let watcher = CertWatcher::new(source, spec.watch.clone()).map_err(|source| Error::Tls { source })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::TlsConfig { source })?
        .with_no_client_auth()
        .with_cert_resolver(watcher.resolver());
    config.alpn_protocols.clone_from(&spec.alpn);
    let mut events = watcher.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event @ ReloadEvent::Failed(_)) => tracing::error!("{event}"),
                Ok(event) => tracing::info!("{event}"),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "certificate events were missed");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let metrics_name = spec.watch.metrics_name.clone();
    Ok(Some(Tls { watcher, acceptor: TlsAcceptor::from(Arc::new(config)), metrics_name }))
}
