//! Shared measurement helpers for lifeline's benchmark programs.
//!
//! Each program in `src/bin/` measures one mechanism *and its baseline in the same run*, then
//! prints one JSON [`Row`] per line on stdout. `cargo xtask bench` builds the programs in release
//! mode, runs them (passing `--quick` through), and turns the rows into `target/bench/report.md`.
//! Programs print progress and diagnostics on stderr only.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One measured figure, compared with its baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The mechanism (`dirlock`, `certwatch`, ...): one report table each.
    pub mechanism: String,
    /// What was measured, e.g. `acquire+release cycle (tmpfs)`.
    pub name: String,
    /// The figure.
    pub value: f64,
    /// Its unit (`ns`, `µs`, `ms`, `%`, `MiB`, `count`).
    pub unit: String,
    /// What it is compared with, e.g. `raw syscalls of the same protocol`.
    pub baseline_name: Option<String>,
    /// The baseline's figure, measured in the same run, same unit.
    pub baseline: Option<f64>,
    /// The target, in words (`≤ 1.3× baseline`, `≤ 5 ms`).
    pub target: String,
    /// Whether the target was met (`None` when the target is informational).
    pub met: Option<bool>,
    /// Raw samples (same unit) for distribution plots; may be empty.
    #[serde(default)]
    pub samples: Vec<f64>,
    /// Raw samples of the baseline (same unit), plotted beside `samples`; may be empty.
    #[serde(default)]
    pub baseline_samples: Vec<f64>,
    /// When the row is one point of a cost curve: which curve, and where on it.
    #[serde(default)]
    pub curve: Option<Point>,
}

/// A row's place on a cost curve: rows of one mechanism with the same `curve` are drawn as one
/// line chart (figure and baseline against `x`) and tabled together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// The curve's title, e.g. `hand-off p99 vs waiting processes`.
    pub curve: String,
    /// What grows along the curve, e.g. `waiting processes`.
    pub x_label: String,
    /// The point's position on it.
    pub x: f64,
}

impl Row {
    /// A row without a baseline.
    pub fn new(mechanism: &str, name: &str, value: f64, unit: &str, target: &str) -> Self {
        Row {
            mechanism: mechanism.to_owned(),
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline_name: None,
            baseline: None,
            target: target.to_owned(),
            met: None,
            samples: Vec::new(),
            baseline_samples: Vec::new(),
            curve: None,
        }
    }

    /// Places the row on the cost curve `curve` at `x` (what grows along it: `x_label`).
    pub fn point(mut self, curve: &str, x_label: &str, x: f64) -> Self {
        self.curve = Some(Point { curve: curve.to_owned(), x_label: x_label.to_owned(), x });
        self
    }

    /// Adds the baseline this figure is compared with.
    pub fn baseline(mut self, name: &str, value: f64) -> Self {
        self.baseline_name = Some(name.to_owned());
        self.baseline = Some(value);
        self
    }

    /// Records whether the target was met.
    pub fn met(mut self, met: bool) -> Self {
        self.met = Some(met);
        self
    }

    /// Records whether the target was met, when it `applies` to this row (a curve's target is
    /// often set at one point only; the others are informational).
    pub fn met_if(mut self, applies: bool, met: bool) -> Self {
        if applies {
            self.met = Some(met);
        }
        self
    }

    /// Attaches raw samples for plotting.
    pub fn samples(mut self, samples: Vec<f64>) -> Self {
        self.samples = samples;
        self
    }

    /// Attaches the baseline's raw samples for plotting beside the figure's.
    pub fn baseline_samples(mut self, samples: Vec<f64>) -> Self {
        self.baseline_samples = samples;
        self
    }

    /// `value / baseline`, when there is a non-zero baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b != 0.0).map(|b| self.value / b)
    }

    /// Prints the row as one JSON line on stdout (the protocol with `cargo xtask bench`).
    pub fn emit(&self) {
        match serde_json::to_string(self) {
            Ok(line) => println!("{line}"),
            Err(err) => eprintln!("bench: cannot serialise row {}: {err}", self.name),
        }
    }
}

/// Whether `--quick` was passed: run each measurement briefly (CI keeps benchmarks running).
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// Picks the iteration count: `full` normally, `quick` under `--quick`.
pub fn iterations(full: usize, quick_count: usize) -> usize {
    if quick() { quick_count } else { full }
}

/// The `p`-th percentile (0.0..=100.0) of `samples`, nearest-rank; sorts in place. 0 when empty.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Median of `samples` (sorts in place).
pub fn median(samples: &mut [f64]) -> f64 {
    percentile(samples, 50.0)
}

/// Times `f` over `batches` batches of `per_batch` calls; returns ns per call for each batch.
///
/// Batching amortises the clock read; the median over batches is robust to scheduling noise.
pub fn ns_per_call(batches: usize, per_batch: usize, mut f: impl FnMut()) -> Vec<f64> {
    // Warm up caches, page tables and lazy initialisation.
    for _ in 0..per_batch.min(1000) {
        f();
    }
    (0..batches)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            start.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect()
}

/// The spread of `samples` as `min–max` with `digits` decimals (for a row name: a figure beside
/// the range of the repetitions it is the median of).
pub fn spread(samples: &[f64], digits: usize) -> String {
    let (min, max) =
        samples.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if samples.is_empty() { "—".to_owned() } else { format!("{min:.digits$}–{max:.digits$}") }
}

/// Raises this process's soft `RLIMIT_NOFILE` to `want` (at most the hard limit); returns the
/// soft limit now in force.
pub fn raise_fd_limit(want: u64) -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let target = want.min(limit.rlim_max);
    if limit.rlim_cur < target {
        limit.rlim_cur = target;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Milliseconds in a duration, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Microseconds in a duration, as a float.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
