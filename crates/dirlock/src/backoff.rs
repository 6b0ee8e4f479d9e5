//! Jittered, capped exponential backoff for waiting on a held lock.
//!
//! Short enough that a released lock is picked up within a few milliseconds (no 100 ms polling
//! cliff), long enough that a waiter costs a negligible share of a CPU, and jittered so a crowd of
//! waiters does not wake in lockstep.

use std::time::Duration;

/// The first delay after a failed attempt.
pub(crate) const FIRST: Duration = Duration::from_millis(1);
/// The longest delay between two attempts.
pub(crate) const CAP: Duration = Duration::from_millis(10);

/// Delays 1, 2, 4, 8, 10, 10, … ms, each scaled by a random factor in [0.5, 1.0].
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        // Per-process, per-call seed: distinct waiters get distinct sequences. Quality does not
        // matter, only that the sequences differ.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Backoff { next: FIRST, rng: seed | 1 }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(CAP);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // 512..=1023 / 1024: scale into [0.5, 1.0).
        let factor = 512 + (self.rng >> 54) as u32 % 512;
        base * factor / 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_jittered_within_bounds() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..50).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= FIRST / 2 && delays[0] <= FIRST);
        for d in &delays {
            assert!(*d >= FIRST / 2 && *d <= CAP, "{d:?} out of bounds");
        }
        for d in &delays[10..] {
            assert!(*d >= CAP / 2, "{d:?} below half the cap once capped");
        }
        let distinct: std::collections::HashSet<_> = delays[10..].iter().collect();
        assert!(distinct.len() > 5, "no jitter: {delays:?}");
    }
}
