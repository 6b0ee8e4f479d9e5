//! `certwatch::check` against real files: every accepted key format and every way a pair is
//! refused.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use certwatch::{CertInfo, CertSource, Error, PemFiles, Validity, check};
use common::{openssl, pair, pair_valid, paths, ring};

fn source(cert: &std::path::Path, key: &std::path::Path) -> PemFiles {
    PemFiles::new(cert, key).with_provider(ring())
}

#[test]
fn a_good_pair_is_accepted_and_described() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    let p = pair(0x4242);
    p.write(&cert, &key);
    let checked = check(&source(&cert, &key)).unwrap();
    let info = &checked.info;
    assert_eq!(info.subject, "CN=localhost");
    assert_eq!(info.sans, vec!["DNS:localhost".to_owned(), "IP:127.0.0.1".to_owned()]);
    assert!(info.serial.ends_with("4242"), "serial {}", info.serial);
    let expected = <sha2::Sha256 as sha2::Digest>::digest(&p.der);
    let hex = expected.iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write;
        write!(s, "{b:02x}").unwrap();
        s
    });
    assert_eq!(info.fingerprint, hex);
    assert_eq!(info.chain_len, 1);
    assert_eq!(info.validity(), Validity::Valid);
    assert!(info.not_after > SystemTime::now() + Duration::from_secs(89 * 86_400));
    assert_eq!(checked.certified_key.cert[0].as_ref(), p.der.as_slice());
    assert_eq!(CertInfo::from_der(&p.der).unwrap().fingerprint, info.fingerprint);
}

#[test]
fn the_fingerprint_matches_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(7).write(&cert, &key);
    let info = check(&source(&cert, &key)).unwrap().info;
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-serial", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap().to_lowercase().replace(':', "");
    assert!(text.contains(&info.fingerprint), "{text}");
    assert!(text.contains(&format!("serial={}", info.serial)), "{text} vs {}", info.serial);
}

#[test]
fn pkcs1_rsa_and_sec1_ec_keys_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    // RSA: openssl writes PKCS#8; `-traditional` converts it to PKCS#1.
    openssl(
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=rsa.test", "-days", "2"]
            .into_iter()
            .chain(["-keyout", &d("rsa8.pem"), "-out", &d("rsa.crt")])
            .collect::<Vec<_>>(),
    );
    openssl(&["rsa", "-in", &d("rsa8.pem"), "-traditional", "-out", &d("rsa1.pem")]);
    assert!(std::fs::read_to_string(d("rsa1.pem")).unwrap().contains("BEGIN RSA PRIVATE KEY"));
    let info = check(&source(dir.path().join("rsa.crt").as_path(), dir.path().join("rsa1.pem").as_path()))
        .unwrap()
        .info;
    assert_eq!(info.subject, "CN=rsa.test");
    check(&source(dir.path().join("rsa.crt").as_path(), dir.path().join("rsa8.pem").as_path())).unwrap();

    // EC: `openssl ec` writes SEC1.
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=ec.test",
        ]
        .into_iter()
        .chain(["-days", "2", "-keyout", &d("ec8.pem"), "-out", &d("ec.crt")])
        .collect::<Vec<_>>(),
    );
    openssl(&["ec", "-in", &d("ec8.pem"), "-out", &d("sec1.pem")]);
    assert!(std::fs::read_to_string(d("sec1.pem")).unwrap().contains("BEGIN EC PRIVATE KEY"));
    let info = check(&source(dir.path().join("ec.crt").as_path(), dir.path().join("sec1.pem").as_path()))
        .unwrap()
        .info;
    assert_eq!(info.subject, "CN=ec.test");
}

#[test]
fn a_combined_file_serves_as_both_cert_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("both.pem");
    let p = pair(3);
    std::fs::write(&both, format!("{}{}", p.key_pem, p.cert_pem)).unwrap();
    let src = source(&both, &both);
    assert_eq!(src.paths(), vec![both.clone()]);
    check(&src).unwrap();
}

#[test]
fn a_key_from_another_pair_is_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    std::fs::write(&cert, pair(1).cert_pem).unwrap();
    std::fs::write(&key, pair(2).key_pem).unwrap();
    let err = check(&source(&cert, &key)).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn empty_files_are_refused_with_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    let p = pair(1);
    std::fs::write(&cert, "").unwrap();
    std::fs::write(&key, &p.key_pem).unwrap();
    assert!(matches!(check(&source(&cert, &key)), Err(Error::NoCertificate { path }) if path == cert));
    std::fs::write(&cert, &p.cert_pem).unwrap();
    std::fs::write(&key, "").unwrap();
    assert!(matches!(check(&source(&cert, &key)), Err(Error::NoPrivateKey { path }) if path == key));
    // A key file holding only a certificate has no key either.
    std::fs::write(&key, &p.cert_pem).unwrap();
    assert!(matches!(check(&source(&cert, &key)), Err(Error::NoPrivateKey { .. })));
}

#[test]
fn a_truncated_pem_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    let p = pair(1);
    p.write(&cert, &key);
    std::fs::write(&cert, &p.cert_pem[..p.cert_pem.len() / 2]).unwrap();
    let err = check(&source(&cert, &key)).unwrap_err();
    assert!(matches!(err, Error::Pem { .. }), "{err:?}");
    std::fs::write(&key, &p.key_pem[..p.key_pem.len() - 30]).unwrap();
    std::fs::write(&cert, &p.cert_pem).unwrap();
    let err = check(&source(&cert, &key)).unwrap_err();
    assert!(matches!(err, Error::Pem { .. }), "{err:?}");
}

#[test]
fn a_certificate_section_that_is_not_x509_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    let p = pair(1);
    p.write(&cert, &key);
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n")
        .unwrap();
    let err = check(&source(&cert, &key)).unwrap_err();
    assert!(matches!(err, Error::Certificate { .. }), "{err:?}");
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    std::fs::remove_file(&key).unwrap();
    match check(&source(&cert, &key)) {
        Err(Error::Read { path, source }) => {
            assert_eq!(path, key);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn a_directory_is_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    std::fs::remove_file(&cert).unwrap();
    std::fs::create_dir(&cert).unwrap();
    assert!(matches!(check(&source(&cert, &key)), Err(Error::NotAFile { path }) if path == cert));
}

#[test]
fn a_fifo_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    std::fs::remove_file(&key).unwrap();
    let status = std::process::Command::new("mkfifo").arg(&key).status().unwrap();
    assert!(status.success());
    // Opening a FIFO for reading would block forever: it must be refused before that.
    assert!(matches!(check(&source(&cert, &key)), Err(Error::NotAFile { .. })));
}

#[test]
fn a_huge_file_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let garbage = vec![b'A'; 10 * 1024 * 1024];
    std::fs::write(&cert, &garbage).unwrap();
    match check(&source(&cert, &key)) {
        Err(Error::TooLarge { path, limit }) => {
            assert_eq!(path, cert);
            assert_eq!(limit, certwatch::DEFAULT_MAX_FILE_SIZE);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The limit is configurable.
    pair(1).write(&cert, &key);
    let small = source(&cert, &key).max_file_size(100);
    assert!(matches!(check(&small), Err(Error::TooLarge { limit: 100, .. })));
}

#[test]
fn expired_and_future_certificates_are_accepted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    pair_valid(1, now - 10 * day, now - day).write(&cert, &key);
    let info = check(&source(&cert, &key)).unwrap().info;
    assert_eq!(info.validity(), Validity::Expired);
    assert_eq!(info.remaining_at(now), Duration::ZERO);
    pair_valid(2, now + day, now + 10 * day).write(&cert, &key);
    let info = check(&source(&cert, &key)).unwrap().info;
    assert_eq!(info.validity(), Validity::NotYetValid);
    assert_eq!(info.validity_at(now + 2 * day), Validity::Valid);
}

#[test]
fn without_a_provider_or_default_the_error_says_so() {
    // Nothing in this test binary installs a process-wide default provider.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    assert!(matches!(check(&PemFiles::new(&cert, &key)), Err(Error::NoCryptoProvider)));
}

struct Failing;

impl CertSource for Failing {
    fn paths(&self) -> Vec<PathBuf> {
        vec![PathBuf::from("/nonexistent/vault-cache")]
    }
    fn load(&self) -> Result<rustls::sign::CertifiedKey, Error> {
        Err(Error::custom(std::io::Error::other("vault sealed")))
    }
}

#[test]
fn a_custom_source_reports_its_own_error() {
    let err = check(&Failing).unwrap_err();
    assert!(matches!(err, Error::Source { .. }));
    assert_eq!(err.to_string(), "vault sealed");
    assert_eq!(Failing.describe(), "/nonexistent/vault-cache");
}
