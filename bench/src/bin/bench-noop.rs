//! Placeholder benchmark: measures the harness itself (a no-op call) so `cargo xtask bench` has
//! something to run until the mechanism benchmarks land.

fn main() {
    let mut samples = lifeline_bench::ns_per_call(lifeline_bench::iterations(200, 10), 10_000, || {
        std::hint::black_box(());
    });
    let median = lifeline_bench::median(&mut samples);
    lifeline_bench::Row::new("harness", "no-op call", median, "ns", "informational").emit();
}
