//! The application both app crates are: what a service on rustls writes to serve a certificate
//! that follows its files, and a test that serves one real handshake with it. Included by
//! `app-aws-lc-rs` and `app-ring` (`#[path]`), each built alone with its own rustls features.

use std::error::Error;
use std::path::Path;

/// The server side, as an application writes it: `ServerConfig::builder()` takes the
/// process-wide provider rustls chooses from its crate features, and certwatch loads the key
/// with that same default (no provider named anywhere).
pub fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<(rustls::ServerConfig, certwatch::CertWatcher), Box<dyn Error>> {
    let builder = rustls::ServerConfig::builder();
    let certs =
        certwatch::CertWatcher::new(certwatch::PemFiles::new(cert, key), certwatch::WatchConfig::default())?;
    let config = builder.with_no_client_auth().with_cert_resolver(certs.resolver());
    Ok((config, certs))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Runs a full TLS handshake between `server` and a client trusting `ca_der`, in memory.
    fn handshake(server: rustls::ServerConfig, ca_der: &[u8]) -> Result<(), Box<dyn Error>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.to_vec().into())?;
        let client = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let mut client = rustls::ClientConnection::new(Arc::new(client), "localhost".try_into()?)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        // Each side's records go straight to the other until neither has anything to say.
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf)?;
            }
            server.read_tls(&mut buf.as_slice())?;
            server.process_new_packets()?;
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf)?;
            }
            client.read_tls(&mut buf.as_slice())?;
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".into())
    }

    #[test]
    fn server_config_builder_uses_the_applications_provider_with_certwatchs_resolver() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&cert, pair.cert.pem()).unwrap();
        std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();

        // Before the fix, certwatch enabled rustls' `ring` feature next to the application's
        // `aws-lc-rs`, and this panicked: "Could not automatically determine the process-level
        // CryptoProvider from Rustls crate features".
        let (config, certs) = server_config(&cert, &key).unwrap();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        assert_eq!(certs.current().sans, ["DNS:localhost"]);
        handshake(config, pair.cert.der()).unwrap();
    }
}
