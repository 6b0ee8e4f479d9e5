//! The example server's duration flags refuse absurd values at parse time (exit 2, one line
//! naming the flag) instead of overflowing `ready_timeout + 10 s` or an `Instant` later.

use std::process::Stdio;

use lifeline_tests::https_server_bin;

#[test]
fn absurd_timeouts_are_usage_errors() {
    for flag in ["--ready-timeout", "--drain-timeout"] {
        let out = std::process::Command::new(https_server_bin())
            .args(["--listen", "127.0.0.1:0", "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/k.pem"])
            .args(["--state-dir", "/nonexistent/state", flag, "300000000000y"])
            .stdin(Stdio::null())
            .output()
            .expect("run the example server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(errors.len() == 1 && errors[0].contains(flag) && errors[0].contains("100y"), "{stderr}");
    }
}
