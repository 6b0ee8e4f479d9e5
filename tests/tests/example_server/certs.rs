//! certwatch through the server: a Kubernetes-style `..data` symlink swap changes the certificate
//! the server presents in a real handshake; a broken pair is refused and the old one kept.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lifeline_tests::PATIENCE;
use lifeline_tests::certs::LeafSpec;

use crate::support::{Options, Server, flock_says_locked, serial_of};

/// Publishes `cert` + `key` the way the kubelet updates a mounted secret: write a new
/// timestamped directory, point a temporary `..data_tmp` symlink at it, rename that over
/// `..data`, remove the previous directory. `tls.crt` and `tls.key` are fixed symlinks into
/// `..data`.
fn publish(secret: &Path, version: &str, cert: &str, key: &str) {
    let previous = std::fs::read_link(secret.join("..data")).ok();
    let dir = secret.join(version);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    std::os::unix::fs::symlink(version, secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    if let Some(previous) = previous {
        std::fs::remove_dir_all(secret.join(previous)).unwrap();
    } else {
        std::os::unix::fs::symlink("..data/tls.crt", secret.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", secret.join("tls.key")).unwrap();
    }
}

/// Handshakes until the server presents `serial` (the reload is asynchronous and has no event
/// the test could wait on from outside but the log, which may come before the swap).
async fn presents(server: &Server, serial: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let presented = server.presented_serial().await;
        if presented == serial {
            return;
        }
        assert!(Instant::now() < deadline, "still presenting serial {presented}, not {serial}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_swap_changes_the_presented_certificate_and_a_broken_pair_is_refused() {
    let options = Options::new().without_control();
    let secret = options.dir().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let first = &options.pki().first;
    publish(&secret, "..2025_01_01_00_00_00.000000001", &first.cert_pem, &first.key_pem);
    let options = options.cert_files(secret.join("tls.crt"), secret.join("tls.key"));
    let server = options.start();
    assert_eq!(server.presented_serial().await, serial_of(&server.pki().first));

    // A renewed secret: the server presents it, and says so.
    let ca = &server.pki().ca;
    let second = ca.issue(&LeafSpec::new(0x2002));
    publish(&secret, "..2025_02_01_00_00_00.000000002", &second.cert_pem, &second.key_pem);
    presents(&server, &serial_of(&second)).await;
    server.stderr.wait(&format!("reloaded certificate CN=localhost (serial {}", serial_of(&second)));

    // Broken secrets: each is refused, reported, and the second pair stays served.
    let third = ca.issue(&LeafSpec::new(0x3003));
    let fourth = ca.issue(&LeafSpec::new(0x4004));
    let torn = &third.cert_pem[..third.cert_pem.len() / 2];
    let broken = [
        (
            "..2025_03_01_00_00_00.000000003",
            third.cert_pem.as_str(),
            fourth.key_pem.as_str(),
            "does not match",
        ),
        ("..2025_03_02_00_00_00.000000004", torn, third.key_pem.as_str(), "invalid PEM"),
    ];
    for (version, cert, key, reason) in broken {
        let mark = server.stderr.mark();
        publish(&secret, version, cert, key);
        let line =
            server.stderr.wait_after(mark, "certificate reload failed, still serving the previous one");
        assert!(line.contains(reason), "{reason:?} not in {line}");
        assert_eq!(server.presented_serial().await, serial_of(&second), "a broken pair was served");
    }

    // A good secret again is picked up.
    let fifth = ca.issue(&LeafSpec::new(0x5005));
    publish(&secret, "..2025_04_01_00_00_00.000000005", &fifth.cert_pem, &fifth.key_pem);
    presents(&server, &serial_of(&fifth)).await;
    // Still serving requests all along, on the same process.
    assert_eq!(server.answer().await.0, server.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_files_are_broken_fails_and_the_old_pair_stays_served() {
    let mut server = Options::new().start();
    let (cert, key) = (server.path("cert.pem"), server.path("key.pem"));
    let first = serial_of(&server.pki().first);

    // A key that belongs to another certificate: refused by the running process...
    let mark = server.stderr.mark();
    let other = server.pki().ca.issue(&LeafSpec::new(0x6006));
    lifeline_tests::certs::atomic_write(&key, other.key_pem.as_bytes());
    server.stderr.wait_after(mark, "private key does not match the certificate");
    // ...and fatal to a new one, which exits before it is ready: the old one serves on.
    let err = server.restart().expect_err("a successor cannot start without a valid pair");
    assert_eq!(err, "lifeline: restart failed: new process exited with status 1 before becoming ready");
    assert_eq!(server.presented_serial().await, first);
    assert_eq!(server.answer().await.0, server.pid);
    // The successor failed after it had inherited the lock: the lock file, and the pid in it,
    // are still the old process's, so another instance is still refused.
    assert!(flock_says_locked(&server.lock_path()));
    assert_eq!(std::fs::read_to_string(server.lock_path()).unwrap().trim(), server.pid.to_string());
    let other = server.options.command("127.0.0.1:0").stdin(Stdio::null()).output().unwrap();
    assert_eq!(other.status.code(), Some(75), "{}", String::from_utf8_lossy(&other.stderr));

    // Fixed files: the running process picks them up, and a restart works again.
    let fixed = server.pki().ca.issue(&LeafSpec::new(0x7007));
    fixed.write_atomic(&cert, &key);
    presents(&server, &serial_of(&fixed)).await;
    let new_pid = server.restart().unwrap();
    assert_eq!(server.answer().await.0, new_pid);
    assert_eq!(server.presented_serial().await, serial_of(&fixed));
}
