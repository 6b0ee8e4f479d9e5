//! certwatch's figures, each beside its baseline measured in the same run:
//!
//! 1. resolving the certificate on the handshake path (1 and 2 threads): certwatch's resolver
//!    vs the floor rustls' API forces (one `Arc` clone) and vs `RwLock` / `Mutex` designs;
//! 2. TLS handshake tail latency while the pair is rewritten continuously: certwatch vs a
//!    zot-style resolver that stats (and reloads) the files inside the handshake. The baseline
//!    is the same server while the same writer rewrites a decoy pair in a directory nobody
//!    watches: on a 2-core machine the writer's own I/O and CPU raise every handshake's tail,
//!    whatever the resolver, and the figure is about what following the files costs. The p99
//!    with no writer at all is reported beside it;
//! 3. reload latency: from the `rename` of a new pair to the first handshake presenting it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use certwatch::{CertWatcher, PemFiles, WatchConfig};
use lifeline_bench::{Row, iterations, median, ms, ns_per_call, percentile, quick, us};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::AsyncWriteExt;

const MECH: &str = "certwatch";
/// certwatch's debounce in the tail-latency benchmark.
const TAIL_DEBOUNCE: Duration = Duration::from_millis(25);

fn main() -> Result<()> {
    let ca = Ca::new();
    resolve_cost(&ca)?;
    tail_latency_under_reload(&ca)?;
    reload_latency(&ca)?;
    Ok(())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA and the leaf pairs it issues (PEM), for files that rotate.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
}

struct Pem {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, "bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        Ca { der: cert.der().to_vec(), issuer: Issuer::new(params, key) }
    }

    fn leaf(&self, serial: u64) -> Pem {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        params.not_after = (SystemTime::now() + Duration::from_secs(30 * 86_400)).into();
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Pem { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() }
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(self.der.clone())).expect("add root");
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// Writes `body` to a temporary sibling, then renames it over `path`.
fn atomic_write(path: &Path, body: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Key first, then the certificate: the certificate's rename is the moment the new pair is
/// complete.
fn install(pair: &Pem, cert: &Path, key: &Path) -> Result<()> {
    atomic_write(key, &pair.key)?;
    atomic_write(cert, &pair.cert)
}

// ---------------------------------------------------------------------------------------------
// 1. Resolve cost.

fn resolve_cost(ca: &Ca) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    install(&ca.leaf(1), &cert, &key)?;
    let watcher =
        CertWatcher::new(PemFiles::new(&cert, &key).with_provider(provider()), WatchConfig::default())?;
    let resolver = watcher.resolver();
    let floor = watcher.certified_key();
    let rwlock = RwLock::new(watcher.certified_key());
    let mutex = Mutex::new(watcher.certified_key());
    let (batches, per_batch) = (iterations(200, 20), 20_000);

    for threads in [1usize, 2] {
        let floor_ns = threaded(threads, batches, per_batch, || {
            std::hint::black_box(Arc::clone(std::hint::black_box(&floor)));
        });
        let certwatch_ns = threaded(threads, batches, per_batch, || {
            std::hint::black_box(ResolvesClientCert::resolve(&*resolver, &[], &[]));
        });
        // The same ArcSwap without certwatch's per-thread cache: what a plain ArcSwap design
        // (and certwatch before the cache) pays.
        let swap = arc_swap::ArcSwap::new(watcher.certified_key());
        let load_full_ns = threaded(threads, batches, per_batch, || {
            std::hint::black_box(swap.load_full());
        });
        let rwlock_ns = threaded(threads, batches, per_batch, || {
            std::hint::black_box(Arc::clone(
                &rwlock.read().unwrap_or_else(std::sync::PoisonError::into_inner),
            ));
        });
        let mutex_ns = threaded(threads, batches, per_batch, || {
            std::hint::black_box(Arc::clone(
                &mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            ));
        });
        let floor_name = "bare Arc clone (the floor rustls' API forces)";
        Row::new(
            MECH,
            &format!("resolve, {threads} thread(s): certwatch (ArcSwap)"),
            certwatch_ns,
            "ns",
            "≤ 2× floor",
        )
        .baseline(floor_name, floor_ns)
        .met(certwatch_ns <= 2.0 * floor_ns)
        .emit();
        Row::new(
            MECH,
            &format!("resolve, {threads} thread(s): plain ArcSwap::load_full design"),
            load_full_ns,
            "ns",
            "informational",
        )
        .baseline(floor_name, floor_ns)
        .emit();
        Row::new(
            MECH,
            &format!("resolve, {threads} thread(s): RwLock<Arc<_>> design"),
            rwlock_ns,
            "ns",
            "informational",
        )
        .baseline(floor_name, floor_ns)
        .emit();
        Row::new(
            MECH,
            &format!("resolve, {threads} thread(s): Mutex<Arc<_>> design"),
            mutex_ns,
            "ns",
            "informational",
        )
        .baseline(floor_name, floor_ns)
        .emit();
        eprintln!(
            "resolve x{threads}: floor {floor_ns:.1} ns, certwatch {certwatch_ns:.1} ns, plain ArcSwap {load_full_ns:.1} ns, rwlock {rwlock_ns:.1} ns, mutex {mutex_ns:.1} ns"
        );
    }
    Ok(())
}

/// Median ns per call with `threads` threads calling `f` at once (median over threads of each
/// thread's median batch).
fn threaded(threads: usize, batches: usize, per_batch: usize, f: impl Fn() + Sync) -> f64 {
    let barrier = Barrier::new(threads);
    let mut per_thread: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let mut samples = ns_per_call(batches, per_batch, &f);
                    median(&mut samples)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).collect()
    });
    median(&mut per_thread)
}

// ---------------------------------------------------------------------------------------------
// 2. Tail latency under reload.

/// The zot-style design: every handshake stats both files and, if either changed, reads,
/// parses and validates them right there (under a lock) before answering.
struct StatOnHandshake {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<(Vec<FileStamp>, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for StatOnHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatOnHandshake")
    }
}

impl StatOnHandshake {
    fn new(cert: &Path, key: &Path) -> Result<Self> {
        let provider = provider();
        let loaded = load_pair(cert, key, &provider).context("initial load")?;
        let sig = stat_sig(&[cert, key]);
        Ok(StatOnHandshake {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            state: Mutex::new((sig, Arc::new(loaded))),
        })
    }
}

/// Inode, mtime (s, ns), size.
type FileStamp = (u64, i64, i64, u64);

fn stat_sig(paths: &[&Path]) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).map_or((0, 0, 0, 0), |m| (m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
        })
        .collect()
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Option<CertifiedKey> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).ok()?.collect::<Result<_, _>>().ok()?;
    let key = PrivateKeyDer::from_pem_file(key).ok()?;
    let key = provider.key_provider.load_private_key(key).ok()?;
    let ck = CertifiedKey::new(chain, key);
    ck.keys_match().ok()?;
    Some(ck)
}

impl ResolvesServerCert for StatOnHandshake {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let sig = stat_sig(&[&self.cert, &self.key]);
        if sig != state.0 {
            if let Some(ck) = load_pair(&self.cert, &self.key, &self.provider) {
                state.1 = Arc::new(ck);
            }
            state.0 = sig;
        }
        Some(Arc::clone(&state.1))
    }
}

/// A TLS server on 127.0.0.1:0 on `rt`: handshake, close.
fn serve(rt: &tokio::runtime::Runtime, resolver: Arc<dyn ResolvesServerCert>) -> Result<SocketAddr> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// One client handshake; returns its duration and the presented leaf.
async fn handshake(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let tls = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
    let elapsed = start.elapsed();
    let leaf =
        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    Ok((elapsed, leaf))
}

/// Rewrites the pair in `dir` every `period` (cycling through `pairs`) until `stop`.
fn rewriter(
    pairs: Arc<Vec<Pem>>,
    cert: PathBuf,
    key: PathBuf,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            if install(&pairs[n % pairs.len()], &cert, &key).is_err() {
                break;
            }
            n += 1;
            std::thread::sleep(period);
        }
        n
    })
}

struct Design {
    name: &'static str,
    addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    /// No writer at all.
    idle: Vec<f64>,
    /// The writer rewrites the decoy pair (same work, nobody watching).
    quiet: Vec<f64>,
    /// The writer rewrites this design's pair.
    loaded: Vec<f64>,
}

fn tail_latency_under_reload(ca: &Ca) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let pairs = Arc::new((0..4).map(|i| ca.leaf(100 + i)).collect::<Vec<_>>());
    let client = ca.client_config();

    let cw_dir = tempfile::tempdir()?;
    let (cw_cert, cw_key) = (cw_dir.path().join("cert.pem"), cw_dir.path().join("key.pem"));
    install(&pairs[0], &cw_cert, &cw_key)?;
    let watcher = {
        let _guard = rt.enter();
        CertWatcher::watch(
            PemFiles::new(&cw_cert, &cw_key).with_provider(provider()),
            // A short debounce so that reloads happen *during* each loaded phase (continuous
            // changes reload every 4 × debounce = 100 ms); with the default 150 ms the cap is
            // 600 ms and a phase of a few hundred handshakes would see none.
            WatchConfig::default().debounce(TAIL_DEBOUNCE),
        )?
    };
    let zot_dir = tempfile::tempdir()?;
    let (zot_cert, zot_key) = (zot_dir.path().join("cert.pem"), zot_dir.path().join("key.pem"));
    install(&pairs[0], &zot_cert, &zot_key)?;
    let zot = Arc::new(StatOnHandshake::new(&zot_cert, &zot_key)?);

    let mut designs = [
        Design {
            name: "certwatch (debounce 25 ms: a reload every 100 ms)",
            addr: serve(&rt, watcher.resolver())?,
            cert: cw_cert,
            key: cw_key,
            idle: vec![],
            quiet: vec![],
            loaded: vec![],
        },
        Design {
            name: "zot-style stat+reload in the handshake",
            addr: serve(&rt, zot)?,
            cert: zot_cert,
            key: zot_key,
            idle: vec![],
            quiet: vec![],
            loaded: vec![],
        },
    ];

    let decoy_dir = tempfile::tempdir()?;
    let (decoy_cert, decoy_key) = (decoy_dir.path().join("cert.pem"), decoy_dir.path().join("key.pem"));
    install(&pairs[0], &decoy_cert, &decoy_key)?;
    let rounds = iterations(5, 2);
    let per_phase = iterations(600, 100);
    let period = Duration::from_millis(5);
    let mut rewrites = 0;
    // Warm-up: connection setup paths, page cache.
    for d in &designs {
        for _ in 0..50 {
            client_rt.block_on(handshake(d.addr, &client))?;
        }
    }
    // Phases interleave so drift on a shared machine hits quiet and loaded alike.
    for _ in 0..rounds {
        for d in &mut designs {
            for _ in 0..per_phase {
                d.idle.push(us(client_rt.block_on(handshake(d.addr, &client))?.0));
            }
            for (target, samples) in
                [((&decoy_cert, &decoy_key), &mut d.quiet), ((&d.cert, &d.key), &mut d.loaded)]
            {
                let stop = Arc::new(AtomicBool::new(false));
                let writer = rewriter(
                    Arc::clone(&pairs),
                    target.0.clone(),
                    target.1.clone(),
                    period,
                    Arc::clone(&stop),
                );
                for _ in 0..per_phase {
                    samples.push(us(client_rt.block_on(handshake(d.addr, &client))?.0));
                }
                stop.store(true, Ordering::Relaxed);
                rewrites += writer.join().unwrap_or(0);
            }
        }
    }
    eprintln!(
        "tail latency: {rewrites} rewrites in total, one every {period:?} during decoy and loaded phases"
    );
    let stats = watcher.stats();
    eprintln!(
        "certwatch during the run (debounce {TAIL_DEBOUNCE:?}): {} reloads, {} refused (half-written), {} unchanged",
        stats.reloads_ok, stats.reloads_failed, stats.unchanged
    );

    for d in &mut designs {
        report_tail(d, period);
    }
    Ok(())
}

/// Prints one design's three distributions and emits its rows.
fn report_tail(d: &mut Design, period: Duration) {
    let i99 = percentile(&mut d.idle, 99.0);
    let q99 = percentile(&mut d.quiet, 99.0);
    let l99 = percentile(&mut d.loaded, 99.0);
    let (i50, q50, l50) = (median(&mut d.idle), median(&mut d.quiet), median(&mut d.loaded));
    eprintln!(
        "{}: no writer p50 {i50:.0} µs p99 {i99:.0} µs; decoy rewritten p50 {q50:.0} µs p99 {q99:.0} µs; \
         its pair rewritten p50 {l50:.0} µs p99 {l99:.0} µs",
        d.name
    );
    let row = Row::new(
        MECH,
        &format!("TLS handshake p99 while the pair is rewritten every {} ms: {}", period.as_millis(), d.name),
        l99,
        "µs",
        if d.name.starts_with("certwatch") {
            "≤ 1.2× the decoy-writer p99"
        } else {
            "informational (baseline design)"
        },
    )
    .baseline(&format!("{} while a decoy pair is rewritten", d.name), q99)
    .samples(d.loaded.clone())
    .baseline_samples(d.quiet.clone());
    if d.name.starts_with("certwatch") {
        row.met(l99 <= 1.2 * q99).emit();
    } else {
        row.emit();
    }
    Row::new(
        MECH,
        &format!("the same, against no writer at all: {}", d.name),
        l99,
        "µs",
        "informational (the writer's own load included)",
    )
    .baseline(&format!("{} with no writer", d.name), i99)
    .emit();
}

// ---------------------------------------------------------------------------------------------
// 3. Reload latency.

fn reload_latency(ca: &Ca) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = ca.client_config();
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    install(&ca.leaf(1000), &cert, &key)?;
    let config = WatchConfig::default();
    let debounce = config.debounce;
    let watcher = {
        let _guard = rt.enter();
        CertWatcher::watch(PemFiles::new(&cert, &key).with_provider(provider()), config)?
    };
    let addr = serve(&rt, watcher.resolver())?;
    let rotations = if quick() { 10 } else { 60 };
    let mut samples = Vec::with_capacity(rotations);
    for i in 0..rotations {
        let next = ca.leaf(1001 + i as u64);
        atomic_write(&key, &next.key)?;
        atomic_write(&cert, &next.cert)?;
        let renamed = Instant::now();
        let deadline = renamed + Duration::from_secs(10);
        loop {
            let (_, leaf) = client_rt.block_on(handshake(addr, &client))?;
            if leaf == next.der {
                samples.push(ms(renamed.elapsed()));
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "rotation {i} not served after 10 s");
        }
    }
    let debounce_ms = ms(debounce);
    let (p50, p99) = (percentile(&mut samples, 50.0), percentile(&mut samples, 99.0));
    eprintln!(
        "reload latency over {rotations} rotations: p50 {p50:.1} ms, p99 {p99:.1} ms (debounce {debounce_ms:.0} ms)"
    );
    Row::new(
        MECH,
        &format!("reload latency p50, rename → first handshake presenting it ({rotations} rotations)"),
        p50,
        "ms",
        &format!("≤ debounce + 20 ms = {:.0} ms", debounce_ms + 20.0),
    )
    .baseline("debounce", debounce_ms)
    .met(p50 <= debounce_ms + 20.0)
    .samples(samples.clone())
    .emit();
    Row::new(
        MECH,
        &format!("reload latency p99, rename → first handshake presenting it ({rotations} rotations)"),
        p99,
        "ms",
        &format!("≤ debounce + 50 ms = {:.0} ms", debounce_ms + 50.0),
    )
    .baseline("debounce", debounce_ms)
    .met(p99 <= debounce_ms + 50.0)
    .emit();
    Ok(())
}
