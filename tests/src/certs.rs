//! Test certificates: a CA and leaf certificates with a chosen serial, names and validity,
//! written as PEM files the way renewal tools write them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

/// A throw-away certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, DER.
    pub cert_der: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name`, valid from a day ago for ten years.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = (SystemTime::now() - Duration::from_secs(86_400)).into();
        params.not_after = (SystemTime::now() + Duration::from_secs(10 * 365 * 86_400)).into();
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), issuer: Issuer::new(params, key) }
    }

    /// Issues a leaf certificate (fresh P-256 key) as `spec` says.
    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        let mut params = CertificateParams::new(spec.sans.clone()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, spec.common_name.clone());
        params.serial_number = Some(SerialNumber::from(spec.serial));
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial: spec.serial,
        }
    }

    /// Writes the CA certificate (a one-certificate bundle) to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem).expect("write CA");
    }
}

/// What a leaf certificate should say.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Serial number: tests tell certificates apart by it.
    pub serial: u64,
    /// Subject common name.
    pub common_name: String,
    /// DNS names / IP addresses (rcgen parses IP literals as IP SANs).
    pub sans: Vec<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl LeafSpec {
    /// `localhost` + `127.0.0.1`, valid from an hour ago for 90 days.
    pub fn new(serial: u64) -> LeafSpec {
        LeafSpec {
            serial,
            common_name: "localhost".to_owned(),
            sans: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            not_before: SystemTime::now() - Duration::from_secs(3600),
            not_after: SystemTime::now() + Duration::from_secs(90 * 86_400),
        }
    }

    /// Replaces the subject alternative names (the first becomes the common name).
    pub fn sans(mut self, names: &[&str]) -> LeafSpec {
        self.sans = names.iter().map(|s| (*s).to_owned()).collect();
        if let Some(first) = names.first() {
            (*first).clone_into(&mut self.common_name);
        }
        self
    }

    /// Sets the validity period.
    pub fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> LeafSpec {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

/// An issued leaf: chain and key as PEM, the leaf as DER.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Leaf then CA, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// The leaf certificate, DER: compare with what a server presents.
    pub der: Vec<u8>,
    /// The serial it was issued with.
    pub serial: u64,
}

impl Leaf {
    /// Writes chain and key in place (`O_TRUNC` + write, as an editor or `cp` does).
    pub fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).expect("write cert");
        std::fs::write(key, &self.key_pem).expect("write key");
    }

    /// Writes chain and key to temporary names in the same directories, then renames them over
    /// `cert` and `key` (the atomic way, as certbot and `mv` do).
    pub fn write_atomic(&self, cert: &Path, key: &Path) {
        atomic_write(cert, self.cert_pem.as_bytes());
        atomic_write(key, self.key_pem.as_bytes());
    }
}

/// Writes `bytes` to a temporary sibling of `path`, then renames it over `path`.
pub fn atomic_write(path: &Path, bytes: &[u8]) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over");
}
