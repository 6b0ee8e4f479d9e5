//! certwatch end to end: real files rotated the ways renewal tools rotate them, and real TLS
//! handshakes on 127.0.0.1 that show which certificate the server actually presents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certwatch::{
    CertInfo, CertWatcher, ClientCaFile, ClientCaWatcher, Error, PemFiles, ReloadEvent, SniResolver,
    WatchConfig, WatchMode,
};
use lifeline_tests::PATIENCE;
use lifeline_tests::certs::{Leaf, LeafSpec, TestCa, atomic_write};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_files(cert: &Path, key: &Path) -> PemFiles {
    PemFiles::new(cert, key).with_provider(provider())
}

/// Short debounce: the tests wait on events, so this only makes them quicker.
fn config() -> WatchConfig {
    WatchConfig::default().debounce(Duration::from_millis(30))
}

/// A TLS server on 127.0.0.1:0 that completes each handshake, answers one line (`ok` and the
/// client certificate's serial, or `-`), and closes.
async fn serve(config: ServerConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let client = match tls.get_ref().1.peer_certificates() {
                    Some([leaf, ..]) => {
                        CertInfo::from_der(leaf).map_or_else(|_| "?".to_owned(), |i| i.serial)
                    }
                    _ => "-".to_owned(),
                };
                let _ = tls.write_all(format!("ok {client}\n").as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn server_config(resolver: Arc<dyn rustls::server::ResolvesServerCert>) -> ServerConfig {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(resolver)
}

fn client_config(ca: &TestCa) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert_der.clone())).unwrap();
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Connects, handshakes as `name`, reads the server's line. Returns the leaf the server
/// presented and the line.
async fn handshake(addr: SocketAddr, name: &str, config: ClientConfig) -> std::io::Result<(Vec<u8>, String)> {
    tokio::time::timeout(PATIENCE, async {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let server_name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
        let mut tls = connector.connect(server_name, tcp).await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let mut line = String::new();
        tls.read_to_string(&mut line).await?;
        Ok((leaf, line))
    })
    .await
    .expect("handshake timed out")
}

/// The serial of the certificate a handshake to `addr` gets, trusting `ca`.
async fn presented_serial(addr: SocketAddr, ca: &TestCa) -> String {
    let (leaf, line) = handshake(addr, "localhost", client_config(ca)).await.expect("handshake");
    assert!(line.starts_with("ok"), "{line}");
    CertInfo::from_der(&leaf).unwrap().serial
}

fn serial_of(leaf: &Leaf) -> String {
    CertInfo::from_der(&leaf.der).unwrap().serial
}

/// Waits for the first event `pick` accepts, skipping others.
async fn next<I: Clone, T>(
    rx: &mut broadcast::Receiver<ReloadEvent<I>>,
    mut pick: impl FnMut(&ReloadEvent<I>) -> Option<T>,
) -> T {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if let Some(v) = pick(&ev) {
                        return v;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await
    .expect("timed out waiting for a reload event")
}

async fn reloaded(rx: &mut broadcast::Receiver<ReloadEvent>, leaf: &Leaf) {
    let want = serial_of(leaf);
    next(rx, |ev| match ev {
        ReloadEvent::Reloaded(info) if info.serial == want => Some(()),
        _ => None,
    })
    .await;
}

/// A CA, a served pair in `dir/cert.pem` + `dir/key.pem`, a watcher and a server using it.
struct Setup {
    ca: TestCa,
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    first: Leaf,
    watcher: CertWatcher,
    events: broadcast::Receiver<ReloadEvent>,
    addr: SocketAddr,
}

impl Setup {
    async fn new(config: WatchConfig) -> Setup {
        let ca = TestCa::new("certwatch test CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let first = ca.issue(&LeafSpec::new(0x1001));
        first.write(&cert, &key);
        let watcher = CertWatcher::new(pem_files(&cert, &key), config).unwrap();
        let events = watcher.subscribe();
        watcher.start().unwrap();
        let addr = serve(server_config(watcher.resolver())).await;
        assert_eq!(presented_serial(addr, &ca).await, serial_of(&first));
        Setup { ca, _dir: dir, cert, key, first, watcher, events, addr }
    }

    async fn presented(&self) -> String {
        presented_serial(self.addr, &self.ca).await
    }

    /// Provokes a refusal with `break_it`, checks the old pair is still served and the error
    /// reported, then fixes the pair and checks the fix is served.
    async fn refused_then_fixed(mut self, break_it: impl FnOnce(&Setup), expect: impl Fn(&Error) -> bool) {
        break_it(&self);
        // A change made in steps (truncate, then write) may be seen half-done first: wait for
        // the error the final state gives.
        next(&mut self.events, |ev| match ev {
            ReloadEvent::Failed(err) if expect(err) => Some(()),
            ReloadEvent::Failed(_) => None,
            other => panic!("expected a refusal, got {other:?}"),
        })
        .await;
        assert_eq!(self.presented().await, serial_of(&self.first), "a refused pair must not be served");
        assert_eq!(self.watcher.current().serial, serial_of(&self.first));
        assert!(self.watcher.stats().reloads_failed >= 1);

        let fixed = self.ca.issue(&LeafSpec::new(0x1002));
        if self.cert.is_dir() {
            std::fs::remove_dir(&self.cert).unwrap();
        }
        fixed.write_atomic(&self.cert, &self.key);
        reloaded(&mut self.events, &fixed).await;
        assert_eq!(self.presented().await, serial_of(&fixed));
    }
}

#[tokio::test]
async fn rotation_by_rename_is_presented_to_new_handshakes() {
    let mut s = Setup::new(config()).await;
    let second = s.ca.issue(&LeafSpec::new(0x2002));
    second.write_atomic(&s.cert, &s.key);
    reloaded(&mut s.events, &second).await;
    assert_eq!(s.presented().await, serial_of(&second));
    assert_eq!(s.watcher.stats().reloads_ok, 1);
}

#[tokio::test]
async fn rotation_by_in_place_rewrite_is_presented() {
    let mut s = Setup::new(config()).await;
    let second = s.ca.issue(&LeafSpec::new(0x2003));
    second.write(&s.cert, &s.key);
    reloaded(&mut s.events, &second).await;
    assert_eq!(s.presented().await, serial_of(&second));
}

#[tokio::test]
async fn rotation_by_delete_then_create_is_presented() {
    let mut s = Setup::new(config()).await;
    std::fs::remove_file(&s.cert).unwrap();
    std::fs::remove_file(&s.key).unwrap();
    // Whether or not the gap is seen (a "missing file" failure), the new pair ends up served.
    let second = s.ca.issue(&LeafSpec::new(0x2004));
    second.write(&s.cert, &s.key);
    reloaded(&mut s.events, &second).await;
    assert_eq!(s.presented().await, serial_of(&second));
}

/// Writes a Kubernetes secret volume update the way the kubelet's atomic writer does: a new
/// timestamped directory, a `..data_tmp` symlink to it renamed over `..data`, the old directory
/// removed. `tls.crt` and `tls.key` are symlinks into `..data`.
fn kubernetes_update(volume: &Path, generation: &str, leaf: &Leaf, previous: Option<&str>) {
    let data_dir = volume.join(generation);
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(data_dir.join("tls.key"), &leaf.key_pem).unwrap();
    let tmp = volume.join("..data_tmp");
    std::os::unix::fs::symlink(generation, &tmp).unwrap();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        let link = volume.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    if let Some(old) = previous {
        std::fs::remove_dir_all(volume.join(old)).unwrap();
    }
}

#[tokio::test]
async fn rotation_by_kubernetes_symlink_swap_is_presented_again_and_again() {
    let ca = TestCa::new("k8s CA");
    let volume = tempfile::tempdir().unwrap();
    let v = volume.path();
    let first = ca.issue(&LeafSpec::new(0x3001));
    kubernetes_update(v, "..2026_01_01_00_00_00.000000001", &first, None);
    let watcher = CertWatcher::new(pem_files(&v.join("tls.crt"), &v.join("tls.key")), config()).unwrap();
    let mut events = watcher.subscribe();
    watcher.start().unwrap();
    let addr = serve(server_config(watcher.resolver())).await;
    assert_eq!(presented_serial(addr, &ca).await, serial_of(&first));

    // Twice: the watches must follow `..data` to each new directory.
    let second = ca.issue(&LeafSpec::new(0x3002));
    kubernetes_update(v, "..2026_02_01_00_00_00.000000002", &second, Some("..2026_01_01_00_00_00.000000001"));
    reloaded(&mut events, &second).await;
    assert_eq!(presented_serial(addr, &ca).await, serial_of(&second));

    let third = ca.issue(&LeafSpec::new(0x3003));
    kubernetes_update(v, "..2026_03_01_00_00_00.000000003", &third, Some("..2026_02_01_00_00_00.000000002"));
    reloaded(&mut events, &third).await;
    assert_eq!(presented_serial(addr, &ca).await, serial_of(&third));
    assert!(!watcher.stats().polling);
}

#[tokio::test]
async fn a_torn_write_keeps_the_old_certificate() {
    let s = Setup::new(config()).await;
    s.refused_then_fixed(
        |s| {
            let next = s.ca.issue(&LeafSpec::new(0x4001));
            // The writer died half-way through the certificate file.
            std::fs::write(&s.cert, &next.cert_pem[..next.cert_pem.len() / 3]).unwrap();
        },
        |e| matches!(e, Error::Pem { .. }),
    )
    .await;
}

#[tokio::test]
async fn a_mismatched_key_keeps_the_old_certificate() {
    let s = Setup::new(config()).await;
    s.refused_then_fixed(
        |s| std::fs::write(&s.key, s.ca.issue(&LeafSpec::new(0x4002)).key_pem).unwrap(),
        |e| matches!(e, Error::KeyMismatch { .. }),
    )
    .await;
}

#[tokio::test]
async fn a_missing_file_keeps_the_old_certificate() {
    let s = Setup::new(config()).await;
    s.refused_then_fixed(
        |s| std::fs::remove_file(&s.key).unwrap(),
        |e| matches!(e, Error::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
    )
    .await;
}

#[tokio::test]
async fn an_empty_file_keeps_the_old_certificate() {
    let s = Setup::new(config()).await;
    s.refused_then_fixed(
        |s| std::fs::write(&s.cert, "").unwrap(),
        |e| matches!(e, Error::NoCertificate { .. }),
    )
    .await;
}

#[tokio::test]
async fn a_directory_instead_of_a_file_keeps_the_old_certificate() {
    let s = Setup::new(config()).await;
    s.refused_then_fixed(
        |s| {
            std::fs::remove_file(&s.cert).unwrap();
            std::fs::create_dir(&s.cert).unwrap();
        },
        |e| matches!(e, Error::NotAFile { .. }),
    )
    .await;
}

#[tokio::test]
async fn a_burst_of_100_writes_yields_a_bounded_number_of_reloads() {
    let mut s = Setup::new(WatchConfig::default()).await;
    let debounce = WatchConfig::default().debounce;
    let leaves: Vec<Leaf> = (0..100).map(|i| s.ca.issue(&LeafSpec::new(0x5000 + i))).collect();
    let start = Instant::now();
    for leaf in &leaves {
        leaf.write_atomic(&s.cert, &s.key);
    }
    let burst = start.elapsed();
    let last = leaves.last().unwrap();
    reloaded(&mut s.events, last).await;
    assert_eq!(s.presented().await, serial_of(last));
    let stats = s.watcher.stats();
    let attempts = stats.reloads_ok + stats.reloads_failed + stats.unchanged;
    // One attempt per debounce period at most while the burst lasts, plus the one after it
    // and the start-up check (plus one for a late-delivered event).
    let bound = (burst.as_millis() / debounce.as_millis()) as u64 + 4;
    assert!(
        attempts <= bound && stats.reloads_ok <= bound,
        "{attempts} attempts ({stats:?}) for 100 writes over {burst:?}; bound {bound}"
    );
    assert!(stats.reloads_ok < 100);
}

#[tokio::test]
async fn forced_polling_serves_a_rotated_pair() {
    let mut s = Setup::new(config().mode(WatchMode::Poll).poll_interval(Duration::from_millis(50))).await;
    assert!(s.watcher.stats().polling);
    let second = s.ca.issue(&LeafSpec::new(0x6001));
    second.write_atomic(&s.cert, &s.key);
    reloaded(&mut s.events, &second).await;
    assert_eq!(s.presented().await, serial_of(&second));
}

/// `openssl s_client -showcerts` → the first certificate → `openssl x509 -serial`.
fn openssl_serial(addr: SocketAddr) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", "localhost", "-showcerts"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin =
        text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate in {text}"));
    let end = text[begin..].find("-----END CERTIFICATE-----").expect("end marker") + begin + 25;
    let mut x509 = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    std::io::Write::write_all(&mut x509.stdin.take().unwrap(), text[begin..end].as_bytes()).unwrap();
    let out = x509.wait_with_output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    line.trim().strip_prefix("serial=").unwrap_or_else(|| panic!("unexpected {line}")).to_lowercase()
}

#[tokio::test]
async fn openssl_s_client_sees_the_serial_change_after_rotation() {
    let mut s = Setup::new(config()).await;
    let addr = s.addr;
    let before = tokio::task::spawn_blocking(move || openssl_serial(addr)).await.unwrap();
    assert_eq!(before, serial_of(&s.first));
    let second = s.ca.issue(&LeafSpec::new(0x7002));
    second.write_atomic(&s.cert, &s.key);
    reloaded(&mut s.events, &second).await;
    let after = tokio::task::spawn_blocking(move || openssl_serial(addr)).await.unwrap();
    assert_eq!(after, serial_of(&second));
}

#[tokio::test]
async fn sni_handshakes_get_the_certificate_for_their_name() {
    let ca = TestCa::new("sni CA");
    let dir = tempfile::tempdir().unwrap();
    let watch = |name: &str, leaf: &Leaf| {
        let (cert, key) = (dir.path().join(format!("{name}.crt")), dir.path().join(format!("{name}.key")));
        leaf.write(&cert, &key);
        (CertWatcher::watch(pem_files(&cert, &key), config()).unwrap(), cert, key)
    };
    let api = ca.issue(&LeafSpec::new(0x8001).sans(&["api.example.com"]));
    let wild = ca.issue(&LeafSpec::new(0x8002).sans(&["*.example.com"]));
    let dflt = ca.issue(&LeafSpec::new(0x8003).sans(&["localhost"]));
    let (api_w, api_cert, api_key) = watch("api", &api);
    let (wild_w, _, _) = watch("wild", &wild);
    let (dflt_w, _, _) = watch("default", &dflt);
    let sni = SniResolver::new()
        .with_name("api.example.com", api_w.resolver())
        .unwrap()
        .with_name("*.example.com", wild_w.resolver())
        .unwrap()
        .with_default(dflt_w.resolver());
    let addr = serve(server_config(Arc::new(sni))).await;
    let serial_for = |name: &'static str| {
        let ca = &ca;
        async move {
            let (leaf, _) = handshake(addr, name, client_config(ca)).await.expect("verified handshake");
            CertInfo::from_der(&leaf).unwrap().serial
        }
    };
    assert_eq!(serial_for("api.example.com").await, serial_of(&api));
    assert_eq!(serial_for("www.example.com").await, serial_of(&wild));
    assert_eq!(serial_for("localhost").await, serial_of(&dflt));

    // Each name's certificate reloads on its own.
    let mut events = api_w.subscribe();
    let api2 = ca.issue(&LeafSpec::new(0x8004).sans(&["api.example.com"]));
    api2.write_atomic(&api_cert, &api_key);
    reloaded(&mut events, &api2).await;
    assert_eq!(serial_for("api.example.com").await, serial_of(&api2));
    assert_eq!(serial_for("www.example.com").await, serial_of(&wild));

    // A name no entry covers gets the default, which the client then refuses.
    let (leaf, _) = handshake(addr, "other.test", accept_any_config()).await.expect("handshake");
    assert_eq!(CertInfo::from_der(&leaf).unwrap().serial, serial_of(&dflt));
}

/// Records nothing and accepts any server certificate: for looking at what a server presents
/// under a name its certificate does not cover.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn accept_any_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth()
}

/// A client that trusts `server_ca` and presents the certificate `client` follows.
fn mtls_client(server_ca: &TestCa, client: &CertWatcher) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(server_ca.cert_der.clone())).unwrap();
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(client.resolver())
}

/// Whether the server accepted the client: with TLS 1.3 a refused client certificate shows
/// up as an alert on the first read, after the client's side of the handshake.
async fn accepted(addr: SocketAddr, config: ClientConfig) -> Option<String> {
    match handshake(addr, "localhost", config).await {
        Ok((_, line)) if line.starts_with("ok ") => Some(line.trim()[3..].to_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn mtls_client_ca_bundle_and_client_certificate_reload() {
    let server_ca = TestCa::new("server CA");
    let (ca1, ca2) = (TestCa::new("client CA one"), TestCa::new("client CA two"));
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);

    // The server: its own certificate, and client certificates verified against a bundle.
    server_ca.issue(&LeafSpec::new(0x9001)).write(&p("server.crt"), &p("server.key"));
    let server_cert = CertWatcher::watch(pem_files(&p("server.crt"), &p("server.key")), config()).unwrap();
    ca1.write(&p("clients-ca.pem"));
    let cas =
        ClientCaWatcher::watch(ClientCaFile::new(p("clients-ca.pem")).with_provider(provider()), config())
            .unwrap();
    assert_eq!(cas.current().count, 1);
    let mut ca_events = cas.subscribe();
    let verifier: Arc<dyn ClientCertVerifier> = cas.verifier();
    let tls = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(server_cert.resolver());
    let addr = serve(tls).await;

    // The client's certificate is itself watched (ResolvesClientCert).
    let c1 = ca1.issue(&LeafSpec::new(0xc001));
    c1.write(&p("client.crt"), &p("client.key"));
    let client = CertWatcher::watch(pem_files(&p("client.crt"), &p("client.key")), config()).unwrap();
    let mut client_events = client.subscribe();
    assert_eq!(accepted(addr, mtls_client(&server_ca, &client)).await, Some(serial_of(&c1)));

    // The client rotates to a certificate from CA two: refused until the server trusts CA two.
    let c2 = ca2.issue(&LeafSpec::new(0xc002));
    c2.write_atomic(&p("client.crt"), &p("client.key"));
    reloaded(&mut client_events, &c2).await;
    assert_eq!(accepted(addr, mtls_client(&server_ca, &client)).await, None);

    // A broken bundle is refused and the old one stays in force.
    std::fs::write(p("clients-ca.pem"), "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
    next(&mut ca_events, |ev| matches!(ev, ReloadEvent::Failed(_)).then_some(())).await;
    assert_eq!(cas.current().count, 1);

    // Both CAs: the rotated client is accepted.
    atomic_write(&p("clients-ca.pem"), format!("{}{}", ca1.cert_pem, ca2.cert_pem).as_bytes());
    next(&mut ca_events, |ev| match ev {
        ReloadEvent::Reloaded(info) if info.count == 2 => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(accepted(addr, mtls_client(&server_ca, &client)).await, Some(serial_of(&c2)));

    // CA one dropped: a client still holding a CA-one certificate is refused.
    atomic_write(&p("clients-ca.pem"), ca2.cert_pem.as_bytes());
    next(&mut ca_events, |ev| match ev {
        ReloadEvent::Reloaded(info) if info.count == 1 => Some(()),
        _ => None,
    })
    .await;
    c1.write(&p("old.crt"), &p("old.key"));
    let old_client = CertWatcher::new(pem_files(&p("old.crt"), &p("old.key")), config()).unwrap();
    assert_eq!(accepted(addr, mtls_client(&server_ca, &old_client)).await, None);
    assert_eq!(accepted(addr, mtls_client(&server_ca, &client)).await, Some(serial_of(&c2)));
}
