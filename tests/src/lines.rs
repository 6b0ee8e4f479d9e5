//! Output of a process tree read line by line on a thread, for waiting on and for diagnostics.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::PATIENCE;

/// Every line a process tree wrote to one pipe, kept for waiting on and for diagnostics.
#[derive(Clone)]
pub struct Lines {
    inner: Arc<(Mutex<LinesState>, Condvar)>,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    closed: bool,
}

impl Lines {
    /// Reads `pipe` on a thread until every writer has closed it.
    pub fn new(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Lines { inner: Arc::new((Mutex::new(LinesState::default()), Condvar::new())) };
        let writer = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let (_, changed) = &*writer.inner;
                writer.state().lines.push(line);
                changed.notify_all();
            }
            let (_, changed) = &*writer.inner;
            writer.state().closed = true;
            changed.notify_all();
        });
        lines
    }

    /// The lines; a test that failed while waiting does not poison them for the diagnostics.
    fn state(&self) -> std::sync::MutexGuard<'_, LinesState> {
        self.inner.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many lines were read so far: a mark for [`Lines::wait_after`].
    pub fn mark(&self) -> usize {
        self.state().lines.len()
    }

    /// Waits for a line containing `needle` (already read or still to come); returns it.
    pub fn wait(&self, needle: &str) -> String {
        self.wait_after(0, needle)
    }

    /// Waits for a line containing `needle` among the lines read after `mark`; returns it.
    pub fn wait_after(&self, mark: usize, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        let (_, changed) = &*self.inner;
        let mut guard = self.state();
        loop {
            if let Some(line) = guard.lines.iter().skip(mark).find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || guard.closed {
                let (closed, seen) = (guard.closed, guard.lines.join("\n"));
                drop(guard);
                panic!(
                    "no line containing {needle:?} (pipe {}); read so far:\n{seen}",
                    if closed { "closed" } else { "still open" }
                );
            }
            guard = changed.wait_timeout(guard, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    /// Every line read so far.
    pub fn all(&self) -> Vec<String> {
        self.state().lines.clone()
    }
}
