//! Reaping and stopping: exit statuses, orphans, a crashed group's leftovers, the watchdog and
//! start timeouts, a stop of everything of the service, detaching and abandoning.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::AsFd;
use std::time::Instant;

use crate::Error;
use crate::config::Lifetime;
use crate::event::EventKind;
use crate::exit::{ExitCause, ExitStatus};
use crate::group;
use crate::notify::NotifySocket;
use crate::policy::humanize;
use crate::signal::Signal;
use crate::snapshot::Snapshot;
use crate::sys::{self, Reaped};

use super::handle::{Finished, State, StopOutcome};
use super::task::{Outcome, Proc, Task, exit_of};

impl Task {
    /// The exit status of a process whose pidfd fired.
    pub(super) fn collect_status(&mut self, pid: i32) -> ExitStatus {
        if let Some(status) = self.reaped.remove(&pid) {
            return status;
        }
        match sys::try_reap(pid) {
            Reaped::Exited(status) => status,
            Reaped::NotOurChild => ExitStatus::Unknown,
            Reaped::Running => {
                tracing::debug!(pid, "pidfd fired but the child is not reapable yet");
                ExitStatus::Unknown
            }
        }
    }

    /// Reaps the service's exited orphans, keeping the statuses of processes we also watch.
    ///
    /// A dedicated supervisor reaps every child (all are the service's). Otherwise only children
    /// it can attribute to the service: in one of its process groups or sessions (the library
    /// user's other children are left alone).
    pub(super) fn reap_orphans(&mut self) {
        let watched: Vec<i32> = self.main.iter().chain(&self.retired).map(|p| p.pid).collect();
        let mut found = Vec::new();
        if self.config.dedicated {
            // Under the probes' lock: a probe command's status goes to its probe.
            found = self.probes.children.reaping(|| {
                let mut all = Vec::new();
                sys::reap_any(|pid, status| all.push((pid, status)));
                all
            });
        } else {
            for &pgid in &self.pgids {
                sys::reap_group(pgid, |pid, status| found.push((pid, status)));
            }
            // Orphans that moved to a group of their own but stayed in a session of the service.
            for child in sys::own_children().unwrap_or_default() {
                if let Ok(stat) = sys::read_stat(child)
                    && stat.is_zombie()
                    && self.sessions.contains(&stat.session)
                    && let Reaped::Exited(status) = sys::try_reap(child)
                {
                    found.push((child, status));
                }
            }
        }
        for (pid, status) in found {
            if watched.contains(&pid) {
                self.reaped.insert(pid, status);
            } else {
                tracing::debug!(pid, %status, "reaped an orphan");
            }
        }
        // Forget groups and sessions that are empty and belong to nobody we watch: once empty, their
        // ids can be reused by anyone.
        let keep_groups: BTreeSet<i32> = self.main.iter().chain(&self.retired).map(|p| p.pgid).collect();
        self.pgids
            .retain(|pgid| keep_groups.contains(pgid) || sys::kill_group(*pgid, Signal::from_raw(0)).is_ok());
        let keep_sessions: BTreeSet<i32> = self.main.iter().chain(&self.retired).map(|p| p.session).collect();
        if self.sessions.iter().any(|s| !keep_sessions.contains(s)) {
            let live: BTreeSet<i32> = sys::process_table().iter().map(|s| s.session).collect();
            self.sessions.retain(|s| keep_sessions.contains(s) || live.contains(s));
        }
    }

    /// Supervision ends without a main process (done, given up): a dedicated supervisor stops
    /// whatever of the service is still running — retired processes, orphans in sessions of
    /// their own — so that it leaves nothing behind (a container's init exits next).
    pub(super) async fn stop_remaining(&mut self) {
        if !self.config.dedicated {
            return;
        }
        let retired = std::mem::take(&mut self.retired);
        let targets: Vec<group::Target<'_>> = retired.iter().map(Proc::target).collect();
        let scope = group::Scope {
            groups: self.signalable(&retired.iter().map(|p| p.pgid).collect::<Vec<_>>()),
            sessions: BTreeSet::new(),
            target_descendants: true,
            our_descendants: true,
        };
        if targets.is_empty() && group::members(&targets, &scope).is_empty() {
            return;
        }
        tracing::info!("stopping what the service left running");
        group::terminate(&targets, &scope, self.config.stop_signal, Some(self.config.grace)).await;
        for old in &retired {
            let _ = self.collect_status(old.pid);
        }
        self.reap_orphans();
    }

    /// After a crash: stop what is left of the crashed main process's group.
    pub(super) async fn stop_leftovers(&mut self, pgid: i32) {
        if pgid == self.own_pgid || pgid <= 1 {
            return;
        }
        let groups = BTreeSet::from([pgid]);
        if sys::group_members(&groups).iter().all(sys::ProcStat::is_zombie) {
            return;
        }
        tracing::info!(pgid, "stopping what is left of the crashed process group");
        let ended = group::terminate(
            &[],
            &group::Scope::groups(groups),
            self.config.stop_signal,
            Some(self.config.grace),
        )
        .await;
        self.emit(EventKind::LeftoversStopped { pgid: pgid as u32, killed: ended.killed });
    }

    /// The main process missed its watchdog deadline: `watchdog_signal` to its group (a core
    /// dump is wanted), then its exit goes to the policy.
    pub(super) async fn watchdog_expired(&mut self) -> Option<Outcome> {
        let Some(pid) = self.main.as_ref().map(|m| m.pid) else {
            self.watchdog_deadline = None;
            return None;
        };
        tracing::warn!(pid, "watchdog timeout: the service stopped sending WATCHDOG=1");
        self.emit(EventKind::WatchdogTimeout { pid: pid as u32 });
        self.terminate_main(self.config.watchdog_signal, ExitCause::WatchdogTimeout).await
    }

    /// The main process missed its start timeout: stop it like a stop (the service may be busy
    /// starting, not hung), then its exit goes to the policy.
    pub(super) async fn start_timed_out(&mut self) -> Option<Outcome> {
        let Some(pid) = self.main.as_ref().map(|m| m.pid) else {
            self.start_deadline = None;
            return None;
        };
        let after = self.config.notify.start_timeout().unwrap_or_default();
        tracing::warn!(pid, timeout = %humanize(after), "start timeout: the service did not send READY=1");
        self.emit(EventKind::StartTimeout { pid: pid as u32, after });
        self.terminate_main(self.config.stop_signal, ExitCause::StartTimeout).await
    }

    /// Ends the main process on the supervisor's initiative: `signal` to its group, `SIGKILL`
    /// after the grace period; its exit is reported with `cause`.
    pub(super) async fn terminate_main(&mut self, signal: Signal, cause: ExitCause) -> Option<Outcome> {
        let main = self.main.take()?;
        self.stop_probes();
        self.watchdog_deadline = None;
        self.start_deadline = None;
        let scope = group::Scope::groups(self.signalable(&[main.pgid]));
        group::terminate(&[main.target()], &scope, signal, Some(self.config.grace)).await;
        let status = self.collect_status(main.pid);
        Some(Outcome::Exited { pid: main.pid, pgid: main.pgid, exit: exit_of(&main, status, cause) })
    }

    /// Stops the service: the main process, previous ones still draining, their process groups,
    /// everything in their sessions and everything that descends from them (a successor not ready
    /// yet, in a group of its own) — and, dedicated, every descendant of this process. Processes
    /// that join while it waits (forks, orphans re-parented to us) are stopped too; it ends only
    /// when none is left (or they survived `SIGKILL`).
    pub(super) async fn stop(&mut self, signal: Option<Signal>) -> StopOutcome {
        let stop_signal = signal.unwrap_or(self.config.stop_signal);
        self.stop_probes();
        self.drain_notify();
        self.publish(State::Stopping);
        self.watchdog_deadline = None;
        self.start_deadline = None;
        let main = self.main.take();
        let retired = std::mem::take(&mut self.retired);
        let procs: Vec<&Proc> = main.iter().chain(&retired).collect();
        let scope = group::Scope {
            groups: self.signalable(&procs.iter().map(|p| p.pgid).collect::<Vec<_>>()),
            sessions: procs.iter().map(|p| p.session).filter(|s| *s != self.own_session && *s > 1).collect(),
            target_descendants: true,
            our_descendants: self.config.dedicated,
        };
        let targets: Vec<group::Target<'_>> = procs.iter().map(|p| p.target()).collect();
        let anything = !targets.is_empty() || !group::members(&targets, &scope).is_empty();
        let began = Instant::now();
        let ended = if anything {
            if let Some(main) = &main {
                tracing::info!(pid = main.pid, signal = %stop_signal, "stopping the service");
            } else {
                tracing::info!(signal = %stop_signal, "stopping what is left of the service");
            }
            group::terminate(&targets, &scope, stop_signal, Some(self.config.grace)).await
        } else {
            group::Ended::default()
        };
        let after = began.elapsed();
        // Our own processes first: reaping orphans would take (and drop) their statuses.
        let status = main.as_ref().map(|m| self.collect_status(m.pid));
        for old in &retired {
            let old_status = self.collect_status(old.pid);
            tracing::debug!(pid = old.pid, status = %old_status, "previous main process stopped");
        }
        if self.config.subreaper || self.config.dedicated {
            self.reap_orphans();
        }
        self.remove_files();
        let pid = main.as_ref().map(|m| m.pid as u32);
        match (pid, status) {
            _ if !ended.survivors.is_empty() => StopOutcome::Stuck { pid, survivors: ended.survivors, after },
            (Some(pid), Some(status)) if ended.killed => StopOutcome::Killed { pid, status, after },
            (Some(pid), Some(status)) => StopOutcome::Exited { pid, status, after },
            _ => StopOutcome::NotRunning,
        }
    }

    pub(super) fn detach(&mut self) -> Result<Snapshot, Error> {
        if matches!(self.config.lifetime, Lifetime::DieWithSupervisor { .. }) {
            return Err(Error::DetachRefused);
        }
        self.drain_notify();
        let main = self.main.as_ref().ok_or(Error::NothingRunning)?;
        let notify_socket = self.notify.take().map(NotifySocket::keep);
        let snapshot = self.snapshot_of(main, notify_socket);
        if let Some(path) = &self.config.state_file
            && let Err(err) = snapshot.write(path)
        {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "cannot write the detached snapshot to the state file"
            );
        }
        self.emit(EventKind::Detached { pid: snapshot.pid });
        self.stop_probes();
        self.main = None;
        Ok(snapshot)
    }

    /// Every handle is gone: leave the service running, or stop it if it was meant to die with us.
    pub(super) async fn abandon(&mut self) -> Finished {
        if matches!(self.config.lifetime, Lifetime::DieWithSupervisor { .. }) {
            let outcome = self.stop(None).await;
            self.emit(EventKind::Stopped { outcome });
        } else if let Some(main) = &self.main {
            tracing::info!(pid = main.pid, "supervisor handle dropped; leaving the service running");
        }
        Finished::Abandoned
    }

    pub(super) fn signal_main(&self, signal: Signal) -> Result<(), Error> {
        let main = self.main.as_ref().ok_or(Error::NothingRunning)?;
        sys::pidfd_send_signal(main.fd.as_fd(), signal).map_err(|source| Error::Signal {
            pid: main.pid as u32,
            signal,
            source,
        })
    }

    /// The groups among `pgids` that may be signalled: never our own.
    pub(super) fn signalable(&self, pgids: &[i32]) -> BTreeSet<i32> {
        pgids.iter().copied().filter(|g| *g != self.own_pgid && *g > 1).collect()
    }

    /// Removes the pid file and the state file (the service is gone for good).
    pub(super) fn remove_files(&mut self) {
        self.retry_files = None;
        if let Some(pid_file) = &self.pid_file
            && let Err(err) = pid_file.remove()
        {
            tracing::warn!(error = &err as &dyn std::error::Error, "cannot remove the pid file");
        }
        if let Some(path) = &self.config.state_file {
            match std::fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(error = &err as &dyn std::error::Error, path = %path.display(), "cannot remove the state file");
                }
                _ => {}
            }
        }
    }
}
