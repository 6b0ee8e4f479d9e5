//! The watch task: directory notifications or polling, debounce, periodic re-check.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{WatchConfig, WatchMode};
use crate::engine::{Loader, Shared, Trigger};
use crate::event::ReloadEvent;

/// A stream of changes that never pauses still reloads after this many debounce periods.
const MAX_WAIT_FACTOR: u32 = 4;

/// The watch task's body; ends only when aborted.
pub(crate) async fn run<L: Loader>(shared: Arc<Shared<L>>, config: WatchConfig) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut dirs = match config.mode {
        WatchMode::Poll => None,
        WatchMode::Auto => match DirWatcher::new(tx) {
            Ok(w) => Some(w),
            Err(reason) => {
                report_polling(&shared, reason);
                None
            }
        },
    };
    let mut polling = dirs.is_none();
    if let Some(w) = dirs.as_mut()
        && let Err(reason) = w.sync(&shared.loader.paths())
    {
        polling = true;
        report_polling(&shared, reason);
    }
    shared.polling.store(polling, Ordering::Relaxed);
    tracing::debug!(polling, "watching");
    // The polling baseline is taken before the load below, so a change racing with that load
    // is still noticed by the next comparison.
    let mut last_seen = signature(&shared.loader.paths());
    // The files may have changed since they were loaded (or since a `stop`): the watches are
    // in place now, so one load closes that gap — unless their metadata is still what it was
    // just before the first load.
    let loaded = shared.loaded_signature.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if loaded.as_ref() != Some(&last_seen) {
        let _ = shared.attempt(Trigger::Start).await;
    }
    after_attempt(&shared, &mut dirs, &mut polling);

    let mut poll = tokio::time::interval_at(Instant::now() + config.poll_interval, config.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut recheck =
        tokio::time::interval_at(Instant::now() + config.recheck_interval, config.recheck_interval);
    recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pending = Debounce::new(config.debounce);

    loop {
        let deadline = pending.deadline();
        tokio::select! {
            msg = rx.recv(), if dirs.is_some() => match msg {
                Some(FsMsg::Changed) => {
                    if let Some(w) = dirs.as_mut() {
                        let removed = w.take_removed();
                        w.forget(&removed);
                        // Events keep coming without waking this task until the reload clears the
                        // signal; the debounce learns of them from the last event's time.
                        pending.touch_at(w.last_event().unwrap_or_else(Instant::now));
                    } else {
                        pending.touch();
                    }
                }
                Some(FsMsg::Failed(reason)) => {
                    // A backend error (a queue overflow is an event, not this): keep watching,
                    // but also poll until a later sync of the watches succeeds.
                    if !polling {
                        polling = true;
                        shared.polling.store(true, Ordering::Relaxed);
                        report_polling(&shared, reason);
                    }
                    pending.touch();
                }
                None => {
                    // The notification thread is gone: poll from now on.
                    dirs = None;
                    if !polling {
                        polling = true;
                        shared.polling.store(true, Ordering::Relaxed);
                        report_polling(&shared, "the file notification thread stopped".to_owned());
                    }
                }
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                // Changes seen since the deadline was set push it further (within the cap).
                if let Some(last) = dirs.as_ref().and_then(DirWatcher::last_event) {
                    pending.touch_at(last);
                }
                if pending.deadline().is_some_and(|d| d > Instant::now()) {
                    continue;
                }
                pending.clear();
                // Cleared before the files are read: a change from now on signals again, and one
                // from before is in what the load reads.
                if let Some(w) = dirs.as_ref() {
                    w.rearm();
                }
                let _ = shared.attempt(Trigger::Change).await;
                after_attempt(&shared, &mut dirs, &mut polling);
            }
            _ = poll.tick(), if polling => {
                let now = signature(&shared.loader.paths());
                if now != last_seen {
                    last_seen = now;
                    pending.touch();
                }
                if let Some(w) = dirs.as_mut()
                    && w.sync(&shared.loader.paths()).is_ok()
                {
                    tracing::info!("file notifications work again; polling stopped");
                    polling = false;
                    shared.polling.store(false, Ordering::Relaxed);
                }
            }
            _ = recheck.tick() => {
                let _ = shared.attempt(Trigger::Recheck).await;
                shared.recheck_expiry().await;
                after_attempt(&shared, &mut dirs, &mut polling);
            }
        }
    }
}

/// After a reload the symlinks may point elsewhere (a Kubernetes `..data` swap): move the
/// watches along.
fn after_attempt<L: Loader>(shared: &Shared<L>, dirs: &mut Option<DirWatcher>, polling: &mut bool) {
    let Some(w) = dirs.as_mut() else { return };
    match w.sync(&shared.loader.paths()) {
        Ok(()) if *polling => {
            tracing::info!("file notifications work again; polling stopped");
            *polling = false;
        }
        Err(reason) if !*polling => {
            *polling = true;
            report_polling(shared, reason);
        }
        Ok(()) | Err(_) => {}
    }
    shared.polling.store(*polling, Ordering::Relaxed);
}

fn report_polling<L: Loader>(shared: &Shared<L>, reason: String) {
    tracing::warn!("cannot watch for changes, polling instead: {reason}");
    shared.emit(ReloadEvent::Polling { reason });
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Trailing-edge debounce with a cap: reload `debounce` after the last change, but no later
/// than `MAX_WAIT_FACTOR × debounce` after the first one.
struct Debounce {
    quiet: Duration,
    first: Option<Instant>,
    deadline: Option<Instant>,
}

impl Debounce {
    fn new(debounce: Duration) -> Self {
        Debounce { quiet: debounce, first: None, deadline: None }
    }

    fn touch(&mut self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&mut self, now: Instant) {
        let first = *self.first.get_or_insert(now);
        let at = (now + self.quiet).min(first + self.quiet * MAX_WAIT_FACTOR);
        // A change older than the one that set the deadline never brings it forward.
        self.deadline = Some(self.deadline.map_or(at, |d| d.max(at)));
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn clear(&mut self) {
        self.first = None;
        self.deadline = None;
    }
}

/// What the notification thread tells the task.
enum FsMsg {
    /// Something changed in a watched directory (see [`Signal`] for what, and when last).
    Changed,
    /// The notification backend reported an error.
    Failed(String),
}

/// How many removed or renamed paths are remembered between two wake-ups of the task; beyond
/// that every watch is re-checked (a directory's identity is compared anyway).
const MAX_REMOVED: usize = 64;

/// What the notification thread leaves for the task between wake-ups.
///
/// A writer that rewrites a pair produces a dozen events (create, modify, close, rename — for the
/// temporary files and the targets), and a busy one thousands a second. Waking the task — which
/// runs on the application's runtime, beside its TLS handshakes — for each would cost the
/// handshakes a worker wake-up per event. Instead the first event after a reload sends one
/// message; later ones only record their time (and removed paths), which the task reads when its
/// debounce deadline comes: a steady stream of changes wakes the task about once per debounce
/// period, not once per event.
#[derive(Default)]
struct Signal {
    /// Set by the first event after a reload; cleared by the task just before the next load.
    sent: AtomicBool,
    /// When the last relevant event came, in nanoseconds after `base` (0: none yet).
    last: AtomicU64,
    /// Paths deleted or moved away since the task last looked (a watched directory among them
    /// loses its watch); `None` once more than [`MAX_REMOVED`] came.
    removed: Mutex<Option<Vec<PathBuf>>>,
}

/// Non-recursive watches on the directories that hold the files and their symlink targets.
struct DirWatcher {
    inner: notify::RecommendedWatcher,
    /// Watched directory → its (device, inode) when the watch was added.
    watched: HashMap<PathBuf, (u64, u64)>,
    signal: Arc<Signal>,
    /// What the event times count from (the std clock: the notification thread is not tokio's).
    base: std::time::Instant,
}

impl DirWatcher {
    fn new(tx: mpsc::UnboundedSender<FsMsg>) -> Result<Self, String> {
        let signal = Arc::new(Signal { removed: Mutex::new(Some(Vec::new())), ..Signal::default() });
        let base = std::time::Instant::now();
        let seen = Arc::clone(&signal);
        let mut first_call = true;
        let handler = move |res: notify::Result<notify::Event>| {
            if first_call {
                // The notification thread is ours alone: its work (reading and decoding events)
                // yields to the application's threads like a load does.
                first_call = false;
                crate::load::lower_own_priority();
            }
            let event = match res {
                Ok(event) if !is_relevant(event.kind) => return,
                Ok(event) => event,
                Err(err) => {
                    // The task is gone when this fails; the watcher is being dropped with it.
                    let _ = tx.send(FsMsg::Failed(err.to_string()));
                    return;
                }
            };
            if matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))) {
                let mut removed = seen.removed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(list) = removed.as_mut() {
                    list.extend(event.paths);
                    if list.len() > MAX_REMOVED {
                        *removed = None;
                    }
                }
            }
            let nanos = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
            seen.last.fetch_max(nanos, Ordering::SeqCst);
            if !seen.sent.swap(true, Ordering::SeqCst) {
                let _ = tx.send(FsMsg::Changed);
            }
        };
        let inner = notify::recommended_watcher(handler)
            .map_err(|e| format!("cannot start file notifications: {e}"))?;
        Ok(DirWatcher { inner, watched: HashMap::new(), signal, base })
    }

    /// When the last relevant event came.
    fn last_event(&self) -> Option<Instant> {
        match self.signal.last.load(Ordering::SeqCst) {
            0 => None,
            nanos => Some(Instant::from_std(self.base + Duration::from_nanos(nanos))),
        }
    }

    /// The next event sends a message again.
    fn rearm(&self) {
        self.signal.sent.store(false, Ordering::SeqCst);
    }

    /// The paths removed since the last call; on overflow, every watched path (each is then
    /// re-checked and re-added by the next sync).
    fn take_removed(&mut self) -> Vec<PathBuf> {
        let mut removed = self.signal.removed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match removed.replace(Vec::new()) {
            Some(list) => list,
            None => self.watched.keys().cloned().collect(),
        }
    }

    /// A watched path that was removed or renamed no longer has a (valid) watch.
    fn forget(&mut self, removed: &[PathBuf]) {
        for path in removed {
            if self.watched.remove(path).is_some() {
                let _ = self.inner.unwatch(path);
            }
        }
    }

    /// Watches exactly the directories the files currently depend on; `Err` names one that
    /// could not be watched.
    fn sync(&mut self, files: &[PathBuf]) -> Result<(), String> {
        let mut wanted: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut failure = None;
        for dir in dirs_of(files) {
            match std::fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() => {
                    wanted.entry((meta.dev(), meta.ino())).or_insert(dir);
                }
                Ok(_) => {}
                Err(err) => {
                    failure.get_or_insert_with(|| format!("cannot watch {}: {err}", dir.display()));
                }
            }
        }
        // Drop watches on directories no longer needed, or replaced by another directory at
        // the same path.
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|(path, id)| wanted.get(*id) != Some(*path))
            .map(|(path, _)| path.clone())
            .collect();
        for path in stale {
            self.watched.remove(&path);
            let _ = self.inner.unwatch(&path);
        }
        for (id, dir) in wanted {
            if self.watched.contains_key(&dir) {
                continue;
            }
            match self.inner.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching directory");
                    self.watched.insert(dir, id);
                }
                Err(err) => {
                    failure.get_or_insert_with(|| format!("cannot watch {}: {err}", dir.display()));
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Our own reads open and close the files: those events must not trigger reloads.
pub(crate) fn is_relevant(kind: EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The parent directory of each file and of every hop of its symlink chain, absolute.
fn dirs_of(files: &[PathBuf]) -> Vec<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut dirs = Vec::new();
    for file in files {
        let mut path = cwd.join(file);
        // Bounded like the kernel's own limit on symlink chains.
        for _ in 0..40 {
            let parent = parent_of(&path);
            if !dirs.contains(&parent) {
                dirs.push(parent.clone());
            }
            match std::fs::read_link(&path) {
                Ok(target) => path = parent.join(target),
                Err(_) => break,
            }
        }
        if let Ok(real) = std::fs::canonicalize(file) {
            let parent = parent_of(&real);
            if !dirs.contains(&parent) {
                dirs.push(parent);
            }
        }
    }
    dirs
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("/"),
    }
}

/// What polling compares: the identity and change times of each file after following
/// symlinks, or why it could not be inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileSig {
    Present { dev: u64, ino: u64, size: u64, mtime: (i64, i64), ctime: (i64, i64) },
    Unavailable(std::io::ErrorKind),
}

pub(crate) fn signature(paths: &[PathBuf]) -> Vec<FileSig> {
    paths
        .iter()
        .map(|p| match std::fs::metadata(p) {
            Ok(m) => FileSig::Present {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            },
            Err(e) => FileSig::Unavailable(e.kind()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let mut d = Debounce::new(Duration::from_millis(100));
        assert!(d.deadline().is_none());
        let start = Instant::now();
        d.touch_at(start);
        assert_eq!(d.deadline(), Some(start + Duration::from_millis(100)));
        d.touch_at(start + Duration::from_millis(50));
        assert_eq!(d.deadline(), Some(start + Duration::from_millis(150)));
        // Changes every 50 ms keep pushing the deadline, up to 4× the debounce.
        for i in 2..20 {
            d.touch_at(start + Duration::from_millis(50 * i));
        }
        assert_eq!(d.deadline(), Some(start + Duration::from_millis(400)));
        d.clear();
        assert!(d.deadline().is_none());
    }

    #[test]
    fn the_longest_debounce_never_overflows() {
        let config = WatchConfig::default().debounce(Duration::MAX).sanitized();
        let mut d = Debounce::new(config.debounce);
        let start = Instant::now();
        d.touch_at(start);
        d.touch_at(start + Duration::from_secs(1));
        assert!(d.deadline().is_some_and(|at| at > start + Duration::from_secs(3_000_000_000)));
    }

    #[test]
    fn kubernetes_layout_watches_the_volume_and_the_current_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("..2026_01")).unwrap();
        std::fs::write(root.join("..2026_01/tls.crt"), "x").unwrap();
        std::os::unix::fs::symlink("..2026_01", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
        let dirs = dirs_of(&[root.join("tls.crt")]);
        assert!(dirs.contains(&root), "{dirs:?}");
        assert!(dirs.contains(&root.join("..data")) || dirs.contains(&root.join("..2026_01")), "{dirs:?}");
        assert!(dirs.contains(&root.join("..2026_01")), "{dirs:?}");
    }

    #[test]
    fn our_own_reads_are_not_changes() {
        assert!(!is_relevant(EventKind::Access(AccessKind::Open(AccessMode::Read))));
        assert!(!is_relevant(EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(is_relevant(EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(is_relevant(EventKind::Modify(ModifyKind::Any)));
    }
}
