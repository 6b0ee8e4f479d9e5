//! `GET /metrics` of the example server: after a certificate rotation and two restarts through
//! `lifeline restart`, curl (a real Prometheus-format client would do the same) reads the
//! certificate's reloads and expiry, and the restarts and requests carried across three processes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use lifeline_tests::PATIENCE;
use lifeline_tests::certs::LeafSpec;

use crate::support::{Options, Server, copy_of_the_binary, install, install_the_real_binary, serial_of};

/// `GET /metrics` with curl (the test CA as the trust root): the body.
fn curl_metrics(server: &Server) -> String {
    let ca = server.path("ca.pem");
    if !ca.exists() {
        std::fs::write(&ca, &server.pki().ca.cert_pem).unwrap();
    }
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", server.addr.port())])
        .arg(format!("https://localhost:{}/metrics", server.addr.port()))
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the sample `series` (`name{labels}` exactly as rendered), if there is one.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// The value of a counter (or an integer gauge): rendered as an integer.
fn count(text: &str, series: &str) -> u64 {
    let found = text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' '));
    let found = found.unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    found.trim().parse().unwrap_or_else(|_| panic!("{series} {found} is no count"))
}

const RELOADS_OK: &str =
    r#"lifeline_certwatch_reloads_total{kind="certificate",name="default",outcome="ok"}"#;
const RELOADS_FAILED: &str =
    r#"lifeline_certwatch_reloads_total{kind="certificate",name="default",outcome="failed"}"#;
const EXPIRES_IN: &str = r#"lifeline_certwatch_expires_in_seconds{kind="certificate",name="default"}"#;
const RESTARTS_OK: &str = r#"lifeline_service_restarts_total{outcome="ok"}"#;
const RESTARTS_FAILED: &str = r#"lifeline_service_restarts_total{outcome="failed"}"#;

/// Polls `/metrics` until `done` holds for it (or fails after [`PATIENCE`]).
async fn metrics_until(server: &Server, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = curl_metrics(server);
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_and_two_restarts_metrics_show_the_reloads_and_the_carried_counts() {
    let options = Options::new();
    let exe = copy_of_the_binary(options.dir());
    let mut server = options.exe(exe.clone()).start();
    for _ in 0..3 {
        server.answer().await;
    }
    // A torn pair is refused (the old one served on), then a renewed pair is swapped in.
    std::fs::write(server.path("key.pem"), "not a key").unwrap();
    metrics_until(&server, "a failed reload", |t| sample(t, RELOADS_FAILED).is_some_and(|n| n >= 1.0)).await;
    let renewed = server.pki().ca.issue(&LeafSpec::new(0x2002));
    renewed.write_atomic(&server.path("cert.pem"), &server.path("key.pem"));
    let text = metrics_until(&server, "the reload of the renewed pair", |t| {
        sample(t, RELOADS_OK).is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(server.presented_serial().await, serial_of(&renewed));
    assert_eq!(count(&text, RESTARTS_OK), 0, "{text}");

    // A restart that fails (the new binary exits at once) counts as failed, then two that work.
    install(&exe, b"#!/bin/sh\nexit 3\n", 0o755);
    server.restart().expect_err("the broken binary must not take over");
    install_the_real_binary(&exe);
    let (first, second) = (server.restart().unwrap(), server.restart().unwrap());
    assert_ne!(first, second);
    let (pid, generation, served_before) = server.answer().await;
    assert_eq!((pid, generation), (second, 3));

    let text = curl_metrics(&server);
    // Carried across the three processes: the restarts, the requests, the reloads.
    assert_eq!(count(&text, RESTARTS_OK), 2, "{text}");
    assert_eq!(count(&text, RESTARTS_FAILED), 1, "{text}");
    assert_eq!(count(&text, "https_server_requests_total"), served_before, "{text}");
    assert!(count(&text, RELOADS_OK) >= 1, "{text}");
    assert!(count(&text, RELOADS_FAILED) >= 1, "{text}");
    assert!(count(&text, "lifeline_service_connections_total") >= 4, "{text}");
    assert_eq!(count(&text, "lifeline_service_generation"), 3, "{text}");
    // The served certificate: the renewed one, valid for the test CA's default lifetime.
    let not_after = certwatch::CertInfo::from_der(&renewed.der).unwrap().not_after;
    let left = not_after.duration_since(SystemTime::now()).unwrap().as_secs_f64();
    let expires_in = value(&text, EXPIRES_IN);
    assert!(expires_in > 0.0 && (expires_in - left).abs() < 120.0, "{expires_in} vs {left}: {text}");
    // Rendered in the Prometheus text format, with help and types.
    assert!(text.contains("# TYPE lifeline_service_restarts_total counter"), "{text}");
    assert!(text.contains("# TYPE lifeline_certwatch_expires_in_seconds gauge"), "{text}");
}
