//! The reload machinery shared by certificates and CA bundles: load, compare, swap, report.

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::WatchConfig;
use crate::error::Error;
use crate::event::{Outcome, ReloadEvent, Stats};
use crate::load::LoadOn;

/// What a watched item is made of: files to watch and a validating loader.
pub(crate) trait Loader: Send + Sync + 'static {
    /// The `kind` label of its metrics.
    const KIND: &'static str;
    /// What is served (`CertifiedKey`, a client verifier).
    type Value: Send + Sync + 'static;
    /// What is reported about it.
    type Info: Meta;
    /// The files it is read from.
    fn paths(&self) -> Vec<PathBuf>;
    /// A name for logs.
    fn describe(&self) -> String;
    /// Loads and fully validates; runs off the runtime (see [`LoadOn`]).
    fn load(&self) -> Result<(Arc<Self::Value>, Self::Info), Error>;
}

/// The parts of an item's metadata the engine needs.
pub(crate) trait Meta: Clone + Debug + Send + Sync + 'static {
    /// Whether two loads produced the same thing (then nothing is swapped or reported).
    fn same(&self, other: &Self) -> bool;
    /// When it stops being valid (the earliest date, for a bundle).
    fn not_after(&self) -> SystemTime;
    /// A stable identity for "already warned about this one".
    fn fingerprint(&self) -> &str;
    /// One-line description for logs.
    fn summary(&self) -> String;
}

/// Why an attempt was made; only changes suppress a repeated identical error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Start,
    Change,
    Recheck,
    Manual,
}

/// State shared by the handle, the resolver and the watch task.
pub(crate) struct Shared<L: Loader> {
    pub(crate) loader: L,
    /// The served value: the only thing the handshake path touches.
    pub(crate) value: Arc<ArcSwap<L::Value>>,
    info: ArcSwap<L::Info>,
    events: broadcast::Sender<ReloadEvent<L::Info>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    unchanged: AtomicU64,
    pub(crate) polling: AtomicBool,
    expiry_warning: Duration,
    /// Where loads run.
    load_on: LoadOn,
    /// Where its metrics go (nothing without the `metrics` feature).
    metrics: crate::metrics::Recorder,
    /// Serialises attempts (the task's and manual ones) and remembers what was last reported.
    attempt: tokio::sync::Mutex<Reported>,
    /// The files' metadata taken just before the first load: the watch task skips its start-up
    /// reload when the files still look the same (a successor starting under load has better
    /// uses for the CPU than parsing the same pair twice).
    pub(crate) loaded_signature: Mutex<Option<Vec<crate::watch::FileSig>>>,
}

#[derive(Default)]
struct Reported {
    /// The last error reported, so an unrelated change does not repeat it.
    last_error: Option<String>,
    /// Fingerprint of the item last warned about for expiry.
    expiry_warned: Option<String>,
}

impl<L: Loader> Shared<L> {
    pub(crate) fn info(&self) -> Arc<L::Info> {
        self.info.load_full()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ReloadEvent<L::Info>> {
        self.events.subscribe()
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            polling: self.polling.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn emit(&self, event: ReloadEvent<L::Info>) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    /// Loads off the runtime (see [`LoadOn`]), swaps if valid and different, reports.
    pub(crate) async fn attempt(self: &Arc<Self>, trigger: Trigger) -> Result<Outcome, Arc<Error>> {
        let mut reported = self.attempt.lock().await;
        let me = Arc::clone(self);
        let loaded = crate::load::run(self.load_on, move || me.loader.load()).await;
        match loaded {
            Ok((value, info)) => {
                reported.last_error = None;
                if info.same(&self.info.load()) {
                    self.unchanged.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?trigger, "unchanged");
                    return Ok(Outcome::Unchanged);
                }
                // Value first: a reader of `current()` never sees metadata of a pair not yet
                // served.
                self.value.store(value);
                self.info.store(Arc::new(info.clone()));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.metrics.reload(true);
                self.metrics.loaded(SystemTime::now(), info.not_after());
                tracing::info!(?trigger, "reloaded {}", info.summary());
                self.emit(ReloadEvent::Reloaded(info));
                self.check_expiry(&mut reported);
                Ok(Outcome::Reloaded)
            }
            Err(err) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.metrics.reload(false);
                let message = crate::error::chain(&err);
                let err = Arc::new(err);
                if trigger == Trigger::Change && reported.last_error.as_deref() == Some(message.as_str()) {
                    tracing::debug!(?trigger, "reload still failing: {message}");
                } else {
                    tracing::warn!(?trigger, "reload failed, keeping the current version: {message}");
                    self.emit(ReloadEvent::Failed(Arc::clone(&err)));
                }
                reported.last_error = Some(message);
                Err(err)
            }
        }
    }

    /// Warns once per served item whose end of validity is near.
    pub(crate) async fn recheck_expiry(&self) {
        let mut reported = self.attempt.lock().await;
        self.check_expiry(&mut reported);
    }

    fn check_expiry(&self, reported: &mut Reported) {
        let info = self.info.load_full();
        let now = SystemTime::now();
        self.metrics.expiry(now, info.not_after());
        let remaining = info.not_after().duration_since(now).unwrap_or(Duration::ZERO);
        if remaining >= self.expiry_warning || reported.expiry_warned.as_deref() == Some(info.fingerprint()) {
            return;
        }
        reported.expiry_warned = Some(info.fingerprint().to_owned());
        tracing::warn!(remaining_days = remaining.as_secs() / 86_400, "expires soon: {}", info.summary());
        self.emit(ReloadEvent::ExpiresSoon { info: (*info).clone(), remaining });
    }
}

/// A loaded item plus its (optional) watch task: the body of `CertWatcher` and
/// `ClientCaWatcher`.
pub(crate) struct Engine<L: Loader> {
    pub(crate) shared: Arc<Shared<L>>,
    config: WatchConfig,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<L: Loader> Engine<L> {
    /// Loads synchronously; fails if the first load fails.
    pub(crate) fn new(loader: L, config: WatchConfig) -> Result<Self, Error> {
        let config = config.sanitized();
        let span = tracing::info_span!("certwatch", source = %loader.describe());
        let _entered = span.enter();
        let loaded_signature = crate::watch::signature(&loader.paths());
        let (value, info) = loader.load()?;
        tracing::info!("loaded {}", info.summary());
        let (events, _) = broadcast::channel(config.event_capacity);
        let metrics = crate::metrics::Recorder::new(L::KIND, &config.metrics_name);
        metrics.loaded(SystemTime::now(), info.not_after());
        let shared = Arc::new(Shared {
            loader,
            value: Arc::new(ArcSwap::new(value)),
            info: ArcSwap::new(Arc::new(info)),
            events,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            unchanged: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            expiry_warning: config.expiry_warning,
            load_on: config.load_on,
            metrics,
            attempt: tokio::sync::Mutex::new(Reported::default()),
            loaded_signature: Mutex::new(Some(loaded_signature)),
        });
        // Nobody has subscribed yet; the log line is what reports an initial near-expiry.
        if let Ok(mut reported) = shared.attempt.try_lock() {
            shared.check_expiry(&mut reported);
        }
        Ok(Engine { shared, config, task: Mutex::new(None) })
    }

    /// Spawns the watch task unless it is already running.
    pub(crate) fn start(&self) -> Result<(), Error> {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let span = tracing::info_span!("certwatch", source = %self.shared.loader.describe());
        let run = crate::watch::run(Arc::clone(&self.shared), self.config.clone());
        *task = Some(handle.spawn(run.instrument(span)));
        Ok(())
    }

    /// Stops the watch task; the last good version keeps being served.
    pub(crate) fn stop(&self) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.take() {
            // The task holds no lock across an await that matters: aborting at any await
            // point leaves the served value and the counters consistent.
            task.abort();
            self.shared.polling.store(false, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl<L: Loader> Drop for Engine<L> {
    fn drop(&mut self) {
        self.stop();
    }
}
