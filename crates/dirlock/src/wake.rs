//! Event-driven waiting: an inotify watch on the held lock file wakes a waiter when the holder
//! lets go ([`WaitMode::Notify`](crate::WaitMode::Notify)).
//!
//! A holder releases by unlinking the file (the link count changes: `IN_ATTRIB`) and closing it
//! (`IN_CLOSE_WRITE`); a holder that dies, or a `flock(1)` that never unlinks, only closes
//! (`IN_CLOSE_WRITE` / `IN_CLOSE_NOWRITE`). A waiter watches the very inode it keeps open
//! (through `/proc/self/fd/N`, so a file swapped in at the path meanwhile is not watched by
//! mistake), and sleeps in `poll(2)` until one of these events or a long fallback timeout — so
//! a waiting process costs nothing while the lock stays held, instead of a wake-up every 16 ms.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// What wakes a waiter: the holder unlinked, closed, renamed or deleted the file.
const MASK: u32 = libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_CLOSE_NOWRITE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// How many idle inotify instances a process keeps for its next waits.
const POOL_SIZE: usize = 4;

/// Idle instances, watching nothing. Closing an inotify instance waits for an RCU grace period
/// in the kernel (`fsnotify_destroy_group` → `synchronize_srcu`: milliseconds on a busy machine),
/// and a waiter that just got the lock must not pay that before returning it to its caller; so
/// instances are kept and reused instead (removing a watch is asynchronous).
static POOL: std::sync::Mutex<Vec<Waker>> = std::sync::Mutex::new(Vec::new());

/// A [`Waker`] taken from the pool (or new), given back when dropped.
#[derive(Debug)]
pub(crate) struct Pooled(Option<Waker>);

impl Pooled {
    /// An idle instance of the pool, or a new one; `None` when none can be had.
    pub(crate) fn take() -> Option<Pooled> {
        let reused = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        reused.or_else(Waker::new).map(|w| Pooled(Some(w)))
    }
}

impl std::ops::Deref for Pooled {
    type Target = Waker;
    fn deref(&self) -> &Waker {
        self.0.as_ref().expect("a pooled waker is present until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Waker {
        self.0.as_mut().expect("a pooled waker is present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(mut waker) = self.0.take() else { return };
        waker.disarm();
        waker.drain();
        let mut pool = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < POOL_SIZE {
            pool.push(waker);
        }
        // Beyond the pool's size the instance is closed (the slow path, for rare bursts of
        // concurrent waits in one process).
    }
}

/// One inotify instance watching the lock file a waiter keeps open.
#[derive(Debug)]
pub(crate) struct Waker {
    fd: OwnedFd,
    /// The current watch descriptor.
    watch: Option<i32>,
}

impl Waker {
    /// A new inotify instance (use [`Pooled::take`]); `None` when none can be had (the per-user limit of instances,
    /// `fs.inotify.max_user_instances`, is reached): the caller polls instead.
    pub(crate) fn new() -> Option<Waker> {
        // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "no inotify instance; waiting by polling");
            return None;
        }
        // SAFETY: the descriptor is new and ours alone.
        Some(Waker { fd: unsafe { OwnedFd::from_raw_fd(fd) }, watch: None })
    }

    /// Watches the file open as `kept` (`path` is where it was opened). Returns `true` when a
    /// new watch was placed: events from before it were not seen, so the caller must try the
    /// lock once more before waiting. `false` when that very inode was watched already (its
    /// events are queued) — or when no watch could be placed, which the caller learns from
    /// [`Waker::is_armed`].
    ///
    /// The kernel says which: adding a watch on an inode already watched returns the same watch
    /// descriptor. (Comparing device and inode numbers would not do: a released lock file's inode
    /// number is soon reused by the next one, while its watch went with the old inode.)
    pub(crate) fn arm(&mut self, kept: &impl AsRawFd, path: &Path) -> bool {
        // The magic link resolves to the open file itself, whatever is at the path now.
        let via_fd = format!("/proc/self/fd/{}\0", kept.as_raw_fd());
        let mut wd = add_watch(&self.fd, via_fd.as_bytes());
        if wd < 0 {
            // No /proc: the path, which names the same file unless it was just replaced (then
            // the fallback timeout, or the next event, ends the wait).
            let mut bytes = path.as_os_str().as_encoded_bytes().to_vec();
            if !bytes.contains(&0) {
                bytes.push(0);
                wd = add_watch(&self.fd, &bytes);
            }
        }
        if wd < 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot watch the lock file; polling");
            self.disarm();
            return false;
        }
        if self.watch == Some(wd) {
            return false;
        }
        self.disarm();
        self.watch = Some(wd);
        // Whatever the old watch queued is stale now.
        self.drain();
        true
    }

    /// Whether a watch is in place.
    pub(crate) fn is_armed(&self) -> bool {
        self.watch.is_some()
    }

    fn disarm(&mut self) {
        if let Some(wd) = self.watch.take() {
            // SAFETY: removes a watch of our instance; EINVAL (already gone with its inode) is fine.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
        }
    }

    /// Sleeps until an event comes or `timeout` passes; consumes the queued events. `true` when
    /// an event ended the wait.
    pub(crate) fn wait(&mut self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one pollfd that lives across the call. EINTR just ends the wait early: the
        // caller tries the lock and comes back.
        let ready = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if ready > 0 {
            self.drain();
        }
        ready > 0
    }

    /// Reads every queued event (their content does not matter: any of them is a reason to try).
    fn drain(&self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a stack buffer of the given length from our descriptor.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // EAGAIN: the queue is empty (the descriptor is non-blocking).
                return;
            }
        }
    }
}

fn add_watch(fd: &OwnedFd, path_nul: &[u8]) -> i32 {
    // SAFETY: `path_nul` is NUL-terminated (built by the callers) and lives across the call.
    unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path_nul.as_ptr().cast(), MASK) }
}
