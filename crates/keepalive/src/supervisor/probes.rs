//! The probes of the current main process: a round of probe tasks per main process, their
//! consecutive failures, and what they decide (started, ready, alive).

use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::event::EventKind;
use crate::probe::{ProbeRole, run as probes};

use super::handle::State;
use super::task::Task;

/// The probes of one main process: their tasks, their counts, what they decided.
pub(super) struct ProbeRound {
    /// Bumped for each main process: reports of an earlier one are dropped.
    pub(super) round: u64,
    pub(super) tasks: Vec<JoinHandle<()>>,
    pub(super) reports_tx: mpsc::UnboundedSender<probes::Report>,
    pub(super) reports: mpsc::UnboundedReceiver<probes::Report>,
    pub(super) children: std::sync::Arc<probes::Children>,
    /// Consecutive failures by role (startup, readiness, liveness).
    pub(super) failures: [u32; 3],
    /// The startup probe passed (or there is none, or this process needs none).
    pub(super) started: bool,
    /// What the readiness probe says: `None` before its first check.
    pub(super) ready: Option<bool>,
}

impl ProbeRound {
    pub(super) fn new() -> ProbeRound {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        ProbeRound {
            round: 0,
            tasks: Vec::new(),
            reports_tx,
            reports,
            children: std::sync::Arc::default(),
            failures: [0; 3],
            started: true,
            ready: None,
        }
    }
}

pub(super) fn role_index(role: ProbeRole) -> usize {
    match role {
        ProbeRole::Startup => 0,
        ProbeRole::Readiness => 1,
        _ => 2,
    }
}

impl Task {
    pub(super) fn has_probe(&self, role: ProbeRole) -> bool {
        self.config.probes.iter().any(|p| p.role == role)
    }

    /// Starts a new round of probes for the new main process: the startup probe if it needs
    /// one, else readiness and liveness.
    pub(super) fn start_probes(&mut self, needs_start: bool) {
        self.stop_probes();
        self.probes.round += 1;
        self.probes.failures = [0; 3];
        self.probes.ready = None;
        self.probes.started = !(needs_start && self.has_probe(ProbeRole::Startup));
        let roles: &[ProbeRole] = if self.probes.started {
            &[ProbeRole::Readiness, ProbeRole::Liveness]
        } else {
            &[ProbeRole::Startup]
        };
        self.spawn_probes(roles);
    }

    pub(super) fn spawn_probes(&mut self, roles: &[ProbeRole]) {
        for probe in self.config.probes.iter().filter(|p| roles.contains(&p.role)) {
            let tls = probes::Tls {
                #[cfg(feature = "tls")]
                provider: self.config.probe_tls_provider.clone(),
            };
            self.probes.tasks.push(probes::spawn(
                probe.clone(),
                self.probes.round,
                self.probes.reports_tx.clone(),
                self.probes.children.clone(),
                tls,
            ));
        }
    }

    /// No main process to probe (it exited, is being stopped or detached).
    pub(super) fn stop_probes(&mut self) {
        for task in self.probes.tasks.drain(..) {
            task.abort();
        }
        // Reports already queued belong to the round that just ended.
        self.probes.round += 1;
    }

    /// Whether the main process is ready: its own word (`READY=1`, or at once) and its probes'.
    pub(super) fn is_ready(&self) -> bool {
        let probes_say = self.probes.started
            && (self.probes.ready == Some(true)
                || (self.probes.ready.is_none() && !self.has_probe(ProbeRole::Readiness)));
        self.main.as_ref().is_some_and(|m| m.ready_at.is_some()) && probes_say
    }

    /// One check's outcome. `Some` when the main process must be stopped (a startup or liveness
    /// probe failed too often): which probe, and its last failure.
    pub(super) fn on_probe(&mut self, report: probes::Report) -> Option<(ProbeRole, String)> {
        if report.round != self.probes.round {
            return None;
        }
        let pid = self.main.as_ref()?.pid as u32;
        let role = report.role;
        let index = role_index(role);
        let threshold = self.config.probes.iter().find(|p| p.role == role).map_or(1, |p| p.failures);
        match report.outcome {
            Ok(()) => {
                let was_failing = self.probes.failures[index] > 0;
                self.probes.failures[index] = 0;
                let passed = match role {
                    ProbeRole::Startup => {
                        self.probes.started = true;
                        for task in self.probes.tasks.drain(..) {
                            task.abort();
                        }
                        if self.ready_at_start()
                            && let Some(main) = self.main.as_mut()
                            && main.ready_at.is_none()
                        {
                            main.ready_at = Some(Instant::now());
                            self.start_deadline = None;
                        }
                        self.spawn_probes(&[ProbeRole::Readiness, ProbeRole::Liveness]);
                        tracing::info!(pid, "startup probe passed");
                        true
                    }
                    ProbeRole::Readiness => self.probes.ready.replace(true) != Some(true),
                    _ => was_failing,
                };
                if passed {
                    self.emit(EventKind::ProbePassed { pid, role });
                    if role != ProbeRole::Liveness {
                        self.after_readiness_change(pid);
                    }
                }
                None
            }
            Err(reason) => {
                let count = self.probes.failures[index].saturating_add(1);
                self.probes.failures[index] = count;
                tracing::warn!(pid, %role, %reason, consecutive = count, of = threshold, "probe failed");
                self.emit(EventKind::ProbeFailed { pid, role, reason: reason.clone(), consecutive: count });
                if count < threshold {
                    return None;
                }
                match role {
                    ProbeRole::Readiness => {
                        if self.probes.ready.replace(false) != Some(false) {
                            tracing::warn!(pid, "not ready: the readiness probe keeps failing");
                            self.publish(State::Running);
                        }
                        None
                    }
                    _ => Some((role, reason)),
                }
            }
        }
    }

    /// The service became ready through a probe: files, event, status.
    pub(super) fn after_readiness_change(&mut self, pid: u32) {
        if self.is_ready() {
            tracing::info!(pid, "service is ready");
            if self.config.state_file.is_some()
                && let Err(err) = self.write_files(false)
            {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "cannot update the state file; keeping the previous one"
                );
            }
            self.emit(EventKind::Ready { pid });
        }
        self.publish(State::Running);
    }
}
