//! `lifeline cert check` as operators run it: real files, the real binary, exit codes and
//! output checked.
#![cfg(feature = "cli")]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};

struct Pair {
    cert: String,
    key: String,
}

fn pair(serial: u16, not_before: SystemTime, not_after: SystemTime) -> Pair {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "cli.test");
    params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pair { cert: cert.pem(), key: key.serialize_pem() }
}

fn fresh(serial: u16) -> Pair {
    let now = SystemTime::now();
    pair(serial, now - Duration::from_secs(3600), now + Duration::from_secs(30 * 86_400 + 3600))
}

fn check(cert: &Path, key: &Path) -> Output {
    check_with(cert, key, &[])
}

fn check_with(cert: &Path, key: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(["cert", "check", "--cert"])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(extra)
        .output()
        .expect("run lifeline")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_good_pair_exits_0_and_prints_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let p = fresh(0x1234);
    std::fs::write(&cert, &p.cert).unwrap();
    std::fs::write(&key, &p.key).unwrap();
    let out = check(&cert, &key);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", text(&out.stderr));
    assert!(stdout.contains("subject:    CN=cli.test"), "{stdout}");
    assert!(stdout.contains("sans:       DNS:localhost, IP:127.0.0.1"), "{stdout}");
    assert!(stdout.contains("serial:     1234"), "{stdout}");
    assert!(stdout.contains("days_left:  30"), "{stdout}");
    assert!(stdout.contains("validity:   valid"), "{stdout}");
    assert!(stdout.contains("not_before: 20") && stdout.contains("not_after:  20"), "{stdout}");
    // The fingerprint is the one openssl computes.
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let expected = text(&openssl.stdout).trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(expected.len(), 64, "{}", text(&openssl.stdout));
    assert!(stdout.contains(&format!("sha256:     {expected}")), "{stdout} vs {expected}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn an_expired_pair_is_accepted_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let now = SystemTime::now();
    let p = pair(7, now - Duration::from_secs(10 * 86_400), now - Duration::from_secs(2 * 86_400 + 60));
    std::fs::write(&cert, &p.cert).unwrap();
    std::fs::write(&key, &p.key).unwrap();
    let out = check(&cert, &key);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("validity:   expired"), "{stdout}");
    assert!(stdout.contains("days_left:  -2"), "{stdout}");
    assert!(text(&out.stderr).contains("expired"), "{}", text(&out.stderr));
}

/// Exit 1, nothing on stdout, exactly one line on stderr that contains `needle`.
fn assert_refused(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("lifeline: ") && stderr.contains(needle), "{stderr:?}");
}

#[test]
fn a_mismatched_pair_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, fresh(1).cert).unwrap();
    std::fs::write(&key, fresh(2).key).unwrap();
    assert_refused(&check(&cert, &key), "does not match");
}

#[test]
fn garbage_and_missing_files_exit_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let p = fresh(1);
    std::fs::write(&key, &p.key).unwrap();
    // Binary garbage: still one short line naming the file.
    let garbage: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&cert, &garbage).unwrap();
    assert_refused(&check(&cert, &key), "c.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n").unwrap();
    assert_refused(&check(&cert, &key), "invalid PEM");
    std::fs::write(&cert, &p.cert).unwrap();
    assert_refused(&check(&cert, &dir.path().join("absent.pem")), "absent.pem");
    assert_refused(&check(&cert, dir.path()), "not a regular file");
}

/// A FIFO (without a writer, then with one that never writes) or a 2 GiB sparse file given as
/// the certificate: refused at once in one line, exit 1, never a hang or a 2 GiB read.
#[test]
fn a_fifo_or_a_huge_sparse_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&key, fresh(1).key).unwrap();
    let refused = |expected: &str| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (cert, key) = (cert.clone(), key.clone());
        std::thread::spawn(move || tx.send(check(&cert, &key)));
        let out = rx.recv_timeout(Duration::from_secs(20)).expect("lifeline cert check returns");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    };
    nix::unistd::mkfifo(&cert, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    refused("is not a regular file");
    let writer = std::fs::OpenOptions::new().read(true).write(true).open(&cert).unwrap();
    refused("is not a regular file");
    drop(writer);
    std::fs::remove_file(&cert).unwrap();
    std::fs::File::create(&cert).unwrap().set_len(2 << 30).unwrap();
    refused("is larger than the limit");
}

/// `--checkend` as `openssl x509 -checkend`: exit 1 when the leaf expires within the duration
/// (a line on stderr says so), 0 otherwise; openssl itself agrees on the same files.
#[test]
fn checkend_exits_1_when_the_leaf_expires_within_the_duration_as_openssl_does() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    // Expires in 30 days and an hour.
    let p = fresh(9);
    std::fs::write(&cert, &p.cert).unwrap();
    std::fs::write(&key, &p.key).unwrap();
    for (within, seconds, expiring) in
        [("29d", 29 * 86_400, false), ("31d", 31 * 86_400, true), ("0s", 0, false)]
    {
        let out = check_with(&cert, &key, &["--checkend", within]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(i32::from(expiring)), "{within}: {stdout}{stderr}");
        if expiring {
            assert!(stdout.contains("checkend:   expires within it"), "{stdout}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with("lifeline: the certificate expires within "), "{stderr}");
            assert!(stderr.contains("(not_after 20"), "{stderr}");
        } else {
            assert!(stdout.contains("checkend:   does not expire within it"), "{stdout}");
            assert!(stderr.is_empty(), "{stderr}");
        }
        let openssl = Command::new("openssl")
            .args(["x509", "-noout", "-checkend", &seconds.to_string(), "-in"])
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert_eq!(openssl.status.code(), out.status.code(), "openssl -checkend {seconds} disagrees");
    }
    // An expired leaf expires within any duration, 0 included; the warning comes first.
    let now = SystemTime::now();
    let old = pair(10, now - Duration::from_secs(10 * 86_400), now - Duration::from_secs(86_400));
    std::fs::write(&cert, &old.cert).unwrap();
    std::fs::write(&key, &old.key).unwrap();
    let out = check_with(&cert, &key, &["--checkend", "0s"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(
        stderr.lines().nth(1).unwrap().starts_with("lifeline: the certificate expires within 0s"),
        "{stderr}"
    );
}

#[test]
fn checkend_refuses_a_value_that_is_not_a_duration_as_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let out = check_with(&cert, &key, &["--checkend", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--checkend"), "{}", text(&out.stderr));
}

/// `--json`: one JSON object on one line with the same fields as the text, and the checkend
/// verdict when asked; a refused pair prints nothing on stdout (one line on stderr, exit 1).
#[test]
fn json_prints_one_object_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let p = fresh(0x0abc);
    std::fs::write(&cert, &p.cert).unwrap();
    std::fs::write(&key, &p.key).unwrap();
    let out = check_with(&cert, &key, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["subject"], "CN=cli.test");
    assert_eq!(json["sans"], serde_json::json!(["DNS:localhost", "IP:127.0.0.1"]));
    assert_eq!(json["serial"], "0abc");
    assert_eq!(json["days_left"], 30);
    assert_eq!(json["chain"], 1);
    assert_eq!(json["validity"], "valid");
    assert_eq!(json["sha256"].as_str().unwrap().len(), 64);
    assert!(json["not_after"].as_str().unwrap().ends_with('Z'), "{json}");
    assert!(json.get("expires_within_checkend").is_none(), "{json}");

    let out = check_with(&cert, &key, &["--json", "--checkend", "60d"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(json["expires_within_checkend"], true);

    std::fs::write(&key, fresh(2).key).unwrap();
    assert_refused(&check_with(&cert, &key, &["--json"]), "does not match");
}
