//! Validation before a swap, and what is known about a certificate: [`check`], [`CertInfo`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};
use x509_parser::extensions::GeneralName;

use crate::error::{Error, one_line};
use crate::source::CertSource;

/// A pair that passed [`check`]: ready to serve, and what it is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Checked {
    /// The chain and signing key, as the resolver hands them to rustls.
    pub certified_key: Arc<CertifiedKey>,
    /// What the leaf certificate says.
    pub info: CertInfo,
}

/// Loads `source` and validates the pair exactly as the watcher does before serving it.
///
/// Refused: anything [`CertSource::load`] refuses (unreadable, oversized or malformed files, no
/// certificate, no key, a key the crypto provider cannot use), a leaf that is not a parseable
/// X.509 certificate, and a private key that does not match the leaf's public key.
///
/// Accepted, but reported through [`CertInfo::validity`]: a leaf that is expired or not yet
/// valid. Refusing it would not help — the pair being served instead is usually older still —
/// and clocks are sometimes wrong.
///
/// This is the function behind `lifeline cert check`.
pub fn check(source: &dyn CertSource) -> Result<Checked, Error> {
    let certified_key = source.load()?;
    let info = inspect_chain(&certified_key.cert, &source.describe())?;
    match certified_key.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            // The provider's signing key cannot report its public key, so the match cannot be
            // checked; refusing would make such providers unusable.
            tracing::warn!(source = %source.describe(), "cannot verify that the key matches the certificate: the crypto provider does not expose public keys");
        }
        Err(_) => return Err(Error::KeyMismatch { origin: source.describe() }),
    }
    Ok(Checked { certified_key: Arc::new(certified_key), info })
}

/// Whether a certificate's validity period covers a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// `not_before <= now <= not_after`.
    Valid,
    /// `now < not_before`: issued for the future, or this machine's clock is behind.
    NotYetValid,
    /// `now > not_after`.
    Expired,
}

impl fmt::Display for Validity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Validity::Valid => "valid",
            Validity::NotYetValid => "not yet valid",
            Validity::Expired => "expired",
        })
    }
}

/// What a leaf certificate says: the metadata that reload events, logs and
/// `lifeline cert check` report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// The subject distinguished name, RFC 4514 style (`CN=example.com, O=Example`).
    pub subject: String,
    /// The subject alternative names, each with its kind: `DNS:example.com`, `IP:127.0.0.1`,
    /// `email:…`, `URI:…`.
    pub sans: Vec<String>,
    /// The serial number in lowercase hex, as encoded (`openssl x509 -serial` prints the same
    /// digits in upper case).
    pub serial: String,
    /// SHA-256 of the leaf certificate's DER, lowercase hex (`openssl x509 -fingerprint -sha256`
    /// prints the same digits in upper case, colon-separated).
    pub fingerprint: String,
    /// Start of the validity period.
    pub not_before: SystemTime,
    /// End of the validity period.
    pub not_after: SystemTime,
    /// Number of certificates in the chain, leaf included.
    pub chain_len: usize,
    /// SHA-256 over the whole chain: tells a changed intermediate apart even when the leaf is
    /// the same.
    pub(crate) chain_digest: [u8; 32],
}

impl CertInfo {
    /// Reads the metadata of a DER-encoded certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, Error> {
        inspect_chain(&[CertificateDer::from(der.to_vec())], "certificate")
    }

    /// The validity of the certificate now.
    pub fn validity(&self) -> Validity {
        self.validity_at(SystemTime::now())
    }

    /// The validity of the certificate at `when`.
    pub fn validity_at(&self, when: SystemTime) -> Validity {
        if when < self.not_before {
            Validity::NotYetValid
        } else if when > self.not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// Time left until `not_after`, counted from `when`; zero once expired.
    pub fn remaining_at(&self, when: SystemTime) -> Duration {
        self.not_after.duration_since(when).unwrap_or(Duration::ZERO)
    }
}

/// Metadata of the leaf plus the digest of the whole chain; `origin` names the source in errors.
pub(crate) fn inspect_chain(chain: &[CertificateDer<'_>], origin: &str) -> Result<CertInfo, Error> {
    let Some(leaf) = chain.first() else {
        return Err(Error::Certificate {
            origin: origin.to_owned(),
            reason: "the chain is empty".to_owned(),
        });
    };
    let invalid =
        |reason: String| Error::Certificate { origin: origin.to_owned(), reason: one_line(&reason) };
    let (rest, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| invalid(e.to_string()))?;
    if !rest.is_empty() {
        return Err(invalid(format!("{} trailing bytes after the leaf certificate", rest.len())));
    }
    let validity = cert.validity();
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.iter().filter_map(general_name).collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(invalid(format!("subject alternative names: {e}"))),
    };
    let mut chain_ctx = Sha256::new();
    for der in chain {
        chain_ctx.update((der.len() as u64).to_be_bytes());
        chain_ctx.update(der.as_ref());
    }
    let chain_digest: [u8; 32] = chain_ctx.finalize().into();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        serial: hex(cert.raw_serial()),
        fingerprint: fingerprint(leaf.as_ref()),
        not_before: unix_time(validity.not_before.timestamp()),
        not_after: unix_time(validity.not_after.timestamp()),
        chain_len: chain.len(),
        chain_digest,
    })
}

/// SHA-256 of `der`, lowercase hex. Computed with `sha2`, not a rustls crypto provider: which
/// provider serves is the application's choice, and a fingerprint needs none.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unix_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn general_name(name: &GeneralName<'_>) -> Option<String> {
    Some(match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => {
                let octets: [u8; 4] = (*bytes).try_into().ok()?;
                format!("IP:{}", std::net::Ipv4Addr::from(octets))
            }
            16 => {
                let octets: [u8; 16] = (*bytes).try_into().ok()?;
                format!("IP:{}", std::net::Ipv6Addr::from(octets))
            }
            _ => format!("IP:{}", hex(bytes)),
        },
        GeneralName::RFC822Name(m) => format!("email:{m}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DirectoryName(n) => format!("DirName:{n}"),
        _ => return None,
    })
}
