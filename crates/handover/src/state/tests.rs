//! Unit and property tests of the state framing.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AppState {
    served: u64,
    generation: u32,
    names: Vec<String>,
    note: Option<String>,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

fn read(bytes: &[u8], limit: usize) -> Result<Option<StateFrame>, Error> {
    let mut reader = bytes;
    block_on(read_frame(&mut reader, limit))
}

fn app_state() -> impl Strategy<Value = AppState> {
    (any::<u64>(), any::<u32>(), proptest::collection::vec(".{0,12}", 0..5), proptest::option::of(".{0,30}"))
        .prop_map(|(served, generation, names, note)| AppState { served, generation, names, note })
}

#[test]
fn empty_stream_means_no_state() {
    assert_eq!(read(b"", 100).unwrap(), None);
}

#[test]
fn wrong_version_is_a_version_error() {
    let frame = encode_frame(1, &7u64, 100).unwrap();
    let got = read(&frame, 100).unwrap().unwrap();
    assert_eq!(got.decode::<u64>(1).unwrap(), 7);
    let err = got.decode::<u64>(2).unwrap_err();
    assert!(matches!(err, Error::StateVersion { found: 1, expected: 2 }), "{err}");
    assert_eq!(err.to_string(), "state version 1 is not supported (expected 2)");
}

#[test]
fn oversized_length_is_refused_before_allocation() {
    let mut frame = Vec::from(STATE_MAGIC);
    frame.extend_from_slice(&1u32.to_le_bytes());
    frame.extend_from_slice(&u32::MAX.to_le_bytes());
    // No payload follows: a reader that allocated first would wait for 4 GiB.
    let err = read(&frame, 1024).unwrap_err();
    assert!(matches!(err, Error::StateTooLarge { len, limit: 1024 } if len == u64::from(u32::MAX)), "{err}");
}

#[test]
fn encoding_over_the_limit_is_refused() {
    let err = encode_frame(1, &vec![0u8; 100], 10).unwrap_err();
    assert!(matches!(err, Error::StateTooLarge { limit: 10, .. }), "{err}");
}

#[test]
fn bad_magic_and_truncation_are_corrupt() {
    let frame = encode_frame(3, "hello", 100).unwrap();
    let mut bad = frame.clone();
    bad[0] = b'X';
    assert!(matches!(read(&bad, 100), Err(Error::StateCorrupt { .. })));
    assert!(matches!(read(&frame[..5], 100), Err(Error::StateCorrupt { .. })));
    assert!(matches!(read(&frame[..frame.len() - 1], 100), Err(Error::StateCorrupt { .. })));
}

#[test]
fn trailing_payload_bytes_are_corrupt() {
    let frame = StateFrame { version: 1, payload: vec![1, 2] };
    assert!(matches!(frame.decode::<u8>(1), Err(Error::StateCorrupt { .. })));
}

proptest! {
    #[test]
    fn frames_round_trip(version in any::<u32>(), state in app_state()) {
        let frame = encode_frame(version, &state, DEFAULT_STATE_LIMIT).unwrap();
        let got = read(&frame, DEFAULT_STATE_LIMIT).unwrap().unwrap();
        prop_assert_eq!(got.version, version);
        prop_assert_eq!(got.decode::<AppState>(version).unwrap(), state);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), limit in 0usize..64) {
        if let Ok(Some(frame)) = read(&bytes, limit) {
            prop_assert!(frame.payload.len() <= limit);
            let _ = frame.decode::<AppState>(frame.version);
        }
    }

    #[test]
    fn any_prefix_of_a_frame_is_rejected(state in app_state(), cut in 1usize..64) {
        let frame = encode_frame(1, &state, DEFAULT_STATE_LIMIT).unwrap();
        let cut = cut.min(frame.len() - 1);
        prop_assert!(read(&frame[..cut], DEFAULT_STATE_LIMIT).is_err());
    }

    #[test]
    fn any_header_is_a_typed_error_or_round_trips(header in proptest::array::uniform12(any::<u8>()), limit in 0usize..1 << 20) {
        match parse_header(&header, limit) {
            Ok((version, len)) => {
                prop_assert!(len <= limit);
                let mut again = Vec::from(STATE_MAGIC);
                again.extend_from_slice(&version.to_le_bytes());
                again.extend_from_slice(&(len as u32).to_le_bytes());
                prop_assert_eq!(&again[..], &header[..]);
            }
            Err(err) => prop_assert!(
                matches!(err, Error::StateCorrupt { .. } | Error::StateTooLarge { .. }),
                "{}", err
            ),
        }
    }

    #[test]
    fn a_frame_read_from_arbitrary_bytes_is_exactly_those_bytes(
        magic in proptest::bool::weighted(0.8),
        version in any::<u32>(),
        len in 0u32..80,
        body in proptest::collection::vec(any::<u8>(), 0..80),
        limit in 0usize..100,
    ) {
        let mut bytes = if magic { Vec::from(STATE_MAGIC) } else { b"LLsT".to_vec() };
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&body);
        match read(&bytes, limit) {
            Ok(Some(frame)) => {
                prop_assert_eq!(frame.version, version);
                prop_assert_eq!(frame.payload.len(), len as usize);
                prop_assert_eq!(&frame.payload[..], &body[..len as usize]);
            }
            Ok(None) => prop_assert!(bytes.is_empty()),
            Err(err) => prop_assert!(
                matches!(err, Error::StateCorrupt { .. } | Error::StateTooLarge { .. }),
                "{}", err
            ),
        }
    }

    #[test]
    fn flipped_header_bytes_never_panic(state in app_state(), at in 0usize..HEADER_LEN, byte in any::<u8>()) {
        let mut frame = encode_frame(1, &state, DEFAULT_STATE_LIMIT).unwrap();
        frame[at] = byte;
        if let Ok(Some(got)) = read(&frame, DEFAULT_STATE_LIMIT) {
            let _ = got.decode::<AppState>(1);
        }
    }
}

proptest! {
    /// The frame `encode_frame` builds (sized first, encoded once) is byte for byte the header
    /// followed by postcard's own encoding.
    #[test]
    fn a_frame_is_the_header_and_postcards_encoding(version in any::<u32>(), state in app_state()) {
        let frame = encode_frame(version, &state, 1 << 20).unwrap();
        let payload = postcard::to_stdvec(&state).unwrap();
        prop_assert_eq!(&frame[HEADER_LEN..], &payload[..]);
        prop_assert_eq!(parse_header(frame[..HEADER_LEN].try_into().unwrap(), 1 << 20).unwrap(), (version, payload.len()));
    }

    /// Whatever bytes `send_raw` writes, the reader gets exactly them as the payload; over the
    /// limit it writes nothing.
    #[test]
    fn raw_payloads_round_trip_and_oversized_ones_are_refused(
        version in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        limit in 0usize..256,
    ) {
        let (writer, reader) = tokio::io::duplex(1 << 16);
        let bytes = payload.clone();
        // The writer is dropped with the future: the end of the stream.
        let sent = block_on(async move {
            let mut state = StateWriter::new(writer, limit);
            state.send_raw(version, &bytes).await
        });
        let mut reader = StateReader::new(reader, limit);
        if payload.len() <= limit {
            prop_assert!(sent.is_ok());
            let frame = block_on(reader.recv_frame()).unwrap().unwrap();
            prop_assert_eq!(frame, StateFrame { version, payload });
        } else {
            prop_assert!(sent.is_err());
            prop_assert!(block_on(reader.recv_frame()).unwrap().is_none());
        }
    }
}
