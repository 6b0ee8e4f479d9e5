//! Where a reload's work runs: a short-lived thread of lower priority, off the application's
//! runtime ([`LoadOn`]).
//!
//! Reading, parsing and validating a pair costs a fraction of a millisecond of CPU (more for RSA
//! keys, or a custom source). On tokio's blocking pool that work runs at the priority of the
//! runtime's workers, which on a small machine are the very threads doing TLS handshakes: a reload
//! then competes with handshakes for the cores as an equal. A thread of its own, with a niceness
//! of [`LOAD_NICENESS`], lets the scheduler run the handshakes first, and the reload in the gaps.

use crate::error::Error;

/// The niceness of the thread a load runs on with [`LoadOn::LowPriorityThread`] (0 is the
/// default, 19 the lowest): a CFS weight of about a tenth of a normal thread's while handshakes
/// keep the cores busy, and the whole core when they do not.
pub const LOAD_NICENESS: i32 = 10;

/// Where [`CertWatcher`](crate::CertWatcher) and [`ClientCaWatcher`](crate::ClientCaWatcher) run
/// a reload (read, parse, validate). Set with [`WatchConfig::load_on`](crate::WatchConfig::load_on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LoadOn {
    /// A thread of its own for each load (`certwatch-load`), with its niceness raised to
    /// [`LOAD_NICENESS`]: the runtime's workers — the threads doing handshakes — go first. The
    /// default. Falls back to tokio's blocking pool if no thread can be started.
    #[default]
    LowPriorityThread,
    /// tokio's blocking pool (`spawn_blocking`), at the priority of the runtime's workers.
    BlockingPool,
}

/// Runs `load` as `on` says and waits for its result without blocking the runtime.
pub(crate) async fn run<T, F>(on: LoadOn, load: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    match on {
        LoadOn::BlockingPool => blocking_pool(load).await,
        LoadOn::LowPriorityThread => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            // The closure moves into the thread only if it starts; if it cannot be started, it
            // comes back here (through the slot) and runs on the blocking pool instead.
            let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(load)));
            let in_thread = std::sync::Arc::clone(&slot);
            let spawned = std::thread::Builder::new().name("certwatch-load".to_owned()).spawn(move || {
                lower_own_priority();
                let taken = in_thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                if let Some(load) = taken {
                    // The receiver is gone only if the attempt was cancelled (the task aborted).
                    let _ = tx.send(load());
                }
            });
            match spawned {
                Ok(_detached) => rx.await.unwrap_or_else(|_| {
                    Err(Error::LoadTask { reason: "the load thread ended without a result".to_owned() })
                }),
                Err(err) => {
                    tracing::debug!(error = %err, "cannot start a load thread; using the blocking pool");
                    let taken = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                    match taken {
                        Some(load) => blocking_pool(load).await,
                        None => Err(Error::LoadTask { reason: "the load was lost".to_owned() }),
                    }
                }
            }
        }
    }
}

async fn blocking_pool<T, F>(load: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(load).await {
        Ok(result) => result,
        Err(join) => Err(Error::LoadTask { reason: join.to_string() }),
    }
}

/// Raises the calling thread's niceness to [`LOAD_NICENESS`] (never lowers it: a process that
/// runs niced already stays so). Failing is harmless: the load runs at normal priority.
pub(crate) fn lower_own_priority() {
    // SAFETY: gettid has no arguments and no memory effects.
    let tid = unsafe { libc::gettid() };
    // On Linux, PRIO_PROCESS with a thread id sets that one thread's niceness.
    // SAFETY: getpriority/setpriority take integers only. errno is cleared first because -1 is a
    // valid niceness.
    unsafe {
        *libc::__errno_location() = 0;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if *libc::__errno_location() != 0 || current >= LOAD_NICENESS {
            return;
        }
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, LOAD_NICENESS) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the load thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn niceness() -> i32 {
        // SAFETY: as in `lower_own_priority`.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_load_runs_on_a_thread_of_its_own_with_a_lower_priority() {
        let runtime_thread = std::thread::current().id();
        let before = niceness();
        let (name, nice, thread) = run(LoadOn::LowPriorityThread, || {
            Ok((std::thread::current().name().map(str::to_owned), niceness(), std::thread::current().id()))
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("certwatch-load"));
        assert_ne!(thread, runtime_thread);
        assert!(nice >= LOAD_NICENESS, "niceness {nice}");
        // The caller's own priority is untouched.
        assert_eq!(niceness(), before);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_blocking_pool_keeps_the_callers_priority_and_errors_come_back() {
        let before = niceness();
        let nice = run(LoadOn::BlockingPool, || Ok(niceness())).await.unwrap();
        assert_eq!(nice, before);
        let err = run::<(), _>(LoadOn::LowPriorityThread, || Err(Error::NoCryptoProvider)).await.unwrap_err();
        assert!(matches!(err, Error::NoCryptoProvider));
    }
}
