//! Restart policies: given an exit, restart after a delay, finish, or give up.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::exit::Exit;

/// What to do after the main process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Start the command again after this delay (zero: at once).
    Restart {
        /// How long to wait before the next start.
        after: Duration,
    },
    /// The service is done and that is fine (it exited successfully and the policy does not
    /// restart successful exits). The supervisor finishes without error.
    Done,
    /// Stop trying: the supervisor finishes with this reason (`lifeline supervise` exits 1).
    GiveUp {
        /// One line, e.g. `5 failures within 10s`.
        reason: String,
    },
}

/// Decides, after each exit of the main process, whether and when to restart it.
///
/// The supervisor calls [`decide`](RestartPolicy::decide) once per exit that is not a handover
/// (a `MAINPID=` change is never an exit) and not a requested stop. The policy keeps whatever
/// state it needs (attempt counters, failure windows); time comes from [`Exit::at`], so a policy
/// can be tested without a clock.
///
/// Any `FnMut(&Exit) -> Decision + Send` closure is a policy.
pub trait RestartPolicy: Send + 'static {
    /// The decision for this exit.
    fn decide(&mut self, exit: &Exit) -> Decision;
}

impl<F> RestartPolicy for F
where
    F: FnMut(&Exit) -> Decision + Send + 'static,
{
    fn decide(&mut self, exit: &Exit) -> Decision {
        self(exit)
    }
}

/// Which exits are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartOn {
    /// Every exit, even `exit(0)` (a service is meant to run forever). The default.
    #[default]
    Always,
    /// Only failures ([`Exit::is_failure`]); a successful exit is [`Decision::Done`].
    Failure,
    /// None: a successful exit is [`Decision::Done`], a failure is [`Decision::GiveUp`].
    Never,
}

/// Give up after this many failures within a sliding window (supervisord's `FATAL` state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiveUpAfter {
    /// How many failures are tolerated: the `failures`-th failure within `within` gives up.
    pub failures: u32,
    /// The window.
    pub within: Duration,
}

/// The default policy, after Consul's managed-proxy daemon (the seed), with the options
/// supervisord-style supervisors offer.
///
/// Starts are counted: the first three starts happen without delay, start `n > 3` waits
/// `unit << (n - 3)` (2, 4, 8 … s with the default one-second unit), capped at `max_delay`. A run
/// that stayed healthy for `healthy_after` resets the count, so a service that crashes once a day
/// restarts at once. Tests use [`Backoff::scaled`] with a unit of milliseconds.
///
/// Optional: `jitter` spreads each delay by ± that fraction (so a fleet does not restart in
/// lockstep), `give_up` turns a crash loop into a final failure, `restart` limits which exits are
/// restarted.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The unit of the exponential delays (default 1 s).
    pub unit: Duration,
    /// Starts that never wait (default 3, counting the first start).
    pub free_starts: u32,
    /// No delay is longer than this (default 60 s).
    pub max_delay: Duration,
    /// A run at least this long (healthy: since `READY=1` under notification) resets the count
    /// (default 10 s).
    pub healthy_after: Duration,
    /// Spread each non-zero delay uniformly over `delay × (1 ± jitter)`, capped at `max_delay`
    /// (default 0; clamped to `0.0..=1.0`).
    pub jitter: f64,
    /// Which exits are restarted (default: all).
    pub restart: RestartOn,
    /// Give up after this many failures in a window (default: never give up).
    pub give_up: Option<GiveUpAfter>,
    /// Number of the last start in the current series (the supervisor's first start is 1).
    attempt: u32,
    /// When recent failures happened, for `give_up`.
    failures: VecDeque<Instant>,
    /// xorshift state for jitter.
    rng: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::scaled(Duration::from_secs(1))
    }
}

impl Backoff {
    /// The seed's policy with every duration expressed in `unit`: delays `2, 4, 8 … unit`, capped
    /// at `60 × unit`, reset after `10 × unit` of healthy running.
    pub fn scaled(unit: Duration) -> Backoff {
        Backoff {
            unit,
            free_starts: 3,
            max_delay: unit.saturating_mul(60),
            healthy_after: unit.saturating_mul(10),
            jitter: 0.0,
            restart: RestartOn::Always,
            give_up: None,
            attempt: 1,
            failures: VecDeque::new(),
            rng: random_seed(),
        }
    }

    /// Sets the jitter fraction (see [`Backoff::jitter`]).
    pub fn with_jitter(mut self, jitter: f64) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// Sets which exits are restarted.
    pub fn with_restart(mut self, restart: RestartOn) -> Backoff {
        self.restart = restart;
        self
    }

    /// Gives up after `failures` failures within `within`.
    pub fn with_give_up(mut self, failures: u32, within: Duration) -> Backoff {
        self.give_up = Some(GiveUpAfter { failures, within });
        self
    }

    /// Seeds the jitter generator (for reproducible tests; the default seed is random).
    pub fn with_seed(mut self, seed: u64) -> Backoff {
        self.rng = seed | 1;
        self
    }

    /// The number of the start the next restart will be (the first start is 1).
    pub fn next_attempt(&self) -> u32 {
        self.attempt.saturating_add(1)
    }

    /// The delay before start number `attempt`, without jitter.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        if attempt <= self.free_starts {
            return Duration::ZERO;
        }
        // Beyond 2^31 units every practical cap has long been reached.
        let exponent = (attempt - self.free_starts).min(31);
        self.unit.saturating_mul(1u32 << exponent).min(self.max_delay)
    }

    fn jittered(&mut self, delay: Duration) -> Duration {
        let jitter = if self.jitter.is_finite() { self.jitter.clamp(0.0, 1.0) } else { 0.0 };
        if jitter == 0.0 || delay.is_zero() {
            return delay;
        }
        // xorshift64: plenty for spreading restarts, no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit_interval = (self.rng >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        let factor = 1.0 + jitter * (2.0 * unit_interval - 1.0);
        // `mul_f64` panics past `Duration::MAX`; a delay that large is the cap.
        Duration::try_from_secs_f64(delay.as_secs_f64() * factor)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// Records a failure at `at`; returns the reason to give up, if the limit is reached.
    fn note_failure(&mut self, at: Instant) -> Option<String> {
        let limit = self.give_up?;
        self.failures.push_back(at);
        while self.failures.front().is_some_and(|first| at.saturating_duration_since(*first) >= limit.within)
        {
            self.failures.pop_front();
        }
        // Never hold more than the limit needs.
        while self.failures.len() > limit.failures as usize {
            self.failures.pop_front();
        }
        (self.failures.len() >= limit.failures as usize)
            .then(|| format!("{} failures within {}", limit.failures, humanize(limit.within)))
    }
}

impl RestartPolicy for Backoff {
    fn decide(&mut self, exit: &Exit) -> Decision {
        let failure = exit.is_failure();
        if failure && let Some(reason) = self.note_failure(exit.at) {
            return Decision::GiveUp { reason };
        }
        match (self.restart, failure) {
            (RestartOn::Never, true) => {
                return Decision::GiveUp { reason: "the restart policy is never".to_owned() };
            }
            (RestartOn::Never | RestartOn::Failure, false) => return Decision::Done,
            (RestartOn::Always, _) | (RestartOn::Failure, true) => {}
        }
        if exit.healthy >= self.healthy_after {
            self.attempt = 0;
        }
        self.attempt = self.attempt.saturating_add(1);
        let delay = self.delay_for(self.attempt);
        Decision::Restart { after: self.jittered(delay) }
    }
}

/// `1.5s`, `250ms`, `2m`: short and exact enough for one-line messages.
pub(crate) fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        format!("{}µs", d.as_micros())
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn random_seed() -> u64 {
    // RandomState is seeded from the OS once per process and perturbed per instance.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() | 1
}

#[cfg(test)]
mod tests;
