//! What a watcher reports: [`ReloadEvent`], [`Outcome`] and [`Stats`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::check::CertInfo;
use crate::error::Error;

/// One thing that happened to a watched source, delivered to every
/// [`subscribe`](crate::CertWatcher::subscribe)r.
///
/// `I` is what is known about the loaded item: [`CertInfo`] for certificates,
/// [`CaInfo`](crate::CaInfo) for client-CA bundles.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReloadEvent<I = CertInfo> {
    /// A new, valid version is now being served.
    Reloaded(I),
    /// A reload was refused; the previous version is still served. Retried on the next change
    /// and on the periodic re-check. The same error is reported again only by the periodic
    /// re-check, not by every unrelated change in the directory.
    Failed(Arc<Error>),
    /// The served certificate's `not_after` is within
    /// [`WatchConfig::expiry_warning`](crate::WatchConfig::expiry_warning) (reported once per
    /// certificate). `remaining` is zero once it has expired.
    ExpiresSoon {
        /// The certificate.
        info: I,
        /// Time left.
        remaining: Duration,
    },
    /// File notifications are unavailable; the watcher polls until they work again.
    Polling {
        /// Why notifications could not be used.
        reason: String,
    },
}

impl fmt::Display for ReloadEvent<CertInfo> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadEvent::Reloaded(info) => write!(
                f,
                "reloaded certificate {} (serial {}, sha256 {}, expires in {} days)",
                info.subject,
                info.serial,
                info.fingerprint,
                info.remaining_at(std::time::SystemTime::now()).as_secs() / 86_400
            ),
            ReloadEvent::Failed(err) => {
                write!(
                    f,
                    "certificate reload failed, still serving the previous one: {}",
                    crate::error::chain(&**err)
                )
            }
            ReloadEvent::ExpiresSoon { info, remaining } => {
                write!(
                    f,
                    "certificate {} (serial {}) expires in {}",
                    info.subject,
                    info.serial,
                    days(*remaining)
                )
            }
            ReloadEvent::Polling { reason } => write!(f, "watching certificate files by polling: {reason}"),
        }
    }
}

fn days(d: Duration) -> String {
    if d.is_zero() { "0 days: it has expired".to_owned() } else { format!("{} days", d.as_secs() / 86_400) }
}

/// What a [`reload`](crate::CertWatcher::reload) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A different valid version was loaded and is now served.
    Reloaded,
    /// The files hold what is already served; nothing changed.
    Unchanged,
}

/// Counters of a watcher since it was created (the initial load is not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reloads that swapped in a new version.
    pub reloads_ok: u64,
    /// Reload attempts that were refused (each kept the previous version).
    pub reloads_failed: u64,
    /// Reload attempts that found nothing new.
    pub unchanged: u64,
    /// Whether the watcher is polling right now (forced, or notifications unavailable).
    pub polling: bool,
}
