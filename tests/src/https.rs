//! A small blocking HTTPS client for tests and drivers: one request per connection, a keep-alive
//! connection, or just the handshake to see which certificate the server presents.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A client configuration trusting `ca_der` only (ring provider).
pub fn client_config(ca_der: &[u8]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).expect("valid CA certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<Tls> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// The leaf certificate (DER) the server at `addr` presents in a real handshake.
pub fn presented(addr: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<Vec<u8>> {
    let tls = connect(addr, config)?;
    tls.conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.to_vec())
        .ok_or_else(|| io::Error::other("no certificate presented"))
}

/// `GET path` on a new connection; the body of a 200 response, trimmed.
pub fn get(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> io::Result<String> {
    KeepAlive::connect(addr, config)?.get(path)
}

/// One HTTP/1.1 keep-alive connection.
pub struct KeepAlive {
    reader: BufReader<Tls>,
}

impl KeepAlive {
    /// Connects and completes the TLS handshake.
    pub fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<KeepAlive> {
        Ok(KeepAlive { reader: BufReader::new(connect(addr, config)?) })
    }

    /// `GET path`; the body of a 200 response, trimmed. Any other status is an error.
    pub fn get(&mut self, path: &str) -> io::Result<String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut status = String::new();
        if self.reader.read_line(&mut status)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the headers"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(io::Error::other)?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        if status.split_whitespace().nth(1) == Some("200") {
            Ok(body)
        } else {
            Err(io::Error::other(format!("{}: {body}", status.trim())))
        }
    }
}
