//! The watcher's life cycle, events, counters, polling and fallbacks, on real files (the TLS
//! handshake tests are in the workspace's `tests/tests/certwatch.rs`).

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use certwatch::{
    CertSource, CertWatcher, Error, Outcome, PemFiles, ReloadEvent, SniResolver, Validity, WatchConfig,
    WatchMode,
};
use common::{PATIENCE, pair, pair_valid, paths, ring};
use tokio::sync::broadcast;

fn fast() -> WatchConfig {
    WatchConfig::default().debounce(Duration::from_millis(20))
}

fn source(cert: &std::path::Path, key: &std::path::Path) -> PemFiles {
    PemFiles::new(cert, key).with_provider(ring())
}

/// Waits for the first event `pick` accepts, skipping others (a rotation written as two
/// renames may be seen half-done first).
async fn next<T>(
    rx: &mut broadcast::Receiver<ReloadEvent>,
    mut pick: impl FnMut(&ReloadEvent) -> Option<T>,
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

async fn reloaded_serial(rx: &mut broadcast::Receiver<ReloadEvent>, serial_suffix: &str) {
    next(rx, |ev| match ev {
        ReloadEvent::Reloaded(info) if info.serial.ends_with(serial_suffix) => Some(()),
        _ => None,
    })
    .await;
}

#[test]
fn a_bad_first_pair_fails_creation_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    let err = CertWatcher::new(source(&cert, &key), WatchConfig::default()).unwrap_err();
    assert!(matches!(err, Error::Read { ref path, .. } if *path == cert), "{err:?}");
    std::fs::write(&cert, pair(1).cert_pem).unwrap();
    std::fs::write(&key, pair(2).key_pem).unwrap();
    let err = CertWatcher::new(source(&cert, &key), WatchConfig::default()).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let w = CertWatcher::new(source(&cert, &key), WatchConfig::default()).unwrap();
    assert!(matches!(w.start(), Err(Error::NoRuntime)));
    assert!(!w.is_running());
    // The pair is served all the same.
    assert!(w.current().serial.ends_with("01"));
}

#[tokio::test]
async fn rotation_by_rename_is_reloaded_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    let first = pair(0x11);
    first.write(&cert, &key);
    let w = CertWatcher::new(source(&cert, &key), fast()).unwrap();
    let resolver = w.resolver();
    let mut rx = w.subscribe();
    w.start().unwrap();
    let second = pair(0x22);
    second.write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "22").await;
    assert!(w.current().serial.ends_with("22"));
    assert_eq!(resolver.current().cert[0].as_ref(), second.der.as_slice());
    assert_eq!(w.certified_key().cert[0].as_ref(), second.der.as_slice());
    let stats = w.stats();
    assert_eq!(stats.reloads_ok, 1);
    assert!(!stats.polling);
}

#[tokio::test]
async fn start_and_stop_are_idempotent_and_a_restart_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let w = CertWatcher::new(source(&cert, &key), fast()).unwrap();
    let mut rx = w.subscribe();
    w.start().unwrap();
    w.start().unwrap();
    assert!(w.is_running());
    w.stop();
    w.stop();
    assert!(!w.is_running());
    // Changed while stopped: the restarted task loads it at once.
    pair(2).write_atomic(&cert, &key);
    w.start().unwrap();
    reloaded_serial(&mut rx, "02").await;
    assert_eq!(w.stats().reloads_ok, 1);
}

#[tokio::test]
async fn a_change_between_the_first_load_and_the_start_is_loaded_and_no_change_is_not_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    // Unchanged files: the start-up check compares metadata and does not load the pair again.
    let w = CertWatcher::new(source(&cert, &key), fast()).unwrap();
    w.start().unwrap();
    let mut rx = w.subscribe();
    pair(2).write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "02").await;
    assert_eq!(w.stats().unchanged, 0, "the start-up check loaded an unchanged pair");
    // Changed after the first load, before the watch existed: loaded at start.
    let w = CertWatcher::new(source(&cert, &key), fast()).unwrap();
    let mut rx = w.subscribe();
    pair(3).write_atomic(&cert, &key);
    w.start().unwrap();
    reloaded_serial(&mut rx, "03").await;
}

#[tokio::test]
async fn dropping_the_watcher_ends_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let w = CertWatcher::watch(source(&cert, &key), fast()).unwrap();
    let resolver = w.resolver();
    let mut rx = w.subscribe();
    drop(w);
    // The task held the event sender; it is gone once the task is.
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Err(broadcast::error::RecvError::Closed) = rx.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the watch task outlived its handle");
    // The resolver keeps serving the last pair.
    assert!(!resolver.current().cert.is_empty());
}

#[tokio::test]
async fn manual_reload_reports_unchanged_reloaded_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let w = CertWatcher::new(source(&cert, &key), fast()).unwrap();
    let mut rx = w.subscribe();
    assert_eq!(w.reload().await.unwrap(), Outcome::Unchanged);
    pair(2).write(&cert, &key);
    assert_eq!(w.reload().await.unwrap(), Outcome::Reloaded);
    reloaded_serial(&mut rx, "02").await;
    std::fs::write(&key, "").unwrap();
    let err = w.reload().await.unwrap_err();
    assert!(matches!(*err, Error::NoPrivateKey { .. }));
    let failed = next(&mut rx, |ev| match ev {
        ReloadEvent::Failed(e) => Some(e.to_string()),
        _ => None,
    })
    .await;
    assert!(failed.contains("no private key"), "{failed}");
    assert!(w.current().serial.ends_with("02"), "the refused pair must not be served");
    let stats = w.stats();
    assert_eq!((stats.reloads_ok, stats.reloads_failed, stats.unchanged), (1, 1, 1));
}

#[tokio::test]
async fn a_refused_pair_is_reported_kept_out_and_its_fix_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let w = CertWatcher::watch(source(&cert, &key), fast()).unwrap();
    let mut rx = w.subscribe();
    // A half-rotated pair: new cert, old key.
    let next_pair = pair(3);
    std::fs::write(&cert, &next_pair.cert_pem).unwrap();
    // The in-place write may be seen half-done (an empty file) first.
    next(&mut rx, |ev| match ev {
        ReloadEvent::Failed(e) if matches!(**e, Error::KeyMismatch { .. }) => Some(()),
        ReloadEvent::Failed(_) => None,
        other => panic!("expected a refusal, got {other:?}"),
    })
    .await;
    assert!(w.current().serial.ends_with("01"));
    std::fs::write(&key, &next_pair.key_pem).unwrap();
    reloaded_serial(&mut rx, "03").await;
}

#[tokio::test]
async fn forced_polling_sees_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let config = fast().mode(WatchMode::Poll).poll_interval(Duration::from_millis(25));
    let w = CertWatcher::watch(source(&cert, &key), config).unwrap();
    let mut rx = w.subscribe();
    pair(2).write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "02").await;
    // An in-place rewrite keeps the inode: size/mtime/ctime tell.
    pair(3).write(&cert, &key);
    reloaded_serial(&mut rx, "03").await;
    assert!(w.stats().polling);
}

/// A PEM pair plus a file in a directory that does not exist yet: that directory cannot be
/// watched, which forces the fallback to polling.
struct WithMissingDir {
    pem: PemFiles,
    extra: PathBuf,
}

impl CertSource for WithMissingDir {
    fn paths(&self) -> Vec<PathBuf> {
        let mut p = self.pem.paths();
        p.push(self.extra.clone());
        p
    }
    fn load(&self) -> Result<rustls::sign::CertifiedKey, Error> {
        self.pem.load()
    }
}

#[tokio::test]
async fn an_unwatchable_directory_falls_back_to_polling_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let missing = dir.path().join("not-yet");
    let src = WithMissingDir { pem: source(&cert, &key), extra: missing.join("ocsp.der") };
    let config = fast().poll_interval(Duration::from_millis(25));
    let w = CertWatcher::new(src, config).unwrap();
    let mut rx = w.subscribe();
    w.start().unwrap();
    let reason = next(&mut rx, |ev| match ev {
        ReloadEvent::Polling { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("not-yet"), "{reason}");
    assert!(w.stats().polling);
    pair(2).write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "02").await;
    // Once the directory exists it is watched and polling stops.
    std::fs::create_dir(&missing).unwrap();
    common_wait(|| !w.stats().polling).await;
}

async fn common_wait(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

#[tokio::test]
async fn a_certificate_close_to_expiry_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let w = CertWatcher::watch(source(&cert, &key), fast()).unwrap();
    let mut rx = w.subscribe();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    pair_valid(2, now - day, now + 3 * day).write_atomic(&cert, &key);
    let (serial, remaining) = next(&mut rx, |ev| match ev {
        ReloadEvent::ExpiresSoon { info, remaining } => Some((info.serial.clone(), *remaining)),
        _ => None,
    })
    .await;
    assert!(serial.ends_with("02"));
    assert!(remaining > 2 * day && remaining <= 3 * day, "{remaining:?}");
    // An expired one is served (and warned about) too: refusing it would not help.
    pair_valid(3, now - 3 * day, now - day).write_atomic(&cert, &key);
    let (info, remaining) = next(&mut rx, |ev| match ev {
        ReloadEvent::ExpiresSoon { info, remaining } => Some((info.clone(), *remaining)),
        _ => None,
    })
    .await;
    assert_eq!(info.validity(), Validity::Expired);
    assert_eq!(remaining, Duration::ZERO);
    assert!(w.current().serial.ends_with("03"));
}

#[tokio::test]
async fn a_repeated_error_is_not_reported_again_for_unrelated_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let w = CertWatcher::watch(source(&cert, &key), fast()).unwrap();
    let mut rx = w.subscribe();
    std::fs::write(&cert, "garbage").unwrap();
    next(&mut rx, |ev| matches!(ev, ReloadEvent::Failed(_)).then_some(())).await;
    // Unrelated files change; then the fix arrives. The next event must be the reload, not a
    // repeat of the error.
    for i in 0..5 {
        std::fs::write(dir.path().join(format!("unrelated-{i}")), "x").unwrap();
    }
    // Wait until those changes were acted on (a second failed attempt, not reported).
    common_wait(|| w.stats().reloads_failed >= 2).await;
    let p = pair(9);
    p.write_atomic(&cert, &key);
    let first = next(&mut rx, |ev| match ev {
        ReloadEvent::Reloaded(info) if info.serial.ends_with("09") => Some("reloaded"),
        ReloadEvent::Failed(e) if e.to_string().contains("no certificate") => Some("repeated"),
        _ => None,
    })
    .await;
    assert_eq!(first, "reloaded");
    assert!(w.stats().reloads_failed >= 1);
}

#[tokio::test]
async fn sni_selects_by_exact_name_then_wildcard_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let mk = |name: &str, serial: u64| {
        let cert = dir.path().join(format!("{name}.crt"));
        let key = dir.path().join(format!("{name}.key"));
        pair(serial).write(&cert, &key);
        CertWatcher::new(source(&cert, &key), fast()).unwrap()
    };
    let (a, wild, dflt) = (mk("a", 0xa), mk("wild", 0xb), mk("default", 0xc));
    let sni = SniResolver::new()
        .with_name("a.example.com", a.resolver())
        .unwrap()
        .with_name("*.example.com", wild.resolver())
        .unwrap()
        .with_default(dflt.resolver());
    let serial_of = |name: Option<&str>| {
        let r = sni.select(name).expect("a resolver");
        certwatch::CertInfo::from_der(r.current().cert[0].as_ref()).unwrap().serial
    };
    assert!(serial_of(Some("a.example.com")).ends_with("0a"));
    assert!(serial_of(Some("A.Example.COM.")).ends_with("0a"));
    assert!(serial_of(Some("b.example.com")).ends_with("0b"));
    assert!(serial_of(Some("x.b.example.com")).ends_with("0c"), "a wildcard covers one label only");
    assert!(serial_of(Some("example.com")).ends_with("0c"));
    assert!(serial_of(None).ends_with("0c"));
    assert!(
        SniResolver::new().with_name("a.example.com", a.resolver()).unwrap().select(Some("z.org")).is_none()
    );
    assert!(matches!(SniResolver::new().with_name("*", a.resolver()), Err(Error::InvalidServerName { .. })));
}

#[tokio::test]
async fn more_resolvers_than_the_thread_cache_holds_each_serve_their_own_fresh_pair() {
    let dir = tempfile::tempdir().unwrap();
    let n = certwatch::THREAD_CACHE_ENTRIES as u64 + 2;
    let watchers: Vec<(CertWatcher, PathBuf, PathBuf)> = (0..n)
        .map(|i| {
            let (cert, key) = (dir.path().join(format!("{i}.crt")), dir.path().join(format!("{i}.key")));
            pair(0x100 + i).write(&cert, &key);
            (CertWatcher::new(source(&cert, &key), fast()).unwrap(), cert, key)
        })
        .collect();
    let serial = |w: &CertWatcher| {
        certwatch::CertInfo::from_der(w.resolver().current().cert[0].as_ref()).unwrap().serial
    };
    for round in 0..3 {
        for (i, (w, cert, key)) in watchers.iter().enumerate() {
            let want = format!("{:x}", 0x100 * (round + 1) + i as u64);
            assert!(serial(w).ends_with(&want), "round {round}, resolver {i}: {} vs {want}", serial(w));
            // Rotate this one; the same thread must see the new pair on its next resolve.
            pair(0x100 * (round + 2) + i as u64).write(cert, key);
            assert_eq!(w.reload().await.unwrap(), Outcome::Reloaded);
        }
    }
}

#[tokio::test]
async fn the_periodic_recheck_picks_up_a_change_no_event_announced() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    // Polling so slow it never fires during the test: only the re-check can notice.
    let config = fast()
        .mode(WatchMode::Poll)
        .poll_interval(Duration::from_secs(3600))
        .recheck_interval(Duration::from_millis(100));
    let w = CertWatcher::watch(source(&cert, &key), config).unwrap();
    let mut rx = w.subscribe();
    // The start-up load is done (and found nothing new) before the change is made.
    common_wait(|| w.stats().unchanged >= 1).await;
    pair(2).write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "02").await;
}

#[tokio::test]
async fn intervals_too_long_for_an_instant_mean_never_and_the_watch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let config = fast().recheck_interval(Duration::MAX).poll_interval(Duration::MAX);
    let w = CertWatcher::new(source(&cert, &key), config).unwrap();
    let mut rx = w.subscribe();
    w.start().unwrap();
    // The first rotation may be caught by the start-up load; the second needs the watch loop.
    pair(2).write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "02").await;
    pair(3).write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "03").await;
}

#[tokio::test]
async fn a_debounce_too_long_for_an_instant_waits_for_ever_and_the_recheck_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    pair(1).write(&cert, &key);
    let config = WatchConfig::default().debounce(Duration::MAX).recheck_interval(Duration::from_millis(50));
    let w = CertWatcher::new(source(&cert, &key), config).unwrap();
    let mut rx = w.subscribe();
    w.start().unwrap();
    // The change arms the debounce (which must not overflow); the periodic re-check loads it.
    pair(2).write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "02").await;
    pair(3).write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "03").await;
}

/// A FIFO (nobody writing, then a writer that never writes) and a 2 GiB sparse file renamed in as
/// the certificate: each reload is refused and reported, the old pair is served throughout, and
/// a good pair afterwards is loaded (the loader is not stuck on the FIFO).
#[tokio::test]
async fn a_fifo_or_a_huge_sparse_file_as_the_certificate_is_refused_and_watching_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = paths(dir.path());
    let first = pair(1);
    first.write(&cert, &key);
    let w = CertWatcher::new(source(&cert, &key), fast()).unwrap();
    let mut rx = w.subscribe();
    w.start().unwrap();
    let spare = dir.path().join("spare");
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
    let failed = |rx: &mut broadcast::Receiver<ReloadEvent>| {
        let mut rx = rx.resubscribe();
        async move {
            next(&mut rx, |ev| match ev {
                ReloadEvent::Failed(err) => Some(err.to_string()),
                _ => None,
            })
            .await
        }
    };

    // A FIFO nobody writes to.
    nix::unistd::mkfifo(&spare, mode).unwrap();
    let refusal = failed(&mut rx);
    std::fs::rename(&spare, &cert).unwrap();
    let reason = refusal.await;
    assert!(reason.contains("not a regular file"), "{reason}");
    assert_eq!(w.certified_key().cert[0].as_ref(), first.der.as_slice());

    // Asked directly: refused at once, without a writer and with one that holds the FIFO open
    // and never writes.
    for with_writer in [false, true] {
        let writer =
            with_writer.then(|| std::fs::OpenOptions::new().read(true).write(true).open(&cert).unwrap());
        let err = tokio::time::timeout(PATIENCE, w.reload()).await.expect("reload returns").unwrap_err();
        assert!(matches!(*err, Error::NotAFile { .. }), "{err:?}");
        drop(writer);
    }

    // 2 GiB of nothing: refused from its size, neither read nor allocated.
    std::fs::File::create(&spare).unwrap().set_len(2 << 30).unwrap();
    let refusal = failed(&mut rx);
    std::fs::rename(&spare, &cert).unwrap();
    let reason = refusal.await;
    assert!(reason.contains("larger than the limit"), "{reason}");
    assert_eq!(w.certified_key().cert[0].as_ref(), first.der.as_slice());
    assert!(w.stats().reloads_failed >= 2, "{:?}", w.stats());

    // A good pair is picked up: nothing is stuck.
    let renewed = pair(2);
    renewed.write_atomic(&cert, &key);
    reloaded_serial(&mut rx, "02").await;
    assert_eq!(w.certified_key().cert[0].as_ref(), renewed.der.as_slice());
}
