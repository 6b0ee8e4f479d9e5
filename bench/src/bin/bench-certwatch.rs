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
use lifeline_bench::{Row, iterations, median, ms, ns_per_call, percentile, quick, spread, us};
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
    sni_curve(&ca)?;
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
        self.leaf_for(serial, "localhost")
    }

    fn leaf_for(&self, serial: u64, name: &str) -> Pem {
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
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

/// A `CertSource` that records where each load ran and what it cost: the thread's name and
/// niceness, and the CPU time the load took on it (`CLOCK_THREAD_CPUTIME_ID`).
struct Traced {
    inner: PemFiles,
    loads: Arc<Mutex<Vec<LoadTrace>>>,
}

#[derive(Debug, Clone)]
struct LoadTrace {
    thread: String,
    nice: i32,
    cpu: Duration,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid, writable timespec; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl certwatch::CertSource for Traced {
    fn paths(&self) -> Vec<PathBuf> {
        self.inner.paths()
    }

    fn load(&self) -> Result<CertifiedKey, certwatch::Error> {
        let before = thread_cpu();
        let loaded = self.inner.load();
        // rustls' own validation (`check`) runs after `load` in certwatch; the parse and the key
        // load are most of the work.
        let cpu = thread_cpu().saturating_sub(before);
        // SAFETY: getpriority/gettid take integers only.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        self.loads.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(LoadTrace {
            thread,
            nice,
            cpu,
        });
        loaded
    }
}

/// Nanoseconds a thread of this process has run (`/proc/self/task/TID/schedstat`, first field).
fn thread_runtime(tid: i32) -> Duration {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// The threads of this process now.
fn threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No writer at all.
    Idle,
    /// The writer rewrites the decoy pair (same work, nobody watching): the baseline.
    Decoy,
    /// The writer rewrites this design's pair.
    Loaded,
}

struct Design {
    name: &'static str,
    /// Whether the target applies (the design users get), or the row is for comparison.
    judged: bool,
    addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    /// Its file-notification thread, if it has one.
    notify_tid: Option<i32>,
    loads: Option<Arc<Mutex<Vec<LoadTrace>>>>,
    /// Samples of each phase, pooled over the rounds, and each round's p99.
    samples: [Vec<f64>; 3],
    round_p99: [Vec<f64>; 3],
    /// CPU time of the runtime's worker and of the notification thread in each phase.
    worker_cpu: [Duration; 3],
    notify_cpu: [Duration; 3],
}

fn phase_index(p: Phase) -> usize {
    match p {
        Phase::Idle => 0,
        Phase::Decoy => 1,
        Phase::Loaded => 2,
    }
}

#[allow(clippy::too_many_lines)]
fn tail_latency_under_reload(ca: &Ca) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let worker_tid = rt.block_on(async {
        // SAFETY: gettid has no memory effects.
        tokio::spawn(async { unsafe { libc::gettid() } }).await
    })?;
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let pairs = Arc::new((0..4).map(|i| ca.leaf(100 + i)).collect::<Vec<_>>());
    let client = ca.client_config();

    let mut designs = Vec::new();
    let mut keep = Vec::new();
    for (name, load_on) in [
        ("certwatch (low-priority load thread)", certwatch::LoadOn::LowPriorityThread),
        ("certwatch with LoadOn::BlockingPool (loads as before)", certwatch::LoadOn::BlockingPool),
    ] {
        let dir = tempfile::tempdir()?;
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        install(&pairs[0], &cert, &key)?;
        let loads = Arc::new(Mutex::new(Vec::new()));
        let before = threads();
        let watcher = {
            let _guard = rt.enter();
            CertWatcher::watch(
                Traced {
                    inner: PemFiles::new(&cert, &key).with_provider(provider()),
                    loads: Arc::clone(&loads),
                },
                // A short debounce so that reloads happen *during* each loaded phase (continuous
                // changes reload every 4 × debounce = 100 ms).
                WatchConfig::default().debounce(TAIL_DEBOUNCE).load_on(load_on),
            )?
        };
        // The notification thread starts with the watch task: wait for it to appear.
        let deadline = Instant::now() + Duration::from_secs(5);
        let notify_tid = loop {
            let new: Vec<i32> = threads().into_iter().filter(|t| !before.contains(t)).collect();
            if let Some(tid) = new.iter().copied().find(|t| {
                std::fs::read_to_string(format!("/proc/self/task/{t}/comm"))
                    .is_ok_and(|c| c.starts_with("notify"))
            }) {
                break Some(tid);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        designs.push(Design {
            name,
            judged: load_on == certwatch::LoadOn::default(),
            addr: serve(&rt, watcher.resolver())?,
            cert,
            key,
            notify_tid,
            loads: Some(loads),
            samples: Default::default(),
            round_p99: Default::default(),
            worker_cpu: [Duration::ZERO; 3],
            notify_cpu: [Duration::ZERO; 3],
        });
        keep.push((dir, watcher));
    }
    let zot_dir = tempfile::tempdir()?;
    let (zot_cert, zot_key) = (zot_dir.path().join("cert.pem"), zot_dir.path().join("key.pem"));
    install(&pairs[0], &zot_cert, &zot_key)?;
    let zot = Arc::new(StatOnHandshake::new(&zot_cert, &zot_key)?);
    designs.push(Design {
        name: "zot-style stat+reload in the handshake",
        judged: false,
        addr: serve(&rt, zot)?,
        cert: zot_cert,
        key: zot_key,
        notify_tid: None,
        loads: None,
        samples: Default::default(),
        round_p99: Default::default(),
        worker_cpu: [Duration::ZERO; 3],
        notify_cpu: [Duration::ZERO; 3],
    });

    let decoy_dir = tempfile::tempdir()?;
    let (decoy_cert, decoy_key) = (decoy_dir.path().join("cert.pem"), decoy_dir.path().join("key.pem"));
    install(&pairs[0], &decoy_cert, &decoy_key)?;
    let rounds = iterations(10, 2);
    let per_phase = iterations(1000, 60);
    let period = Duration::from_millis(5);
    let mut rewrites = 0;
    // Warm-up: connection setup paths, page cache.
    for d in &designs {
        for _ in 0..50 {
            client_rt.block_on(handshake(d.addr, &client))?;
        }
    }
    for d in &designs {
        if let Some(loads) = &d.loads {
            loads.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        }
    }
    let load_started = load_average();
    // Every round runs every design through the three phases; the order of the designs and of
    // the phases rotates from round to round, so that a drift in the machine's load (other
    // builds on the same two cores) falls on every design and phase alike.
    let orders = [
        [Phase::Idle, Phase::Decoy, Phase::Loaded],
        [Phase::Loaded, Phase::Idle, Phase::Decoy],
        [Phase::Decoy, Phase::Loaded, Phase::Idle],
    ];
    for round in 0..rounds {
        let n = designs.len();
        for k in 0..n {
            let d = &mut designs[(k + round) % n];
            for &phase in &orders[round % orders.len()] {
                let stop = Arc::new(AtomicBool::new(false));
                let writer = match phase {
                    Phase::Idle => None,
                    Phase::Decoy => Some((decoy_cert.clone(), decoy_key.clone())),
                    Phase::Loaded => Some((d.cert.clone(), d.key.clone())),
                }
                .map(|(cert, key)| rewriter(Arc::clone(&pairs), cert, key, period, Arc::clone(&stop)));
                let worker_before = thread_runtime(worker_tid);
                let notify_before = d.notify_tid.map_or(Duration::ZERO, thread_runtime);
                let mut phase_samples = Vec::with_capacity(per_phase);
                for _ in 0..per_phase {
                    phase_samples.push(us(client_rt.block_on(handshake(d.addr, &client))?.0));
                }
                let i = phase_index(phase);
                d.worker_cpu[i] += thread_runtime(worker_tid).saturating_sub(worker_before);
                d.notify_cpu[i] +=
                    d.notify_tid.map_or(Duration::ZERO, thread_runtime).saturating_sub(notify_before);
                stop.store(true, Ordering::Relaxed);
                if let Some(writer) = writer {
                    rewrites += writer.join().unwrap_or(0);
                }
                d.samples[i].extend_from_slice(&phase_samples);
                d.round_p99[i].push(percentile(&mut phase_samples, 99.0));
            }
        }
    }
    eprintln!(
        "tail latency: {rounds} rounds × {per_phase} handshakes per phase; {rewrites} rewrites in total, one every \
         {period:?} during decoy and loaded phases; load average {load_started:.2} at the start, {:.2} at the end",
        load_average()
    );
    for d in &mut designs {
        report_tail(d, period, rounds, per_phase);
    }
    drop(keep);
    Ok(())
}

/// The 1-minute load average of the machine.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Prints one design's distributions and where its work ran, and emits its rows.
fn report_tail(d: &mut Design, period: Duration, rounds: usize, per_phase: usize) {
    let [idle, decoy, loaded] = &mut d.samples;
    let (i99, q99, l99) = (percentile(idle, 99.0), percentile(decoy, 99.0), percentile(loaded, 99.0));
    let (i50, q50, l50) = (median(idle), median(decoy), median(loaded));
    let round_ratios: Vec<f64> =
        d.round_p99[2].iter().zip(&d.round_p99[1]).map(|(l, q)| l / q.max(1.0)).collect();
    let ratio_median = median(&mut round_ratios.clone());
    eprintln!(
        "{}: no writer p50 {i50:.0} µs p99 {i99:.0} µs; decoy rewritten p50 {q50:.0} µs p99 {q99:.0} µs; \
         its pair rewritten p50 {l50:.0} µs p99 {l99:.0} µs; per-round p99 ratio loaded/decoy {:.2?}",
        d.name, round_ratios
    );
    let name = format!(
        "TLS handshake p99 while the pair is rewritten every {} ms: {} ({rounds} interleaved rounds × {per_phase} \
         handshakes per phase; per-round ratio median {ratio_median:.2}×, range {})",
        period.as_millis(),
        d.name,
        spread(&round_ratios, 2)
    );
    let row = Row::new(
        MECH,
        &name,
        l99,
        "µs",
        if d.judged { "≤ 1.2× the decoy-writer p99" } else { "informational (for comparison)" },
    )
    .baseline(&format!("{} while a decoy pair is rewritten (pooled p99)", d.name), q99)
    .samples(loaded.clone())
    .baseline_samples(decoy.clone());
    if d.judged {
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

    // Where the work of following the files ran: the worker (handshakes, and whatever else runs
    // on the runtime), the notification thread, and each load's thread.
    let per_handshake = |cpu: Duration| us(cpu) / (rounds * per_phase) as f64;
    let (worker_loaded, worker_decoy) = (per_handshake(d.worker_cpu[2]), per_handshake(d.worker_cpu[1]));
    Row::new(
        MECH,
        &format!("runtime worker CPU per handshake while its pair is rewritten: {}", d.name),
        worker_loaded,
        "µs",
        "informational: the worker's extra work is what following the files costs the handshakes",
    )
    .baseline("the same worker while the decoy pair is rewritten", worker_decoy)
    .emit();
    if d.notify_tid.is_some() {
        Row::new(
            MECH,
            &format!("file-notification thread CPU per loaded phase: {}", d.name),
            ms(d.notify_cpu[2]) / rounds as f64,
            "ms",
            "informational (runs at niceness 10, off the runtime)",
        )
        .baseline(
            "the same thread in a decoy phase (nothing it watches changes)",
            ms(d.notify_cpu[1]) / rounds as f64,
        )
        .emit();
    }
    if let Some(loads) = &d.loads {
        let loads = loads.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut cpu: Vec<f64> = loads.iter().map(|l| us(l.cpu)).collect();
        let mut threads: Vec<String> =
            loads.iter().map(|l| format!("{} (nice {})", l.thread, l.nice)).collect();
        threads.sort();
        threads.dedup();
        eprintln!("{}: {} loads, on {threads:?}", d.name, loads.len());
        Row::new(
            MECH,
            &format!(
                "CPU of one reload's read+parse, median over {} reloads: {} — ran on {}",
                loads.len(),
                d.name,
                threads.join(", ")
            ),
            median(&mut cpu),
            "µs",
            "informational: where a reload's work lands",
        )
        .emit();
    }
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

// ---------------------------------------------------------------------------------------------
// 4. The SNI curve: a folder of 1, 100, 1 000 pairs.

fn sni_name(i: usize) -> String {
    format!("host-{i:04}.example.test")
}

/// One client handshake asking for `name`; returns its duration.
async fn handshake_sni(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> Result<Duration> {
    let start = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let _tls = connector.connect(ServerName::try_from(name.to_owned())?, tcp).await?;
    Ok(start.elapsed())
}

/// Rewrites random pairs of `stems` in `dir` (from `pairs`) every `period` until `stop`: a
/// rotation storm.
fn storm(
    dir: PathBuf,
    pairs: Arc<Vec<Pem>>,
    count: usize,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut n = 0;
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        while !stop.load(Ordering::Relaxed) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed % count as u64) as usize;
            let stem = sni_name(i);
            let pair = &pairs[i];
            if atomic_write(&dir.join(format!("{stem}.key")), &pair.key).is_err()
                || atomic_write(&dir.join(format!("{stem}.crt")), &pair.cert).is_err()
            {
                break;
            }
            n += 1;
            std::thread::sleep(period);
        }
        n
    })
}

/// The SNI curve (`--quick`: 1 name): [`certwatch::CertDir`] following a folder of 1, 100 and
/// 1 000 pairs — the cost of resolving a name against a bare `Arc` clone; the pairs loaded by one
/// rotation against the folder's size (what reloading everything would load); and the handshake
/// p99 while random pairs are rotated every 5 ms, against the same storm in a decoy folder nobody
/// watches, in interleaved rounds.
#[allow(clippy::too_many_lines)]
fn sni_curve(ca: &Ca) -> Result<()> {
    let points: &[usize] = if quick() { &[1] } else { &[1, 100, 1000] };
    let client = ca.client_config();
    for &n in points {
        let dir = tempfile::tempdir()?;
        let decoy = tempfile::tempdir()?;
        let pairs: Vec<Pem> = (0..n).map(|i| ca.leaf_for(10_000 + i as u64, &sni_name(i))).collect();
        // What the storm writes: a second generation of every pair.
        let rotated: Arc<Vec<Pem>> =
            Arc::new((0..n).map(|i| ca.leaf_for(20_000 + i as u64, &sni_name(i))).collect());
        for (i, pair) in pairs.iter().enumerate() {
            for d in [dir.path(), decoy.path()] {
                std::fs::write(d.join(format!("{}.key", sni_name(i))), &pair.key)?;
                std::fs::write(d.join(format!("{}.crt", sni_name(i))), &pair.cert)?;
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let certs = {
            let _guard = rt.enter();
            certwatch::CertDir::watch(
                certwatch::PemDir::new(dir.path()).with_provider(provider()),
                WatchConfig::default().debounce(TAIL_DEBOUNCE),
            )?
        };
        anyhow::ensure!(certs.names().len() == n, "{} names served of {n}", certs.names().len());
        let resolver = certs.resolver();

        // Resolve cost, every name in turn, against the floor rustls' API forces.
        let names: Vec<String> = (0..n).map(sni_name).collect();
        let floor_key = certs.resolver().select(Some(&names[0])).context("resolves")?;
        let (batches, per_batch) = (iterations(200, 20), 20_000);
        let mut k = 0;
        let mut resolve = ns_per_call(batches, per_batch, || {
            k = (k + 1) % n;
            std::hint::black_box(resolver.select(Some(std::hint::black_box(&names[k]))));
        });
        let mut floor = ns_per_call(batches, per_batch, || {
            std::hint::black_box(Arc::clone(std::hint::black_box(&floor_key)));
        });
        let map: std::collections::HashMap<String, Arc<CertifiedKey>> =
            names.iter().map(|name| (name.clone(), Arc::clone(&floor_key))).collect();
        let mut j = 0;
        let mut std_map = ns_per_call(batches, per_batch, || {
            j = (j + 1) % n;
            std::hint::black_box(map.get(std::hint::black_box(names[j].as_str())).cloned());
        });
        let (resolve_ns, floor_ns, std_ns) = (median(&mut resolve), median(&mut floor), median(&mut std_map));
        eprintln!(
            "sni x{n}: resolve {resolve_ns:.1} ns, bare Arc clone {floor_ns:.1} ns, std HashMap<String, Arc> lookup+clone {std_ns:.1} ns"
        );
        Row::new(
            MECH,
            &format!("resolve by SNI, {n} names (CertDir, every name in turn)"),
            resolve_ns,
            "ns",
            if n == 1000 { "≤ 2× floor" } else { "informational (target at 1000)" },
        )
        .baseline("bare Arc clone (the floor rustls' API forces)", floor_ns)
        .point("SNI resolve cost vs names", "names served", n as f64)
        .met_if(n == 1000, resolve_ns <= 2.0 * floor_ns)
        .emit();
        Row::new(
            MECH,
            &format!("resolve by SNI, {n} names: a std HashMap<String, Arc<_>> lookup + clone"),
            std_ns,
            "ns",
            "informational: the lookup alone",
        )
        .baseline("bare Arc clone", floor_ns)
        .emit();

        // Handshake tail under a rotation storm, against the same storm in the decoy folder.
        let addr = serve(&rt, certs.resolver())?;
        let rounds = iterations(6, 1);
        let per_phase = iterations(500, 30);
        let period = Duration::from_millis(5);
        let (mut loaded, mut quiet) = (Vec::new(), Vec::new());
        let mut round_ratios = Vec::new();
        let mut seed = 7u64;
        for i in 0..20 {
            client_rt.block_on(handshake_sni(addr, &client, &names[i % n]))?;
        }
        let loads_before = certs.loads();
        let mut rotations = 0;
        for round in 0..rounds {
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            let mut p99s = [0.0; 2];
            for storm_on_watched in order {
                let stop = Arc::new(AtomicBool::new(false));
                let target = if storm_on_watched { dir.path() } else { decoy.path() };
                let writer = storm(target.to_owned(), Arc::clone(&rotated), n, period, Arc::clone(&stop));
                let mut samples = Vec::with_capacity(per_phase);
                for _ in 0..per_phase {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let name = &names[(seed % n as u64) as usize];
                    samples.push(us(client_rt.block_on(handshake_sni(addr, &client, name))?));
                }
                stop.store(true, Ordering::Relaxed);
                let written = writer.join().unwrap_or(0);
                if storm_on_watched {
                    rotations += written;
                }
                p99s[usize::from(storm_on_watched)] = percentile(&mut samples.clone(), 99.0);
                if storm_on_watched { loaded.extend(samples) } else { quiet.extend(samples) }
            }
            round_ratios.push(p99s[1] / p99s[0].max(1.0));
        }
        // Let the last rotations land before counting the loads they caused.
        std::thread::sleep(TAIL_DEBOUNCE * 8);
        let loads = certs.loads() - loads_before;
        let (l99, q99) = (percentile(&mut loaded, 99.0), percentile(&mut quiet, 99.0));
        eprintln!(
            "sni x{n}: handshake p99 {l99:.0} µs under a rotation storm ({rotations} rotations, {loads} pairs loaded), \
             decoy {q99:.0} µs; per-round ratios {round_ratios:.2?}"
        );
        Row::new(
            MECH,
            &format!(
                "TLS handshake p99 by SNI, {n} names, random pairs rotated every {} ms ({rounds} rounds × {per_phase}; per-round ratio range {})",
                period.as_millis(),
                spread(&round_ratios, 2)
            ),
            l99,
            "µs",
            if n == 1000 { "≤ 1.2× the decoy-storm p99" } else { "informational (target at 1000)" },
        )
        .baseline("the same storm in a decoy folder nobody watches (p99)", q99)
        .point("handshake p99 under a rotation storm vs names", "names served", n as f64)
        .met_if(n == 1000, l99 <= 1.2 * q99)
        .samples(loaded)
        .baseline_samples(quiet)
        .emit();
        // Each rotation writes one pair; a debounce may merge several into one reload.
        let per_rotation = loads as f64 / rotations.max(1) as f64;
        Row::new(
            MECH,
            &format!("pairs loaded per rotation, {n} names ({rotations} rotations in the storm)"),
            per_rotation,
            "pairs",
            "≤ 2, whatever the number of names (a rotation is two renames: a load between them is refused, then retried)",
        )
        .baseline("a reload of the whole folder", n as f64)
        .point("pairs loaded per rotation vs names", "names served", n as f64)
        .met(per_rotation <= 2.0)
        .emit();
        drop(certs);
    }
    Ok(())
}
