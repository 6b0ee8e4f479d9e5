//! Property tests of the wire codec: round trips, version checks, size limits, arbitrary bytes.

use proptest::prelude::*;
use restart_socket::Error;
use restart_socket::wire::{
    self, ErrorKind, HEADER_LEN, MAX_FRAME_LEN, MAX_MESSAGE_LEN, PROTOCOL_VERSION, Request, Response, Status,
};

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![Just(Request::Restart), Just(Request::Status)]
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop_oneof![
        Just(ErrorKind::UnsupportedVersion),
        Just(ErrorKind::Malformed),
        Just(ErrorKind::FrameTooLarge),
        Just(ErrorKind::PermissionDenied),
        Just(ErrorKind::Busy),
        Just(ErrorKind::Timeout),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        any::<u32>().prop_map(|pid| Response::RestartComplete { pid }),
        ".{0,200}".prop_map(|reason| Response::RestartFailed { reason }),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<Option<u64>>()).prop_map(
            |(pid, generation, started_at, last_restart)| Response::Status(Status {
                pid,
                generation,
                started_at,
                last_restart
            })
        ),
        (error_kind(), ".{0,200}").prop_map(|(kind, message)| Response::Error { kind, message }),
    ]
}

/// Splits a frame into its announced length and payload, checking the header agrees.
fn payload(frame: &[u8]) -> &[u8] {
    let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
    let len = wire::payload_len(header).unwrap();
    assert_eq!(len, frame.len() - HEADER_LEN, "header announces the payload length");
    &frame[HEADER_LEN..]
}

/// A payload carrying `version` followed by the body of a valid current-version payload.
fn with_version(version: u32, valid_payload: &[u8]) -> Vec<u8> {
    let mut out = postcard::to_stdvec(&version).unwrap();
    let current = postcard::to_stdvec(&PROTOCOL_VERSION).unwrap();
    out.extend_from_slice(&valid_payload[current.len()..]);
    out
}

proptest! {
    #[test]
    fn requests_round_trip(req in request()) {
        let frame = wire::encode_request(req);
        prop_assert_eq!(wire::decode_request(payload(&frame)).unwrap(), req);
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        let frame = wire::encode_response(&resp);
        prop_assert_eq!(wire::decode_response(payload(&frame)).unwrap(), resp);
    }

    #[test]
    fn any_other_version_is_refused_by_both_sides(version in any::<u32>(), req in request(), resp in response()) {
        prop_assume!(version != PROTOCOL_VERSION);
        let req_payload = with_version(version, payload(&wire::encode_request(req)));
        let got = wire::decode_request(&req_payload);
        prop_assert!(matches!(got, Err(Error::UnsupportedVersion { got, expected: PROTOCOL_VERSION }) if got == version), "{got:?}");
        let resp_payload = with_version(version, payload(&wire::encode_response(&resp)));
        let got = wire::decode_response(&resp_payload);
        prop_assert!(matches!(got, Err(Error::UnsupportedVersion { .. })), "{got:?}");
    }

    #[test]
    fn arbitrary_bytes_decode_to_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        // Must not panic; whatever decodes must re-encode to the same bytes (no lenient parsing).
        if let Ok(req) = wire::decode_request(&bytes) {
            let frame = wire::encode_request(req);
            prop_assert_eq!(payload(&frame), &bytes[..]);
        }
        if let Ok(resp) = wire::decode_response(&bytes) {
            let frame = wire::encode_response(&resp);
            prop_assert_eq!(payload(&frame), &bytes[..]);
        }
    }

    #[test]
    fn mutated_payloads_decode_to_a_value_or_an_error(
        resp in response(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = payload(&wire::encode_response(&resp)).to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(resp) = wire::decode_response(&bytes) {
            let frame = wire::encode_response(&resp);
            prop_assert_eq!(payload(&frame), &bytes[..]);
        }
        let _ = wire::decode_request(&bytes);
    }

    #[test]
    fn trailing_bytes_are_malformed(req in request(), extra in proptest::collection::vec(any::<u8>(), 1..16)) {
        let mut bytes = payload(&wire::encode_request(req)).to_vec();
        bytes.extend_from_slice(&extra);
        let got = wire::decode_request(&bytes);
        prop_assert!(matches!(got, Err(Error::Malformed { .. })), "{got:?}");
    }

    #[test]
    fn truncated_payloads_are_malformed(resp in response(), cut in any::<prop::sample::Index>()) {
        let full = payload(&wire::encode_response(&resp)).to_vec();
        let short = &full[..cut.index(full.len())];
        prop_assert!(matches!(wire::decode_response(short), Err(Error::Malformed { .. })), "{short:?}");
    }

    #[test]
    fn lengths_over_the_limit_are_refused(len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX) {
        let got = wire::payload_len(len.to_le_bytes());
        prop_assert!(matches!(got, Err(Error::FrameTooLarge { len: l, max: MAX_FRAME_LEN }) if l == len as usize), "{got:?}");
    }

    #[test]
    fn lengths_up_to_the_limit_are_accepted(len in 0..=(MAX_FRAME_LEN as u32)) {
        prop_assert_eq!(wire::payload_len(len.to_le_bytes()).unwrap(), len as usize);
    }

    #[test]
    fn long_messages_are_cut_to_fit_a_frame(reason in ".{0,20}", repeat in 1usize..20_000) {
        let reason = reason.repeat(repeat);
        let frame = wire::encode_response(&Response::RestartFailed { reason: reason.clone() });
        prop_assert!(frame.len() - HEADER_LEN <= MAX_FRAME_LEN);
        let Response::RestartFailed { reason: sent } = wire::decode_response(payload(&frame)).unwrap() else {
            panic!("not a RestartFailed");
        };
        if reason.len() <= MAX_MESSAGE_LEN {
            prop_assert_eq!(sent, reason);
        } else {
            prop_assert!(sent.len() <= MAX_MESSAGE_LEN + '…'.len_utf8());
            prop_assert!(reason.starts_with(sent.trim_end_matches('…')));
        }
    }
}

#[test]
fn the_version_is_the_first_byte_of_every_frame() {
    assert_eq!(PROTOCOL_VERSION, 1, "bump this test with the protocol");
    assert_eq!(wire::encode_request(Request::Status)[HEADER_LEN], 1);
    assert_eq!(wire::encode_response(&Response::RestartComplete { pid: 7 })[HEADER_LEN], 1);
}

#[test]
fn an_empty_payload_is_malformed() {
    assert!(matches!(wire::decode_request(&[]), Err(Error::Malformed { .. })));
}

#[test]
fn overlong_integers_are_malformed() {
    // `RestartComplete { pid: 128 }` is [version, variant 0, 0x80, 0x01]; postcard alone would
    // also read [.., 0x80, 0x00] (an overlong 0) and [0x81, 0x00, ..] (an overlong version 1).
    let valid = payload(&wire::encode_response(&Response::RestartComplete { pid: 128 })).to_vec();
    assert_eq!(valid, [1, 0, 0x80, 0x01]);
    for bytes in [&[1, 0, 0x80, 0x00][..], &[0x81, 0x00, 0, 0x80, 0x01], &[1, 0x80, 0x00, 0x80, 0x01]] {
        let got = wire::decode_response(bytes);
        assert!(matches!(got, Err(Error::Malformed { .. })), "{bytes:?} decoded to {got:?}");
    }
    assert!(matches!(wire::decode_request(&[0x81, 0x00, 0]), Err(Error::Malformed { .. })));
    assert_eq!(wire::decode_response(&valid).unwrap(), Response::RestartComplete { pid: 128 });
}
