//! The service layer's error: one variant per way a service can fail to start or run.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while a service starts (before it is ready) or restarts.
///
/// Every error of [`Builder::start`](super::Builder::start) and
/// [`Starting::ready`](super::Starting::ready) means the same thing: this process does not serve.
/// A *successor* that fails this way exits, and its predecessor keeps serving as if nothing had
/// happened (see the commit protocol in the [module documentation](super)). Messages are one
/// lowercase line; the cause is the [`source`](std::error::Error::source), never repeated in the
/// message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given something that cannot work (two listeners with one name, a
    /// reserved name, a zero timeout, ...).
    #[error("invalid service configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// [`Builder::start`](super::Builder::start) was called outside a tokio runtime.
    #[error("a service must start inside a tokio runtime (with the io and time drivers enabled)")]
    NoRuntime,

    /// A signal handler could not be installed.
    #[error("cannot install a handler for signal {signal}")]
    Signals {
        /// The signal number.
        signal: i32,
        /// The error of `sigaction`.
        #[source]
        source: io::Error,
    },

    /// Adopting what a predecessor or systemd passed, or the handover itself, failed.
    #[error(transparent)]
    Handover(#[from] handover::Error),

    /// The state directory could not be locked (see [`Error::is_locked`] for "held elsewhere").
    #[error("cannot lock the state directory {}", dir.display())]
    Lock {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: dirlock::Error,
    },

    /// A listener could not be bound.
    #[error("cannot listen on {address} (listener {name:?})")]
    Listen {
        /// The listener's name.
        name: String,
        /// The address or path it was to listen on.
        address: String,
        /// The error of `bind`/`listen`.
        #[source]
        source: io::Error,
    },

    /// A listener's socket could not be made ready for tokio (non-blocking mode, registration).
    #[error("cannot set up listener {name:?}")]
    Register {
        /// The listener's name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// No listener of that name and kind was configured, or it was taken already.
    #[error("no {kind} listener named {name:?} is left to take")]
    NoListener {
        /// The name asked for.
        name: String,
        /// The kind asked for (`TCP`, `unix`, `UDP`).
        kind: &'static str,
    },

    /// The control socket could not be bound or adopted.
    #[error("cannot set up the control socket {}", path.display())]
    Control {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: restart_socket::Error,
    },

    /// The TLS certificate could not be loaded (or its watcher started).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error("cannot serve the TLS certificate")]
    Tls {
        /// Why.
        #[source]
        source: certwatch::Error,
    },

    /// The TLS configuration could not be built.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error("cannot build the TLS configuration")]
    TlsConfig {
        /// Why.
        #[source]
        source: rustls::Error,
    },

    /// The predecessor's state is of a version this program cannot read.
    #[error("the predecessor's state is version {found}; this program reads version {expected}")]
    StateVersion {
        /// The version the predecessor wrote.
        found: u32,
        /// The version this program's state type has.
        expected: u32,
    },

    /// The predecessor's state could not be decoded.
    #[error("cannot decode the predecessor's state")]
    StateDecode {
        /// The decoding error.
        #[source]
        source: postcard::Error,
    },

    /// The service manager's notify socket (`NOTIFY_SOCKET`) cannot be reached.
    #[error("cannot reach the service manager's notify socket")]
    Notify {
        /// The error of `connect`.
        #[source]
        source: io::Error,
    },

    /// A restart was refused: too many earlier generations are still draining
    /// ([`Builder::max_retired`](super::Builder::max_retired)).
    #[error("restart refused: {alive} earlier generations are still draining (limit {limit})")]
    TooManyRetired {
        /// How many are still running.
        alive: usize,
        /// The limit.
        limit: usize,
    },

    /// The metrics recorder could not be installed (the process already has one).
    #[cfg(feature = "prometheus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    #[error("cannot install the metrics recorder: {reason}")]
    Metrics {
        /// Why.
        reason: String,
    },

    /// A fault injected by a test (feature `fault-injection`, `LIFELINE_FAIL_AT`).
    #[doc(hidden)]
    #[error("injected failure at start-up step {step:?}")]
    Injected {
        /// The step.
        step: &'static str,
    },
}

impl Error {
    /// Whether the state directory is held by another process: the service is already running
    /// (exit 75, `EX_TEMPFAIL`, is the convention `lifeline lock` follows).
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Lock { source, .. } if source.is_contention())
    }

    /// The pid of the process holding the state directory, when [`is_locked`](Error::is_locked)
    /// and the holder wrote it.
    pub fn holder_pid(&self) -> Option<u32> {
        match self {
            Error::Lock { source, .. } => source.holder_pid(),
            _ => None,
        }
    }
}

/// An error and each of its sources on one line, joined by `: `, for text that leaves the
/// process or is read by a person without a chain printer (a restart's failure reason, an event).
/// The messages never repeat their source, so each cause appears exactly once.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    use std::fmt::Write as _;
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let _ = write!(line, ": {cause}");
        next = cause.source();
    }
    line
}
