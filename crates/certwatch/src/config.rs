//! How a watcher watches: [`WatchConfig`] and [`WatchMode`].

use std::time::Duration;

use crate::load::LoadOn;

/// How changes on disk are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WatchMode {
    /// Watch the directories with the OS's file notification (inotify); poll instead while a
    /// directory cannot be watched (inotify limits, a missing directory, some network file
    /// systems) and go back to watching when it can.
    #[default]
    Auto,
    /// Never use file notifications: compare the files' metadata (device, inode, size, mtime,
    /// ctime — after following symlinks) every [`WatchConfig::poll_interval`].
    Poll,
}

/// The longest debounce or interval honoured as given: 100 years, which is never in practice. A
/// longer one ([`Duration::MAX`] included) is treated as this, so that no deadline computed from
/// it can overflow.
pub const MAX_INTERVAL: Duration = Duration::from_secs(100 * 31_557_600);

/// Timing and reporting knobs of a watcher. `WatchConfig::default()` suits a server.
///
/// Every duration is at most [`MAX_INTERVAL`] (longer ones are lowered to it).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatchConfig {
    /// Quiet time after the last change before reloading (default 150 ms): renewal tools write
    /// a cert and a key, or a whole Kubernetes secret, as several steps; waiting lets them
    /// finish. A stream of changes that never pauses still reloads at least every 4× this.
    pub debounce: Duration,
    /// Period of the slow re-check that reloads even without a change (default 60 s), so a
    /// fixed pair whose event was missed is still picked up, and expiry is re-evaluated.
    pub recheck_interval: Duration,
    /// Period of the metadata comparison while polling (default 1 s).
    pub poll_interval: Duration,
    /// Notification or polling (default [`WatchMode::Auto`]).
    pub mode: WatchMode,
    /// Warn (log and [`ReloadEvent::ExpiresSoon`](crate::ReloadEvent::ExpiresSoon)) once per
    /// certificate when its `not_after` is less than this far away (default 14 days).
    pub expiry_warning: Duration,
    /// How many events a slow subscriber may fall behind before it misses some (default 64).
    pub event_capacity: usize,
    /// Where a reload reads, parses and validates the files (default
    /// [`LoadOn::LowPriorityThread`]: off the runtime's workers, at a lower priority).
    pub load_on: LoadOn,
    /// The `name` label of this watcher's metrics (default `default`; see
    /// [`metrics`](crate::metrics)): a short fixed word per watcher of a process, never a path.
    pub metrics_name: String,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            debounce: Duration::from_millis(150),
            recheck_interval: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            mode: WatchMode::Auto,
            expiry_warning: Duration::from_secs(14 * 24 * 3600),
            event_capacity: 64,
            load_on: LoadOn::default(),
            metrics_name: "default".to_owned(),
        }
    }
}

impl WatchConfig {
    /// Sets [`debounce`](WatchConfig::debounce).
    pub fn debounce(mut self, d: Duration) -> Self {
        self.debounce = d;
        self
    }

    /// Sets [`recheck_interval`](WatchConfig::recheck_interval).
    pub fn recheck_interval(mut self, d: Duration) -> Self {
        self.recheck_interval = d;
        self
    }

    /// Sets [`poll_interval`](WatchConfig::poll_interval).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Sets [`mode`](WatchConfig::mode).
    pub fn mode(mut self, mode: WatchMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets [`expiry_warning`](WatchConfig::expiry_warning).
    pub fn expiry_warning(mut self, d: Duration) -> Self {
        self.expiry_warning = d;
        self
    }

    /// Sets [`event_capacity`](WatchConfig::event_capacity).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// Sets [`load_on`](WatchConfig::load_on).
    pub fn load_on(mut self, on: LoadOn) -> Self {
        self.load_on = on;
        self
    }

    /// Sets [`metrics_name`](WatchConfig::metrics_name).
    pub fn metrics_name(mut self, name: impl Into<String>) -> Self {
        self.metrics_name = name.into();
        self
    }

    /// Intervals of zero would make the loop spin; they are raised to 1 ms. Durations longer
    /// than [`MAX_INTERVAL`] are lowered to it, so that no deadline computed from them overflows.
    pub(crate) fn sanitized(mut self) -> Self {
        let floor = Duration::from_millis(1);
        self.debounce = self.debounce.min(MAX_INTERVAL);
        self.recheck_interval = self.recheck_interval.clamp(floor, MAX_INTERVAL);
        self.poll_interval = self.poll_interval.clamp(floor, MAX_INTERVAL);
        self.event_capacity = self.event_capacity.max(1);
        self
    }
}
