//! `CertDir`: a folder of pairs served by SNI, followed as files come, change and go — on real
//! files, with real rustls handshakes in memory.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use certwatch::{CertDir, PemDir, WatchConfig, WatchMode};
use common::{PATIENCE, ring};
use rcgen::{CertificateParams, KeyPair, SerialNumber};
use rustls::pki_types::{CertificateDer, ServerName};

struct Named {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

/// A self-signed certificate for `names`, with this serial.
fn named(names: &[&str], serial: u64) -> Named {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.serial_number = Some(SerialNumber::from(serial));
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(30 * 86_400 + serial)).into();
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Named { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
}

/// Writes `stem.key` then `stem.crt`, each through a temporary file and a rename.
fn install(dir: &Path, stem: &str, pair: &Named) {
    for (suffix, body) in [("key", &pair.key_pem), ("crt", &pair.cert_pem)] {
        let tmp = dir.join(format!("{stem}.{suffix}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{stem}.{suffix}"))).unwrap();
    }
}

fn fast() -> WatchConfig {
    WatchConfig::default().debounce(Duration::from_millis(20))
}

/// The leaf a handshake for `name` is served (a real rustls handshake, in memory).
fn served(dir: &CertDir, name: &str) -> Option<Vec<u8>> {
    let server = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(dir.resolver());
    let client = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    let mut c =
        rustls::ClientConnection::new(Arc::new(client), ServerName::try_from(name.to_owned()).unwrap())
            .unwrap();
    let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
    let mut buf = Vec::new();
    for _ in 0..10 {
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        if s.process_new_packets().is_err() {
            return None;
        }
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        if c.process_new_packets().is_err() {
            return None;
        }
        if !c.is_handshaking() {
            break;
        }
    }
    c.peer_certificates().and_then(|certs| certs.first()).map(|d| d.to_vec())
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ring().signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ring().signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        ring().signature_verification_algorithms.supported_schemes()
    }
}

/// Waits until `cond` holds (files are followed asynchronously).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_follow_the_files_and_a_rotation_reloads_one_pair() {
    for mode in [WatchMode::Auto, WatchMode::Poll] {
        let dir = tempfile::tempdir().unwrap();
        let a = named(&["a.example.test"], 1);
        let b = named(&["b.example.test", "*.b.example.test"], 2);
        install(dir.path(), "a", &a);
        install(dir.path(), "b", &b);
        // Not pairs: a key alone, a temporary file, another kind of file.
        std::fs::write(dir.path().join("lonely.key"), &a.key_pem).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let config = fast().mode(mode).poll_interval(Duration::from_millis(50));
        let certs = CertDir::watch(PemDir::new(dir.path()).with_provider(ring()), config).unwrap();
        assert_eq!(certs.names(), ["*.b.example.test", "a.example.test", "b.example.test"]);
        assert_eq!(certs.loads(), 2);
        assert_eq!(served(&certs, "a.example.test"), Some(a.der.clone()));
        assert_eq!(served(&certs, "x.b.example.test"), Some(b.der.clone()));
        assert_eq!(served(&certs, "B.Example.Test"), Some(b.der.clone()));
        // No default: an unknown name gets no certificate.
        assert_eq!(served(&certs, "c.example.test"), None);

        // A name appears.
        let c = named(&["c.example.test"], 3);
        install(dir.path(), "c", &c);
        eventually("c served", || served(&certs, "c.example.test") == Some(c.der.clone())).await;

        // Rotating one pair reloads that pair only.
        let loads = certs.loads();
        let a2 = named(&["a.example.test"], 4);
        install(dir.path(), "a", &a2);
        eventually("a rotated", || served(&certs, "a.example.test") == Some(a2.der.clone())).await;
        // Give a wrongly broad reload time to show (not a synchronisation: the check below is
        // an upper bound).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let extra = certs.loads() - loads;
        assert!((1..=2).contains(&extra), "{mode:?}: a rotation of one pair loaded {extra} pairs");

        // A broken pair never replaces what is served under its names.
        std::fs::write(dir.path().join("b.crt"), "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
        eventually("b refused", || certs.stats().reloads_failed > 0).await;
        assert_eq!(served(&certs, "b.example.test"), Some(b.der.clone()));

        // A name goes.
        std::fs::remove_file(dir.path().join("c.crt")).unwrap();
        std::fs::remove_file(dir.path().join("c.key")).unwrap();
        eventually("c removed", || served(&certs, "c.example.test").is_none()).await;
        assert_eq!(certs.names(), ["*.b.example.test", "a.example.test", "b.example.test"]);
    }
}

#[test]
fn a_name_two_pairs_claim_goes_to_the_one_valid_longer_and_a_default_serves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    // `named` makes a larger serial valid a little longer.
    let old = named(&["www.example.test"], 10);
    let new = named(&["www.example.test"], 20);
    let fallback = named(&["fallback.example.test"], 30);
    install(dir.path(), "www-2025", &old);
    install(dir.path(), "www-2026", &new);
    install(dir.path(), "default", &fallback);
    let certs =
        CertDir::new(PemDir::new(dir.path()).with_provider(ring()).default_pair("default"), fast()).unwrap();
    assert_eq!(served(&certs, "www.example.test"), Some(new.der.clone()));
    assert_eq!(served(&certs, "unknown.example.test"), Some(fallback.der.clone()));
    assert_eq!(certs.pairs().len(), 3);
}

#[test]
fn a_missing_directory_is_an_error_and_an_empty_one_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(CertDir::new(PemDir::new(dir.path().join("nope")), fast()).is_err());
    let empty = CertDir::new(PemDir::new(dir.path()).with_provider(ring()), fast()).unwrap();
    assert!(empty.names().is_empty());
    assert_eq!(served(&empty, "a.example.test"), None);
}
