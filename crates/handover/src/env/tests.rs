//! Unit and property tests of the environment protocol parsers.

use proptest::prelude::*;

use super::*;

fn name_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.@/+-]{1,40}"
}

#[test]
fn parses_pairs_in_order() {
    let fds = parse_fds("http=5,control=7").unwrap();
    assert_eq!(fds, vec![("http".to_owned(), 5), ("control".to_owned(), 7)]);
    assert!(parse_fds("").unwrap().is_empty());
}

#[test]
fn rejects_malformed_lifeline_fds() {
    for bad in [
        "http",
        "http=",
        "=5",
        "http=5,",
        ",http=5",
        "http=-5",
        "http=+5",
        "http=x",
        "http=2",
        "http=5,http=6",
        "a=5,b=5",
        "ht tp=5",
        "http=99999999999999",
    ] {
        let err = parse_fds(bad).expect_err(bad);
        assert!(matches!(err, Error::Env { var: LIFELINE_FDS, .. }), "{bad}: {err}");
    }
}

#[test]
fn names_reject_separators_and_empty() {
    for bad in ["", "a=b", "a,b", "a:b", "a b", "é", &"x".repeat(256)] {
        assert!(matches!(validate_name(bad), Err(Error::InvalidName { .. })), "{bad:?}");
    }
    validate_name("http-v4.0/main@1").unwrap();
}

#[test]
fn listen_fds_for_another_pid_are_ignored() {
    let fds = parse_listen_fds(Some("42"), Some("2"), Some("a:b"), 43).unwrap();
    assert!(fds.is_empty());
}

#[test]
fn listen_fds_without_pid_are_ignored() {
    assert!(parse_listen_fds(None, Some("2"), None, 43).unwrap().is_empty());
}

#[test]
fn listen_fds_named_and_unnamed() {
    let fds = parse_listen_fds(Some("7"), Some("2"), Some("web:"), 7).unwrap();
    assert_eq!(fds, vec![("web".to_owned(), 3), (String::new(), 4)]);
    let fds = parse_listen_fds(Some("7"), Some("2"), None, 7).unwrap();
    assert_eq!(fds, vec![("unknown".to_owned(), 3), ("unknown".to_owned(), 4)]);
}

#[test]
fn listen_fds_mismatched_names_rejected() {
    let err = parse_listen_fds(Some("7"), Some("2"), Some("web"), 7).unwrap_err();
    assert!(matches!(err, Error::Env { var: LISTEN_FDNAMES, .. }), "{err}");
    let err = parse_listen_fds(Some("x"), Some("2"), None, 7).unwrap_err();
    assert!(matches!(err, Error::Env { var: LISTEN_PID, .. }), "{err}");
    let err = parse_listen_fds(Some("7"), Some("-1"), None, 7).unwrap_err();
    assert!(matches!(err, Error::Env { var: LISTEN_FDS, .. }), "{err}");
    let err = parse_listen_fds(Some("7"), Some("100000"), None, 7).unwrap_err();
    assert!(matches!(err, Error::Env { var: LISTEN_FDS, .. }), "{err}");
}

proptest! {
    #[test]
    fn format_then_parse_round_trips(
        entries in proptest::collection::btree_map(name_strategy(), 3..100_000i32, 0..20)
    ) {
        // Distinct names; make the fds distinct too.
        let pairs: Vec<(String, RawFd)> =
            entries.into_iter().enumerate().map(|(i, (n, fd))| (n, fd + i as i32 * 100_000)).collect();
        let text = format_fds(pairs.iter().map(|(n, fd)| (n.as_str(), *fd)));
        prop_assert_eq!(parse_fds(&text).unwrap(), pairs);
    }

    #[test]
    fn parse_never_panics_and_only_yields_valid_entries(text in "\\PC{0,80}") {
        if let Ok(pairs) = parse_fds(&text) {
            for (name, fd) in &pairs {
                prop_assert!(validate_name(name).is_ok());
                prop_assert!(*fd >= 3);
            }
            let again = format_fds(pairs.iter().map(|(n, fd)| (n.as_str(), *fd)));
            prop_assert_eq!(parse_fds(&again).unwrap(), pairs);
        }
    }

    #[test]
    fn parse_of_near_miss_strings_never_panics(text in "[a-z0-9=,:]{0,40}") {
        let _ = parse_fds(&text);
        let _ = parse_listen_fds(Some("1"), Some(&text), Some(&text), 1);
    }
}

#[test]
fn zero_listen_fds_with_empty_names_is_no_fds_as_in_libsystemd() {
    assert_eq!(parse_listen_fds(Some("7"), Some("0"), Some(""), 7).unwrap(), vec![]);
    assert_eq!(parse_listen_fds(Some("7"), Some("0"), None, 7).unwrap(), vec![]);
    // A name for no fd is still a mismatch.
    let err = parse_listen_fds(Some("7"), Some("0"), Some("web"), 7).unwrap_err();
    assert!(matches!(err, Error::Env { var: LISTEN_FDNAMES, .. }), "{err}");
}

#[test]
fn successor_fds_are_each_named_once() {
    let ok = parse_successor_fds(Some("http=5,admin=6"), Some("7"), Some("8")).unwrap();
    assert_eq!(ok.fds, vec![("http".to_owned(), 5), ("admin".to_owned(), 6)]);
    assert_eq!((ok.state, ok.ready), (7, 8));
    assert_eq!(parse_successor_fds(None, Some("3"), Some("4")).unwrap().fds, vec![]);
    for (fds, state, ready, var) in [
        ("http=5", "5", "8", LIFELINE_STATE_FD),
        ("http=5", "7", "5", LIFELINE_READY_FD),
        ("http=5", "7", "7", LIFELINE_READY_FD),
        ("http=5", "2", "8", LIFELINE_STATE_FD),
        ("http=5", "7", "", LIFELINE_READY_FD),
        ("http=5", "x", "8", LIFELINE_STATE_FD),
        ("http=5,http=6", "7", "8", LIFELINE_FDS),
    ] {
        let err = parse_successor_fds(Some(fds), Some(state), Some(ready)).unwrap_err();
        assert!(matches!(err, Error::Env { var: v, .. } if v == var), "{fds} {state} {ready}: {err}");
    }
    let err = parse_successor_fds(Some("http=5"), None, Some("8")).unwrap_err();
    assert!(matches!(err, Error::Env { var: LIFELINE_STATE_FD, .. }), "{err}");
}

#[test]
fn systemd_fds_must_not_be_the_predecessors_too() {
    let successor = parse_successor_fds(Some("http=5"), Some("6"), Some("7")).unwrap();
    check_disjoint(&successor, &parse_listen_fds(Some("1"), Some("2"), None, 1).unwrap(), "2").unwrap();
    for count in ["3", "4", "5"] {
        let listen = parse_listen_fds(Some("1"), Some(count), None, 1).unwrap();
        let err = check_disjoint(&successor, &listen, count).unwrap_err();
        assert!(matches!(err, Error::Env { var: LISTEN_FDS, .. }), "{count}: {err}");
    }
}

proptest! {
    #[test]
    fn successor_env_never_panics_and_never_names_an_fd_twice(
        fds in "[a-z0-9=,]{0,30}",
        state in "[0-9]{0,3}",
        ready in "[0-9]{0,3}",
        listen in 0usize..8,
    ) {
        if let Ok(parsed) = parse_successor_fds(Some(&fds), Some(&state), Some(&ready)) {
            let mut all: Vec<RawFd> = parsed.fds.iter().map(|(_, fd)| *fd).collect();
            all.extend([parsed.state, parsed.ready]);
            let count = all.len();
            all.sort_unstable();
            all.dedup();
            prop_assert_eq!(all.len(), count);
            prop_assert!(all.iter().all(|fd| *fd >= 3));
            let systemd = parse_listen_fds(Some("1"), Some(&listen.to_string()), None, 1).unwrap();
            let disjoint = check_disjoint(&parsed, &systemd, &listen.to_string()).is_ok();
            let overlaps = systemd.iter().any(|(_, fd)| all.contains(fd));
            prop_assert_eq!(disjoint, !overlaps);
        }
    }

    #[test]
    fn arbitrary_successor_env_is_a_value_or_a_typed_error(
        fds in "\\PC{0,40}", state in "\\PC{0,6}", ready in "\\PC{0,6}"
    ) {
        match parse_successor_fds(Some(&fds), Some(&state), Some(&ready)) {
            Ok(parsed) => {
                // Round trip: formatting what was accepted gives it back.
                let text = format_fds(parsed.fds.iter().map(|(n, fd)| (n.as_str(), *fd)));
                let again = parse_successor_fds(Some(&text), Some(&parsed.state.to_string()), Some(&parsed.ready.to_string()));
                prop_assert_eq!(again.unwrap(), parsed);
            }
            Err(err) => prop_assert!(matches!(err, Error::Env { .. }), "{}", err),
        }
    }

    #[test]
    fn listen_env_is_a_value_or_a_typed_error(
        pid in "\\PC{0,8}", count in "\\PC{0,6}", names in proptest::option::of("\\PC{0,40}")
    ) {
        match parse_listen_fds(Some(&pid), Some(&count), names.as_deref(), 42) {
            Ok(fds) => {
                // fds are 3, 4, ... in order, as many as LISTEN_FDS says (none for another pid).
                for (i, (_, fd)) in fds.iter().enumerate() {
                    prop_assert_eq!(*fd, 3 + i as RawFd);
                }
                if !fds.is_empty() {
                    prop_assert_eq!(fds.len().to_string(), count.clone());
                    // Round trip through LISTEN_FDNAMES.
                    let joined = fds.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(":");
                    let again = parse_listen_fds(Some("42"), Some(&count), Some(&joined), 42).unwrap();
                    prop_assert_eq!(again, fds);
                }
            }
            Err(err) => prop_assert!(matches!(err, Error::Env { .. }), "{}", err),
        }
    }

    #[test]
    fn listen_fds_for_us_round_trip(names in proptest::collection::vec("[a-z0-9_.-]{1,10}", 0..20)) {
        let count = names.len().to_string();
        let joined = names.join(":");
        let fds = parse_listen_fds(Some("42"), Some(&count), Some(&joined), 42).unwrap();
        prop_assert_eq!(fds.len(), names.len());
        for ((name, fd), (i, expected)) in fds.iter().zip(names.iter().enumerate()) {
            prop_assert_eq!(name, expected);
            prop_assert_eq!(*fd, 3 + i as RawFd);
        }
    }
}
