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
