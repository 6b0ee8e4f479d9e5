//! The one error type: every way loading, validating or watching a certificate can fail.

use std::path::PathBuf;

/// Why a certificate, key or CA bundle was not accepted, or why a watcher could not start.
///
/// A failed reload never replaces what is being served: the error is reported (as a
/// [`ReloadEvent::Failed`](crate::ReloadEvent::Failed) and in the logs) and the previous pair
/// stays in place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened, inspected or read (missing, permission denied, I/O error).
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The path names a directory, a FIFO or a device rather than a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },

    /// The file is larger than the configured limit, so it was not read into memory.
    #[error("{} is larger than the limit of {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes ([`PemFiles::max_file_size`](crate::PemFiles::max_file_size)).
        limit: u64,
    },

    /// The file is not valid PEM (a section without its end marker, bad base64, ...).
    #[error("invalid PEM in {}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said (shortened to one line).
        reason: String,
    },

    /// The certificate file holds no `CERTIFICATE` section (an empty or truncated file).
    #[error("no certificate found in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// The key file holds no private key section (`PRIVATE KEY`, `RSA PRIVATE KEY`,
    /// `EC PRIVATE KEY`).
    #[error("no private key found in {}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// The crypto provider refused the private key (unsupported algorithm or malformed key).
    #[error("unusable private key in {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What rustls' key provider said.
        reason: rustls::Error,
    },

    /// The leaf certificate is not a parseable X.509 certificate (or the chain is empty).
    #[error("invalid certificate ({origin}): {reason}")]
    Certificate {
        /// The source, as [`CertSource::describe`](crate::CertSource::describe) names it.
        origin: String,
        /// What the X.509 parser said.
        reason: String,
    },

    /// The private key does not belong to the leaf certificate (a half-rotated pair).
    #[error("private key does not match the certificate ({origin})")]
    KeyMismatch {
        /// The source, as [`CertSource::describe`](crate::CertSource::describe) names it.
        origin: String,
    },

    /// A CA bundle produced no usable trust anchor, or rustls could not build a verifier from it.
    #[error("unusable CA bundle {}: {reason}", path.display())]
    CaBundle {
        /// The bundle file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// An SNI pattern is not a DNS name or a `*.`-prefixed wildcard of one.
    #[error("invalid server name pattern {pattern:?}")]
    InvalidServerName {
        /// The pattern as given.
        pattern: String,
    },

    /// No crypto provider was given and no process-wide default is installed.
    #[error(
        "no rustls crypto provider: pass one with `with_provider` or call `CryptoProvider::install_default`"
    )]
    NoCryptoProvider,

    /// A custom [`CertSource`](crate::CertSource) failed.
    #[error(transparent)]
    Source {
        /// The source's own error.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The load ran on tokio's blocking pool and panicked or was cancelled (a bug in a custom
    /// source).
    #[error("certificate load task failed: {reason}")]
    LoadTask {
        /// The join error.
        reason: String,
    },

    /// [`CertWatcher::start`](crate::CertWatcher::start) was called outside a tokio runtime.
    #[error("the watcher must be started inside a tokio runtime")]
    NoRuntime,
}

impl Error {
    /// Wraps the error of a custom [`CertSource`](crate::CertSource).
    pub fn custom(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Error::Source { source: err.into() }
    }
}

/// Shortens a parser message to one line of bounded length: a garbage file must not turn into a
/// megabyte-long log line.
pub(crate) fn one_line(reason: &str) -> String {
    const MAX: usize = 200;
    let line: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX + 1).collect();
    if line.chars().count() > MAX {
        let mut short: String = line.chars().take(MAX).collect();
        short.push('…');
        short
    } else {
        line
    }
}

/// An error and each of its sources on one line, joined by `: `, for text that leaves the
/// process or is read by a person without a chain printer (a restart's failure reason, an event).
/// The messages never repeat their source, so each cause appears exactly once.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    use std::fmt::Write as _;
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let _ = write!(line, ": {cause}");
        next = cause.source();
    }
    line
}
