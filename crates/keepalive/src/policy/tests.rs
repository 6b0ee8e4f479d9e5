//! Tests of the restart policies: the seed's schedule exactly, and properties over random exits.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::exit::{ExitCause, ExitStatus};

const MS: Duration = Duration::from_millis(1);

fn crash(at: Instant, ran: Duration) -> Exit {
    Exit { status: ExitStatus::Code(1), cause: ExitCause::OnItsOwn, runtime: ran, healthy: ran, at }
}

fn clean(at: Instant, ran: Duration) -> Exit {
    Exit { status: ExitStatus::Code(0), cause: ExitCause::OnItsOwn, runtime: ran, healthy: ran, at }
}

fn delay(decision: &Decision) -> Duration {
    match decision {
        Decision::Restart { after } => *after,
        other => panic!("expected a restart, got {other:?}"),
    }
}

#[test]
fn the_seed_schedule_three_free_starts_then_doubling_capped_at_sixty() {
    let mut policy = Backoff::default();
    let t0 = Instant::now();
    let delays: Vec<u64> =
        (0..10).map(|i| delay(&policy.decide(&crash(t0 + i * MS, MS))).as_secs()).collect();
    // Restarts are starts 2, 3, 4, ...: starts 2 and 3 are free, start 4 waits 1 << (4 - 3) s.
    assert_eq!(delays, [0, 0, 2, 4, 8, 16, 32, 60, 60, 60]);
}

#[test]
fn a_healthy_run_resets_the_count() {
    let mut policy = Backoff::scaled(MS);
    let t0 = Instant::now();
    for _ in 0..6 {
        policy.decide(&crash(t0, MS));
    }
    // Restart 7 is start 8: 1 << (8 - 3) units.
    assert_eq!(delay(&policy.decide(&crash(t0, MS))), 32 * MS, "still backing off");
    // Ten units of healthy running: the next restart is immediate and the free starts come back.
    assert_eq!(delay(&policy.decide(&crash(t0, 10 * MS))), Duration::ZERO);
    assert_eq!(delay(&policy.decide(&crash(t0, MS))), Duration::ZERO);
    assert_eq!(delay(&policy.decide(&crash(t0, MS))), Duration::ZERO);
    assert_eq!(delay(&policy.decide(&crash(t0, MS))), 2 * MS);
}

#[test]
fn healthy_means_since_ready_not_since_start() {
    let mut policy = Backoff::scaled(MS);
    let t0 = Instant::now();
    for _ in 0..4 {
        policy.decide(&crash(t0, MS));
    }
    // Ran long but never became ready: no reset.
    let exit = Exit { healthy: Duration::ZERO, runtime: 100 * MS, ..crash(t0, MS) };
    assert!(delay(&policy.decide(&exit)) > Duration::ZERO);
}

#[test]
fn gives_up_on_the_nth_failure_within_the_window_only() {
    let mut policy = Backoff::scaled(MS).with_give_up(3, Duration::from_secs(10));
    let t0 = Instant::now();
    assert!(matches!(policy.decide(&crash(t0, MS)), Decision::Restart { .. }));
    // Outside the window: the first failure no longer counts.
    assert!(matches!(policy.decide(&crash(t0 + Duration::from_secs(11), MS)), Decision::Restart { .. }));
    assert!(matches!(policy.decide(&crash(t0 + Duration::from_secs(12), MS)), Decision::Restart { .. }));
    match policy.decide(&crash(t0 + Duration::from_secs(13), MS)) {
        Decision::GiveUp { reason } => assert_eq!(reason, "3 failures within 10s"),
        other => panic!("expected to give up, got {other:?}"),
    }
}

#[test]
fn restart_modes() {
    let t0 = Instant::now();
    let mut always = Backoff::scaled(MS);
    assert!(matches!(always.decide(&clean(t0, MS)), Decision::Restart { .. }));
    let mut on_failure = Backoff::scaled(MS).with_restart(RestartOn::Failure);
    assert_eq!(on_failure.decide(&clean(t0, MS)), Decision::Done);
    assert!(matches!(on_failure.decide(&crash(t0, MS)), Decision::Restart { .. }));
    let mut never = Backoff::scaled(MS).with_restart(RestartOn::Never);
    assert_eq!(never.decide(&clean(t0, MS)), Decision::Done);
    assert!(matches!(never.decide(&crash(t0, MS)), Decision::GiveUp { .. }));
}

#[test]
fn an_unknown_status_a_watchdog_kill_and_a_start_timeout_are_failures() {
    let t0 = Instant::now();
    let unknown = Exit { status: ExitStatus::Unknown, ..clean(t0, MS) };
    assert!(unknown.is_failure());
    let watchdog = Exit { cause: ExitCause::WatchdogTimeout, ..clean(t0, MS) };
    assert!(watchdog.is_failure());
    let start_timeout = Exit { cause: ExitCause::StartTimeout, ..clean(t0, MS) };
    assert!(start_timeout.is_failure(), "a clean exit 0 after a start timeout is still a failure");
    assert!(!clean(t0, MS).is_failure());
}

#[test]
fn closures_are_policies() {
    let mut calls = 0;
    let mut policy = move |_: &Exit| {
        calls += 1;
        if calls > 1 { Decision::GiveUp { reason: "twice".into() } } else { Decision::Restart { after: MS } }
    };
    let t0 = Instant::now();
    assert_eq!(RestartPolicy::decide(&mut policy, &crash(t0, MS)), Decision::Restart { after: MS });
    assert!(matches!(RestartPolicy::decide(&mut policy, &crash(t0, MS)), Decision::GiveUp { .. }));
}

/// One exit in a generated history: how long it ran, whether it failed, the gap before it.
fn arb_exit() -> impl Strategy<Value = (u64, bool, u64)> {
    (0u64..30, any::<bool>(), 0u64..5000)
}

proptest! {
    #[test]
    fn delays_never_exceed_the_cap_even_with_jitter(
        unit_ms in 1u64..2000,
        jitter in 0.0f64..1.0,
        seed in any::<u64>(),
        history in proptest::collection::vec(arb_exit(), 1..60),
    ) {
        let unit = Duration::from_millis(unit_ms);
        let mut policy = Backoff::scaled(unit).with_jitter(jitter).with_seed(seed);
        let mut at = Instant::now();
        for (ran, failed, gap) in history {
            at += Duration::from_millis(gap);
            let ran = unit * ran as u32 / 3;
            let exit = if failed { crash(at, ran) } else { clean(at, ran) };
            let d = delay(&policy.decide(&exit));
            prop_assert!(d <= policy.max_delay);
        }
    }

    #[test]
    fn jitter_stays_within_its_fraction(
        jitter in 0.0f64..1.0,
        seed in any::<u64>(),
        crashes in 1usize..40,
    ) {
        let mut exact = Backoff::scaled(MS);
        let mut spread = Backoff::scaled(MS).with_jitter(jitter).with_seed(seed);
        let t0 = Instant::now();
        for _ in 0..crashes {
            let base = delay(&exact.decide(&crash(t0, Duration::ZERO)));
            let got = delay(&spread.decide(&crash(t0, Duration::ZERO)));
            if base.is_zero() {
                prop_assert_eq!(got, Duration::ZERO);
            } else {
                let lo = base.as_secs_f64() * (1.0 - jitter) - 1e-9;
                let hi = (base.as_secs_f64() * (1.0 + jitter)).min(spread.max_delay.as_secs_f64()) + 1e-9;
                prop_assert!((lo..=hi).contains(&got.as_secs_f64()), "{got:?} not in [{lo}, {hi}]");
            }
        }
    }

    #[test]
    fn in_a_crash_loop_delays_never_shrink_and_follow_the_formula(
        unit_ms in 1u64..5000,
        crashes in 1u32..80,
    ) {
        let unit = Duration::from_millis(unit_ms);
        let mut policy = Backoff::scaled(unit);
        let t0 = Instant::now();
        let mut previous = Duration::ZERO;
        for restart in 1..=crashes {
            let d = delay(&policy.decide(&crash(t0, Duration::ZERO)));
            let start = restart + 1; // the first start is 1, so restart k is start k + 1
            let expected = if start <= 3 {
                Duration::ZERO
            } else {
                unit.saturating_mul(1u32 << (start - 3).min(31)).min(unit * 60)
            };
            prop_assert_eq!(d, expected);
            prop_assert!(d >= previous);
            previous = d;
        }
    }

    #[test]
    fn after_any_healthy_run_the_next_restart_is_immediate(
        history in proptest::collection::vec(arb_exit(), 0..40),
        healthy_units in 10u32..100,
    ) {
        let mut policy = Backoff::scaled(MS);
        let mut at = Instant::now();
        for (ran, failed, gap) in history {
            at += Duration::from_millis(gap);
            let ran = MS * ran as u32;
            policy.decide(&if failed { crash(at, ran) } else { clean(at, ran) });
        }
        prop_assert_eq!(delay(&policy.decide(&crash(at, MS * healthy_units))), Duration::ZERO);
    }

    #[test]
    fn gives_up_exactly_when_the_window_holds_n_failures(
        limit in 1u32..8,
        window_ms in 1u64..1000,
        gaps in proptest::collection::vec(0u64..400, 1..40),
    ) {
        let window = Duration::from_millis(window_ms);
        let mut policy = Backoff::scaled(MS).with_give_up(limit, window);
        let mut at = Instant::now();
        let mut times: Vec<Instant> = Vec::new();
        for gap in gaps {
            at += Duration::from_millis(gap);
            times.push(at);
            let in_window = times.iter().filter(|t| at.duration_since(**t) < window).count();
            let decision = policy.decide(&crash(at, Duration::ZERO));
            let gave_up = matches!(decision, Decision::GiveUp { .. });
            prop_assert_eq!(gave_up, in_window >= limit as usize);
            if gave_up {
                break;
            }
        }
    }

    #[test]
    fn absurd_units_windows_and_jitter_never_overflow(
        unit_secs in prop_oneof![Just(u64::MAX), any::<u64>(), 0u64..100],
        unit_nanos in 0u32..1_000_000_000,
        jitter in prop_oneof![Just(1.0f64), Just(0.0f64), 0.0f64..=1.0, any::<f64>()],
        window_secs in prop_oneof![Just(u64::MAX), any::<u64>()],
        limit in 0u32..5,
        history in proptest::collection::vec(arb_exit(), 1..20),
        seed in any::<u64>(),
    ) {
        let unit = Duration::new(unit_secs, unit_nanos);
        let mut policy = Backoff::scaled(unit)
            .with_jitter(jitter)
            .with_seed(seed)
            .with_give_up(limit, Duration::from_secs(window_secs));
        let max = policy.max_delay;
        let mut at = Instant::now();
        for (ran, failed, gap) in history {
            at = at.checked_add(Duration::from_millis(gap)).unwrap_or(at);
            let ran = MS * ran as u32;
            if let Decision::Restart { after } = policy.decide(&if failed { crash(at, ran) } else { clean(at, ran) }) {
                prop_assert!(after <= max);
            }
        }
    }
}
