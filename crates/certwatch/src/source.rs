//! Where a certificate comes from: the [`CertSource`] trait and [`PemFiles`], its PEM-file
//! implementation.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, one_line};

/// The default limit on the size of a certificate, key or CA file: 1 MiB.
///
/// Real chains and bundles are a few kilobytes (a full Mozilla root bundle is ~200 KiB); a file
/// larger than this is a mistake, and reading it would only cost memory.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1024 * 1024;

/// Something a certificate and its private key can be loaded from.
///
/// The watcher calls [`load`](CertSource::load) off the runtime ([`LoadOn`](crate::LoadOn)) after a change in the
/// directories of [`paths`](CertSource::paths), then validates the result with [`check`]
/// (non-empty chain, parseable leaf, key matches leaf) before serving it. Implement it for
/// sources other than PEM files (a PKCS#12 bundle, a secrets manager's local cache).
///
/// [`check`]: crate::check
pub trait CertSource: Send + Sync + 'static {
    /// The files the pair is read from. Their parent directories are watched (not the files,
    /// so renames and symlink swaps are seen), and so are the directories their symlinks
    /// resolve to. Polling compares the metadata of these files.
    fn paths(&self) -> Vec<PathBuf>;

    /// Reads and parses the pair. Validation beyond parsing is done by the caller.
    fn load(&self) -> Result<CertifiedKey, Error>;

    /// How the source is named in logs and errors; by default its paths, joined with `, `.
    fn describe(&self) -> String {
        let paths: Vec<String> = self.paths().iter().map(|p| p.display().to_string()).collect();
        paths.join(", ")
    }
}

impl<S: CertSource + ?Sized> CertSource for Box<S> {
    fn paths(&self) -> Vec<PathBuf> {
        (**self).paths()
    }
    fn load(&self) -> Result<CertifiedKey, Error> {
        (**self).load()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<S: CertSource + ?Sized> CertSource for Arc<S> {
    fn paths(&self) -> Vec<PathBuf> {
        (**self).paths()
    }
    fn load(&self) -> Result<CertifiedKey, Error> {
        (**self).load()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// A PEM certificate chain (leaf first) and a PEM private key, in two files or one.
///
/// The key may be PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`); the first key section in the key file is used, so a combined
/// cert+key file works when both paths name it. Other sections are skipped.
///
/// Keys are loaded with the crypto provider given by [`with_provider`](PemFiles::with_provider),
/// or else rustls' process-wide default ([`CryptoProvider::get_default`]).
#[derive(Clone)]
pub struct PemFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Option<Arc<CryptoProvider>>,
    max_file_size: u64,
}

impl PemFiles {
    /// A pair of PEM files: the chain in `cert`, the private key in `key`.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        PemFiles { cert: cert.into(), key: key.into(), provider: None, max_file_size: DEFAULT_MAX_FILE_SIZE }
    }

    /// Loads keys with this crypto provider instead of the process-wide default.
    pub fn with_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// A pair whose key is loaded with rustls' `ring` provider (feature `ring`): the same as
    /// `PemFiles::new(cert, key).with_provider(Arc::new(rustls::crypto::ring::default_provider()))`.
    ///
    /// Only a convenience: without the feature, [`with_provider`](PemFiles::with_provider)
    /// takes any provider, and without a provider the process-wide default is used.
    #[cfg(feature = "ring")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ring")))]
    pub fn ring(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self::new(cert, key).with_provider(Arc::new(rustls::crypto::ring::default_provider()))
    }

    /// A pair whose key is loaded with rustls' `aws-lc-rs` provider (feature `aws-lc-rs`).
    #[cfg(feature = "aws-lc-rs")]
    #[cfg_attr(docsrs, doc(cfg(feature = "aws-lc-rs")))]
    pub fn aws_lc_rs(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self::new(cert, key).with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }

    /// Refuses files larger than `bytes` without reading them (default
    /// [`DEFAULT_MAX_FILE_SIZE`], 1 MiB).
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// The certificate chain file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The private key file.
    pub fn key_path(&self) -> &Path {
        &self.key
    }
}

impl fmt::Debug for PemFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("provider", &self.provider.as_ref().map(|_| "explicit"))
            .field("max_file_size", &self.max_file_size)
            .finish()
    }
}

impl CertSource for PemFiles {
    fn paths(&self) -> Vec<PathBuf> {
        if self.cert == self.key {
            vec![self.cert.clone()]
        } else {
            vec![self.cert.clone(), self.key.clone()]
        }
    }

    fn load(&self) -> Result<CertifiedKey, Error> {
        let provider = match &self.provider {
            Some(p) => Arc::clone(p),
            None => CryptoProvider::get_default().cloned().ok_or(Error::NoCryptoProvider)?,
        };
        // Both files are read before either is parsed, so the pair is as close to one moment
        // as two reads allow; a half-rotated pair is then caught by the key match.
        let cert_pem = read_limited(&self.cert, self.max_file_size)?;
        let key_pem = read_limited(&self.key, self.max_file_size)?;
        let chain = parse_certificates(&self.cert, &cert_pem)?;
        let key_der = parse_private_key(&self.key, &key_pem)?;
        let key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|reason| Error::Key { path: self.key.clone(), reason })?;
        Ok(CertifiedKey::new(chain, key))
    }

    fn describe(&self) -> String {
        if self.cert == self.key {
            format!("cert+key {}", self.cert.display())
        } else {
            format!("cert {}, key {}", self.cert.display(), self.key.display())
        }
    }
}

/// Reads a whole regular file, refusing anything larger than `limit` bytes.
///
/// Symlinks are followed. The path's type is looked at first, so a FIFO or a device that sits
/// there is never even opened; but the authority is the *opened* descriptor: it is opened with
/// `O_NONBLOCK` (a FIFO swapped in after the look does not wait for a writer) and
/// `O_CLOEXEC | O_NOCTTY`, then `fstat`ed, and anything but a regular file is refused, as is an
/// announced size over `limit` (a huge sparse file costs neither reading nor memory). The read
/// itself is bounded too, so a file that grows meanwhile is still refused.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let read_err = |source| Error::Read { path: path.to_path_buf(), source };
    let looked = std::fs::metadata(path).map_err(read_err)?;
    check_file(path, &looked, limit)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let opened = file.metadata().map_err(read_err)?;
    check_file(path, &opened, limit)?;
    // At most `limit` (checked above): a bounded allocation.
    let mut buf = Vec::with_capacity(opened.len() as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut buf).map_err(read_err)?;
    if buf.len() as u64 > limit {
        return Err(Error::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(buf)
}

/// A regular file of at most `limit` bytes, or the error that says why not.
fn check_file(path: &Path, meta: &std::fs::Metadata, limit: u64) -> Result<(), Error> {
    if !meta.is_file() {
        return Err(Error::NotAFile { path: path.to_path_buf() });
    }
    if meta.len() > limit {
        return Err(Error::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(())
}

/// Every `CERTIFICATE` section of a PEM file, in order; at least one.
pub(crate) fn parse_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, &err))?;
    if chain.is_empty() {
        return Err(Error::NoCertificate { path: path.to_path_buf() });
    }
    Ok(chain)
}

/// The first private key section (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn parse_private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| match err {
        pem::Error::NoItemsFound => Error::NoPrivateKey { path: path.to_path_buf() },
        other => pem_error(path, &other),
    })
}

fn pem_error(path: &Path, err: &pem::Error) -> Error {
    Error::Pem { path: path.to_path_buf(), reason: one_line(&err.to_string()) }
}

#[cfg(test)]
mod tests;
