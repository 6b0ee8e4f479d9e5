//! Fuzz-style property test against a live server: whatever bytes a peer sends, the server
//! answers with well-formed frames or closes, and goes on answering the next good client.

mod common;

use common::{PATIENCE, exchange_raw, fixed_status, frame, start, status_of};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use restart_socket::wire::{self, PROTOCOL_VERSION, Request, Response};
use restart_socket::{Client, ServerConfig};

/// Arbitrary bytes, frames with arbitrary payloads, valid requests with garbage after them.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), 0..600);
    let framed_garbage = proptest::collection::vec(any::<u8>(), 0..300).prop_map(|p| frame(&p));
    let versioned_garbage = proptest::collection::vec(any::<u8>(), 0..40).prop_map(|tail| {
        let mut p = postcard::to_stdvec(&PROTOCOL_VERSION).unwrap();
        p.extend_from_slice(&tail);
        frame(&p)
    });
    let lying_header =
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(len, tail)| {
            let mut out = len.to_le_bytes().to_vec();
            out.extend_from_slice(&tail);
            out
        });
    let good_then_bad = (
        prop_oneof![Just(Request::Status), Just(Request::Restart)],
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(req, tail)| {
            let mut out = wire::encode_request(req);
            out.extend_from_slice(&tail);
            out
        });
    prop_oneof![raw, framed_garbage, versioned_garbage, lying_header, good_then_bad]
}

#[test]
fn arbitrary_bytes_never_break_the_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(async {
        start(ServerConfig::default(), || async { Ok::<u32, String>(9) }, fixed_status())
    });
    let mut runner = TestRunner::new(Config { cases: 200, failure_persistence: None, ..Config::default() });
    let result = runner.run(&hostile_bytes(), |bytes| {
        runtime.block_on(async {
            // Every frame the server sent decodes (checked in exchange_raw) and only good
            // requests are answered with anything but an error.
            let answers = exchange_raw(&server.path, &bytes).await;
            for answer in &answers {
                prop_assert!(
                    matches!(
                        answer,
                        Response::Status(_) | Response::RestartComplete { pid: 9 } | Response::Error { .. }
                    ),
                    "{answer:?}"
                );
            }
            let mut client = Client::connect(&server.path).await.unwrap();
            client.set_timeout(PATIENCE);
            prop_assert_eq!(client.status().await.unwrap(), status_of(1));
            Ok(())
        })
    });
    runtime.block_on(server.stop());
    if let Err(err) = result {
        panic!("{err}");
    }
}
