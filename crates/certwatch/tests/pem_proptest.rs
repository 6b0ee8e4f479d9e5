//! Property tests: whatever bytes the files hold, loading never panics, and a refusal is
//! always a typed error.

mod common;

use certwatch::{ClientCaFile, ClientCaWatcher, PemFiles, WatchConfig, check};
use proptest::prelude::*;

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Raw bytes, or PEM armour around arbitrary DER, or a real PEM file with bytes flipped or
/// cut: the last two reach the X.509 and key parsers, not just the PEM scanner.
fn pem_like() -> impl Strategy<Value = Vec<u8>> {
    let good = common::pair(5);
    let real = format!("{}{}", good.cert_pem, good.key_pem).into_bytes();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        (
            proptest::collection::vec(any::<u8>(), 0..512),
            prop::sample::select(vec!["CERTIFICATE", "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"])
        )
            .prop_map(|(der, label)| format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                base64(&der)
            )
            .into_bytes()),
        (
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            any::<prop::sample::Index>()
        )
            .prop_map(move |(flips, cut)| {
                let mut bytes = real.clone();
                for (at, byte) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
                bytes
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_as_cert_and_key_never_panic(cert_bytes in pem_like(), key_bytes in pem_like()) {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = common::paths(dir.path());
        std::fs::write(&cert, &cert_bytes).unwrap();
        std::fs::write(&key, &key_bytes).unwrap();
        let result = check(&PemFiles::new(&cert, &key).with_provider(common::ring()));
        if let Err(err) = result {
            // Messages stay one short line even for megabytes of garbage.
            let msg = err.to_string();
            prop_assert!(!msg.contains('\n'), "{msg}");
            prop_assert!(msg.len() < 600, "{} bytes", msg.len());
        }
    }

    #[test]
    fn arbitrary_bytes_as_a_ca_bundle_never_panic(bytes in pem_like()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, &bytes).unwrap();
        let _ = ClientCaWatcher::new(ClientCaFile::new(&path).with_provider(common::ring()), WatchConfig::default());
    }
}
