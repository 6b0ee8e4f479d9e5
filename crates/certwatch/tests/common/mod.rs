//! Helpers shared by certwatch's own tests: self-signed test pairs and a ring provider.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A self-signed pair: chain PEM, key PEM, leaf DER.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

/// A self-signed `localhost` certificate with this serial, valid `not_before..not_after`.
pub fn pair_valid(serial: u64, not_before: SystemTime, not_after: SystemTime) -> Pair {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.serial_number = Some(SerialNumber::from(serial));
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
}

/// A self-signed `localhost` certificate valid from an hour ago for 90 days.
pub fn pair(serial: u64) -> Pair {
    let now = SystemTime::now();
    pair_valid(serial, now - Duration::from_secs(3600), now + Duration::from_secs(90 * 86_400))
}

impl Pair {
    pub fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }

    pub fn write_atomic(&self, cert: &Path, key: &Path) {
        for (path, body) in [(cert, &self.cert_pem), (key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, body).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

pub fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `dir/cert.pem` and `dir/key.pem`.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Runs `openssl` with `args`; panics with its stderr on failure.
pub fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}
