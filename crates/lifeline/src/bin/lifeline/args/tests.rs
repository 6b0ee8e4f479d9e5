//! Unit and property tests of the CLI's value parsers: arbitrary input gives an error or a value
//! that round-trips, never a panic, and no accepted duration can overflow an `Instant`.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

#[test]
fn humantime_values_up_to_the_maximum_are_accepted() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    assert_eq!(parse_duration("100y").unwrap(), MAX_DURATION);
}

#[test]
fn absurd_and_malformed_values_are_refused_with_a_reason() {
    for too_long in ["101y", "300000000000y", "36525days 1s", "18446744073709551615s"] {
        let err = parse_duration(too_long).unwrap_err();
        assert!(matches!(err, DurationError::TooLong), "{too_long}: {err}");
        assert!(err.to_string().contains("at most 100y"), "{err}");
    }
    for bad in ["", "soon", "5", "-5s", "5 parsecs", "1e9s", "99999999999999999999999y"] {
        let err = parse_duration(bad).unwrap_err();
        assert!(matches!(err, DurationError::Invalid(_)), "{bad:?} gave {err}");
    }
}

#[test]
fn signal_names_numbers_and_garbage() {
    assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::TERM);
    assert_eq!(parse_signal("usr1").unwrap(), Signal::USR1);
    assert_eq!(parse_signal("9").unwrap(), Signal::KILL);
    for bad in ["", "SIG", "SIGNOPE", "0", "-9", "65", "99999999999", "SIGTERM\0"] {
        assert!(matches!(parse_signal(bad), Err(keepalive::Error::InvalidSignal { .. })), "{bad:?}");
    }
}

proptest! {
    #[test]
    fn any_text_is_a_bounded_duration_or_an_error(text in "\\PC{0,40}") {
        if let Ok(d) = parse_duration(&text) {
            prop_assert!(d <= MAX_DURATION);
            prop_assert!(Instant::now().checked_add(d).is_some());
        }
    }

    #[test]
    fn near_miss_text_never_panics(text in "[0-9]{0,25}[ ]?(ns|us|ms|s|m|h|d|w|M|y|years|x)?") {
        if let Ok(d) = parse_duration(&text) {
            prop_assert!(d <= MAX_DURATION);
        }
    }

    #[test]
    fn accepted_durations_round_trip_through_humantime(secs in 0..=MAX_DURATION.as_secs(), nanos in 0..1_000_000_000u32) {
        let d = Duration::new(secs, nanos).min(MAX_DURATION);
        let text = humantime::format_duration(d).to_string();
        prop_assert_eq!(parse_duration(&text).unwrap(), d);
    }

    #[test]
    fn longer_than_the_maximum_is_always_refused(extra in 1..u64::MAX / 2) {
        let d = MAX_DURATION.saturating_add(Duration::from_nanos(extra));
        let text = humantime::format_duration(d).to_string();
        prop_assert!(matches!(parse_duration(&text), Err(DurationError::TooLong)), "{}", text);
    }

    #[test]
    fn any_text_is_a_signal_or_a_typed_error(text in "\\PC{0,12}") {
        match parse_signal(&text) {
            Ok(signal) => {
                // By number always; by name when it has one (`SIGTERM`, `term`).
                prop_assert_eq!(parse_signal(&signal.as_raw().to_string()).unwrap(), signal);
                if let Some(name) = signal.name() {
                    prop_assert_eq!(parse_signal(&format!("SIG{name}")).unwrap(), signal);
                    prop_assert_eq!(parse_signal(&name.to_ascii_lowercase()).unwrap(), signal);
                }
            }
            Err(err) => prop_assert!(matches!(err, keepalive::Error::InvalidSignal { .. }), "{}", err),
        }
    }

    #[test]
    fn every_signal_number_in_range_round_trips(number in 1..=libc::SIGRTMAX()) {
        let signal = parse_signal(&number.to_string()).unwrap();
        prop_assert_eq!(signal.as_raw(), number);
        if let Some(name) = signal.name() {
            prop_assert_eq!(parse_signal(name).unwrap(), signal);
        }
    }
}
