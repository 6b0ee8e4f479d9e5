//! In-process checks of the `handover` API on a fresh start (no predecessor): its own test
//! binary, because a process adopts its inherited fds once.

use std::net::TcpListener;
use std::os::fd::OwnedFd;

use handover::{Config, Error, Handover, Start};

#[tokio::test]
async fn fresh_start_registration_rules_and_single_adoption() {
    let mut handover = Handover::from_env(Config::default().notify(false)).unwrap();
    assert_eq!(handover.start(), Start::Fresh);
    assert_eq!(handover.predecessor(), None);
    assert!(handover.inherited().is_empty());
    assert!(handover.take_tcp_listener("http").unwrap().is_none());
    assert!(handover.read_state::<u64>(1).await.unwrap().is_none());
    assert_eq!(handover.executable(), std::env::current_exe().unwrap());

    // Only one adoption per process: a second one would own the same fd numbers twice.
    let again = Handover::from_env(Config::default()).unwrap_err();
    assert!(matches!(again, Error::AlreadyAdopted), "{again}");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    handover.register_dup("http", &listener).unwrap();
    let err = handover.register_dup("http", &listener).unwrap_err();
    assert_eq!(err.to_string(), "a file descriptor named \"http\" is already registered");
    let err =
        handover.register("bad,name", OwnedFd::from(TcpListener::bind("127.0.0.1:0").unwrap())).unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err}");

    let upgrader = handover.ready(()).await.unwrap();
    assert_eq!(upgrader.registered(), ["http"]);
    let err = upgrader.register_dup("http", &listener).unwrap_err();
    assert!(matches!(err, Error::DuplicateName { .. }), "{err}");
    assert!(upgrader.unregister("http").is_some());
    upgrader.register_dup("http", &listener).unwrap();
    assert_eq!(upgrader.successor(), None);
    assert!(!upgrader.upgraded().is_cancelled());
}
