//! Serving and the state-directory lock: the answers of `GET /` and `GET /delay`, and a second
//! instance on the same state directory.

use std::process::Stdio;
use std::time::{Duration, Instant};

use lifeline_tests::load::parse_answer;

use crate::support::{Conn, Options, flock_says_locked};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_answers_pid_generation_and_a_count_that_goes_up() {
    let server = Options::new().without_control().start();
    let pid = server.pid;

    // New connections, one request each.
    for n in 1..=3 {
        assert_eq!(server.get("/").await.unwrap(), format!("pid={pid} generation=1 served={n}"));
    }
    // One keep-alive connection, several requests.
    let mut conn = Conn::open(server.addr, &server.pki().roots()).await.unwrap();
    for n in 4..=6 {
        assert_eq!(conn.get("/").await.unwrap(), format!("pid={pid} generation=1 served={n}"));
    }
    // Anything else is not counted.
    let missing = server.get("/nope").await.unwrap_err();
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    assert_eq!(server.answer().await, (pid, 1, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_answers_after_at_least_the_delay() {
    let server = Options::new().without_control().start();
    for ms in [0, 300, 1200] {
        let began = Instant::now();
        let body = server.get(&format!("/delay?ms={ms}")).await.unwrap();
        let took = began.elapsed();
        assert!(took >= Duration::from_millis(ms), "/delay?ms={ms} answered after {took:?}");
        let (pid, generation, _) = parse_answer(&body).unwrap_or_else(|| panic!("{body:?}"));
        assert_eq!((pid, generation), (server.pid, 1));
    }
    // Each delayed request counted; a malformed one is refused and not counted.
    let bad = server.get("/delay?ms=soon").await.unwrap_err();
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    assert_eq!(server.answer().await.2, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_state_dir_exits_75_naming_the_holder() {
    let server = Options::new().start();
    let lock = server.lock_path();
    assert!(flock_says_locked(&lock), "the first instance does not hold {}", lock.display());
    assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), server.pid.to_string());

    // The very same command line, control socket included.
    let second = server.options.command("127.0.0.1:0").stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "{}: {stderr}", second.status);
    assert!(
        stderr.lines().any(|l| l.contains(&format!("locked by pid {}", server.pid))),
        "the holder is not named: {stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&second.stdout), "", "the second instance must not serve");

    // The first one is undisturbed: lock, control socket and serving.
    assert!(flock_says_locked(&lock));
    assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), server.pid.to_string());
    assert_eq!(server.status()["pid"], server.pid);
    assert_eq!(server.answer().await, (server.pid, 1, 1));
}
