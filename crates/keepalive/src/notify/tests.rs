//! Tests of the notify socket: the parser (properties) and the socket with real datagrams.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use proptest::prelude::*;

use super::*;

#[test]
fn parses_what_systemd_notify_and_libsystemd_send() {
    let n = Notification::parse("READY=1\nSTATUS=serving 3 clients\nMAINPID=4242\nWATCHDOG=1\n");
    assert!(n.ready);
    assert_eq!(n.watchdog, Some(Watchdog::Ping));
    assert_eq!(n.status.as_deref(), Some("serving 3 clients"));
    assert_eq!(n.main_pid, Some(Ok(4242)));
    assert_eq!(Notification::parse("BARRIER=1"), Notification::default());
    let n = Notification::parse("WATCHDOG=trigger\nWATCHDOG_USEC=250000");
    assert_eq!(n.watchdog, Some(Watchdog::Trigger));
    assert_eq!(n.watchdog_usec, Some(250_000));
}

#[test]
fn refuses_main_pids_that_cannot_be_a_successor() {
    for bad in ["0", "1", "-5", "abc", "", "99999999999"] {
        let n = Notification::parse(&format!("MAINPID={bad}"));
        assert_eq!(n.main_pid, Some(Err(bad.to_owned())), "MAINPID={bad}");
    }
}

fn arb_assignment() -> impl Strategy<Value = (String, String)> {
    let key = prop_oneof![
        Just("READY".to_owned()),
        Just("STATUS".to_owned()),
        Just("MAINPID".to_owned()),
        Just("WATCHDOG".to_owned()),
        Just("WATCHDOG_USEC".to_owned()),
        Just("STOPPING".to_owned()),
        "[A-Z_]{1,12}",
    ];
    (key, "[^\n]{0,20}")
}

fn arb_notification() -> impl Strategy<Value = Notification> {
    let main_pid = prop_oneof![
        (2u32..=i32::MAX as u32).prop_map(Ok),
        // Texts that are not a possible successor pid.
        prop_oneof![
            Just("0".to_owned()),
            Just("1".to_owned()),
            Just(String::new()),
            "[a-z]{1,8}",
            "-[0-9]{1,5}",
            (i32::MAX as u64 + 1..=u64::MAX).prop_map(|n| n.to_string()),
        ]
        .prop_map(Err),
    ];
    (
        (any::<bool>(), any::<bool>(), any::<bool>()),
        proptest::option::of("[^\n]{0,40}"),
        proptest::option::of(main_pid),
        proptest::option::of(prop_oneof![Just(Watchdog::Ping), Just(Watchdog::Trigger)]),
        proptest::option::of(1u64..),
    )
        .prop_map(|((ready, reloading, stopping), status, main_pid, watchdog, watchdog_usec)| {
            Notification { ready, reloading, stopping, status, main_pid, watchdog, watchdog_usec }
        })
}

/// What a client would send for `n` (in a shuffled order: no key depends on another's place).
fn render(n: &Notification, order: &[usize]) -> String {
    let flag = |on: bool| if on { "1" } else { "0" };
    let mut lines = vec![
        Some(format!("READY={}", flag(n.ready))),
        Some(format!("RELOADING={}", flag(n.reloading))),
        Some(format!("STOPPING={}", flag(n.stopping))),
        n.status.as_ref().map(|s| format!("STATUS={s}")),
        n.main_pid.as_ref().map(|p| match p {
            Ok(pid) => format!("MAINPID={pid}"),
            Err(text) => format!("MAINPID={text}"),
        }),
        n.watchdog.map(|w| format!("WATCHDOG={}", if w == Watchdog::Ping { "1" } else { "trigger" })),
        n.watchdog_usec.map(|u| format!("WATCHDOG_USEC={u}")),
    ];
    let mut out = Vec::new();
    for &i in order {
        if let Some(line) = lines.get_mut(i % 7).and_then(Option::take) {
            out.push(line);
        }
    }
    out.extend(lines.into_iter().flatten());
    out.join("\n")
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = Notification::parse(&text);
    }

    #[test]
    fn every_notification_round_trips_through_the_text_a_client_sends(
        n in arb_notification(),
        order in proptest::collection::vec(0usize..7, 0..7),
    ) {
        prop_assert_eq!(Notification::parse(&render(&n, &order)), n);
    }

    #[test]
    fn mainpid_is_a_possible_successor_pid_or_the_refused_text(value in prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[0-9+ -]{0,12}",
        any::<String>().prop_filter("one line", |s| !s.contains('\n')),
    ]) {
        let parsed = Notification::parse(&format!("MAINPID={value}")).main_pid;
        match value.parse::<u32>() {
            Ok(pid) if pid > 1 && i32::try_from(pid).is_ok() => prop_assert_eq!(parsed, Some(Ok(pid))),
            _ => prop_assert_eq!(parsed, Some(Err(value))),
        }
    }

    #[test]
    fn watchdog_usec_is_a_positive_u64_or_nothing(value in prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| n.to_string()),
        "[0-9+ -]{0,24}",
    ]) {
        let parsed = Notification::parse(&format!("WATCHDOG_USEC={value}")).watchdog_usec;
        prop_assert_eq!(parsed, value.parse::<u64>().ok().filter(|u| *u > 0));
    }

    #[test]
    fn the_last_assignment_of_each_key_wins(assignments in proptest::collection::vec(arb_assignment(), 0..12)) {
        let text: Vec<String> = assignments.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let n = Notification::parse(&text.join("\n"));
        let last = |key: &str| assignments.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        prop_assert_eq!(n.ready, last("READY").as_deref() == Some("1"));
        prop_assert_eq!(n.status, last("STATUS"));
        match last("MAINPID") {
            None => prop_assert_eq!(n.main_pid, None),
            Some(v) => match v.parse::<u32>() {
                Ok(pid) if pid > 1 && i32::try_from(pid).is_ok() => prop_assert_eq!(n.main_pid, Some(Ok(pid))),
                _ => prop_assert_eq!(n.main_pid, Some(Err(v))),
            },
        }
    }
}

#[tokio::test]
async fn receives_the_senders_pid_and_closes_passed_fds_like_a_barrier_expects() {
    let server = NotifySocket::bind(NotifyAddress::PrivateDir).expect("bind");
    let path = server.address().to_owned();
    let client = UnixDatagram::unbound().expect("client");
    client.send_to(b"READY=1", &path).expect("send");
    let msg = server.recv().await.expect("recv");
    assert_eq!(msg.pid, Some(std::process::id() as i32));
    assert_eq!(msg.text, "READY=1");

    // BARRIER=1: the client passes the write end of a pipe and waits for POLLHUP on the read end.
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    client.connect(&path).expect("connect");
    let fds = [write_end.as_raw_fd()];
    sendmsg::<()>(
        client.as_raw_fd(),
        &[IoSlice::new(b"BARRIER=1")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .expect("sendmsg");
    drop(write_end);
    let msg = server.recv().await.expect("recv barrier");
    assert_eq!(msg.fds, 1);
    // Every write end is closed now: reading gives EOF at once instead of blocking.
    let mut buf = [0u8; 1];
    assert_eq!(nix::unistd::read(&read_end, &mut buf).expect("read"), 0);
}

#[tokio::test]
async fn oversized_messages_are_flagged_and_the_socket_file_goes_away_on_drop() {
    let server = NotifySocket::bind(NotifyAddress::PrivateDir).expect("bind");
    let path = PathBuf::from(server.address());
    let client = UnixDatagram::unbound().expect("client");
    client.send_to(&vec![b'x'; MAX_MESSAGE + 10], &path).expect("send");
    let msg = server.recv().await.expect("recv");
    assert!(msg.truncated);
    assert!(server.try_recv().expect("try_recv").is_none());
    drop(server);
    assert!(!path.exists());
    assert!(!path.parent().expect("dir").exists(), "the private directory is removed too");
}

#[tokio::test]
async fn abstract_sockets_work_and_rebinding_a_kept_path_works() {
    let server = NotifySocket::bind(NotifyAddress::Abstract).expect("bind abstract");
    assert!(server.address().starts_with('@'));
    let client = UnixDatagram::unbound().expect("client");
    let addr = SocketAddr::from_abstract_name(&server.address().as_bytes()[1..]).expect("addr");
    client.send_to_addr(b"STATUS=hi", &addr).expect("send");
    assert_eq!(server.recv().await.expect("recv").text, "STATUS=hi");

    let kept = NotifySocket::bind(NotifyAddress::PrivateDir).expect("bind").keep();
    assert!(PathBuf::from(&kept).exists(), "keep() leaves the socket file");
    let again = NotifySocket::rebind(&kept).expect("rebind");
    client.send_to(b"READY=1", &kept).expect("send");
    assert_eq!(again.recv().await.expect("recv").text, "READY=1");
}

#[tokio::test]
async fn the_private_directory_has_mode_0700_and_holds_only_the_socket() {
    use std::os::unix::fs::MetadataExt as _;
    let server = NotifySocket::bind(NotifyAddress::PrivateDir).expect("bind");
    let path = PathBuf::from(server.address());
    let dir = path.parent().expect("dir");
    assert_eq!(std::fs::metadata(dir).expect("stat dir").mode() & 0o7777, 0o700);
    let euid = nix::unistd::geteuid().as_raw();
    assert_eq!(created_by_lifeline(&path, euid).as_deref(), Ok(dir));
}

#[tokio::test]
async fn a_path_lifeline_did_not_create_is_never_rebound_or_removed() {
    use std::os::unix::fs::PermissionsExt as _;
    let euid = nix::unistd::geteuid().as_raw();
    let root = tempfile::tempdir().expect("tempdir");
    // Each case: a socket file somewhere, and what makes it not lifeline's.
    let cases: [(&str, &str, u32, bool); 5] = [
        ("not-prefixed", "notify", 0o700, false),
        ("lifeline-notify-x", "other.sock", 0o700, false),
        ("lifeline-notify-y", "notify", 0o755, false),
        ("lifeline-notify-z", "notify", 0o700, true),
        ("lifeline-notify-ok", "notify", 0o700, false),
    ];
    for (dir_name, file, mode, extra_file) in cases {
        let dir = root.path().join(dir_name);
        std::fs::create_dir(&dir).expect("mkdir");
        let path = dir.join(file);
        let _bound = UnixDatagram::bind(&path).expect("bind");
        if extra_file {
            std::fs::write(dir.join("precious"), "keep").expect("write");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let verdict = created_by_lifeline(&path, euid);
        let rebound = NotifySocket::rebind(&path.display().to_string());
        if dir_name == "lifeline-notify-ok" {
            assert_eq!(verdict.as_deref(), Ok(dir.as_path()));
            drop(rebound.expect("ours: rebound"));
            assert!(!dir.exists(), "ours: removed when done");
            continue;
        }
        assert!(verdict.is_err(), "{dir_name}/{file}: {verdict:?}");
        let err = crate::error::chain(&rebound.expect_err("refused"));
        assert!(err.contains("not a notify socket lifeline created"), "{err}");
        assert!(path.exists(), "{dir_name}/{file} was unlinked");
        if extra_file {
            assert_eq!(std::fs::read_to_string(dir.join("precious")).expect("kept"), "keep");
        }
    }
    // A symlink to a directory of ours is not our directory.
    let ours = NotifySocket::bind(NotifyAddress::PrivateDir).expect("bind");
    let real = PathBuf::from(ours.address());
    let link = root.path().join("lifeline-notify-link");
    std::os::unix::fs::symlink(real.parent().expect("dir"), &link).expect("symlink");
    assert!(created_by_lifeline(&link.join("notify"), euid).is_err());
    assert!(real.exists());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any datagram (not UTF-8, empty, over the size limit, with fds) is received as a message,
    /// flagged when too long, its fds closed; the socket keeps working.
    #[test]
    fn any_datagram_is_received_whole_or_flagged_and_never_breaks_the_socket(
        datagrams in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..MAX_MESSAGE + 64), 0usize..3),
            1..6,
        ),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let server = NotifySocket::bind(NotifyAddress::PrivateDir).expect("bind");
            let client = UnixDatagram::unbound().expect("client");
            client.connect(server.address()).expect("connect");
            for (bytes, fds) in &datagrams {
                let pipes: Vec<(OwnedFd, OwnedFd)> = (0..*fds).map(|_| nix::unistd::pipe().expect("pipe")).collect();
                let raw: Vec<RawFd> = pipes.iter().map(|(_, w)| w.as_raw_fd()).collect();
                let cmsgs: Vec<ControlMessage<'_>> =
                    if raw.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(&raw)] };
                sendmsg::<()>(client.as_raw_fd(), &[IoSlice::new(bytes)], &cmsgs, MsgFlags::empty(), None)
                    .expect("sendmsg");
                let writers: Vec<OwnedFd> = pipes.into_iter().map(|(r, w)| { drop(w); r }).collect();
                let msg = server.recv().await.expect("recv");
                prop_assert_eq!(msg.truncated, bytes.len() > MAX_MESSAGE);
                prop_assert_eq!(msg.fds, *fds);
                if !msg.truncated {
                    prop_assert_eq!(msg.text, String::from_utf8_lossy(bytes).into_owned());
                }
                for read_end in writers {
                    // Every write end is closed (ours and the one we received): EOF at once.
                    let mut buf = [0u8; 1];
                    prop_assert_eq!(nix::unistd::read(&read_end, &mut buf).expect("read"), 0);
                }
            }
            Ok(())
        })?;
    }
}
