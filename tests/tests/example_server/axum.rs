//! The axum example (`examples/axum-server.rs`, 80 lines on `lifeline::service`): ten restarts
//! through `lifeline restart` under keep-alive and new-connection load fail no request, and the
//! state (the served count) and the generation carry on.

use std::collections::BTreeSet;

use lifeline_tests::load::{Sample, parse_answer};

use crate::support::{Options, is_dead};

fn failures(samples: &[Sample]) -> Vec<String> {
    samples.iter().filter_map(|s| s.outcome.as_ref().err().map(|e| format!("at {:?}: {e}", s.at))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_restarts_of_the_axum_example_under_load_fail_no_request() {
    let mut server = Options::axum().start();
    let keep_alive = server.load(2, true);
    let new_connections = server.load(2, false);
    keep_alive.wait_for_more(20).await;
    new_connections.wait_for_more(20).await;
    let mut count_before = server.answer().await.2;
    for round in 1..=10_u64 {
        let old = server.pid;
        let new = server.restart().unwrap_or_else(|e| panic!("restart {round} failed: {e}"));
        // Fresh connections reach the new process (the old one may still answer one it had
        // accepted): one generation on, and the count carried over.
        let (generation, count) = loop {
            let (pid, generation, count) = server.answer().await;
            if pid == new {
                break (generation, count);
            }
            assert_eq!(pid, old, "answered by neither the old nor the new process");
        };
        assert_eq!(generation, round + 1);
        assert!(count > count_before, "served went from {count_before} to {count} at round {round}");
        count_before = count;
        assert_eq!(server.status()["pid"], new);
        lifeline_tests::wait_for("the old process to drain and exit", || is_dead(old).then_some(()));
        keep_alive.wait_for_more(5).await;
        new_connections.wait_for_more(5).await;
    }
    let (kept, fresh) = (keep_alive.stop().await, new_connections.stop().await);
    let failed: Vec<String> = failures(&kept).into_iter().chain(failures(&fresh)).collect();
    assert!(
        failed.is_empty(),
        "{} failed requests of {}: {failed:#?}",
        failed.len(),
        kept.len() + fresh.len()
    );
    let answering: BTreeSet<u32> = fresh
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok().and_then(|b| parse_answer(b)))
        .map(|a| a.0)
        .collect();
    assert_eq!(
        answering,
        server.pids.iter().copied().collect(),
        "not every generation served new connections"
    );
}
