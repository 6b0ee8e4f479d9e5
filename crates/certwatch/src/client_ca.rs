//! The same machinery for the CA bundle an mTLS server trusts: [`ClientCaWatcher`] and its
//! [`ReloadingClientVerifier`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

use crate::check::{fingerprint, inspect_chain};
use crate::config::WatchConfig;
use crate::engine::{Engine, Loader, Meta, Trigger};
use crate::error::{Error, one_line};
use crate::event::{Outcome, ReloadEvent, Stats};
use crate::source::{DEFAULT_MAX_FILE_SIZE, parse_certificates, read_limited};

/// A PEM file of CA certificates that client certificates must chain to.
#[derive(Clone)]
pub struct ClientCaFile {
    path: PathBuf,
    provider: Option<Arc<CryptoProvider>>,
    max_file_size: u64,
    optional: bool,
}

impl ClientCaFile {
    /// The bundle at `path`: one or more `CERTIFICATE` sections.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ClientCaFile {
            path: path.into(),
            provider: None,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            optional: false,
        }
    }

    /// Verifies signatures with this crypto provider instead of the process-wide default.
    pub fn with_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// The bundle at `path`, verified with rustls' `ring` provider (feature `ring`): the same as
    /// `ClientCaFile::new(path).with_provider(Arc::new(rustls::crypto::ring::default_provider()))`.
    #[cfg(feature = "ring")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ring")))]
    pub fn ring(path: impl Into<PathBuf>) -> Self {
        Self::new(path).with_provider(Arc::new(rustls::crypto::ring::default_provider()))
    }

    /// The bundle at `path`, verified with rustls' `aws-lc-rs` provider (feature `aws-lc-rs`).
    #[cfg(feature = "aws-lc-rs")]
    #[cfg_attr(docsrs, doc(cfg(feature = "aws-lc-rs")))]
    pub fn aws_lc_rs(path: impl Into<PathBuf>) -> Self {
        Self::new(path).with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }

    /// Refuses bundles larger than `bytes` (default 1 MiB).
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Lets clients without a certificate in (a certificate, when sent, must still verify).
    /// By default a client certificate is mandatory.
    pub fn allow_unauthenticated(mut self) -> Self {
        self.optional = true;
        self
    }

    /// The bundle file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn build(&self) -> Result<(Arc<Arc<dyn ClientCertVerifier>>, CaInfo), Error> {
        let provider = match &self.provider {
            Some(p) => Arc::clone(p),
            None => CryptoProvider::get_default().cloned().ok_or(Error::NoCryptoProvider)?,
        };
        let pem = read_limited(&self.path, self.max_file_size)?;
        let cas = parse_certificates(&self.path, &pem)?;
        let bundle_err =
            |reason: String| Error::CaBundle { path: self.path.clone(), reason: one_line(&reason) };
        let mut roots = RootCertStore::empty();
        let mut subjects = Vec::with_capacity(cas.len());
        let mut not_after = None::<SystemTime>;
        let mut all = Sha256::new();
        for (i, der) in cas.iter().enumerate() {
            let info = inspect_chain(std::slice::from_ref(der), &self.path.display().to_string())?;
            roots.add(der.clone()).map_err(|e| bundle_err(format!("certificate {}: {e}", i + 1)))?;
            all.update(fingerprint(der.as_ref()).as_bytes());
            not_after = Some(not_after.map_or(info.not_after, |t| t.min(info.not_after)));
            subjects.push(info.subject);
        }
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if self.optional {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder.build().map_err(|e| bundle_err(e.to_string()))?;
        let info = CaInfo {
            count: cas.len(),
            subjects,
            fingerprint: crate::check::hex(&all.finalize()),
            not_after: not_after.unwrap_or(SystemTime::UNIX_EPOCH),
        };
        Ok((Arc::new(verifier), info))
    }
}

impl fmt::Debug for ClientCaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCaFile")
            .field("path", &self.path)
            .field("max_file_size", &self.max_file_size)
            .field("optional", &self.optional)
            .finish_non_exhaustive()
    }
}

/// What a loaded CA bundle holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaInfo {
    /// Number of CA certificates.
    pub count: usize,
    /// Their subjects, in file order.
    pub subjects: Vec<String>,
    /// SHA-256 over the certificates' fingerprints, lowercase hex: changes when any CA does.
    pub fingerprint: String,
    /// The earliest `not_after` among them.
    pub not_after: SystemTime,
}

impl Meta for CaInfo {
    fn same(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }

    fn not_after(&self) -> SystemTime {
        self.not_after
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn summary(&self) -> String {
        format!("client CA bundle of {} certificates (sha256 {})", self.count, self.fingerprint)
    }
}

impl fmt::Display for ReloadEvent<CaInfo> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadEvent::Reloaded(info) => write!(f, "reloaded {}", info.summary()),
            ReloadEvent::Failed(err) => {
                write!(
                    f,
                    "client CA reload failed, still using the previous bundle: {}",
                    crate::error::chain(&**err)
                )
            }
            ReloadEvent::ExpiresSoon { info, remaining } => {
                write!(f, "a client CA expires in {} days ({})", remaining.as_secs() / 86_400, info.summary())
            }
            ReloadEvent::Polling { reason } => {
                write!(f, "watching the client CA bundle by polling: {reason}")
            }
        }
    }
}

struct CaLoader {
    file: ClientCaFile,
}

impl Loader for CaLoader {
    const KIND: &'static str = "client_ca";
    type Value = Arc<dyn ClientCertVerifier>;
    type Info = CaInfo;

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.file.path.clone()]
    }

    fn describe(&self) -> String {
        format!("client CA {}", self.file.path.display())
    }

    fn load(&self) -> Result<(Arc<Arc<dyn ClientCertVerifier>>, CaInfo), Error> {
        self.file.build()
    }
}

/// Follows a client-CA bundle on disk, as [`CertWatcher`](crate::CertWatcher) follows a
/// certificate: same debounce, validation-before-swap, events and fallbacks.
pub struct ClientCaWatcher {
    engine: Engine<CaLoader>,
}

impl ClientCaWatcher {
    /// Loads the bundle and builds the first verifier; fails if either fails.
    pub fn new(file: ClientCaFile, config: WatchConfig) -> Result<Self, Error> {
        Ok(ClientCaWatcher { engine: Engine::new(CaLoader { file }, config)? })
    }

    /// [`new`](ClientCaWatcher::new) then [`start`](ClientCaWatcher::start).
    pub fn watch(file: ClientCaFile, config: WatchConfig) -> Result<Self, Error> {
        let watcher = Self::new(file, config)?;
        watcher.start()?;
        Ok(watcher)
    }

    /// Spawns the watch task on the current tokio runtime (idempotent).
    pub fn start(&self) -> Result<(), Error> {
        self.engine.start()
    }

    /// Stops watching (idempotent); the last good bundle stays in force.
    pub fn stop(&self) {
        self.engine.stop();
    }

    /// Whether the watch task is running.
    pub fn is_running(&self) -> bool {
        self.engine.is_running()
    }

    /// The verifier to give rustls: `ServerConfig::builder().with_client_cert_verifier(v)`.
    pub fn verifier(&self) -> Arc<ReloadingClientVerifier> {
        Arc::new(ReloadingClientVerifier { current: Arc::clone(&self.engine.shared.value) })
    }

    /// Reload events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent<CaInfo>> {
        self.engine.shared.subscribe()
    }

    /// What the bundle in force holds.
    pub fn current(&self) -> Arc<CaInfo> {
        self.engine.shared.info()
    }

    /// Counters since creation.
    pub fn stats(&self) -> Stats {
        self.engine.shared.stats()
    }

    /// Reloads now; `Err` means the bundle was refused and the previous one stays in force.
    pub async fn reload(&self) -> Result<Outcome, Arc<Error>> {
        self.engine.shared.attempt(Trigger::Manual).await
    }
}

impl fmt::Debug for ClientCaWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCaWatcher")
            .field("file", &self.engine.shared.loader.file.path)
            .field("current", &self.current().fingerprint)
            .field("running", &self.is_running())
            .finish()
    }
}

/// A [`ClientCertVerifier`] that delegates to the verifier built from the current bundle.
///
/// Each call loads the current verifier without a lock. One difference from rustls'
/// `WebPkiClientVerifier`: [`root_hint_subjects`](ClientCertVerifier::root_hint_subjects) is
/// empty — the list would have to outlive a swap — so clients are not told which CAs are
/// accepted and send whatever certificate they have (RFC 8446 allows the omission).
#[derive(Clone)]
pub struct ReloadingClientVerifier {
    current: Arc<ArcSwap<Arc<dyn ClientCertVerifier>>>,
}

impl fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current.load().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current.load().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current.load().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}
